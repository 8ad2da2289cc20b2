import { execFileSync } from 'node:child_process'
import net from 'node:net'
import v8 from 'node:v8'
import vm from 'node:vm'
import { pathToFileURL } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import registry from '../plugins/registry.js'
import health from '../plugins/health.js'
import proxy from '../plugins/proxy.js'
import { startBackendProcess } from './backends-process.js'
import { median, runLoad } from './load.js'

const PEERS = 1000
const INTERVAL = 1000
const WARMUP_MS = 1000
const MEASURE_MS = 5000

/** Open files allowed per process; each peer costs a listener in the child and a socket per check here. */
function fileLimit (): number {
  try {
    const limit = execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim()
    return limit === 'unlimited' ? Infinity : Number(limit)
  } catch {
    return 1024
  }
}

const mb = (bytes: number): string => (bytes / 1048576).toFixed(1)

/** A full collection, so that memory figures count what is kept, not garbage not yet collected. */
function collect (): void {
  v8.setFlagsFromString('--expose-gc')
  ;(vm.runInNewContext('gc') as () => void)()
}
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** CPU time of this process over `ms` while `work` runs, as % of one core. */
async function cpuDuring (ms: number, work: (until: number) => Promise<void>): Promise<{ percent: number, from: number, to: number }> {
  const from = Date.now()
  const cpu = process.cpuUsage()
  await work(from + ms)
  const used = process.cpuUsage(cpu)
  const to = Date.now()
  return { percent: (used.user + used.system) / 1000 / (to - from) * 100, from, to }
}

/** The same traffic with bare sockets (connect, request, read to close): what the machine charges for the TCP work itself. */
async function bareRounds (ports: number[], until: number): Promise<void> {
  const request = 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'
  const bare = async (port: number): Promise<void> => await new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(request))
    socket.on('data', () => {})
    socket.on('close', () => resolve())
    socket.on('error', () => {})
    socket.setTimeout(2000, () => socket.destroy())
  })
  while (Date.now() < until) {
    const round = Date.now()
    await Promise.all(ports.map(bare))
    await sleep(Math.max(0, Math.min(until, round + INTERVAL) - Date.now()))
  }
}

async function checker (ports: number[]): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  await app.register(registry, {
    upstreams: { bench: { servers: ports.map(port => `127.0.0.1:${port}`), healthCheck: { interval: INTERVAL } } }
  })
  await app.register(health)
  await app.ready()
  return app
}

/**
 * p99 of a balancing proxy (two backends, moderate load) with the
 * checker idle and with it checking every peer, alternated so that drift
 * hits both alike; medians of the rounds.
 */
async function proxyP99 (ports: number[]): Promise<{ idle: number, checking: number }> {
  // The proxied backends live apart from the 1000 checked ones, so a busier
  // backend process is not mistaken for a slower proxy.
  const served = await startBackendProcess(2)
  const front = Fastify({ logger: false })
  await front.register(registry, { upstreams: { front: { servers: served.ports.map(port => `127.0.0.1:${port}`) } } })
  await front.register(proxy, { upstream: 'front', disableRequestLogging: true })
  await front.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(front.server.address() as net.AddressInfo).port}/`
  const job = { url, connections: 8, warmupMs: 500, ms: 3000, maxRequests: 1_000_000 }
  const idle: number[] = []
  const checking: number[] = []
  try {
    for (let round = 0; round < 3; round++) {
      idle.push((await runLoad(job)).p99)
      const app = await checker(ports)
      await sleep(WARMUP_MS)
      checking.push((await runLoad(job)).p99)
      await app.close()
    }
  } finally {
    await front.close()
    served.child.disconnect()
  }
  return { idle: median(idle), checking: median(checking) }
}

/**
 * Active http checks of up to 1000 peers (backends in a child process) at an
 * interval of 1 s: checks per second achieved, CPU time of this process as a
 * share of one core, and memory added. Targets: 1000 checks/s at < 10% of a
 * core and < 50 MB.
 */
export async function run (): Promise<void> {
  const peers = Math.min(PEERS, Math.floor((fileLimit() - 100) / 2))
  const { ports, child } = await startBackendProcess(peers)
  collect()
  const before = process.memoryUsage()
  const app = await checker(ports)
  try {
    await sleep(WARMUP_MS)
    const checked = await cpuDuring(MEASURE_MS, async until => await sleep(until - Date.now()))
    const peak = process.memoryUsage()
    collect()
    const after = process.memoryUsage()
    await app.close()
    const floor = await cpuDuring(MEASURE_MS, async until => await bareRounds(ports, until))
    const p99 = await proxyP99(ports)

    const results = app.upstreams.get('bench').peers.flatMap(peer => peer.checks.filter(check => check.at >= checked.from && check.at < checked.to))
    const failed = results.filter(check => !check.ok).length
    const latencies = results.map(check => check.latencyMs).sort((a, b) => a - b)
    const seconds = (checked.to - checked.from) / 1000
    console.log(`\nHealth checks: ${peers} peers${peers < PEERS ? ` (open-file limit ${fileLimit()})` : ''}, http, interval ${INTERVAL} ms, ${seconds.toFixed(1)} s measured`)
    console.log(`checks/s           ${(results.length / seconds).toFixed(0)}  (target ${(peers * 1000 / INTERVAL).toFixed(0)})${failed > 0 ? `, ${failed} failed` : ''}`)
    console.log(`latency p50/p99    ${latencies[Math.floor(latencies.length / 2)]?.toFixed(2)} / ${latencies[Math.floor(latencies.length * 0.99)]?.toFixed(2)} ms`)
    console.log(`CPU                ${checked.percent.toFixed(1)}% of one core  (target < 10%)`)
    console.log(`  bare sockets     ${floor.percent.toFixed(1)}% of one core for the same connections without the checker (the floor on this machine)`)
    console.log(`memory added       RSS ${mb(peak.rss - before.rss)} MB, heap ${mb(peak.heapUsed - before.heapUsed)} MB before a full GC; ` +
      `RSS ${mb(after.rss - before.rss)} MB, heap ${mb(after.heapUsed - before.heapUsed)} MB after  (target < 50 MB)`)
    console.log(`proxy p99          ${p99.idle.toFixed(2)} ms without checks, ${p99.checking.toFixed(2)} ms while checking ${peers} peers: ` +
      `${((p99.checking / p99.idle - 1) * 100).toFixed(1)}%  (target within 5%)`)
  } finally {
    await app.close()
    child.disconnect()
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await run()
