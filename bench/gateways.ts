import { fork } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { request } from 'undici'
import { which } from '../lib/dev/supervisord-daemon.js'
import { redisInstalled, startRedis } from '../lib/dev/redis-server.js'
import { startBackendProcess } from './backends-process.js'
import { Children } from './children.js'
import { median, runLoad } from './load.js'
import { findNative, startNginxBackend, type Native } from './native.js'
import { wrk, type ClosedLoopResult } from './wrk.js'
import type { GroupJob } from './group-gateway.js'

// `npm run bench -- gateways`: one gateway process beside two (node:cluster
// on one port) in the same run, rounds alternating (1 2 1 2 ...), every
// gateway on one redis-server; and the Redis commands the group sends, read
// from INFO commandstats, idle and under load: what a proxied request costs
// in Redis is the difference (the goal is none: the hot path reads the
// registry only). Each group has a redis-server of its own, so that what it
// counts is that group's.

export interface GatewaysOptions {
  /** Rounds per gateway count (BENCH_ROUNDS, default 3). */
  rounds: number
  /** Seconds per round, and of the idle reading before it (BENCH_SECONDS, default 5). */
  seconds: number
  /** Connections of the closed loop (BENCH_CONNECTIONS' first, default 50). */
  connections: number
  print: (line: string) => void
}

export interface GatewaysRound {
  gateways: number
  round: number
  rps: number
  p50: number
  p99: number
  errors: number
  requests: number
  /** Redis commands per second with no request, then under load. */
  idlePerSecond: number
  loadedPerSecond: number
  /** (commands under load − idle commands over as long) / requests. */
  perRequest: number
}

export interface GatewaysReport { rounds: GatewaysRound[], table: string }

/**
 * Commands the clients sent since Redis started (INFO stats
 * total_commands_processed: a script counts once, not each call inside it),
 * less the INFO commands this reader sent.
 */
async function commands (redis: Redis & { reads?: number }): Promise<number> {
  const info = await redis.info('stats')
  redis.reads = (redis.reads ?? 0) + 1
  return Number(/^total_commands_processed:(\d+)/m.exec(info)?.[1]) - redis.reads
}

export function optionsFromEnv (env: NodeJS.ProcessEnv = process.env, print: (line: string) => void = console.log): GatewaysOptions {
  const number = (name: string, fallback: number, check: (n: number) => boolean): number => {
    const text = env[name]
    if (text === undefined || text === '') return fallback
    const value = Number(text)
    if (!check(value)) throw new Error(`${name}: bad value "${text}"`)
    return value
  }
  return {
    rounds: number('BENCH_ROUNDS', 3, n => Number.isInteger(n) && n >= 1 && n <= 100),
    seconds: number('BENCH_SECONDS', 5, n => n > 0 && n <= 600),
    connections: Number((env.BENCH_CONNECTIONS ?? '50').split(',')[0]),
    print
  }
}

export async function benchGateways (options: GatewaysOptions): Promise<GatewaysReport | undefined> {
  const { print } = options
  if (!redisInstalled()) {
    print('\nGateways: skipped, redis-server is not on the PATH')
    return undefined
  }
  const children = new Children()
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fastify-supervisord-gateways-'))
  const redises = [await startRedis(), await startRedis()]
  const clients = redises.map(redis => new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 }))
  const rounds: GatewaysRound[] = []
  try {
    for (const client of clients) await client.connect()
    const nginx = findNative('nginx')
    const backend = typeof nginx === 'string'
      ? await (async () => {
        const { ports, child } = await startBackendProcess(2)
        children.track('node backends', child)
        return { ports, pid: child.pid as number }
      })()
      : await startNginxBackend(nginx as Native, path.join(dir, 'backend'), 2, children)
    const servers = backend.ports.map(port => `127.0.0.1:${port}`)
    const wrkPath = which('wrk')
    const closedLoop = async (url: string, seconds: number): Promise<ClosedLoopResult> => {
      if (wrkPath !== undefined) return await wrk(wrkPath, dir, children, url, options.connections, seconds)
      const result = await runLoad({ url, connections: options.connections, warmupMs: 0, ms: seconds * 1000, maxRequests: 50_000_000 })
      return { ...result, seconds }
    }
    print(`\nGateways: 1 and 2 gateway processes (node:cluster, one port), each group on a redis-server of its own, ${os.availableParallelism()} CPUs, ` +
      `backends ${typeof nginx === 'string' ? 'Node http' : `nginx ${nginx.version}`}, load ${wrkPath !== undefined ? 'wrk, 1 thread' : 'built-in'}, ${options.connections} connections, unpinned`)

    const groups = new Map<number, { url: string, client: Redis }>()
    for (const workers of [1, 2]) {
      const job: GroupJob = { workers, redisUrl: redises[workers - 1].url, namespace: 'bench', servers }
      const child = children.track(`gateway group of ${workers}`, fork(fileURLToPath(new URL('./group-gateway.js', import.meta.url)), ['group', JSON.stringify(job)],
        { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] }))
      const { port } = await new Promise<{ port: number }>((resolve, reject) => {
        child.once('message', message => resolve(message as { port: number }))
        child.once('exit', code => reject(new Error(`gateway group of ${workers} exited with ${code}: ${children.stderrOf(child)}`)))
      })
      const url = `http://127.0.0.1:${port}/`
      const res = await request(url)
      await res.body.dump()
      if (res.statusCode !== 200) throw new Error(`the group of ${workers} answered ${res.statusCode}`)
      groups.set(workers, { url, client: clients[workers - 1] })
      // Warm-up: the JIT, the connections, the first checks and leases.
      await closedLoop(url, Math.min(2, options.seconds))
    }

    for (let round = 1; round <= options.rounds; round++) {
      for (const [workers, { url, client }] of groups) {
        const idleFrom = await commands(client)
        await sleep(options.seconds * 1000)
        const idle = await commands(client) - idleFrom
        const loadedFrom = await commands(client)
        const result = await closedLoop(url, options.seconds)
        const loaded = await commands(client) - loadedFrom
        const idlePerSecond = idle / options.seconds
        const row: GatewaysRound = {
          gateways: workers,
          round,
          rps: result.rps,
          p50: result.p50,
          p99: result.p99,
          errors: result.errors,
          requests: result.requests,
          idlePerSecond,
          loadedPerSecond: loaded / result.seconds,
          perRequest: result.requests === 0 ? NaN : Math.max(0, loaded - idlePerSecond * result.seconds) / result.requests
        }
        rounds.push(row)
        print(`  round ${round}/${options.rounds}  ${workers} gateway${workers === 1 ? ' ' : 's'}  ${Math.round(row.rps).toLocaleString('en-US').padStart(8)} req/s  ` +
          `p50 ${row.p50.toFixed(2)} ms  p99 ${row.p99.toFixed(2)} ms  Redis ${row.idlePerSecond.toFixed(1)} cmd/s idle, ${row.loadedPerSecond.toFixed(1)} under load` +
          `${row.errors > 0 ? `  ${row.errors} errors` : ''}`)
      }
    }
  } finally {
    for (const client of clients) client.disconnect()
    await children.stopAll()
    for (const redis of redises) await redis.stop()
    await rm(dir, { recursive: true, force: true })
  }
  const left = children.running()
  if (left.length > 0) throw new Error(`still running after the bench: ${left.map(c => `${c.name} (pid ${c.pid})`).join(', ')}`)

  const of = (n: number): GatewaysRound[] => rounds.filter(r => r.gateways === n)
  const ratios = of(2).map(r => r.rps / (of(1).find(one => one.round === r.round) as GatewaysRound).rps)
  const rows = [1, 2].map(n => {
    const mine = of(n)
    const perRequest = median(mine.map(r => r.perRequest))
    return `| ${n} | ${Math.round(median(mine.map(r => r.rps))).toLocaleString('en-US')} | ${n === 1 ? '1.00' : median(ratios).toFixed(2)} | ` +
      `${median(mine.map(r => r.p50)).toFixed(2)} | ${median(mine.map(r => r.p99)).toFixed(2)} | ${median(mine.map(r => r.idlePerSecond)).toFixed(1)} | ` +
      `${median(mine.map(r => r.loadedPerSecond)).toFixed(1)} | ${perRequest.toFixed(4)} | ${mine.reduce((e, r) => e + r.errors, 0)} |`
  })
  const table = `Gateway processes on one Redis (median of ${options.rounds} rounds of ${options.seconds} s)\n\n` +
    '| gateways | req/s | × 1 gateway | p50 ms | p99 ms | Redis cmd/s idle | Redis cmd/s under load | Redis cmds per request (above idle) | errors |\n' +
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n' + rows.join('\n')
  print('\n' + table + '\n')
  return { rounds, table }
}

export async function run (): Promise<void> {
  await benchGateways(optionsFromEnv())
}
