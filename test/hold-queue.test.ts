import t, { type Test } from 'tap'
import Fastify, { type FastifyRequest } from 'fastify'
import { Registry } from '../lib/registry.js'
import type { UpstreamOptions } from '../lib/upstream.js'
import type { Peer } from '../lib/peer.js'
import { HoldQueue, sendHoldFailure } from '../lib/hold-queue.js'
import { HoldTimeoutError, NoPeerError, StartFailedError } from '../lib/errors.js'
import { sleep } from './helpers/wait.js'

// The hold queue on its own, over a real registry: what it counts, when it
// asks for a start, what it listens to and for how long, which failure it
// names. The proxy's hold tests (hold.test.ts) drive the same queue through
// a gateway.

/** A request as the queue sees it: only its identity (round-robin picks ignore the rest). */
const aRequest = (): FastifyRequest => ({}) as FastifyRequest

interface Setup {
  registry: Registry
  queue: HoldQueue
  upstream: ReturnType<Registry['get']>
  /** Demands for upstream `u`. */
  demands: () => number
  /** The registry's change and command listeners now, beside the count before the queue held anything. */
  listeners: () => { change: number, command: number }
}

function setUp (t: Test, servers: UpstreamOptions['servers'] = [{ address: '127.0.0.1:1', down: true }], holdTimeout = 10_000): Setup {
  const registry = new Registry({ upstreams: { u: { servers }, v: { servers: [{ address: '127.0.0.1:2', down: true }] } } })
  const upstream = registry.get('u')
  upstream.startOnDemand()
  let demands = 0
  registry.on('demand', event => { if (event.upstream === 'u') demands++ })
  const queue = new HoldQueue(upstream, registry, { maxHeld: 10, holdTimeout })
  const change = registry.listenerCount('change')
  const command = registry.listenerCount('command')
  // The queue's timers are unref()ed (a gateway's server keeps the process alive): this stands in for it.
  const alive = setInterval(() => {}, 1000)
  t.teardown(() => {
    clearInterval(alive)
    queue.close(new NoPeerError('u'))
  })
  return {
    registry,
    queue,
    upstream,
    demands: () => demands,
    listeners: () => ({ change: registry.listenerCount('change') - change, command: registry.listenerCount('command') - command })
  }
}

/** One request held for the only peer, which is starting and has just backed off with `reason`. */
function heldThroughBackoff (t: Test, reason: string): Setup & { held: Promise<Peer>, peer: Peer } {
  const setup = setUp(t)
  const held = setup.queue.wait(aRequest())
  const peer = setup.upstream.peers[0]
  peer.setProcess('starting')
  peer.setBackoff({ step: 1, until: Date.now() + 60_000, reason, cause: 'program' })
  return { ...setup, held, peer }
}

t.test('the held gauge goes up per request and down per release and drop; max is the most at once; the wait recorded is the longest-held\'s', async t => {
  const { queue, upstream, demands, listeners } = setUp(t)
  const first = queue.wait(aRequest())
  await sleep(60)
  const dropped = aRequest()
  queue.wait(dropped).catch(() => {})
  const last = queue.wait(aRequest())
  t.equal(upstream.hold.current, 3)
  t.equal(demands(), 1, 'one demand for the three')
  t.same(listeners(), { change: 1, command: 1 }, 'listening while requests are held')
  queue.drop(dropped)
  t.equal(upstream.hold.current, 2, 'a client gone leaves the gauge')
  queue.drop(dropped)
  t.equal(upstream.hold.current, 2, 'dropping it twice changes nothing')
  upstream.peers[0].setProcess('up')
  t.same(await Promise.all([first, last]), [upstream.peers[0], upstream.peers[0]], 'released to the peer that came up')
  t.equal(upstream.peers[0].inflight, 2, 'each acquired for its request')
  t.equal(upstream.hold.current, 0)
  t.equal(upstream.hold.max, 3)
  const waited = upstream.hold.lastWaitMs ?? -1
  t.ok(waited >= 55 && waited < 5000, `the wait recorded is the first request's, held longest (${waited} ms)`)
  t.ok(upstream.hold.lastReleaseAt !== null)
  t.same(listeners(), { change: 0, command: 0 }, 'nothing held: no listener left')
  const alone = aRequest()
  queue.wait(alone).catch(() => {})
  queue.drop(alone)
  t.same(listeners(), { change: 0, command: 0 }, 'the only held client gone: no listener left')
})

t.test('each deadline is one timer, not a poll; timeouts are counted and leave the gauge', async t => {
  const { queue, upstream, listeners } = setUp(t, undefined, 80)
  const realSetTimeout = globalThis.setTimeout
  let timers = 0
  // The queue's own expiry timers, by their callback (whatever else sets timers meanwhile is not counted).
  globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => {
    if (String(args[0]).includes('expire')) timers++
    return realSetTimeout(...args)
  }) as typeof setTimeout
  let results: unknown[]
  try {
    const early = queue.wait(aRequest()).catch(error => error)
    await sleep(30)
    const late = queue.wait(aRequest()).catch(error => error)
    results = await Promise.all([early, late])
  } finally {
    globalThis.setTimeout = realSetTimeout
  }
  t.ok(results.every(error => error instanceof HoldTimeoutError), 'both timed out')
  // Two deadlines, a timer each; one more when a timer fires a millisecond before Date.now() reaches its deadline. A poll would be dozens.
  t.ok(timers >= 2 && timers <= 4, `${timers} timers for two deadlines`)
  t.equal(upstream.hold.timeouts, 2)
  t.equal(upstream.hold.current, 0)
  t.same(listeners(), { change: 0, command: 0 })
})

t.test('another upstream\'s changes and commands, and stop commands, leave the queue alone; a failed start of its own is another demand', async t => {
  const { registry, queue, upstream, demands } = setUp(t)
  const held = queue.wait(aRequest())
  t.equal(demands(), 1)
  registry.get('v').peers[0].setProcess('starting')
  registry.get('v').peers[0].setProcess('down', 'exited')
  registry.emit('command', { upstream: 'v', index: 0, command: 'start', ok: false, reason: 'v failed', at: Date.now() })
  registry.emit('command', { upstream: 'u', index: 0, command: 'stop', ok: false, reason: 'not running', at: Date.now() })
  t.equal(demands(), 1, 'nothing of ours changed: no second demand')
  t.equal(upstream.hold.current, 1, 'still held')
  registry.emit('command', { upstream: 'u', index: 0, command: 'start', ok: false, reason: 'SPAWN_ERROR', at: Date.now() })
  t.equal(demands(), 2, 'our start failed with the peer still a candidate: asked again')
  upstream.peers[0].setProcess('up')
  t.equal(await held, upstream.peers[0])
})

t.test('the failure named is the back-off\'s reason, set before the process went down, or what the command said', async t => {
  await t.test('the back-off\'s reason, not the process\'s', async t => {
    const { peer, held } = heldThroughBackoff(t, 'SPAWN_ERROR: b0')
    peer.setProcess('down', 'exited too quickly')
    const error = await held.catch(error => error)
    t.ok(error instanceof StartFailedError)
    t.equal(error.message, 'Could not start a peer of upstream "u": SPAWN_ERROR: b0')
  })
  await t.test('the command\'s fault when it gives no reason; a start that went well changes nothing', async t => {
    const { registry, peer, held } = heldThroughBackoff(t, 'from the back-off')
    registry.emit('command', { upstream: 'u', index: 0, command: 'start', ok: false, fault: 'SPAWN_ERROR', at: Date.now() })
    registry.emit('command', { upstream: 'u', index: 0, command: 'start', ok: true, reason: 'a start that worked elsewhere', at: Date.now() })
    peer.setProcess('down', 'exited')
    const error = await held.catch(error => error)
    t.equal(error.message, 'Could not start a peer of upstream "u": SPAWN_ERROR')
  })
  await t.test('a failed command that says nothing of why keeps the reason already known', async t => {
    const { registry, peer, held } = heldThroughBackoff(t, 'SPAWN_ERROR: b0')
    registry.emit('command', { upstream: 'u', index: 0, command: 'start', ok: false, at: Date.now() })
    peer.setProcess('down')
    t.equal((await held.catch(error => error)).message, 'Could not start a peer of upstream "u": SPAWN_ERROR: b0')
  })
})

t.test('the only peer taken out while requests are held: they fail at once, 503 no peer', async t => {
  const { registry, queue, upstream, listeners } = setUp(t)
  const held = queue.wait(aRequest())
  upstream.peers[0].setProcess('starting')
  registry.setAdmin('u', 0, 'maint')
  t.ok((await held.catch(error => error)) instanceof NoPeerError)
  t.equal(upstream.hold.current, 0)
  t.same(listeners(), { change: 0, command: 0 })
})

t.test('every peer at its maxConns: queued, released by a freed slot, and the queue stops listening', async t => {
  const { queue, upstream, listeners } = setUp(t, [{ address: '127.0.0.1:1', maxConns: 1 }])
  const peer = upstream.peers[0]
  peer.acquire()
  const queued = queue.wait(aRequest())
  t.same(listeners(), { change: 1, command: 1 })
  peer.release()
  t.equal(await queued, peer, 'the freed slot went to the queued request')
  t.equal(peer.inflight, 1)
  t.same(listeners(), { change: 0, command: 0 }, 'emptied by a freed slot: no listener left')
  const again = queue.wait(aRequest())
  t.same(listeners(), { change: 1, command: 1 }, 'one listener each when it holds again, not two')
  peer.release()
  t.equal(await again, peer)
})

t.test('a hold failure is sent in Fastify\'s error shape; Retry-After only on a 503', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.get('/:kind', (request, reply) => {
    const kind = (request.params as { kind: string }).kind
    const error = kind === 'failed' ? new StartFailedError('u', 'SPAWN_ERROR') : kind === 'timeout' ? new HoldTimeoutError('u', 100) : Object.assign(new NoPeerError('u'), { retryAfter: 7 })
    sendHoldFailure(reply, error, '5')
  })
  const failed = await app.inject('/failed')
  t.equal(failed.statusCode, 502)
  t.equal(failed.headers['retry-after'], undefined, 'a 502 says nothing of when to retry')
  t.same(failed.json(), { statusCode: 502, code: 'FST_SUPERVISORD_START_FAILED', error: 'Bad Gateway', message: 'Could not start a peer of upstream "u": SPAWN_ERROR' })
  const timedOut = await app.inject('/timeout')
  t.equal(timedOut.statusCode, 503)
  t.equal(timedOut.headers['retry-after'], '5', 'the proxy\'s retryAfter')
  t.match(timedOut.json(), { statusCode: 503, code: 'FST_SUPERVISORD_HOLD_TIMEOUT', error: 'Service Unavailable' })
  t.equal((await app.inject('/backoff')).headers['retry-after'], '7', 'the error\'s own when it has one')
})
