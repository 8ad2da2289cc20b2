import type { IncomingHttpHeaders } from 'node:http'
import type { FastifyReply } from 'fastify'
import type { FastifyReplyFromHooks } from '@fastify/reply-from'
import type { Dispatcher } from 'undici'
import type { Peer, PeerChange } from './peer.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import type { ProxySettings } from './proxy-options.js'
import type { FailureLog } from './failure-log.js'
import { Attempt, type AttemptOwner, type Exchange, type ForwardCallback, type ForwardedRequest } from './proxy-attempt.js'
import { faultOf, mayRetry, type Fault } from './fault.js'
import { errorFor } from './proxy-errors.js'
import { requestHeadersForPeer, responseHeadersForClient } from './proxy-headers.js'
import { PeerTakenOutError } from './errors.js'

/** A peer being stopped on purpose: what it drops is nobody's fault. */
function leaving (peer: Peer): boolean {
  return peer.process === 'stopping' || peer.process === 'down'
}

/**
 * A change that takes a peer out of rotation while requests wait on it: they
 * are rescued. Not `stopping`: a stop drains the peer first (its in-flight
 * requests finish); what it still has when supervisord stops it is dropped,
 * and goes on from the failure, uncharged.
 */
function takesOut (change: PeerChange): boolean {
  return (change.field === 'health' && change.to === 'unhealthy') ||
    (change.field === 'passive' && change.to === 'failed') ||
    (change.field === 'process' && change.to === 'down')
}

/**
 * The dispatcher reply-from sends through (its `undici` option takes any
 * object with a `request` method). Each request it is handed goes to the
 * peer the request was given; a failed attempt is charged by `faultOf` and,
 * when `mayRetry` allows, sent to the next peer from here, so reply-from sees
 * one request and one answer. Attempts waiting for an answer are listed per
 * peer, so that when a peer is taken out of rotation the ones that may be
 * sent again go to another peer at once.
 */
export class ProxyDispatcher implements AttemptOwner {
  readonly #agent: Dispatcher
  readonly #upstream: Upstream
  readonly #registry: Registry
  readonly #settings: ProxySettings
  readonly #log: FailureLog
  /** Per peer index: attempts sent and not answered yet. */
  readonly #waiting: Array<Set<Attempt>>
  /** The exchange whose reply.from() call is under way (see forward()). */
  #handoff: Exchange | null = null
  /** Holds an exchange that no peer is left for, while a peer is started (see failed()). */
  readonly #hold: ((exchange: Exchange) => void) | undefined

  constructor (upstream: Upstream, registry: Registry, agent: Dispatcher, settings: ProxySettings, log: FailureLog, hold?: (exchange: Exchange) => void) {
    this.#hold = hold
    this.#agent = agent
    this.#upstream = upstream
    this.#registry = registry
    this.#settings = settings
    this.#log = log
    this.#waiting = upstream.peers.map(() => new Set())
    registry.on('change', this.#onChange)
  }

  /**
   * Sends an exchange through reply-from, which builds the upstream request
   * (URL, headers) and calls request() below before from() returns: the
   * exchange is handed over across that synchronous call.
   */
  forward (exchange: Exchange, reply: FastifyReply, dest: string, options: FastifyReplyFromHooks): void {
    this.#handoff = exchange
    try {
      reply.from(dest, options)
    } finally {
      this.#handoff = null
    }
  }

  /** reply-from's call, from within forward(): reply.from() is called nowhere else in the proxy's context. */
  request (forwarded: ForwardedRequest, callback: ForwardCallback): void {
    const exchange = this.#handoff as Exchange
    this.#handoff = null
    requestHeadersForPeer(forwarded.headers)
    exchange.forwarded = forwarded
    exchange.callback = callback
    this.#send(exchange, exchange.peer as Peer)
  }

  close (): void {
    this.#registry.off('change', this.#onChange)
  }

  /** A held exchange got a peer (acquired by the hold queue): sent on as a new attempt. */
  resume (exchange: Exchange, peer: Peer): void {
    exchange.assign(peer)
    this.#send(exchange, peer)
  }

  #send (exchange: Exchange, peer: Peer): void {
    const forwarded = exchange.forwarded as ForwardedRequest
    const attempt = new Attempt(this, exchange, peer)
    exchange.attempt = attempt
    this.#waiting[peer.index].add(attempt)
    forwarded.headers.host = peer.address
    this.#agent.dispatch({
      origin: peer.origin,
      path: forwarded.path,
      method: forwarded.method as Dispatcher.HttpMethod,
      headers: forwarded.headers as Record<string, string | string[]>,
      body: exchange.body?.forAttempt(),
      headersTimeout: forwarded.headersTimeout,
      bodyTimeout: forwarded.bodyTimeout
    }, attempt)
  }

  forget (attempt: Attempt): void {
    this.#waiting[attempt.peer.index].delete(attempt)
  }

  answered (attempt: Attempt, statusCode: number, headers: IncomingHttpHeaders): void {
    const { exchange, peer } = attempt
    this.forget(attempt)
    if (this.#settings.failStatuses.has(statusCode)) {
      this.#charge(peer, faultOf(statusCode, { sent: true, answered: true, clientBodyFailed: false, peerLeaving: leaving(peer) }))
    } else {
      peer.recordSuccess()
    }
    responseHeadersForClient(headers)
    const callback = exchange.callback as ForwardCallback
    exchange.callback = null
    try {
      callback(null, { statusCode, headers, body: attempt.response as NonNullable<Attempt['response']> })
    } catch (error) /* c8 ignore start: reply-from and Fastify take any response undici parses; the guard keeps a throw out of undici */ {
      exchange.request.log.error({ err: error }, 'proxy: the response could not be passed on')
      attempt.response?.destroy()
    } /* c8 ignore stop */
  }

  failed (attempt: Attempt, error: Error): void {
    const { exchange, peer } = attempt
    const fault = faultOf(error, { sent: attempt.sent, answered: attempt.answered, clientBodyFailed: exchange.body?.failed != null, peerLeaving: leaving(peer) })
    this.forget(attempt)
    if (fault.party === 'peer') this.#charge(peer, fault)
    else if (fault.party === 'client') this.#log.write('info', `client ${fault.kind}`, { upstream: this.#upstream.name, reason: fault.reason }, 'proxy: the client\'s request failed')
    if (attempt.answered) {
      // The headers went to reply-from: the client's connection is cut (or
      // answered 502 if nothing was written to it yet).
      attempt.response?.destroy(errorFor(fault, this.#upstream.name, peer, this.#settings.exposeErrors))
      return
    }
    exchange.release()
    const next = this.#nextPeer(exchange, peer, fault, attempt.sent)
    ;(exchange.tried ??= []).push(peer)
    if (next !== undefined) {
      this.#moveTo(exchange, next)
      return
    }
    if (this.#mayHold(exchange, fault, attempt.sent)) {
      (this.#hold as (exchange: Exchange) => void)(exchange)
      return
    }
    // reply-from's continuation is dropped: it would log every failure with
    // its stack at warn; the failure was charged and logged once above.
    exchange.callback = null
    if (!exchange.clientGone) exchange.reply.send(errorFor(fault, this.#upstream.name, peer, this.#settings.exposeErrors))
  }

  /** The peer to send the exchange to after `peer` failed for `fault`, if it may go anywhere. */
  #nextPeer (exchange: Exchange, peer: Peer, fault: Fault, sent: boolean): Peer | undefined {
    const tried = exchange.tried === null ? [peer] : [...exchange.tried, peer]
    if (tried.length >= this.#settings.tries || !this.#retryable(exchange, fault, sent)) return undefined
    return this.#upstream.pick(exchange.request, tried)
  }

  #retryable (exchange: Exchange, fault: Fault, sent: boolean): boolean {
    if (exchange.clientGone || exchange.reply.sent) return false
    const body = exchange.body
    return mayRetry(fault, { sent, method: exchange.request.method, bodyKept: body === null || body.kept, bodyIntact: body === null || body.intact })
  }

  /**
   * The last routable peer could not be reached (nothing was sent) and the
   * upstream starts peers on demand: the request is held while one is
   * started, as a new request finding no routable peer would be, rather than
   * answered 502 (the first request after the last backend died).
   */
  #mayHold (exchange: Exchange, fault: Fault, sent: boolean): boolean {
    return this.#hold !== undefined && !sent && fault.party === 'peer' && (fault.kind === 'connect' || fault.kind === 'timeout') &&
      this.#upstream.startsOnDemand && !this.#upstream.routable && this.#retryable(exchange, fault, sent)
  }

  #moveTo (exchange: Exchange, next: Peer): void {
    next.acquire()
    exchange.assign(next)
    this.#send(exchange, next)
  }

  #charge (peer: Peer, fault: Fault): void {
    if (fault.party !== 'peer') return
    peer.recordFailure(fault.reason, Date.now(), fault.kind)
    this.#log.write('warn', `${peer.index} ${fault.reason}`,
      { upstream: this.#upstream.name, peer: peer.address, kind: fault.kind, reason: fault.reason }, 'proxy: peer failed')
  }

  readonly #onChange = (change: PeerChange): void => {
    if (change.upstream !== this.#upstream.name || !takesOut(change)) return
    const waiting = this.#waiting[change.index]
    if (waiting === undefined || waiting.size === 0) return
    const fault: Fault = { party: 'nobody', kind: 'rescue', reason: `${change.field} ${change.to}` }
    for (const attempt of [...waiting]) this.#rescue(attempt, fault)
  }

  /** A waiting attempt on a peer taken out: sent to another peer at once, if it may be sent again. */
  #rescue (attempt: Attempt, fault: Fault): void {
    const { exchange, peer } = attempt
    const next = this.#nextPeer(exchange, peer, fault, attempt.sent)
    if (next === undefined) return
    attempt.abandon(new PeerTakenOutError(fault.reason))
    exchange.release()
    ;(exchange.tried ??= []).push(peer)
    this.#moveTo(exchange, next)
  }
}
