import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { HealthChecks, type HealthPluginOptions } from '../lib/health-checker.js'

export type { HealthCheckOptions, HealthPluginOptions } from '../lib/health-checker.js'

/**
 * Active health checks: each upstream with a `healthCheck` section has its
 * peers checked on one shared schedule, and their health set by rise/fall.
 * Checks run from onReady to onClose; close aborts the ones in flight.
 */
async function healthPlugin (fastify: FastifyInstance, options: HealthPluginOptions): Promise<void> {
  const checks = new HealthChecks(fastify.upstreams, options ?? {}, fastify.log)
  fastify.addHook('onReady', async () => checks.start())
  fastify.addHook('onClose', async () => await checks.stop())
}

export default fp(healthPlugin, {
  name: 'fastify-supervisord-health',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry']
})
