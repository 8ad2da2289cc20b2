import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Peer, PeerChange } from './peer.js'
import type { CommandEvent } from './events.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import { HoldOverflowError, HoldTimeoutError, NoPeerError, StartBackoffError, StartFailedError } from './errors.js'

interface Held {
  request: FastifyRequest
  /** Epoch ms it was held. */
  since: number
  deadline: number
  resolve: (peer: Peer) => void
  reject: (error: Error) => void
}

export interface HoldOptions {
  maxHeld: number
  holdTimeout: number
}

/**
 * Requests waiting for a peer: for a cold start, or (HAProxy's maxqueue) for
 * a slot while every routable peer is at its `maxConns` (released as slots
 * free). For a cold start, a request is held only while a peer can
 * still become routable (one is starting, can be started, or runs and may
 * recover); otherwise it is refused at once: 503 with Retry-After when every
 * startable peer is in start back-off, 503 when none can be started at all.
 *
 * The first request held asks the registry for a peer (`demand`); after
 * each change while requests are held, the upstream's start outlook decides:
 * release them (a peer is routable, each gets its own pick, in arrival
 * order), ask again (the last start failed and another peer can be started:
 * the requests stay held), keep waiting, or fail them (every candidate
 * failed: 502; nothing left to start: 503). Bounded in length and in time.
 */
export class HoldQueue {
  readonly #upstream: Upstream
  readonly #registry: Registry
  readonly #options: HoldOptions
  #held: Held[] = []
  #timer: NodeJS.Timeout | undefined
  #listening = false
  /** What the last failed start said, for the 502 when every candidate failed. */
  #lastFailure = 'start failed'
  /** Inside our own demand(): a starter that answers at once must not make us ask again from within it. */
  #demanding = false

  constructor (upstream: Upstream, registry: Registry, options: HoldOptions) {
    this.#upstream = upstream
    this.#registry = registry
    this.#options = options
  }

  /**
   * Waits for a routable peer for this request; the peer is picked and
   * acquired when it resolves. Rejects at once when no peer can become
   * routable (see the class).
   */
  async wait (request: FastifyRequest): Promise<Peer> {
    const outlook = this.#upstream.startOutlook()
    if (outlook.state === 'backoff') {
      this.#upstream.countRefused()
      throw new StartBackoffError(this.#upstream.name, Math.max(1, Math.ceil((outlook.retryAt - Date.now()) / 1000)))
    }
    if (outlook.state === 'none') throw new NoPeerError(this.#upstream.name)
    if (this.#held.length >= this.#options.maxHeld) {
      this.#upstream.countHoldOverflow()
      throw new HoldOverflowError(this.#upstream.name, this.#options.maxHeld)
    }
    return await new Promise<Peer>((resolve, reject) => {
      const first = this.#held.length === 0
      const now = Date.now()
      this.#held.push({ request, since: now, deadline: now + this.#options.holdTimeout, resolve, reject })
      this.#upstream.holdMoved(1)
      if (!first) return
      this.#listen()
      this.#schedule()
      // Also when a peer runs but is out: whoever starts peers may find it dead.
      // A starter that brings one up at once is heard by the listener above.
      this.#demand()
    })
  }

  /** A held client went away: forget its request. */
  drop (request: FastifyRequest): void {
    const at = this.#held.findIndex(held => held.request === request)
    if (at === -1) return
    this.#held.splice(at, 1)
    this.#upstream.holdMoved(-1)
    if (this.#held.length === 0) this.#idle()
  }

  /** Fails everything held (the server is closing). */
  close (error: Error): void {
    this.#failAll(error)
  }

  readonly #onChange = (change: PeerChange): void => {
    if (change.upstream !== this.#upstream.name) return
    // A failed start puts its peer in back-off before it goes down: the reason is known first here.
    if (change.field === 'backoff' && change.to !== 0 && change.reason !== undefined) this.#lastFailure = change.reason
    this.#settle()
  }

  readonly #onCommand = (event: CommandEvent): void => {
    if (event.upstream !== this.#upstream.name || event.command !== 'start') return
    // A command that says nothing of why keeps the reason already known (its back-off's).
    if (!event.ok) this.#lastFailure = event.reason ?? event.fault ?? this.#lastFailure
    this.#settle()
  }

  #settle (): void {
    // Each held request gets its own pick: none while no peer is routable.
    this.#release()
    if (this.#held.length === 0) return
    const outlook = this.#upstream.startOutlook()
    switch (outlook.state) {
      case 'startable':
        // The last start failed and another candidate is left: the requests stay held.
        this.#demand()
        break
      case 'backoff':
        this.#upstream.countRefused(this.#held.length)
        this.#failAll(new StartFailedError(this.#upstream.name, this.#lastFailure))
        break
      case 'none':
        this.#failAll(new NoPeerError(this.#upstream.name))
        break
    }
  }

  #demand (): void {
    if (this.#demanding) return
    this.#demanding = true
    try {
      this.#upstream.demand()
    } finally {
      this.#demanding = false
    }
  }

  readonly #release = (): void => {
    let next: Held | undefined
    const now = Date.now()
    let first = true
    while ((next = this.#held[0]) !== undefined) {
      const peer = this.#upstream.pick(next.request)
      if (peer === undefined) break
      this.#held.shift()
      this.#upstream.holdMoved(-1)
      this.#upstream.recordHoldWait(now - next.since, first)
      first = false
      // Acquired here, not by the caller, so that a load-aware balancer sees
      // each released request before it picks for the next one.
      peer.acquire()
      next.resolve(peer)
    }
    if (this.#held.length === 0) this.#idle()
  }

  #failAll (error: Error): void {
    const held = this.#held
    this.#held = []
    this.#idle()
    for (const entry of held) {
      this.#upstream.holdMoved(-1)
      entry.reject(error)
    }
  }

  #expire (): void {
    this.#timer = undefined
    const now = Date.now()
    // Deadlines grow in arrival order: expired requests are a prefix.
    let expired = 0
    while (this.#held.length > 0 && this.#held[0].deadline <= now) {
      this.#upstream.holdMoved(-1)
      expired++
      this.#held.shift()?.reject(new HoldTimeoutError(this.#upstream.name, this.#options.holdTimeout))
    }
    this.#upstream.countHoldTimeouts(expired)
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
    this.#upstream.onSlotFree(this.#release)
  }

  #idle (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    if (!this.#listening) return
    this.#listening = false
    this.#registry.off('change', this.#onChange)
    this.#registry.off('command', this.#onCommand)
    this.#upstream.onSlotFree(this.#release, false)
  }
}

/**
 * Answers a request the hold queue refused or failed. These outcomes are
 * logged once per start (or back-off step) by whoever starts peers, so the
 * answer is sent as it is, in Fastify's error shape, not through the error
 * handler that would log every one of them at error level. 503s carry
 * Retry-After: the start back-off's own when there is one.
 */
export function sendHoldFailure (reply: FastifyReply, error: Error & { statusCode?: number, code?: string, retryAfter?: number }, retryAfter: string): void {
  const statusCode = error.statusCode ?? 500
  if (statusCode === 503) reply.header('retry-after', error.retryAfter === undefined ? retryAfter : String(error.retryAfter))
  reply.code(statusCode).send({ statusCode, code: error.code, error: statusCode === 502 ? 'Bad Gateway' : 'Service Unavailable', message: error.message })
}
