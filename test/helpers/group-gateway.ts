import Fastify from 'fastify'
import registry from '../../plugins/registry.js'
import supervisord, { type SupervisordBridgeOptions } from '../../plugins/supervisord.js'
import healthCheck from '../../plugins/health.js'
import scaler from '../../plugins/scaler.js'
import proxy from '../../plugins/proxy.js'
import { RedisStore } from '../../lib/store/redis-store.js'
import type { RedisTimingOptions } from '../../lib/store/options.js'
import type { UpstreamOptions } from '../../lib/upstream.js'
import type { AdminState } from '../../lib/peer.js'
import type { ScaleEvent } from '../../lib/events.js'
import { statusSnapshot } from '../../lib/status/snapshot.js'

// One gateway of a group, in a process of its own (forked by helpers/group.ts):
// the registry on a RedisStore, the bridge, checks, the scaler and the proxy
// over one upstream `backend`. Its parent asks it things over IPC; its log
// lines go to stdout as JSON. It exits when its parent goes.

export interface GroupGatewayConfig {
  id: string
  redisUrl: string
  namespace: string
  upstream: UpstreamOptions
  bridge?: SupervisordBridgeOptions
  store?: RedisTimingOptions
  syncInterval?: number
  leaseTtl?: number
}

export type GroupRequest =
  | { op: 'state' }
  | { op: 'setAdmin', index: number, state: AdminState }
  | { op: 'execute', command: 'start' | 'stop', index: number }
  | { op: 'scales' }

const config = JSON.parse(process.argv[2]) as GroupGatewayConfig
const app = Fastify({ logger: { level: 'info' } })
const scales: ScaleEvent[] = []
await app.register(registry, {
  upstreams: { backend: config.upstream },
  store: new RedisStore({ url: config.redisUrl, namespace: config.namespace, ...config.store }),
  gatewayId: config.id,
  syncInterval: config.syncInterval,
  leaseTtl: config.leaseTtl
})
await app.register(supervisord, config.bridge ?? {})
if (config.upstream.healthCheck !== undefined) await app.register(healthCheck)
if (config.upstream.scale !== undefined) await app.register(scaler)
await app.register(proxy, { upstream: 'backend', holdTimeout: 20_000, disableRequestLogging: true })
app.upstreams.on('scale', event => scales.push(event))
await app.listen({ port: 0, host: '127.0.0.1' })

async function answer (request: GroupRequest): Promise<unknown> {
  switch (request.op) {
    case 'state': {
      const snapshot = statusSnapshot(app.upstreams)
      return { peers: snapshot.upstreams[0].peers, group: snapshot.group }
    }
    case 'setAdmin':
      app.upstreams.setAdmin('backend', request.index, request.state, 'test operator')
      return null
    case 'execute':
      return await app.supervisord.execute('backend', request.command, request.index, { wait: true })
    case 'scales':
      return scales
  }
}

process.on('message', (message: { id: number, request: GroupRequest }) => {
  answer(message.request).then(
    result => process.send?.({ id: message.id, result }),
    (error: Error) => process.send?.({ id: message.id, error: error.message }))
})
process.on('disconnect', () => {
  app.close().finally(() => process.exit(0))
})
process.send?.({ ready: true, port: (app.server.address() as { port: number }).port })
