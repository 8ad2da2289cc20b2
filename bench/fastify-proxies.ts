import Fastify, { type FastifyInstance } from 'fastify'
import httpProxy from '@fastify/http-proxy'
import registry from '../plugins/registry.js'
import proxy from '../plugins/proxy.js'
import healthCheck from '../plugins/health.js'
import statusPage from '../routes/status-page.js'

export type FastifyProxyKind = 'plain' | 'bare' | 'features'

/**
 * Everything "this proxy, with features" turns on beside the proxy itself,
 * each as an operator would run it. The metrics plugin goes here when it
 * lands, so that the comparison with the bare proxy keeps counting it.
 */
async function registerFeatures (app: FastifyInstance): Promise<void> {
  await app.register(healthCheck)
  await app.register(statusPage)
}

/** The Fastify proxies of the comparison over `servers` ("host:port"), not yet listening. */
export async function fastifyProxy (kind: FastifyProxyKind, servers: string[], logFile: string): Promise<FastifyInstance> {
  switch (kind) {
    case 'plain': {
      // @fastify/http-proxy takes one upstream: the first address of the same backend process
      const app = Fastify({ logger: false })
      await app.register(httpProxy, { upstream: `http://${servers[0]}`, disableRequestLogging: true })
      return app
    }
    case 'bare': {
      const app = Fastify({ logger: false })
      await app.register(registry, { upstreams: { backend: { servers, balancer: 'round-robin' } } })
      await app.register(proxy, { upstream: 'backend', disableRequestLogging: true })
      return app
    }
    case 'features': {
      // logging at info to a file, without a line per request (Fastify's nor reply-from's)
      const app = Fastify({ logger: { level: 'info', file: logFile }, disableRequestLogging: true })
      await app.register(registry, { upstreams: { backend: { servers, balancer: 'fair', healthCheck: { interval: 1000 } } } })
      await registerFeatures(app)
      await app.register(proxy, { upstream: 'backend', disableRequestLogging: true })
      return app
    }
  }
}
