import Fastify, { type FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import registry from '../plugins/registry.js'
import type { ScaleEvent } from '../lib/events.js'
import supervisord from '../plugins/supervisord.js'
import proxy from '../plugins/proxy.js'
import scaler, { type ScaleOptions } from '../plugins/scaler.js'
import { skip, supervisordFor } from './helpers/supervisord.js'
import { sleep, until } from './helpers/wait.js'

async function scaledApp (t: Test, servers: string[], scale: ScaleOptions, supervisordOption: unknown = 'none'): Promise<{ app: FastifyInstance, decisions: ScaleEvent[] }> {
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { backend: { servers, supervisord: supervisordOption as string, inheritBackendStatus: true, scale } } })
  await app.register(supervisord, { pollInterval: 0 })
  await app.register(proxy, { upstream: 'backend', holdTimeout: 5000 })
  await app.register(scaler)
  const decisions: ScaleEvent[] = []
  app.upstreams.on('scale', event => decisions.push(event))
  t.teardown(() => app.close())
  return { app, decisions }
}

const running = (app: FastifyInstance): number => app.upstreams.get('backend').peers.filter(p => p.process === 'up').length

/** The decisions, short, for a failure message. */
const story = (decisions: ScaleEvent[]): string => decisions.map(d => `${d.action}${d.index} (${d.reason}, load ${d.load}, ${d.running} running)`).join('; ')

/** Bounded load: `concurrency` loops of GETs until `ms` passed; returns every status seen. */
async function load (app: FastifyInstance, concurrency: number, ms: number, pauseMs = 0): Promise<number[]> {
  const statuses: number[] = []
  const end = Date.now() + ms
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (Date.now() < end && statuses.length < 100_000) {
      statuses.push((await app.inject('/')).statusCode)
      if (pauseMs > 0) await sleep(pauseMs)
    }
  }))
  return statuses
}

t.test('bad scale options fail at registration naming the option', async t => {
  const cases: Array<[ScaleOptions, RegExp]> = [
    [{ minRunning: 3, maxRunning: 2 }, /upstream "backend": option "scale.minRunning" \(3\) must not exceed "scale.maxRunning" \(2\)/],
    [{ loadThreshold: 0 }, /option "scale.loadThreshold" must be a number greater than 0 .*got 0/],
    [{ loadThreshold: -5 }, /option "scale.loadThreshold"/],
    [{ minRunning: 4 }, /option "scale.minRunning" must be an integer from 0 to 3/],
    [{ window: 'soon' as never }, /option "scale.window" must be a number/],
    [{ treshold: 5 } as never, /unknown option "scale.treshold"/]
  ]
  for (const [scale, message] of cases) {
    const app = Fastify()
    await app.register(registry, { upstreams: { backend: { servers: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'], supervisord: 'none', scale } } })
    await app.register(supervisord)
    await t.rejects(async () => { await app.register(scaler) }, message)
    await app.close()
  }
  const app = Fastify()
  t.teardown(async () => await app.close())
  await app.register(registry, { upstreams: { backend: { servers: ['127.0.0.1:1'], supervisord: 'none', scale: {} } } })
  await app.register(supervisord)
  await t.rejects(async () => { await app.register(scaler, { windw: 5 } as never) },
    { code: 'FST_SUPERVISORD_OPTION', message: /scaler: unknown option "windw": the scaler plugin takes no options; scaling is set per upstream/ },
    'the plugin itself takes no options: a misplaced one is named')
})

t.test('the seed\'s rule without a daemon (none mode): minRunning holds when idle', async t => {
  const { app, decisions } = await scaledApp(t, ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'].map(a => ({ address: a, down: true }) as never), { minRunning: 1, window: 100, loadThreshold: 1e9 })
  await app.ready()
  t.ok(await until(() => running(app) === 1, 2000), 'minRunning brings one up')
  t.match(decisions[0], { action: 'start', index: 0, reason: 'min running', running: 0 })
  await sleep(600)
  t.equal(running(app), 1, 'idle for six windows, but never below minRunning')
  t.equal(decisions.length, 1, 'no decision while at the floor and idle')
})

t.test('real supervisord: load starts a second and third backend; when it stops, drained back to minRunning with no failed request', { skip }, async t => {
  const sv = await supervisordFor(t, { programs: [{ count: 3 }] })
  const servers = sv.programs.map((p, i) => ({ address: p.address, down: i > 0 }))
  await sv.client.startProcess('backend0')
  // A window long enough that a stall of the machine (no request starting while
  // all are in flight) does not read as an idle window: see the report on idle.
  const { app, decisions } = await scaledApp(t, servers as never, { minRunning: 1, window: 800, loadThreshold: 30 }, sv.option)
  await app.ready()
  t.equal(running(app), 1)

  const busy = await load(app, 8, 3500)
  t.ok(await until(() => running(app) === 3, 5000), `load brought all three up (${running(app)} running)`)
  const ups = decisions.filter(d => d.action === 'start')
  t.same(ups.map(d => d.index), [1, 2], `started peer 1 then peer 2: ${story(decisions)}`)
  t.ok(ups.every(d => d.reason === 'load' && d.load > 30 && d.threshold === 30), 'each start logged with its numbers')
  t.ok(busy.length > 100 && busy.every(s => s === 200), `no failed request under load (${busy.filter(s => s !== 200).length} of ${busy.length} failed)`)

  // a light load (well under 40% of the threshold) while the scaler stops two
  const light = load(app, 1, 2500, 100)
  t.ok(await until(() => running(app) === 1, 6000), `back down to minRunning (${running(app)} running)`)
  const statuses = await light
  const downs = decisions.filter(d => d.action === 'stop')
  t.same(downs.map(d => d.index), [2, 1], `highest index stopped first: ${story(decisions)}`)
  t.ok(statuses.length > 5 && statuses.every(s => s === 200), `no failed request during scale-down (${statuses.join(',')})`)
  t.equal(await sv.statename('backend2'), 'STOPPED')
  t.equal(await sv.statename('backend1'), 'STOPPED')
})

t.test('real supervisord: targetInFlight starts a peer within the panic window', { skip }, async t => {
  const sv = await supervisordFor(t, { programs: [{ count: 2, slowMs: 300 }] })
  await sv.client.startProcess('backend0')
  const servers = sv.programs.map((p, i) => ({ address: p.address, down: i > 0 }))
  const { app, decisions } = await scaledApp(t, servers as never, { minRunning: 1, window: 60_000, targetInFlight: 2, panicWindow: 1200 }, sv.option)
  await app.ready()
  const started = Date.now()
  const statuses = load(app, 8, 2500)
  t.ok(await until(() => decisions.length > 0, 1200 + 500), 'a decision within the panic window')
  t.match(decisions[0], { action: 'start', index: 1, reason: 'in-flight', threshold: 2 })
  t.ok(decisions[0].at - started <= 1200 + 300, `decided ${decisions[0].at - started} ms after the burst began`)
  t.ok(await until(() => running(app) === 2, 4000), 'the second backend runs')
  const seen = await statuses
  t.ok(seen.length > 0 && seen.every(s => s === 200), `every request of the burst answered 200 (${seen.length})`)
  t.notOk(decisions.some(d => d.action === 'stop'), 'no scale-down during the burst')
})

t.test('a request still in flight, or a peer still starting, is not an idle window', async t => {
  const { app, decisions } = await scaledApp(t, [{ address: '127.0.0.1:1' }, { address: '127.0.0.1:2', down: true }] as never, { window: 100, loadThreshold: 1e9 })
  await app.ready()
  const [serving, other] = app.upstreams.get('backend').peers
  serving.acquire()
  await sleep(550)
  t.same(decisions, [], 'five windows without a new request, but one in flight: nothing stopped')
  other.setProcess('starting')
  serving.release()
  await sleep(350)
  t.same(decisions, [], 'idle, but a start is under way: the serving peer stays')
  other.setProcess('down')
  t.ok(await until(() => decisions.length > 0, 1000))
  t.match(decisions[0], { action: 'stop', index: 0, reason: 'idle' }, 'then idle for real: stopped')
})
