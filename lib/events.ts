import type { PeerChange } from './peer.js'

/** A request found no routable peer and could be held while one is started. */
export interface DemandEvent { upstream: string, at: number }

/** A supervisord command ended (in `none` mode too). */
export interface CommandEvent {
  upstream: string
  index: number
  command: 'start' | 'stop'
  ok: boolean
  /** supervisord's fault name (SPAWN_ERROR, BAD_NAME, ...) or a transport failure (TIMEOUT, UNAUTHORIZED, UNREACHABLE). */
  fault?: string
  /** Human-readable reason, for logs and answers. */
  reason?: string
  /** The gateway of the group that sent it, when not this one (this one waited for its outcome). */
  by?: string
  at: number
}

/** A scaling decision, with the numbers that made it; the supervisord bridge carries it out. */
export interface ScaleEvent {
  upstream: string
  action: 'start' | 'stop'
  index: number
  /** Requests per second per running peer over the window (mean in-flight per running peer for reason 'in-flight'). */
  load: number
  running: number
  /** The loadThreshold (targetInFlight for reason 'in-flight') the load was held against. */
  threshold: number
  reason: 'load' | 'idle' | 'low load' | 'min running' | 'in-flight'
  at: number
}

/** Events of the registry: the "monitor" API, with any number of listeners. */
export interface RegistryEvents {
  change: [PeerChange]
  demand: [DemandEvent]
  command: [CommandEvent]
  scale: [ScaleEvent]
}
