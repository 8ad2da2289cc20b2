import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { Scaler } from '../lib/scaler.js'
import { optionError } from '../lib/options.js'

export type { ScaleOptions } from '../lib/scaler.js'

/**
 * Load-based scaling, the rule of ngx_supervisord's fair patch: every window,
 * load = requests per second per running peer; above the threshold start one,
 * idle or under 40% of it stop one, never below minRunning. Decisions are
 * registry `scale` events; the supervisord bridge carries them out (stops
 * drain first).
 */
async function scalerPlugin (fastify: FastifyInstance, options: object): Promise<void> {
  const stray = Object.keys(options ?? {})[0]
  if (stray !== undefined) {
    throw optionError('scaler', `unknown option "${stray}": the scaler plugin takes no options; scaling is set per upstream, in its "scale" section`)
  }
  const scaler = new Scaler(fastify.upstreams, fastify.log)
  fastify.addHook('onReady', async () => scaler.start())
  fastify.addHook('onClose', async () => await scaler.stop())
}

export default fp(scalerPlugin, {
  name: 'fastify-supervisord-scaler',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry', 'fastify-supervisord-bridge']
})
