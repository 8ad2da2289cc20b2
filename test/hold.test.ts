import t from 'tap'
import { request } from 'undici'
import { startBackend } from './helpers/backends.js'
import { gateway, listening } from './helpers/gateway.js'

// Holding is driven through the registry's own API: whatever can start peers
// sets `startsOnDemand` and answers `demand` events. The supervisord bridge is
// that starter in production; its own tests run it against a real daemon.
// The hold timers are unref()ed, so gateways listen: as in production, the
// server is what keeps the process alive.

t.test('held requests go out in arrival order the moment a peer is up; one demand for 50 requests', async t => {
  const order: string[] = []
  const backend = await startBackend(0, (req, res) => { order.push(req.url ?? ''); res.end('ok') })
  t.teardown(() => backend.close())
  const app = await gateway({ b: { servers: [{ address: backend.address, down: true }] } })
  t.teardown(() => app.close())
  const upstream = app.upstreams.get('b')
  upstream.startsOnDemand = true
  let demands = 0
  app.upstreams.on('demand', () => {
    demands++
    upstream.peers[0].setProcess('starting')
    setTimeout(() => upstream.peers[0].setProcess('up'), 100)
  })
  const started = Date.now()
  const responses = await Promise.all(Array.from({ length: 50 }, async (_, i) => await app.inject(`/r${i}`)))
  t.ok(Date.now() - started >= 90, 'they waited for the start')
  t.same(responses.map(r => r.statusCode), Array(50).fill(200))
  t.equal(demands, 1, 'exactly one start asked for')
  t.same(order, Array.from({ length: 50 }, (_, i) => `/r${i}`), 'released in arrival order')
  t.equal(upstream.peers[0].inflight, 0)
})

t.test('maxHeld overflow and holdTimeout answer 503 with Retry-After', async t => {
  const app = await gateway({ b: { servers: [{ address: '127.0.0.1:1', down: true }] } }, { maxHeld: 2, holdTimeout: 150, retryAfter: 3 })
  await listening(app)
  t.teardown(() => app.close())
  app.upstreams.get('b').startsOnDemand = true
  const started = Date.now()
  const [a, b, c] = await Promise.all([app.inject('/'), app.inject('/'), app.inject('/')])
  t.equal(c.statusCode, 503)
  t.equal(c.json().code, 'FST_SUPERVISORD_HOLD_OVERFLOW')
  t.equal(c.headers['retry-after'], '3')
  for (const res of [a, b]) {
    t.equal(res.statusCode, 503)
    t.equal(res.json().code, 'FST_SUPERVISORD_HOLD_TIMEOUT')
    t.match(res.json().message, /within 150 ms/)
    t.equal(res.headers['retry-after'], '3')
  }
  t.ok(Date.now() - started < 1000, 'nothing waits past holdTimeout')
})

t.test('a failed start answers 502 with the reason', async t => {
  const app = await gateway({ b: { servers: [{ address: '127.0.0.1:1', down: true }] } })
  await listening(app)
  t.teardown(() => app.close())
  const upstream = app.upstreams.get('b')
  upstream.startsOnDemand = true
  app.upstreams.on('demand', () => {
    setTimeout(() => app.upstreams.emit('command', {
      upstream: 'b', index: 0, command: 'start', ok: false, fault: 'SPAWN_ERROR', reason: 'SPAWN_ERROR: b0', at: Date.now()
    }), 20)
  })
  const res = await app.inject('/')
  t.equal(res.statusCode, 502)
  t.equal(res.json().code, 'FST_SUPERVISORD_START_FAILED')
  t.match(res.json().message, /SPAWN_ERROR: b0/)
})

t.test('a client that disconnects while held leaves the queue', async t => {
  const backend = await startBackend(0)
  t.teardown(() => backend.close())
  const app = await gateway({ b: { servers: [{ address: backend.address, down: true }] } }, { maxHeld: 1 })
  const base = await listening(app)
  t.teardown(() => app.close())
  const upstream = app.upstreams.get('b')
  upstream.startsOnDemand = true
  const controller = new AbortController()
  const gone = request(base, { signal: controller.signal }).catch(() => 'aborted')
  await new Promise(resolve => setTimeout(resolve, 50))
  controller.abort()
  t.equal(await gone, 'aborted')
  await new Promise(resolve => setTimeout(resolve, 50))
  // the single hold slot is free again: a new request is held, not refused
  const next = request(base)
  await new Promise(resolve => setTimeout(resolve, 50))
  upstream.peers[0].setProcess('up')
  const res = await next
  t.equal(res.statusCode, 200)
  await res.body.text()
  t.equal(backend.hits, 1, 'the departed client was never sent on')
})

t.test('without a starter, no routable peer is an immediate 503 (no hold)', async t => {
  const app = await gateway({ b: { servers: [{ address: '127.0.0.1:1', down: true }] } }, { holdTimeout: 5000 })
  t.teardown(() => app.close())
  let demands = 0
  app.upstreams.on('demand', () => demands++)
  const started = Date.now()
  t.equal((await app.inject('/')).statusCode, 503)
  t.ok(Date.now() - started < 1000)
  t.equal(demands, 0)
})

t.test('closing the server answers held requests', async t => {
  const app = await gateway({ b: { servers: [{ address: '127.0.0.1:1', down: true }] } })
  await listening(app)
  app.upstreams.get('b').startsOnDemand = true
  const held = app.inject('/')
  await new Promise(resolve => setTimeout(resolve, 30))
  await app.close()
  t.equal((await held).statusCode, 503)
})
