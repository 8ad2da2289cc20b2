import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { MemoryBackend, MemoryStore } from '../lib/store/memory-store.js'
import { RedisStore, type RedisStoreOptions } from '../lib/store/redis-store.js'
import type { Store, StoreMessage, StoreStatus } from '../lib/store/types.js'
import { redisFor, redisSkip, type RedisServer } from './helpers/redis.js'
import { freePort } from './helpers/backends.js'
import { sleep, until } from './helpers/wait.js'

// One contract, two stores: every test of `contract` runs against the
// MemoryStore and against the RedisStore on a real redis-server. Two store
// instances on one backend (or one Redis) are two gateways of a group.

/** Opens a store of the group under test (a gateway), closed in the test's teardown. */
type Open = (t: Test, namespace: string) => Promise<Store>

let namespaces = 0
function freshNamespace (): string {
  return `test-${process.pid}-${++namespaces}`
}

function messages (store: Store): StoreMessage[] {
  const seen: StoreMessage[] = []
  store.on('message', message => seen.push(message))
  return seen
}

function contract (t: Test, open: Open): void {
  t.test('settings: versioned writes, merged per peer, re-read by any gateway', async t => {
    const ns = freshNamespace()
    const a = await open(t, ns)
    const b = await open(t, ns)
    t.same(await b.readSettings(), { version: 0, peers: [] }, 'nothing stored yet')
    const first = await a.writeSettings('backend', 1, { admin: 'drain', weight: 3 }, 'gw-a')
    t.equal(first, 1, 'the first write is version 1')
    const snapshot = await b.readSettings()
    t.equal(snapshot?.version, 1)
    t.match(snapshot?.peers, [{ upstream: 'backend', index: 1, admin: 'drain', weight: 3, version: 1, by: 'gw-a' }])
    t.equal(snapshot?.peers[0].pin, undefined, 'a setting never written is absent')
    t.equal(await b.readSettings(1), null, 'unchanged since version 1: nothing to re-read')

    t.equal(await b.writeSettings('backend', 1, { pin: 'start' }, 'gw-b'), 2)
    t.equal(await a.writeSettings('api', 0, { admin: 'maint' }, 'gw-a'), 3)
    const later = await a.readSettings(1)
    t.equal(later?.version, 3)
    t.match(later?.peers, [
      { upstream: 'api', index: 0, admin: 'maint', version: 3 },
      { upstream: 'backend', index: 1, admin: 'drain', weight: 3, pin: 'start', version: 2, by: 'gw-b' }
    ], 'settings merge per peer; the record carries its latest change')
    t.equal(await a.writeSettings('backend', 1, { pin: null }, 'gw-a'), 4, 'a pin is released with null')
    t.equal((await b.readSettings())?.peers[1].pin, null)
  })

  t.test('settings: bad arguments throw at the call, naming what was wrong', async t => {
    const store = await open(t, freshNamespace())
    t.throws(() => store.writeSettings('backend', 0, { admin: 'gone' as 'drain' }, 'gw'), { code: 'FST_SUPERVISORD_STORE_ARGUMENT', message: /setting "admin" got "gone" \(one of ready, drain, maint\)/ })
    t.throws(() => store.writeSettings('backend', 0, { weight: 0 }, 'gw'), /setting "weight" got 0 \(an integer from 1 to 1000\)/)
    t.throws(() => store.writeSettings('backend', 0, { pin: 'up' as 'start' }, 'gw'), /setting "pin"/)
    t.throws(() => store.writeSettings('backend', 0, { colour: 'red' } as never, 'gw'), /unknown setting "colour"/)
    t.throws(() => store.writeSettings('backend', 0, {}, 'gw'), /at least one of admin, weight, pin/)
    t.throws(() => store.writeSettings('backend', -1, { weight: 2 }, 'gw'), /peer index must be an integer from 0, got -1/)
    t.throws(() => store.writeSettings('', 0, { weight: 2 }, 'gw'), /upstream must be a non-empty string/)
    t.throws(() => store.acquire('lease', 'me', 0), /ttlMs must be an integer number of ms from 1/)
    t.throws(() => store.writeLoad('backend', 1.5, 'gw', 1, 1000), /load window must be an integer/)
    t.throws(() => store.writeLoad('backend', 1, 'gw', Number.NaN, 1000), /load count must be a finite number/)
    t.throws(() => store.writeHealth('backend', 0, { health: 'fine' } as never, 1000), /shared health must be/)
    t.throws(() => store.announce('gw', { nested: {} } as never, 1000), /member details must be an object of at most 32 strings/)
    t.throws(() => store.publish({ type: 'settings' } as never), /a published event must be/)
    t.throws(() => store.owners('leader' as never), /lease names must be an array, got "leader"/)
    t.same(await store.readSettings(), { version: 0, peers: [] }, 'nothing was written')
  })

  t.test('messages: a write or a publish on one gateway reaches the others, and itself', async t => {
    const ns = freshNamespace()
    const a = await open(t, ns)
    const b = await open(t, ns)
    const c = await open(t, ns)
    const seenA = messages(a)
    const seenB = messages(b)
    const seenC = messages(c)
    await a.writeSettings('backend', 2, { admin: 'drain' }, 'gw-a')
    t.ok(await until(() => seenB.length > 0 && seenC.length > 0), 'the settings message reached both other gateways')
    t.match(seenB[0], { type: 'settings', version: 1, peers: [{ upstream: 'backend', index: 2 }], by: 'gw-a' })
    const at = Date.now()
    t.ok(await b.publish({ type: 'process', upstream: 'backend', index: 0, command: 'start', ok: true, by: 'gw-b', at }))
    t.ok(await b.publish({ type: 'health', upstream: 'backend', index: 0, health: 'unhealthy', by: 'gw-b', at }))
    t.ok(await until(() => seenA.length === 3 && seenC.length === 3 && seenB.length === 3), 'every gateway got all three')
    t.same(seenC[1], { type: 'process', upstream: 'backend', index: 0, command: 'start', ok: true, by: 'gw-b', at })
    t.same(seenA[2], { type: 'health', upstream: 'backend', index: 0, health: 'unhealthy', by: 'gw-b', at })
  })

  t.test('leases: of many concurrent acquirers exactly one wins', async t => {
    const ns = freshNamespace()
    const gateways = [await open(t, ns), await open(t, ns), await open(t, ns)]
    for (let round = 0; round < 5; round++) {
      const name = `start:backend/${round}`
      const tries = Array.from({ length: 12 }, (_, i) => gateways[i % 3].acquire(name, `owner-${i}`, 10_000))
      const won = (await Promise.all(tries)).flatMap((ok, i) => ok ? [`owner-${i}`] : [])
      t.equal(won.length, 1, `round ${round}: one winner`)
      t.equal(await gateways[1].owner(name), won[0], 'owner() names the winner')
      t.ok(await gateways[2].acquire(name, won[0], 10_000), 'the holder acquiring again keeps it')
    }
    t.same(await gateways[0].owners(['start:backend/0', 'nobody']), [await gateways[0].owner('start:backend/0'), null], 'owners() in one call')
    t.same(await gateways[0].owners([]), [])
  })

  t.test('leases: renew and release only by the owner; a lease lapses after its ttl', async t => {
    const ns = freshNamespace()
    const a = await open(t, ns)
    const b = await open(t, ns)
    t.ok(await a.acquire('checks:backend/0', 'gw-a', 400))
    t.notOk(await b.renew('checks:backend/0', 'gw-b', 60_000), 'a non-owner cannot renew')
    t.notOk(await b.release('checks:backend/0', 'gw-b'), 'a non-owner cannot release')
    t.equal(await b.owner('checks:backend/0'), 'gw-a', 'still the owner')
    t.ok(await until(async () => await b.owner('checks:backend/0') === null, 5000), 'lapsed after its ttl (no renew by the owner)')
    t.ok(await b.acquire('checks:backend/0', 'gw-b', 60_000), 'then another takes it')
    t.notOk(await a.renew('checks:backend/0', 'gw-a', 60_000), 'the former owner cannot renew it back')

    // A renewal sets a new ttl from now: taken for 1 s, renewed at once for a minute, it is still held well past that first second
    // (no renewal has to land within a short ttl, which a loaded machine may miss).
    t.ok(await a.acquire('leader', 'gw-a', 1000))
    for (let i = 0; i < 3; i++) t.ok(await a.renew('leader', 'gw-a', 60_000), `renewal ${i} by the owner`)
    await sleep(1500)
    t.equal(await b.owner('leader'), 'gw-a', 'kept past its first ttl by renewals')
    t.ok(await a.release('leader', 'gw-a'))
    t.equal(await b.owner('leader'), null, 'released at once')
    t.notOk(await a.release('leader', 'gw-a'), 'releasing twice does nothing')
    t.ok(await b.acquire('leader', 'gw-b', 60_000))
  })

  t.test('health: shared by its checker, stale results ignored', async t => {
    const ns = freshNamespace()
    const a = await open(t, ns)
    const b = await open(t, ns)
    const check = { ok: false, reason: 'connection refused', latencyMs: 3, at: Date.now() }
    t.ok(await a.writeHealth('backend', 0, { health: 'unhealthy', check, by: 'gw-a' }, 60_000))
    t.ok(await a.writeHealth('backend', 1, { health: 'healthy', check: null, by: 'gw-a' }, 300))
    const both = await b.readHealth()
    t.match(both.sort((x, y) => x.index - y.index), [
      { upstream: 'backend', index: 0, health: 'unhealthy', check, by: 'gw-a' },
      { upstream: 'backend', index: 1, health: 'healthy', check: null, by: 'gw-a' }
    ])
    t.ok(both.every(record => record.age >= 0 && record.age < 60_000), 'each with its age')
    t.ok(await until(async () => (await b.readHealth()).length === 1, 5000), 'the result not refreshed within its freshMs is ignored')
    t.match(await b.readHealth(), [{ index: 0 }])
    t.ok(await b.writeHealth('backend', 0, { health: 'healthy', check: null, by: 'gw-b' }, 60_000))
    t.match(await a.readHealth(), [{ index: 0, health: 'healthy', by: 'gw-b' }], 'a newer result replaces the older')
  })

  t.test('load: counts per window summed over gateways; one that stops writing drops out', async t => {
    const ns = freshNamespace()
    const [a, b, c] = [await open(t, ns), await open(t, ns), await open(t, ns)]
    for (const [store, id] of [[a, 'gw-a'], [b, 'gw-b'], [c, 'gw-c']] as const) t.ok(await store.writeLoad('backend', 7, id, 60, 60_000))
    t.ok(await a.writeLoad('backend', 7, 'gw-a', 60, 60_000), 'writing the same count again (a retry) does not add')
    t.same(await b.readLoad('backend', 7), { total: 180, gateways: { 'gw-a': 60, 'gw-b': 60, 'gw-c': 60 } })
    await b.writeLoad('backend', 8, 'gw-b', 10, 60_000)
    await c.writeLoad('backend', 8, 'gw-c', 5, 60_000)
    t.same(await a.readLoad('backend', 8), { total: 15, gateways: { 'gw-b': 10, 'gw-c': 5 } }, 'a gateway that wrote nothing for the window is not in it')
    t.same(await a.readLoad('api', 7), { total: 0, gateways: {} }, 'counters are per name')
    await a.writeLoad('backend', 9, 'gw-a', 1, 300)
    t.equal((await b.readLoad('backend', 9)).total, 1)
    t.ok(await until(async () => (await b.readLoad('backend', 9)).total === 0, 5000), 'a window is forgotten after its ttl')
  })

  t.test('members: announced with a ttl, gone when it lapses or is withdrawn', async t => {
    const ns = freshNamespace()
    const a = await open(t, ns)
    const b = await open(t, ns)
    t.ok(await a.announce('gw-a', { port: 3000, host: 'one' }, 60_000))
    t.ok(await b.announce('gw-b', { port: 3001 }, 300))
    t.match(await a.members(), [{ id: 'gw-a', details: { port: 3000, host: 'one' } }, { id: 'gw-b', details: { port: 3001 } }])
    t.ok(await until(async () => (await a.members()).length === 1, 5000), 'gw-b lapsed without a new announcement')
    t.match(await b.members(), [{ id: 'gw-a' }])
    t.ok(await a.withdraw('gw-a'))
    t.same(await b.members(), [], 'withdrawn')
    await a.announce('gw-a', { port: 3000 }, 60_000)
    await a.close()
    t.same(await b.members(), [], 'close() withdraws the announced member')
  })

  t.test('namespaces keep groups apart', async t => {
    const one = await open(t, freshNamespace())
    const two = await open(t, freshNamespace())
    const seenTwo = messages(two)
    await one.writeSettings('backend', 0, { admin: 'maint' }, 'gw-1')
    await one.publish({ type: 'process', upstream: 'backend', index: 0, command: 'stop', ok: true, by: 'gw-1', at: Date.now() })
    t.ok(await one.acquire('leader', 'gw-1', 60_000))
    await one.writeHealth('backend', 0, { health: 'healthy', check: null, by: 'gw-1' }, 60_000)
    await one.writeLoad('backend', 1, 'gw-1', 9, 60_000)
    await one.announce('gw-1', {}, 60_000)
    t.same(await two.readSettings(), { version: 0, peers: [] })
    t.ok(await two.acquire('leader', 'gw-2', 60_000), 'the same lease name is another lease')
    t.same(await two.readHealth(), [])
    t.same(await two.readLoad('backend', 1), { total: 0, gateways: {} })
    t.same(await two.members(), [])
    await sleep(100)
    t.same(seenTwo, [], 'no message crossed')
    t.equal((await one.readSettings())?.version, 1, 'the first group has its own')
  })
}

function statuses (store: Store): StoreStatus[] {
  const seen: StoreStatus[] = []
  store.on('state', status => seen.push(status))
  return seen
}

t.test('the memory store', async t => {
  const backend = new MemoryBackend()
  contract(t, async (t, namespace) => {
    const store = new MemoryStore({ backend, namespace })
    t.teardown(async () => await store.close())
    return store
  })

  t.test('is ok at once and needs nothing; one without a backend is a group of one', async t => {
    const store = new MemoryStore()
    t.equal(store.kind, 'memory')
    t.equal(store.namespace, 'fastify-supervisord')
    await store.connect()
    t.match(store.status, { state: 'ok', reason: null })
    await store.writeSettings('backend', 0, { weight: 2 }, 'gw')
    t.same(await new MemoryStore().readSettings(), { version: 0, peers: [] }, 'another store has a backend of its own')
    t.same(await new MemoryStore({ backend }).readSettings(), { version: 0, peers: [] }, 'and the default namespace of a backend is its own')
  })

  t.test('bad options fail at construction, naming the option', async t => {
    t.throws(() => new MemoryStore({ namespace: '' }), { code: 'FST_SUPERVISORD_OPTION', message: /store: option "namespace" must be 1 to 64 letters/ })
    t.throws(() => new MemoryStore({ namespace: 'a:b' }), /option "namespace"/)
    t.throws(() => new MemoryStore({ namespace: 'x'.repeat(65) }), /option "namespace"/)
    t.throws(() => new MemoryStore({ backend: {} as MemoryBackend }), /option "backend" must be a MemoryBackend/)
    t.throws(() => new MemoryStore({ namespaec: 'x' } as never), /store: unknown option "namespaec"/)
  })
})

t.test('the Redis store', { skip: redisSkip }, async t => {
  const redis = await redisFor(t)
  const options = (extra: Partial<RedisStoreOptions> = {}): RedisStoreOptions => ({ url: redis.url, commandTimeout: 1000, retryInterval: 100, ...extra })
  const openRedis = (t: Test, extra: Partial<RedisStoreOptions> = {}): RedisStore => {
    const store = new RedisStore(options(extra))
    t.teardown(async () => await store.close())
    return store
  }

  t.test('contract', async t => {
    contract(t, async (t, namespace) => {
      const store = openRedis(t, { namespace })
      await store.connect()
      t.equal(store.status.state, 'ok', 'connected')
      return store
    })
  })

  t.test('bad options fail at construction, naming the option', async t => {
    t.throws(() => new RedisStore({} as never), /give the Redis store one of the options "url" and "client"/)
    t.throws(() => new RedisStore({ url: redis.url, client: new Redis({ lazyConnect: true }) }), /one of the options "url" and "client"/)
    t.throws(() => new RedisStore({ url: 'http://127.0.0.1:6379' }), /option "url" must be a redis:\/\/ or rediss:\/\/ URL, got "http/)
    t.throws(() => new RedisStore({ url: 'nonsense' }), /option "url"/)
    t.throws(() => new RedisStore({ client: {} as never }), /option "client" must be an ioredis client/)
    t.throws(() => new RedisStore({ url: redis.url, commandTimeout: 0 }), /option "commandTimeout" must be a number from 1/)
    t.throws(() => new RedisStore({ url: redis.url, maxPending: 1.5 }), /option "maxPending" must be an integer/)
    t.throws(() => new RedisStore({ url: redis.url, namespace: 'has space' }), /option "namespace"/)
    t.throws(() => new RedisStore({ url: redis.url, timeout: 5 } as never), /unknown option "timeout"/)
    t.throws(() => new RedisStore(undefined as never), /needs options/)
  })

  t.test('takes the settings of a given ioredis client, and leaves the client open', async t => {
    const client = new Redis(redis.url)
    t.teardown(() => client.disconnect())
    const store = new RedisStore({ client, namespace: freshNamespace() })
    await store.connect()
    t.equal(store.status.state, 'ok')
    t.equal(await store.writeSettings('backend', 0, { weight: 5 }, 'gw'), 1)
    await store.close()
    t.equal(await client.ping(), 'PONG', 'the given client still works')
    t.equal(await client.hget(`${store.namespace}:settings`, '#version'), '1', 'and sees what the store wrote')
  })

  t.test('a malformed message or stored record is skipped, not thrown', async t => {
    const namespace = freshNamespace()
    const store = openRedis(t, { namespace })
    await store.connect()
    const seen = messages(store)
    const raw = new Redis(redis.url)
    t.teardown(() => raw.disconnect())
    await raw.publish(`${namespace}:events`, 'not json')
    await raw.publish(`${namespace}:events`, JSON.stringify({ type: 'process', upstream: 'backend', index: -1, command: 'start', ok: true, by: 'x', at: 1 }))
    await raw.publish(`${namespace}:events`, JSON.stringify({ type: 'future', by: 'x', at: 1 }))
    await raw.hset(`${namespace}:settings`, 'admin:0:backend', '{"value":"sideways","version":1,"at":1,"by":"x"}', 'weight:x:backend', '{}', 'weight:1:backend', 'nope')
    await raw.hset(`${namespace}:health`, '0:backend', 'garbage', '1:backend', `${Date.now() * 2}:${Date.now() * 2}:{"health":"odd"}`)
    await raw.set(`${namespace}:member:ghost`, 'not json')
    await raw.sadd(`${namespace}:members`, 'ghost')
    await store.publish({ type: 'process', upstream: 'backend', index: 0, command: 'stop', ok: false, by: 'gw', at: 2 })
    t.ok(await until(() => seen.length === 1), 'the good message came')
    await sleep(50)
    t.match(seen, [{ type: 'process', index: 0, command: 'stop' }], 'only the good message')
    t.same((await store.readSettings())?.peers, [])
    t.same(await store.readHealth(), [])
    t.same(await store.members(), [])
    t.equal(store.status.state, 'ok')

    await raw.set(`${namespace}:health`, 'a string, not a hash')
    const wrongType = await timed(store.readHealth())
    t.match(wrongType.error, { code: 'FST_SUPERVISORD_STORE_UNAVAILABLE', message: /WRONGTYPE/ }, 'an error answer rejects as the store being unusable')
    t.equal(store.status.state, 'ok', 'but Redis answered: the store is not degraded for it')
  })

  t.test('settings kept before the store was reached are written then, unless a later change got there first', async t => {
    const namespace = freshNamespace()
    const raw = new Redis(redis.url)
    t.teardown(() => raw.disconnect())
    const later = Date.now() + 3_600_000
    await raw.hset(`${namespace}:settings`, '#version', '5', 'admin:0:backend', `{"value":"maint","version":5,"at":${later},"by":"gw-b"}`,
      'weight:0:backend', '{"value":2,"version":4,"at":1,"by":"gw-b"}')
    const store = openRedis(t, { namespace })
    t.equal(store.status.state, 'connecting')
    t.equal(await store.writeSettings('backend', 0, { admin: 'drain', weight: 9 }, 'gw-a'), null, 'not written yet: kept')
    t.equal(store.unwritten, 2)
    await store.connect()
    t.ok(await until(() => store.unwritten === 0))
    const [peer] = (await store.readSettings())?.peers ?? []
    t.match(peer, { admin: 'maint', weight: 9, version: 6 }, 'the kept admin state lost to the later one; the kept weight was newer')
  })
})

/** ms that `promise` took to settle, and how. */
async function timed<T> (promise: Promise<T>): Promise<{ ms: number, value?: T, error?: Error }> {
  const started = Date.now()
  try {
    const value = await promise
    return { ms: Date.now() - started, value }
  } catch (error) {
    return { ms: Date.now() - started, error: error as Error }
  }
}

// Generous for a loaded two-core machine: a call given 200 ms must settle well
// within this, never wait on Redis' recovery.
const BOUND = 1500

/** Every kind of call once, each timed. */
async function everyCall (store: Store): Promise<Array<{ name: string, ms: number, value?: unknown, error?: Error }>> {
  const calls: Array<[string, () => Promise<unknown>]> = [
    ['writeSettings', () => store.writeSettings('backend', 0, { admin: 'drain' }, 'gw-a')],
    ['readSettings', () => store.readSettings()],
    ['acquire', () => store.acquire('leader', 'gw-a', 10_000)],
    ['renew', () => store.renew('leader', 'gw-a', 10_000)],
    ['release', () => store.release('leader', 'gw-a')],
    ['owner', () => store.owner('leader')],
    ['writeHealth', () => store.writeHealth('backend', 0, { health: 'healthy', check: null, by: 'gw-a' }, 10_000)],
    ['readHealth', () => store.readHealth()],
    ['writeLoad', () => store.writeLoad('backend', 1, 'gw-a', 3, 10_000)],
    ['readLoad', () => store.readLoad('backend', 1)],
    ['announce', () => store.announce('gw-a', { port: 1 }, 60_000)],
    ['members', () => store.members()],
    ['publish', () => store.publish({ type: 'health', upstream: 'backend', index: 0, health: 'healthy', by: 'gw-a', at: 1 })]
  ]
  const results = []
  for (const [name, call] of calls) results.push({ name, ...await timed(call()) })
  return results
}

const WRITES = new Set(['writeSettings', 'writeHealth', 'writeLoad', 'announce', 'publish'])

function assertFailedFast (t: Test, results: Awaited<ReturnType<typeof everyCall>>): void {
  for (const { name, ms, value, error } of results) {
    t.ok(ms < BOUND, `${name} settled in ${ms} ms (< ${BOUND})`)
    if (WRITES.has(name)) {
      t.equal(error, undefined, `${name} does not reject`)
      t.ok(value === false || value === null, `${name} says it did not write`)
    } else {
      t.match(error, { code: 'FST_SUPERVISORD_STORE_UNAVAILABLE', statusCode: 503 }, `${name} rejects with StoreUnavailableError`)
    }
  }
}

async function pair (t: Test, redis: RedisServer): Promise<[RedisStore, RedisStore]> {
  const namespace = freshNamespace()
  const open = (): RedisStore => {
    const store = new RedisStore({ url: redis.url, namespace, commandTimeout: 200, retryInterval: 100 })
    t.teardown(async () => await store.close())
    return store
  }
  const [a, b] = [open(), open()]
  await a.connect()
  await b.connect()
  t.equal(a.status.state, 'ok', 'connected')
  return [a, b]
}

t.test('Redis faults', { skip: redisSkip }, async t => {
  t.test('redis-server killed: calls fail fast, the store is degraded; restarted: it reconciles', async t => {
    const redis = await redisFor(t)
    const [a, b] = await pair(t, redis)
    const statesA = statuses(a)
    const seenB = messages(b)
    t.ok(await a.announce('gw-a', { port: 3000 }, 60_000))

    await redis.kill()
    t.ok(await until(() => a.status.state === 'degraded' && b.status.state === 'degraded', 5000), 'both see the loss without a call')
    assertFailedFast(t, await everyCall(a))
    assertFailedFast(t, await everyCall(a))
    t.equal(statesA.length, 1, 'degraded announced once, not per call')
    t.match(statesA[0], { state: 'degraded', reason: /closed|ECONNREFUSED|writeable/ })
    t.match(a.status, { state: 'degraded' })
    t.ok(a.unwritten > 0, 'the settings written meanwhile are kept')

    await redis.restart()
    t.ok(await until(() => a.status.state === 'ok' && b.status.state === 'ok', 10_000), 'both ok again once Redis is back')
    t.match(statesA.map(s => s.state), ['degraded', 'ok'])
    t.ok(await until(() => seenB.some(m => m.type === 'resync')), 'a resync tells listeners to re-read')
    t.equal(a.unwritten, 0)
    t.match((await b.readSettings())?.peers, [{ upstream: 'backend', index: 0, admin: 'drain', by: 'gw-a' }], 'the kept write reached the new Redis')
    t.match(await b.members(), [{ id: 'gw-a', details: { port: 1 } }], 'the member was announced again')
    const before = seenB.length
    await a.publish({ type: 'process', upstream: 'backend', index: 1, command: 'start', ok: true, by: 'gw-a', at: 5 })
    t.ok(await until(() => seenB.slice(before).some(m => m.type === 'process' && m.index === 1)), 'the subscription works again')
  })

  t.test('redis-server stopped (SIGSTOP): no call waits past its timeout, nothing piles up; SIGCONT: it recovers', async t => {
    const redis = await redisFor(t)
    const [a, b] = await pair(t, redis)
    const seenB = messages(b)
    const leaving = new RedisStore({ url: redis.url, namespace: a.namespace, commandTimeout: 200 })
    await leaving.connect()
    await leaving.announce('gw-leaving', {}, 60_000)
    redis.pause()
    t.teardown(() => redis.resume())
    const closing = await timed(leaving.close())
    t.ok(closing.ms < BOUND, `close() of a store that was ok took ${closing.ms} ms (its withdrawal timed out)`)
    const first = await timed(a.readSettings())
    t.ok(first.ms < BOUND, `the first call timed out in ${first.ms} ms`)
    t.match(first.error, { code: 'FST_SUPERVISORD_STORE_UNAVAILABLE', message: /no answer from Redis within 200 ms/ })
    t.equal(a.status.state, 'degraded')
    assertFailedFast(t, await everyCall(a))
    const burst = await timed(Promise.all(Array.from({ length: 200 }, async () => await a.acquire('x', 'gw-a', 1000).catch(() => false))))
    t.ok(burst.ms < BOUND, `200 more calls settled in ${burst.ms} ms`)
    await sleep(500)
    t.ok(a.pending <= 2, `commands waiting for the stopped Redis stay bounded (${a.pending})`)

    redis.resume()
    t.ok(await until(() => a.status.state === 'ok', 10_000), 'ok again after SIGCONT')
    t.equal(await b.writeSettings('backend', 3, { weight: 7 }, 'gw-b') !== null, true, 'writes again')
    t.ok(await until(() => seenB.some(m => m.type === 'settings' && m.peers[0].index === 3)))
    t.match((await a.readSettings())?.peers.find(p => p.index === 3), { weight: 7 })
    t.equal(a.pending, 0)
  })

  t.test('calls beyond maxPending fail at once instead of queueing', async t => {
    const redis = await redisFor(t)
    const store = new RedisStore({ url: redis.url, namespace: freshNamespace(), commandTimeout: 1000, maxPending: 2 })
    t.teardown(async () => await store.close())
    await store.connect()
    redis.pause()
    t.teardown(() => redis.resume())
    const calls = Array.from({ length: 5 }, async () => await timed(store.owner('leader')))
    const third = await calls[2]
    t.ok(third.ms < 100, `the third call failed at once (${third.ms} ms)`)
    t.match(third.error, { message: /2 commands wait for Redis \(maxPending 2\)/ })
    t.match(await Promise.all(calls), [{ error: { message: /within 1000 ms/ } }, { error: { message: /within 1000 ms/ } }, {}, {}, {}])
    t.equal(store.status.state, 'degraded')
    t.equal(store.pending, 2)
    redis.resume()
    t.ok(await until(() => store.status.state === 'ok', 10_000))
  })

  t.test('a stopped Redis at connect: connect() gives up after connectTimeout', async t => {
    const redis = await redisFor(t)
    redis.pause()
    t.teardown(() => redis.resume())
    const store = new RedisStore({ url: redis.url, commandTimeout: 200, connectTimeout: 300 })
    t.teardown(async () => await store.close())
    const connecting = await timed(store.connect())
    t.ok(connecting.ms >= 250 && connecting.ms < BOUND, `connect() settled in ${connecting.ms} ms`)
    t.match(store.status, { state: 'degraded', reason: 'no answer from Redis within 300 ms' })
    await store.connect()
    redis.resume()
    t.ok(await until(() => store.status.state === 'ok', 10_000), 'ok once Redis answers')
  })

  t.test('no Redis at the address: connect() gives up in bounded time, calls fail fast', async t => {
    const port = await freePort()
    const store = new RedisStore({ url: `redis://127.0.0.1:${port}`, commandTimeout: 200, connectTimeout: 300, retryInterval: 100 })
    t.teardown(async () => await store.close())
    t.equal(store.status.state, 'connecting')
    const connecting = await timed(store.connect())
    t.ok(connecting.ms < BOUND, `connect() settled in ${connecting.ms} ms`)
    t.equal(store.status.state, 'degraded')
    t.ok(store.status.reason !== null && store.status.reason !== '', `with a reason: ${store.status.reason}`)
    assertFailedFast(t, await everyCall(store))
    const closing = await timed(store.close())
    t.ok(closing.ms < BOUND, 'close() does not wait for Redis')
  })
})
