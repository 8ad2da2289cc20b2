import type { AdminState, FailureKind, HealthState, PassiveState, PinState, ProcessState, StatusClass } from '../peer.js'
import type { PeerState } from '../peer-state.js'
import type { StartOutlook } from '../upstream.js'
import type { StoreState } from '../store/types.js'

export type StatusFilter = 'up' | 'down'
export type StatusFormat = 'html' | 'json' | 'csv'

export interface CheckStatus {
  ok: boolean
  reason: string
  latencyMs: number
  /** ms between the check's end and the snapshot. */
  ageMs: number
}

export interface LastCheckStatus extends CheckStatus {
  /** The peer is not checked any more (its process is down or stopping): the result is old news. */
  stale: boolean
}

/** The last supervisord command on a peer (never its reason: it may name supervisord's user). */
export interface CommandStatus {
  command: 'start' | 'stop'
  ok: boolean
  /** supervisord's fault (SPAWN_ERROR, ...) or a transport failure (TIMEOUT, UNREACHABLE, ...); null when it succeeded. */
  fault: string | null
  /** ms since it ended. */
  ageMs: number
  /** The gateway of the group that sent it, when another one did (this one waited for its outcome); null otherwise, or for a viewer who does not pass the guard. */
  by: string | null
}

export interface PeerStatus {
  index: number
  /** `host:port`; null for a viewer who does not pass the status page's guard. */
  address: string | null
  /** supervisord program name (`<supervisordName or upstream name><index>`), null when no bridge manages the upstream, or for a viewer who does not pass the guard. */
  program: string | null
  /** null when unknown, or for a viewer who does not pass the guard. */
  pid: number | null
  /** What the peer is doing, in one word (see the README's legend). */
  state: PeerState
  /** ms since it entered `state`. */
  inStateMs: number
  process: ProcessState
  admin: AdminState
  /** An operator's start (`up`) or stop (`down`) the scaler leaves alone, `none` when not pinned. */
  pin: PinState
  /** The start back-off after failed starts (null: none): `step` failed starts in a row, the next try in `retryInMs` (0: now). */
  backoff: { step: number, retryInMs: number } | null
  health: HealthState
  passive: PassiveState
  routable: boolean
  inflight: number
  requests: number
  /** Requests per second sent to it since the oldest read within the last minute (null on a first read). */
  requestRate: number | null
  fails: number
  /** Passive failures by kind. */
  errors: Record<FailureKind, number>
  /** Responses it sent, by status class. */
  responses: Record<StatusClass, number>
  /** Requests it got after another peer failed them. */
  retries: number
  /** Requests moved from it to another peer. */
  redispatches: number
  rise: number
  fall: number
  lastCheck: LastCheckStatus | null
  lastCommand: CommandStatus | null
  weight: number
  backup: boolean
  /** Recent active checks, oldest first (at most HISTORY_SHOWN). */
  checks: CheckStatus[]
}

export interface UpstreamStatus {
  name: string
  balancer: string
  /** Where supervisord listens, never with credentials: `host:port`, `unix:/path` or `none` (also when no bridge manages the upstream); null for a viewer who does not pass the guard. */
  supervisord: string | null
  /** Counts over all the upstream's peers, whatever the status filter. */
  summary: { routable: number, total: number }
  /** Whether it can take a request now or by starting a peer, and what its start outlook is (see the README's "Holding requests"). */
  readiness: { ready: boolean, outlook: StartOutlook['state'] }
  /** Requests held for a cold start: now, the most at once, refused because the queue was full, timed out. */
  hold: { current: number, max: number, overflows: number, timeouts: number }
  /**
   * The scaler's last reading (null without a scaler): load in requests/s per
   * running peer against the threshold, and when it decides next. `over`:
   * the load is this gateway's alone, or the group's (on the gateway that
   * leads the group's scaler; the others show their own share).
   */
  scale: { load: number | null, over: 'gateway' | 'group', threshold: number, running: number, minRunning: number, maxRunning: number, nextDecisionInMs: number } | null
  /** The peers that pass the status filter. */
  peers: PeerStatus[]
}

export interface GatewayStatus {
  /** fastify-supervisord's version. */
  version: string
  /** ms since the gateway's registry was made. */
  uptimeMs: number
}

/**
 * The gateways that act as one through their store, as this gateway sees
 * them. For a viewer who does not pass the guard, only the store's state:
 * gateway ids hold host names.
 */
export interface GroupStatus {
  /** This gateway's id (null when redacted). */
  gateway: string | null
  /** `shared` false: a group of one (the default in-memory store), nothing shared. `degraded`: routing on the last known state. */
  store: { kind: 'memory' | 'redis', shared: boolean, state: StoreState, sinceMs: number }
  /** The gateways of the group, as of the last sync (each one's host, pid, and ms since it last announced itself); empty when redacted. */
  members: Array<{ id: string, host: string | null, pid: number | null, ageMs: number }>
  /** Who checks each peer, where checks are shared (null: nobody holds the lease now); empty when redacted. */
  checks: Array<{ upstream: string, index: number, owner: string | null }>
  /** Who leads the scaler of the group (null: nobody now); absent with no shared scaler, or when redacted. */
  scaler?: string | null
}

export interface StatusSnapshot {
  gateway: GatewayStatus
  upstreams: UpstreamStatus[]
  /** The group this gateway is part of (a group of one without a shared store). */
  group: GroupStatus
}
