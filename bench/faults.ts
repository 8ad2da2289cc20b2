import { Worker } from 'node:worker_threads'
import Fastify from 'fastify'
import registry from '../plugins/registry.js'
import health from '../plugins/health.js'
import proxy from '../plugins/proxy.js'
import { spawnBackend, type BackendProcess } from '../lib/dev/backend-process.js'
import type { FaultLoadJob, FaultLoadResult } from './fault-load-worker.js'

const CLIENTS = 20
const BACKENDS = 3
const RUN_MS = 5000
const FAULT_AT_MS = 1000
const CHECK = { interval: 500, timeout: 500, rise: 1, fall: 1 }
const HEADERS_TIMEOUT = 10_000
/** When the checks can have seen a hung peer: one interval, then a check that times out. */
const DETECTION_MS = CHECK.interval + CHECK.timeout

interface Outcome {
  result: FaultLoadResult
  /** POST ids processed by more than one backend, or twice by one. */
  duplicates: number
  /** Failed POSTs that the faulty backend had processed (read in full) before it died or hung. */
  failedButProcessed: number
  /** The longest time a GET (a POST) took among those in flight at the fault or started after it. */
  longestGet: number
  longestPost: number
}

async function faultRun (signal: 'SIGKILL' | 'SIGSTOP'): Promise<Outcome> {
  const backends: BackendProcess[] = await Promise.all(Array.from({ length: BACKENDS }, async (_, id) => await spawnBackend(id)))
  const app = Fastify({ logger: false })
  try {
    await app.register(registry, { upstreams: { backend: { servers: backends.map(b => b.address), healthCheck: CHECK } } })
    await app.register(health)
    await app.register(proxy, { upstream: 'backend', headersTimeout: HEADERS_TIMEOUT, disableRequestLogging: true })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const job: FaultLoadJob = { url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}/`, clients: CLIENTS, ms: RUN_MS, maxRequests: 500_000 }
    const worker = new Worker(new URL('./fault-load-worker.js', import.meta.url), { workerData: job })
    const done = new Promise<FaultLoadResult>((resolve, reject) => {
      worker.once('message', resolve)
      worker.once('error', reject)
    })
    await new Promise(resolve => setTimeout(resolve, FAULT_AT_MS))
    const faultAt = Date.now()
    backends[1].child.kill(signal)
    const result = await done
    await worker.terminate()
    const seen = new Map<string, number>()
    for (const backend of backends) for (const id of backend.posts) seen.set(id, (seen.get(id) ?? 0) + 1)
    const duplicates = [...seen.values()].filter(count => count > 1).length
    const processedByFaulty = new Set(backends[1].posts)
    const failedButProcessed = result.failedPostIds.filter(id => processedByFaulty.has(id)).length
    const after = result.timings.filter(([start, ms]) => start + ms >= faultAt)
    const longest = (post: boolean): number => Math.max(0, ...after.filter(timing => timing[2] === post).map(([, ms]) => ms))
    return { result, duplicates, failedButProcessed, longestGet: longest(false), longestPost: longest(true) }
  } finally {
    await app.close()
    await Promise.all(backends.map(async backend => await backend.stop()))
  }
}

/**
 * Faults under bounded load: 20 clients alternating GET and POST, round-robin
 * over 3 backend processes, active checks every 500 ms (timeout 500 ms). One
 * backend is SIGKILLed, then (in a fresh run) SIGSTOPped, one second in.
 * Printed beside the goals of the fault model. A POST the hung peer already
 * has cannot be sent elsewhere: it waits for headersTimeout (10 s here).
 */
export async function run (): Promise<void> {
  const killed = await faultRun('SIGKILL')
  const stopped = await faultRun('SIGSTOP')
  const line = (name: string, value: string, goal: string, label = 'goal'): string => name.padEnd(48) + value.padStart(10) + `   ${label} ${goal}`
  console.log(`\nFaults: ${CLIENTS} clients for ${RUN_MS / 1000} s, round-robin over ${BACKENDS} backend processes, checks every ${CHECK.interval} ms`)
  const k = killed.result
  console.log(`SIGKILL of one backend (${k.gets} GETs, ${k.posts} POSTs)`)
  console.log(line('  failed GETs', String(k.failedGets), '0'))
  console.log(line('  failed POSTs', String(k.failedPosts), '0; those the peer had when it died cannot be sent again'))
  console.log(line('    of them, processed by the killed backend', String(killed.failedButProcessed), 'sent again, these would have run twice', 'note:'))
  console.log(line('  POSTs processed twice', String(killed.duplicates), '0'))
  const s = stopped.result
  console.log(`SIGSTOP of one backend (${s.gets} GETs, ${s.posts} POSTs)`)
  console.log(line('  longest GET stall', `${stopped.longestGet} ms`, `<= ${DETECTION_MS + 1000} ms (detection ${DETECTION_MS} ms + 1 s)`))
  console.log(line('  longest POST stall', `${stopped.longestPost} ms`, `a POST the hung peer has waits for headersTimeout (${HEADERS_TIMEOUT} ms)`, 'note:'))
  console.log(line('  failed GETs', String(s.failedGets), '0'))
  console.log(line('  failed POSTs (504 after headersTimeout)', String(s.failedPosts), 'the POSTs the hung peer had', 'note:'))
  console.log(line('  POSTs processed twice', String(stopped.duplicates), '0'))
}
