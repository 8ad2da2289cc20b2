import { EventEmitter } from 'node:events'
import { StoreArgumentError } from '../errors.js'
import { checkName, checkTtl } from './records.js'
import type { Store } from './types.js'

// Leases as the gateways use them: a lease kept for as long as a gateway runs
// (a peer's checks, the scaler's lead), and one held for the span of a task
// (the start of a program). A holder counts the lease as its own from the
// moment it asked, not from the answer, so it never believes it holds a lease
// Redis has already let lapse.

export interface LeaseEvents {
  /** This owner holds the lease now (it did not before). */
  acquired: []
  /** It held the lease and does not any more: another took it, or it could not be renewed in time. */
  lost: [string]
}

export interface LeaseKeeperOptions {
  /** ms the lease lasts without renewal: how long others wait when this owner dies. */
  ttlMs: number
  /** ms between attempts to take or renew it (default a third of ttlMs). */
  renewMs?: number
}

/**
 * Keeps trying to hold a lease (acquire, then renew) on a chained, unref()ed
 * timer. `held` is the local answer to "is it mine?", which costs no store call.
 */
export class LeaseKeeper extends EventEmitter<LeaseEvents> {
  readonly name: string
  readonly owner: string
  readonly #store: Store
  readonly #ttlMs: number
  readonly #renewMs: number
  #heldUntil = 0
  #timer: NodeJS.Timeout | undefined
  #running = false
  #round: Promise<void> | undefined

  constructor (store: Store, name: string, owner: string, options: LeaseKeeperOptions) {
    super()
    this.#store = store
    this.name = checkName(name, 'lease name')
    this.owner = checkName(owner, 'lease owner')
    this.#ttlMs = checkTtl(options?.ttlMs)
    this.#renewMs = options.renewMs === undefined ? Math.max(1, Math.floor(this.#ttlMs / 3)) : checkTtl(options.renewMs, 'renewMs')
    if (this.#renewMs >= this.#ttlMs) throw new StoreArgumentError(`renewMs (${this.#renewMs}) must be shorter than ttlMs (${this.#ttlMs}), or the lease lapses between renewals`)
  }

  /** Whether this owner holds the lease, as far as it can know without asking. */
  get held (): boolean {
    if (this.#heldUntil === 0) return false
    if (Date.now() < this.#heldUntil) return true
    this.#lose('not renewed within its ttl')
    return false
  }

  /** Starts taking and renewing it; a first attempt at once. */
  start (): void {
    if (this.#running) return
    this.#running = true
    this.#tick()
  }

  /** Stops, and gives the lease up if it is held (bounded by the store's timeout). */
  async stop (): Promise<void> {
    this.#running = false
    clearTimeout(this.#timer)
    await this.#round
    if (this.#heldUntil === 0) return
    this.#heldUntil = 0
    await this.#store.release(this.name, this.owner).catch(() => {})
  }

  #tick (): void {
    this.#timer = undefined
    this.#round = this.#attempt().finally(() => {
      this.#round = undefined
      if (this.#running) this.#timer = setTimeout(() => this.#tick(), this.#renewMs).unref()
    })
  }

  async #attempt (): Promise<void> {
    const asked = Date.now()
    const had = this.held
    let holds: boolean
    try {
      holds = had ? await this.#store.renew(this.name, this.owner, this.#ttlMs) : await this.#store.acquire(this.name, this.owner, this.#ttlMs)
    } catch {
      // Nobody can tell: it stays ours until it would have lapsed (`held` checks).
      return
    }
    if (!this.#running) {
      if (holds) this.#heldUntil = asked + this.#ttlMs
      return
    }
    if (holds) {
      this.#heldUntil = asked + this.#ttlMs
      if (!had) this.emit('acquired')
    } else {
      this.#lose('another owner holds it')
    }
  }

  #lose (reason: string): void {
    if (this.#heldUntil === 0) return
    this.#heldUntil = 0
    this.emit('lost', reason)
  }
}

export type LeaseTaskResult<T> = { acquired: true, value: T } | { acquired: false, owner: string | null }

/**
 * Runs `task` only if this owner gets the lease: single flight across the
 * group. The lease is renewed while the task runs and released when it ends.
 * Another owner holding it: `{ acquired: false, owner }`, the task not run.
 * Rejects with StoreUnavailableError when the store cannot tell: the caller
 * decides alone (a gateway then starts the program itself).
 */
export async function withLease<T> (store: Store, name: string, owner: string, ttlMs: number, task: () => Promise<T>): Promise<LeaseTaskResult<T>> {
  if (!await store.acquire(name, owner, ttlMs)) return { acquired: false, owner: await store.owner(name).catch(() => null) }
  const renewMs = Math.max(1, Math.floor(ttlMs / 3))
  let timer: NodeJS.Timeout | undefined
  let done = false
  const renew = (): void => {
    if (done) return
    timer = setTimeout(() => { store.renew(name, owner, ttlMs).catch(() => false).finally(renew) }, renewMs).unref()
  }
  renew()
  try {
    return { acquired: true, value: await task() }
  } finally {
    done = true
    clearTimeout(timer)
    await store.release(name, owner).catch(() => false)
  }
}
