import fp from 'fastify-plugin'
import httpProxy from '@fastify/http-proxy'
import type { Dispatcher } from 'undici'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { Peer } from '../lib/peer.js'
import { BalancedProxy } from '../lib/balanced-proxy.js'
import { ProxyObserver } from '../lib/proxy-observer.js'
import { proxyAgent } from '../lib/proxy-agent.js'
import { settings, upstreamsOf, type ProxyOptions } from '../lib/proxy-options.js'
import { kExchange, type Exchange, type ForwardCallback, type ForwardedRequest } from '../lib/proxy-attempt.js'
import { addForwarded, type HeaderFields } from '../lib/proxy-headers.js'
import { VirtualHosts } from '../lib/virtual-hosts.js'
import { WebSocketProxy, isWebSocketUpgrade } from '../lib/ws-proxy.js'
import { UnbalancedFromError, UnknownHostError } from '../lib/errors.js'

export type { ProxyOptions } from '../lib/proxy-options.js'

type Carrier = FastifyRequest & { [kExchange]?: Exchange<BalancedProxy> }
type TaggedHeaders = HeaderFields & { [kExchange]?: Exchange<BalancedProxy> }

/**
 * What reply-from's request URL is built from before a peer is picked (the
 * picked peer's origin and Host replace it on every attempt).
 */
const NOT_YET_PICKED = 'http://peer.invalid'

const ROUTE_HOOKS = ['onRequest', 'preParsing', 'preSerialization', 'onSend', 'onResponse', 'onError', 'onTimeout', 'onRequestAbort'] as const

function describe (upstream: string | undefined, hosts: Record<string, string>): string {
  if (Object.keys(hosts).length === 0) return `proxy to upstream "${upstream as string}"`
  return `proxy for ${Object.keys(hosts).length} server name(s)${upstream === undefined ? '' : ` (default upstream "${upstream}")`}`
}

/**
 * Balances one route prefix over an upstream (or, with `hosts`, over one
 * upstream per server name), on @fastify/http-proxy with `upstream: ''`: the
 * proxy's hooks and reply options carry the request to its upstream's
 * BalancedProxy, which picks a peer when reply-from sends it.
 */
async function proxyPlugin (fastify: FastifyInstance, options: ProxyOptions): Promise<void> {
  const { upstream: fallbackName, hosts } = upstreamsOf(options)
  const names = [...new Set([...(fallbackName === undefined ? [] : [fallbackName]), ...Object.values(hosts)])]
  const upstreams = names.map(name => fastify.upstreams.get(name))
  const where = describe(fallbackName, hosts)
  const config = settings(options, where, Math.max(...upstreams.map(upstream => upstream.peers.length)))
  // One agent for the plain upstreams; one more for each with https:// peers, made with its tls section.
  const agent = proxyAgent(config)
  const agents = [agent]
  const agentOf = (upstream: typeof upstreams[number]): Dispatcher => {
    if (upstream.tls === undefined) return agent
    const own = proxyAgent(config, upstream.tls)
    agents.push(own)
    return own
  }
  const sites = new Map(upstreams.map(upstream => [upstream.name, new BalancedProxy(upstream, fastify.upstreams, agentOf(upstream), config, fastify.log)]))
  const fallback = fallbackName === undefined ? undefined : sites.get(fallbackName)
  // Counts and access-log fields per answer, and the suite's error answers at warn: before the routes, so that they apply to them.
  const observer = new ProxyObserver(fastify, fallback?.upstream)
  fastify.addHook('onSend', observer.onSend)
  fastify.setErrorHandler(observer.errorHandler)
  const table = Object.keys(hosts).length === 0
    ? undefined
    : new VirtualHosts(Object.fromEntries(Object.entries(hosts).map(([name, upstream]) => [name, sites.get(upstream) as BalancedProxy])), where)
  const ws = config.websocket ? new WebSocketProxy(fastify, options, config) : undefined

  // First of the route's hooks: every request gets its exchange (and, with
  // hosts, its upstream) as it arrives; a Host no name matches ends here.
  fastify.addHook('onRequest', (request: Carrier, reply, done) => {
    const site = table === undefined ? fallback : table.match(request.headers.host) ?? fallback
    if (site === undefined) {
      done(new UnknownHostError())
      return
    }
    request[kExchange] = site.exchange(request, reply)
    done()
  })
  for (const hook of ROUTE_HOOKS) {
    const handlers = options[hook]
    if (handlers === undefined) continue
    for (const handler of Array.isArray(handlers) ? handlers : [handlers]) fastify.addHook(hook as 'onRequest', handler as never)
  }

  const userReply = options.replyOptions ?? {}
  const userRewrite = userReply.rewriteRequestHeaders
  const rewriteRequestHeaders = (request: FastifyRequest, headers: TaggedHeaders): TaggedHeaders => {
    const exchange = (request as Carrier)[kExchange] as Exchange<BalancedProxy>
    if (config.xForwarded) {
      addForwarded(headers, { remoteAddress: request.raw.socket?.remoteAddress, protocol: request.protocol, hostname: request.hostname, port: request.port })
    }
    if (config.preserveHost && request.headers.host !== undefined) headers.host = request.headers.host
    const given = headers.host
    const out: TaggedHeaders = userRewrite === undefined ? headers : userRewrite(request as never, headers as never) as TaggedHeaders
    exchange.hostIsPeer = !config.preserveHost && out.host === given
    out[kExchange] = exchange
    return out
  }
  // reply-from's `undici` option takes any object with request(options, callback).
  const front = {
    request (forwarded: ForwardedRequest, callback: ForwardCallback): void {
      const headers = forwarded.headers as TaggedHeaders
      const exchange = headers[kExchange]
      if (exchange === undefined) {
        callback(new UnbalancedFromError())
        return
      }
      delete headers[kExchange]
      exchange.site.forward(exchange, forwarded, callback)
    }
  }
  const userHandler = options.handler
  const handler = (request: FastifyRequest, reply: FastifyReply, dest: string, replyOptions: Parameters<NonNullable<ProxyOptions['handler']>>[3]): unknown => {
    if (ws !== undefined && isWebSocketUpgrade(request.raw)) {
      ws.handle((request as Carrier)[kExchange] as Exchange<BalancedProxy>, dest)
      return reply
    }
    return userHandler === undefined ? reply.from(dest, replyOptions) : userHandler(request, reply as never, dest, replyOptions)
  }

  await fastify.register(httpProxy, {
    upstream: '',
    // `prefix` was already applied by Fastify to this plugin's context.
    rewritePrefix: options.rewritePrefix,
    httpMethods: options.httpMethods,
    routes: options.routes,
    config: options.config,
    constraints: options.constraints,
    preRewrite: options.preRewrite,
    internalRewriteLocationHeader: options.internalRewriteLocationHeader,
    proxyPayloads: options.proxyPayloads,
    preHandler: options.preHandler as never,
    preValidation: options.preValidation as never,
    // The cast: reply-from's type asks for undici's whole request() API; it calls only request(options, callback).
    undici: front as unknown as Pick<Dispatcher, 'request'>,
    disableRequestLogging: config.disableRequestLogging,
    replyOptions: {
      ...userReply,
      getUpstream: (request: { upstreamPeer: Peer | null }) => request.upstreamPeer?.origin ?? NOT_YET_PICKED,
      rewriteRequestHeaders: rewriteRequestHeaders as never,
      // Never retry on the same peer (reply-from's default retries a GET
      // answered 503 up to ten times): a retry here means another peer.
      retryDelay: () => null
    },
    handler
  })

  fastify.addHook('preClose', async () => { await ws?.close() })
  fastify.addHook('onClose', async () => {
    for (const site of sites.values()) site.close()
    observer.close()
    await Promise.all(agents.map(async own => await own.close()))
  })
}

export default fp(proxyPlugin, {
  name: 'fastify-supervisord-proxy',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry'],
  encapsulate: true
})
