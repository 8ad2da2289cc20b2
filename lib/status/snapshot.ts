import { FAILURE_KINDS, STATUS_CLASSES, type CheckResult, type FailureKind, type Peer, type StatusClass } from '../peer.js'
import type { Registry } from '../registry.js'
import type { Upstream } from '../upstream.js'
import { VERSION } from '../version.js'
import { leaseNames } from '../group.js'
import { readiness } from './readiness.js'
import type { StatusFilter, CheckStatus, GroupStatus, PeerStatus, StatusSnapshot, UpstreamStatus } from './types.js'

/** Bars in a peer's picture of recent checks (and entries in `checks`). */
const HISTORY_SHOWN = 30

export interface SnapshotOptions {
  /** Keep only routable (`up`) or non-routable (`down`) peers. */
  status?: StatusFilter
  /** Addresses, program names, pids and supervisord's address are left out (null): for a viewer who does not pass the guard. */
  redact?: boolean
  now?: number
}

function checkStatus (check: CheckResult, now: number): CheckStatus {
  return {
    ok: check.ok,
    reason: check.reason,
    latencyMs: Math.round(check.latencyMs * 10) / 10,
    ageMs: Math.max(0, Math.round(now - check.at))
  }
}

const round1 = (n: number): number => Math.round(n * 10) / 10

function peerStatus (registry: Registry, peer: Peer, now: number, redact: boolean): PeerStatus {
  const { state, since } = registry.activity.state(peer, now)
  const rate = registry.activity.requestRate(peer, now)
  const command = registry.activity.lastCommand(peer)
  const responses = {} as Record<StatusClass, number>
  STATUS_CLASSES.forEach((name, i) => { responses[name] = peer.responses[i] })
  const errors = {} as Record<FailureKind, number>
  for (const kind of FAILURE_KINDS) errors[kind] = peer.failuresByKind[kind]
  return {
    index: peer.index,
    address: redact ? null : peer.address,
    program: redact ? null : peer.program,
    pid: redact ? null : peer.pid,
    state,
    inStateMs: Math.max(0, now - since),
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
    requestRate: rate === null ? null : round1(rate),
    fails: peer.fails,
    errors,
    responses,
    retries: peer.retries,
    redispatches: peer.redispatches,
    rise: peer.rise,
    fall: peer.fall,
    lastCheck: peer.lastCheck === null ? null : { ...checkStatus(peer.lastCheck, now), stale: !peer.running },
    lastCommand: command === null ? null : { command: command.command, ok: command.ok, fault: command.fault ?? null, ageMs: Math.max(0, now - command.at), by: redact ? null : command.by ?? null },
    weight: peer.weight,
    backup: peer.backup,
    checks: peer.checks.slice(-HISTORY_SHOWN).map(check => checkStatus(check, now))
  }
}

/** One upstream and its peers (all of them, or those the filter keeps). */
export function upstreamStatus (registry: Registry, upstream: Upstream, options: SnapshotOptions = {}): UpstreamStatus {
  const { status, redact = false, now = Date.now() } = options
  const peers = upstream.peers.map(peer => peerStatus(registry, peer, now, redact))
  const { current, max, overflows, timeouts } = upstream.hold
  const scale = upstream.scale
  return {
    name: upstream.name,
    balancer: upstream.balancer.name,
    supervisord: redact ? null : upstream.supervisord,
    summary: { routable: peers.filter(peer => peer.routable).length, total: peers.length },
    readiness: readiness(upstream, now),
    hold: { current, max, overflows, timeouts },
    scale: scale === null
      ? null
      : { load: scale.load, over: scale.over, threshold: scale.threshold, running: scale.running, minRunning: scale.minRunning, maxRunning: scale.maxRunning, nextDecisionInMs: Math.max(0, scale.nextAt - now) },
    peers: status === undefined ? peers : peers.filter(peer => peer.routable === (status === 'up'))
  }
}

/** The gateways this one acts as one with, through the store (only the store's state when redacted: gateway ids hold host names). */
function groupStatus (registry: Registry, now: number, redact: boolean): GroupStatus {
  const group = registry.group
  const status = group.store.status
  const store = { kind: group.store.kind, shared: group.shared, state: status.state, sinceMs: Math.max(0, now - status.since) }
  if (redact) return { gateway: null, store, members: [], checks: [] }
  const checks: GroupStatus['checks'] = []
  for (const upstream of registry.upstreams.values()) {
    for (const peer of upstream.peers) {
      const owner = group.owner(leaseNames.checks(upstream.name, peer.index))
      if (owner !== undefined) checks.push({ upstream: upstream.name, index: peer.index, owner })
    }
  }
  const scaler = group.owner(leaseNames.scaler)
  return {
    gateway: group.id,
    store,
    members: group.members.map(member => ({
      id: member.id,
      host: typeof member.details.host === 'string' ? member.details.host : null,
      pid: typeof member.details.pid === 'number' ? member.details.pid : null,
      ageMs: Math.max(0, now - member.at)
    })),
    checks,
    ...(scaler === undefined ? {} : { scaler })
  }
}

/**
 * Every upstream and its peers as plain data, the one source of the JSON,
 * CSV and HTML answers. `status` keeps only routable (`up`) or
 * non-routable (`down`) peers; upstreams are always listed.
 */
export function statusSnapshot (registry: Registry, options: SnapshotOptions = {}): StatusSnapshot {
  const now = options.now ?? Date.now()
  return {
    gateway: { version: VERSION, uptimeMs: Math.max(0, now - registry.activity.startedAt) },
    upstreams: [...registry.upstreams.values()].map(upstream => upstreamStatus(registry, upstream, { ...options, now })),
    group: groupStatus(registry, now, options.redact ?? false)
  }
}
