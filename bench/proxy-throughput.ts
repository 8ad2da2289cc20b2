import Fastify, { type FastifyInstance } from 'fastify'
import httpProxy from '@fastify/http-proxy'
import registry from '../plugins/registry.js'
import proxy from '../plugins/proxy.js'
import { startBackendProcess } from './backends-process.js'
import { median, runLoad } from './load.js'
import type { LoadResult } from './load-worker.js'

const CONNECTIONS = 32
const ROUNDS = 3
const MS = 3000

async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(app.server.address() as { port: number }).port}/`
}

/**
 * Requests per second and p99 through the balancing proxy over 2 backends,
 * side by side in one run with the backend directly and with plain
 * @fastify/http-proxy to one fixed backend. Rounds alternate the targets so
 * drift on the machine hits them alike; the median round is reported.
 */
export async function run (): Promise<void> {
  const { ports, child } = await startBackendProcess(2)
  const servers = ports.map(port => `127.0.0.1:${port}`)
  const plain = Fastify({ logger: false })
  await plain.register(httpProxy, { upstream: `http://${servers[0]}`, disableRequestLogging: true })
  const targets: Record<string, string> = { direct: `http://${servers[0]}/` }
  targets['plain @fastify/http-proxy'] = await listen(plain)
  const apps = [plain]
  for (const balancer of ['round-robin', 'fair'] as const) {
    const app = Fastify({ logger: false })
    await app.register(registry, { upstreams: { backend: { servers, balancer } } })
    await app.register(proxy, { upstream: 'backend', disableRequestLogging: true })
    targets[`balancing (${balancer}, 2 peers)`] = await listen(app)
    apps.push(app)
  }
  try {
    const results = new Map<string, LoadResult[]>()
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, url] of Object.entries(targets)) {
        const result = await runLoad({ url, connections: CONNECTIONS, warmupMs: 500, ms: MS, maxRequests: 2_000_000 })
        results.set(name, [...(results.get(name) ?? []), result])
      }
    }
    const summary = [...results].map(([name, rs]) => ({
      name,
      rps: median(rs.map(r => r.rps)),
      p99: median(rs.map(r => r.p99)),
      errors: rs.reduce((n, r) => n + r.errors, 0)
    }))
    const reference = summary[1]
    console.log(`\nProxy throughput: ${CONNECTIONS} connections, ${ROUNDS} rounds of ${MS / 1000} s, median round`)
    console.log('target'.padEnd(34) + 'req/s'.padStart(10) + 'p99 ms'.padStart(9) + '  vs plain http-proxy')
    for (const s of summary) {
      const ratio = `${(s.rps / reference.rps).toFixed(2)}x req/s, ${(s.p99 / reference.p99).toFixed(2)}x p99`
      console.log(s.name.padEnd(34) + s.rps.toFixed(0).padStart(10) + s.p99.toFixed(2).padStart(9) + `  ${ratio}` + (s.errors > 0 ? `  (${s.errors} errors)` : ''))
    }
  } finally {
    await Promise.all(apps.map(async app => await app.close()))
    child.disconnect()
  }
}
