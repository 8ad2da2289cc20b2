import { fork, type ChildProcess } from 'node:child_process'
import http from 'node:http'
import type { AddressInfo } from 'node:net'

/**
 * Backends live in a child process of their own, so the proxy under test
 * does not share its event loop with them.
 */
export async function startBackendProcess (count: number, kind: 'http' | 'ws' = 'http'): Promise<{ ports: number[], child: ChildProcess }> {
  const child = fork(new URL(import.meta.url), [kind === 'ws' ? 'serve-ws' : 'serve', String(count)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const ports = await new Promise<number[]>((resolve, reject) => {
    child.once('message', message => resolve(message as number[]))
    child.once('exit', code => reject(new Error(`backends exited with ${code}`)))
  })
  return { ports, child }
}

async function serve (count: number): Promise<void> {
  const ports: number[] = []
  for (let id = 0; id < count; id++) {
    const body = JSON.stringify({ backend: id })
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
      res.end(body)
    })
    server.keepAliveTimeout = 60_000
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    ports.push((server.address() as AddressInfo).port)
  }
  process.send?.(ports)
  process.on('disconnect', () => process.exit(0))
}

/** WebSocket echo servers, one per port. */
async function serveWebSockets (count: number): Promise<void> {
  const { WebSocketServer } = await import('ws')
  const ports: number[] = []
  for (let id = 0; id < count; id++) {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
    await new Promise(resolve => wss.once('listening', resolve))
    wss.on('connection', socket => socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary })))
    ports.push((wss.address() as AddressInfo).port)
  }
  process.send?.(ports)
  process.on('disconnect', () => process.exit(0))
}

if (process.argv[2] === 'serve' || process.argv[2] === 'serve-ws') {
  (process.argv[2] === 'serve' ? serve : serveWebSockets)(Number(process.argv[3])).catch(error => {
    console.error(error)
    process.exit(1)
  })
}
