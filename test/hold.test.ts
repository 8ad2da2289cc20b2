import t from 'tap'
import { request } from 'undici'
import { backendFor } from './helpers/backends.js'
import { clientFor, gateway, onDemandGateway } from './helpers/gateway.js'
import { sleep, until } from './helpers/wait.js'

// Holding is driven through the registry's own API: whatever can start peers
// calls `startOnDemand()` and answers `demand` events. The supervisord bridge is
// that starter in production; its own tests run it against a real daemon.
// The hold timers are unref()ed, so gateways listen: as in production, the
// server is what keeps the process alive.

t.test('held requests go out in arrival order the moment a peer is up; one demand for 50 requests', async t => {
  const order: string[] = []
  const backend = await backendFor(t, (req, res) => { order.push(req.url ?? ''); res.end('ok') })
  const { app, upstream, demands } = await onDemandGateway(t, [{ address: backend.address, down: true }])
  let sentBeforeUp = -1
  let sentOnAtUp = -1
  app.upstreams.on('demand', () => {
    upstream.peers[0].setProcess('starting')
    setTimeout(() => {
      sentBeforeUp = upstream.peers[0].requests
      upstream.peers[0].setProcess('up')
      // Released the moment the peer is up: all sent on before anything else runs.
      setImmediate(() => { sentOnAtUp = upstream.peers[0].requests })
    }, 100)
  })
  const started = Date.now()
  const responses = await Promise.all(Array.from({ length: 50 }, async (_, i) => await app.inject(`/r${i}`)))
  t.ok(Date.now() - started >= 90, 'they waited for the start')
  t.same(responses.map(r => r.statusCode), Array(50).fill(200))
  t.equal(demands(), 1, 'exactly one start asked for')
  t.equal(sentBeforeUp, 0, 'none sent on while the peer was starting')
  t.equal(sentOnAtUp, 50, 'all 50 released as the peer came up')
  t.equal(backend.hits, 50)
  t.same(order, Array.from({ length: 50 }, (_, i) => `/r${i}`), 'released in arrival order')
  t.equal(upstream.peers[0].inflight, 0)
})

t.test('maxHeld overflow and holdTimeout answer 503 with Retry-After', async t => {
  const { app } = await onDemandGateway(t, [{ address: '127.0.0.1:1', down: true }], { maxHeld: 2, holdTimeout: 150, retryAfter: 3 })
  const started = Date.now()
  const [a, b, c] = await Promise.all([app.inject('/'), app.inject('/'), app.inject('/')])
  const waited = Date.now() - started
  t.equal(c.statusCode, 503)
  t.equal(c.json().code, 'FST_SUPERVISORD_HOLD_OVERFLOW')
  t.equal(c.headers['retry-after'], '3')
  for (const res of [a, b]) {
    t.equal(res.statusCode, 503)
    t.equal(res.json().code, 'FST_SUPERVISORD_HOLD_TIMEOUT')
    t.match(res.json().message, /within 150 ms/)
    t.equal(res.headers['retry-after'], '3')
  }
  t.ok(waited >= 140, `the two held were held for holdTimeout (${waited} ms)`)
  t.ok(waited < 1000, 'nothing waits much past holdTimeout')
})

/** What a starter does with a failed start: the peer backs off, goes down, and the command is told. */
function failStart (app: Awaited<ReturnType<typeof gateway>>, index: number, backoffMs: number): void {
  const peer = app.upstreams.get('b').peers[index]
  peer.setBackoff({ step: 1, until: Date.now() + backoffMs, reason: 'SPAWN_ERROR: b0', cause: 'program' })
  peer.setProcess('down', 'SPAWN_ERROR')
  app.upstreams.emit('command', { upstream: 'b', index, command: 'start', ok: false, fault: 'SPAWN_ERROR', reason: 'SPAWN_ERROR: b0', at: Date.now() })
}

for (const exposeErrors of [false, true]) {
  t.test(`a failed start with no other candidate answers 502 with the code and the upstream${exposeErrors ? ', and the reason when errors are exposed' : ''}`, async t => {
    const { app, upstream, demands } = await onDemandGateway(t, [{ address: '127.0.0.1:1', down: true }], { exposeErrors })
    app.upstreams.on('demand', () => {
      if (demands() > 1) return
      upstream.peers[0].setProcess('starting')
      setTimeout(() => failStart(app, 0, 60_000), 20)
    })
    const res = await app.inject('/')
    t.equal(res.statusCode, 502)
    t.same(res.json(), {
      statusCode: 502,
      code: 'FST_SUPERVISORD_START_FAILED',
      error: 'Bad Gateway',
      message: exposeErrors ? 'Could not start a peer of upstream "b": SPAWN_ERROR: b0' : 'Upstream "b" could not serve the request (the reason is in the gateway\'s log)'
    })
    t.equal(demands(), 1, 'nothing else to start: no second demand')
  })
}

t.test('held requests stay held while the next candidate is started after a failed start', async t => {
  const backend = await backendFor(t)
  const { app, upstream } = await onDemandGateway(t, [{ address: '127.0.0.1:1', down: true }, { address: backend.address, down: true }])
  const asked: number[] = []
  app.upstreams.on('demand', () => {
    const peer = upstream.startCandidate()
    if (peer === undefined) return
    asked.push(peer.index)
    peer.setProcess('starting')
    setTimeout(() => peer.index === 0 ? failStart(app, 0, 60_000) : peer.setProcess('up'), 20)
  })
  const responses = await Promise.all(Array.from({ length: 5 }, async () => await app.inject('/')))
  t.same(responses.map(r => r.statusCode), [200, 200, 200, 200, 200])
  t.same(asked, [0, 1], 'peer 0 failed, then peer 1 was asked for')
  t.equal(backend.hits, 5)
})

t.test('every startable peer in back-off: 503 at once, Retry-After the time to the next try, counted as refused', async t => {
  const { app, upstream, demands } = await onDemandGateway(t, [{ address: '127.0.0.1:1', down: true }, { address: '127.0.0.1:2', down: true }], { retryAfter: 5 })
  upstream.peers[0].setBackoff({ step: 1, until: Date.now() + 2500, reason: 'x', cause: 'program' })
  upstream.peers[1].setBackoff({ step: 3, until: Date.now() + 8000, reason: 'x', cause: 'program' })
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_SUPERVISORD_START_BACKOFF')
  t.equal(res.headers['retry-after'], '3', 'the earliest back-off end, in seconds rounded up')
  await app.inject('/')
  t.equal(demands(), 0, 'nothing was asked for')
  t.equal(upstream.takeRefused(), 2)
  upstream.peers[0].setBackoff(null)
  app.upstreams.on('demand', () => upstream.peers[0].setProcess('starting'))
  const held = app.inject('/')
  t.ok(await until(() => demands() === 1), 'out of back-off: held and asked for')
  failStart(app, 0, 60_000)
  t.equal((await held).statusCode, 502, 'that start failed too, and the other peer is still backing off: every candidate failed')
})

t.test('no peer that could be started (drained, maint): 503 at once, not held', async t => {
  const { app } = await onDemandGateway(t, [{ address: '127.0.0.1:1', down: true }, { address: '127.0.0.1:2', down: true }], { holdTimeout: 10_000 })
  app.upstreams.setAdmin('b', 0, 'drain')
  app.upstreams.setAdmin('b', 1, 'maint')
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_SUPERVISORD_NO_PEER')
  t.equal(res.headers['retry-after'], '5')
})

t.test('a client that disconnects while held leaves the queue', async t => {
  const backend = await backendFor(t)
  const { upstream, base, demands } = await onDemandGateway(t, [{ address: backend.address, down: true }], { maxHeld: 1 })
  const dispatcher = clientFor(t)
  // The first request held asks for a start: a demand says the queue went from empty to one.
  const controller = new AbortController()
  const gone = request(base, { dispatcher, signal: controller.signal }).catch(() => 'aborted')
  t.ok(await until(() => demands() === 1, 2000), 'the first request is held')
  controller.abort()
  t.equal(await gone, 'aborted')
  // the single hold slot is free again: a new request is held (a new demand), not refused
  const next = request(base, { dispatcher })
  t.ok(await until(() => demands() === 2, 2000), 'the next request is held in the freed slot')
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
  const { app, demands } = await onDemandGateway(t, [{ address: '127.0.0.1:1', down: true }], { holdTimeout: 60_000 })
  const held = app.inject('/')
  t.ok(await until(() => demands() === 1, 2000), 'the request is held')
  const closing = Date.now()
  await app.close()
  const res = await held
  t.ok(Date.now() - closing < 1000, 'answered at close, not at holdTimeout')
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_SUPERVISORD_NO_PEER')
  t.equal(res.headers['retry-after'], '5')
})

t.test('each held request times out at its own deadline; the later one still goes out', async t => {
  const backend = await backendFor(t)
  const { app, upstream } = await onDemandGateway(t, [{ address: backend.address, down: true }], { holdTimeout: 300 })
  const first = app.inject('/first')
  // Half the hold timeout later: the two deadlines are apart.
  await sleep(150)
  const second = app.inject('/second')
  const expired = await first
  t.equal(expired.statusCode, 503)
  t.equal(expired.json().code, 'FST_SUPERVISORD_HOLD_TIMEOUT')
  upstream.peers[0].setProcess('up')
  t.equal((await second).statusCode, 200, 'the later request was still held, and is served')
  t.equal(backend.hits, 1)
})

t.test('a starter that fails at once, inside the demand, is not asked again from within it', async t => {
  const { app, demands } = await onDemandGateway(t, [{ address: '127.0.0.1:1', down: true }], { holdTimeout: 200 })
  app.upstreams.on('demand', () => {
    // No back-off set: the peer stays a candidate.
    app.upstreams.emit('command', { upstream: 'b', index: 0, command: 'start', ok: false, fault: 'SPAWN_ERROR', reason: 'x', at: Date.now() })
  })
  const res = await app.inject('/')
  t.equal(res.json().code, 'FST_SUPERVISORD_HOLD_TIMEOUT', 'held until holdTimeout, as nothing said the start cannot be tried again')
  t.equal(demands(), 1, 'one demand, not one per failure told within it')
})
