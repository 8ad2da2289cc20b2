import type { CheckResult, Peer } from '../peer.js'
import type { Registry } from '../registry.js'
import type { StatusFilter, CheckStatus, PeerStatus, StatusSnapshot, UpstreamStatus } from './types.js'

/** Bars in a peer's picture of recent checks (and entries in `checks`). */
const HISTORY_SHOWN = 30

function checkStatus (check: CheckResult, now: number): CheckStatus {
  return {
    ok: check.ok,
    reason: check.reason,
    latencyMs: Math.round(check.latencyMs * 10) / 10,
    ageMs: Math.max(0, Math.round(now - check.at))
  }
}

function peerStatus (peer: Peer, now: number): PeerStatus {
  return {
    index: peer.index,
    address: peer.address,
    program: peer.program,
    pid: peer.pid,
    process: peer.process,
    admin: peer.admin,
    pin: peer.pin,
    // The reason stays in the log: it may name supervisord's user.
    backoff: peer.backoff === null ? null : { step: peer.backoff.step, retryInMs: Math.max(0, Math.round(peer.backoff.until - now)) },
    health: peer.health,
    passive: peer.passive,
    routable: peer.routable,
    inflight: peer.inflight,
    requests: peer.requests,
    fails: peer.fails,
    rise: peer.rise,
    fall: peer.fall,
    lastCheck: peer.lastCheck === null ? null : checkStatus(peer.lastCheck, now),
    weight: peer.weight,
    backup: peer.backup,
    checks: peer.checks.slice(-HISTORY_SHOWN).map(check => checkStatus(check, now))
  }
}

/**
 * Every upstream and its peers as plain data, the one source of the JSON,
 * CSV and HTML answers. `status` keeps only routable (`up`) or
 * non-routable (`down`) peers; upstreams are always listed.
 */
export function statusSnapshot (registry: Registry, status?: StatusFilter, now = Date.now()): StatusSnapshot {
  const upstreams: UpstreamStatus[] = []
  for (const upstream of registry.upstreams.values()) {
    const peers = upstream.peers.map(peer => peerStatus(peer, now))
    upstreams.push({
      name: upstream.name,
      balancer: upstream.balancer.name,
      supervisord: upstream.supervisord,
      summary: { routable: peers.filter(peer => peer.routable).length, total: peers.length },
      peers: status === undefined ? peers : peers.filter(peer => peer.routable === (status === 'up'))
    })
  }
  return { upstreams }
}
