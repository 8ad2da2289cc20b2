import { startBackendProcess } from './backends-process.js'
import { Children } from './children.js'
import { VHOST_SITES, vhostName } from './fastify-proxies.js'
import { startNodeProxy } from './node-proxy.js'
import type { LoadJob, LoadResult } from './load-worker.js'
import { alternate, envNumber, fmt, ratio, stopAll, table, type Round, type System } from './side-by-side.js'
import { inWorker, median } from './load.js'

// `npm run bench -- vhosts`: the cost of routing by Host. This proxy over one
// upstream of 3 peers, beside the same proxy with 200 upstreams of 3 peers
// each and one server name per upstream, with the requests spread over the
// 200 names; in alternating rounds, each gateway in a process of its own.

export async function run (print: (line: string) => void = console.log): Promise<Round[]> {
  const rounds = envNumber('BENCH_ROUNDS', 3)
  const seconds = envNumber('BENCH_SECONDS', 5)
  const connections = envNumber('BENCH_CONNECTIONS', 50)
  const warmup = envNumber('BENCH_WARMUP', 2)
  const children = new Children()
  try {
    const backends = await startBackendProcess(3)
    children.track('node backends', backends.child)
    const servers = backends.ports.map(port => `127.0.0.1:${port}`)
    const single = await startNodeProxy('bare', servers, children)
    const many = await startNodeProxy('vhosts', servers, children)
    const systems: System[] = [
      { id: 'single', label: 'one upstream, 3 peers', port: single.port, pid: single.pid },
      { id: 'vhosts', label: `${VHOST_SITES} upstreams × 3 peers, routed by Host`, port: many.port, pid: many.pid }
    ]
    const hosts = Array.from({ length: VHOST_SITES }, (_, site) => vhostName(site))
    const load = async (system: System, ms: number): Promise<LoadResult> => await inWorker<LoadResult>('./load-worker.js',
      { url: `http://127.0.0.1:${system.port}/`, connections, warmupMs: 0, ms, maxRequests: 50_000_000, hosts } satisfies LoadJob)
    for (const system of systems) await load(system, warmup * 1000)
    const results = await alternate(systems, rounds, async system => {
      const result = await load(system, seconds * 1000)
      return { rate: result.rps, count: result.requests, errors: result.errors, p50: result.p50, p99: result.p99 }
    })
    const cpu = ratio(results, 'vhosts', 'single', 'cpuUsPerUnit')
    const rps = ratio(results, 'vhosts', 'single', 'rate')
    print(`\n**Routing by Host: ${VHOST_SITES} upstreams beside one** (${rounds} rounds of ${seconds} s at ${connections} connections; ratios: median of per-round ratios, lowest–highest)\n`)
    print(table(['system', 'req/s', 'proxy CPU µs/req', 'p50 ms', 'p99 ms', 'errors', 'CPU × one upstream', 'req/s × one upstream'], systems.map(system => {
      const own = results.filter(r => r.system === system.id)
      const isMany = system.id === 'vhosts'
      return [system.label, fmt(median(own.map(r => r.rate))), fmt(median(own.map(r => r.cpuUsPerUnit ?? NaN)), 1), fmt(median(own.map(r => r.p50)), 2),
        fmt(median(own.map(r => r.p99)), 1), String(own.reduce((n, r) => n + r.errors, 0)),
        isMany && cpu !== null ? `${fmt(cpu.median, 3)} (${fmt(cpu.min, 3)}–${fmt(cpu.max, 3)})` : '1.000',
        isMany && rps !== null ? `${fmt(rps.median, 3)} (${fmt(rps.min, 3)}–${fmt(rps.max, 3)})` : '1.000']
    })))
    print(`\nRouting cost per request: ${cpu === null ? 'not measured (no /proc)' : `${fmt((cpu.median - 1) * 100, 1)}% CPU per request over one upstream (target: within 5%)`}`)
    return results
  } finally {
    await stopAll(children, print)
  }
}
