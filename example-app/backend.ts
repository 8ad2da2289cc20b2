import http from 'node:http'
import { pathToFileURL } from 'node:url'

/**
 * The example's backend: answers every request with which backend it is
 * (`{"backend":0}`), so balancing can be watched, and `/healthz` for checks.
 * Run by supervisord as a program, or started in-process without it.
 */
export async function startExampleBackend (id: number, port: number, host = '127.0.0.1'): Promise<http.Server> {
  const body = JSON.stringify({ backend: id })
  const server = http.createServer((req, res) => {
    if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.end('ok')
      return
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, resolve)
  })
  return server
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [id, port] = process.argv.slice(2).map(Number)
  const server = await startExampleBackend(id, port)
  const stop = (): void => { server.close(() => process.exit(0)); server.closeAllConnections() }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
}
