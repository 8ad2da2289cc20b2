import type { FastifyRequest } from 'fastify'
import { Registry } from '../lib/registry.js'
import type { Peer } from '../lib/peer.js'
import type { UpstreamOptions } from '../lib/upstream.js'

const PICKS = 200_000

/**
 * Nanoseconds per pick for each balancer at 10, 100 and 1000 peers, with the
 * per-request bookkeeping the proxy does around it (acquire and release,
 * which keep the fair balancer's heap current).
 */
export async function run (): Promise<void> {
  const requests = Array.from({ length: 1024 }, (_, i) => ({
    ip: `10.${i & 255}.${i >> 8}.1`,
    url: `/item/${i}`,
    headers: {}
  })) as unknown as FastifyRequest[]
  const rows: Array<[string, Omit<UpstreamOptions, 'servers'>]> = [
    ['round-robin', { balancer: 'round-robin' }],
    ['fair', { balancer: 'fair' }],
    ['ip-hash', { balancer: 'ip-hash' }],
    ['hash', { balancer: 'hash' }],
    ['hash modulo', { balancer: 'hash', hashConsistent: false }]
  ]
  console.log(`\nBalancer cost: ns per pick (+ acquire/release), ${PICKS} picks, target < 1000 ns at 1000 peers`)
  console.log('balancer'.padEnd(14) + ['10', '100', '1000'].map(n => `${n} peers`.padStart(12)).join(''))
  for (const [name, options] of rows) {
    const cells: string[] = []
    for (const n of [10, 100, 1000]) {
      const servers = Array.from({ length: n }, (_, i) => `127.0.0.1:${10000 + i}`)
      const upstream = new Registry({ upstreams: { u: { servers, ...options } } }).get('u')
      const inFlight: Peer[] = []
      const measure = (count: number): number => {
        const t0 = process.hrtime.bigint()
        for (let i = 0; i < count; i++) {
          const peer = upstream.pick(requests[i & 1023]) as Peer
          peer.acquire()
          inFlight.push(peer)
          // keep about 16 requests in flight, as a loaded proxy would
          if (inFlight.length > 16) (inFlight.shift() as Peer).release()
        }
        return Number(process.hrtime.bigint() - t0) / count
      }
      measure(PICKS / 4)
      cells.push(measure(PICKS).toFixed(0).padStart(12))
    }
    console.log(name.padEnd(14) + cells.join(''))
  }
}
