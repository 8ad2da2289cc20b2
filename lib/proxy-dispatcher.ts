import type { IncomingHttpHeaders } from 'node:http'
import type { Dispatcher } from 'undici'
import type { Peer, PeerChange } from './peer.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import type { ProxySettings } from './proxy-options.js'
import type { FailureLog } from './failure-log.js'
import { Attempt, type AttemptOwner, type Exchange, type ForwardCallback, type ForwardedRequest } from './proxy-attempt.js'
import { faultOf, mayRetry, type Fault } from './fault.js'
import { errorFor } from './proxy-errors.js'
import { responseHeadersForClient } from './proxy-headers.js'
import { PeerTakenOutError } from './errors.js'

/** A peer being stopped on purpose: what it drops is nobody's fault. */
export function leaving (peer: Peer): boolean {
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

/** Why an answered attempt was dropped for the next peer. */
const RETRIED = new PeerTakenOutError('its answer was a nextUpstream status')

/**
 * Sends the attempts of one upstream's exchanges on the agent. A failed
 * attempt is charged by `faultOf` and, when `mayRetry` allows, sent to the
 * next peer from here, so reply-from sees one request and one answer; so is
 * an answer whose status `nextUpstream` lists (the client gets the last
 * answer, never a retried one). Attempts waiting for an answer are listed per
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
  /** Holds an exchange that no peer is left for, while a peer is started (see failed()). */
  readonly #hold: (exchange: Exchange) => void

  constructor (upstream: Upstream, registry: Registry, agent: Dispatcher, settings: ProxySettings, log: FailureLog, hold: (exchange: Exchange) => void) {
    this.#hold = hold
    this.#agent = agent
    this.#upstream = upstream
    this.#registry = registry
    this.#settings = settings
    this.#log = log
    this.#waiting = upstream.peers.map(() => new Set())
    registry.on('change', this.#onChange)
  }

  close (): void {
    this.#registry.off('change', this.#onChange)
  }

  /** Sends the exchange (its `forwarded` request and `callback` set) to `peer`, acquired for it. */
  send (exchange: Exchange, peer: Peer): void {
    const forwarded = exchange.forwarded as ForwardedRequest
    const attempt = new Attempt(this, exchange, peer, this.#settings)
    exchange.attempt = attempt
    if (exchange.startedAt === 0) exchange.startedAt = Date.now()
    this.#waiting[peer.index].add(attempt)
    if (exchange.hostIsPeer) forwarded.headers.host = peer.address
    this.#agent.dispatch({
      origin: peer.origin,
      path: forwarded.path,
      method: forwarded.method as Dispatcher.HttpMethod,
      headers: forwarded.headers as Record<string, string | string[]>,
      body: exchange.body?.forAttempt(attempt.progress),
      // The attempt keeps its own timers (undici's tick once a second).
      headersTimeout: 0,
      bodyTimeout: 0
    }, attempt)
  }

  forget (attempt: Attempt): void {
    this.#waiting[attempt.peer.index].delete(attempt)
  }

  answered (attempt: Attempt, statusCode: number, headers: IncomingHttpHeaders): void {
    const { exchange, peer } = attempt
    this.forget(attempt)
    if (this.#settings.nextUpstream.statuses.has(statusCode)) {
      const fault = faultOf(statusCode, { sent: true, answered: true, clientBodyFailed: false, peerLeaving: leaving(peer) })
      this.#charge(peer, fault)
      const next = this.nextPeer(exchange, peer, fault, true)
      if (next !== undefined) {
        attempt.abandon(RETRIED)
        attempt.response?.destroy()
        this.#moveOn(exchange, peer, next)
        return
      }
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
    this.#charge(peer, fault)
    if (fault.party === 'client') this.#log.write('info', `client ${fault.kind}`, { upstream: this.#upstream.name, reason: fault.reason }, 'proxy: the client\'s request failed')
    if (attempt.answered) {
      // The headers went to reply-from: the client's connection is cut (or
      // answered 502 if nothing was written to it yet).
      attempt.response?.destroy(errorFor(fault, this.#upstream.name, peer, this.#settings.exposeErrors))
      return
    }
    const next = this.nextPeer(exchange, peer, fault, attempt.sent)
    if (next !== undefined) {
      this.#moveOn(exchange, peer, next)
      return
    }
    exchange.release()
    if (this.#mayHold(exchange, fault, attempt.sent)) {
      this.#hold(exchange)
      return
    }
    // reply-from's continuation is dropped: it would log every failure with
    // its stack at warn; the failure was charged and logged once above.
    exchange.callback = null
    if (!exchange.clientGone && !exchange.reply.sent) exchange.reply.send(errorFor(fault, this.#upstream.name, peer, this.#settings.exposeErrors))
  }

  /** The peer to send the exchange to after `peer` failed for `fault`, if it may go anywhere (nextUpstream, tries, timeout). */
  nextPeer (exchange: Exchange, peer: Peer, fault: Fault, sent: boolean): Peer | undefined {
    const tried = exchange.tried === null ? [peer] : [...exchange.tried, peer]
    if (tried.length >= this.#settings.tries || !this.#retryable(exchange, fault, sent)) return undefined
    return this.#upstream.pick(exchange.request, tried)
  }

  #retryable (exchange: Exchange, fault: Fault, sent: boolean): boolean {
    const settings = this.#settings
    if (exchange.clientGone || exchange.reply.sent) return false
    if (settings.nextUpstreamTimeout > 0 && Date.now() - exchange.startedAt >= settings.nextUpstreamTimeout) return false
    const body = exchange.body
    return mayRetry(fault, { sent, method: exchange.request.method, bodyKept: body === null || body.kept, bodyIntact: body === null || body.intact }, settings.nextUpstream)
  }

  /**
   * The last routable peer could not be reached (nothing was sent: the
   * peer's fault is then a refused or timed-out connection) and the upstream
   * starts peers on demand: the request is held while one is started, as a
   * new request finding no routable peer would be, rather than answered 502
   * (the first request after the last backend died).
   */
  #mayHold (exchange: Exchange, fault: Fault, sent: boolean): boolean {
    return !sent && fault.party === 'peer' && this.#upstream.startsOnDemand && !this.#upstream.routable && this.#retryable(exchange, fault, sent)
  }

  /** The exchange leaves `from` (its slot given back, the peer counted as tried) for `next`, acquired. */
  moveTo (exchange: Exchange, from: Peer, next: Peer): void {
    exchange.release()
    ;(exchange.tried ??= []).push(from)
    next.acquire()
    exchange.assign(next)
  }

  #moveOn (exchange: Exchange, from: Peer, next: Peer): void {
    this.moveTo(exchange, from, next)
    this.send(exchange, next)
  }

  #charge (peer: Peer, fault: Fault): void {
    if (fault.party !== 'peer') return
    peer.recordFailure(fault.reason, Date.now(), fault.kind)
    this.#log.write('warn', `${peer.index} ${fault.reason}`,
      { upstream: this.#upstream.name, peer: peer.address, kind: fault.kind, reason: fault.reason }, 'proxy: peer failed')
  }

  /** Charges a failure seen outside an attempt (a WebSocket handshake or session), logged as the attempts' are. */
  charge (peer: Peer, fault: Fault): void {
    this.#charge(peer, fault)
  }

  readonly #onChange = (change: PeerChange): void => {
    if (change.upstream !== this.#upstream.name || !takesOut(change)) return
    const fault: Fault = { party: 'nobody', kind: 'rescue', reason: `${change.field} ${change.to}` }
    for (const attempt of [...this.#waiting[change.index]]) this.#rescue(attempt, fault)
  }

  /** A waiting attempt on a peer taken out: sent to another peer at once, if it may be sent again. */
  #rescue (attempt: Attempt, fault: Fault): void {
    const { exchange, peer } = attempt
    const next = this.nextPeer(exchange, peer, fault, attempt.sent)
    if (next === undefined) return
    attempt.abandon(new PeerTakenOutError(fault.reason))
    this.#moveOn(exchange, peer, next)
  }
}
