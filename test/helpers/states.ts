import type { FastifyInstance } from 'fastify'
import type { RegistryOptions } from '../../plugins/registry.js'
import type { PeerState } from '../../lib/peer-state.js'

/** One peer per state, by index: what each is put in. */
export const STATE_OF_PEER: readonly PeerState[] = ['serving', 'backup-standby', 'starting', 'stopped', 'stopped-by-operator', 'crashed',
  'stopping', 'draining', 'maint', 'unhealthy', 'passive-failed', 'back-off']

/** The upstream `pool`: twelve peers, peer 1 a backup, in supervisord `none` mode with every peer up at first. */
export const STATES_UPSTREAMS: RegistryOptions['upstreams'] = {
  pool: {
    servers: STATE_OF_PEER.map((_, i) => ({ address: `127.0.0.1:${7100 + i}`, backup: i === 1 })),
    supervisord: 'none',
    inheritBackendStatus: true
  } as never
}

/**
 * Puts each peer of `pool` in the state STATE_OF_PEER gives it, the way the
 * bridge, the health checker and the proxy would (through the model's named
 * methods), with a few checks each so that the pictures have bars.
 */
export function putInStates (app: FastifyInstance, now = Date.now()): void {
  const peers = app.upstreams.get('pool').peers
  for (const peer of peers) {
    for (let i = 0; i < 4; i++) peer.recordCheck({ ok: i !== 2 || peer.index % 3 !== 0, reason: i !== 2 || peer.index % 3 !== 0 ? 'OK' : 'timed out', latencyMs: 1 + (i + peer.index) % 5, at: now - (4 - i) * 1000 }, 32)
  }
  peers[0].setHealth('healthy', 'OK')
  peers[2].setProcess('starting', 'start requested')
  peers[3].setProcess('down', 'stopped')
  peers[4].setProcess('down', 'stopped')
  peers[4].setPin('down', 'operator stop')
  peers[5].setProcess('down', 'supervisord says EXITED')
  peers[6].setProcess('stopping', 'stop requested')
  peers[7].setAdmin('drain', 'operator')
  peers[8].setAdmin('maint', 'operator')
  peers[9].setHealth('unhealthy', 'timed out')
  peers[10].recordFailure('ECONNREFUSED: connect ECONNREFUSED', now, 'connect')
  peers[11].setBackoff({ step: 2, until: now + 60_000, reason: 'SPAWN_ERROR', cause: 'program' })
  peers[11].setProcess('down', 'SPAWN_ERROR')
}
