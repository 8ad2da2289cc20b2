import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { SupervisordClient, type SupervisordEndpoint } from '../supervisord-client.js'

// A supervisord of our own, with its config in a directory we own, listening
// on loopback only (and a unix socket in that directory). Used by the example
// gateway and by the tests.

export interface ProgramConfig {
  name: string
  command: string
  /** supervisord's startsecs (default 1). */
  startsecs?: number
  /** More `key=value` lines of the [program:x] section. */
  extra?: Record<string, string | number>
}

export interface DaemonConfig {
  dir: string
  /** TCP port of its inet_http_server on 127.0.0.1. */
  port: number
  username: string
  password: string
  programs: ProgramConfig[]
}

export interface Daemon {
  pid: number
  child: ChildProcess
  /** A TCP client with the credentials. */
  client: SupervisordClient
  tcp: SupervisordEndpoint
  unix: SupervisordEndpoint
  /** Stops every program, then supervisord (SIGTERM, then SIGKILL after a bound). */
  stop (): Promise<void>
}

/** Ports handed out below Linux's ephemeral range (32768 and up): no outgoing connection and no listen(0) elsewhere takes them meanwhile. */
const RESERVED_LOW = 20_000
const RESERVED_HIGH = 32_767

async function listenable (port: number): Promise<number | undefined> {
  const server = net.createServer()
  const bound = await new Promise<boolean>(resolve => {
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => resolve(true))
  })
  if (!bound) return undefined
  const taken = (server.address() as net.AddressInfo).port
  await new Promise<void>(resolve => server.close(() => resolve()))
  return taken
}

/**
 * A port on 127.0.0.1 that is free right now, for a server started later
 * (supervisord, a program). Picked at random below the ephemeral range, so
 * that the outgoing connections and listen(0) servers of every process on
 * the machine, which take ephemeral ports, cannot take it before it is bound;
 * an ephemeral one if none is found there.
 */
export async function freePort (): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await listenable(RESERVED_LOW + Math.floor(Math.random() * (RESERVED_HIGH - RESERVED_LOW + 1)))
    if (port !== undefined) return port
  }
  return await listenable(0) as number
}

/** Where `command` is found on the PATH, if it is. */
export function which (command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir !== '' && existsSync(path.join(dir, command))) return path.join(dir, command)
  }
  return undefined
}

export function onPath (command: string): boolean {
  return which(command) !== undefined
}

function programSection (program: ProgramConfig, dir: string): string {
  const lines = {
    command: program.command,
    autostart: 'false',
    autorestart: 'false',
    startsecs: program.startsecs ?? 1,
    startretries: 0,
    stopsignal: 'TERM',
    stopwaitsecs: 2,
    redirect_stderr: 'true',
    stdout_logfile: path.join(dir, `${program.name}.log`),
    ...program.extra
  }
  return `[program:${program.name}]\n${Object.entries(lines).map(([k, v]) => `${k}=${v}`).join('\n')}\n`
}

export async function writeConfig (config: DaemonConfig): Promise<string> {
  const { dir, port, username, password } = config
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
username=${username}
password=${password}
`,
    `[unix_http_server]
file=${path.join(dir, 'supervisor.sock')}
username=${username}
password=${password}
`,
    `[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
`,
    ...config.programs.map(program => programSection(program, dir))
  ]
  const file = path.join(dir, 'supervisord.conf')
  await writeFile(file, sections.join('\n'))
  return file
}

export async function exited (child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true
  return await Promise.race([
    new Promise<boolean>(resolve => child.once('exit', () => resolve(true))),
    sleep(ms, false, { ref: false })
  ])
}

async function waitRunning (client: SupervisordClient, child: ChildProcess, log: string, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`supervisord exited with ${child.exitCode}: ${stderr()} ${await readFile(log, 'utf8').catch(() => '')}`)
    try {
      if ((await client.getState()).statename === 'RUNNING') return
    } catch {}
    await sleep(50)
  }
  throw new Error('supervisord did not reach RUNNING within 10 s')
}

/** Writes the config, starts supervisord in the foreground of a child process and waits until it is RUNNING. */
export async function startDaemon (config: DaemonConfig): Promise<Daemon> {
  const file = await writeConfig(config)
  const child = spawn('supervisord', ['-c', file], { stdio: ['ignore', 'ignore', 'pipe'] })
  // What supervisord says before its log is open (a port in use) goes to stderr.
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { if (stderr.length < 4096) stderr += chunk.toString() })
  const credentials = { username: config.username, password: config.password }
  const tcp: SupervisordEndpoint = { kind: 'tcp', host: '127.0.0.1', port: config.port, ...credentials }
  const unix: SupervisordEndpoint = { kind: 'unix', path: path.join(config.dir, 'supervisor.sock'), ...credentials }
  const client = new SupervisordClient(tcp, { timeout: 2000 })
  try {
    await waitRunning(client, child, path.join(config.dir, 'supervisord.log'), () => stderr)
  } catch (error) {
    child.kill('SIGKILL')
    await exited(child, 2000)
    throw error
  }
  let stopped: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    // supervisord notices a signal only at its next 1 s tick, and takes two
    // more to reap children on its own; stopped over RPC first, they go at once.
    if (child.exitCode === null) await client.call('stopAllProcesses', [false]).catch(() => {})
    child.kill('SIGTERM')
    if (!await exited(child, 5000)) {
      child.kill('SIGKILL')
      await exited(child, 2000)
    }
  }
  return { pid: child.pid as number, child, client, tcp, unix, stop: async () => await (stopped ??= stop()) }
}
