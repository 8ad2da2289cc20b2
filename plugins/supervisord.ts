import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { Bridge, pluginSettings, type SupervisordBridge, type SupervisordBridgeOptions } from '../lib/supervisord-bridge.js'

export type { SupervisordBridge, SupervisordBridgeOptions, ExecuteOptions, ExecuteResult, Command } from '../lib/supervisord-bridge.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Starts and stops peers through supervisord (or at once, with `supervisord: 'none'`). */
    supervisord: SupervisordBridge
  }
}

async function supervisordPlugin (fastify: FastifyInstance, options: SupervisordBridgeOptions): Promise<void> {
  const bridge = new Bridge(fastify.upstreams, pluginSettings(options ?? {}), fastify.log)
  fastify.decorate('supervisord', bridge as SupervisordBridge)
  fastify.addHook('onReady', async () => await bridge.start())
  fastify.addHook('onClose', async () => await bridge.close())
}

export default fp(supervisordPlugin, {
  name: 'fastify-supervisord-bridge',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry']
})
