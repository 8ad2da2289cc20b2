import { Transform } from 'node:stream'
import t from 'tap'
import Fastify from 'fastify'
import { request } from 'undici'
import registry from '../plugins/registry.js'
import proxy from '../plugins/proxy.js'
import { backendFor, backendsFor, whoAmI, writeChunks, type BackendHandler } from './helpers/backends.js'
import { gateway, listening, loggerInto, onDemandGateway } from './helpers/gateway.js'
import { until } from './helpers/wait.js'

// What @fastify/http-proxy and nginx's proxy module do, on the balancing
// proxy: its options composed with the balancing, forwarded headers,
// nextUpstream, timeouts of our own, maxConns and virtual hosts.

/** A backend that answers what it was sent: method, url and headers, as JSON. */
const echo: BackendHandler = (req, res, backend) => {
  const body = JSON.stringify({ backend: backend.id, method: req.method, url: req.url, headers: req.headers })
  res.writeHead(200, { 'content-type': 'application/json', 'x-backend': String(backend.id) })
  res.end(body)
}

function status (code: number, body = `status ${code}`): BackendHandler {
  return (_req, res, backend) => {
    res.writeHead(code, { 'x-backend': String(backend.id) })
    res.end(body)
  }
}

t.test('a relative Location gets the prefix back (nginx proxy_redirect default); internalRewriteLocationHeader: false keeps it', async t => {
  const backend = await backendFor(t, (req, res) => {
    res.writeHead(302, { location: req.url === '/login-abs' ? 'https://elsewhere.example/login' : '/login' })
    res.end()
  })
  const app = await gateway({ b: { servers: [backend.address] } }, { prefix: '/app' })
  t.teardown(() => app.close())
  const res = await app.inject('/app/secret')
  t.equal(res.statusCode, 302)
  t.equal(res.headers.location, '/app/login', 'the client is sent back under /app')
  t.equal((await app.inject('/app/login-abs')).headers.location, 'https://elsewhere.example/login', 'an absolute URL is left alone')
  const keep = await gateway({ b: { servers: [backend.address] } }, { prefix: '/app', internalRewriteLocationHeader: false })
  t.teardown(() => keep.close())
  t.equal((await keep.inject('/app/secret')).headers.location, '/login')
})

t.test('hooks run before the pick: a request refused in preHandler or onRequest reaches no peer and starts nothing', async t => {
  const backend = await backendFor(t, echo)
  const order: string[] = []
  let peerInPreHandler: unknown = 'unset'
  const { app, upstream, demands } = await onDemandGateway(t, [{ address: backend.address, down: true }], {
    onRequest: async () => { order.push('onRequest') },
    preValidation: async () => { order.push('preValidation') },
    preHandler: async (request, reply) => {
      order.push('preHandler')
      peerInPreHandler = request.upstreamPeer
      if (request.headers.authorization !== 'Bearer ok') await reply.code(401).send({ error: 'unauthorized' })
    },
    onSend: async (_request, reply, payload) => {
      order.push('onSend')
      reply.header('x-on-send', 'yes')
      return payload
    },
    onResponse: async () => { order.push('onResponse') }
  })
  app.upstreams.on('demand', () => upstream.peers[0].setProcess('up'))
  const refused = await app.inject('/')
  t.equal(refused.statusCode, 401)
  t.equal(demands(), 0, 'a refused request started nothing')
  t.equal(backend.hits, 0)
  t.equal(peerInPreHandler, null, 'no peer is picked yet in preHandler')
  order.length = 0
  const served = await app.inject({ url: '/', headers: { authorization: 'Bearer ok' } })
  t.equal(served.statusCode, 200)
  t.equal(served.headers['x-on-send'], 'yes')
  t.equal(demands(), 1, 'the accepted one asked for a start')
  t.ok(await until(() => order.includes('onResponse')))
  t.same(order, ['onRequest', 'preValidation', 'preHandler', 'onSend', 'onResponse'])
})

t.test('reply.from() in a preHandler (reply.fromParameters) and a handler of your own are balanced too', async t => {
  const backends = await backendsFor(t, 2, echo)
  const app = await gateway({ b: { servers: backends.map(b => b.address) } }, {
    prefix: '/api',
    rewritePrefix: '/v2',
    preHandler: (request, reply, done) => {
      if (request.url !== '/api/old') return done()
      const { url, options } = (reply as unknown as { fromParameters: (url: string, params: unknown, prefix: string) => { url: string, options: object } }).fromParameters('/api/new', request.params, '/api')
      reply.from(url, options)
    },
    handler: async (request, reply, dest, options) => {
      if (request.url === '/api/local') return await reply.send({ dest })
      return reply.from(dest, options)
    }
  })
  t.teardown(() => app.close())
  const moved = await app.inject('/api/old')
  t.equal(moved.json().url, '/v2/new')
  t.same(await app.inject('/api/local').then(res => res.json()), { dest: '/v2/local' }, 'the handler answers itself')
  const seen = []
  for (let i = 0; i < 4; i++) seen.push((await app.inject('/api/x')).json().backend)
  t.same(seen.sort(), [0, 0, 1, 1], 'the handler\'s reply.from() is balanced')
})

t.test('replyOptions are chained with the proxy\'s own: request headers, response headers, onResponse; the accounting stays', async t => {
  const backend = await backendFor(t, (req, res) => {
    res.writeHead(302, { location: '/next', 'x-seen': String(req.headers['x-request-id']) })
    res.end('moved')
  })
  const app = await gateway({ b: { servers: [backend.address] } }, {
    prefix: '/app',
    peerHeader: true,
    replyOptions: {
      rewriteRequestHeaders: (_request, headers) => ({ ...headers, 'x-request-id': 'r-1' }),
      rewriteHeaders: (headers) => ({ ...headers, 'x-rewritten': String(headers.location) }),
      onResponse: (_request, reply, res) => {
        reply.send((res as unknown as { stream: NodeJS.ReadableStream }).stream.pipe(new Transform({
          transform (chunk: Buffer, _encoding, callback) { callback(null, chunk.toString().toUpperCase()) }
        })))
      }
    }
  })
  t.teardown(() => app.close())
  const res = await app.inject('/app/x')
  t.equal(res.headers['x-seen'], 'r-1', 'the user\'s rewriteRequestHeaders reached the peer')
  t.equal(res.headers['x-rewritten'], '/app/next', 'the user\'s rewriteHeaders sees the Location already rewritten')
  t.equal(res.body, 'MOVED', 'the user\'s onResponse sends the body')
  t.equal(res.headers['x-upstream-peer'], backend.address, 'the peer header is still set')
  t.equal(app.upstreams.get('b').peers[0].inflight, 0, 'and the slot given back')
})

t.test('routes, httpMethods, preRewrite, config and constraints are @fastify/http-proxy\'s', async t => {
  const backend = await backendFor(t, echo)
  const app = Fastify()
  await app.register(registry, { upstreams: { b: { servers: [backend.address] } } })
  let config: unknown
  await app.register(proxy, {
    upstream: 'b',
    routes: ['/only/*'],
    httpMethods: ['GET'],
    preRewrite: url => url.replace('/only/old', '/only/new'),
    config: { area: 'shop' },
    constraints: { host: 'shop.example.com' },
    onRequest: async request => { config = request.routeOptions.config }
  })
  app.get('/only/x', async () => 'not proxied')
  t.teardown(() => app.close())
  const res = await app.inject({ url: '/only/old', headers: { host: 'shop.example.com' } })
  t.equal(res.json().url, '/only/new')
  t.match(config, { area: 'shop' })
  t.equal((await app.inject({ url: '/elsewhere', headers: { host: 'shop.example.com' } })).statusCode, 404, 'outside routes')
  t.equal((await app.inject({ method: 'POST', url: '/only/x', headers: { host: 'shop.example.com' } })).statusCode, 404, 'outside httpMethods')
  t.equal((await app.inject({ url: '/only/x', headers: { host: 'other.example.com' } })).body, 'not proxied', 'outside the host constraint')
})

t.test('options that would break the balancing are refused with the reason', async t => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ upstream: 'http://127.0.0.1:8000' }, /names an upstream of the registry, not a URL/],
    [{ getUpstream: () => '' }, /"getUpstream" is not taken: the proxy picks the peer/],
    [{ base: 'http://x' }, /"base" is not taken/],
    [{ http2: true }, /"http2" is not taken: @fastify\/reply-from's HTTP\/2 client/],
    [{ http: {} }, /"http" is not taken/],
    [{ undici: {} }, /"undici" is not taken/],
    [{ wsUpstream: 'ws://x' }, /"wsUpstream" is not taken: WebSockets are balanced/],
    [{ wsReconnect: {} }, /"wsReconnect" is not taken/],
    [{ replyOptions: { getUpstream: () => '' } }, /"replyOptions.getUpstream" is not taken/],
    [{ replyOptions: { retriesCount: 3 } }, /"replyOptions.retriesCount" is not taken: reply-from retries on the same peer/],
    [{ replyOptions: { nope: 1 } }, /unknown option "replyOptions.nope"/],
    [{ preHandler: 'x' }, /"preHandler" must be a function or a non-empty list of functions/],
    [{ wsServerOptions: { noServer: false } }, /"wsServerOptions.noServer" is not taken/],
    [{ hosts: {} }, /option "hosts" must map server names/],
    [{ hosts: { 'a*b.example.com': 'b' } }, /server name "a\*b.example.com" must be a host name/],
    [{ hosts: { '~(': 'b' } }, /is not a valid regular expression/]
  ]
  for (const [options, message] of cases) {
    await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, options as never), message, Object.keys(options)[0])
  }
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { upstream: undefined, hosts: { 'a.example.com': 'nope' } }), /unknown upstream "nope"/)
})

t.test('forwarded headers: off by default; xForwarded appends to X-Forwarded-For and adds -Proto, -Host, -Port; preserveHost keeps the Host', async t => {
  const backend = await backendFor(t, echo)
  const plain = await gateway({ b: { servers: [backend.address] } }, {}, { trustProxy: false })
  t.teardown(() => plain.close())
  const plainBase = await listening(plain)
  const before = await (await request(`${plainBase}/`, { headers: { host: 'shop.example.com:8080' } })).body.json() as { headers: Record<string, string> }
  t.equal(before.headers.host, backend.address, 'by default the peer sees its own address as Host')
  t.equal(before.headers['x-forwarded-for'], undefined)

  const app = await gateway({ b: { servers: [backend.address] } }, { xForwarded: true, preserveHost: true }, { trustProxy: false })
  t.teardown(() => app.close())
  const base = await listening(app)
  const seen = await (await request(`${base}/`, { headers: { host: 'Shop.Example.com:8080', 'x-forwarded-for': '203.0.113.7' } })).body.json() as { headers: Record<string, string> }
  t.equal(seen.headers.host, 'Shop.Example.com:8080', 'the client\'s Host, as sent')
  t.equal(seen.headers['x-forwarded-for'], '203.0.113.7, 127.0.0.1', 'this hop\'s client appended')
  t.equal(seen.headers['x-forwarded-proto'], 'http')
  t.equal(seen.headers['x-forwarded-host'], 'Shop.Example.com')
  t.equal(seen.headers['x-forwarded-port'], '8080')
  const bare = await (await request(`${base}/`, { headers: { host: 'example.com' } })).body.json() as { headers: Record<string, string> }
  t.equal(bare.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(bare.headers['x-forwarded-port'], '80', 'no port asked: the scheme\'s')
})

t.test('a retried nextUpstream status is never shown: the next peer answers; when all fail, the last answer is sent', async t => {
  const bad = await backendFor(t, status(502, 'bad gateway from 0'), 0)
  const good = await backendFor(t, echo, 1)
  const app = await gateway({ b: { servers: [bad.address, good.address] } }, { nextUpstream: ['error', 'timeout', 'http_502'] })
  t.teardown(() => app.close())
  const answers = []
  for (let i = 0; i < 4; i++) answers.push((await app.inject('/')).statusCode)
  t.same(answers, [200, 200, 200, 200], 'no client saw the 502')
  t.equal(app.upstreams.get('b').peers[0].fails, 1, 'the 502 counts against its peer (out after one)')

  const last = await backendFor(t, status(502, 'bad gateway from 2'), 2)
  const allBad = await gateway({ c: { servers: [{ address: bad.address, maxFails: 0 }, { address: last.address, maxFails: 0 }] } }, { nextUpstream: ['error', 'http_502'] })
  t.teardown(() => allBad.close())
  const res = await allBad.inject('/')
  t.equal(res.statusCode, 502)
  t.equal(res.body, 'bad gateway from 2', 'the last peer\'s own answer, not the first one\'s nor an error of ours')
  t.same([bad.hits, last.hits], [2, 1])
})

t.test('nextUpstream: http_404 goes on but is nobody\'s failure; http_429 counts; without the word the status is passed on', async t => {
  const missing = await backendFor(t, status(404), 0)
  const limited = await backendFor(t, status(429), 1)
  const good = await backendFor(t, echo, 2)
  const app = await gateway({ b: { servers: [missing.address, limited.address, good.address] } }, { nextUpstream: ['error', 'http_404', 'http_429'] })
  t.teardown(() => app.close())
  t.equal((await app.inject('/')).headers['x-backend'], '2')
  const [p404, p429] = app.upstreams.get('b').peers
  t.equal(p404.fails, 0, '404 is not held against its peer (nginx)')
  t.equal(p429.fails, 1, '429 is')
  const passOn = await gateway({ c: { servers: [missing.address, good.address] } })
  t.teardown(() => passOn.close())
  t.equal((await passOn.inject('/')).statusCode, 404, 'not listed: passed on as it is')
})

t.test('nextUpstream: off sends nothing to another peer; non_idempotent lets a POST go on after a send failure', async t => {
  const resetter = await backendFor(t, req => { req.socket.destroy() }, 0)
  const good = await backendFor(t, echo, 1)
  const off = await gateway({ b: { servers: [{ address: resetter.address, maxFails: 0 }, good.address] } }, { nextUpstream: ['off'] })
  t.teardown(() => off.close())
  const gets = []
  for (let i = 0; i < 2; i++) gets.push((await off.inject('/')).statusCode)
  t.same(gets.sort(), [200, 502], 'the GET on the resetting peer is answered 502, not retried')

  const post = await gateway({ c: { servers: [{ address: resetter.address, maxFails: 0 }, good.address] } }, { nextUpstream: ['error', 'non_idempotent'] })
  t.teardown(() => post.close())
  const posts = []
  for (let i = 0; i < 2; i++) posts.push((await post.inject({ method: 'POST', url: '/', payload: 'x' })).statusCode)
  t.same(posts, [200, 200], 'the POST reset by peer 0 went on to peer 1')
})

t.test('nextUpstreamTimeout: past it, a failed request is not passed to another peer', async t => {
  const slow = await backendFor(t, () => {}, 0)
  const good = await backendFor(t, echo, 1)
  const app = await gateway({ b: { servers: [slow.address, good.address] } }, { headersTimeout: 300, nextUpstreamTimeout: 200 })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.statusCode, 504, 'the timeout came after nextUpstreamTimeout: answered, not retried')
  t.equal(good.hits, 0)
  const within = await gateway({ c: { servers: [slow.address, good.address] } }, { headersTimeout: 300, nextUpstreamTimeout: 5000 })
  t.teardown(() => within.close())
  t.equal((await within.inject('/')).statusCode, 200, 'within it: retried')
})

t.test('timeouts are the proxy\'s own, to well under a second: headers, body and connect', async t => {
  const late = await backendFor(t, (_req, res) => { setTimeout(() => res.end('too late'), 600) })
  const app = await gateway({ b: { servers: [late.address] } }, { headersTimeout: 300 })
  t.teardown(() => app.close())
  const started = Date.now()
  const res = await app.inject('/')
  const took = Date.now() - started
  t.equal(res.statusCode, 504, 'a 600 ms answer with a 300 ms headersTimeout is not let through')
  t.ok(took >= 250 && took < 700, `the timeout fired after ${took} ms (undici alone: about 1 s)`)

  const stalling = await backendFor(t, (_req, res) => { res.writeHead(200, { 'content-length': '10' }); res.write('12345') })
  const body = await gateway({ c: { servers: [stalling.address] } }, { bodyTimeout: 300 })
  t.teardown(() => body.close())
  const base = await listening(body)
  const bodyStarted = Date.now()
  const answer = await request(base)
  const cut = await answer.body.text().then(() => 'whole', () => 'cut')
  const bodyTook = Date.now() - bodyStarted
  t.equal(cut, 'cut', 'the stalled body is cut')
  t.ok(bodyTook >= 250 && bodyTook < 700, `after ${bodyTook} ms`)

  // With one connection per peer and it busy, the next request waits for a connection: the connect timer.
  const busy = await backendFor(t, (_req, res) => { setTimeout(() => res.end('done'), 1500) })
  const connect = await gateway({ d: { servers: [busy.address] } }, { connections: 1, connectTimeout: 300, headersTimeout: 5000 })
  t.teardown(() => connect.close())
  const first = connect.inject('/')
  await until(() => busy.hits === 1)
  const connectStarted = Date.now()
  const second = await connect.inject('/')
  const connectTook = Date.now() - connectStarted
  t.equal(second.statusCode, 504)
  t.ok(connectTook >= 250 && connectTook < 700, `no connection within connectTimeout: after ${connectTook} ms`)
  t.equal((await first).statusCode, 200)
})

t.test('a slow reader does not trip bodyTimeout: the timer waits while the client holds the body back', async t => {
  // 16 MiB: more than the sockets between the peer, the gateway and the client can buffer, so the gateway's side waits on the client.
  const chunk = Buffer.alloc(256 * 1024, 'z')
  const chunks = 64
  const big = await backendFor(t, (_req, res) => {
    res.writeHead(200, { 'content-length': String(chunk.length * chunks) })
    writeChunks(res, chunk, chunks)
  })
  const app = await gateway({ b: { servers: [big.address] } }, { bodyTimeout: 200 })
  t.teardown(() => app.close())
  const base = await listening(app)
  const res = await request(base)
  let received = 0
  let paused = false
  for await (const part of res.body) {
    received += (part as Buffer).length
    if (!paused) {
      paused = true
      await new Promise(resolve => setTimeout(resolve, 800))
    }
  }
  t.equal(received, chunk.length * chunks, 'the whole body, though the client stopped reading for four times bodyTimeout')
  t.equal(app.upstreams.get('b').peers[0].fails, 0, 'a slow client is not the peer\'s fault')
})

t.test('maxConns: a peer at its cap is passed by; with all at their caps requests queue and go in arrival order as slots free', async t => {
  const releases: Array<() => void> = []
  const order: string[] = []
  const hold: BackendHandler = (req, res, backend) => {
    order.push(`${backend.id}${req.url}`)
    releases.push(() => whoAmI(req, res, backend))
  }
  const backends = await backendsFor(t, 2, hold)
  const app = await gateway({ b: { servers: backends.map(b => ({ address: b.address, maxConns: 1 })) } }, { maxHeld: 2, holdTimeout: 5000, retryAfter: 2 })
  t.teardown(() => app.close())
  const base = await listening(app)
  const peers = app.upstreams.get('b').peers
  const pending = ['/a', '/b', '/c', '/d'].map(path => request(`${base}${path}`).then(async res => ({ status: res.statusCode, body: await res.body.text() })))
  t.ok(await until(() => order.length === 2), 'one request on each peer')
  t.same(peers.map(p => p.inflight), [1, 1], 'each at its cap')
  const overflow = await request(`${base}/e`)
  t.equal(overflow.statusCode, 503, 'the queue holds maxHeld: the fifth is refused')
  t.equal(overflow.headers['retry-after'], '2')
  t.equal((await overflow.body.json() as { code: string }).code, 'FST_SUPERVISORD_HOLD_OVERFLOW')
  releases.shift()?.()
  t.ok(await until(() => order.length === 3), 'a slot freed: the first queued goes')
  t.equal(order[2].slice(1), '/c', 'in arrival order')
  while (order.length < 4 || releases.length > 0) {
    releases.shift()?.()
    await until(() => releases.length > 0 || order.length === 4, 1000)
    if (order.length === 4 && releases.length === 0) break
  }
  const answers = await Promise.all(pending)
  t.same(answers.map(a => a.status), [200, 200, 200, 200])
  t.same(peers.map(p => p.inflight), [0, 0])

  const timeout = await gateway({ c: { servers: [{ address: backends[0].address, maxConns: 1 }] } }, { holdTimeout: 150 })
  t.teardown(() => timeout.close())
  const timeoutBase = await listening(timeout)
  const first = request(timeoutBase)
  await until(() => releases.length === 1)
  const queued = await request(timeoutBase)
  t.equal(queued.statusCode, 503)
  t.equal((await queued.body.json() as { code: string }).code, 'FST_SUPERVISORD_HOLD_TIMEOUT', 'no slot within holdTimeout')
  releases.shift()?.()
  t.equal((await first).statusCode, 200)
})

t.test('virtual hosts: exact names, leading and trailing wildcards, regular expressions and a default, as nginx server_name', async t => {
  const backends = await backendsFor(t, 6, echo)
  const servers = Object.fromEntries(['exact', 'leading', 'dot', 'trailing', 'regex', 'fallback'].map((name, i) => [name, { servers: [backends[i].address] }]))
  const app = Fastify()
  await app.register(registry, { upstreams: servers })
  await app.register(proxy, {
    upstream: 'fallback',
    hosts: {
      'shop.example.com': 'exact',
      '*.example.com': 'leading',
      '*.deep.example.com': 'dot',
      '.example.org': 'dot',
      'www.example.*': 'trailing',
      '~^api[0-9]+\\.': 'regex'
    }
  })
  t.teardown(() => app.close())
  const upstreamOf = async (host: string): Promise<number> => (await app.inject({ url: '/', headers: { host } })).json().backend
  const cases: Array<[string, number]> = [
    ['shop.example.com', 0], ['SHOP.Example.COM:8080', 0], ['shop.example.com.', 0],
    ['a.example.com', 1], ['a.b.example.com', 1],
    ['x.deep.example.com', 2], ['example.org', 2], ['a.example.org', 2],
    ['www.example.net', 3],
    ['api7.internal', 4],
    ['example.com', 5], ['unknown.test', 5]
  ]
  for (const [host, backend] of cases) t.equal(await upstreamOf(host), backend, host)

  const noDefault = Fastify()
  await noDefault.register(registry, { upstreams: { exact: { servers: [backends[0].address] } } })
  await noDefault.register(proxy, { hosts: { 'shop.example.com': 'exact' } })
  t.teardown(() => noDefault.close())
  const unknown = await noDefault.inject({ url: '/', headers: { host: 'other.example.com' } })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'FST_SUPERVISORD_UNKNOWN_HOST')
  t.equal(backends.reduce((sum, b) => sum + b.hits, 0), cases.length, 'each request reached one backend, the unknown host none')
})

t.test('virtual hosts: each answer is counted on, and logged with, the upstream its Host chose', async t => {
  const [shop, blog] = await backendsFor(t, 2, echo)
  const lines: Array<Record<string, unknown>> = []
  const app = await gateway({ shop: { servers: [shop.address] }, blog: { servers: [blog.address] } },
    { upstream: 'shop', hosts: { 'blog.example.com': 'blog' } }, { logger: loggerInto(lines) })
  t.teardown(() => app.close())
  for (const host of ['blog.example.com', 'blog.example.com', 'other.example.com']) t.equal((await app.inject({ url: '/', headers: { host } })).statusCode, 200)
  t.same([app.upstreams.get('blog').answers[1], app.upstreams.get('shop').answers[1]], [2, 1], '2xx by upstream: blog twice, the default once')
  const done = lines.filter(line => line.msg === 'request completed')
  t.same(done.map(line => [line.upstream, line.peer]), [['blog', blog.address], ['blog', blog.address], ['shop', shop.address]], 'the access line names the upstream and peer that served')
})
