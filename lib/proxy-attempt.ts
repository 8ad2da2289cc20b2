import { Readable } from 'node:stream'
import type { IncomingHttpHeaders } from 'node:http'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { errors, type Dispatcher } from 'undici'
import type { Peer } from './peer.js'
import type { RequestBody } from './proxy-body.js'
import type { HeaderFields } from './proxy-headers.js'
import { ClientGoneError, MalformedResponseError } from './errors.js'

/** The request reply-from hands to its `undici` dispatcher (see @fastify/reply-from lib/request.js). */
export interface ForwardedRequest {
  path: string
  method: string
  headers: HeaderFields
  body?: unknown
}

/** What reply-from expects back: the response, its body a stream. */
export interface ForwardedResponse {
  statusCode: number
  headers: IncomingHttpHeaders
  body: Readable
}

export type ForwardCallback = (error: Error | null, response?: ForwardedResponse) => void

/**
 * Interim (1xx) responses accepted before the final one. They never re-arm
 * the headers timer; past this many the response is malformed.
 */
export const MAX_INTERIM_RESPONSES = 10
const RESPONSE_HIGH_WATER_MARK = 64 * 1024

/** The timers of one attempt, in ms. */
export interface AttemptTimeouts {
  connectTimeout: number
  headersTimeout: number
  bodyTimeout: number
}

/** What an attempt reports to whoever dispatches it. */
export interface AttemptOwner {
  answered (attempt: Attempt, statusCode: number, headers: IncomingHttpHeaders): void
  failed (attempt: Attempt, error: Error): void
  /** The attempt no longer waits for an answer (abandoned): forget it. */
  forget (attempt: Attempt): void
}

/** Anything that holds a peer's in-flight slot for a client and must let go when the client leaves (an attempt, a WebSocket session). */
export interface Abandonable {
  abandon (reason: Error): void
}

/** A request's exchange, kept on it under a Symbol, out of the public shape. */
export const kExchange = Symbol('fastify-supervisord.exchange')

/**
 * One proxied request on its way through the peers: what reply-from sees as
 * a single upstream request, which may be sent to several peers before it is
 * answered. Made when the request arrives, kept on it under a Symbol.
 */
export class Exchange<Site = unknown> {
  readonly request: FastifyRequest
  readonly reply: FastifyReply
  /** Who balances it: the proxy of the upstream its Host (or the proxy's only upstream) names. */
  readonly site: Site
  readonly #peerHeader: string | undefined
  /** The client's body, when it has one. */
  body: RequestBody | null = null
  /** Peers already tried and failed (allocated at the first failure). */
  tried: Peer[] | null = null
  /** The attempt (or WebSocket session) that holds the peer now. */
  attempt: Abandonable | null = null
  forwarded: ForwardedRequest | null = null
  callback: ForwardCallback | null = null
  /** Epoch ms of the first try, for nextUpstreamTimeout. */
  startedAt = 0
  /** The Host header sent is the peer's address (it follows the peer on a retry) rather than one kept or set on purpose. */
  hostIsPeer = true
  clientGone = false

  constructor (request: FastifyRequest, reply: FastifyReply, site: Site, peerHeader: string | undefined) {
    this.request = request
    this.reply = reply
    this.site = site
    this.#peerHeader = peerHeader
  }

  /** The peer the request is (to be) sent to, already acquired. */
  get peer (): Peer | null {
    return this.request.upstreamPeer
  }

  assign (peer: Peer): void {
    this.request.upstreamPeer = peer
    if (this.#peerHeader !== undefined && !this.reply.sent) this.reply.header(this.#peerHeader, peer.address)
  }

  /** Gives the current peer's in-flight slot back. */
  release (): void {
    const peer = this.request.upstreamPeer
    if (peer === null) return
    this.request.upstreamPeer = null
    peer.release()
  }

  /** The client's connection closed: the slot is given back and, if the answer was not complete, the upstream request aborted. */
  closed (): void {
    if (!this.reply.raw.writableFinished) {
      this.clientGone = true
      this.attempt?.abandon(new ClientGoneError())
    }
    this.release()
  }
}

type Phase = 'connect' | 'headers' | 'body'

function expireAttempt (attempt: Attempt, phase: Phase): void {
  attempt.expire(phase)
}

/**
 * One try of an exchange on one peer: an undici dispatch handler, which also
 * makes the response body stream handed to reply-from. It keeps its own
 * timer, one at a time, for the phase it is in (connect, response headers,
 * the gap between two body chunks): undici's own timers tick about once a
 * second, so a 300 ms timeout would fire after up to 1.3 s.
 */
export class Attempt implements Dispatcher.DispatchHandler, Abandonable {
  readonly exchange: Exchange
  readonly peer: Peer
  readonly #owner: AttemptOwner
  readonly #timeouts: AttemptTimeouts
  #timer: NodeJS.Timeout | undefined
  #controller: Dispatcher.DispatchController | null = null
  /** undici started writing the request to the peer: bytes may have reached it. */
  sent = false
  /** The final response's headers came. */
  answered = false
  #ended = false
  #interim = 0
  /** The response body is paused (the client reads slowly): the body timer waits, it is not the peer's fault. */
  #paused = false
  /** Why the proxy gave this attempt up (the client left, the peer was taken out, a timer fired); its outcome is ignored then. */
  abandoned: Error | null = null
  /** performance.now() when it was made (and dispatched): its response time counts from here. */
  readonly startedAt = performance.now()
  response: Readable | null = null

  constructor (owner: AttemptOwner, exchange: Exchange, peer: Peer, timeouts: AttemptTimeouts) {
    this.#owner = owner
    this.exchange = exchange
    this.peer = peer
    this.#timeouts = timeouts
    this.#arm('connect')
  }

  /** Gives the attempt up: its undici request is aborted now, or as soon as undici starts it. */
  abandon (reason: Error): void {
    if (this.abandoned !== null || this.#ended) return
    clearTimeout(this.#timer)
    this.abandoned = reason
    this.#owner.forget(this)
    this.#controller?.abort(reason)
  }

  /** A timer fired: the attempt fails as timed out now, whatever undici does after. */
  expire (phase: Phase): void {
    if (this.abandoned !== null || this.#ended) return
    const ms = this.#timeouts[`${phase}Timeout`]
    const error = phase === 'connect'
      ? new errors.ConnectTimeoutError(`no connection to the peer within ${ms} ms`)
      : phase === 'headers'
        ? new errors.HeadersTimeoutError(`no response headers within ${ms} ms`)
        : new errors.BodyTimeoutError(`no response body data for ${ms} ms`)
    this.#ended = true
    this.abandoned = error
    this.#owner.failed(this, error)
    this.#controller?.abort(error)
  }

  /** A chunk of a streamed request body went out: the peer gets headersTimeout again from here, as undici counts it. */
  readonly progress = (): void => {
    if (this.answered || this.#ended) return
    this.#timer?.refresh()
  }

  #arm (phase: Phase): void {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(expireAttempt, this.#timeouts[`${phase}Timeout`], this, phase)
    this.#timer.unref()
  }

  #stop (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
  }

  onRequestStart (controller: Dispatcher.DispatchController): void {
    if (this.abandoned !== null) {
      controller.abort(this.abandoned)
      return
    }
    this.#controller = controller
    this.sent = true
    this.#arm('headers')
  }

  onResponseStart (controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (statusCode < 200) {
      if (++this.#interim > MAX_INTERIM_RESPONSES) controller.abort(new MalformedResponseError(`more than ${MAX_INTERIM_RESPONSES} interim responses`))
      return
    }
    if (statusCode > 599) {
      controller.abort(new MalformedResponseError(`status ${statusCode}`))
      return
    }
    this.answered = true
    this.#arm('body')
    this.response = new Readable({
      highWaterMark: RESPONSE_HIGH_WATER_MARK,
      read: () => {
        if (!this.#paused) return
        this.#paused = false
        if (!this.#ended) this.#arm('body')
        this.#controller?.resume()
      },
      // The consumer gave up on the body (the client went away): the upstream request goes too.
      destroy: (error, callback) => {
        this.abandon(error ?? new ClientGoneError())
        callback(error)
      }
    })
    this.#owner.answered(this, statusCode, headers)
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.response?.push(chunk) === false) {
      this.#paused = true
      this.#stop()
      controller.pause()
    } else {
      this.#timer?.refresh()
    }
  }

  onResponseEnd (): void {
    this.#stop()
    this.#ended = true
    this.response?.push(null)
  }

  onResponseError (_controller: Dispatcher.DispatchController, error: Error): void {
    this.#stop()
    this.#ended = true
    // Given up by the proxy (one of its timers failed it, the client left, the peer was taken out): undici's error is the abort that followed.
    if (this.abandoned !== null) {
      this.response?.destroy()
      return
    }
    this.#owner.failed(this, error)
  }
}
