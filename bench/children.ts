import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { readFileSync } from 'node:fs'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { exited } from '../lib/dev/supervisord-daemon.js'

// Every process a benchmark starts goes through one Children: it can stop
// them all by pid and then prove none is left (by pid and start time, so a
// pid reused by an unrelated process is not mistaken for ours).

/** Fields of /proc/<pid>/stat after the command name; absent off Linux or once the process is gone. */
function procStat (pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return undefined
  }
}

let clockTicks: number | undefined
function ticksPerSecond (): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      clockTicks = 100
    }
  }
  return clockTicks
}

/** User + system CPU seconds the process (all its threads) has used; undefined without /proc. */
export function cpuSeconds (pid: number): number | undefined {
  const fields = procStat(pid)
  // fields[0] is field 3 of proc(5): utime is field 14, stime field 15
  return fields === undefined ? undefined : (Number(fields[11]) + Number(fields[12])) / ticksPerSecond()
}

const startTime = (pid: number): string | undefined => procStat(pid)?.[19]

/** The command line that runs `command` on CPU `cpu` (through taskset), or as it is when `cpu` is undefined. */
export function pinned (command: string, args: string[], cpu: number | undefined): [string, string[]] {
  return cpu === undefined ? [command, args] : ['taskset', ['-c', String(cpu), command, ...args]]
}

/** Moves a running process, all its threads, to CPU `cpu`. */
export function pinProcess (pid: number, cpu: number): void {
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' })
}

export interface Tracked {
  name: string
  pid: number
  child: ChildProcess
  startedAt: string | undefined
  /** The last few KB it wrote to stderr, when piped: what to show if it fails. */
  stderr: string
}

/** Resolves once something accepts connections on 127.0.0.1:port; rejects after `ms` or when `child` exits first. */
export async function listening (port: number, child: ChildProcess, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`exited (${child.exitCode ?? child.signalCode}) before listening on ${port}`)
    const open = await new Promise<boolean>(resolve => {
      const socket = net.connect(port, '127.0.0.1', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => resolve(false))
    })
    if (open) return
    await sleep(20)
  }
  throw new Error(`nothing listening on ${port} after ${ms} ms`)
}

export class Children {
  readonly all: Tracked[] = []

  track (name: string, child: ChildProcess): ChildProcess {
    if (child.pid === undefined) throw new Error(`${name} did not start (${child.spawnfile} not found?)`)
    const tracked: Tracked = { name, pid: child.pid, child, startedAt: startTime(child.pid), stderr: '' }
    child.stderr?.setEncoding('utf8').on('data', (text: string) => { tracked.stderr = (tracked.stderr + text).slice(-4096) })
    this.all.push(tracked)
    return child
  }

  spawn (name: string, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], ...options })
    // a failed spawn (ENOENT) is reported by track() and by the exit it causes, not thrown from here
    child.once('error', () => {})
    return this.track(name, child)
  }

  /** Disconnects (our Node children exit on it), then SIGTERM, then SIGKILL, each after a bound. */
  async stop (child: ChildProcess): Promise<void> {
    if (child.connected) child.disconnect()
    if (await exited(child, 2000)) return
    child.kill('SIGTERM')
    if (await exited(child, 3000)) return
    child.kill('SIGKILL')
    await exited(child, 2000)
  }

  /**
   * Runs a Node script of ours in a child (pinned to `cpu` when given) and
   * resolves with the one message it sends; stopped past `ms`.
   */
  async answer<T> (name: string, script: string, args: string[], ms: number, cpu?: number): Promise<T> {
    const [command, argv] = pinned(process.execPath, [...process.execArgv, script, ...args], cpu)
    // 'advanced' keeps values JSON cannot (Infinity) through IPC
    const child = this.spawn(name, command, argv, { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'advanced' })
    const answer = new Promise<T>(resolve => child.once('message', message => resolve(message as T)))
    const noAnswer = async (wait: number): Promise<undefined> => { await exited(child, wait) }
    // an exit may be seen before the last message on the channel is read: a second's grace for it
    const result = await Promise.race([answer, noAnswer(ms)]) ?? await Promise.race([answer, sleep(1000, undefined)])
    await this.stop(child)
    if (result === undefined) {
      throw new Error(`${name} gave no answer (${child.exitCode ?? child.signalCode ?? `stopped after ${ms} ms`}): ${this.stderrOf(child)}`)
    }
    return result
  }

  /** What `child` wrote to stderr lately. */
  stderrOf (child: ChildProcess): string {
    return this.all.find(tracked => tracked.child === child)?.stderr.trim() ?? ''
  }

  async stopAll (): Promise<void> {
    await Promise.all(this.all.map(async tracked => await this.stop(tracked.child)))
  }

  /** The children still running: same pid and same start time as when started. */
  running (): Tracked[] {
    return this.all.filter(({ pid, child, startedAt }) => {
      if (child.exitCode === null && child.signalCode === null) return true
      return startedAt !== undefined && startTime(pid) === startedAt
    })
  }
}
