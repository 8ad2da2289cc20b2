import { parentPort, workerData } from 'node:worker_threads'
import { Agent, request } from 'undici'

/** What the main thread asks: `clients` loops, alternating GET and POST, for `ms` (and at most `maxRequests`). */
export interface FaultLoadJob { url: string, clients: number, ms: number, maxRequests: number }

export interface FaultLoadResult {
  gets: number
  posts: number
  failedGets: number
  failedPosts: number
  /** Epoch ms a request started, how long it took, and whether it was a POST, for every request. */
  timings: Array<[start: number, ms: number, post: boolean]>
  /** Ids of the POSTs answered 200, and of those that were not. */
  answeredPosts: string[]
  failedPostIds: string[]
}

async function load (job: FaultLoadJob): Promise<FaultLoadResult> {
  // A client that waits as long as it takes: the stall is what is measured.
  const dispatcher = new Agent({ headersTimeout: 120_000, bodyTimeout: 120_000 })
  const result: FaultLoadResult = { gets: 0, posts: 0, failedGets: 0, failedPosts: 0, timings: [], answeredPosts: [], failedPostIds: [] }
  const end = Date.now() + job.ms
  let sent = 0
  async function loop (client: number): Promise<void> {
    for (let i = 0; Date.now() < end && sent < job.maxRequests; i++) {
      sent++
      const post = i % 2 === 1
      const id = `${client}-${i}`
      const started = Date.now()
      let ok = false
      try {
        const res = await request(`${job.url}?ms=5`, post
          ? { dispatcher, method: 'POST', body: `post ${id}`, headers: { 'x-post-id': id } }
          : { dispatcher })
        await res.body.dump()
        ok = res.statusCode === 200
      } catch {}
      result.timings.push([started, Date.now() - started, post])
      if (post) {
        result.posts++
        if (ok) {
          result.answeredPosts.push(id)
        } else {
          result.failedPosts++
          result.failedPostIds.push(id)
        }
      } else {
        result.gets++
        if (!ok) result.failedGets++
      }
    }
  }
  await Promise.all(Array.from({ length: job.clients }, async (_, client) => await loop(client)))
  await dispatcher.close()
  return result
}

if (parentPort !== null) {
  const port = parentPort
  load(workerData as FaultLoadJob).then(result => port.postMessage(result), error => { throw error })
}
