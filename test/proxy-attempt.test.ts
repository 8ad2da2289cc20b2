import net from 'node:net'
import { Readable } from 'node:stream'
import t from 'tap'
import { request } from 'undici'
import { MAX_INTERIM_RESPONSES } from '../lib/proxy-attempt.js'
import { backendFor, tcpServer, writeChunks } from './helpers/backends.js'
import { gateway, listening, loggerInto } from './helpers/gateway.js'
import { sleep, until } from './helpers/wait.js'

type Line = Record<string, unknown> & { level: number, msg: string }

// One attempt on one peer, at its edges: what each of its timers says, how
// many interim responses it takes, which statuses are answers, and what a
// client that reads slowly does to the peer and to the body timer.

t.test(`up to ${MAX_INTERIM_RESPONSES} interim responses before the answer pass; one more is a malformed response (502)`, async t => {
  for (const [count, status] of [[MAX_INTERIM_RESPONSES, 200], [MAX_INTERIM_RESPONSES + 1, 502]]) {
    const server = await tcpServer(t, socket => {
      socket.once('data', () => socket.end('HTTP/1.1 102 Processing\r\n\r\n'.repeat(count) + 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok'))
    })
    const lines: Line[] = []
    const app = await gateway({ b: { servers: [`127.0.0.1:${server.port}`] } }, {}, { logger: loggerInto(lines) })
    t.teardown(() => app.close())
    t.equal((await app.inject('/')).statusCode, status, `${count} interim responses: ${status}`)
    if (status === 502) t.match(lines.filter(line => line.msg === 'proxy: peer failed'), [{ kind: 'response', reason: `FST_SUPERVISORD_MALFORMED_RESPONSE: more than ${MAX_INTERIM_RESPONSES} interim responses` }])
  }
})

t.test('599 is an answer, passed on; 600 is a malformed response', async t => {
  const server = await tcpServer(t, socket => {
    socket.once('data', () => socket.end('HTTP/1.1 599 Network Timeout\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno'))
  })
  const app = await gateway({ b: { servers: [`127.0.0.1:${server.port}`] } })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.statusCode, 599)
  t.equal(res.body, 'no')

  const bad = await tcpServer(t, socket => {
    socket.once('data', () => socket.end('HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno'))
  })
  const lines: Line[] = []
  const beyond = await gateway({ b: { servers: [`127.0.0.1:${bad.port}`] } }, {}, { logger: loggerInto(lines) })
  t.teardown(() => beyond.close())
  t.equal((await beyond.inject('/')).statusCode, 502)
  t.match(lines.filter(line => line.msg === 'proxy: peer failed'), [{ kind: 'response', reason: /status 600$/ }])
})

t.test('a client that reads nothing holds the peer back, and the body timer waits for it; it then gets the whole answer', async t => {
  const TOTAL = 64 * 1024 * 1024
  const chunk = Buffer.alloc(64 * 1024, 'x')
  let written = 0
  const backend = await backendFor(t, (_req, res) => {
    res.writeHead(200, { 'content-length': String(TOTAL) })
    writeChunks(res, chunk, TOTAL / chunk.length, { written: () => { written += chunk.length } })
  })
  const app = await gateway({ b: { servers: [backend.address] } }, { bodyTimeout: 200 })
  t.teardown(() => app.close())
  const port = Number(new URL(await listening(app)).port)
  const client = net.connect(port, '127.0.0.1')
  t.teardown(() => client.destroy())
  client.pause()
  client.write('GET / HTTP/1.1\r\nHost: gateway\r\n\r\n')
  await sleep(1000)
  t.ok(written < TOTAL / 4, `the peer sent ${(written / 1048576).toFixed(1)} MiB of 64 while the client read nothing (for five body timeouts)`)
  let received = 0
  client.on('data', (data: Buffer) => { received += data.length })
  client.resume()
  t.ok(await until(() => received >= TOTAL, 20_000), `the client got all of it (${(received / 1048576).toFixed(1)} MiB), the body timer never fired`)
})

t.test('each timer fails the attempt as a timeout of its phase, named with its time in the peer\'s failure', async t => {
  const lines: Line[] = []
  const logger = { logger: loggerInto(lines) }
  const failures = (): Line[] => lines.filter(line => line.msg === 'proxy: peer failed')

  const late = await backendFor(t, (_req, res) => { setTimeout(() => res.end('late'), 600) })
  const headers = await gateway({ h: { servers: [late.address] } }, { headersTimeout: 300 }, logger)
  t.teardown(() => headers.close())
  t.equal((await headers.inject('/')).statusCode, 504)
  t.match(failures(), [{ level: 40, kind: 'timeout', reason: 'UND_ERR_HEADERS_TIMEOUT: no response headers within 300 ms' }], 'headers')
  t.equal(headers.upstreams.get('h').peers[0].fails, 1, 'charged once: undici\'s abort that follows the timer is not a second failure')

  lines.length = 0
  const stalling = await backendFor(t, (_req, res) => { res.writeHead(200, { 'content-length': '10' }); res.write('12345') })
  const body = await gateway({ s: { servers: [stalling.address] } }, { bodyTimeout: 250 }, logger)
  t.teardown(() => body.close())
  const cut = await request(await listening(body))
  t.equal(await cut.body.text().then(() => 'whole', () => 'cut'), 'cut')
  t.match(failures(), [{ kind: 'timeout', reason: 'UND_ERR_BODY_TIMEOUT: no response body data for 250 ms' }], 'body')

  lines.length = 0
  // One connection per peer, busy: the next request waits for a connection.
  const busy = await backendFor(t, (_req, res) => { setTimeout(() => res.end('done'), 1000) })
  const connect = await gateway({ c: { servers: [busy.address] } }, { connections: 1, connectTimeout: 200, headersTimeout: 5000 }, logger)
  t.teardown(() => connect.close())
  const first = connect.inject('/')
  t.ok(await until(() => busy.hits === 1))
  t.equal((await connect.inject('/')).statusCode, 504)
  t.match(failures(), [{ kind: 'timeout', reason: 'UND_ERR_CONNECT_TIMEOUT: no connection to the peer within 200 ms' }], 'connect')
  t.equal((await first).statusCode, 200)
})

t.test('a body streamed slowly to the peer restarts headersTimeout with each chunk the peer takes', async t => {
  const backend = await backendFor(t, (req, res) => {
    let size = 0
    req.on('data', (part: Buffer) => { size += part.length })
    req.on('end', () => res.end(String(size)))
  })
  // A body longer than retryBodySize is streamed: 8 chunks 100 ms apart, 800 ms in all, against a 300 ms headersTimeout.
  const app = await gateway({ b: { servers: [backend.address] } }, { headersTimeout: 300, retryBodySize: 16 })
  t.teardown(() => app.close())
  const chunks = Array.from({ length: 8 }, () => 'x'.repeat(1024))
  const body = Readable.from((async function * () {
    for (const chunk of chunks) {
      yield chunk
      await sleep(100)
    }
  })())
  const res = await request(await listening(app), { method: 'POST', body, headers: { 'content-length': String(8 * 1024) } })
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), String(8 * 1024), 'the whole body reached the peer, and its answer came back')
})

t.test('a response streamed in chunks closer than bodyTimeout passes, however long it lasts in all', async t => {
  const backend = await backendFor(t, (_req, res) => {
    res.writeHead(200, { 'content-length': '8' })
    let sent = 0
    const timer = setInterval(() => {
      res.write('x')
      if (++sent === 8) {
        clearInterval(timer)
        res.end()
      }
    }, 100)
    res.once('close', () => clearInterval(timer))
  })
  const app = await gateway({ b: { servers: [backend.address] } }, { bodyTimeout: 300 })
  t.teardown(() => app.close())
  const res = await request(await listening(app))
  t.equal(await res.body.text(), 'xxxxxxxx', '8 chunks over 800 ms with a 300 ms bodyTimeout')
})

t.test('after a slow client let the body flow again, a peer that stalls is cut after bodyTimeout', async t => {
  const chunk = Buffer.alloc(256 * 1024, 'y')
  const backend = await backendFor(t, (_req, res) => {
    res.writeHead(200, { 'content-length': String(chunk.length * 128) })
    // 16 MiB, more than the sockets buffer, then nothing: the peer stalls.
    writeChunks(res, chunk, 64, { end: false })
  })
  const app = await gateway({ b: { servers: [backend.address] } }, { bodyTimeout: 300 })
  t.teardown(() => app.close())
  const res = await request(await listening(app))
  let received = 0
  let paused = false
  let lastAt = 0
  const reading = (async () => {
    for await (const part of res.body) {
      received += (part as Buffer).length
      lastAt = Date.now()
      if (!paused) {
        paused = true
        await sleep(600)
      }
    }
    return 'whole'
  })().catch(() => 'cut')
  // Bounded: without the timer armed again after the pause, the read never ends.
  const outcome = await Promise.race([reading, sleep(5000).then(() => 'never cut')])
  res.body.destroy()
  t.equal(outcome, 'cut', 'the stalled body is cut')
  t.equal(received, chunk.length * 64, 'after all the peer sent')
  const stalled = Date.now() - lastAt
  t.ok(stalled >= 250 && stalled < 1000, `${stalled} ms after the last chunk: bodyTimeout (300 ms)`)
})

t.test('a request whose client left while it waited for a connection is not sent when one frees', async t => {
  const busy = await backendFor(t, (_req, res) => { setTimeout(() => res.end('done'), 400) })
  const app = await gateway({ b: { servers: [busy.address] } }, { connections: 1 })
  t.teardown(() => app.close())
  const base = await listening(app)
  const first = request(base)
  t.ok(await until(() => busy.hits === 1))
  const leaving = new AbortController()
  const second = request(base, { signal: leaving.signal }).catch(() => 'aborted')
  // Long enough for the gateway to take the request and wait for the busy connection.
  await sleep(100)
  leaving.abort()
  t.equal(await second, 'aborted')
  t.equal(await (await first).body.text(), 'done')
  // The connection is free now: a short wait for a request that is not to come.
  await sleep(200)
  t.equal(busy.hits, 1, 'the peer got the first request only')
})
