import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, symlink } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { Agent, request } from 'undici'
import { alive, skip } from './helpers/supervisord.js'
import { until } from './helpers/wait.js'
import { which } from '../lib/dev/supervisord-daemon.js'
import { redisFor, redisSkip } from './helpers/redis.js'

// `npm start` for real, in both modes; everything it starts must be gone after SIGTERM.

interface Started {
  child: ChildProcess
  lines: Array<Record<string, unknown>>
  base: string
  gatewayPid: number
  supervisordPid: number | null
  mode: string
}

async function portFree (port: number): Promise<boolean> {
  const server = net.createServer()
  return await new Promise(resolve => {
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/** A base port with the next two free as well (backends 0..2). */
async function freeRun (): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 30000)
    if (await portFree(base) && await portFree(base + 1) && await portFree(base + 2) && await portFree(base + 3)) return base
  }
  throw new Error('no run of four free ports found')
}

async function npmStart (t: Test, env: Record<string, string>): Promise<Started> {
  const base = await freeRun()
  const child = spawn('npm', ['start'], {
    cwd: path.resolve(import.meta.dirname, '..'),
    env: { ...process.env, ...env, PORT: String(base + 3), BACKEND_PORT: String(base) },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true
  })
  // Whatever happens, the whole process group goes at the end.
  t.teardown(() => { try { process.kill(-(child.pid as number), 'SIGKILL') } catch {} })
  const lines: Started['lines'] = []
  let buffered = ''
  child.stdout?.on('data', (chunk: Buffer) => {
    buffered += chunk.toString()
    const complete = buffered.split('\n')
    buffered = complete.pop() ?? ''
    for (const line of complete) {
      if (line.startsWith('{')) lines.push(JSON.parse(line))
    }
  })
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString()).slice(-4000) })
  const ready = await until(() => lines.some(l => l.msg === 'gateway ready') || child.exitCode !== null, 60_000)
  const line = lines.find(l => l.msg === 'gateway ready')
  if (!ready || line === undefined) throw new Error(`npm start did not get ready: ${JSON.stringify(lines)}\n${stderr}`)
  return {
    child,
    lines,
    base: `http://127.0.0.1:${base + 3}`,
    gatewayPid: line.pid as number,
    supervisordPid: line.supervisordPid as number | null,
    mode: line.mode as string
  }
}

interface HealthJson { upstreams: Array<{ supervisord: string, peers: Array<{ pid: number | null, process: string, routable: boolean }> }> }

async function exercise (t: Test, gw: Started, token?: string): Promise<number[]> {
  const first = await fetch(`${gw.base}/`)
  t.equal(first.status, 200, 'GET / through the gateway')
  t.match(await first.json(), { backend: Number })
  const health = await fetch(`${gw.base}/health?format=json`)
  t.equal(health.status, 200)
  const snapshot = await health.json() as HealthJson
  t.equal(snapshot.upstreams[0].peers.length, 3)
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` }
  const html = await (await fetch(`${gw.base}/health`, { headers: { accept: 'text/html', ...headers } })).text()
  t.match(html, /<html/)
  t.match(html, /<form class="act" method="post" action="\/_supervisord\/drain\/0">/, 'the forms, on /health, for an operator')
  t.match(html, /fastify-supervisord \d+\.\d+\.\d+ · up /, 'the version and uptime in the header')
  const ready = await fetch(`${gw.base}/health?ready`)
  t.equal(ready.status, 200, 'the readiness probe, to anyone')
  t.match(await ready.json(), { ready: true, upstreams: [{ name: 'backend', ready: true }] })
  const scrape = await fetch(`${gw.base}/metrics`, { headers })
  t.equal(scrape.status, 200, '/metrics')
  t.match(await scrape.text(), /^fastify_supervisord_server_sessions_total\{upstream="backend",peer="0"\} \d+$/m)
  if (token !== undefined) {
    t.equal((await fetch(`${gw.base}/_supervisord/start/1`, { method: 'POST' })).status, 403, 'no token: 403')
    t.equal((await fetch(`${gw.base}/metrics`)).status, 403, 'nor the metrics')
    const anonymous = await (await fetch(`${gw.base}/health`, { headers: { accept: 'text/html' } })).text()
    t.notMatch(anonymous, /<form/, 'nor the forms')
    t.match(anonymous, /class="signin"/, 'but a way to sign in')
    const drained = await fetch(`${gw.base}/_supervisord/drain/2`, {
      method: 'POST',
      redirect: 'manual',
      headers: { authorization: `Basic ${Buffer.from(`op:${token}`).toString('base64')}`, accept: 'text/html', 'content-type': 'application/x-www-form-urlencoded' },
      body: 'back=%2Fhealth'
    })
    t.equal(drained.status, 303, 'a form post with the token as HTTP Basic: back to /health')
    t.equal(drained.headers.get('location'), '/health')
    t.equal((await fetch(`${gw.base}/_supervisord/ready/2`, { method: 'POST', headers })).status, 200)
  }
  const start = await fetch(`${gw.base}/_supervisord/start/1?wait=1`, { method: 'POST', headers })
  t.equal(start.status, 200, 'start route from 127.0.0.1')
  t.match(await start.json(), { upstream: 'backend', command: 'start', backend: 1, accepted: true })
  t.equal((await fetch(`${gw.base}/_supervisord/start/x`, { method: 'POST', headers })).status, 400)
  t.equal((await fetch(`${gw.base}/_supervisord/start/9`, { method: 'POST', headers })).status, 404)
  const after = await (await fetch(`${gw.base}/health?format=json`, { headers })).json() as HealthJson
  return after.upstreams[0].peers.map(p => p.pid).filter((pid): pid is number => pid !== null)
}

/**
 * Four keep-alive clients sending GETs back to back until SIGTERM is sent;
 * then each ends the request it has in flight and sends nothing more, its
 * connection kept open. `slow` is sent on one more keep-alive connection
 * just before the signal: a request in flight at close whose connection is
 * idle afterwards (what held a shutdown open for Fastify's 72 s keepAliveTimeout).
 */
function busyClients (t: Test, base: string): { served: () => number, stop: () => Promise<number[]>, dispatcher: Agent } {
  const dispatcher = new Agent({ keepAliveTimeout: 600_000, keepAliveMaxTimeout: 600_000 })
  t.teardown(async () => await dispatcher.destroy())
  const state = { sending: true }
  const statuses: number[] = []
  const loops = Array.from({ length: 4 }, async () => {
    while (state.sending && statuses.length < 100_000) {
      try {
        const res = await request(base, { dispatcher })
        await res.body.text()
        statuses.push(res.statusCode)
      } catch {
        statuses.push(-1)
      }
    }
  })
  return {
    dispatcher,
    served: () => statuses.filter(status => status === 200).length,
    stop: async () => {
      state.sending = false
      await Promise.all(loops)
      return statuses
    }
  }
}

/** SIGTERM to `target` (npm, or the gateway's node process) with busy keep-alive clients: everything is gone within 10 s. */
async function stopped (t: Test, gw: Started, pids: number[], target: 'npm' | 'gateway', slow?: { path: string, headers?: Record<string, string> }): Promise<void> {
  const clients = busyClients(t, `${gw.base}/`)
  t.ok(await until(() => clients.served() > 20, 10_000), 'the clients are busy')
  const inFlight = slow === undefined
    ? undefined
    : request(`${gw.base}${slow.path}`, { method: 'POST', headers: slow.headers, dispatcher: clients.dispatcher })
      .then(async res => { await res.body.text(); return res.statusCode }, () => -1)
  if (inFlight !== undefined) {
    t.ok(await until(() => gw.lines.some(line => line.msg === 'incoming request' && (line.req as { url?: string } | undefined)?.url === slow?.path), 10_000),
      'the slow request reached the gateway')
  }
  process.kill(target === 'npm' ? gw.child.pid as number : gw.gatewayPid, 'SIGTERM')
  const statuses = await clients.stop()
  // The bound the shutdown must meet: measured from SIGTERM, generous for a loaded machine.
  t.ok(await until(() => gw.child.exitCode !== null && pids.every(pid => !alive(pid)), 10_000),
    `SIGTERM to ${target}: npm start, the gateway, supervisord and the backends are gone within 10 s (${pids.filter(alive).join(', ')} left)`)
  t.equal(gw.child.exitCode, 0)
  t.ok(statuses.every(s => s === 200 || s === 503 || s === -1), 'answered until the end: 200, or 503 once closing')
  if (inFlight !== undefined) t.not(await inFlight, -1, 'the request in flight at SIGTERM was answered')
  t.notOk(gw.lines.some(l => l.msg === 'the gateway did not close within its shutdown grace: stopping the backends anyway'), 'closed within its grace')
}

t.test('npm start with supervisord on the PATH: its own daemon, backends as programs', { skip }, async t => {
  const gw = await npmStart(t, { ADMIN_TOKEN: '' })
  t.equal(gw.mode, 'supervisord')
  t.ok(gw.supervisordPid !== null && alive(gw.supervisordPid))
  const pids = await exercise(t, gw)
  t.ok(pids.length >= 2, 'supervisord reports the backends\' pids')
  // A start waited for takes startsecs (1 s): in flight when the signal comes.
  await stopped(t, gw, [gw.gatewayPid, gw.supervisordPid as number, ...pids], 'gateway', { path: '/_supervisord/start/2?wait=1' })
})

t.test('npm start with supervisord hidden from the PATH: none mode, in-process backends, token-guarded routes', async t => {
  const bin = await mkdtemp(path.join(tmpdir(), 'fsv-path-'))
  t.teardown(() => rm(bin, { recursive: true, force: true }))
  for (const tool of ['node', 'npm', 'sh']) {
    const real = which(tool)
    if (real === undefined) throw new Error(`${tool} is not on the PATH`)
    await symlink(real, path.join(bin, tool))
  }
  const gw = await npmStart(t, { PATH: bin, ADMIN_TOKEN: 's3cret-token' })
  t.equal(gw.mode, 'none')
  t.equal(gw.supervisordPid, null)
  t.ok(gw.lines.some(l => typeof l.msg === 'string' && l.msg.includes('not on the PATH')), 'it says which mode and why')
  await exercise(t, gw, 's3cret-token')
  await stopped(t, gw, [gw.gatewayPid], 'npm')
})

t.test('npm start with WORKERS=2 and no REDIS_URL: starts nothing and says a Redis is needed', async t => {
  // The build the tests above ran (npm start builds first) is current: the server itself, without npm's second build.
  const child = spawn(process.execPath, ['dist/example-app/server.js'], { cwd: path.resolve(import.meta.dirname, '..'), env: { ...process.env, WORKERS: '2', REDIS_URL: '' }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL') })
  let output = ''
  child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  t.ok(await until(() => child.exitCode !== null, 60_000), 'it exits')
  t.not(child.exitCode, 0)
  t.match(output, /WORKERS=2 runs 2 gateway processes that share their state through a Redis.*set REDIS_URL/)
  t.notMatch(output, /gateway ready/)
})

t.test('npm start with WORKERS=2 and REDIS_URL: two gateway processes on one port, one group', { skip: skip !== false ? skip : redisSkip }, async t => {
  const redis = await redisFor(t)
  const gw = await npmStart(t, { WORKERS: '2', REDIS_URL: redis.url, ADMIN_TOKEN: '' })
  const ready = gw.lines.find(l => l.msg === 'gateway ready') as { workers: number[] }
  t.equal(ready.workers.length, 2, 'two gateway workers')
  t.ok(gw.lines.some(l => typeof l.msg === 'string' && l.msg.startsWith('more gateways of this group: REDIS_URL=')), 'it says how more gateways join')
  const seen = new Set<string>()
  t.ok(await until(async () => {
    // A connection of its own each time: the primary hands connections to the workers in turn.
    const dispatcher = new Agent({ pipelining: 0 })
    const res = await request(`${gw.base}/health?format=json`, { dispatcher })
    const body = await res.body.json() as { group: { gateway: string, store: { kind: string, state: string } } }
    await dispatcher.close()
    if (body.group.store.kind === 'redis' && body.group.store.state === 'ok') seen.add(body.group.gateway)
    return seen.size === 2
  }, 10_000, 50), `both workers answer, each a gateway of the group on the store (${[...seen].join(', ')})`)
  const first = await fetch(`${gw.base}/`)
  t.equal(first.status, 200, 'proxied')
  const pids = [gw.gatewayPid, gw.supervisordPid as number, ...ready.workers]
  process.kill(gw.gatewayPid, 'SIGTERM')
  t.ok(await until(() => gw.child.exitCode !== null && pids.every(pid => !alive(pid)), 15_000), `SIGTERM: the primary, the workers and supervisord are gone (${pids.filter(alive).join(', ')} left)`)
})
