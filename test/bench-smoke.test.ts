import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { Children } from '../bench/children.js'
import { OPEN_LOOP_SCRIPT, openLoopBound, type OpenLoopJob, type OpenLoopResult } from '../bench/open-loop.js'
import { benchPeers, optionsFromEnv, summarize, type PeersReport, type RoundResult } from '../bench/peers.js'

// The side-by-side bench's pieces, for a fraction of a second: proof that the
// harness measures and cleans up, not a measurement (no figure is asserted).

const hasProc = existsSync('/proc/self/stat')

function gone (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return false
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH'
  }
}

t.test('a tiny peers run over the raw proxy measures it and leaves no child running', async t => {
  const dir = await mkdtemp(path.join(tmpdir(), 'bench-smoke-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const lines: string[] = []
  const report: PeersReport = await benchPeers({
    ...optionsFromEnv({}, line => lines.push(line)),
    rounds: 1,
    seconds: 0.3,
    warmupSeconds: 0.1,
    connections: [4],
    openLoopSeconds: 0.3,
    systems: ['raw'],
    loader: 'builtin',
    backend: 'node',
    pin: false,
    resultsDir: dir
  })

  t.same(report.rounds.map(r => r.system), ['raw'], 'one round')
  for (const round of report.rounds) {
    t.ok(round.requests > 0, `${round.system}: requests answered (${round.requests})`)
    t.equal(round.errors, 0, `${round.system}: no errors`)
    if (hasProc) t.ok(round.cpuUsPerRequest !== null && round.cpuUsPerRequest >= 0, `${round.system}: its own process's CPU read from /proc (${round.cpuUsPerRequest} µs/req)`)
  }
  t.equal(report.closed[0].systems[0].vsPlain, null, 'no ratio against a system not run')

  t.same(report.openLoop.map(o => o.system), ['raw'], 'an open-loop run')
  for (const row of report.openLoop) {
    t.ok(row.target > 0 && row.scheduled > 0 && row.completed > 0, `${row.system}: open loop at ${row.target.toFixed(0)} req/s answered ${row.completed}`)
  }

  const names = report.children.started.map(c => c.name)
  t.same(names, ['node backends', 'node proxy raw', 'open-loop generator'], 'backends, proxy and open-loop generator were children')
  t.same(report.children.running, [], 'none reported running')
  for (const { name, pid } of report.children.started) t.ok(gone(pid), `${name} (pid ${pid}) is gone`)

  t.match(report.tables, /\| raw Node http proxy \| [\d,]+ \|/, 'the table has a row per system')
  t.ok(lines.some(line => line.includes('| system | req/s |')), 'the table was printed')
  const saved = JSON.parse(await readFile(report.resultsFile as string, 'utf8')) as PeersReport
  t.equal(path.dirname(report.resultsFile as string), dir, 'the JSON went to the results directory')
  t.same(saved.rounds.map(r => r.requests), report.rounds.map(r => r.requests), 'the JSON holds the same rounds')
})

t.test('the open loop counts latency from each due time: requests queued behind a stall count the stall', async t => {
  let seen = 0
  const server = http.createServer((_req, res) => {
    // the 40th request is held 300 ms; on one connection, those due meanwhile wait behind it
    if (++seen === 40) setTimeout(() => res.end('ok'), 300)
    else res.end('ok')
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const children = new Children()
  t.teardown(async () => await children.stopAll())
  const job: OpenLoopJob = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    rate: 200,
    seconds: 1,
    warmupSeconds: 0,
    connections: 1,
    maxOutstanding: 1000,
    graceMs: 5000
  }
  const result = await children.answer<OpenLoopResult>('open-loop generator', OPEN_LOOP_SCRIPT, [JSON.stringify(job)], openLoopBound(job))
  t.equal(result.scheduled, 200)
  t.equal(result.completed, 200, 'every request answered')
  t.ok(result.max >= 290, `the held request took its 300 ms (max ${result.max.toFixed(1)} ms)`)
  // a closed loop would have sent them after the stall and counted ~1 ms each: one slow request of 200, p99 (the second slowest) small
  t.ok(result.p99 >= 200, `the requests due during the stall count it (p99 ${result.p99.toFixed(1)} ms)`)
  t.same(children.running(), [], 'the generator stopped')
})

t.test('ratios are the median of per-round ratios, against plain @fastify/http-proxy and the bare proxy', async t => {
  const round = (system: RoundResult['system'], n: number, rps: number, cpu: number | null): RoundResult =>
    ({ system, connections: 50, round: n, rps, cpuUsPerRequest: cpu, requests: rps, errors: 0, seconds: 1, p50: 1, p99: 2 })
  const rounds = [
    round('plain', 1, 100, 10), round('bare', 1, 200, 20), round('raw', 1, 400, 5), round('direct', 1, 1000, null),
    round('plain', 2, 100, 10), round('bare', 2, 100, 10), round('raw', 2, 300, 30), round('direct', 2, 900, null),
    round('plain', 3, 50, 10), round('bare', 3, 100, 10), round('raw', 3, 100, 10), round('direct', 3, 800, null),
    round('raw', 1, 1, 1)
  ].map(r => r.rps === 1 ? { ...r, connections: 200 } : r)
  const systems = ['plain', 'bare', 'raw', 'direct'].map(id => ({ id: id as RoundResult['system'], label: id, url: '', pid: undefined }))
  const [plain, bare, raw, direct] = summarize(rounds, 50, systems)
  t.same(raw.vsPlain?.rps, { median: 3, min: 2, max: 4 }, 'req/s: rounds 4, 3, 2 against plain (not the ratio of medians, 300/100)')
  t.same(raw.vsPlain?.cpu, { median: 1, min: 0.5, max: 3 }, 'CPU per request: 0.5, 3, 1')
  t.same(raw.vsBare?.rps, { median: 2, min: 1, max: 3 }, 'against bare: 2, 3, 1')
  t.same(bare.vsBare?.rps, { median: 1, min: 1, max: 1 })
  t.same(plain.vsPlain?.cpu, { median: 1, min: 1, max: 1 })
  t.equal(raw.rps, 300, 'req/s is the median round, of these connections only')
  t.equal(direct.cpuUsPerRequest, null, 'no CPU for a system without a process of its own')
  t.equal(direct.vsPlain?.cpu, null)
  t.same(direct.vsPlain?.rps, { median: 10, min: 9, max: 16 })
})

t.test('bad BENCH_* settings are refused naming the variable', async t => {
  t.throws(() => optionsFromEnv({ BENCH_ROUNDS: '0' }), /BENCH_ROUNDS must be a whole number/)
  t.throws(() => optionsFromEnv({ BENCH_SECONDS: 'soon' }), /BENCH_SECONDS must be/)
  t.throws(() => optionsFromEnv({ BENCH_CONNECTIONS: '50,x' }), /BENCH_CONNECTIONS must be/)
  t.throws(() => optionsFromEnv({ BENCH_SYSTEMS: 'raw,squid' }), /BENCH_SYSTEMS: unknown squid/)
  t.throws(() => optionsFromEnv({ BENCH_LOADER: 'ab' }), /BENCH_LOADER must be one of auto, wrk, builtin/)
  const chosen = optionsFromEnv({ BENCH_SYSTEMS: 'features,raw', BENCH_CONNECTIONS: '10', BENCH_PIN: '0' })
  t.same(chosen.systems, ['raw', 'features'], 'systems keep the round order')
  t.same(chosen.connections, [10])
  t.equal(chosen.pin, false)
})

t.test('the virtual-host and WebSocket benches measure their systems side by side and leave no child running', async t => {
  const saved = { ...process.env }
  const settings = { BENCH_ROUNDS: '1', BENCH_SECONDS: '0.3', BENCH_WARMUP: '0.1', BENCH_CONNECTIONS: '4', BENCH_SESSIONS: '4' }
  Object.assign(process.env, settings)
  t.teardown(() => {
    for (const name of Object.keys(settings)) {
      if (saved[name] === undefined) delete process.env[name]
      else process.env[name] = saved[name]
    }
  })
  const { run: vhosts } = await import('../bench/vhosts.js')
  const { run: websocket } = await import('../bench/websocket.js')
  for (const [name, bench, systems] of [['vhosts', vhosts, ['single', 'vhosts']], ['websocket', websocket, ['direct', 'plain', 'bare']]] as const) {
    const lines: string[] = []
    const rounds = await bench(line => lines.push(line))
    t.same(rounds.map(r => r.system), systems, `${name}: one round of each system`)
    for (const round of rounds) {
      t.ok(round.count > 0, `${name} ${round.system}: work done (${round.count})`)
      t.equal(round.errors, 0, `${name} ${round.system}: no errors`)
    }
    t.ok(lines.some(line => line.includes('| system |')), `${name}: the table was printed`)
    t.ok(lines.some(line => line.includes('none left running')), `${name}: every child stopped`)
  }
})
