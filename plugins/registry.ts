import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { Peer } from '../lib/peer.js'
import { Registry, type RegistryOptions } from '../lib/registry.js'
import { UnreadOptionError } from '../lib/errors.js'
import { changeLogger } from '../lib/change-log.js'

export type { RegistryOptions } from '../lib/registry.js'
export type { UpstreamOptions, ServerOptions } from '../lib/upstream.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The upstreams, their peers' state and the events of every change. */
    upstreams: Registry
  }
  interface FastifyRequest {
    /** The peer a balancing proxy sent this request to (the last one tried); null on every other request. */
    upstreamPeer: Peer | null
  }
}

async function registryPlugin (fastify: FastifyInstance, options: RegistryOptions): Promise<void> {
  const registry = new Registry(options, fastify.log)
  fastify.decorate('upstreams', registry)
  registry.on('change', changeLogger(registry, fastify.log))
  // Here, not in the proxy's own context, so that every request has it.
  fastify.decorateRequest('upstreamPeer', null)
  fastify.addHook('onReady', async () => {
    const unclaimed = registry.unclaimedSections()
    if (unclaimed.length > 0) {
      throw new UnreadOptionError(unclaimed.join('; '))
    }
    // Before the other plugins' onReady (they are registered after this one):
    // the bridge's first poll, the first checks and the scaler find the store
    // connected and the group's settings applied.
    await registry.group.start()
  })
  // The last onClose to run (hooks run in reverse): leases the others kept are given up before the store closes.
  fastify.addHook('onClose', async () => {
    registry.close()
    await registry.group.close()
  })
}

export default fp(registryPlugin, {
  name: 'fastify-supervisord-registry',
  fastify: '5.x'
})
