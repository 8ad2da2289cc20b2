import { monitorEventLoopDelay } from 'node:perf_hooks'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import registry from '../plugins/registry.js'
import metrics from '../plugins/metrics.js'
import { ProxyObserver } from '../lib/proxy-observer.js'
import { Attempt, kExchange } from '../lib/proxy-attempt.js'
import type { Peer } from '../lib/peer.js'

const ANSWERS = 500_000
const SCRAPES = 50

/**
 * What operating the proxy costs a request, measured on its own: the
 * proxy's onSend observer as it runs for every answer (the answer counted
 * on the upstream, the peer's response by class and its response time in
 * the model's buckets, retries of a retried request), in ns per answer;
 * and what one scrape of /metrics costs at 10, 100 and 1000 peers. Set
 * against the proxy's own CPU per request (`npm run bench -- peers`, about
 * 90–120 µs on the development VM), the per-answer figure is its share.
 */
export async function run (): Promise<void> {
  console.log(`\nMetrics cost: ns per proxied answer (${ANSWERS} answers), ms per scrape (${SCRAPES} scrapes); target ≤ 3% of the proxy's CPU per request`)
  for (const n of [10, 100, 1000]) {
    const app = Fastify({ logger: false })
    const servers = Array.from({ length: n }, (_, i) => `127.0.0.1:${10000 + i}`)
    await app.register(registry, { upstreams: { backend: { servers } } })
    await app.register(metrics)
    await app.ready()
    const upstream = app.upstreams.get('backend')
    const observer = new ProxyObserver(app, upstream)
    // An answered attempt as the observer reads it (its fields only: nothing is sent).
    const answered = (peer: Peer): Attempt => Object.assign(Object.create(Attempt.prototype) as Attempt, { answered: true, abandoned: null, startedAt: performance.now(), peer })
    const exchanges = upstream.peers.slice(0, 16).map((peer: Peer, i) => ({
      site: { upstream },
      attempt: answered(peer),
      tried: i === 0 ? [upstream.peers[n - 1]] : null
    }))
    const requests = exchanges.map(exchange => ({ [kExchange]: exchange }) as unknown as FastifyRequest)
    const reply = { statusCode: 200, log: app.log } as unknown as FastifyReply
    const done = (): void => {}
    const answer = (count: number): number => {
      const t0 = process.hrtime.bigint()
      for (let i = 0; i < count; i++) observer.onSend.call(app, requests[i % requests.length], reply, null, done)
      return Number(process.hrtime.bigint() - t0) / count
    }
    answer(ANSWERS / 5)
    const perAnswer = answer(ANSWERS)
    await app.inject('/metrics')
    // The longest the event loop was held at once during the scrapes: what a request arriving then waits.
    const stalls = monitorEventLoopDelay({ resolution: 1 })
    stalls.enable()
    const t0 = process.hrtime.bigint()
    let bytes = 0
    for (let i = 0; i < SCRAPES; i++) bytes = (await app.inject('/metrics')).body.length
    const perScrape = Number(process.hrtime.bigint() - t0) / SCRAPES / 1e6
    stalls.disable()
    console.log(`  ${String(n).padStart(4)} peers: ${perAnswer.toFixed(0).padStart(5)} ns per answer, ${perScrape.toFixed(2).padStart(7)} ms per scrape (${Math.round(bytes / 1024)} KiB), ` +
      `event loop held at most ${(stalls.max / 1e6).toFixed(1)} ms at once`)
    observer.close()
    await app.close()
  }
}
