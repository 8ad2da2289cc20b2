import type { EventEmitter } from 'node:events'
import type { AdminState, CheckResult, HealthState } from '../peer.js'

// The state that several gateway processes share, behind one interface: the
// in-memory store (one process, the default) and the Redis store (many).
//
// Rules every store keeps:
// - A bad argument throws at the call (StoreArgumentError): a programming mistake.
// - Writes (writeSettings, writeHealth, writeLoad, announce, withdraw, publish)
//   never reject: they resolve to what was applied, or false/null when the
//   store could not take it in time. Fire and forget is safe.
// - Reads and leases reject with StoreUnavailableError when the store cannot
//   answer within its timeout, so that a caller can tell "someone else holds
//   it" from "nobody can tell" and fall back to a local decision.
// - No call waits longer than the store's timeout, whatever Redis does.

/** `connecting` until the first answer; `degraded` while calls fail; `ok` otherwise. */
export type StoreState = 'connecting' | 'ok' | 'degraded'

export interface StoreStatus {
  state: StoreState
  /** Why the store is not `ok` (the first failure since it was), null when it is. */
  reason: string | null
  /** Epoch ms when this state began. */
  since: number
}

/** An operator's start or stop of a peer: the scaler leaves it so until the pin is released (null). */
export type PeerPin = 'start' | 'stop'

/** The durable, shared settings of a peer. */
export interface PeerSettings {
  admin: AdminState
  weight: number
  pin: PeerPin | null
}

export type SettingName = keyof PeerSettings

export interface PeerRef { upstream: string, index: number }

/** The settings stored for one peer: only those ever written are present. */
export interface PeerSettingsRecord extends PeerRef, Partial<PeerSettings> {
  /** The store version of this peer's latest change. */
  version: number
  /** Epoch ms of that change, by the writer's clock. */
  at: number
  /** Who wrote that change (a gateway id). */
  by: string
}

export interface SettingsSnapshot {
  /** Goes up by one with every write that changed something. */
  version: number
  peers: PeerSettingsRecord[]
}

/** A peer's active health as its check owner sees it. */
export interface SharedHealth {
  health: HealthState
  /** The check that led to it, when there was one. */
  check: CheckResult | null
  /** The gateway that checked. */
  by: string
}

export interface SharedHealthRecord extends PeerRef, SharedHealth {
  /** ms since it was written, by the store's clock (so the writer's clock does not matter). */
  age: number
}

/** The load counters of one window: each gateway's count and their sum. */
export interface LoadSum {
  total: number
  gateways: Record<string, number>
}

export type MemberDetails = Record<string, string | number | boolean>

/** A gateway of the group, as it announced itself. */
export interface Member {
  id: string
  details: MemberDetails
  /** Epoch ms of its latest announcement, by its own clock. */
  at: number
}

/** Published by the store itself on every settings write: re-read with readSettings. */
export interface SettingsEvent { type: 'settings', version: number, peers: PeerRef[], by: string, at: number }
/** A start or stop carried out by a gateway: the others need not wait for their poll. */
export interface ProcessEvent extends PeerRef { type: 'process', command: 'start' | 'stop', ok: boolean, by: string, at: number }
/** A check owner saw a peer's health change: re-read it with readHealth. */
export interface HealthEvent extends PeerRef { type: 'health', health: HealthState, by: string, at: number }
/**
 * Local only: the store is back after it was degraded (or connected for the
 * first time), and messages may have been lost meanwhile: re-read everything.
 */
export interface ResyncEvent { type: 'resync', at: number }

export type StoreMessage = SettingsEvent | ProcessEvent | HealthEvent | ResyncEvent
/** What a gateway may publish itself. */
export type PublishedEvent = ProcessEvent | HealthEvent

export interface StoreEvents {
  /** The state changed (announced once per change, never per call). */
  state: [StoreStatus]
  /** A message from any gateway of the group (this one included), or a local `resync`. */
  message: [StoreMessage]
}

export interface Store extends EventEmitter<StoreEvents> {
  readonly kind: 'memory' | 'redis'
  readonly namespace: string
  readonly status: StoreStatus

  /** Resolves once the store answered, or was found degraded; never rejects. */
  connect (): Promise<void>
  /** Withdraws the announced member (best effort, bounded) and closes what the store opened. */
  close (): Promise<void>

  /**
   * Merges `patch` into the peer's stored settings and publishes a `settings`
   * message. Resolves the new version, or null when the store was unreachable:
   * the patch is then kept (latest value per setting) and written when the
   * store is back, unless a later write of the same setting got there first.
   */
  writeSettings (upstream: string, index: number, patch: Partial<PeerSettings>, by: string): Promise<number | null>
  /** Every peer's stored settings; null when the version is still `sinceVersion`. */
  readSettings (sinceVersion?: number): Promise<SettingsSnapshot | null>

  /** Takes the lease for `ttlMs` if it is free (or extends it if `owner` holds it already); true when `owner` holds it. */
  acquire (name: string, owner: string, ttlMs: number): Promise<boolean>
  /** Extends the lease to `ttlMs` from now, only if `owner` still holds it. */
  renew (name: string, owner: string, ttlMs: number): Promise<boolean>
  /** Gives the lease up, only if `owner` holds it; true when it did. */
  release (name: string, owner: string): Promise<boolean>
  /** Who holds the lease, or null. */
  owner (name: string): Promise<string | null>
  /** owner() of each name, in one round trip. */
  owners (names: readonly string[]): Promise<Array<string | null>>

  /** Shares a peer's health; readers ignore it once `freshMs` has passed without a newer one. */
  writeHealth (upstream: string, index: number, health: SharedHealth, freshMs: number): Promise<boolean>
  /** The fresh shared health of every peer. */
  readHealth (): Promise<SharedHealthRecord[]>

  /** Sets `gateway`'s count for `window` of counter `name` (idempotent: the count so far, not an increment); the window is forgotten `ttlMs` after its last write. */
  writeLoad (name: string, window: number, gateway: string, count: number, ttlMs: number): Promise<boolean>
  /** The counts written for `window`, and their sum. */
  readLoad (name: string, window: number): Promise<LoadSum>

  /** Says this gateway is in the group for `ttlMs` (repeat before it lapses). The store repeats it when it reconnects. */
  announce (id: string, details: MemberDetails, ttlMs: number): Promise<boolean>
  withdraw (id: string): Promise<boolean>
  /** The gateways whose announcement has not lapsed. */
  members (): Promise<Member[]>

  /** Sends a message to every gateway of the group (this one included); at most once, never the only path. */
  publish (event: PublishedEvent): Promise<boolean>
}
