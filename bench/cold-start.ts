import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import { request } from 'undici'
import { healthCheck, proxy, registry, supervisord, SupervisordClient } from '../index.js'
import { freePort, onPath, startDaemon, type Daemon } from '../lib/dev/supervisord-daemon.js'
import { median } from './load.js'

const ROUNDS = 5

async function gateway (daemon: Daemon, program: string, backend: string, checked: boolean): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify({ logger: false })
  const tcp = daemon.tcp as { host: string, port: number, username: string, password: string }
  await app.register(registry, {
    upstreams: {
      backend: {
        servers: [backend],
        supervisordName: program,
        supervisord: { address: `${tcp.host}:${tcp.port}`, username: tcp.username, password: tcp.password },
        ...(checked ? { healthCheck: { interval: 20, timeout: 500, rise: 1, fall: 1 } } : {})
      }
    }
  })
  await app.register(supervisord, { callTimeout: 10_000 })
  if (checked) await app.register(healthCheck)
  await app.register(proxy, { upstream: 'backend', disableRequestLogging: true })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: `http://127.0.0.1:${(app.server.address() as net.AddressInfo).port}/` }
}

async function answered (url: string): Promise<void> {
  const res = await request(url)
  const body = await res.body.text()
  if (res.statusCode !== 200) throw new Error(`cold start answered ${res.statusCode}: ${body}`)
}

async function timed (fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return performance.now() - t0
}

/** ROUNDS first requests to a stopped backend, each answered, then the backend stopped again. */
async function coldStarts (daemon: Daemon, program: string, backend: string, checked: boolean): Promise<number[]> {
  const { app, url } = await gateway(daemon, program, backend, checked)
  const times: number[] = []
  try {
    for (let i = 0; i < ROUNDS; i++) {
      times.push(await timed(async () => await answered(url)))
      await app.supervisord.execute('backend', 'stop', 0, { wait: true })
    }
  } finally {
    await app.close()
  }
  return times
}

/**
 * Cold start: the time from a first request (backend stopped) to its answer,
 * beside supervisord's own startProcess(wait) for the same program in the
 * same run; then with an active check, which lets the request go as soon as
 * the backend answers, before supervisord's startsecs has passed.
 */
export async function run (): Promise<void> {
  if (!onPath('supervisord')) {
    console.log('\nCold start: skipped, supervisord is not on the PATH')
    return
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'fastify-supervisord-bench-'))
  const script = fileURLToPath(new URL('../example-app/backend.js', import.meta.url))
  const ports = [await freePort(), await freePort()]
  const daemon = await startDaemon({
    dir,
    port: await freePort(),
    username: 'bench',
    password: 'bench',
    programs: [
      { name: 'backend0', command: `${process.execPath} ${script} 0 ${ports[0]}`, startsecs: 1 },
      { name: 'slow0', command: `${process.execPath} ${script} 0 ${ports[1]}`, startsecs: 3 }
    ]
  })
  // startsecs=3 is longer than the daemon client's own call timeout
  const client = new SupervisordClient(daemon.tcp, { timeout: 10_000 })
  try {
    const own: number[] = []
    for (let i = 0; i < ROUNDS; i++) {
      own.push(await timed(async () => await client.startProcess('backend0', true)))
      await client.stopProcess('backend0', true)
    }

    const cold = await coldStarts(daemon, 'backend', `127.0.0.1:${ports[0]}`, false)
    // program "slow0" has startsecs=3: the check sees it ready long before supervisord says RUNNING
    const checkedOwn = await timed(async () => await client.startProcess('slow0', true))
    await client.stopProcess('slow0', true)
    const early = await coldStarts(daemon, 'slow', `127.0.0.1:${ports[1]}`, true)

    const ownMs = median(own)
    const coldMs = median(cold)
    console.log(`\nCold start (median of ${ROUNDS}; target: at most 100 ms above supervisord's own start)`)
    console.log(`supervisord startProcess(wait), startsecs=1    ${ownMs.toFixed(0).padStart(6)} ms`)
    console.log(`first request through the gateway, startsecs=1 ${coldMs.toFixed(0).padStart(6)} ms  (+${(coldMs - ownMs).toFixed(0)} ms)`)
    console.log(`supervisord startProcess(wait), startsecs=3    ${checkedOwn.toFixed(0).padStart(6)} ms`)
    console.log(`first request, health-checked, startsecs=3     ${median(early).toFixed(0).padStart(6)} ms  (released when the backend answers its check)`)
  } finally {
    await daemon.stop()
    await rm(dir, { recursive: true, force: true })
  }
}
