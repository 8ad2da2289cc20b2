import cluster, { type Worker } from 'node:cluster'
import { hostname } from 'node:os'
import { startBackends, startGateway, type Gateway } from './gateway.js'

// `npm start`: the example gateway on 127.0.0.1:$PORT (default 3000), backends
// on $BACKEND_PORT.. (default 8000..8002); ADMIN_TOKEN guards the operator routes;
// SIGTERM or SIGINT gives in-flight requests SHUTDOWN_GRACE_MS (default 3000).
// Several gateways as one: REDIS_URL (the Redis they share), SUPERVISORD_URL
// (`host:port user:pass` or `unix:/path user:pass`: that supervisord's
// programs backend0..2 instead of one of our own), WORKERS=n (n gateway
// processes on one port, node:cluster; needs REDIS_URL).

function integerFrom (name: string, fallback: number, min: number, max: number): number {
  const value = process.env[name]
  const number = value === undefined || value === '' ? fallback : Number(value)
  if (!Number.isInteger(number) || number < min || number > max) {
    console.error(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`)
    process.exit(2)
  }
  return number
}

const portFrom = (name: string, fallback: number): number => integerFrom(name, fallback, 1, 65535)
const textFrom = (name: string): string | undefined => process.env[name] === '' ? undefined : process.env[name]

const settings = {
  port: portFrom('PORT', 3000),
  backendPort: portFrom('BACKEND_PORT', 8000),
  adminToken: textFrom('ADMIN_TOKEN'),
  shutdownGrace: integerFrom('SHUTDOWN_GRACE_MS', 3000, 0, 60_000),
  redisUrl: textFrom('REDIS_URL'),
  supervisordUrl: textFrom('SUPERVISORD_URL')
}
const workers = integerFrom('WORKERS', 1, 1, 64)

if (workers > 1 && settings.redisUrl === undefined) {
  console.error(`WORKERS=${workers} runs ${workers} gateway processes that share their state through a Redis, and this example starts none of its own: ` +
    'set REDIS_URL as well, e.g. REDIS_URL=redis://127.0.0.1:6379 WORKERS=2 npm start')
  process.exit(2)
}

/** The primary of WORKERS=n writes its few lines as the gateways' logger does: one JSON object each. */
function log (level: 'info' | 'warn' | 'error', details: object, msg: string): void {
  const levels = { info: 30, warn: 40, error: 50 }
  process.stdout.write(JSON.stringify({ level: levels[level], time: Date.now(), pid: process.pid, hostname: hostname(), ...details, msg }) + '\n')
}

/** One shutdown on the first SIGINT or SIGTERM. */
function onSignals (stop: (signal: NodeJS.Signals) => Promise<void>): void {
  let stopping = false
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (stopping) return
      stopping = true
      stop(signal).then(() => process.exit(0), () => process.exit(1))
    })
  }
}

async function single (): Promise<void> {
  const gateway: Gateway = await startGateway(settings)
  gateway.app.log.info({ pid: process.pid, supervisordPid: gateway.supervisordPid ?? null, mode: gateway.mode }, 'gateway ready')
  onSignals(async signal => {
    gateway.app.log.info({ signal }, 'shutting down')
    await gateway.shutdown().catch(error => {
      gateway.app.log.error({ err: error }, 'shutdown failed')
      throw error
    })
  })
}

/** WORKERS=n: this process runs the backends (or names the given supervisord) and n gateway processes on one port. */
async function primary (): Promise<void> {
  const backends = await startBackends(settings)
  log('info', { mode: backends.mode }, backends.why)
  if (backends.urlFile !== undefined) {
    log('info', { file: backends.urlFile }, `more gateways of this group: REDIS_URL=${settings.redisUrl as string} SUPERVISORD_URL="$(cat ${backends.urlFile})" PORT=... npm start`)
  }
  const env = { SUPERVISORD_URL: backends.url ?? settings.supervisordUrl, GATEWAY_WORKER: '1' }
  const running = new Set<Worker>()
  let stopping = false
  const fork = (): Promise<Worker> => new Promise((resolve, reject) => {
    const worker = cluster.fork(env)
    running.add(worker)
    worker.once('listening', () => resolve(worker))
    worker.once('exit', (code, signal) => {
      running.delete(worker)
      if (stopping) return
      reject(new Error(`gateway worker ${worker.process.pid} exited (${signal ?? code}) before listening`))
      // A gateway that dies is replaced; the group loses nothing shared (its leases lapse).
      log('error', { worker: worker.process.pid, code, signal }, `gateway worker ${worker.process.pid} exited (${signal ?? code}): starting another`)
      setTimeout(() => { if (!stopping) fork().catch(() => {}) }, 1000).unref()
    })
  })
  const stop = async (signal: NodeJS.Signals): Promise<void> => {
    stopping = true
    log('info', { signal }, 'shutting down')
    const exits = [...running].map(worker => new Promise<void>(resolve => {
      if (worker.isDead()) return resolve()
      worker.once('exit', () => resolve())
      worker.process.kill('SIGTERM')
    }))
    const all = Promise.all(exits).then(() => true)
    if (!await Promise.race([all, new Promise<false>(resolve => setTimeout(() => resolve(false), settings.shutdownGrace + 3000).unref())])) {
      log('error', {}, 'a gateway worker did not stop within its shutdown grace: killed')
      for (const worker of running) worker.process.kill('SIGKILL')
    }
    await backends.stop()
  }
  onSignals(stop)
  try {
    const started = await Promise.all(Array.from({ length: workers }, fork))
    log('info', { supervisordPid: backends.supervisordPid ?? null, mode: backends.mode, workers: started.map(worker => worker.process.pid) }, 'gateway ready')
  } catch (error) {
    log('error', { err: (error as Error).message }, 'the gateway workers did not start')
    await stop('SIGTERM')
    process.exit(1)
  }
}

async function worker (): Promise<void> {
  // The primary stops the backends; a worker stops only itself.
  const backends = await startBackends(settings)
  const gateway = await startGateway(settings, { ...backends, why: `gateway worker ${cluster.worker?.id ?? ''}: the primary runs the backends (${backends.mode})` })
  onSignals(async () => { await gateway.shutdown() })
  // The primary going away (killed) takes the workers with it.
  process.on('disconnect', () => { gateway.shutdown().finally(() => process.exit(0)) })
}

// A gateway that cannot start says why in its log, as one JSON line, and exits 1.
await (workers === 1 ? single() : cluster.isPrimary ? primary() : worker()).catch((error: Error) => {
  log('error', { err: { type: error.name, message: error.message, stack: error.stack } }, `the gateway could not start: ${error.message}`)
  process.exit(1)
})
