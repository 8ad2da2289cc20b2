import { parentPort, workerData } from 'node:worker_threads'
import WebSocket from 'ws'
import { percentile } from './load.js'

/** `sessions` WebSockets to `url`, each sending a message and waiting for its echo, for `ms` after `warmupMs`. */
export interface WsLoadJob { url: string, sessions: number, warmupMs: number, ms: number, size: number, maxMessages: number }
export interface WsLoadResult { messages: number, errors: number, perSecond: number, p50: number, p99: number }

async function load (job: WsLoadJob): Promise<WsLoadResult> {
  const payload = Buffer.alloc(job.size, 'm')
  const latencies: number[] = []
  let errors = 0
  let sent = 0
  const start = performance.now()
  const measureFrom = start + job.warmupMs
  const end = measureFrom + job.ms
  async function session (): Promise<void> {
    const socket = new WebSocket(job.url, { perMessageDeflate: false })
    socket.on('error', () => { errors++ })
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve())
      socket.once('close', () => reject(new Error('closed before open')))
    })
    while (performance.now() < end && sent < job.maxMessages && socket.readyState === WebSocket.OPEN) {
      sent++
      const t0 = performance.now()
      await new Promise<void>(resolve => {
        socket.once('message', () => resolve())
        socket.send(payload)
      })
      if (t0 >= measureFrom) latencies.push(performance.now() - t0)
    }
    socket.close()
  }
  await Promise.all(Array.from({ length: job.sessions }, async () => await session().catch(() => { errors++ })))
  latencies.sort((a, b) => a - b)
  return { messages: latencies.length, errors, perSecond: latencies.length / (job.ms / 1000), p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) }
}

if (parentPort !== null) {
  const port = parentPort
  load(workerData as WsLoadJob).then(result => port.postMessage(result), error => { throw error })
}
