import type { FastifyBaseLogger, RouteShorthandOptions } from 'fastify'
import type { FastifyHttpProxyOptions } from '@fastify/http-proxy'
import type { FastifyReplyFromHooks } from '@fastify/reply-from'
import type { ClientOptions, RawData, ServerOptions, WebSocket } from 'ws'
import { DEFAULT_NEXT_UPSTREAM, NEXT_UPSTREAM_WORDS, nextUpstreamOf, type NextUpstreamWord } from './fault.js'
import {
  HTTP_TOKEN, optionKeys, booleanOption, durationOption, numberOption, objectOption, optionError, rejectUnknownOptions, showValue, stringOption
} from './options.js'

/** The @fastify/reply-from options a proxy passes on to every reply.from() call. */
export type ProxyReplyOptions = Pick<FastifyReplyFromHooks, 'rewriteRequestHeaders' | 'rewriteHeaders' | 'onResponse' | 'queryString' | 'contentType'>

/** The Fastify route hooks a proxy takes, as @fastify/http-proxy takes preHandler and preValidation. */
export type ProxyHooks = Pick<RouteShorthandOptions, 'onRequest' | 'preParsing' | 'preValidation' | 'preHandler' | 'preSerialization' |
'onSend' | 'onResponse' | 'onError' | 'onTimeout' | 'onRequestAbort'>

/** What @fastify/http-proxy's WebSocket hooks are given first. */
export interface WebSocketHookContext { log: FastifyBaseLogger }

/** @fastify/http-proxy's WebSocket hooks (those a balanced session can honour): synchronous, a throw is logged. */
export interface WebSocketHooks {
  onConnect?: (context: WebSocketHookContext, source: WebSocket, target: WebSocket) => void
  onDisconnect?: (context: WebSocketHookContext, source: WebSocket) => void
  onIncomingMessage?: (context: WebSocketHookContext, source: WebSocket, target: WebSocket, message: { data: RawData, binary: boolean }) => void
  onOutgoingMessage?: (context: WebSocketHookContext, source: WebSocket, target: WebSocket, message: { data: RawData, binary: boolean }) => void
}

export interface ProxyOptions extends ProxyHooks {
  /** Name of the upstream (in the registry) to balance over; with `hosts`, the one for hosts that match none (default: 404). */
  upstream?: string
  /**
   * Virtual hosts, as nginx's server_name: `{ 'shop.example.com': 'shop', '*.example.org': 'org', '.example.net': 'net', 'www.*': 'www', '~^(api|app)\\.': 'apps' }`.
   * Exact names first, then the longest leading wildcard, the longest trailing wildcard, and the regular expressions in order.
   */
  hosts?: Record<string, string>
  /** Route prefix this proxy answers under (default '/'). */
  prefix?: string
  /** What the prefix becomes on the way to the peer (default: the prefix is removed, as @fastify/http-proxy). */
  rewritePrefix?: string
  /** HTTP methods proxied (default all of @fastify/http-proxy's). */
  httpMethods?: string[]
  /** Routes under the prefix (default `['/', '/*']`, as @fastify/http-proxy). */
  routes?: string[]
  /** Fastify route config, readable in hooks as `request.routeOptions.config`. */
  config?: Record<string, unknown>
  /** Fastify route constraints (`{ host: 'example.com' }`, `{ version: '1.x' }`, or a strategy of your own). */
  constraints?: Record<string, unknown>
  /** Rewrites the URL before the prefix is (as @fastify/http-proxy). */
  preRewrite?: FastifyHttpProxyOptions['preRewrite']
  /** A relative `Location` of a response gets the prefix back (default true, as @fastify/http-proxy and nginx's `proxy_redirect default`). */
  internalRewriteLocationHeader?: boolean
  /** false: Fastify parses request bodies (default true: they are streamed to the peer, as @fastify/http-proxy). */
  proxyPayloads?: boolean
  /** Replaces the default handler, `reply.from(dest, options)`; it must pass `options` on for the request to be balanced. */
  handler?: FastifyHttpProxyOptions['handler']
  /** Passed to every reply.from() call (chained with the proxy's own where both have one). */
  replyOptions?: ProxyReplyOptions
  /** ms to open a connection to a peer (default 5000). */
  connectTimeout?: number
  /** ms from the request (and each chunk of its body) sent to the response headers (default 30000). */
  headersTimeout?: number
  /** ms allowed between two body chunks of a response, not counting time the client is slow to read (default 30000). */
  bodyTimeout?: number
  /** ms an idle connection to a peer is kept for reuse (default 4000). */
  keepAliveTimeout?: number
  /** Connections per peer in the connection pool (default unlimited; see the server's `maxConns` for a limit the balancer respects). */
  connections?: number
  /** When a failed attempt goes to the next peer, in nginx's proxy_next_upstream words (default `['error', 'timeout', 'invalid_header']`). */
  nextUpstream?: NextUpstreamWord[]
  /** Tries per request, the first included, over distinct peers (default 0: as many as there are peers). */
  nextUpstreamTries?: number
  /** ms from the first try after which a request is not passed to another peer (default 0: no limit). */
  nextUpstreamTimeout?: number
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
  /** Requests waiting at once per upstream, for a cold start or a free `maxConns` slot (default 1000). */
  maxHeld?: number
  /** ms a request may wait (held for a start, or queued for a slot) before it gets 503 (default 30000). */
  holdTimeout?: number
  /** Passed to @fastify/reply-from: skips its two info lines per request (default false). */
  disableRequestLogging?: boolean
  /** Adds X-Forwarded-For (appended), -Proto, -Host and -Port, as nginx's usual proxy_set_header lines (default false). */
  xForwarded?: boolean
  /** Sends the client's Host header to the peer instead of the peer's address (default false). */
  preserveHost?: boolean
  /** Proxies WebSocket upgrades, each balanced as a request held for the life of its connection (default false). */
  websocket?: boolean
  /** Options of the `ws` server that takes the client side (maxPayload, perMessageDeflate, verifyClient, ...). */
  wsServerOptions?: Omit<ServerOptions, 'noServer' | 'server' | 'port' | 'host' | 'path' | 'handleProtocols' | 'clientTracking'>
  /** Options of the `ws` client that opens the peer side, with `headers` and `rewriteRequestHeaders(headers, request)` as @fastify/http-proxy. */
  wsClientOptions?: Omit<ClientOptions, 'handshakeTimeout' | 'followRedirects' | 'maxRedirects' | 'finishRequest' | 'headers'> & Pick<NonNullable<FastifyHttpProxyOptions['wsClientOptions']>, 'queryString'> & {
    headers?: Record<string, string>
    rewriteRequestHeaders?: (headers: Record<string, string | string[] | undefined>, request: Parameters<NonNullable<FastifyHttpProxyOptions['handler']>>[0]) => Record<string, string | string[] | undefined>
  }
  /** As @fastify/http-proxy: onConnect, onDisconnect, onIncomingMessage, onOutgoingMessage (synchronous; a throw is logged). */
  wsHooks?: WebSocketHooks
  /** ms the WebSocket sessions of a peer taken out (drain, maint, stopping) may go on before they are closed with 1012 (default 10000). */
  wsDrainTimeout?: number
}

const HOOKS = ['onRequest', 'preParsing', 'preValidation', 'preHandler', 'preSerialization', 'onSend', 'onResponse', 'onError', 'onTimeout',
  'onRequestAbort'] as const satisfies ReadonlyArray<keyof ProxyHooks>

const KNOWN_OPTIONS = optionKeys<ProxyOptions>()(...HOOKS, 'upstream', 'hosts', 'prefix', 'rewritePrefix', 'httpMethods', 'routes', 'config',
  'constraints', 'preRewrite', 'internalRewriteLocationHeader', 'proxyPayloads', 'handler', 'replyOptions', 'connectTimeout', 'headersTimeout',
  'bodyTimeout', 'keepAliveTimeout', 'connections', 'nextUpstream', 'nextUpstreamTries', 'nextUpstreamTimeout', 'peerHeader', 'retryBodySize',
  'exposeErrors', 'retryAfter', 'maxHeld', 'holdTimeout', 'disableRequestLogging', 'xForwarded', 'preserveHost', 'websocket', 'wsServerOptions',
  'wsClientOptions', 'wsHooks', 'wsDrainTimeout')

const REPLY_OPTIONS = optionKeys<ProxyReplyOptions>()('rewriteRequestHeaders', 'rewriteHeaders', 'onResponse', 'queryString', 'contentType')
const WS_HOOKS = ['onConnect', 'onDisconnect', 'onIncomingMessage', 'onOutgoingMessage'] as const

/**
 * @fastify/http-proxy and @fastify/reply-from options that would take the
 * choice of peer, or the retries, away from the balancing: each is refused at
 * registration with the reason.
 */
const BREAKS_BALANCING: Record<string, string> = {
  getUpstream: 'the proxy picks the peer of every request itself',
  base: 'the peers of the upstream are the base',
  http2: "@fastify/reply-from's HTTP/2 client keeps one session to one base, which no balancer can choose per request",
  http: "@fastify/reply-from's node:http client would bypass the balancing dispatcher",
  undici: 'the proxy sends through its own balancing dispatcher (see connections, keepAliveTimeout and the timeouts)',
  wsUpstream: 'WebSockets are balanced over the same upstream as requests',
  wsReconnect: 'a session reconnected behind its client\'s back would land on another peer without its state; the client gets a close code and reconnects through the balancer',
  getWebSocketUpstream: 'WebSockets are balanced over the same upstream as requests',
  beforeHandler: 'use preHandler',
  failStatuses: 'it was replaced by nextUpstream, in nginx\'s words: e.g. nextUpstream: [\'error\', \'timeout\', \'http_502\', \'http_503\'] (a listed status counts against the peer and goes to the next one when it may; with nextUpstreamTries: 1 it is counted and passed on)'
}

const BREAKS_REPLY: Record<string, string> = {
  getUpstream: BREAKS_BALANCING.getUpstream,
  base: BREAKS_BALANCING.base,
  retriesCount: 'reply-from retries on the same peer: the proxy sends a failed request to the next peer (nextUpstream, nextUpstreamTries)',
  retryDelay: 'reply-from retries on the same peer: the proxy sends a failed request to the next peer (nextUpstream, nextUpstreamTries)',
  maxRetriesOn503: 'reply-from retries on the same peer: the proxy sends a failed request to the next peer (nextUpstream with http_503)',
  onError: 'failed requests are answered by the proxy\'s fault rules, with their codes (use the onError hook or setErrorHandler to see them)',
  timeout: 'use the proxy\'s headersTimeout and bodyTimeout'
}

function refuse (options: object, reasons: Record<string, string>, where: string, section?: string): void {
  for (const key of Object.keys(options)) {
    const reason = reasons[key]
    if (reason !== undefined) throw optionError(where, `option "${section === undefined ? key : `${section}.${key}`}" is not taken: ${reason}`)
  }
}

function functionOption (value: unknown, where: string, name: string): void {
  if (value !== undefined && typeof value !== 'function') throw optionError(where, `option "${name}" must be a function, got ${showValue(value)}`)
}

/** A hook option: a function or a list of functions, as Fastify's route options take them. */
function hookOption (value: unknown, where: string, name: string): void {
  const hooks = Array.isArray(value) ? value : [value]
  if (value !== undefined && (hooks.length === 0 || !hooks.every(hook => typeof hook === 'function'))) {
    throw optionError(where, `option "${name}" must be a function or a non-empty list of functions, got ${showValue(value)}`)
  }
}

function stringListOption (value: unknown, where: string, name: string): void {
  if (value !== undefined && (!Array.isArray(value) || value.length === 0 || !value.every(item => typeof item === 'string' && item !== ''))) {
    throw optionError(where, `option "${name}" must be a non-empty list of strings, got ${showValue(value)}`)
  }
}

function nextUpstreamOption (value: unknown, where: string): NextUpstreamWord[] {
  if (value === undefined) return [...DEFAULT_NEXT_UPSTREAM]
  const words = (typeof value === 'string' ? [value] : value) as unknown[]
  if (!Array.isArray(words) || words.length === 0 || !words.every(word => NEXT_UPSTREAM_WORDS.includes(word as NextUpstreamWord))) {
    throw optionError(where, `option "nextUpstream" must be a list of nginx's proxy_next_upstream words (${NEXT_UPSTREAM_WORDS.join(', ')}), got ${showValue(value)}`)
  }
  if (words.includes('off') && words.length > 1) {
    throw optionError(where, `option "nextUpstream": "off" stands alone (it turns every other word off), got ${showValue(value)}`)
  }
  return words as NextUpstreamWord[]
}

/**
 * Checks what the proxy hands to @fastify/http-proxy and `ws` as it is: the
 * hooks, handler, replyOptions and the ws sections (their own plugins check
 * the rest of their values).
 */
function checkPassedOn (options: ProxyOptions, where: string): void {
  for (const hook of HOOKS) hookOption(options[hook], where, hook)
  for (const name of ['preRewrite', 'handler'] as const) functionOption(options[name], where, name)
  stringListOption(options.httpMethods, where, 'httpMethods')
  stringListOption(options.routes, where, 'routes')
  for (const name of ['config', 'constraints'] as const) objectOption(options[name], where, name, Object.keys(options[name] ?? {}))
  const reply = objectOption(options.replyOptions, where, 'replyOptions', [...REPLY_OPTIONS, ...Object.keys(BREAKS_REPLY)])
  refuse(reply, BREAKS_REPLY, where, 'replyOptions')
  for (const name of ['rewriteRequestHeaders', 'rewriteHeaders', 'onResponse'] as const) functionOption(reply[name], where, `replyOptions.${name}`)
  const hooks = objectOption(options.wsHooks, where, 'wsHooks', [...WS_HOOKS, 'onReconnect', 'onPong'])
  for (const name of ['onReconnect', 'onPong']) {
    if (hooks[name] !== undefined) throw optionError(where, `option "wsHooks.${name}" is not taken: ${BREAKS_BALANCING.wsReconnect}`)
  }
  for (const name of WS_HOOKS) functionOption(hooks[name], where, `wsHooks.${name}`)
  const server = objectOption(options.wsServerOptions, where, 'wsServerOptions', Object.keys(options.wsServerOptions ?? {}))
  for (const name of ['noServer', 'server', 'port', 'host', 'path', 'handleProtocols', 'clientTracking']) {
    if (server[name] !== undefined) throw optionError(where, `option "wsServerOptions.${name}" is not taken: the proxy takes upgrades from the Fastify server and chooses the peer's subprotocol`)
  }
  const client = objectOption(options.wsClientOptions, where, 'wsClientOptions', Object.keys(options.wsClientOptions ?? {}))
  for (const name of ['handshakeTimeout', 'followRedirects', 'maxRedirects', 'finishRequest']) {
    if (client[name] !== undefined) throw optionError(where, `option "wsClientOptions.${name}" is not taken: the proxy's connectTimeout and headersTimeout time the handshake, and a peer's redirect is passed to the client`)
  }
  functionOption(client.rewriteRequestHeaders, where, 'wsClientOptions.rewriteRequestHeaders')
}

/**
 * The upstream names a proxy balances over: `upstream` (or none) and the
 * `hosts` table, checked for shape (the names themselves are looked up in the
 * registry by the plugin).
 */
export function upstreamsOf (options: ProxyOptions): { upstream: string | undefined, hosts: Record<string, string> } {
  const where = 'proxy'
  if (typeof options !== 'object' || options === null) throw optionError(where, `options must be an object, got ${showValue(options)}`)
  const hosts = options.hosts ?? {}
  if (options.hosts !== undefined && (typeof hosts !== 'object' || hosts === null || Array.isArray(hosts) || Object.keys(hosts).length === 0 ||
    !Object.values(hosts).every(name => typeof name === 'string' && name !== ''))) {
    throw optionError(where, `option "hosts" must map server names to upstream names, e.g. { "shop.example.com": "shop" }, got ${showValue(options.hosts)}`)
  }
  if (options.upstream === undefined && options.hosts === undefined) {
    throw optionError(where, 'option "upstream" must name an upstream of the registry (or give "hosts"), got undefined')
  }
  if (options.upstream !== undefined && (typeof options.upstream !== 'string' || options.upstream === '')) {
    throw optionError(where, `option "upstream" must name an upstream of the registry, got ${showValue(options.upstream)}`)
  }
  if (options.upstream !== undefined && /^[a-z][a-z0-9+.-]*:\/\//i.test(options.upstream)) {
    throw optionError(where, `option "upstream" names an upstream of the registry, not a URL: put ${showValue(options.upstream)} in the registry as a server (a URL would bypass the balancing)`)
  }
  return { upstream: options.upstream, hosts }
}

/** The proxy's options, checked, with their defaults filled in. `peers` is the most peers of any of its upstreams. */
export function settings (options: ProxyOptions, where: string, peers: number) {
  refuse(options, BREAKS_BALANCING, where)
  rejectUnknownOptions(options, KNOWN_OPTIONS, where)
  checkPassedOn(options, where)
  const peerHeader = options.peerHeader === true ? 'x-upstream-peer' : options.peerHeader === false ? undefined : options.peerHeader
  if (peerHeader !== undefined && (typeof peerHeader !== 'string' || !HTTP_TOKEN.test(peerHeader))) {
    throw optionError(where, `option "peerHeader" must be a header name (an HTTP token: letters, digits and !#$%&'*+-.^_\`|~), true or false, got ${showValue(options.peerHeader)}`)
  }
  // Fastify applies `prefix` to this plugin's context; it is only checked here.
  if (!stringOption(options.prefix, '/', where, 'prefix').startsWith('/')) {
    throw optionError(where, `option "prefix" must start with "/", got ${showValue(options.prefix)}`)
  }
  stringOption(options.rewritePrefix, '/', where, 'rewritePrefix')
  for (const name of ['internalRewriteLocationHeader', 'proxyPayloads'] as const) booleanOption(options[name], true, where, name)
  const words = nextUpstreamOption(options.nextUpstream, where)
  return {
    connectTimeout: durationOption(options.connectTimeout, 5000, where, 'connectTimeout'),
    headersTimeout: durationOption(options.headersTimeout, 30_000, where, 'headersTimeout'),
    bodyTimeout: durationOption(options.bodyTimeout, 30_000, where, 'bodyTimeout'),
    keepAliveTimeout: durationOption(options.keepAliveTimeout, 4000, where, 'keepAliveTimeout'),
    connections: options.connections === undefined ? undefined : numberOption(options.connections, 0, where, 'connections', { min: 1, integer: true }),
    nextUpstream: nextUpstreamOf(words),
    tries: numberOption(options.nextUpstreamTries, 0, where, 'nextUpstreamTries', { min: 0, integer: true }) || peers,
    nextUpstreamTimeout: durationOption(options.nextUpstreamTimeout, 0, where, 'nextUpstreamTimeout', 0),
    peerHeader: peerHeader?.toLowerCase(),
    retryBodySize: numberOption(options.retryBodySize, 65_536, where, 'retryBodySize', { min: 0, integer: true }),
    exposeErrors: booleanOption(options.exposeErrors, false, where, 'exposeErrors'),
    retryAfter: String(numberOption(options.retryAfter, 5, where, 'retryAfter', { min: 0, integer: true })),
    maxHeld: numberOption(options.maxHeld, 1000, where, 'maxHeld', { min: 0, integer: true }),
    holdTimeout: durationOption(options.holdTimeout, 30_000, where, 'holdTimeout'),
    disableRequestLogging: booleanOption(options.disableRequestLogging, false, where, 'disableRequestLogging'),
    xForwarded: booleanOption(options.xForwarded, false, where, 'xForwarded'),
    preserveHost: booleanOption(options.preserveHost, false, where, 'preserveHost'),
    websocket: booleanOption(options.websocket, false, where, 'websocket'),
    wsDrainTimeout: durationOption(options.wsDrainTimeout, 10_000, where, 'wsDrainTimeout')
  }
}

export type ProxySettings = ReturnType<typeof settings>
