import { fileURLToPath, pathToFileURL } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { Pool } from 'undici'
import { percentile } from './load.js'

/**
 * Requests start at a fixed rate whatever the answers do: request i is due
 * at start + i / rate, and its latency is counted from then, so a stall of
 * the system under test shows in every request it delayed (no coordinated
 * omission). At most `maxOutstanding` are in flight; one due beyond that is
 * dropped, and counted.
 */
export interface OpenLoopJob {
  url: string
  rate: number
  /** Seconds measured, after `warmupSeconds` at the same rate that are not. */
  seconds: number
  warmupSeconds: number
  connections: number
  maxOutstanding: number
  graceMs: number
}

export interface OpenLoopResult {
  /** Requests due over the run. */
  scheduled: number
  /** Answered with a 2xx. */
  completed: number
  /** Answered otherwise, or failed. */
  failed: number
  /** Due while `maxOutstanding` were in flight, never sent. */
  dropped: number
  /** Still unanswered `graceMs` after the last was due. */
  unfinished: number
  /** Answered per second. */
  rate: number
  /** ms from the due time to the answer; requests lost (failed, dropped, unfinished) count as never answered (Infinity). */
  p50: number
  p99: number
  max: number
  /** ms from the due time to the send, p99: the generator's own delay, part of the latencies above. */
  sendLagP99: number
  /** CPU µs the generator spent per request sent (what it takes from the machine beside the system under test). */
  generatorUsPerRequest: number
}

async function openLoop (job: OpenLoopJob): Promise<OpenLoopResult> {
  const url = new URL(job.url)
  const pool = new Pool(url.origin, { connections: job.connections, pipelining: 1 })
  // requests 0 .. warm-1 warm the generator, its connections and the system up; the rest are measured
  const warm = Math.round(job.rate * job.warmupSeconds)
  const measured = Math.max(1, Math.round(job.rate * job.seconds))
  const total = warm + measured
  const gap = 1000 / job.rate
  const latencies = new Float64Array(measured).fill(Infinity)
  const lags = new Float64Array(measured)
  let next = 0
  let sent = 0
  let outstanding = 0
  let completed = 0
  let failed = 0
  let dropped = 0
  let idle: (() => void) | undefined
  const send = (i: number, due: number): void => {
    outstanding++
    const counted = i >= warm
    if (counted) lags[sent++] = performance.now() - due
    pool.request({ path: url.pathname + url.search, method: 'GET' }).then(async res => {
      await res.body.dump()
      if (!counted) return
      if (res.statusCode >= 200 && res.statusCode < 300) {
        completed++
        latencies[i - warm] = performance.now() - due
      } else {
        failed++
      }
    }, () => { if (counted) failed++ }).finally(() => {
      if (--outstanding === 0) idle?.()
    })
  }
  const cpu = process.cpuUsage()
  const start = performance.now() + 20
  await new Promise<void>(resolve => {
    const tick = (): void => {
      const due = Math.min(total, Math.floor((performance.now() - start) / gap) + 1)
      for (; next < due; next++) {
        if (outstanding >= job.maxOutstanding) {
          if (next >= warm) dropped++
        } else send(next, start + next * gap)
      }
      if (next >= total) resolve()
      else setTimeout(tick, Math.max(0, start + next * gap - performance.now()))
    }
    setTimeout(tick, 20)
  })
  if (outstanding > 0) await Promise.race([new Promise<void>(resolve => { idle = resolve }), sleep(job.graceMs)])
  const unfinished = outstanding
  const counted = { completed, failed }
  const used = process.cpuUsage(cpu)
  await pool.destroy()
  latencies.sort()
  const sentLags = lags.subarray(0, sent).sort()
  return {
    scheduled: measured,
    ...counted,
    dropped,
    unfinished,
    rate: counted.completed / job.seconds,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    max: latencies[measured - 1],
    sendLagP99: percentile(sentLags, 0.99),
    generatorUsPerRequest: (used.user + used.system) / (warm + sent)
  }
}

/** The generator's script, run by Children.answer with the job as its one argument. */
export const OPEN_LOOP_SCRIPT = fileURLToPath(import.meta.url)

/** How long a job may take, all bounds included. */
export const openLoopBound = (job: OpenLoopJob): number => (job.warmupSeconds + job.seconds) * 1000 + job.graceMs + 10_000

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  openLoop(JSON.parse(process.argv[2]) as OpenLoopJob).then(result => {
    process.send?.(result, () => process.disconnect())
  }, error => {
    console.error(error)
    process.exit(1)
  })
}
