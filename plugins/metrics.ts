import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { Registry as MetricsRegistry } from 'prom-client'
import { SuiteMetrics } from '../lib/metrics.js'
import { Access, type AccessOptions } from '../lib/guard.js'
import { optionKeys, optionError, rejectUnknownOptions, showValue, stringOption } from '../lib/options.js'

export interface MetricsOptions extends AccessOptions {
  /** Where the metrics are served (default `/metrics`); `false` serves none: merge `fastify.supervisordMetrics` into a registry of yours. */
  path?: string | false
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The suite's prom-client registry (merge it into yours with `Registry.merge([yours, fastify.supervisordMetrics])`). */
    supervisordMetrics: MetricsRegistry
  }
}

const KNOWN_OPTIONS = optionKeys<MetricsOptions>()('path', 'allow', 'token')

/**
 * Prometheus metrics of the upstreams, their peers, the hold queues,
 * supervisord commands and the scaler, in the text format, guarded like
 * the operator routes (loopback only unless `allow` or `token` say).
 */
async function metricsPlugin (fastify: FastifyInstance, options: MetricsOptions): Promise<void> {
  const where = 'metrics'
  rejectUnknownOptions(options ?? {}, KNOWN_OPTIONS, where)
  const path = options?.path === false ? false : stringOption(options?.path, '/metrics', where, 'path')
  if (path !== false && !path.startsWith('/')) throw optionError(where, `option "path" must start with "/" (or be false), got ${showValue(path)}`)
  const access = new Access(options ?? {}, where, 'read the metrics')
  const metrics = new SuiteMetrics(fastify.upstreams)
  fastify.decorate('supervisordMetrics', metrics.registry)
  fastify.addHook('onClose', async () => metrics.close())
  if (path === false) return
  fastify.get(path, { onRequest: access.hook }, async (_request, reply) => {
    reply.type(metrics.registry.contentType).header('cache-control', 'no-store')
    return await metrics.exposition()
  })
}

export default fp(metricsPlugin, {
  name: 'fastify-supervisord-metrics',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry']
})
