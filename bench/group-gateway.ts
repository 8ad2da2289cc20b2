import cluster from 'node:cluster'
import type { AddressInfo } from 'node:net'
import { pathToFileURL } from 'node:url'
import Fastify from 'fastify'
import { healthCheck, proxy, registry, RedisStore, scaler, supervisord } from '../index.js'

// One gateway group for `npm run bench -- gateways`: n gateway processes on one
// port (node:cluster, as the example's WORKERS=n), each with the registry on a
// RedisStore, supervisord "none" over the given backends, shared checks, the
// scaler (never firing) and the proxy. The primary tells its parent the port.

export interface GroupJob { workers: number, redisUrl: string, namespace: string, servers: string[] }

async function worker (job: GroupJob): Promise<void> {
  const app = Fastify({ logger: false })
  await app.register(registry, {
    upstreams: {
      backend: {
        servers: job.servers,
        balancer: 'fair',
        supervisord: 'none',
        inheritBackendStatus: true,
        healthCheck: { interval: 1000, timeout: 1000 },
        scale: { loadThreshold: 1_000_000, window: 5000, idleStop: false }
      }
    },
    store: new RedisStore({ url: job.redisUrl, namespace: job.namespace }),
    syncInterval: 2000
  })
  await app.register(supervisord, { pollInterval: 0 })
  await app.register(healthCheck)
  await app.register(scaler)
  await app.register(proxy, { upstream: 'backend', disableRequestLogging: true })
  await app.listen({ port: Number(process.env.GROUP_PORT), host: '127.0.0.1' })
  process.on('disconnect', () => { app.close().finally(() => process.exit(0)) })
}

async function primary (job: GroupJob): Promise<void> {
  // A port of its own first, then every worker listens on it.
  const probe = Fastify()
  await probe.listen({ port: 0, host: '127.0.0.1' })
  const port = (probe.server.address() as AddressInfo).port
  await probe.close()
  const workers = Array.from({ length: job.workers }, () => cluster.fork({ GROUP_PORT: String(port) }))
  await Promise.all(workers.map(async w => await new Promise(resolve => w.once('listening', resolve))))
  process.send?.({ port, pids: workers.map(w => w.process.pid) })
  process.on('disconnect', () => {
    for (const w of workers) w.disconnect()
    setTimeout(() => process.exit(0), 2000).unref()
  })
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === 'group') {
  const job = JSON.parse(process.argv[3]) as GroupJob
  const started = cluster.isPrimary ? primary(job) : worker(job)
  started.catch(error => {
    console.error(error)
    process.exit(1)
  })
}
