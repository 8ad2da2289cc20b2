import { Stream, type Readable } from 'node:stream'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import type { Peer } from './peer.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import type { ProxySettings } from './proxy-options.js'
import { HoldQueue, sendHoldFailure } from './hold-queue.js'
import { BadRequestError, ClientGoneError, NoPeerError } from './errors.js'
import { Exchange, type ForwardCallback, type ForwardedRequest } from './proxy-attempt.js'
import { ProxyDispatcher } from './proxy-dispatcher.js'
import { RequestBody, hasBody } from './proxy-body.js'
import { FailureLog } from './failure-log.js'
import { forClient } from './proxy-errors.js'
import { requestHeadersForPeer } from './proxy-headers.js'

/**
 * The balancing of one upstream behind a proxy: an exchange is made for each
 * request as it arrives; when reply-from sends it (from the proxy's handler,
 * or a `reply.from()` of the user's), a small body is read in full, a peer is
 * picked (or the request held while one is started, or queued while every
 * peer is at its `maxConns`), and the dispatcher sends it, on to another peer
 * after a failure. Every hook of the route has run by then: nothing the
 * application refuses starts a backend or takes a slot.
 */
export class BalancedProxy {
  readonly upstream: Upstream
  readonly settings: ProxySettings
  readonly #hold: HoldQueue
  readonly log: FailureLog
  readonly dispatcher: ProxyDispatcher

  constructor (upstream: Upstream, registry: Registry, agent: Dispatcher, settings: ProxySettings, log: FastifyBaseLogger) {
    this.upstream = upstream
    this.settings = settings
    this.#hold = new HoldQueue(upstream, registry, settings)
    this.log = new FailureLog(log)
    this.dispatcher = new ProxyDispatcher(upstream, registry, agent, settings, this.log, this.#holdAgain)
  }

  /** An exchange the last routable peer refused, held while a peer is started. */
  readonly #holdAgain = (exchange: Exchange): void => {
    this.#hold.wait(exchange.request).then(peer => {
      exchange.assign(peer)
      this.dispatcher.send(exchange, peer)
    }, (error: Error) => this.refuse(exchange, error))
  }

  /** The exchange of a request that just arrived: one listener on its connection for its whole life. */
  exchange (request: FastifyRequest, reply: FastifyReply): Exchange<BalancedProxy> {
    const exchange = new Exchange(request, reply, this as BalancedProxy, this.settings.peerHeader)
    // A held client that goes away leaves the queue; a sent request gives
    // its in-flight slot back and, unanswered, is aborted upstream.
    reply.raw.once('close', () => {
      this.#hold.drop(request)
      exchange.closed()
    })
    return exchange
  }

  /** reply-from's request, for this upstream: the body is read if it is to be kept, a peer taken, and the request sent. */
  forward (exchange: Exchange, forwarded: ForwardedRequest, callback: ForwardCallback): void {
    requestHeadersForPeer(forwarded.headers)
    exchange.forwarded = forwarded
    exchange.callback = callback
    const { request } = exchange
    const given = forwarded.body
    if ((typeof given === 'string' && given !== '') || (Buffer.isBuffer(given) && given.length > 0)) {
      // Parsed by Fastify (proxyPayloads: false, preValidation) and serialized again by reply-from, or given to reply.from().
      exchange.body = RequestBody.whole(Buffer.from(given))
    } else if (hasBody(request.headers)) {
      const source = given instanceof Stream ? given as Readable : request.raw
      // Unless Fastify parsed it to nothing (an empty chunked body, proxyPayloads: false): read already, nothing is left to send.
      if (!source.readableEnded) {
        RequestBody.read(source, this.settings.retryBodySize, Number(request.headers['content-length'])).then(body => {
          exchange.body = body
          this.#send(exchange)
        }, (error: Error) => {
          this.refuse(exchange, exchange.clientGone ? new ClientGoneError() : new BadRequestError(this.upstream.name, `the body could not be read (${error.message})`))
        })
        return
      }
    }
    this.#send(exchange)
  }

  #send (exchange: Exchange): void {
    if (exchange.peer !== null) {
      this.dispatcher.send(exchange, exchange.peer)
      return
    }
    this.acquire(exchange, error => {
      if (error === undefined) this.dispatcher.send(exchange, exchange.peer as Peer)
      else this.refuse(exchange, error)
    })
  }

  /**
   * Gives the exchange a peer, acquired: at once when one can take it; else
   * it waits (held while a peer is started, or queued for a free slot while
   * every routable peer is at its `maxConns`), within the queue's bounds.
   */
  acquire (exchange: Exchange, done: (error?: Error) => void): void {
    const { request } = exchange
    const peer = this.upstream.pick(request)
    if (peer !== undefined) {
      peer.acquire()
      exchange.assign(peer)
      done()
      return
    }
    if (!this.upstream.routable && !this.upstream.startsOnDemand) {
      done(new NoPeerError(this.upstream.name))
      return
    }
    // A client that leaves while held is dropped from the queue (see exchange()): a resolved one is still here.
    this.#hold.wait(request).then(held => {
      exchange.assign(held)
      done()
    }, done)
  }

  /**
   * Answers an exchange that got no peer (or whose body could not be read).
   * A hold's outcome (5xx) is answered by the hold queue's rule, with
   * Retry-After on a 503 (the start back-off's own when there is one), and
   * not logged per request: whoever starts peers logs it once. The rest (a
   * bad body; no routable peer on an upstream that starts none) goes to the
   * proxy's error handler, which logs it.
   */
  refuse (exchange: Exchange, error: Error & { statusCode?: number, retryAfter?: number }): void {
    // reply-from's continuation is dropped, as on any failure answered here.
    exchange.callback = null
    if (exchange.clientGone || exchange.reply.sent) return
    const safe = forClient(error, this.upstream.name, this.settings.exposeErrors) as Error & { statusCode?: number, retryAfter?: number }
    if ((safe.statusCode ?? 500) < 500 || (error instanceof NoPeerError && !this.upstream.startsOnDemand)) {
      if (safe.statusCode === 503) exchange.reply.header('retry-after', this.settings.retryAfter)
      exchange.reply.send(safe)
      return
    }
    safe.retryAfter ??= error.retryAfter
    sendHoldFailure(exchange.reply, safe, this.settings.retryAfter)
  }

  /** The server is closing: answer everything held. */
  close (): void {
    this.#hold.close(new NoPeerError(this.upstream.name))
    this.dispatcher.close()
    this.log.close()
  }
}
