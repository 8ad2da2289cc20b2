import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import { exited, which } from '../../lib/dev/supervisord-daemon.js'
import { sleep } from './wait.js'

// A real nginx per test, as a plain unprivileged process: its own prefix,
// config, pid file, error log and temp paths in a temp dir, listening on
// 127.0.0.1 only, one process (`master_process off`), stopped by its pid.

/** nginx on the PATH, or Debian's, which root's PATH has but a user's may not. */
const binary = which('nginx') ?? (existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : undefined)

/** The configure line (`nginx -V` prints it on stderr), to see which modules are built in. */
const configure = binary === undefined ? '' : spawnSync(binary, ['-V'], { encoding: 'utf8' }).stderr ?? ''

function missing (modules: readonly string[]): string | undefined {
  if (binary === undefined) return 'nginx not installed (not on the PATH nor /usr/sbin/nginx)'
  const absent = modules.filter(module => !configure.includes(`--with-${module}`))
  return absent.length > 0 ? `nginx lacks ${absent.join(', ')} (see nginx -V)` : undefined
}

/**
 * For `t.test(name, { skip }, ...)`: a reason to skip when nginx (with these
 * non-default modules) is not installed, except on CI (CI=true), where the
 * tests run and fail.
 */
export function nginxSkip (modules: readonly string[] = []): string | false {
  const reason = missing(modules)
  if (reason === undefined || process.env.CI === 'true') return false
  console.log(`# skipping nginx tests: ${reason}`)
  return reason
}

export interface Nginx {
  pid: number
  dir: string
  /** Stops nginx (SIGTERM, then SIGKILL) and removes the temp dir. */
  stop (): Promise<void>
}

const NOBODY = 65534

async function accepts (port: number): Promise<boolean> {
  return await new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/**
 * Starts nginx with `http` as the body of its `http {}` block, waits until
 * each of `ports` (its `listen 127.0.0.1:port` lines) accepts connections,
 * and stops it in the test's teardown. Run as root (CI), it drops to nobody.
 */
export async function startNginx (t: Test, http: string, ports: readonly number[], modules: readonly string[] = []): Promise<Nginx> {
  const reason = missing(modules)
  if (reason !== undefined || binary === undefined) throw new Error(reason)
  const dir = await mkdtemp(path.join(tmpdir(), 'nginx-'))
  const errorLog = path.join(dir, 'error.log')
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
    .map(kind => `${kind}_temp_path ${path.join(dir, kind)};`).join('\n    ')
  const conf = path.join(dir, 'nginx.conf')
  await writeFile(conf, `daemon off;
master_process off;
pid ${path.join(dir, 'nginx.pid')};
error_log ${errorLog} warn;
events { worker_connections 256; }
http {
    access_log off;
    ${temp}
${http}
}
`)
  const root = process.getuid?.() === 0
  if (root) {
    await chown(dir, NOBODY, NOBODY)
    await chown(conf, NOBODY, NOBODY)
  }
  const child = spawn(binary, ['-p', dir, '-c', conf, '-e', errorLog], {
    stdio: 'ignore',
    ...(root ? { uid: NOBODY, gid: NOBODY } : {})
  })
  const stop = async (): Promise<void> => {
    child.kill('SIGTERM')
    if (!await exited(child, 5000)) {
      child.kill('SIGKILL')
      await exited(child, 2000)
    }
    await rm(dir, { recursive: true, force: true })
  }
  t.teardown(stop)
  const deadline = Date.now() + 10_000
  for (const port of ports) {
    while (!await accepts(port)) {
      if (child.exitCode !== null || Date.now() > deadline) {
        const log = await readFile(errorLog, 'utf8').catch(() => '')
        throw new Error(`nginx did not listen on 127.0.0.1:${port} (exit ${child.exitCode}): ${log}`)
      }
      await sleep(20)
    }
  }
  return { pid: child.pid as number, dir, stop }
}
