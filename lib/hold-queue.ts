import type { FastifyRequest } from 'fastify'
import type { Peer, PeerChange } from './peer.js'
import type { CommandEvent } from './events.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import { HoldOverflowError, HoldTimeoutError, StartFailedError } from './errors.js'

interface Held {
  request: FastifyRequest
  deadline: number
  resolve: (peer: Peer) => void
  reject: (error: Error) => void
}

export interface HoldOptions {
  maxHeld: number
  holdTimeout: number
}

/**
 * Requests waiting for a cold start. The first one held asks the registry for
 * a peer (`demand`, once); all are released in arrival order the moment a
 * peer becomes routable, each with its own pick. Bounded in length and time;
 * a failed start fails them all with the reason.
 */
export class HoldQueue {
  readonly #upstream: Upstream
  readonly #registry: Registry
  readonly #options: HoldOptions
  #held: Held[] = []
  #timer: NodeJS.Timeout | undefined
  #listening = false

  constructor (upstream: Upstream, registry: Registry, options: HoldOptions) {
    this.#upstream = upstream
    this.#registry = registry
    this.#options = options
  }

  get size (): number { return this.#held.length }

  /** Waits for a routable peer for this request; the peer is picked (not yet acquired) when it resolves. */
  async wait (request: FastifyRequest): Promise<Peer> {
    if (this.#held.length >= this.#options.maxHeld) {
      throw new HoldOverflowError(this.#upstream.name, this.#options.maxHeld)
    }
    return await new Promise<Peer>((resolve, reject) => {
      const first = this.#held.length === 0
      this.#held.push({ request, deadline: Date.now() + this.#options.holdTimeout, resolve, reject })
      if (first) {
        this.#listen()
        this.#schedule()
        this.#upstream.demand()
      }
    })
  }

  /** A held client went away: forget its request. */
  drop (request: FastifyRequest): void {
    const at = this.#held.findIndex(held => held.request === request)
    if (at === -1) return
    this.#held.splice(at, 1)
    if (this.#held.length === 0) this.#idle()
  }

  /** Fails everything held (the server is closing). */
  close (error: Error): void {
    this.#failAll(error)
  }

  readonly #onChange = (change: PeerChange): void => {
    if (change.upstream !== this.#upstream.name || !this.#upstream.routable) return
    let next: Held | undefined
    while ((next = this.#held[0]) !== undefined) {
      const peer = this.#upstream.pick(next.request)
      if (peer === undefined) break
      this.#held.shift()
      // Acquired here, not by the caller, so that a load-aware balancer sees
      // each released request before it picks for the next one.
      peer.acquire()
      next.resolve(peer)
    }
    if (this.#held.length === 0) this.#idle()
  }

  readonly #onCommand = (event: CommandEvent): void => {
    if (event.upstream !== this.#upstream.name || event.command !== 'start' || event.ok) return
    if (this.#upstream.routable) return
    this.#failAll(new StartFailedError(this.#upstream.name, event.reason ?? event.fault ?? 'start failed'))
  }

  #failAll (error: Error): void {
    const held = this.#held
    this.#held = []
    this.#idle()
    for (const entry of held) entry.reject(error)
  }

  #expire (): void {
    this.#timer = undefined
    const now = Date.now()
    // Deadlines grow in arrival order: expired requests are a prefix.
    while (this.#held.length > 0 && this.#held[0].deadline <= now) {
      this.#held.shift()?.reject(new HoldTimeoutError(this.#upstream.name, this.#options.holdTimeout))
    }
    if (this.#held.length === 0) this.#idle()
    else this.#schedule()
  }

  #schedule (): void {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => this.#expire(), Math.max(0, this.#held[0].deadline - Date.now()))
    this.#timer.unref()
  }

  #listen (): void {
    if (this.#listening) return
    this.#listening = true
    this.#registry.on('change', this.#onChange)
    this.#registry.on('command', this.#onCommand)
  }

  #idle (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    if (!this.#listening) return
    this.#listening = false
    this.#registry.off('change', this.#onChange)
    this.#registry.off('command', this.#onCommand)
  }
}
