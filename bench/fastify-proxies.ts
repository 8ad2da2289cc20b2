import Fastify, { type FastifyInstance } from 'fastify'
import httpProxy from '@fastify/http-proxy'
import registry from '../plugins/registry.js'
import proxy from '../plugins/proxy.js'
import healthCheck from '../plugins/health.js'
import statusPage from '../routes/status-page.js'
import metrics from '../plugins/metrics.js'

export type FastifyProxyKind = 'plain' | 'bare' | 'metrics' | 'features' | 'vhosts' | 'ws-plain' | 'ws-bare'

/** Sites of the virtual-host case, each an upstream over the same peers: site0.example.test ... */
export const VHOST_SITES = 200

export function vhostName (site: number): string {
  return `site${site}.example.test`
}

/** ms between two scrapes of /metrics, as a Prometheus with scrape_interval 1s (its default is 1 min). */
const SCRAPE_EVERY = 1000

/**
 * The metrics plugin, scraped as Prometheus would, in the proxy's own
 * process so that the scrapes' CPU counts as the proxy's: a GET of
 * /metrics (from loopback) every second while the server runs.
 */
async function registerMetrics (app: FastifyInstance): Promise<void> {
  await app.register(metrics)
  let timer: NodeJS.Timeout | undefined
  const scrape = (): void => {
    timer = setTimeout(() => {
      app.inject('/metrics').then(res => { if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}`) })
        .finally(scrape).catch(error => app.log.error({ err: error }, 'bench: scrape failed'))
    }, SCRAPE_EVERY)
    timer.unref()
  }
  app.addHook('onReady', async () => scrape())
  app.addHook('onClose', async () => clearTimeout(timer))
}

/**
 * Everything "this proxy, with features" turns on beside the proxy itself,
 * each as an operator would run it, so that the comparison with the bare
 * proxy keeps counting them.
 */
async function registerFeatures (app: FastifyInstance): Promise<void> {
  await app.register(healthCheck)
  await app.register(statusPage)
  await registerMetrics(app)
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
    case 'bare':
    case 'metrics': {
      const app = Fastify({ logger: false })
      await app.register(registry, { upstreams: { backend: { servers, balancer: 'round-robin' } } })
      if (kind === 'metrics') await registerMetrics(app)
      await app.register(proxy, { upstream: 'backend', disableRequestLogging: true })
      return app
    }
    case 'vhosts': {
      // VHOST_SITES upstreams of the same peers, one server name each: what one request costs to route by Host
      const app = Fastify({ logger: false })
      const upstreams = Object.fromEntries(Array.from({ length: VHOST_SITES }, (_, site) => [`site${site}`, { servers, balancer: 'round-robin' as const }]))
      await app.register(registry, { upstreams })
      const hosts = Object.fromEntries(Array.from({ length: VHOST_SITES }, (_, site) => [vhostName(site), `site${site}`]))
      await app.register(proxy, { hosts, disableRequestLogging: true })
      return app
    }
    case 'ws-plain': {
      const app = Fastify({ logger: false })
      await app.register(httpProxy, { upstream: `http://${servers[0]}`, websocket: true, disableRequestLogging: true })
      return app
    }
    case 'ws-bare': {
      const app = Fastify({ logger: false })
      await app.register(registry, { upstreams: { backend: { servers, balancer: 'round-robin' } } })
      await app.register(proxy, { upstream: 'backend', websocket: true, disableRequestLogging: true })
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
