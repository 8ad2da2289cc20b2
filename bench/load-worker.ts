import { parentPort, workerData } from 'node:worker_threads'
import { Pool } from 'undici'
import { percentile } from './load.js'

/** What the main thread asks: hit `url` with `connections` concurrent loops for `ms` (warm-up not counted). */
export interface LoadJob {
  url: string
  connections: number
  warmupMs: number
  ms: number
  maxRequests: number
  /** Host headers sent in turn, one per request (default: the URL's). */
  hosts?: string[]
}
export interface LoadResult { requests: number, errors: number, rps: number, p50: number, p99: number }

async function load (job: LoadJob): Promise<LoadResult> {
  const url = new URL(job.url)
  const pool = new Pool(url.origin, { connections: job.connections, pipelining: 1 })
  const latencies: number[] = []
  let errors = 0
  let sent = 0
  const start = performance.now()
  const measureFrom = start + job.warmupMs
  const end = measureFrom + job.ms
  async function loop (): Promise<void> {
    while (performance.now() < end && sent < job.maxRequests) {
      sent++
      const t0 = performance.now()
      try {
        const hosts = job.hosts
        const res = await pool.request({ path: url.pathname, method: 'GET', headers: hosts === undefined ? undefined : { host: hosts[sent % hosts.length] } })
        await res.body.dump()
        if (res.statusCode !== 200) errors++
      } catch {
        errors++
      }
      if (t0 >= measureFrom) latencies.push(performance.now() - t0)
    }
  }
  await Promise.all(Array.from({ length: job.connections }, loop))
  await pool.close()
  latencies.sort((a, b) => a - b)
  return { requests: latencies.length, errors, rps: latencies.length / (job.ms / 1000), p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) }
}

if (parentPort !== null) {
  const port = parentPort
  load(workerData as LoadJob).then(result => port.postMessage(result), error => { throw error })
}
