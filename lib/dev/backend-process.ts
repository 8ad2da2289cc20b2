import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { exited } from './supervisord-daemon.js'

// A real HTTP backend in a process of its own, for the faults only a process
// has: SIGSTOP (hung), SIGKILL (gone mid-request). Used by the tests and the
// fault bench.

const SCRIPT = `
import http from 'node:http'
const [id, port] = process.argv.slice(1).map(Number)
const server = http.createServer((req, res) => {
  const ms = Number(new URL(req.url, 'http://x').searchParams.get('ms') ?? 0)
  let bytes = 0
  req.on('data', chunk => { bytes += chunk.length })
  req.on('end', () => {
    // On stdout, synchronous on a pipe: what was written survives a SIGKILL.
    if (req.method === 'POST') process.stdout.write('post ' + (req.headers['x-post-id'] ?? '') + '\\n')
    setTimeout(() => {
      const body = JSON.stringify({ backend: id, bytes })
      res.writeHead(200, { 'content-type': 'application/json', 'x-backend': String(id), 'content-length': Buffer.byteLength(body) })
      res.end(body)
    }, ms)
  })
})
server.keepAliveTimeout = 60000
server.listen(port, '127.0.0.1', () => process.stdout.write('listening ' + server.address().port + '\\n'))
// Never outlive a crashed run by much.
setTimeout(() => process.exit(0), 300000).unref()
`

export interface BackendProcess {
  id: number
  port: number
  /** `127.0.0.1:port` */
  address: string
  pid: number
  child: ChildProcess
  /** The x-post-id of every POST it processed (read its body in full), in order. */
  posts: string[]
  /** Ends the process (SIGCONT first, in case it was stopped; then SIGKILL) and waits for its exit. */
  stop: () => Promise<void>
}

/**
 * Starts a backend process on 127.0.0.1 (`port` 0: any free port). It
 * answers `{"backend": id, "bytes": n}` after `?ms=` milliseconds.
 */
export async function spawnBackend (id: number, port = 0): Promise<BackendProcess> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', SCRIPT, String(id), String(port)], { stdio: ['ignore', 'pipe', 'inherit'] })
  const posts: string[] = []
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const listening = await new Promise<number>((resolve, reject) => {
    child.once('exit', code => reject(new Error(`backend ${id} exited with ${code} before it listened`)))
    lines.on('line', line => {
      if (line.startsWith('post ')) posts.push(line.slice(5))
      else if (line.startsWith('listening ')) resolve(Number(line.slice(10)))
    })
  })
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGCONT')
    child.kill('SIGKILL')
    await exited(child, 5000)
  }
  return { id, port: listening, address: `127.0.0.1:${listening}`, pid: child.pid as number, child, posts, stop }
}
