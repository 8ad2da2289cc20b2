import t from 'tap'
import { request } from 'undici'
import { backendFor, backendsFor, freePort, startBackend, whoAmI } from './helpers/backends.js'
import { gateway, backendsOf, clientFor, countOf, listening } from './helpers/gateway.js'
import { until } from './helpers/wait.js'

t.test('round-robin over real backends follows weights 3:1 within 2% and smoothly', async t => {
  const backends = await backendsFor(t, 2)
  const app = await gateway({ backend: { servers: [{ address: backends[0].address, weight: 3 }, backends[1].address] } })
  t.teardown(() => app.close())
  const seen = await backendsOf(app, 400)
  const counts = countOf(seen)
  t.equal(counts.get(0), 300, '3/4 of 400 to the weight-3 peer')
  t.equal(counts.get(1), 100)
  let run = 0
  let longest = 0
  for (let i = 0; i < seen.length; i++) {
    run = i > 0 && seen[i] === seen[i - 1] ? run + 1 : 1
    longest = Math.max(longest, run)
  }
  t.ok(longest <= 3, `no run longer than the weight (longest ${longest})`)
})

t.test('the peer header names the peer that answered, off by default', async t => {
  const backends = await backendsFor(t, 1)
  const on = await gateway({ b: { servers: [backends[0].address] } }, { peerHeader: true })
  t.teardown(() => on.close())
  t.equal((await on.inject('/')).headers['x-upstream-peer'], backends[0].address)
  const off = await gateway({ b: { servers: [backends[0].address] } })
  t.teardown(() => off.close())
  t.equal((await off.inject('/')).headers['x-upstream-peer'], undefined)
})

t.test('prefix and rewritePrefix reach the backend with the query string', async t => {
  const seenUrls: string[] = []
  const backend = await backendFor(t, (req, res) => { seenUrls.push(req.url ?? ''); res.end('ok') })
  const app = await gateway({ b: { servers: [backend.address] } }, { prefix: '/api', rewritePrefix: '/v1' })
  t.teardown(() => app.close())
  const res = await app.inject('/api/items?x=1&y=2')
  t.equal(res.statusCode, 200)
  t.same(seenUrls, ['/v1/items?x=1&y=2'])
})

t.test('a closed backend: GETs and POSTs go to the live peer (nothing reached the closed one), it returns after failTimeout', async t => {
  const backends = await backendsFor(t, 2)
  const app = await gateway({ backend: { servers: backends.map(b => ({ address: b.address, failTimeout: 300 })) } })
  t.teardown(() => app.close())
  const peer0 = app.upstreams.get('backend').peers[0]
  await backends[0].close()

  const statuses = []
  for (let i = 0; i < 10; i++) statuses.push((await app.inject('/')).statusCode)
  t.same(statuses, Array(10).fill(200), 'every GET is retried on the live peer')
  t.equal(peer0.fails, 1, 'the first GET was sent to the closed peer, and retried')
  t.equal(backends[1].hits, 10, 'the live peer answered all ten')
  t.equal(peer0.passive, 'failed', 'the closed peer is out of rotation')

  peer0.clearPassive('test')
  // round-robin now tries peer 0 first for one of the two POSTs: its
  // connection is refused, so the POST never reached it and goes on.
  const base = await listening(app)
  const posts = []
  const liveHits = backends[1].hits
  for (let i = 0; i < 2; i++) {
    const res = await request(base, { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } })
    posts.push({ statusCode: res.statusCode, body: await res.body.json() as { backend: number } })
  }
  t.same(posts, [{ statusCode: 200, body: { backend: 1 } }, { statusCode: 200, body: { backend: 1 } }], 'both POSTs answered by the live peer')
  t.equal(backends[1].hits, liveHits + 2, 'each once')
  t.equal(peer0.fails, 2, 'the refused POST is charged to the closed peer')
  t.equal(peer0.passive, 'failed')

  // bring the backend back on the same port and wait out failTimeout
  backends[0] = await startBackend(0, whoAmI, backends[0].port)
  t.ok(await until(() => peer0.passive === 'ok', 2000), 'failTimeout passed: tried again')
  const seen = countOf(await backendsOf(app, 10))
  t.equal(seen.get(0), 5, 'peer 0 serves again')
})

t.test('a POST whose connection the peer reset is not sent again: 502', async t => {
  const resetter = await backendFor(t, (req) => { req.socket.destroy() }, 0)
  const live = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [resetter.address, live.address] } })
  t.teardown(() => app.close())
  const base = await listening(app)
  const res = await request(base, { method: 'POST', body: 'x' })
  const body = await res.body.json() as { code: string, message: string }
  t.equal(res.statusCode, 502)
  t.equal(body.code, 'FST_SUPERVISORD_PEER_CONNECT')
  t.equal(body.message, 'A peer of upstream "b" could not be reached or dropped the connection')
  t.same([resetter.hits, live.hits], [1, 0], 'it reached the resetting peer, and no other')
  t.equal(app.upstreams.get('b').peers[0].passive, 'failed')
})

t.test('maxFails counts failures within failTimeout before taking a peer out', async t => {
  const port = await freePort()
  const live = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [{ address: `127.0.0.1:${port}`, maxFails: 3, failTimeout: 10_000 }, live.address] } }, { nextUpstreamTries: 1 })
  t.teardown(() => app.close())
  const peer = app.upstreams.get('b').peers[0]
  const codes = await backendsOf(app, 6)
  t.same(codes, [-502, 1, -502, 1, -502, 1], 'three failures reach the client (no retry allowed), peer 0 still in rotation after two')
  t.equal(peer.passive, 'failed', 'out after the third')
  t.same(await backendsOf(app, 4), [1, 1, 1, 1])
})

t.test('a backend that times out: GET retried elsewhere, POST gets 504', async t => {
  const slow = await backendFor(t, () => { /* never answers */ }, 0)
  const fast = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [slow.address, fast.address] } }, { headersTimeout: 150 })
  t.teardown(() => app.close())
  const [hanging] = app.upstreams.get('b').peers
  const get = await app.inject('/')
  t.equal(get.statusCode, 200)
  t.equal(get.headers['x-backend'], '1')
  t.same([slow.hits, fast.hits], [1, 1], 'the GET went to the hanging peer first, then to the other')
  t.match(hanging, { passive: 'failed', fails: 1 }, 'the timeout counts as a failure of the hanging peer')
  hanging.clearPassive('test')
  const codes = []
  for (let i = 0; i < 2; i++) codes.push((await app.inject({ method: 'POST', url: '/', payload: 'x' })).statusCode)
  t.same(codes.sort(), [200, 504], 'the POST to the hanging peer gets 504')
  t.same([slow.hits, fast.hits], [2, 2], 'and is not retried elsewhere')
})

t.test('a reset connection on GET is retried on the next peer', async t => {
  const resetter = await backendFor(t, (req) => { req.socket.destroy() }, 0)
  const good = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [resetter.address, good.address] } })
  t.teardown(() => app.close())
  const first = await app.inject('/')
  t.equal(first.statusCode, 200, 'reset peer skipped for the next one')
  t.same([resetter.hits, good.hits], [1, 1], 'sent to the resetting peer first, then retried')
  t.equal(app.upstreams.get('b').peers[0].passive, 'failed')
  t.same(await backendsOf(app, 3), [1, 1, 1])
})

t.test('a nextUpstream status with nextUpstreamTries 1 counts as a passive failure; the answer is passed through, not retried', async t => {
  const erring = await backendFor(t, (_req, res) => { res.statusCode = 503; res.end('busy') }, 0)
  const good = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [erring.address, good.address] } }, { nextUpstream: ['error', 'timeout', 'http_503'], nextUpstreamTries: 1 })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.body, 'busy')
  t.same([erring.hits, good.hits], [1, 0], 'reply-from did not retry the 503, on the same peer or another')
  t.equal(app.upstreams.get('b').peers[0].passive, 'failed', 'but counted as a failure')
  t.same(await backendsOf(app, 3), [1, 1, 1])
})

t.test('no routable peer: 503 with Retry-After', async t => {
  const app = await gateway({ b: { servers: [{ address: '127.0.0.1:1', down: true }] } }, { retryAfter: 7 })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '7')
  t.equal(res.json().code, 'FST_SUPERVISORD_NO_PEER')
})

t.test('backup peers serve only while every primary is down', async t => {
  const backends = await backendsFor(t, 3)
  const app = await gateway({ b: { servers: [backends[0].address, backends[1].address, { address: backends[2].address, backup: true }] } })
  t.teardown(() => app.close())
  const peers = app.upstreams.get('b').peers
  t.notOk((await backendsOf(app, 10)).includes(2), 'backup idle while primaries are up')
  peers[0].setAdmin('maint')
  t.notOk((await backendsOf(app, 10)).includes(2), 'one primary left is enough')
  peers[1].setProcess('down')
  t.same(await backendsOf(app, 5), [2, 2, 2, 2, 2], 'backup takes over')
  peers[1].setProcess('up')
  t.same(await backendsOf(app, 4), [1, 1, 1, 1], 'and steps back')
})

t.test('in-flight counts follow responses, errors and client aborts', async t => {
  let hold: (() => void) | undefined
  const slow = await backendFor(t, (_req, res) => { hold = () => res.end('late') })
  const app = await gateway({ b: { servers: [slow.address] } })
  const base = await listening(app)
  t.teardown(() => app.close())
  const dispatcher = clientFor(t)
  const peer = app.upstreams.get('b').peers[0]

  const pending = request(base, { dispatcher })
  t.ok(await until(() => slow.hits === 1, 2000), 'the request reached the backend')
  t.equal(peer.inflight, 1, 'counted while the backend works')
  hold?.()
  await (await pending).body.text()
  t.equal(peer.inflight, 0, 'released when the response ends')

  const controller = new AbortController()
  const aborted = request(base, { dispatcher, signal: controller.signal }).catch(() => 'aborted')
  t.ok(await until(() => slow.hits === 2, 2000), 'the second request reached the backend')
  t.equal(peer.inflight, 1)
  controller.abort()
  t.equal(await aborted, 'aborted')
  t.ok(await until(() => peer.inflight === 0, 1000), 'released when the client goes away, the backend still working')
  // The backend never answers the departed client: closing it ends the
  // request to it at once, so the gateway's close does not wait for it.
  await slow.close()
})

t.test('bad proxy options fail at registration naming the option', async t => {
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { headersTimeout: -1 }), /proxy to upstream "b": option "headersTimeout" must be/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { failStatuses: [503] } as never), /option "failStatuses" is not taken: it was replaced by nextUpstream/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { nextUpstream: ['http_418'] } as never), /option "nextUpstream" must be a list of nginx's proxy_next_upstream words/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { nextUpstream: ['off', 'error'] }), /"off" stands alone/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { upstream: 'nope' }), /unknown upstream "nope" \(known: "b"\)/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { prefix: 'api' }), /option "prefix" must start with "\/"/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { retries: 3 } as never), /unknown option "retries"/)
})
