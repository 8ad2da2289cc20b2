import type http from 'node:http'
import Fastify, { type FastifyHttpOptions, type FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import { Agent, request } from 'undici'
import registry, { type RegistryOptions } from '../../plugins/registry.js'
import proxy, { type ProxyOptions } from '../../plugins/proxy.js'
import type { ServerOptions, Upstream } from '../../lib/upstream.js'

/** Fastify logger options that keep each log line, parsed, in `lines`. */
export function loggerInto<T = Record<string, unknown>> (lines: T[], level = 'info'): { level: string, stream: { write: (line: string) => void } } {
  return { level, stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } }
}

/** A gateway with the registry and one proxy, not yet listening. */
export async function gateway (upstreams: RegistryOptions['upstreams'], proxyOptions: Partial<ProxyOptions> = {}, serverOptions: FastifyHttpOptions<http.Server> = {}): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, trustProxy: true, ...serverOptions })
  await app.register(registry, { upstreams })
  const first = Array.isArray(upstreams) ? upstreams[0].name : Object.keys(upstreams)[0]
  await app.register(proxy, { upstream: first, ...proxyOptions })
  return app
}

/** GETs `path` n times in sequence and returns which backend answered each. */
export async function backendsOf (app: FastifyInstance, n: number, path = '/', headers: Record<string, string> = {}): Promise<number[]> {
  const seen: number[] = []
  for (let i = 0; i < n; i++) {
    const res = await app.inject({ method: 'GET', url: path, headers })
    seen.push(res.statusCode === 200 ? Number(res.headers['x-backend']) : -res.statusCode)
  }
  return seen
}

export function countOf (values: number[]): Map<number, number> {
  const counts = new Map<number, number>()
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1)
  return counts
}

/** Starts the gateway on 127.0.0.1 and returns its base URL. */
export async function listening (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  return `http://127.0.0.1:${port}`
}

/**
 * An HTTP client of the test's own, destroyed in the teardown. Make it after
 * the gateway's teardown is registered, so that it goes first: after an
 * abort undici opens a spare connection, which a closing server would wait
 * on until undici's keep-alive timeout (4 s).
 */
export function clientFor (t: Test): Agent {
  const dispatcher = new Agent()
  t.teardown(async () => await dispatcher.destroy())
  return dispatcher
}

export interface LoadResult {
  /** Every answer's status, in the order they came (-1: the request failed). */
  statuses: number[]
  /** Retry-After of each 503 answer. */
  retryAfter: Array<string | undefined>
}

/**
 * Bounded load: `clients` loops of GETs on `base` for `ms` (at most
 * `max` requests in all), each waiting for its answer before the next.
 */
export async function loadFor (base: string, dispatcher: Agent, clients: number, ms: number, max = 100_000): Promise<LoadResult> {
  const result: LoadResult = { statuses: [], retryAfter: [] }
  const end = Date.now() + ms
  await Promise.all(Array.from({ length: clients }, async () => {
    while (Date.now() < end && result.statuses.length < max) {
      try {
        const res = await request(base, { dispatcher })
        await res.body.text()
        result.statuses.push(res.statusCode)
        if (res.statusCode === 503) result.retryAfter.push(res.headers['retry-after'] as string | undefined)
      } catch {
        result.statuses.push(-1)
      }
    }
  }))
  return result
}

export interface OnDemandGateway {
  app: FastifyInstance
  /** Upstream `b`, whose peers the test starts: it calls `startOnDemand()` and answers `demand` events. */
  upstream: Upstream
  base: string
  /** `demand` events so far. */
  demands: () => number
}

/**
 * A gateway over upstream `b` whose peers start on demand, with the test as
 * the starter; listening, as in production (the hold timers are unref()ed:
 * the server is what keeps the process alive); closed in the teardown.
 */
export async function onDemandGateway (t: Test, servers: Array<string | ServerOptions>, proxyOptions: Partial<ProxyOptions> = {}): Promise<OnDemandGateway> {
  const app = await gateway({ b: { servers } }, proxyOptions)
  const base = await listening(app)
  t.teardown(() => app.close())
  const upstream = app.upstreams.get('b')
  upstream.startOnDemand()
  let demands = 0
  app.upstreams.on('demand', () => demands++)
  return { app, upstream, base, demands: () => demands }
}
