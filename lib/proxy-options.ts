import type { Upstream } from './upstream.js'
import { optionKeys, booleanOption, durationOption, numberOption, optionError, rejectUnknownOptions, showValue, stringOption } from './options.js'

export interface ProxyOptions {
  /** Name of the upstream (in the registry) to balance over. */
  upstream: string
  /** Route prefix this proxy answers under (default '/'). */
  prefix?: string
  /** What the prefix becomes on the way to the peer (default: the prefix is removed, as @fastify/http-proxy). */
  rewritePrefix?: string
  /** HTTP methods proxied (default all of @fastify/http-proxy's). */
  httpMethods?: string[]
  /** ms to open a connection to a peer (default 5000). */
  connectTimeout?: number
  /** ms from request sent to response headers (default 30000; undici's own is 300000). */
  headersTimeout?: number
  /** ms allowed between two body chunks of a response (default 30000). undici checks both timeouts about once a second. */
  bodyTimeout?: number
  /** ms an idle connection to a peer is kept for reuse (default 4000). */
  keepAliveTimeout?: number
  /** Connections per peer (default unlimited). */
  connections?: number
  /** Tries per request, the first included, over distinct peers (default 0: as many as there are peers). */
  nextUpstreamTries?: number
  /** Response statuses counted as passive failures of the peer (default none; e.g. [502, 503, 504]). */
  failStatuses?: number[]
  /** Name of a response header that tells which peer answered (default off; `true` means `x-upstream-peer`). */
  peerHeader?: string | boolean
  /**
   * Request bodies up to this many bytes are read in full before they are
   * sent, and kept, so that an idempotent request can go to another peer
   * after a failed send (default 65536; 0 streams every body). A longer body
   * is streamed, and goes to another peer only if nothing of it was sent.
   */
  retryBodySize?: number
  /** Error answers name the peer and the reason of a failure (default false: code and upstream only). For trusted networks. */
  exposeErrors?: boolean
  /** Seconds in the Retry-After header of 503 answers (default 5). */
  retryAfter?: number
  /** Requests held at once while a peer is started on demand (default 1000). */
  maxHeld?: number
  /** ms a request may be held before it gets 503 (default 30000). */
  holdTimeout?: number
  /** Passed to @fastify/reply-from: skips its two info lines per request (default false). */
  disableRequestLogging?: boolean
}

const KNOWN_OPTIONS = optionKeys<ProxyOptions>()('upstream', 'prefix', 'rewritePrefix', 'httpMethods', 'connectTimeout',
  'headersTimeout', 'bodyTimeout', 'keepAliveTimeout', 'connections', 'nextUpstreamTries', 'failStatuses', 'peerHeader', 'retryBodySize', 'exposeErrors', 'retryAfter',
  'maxHeld', 'holdTimeout', 'disableRequestLogging')

/** RFC 9110 §5.6.2: what a field name is made of. */
const HTTP_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

/** The proxy's options, checked, with their defaults filled in. */
export function settings (options: ProxyOptions, upstream: Upstream) {
  const where = `proxy to upstream "${upstream.name}"`
  rejectUnknownOptions(options, KNOWN_OPTIONS, where)
  const failStatuses = options.failStatuses ?? []
  if (!Array.isArray(failStatuses) || !failStatuses.every(s => Number.isInteger(s) && s >= 500 && s <= 599)) {
    throw optionError(where, `option "failStatuses" must be a list of 5xx statuses, got ${showValue(failStatuses)}`)
  }
  const peerHeader = options.peerHeader === true ? 'x-upstream-peer' : options.peerHeader === false ? undefined : options.peerHeader
  if (peerHeader !== undefined && (typeof peerHeader !== 'string' || !HTTP_TOKEN.test(peerHeader))) {
    throw optionError(where, `option "peerHeader" must be a header name (an HTTP token: letters, digits and !#$%&'*+-.^_\`|~), true or false, got ${showValue(options.peerHeader)}`)
  }
  // Fastify applies `prefix` to this plugin's context; it is only checked here.
  if (!stringOption(options.prefix, '/', where, 'prefix').startsWith('/')) {
    throw optionError(where, `option "prefix" must start with "/", got ${showValue(options.prefix)}`)
  }
  return {
    connectTimeout: durationOption(options.connectTimeout, 5000, where, 'connectTimeout'),
    headersTimeout: durationOption(options.headersTimeout, 30_000, where, 'headersTimeout'),
    bodyTimeout: durationOption(options.bodyTimeout, 30_000, where, 'bodyTimeout'),
    keepAliveTimeout: durationOption(options.keepAliveTimeout, 4000, where, 'keepAliveTimeout'),
    connections: options.connections === undefined ? undefined : numberOption(options.connections, 0, where, 'connections', { min: 1, integer: true }),
    tries: numberOption(options.nextUpstreamTries, 0, where, 'nextUpstreamTries', { min: 0, integer: true }) || upstream.peers.length,
    failStatuses: new Set(failStatuses),
    peerHeader: peerHeader?.toLowerCase(),
    retryBodySize: numberOption(options.retryBodySize, 65_536, where, 'retryBodySize', { min: 0, integer: true }),
    exposeErrors: booleanOption(options.exposeErrors, false, where, 'exposeErrors'),
    retryAfter: String(numberOption(options.retryAfter, 5, where, 'retryAfter', { min: 0, integer: true })),
    maxHeld: numberOption(options.maxHeld, 1000, where, 'maxHeld', { min: 0, integer: true }),
    holdTimeout: durationOption(options.holdTimeout, 30_000, where, 'holdTimeout'),
    disableRequestLogging: booleanOption(options.disableRequestLogging, false, where, 'disableRequestLogging')
  }
}

export type ProxySettings = ReturnType<typeof settings>
