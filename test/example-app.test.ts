import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, symlink } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { alive, skip } from './helpers/supervisord.js'
import { until } from './helpers/wait.js'
import { which } from '../lib/dev/supervisord-daemon.js'

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
  child.stderr?.resume()
  const ready = await until(() => lines.some(l => l.msg === 'gateway ready') || child.exitCode !== null, 60_000)
  const line = lines.find(l => l.msg === 'gateway ready')
  if (!ready || line === undefined) throw new Error(`npm start did not get ready: ${JSON.stringify(lines)}`)
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
  const html = await fetch(`${gw.base}/health`, { headers: { accept: 'text/html' } })
  t.match(await html.text(), /<html/)
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` }
  if (token !== undefined) {
    t.equal((await fetch(`${gw.base}/_supervisord/start/1`, { method: 'POST' })).status, 403, 'no token: 403')
  }
  const start = await fetch(`${gw.base}/_supervisord/start/1?wait=1`, { method: 'POST', headers })
  t.equal(start.status, 200, 'start route from 127.0.0.1')
  t.match(await start.json(), { upstream: 'backend', command: 'start', backend: 1, accepted: true })
  t.equal((await fetch(`${gw.base}/_supervisord/start/x`, { method: 'POST', headers })).status, 400)
  t.equal((await fetch(`${gw.base}/_supervisord/start/9`, { method: 'POST', headers })).status, 404)
  const after = await (await fetch(`${gw.base}/health?format=json`)).json() as HealthJson
  return after.upstreams[0].peers.map(p => p.pid).filter((pid): pid is number => pid !== null)
}

async function stopped (t: Test, gw: Started, pids: number[]): Promise<void> {
  process.kill(gw.gatewayPid, 'SIGTERM')
  t.ok(await until(() => gw.child.exitCode !== null, 15_000), 'npm start ends after SIGTERM to the gateway')
  t.equal(gw.child.exitCode, 0)
  t.ok(await until(() => pids.every(pid => !alive(pid)), 5000), `no process left behind (${pids.join(', ')})`)
}

t.test('npm start with supervisord on the PATH: its own daemon, backends as programs', { skip }, async t => {
  const gw = await npmStart(t, { ADMIN_TOKEN: '' })
  t.equal(gw.mode, 'supervisord')
  t.ok(gw.supervisordPid !== null && alive(gw.supervisordPid))
  const pids = await exercise(t, gw)
  t.ok(pids.length >= 2, 'supervisord reports the backends\' pids')
  await stopped(t, gw, [gw.supervisordPid as number, ...pids])
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
  await stopped(t, gw, [gw.gatewayPid])
})
