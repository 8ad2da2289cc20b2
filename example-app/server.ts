import { startGateway } from './gateway.js'

// `npm start`: the example gateway on 127.0.0.1:$PORT (default 3000), backends
// on $BACKEND_PORT.. (default 8000..8002); ADMIN_TOKEN guards the operator routes;
// SIGTERM or SIGINT gives in-flight requests SHUTDOWN_GRACE_MS (default 3000).

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

const gateway = await startGateway({
  port: portFrom('PORT', 3000),
  backendPort: portFrom('BACKEND_PORT', 8000),
  adminToken: process.env.ADMIN_TOKEN === '' ? undefined : process.env.ADMIN_TOKEN,
  shutdownGrace: integerFrom('SHUTDOWN_GRACE_MS', 3000, 0, 60_000)
})
gateway.app.log.info({ pid: process.pid, supervisordPid: gateway.supervisordPid ?? null, mode: gateway.mode }, 'gateway ready')

let stopping = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) return
    stopping = true
    gateway.app.log.info({ signal }, 'shutting down')
    gateway.shutdown().then(() => process.exit(0), error => {
      gateway.app.log.error({ err: error }, 'shutdown failed')
      process.exit(1)
    })
  })
}
