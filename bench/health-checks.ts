import { execFileSync, fork } from 'node:child_process'
import net from 'node:net'
import os from 'node:os'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import v8 from 'node:v8'
import vm from 'node:vm'
import { pathToFileURL } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import registry from '../plugins/registry.js'
import health from '../plugins/health.js'
import proxy from '../plugins/proxy.js'
import { startBackendProcess } from './backends-process.js'
import { median, ms, runLoad } from './load.js'
import { Children } from './children.js'
import { envList, envNumber } from './side-by-side.js'
import { OPEN_LOOP_SCRIPT, openLoopBound, type OpenLoopJob, type OpenLoopResult } from './open-loop.js'

/** The figures asked for: 1000 peers every second (the targets), and 5000 every 5 s. */
const SCENARIOS = [{ peers: 1000, interval: 1000 }, { peers: 5000, interval: 5000 }]
/** Connection: close (the default, as HAProxy) and keepAlive. */
const MODES = [{ name: 'close', keepAlive: false }, { name: 'keepAlive', keepAlive: true }]
const LOAD = { connections: 8, warmupMs: 500, ms: 3000, maxRequests: 1_000_000 }
/**
 * The open-loop rounds: requests at a fixed share of the capacity the
 * closed-loop rounds measured idle. A closed loop at saturation turns any
 * CPU the checks take into latency for every request; at a fixed rate
 * below capacity, p99 and max show what a client meets while checks run.
 */
const OPEN_SHARE = 0.5
const OPEN_LOOP = { seconds: 4, warmupSeconds: 1, connections: 50, maxOutstanding: 1000, graceMs: 2000 }

/** Open files allowed per process; each peer costs a listener in the child and a socket here. */
function fileLimit (): number {
  try {
    const limit = execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim()
    return limit === 'unlimited' ? Infinity : Number(limit)
  } catch {
    return 1024
  }
}

const mb = (bytes: number): string => (bytes / 1048576).toFixed(1)
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** A full collection, so that memory figures count what is kept, not garbage not yet collected. */
function collect (): void {
  v8.setFlagsFromString('--expose-gc')
  ;(vm.runInNewContext('gc') as () => void)()
}

/** CPU time of this process (every thread) over `ms` while `work` runs, as % of one core. */
async function cpuDuring (ms: number, work: (until: number) => Promise<void>): Promise<{ percent: number, from: number, to: number }> {
  const from = Date.now()
  const cpu = process.cpuUsage()
  await work(from + ms)
  const used = process.cpuUsage(cpu)
  const to = Date.now()
  return { percent: (used.user + used.system) / 1000 / (to - from) * 100, from, to }
}

/**
 * The same traffic from bare sockets, without the checker: a connection per
 * request (connect, request, read to close), or one kept connection per port.
 * What the machine charges for the socket work itself: the floor.
 */
async function bareRounds (ports: number[], interval: number, keepAlive: boolean, stop: AbortSignal): Promise<void> {
  const request = Buffer.from(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n${keepAlive ? '' : 'Connection: close\r\n'}\r\n`)
  const open = async (port: number): Promise<net.Socket> => await new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1', () => resolve(socket))
    socket.on('data', () => {})
    socket.on('error', () => {})
    if (!keepAlive) socket.setTimeout(2000, () => socket.destroy())
  })
  const kept = keepAlive ? await Promise.all(ports.map(open)) : []
  const send = (i: number): void => {
    if (keepAlive) kept[i].write(request)
    else open(ports[i]).then(socket => socket.end(request), () => {})
  }
  // Spread over the interval in slices every 10 ms: batched, so fewer wake-ups than the checker's one check at a time.
  const perSlice = Math.ceil(ports.length / Math.max(1, Math.floor(interval / 10)))
  while (!stop.aborted) {
    const round = Date.now()
    for (let i = 0; i < ports.length && !stop.aborted; i += perSlice) {
      for (let j = i; j < Math.min(ports.length, i + perSlice); j++) send(j)
      await sleep(10)
    }
    if (!stop.aborted) await sleep(Math.max(0, round + interval - Date.now()))
  }
  for (const socket of kept) socket.destroy()
}

/**
 * `work` while bare sockets send the checks' traffic (no checker), after
 * `warmup` as for the checker: what that traffic alone costs the proxy on
 * this machine (the checked backends' work, the sockets), the floor for the
 * checker's figures.
 */
async function besideBare<T> (ports: number[], interval: number, keepAlive: boolean, warmup: number, work: () => Promise<T>): Promise<T> {
  const stop = new AbortController()
  const bare = bareRounds(ports, interval, keepAlive, stop.signal)
  try {
    await sleep(warmup)
    return await work()
  } finally {
    stop.abort()
    await bare
  }
}

async function checker (ports: number[], interval: number, keepAlive: boolean): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  await app.register(registry, {
    upstreams: { bench: { servers: ports.map(port => `127.0.0.1:${port}`), healthCheck: keepAlive ? { interval, keepAlive } : { interval } } }
  })
  await app.register(health)
  await app.ready()
  return app
}

interface Figures {
  peers: number
  interval: number
  mode: string
  checksPerSecond: number
  failed: number
  p50: number
  p99: number
  cpu: number
  floor: number
  /** RSS of the gateway process with the checker idle (the proxy listening), after a full GC. */
  rssBase: number
  rssPeak: number
  rssAfter: number
  heapAfter: number
  proxyIdle: number
  proxyChecking: number
  /** The proxy's p99 while bare sockets send the checks' traffic (see besideBare). */
  proxyBare: number
  /** Per round: proxy p99 checking / idle. */
  ratios: number[]
  /** Per round: proxy p99 beside bare sockets / idle. */
  bareRatios: number[]
  /** p99 of this process's event-loop delay under the proxy's load, ms (medians of the rounds). */
  loopIdle: number
  loopChecking: number
  /** The open-loop rounds' rate (req/s), and their p99 and max (ms, medians of the rounds) idle and checking. */
  openRate: number
  openIdle: { p99: number, max: number }
  openChecking: { p99: number, max: number }
  openBare: { p99: number, max: number }
  /** Per open-loop round: p99 checking / idle, and beside bare sockets / idle. */
  openRatios: number[]
  openBareRatios: number[]
  /** Requests the open-loop rounds lost (failed, dropped, unanswered), all rounds. */
  openLost: number
}

/** The proxy's p99 under a bounded load, and the p99 of the event-loop delay the requests met meanwhile. */
async function proxyRound (url: string): Promise<{ p99: number, loop: number, rps: number }> {
  const delay = monitorEventLoopDelay({ resolution: 1 })
  delay.enable()
  const { p99, rps } = await runLoad({ url, ...LOAD })
  delay.disable()
  return { p99, loop: delay.percentile(99) / 1e6, rps }
}

/** An open-loop round at `rate` from a generator process of its own. */
async function openRound (children: Children, url: string, rate: number): Promise<OpenLoopResult> {
  const job: OpenLoopJob = { url, rate, ...OPEN_LOOP }
  return await children.answer<OpenLoopResult>('open-loop generator', OPEN_LOOP_SCRIPT, [JSON.stringify(job)], openLoopBound(job))
}

const quantile = (sorted: number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] ?? NaN

/** What a gateway process is asked to measure. */
interface GatewayJob { ports: number[], served: number[], interval: number, mode: typeof MODES[number] }

/**
 * One gateway process per scenario and mode: a proxy over the served
 * backends and the checker of `ports`, so that CPU and memory are this
 * process's alone and no scenario inherits another's heap.
 */
async function gateway ({ ports, served, interval, mode }: GatewayJob): Promise<Figures> {
  const front = Fastify({ logger: false })
  await front.register(registry, { upstreams: { front: { servers: served.map(port => `127.0.0.1:${port}`) } } })
  await front.register(proxy, { upstream: 'front', disableRequestLogging: true })
  await front.listen({ port: 0, host: '127.0.0.1' })
  try {
    return await measure(ports, interval, mode, `http://127.0.0.1:${(front.server.address() as net.AddressInfo).port}/`)
  } finally {
    await front.close()
  }
}

async function inGatewayProcess (job: GatewayJob): Promise<Figures> {
  // 'advanced' keeps what JSON cannot (Infinity: a p99 of requests lost)
  const child = fork(new URL(import.meta.url), ['gateway'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' })
  try {
    return await new Promise<Figures>((resolve, reject) => {
      child.once('message', message => resolve(message as Figures))
      child.once('exit', code => reject(new Error(`the gateway process exited with ${code}`)))
      child.send(job)
    })
  } finally {
    child.kill()
  }
}

async function measure (ports: number[], interval: number, mode: typeof MODES[number], proxyUrl: string): Promise<Figures> {
  const warmup = interval + 500
  const window = Math.max(5000, 2 * interval)
  collect()
  const before = process.memoryUsage()
  let app = await checker(ports, interval, mode.keepAlive)
  await sleep(warmup)
  const checked = await cpuDuring(window, async until => await sleep(until - Date.now()))
  const peak = process.memoryUsage()
  collect()
  const after = process.memoryUsage()
  const results = app.upstreams.get('bench').peers.flatMap(peer => peer.checks.filter(check => check.at >= checked.from && check.at < checked.to))
  const latencies = results.map(check => check.latencyMs).sort((a, b) => a - b)

  // The proxy's p99 checking, idle and beside bare sockets, alternated (checking, idle, bare, checking...) so drift hits all alike.
  const idle: Array<{ p99: number, loop: number, rps: number }> = []
  const checking: Array<{ p99: number, loop: number, rps: number }> = []
  const bare: Array<{ p99: number, loop: number, rps: number }> = []
  const rounds = envNumber('BENCH_ROUNDS', 3)
  for (let round = 0; round < rounds; round++) {
    if (round > 0) {
      app = await checker(ports, interval, mode.keepAlive)
      await sleep(warmup)
    }
    checking.push(await proxyRound(proxyUrl))
    await app.close()
    idle.push(await proxyRound(proxyUrl))
    bare.push(await besideBare(ports, interval, mode.keepAlive, warmup, async () => await proxyRound(proxyUrl)))
  }
  // The same alternation at a fixed rate, below the capacity measured idle.
  const openRate = Math.round(OPEN_SHARE * median(idle.map(round => round.rps)))
  const openIdle: OpenLoopResult[] = []
  const openChecking: OpenLoopResult[] = []
  const openBare: OpenLoopResult[] = []
  const children = new Children()
  try {
    for (let round = 0; round < rounds; round++) {
      app = await checker(ports, interval, mode.keepAlive)
      await sleep(warmup)
      openChecking.push(await openRound(children, proxyUrl, openRate))
      await app.close()
      openIdle.push(await openRound(children, proxyUrl, openRate))
      openBare.push(await besideBare(ports, interval, mode.keepAlive, warmup, async () => await openRound(children, proxyUrl, openRate)))
    }
  } finally {
    await children.stopAll()
  }
  const tail = (rounds: OpenLoopResult[]): { p99: number, max: number } => ({ p99: median(rounds.map(r => r.p99)), max: median(rounds.map(r => r.max)) })
  const floor = (await cpuDuring(window, async until => await bareRounds(ports, interval, mode.keepAlive, AbortSignal.timeout(until - Date.now())))).percent
  return {
    peers: ports.length,
    interval,
    mode: mode.name,
    checksPerSecond: results.length / ((checked.to - checked.from) / 1000),
    failed: results.filter(check => !check.ok).length,
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
    cpu: checked.percent,
    floor,
    rssBase: before.rss,
    rssPeak: peak.rss - before.rss,
    rssAfter: after.rss - before.rss,
    heapAfter: after.heapUsed - before.heapUsed,
    proxyIdle: median(idle.map(round => round.p99)),
    proxyChecking: median(checking.map(round => round.p99)),
    proxyBare: median(bare.map(round => round.p99)),
    ratios: checking.map((round, i) => round.p99 / idle[i].p99),
    bareRatios: bare.map((round, i) => round.p99 / idle[i].p99),
    loopIdle: median(idle.map(round => round.loop)),
    loopChecking: median(checking.map(round => round.loop)),
    openRate,
    openIdle: tail(openIdle),
    openChecking: tail(openChecking),
    openBare: tail(openBare),
    openRatios: openChecking.map((round, i) => round.p99 / openIdle[i].p99),
    openBareRatios: openBare.map((round, i) => round.p99 / openIdle[i].p99),
    openLost: [...openIdle, ...openChecking, ...openBare].reduce((lost, r) => lost + r.failed + r.dropped + r.unfinished, 0)
  }
}

function print (all: Figures[], limited: boolean): void {
  const [load1, load5] = os.loadavg()
  console.log(`\nHealth checks, http, backends in a process of their own; ${os.cpus().length} cores, load average ${load1.toFixed(1)} / ${load5.toFixed(1)} (1 / 5 min) at the end` +
    (limited ? `; peers limited by the open-file limit (${fileLimit()})` : ''))
  console.log('peers @ interval  mode       checks/s  failed  check p50 / p99 ms  CPU % of a core  CPU µs/check  RSS idle + added peak / after GC  ' +
    'loop delay p99 idle / checking ms  proxy p99 idle / checking / bare ms  checking / idle (median, rounds)  bare / idle (median, rounds)')
  for (const f of all) {
    const ratio = median(f.ratios)
    console.log([
      `${String(f.peers).padStart(5)} @ ${String(f.interval).padStart(4)} ms`.padEnd(17),
      f.mode.padEnd(10),
      f.checksPerSecond.toFixed(0).padStart(8),
      String(f.failed).padStart(7),
      `${f.p50.toFixed(2)} / ${f.p99.toFixed(2)}`.padStart(19),
      `${f.cpu.toFixed(1)} (bare ${f.floor.toFixed(1)})`.padStart(16),
      (f.cpu / 100 * 1e6 / f.checksPerSecond).toFixed(0).padStart(13),
      `${mb(f.rssBase)} + ${mb(f.rssPeak)} / ${mb(f.rssAfter)} MB`.padStart(33),
      `${f.loopIdle.toFixed(2)} / ${f.loopChecking.toFixed(2)}`.padStart(34),
      `${f.proxyIdle.toFixed(2)} / ${f.proxyChecking.toFixed(2)} / ${f.proxyBare.toFixed(2)}`.padStart(36),
      `  ${ratio.toFixed(2)} (${f.ratios.map(r => r.toFixed(2)).join(', ')})`.padEnd(34),
      `${median(f.bareRatios).toFixed(2)} (${f.bareRatios.map(r => r.toFixed(2)).join(', ')})`
    ].join(' '))
  }
  console.log(`\nThe same proxy at a fixed rate (open loop, ${OPEN_SHARE * 100}% of the capacity measured idle above, ${OPEN_LOOP.seconds} s rounds, alternated checking / idle / bare)`)
  console.log('peers @ interval  mode        rate req/s  p99 idle / checking / bare ms  max idle / checking / bare ms  lost  p99 checking / idle (median, rounds)  bare / idle (median, rounds)')
  for (const f of all) {
    console.log([
      `${String(f.peers).padStart(5)} @ ${String(f.interval).padStart(4)} ms`.padEnd(17),
      f.mode.padEnd(10),
      f.openRate.toFixed(0).padStart(11),
      `${ms(f.openIdle.p99)} / ${ms(f.openChecking.p99)} / ${ms(f.openBare.p99)}`.padStart(30),
      `${ms(f.openIdle.max)} / ${ms(f.openChecking.max)} / ${ms(f.openBare.max)}`.padStart(30),
      String(f.openLost).padStart(5),
      `  ${median(f.openRatios).toFixed(2)} (${f.openRatios.map(r => r.toFixed(2)).join(', ')})`.padEnd(39),
      `${median(f.openBareRatios).toFixed(2)} (${f.openBareRatios.map(r => r.toFixed(2)).join(', ')})`
    ].join(' '))
  }
  console.log('targets: 1000 @ 1000 ms: < 10% of a core, < 50 MB, proxy p99 checking / idle <= 1.10. ' +
    '"bare": the same requests from bare sockets without the checker, a connection each or kept (the floor on this machine: ' +
    'its CPU, and the proxy\'s p99 beside it). ' +
    'Each row is a gateway process of its own (proxy + checker); CPU and RSS are that process\'s.')
}

/**
 * Active http checks of 1000 peers every second and of 5000 every 5 s
 * (backends in a child process), with Connection: close and with keepAlive:
 * checks per second, CPU of this process as a share of one core, memory
 * added, check latency, and the p99 of a proxy in this process with and
 * without the checks running beside it.
 */
export async function run (): Promise<void> {
  const scenarios = envList('BENCH_CHECK_PEERS', SCENARIOS, s => String(s.peers))
  const modes = envList('BENCH_CHECK_MODES', MODES, m => m.name)
  const most = Math.max(...scenarios.map(s => s.peers))
  const affordable = Math.floor((fileLimit() - 200) / 2)
  const { ports, child } = await startBackendProcess(Math.min(most, affordable))
  // The proxied backends live apart from the checked ones, so a busier
  // backend process is not mistaken for a slower proxy.
  const served = await startBackendProcess(2)
  const all: Figures[] = []
  try {
    for (const scenario of scenarios) {
      for (const mode of modes) all.push(await inGatewayProcess({ ports: ports.slice(0, scenario.peers), served: served.ports, interval: scenario.interval, mode }))
    }
  } finally {
    served.child.disconnect()
    child.disconnect()
  }
  print(all, affordable < most)
}

if (process.argv[2] === 'gateway') {
  process.once('message', job => {
    gateway(job as GatewayJob).then(figures => process.send?.(figures), error => {
      console.error(error)
      process.exit(1)
    })
  })
} else if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  await run()
}
