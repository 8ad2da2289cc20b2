import { startGateway } from './gateway.js'

// `npm start`: the example gateway on 127.0.0.1:$PORT (default 3000), backends
// on $BACKEND_PORT.. (default 8000..8002); ADMIN_TOKEN guards the operator routes.

function portFrom (name: string, fallback: number): number {
  const value = process.env[name]
  const port = value === undefined || value === '' ? fallback : Number(value)
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    console.error(`${name} must be a port number from 1 to 65535, got ${JSON.stringify(value)}`)
    process.exit(2)
  }
  return port
}

const gateway = await startGateway({
  port: portFrom('PORT', 3000),
  backendPort: portFrom('BACKEND_PORT', 8000),
  adminToken: process.env.ADMIN_TOKEN === '' ? undefined : process.env.ADMIN_TOKEN
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
