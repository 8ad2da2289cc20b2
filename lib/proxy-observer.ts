import { STATUS_CODES } from 'node:http'
import type { FastifyBaseLogger, FastifyError, FastifyInstance, FastifyReply, FastifyRequest, onSendHookHandler } from 'fastify'
import type { Upstream } from './upstream.js'
import { Attempt, kExchange, type Exchange } from './proxy-attempt.js'
import type { BalancedProxy } from './balanced-proxy.js'
import { FailureLog } from './failure-log.js'

type ExchangeCarrier = FastifyRequest & { [kExchange]?: Exchange<BalancedProxy> }

/** What a request's access log line carries besides Fastify's own fields (nginx's $upstream_addr, $upstream_response_time). */
export interface AccessFields {
  /** The upstream's name. */
  upstream: string
  /** The address of the peer that answered, or of the last one tried when none did. */
  peer?: string
  /** ms from the request sent to that peer to its response headers (HAProxy's Tr); absent when no peer answered. */
  upstreamResponseTime?: number
  /** The addresses of the peers tried before, in order, when there were any. */
  tried?: string[]
}

/**
 * What the proxy tells an operator about each request, for the cost of an
 * onSend hook: the answer counted by status class on the upstream, the
 * answering peer's response and its time counted on the peer (HAProxy's
 * Tr), a retried request's redispatches, and the peer and its response
 * time bound to the request's logger, so that Fastify's access line
 * ("request completed") carries them. The suite's own error answers are
 * logged at warn without a stack, one line per code and second with a count.
 */
export class ProxyObserver {
  /** Where an answer given before any upstream was chosen is counted (a Host no server name matches): the proxy's default upstream, if any. */
  readonly #fallback: Upstream | undefined
  readonly #log: FailureLog
  /** Whether Fastify writes an access line (its `disableRequestLogging` is not `true`). */
  readonly #accessLog: boolean

  constructor (fastify: FastifyInstance, fallback: Upstream | undefined) {
    this.#fallback = fallback
    this.#log = new FailureLog(fastify.log)
    this.#accessLog = fastify.initialConfig.disableRequestLogging !== true
  }

  readonly onSend: onSendHookHandler = (request, reply, payload, done) => {
    const status = reply.statusCode
    const exchange = (request as ExchangeCarrier)[kExchange]
    const upstream = exchange?.site.upstream ?? this.#fallback
    upstream?.recordAnswer(status)
    const attempt = exchange?.attempt
    // A WebSocket session is answered (101) before this hook; its peer is on the exchange.
    if (exchange === undefined || upstream === undefined || !(attempt instanceof Attempt)) {
      done(null, payload)
      return
    }
    const answered = attempt.answered && attempt.abandoned === null
    const ms = answered ? performance.now() - attempt.startedAt : undefined
    if (ms !== undefined) attempt.peer.recordResponse(status, ms / 1000)
    const tried = exchange.tried
    if (tried !== null) {
      // Every peer left for another was redispatched from; each try after the first is a retry.
      const moved = answered ? tried.length : tried.length - 1
      for (let i = 0; i < moved; i++) tried[i].recordRedispatch()
      for (let i = 1; i < tried.length; i++) tried[i].recordRetry()
      if (answered) attempt.peer.recordRetry()
    }
    if (this.#accessLog) this.#bind(reply, upstream.name, attempt.peer.address, ms, tried, answered)
    done(null, payload)
  }

  #bind (reply: FastifyReply, upstreamName: string, peer: string, ms: number | undefined, tried: Exchange['tried'], answered: boolean): void {
    const log = reply.log as FastifyBaseLogger & { setBindings?: (bindings: object) => void }
    if (typeof log.setBindings !== 'function') return
    const fields: AccessFields = { upstream: upstreamName, peer }
    if (ms !== undefined) fields.upstreamResponseTime = Math.round(ms * 100) / 100
    const before = tried === null ? [] : answered ? tried : tried.slice(0, -1)
    if (before.length > 0) fields.tried = before.map(p => p.address)
    log.setBindings(fields)
  }

  /**
   * The proxy context's error handler: the suite's own errors (FST_SUPERVISORD_*)
   * are answered in Fastify's shape and logged at warn (info below 500)
   * without a stack, a burst as one line with a count; any other error goes
   * to the application's handler.
   */
  readonly errorHandler = (error: FastifyError, request: FastifyRequest, reply: FastifyReply): void => {
    const code = error.code
    if (typeof code !== 'string' || !code.startsWith('FST_SUPERVISORD_')) throw error
    const statusCode = error.statusCode ?? 500
    const upstream = (request as ExchangeCarrier)[kExchange]?.site.upstream ?? this.#fallback
    this.#log.write(statusCode >= 500 ? 'warn' : 'info', `${statusCode} ${code}`,
      { upstream: upstream?.name, statusCode, code, reason: error.message }, `proxy: answered ${statusCode} ${code}`)
    reply.code(statusCode).send({ statusCode, code, error: STATUS_CODES[statusCode], message: error.message })
  }

  close (): void {
    this.#log.close()
  }
}
