import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { SupervisordClient, type SupervisordEndpoint } from '../../plugins/supervisord-client.js'

// A real supervisord per test, in a temp dir of its own, with real Node HTTP
// backends as its programs. Everything listens on 127.0.0.1 or a socket in
// the temp dir.

export const USERNAME = 'admin'
export const PASSWORD = 'super'

function onPath (command: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some(dir => dir !== '' && existsSync(path.join(dir, command)))
}

const installed = onPath('supervisord')

/**
 * For `t.test(name, { skip }, ...)`: a reason to skip when supervisord is not
 * installed, except on CI (CI=true), where the tests run and fail.
 */
export const skip: string | false = installed || process.env.CI === 'true' ? false : 'supervisord not installed (not on the PATH)'
if (skip !== false) console.log(`# skipping supervisord tests: ${skip}`)

export interface BackendProgram {
  /** Program name: `<prefix><index>`. */
  name: string
  index: number
  port: number
  /** `127.0.0.1:port`, as an upstream server address. */
  address: string
}

export interface ProgramSet {
  /** Program name prefix (default 'backend'). */
  prefix?: string
  count: number
  /** ms each answer waits before it is sent. */
  slowMs?: number
  /** A path answering 200 `ok`, for health checks. */
  healthPath?: string
  /** supervisord's startsecs (default 1). */
  startsecs?: number
}

export interface SupervisordOptions {
  programs?: ProgramSet[]
  /** Names of programs that exit at once (supervisord reports SPAWN_ERROR). */
  broken?: string[]
}

export interface Supervisord {
  dir: string
  pid: number
  /** `127.0.0.1:port` of its inet_http_server. */
  address: string
  port: number
  /** Path of its unix_http_server socket. */
  socket: string
  programs: BackendProgram[]
  /** The upstream option, with credentials. */
  option: { address: string, username: string, password: string }
  tcp: SupervisordEndpoint
  unix: SupervisordEndpoint
  /** A client over TCP with the right credentials. */
  client: SupervisordClient
  /** Pids of the backends supervisord started, read from the pid files they write. */
  backendPids (): Promise<number[]>
  /** Stops supervisord (SIGTERM, then SIGKILL), any backend it left behind, and removes the temp dir. */
  stop (): Promise<void>
}

const BACKEND_SCRIPT = `
import http from 'node:http'
import { unlinkSync, writeFileSync } from 'node:fs'
const [index, port, pidFile] = process.argv.slice(2)
const slowMs = Number(process.env.SLOW_MS ?? 0)
const healthPath = process.env.HEALTH_PATH ?? ''
writeFileSync(pidFile, String(process.pid))
// Gone with the process, so that a stale pid is never killed later.
process.on('exit', () => { try { unlinkSync(pidFile) } catch {} })
const server = http.createServer((req, res) => {
  if (healthPath !== '' && req.url === healthPath) return res.end('ok')
  setTimeout(() => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ backend: Number(index) }))
  }, slowMs)
})
server.keepAliveTimeout = 500
server.listen(Number(port), '127.0.0.1')
process.on('SIGTERM', () => { server.close(); server.closeAllConnections(); process.exit(0) })
// Never outlive a crashed test run by much.
setTimeout(() => process.exit(0), 120_000).unref()
`

/** A port on 127.0.0.1 that is free right now. */
export async function freePort (): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const port = (server.address() as net.AddressInfo).port
  await new Promise<void>(resolve => server.close(() => resolve()))
  return port
}

function programSection (name: string, command: string, dir: string, extra: Record<string, string | number> = {}): string {
  const lines = {
    command,
    autostart: 'false',
    autorestart: 'false',
    startsecs: 1,
    startretries: 0,
    stopsignal: 'TERM',
    stopwaitsecs: 2,
    redirect_stderr: 'true',
    stdout_logfile: path.join(dir, `${name}.log`),
    ...extra
  }
  return `[program:${name}]\n${Object.entries(lines).map(([k, v]) => `${k}=${v}`).join('\n')}\n`
}

async function configure (dir: string, port: number, options: SupervisordOptions): Promise<{ config: string, programs: BackendProgram[] }> {
  const script = path.join(dir, 'backend.mjs')
  await writeFile(script, BACKEND_SCRIPT)
  const sections = [
    `[supervisord]
nodaemon=true
logfile=${path.join(dir, 'supervisord.log')}
pidfile=${path.join(dir, 'supervisord.pid')}
childlogdir=${dir}
loglevel=info
`,
    `[inet_http_server]
port=127.0.0.1:${port}
username=${USERNAME}
password=${PASSWORD}
`,
    `[unix_http_server]
file=${path.join(dir, 'supervisor.sock')}
username=${USERNAME}
password=${PASSWORD}
`,
    `[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
`
  ]
  const programs: BackendProgram[] = []
  for (const set of options.programs ?? [{ count: 2 }]) {
    for (let index = 0; index < set.count; index++) {
      const name = `${set.prefix ?? 'backend'}${index}`
      const backendPort = await freePort()
      programs.push({ name, index, port: backendPort, address: `127.0.0.1:${backendPort}` })
      const env = [`SLOW_MS="${set.slowMs ?? 0}"`, `HEALTH_PATH="${set.healthPath ?? ''}"`].join(',')
      const command = `${process.execPath} ${script} ${index} ${backendPort} ${path.join(dir, `${name}.pid`)}`
      sections.push(programSection(name, command, dir, { environment: env, startsecs: set.startsecs ?? 1 }))
    }
  }
  for (const name of options.broken ?? []) sections.push(programSection(name, '/bin/false', dir))
  const config = path.join(dir, 'supervisord.conf')
  await writeFile(config, sections.join('\n'))
  return { config, programs }
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function exited (child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true
  return await Promise.race([
    new Promise<boolean>(resolve => child.once('exit', () => resolve(true))),
    sleep(ms, false, { ref: false })
  ])
}

async function waitRunning (client: SupervisordClient, child: ChildProcess, log: string): Promise<void> {
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`supervisord exited with ${child.exitCode}: ${await readFile(log, 'utf8').catch(() => '')}`)
    try {
      if ((await client.getState()).statename === 'RUNNING') return
    } catch {}
    await sleep(50)
  }
  throw new Error('supervisord did not reach RUNNING within 10 s')
}

/** Starts supervisord and waits until getState says RUNNING. */
export async function startSupervisord (options: SupervisordOptions = {}): Promise<Supervisord> {
  if (!installed) throw new Error('supervisord is not on the PATH (CI=true: the supervisord tests fail instead of skipping)')
  const dir = await mkdtemp(path.join(tmpdir(), 'fsv-'))
  try {
    return await launch(dir, options)
  } catch (error) {
    await rm(dir, { recursive: true, force: true })
    throw error
  }
}

async function launch (dir: string, options: SupervisordOptions, attempt = 1): Promise<Supervisord> {
  const port = await freePort()
  const { config, programs } = await configure(dir, port, options)
  const child = spawn('supervisord', ['-c', config], { stdio: 'ignore' })
  const socket = path.join(dir, 'supervisor.sock')
  const credentials = { username: USERNAME, password: PASSWORD }
  const tcp: SupervisordEndpoint = { kind: 'tcp', host: '127.0.0.1', port, ...credentials }
  const unix: SupervisordEndpoint = { kind: 'unix', path: socket, ...credentials }
  const client = new SupervisordClient(tcp, { timeout: 2000 })
  try {
    await waitRunning(client, child, path.join(dir, 'supervisord.log'))
  } catch (error) {
    child.kill('SIGKILL')
    await exited(child, 2000)
    // The free port may have been taken between the probe and supervisord's bind.
    if (attempt < 3 && /Address already in use|Another program/.test(String(error))) return await launch(dir, options, attempt + 1)
    throw error
  }

  const backendPids = async (): Promise<number[]> => {
    const pids = await Promise.all(programs.map(async p => Number(await readFile(path.join(dir, `${p.name}.pid`), 'utf8').catch(() => '0'))))
    return pids.filter(pid => pid > 0)
  }

  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    const pids = await backendPids()
    // supervisord notices a signal only at its next 1 s tick, and takes two more to reap children
    // on its own; stopped over RPC first (which keeps its loop busy), they are gone at once.
    if (child.exitCode === null) await client.call('stopAllProcesses', [false]).catch(() => {})
    child.kill('SIGTERM')
    if (!await exited(child, 5000)) {
      child.kill('SIGKILL')
      await exited(child, 2000)
    }
    for (const pid of pids) {
      if (alive(pid)) process.kill(pid, 'SIGKILL')
    }
    await rm(dir, { recursive: true, force: true })
  }

  return {
    dir,
    pid: child.pid as number,
    address: `127.0.0.1:${port}`,
    port,
    socket,
    programs,
    option: { address: `127.0.0.1:${port}`, ...credentials },
    tcp,
    unix,
    client,
    backendPids,
    stop
  }
}

/** Polls `check` every 25 ms until it is true; false if `ms` passed first. */
export async function until (check: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(25)
  }
  return await check()
}

/** One GET straight to a backend (not through the proxy): its status and body, or the error code. */
export async function getDirect (address: string, urlPath = '/'): Promise<{ status: number, body: string } | { error: string }> {
  try {
    const res = await fetch(`http://${address}${urlPath}`, { signal: AbortSignal.timeout(2000) })
    return { status: res.status, body: await res.text() }
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause
    return { error: cause?.code ?? (error as Error).name }
  }
}

/**
 * GETs a backend directly until it answers 200 (bounded): supervisord calls a
 * program RUNNING after startsecs, which on a loaded machine can come before
 * the program listens.
 */
export async function serving (address: string, ms = 3000): Promise<{ status: number, body: string } | { error: string }> {
  let last = await getDirect(address)
  const deadline = Date.now() + ms
  while (!('status' in last && last.status === 200) && Date.now() < deadline) {
    await sleep(50)
    last = await getDirect(address)
  }
  return last
}
