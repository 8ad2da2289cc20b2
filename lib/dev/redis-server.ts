import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort, onPath } from './supervisord-daemon.js'

// A private redis-server for the tests and the benchmarks, on a free
// 127.0.0.1 port, in a temp dir of its own, with nothing saved. Stopped by
// pid (SIGCONT first, in case it was left stopped).

export const redisInstalled = (): boolean => onPath('redis-server')

export interface RedisServer {
  port: number
  url: string
  /** The running server's pid (a new one after restart()). */
  readonly pid: number
  /** SIGSTOP: the server keeps its connections and answers nothing. */
  pause (): void
  /** SIGCONT. */
  resume (): void
  /** SIGKILL, and waits until it is gone. */
  kill (): Promise<void>
  /** A new server on the same port and dir (empty: nothing is saved). */
  restart (): Promise<void>
  stop (): Promise<void>
}

/** One PING over a raw socket: true when it answers +PONG within `ms`. */
async function pings (port: number, ms = 500): Promise<boolean> {
  return await new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1')
    const done = (ok: boolean): void => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(ms, () => done(false))
    socket.once('error', () => done(false))
    socket.once('connect', () => socket.write('PING\r\n'))
    socket.once('data', data => done(data.toString().startsWith('+PONG')))
  })
}

function exited (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise(resolve => child.once('exit', () => resolve()))
}

export async function startRedis (): Promise<RedisServer> {
  if (!redisInstalled()) throw new Error('redis-server is not on the PATH (apt-get install redis-server)')
  const dir = await mkdtemp(path.join(tmpdir(), 'fsv-redis-'))
  let port = await freePort()
  let child: ChildProcess | undefined
  let pid = 0
  let output = ''

  const signal = (name: NodeJS.Signals): void => {
    if (pid === 0) return
    try { process.kill(pid, name) } catch {}
  }
  /** SIGKILL (after SIGCONT), then the shell reaps it and exits. */
  const kill = async (): Promise<void> => {
    if (child === undefined) return
    signal('SIGCONT')
    signal('SIGKILL')
    child.stdin?.end()
    await exited(child)
  }

  const launch = async (): Promise<void> => {
    output = ''
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
      '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'yes']
    // A shell between the test and redis-server, which prints its pid and
    // kills it when its stdin closes: redis-server never outlives the test
    // process, even one that crashed or was killed.
    const shell = spawn('sh', ['-c', 'redis-server "$@" & echo "pid $!"; read _; kill -CONT $! 2>/dev/null; kill -KILL $! 2>/dev/null; wait', 'sh', ...args],
      { stdio: ['pipe', 'pipe', 'pipe'] })
    child = shell
    pid = 0
    shell.stdout?.on('data', (data: Buffer) => {
      output += data.toString()
      if (pid === 0) pid = Number(/^pid (\d+)$/m.exec(output)?.[1] ?? 0)
    })
    shell.stderr?.on('data', (data: Buffer) => { output += data.toString() })
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline) {
      if (shell.exitCode !== null || /aborting|Address already in use/.test(output)) break
      if (pid !== 0 && await pings(port)) return
      await sleep(25)
    }
    await kill()
    throw new Error(`redis-server did not answer PING on port ${port}:\n${output}`)
  }

  for (let attempt = 1; ; attempt++) {
    try {
      await launch()
      break
    } catch (error) {
      // The free port may have been taken between the probe and the bind.
      if (attempt >= 3 || !/Address already in use/.test(output)) {
        await rm(dir, { recursive: true, force: true })
        throw error
      }
      port = await freePort()
    }
  }

  let stopped = false

  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid () { return pid },
    pause: () => signal('SIGSTOP'),
    resume: () => signal('SIGCONT'),
    kill,
    restart: async () => {
      await kill()
      await launch()
    },
    stop: async () => {
      if (stopped) return
      stopped = true
      await kill()
      await rm(dir, { recursive: true, force: true })
    }
  }
}
