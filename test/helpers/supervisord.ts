import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import type { Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import registry, { type RegistryOptions } from '../../plugins/registry.js'
import supervisord, { type SupervisordBridgeOptions } from '../../plugins/supervisord.js'
import proxy, { type ProxyOptions } from '../../plugins/proxy.js'
import type { CommandEvent } from '../../lib/events.js'
import type { PeerChange } from '../../lib/peer.js'
import { loggerInto } from './gateway.js'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { SupervisordClient, SupervisordEndpoint } from '../../lib/supervisord-client.js'
import { onPath, startDaemon, type ProgramConfig } from '../../lib/dev/supervisord-daemon.js'
import { freePort } from './backends.js'
import { sleep } from './wait.js'

// A real supervisord per test, in a temp dir of its own, with real Node HTTP
// backends as its programs. Everything listens on 127.0.0.1 or a socket in
// the temp dir.

export const USERNAME = 'admin'
export const PASSWORD = 'super'

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

/**
 * A program that does not serve: `exit` exits at once (/bin/false: a crash
 * at start, supervisord's SPAWN_ERROR), `missing` names a binary that does
 * not exist (NO_FILE).
 */
export type ProgramFault = 'exit' | 'missing'

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
  /** ms after its start before the backend listens (a late-binding backend; default 0), for all or by index. */
  listenAfterMs?: number | Record<number, number>
  /** ms a backend keeps running (and serving) after SIGTERM (a slow stop; default 0). */
  stopDelayMs?: number
  /** Programs of this set, by index, that are broken instead of backends (their ports stay unused). */
  faults?: Record<number, ProgramFault>
}

export interface SupervisordOptions {
  programs?: ProgramSet[]
  /** Names of programs that exit at once (supervisord reports SPAWN_ERROR). */
  broken?: string[]
  /** supervisord's own password (default PASSWORD): the option handed to the gateway keeps PASSWORD, so a different one is a wrong password. */
  password?: string
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
  /** supervisord's state name of a program: RUNNING, STOPPED, ... */
  statename (program: string): Promise<string>
  /** Stops supervisord (SIGTERM, then SIGKILL), any backend it left behind, and removes the temp dir. */
  stop (): Promise<void>
}

const BACKEND_SCRIPT = `
import http from 'node:http'
import { unlinkSync, writeFileSync } from 'node:fs'
const [index, port, pidFile] = process.argv.slice(2)
const slowMs = Number(process.env.SLOW_MS ?? 0)
const healthPath = process.env.HEALTH_PATH ?? ''
const listenAfterMs = Number(process.env.LISTEN_AFTER_MS ?? 0)
const stopDelayMs = Number(process.env.STOP_DELAY_MS ?? 0)
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
setTimeout(() => server.listen(Number(port), '127.0.0.1'), listenAfterMs)
process.on('SIGTERM', () => setTimeout(() => { server.close(); server.closeAllConnections(); process.exit(0) }, stopDelayMs))
// Never outlive a crashed test run by much.
setTimeout(() => process.exit(0), 120_000).unref()
`

/** A free port not in `taken` (nothing listens on those yet, so freePort alone could hand one out twice); added to it. */
async function distinctPort (taken: Set<number>): Promise<number> {
  let port = await freePort()
  while (taken.has(port)) port = await freePort()
  taken.add(port)
  return port
}

async function programsOf (dir: string, options: SupervisordOptions, taken: Set<number>): Promise<{ configs: ProgramConfig[], programs: BackendProgram[] }> {
  const script = path.join(dir, 'backend.mjs')
  await writeFile(script, BACKEND_SCRIPT)
  const configs: ProgramConfig[] = []
  const programs: BackendProgram[] = []
  for (const set of options.programs ?? [{ count: 2 }]) {
    for (let index = 0; index < set.count; index++) {
      const name = `${set.prefix ?? 'backend'}${index}`
      const backendPort = await distinctPort(taken)
      programs.push({ name, index, port: backendPort, address: `127.0.0.1:${backendPort}` })
      const fault = set.faults?.[index]
      if (fault !== undefined) {
        configs.push({ name, command: fault === 'exit' ? '/bin/false' : path.join(dir, 'no-such-binary') })
        continue
      }
      const environment = [`SLOW_MS="${set.slowMs ?? 0}"`, `HEALTH_PATH="${set.healthPath ?? ''}"`,
        `LISTEN_AFTER_MS="${typeof set.listenAfterMs === 'number' ? set.listenAfterMs : set.listenAfterMs?.[index] ?? 0}"`, `STOP_DELAY_MS="${set.stopDelayMs ?? 0}"`].join(',')
      const command = `${process.execPath} ${script} ${index} ${backendPort} ${path.join(dir, `${name}.pid`)}`
      // A slow stop needs supervisord to wait longer than its default before SIGKILL.
      const extra = { environment, ...(set.stopDelayMs === undefined ? {} : { stopwaitsecs: Math.ceil(set.stopDelayMs / 1000) + 5 }) }
      configs.push({ name, command, startsecs: set.startsecs ?? 1, extra })
    }
  }
  for (const name of options.broken ?? []) configs.push({ name, command: '/bin/false' })
  return { configs, programs }
}

export function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
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
  const taken = new Set<number>()
  const port = await distinctPort(taken)
  const { configs, programs } = await programsOf(dir, options, taken)
  let daemon
  try {
    daemon = await startDaemon({ dir, port, username: USERNAME, password: options.password ?? PASSWORD, programs: configs })
  } catch (error) {
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
    await daemon.stop()
    for (const pid of pids) {
      if (alive(pid)) process.kill(pid, 'SIGKILL')
    }
    await rm(dir, { recursive: true, force: true })
  }

  return {
    dir,
    pid: daemon.pid,
    address: `127.0.0.1:${port}`,
    port,
    socket: daemon.unix.kind === 'unix' ? daemon.unix.path : '',
    programs,
    option: { address: `127.0.0.1:${port}`, username: USERNAME, password: PASSWORD },
    tcp: daemon.tcp,
    unix: daemon.unix,
    client: daemon.client,
    backendPids,
    statename: async (program: string) => (await daemon.client.getProcessInfo(program)).statename,
    stop
  }
}

/** startSupervisord, stopped in the test's teardown. */
export async function supervisordFor (t: Test, options: SupervisordOptions = {}): Promise<Supervisord> {
  const sv = await startSupervisord(options)
  t.teardown(async () => await sv.stop())
  return sv
}

/** The process state of each peer of an upstream, by index. */
export function processes (app: FastifyInstance, upstream = 'backend'): string[] {
  return app.upstreams.get(upstream).peers.map(p => p.process)
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

export interface RpcCounter {
  /** `127.0.0.1:port` of the counter, for an upstream's `supervisord` option. */
  address: string
  /** The XML-RPC methods called through it, in order (`supervisor.startProcess`, ...). */
  calls: string[]
}

/**
 * A tiny HTTP proxy in front of a supervisord that records every XML-RPC
 * method called through it: the number of calls a gateway makes is counted
 * where they arrive, not in the gateway. Closed in the test's teardown.
 */
export async function rpcCounter (t: Test, sv: Supervisord): Promise<RpcCounter> {
  const calls: string[] = []
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      calls.push(/<methodName>([^<]*)<\/methodName>/.exec(body.toString())?.[1] ?? '?')
      // A connection per call, as the gateway's client makes them (a kept one that supervisord closed would be reset).
      const upstream = http.request({ host: '127.0.0.1', port: sv.port, method: req.method, path: req.url, headers: req.headers, agent: false }, answer => {
        res.writeHead(answer.statusCode ?? 502, answer.headers)
        answer.pipe(res)
      })
      upstream.on('error', () => res.destroy())
      upstream.end(body)
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, calls }
}

export interface LogLine { level: number, msg: string, fault?: string, program?: string, [key: string]: unknown }

export interface BridgeApp {
  app: FastifyInstance
  /** Log lines at `logLevel` (default warn) and above, parsed. */
  logs: LogLine[]
  commands: CommandEvent[]
  changes: PeerChange[]
}

/** The registry and the bridge (polling off unless asked), with logs and registry events recorded; closed in the teardown. */
export async function bridgeApp (t: Test, upstreams: RegistryOptions['upstreams'], options: SupervisordBridgeOptions = {}, logLevel = 'warn'): Promise<BridgeApp> {
  const logs: LogLine[] = []
  const app = Fastify({ logger: loggerInto(logs, logLevel) })
  await app.register(registry, { upstreams })
  await app.register(supervisord, { pollInterval: 0, ...options })
  t.teardown(() => app.close())
  const commands: CommandEvent[] = []
  const changes: PeerChange[] = []
  app.upstreams.on('command', event => commands.push(event))
  app.upstreams.on('change', change => changes.push(change))
  return { app, logs, commands, changes }
}

/** The bridge with the proxy in front of the first upstream (holdTimeout 5000 unless told). */
export async function proxyApp (t: Test, upstreams: RegistryOptions['upstreams'], options: SupervisordBridgeOptions = {},
  proxyOptions: Partial<ProxyOptions> = {}): Promise<BridgeApp> {
  const app = await bridgeApp(t, upstreams, options)
  await app.app.register(proxy, { upstream: Object.keys(upstreams)[0], holdTimeout: 5000, ...proxyOptions })
  return app
}
