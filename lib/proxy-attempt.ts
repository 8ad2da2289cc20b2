import { Readable } from 'node:stream'
import type { IncomingHttpHeaders } from 'node:http'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import type { Peer } from './peer.js'
import type { RequestBody } from './proxy-body.js'
import type { HeaderFields } from './proxy-headers.js'
import { ClientGoneError, MalformedResponseError } from './errors.js'

/** The request reply-from hands to its `undici` dispatcher (see @fastify/reply-from lib/request.js). */
export interface ForwardedRequest {
  path: string
  method: string
  headers: HeaderFields
  headersTimeout?: number
  bodyTimeout?: number
}

/** What reply-from expects back: the response, its body a stream. */
export interface ForwardedResponse {
  statusCode: number
  headers: IncomingHttpHeaders
  body: Readable
}

export type ForwardCallback = (error: Error | null, response?: ForwardedResponse) => void

/**
 * Interim (1xx) responses accepted before the final one. Each one re-arms
 * undici's headers timeout, so a peer sending them without end would hold
 * the request forever.
 */
export const MAX_INTERIM_RESPONSES = 10
const RESPONSE_HIGH_WATER_MARK = 64 * 1024

/** What an attempt reports to whoever dispatches it. */
export interface AttemptOwner {
  answered (attempt: Attempt, statusCode: number, headers: IncomingHttpHeaders): void
  failed (attempt: Attempt, error: Error): void
  /** The attempt no longer waits for an answer (abandoned): forget it. */
  forget (attempt: Attempt): void
}

/**
 * One proxied request on its way through the peers: what reply-from sees as
 * a single upstream request, which may be sent to several peers before it is
 * answered. Kept on the request under a Symbol.
 */
export class Exchange {
  readonly request: FastifyRequest
  readonly reply: FastifyReply
  readonly #peerHeader: string | undefined
  /** The client's body, when it has one. */
  body: RequestBody | null = null
  /** Peers already tried and failed (allocated at the first failure). */
  tried: Peer[] | null = null
  attempt: Attempt | null = null
  forwarded: ForwardedRequest | null = null
  callback: ForwardCallback | null = null
  clientGone = false

  constructor (request: FastifyRequest, reply: FastifyReply, peerHeader: string | undefined) {
    this.request = request
    this.reply = reply
    this.#peerHeader = peerHeader
  }

  /** The peer the request is (to be) sent to, already acquired. */
  get peer (): Peer | null {
    return this.request.upstreamPeer
  }

  assign (peer: Peer): void {
    this.request.upstreamPeer = peer
    if (this.#peerHeader !== undefined) this.reply.header(this.#peerHeader, peer.address)
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

/**
 * One try of an exchange on one peer: an undici dispatch handler, which also
 * makes the response body stream handed to reply-from.
 */
export class Attempt implements Dispatcher.DispatchHandler {
  readonly exchange: Exchange
  readonly peer: Peer
  readonly #owner: AttemptOwner
  #controller: Dispatcher.DispatchController | null = null
  /** undici started writing the request to the peer: bytes may have reached it. */
  sent = false
  /** The final response's headers came. */
  answered = false
  #ended = false
  #interim = 0
  /** Why the proxy gave this attempt up (the client left, the peer was taken out); its outcome is ignored then. */
  abandoned: Error | null = null
  /** performance.now() when it was made (and dispatched): its response time counts from here. */
  readonly startedAt = performance.now()
  response: Readable | null = null

  constructor (owner: AttemptOwner, exchange: Exchange, peer: Peer) {
    this.#owner = owner
    this.exchange = exchange
    this.peer = peer
  }

  /** Gives the attempt up: its undici request is aborted now, or as soon as undici starts it. */
  abandon (reason: Error): void {
    if (this.abandoned !== null || this.#ended) return
    this.abandoned = reason
    this.#owner.forget(this)
    this.#controller?.abort(reason)
  }

  onRequestStart (controller: Dispatcher.DispatchController): void {
    if (this.abandoned !== null) {
      controller.abort(this.abandoned)
      return
    }
    this.#controller = controller
    this.sent = true
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
    this.response = new Readable({
      highWaterMark: RESPONSE_HIGH_WATER_MARK,
      read: () => this.#controller?.resume(),
      // The consumer gave up on the body (the client went away): the upstream request goes too.
      destroy: (error, callback) => {
        this.abandon(error ?? new ClientGoneError())
        callback(error)
      }
    })
    this.#owner.answered(this, statusCode, headers)
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.response?.push(chunk) === false) controller.pause()
  }

  onResponseEnd (): void {
    this.#ended = true
    this.response?.push(null)
  }

  onResponseError (_controller: Dispatcher.DispatchController, error: Error): void {
    this.#ended = true
    if (this.abandoned !== null) {
      this.response?.destroy()
      return
    }
    this.#owner.failed(this, error)
  }
}
