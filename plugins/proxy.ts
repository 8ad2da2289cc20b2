import fp from 'fastify-plugin'
import httpProxy from '@fastify/http-proxy'
import { Agent, type Dispatcher } from 'undici'
import type { FastifyInstance } from 'fastify'
import { BalancedProxy } from '../lib/balanced-proxy.js'
import { ProxyObserver } from '../lib/proxy-observer.js'
import { settings, type ProxyOptions } from '../lib/proxy-options.js'
import { optionError, showValue } from '../lib/options.js'

export type { ProxyOptions } from '../lib/proxy-options.js'

/**
 * Balances one route prefix over an upstream, on @fastify/http-proxy with
 * `upstream: ''` and a handler of our own (see BalancedProxy).
 */
async function proxyPlugin (fastify: FastifyInstance, options: ProxyOptions): Promise<void> {
  if (typeof options?.upstream !== 'string') {
    throw optionError('proxy', `option "upstream" must name an upstream of the registry, got ${showValue(options?.upstream)}`)
  }
  const upstream = fastify.upstreams.get(options.upstream)
  const config = settings(options, upstream)
  const agent = new Agent({
    connect: { timeout: config.connectTimeout },
    headersTimeout: config.headersTimeout,
    bodyTimeout: config.bodyTimeout,
    keepAliveTimeout: config.keepAliveTimeout,
    connections: config.connections ?? null,
    pipelining: 1
  })
  const balanced = new BalancedProxy(upstream, fastify.upstreams, agent, config, fastify.log)
  // Counts and access-log fields per answer, and the suite's error answers at warn: before the routes, so that they apply to them.
  const observer = new ProxyObserver(fastify, upstream)
  fastify.addHook('onSend', observer.onSend)
  fastify.setErrorHandler(observer.errorHandler)

  await fastify.register(httpProxy, {
    upstream: '',
    // `prefix` was already applied by Fastify to this plugin's context.
    rewritePrefix: options.rewritePrefix,
    httpMethods: options.httpMethods,
    // reply-from sends through the balancing dispatcher, which sends through
    // the agent. The cast: reply-from's type asks for undici's whole
    // request() API; it calls only request(options, callback).
    undici: balanced.dispatcher as unknown as Pick<Dispatcher, 'request'>,
    disableRequestLogging: config.disableRequestLogging,
    preHandler: balanced.pickOrHold,
    replyOptions: { getUpstream: balanced.fromOptions.getUpstream },
    handler: balanced.handle
  })

  fastify.addHook('onClose', async () => {
    balanced.close()
    observer.close()
    await agent.close()
  })
}

export default fp(proxyPlugin, {
  name: 'fastify-supervisord-proxy',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry'],
  encapsulate: true
})
