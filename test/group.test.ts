import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import registry from '../plugins/registry.js'
import supervisord from '../plugins/supervisord.js'
import healthCheck from '../plugins/health.js'
import scaler from '../plugins/scaler.js'
import proxy from '../plugins/proxy.js'
import statusPage from '../routes/status-page.js'
import metrics from '../plugins/metrics.js'
import { createClock } from '@sinonjs/fake-timers'
import { scalerOnFakeClock } from './helpers/clock.js'
import { scrape } from './helpers/metrics.js'
import { Registry, type RegistryOptions } from '../lib/registry.js'
import { MemoryBackend, MemoryStore } from '../lib/store/memory-store.js'
import { RedisStore } from '../lib/store/redis-store.js'
import type { StoreEvents } from '../lib/store/types.js'
import type { PeerChange } from '../lib/peer.js'
import type { ScaleEvent } from '../lib/events.js'
import type { GroupStatus } from '../lib/status/types.js'
import { leaseNames } from '../lib/group.js'
import { statusSnapshot } from '../lib/status/snapshot.js'
import { backendFor, freePort, type Backend } from './helpers/backends.js'
import { loggerInto } from './helpers/gateway.js'
import { rpcCounter, skip as supervisordSkip, supervisordFor, type LogLine } from './helpers/supervisord.js'
import { sleep, until } from './helpers/wait.js'

// Gateways of a group in one process: each a Fastify instance with a store of
// its own on one MemoryBackend, as RedisStores on one Redis. What only real
// processes can show (SIGKILL, a Redis stopped) is in group-processes.test.ts.

const UPSTREAM = (backends: Backend[]): RegistryOptions['upstreams'] => ({ backend: { servers: backends.map(b => b.address) } })

interface Member { app: FastifyInstance, logs: LogLine[], changes: PeerChange[] }

type Plugins = (app: FastifyInstance) => Promise<void>

/** One gateway of the group on `backend`, ready; closed in the teardown. */
async function member (t: Test, backend: MemoryBackend | undefined, id: string, upstreams: RegistryOptions['upstreams'],
  plugins: Plugins = async () => {}, extra: Partial<RegistryOptions> = {}): Promise<Member> {
  const logs: LogLine[] = []
  const app = Fastify({ logger: loggerInto(logs, 'info') })
  const store = backend === undefined ? undefined : new MemoryStore({ backend, namespace: 'group' })
  await app.register(registry, { upstreams, store, gatewayId: id, syncInterval: 5000, leaseTtl: 300, ...extra })
  await plugins(app)
  const changes: PeerChange[] = []
  app.upstreams.on('change', change => changes.push(change))
  t.teardown(async () => await app.close())
  await app.ready()
  return { app, logs, changes }
}

const peerOf = (m: Member, index = 0) => m.app.upstreams.get('backend').peers[index]

t.test('the group options are checked at registration, naming the option', async t => {
  const upstreams = { backend: { servers: ['127.0.0.1:1'] } }
  t.throws(() => new Registry({ upstreams, store: {} as never }), { code: 'FST_SUPERVISORD_OPTION', message: /registry: option "store" must be a store/ })
  t.throws(() => new Registry({ upstreams, gatewayId: 'has space' }), /option "gatewayId" must be 1 to 200 printable characters without spaces, got "has space"/)
  t.throws(() => new Registry({ upstreams, gatewayId: 7 as never }), /option "gatewayId"/)
  t.throws(() => new Registry({ upstreams, syncInterval: 10 }), /option "syncInterval" must be a number from 50/)
  t.throws(() => new Registry({ upstreams, leaseTtl: 0 }), /option "leaseTtl"/)
  t.throws(() => new Registry({ upstreams }).setPin('backend', 0, 'sideways' as never, 'x'), { code: 'FST_SUPERVISORD_BAD_PIN', message: /got "sideways"/ })
  const app = Fastify()
  await app.register(registry, { upstreams, store: new MemoryStore() })
  await t.rejects(async () => await app.register(healthCheck, { shareChecks: 'yes' as never }), /health: option "shareChecks" must be true or false/)
  await app.close()
})

t.test('a gateway alone (no store given) writes nothing and is a group of one', async t => {
  const b = await backendFor(t)
  const alone = await member(t, undefined, 'solo', UPSTREAM([b]))
  const { group } = alone.app.upstreams
  t.equal(group.shared, false)
  alone.app.upstreams.setAdmin('backend', 0, 'drain')
  alone.app.upstreams.setPin('backend', 0, 'up', 'operator start')
  t.same(await group.store.readSettings(), { version: 0, peers: [] }, 'nothing went to the store')
  const status = statusSnapshot(alone.app.upstreams).group as GroupStatus
  t.match(status, { gateway: 'solo', store: { kind: 'memory', shared: false, state: 'ok' }, checks: [] })
  t.same(status.members.map(m => m.id), ['solo'], 'itself')
  t.notOk('scaler' in status, 'no scaler lead without a shared scaler')
})

t.test('operator settings on one gateway reach the others at once, and are never written back', async t => {
  const b = await backendFor(t)
  const backend = new MemoryBackend()
  const a = await member(t, backend, 'gw-a', UPSTREAM([b]))
  const other = await member(t, backend, 'gw-b', UPSTREAM([b]))
  a.app.upstreams.setAdmin('backend', 0, 'drain', 'operator 127.0.0.1')
  t.ok(await until(() => peerOf(other).admin === 'drain', 1000), 'b drained the peer')
  t.match(other.changes.find(c => c.field === 'admin'), { from: 'ready', to: 'drain', reason: 'gateway gw-a' }, 'with the writer as its reason')
  a.app.upstreams.setWeight('backend', 0, 7)
  a.app.upstreams.setPin('backend', 0, 'down', 'operator stop')
  t.ok(await until(() => peerOf(other).weight === 7 && peerOf(other).pin === 'down', 1000), 'weight and pin too')
  other.app.upstreams.setAdmin('backend', 0, 'ready')
  t.ok(await until(() => peerOf(a).admin === 'ready', 1000), 'and back from b to a')
  const { version } = await a.app.upstreams.group.store.readSettings() as { version: number }
  await sleep(50)
  t.equal(version, 4, 'four operator changes, four writes: nothing applied from the store was written back')
  // A local change that is not an operator's (the bridge's drain before a stop) stays local.
  peerOf(a).setAdmin('drain', 'stopping')
  await sleep(50)
  t.equal(peerOf(other).admin, 'ready', 'not shared')
  t.equal((await a.app.upstreams.group.store.readSettings())?.version, 4)
})

t.test('a lost message: the settings are re-read every syncInterval; a gateway that joins later applies them at ready', async t => {
  const b = await backendFor(t)
  const backend = new MemoryBackend()
  const a = await member(t, backend, 'gw-a', UPSTREAM([b]))
  // Pub/sub is at most once: this gateway's store hears no settings message at all.
  const deaf = new MemoryStore({ backend, namespace: 'group' })
  const emit = deaf.emit.bind(deaf) as (event: keyof StoreEvents, ...args: unknown[]) => boolean
  deaf.emit = ((event: keyof StoreEvents, ...args: unknown[]) => {
    if (event === 'message' && (args[0] as { type: string }).type === 'settings') return false
    return emit(event, ...args)
  }) as typeof deaf.emit
  const logs: LogLine[] = []
  const app = Fastify({ logger: loggerInto(logs) })
  await app.register(registry, { upstreams: UPSTREAM([b]), store: deaf, gatewayId: 'gw-deaf', syncInterval: 100 })
  t.teardown(async () => await app.close())
  await app.ready()
  a.app.upstreams.setAdmin('backend', 0, 'maint')
  t.ok(await until(() => app.upstreams.get('backend').peers[0].admin === 'maint', 2000), 'applied by the re-read')
  const late = await member(t, backend, 'gw-late', UPSTREAM([b]))
  t.equal(peerOf(late).admin, 'maint', 'a gateway that joins applies the group\'s settings before it serves')
  const status = statusSnapshot(late.app.upstreams).group as GroupStatus
  t.same(status.members.map(m => m.id), ['gw-a', 'gw-deaf', 'gw-late'], 'the members, as announced')
  t.ok(status.members.every(m => m.pid === process.pid && typeof m.host === 'string'))
})

t.test('checks: one gateway checks each peer and shares the result; when it leaves, another takes over', async t => {
  let failing = false
  const seenBy: string[] = []
  const b = await backendFor(t, (req, res) => {
    if (req.url === '/healthz') seenBy.push(String(req.headers['x-gateway']))
    res.statusCode = failing && req.url === '/healthz' ? 500 : 200
    res.end('ok')
  })
  const backend = new MemoryBackend()
  const upstreams = (id: string): RegistryOptions['upstreams'] => ({
    backend: { servers: [b.address], healthCheck: { path: '/healthz', interval: 30, rise: 1, fall: 1, headers: { 'x-gateway': id } } }
  })
  const withChecks: Plugins = async app => {
    await app.register(healthCheck)
    await app.register(statusPage)
    await app.register(metrics)
  }
  const a = await member(t, backend, 'gw-a', upstreams('gw-a'), withChecks)
  const other = await member(t, backend, 'gw-b', upstreams('gw-b'), withChecks)
  t.ok(await until(() => seenBy.filter(id => id === 'gw-a').length >= 3), 'gw-a checks')
  seenBy.length = 0
  await sleep(200)
  t.same([...new Set(seenBy)], ['gw-a'], 'gw-b does not: gw-a owns the checks')
  const checkOwner = async (m: Member) => (await scrape(m.app)).value('server_check_owner', { upstream: 'backend', peer: '0' })
  t.same([await checkOwner(a), await checkOwner(other)], [1, 0], 'the metrics say who holds the checks')
  // One that joins with initialState "down" (unhealthy until a check passes) takes the owner's result at once, not a syncInterval (5 s) later.
  const late = await member(t, backend, 'gw-late', { backend: { servers: [b.address], healthCheck: { path: '/healthz', interval: 30, rise: 1, fall: 1, initialState: 'down', headers: { 'x-gateway': 'gw-late' } } } }, withChecks)
  t.ok(await until(() => peerOf(late).health === 'healthy', 1000), 'a gateway that joins routes on the shared result at once')
  await late.app.close()
  t.match(statusSnapshot(other.app.upstreams).group, { checks: [] }, 'no owner known to b before its first sync')
  failing = true
  t.ok(await until(() => peerOf(other).health === 'unhealthy', 2000), 'b routes on a\'s result: unhealthy')
  t.match(peerOf(other).lastCheck, { ok: false, reason: 'bad status 500' }, 'with the check that said so')
  t.ok(other.logs.some(line => /unhealthy: bad status 500, checked by gateway gw-a/.test(line.msg)), 'logged with who checked')
  failing = false
  t.ok(await until(() => peerOf(other).health === 'healthy', 2000), 'and healthy again')
  await a.app.close()
  seenBy.length = 0
  t.ok(await until(() => seenBy.includes('gw-b'), 2000), 'gw-a gave its lease up when it closed: gw-b checks at once')
  t.match(statusSnapshot(other.app.upstreams).group, { checks: [{ upstream: 'backend', index: 0, owner: 'gw-b' }] })
  const page = (await other.app.inject({ url: '/health', headers: { accept: 'text/html' } })).body
  t.match(page, /checked by this gateway/, 'the page says who checks each peer')
  t.match(page, /<td>gw-b <span class="tag">this gateway<\/span><\/td>/, 'and lists the gateways')
  // Gateway ids hold host names: a viewer who does not pass the guard sees the store's state only.
  const outside = await other.app.inject({ url: '/health?format=json', remoteAddress: '192.0.2.7' })
  t.same(outside.json().group, { gateway: null, store: { kind: 'memory', shared: true, state: 'ok', sinceMs: outside.json().group.store.sinceMs }, members: [], checks: [] }, 'redacted outside the guard')
  const outsidePage = (await other.app.inject({ url: '/health', remoteAddress: '192.0.2.7', headers: { accept: 'text/html' } })).body
  t.notMatch(outsidePage, /gw-[ab]/, 'nor in the HTML')
  t.match(outsidePage, /store: <span class="store good">memory ok<\/span>/)
})

t.test('checks with shareChecks false: every gateway checks for itself', async t => {
  const seenBy = new Set<string>()
  const b = await backendFor(t, (req, res) => {
    seenBy.add(String(req.headers['x-gateway']))
    res.end('ok')
  })
  const backend = new MemoryBackend()
  for (const id of ['gw-a', 'gw-b']) {
    await member(t, backend, id, { backend: { servers: [b.address], healthCheck: { interval: 30, headers: { 'x-gateway': id } } } },
      async app => { await app.register(healthCheck, { shareChecks: false }) })
  }
  t.ok(await until(() => seenBy.size === 2), 'both check')
})

t.test('the scaler: one lead, deciding on the load of every gateway', async t => {
  const backends = [await backendFor(t, undefined, 0), await backendFor(t, undefined, 1)]
  const backend = new MemoryBackend()
  const window = 60_000
  const upstreams: RegistryOptions['upstreams'] = {
    backend: {
      servers: [backends[0].address, { address: backends[1].address, down: true }],
      supervisord: 'none',
      inheritBackendStatus: true,
      scale: { loadThreshold: 1, window, idleStop: false }
    }
  }
  // One fake clock for both scalers: the group's windows end when the test says, the same for both.
  const clock = createClock(Math.floor(Date.now() / window) * window + 1000)
  const gateways: Member[] = []
  const scales: ScaleEvent[][] = []
  for (const id of ['gw-a', 'gw-b']) {
    const m = await member(t, backend, id, upstreams, async app => {
      await app.register(supervisord)
      scalerOnFakeClock(app, clock)
      await app.register(proxy, { upstream: 'backend' })
      await app.register(statusPage)
      await app.register(metrics)
    })
    const seen: ScaleEvent[] = []
    m.app.upstreams.on('scale', event => seen.push(event))
    gateways.push(m)
    scales.push(seen)
  }
  const leads = (m: Member): boolean => m.app.upstreams.group.owner(leaseNames.scaler) === m.app.upstreams.group.id
  t.ok(await until(() => gateways.some(leads)), 'one leads')
  const lead = gateways.findIndex(leads)
  const other = gateways[1 - lead]
  t.ok(gateways[lead].logs.some(line => /leads the scaler of the group/.test(line.msg)), 'and says so')
  /** Ends the group's window now counted, and the lead's grace after it (its read of the sum is let run). */
  const endWindow = async (): Promise<void> => {
    await clock.tickAsync(window - clock.now % window)
    await clock.tickAsync(2000)
    await sleep(20)
  }
  // The first window is one the gateways saw only part of: it decides nothing.
  await endWindow()
  // 40 requests in a window of 60 s at each gateway: 0.67 req/s, 67% of the threshold alone; 133% together.
  for (const m of gateways) for (let i = 0; i < 40; i++) await m.app.inject('/')
  await endWindow()
  t.ok(await until(() => peerOf(gateways[lead], 1).process === 'up', 5000), 'the lead started backend1')
  t.same(scales[1 - lead], [], 'the other decided nothing')
  t.match(scales[lead], [{ reason: 'load', action: 'start', load: 1.33, running: 1 }], 'on the summed load')
  const snapshot = statusSnapshot(other.app.upstreams)
  t.equal(snapshot.group.scaler, gateways[lead].app.upstreams.group.id, 'the other knows who leads (read when it joined)')
  t.match(statusSnapshot(gateways[lead].app.upstreams).upstreams[0].scale, { over: 'group', load: 1.33 }, 'the lead shows the group\'s load')
  t.match(snapshot.upstreams[0].scale, { over: 'gateway', load: 0.67 }, 'the other its own share')
  const page = await other.app.inject({ url: '/health', headers: { accept: 'text/html' } })
  t.match(page.body, `0.67 req/s per running peer on this gateway (the group&#39;s lead, ${gateways[lead].app.upstreams.group.id}, decides on the sum)`)
  const [leadScrape, otherScrape] = [await scrape(gateways[lead].app), await scrape(other.app)]
  t.same([leadScrape.value('group_scaler_lead'), otherScrape.value('group_scaler_lead')], [1, 0], 'the metrics say who leads')
  t.same([leadScrape.value('backend_scale_load', { upstream: 'backend' }), otherScrape.value('backend_scale_load', { upstream: 'backend' })], [1.33, 0.67])
  // The later one read the members after both had announced themselves.
  const later = await scrape(gateways[1].app)
  t.same([later.value('group_members'), later.value('group_store_up', { store: 'memory' })], [2, 1], 'two members, the store up')
})

t.test('a store that cannot be reached: said once, and each gateway goes on alone (checks, starts, the scaler)', async t => {
  const b = await backendFor(t)
  const port = await freePort()
  const store = new RedisStore({ url: `redis://127.0.0.1:${port}`, connectTimeout: 100, commandTimeout: 100, retryInterval: 100 })
  const logs: LogLine[] = []
  const app = Fastify({ logger: loggerInto(logs, 'info') })
  await app.register(registry, {
    upstreams: { backend: { servers: [b.address, { address: b.address, down: true }], supervisord: 'none', inheritBackendStatus: true, healthCheck: { interval: 30, rise: 1 }, scale: { loadThreshold: 1, window: 200, idleStop: false } } },
    store,
    gatewayId: 'alone'
  })
  await app.register(supervisord)
  await app.register(healthCheck)
  await app.register(scaler)
  await app.register(proxy, { upstream: 'backend' })
  await app.register(statusPage)
  t.teardown(async () => await app.close())
  await app.ready()
  const peer = app.upstreams.get('backend').peers[0]
  t.ok(await until(() => peer.lastCheck !== null), 'checks run here: nobody can say who owns them')
  app.upstreams.setAdmin('backend', 0, 'ready')
  const sending = { on: true }
  const loop = (async () => { for (let i = 0; sending.on && i < 500; i++) { await app.inject('/'); await sleep(10) } })()
  t.ok(await until(() => app.upstreams.get('backend').peers[1].process === 'up', 5000), 'the scaler decided alone on its own load (a start)')
  sending.on = false
  await loop
  const degraded = logs.filter(line => line.msg.startsWith('store redis degraded'))
  t.equal(degraded.length, 1, 'the fault logged once')
  t.match(degraded[0].msg, /routing on the last known state/)
  const page = await app.inject('/health?format=json')
  t.match(page.json().group, { gateway: 'alone', store: { kind: 'redis', shared: true, state: 'degraded' } })
  const html = await app.inject({ url: '/health', headers: { accept: 'text/html' } })
  t.match(html.body, /store: <span class="store bad">redis degraded<\/span>/, 'the page says store: degraded')
})

t.test('starts with a supervisord', { skip: supervisordSkip }, async t => {
  await t.test('a burst on two gateways: one startProcess; the other holds its requests until the program serves', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2 }] })
    const counter = await rpcCounter(t, sv)
    const backend = new MemoryBackend()
    const upstreams: RegistryOptions['upstreams'] = { backend: { servers: sv.programs.map(p => p.address), supervisord: { ...sv.option, address: counter.address } } }
    const withProxy: Plugins = async app => {
      await app.register(supervisord, { pollInterval: 0 })
      await app.register(proxy, { upstream: 'backend', holdTimeout: 10_000 })
      await app.register(metrics)
    }
    const gateways = [await member(t, backend, 'gw-a', upstreams, withProxy), await member(t, backend, 'gw-b', upstreams, withProxy)]
    const answers = await Promise.all(Array.from({ length: 20 }, async (_, i) => (await gateways[i % 2].app.inject('/')).statusCode))
    t.same(answers, Array(20).fill(200), 'all answered')
    t.equal(counter.calls.filter(call => call === 'supervisor.startProcess').length, 1, 'one startProcess')
    t.same(gateways.map(m => peerOf(m).process), ['up', 'up'])
    t.same(gateways.map(m => peerOf(m, 1).process), ['down', 'down'])
    // Who started it says so; the other says who did, and counts no command of its own.
    const starter = gateways.findIndex(m => m.logs.some(line => line.msg.startsWith('supervisord: started program "backend0" (demand)')))
    t.not(starter, -1, 'one gateway logged the start as its own')
    const starterId = starter === 0 ? 'gw-a' : 'gw-b'
    const waiter = gateways[1 - starter]
    t.ok(waiter.logs.some(line => line.msg.startsWith(`supervisord: program "backend0" started by gateway ${starterId} (demand), serving here in `) && line.by === starterId),
      'the other logged whose start it waited for')
    t.equal(statusSnapshot(waiter.app.upstreams).upstreams[0].peers[0].lastCommand?.by, starterId, 'and shows it as the last command\'s sender')
    const commands = async (m: Member) => (await scrape(m.app)).value('supervisord_commands_total', { upstream: 'backend', peer: '0', command: 'start', outcome: 'ok' })
    t.same([await commands(gateways[starter]), await commands(waiter)], [1, NaN], 'the group\'s metrics count the one start once')
  })

  /** A supervisord with one program behind a counting proxy, and one gateway of a group over it (no polls: it learns from the group or its own commands). */
  const oneProgramMember = async (t: Test) => {
    const sv = await supervisordFor(t, { programs: [{ count: 1 }] })
    const counter = await rpcCounter(t, sv)
    const m = await member(t, new MemoryBackend(), 'gw-a', { backend: { servers: sv.programs.map(p => p.address), supervisord: { ...sv.option, address: counter.address } } },
      async app => {
        await app.register(supervisord, { pollInterval: 0 })
        await app.register(proxy, { upstream: 'backend', holdTimeout: 10_000 })
      })
    return { sv, counter, m }
  }

  await t.test('the gateway holding the start lease dies: its lease lapses and another starts the program', async t => {
    const { counter, m } = await oneProgramMember(t)
    // A gateway took the lease and was killed before it called supervisord.
    t.ok(await m.app.upstreams.group.store.acquire(leaseNames.start('backend', 0), 'gw-dead', 300))
    const res = await m.app.inject('/')
    t.equal(res.statusCode, 200, 'answered once the lease lapsed and gw-a started it')
    t.equal(counter.calls.filter(call => call === 'supervisor.startProcess').length, 1)
  })

  await t.test('the gateway holding the start lease started the program and died before it said so: the next finds it running, and says whose start it was', async t => {
    const { sv, counter, m } = await oneProgramMember(t)
    await sv.client.startProcess('backend0', true)
    t.ok(await m.app.upstreams.group.store.acquire(leaseNames.start('backend', 0), 'gw-dead', 300), 'gw-dead holds the lease, its start done')
    const res = await m.app.inject('/')
    t.equal(res.statusCode, 200, 'answered once the lease lapsed')
    t.equal(counter.calls.filter(call => call === 'supervisor.startProcess').length, 0, 'gw-a sent no start: it found the program running')
    t.notOk(m.logs.some(line => line.msg.startsWith('supervisord: started program')), 'nor logged one as its own')
    t.ok(m.logs.some(line => line.msg.startsWith('supervisord: program "backend0" started by gateway gw-dead (demand), serving here in ')), 'it names the gateway that held the lease')
  })

  await t.test('the store cannot be reached: the gateway starts the program itself; closing, it stops waiting for another\'s start', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 1 }] })
    const counter = await rpcCounter(t, sv)
    const upstreams: RegistryOptions['upstreams'] = { backend: { servers: sv.programs.map(p => p.address), supervisord: { ...sv.option, address: counter.address } } }
    const app = Fastify()
    await app.register(registry, { upstreams, store: new RedisStore({ url: `redis://127.0.0.1:${await freePort()}`, connectTimeout: 100 }) })
    await app.register(supervisord, { pollInterval: 0 })
    await app.register(proxy, { upstream: 'backend', holdTimeout: 10_000 })
    t.teardown(async () => await app.close())
    t.equal((await app.inject('/')).statusCode, 200, 'started here')
    t.equal(counter.calls.filter(call => call === 'supervisor.startProcess').length, 1)

    const backend = new MemoryBackend()
    const m = await member(t, backend, 'gw-a', upstreams, async app => {
      await app.register(supervisord, { pollInterval: 0 })
      await app.register(proxy, { upstream: 'backend', holdTimeout: 10_000 })
    })
    await sv.client.stopProcess('backend0', true)
    m.app.upstreams.get('backend').peers[0].setProcess('down', 'test')
    t.ok(await m.app.upstreams.group.store.acquire(leaseNames.start('backend', 0), 'gw-slow', 60_000), 'another gateway starts it, for long')
    const held = m.app.inject('/')
    t.ok(await until(() => peerOf(m).process === 'starting'), 'the request is held while gw-slow starts it')
    await m.app.close()
    t.not((await held).statusCode, 200, 'the held request was answered when the gateway closed')
    t.equal(await new MemoryStore({ backend, namespace: 'group' }).owner(leaseNames.start('backend', 0)), 'gw-slow', 'without waiting for gw-slow\'s lease to lapse')
  })

  await t.test('a start another gateway could not carry out: heard, and this one backs off too', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 1, faults: { 0: 'exit' } }] })
    const counter = await rpcCounter(t, sv)
    const backend = new MemoryBackend()
    const upstreams: RegistryOptions['upstreams'] = { backend: { servers: sv.programs.map(p => p.address), supervisord: { ...sv.option, address: counter.address } } }
    const withProxy: Plugins = async app => {
      await app.register(supervisord, { pollInterval: 0, startBackoff: { initial: 60_000 } })
      await app.register(proxy, { upstream: 'backend', holdTimeout: 10_000 })
    }
    const gateways = [await member(t, backend, 'gw-a', upstreams, withProxy), await member(t, backend, 'gw-b', upstreams, withProxy)]
    const answers = await Promise.all(Array.from({ length: 6 }, async (_, i) => (await gateways[i % 2].app.inject('/')).statusCode))
    t.same(answers, Array(6).fill(502), 'the start failed: 502 on both gateways')
    t.equal(counter.calls.filter(call => call === 'supervisor.startProcess').length, 1, 'one startProcess for both')
    const heard = gateways.flatMap(g => g.logs).filter(line => line.fault === 'FAILED_ELSEWHERE')
    t.equal(heard.length, 1, 'the other gateway heard of the failure')
    t.match(heard[0].msg, /gateway gw-[ab] could not start program "backend0"/)
    t.ok(gateways.every(g => peerOf(g).backoff !== null), 'both back off')
  })
})
