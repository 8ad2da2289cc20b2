import http from 'node:http'
import type { AddressInfo } from 'node:net'

export type BackendHandler = (req: http.IncomingMessage, res: http.ServerResponse, backend: Backend) => void

export interface Backend {
  id: number
  port: number
  /** `127.0.0.1:port` */
  address: string
  /** Requests this backend received. */
  hits: number
  server: http.Server
  handler: BackendHandler
  close (): Promise<void>
}

/** Answers `{"backend": id}` with an x-backend header, so a test sees which peer served. */
export const whoAmI: BackendHandler = (_req, res, backend) => {
  const body = JSON.stringify({ backend: backend.id })
  res.writeHead(200, { 'content-type': 'application/json', 'x-backend': String(backend.id), 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

/** A real HTTP backend on 127.0.0.1 with an ephemeral port. */
export async function startBackend (id: number, handler: BackendHandler = whoAmI, port = 0): Promise<Backend> {
  const server = http.createServer()
  const backend: Backend = {
    id,
    port: 0,
    address: '',
    hits: 0,
    server,
    handler,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
  server.on('request', (req, res) => {
    backend.hits++
    backend.handler(req, res, backend)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve())
  })
  backend.port = (server.address() as AddressInfo).port
  backend.address = `127.0.0.1:${backend.port}`
  return backend
}

export async function startBackends (count: number, handler?: BackendHandler): Promise<Backend[]> {
  return await Promise.all(Array.from({ length: count }, async (_, id) => await startBackend(id, handler)))
}

/** A port on 127.0.0.1 that nothing listens on (taken, then released). */
export async function closedPort (): Promise<number> {
  const backend = await startBackend(-1)
  await backend.close()
  return backend.port
}
