import type { AdminState, HealthState, PassiveState, PinState, ProcessState } from '../peer.js'

export type StatusFilter = 'up' | 'down'
export type StatusFormat = 'html' | 'json' | 'csv'

export interface CheckStatus {
  ok: boolean
  reason: string
  latencyMs: number
  /** ms between the check's end and the snapshot. */
  ageMs: number
}

export interface PeerStatus {
  index: number
  address: string
  /** supervisord program name (`<supervisordName or upstream name><index>`), null when no bridge manages the upstream. */
  program: string | null
  pid: number | null
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
  fails: number
  rise: number
  fall: number
  lastCheck: CheckStatus | null
  weight: number
  backup: boolean
  /** Recent active checks, oldest first (at most HISTORY_SHOWN). */
  checks: CheckStatus[]
}

export interface UpstreamStatus {
  name: string
  balancer: string
  /** Where supervisord listens, never with credentials: `host:port`, `unix:/path` or `none` (also when no bridge manages the upstream). */
  supervisord: string
  /** Counts over all the upstream's peers, whatever the status filter. */
  summary: { routable: number, total: number }
  /** The peers that pass the status filter. */
  peers: PeerStatus[]
}

export interface StatusSnapshot {
  upstreams: UpstreamStatus[]
}
