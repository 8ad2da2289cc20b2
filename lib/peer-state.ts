import type { Peer } from './peer.js'
import type { Upstream } from './upstream.js'

/**
 * What a peer is doing, in one word an operator reads at a glance: the
 * status page's colour and legend, the metrics' `server_status` and the
 * JSON's `state` all come from this one rule. In an on-demand pool a peer
 * stopped by the scaler is the normal idle state, not a failure; a crash
 * is supervisord saying the program exited when nobody asked it to.
 */
export const PEER_STATES = ['serving', 'backup-standby', 'starting', 'stopped', 'stopped-by-operator', 'crashed',
  'stopping', 'draining', 'maint', 'unhealthy', 'passive-failed', 'back-off'] as const
export type PeerState = typeof PEER_STATES[number]

/** What each state means, for the legend and the README. */
export const STATE_MEANINGS: Record<PeerState, string> = {
  serving: 'takes requests',
  'backup-standby': 'a backup, ready, while a primary serves',
  starting: 'supervisord is starting it, or its port or check has not answered yet',
  stopped: 'not running: idle, stopped by the scaler, or not started yet (started on demand)',
  'stopped-by-operator': 'stopped by an operator, pinned down: the scaler leaves it alone',
  crashed: 'supervisord says it exited (EXITED, FATAL) when nobody asked it to stop',
  stopping: 'supervisord is stopping it',
  draining: 'taken out by an operator (drain): in-flight requests finish, no new ones',
  maint: 'taken out by an operator for maintenance',
  unhealthy: 'running, but its active check fails',
  'passive-failed': 'running, but requests to it failed (maxFails within failTimeout)',
  'back-off': 'its last start failed: no start before the back-off ends'
}

/** supervisord said a program we did not stop is gone. */
const CRASH = /^supervisord says (EXITED|FATAL|UNKNOWN)/

export function peerState (peer: Peer, upstream: Upstream, now = Date.now()): PeerState {
  if (peer.admin === 'maint') return 'maint'
  if (peer.admin === 'drain') return 'draining'
  switch (peer.process) {
    case 'down':
      if (!peer.startAllowed(now)) return 'back-off'
      if (CRASH.test(peer.processReason ?? '')) return 'crashed'
      return peer.pin === 'down' ? 'stopped-by-operator' : 'stopped'
    case 'stopping':
      return 'stopping'
    default:
      if (peer.health === 'unhealthy') return 'unhealthy'
      if (peer.passive === 'failed') return 'passive-failed'
      if (!peer.routable) return 'starting'
      return peer.backup && upstream.routableTiers().primary.length > 0 ? 'backup-standby' : 'serving'
  }
}
