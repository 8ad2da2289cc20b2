import net from 'node:net'
import t from 'tap'
import { backendFor, freePort, type BackendHandler } from './helpers/backends.js'
import { gateway, listening, loggerInto, onDemandGateway } from './helpers/gateway.js'
import { lastBody, rawExchange } from './helpers/raw-http.js'
import { sleep, until } from './helpers/wait.js'

// One upstream's balancing, between reply-from and the dispatcher: the body
// it is given, the peer a request keeps, and how a request that gets no peer
// is answered and logged.

type Line = Record<string, unknown> & { level: number, msg: string }

const answeredLines = (lines: Line[]): Line[] => lines.filter(line => line.msg.startsWith('proxy: answered'))

/** Answers the body it got, as `method body`. */
const echo: BackendHandler = (req, res) => {
  const parts: Buffer[] = []
  req.on('data', (part: Buffer) => parts.push(part))
  req.on('end', () => res.end(`${req.method ?? ''} ${Buffer.concat(parts).toString()}`))
}

t.test('a body Fastify parsed (proxyPayloads: false) goes on as reply-from serialized it, and whole again to the next peer', async t => {
  const cutting = await backendFor(t, req => { req.socket.destroy() }, 0)
  const echoing = await backendFor(t, echo, 1)
  const app = await gateway({ b: { servers: [cutting.address, echoing.address] } }, { proxyPayloads: false })
  t.teardown(() => app.close())
  const res = await app.inject({ method: 'PUT', url: '/', payload: { hello: 'world' } })
  t.equal(res.body, 'PUT {"hello":"world"}')
  t.equal(cutting.hits, 1, 'the first peer got it and failed')
})

t.test('an empty body Fastify parsed (proxyPayloads: false), sent chunked, goes on empty: the client\'s stream is not read again', async t => {
  const echoing = await backendFor(t, echo, 0)
  const app = await gateway({ b: { servers: [echoing.address] } }, { proxyPayloads: false })
  t.teardown(() => app.close())
  const answer = await rawExchange(Number(new URL(await listening(app)).port),
    ['POST / HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n'])
  t.same(answer.statuses, [200], 'answered by the peer (it was a 400: "the client closed the connection before its body ended")')
  t.equal(lastBody(answer), 'POST ')
})

t.test('a body the handler gives reply.from() with its content type (a Buffer, a string) is what the peer gets, and an empty one sends none', async t => {
  const echoing = await backendFor(t, echo, 0)
  for (const [given, sent] of [[Buffer.from('from a buffer'), 'from a buffer'], ['from a string', 'from a string'], [Buffer.alloc(0), ''], ['', '']] as const) {
    const app = await gateway({ b: { servers: [echoing.address] } }, {
      handler (_request, reply, destination, options) {
        // Without a contentType reply-from sends the body as JSON.
        return reply.from(destination, { ...options, body: given, contentType: 'text/plain' } as never)
      }
    })
    t.teardown(() => app.close())
    const res = await app.inject({ method: 'POST', url: '/' })
    t.equal(res.body, `POST ${sent}`, `${Buffer.isBuffer(given) ? 'a Buffer' : 'a string'} of ${given.length} bytes`)
  }
})

t.test('reply.from() called twice for one request goes to the peer it already has and leaves no in-flight slot taken', async t => {
  const backends = [await backendFor(t, undefined, 0), await backendFor(t, undefined, 1)]
  const app = await gateway({ b: { servers: backends.map(b => b.address) } }, {
    handler (_request, reply, destination, options) {
      reply.from(destination, options)
      return reply.from(destination, options)
    }
  })
  t.teardown(() => app.close())
  t.equal((await app.inject('/')).statusCode, 200)
  const peers = app.upstreams.get('b').peers
  t.ok(await until(() => backends[0].hits === 2), 'both sends went to peer 0')
  t.equal(backends[1].hits, 0)
  t.same(peers.map(peer => peer.inflight), [0, 0], 'every slot given back')
})

t.test('no routable peer on an upstream that starts none: 503 with Retry-After, through the error handler, which logs it', async t => {
  const lines: Line[] = []
  const app = await gateway({ b: { servers: [{ address: '127.0.0.1:1', down: true }] } }, { retryAfter: 7 }, { logger: loggerInto(lines) })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '7')
  t.same(res.json(), { statusCode: 503, code: 'FST_SUPERVISORD_NO_PEER', error: 'Service Unavailable', message: 'No routable peer in upstream "b"' })
  t.match(answeredLines(lines), [{ level: 40, code: 'FST_SUPERVISORD_NO_PEER' }])
})

t.test('a hold that ends without a peer: answered by the hold\'s rule, and not logged per request (the starter logs the start)', async t => {
  const lines: Line[] = []
  const app = await gateway({ b: { servers: [{ address: '127.0.0.1:1', down: true }] } }, { holdTimeout: 100, retryAfter: 3 }, { logger: loggerInto(lines) })
  t.teardown(() => app.close())
  app.upstreams.get('b').startOnDemand()
  // Listening: the hold's timer is unref()ed, the server keeps the process alive.
  await listening(app)
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '3')
  t.same(res.json(), { statusCode: 503, code: 'FST_SUPERVISORD_HOLD_TIMEOUT', error: 'Service Unavailable', message: 'No peer of upstream "b" could take the request within 100 ms' })
  t.same(answeredLines(lines), [])
})

t.test('a client that leaves while its body is read gets nothing sent, counted or logged, and no peer is taken', async t => {
  const backend = await backendFor(t, echo, 0)
  const lines: Line[] = []
  const app = await gateway({ b: { servers: [backend.address] } }, {}, { logger: loggerInto(lines) })
  t.teardown(() => app.close())
  const port = Number(new URL(await listening(app)).port)
  const client = net.connect(port, '127.0.0.1')
  client.on('error', () => {})
  client.write('POST / HTTP/1.1\r\nHost: gateway\r\nContent-Length: 10\r\n\r\nhello')
  t.ok(await until(() => lines.some(line => line.msg === 'fetching from remote server')), 'reply-from took the request: its body is being read')
  client.destroy()
  const open = async (): Promise<number> => await new Promise(resolve => app.server.getConnections((_error, count) => resolve(count)))
  t.ok(await until(async () => await open() === 0), 'the gateway saw the connection close')
  // Nothing is to happen now: a short wait for what would.
  await sleep(50)
  t.equal(backend.hits, 0)
  t.same(answeredLines(lines), [])
  const upstream = app.upstreams.get('b')
  t.same(upstream.answers.filter(count => count > 0), [], 'no answer counted')
  t.equal(upstream.peers[0].inflight, 0)
})

t.test('a held client that leaves is dropped from the queue: nothing is sent to the peer started for it later', async t => {
  const backend = await backendFor(t, echo, 0)
  const { upstream, base } = await onDemandGateway(t, [{ address: backend.address, down: true }])
  const port = Number(new URL(base).port)
  const client = net.connect(port, '127.0.0.1')
  client.on('error', () => {})
  client.write('GET / HTTP/1.1\r\nHost: gateway\r\n\r\n')
  t.ok(await until(() => upstream.hold.current === 1), 'held')
  client.destroy()
  t.ok(await until(() => upstream.hold.current === 0), 'dropped')
  upstream.peers[0].setProcess('up')
  // Nothing is to reach the peer: a short wait for what would.
  await sleep(100)
  t.equal(backend.hits, 0)
  t.same(upstream.answers.filter(count => count > 0), [])
})

t.test('the last routable peer refuses the connection on an upstream that starts peers on demand: held again, and answered when the hold ends', async t => {
  const port = await freePort()
  const { app, upstream, demands } = await onDemandGateway(t, [`127.0.0.1:${port}`], { holdTimeout: 300 })
  const res = await app.inject('/')
  t.equal(res.statusCode, 503, 'answered when the hold timed out (nothing was started), not left waiting')
  t.equal(res.json().code, 'FST_SUPERVISORD_HOLD_TIMEOUT')
  t.ok(demands() >= 1, 'a start was asked for')
  t.equal(upstream.peers[0].passive, 'failed', 'the refusal took the peer out: it is to be started again')
})

t.test('the last routable peer drops a request it was sent, on an upstream that starts peers on demand: 502 at once, not held (it may have been processed)', async t => {
  const dropping = await backendFor(t, req => { req.socket.destroy() }, 0)
  const { app, demands } = await onDemandGateway(t, [dropping.address], { holdTimeout: 2000 })
  const started = Date.now()
  const res = await app.inject('/')
  t.equal(res.statusCode, 502)
  t.ok(Date.now() - started < 1000, 'at once, not after holdTimeout')
  t.equal(dropping.hits, 1)
  t.equal(demands(), 0, 'no start asked for it')
})

t.test('a hold ended by the last peer taken out (maint): 503 by the hold\'s rule, not logged per request', async t => {
  const lines: Line[] = []
  const app = await gateway({ b: { servers: [{ address: '127.0.0.1:1', down: true }] } }, {}, { logger: loggerInto(lines) })
  t.teardown(() => app.close())
  await listening(app)
  const upstream = app.upstreams.get('b')
  upstream.startOnDemand()
  const pending = app.inject('/')
  t.ok(await until(() => upstream.hold.current === 1), 'held')
  upstream.peers[0].setProcess('starting')
  app.upstreams.setAdmin('b', 0, 'maint', 'operator')
  const res = await pending
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_SUPERVISORD_NO_PEER')
  t.equal(res.headers['retry-after'], '5')
  t.same(answeredLines(lines), [])
})
