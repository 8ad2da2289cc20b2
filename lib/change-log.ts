import type { FastifyBaseLogger } from 'fastify'
import type { PeerChange } from './peer.js'
import type { Registry } from './registry.js'

/**
 * One log line per change of a peer's state, at info, with the peer's
 * address and program: the story of the pool, as nginx's error log tells
 * when a server goes down. A back-off step is at debug: the supervisord
 * bridge writes it already, at error, with its fault and delay.
 */
export function changeLogger (registry: Registry, log: FastifyBaseLogger): (change: PeerChange) => void {
  return change => {
    const level = change.field === 'backoff' ? 'debug' : 'info'
    const peer = registry.get(change.upstream).peers[change.index]
    const name = peer.program === null ? peer.address : `${peer.address}, program ${peer.program}`
    log[level]({ upstream: change.upstream, index: change.index, peer: peer.address, program: peer.program, field: change.field, from: change.from, to: change.to, reason: change.reason },
      `peer ${change.index} (${name}) of upstream "${change.upstream}": ${change.field} ${change.from} → ${change.to}${change.reason === undefined ? '' : ` (${change.reason})`}`)
  }
}
