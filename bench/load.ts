import { Worker } from 'node:worker_threads'
import type { LoadJob, LoadResult } from './load-worker.js'

/** Runs a worker script of ours (beside this file) with `job` and resolves with its one answer. */
export async function inWorker<T> (script: string, job: unknown): Promise<T> {
  const worker = new Worker(new URL(script, import.meta.url), { workerData: job })
  try {
    return await new Promise<T>((resolve, reject) => {
      worker.once('message', resolve)
      worker.once('error', reject)
    })
  } finally {
    await worker.terminate()
  }
}

/** Runs a bounded load in a worker thread, so the client does not share the event loop it measures. */
export async function runLoad (job: LoadJob): Promise<LoadResult> {
  return await inWorker<LoadResult>('./load-worker.js', job)
}

/** The value at quantile `q` of ascending `sorted`; NaN when empty. */
export function percentile (sorted: ArrayLike<number>, q: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

/** A latency in ms for a table: ∞ for one never answered. */
export const ms = (n: number): string => !Number.isFinite(n) ? '∞' : n < 10 ? n.toFixed(2) : n.toFixed(1)

export function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}
