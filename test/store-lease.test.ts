import t, { type Test } from 'tap'
import { MemoryBackend, MemoryStore } from '../lib/store/memory-store.js'
import { RedisStore } from '../lib/store/redis-store.js'
import { LeaseKeeper, withLease } from '../lib/store/lease.js'
import { StoreUnavailableError } from '../lib/errors.js'
import type { Store } from '../lib/store/types.js'
import { redisFor, redisSkip } from './helpers/redis.js'
import { sleep, until } from './helpers/wait.js'

/** A gateway's view of a shared store that can be cut off from it (a partition, or the gateway frozen). */
function cutOff (store: Store): { store: Store, cut: (off: boolean) => void } {
  let off = false
  const view = new Proxy(store, {
    get (target, key) {
      const value = Reflect.get(target, key, target)
      if (typeof value !== 'function') return value
      return (...args: unknown[]) => off && key !== 'on' && key !== 'off'
        ? Promise.reject(new StoreUnavailableError('cut off'))
        : value.apply(target, args)
    }
  })
  return { store: view, cut: value => { off = value } }
}

function keeper (t: Test, store: Store, owner: string, ttlMs = 300, renewMs?: number): LeaseKeeper {
  const lease = new LeaseKeeper(store, 'checks:backend/0', owner, { ttlMs, renewMs })
  t.teardown(async () => await lease.stop())
  return lease
}

t.test('LeaseKeeper: renewals keep it past its ttl', async t => {
  const backend = new MemoryBackend()
  const a = keeper(t, new MemoryStore({ backend }), 'gw-a', 300)
  const b = keeper(t, new MemoryStore({ backend }), 'gw-b', 300)
  a.start()
  t.ok(await until(() => a.held))
  b.start()
  await sleep(1000)
  t.ok(a.held, 'still held after three ttls')
  t.notOk(b.held, 'the other waits')
})

t.test('LeaseKeeper: one holder at a time; another takes over when it stops', async t => {
  const backend = new MemoryBackend()
  // A ttl far longer than the test: only a release lets the other in.
  const a = keeper(t, new MemoryStore({ backend }), 'gw-a', 60_000, 100)
  const b = keeper(t, new MemoryStore({ backend }), 'gw-b', 60_000, 100)
  const events: string[] = []
  a.on('acquired', () => events.push('a acquired'))
  b.on('acquired', () => events.push('b acquired'))
  a.on('lost', reason => events.push(`a lost: ${reason}`))
  a.start()
  t.ok(await until(() => a.held), 'the first takes it')
  b.start()
  await sleep(300)
  t.ok(a.held)
  t.notOk(b.held, 'the other waits')
  await a.stop()
  t.notOk(a.held)
  t.ok(await until(() => b.held, 2000), 'the other takes it once released')
  t.same(events, ['a acquired', 'b acquired'], 'a stop is not a loss')
})

t.test('LeaseKeeper: a holder cut off stops counting it as its own after its ttl, and another takes it', async t => {
  const backend = new MemoryBackend()
  const { store, cut } = cutOff(new MemoryStore({ backend }))
  const a = keeper(t, store, 'gw-a')
  const b = keeper(t, new MemoryStore({ backend }), 'gw-b')
  const lost: string[] = []
  a.on('lost', reason => lost.push(reason))
  a.start()
  t.ok(await until(() => a.held))
  b.start()
  cut(true)
  const cutAt = Date.now()
  t.ok(await until(() => !a.held, 2000), 'no longer held once renewals failed for a ttl')
  t.ok(Date.now() - cutAt < 2000)
  t.same(lost, ['not renewed within its ttl'])
  t.ok(await until(() => b.held, 2000), 'the other took it over')
  cut(false)
  await sleep(300)
  t.notOk(a.held, 'back in touch, it finds the lease taken')
  t.ok(b.held)
})

t.test('LeaseKeeper: a holder that finds another owner (it was frozen past its ttl) loses it at once', async t => {
  const backend = new MemoryBackend()
  const other = new MemoryStore({ backend })
  // A ttl far longer than the renewal period: the renewal finds the new owner long before its own ttl could run out, even on a loaded machine.
  const a = new LeaseKeeper(new MemoryStore({ backend }), 'leader', 'gw-a', { ttlMs: 10_000, renewMs: 100 })
  t.teardown(async () => await a.stop())
  const lost: string[] = []
  a.on('lost', reason => lost.push(reason))
  a.start()
  t.ok(await until(() => a.held))
  await other.release('leader', 'gw-a')
  t.ok(await other.acquire('leader', 'gw-b', 60_000), 'another took it')
  t.ok(await until(() => lost.length > 0, 5000))
  t.same(lost, ['another owner holds it'])
  t.notOk(a.held)
})

t.test('LeaseKeeper: stopped while its first attempt runs, it gives up what that attempt took', async t => {
  const store = new MemoryStore()
  const lease = new LeaseKeeper(store, 'leader', 'gw-a', { ttlMs: 60_000 })
  const acquired: string[] = []
  lease.on('acquired', () => acquired.push('acquired'))
  lease.start()
  await lease.stop()
  t.equal(await store.owner('leader'), null, 'released')
  t.notOk(lease.held)
  t.same(acquired, [], 'and never said it held it')
})

t.test('LeaseKeeper: bad arguments throw at construction', async t => {
  const store = new MemoryStore()
  t.throws(() => new LeaseKeeper(store, '', 'gw', { ttlMs: 100 }), /lease name must be a non-empty string/)
  t.throws(() => new LeaseKeeper(store, 'x', 'gw', { ttlMs: 0 }), /ttlMs must be an integer/)
  t.throws(() => new LeaseKeeper(store, 'x', 'gw', undefined as never), /ttlMs must be an integer/)
  t.throws(() => new LeaseKeeper(store, 'x', 'gw', { ttlMs: 100, renewMs: 100 }), /renewMs \(100\) must be shorter than ttlMs \(100\)/)
})

async function singleFlight (t: Test, stores: Store[]): Promise<void> {
  let running = 0
  let most = 0
  const task = async (): Promise<string> => {
    running++
    most = Math.max(most, running)
    await sleep(3000) // three ttls: renewals keep the lease
    running--
    return 'started'
  }
  // A ttl of a second, renewed every third of it: wide enough that a loaded machine's late timers do not let it lapse.
  const all = Promise.all(stores.map(async (store, i) => await withLease(store, 'start:backend0', `gw-${i}`, 1000, task)))
  await sleep(2000)
  t.notOk(await stores[1].acquire('start:backend0', 'late', 1000), 'a late comer finds it held past its first ttl')
  const results = await all
  const winners = results.filter(result => result.acquired)
  t.equal(winners.length, 1, 'one ran the task')
  t.equal(most, 1, 'never two at once')
  t.match(winners[0], { acquired: true, value: 'started' })
  const winner = `gw-${results.indexOf(winners[0])}`
  t.ok(results.filter(result => !result.acquired).every(result => !result.acquired && result.owner === winner), 'the others were told who runs it')
  t.equal(await stores[0].owner('start:backend0'), null, 'released when the task ended')
}

t.test('withLease: single flight across gateways, renewed while the task runs, released after', async t => {
  const backend = new MemoryBackend()
  await singleFlight(t, [new MemoryStore({ backend }), new MemoryStore({ backend }), new MemoryStore({ backend })])
})

t.test('withLease: released when the task fails; rejects when the store cannot tell', async t => {
  const store = new MemoryStore()
  await t.rejects(withLease(store, 'start:x', 'gw', 1000, async () => { throw new Error('spawn error') }), /spawn error/)
  t.equal(await store.owner('start:x'), null, 'released')
  const { store: view, cut } = cutOff(store)
  cut(true)
  await t.rejects(withLease(view, 'start:x', 'gw', 1000, async () => 'never'), { code: 'FST_SUPERVISORD_STORE_UNAVAILABLE' })
})

t.test('on Redis', { skip: redisSkip }, async t => {
  const redis = await redisFor(t)
  const open = async (): Promise<RedisStore> => {
    const store = new RedisStore({ url: redis.url, namespace: 'lease-test', commandTimeout: 1000 })
    t.teardown(async () => await store.close())
    await store.connect()
    return store
  }
  t.test('withLease: single flight across three gateways', async t => {
    await singleFlight(t, [await open(), await open(), await open()])
  })
  t.test('LeaseKeeper: another takes over within a ttl when the holder stops renewing', async t => {
    const { store, cut } = cutOff(await open())
    const a = keeper(t, store, 'gw-a', 400)
    const b = keeper(t, await open(), 'gw-b', 400)
    a.start()
    t.ok(await until(() => a.held))
    b.start()
    await sleep(500)
    t.notOk(b.held)
    cut(true)
    t.ok(await until(() => b.held, 3000), 'taken over')
    t.notOk(a.held)
  })
})
