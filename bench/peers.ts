import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { which } from '../lib/dev/supervisord-daemon.js'
import { startBackendProcess } from './backends-process.js'
import { Children, cpuSeconds, pinProcess } from './children.js'
import { envList } from './side-by-side.js'
import { median, ms, runLoad } from './load.js'
import { findNative, startHaproxy, startNginxBackend, startNginxProxy, type Native } from './native.js'
import { startNodeProxy, type NodeProxyKind } from './node-proxy.js'
import { OPEN_LOOP_SCRIPT, openLoopBound, type OpenLoopJob, type OpenLoopResult } from './open-loop.js'
import { wrk, type ClosedLoopResult } from './wrk.js'

// `npm run bench -- peers`: this proxy beside its peers, over the same
// backends in the same run. Rounds alternate the systems (A B C A B C), so
// drift on the machine hits all alike; ratios are taken round by round.

export const SYSTEMS = {
  direct: 'direct to the backend',
  haproxy: 'HAProxy, 1 thread',
  nginx: 'nginx, 1 worker',
  raw: 'raw Node http proxy',
  plain: 'plain @fastify/http-proxy',
  bare: 'this proxy, round-robin',
  metrics: 'this proxy, round-robin + metrics scraped every second',
  features: 'this proxy, fair + checks + status page + metrics'
} as const
export type SystemId = keyof typeof SYSTEMS
const SYSTEM_IDS = Object.keys(SYSTEMS) as SystemId[]

export interface PeersOptions {
  /** Rounds at each connection count (BENCH_ROUNDS, default 3). */
  rounds: number
  /** Seconds per round (BENCH_SECONDS, default 5; wrk rounds them to whole seconds). */
  seconds: number
  /** Seconds of load on each system before the first round (BENCH_WARMUP, default 3). */
  warmupSeconds: number
  /** Closed-loop connection counts (BENCH_CONNECTIONS, default 50,200); the first sets the open loop's rate. */
  connections: number[]
  /** Seconds of the open-loop run per system (BENCH_OPEN_SECONDS, default: as BENCH_SECONDS; 0 skips it). */
  openLoopSeconds: number
  /** Share of each system's measured capacity the open loop asks for (BENCH_OPEN_SHARE, default 0.7). */
  openLoopShare: number
  /** Which systems, in round order (BENCH_SYSTEMS, default all). */
  systems: SystemId[]
  /** Closed-loop load generator (BENCH_LOADER: auto, wrk or builtin; auto takes wrk when installed). */
  loader: 'auto' | 'wrk' | 'builtin'
  /** Backends (BENCH_BACKEND: auto, nginx or node; auto takes nginx when installed). */
  backend: 'auto' | 'nginx' | 'node'
  /** Pin backends and load generator to CPUs of their own with taskset when there are two or more (BENCH_PIN=0 turns it off). */
  pin: boolean
  /** Where the JSON results go (BENCH_RESULTS, default bench/results of the package; '' writes none). */
  resultsDir: string
  print: (line: string) => void
}

export interface RoundResult extends ClosedLoopResult {
  system: SystemId
  connections: number
  round: number
  /** CPU µs the system's own process spent per request answered; null without a process of its own or without /proc. */
  cpuUsPerRequest: number | null
}

/** Median of per-round ratios, with the lowest and highest round. */
export interface Ratio { median: number, min: number, max: number }

export interface SystemSummary {
  system: SystemId
  label: string
  rps: number
  cpuUsPerRequest: number | null
  p50: number
  p99: number
  errors: number
  vsPlain: { rps: Ratio, cpu: Ratio | null } | null
  vsBare: { rps: Ratio, cpu: Ratio | null } | null
}

export interface OpenLoopRow extends OpenLoopResult {
  system: SystemId
  label: string
  target: number
  cpuUsPerRequest: number | null
}

export interface PeersReport {
  date: string
  setup: Record<string, string | number | boolean | null>
  options: Omit<PeersOptions, 'print'>
  skipped: Array<{ system: SystemId, reason: string }>
  rounds: RoundResult[]
  closed: Array<{ connections: number, systems: SystemSummary[] }>
  openLoop: OpenLoopRow[]
  featuresLogLines: number | null
  children: { started: Array<{ name: string, pid: number }>, running: Array<{ name: string, pid: number }> }
  tables: string
  resultsFile: string | null
}

function packageRoot (): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  while (!existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir)
  return dir
}

function envNumber (env: NodeJS.ProcessEnv, name: string, fallback: number, check: (n: number) => boolean, what: string): number {
  const text = env[name]
  if (text === undefined || text === '') return fallback
  const value = Number(text)
  if (!check(value)) throw new Error(`${name} must be ${what}, got "${text}"`)
  return value
}

function envChoice<T extends string> (env: NodeJS.ProcessEnv, name: string, choices: readonly T[], fallback: T): T {
  const text = env[name]
  if (text === undefined || text === '') return fallback
  if (!(choices as readonly string[]).includes(text)) throw new Error(`${name} must be one of ${choices.join(', ')}, got "${text}"`)
  return text as T
}

/** The options from BENCH_* variables, each checked (a bad value throws naming the variable). */
export function optionsFromEnv (env: NodeJS.ProcessEnv = process.env, print: (line: string) => void = console.log): PeersOptions {
  const positive = (n: number): boolean => Number.isFinite(n) && n > 0
  const seconds = envNumber(env, 'BENCH_SECONDS', 5, n => positive(n) && n <= 600, 'a number of seconds in (0, 600]')
  const connections = (env.BENCH_CONNECTIONS ?? '50,200').split(',').map(Number)
  if (connections.length === 0 || !connections.every(n => Number.isInteger(n) && n >= 1 && n <= 10_000)) {
    throw new Error(`BENCH_CONNECTIONS must be a comma-separated list of connection counts (1 to 10000), got "${env.BENCH_CONNECTIONS}"`)
  }
  const systems = envList('BENCH_SYSTEMS', SYSTEM_IDS, id => id, env)
  return {
    rounds: envNumber(env, 'BENCH_ROUNDS', 3, n => Number.isInteger(n) && n >= 1 && n <= 100, 'a whole number of rounds from 1 to 100'),
    seconds,
    warmupSeconds: envNumber(env, 'BENCH_WARMUP', 3, n => n >= 0 && n <= 600, 'a number of seconds in [0, 600]'),
    connections,
    openLoopSeconds: envNumber(env, 'BENCH_OPEN_SECONDS', seconds, n => n >= 0 && n <= 600, 'a number of seconds in [0, 600]'),
    openLoopShare: envNumber(env, 'BENCH_OPEN_SHARE', 0.7, n => n > 0 && n <= 1, 'a share of capacity in (0, 1]'),
    systems: SYSTEM_IDS.filter(id => systems.includes(id)),
    loader: envChoice(env, 'BENCH_LOADER', ['auto', 'wrk', 'builtin'], 'auto'),
    backend: envChoice(env, 'BENCH_BACKEND', ['auto', 'nginx', 'node'], 'auto'),
    pin: env.BENCH_PIN !== '0',
    resultsDir: env.BENCH_RESULTS ?? path.join(packageRoot(), 'bench', 'results'),
    print
  }
}

export interface Running { id: SystemId, label: string, url: string, pid: number | undefined }

const ratioOf = (values: number[]): Ratio => ({ median: median(values), min: Math.min(...values), max: Math.max(...values) })

const thousands = (n: number): string => Math.round(n).toLocaleString('en-US')
const us = (n: number | null): string => n === null ? '—' : n.toFixed(0)
const times = (r: Ratio | null | undefined): string => r == null ? '—' : `${r.median.toFixed(2)} (${r.min.toFixed(2)}–${r.max.toFixed(2)})`

function table (head: string[], rows: string[][]): string {
  return [head, head.map(() => '---'), ...rows].map(cells => `| ${cells.join(' | ')} |`).join('\n')
}

export function summarize (rounds: RoundResult[], connections: number, systems: Running[]): SystemSummary[] {
  const of = (id: SystemId): RoundResult[] => rounds.filter(r => r.system === id && r.connections === connections)
  const versus = (mine: RoundResult[], reference: RoundResult[]): SystemSummary['vsPlain'] => {
    if (reference.length === 0) return null
    const pairs = mine.map(r => [r, reference.find(ref => ref.round === r.round) as RoundResult] as const)
    const cpu = pairs.filter(([r, ref]) => r.cpuUsPerRequest !== null && ref.cpuUsPerRequest !== null)
    return {
      rps: ratioOf(pairs.map(([r, ref]) => r.rps / ref.rps)),
      cpu: cpu.length === 0 ? null : ratioOf(cpu.map(([r, ref]) => (r.cpuUsPerRequest as number) / (ref.cpuUsPerRequest as number)))
    }
  }
  return systems.map(({ id, label }) => {
    const mine = of(id)
    const cpu = mine.map(r => r.cpuUsPerRequest).filter(v => v !== null)
    return {
      system: id,
      label,
      rps: median(mine.map(r => r.rps)),
      cpuUsPerRequest: cpu.length === 0 ? null : median(cpu),
      p50: median(mine.map(r => r.p50)),
      p99: median(mine.map(r => r.p99)),
      errors: mine.reduce((n, r) => n + r.errors, 0),
      vsPlain: versus(mine, of('plain')),
      vsBare: versus(mine, of('bare'))
    }
  })
}

const GENERATOR_LAG_MS = 5
const generatorBound = (row: OpenLoopRow): boolean => !(row.sendLagP99 <= GENERATOR_LAG_MS)

function tablesOf (report: Pick<PeersReport, 'closed' | 'openLoop'>, options: PeersOptions): string {
  const parts: string[] = []
  for (const { connections, systems } of report.closed) {
    parts.push(`Closed loop, ${connections} connections (median of ${options.rounds} rounds; ratios: median of per-round ratios, lowest–highest)\n\n` + table(
      ['system', 'req/s', 'proxy CPU µs/req', 'p50 ms', 'p99 ms', 'req/s × plain', 'CPU × plain', 'req/s × bare', 'CPU × bare'],
      systems.map(s => [s.label + (s.errors > 0 ? ` (${s.errors} errors)` : ''), thousands(s.rps), us(s.cpuUsPerRequest), ms(s.p50), ms(s.p99),
        times(s.vsPlain?.rps), times(s.vsPlain?.cpu), times(s.vsBare?.rps), times(s.vsBare?.cpu)])
    ))
  }
  if (report.openLoop.length > 0) {
    parts.push(`Open loop at ${Math.round(options.openLoopShare * 100)}% of each system's capacity, ${options.openLoopSeconds} s (latency from each request's due time)\n\n` + table(
      ['system', 'rate req/s', 'p50 ms', 'p99 ms', 'max ms', 'proxy CPU µs/req', 'lost', 'generator lag p99 ms'],
      report.openLoop.map(o => [o.label + (generatorBound(o) ? ' †' : ''), thousands(o.target), ms(o.p50), ms(o.p99), ms(o.max), us(o.cpuUsPerRequest),
        String(o.failed + o.dropped + o.unfinished), ms(o.sendLagP99)])
    ))
    if (report.openLoop.some(generatorBound)) {
      parts.push(`† the generator fell behind its schedule (send lag p99 over ${GENERATOR_LAG_MS} ms): that row measures the generator as much as the system.`)
    }
  }
  return parts.join('\n\n')
}

/** Runs the side-by-side benchmark; every process it starts is stopped (and checked gone) before it returns or throws. */
export async function benchPeers (options: PeersOptions): Promise<PeersReport> {
  const { print, ...settings } = options
  const children = new Children()
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fastify-supervisord-peers-'))
  const cpus = os.availableParallelism()
  const taskset = which('taskset') !== undefined
  const pinning = options.pin && taskset && cpus >= 2
  // the system under test has a core to itself; backends and load generators share the last one
  const systemCpu = pinning ? 0 : undefined
  const backendCpu = pinning ? cpus - 1 : undefined
  const loaderCpu = backendCpu
  const nginx = findNative('nginx')
  const haproxy = findNative('haproxy')
  const wrkPath = which('wrk')
  const useWrk = options.loader === 'wrk' || (options.loader === 'auto' && wrkPath !== undefined)
  if (useWrk && wrkPath === undefined) throw new Error('BENCH_LOADER=wrk, but wrk is not installed')
  const nginxBackend = options.backend === 'nginx' || (options.backend === 'auto' && typeof nginx !== 'string')
  if (nginxBackend && typeof nginx === 'string') throw new Error(`BENCH_BACKEND=nginx, but ${nginx}`)
  const logFile = path.join(dir, 'features.log')

  const report: PeersReport = {
    date: new Date().toISOString(),
    setup: {
      cpus,
      cpuModel: os.cpus()[0]?.model ?? null,
      node: process.version,
      loader: useWrk ? `wrk, 1 thread${loaderCpu !== undefined ? `, CPU ${loaderCpu}` : ''}` : 'built-in (undici, worker thread, unpinned)',
      openLoopGenerator: `own fixed-rate loop (undici, child process${loaderCpu !== undefined ? `, CPU ${loaderCpu}` : ''})`,
      backend: nginxBackend ? `nginx ${(nginx as Native).version}, 1 worker, return 200 "ok" on 2 ports` : 'Node http, 2 servers in one child process',
      systemCpu: systemCpu ?? null,
      backendCpu: backendCpu ?? null,
      pinning: pinning ? `each proxy on CPU ${systemCpu}, backends and load generators on CPU ${backendCpu}` : !taskset ? 'none (taskset not installed)' : cpus < 2 ? 'none (one CPU)' : 'none (BENCH_PIN=0)',
      haproxy: typeof haproxy === 'string' ? null : haproxy.version,
      nginx: typeof nginx === 'string' ? null : nginx.version
    },
    options: settings,
    skipped: [],
    rounds: [],
    closed: [],
    openLoop: [],
    featuresLogLines: null,
    children: { started: [], running: [] },
    tables: '',
    resultsFile: null
  }
  print(`\nPeers: ${cpus} CPUs (${report.setup.cpuModel}), Node ${process.version}`)
  print(`  load: ${report.setup.loader}; open loop: ${report.setup.openLoopGenerator}`)
  print(`  backends: ${report.setup.backend}; pinning: ${report.setup.pinning}`)
  print(`  ${options.rounds} rounds of ${options.seconds} s at ${options.connections.join(' and ')} connections after ${options.warmupSeconds} s of warm-up` +
    (options.openLoopSeconds > 0 ? `; open loop ${options.openLoopSeconds} s at ${Math.round(options.openLoopShare * 100)}%` : ''))

  const closedLoop = async (url: string, connections: number, seconds: number): Promise<ClosedLoopResult> => {
    if (useWrk) return await wrk(wrkPath as string, dir, children, url, connections, seconds, loaderCpu)
    const result = await runLoad({ url, connections, warmupMs: 0, ms: seconds * 1000, maxRequests: 50_000_000 })
    return { ...result, seconds }
  }
  const cpuPerRequest = (pid: number | undefined, before: number | undefined, requests: number): number | null => {
    const after = pid === undefined ? undefined : cpuSeconds(pid)
    return before === undefined || after === undefined || requests === 0 ? null : (after - before) * 1e6 / requests
  }

  let failure: unknown
  try {
    const backend = nginxBackend
      ? await startNginxBackend(nginx as Native, path.join(dir, 'backend'), 2, children)
      : await (async () => {
        const { ports, child } = await startBackendProcess(2)
        children.track('node backends', child)
        return { ports, pid: child.pid as number }
      })()
    if (backendCpu !== undefined) pinProcess(backend.pid, backendCpu)
    const servers = backend.ports.map(port => `127.0.0.1:${port}`)

    // started side by side (they are idle until their rounds), kept in round order
    const starting = options.systems.map(async (id): Promise<Running | undefined> => {
      const native = id === 'haproxy' ? haproxy : id === 'nginx' ? nginx : undefined
      if (typeof native === 'string') {
        report.skipped.push({ system: id, reason: native })
        print(`  skipped ${SYSTEMS[id]}: ${native}`)
        return undefined
      }
      const label = native === undefined ? SYSTEMS[id] : SYSTEMS[id].replace(/^\w+/, name => `${name} ${native.version}`)
      const started = id === 'direct'
        ? { port: backend.ports[0], pid: undefined }
        : id === 'haproxy'
          ? await startHaproxy(native as Native, path.join(dir, 'haproxy'), servers, children)
          : id === 'nginx'
            ? await startNginxProxy(native as Native, path.join(dir, 'nginx'), servers, children)
            : await startNodeProxy(id as NodeProxyKind, servers, children, logFile)
      if (started.pid !== undefined && systemCpu !== undefined) pinProcess(started.pid, systemCpu)
      return { id, label, url: `http://127.0.0.1:${started.port}/`, pid: started.pid }
    })
    // all settled before any failure is thrown, so that every child started is tracked when they are stopped
    const settled = await Promise.allSettled(starting)
    for (const outcome of settled) if (outcome.status === 'rejected') throw outcome.reason
    const running = settled.map(outcome => (outcome as PromiseFulfilledResult<Running | undefined>).value).filter(system => system !== undefined)
    for (const system of running) {
      const res = await request(system.url)
      await res.body.dump()
      if (res.statusCode !== 200) throw new Error(`${system.label} answered ${res.statusCode} at ${system.url}`)
    }

    if (options.warmupSeconds > 0) {
      for (const system of running) await closedLoop(system.url, options.connections[0], options.warmupSeconds)
    }
    for (const connections of options.connections) {
      for (let round = 1; round <= options.rounds; round++) {
        for (const system of running) {
          const before = system.pid === undefined ? undefined : cpuSeconds(system.pid)
          const result = await closedLoop(system.url, connections, options.seconds)
          const row: RoundResult = { system: system.id, connections, round, ...result, cpuUsPerRequest: cpuPerRequest(system.pid, before, result.requests) }
          report.rounds.push(row)
          print(`  c${connections} round ${round}/${options.rounds}  ${system.label.padEnd(40)} ${thousands(row.rps).padStart(8)} req/s ` +
            `${us(row.cpuUsPerRequest).padStart(5)} µs/req  p50 ${ms(row.p50)} ms  p99 ${ms(row.p99)} ms${row.errors > 0 ? `  ${row.errors} errors` : ''}`)
        }
      }
      report.closed.push({ connections, systems: summarize(report.rounds, connections, running) })
    }

    if (options.openLoopSeconds > 0) {
      const capacity = report.closed[0].systems
      // the backend alone answers faster than any generator here can send: its row would measure the generator
      for (const system of running.filter(s => s.id !== 'direct')) {
        const target = options.openLoopShare * (capacity.find(s => s.system === system.id) as SystemSummary).rps
        if (!(target >= 1)) continue
        const before = system.pid === undefined ? undefined : cpuSeconds(system.pid)
        const job: OpenLoopJob = { url: system.url, rate: target, seconds: options.openLoopSeconds, warmupSeconds: Math.min(1, options.warmupSeconds), connections: 200, maxOutstanding: 1000, graceMs: 2000 }
        const result = await children.answer<OpenLoopResult>('open-loop generator', OPEN_LOOP_SCRIPT, [JSON.stringify(job)], openLoopBound(job), loaderCpu)
        const row: OpenLoopRow = { system: system.id, label: system.label, target, ...result, cpuUsPerRequest: cpuPerRequest(system.pid, before, result.completed) }
        report.openLoop.push(row)
        print(`  open loop  ${system.label.padEnd(40)} ${thousands(target).padStart(8)} req/s asked, ${thousands(row.rate)} answered  ` +
          `p50 ${ms(row.p50)}  p99 ${ms(row.p99)}  max ${ms(row.max)} ms  lost ${row.failed + row.dropped + row.unfinished}  generator lag p99 ${ms(row.sendLagP99)} ms, ${us(row.generatorUsPerRequest)} µs/req`)
      }
    }
  } catch (error) {
    failure = error
  } finally {
    await children.stopAll()
    const named = ({ name, pid }: { name: string, pid: number }): { name: string, pid: number } => ({ name, pid })
    report.children = { started: children.all.map(named), running: children.running().map(named) }
    if (existsSync(logFile)) report.featuresLogLines = readFileSync(logFile, 'utf8').split('\n').filter(line => line !== '').length
    await rm(dir, { recursive: true, force: true })
  }
  const { started, running: left } = report.children
  if (left.length > 0) throw new Error(`still running after the bench: ${left.map(c => `${c.name} (pid ${c.pid})`).join(', ')}`)
  if (failure !== undefined) throw failure
  print(`  ${started.length} child processes started, all stopped (checked by pid)` +
    (report.featuresLogLines !== null ? `; the features proxy logged ${report.featuresLogLines} lines in all` : ''))

  report.tables = tablesOf(report, options)
  print('\n' + report.tables + '\n')
  if (options.resultsDir !== '') {
    await mkdir(options.resultsDir, { recursive: true })
    report.resultsFile = path.join(options.resultsDir, `peers-${report.date.replace(/[:.]/g, '-')}.json`)
    await writeFile(report.resultsFile, JSON.stringify(report, null, 2) + '\n')
    print(`  results: ${report.resultsFile}`)
  }
  return report
}

export async function run (): Promise<void> {
  await benchPeers(optionsFromEnv())
}
