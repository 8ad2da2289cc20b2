import fp from 'fastify-plugin'
import httpProxy from '@fastify/http-proxy'
import { Agent } from 'undici'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Peer } from './peer.js'
import type { Upstream } from './registry.js'
import { HoldQueue } from './hold-queue.js'
import { NoPeerError, PeerConnectError, PeerTimeoutError } from './errors.js'
import { booleanOption, durationOption, numberOption, optionError, rejectUnknownOptions, showValue, stringOption } from './options.js'

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
  /** Seconds in the Retry-After header of 503 answers (default 5). */
  retryAfter?: number
  /** Requests held at once while a peer is started on demand (default 1000). */
  maxHeld?: number
  /** ms a request may be held before it gets 503 (default 30000). */
  holdTimeout?: number
  /** Passed to @fastify/reply-from: skips its two info lines per request (default false). */
  disableRequestLogging?: boolean
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The peer this request is (or was last) sent to, if any. */
    upstreamPeer: Peer | null
    /** Peers already tried by this request (set only after a failure). */
    upstreamTried: Peer[] | null
    /** Path sent to the peer, kept for a retry on another peer. */
    upstreamDest: string | null
  }
}

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS'])
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'ETIMEDOUT'])
const KNOWN_OPTIONS = ['upstream', 'prefix', 'rewritePrefix', 'httpMethods', 'connectTimeout', 'headersTimeout', 'bodyTimeout',
  'keepAliveTimeout', 'connections', 'nextUpstreamTries', 'failStatuses', 'peerHeader', 'retryAfter', 'maxHeld', 'holdTimeout',
  'disableRequestLogging']

function settings (options: ProxyOptions, upstream: Upstream) {
  const where = `proxy to upstream "${upstream.name}"`
  rejectUnknownOptions(options, KNOWN_OPTIONS, where)
  const failStatuses = options.failStatuses ?? []
  if (!Array.isArray(failStatuses) || !failStatuses.every(s => Number.isInteger(s) && s >= 500 && s <= 599)) {
    throw optionError(where, `option "failStatuses" must be a list of 5xx statuses, got ${showValue(failStatuses)}`)
  }
  const peerHeader = options.peerHeader === true ? 'x-upstream-peer' : options.peerHeader === false ? undefined : options.peerHeader
  if (peerHeader !== undefined) stringOption(peerHeader, '', where, 'peerHeader')
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
    peerHeader,
    retryAfter: String(numberOption(options.retryAfter, 5, where, 'retryAfter', { min: 0, integer: true })),
    maxHeld: numberOption(options.maxHeld, 1000, where, 'maxHeld', { min: 0, integer: true }),
    holdTimeout: durationOption(options.holdTimeout, 30_000, where, 'holdTimeout'),
    disableRequestLogging: booleanOption(options.disableRequestLogging, false, where, 'disableRequestLogging')
  }
}

/** How a failed attempt ended, from the error reply-from hands over (the cause carries the socket's code). */
function failureOf (error: Error & { code?: string }): { timeout: boolean, reason: string } {
  const cause = error.cause as { code?: string, message?: string } | undefined
  const code = cause?.code ?? error.code ?? 'ERROR'
  const timeout = TIMEOUT_CODES.has(code) || error.code === 'FST_REPLY_FROM_GATEWAY_TIMEOUT'
  return { timeout, reason: `${code}: ${cause?.message ?? error.message}` }
}

function hasBody (request: FastifyRequest): boolean {
  const headers = request.headers
  return headers['transfer-encoding'] !== undefined || (headers['content-length'] !== undefined && headers['content-length'] !== '0')
}

/**
 * Balances one route prefix over an upstream, on @fastify/http-proxy with
 * `upstream: ''` and a handler of our own: a peer is picked per request (or
 * the request is held while one is started), and a failed attempt is sent
 * again to another peer, which reply-from's own retries never do.
 */
async function proxyPlugin (fastify: FastifyInstance, options: ProxyOptions): Promise<void> {
  if (typeof options?.upstream !== 'string') {
    throw optionError('proxy', `option "upstream" must name an upstream of the registry, got ${showValue(options?.upstream)}`)
  }
  const upstream = fastify.upstreams.get(options.upstream)
  const config = settings(options, upstream)
  const hold = new HoldQueue(upstream, fastify.upstreams, config)
  const agent = new Agent({
    connect: { timeout: config.connectTimeout },
    headersTimeout: config.headersTimeout,
    bodyTimeout: config.bodyTimeout,
    keepAliveTimeout: config.keepAliveTimeout,
    connections: config.connections ?? null,
    pipelining: 1
  })

  if (!fastify.hasRequestDecorator('upstreamPeer')) {
    fastify.decorateRequest('upstreamPeer', null)
    fastify.decorateRequest('upstreamTried', null)
    fastify.decorateRequest('upstreamDest', null)
  }

  function assign (request: FastifyRequest, reply: FastifyReply, peer: Peer): void {
    request.upstreamPeer = peer
    if (config.peerHeader !== undefined) reply.header(config.peerHeader, peer.address)
  }

  function release (request: FastifyRequest): void {
    const peer = request.upstreamPeer
    if (peer === null) return
    request.upstreamPeer = null
    peer.release()
  }

  // Callback style: the common case (a peer is routable) costs no promise.
  function pickOrHold (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void {
    // One listener per request does both jobs: a held client that goes away
    // leaves the queue, and a sent request gives its in-flight slot back.
    reply.raw.once('close', () => {
      hold.drop(request)
      release(request)
    })
    const peer = upstream.pick(request)
    if (peer !== undefined) {
      peer.acquire()
      assign(request, reply, peer)
      done()
      return
    }
    if (!upstream.startsOnDemand) {
      reply.header('retry-after', config.retryAfter)
      done(new NoPeerError(upstream.name))
      return
    }
    hold.wait(request).then(held => {
      assign(request, reply, held)
      done()
    }, (error: Error & { statusCode?: number }) => {
      if (error.statusCode === 503) reply.header('retry-after', config.retryAfter)
      done(error)
    })
  }

  function onError (reply: FastifyReply, { error }: { error: Error }): void {
    const request = reply.request
    const peer = request.upstreamPeer
    if (peer === null) {
      reply.send(error)
      return
    }
    const failure = failureOf(error)
    peer.recordFailure(failure.reason)
    request.log.warn({ upstream: upstream.name, peer: peer.address, reason: failure.reason }, 'peer failed')
    const tried = request.upstreamTried ?? (request.upstreamTried = [])
    tried.push(peer)
    release(request)
    const next = IDEMPOTENT.has(request.method) && !hasBody(request) && tried.length < config.tries && !reply.sent
      ? upstream.pick(request, tried)
      : undefined
    if (next !== undefined) {
      next.acquire()
      assign(request, reply, next)
      dispatch(request, reply)
      return
    }
    const ErrorType = failure.timeout ? PeerTimeoutError : PeerConnectError
    reply.send(new ErrorType(peer.address, upstream.name, failure.reason))
  }

  function onResponse (request: FastifyRequest, reply: FastifyReply, res: { statusCode: number, stream: NodeJS.ReadableStream }): void {
    if (config.failStatuses.has(res.statusCode)) request.upstreamPeer?.recordFailure(`status ${res.statusCode}`)
    reply.send(res.stream)
  }

  const fromOptions = {
    getUpstream: (request: FastifyRequest) => (request.upstreamPeer as Peer).origin,
    onError,
    onResponse: config.failStatuses.size > 0 ? onResponse : undefined,
    // Never retry on the same peer (reply-from's default retries a GET
    // answered 503 up to ten times): a retry here means another peer.
    retryDelay: () => null
  }

  function dispatch (request: FastifyRequest, reply: FastifyReply): void {
    reply.from(request.upstreamDest as string, fromOptions as never)
  }

  await fastify.register(httpProxy, {
    upstream: '',
    // `prefix` was already applied by Fastify to this plugin's context.
    rewritePrefix: options.rewritePrefix,
    httpMethods: options.httpMethods,
    undici: agent as never,
    disableRequestLogging: config.disableRequestLogging,
    preHandler: pickOrHold,
    replyOptions: { getUpstream: fromOptions.getUpstream as never },
    handler: (request, reply, dest) => {
      // reply-from adds the request's query string itself.
      request.upstreamDest = dest
      dispatch(request, reply)
    }
  })

  fastify.addHook('onClose', async () => {
    hold.close(new NoPeerError(upstream.name))
    await agent.close()
  })
}

export default fp(proxyPlugin, {
  name: 'fastify-supervisord-proxy',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry'],
  encapsulate: true
})
