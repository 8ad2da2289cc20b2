import type { CheckResult, HealthState, Peer } from './peer.js'
import { leaseNames, type Group } from './group.js'
import type { LeaseKeeper } from './store/lease.js'
import type { SharedHealthRecord, StoreMessage } from './store/types.js'

// Active checks in a group of gateways, as the nginx healthcheck module's
// workers shared them: each peer's checks have one owner, by a lease; it
// writes every result to the store, and the others route on what it wrote.
// When the store cannot tell, every gateway checks for itself.

/** One peer's share of the checks, as its checker sees it. */
export class PeerShare {
  readonly keeper: LeaseKeeper
  readonly #group: Group
  readonly #peer: Peer
  /** ms a written result counts for: a few intervals, so that it outlives its owner by little. */
  readonly #freshMs: number

  constructor (group: Group, peer: Peer, freshMs: number) {
    this.#group = group
    this.#peer = peer
    this.#freshMs = Math.ceil(freshMs)
    this.keeper = group.keeper(leaseNames.checks(peer.upstream, peer.index))
  }

  /** This gateway checks the peer: it owns the checks, or the store cannot say who does. */
  get here (): boolean {
    return this.keeper.held || !this.#group.ok
  }

  /** The owner's result (or its health after the process went down): written to the store, and announced when the health changed. */
  written (health: HealthState, check: CheckResult | null, changed: boolean): void {
    const group = this.#group
    if (!this.keeper.held || !group.ok) return
    const { upstream, index } = this.#peer
    group.store.writeHealth(upstream, index, { health, check, by: group.id }, this.#freshMs)
    if (changed) group.publish({ type: 'health', upstream, index, health, by: group.id, at: Date.now() })
  }
}

/** What a checker does with what another gateway wrote. */
export interface SharedResultTaker {
  applyShared (record: SharedHealthRecord, now: number): void
}

/**
 * The group side of the checks: every peer's lease kept, and what the other
 * owners wrote read on their word, on `resync` and every syncInterval.
 */
export class SharedChecks {
  readonly #group: Group
  readonly #shares: PeerShare[] = []
  readonly #takers = new Map<string, SharedResultTaker[]>()
  #timer: NodeJS.Timeout | undefined
  #reading: Promise<void> | undefined
  #again = false
  #running = false
  readonly #onError: (error: unknown) => void

  constructor (group: Group, onError: (error: unknown) => void) {
    this.#group = group
    this.#onError = onError
  }

  add (upstream: string, takers: SharedResultTaker[], shares: PeerShare[]): void {
    this.#takers.set(upstream, takers)
    this.#shares.push(...shares)
  }

  start (): void {
    this.#running = true
    for (const share of this.#shares) share.keeper.start()
    this.#group.on('message', this.#onMessage)
    // A gateway that joins routes on the owners' results at once, not a syncInterval later.
    this.#readSoon()
    this.#schedule()
  }

  /** Gives every lease up (the others take the checks over at once, not after a lease time). */
  async stop (): Promise<void> {
    this.#running = false
    clearTimeout(this.#timer)
    this.#group.off('message', this.#onMessage)
    await Promise.allSettled(this.#shares.map(async share => await share.keeper.stop()))
    await this.#reading
  }

  readonly #onMessage = (message: StoreMessage): void => {
    if (message.type === 'health' || message.type === 'resync') this.#readSoon()
  }

  #schedule (): void {
    if (!this.#running) return
    this.#timer = setTimeout(() => {
      this.#readSoon()
      this.#schedule()
    }, this.#group.syncInterval).unref()
  }

  #readSoon (): void {
    if (this.#reading !== undefined) {
      this.#again = true
      return
    }
    this.#reading = this.#read().catch(this.#onError).finally(() => {
      this.#reading = undefined
      if (this.#again && this.#running) {
        this.#again = false
        this.#readSoon()
      }
    })
  }

  async #read (): Promise<void> {
    if (!this.#group.ok) return
    const records = await this.#group.store.readHealth().catch(() => [])
    const now = Date.now()
    for (const record of records) this.#takers.get(record.upstream)?.[record.index]?.applyShared(record, now)
  }
}
