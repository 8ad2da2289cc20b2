import type { FastifyReply, FastifyRequest } from 'fastify'
import type { FastifyReplyFromHooks } from '@fastify/reply-from'
import type { Peer } from './peer.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import type { ProxySettings } from './proxy-options.js'
import { HoldQueue } from './hold-queue.js'
import { NoPeerError, PeerConnectError, PeerTimeoutError } from './errors.js'
import { IDEMPOTENT, failureOf, hasBody } from './proxy-failure.js'

/** Where a request's attempts stand: kept on the request under a Symbol, out of the public shape. */
export const kAttempt = Symbol('fastify-supervisord.attempt')

interface Attempt {
  /** The request and its reply as the route saw them (reply-from's hooks see them typed for any raw server). */
  request: FastifyRequest
  reply: FastifyReply
  /** Peers already tried by this request (set only after a failure). */
  tried: Peer[] | null
  /** Path sent to the peer, kept for a retry on another peer. */
  dest: string
}

type AttemptCarrier = BalancedRequest & { [kAttempt]?: Attempt }

/** reply-from's part of a dispatch: where to send, what to do on an error or a response. */
type FromOptions = Required<Pick<FastifyReplyFromHooks, 'getUpstream' | 'onError' | 'retryDelay'>> & Pick<FastifyReplyFromHooks, 'onResponse'>
type FromRequest = Parameters<FromOptions['getUpstream']>[0]
type FromReply = Parameters<FromOptions['onError']>[0]
type FromResponse = Parameters<NonNullable<FromOptions['onResponse']>>[2]
/** What the proxy touches of a request and a reply, whichever raw server Fastify runs on. */
type BalancedRequest = Pick<FastifyRequest, 'upstreamPeer'>
interface HeaderSetter { header: (name: string, value: string) => unknown }

/**
 * The balancing of one proxy: a peer is picked per request (or the request is
 * held while one is started), and a failed attempt is sent again to another
 * peer, which reply-from's own retries never do. The plugin face hands these
 * methods to @fastify/http-proxy.
 */
export class BalancedProxy {
  readonly #upstream: Upstream
  readonly #config: ProxySettings
  readonly #hold: HoldQueue
  readonly fromOptions: FromOptions

  constructor (upstream: Upstream, registry: Registry, config: ProxySettings) {
    this.#upstream = upstream
    this.#config = config
    this.#hold = new HoldQueue(upstream, registry, config)
    this.fromOptions = {
      getUpstream: (request: FromRequest) => (request.upstreamPeer as Peer).origin,
      onError: this.#onError,
      onResponse: config.failStatuses.size > 0 ? this.#onResponse : undefined,
      // Never retry on the same peer (reply-from's default retries a GET
      // answered 503 up to ten times): a retry here means another peer.
      retryDelay: () => null
    }
  }

  #assign (request: BalancedRequest, reply: HeaderSetter, peer: Peer): void {
    request.upstreamPeer = peer
    if (this.#config.peerHeader !== undefined) reply.header(this.#config.peerHeader, peer.address)
  }

  #release (request: BalancedRequest): void {
    const peer = request.upstreamPeer
    if (peer === null) return
    request.upstreamPeer = null
    peer.release()
  }

  /** The preHandler, callback style: the common case (a peer is routable) costs no promise. */
  readonly pickOrHold = (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void => {
    // One listener per request does both jobs: a held client that goes away
    // leaves the queue, and a sent request gives its in-flight slot back.
    reply.raw.once('close', () => {
      this.#hold.drop(request)
      this.#release(request)
    })
    const peer = this.#upstream.pick(request)
    if (peer !== undefined) {
      peer.acquire()
      this.#assign(request, reply, peer)
      done()
      return
    }
    if (!this.#upstream.startsOnDemand) {
      reply.header('retry-after', this.#config.retryAfter)
      done(new NoPeerError(this.#upstream.name))
      return
    }
    this.#hold.wait(request).then(held => {
      this.#assign(request, reply, held)
      done()
    }, (error: Error & { statusCode?: number }) => {
      if (error.statusCode === 503) reply.header('retry-after', this.#config.retryAfter)
      done(error)
    })
  }

  /** The route handler: reply-from adds the request's query string to `dest` itself. */
  readonly handle = (request: FastifyRequest, reply: FastifyReply, dest: string): void => {
    const attempt: Attempt = { request, reply, tried: null, dest }
    ;(request as AttemptCarrier)[kAttempt] = attempt
    this.#dispatch(attempt)
  }

  #dispatch (attempt: Attempt): void {
    attempt.reply.from(attempt.dest, this.fromOptions)
  }

  readonly #onError = (fromReply: FromReply, { error }: { error: Error }): void => {
    const attempt = (fromReply.request as AttemptCarrier)[kAttempt]
    const peer = fromReply.request.upstreamPeer
    if (peer === null || attempt === undefined) {
      fromReply.send(error)
      return
    }
    const { request, reply } = attempt
    const failure = failureOf(error)
    peer.recordFailure(failure.reason)
    request.log.warn({ upstream: this.#upstream.name, peer: peer.address, reason: failure.reason }, 'peer failed')
    const tried = attempt.tried ?? (attempt.tried = [])
    tried.push(peer)
    this.#release(request)
    const next = IDEMPOTENT.has(request.method) && !hasBody(request) && tried.length < this.#config.tries && !reply.sent
      ? this.#upstream.pick(request, tried)
      : undefined
    if (next !== undefined) {
      next.acquire()
      this.#assign(request, reply, next)
      this.#dispatch(attempt)
      return
    }
    const ErrorType = failure.timeout ? PeerTimeoutError : PeerConnectError
    reply.send(new ErrorType(peer.address, this.#upstream.name, failure.reason))
  }

  readonly #onResponse = (request: FromRequest, reply: FromReply, res: FromResponse): void => {
    if (this.#config.failStatuses.has(res.statusCode)) request.upstreamPeer?.recordFailure(`status ${res.statusCode}`)
    reply.send(res.stream)
  }

  /** The server is closing: answer everything held. */
  close (): void {
    this.#hold.close(new NoPeerError(this.#upstream.name))
  }
}
