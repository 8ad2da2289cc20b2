import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import type { Test } from 'tap'

import { freePort } from '../../lib/dev/supervisord-daemon.js'

/** A port on 127.0.0.1 that nothing listens on right now (below the ephemeral range). */
export { freePort }

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
export async function startBackend (id: number, handler: BackendHandler = whoAmI, given = 0): Promise<Backend> {
  let port = given === 0 ? await freePort() : given
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
  // Not listen(0): an ephemeral port, once closed (a test stops a backend), may
  // be taken by an outgoing connection before the test listens on it again.
  for (let attempt = 1; ; attempt++) {
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve() })
      })
      break
    } catch (error) {
      if (given !== 0 || attempt === 5) throw error
      port = await freePort()
    }
  }
  backend.port = (server.address() as AddressInfo).port
  backend.address = `127.0.0.1:${backend.port}`
  return backend
}

/** A backend closed in the test's teardown. */
export async function backendFor (t: Test, handler: BackendHandler = whoAmI, id = 0): Promise<Backend> {
  const backend = await startBackend(id, handler)
  t.teardown(async () => await backend.close())
  return backend
}

/**
 * Backends 0..count-1, closed in the test's teardown: the ones in the array
 * then, so a test may replace one (e.g. restart it on the same port).
 */
export async function backendsFor (t: Test, count: number, handler?: BackendHandler): Promise<Backend[]> {
  const backends = await Promise.all(Array.from({ length: count }, async (_, id) => await startBackend(id, handler)))
  t.teardown(async () => { await Promise.all(backends.map(async b => await b.close())) })
  return backends
}

/**
 * Writes `count` copies of `chunk` to `res` as fast as the client takes them
 * (waiting for 'drain'), then ends it, unless `end` is false: the peer then
 * stalls. `written` is told of each chunk handed to the socket.
 */
export function writeChunks (res: http.ServerResponse, chunk: Buffer, count: number, options: { end?: boolean, written?: () => void } = {}): void {
  let sent = 0
  const more = (): void => {
    while (sent < count) {
      sent++
      options.written?.()
      if (!res.write(chunk)) {
        res.once('drain', more)
        return
      }
    }
    if (options.end !== false) res.end()
  }
  more()
}

export interface TcpServer {
  port: number
  /** Connections accepted so far. */
  connections: number
  /** Connections still open. */
  open: Set<net.Socket>
}

/**
 * A raw TCP server on 127.0.0.1, for what a real HTTP server will not do
 * (never answer, answer garbage, hang up); closed, with its sockets, in the
 * test's teardown.
 */
export async function tcpServer (t: Test, onConnection: (socket: net.Socket) => void): Promise<TcpServer> {
  const state: TcpServer = { port: 0, connections: 0, open: new Set() }
  const server = net.createServer(socket => {
    state.connections++
    state.open.add(socket)
    socket.on('close', () => state.open.delete(socket))
    socket.on('error', () => {})
    onConnection(socket)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  state.port = (server.address() as AddressInfo).port
  t.teardown(async () => {
    for (const socket of state.open) socket.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  return state
}

/** A TCP server that accepts connections and never answers (reads and drops what it is sent). */
export async function silentServer (t: Test): Promise<TcpServer> {
  return await tcpServer(t, socket => socket.resume())
}
