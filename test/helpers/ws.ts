import http from 'node:http'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { createRequire } from 'node:module'
import type { Test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { exited } from '../../lib/dev/supervisord-daemon.js'

export interface WsBackend {
  id: number
  port: number
  address: string
  /** Sessions opened on it so far. */
  connections: number
  /** Sessions open now. */
  open: Set<WebSocket>
  /** The handshake requests it was sent. */
  requests: http.IncomingMessage[]
  wss: WebSocketServer
  server: http.Server
  close (): Promise<void>
}

/**
 * A real WebSocket backend on 127.0.0.1: it greets each session with
 * `{"backend":id,"url":...}` and echoes what it is sent, unless `onSession`
 * takes the session. Closed, with its sessions, in the test's teardown.
 */
export async function wsBackendFor (t: Test, id = 0, onSession?: (socket: WebSocket, request: http.IncomingMessage, backend: WsBackend) => void,
  serverOptions: ConstructorParameters<typeof WebSocketServer>[0] = {}): Promise<WsBackend> {
  const server = http.createServer((_req, res) => { res.statusCode = 426; res.end('websocket only') })
  const wss = new WebSocketServer({ server, ...serverOptions })
  const backend: WsBackend = {
    id,
    port: 0,
    address: '',
    connections: 0,
    open: new Set(),
    requests: [],
    wss,
    server,
    close: async () => {
      for (const socket of backend.open) socket.terminate()
      wss.close()
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
  wss.on('connection', (socket, request) => {
    backend.connections++
    backend.requests.push(request)
    backend.open.add(socket)
    socket.on('close', () => backend.open.delete(socket))
    socket.on('error', () => {})
    if (onSession !== undefined) {
      onSession(socket, request, backend)
      return
    }
    socket.send(JSON.stringify({ backend: id, url: request.url }))
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }))
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  backend.port = (server.address() as AddressInfo).port
  backend.address = `127.0.0.1:${backend.port}`
  t.teardown(async () => await backend.close())
  return backend
}

/** A client session, open, its messages kept in order; terminated in the teardown. */
export interface WsClient {
  socket: WebSocket
  messages: string[]
  /** Resolves with the close code and reason. */
  closed: Promise<{ code: number, reason: string }>
  /** The next message not read yet by next(). */
  next (): Promise<string>
}

export async function wsClient (t: Test, url: string, protocols: string[] = [], options: WebSocket.ClientOptions = {}): Promise<WsClient> {
  const socket = new WebSocket(url, protocols, options)
  t.teardown(() => socket.terminate())
  const messages: string[] = []
  const waiting: Array<(message: string) => void> = []
  let read = 0
  socket.on('message', data => {
    messages.push(String(data))
    waiting.shift()?.(messages[read++])
  })
  const closed = new Promise<{ code: number, reason: string }>(resolve => socket.once('close', (code, reason) => resolve({ code, reason: String(reason) })))
  await once(socket, 'open')
  return {
    socket,
    messages,
    closed,
    next: async () => read < messages.length ? messages[read++] : await new Promise<string>(resolve => waiting.push(resolve))
  }
}

/** What a handshake the gateway refused was answered (status, body), or `open` if it was not refused. */
export async function handshake (url: string, options: WebSocket.ClientOptions = {}): Promise<{ status: number, body: string } | 'open'> {
  const socket = new WebSocket(url, options)
  socket.on('error', () => {})
  return await new Promise(resolve => {
    socket.once('open', () => {
      socket.terminate()
      resolve('open')
    })
    socket.once('unexpected-response', (_req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', chunk => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
  })
}

const wsModule = createRequire(import.meta.url).resolve('ws')

export interface WsProcess {
  child: ChildProcess
  port: number
  address: string
}

/**
 * A WebSocket echo backend in a process of its own (so that it can be
 * killed with SIGKILL mid-session); stopped by its pid in the teardown.
 */
export async function wsBackendProcess (t: Test, id: number): Promise<WsProcess> {
  const script = `
    const { WebSocketServer } = require(${JSON.stringify(wsModule)})
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 }, () => process.stdout.write(String(wss.address().port) + '\\n'))
    wss.on('connection', socket => {
      socket.send(JSON.stringify({ backend: ${id} }))
      socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }))
    })`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited(child, 5000)
    }
  })
  const [line] = await once(child.stdout as NodeJS.ReadableStream, 'data') as [Buffer]
  const port = Number(String(line).trim())
  return { child, port, address: `127.0.0.1:${port}` }
}
