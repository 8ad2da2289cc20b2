import { Stream, type Readable } from 'node:stream'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import type { FastifyReplyFromHooks } from '@fastify/reply-from'
import type { Dispatcher } from 'undici'
import type { Peer } from './peer.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import type { ProxySettings } from './proxy-options.js'
import { HoldQueue, sendHoldFailure } from './hold-queue.js'
import { BadRequestError, ClientGoneError, NoPeerError } from './errors.js'
import { Exchange } from './proxy-attempt.js'
import { ProxyDispatcher } from './proxy-dispatcher.js'
import { RequestBody, hasBody } from './proxy-body.js'
import { FailureLog } from './failure-log.js'
import { forClient } from './proxy-errors.js'

/** Where a request's attempts stand: kept on the request under a Symbol, out of the public shape. */
export const kExchange = Symbol('fastify-supervisord.exchange')

type ExchangeCarrier = FastifyRequest & { [kExchange]?: Exchange }

/** reply-from's part of a dispatch: where to send, and no retries of its own. */
type FromOptions = Required<Pick<FastifyReplyFromHooks, 'getUpstream' | 'retryDelay'>>
type FromRequest = Parameters<FromOptions['getUpstream']>[0]

/**
 * The balancing of one proxy: a peer is picked per request (or the request is
 * held while one is started), after a small body has been read in full; the
 * request then goes through reply-from to the proxy's dispatcher, which sends
 * a failed attempt on to another peer (reply-from's own retries never change
 * peer). The plugin face hands these methods to @fastify/http-proxy.
 */
export class BalancedProxy {
  readonly #upstream: Upstream
  readonly #config: ProxySettings
  readonly #hold: HoldQueue
  readonly #log: FailureLog
  readonly dispatcher: ProxyDispatcher
  readonly fromOptions: FromOptions

  constructor (upstream: Upstream, registry: Registry, agent: Dispatcher, config: ProxySettings, log: FastifyBaseLogger) {
    this.#upstream = upstream
    this.#config = config
    this.#hold = new HoldQueue(upstream, registry, config)
    this.#log = new FailureLog(log)
    this.dispatcher = new ProxyDispatcher(upstream, registry, agent, config, this.#log, this.#holdAgain)
    this.fromOptions = {
      getUpstream: (request: FromRequest) => (request.upstreamPeer as Peer).origin,
      // Never retry on the same peer (reply-from's default retries a GET
      // answered 503 up to ten times): a retry here means another peer.
      retryDelay: () => null
    }
  }

  /** The preHandler, callback style: the common case (no body, a peer routable) costs no promise. */
  readonly pickOrHold = (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void => {
    const exchange = new Exchange(request, reply, this.#config.peerHeader)
    ;(request as ExchangeCarrier)[kExchange] = exchange
    // One listener per request: a held client that goes away leaves the
    // queue; a sent request gives its in-flight slot back and, unanswered,
    // is aborted upstream.
    reply.raw.once('close', () => {
      this.#hold.drop(request)
      exchange.closed()
    })
    if (!hasBody(request.headers)) {
      this.#pick(exchange, done)
      return
    }
    const source = request.body instanceof Stream ? request.body as Readable : request.raw
    RequestBody.read(source, this.#config.retryBodySize, Number(request.headers['content-length'])).then(body => {
      exchange.body = body
      this.#pick(exchange, done)
    }, (error: Error) => {
      done(exchange.clientGone ? new ClientGoneError() : new BadRequestError(this.#upstream.name, `the body could not be read (${error.message})`))
    })
  }

  #pick (exchange: Exchange, done: (error?: Error) => void): void {
    const { request, reply } = exchange
    const peer = this.#upstream.pick(request)
    if (peer !== undefined) {
      peer.acquire()
      exchange.assign(peer)
      done()
      return
    }
    if (!this.#upstream.startsOnDemand) {
      reply.header('retry-after', this.#config.retryAfter)
      done(new NoPeerError(this.#upstream.name))
      return
    }
    this.#hold.wait(request).then(held => {
      exchange.assign(held)
      done()
    }, (error: Error) => this.#holdFailed(reply, error))
  }

  /** An exchange the last routable peer refused, held while a peer is started. */
  readonly #holdAgain = (exchange: Exchange): void => {
    this.#hold.wait(exchange.request).then(peer => this.dispatcher.resume(exchange, peer), (error: Error) => {
      // reply-from's continuation is dropped, as on any failure answered here.
      exchange.callback = null
      if (!exchange.clientGone) this.#holdFailed(exchange.reply, error)
    })
  }

  /** A hold refused or failed: answered by the hold queue's rule (logged once by the bridge, not per request). */
  #holdFailed (reply: FastifyReply, error: Error & { retryAfter?: number }): void {
    const safe = forClient(error, this.#upstream.name, this.#config.exposeErrors) as Error & { retryAfter?: number }
    safe.retryAfter ??= error.retryAfter
    sendHoldFailure(reply, safe, this.#config.retryAfter)
  }

  /** The route handler: reply-from adds the request's query string to `dest` itself. */
  readonly handle = (request: FastifyRequest, reply: FastifyReply, dest: string): void => {
    this.dispatcher.forward((request as ExchangeCarrier)[kExchange] as Exchange, reply, dest, this.fromOptions)
  }

  /** The server is closing: answer everything held. */
  close (): void {
    this.#hold.close(new NoPeerError(this.#upstream.name))
    this.dispatcher.close()
    this.#log.close()
  }
}
