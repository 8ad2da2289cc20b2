import t, { type Test } from 'tap'
import type net from 'node:net'
import Fastify from 'fastify'
import registry from '../plugins/registry.js'
import health from '../plugins/health.js'
import { MAX_INTERIM, probe, ResponseReader } from '../lib/health-probe.js'
import { tcpServer } from './helpers/backends.js'
import { until } from './helpers/wait.js'

// Backends that misbehave as no real HTTP server will on demand: raw sockets.
// Whatever they send, a check ends with a reason, and the process lives on.

const CONTINUE = 'HTTP/1.1 100\r\n\r\n'
const at = (port: number) => ({ host: '127.0.0.1', port })

/** Once the request head has arrived, `answer` gets the socket (once per request). */
async function onRequest (t: Test, answer: (socket: net.Socket) => void): Promise<{ port: number, open: Set<net.Socket>, closed: () => number }> {
  let closed = 0
  const server = await tcpServer(t, socket => {
    let head = ''
    socket.on('close', () => closed++)
    socket.on('data', data => {
      head += data.toString('latin1')
      while (head.includes('\r\n\r\n')) {
        head = head.slice(head.indexOf('\r\n\r\n') + 4)
        answer(socket)
      }
    })
  })
  return { port: server.port, open: server.open, closed: () => closed }
}

/** Writes `piece` again and again while the socket takes it, until it closes (bounded by `most` writes). */
function endless (socket: net.Socket, piece: string, most = 100_000): void {
  let written = 0
  const more = (): void => {
    while (!socket.destroyed && written < most) {
      written++
      if (!socket.write(piece)) {
        socket.once('drain', more)
        return
      }
    }
  }
  more()
}

t.test('a 1xx flood (3,900 interim responses, ~62 KB) fails the check; it neither recurses nor throws', async t => {
  const flood = CONTINUE.repeat(3900)
  t.ok(flood.length > 60_000, `${flood.length} bytes`)
  const alone = await onRequest(t, socket => socket.write(flood))
  const result = await probe(at(alone.port), { timeout: 5000 })
  t.same([result.ok, result.reason], [false, `bad response: over ${MAX_INTERIM} interim (1xx) responses`])
  const thenOk = await onRequest(t, socket => socket.end(flood + 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'))
  t.equal((await probe(at(thenOk.port))).reason, `bad response: over ${MAX_INTERIM} interim (1xx) responses`, 'a final 200 after the flood does not save it')

  const reader = new ResponseReader()
  t.equal(reader.feed(Buffer.from(CONTINUE.repeat(200_000))), `bad response: over ${MAX_INTERIM} interim (1xx) responses`, '3 MB of 100s in one read')
  const bytewise = new ResponseReader()
  let verdict: string | undefined
  for (const byte of Buffer.from(CONTINUE.repeat(MAX_INTERIM + 1))) verdict ??= bytewise.feed(Buffer.from([byte]))
  t.equal(verdict, `bad response: over ${MAX_INTERIM} interim (1xx) responses`, 'a byte at a time')

  const allowed = await onRequest(t, socket => socket.end(CONTINUE.repeat(MAX_INTERIM) + 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'))
  t.equal((await probe(at(allowed.port), { body: 'ok' })).reason, 'OK', `${MAX_INTERIM} interim responses are still read through`)
})

t.test('the gateway survives a peer that floods its checks with 1xx, and marks it unhealthy', async t => {
  const flood = await onRequest(t, socket => socket.write(CONTINUE.repeat(3900)))
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: [`127.0.0.1:${flood.port}`], healthCheck: { interval: 20, fall: 2 } } } })
  await app.register(health)
  t.teardown(async () => await app.close())
  await app.ready()
  const peer = app.upstreams.get('api').peers[0]
  t.ok(await until(() => peer.health === 'unhealthy'), 'unhealthy, and the process is still here')
  t.ok(await until(() => peer.checks.length >= 4), 'checks go on')
  t.ok(peer.checks.every(check => check.reason === `bad response: over ${MAX_INTERIM} interim (1xx) responses`))
})

t.test('interim responses mixed with garbage', async t => {
  const cases: Array<[string, string]> = [
    [CONTINUE.repeat(5) + 'SSH-2.0-OpenSSH_9.6\r\n\r\n', 'bad response: not an HTTP/1.x status line'],
    [CONTINUE + 'HTTP/1.1 102 Processing\r\nno colon\r\n\r\nHTTP/1.1 200 OK\r\n\r\n', 'OK'],
    [CONTINUE + '\r\n\r\n', 'bad response: not an HTTP/1.x status line'],
    [CONTINUE + 'HTTP/1.1 099 Low\r\n\r\n', 'bad response: not an HTTP/1.x status line'],
    [CONTINUE + '\x00\xff'.repeat(100) + '\r\n\r\n', 'bad response: not an HTTP/1.x status line'],
    ['HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok', 'bad response: bad Content-Length'],
    ['HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', 'bad response: bad Content-Length'],
    ['HTTP/1.1 200 OK\r\n: no name\r\n\r\n', 'bad response: a header line without a name'],
    ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' + '1;' + 'x'.repeat(2000) + '\r\n', 'bad response: chunk size line over 1 KiB'],
    ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n', 'bad response: bad chunk size']
  ]
  for (const [response, reason] of cases) {
    // The headers of an interim response are skipped, not judged: only the final response counts.
    const server = await onRequest(t, socket => socket.end(response))
    const result = await probe(at(server.port), { timeout: 3000 })
    t.equal(result.reason, reason, JSON.stringify(response.slice(0, 60)))
  }
})

t.test('a never-ending head, body, chunked body, chunk framing or trailer section is cut at its bound', async t => {
  const header = 'X-Padding: ' + 'a'.repeat(100) + '\r\n'
  const fast: Array<[string, (socket: net.Socket) => void, string]> = [
    ['head', socket => { socket.write('HTTP/1.1 200 OK\r\n'); endless(socket, header) }, 'bad response: head over 16 KiB'],
    ['interim heads', socket => { endless(socket, 'HTTP/1.1 100 Continue\r\n' + header.repeat(3) + '\r\n') }, `bad response: over ${MAX_INTERIM} interim (1xx) responses`],
    ['body until close', socket => { socket.write('HTTP/1.0 200 OK\r\n\r\n'); endless(socket, 'x'.repeat(1024)) }, 'body too large'],
    ['chunked body', socket => { socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'); endless(socket, '400\r\n' + 'x'.repeat(1024) + '\r\n') }, 'body too large'],
    ['chunk extensions', socket => { socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'); endless(socket, '1;' + 'e'.repeat(1000) + '\r\nx\r\n') }, 'body too large'],
    ['trailers', socket => { socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n'); endless(socket, header) }, 'bad response: trailer section over 16 KiB']
  ]
  for (const [what, answer, reason] of fast) {
    const server = await onRequest(t, answer)
    // keepAlive reads trailers (the connection is to carry the next check); the others stop at the last chunk.
    const result = await probe(at(server.port), { timeout: 10_000, maxBody: 4096 })
    if (what === 'trailers') {
      t.equal(result.reason, 'OK', 'trailers: without keepAlive the last chunk ends the read')
      continue
    }
    t.equal(result.reason, reason, what)
    t.ok(await until(() => server.open.size === 0, 5000), `${what}: the check closed its connection`)
  }

  const slow = await onRequest(t, socket => {
    socket.write('HTTP/1.1 200 OK\r\n')
    const trickle = setInterval(() => { if (!socket.destroyed) socket.write('X') }, 20)
    socket.on('close', () => clearInterval(trickle))
  })
  const start = Date.now()
  const result = await probe(at(slow.port), { timeout: 300 })
  t.equal(result.reason, 'timed out', 'a head trickled a byte at a time ends with the timeout')
  t.ok(Date.now() - start < 5000)
})

t.test('chunk framing is bounded, not only the body it carries', async t => {
  const reader = new ResponseReader({ maxBody: 4096 })
  t.equal(reader.feed(Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n')), undefined)
  // One body byte per kilobyte of chunk extension: 4 MB before maxBody alone would stop it.
  const piece = Buffer.from('1;' + 'e'.repeat(1000) + '\r\nx\r\n')
  let fed = 0
  let verdict: string | undefined
  while (verdict === undefined && fed < 10_000_000) {
    verdict = reader.feed(piece)
    fed += piece.length
  }
  t.equal(verdict, 'body too large')
  t.ok(fed <= 2 * 4096 + 16 * 1024 + piece.length, `gave up after ${fed} bytes`)
})

t.test('the reader bounds trailers when it reads to the exact end (keepAlive)', async t => {
  const reader = new ResponseReader({ keepAlive: true })
  t.equal(reader.feed(Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n')), undefined, 'the trailer section is awaited')
  let verdict: string | undefined
  for (let i = 0; i < 200 && verdict === undefined; i++) verdict = reader.feed(Buffer.from('X-Trailer: ' + 'a'.repeat(100) + '\r\n'))
  t.equal(verdict, 'bad response: trailer section over 16 KiB')
  t.equal(reader.end(), 'bad response: trailer section over 16 KiB', 'the verdict stays')

  const kept = new ResponseReader({ keepAlive: true })
  t.equal(kept.feed(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')), 'OK')
  t.ok(kept.reusable, 'ended exactly: the connection can carry the next check')
  t.equal(kept.feed(Buffer.from('HTTP/1.1 200 OK\r\n')), 'OK', 'bytes after the verdict leave it as it was')
  t.notOk(kept.reusable, 'but the connection is not trusted again')
  kept.reset()
  t.notOk(kept.reusable, 'reset: no verdict yet')
  t.equal(kept.feed(Buffer.from('HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n')), 'OK')
  t.notOk(kept.reusable, 'Connection: close, in any case')
})

t.test('an exception in the data path is a failed check, never an uncaught error', async t => {
  class Exploding extends RegExp {
    override test (): boolean { throw new TypeError('matcher bug') }
  }
  const server = await onRequest(t, socket => socket.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'))
  t.same(await probe(at(server.port), { body: new Exploding('ok') }).then(r => [r.ok, r.reason]), [false, 'error TypeError'])
  const untilClose = await onRequest(t, socket => socket.end('HTTP/1.0 200 OK\r\n\r\nok'))
  t.equal((await probe(at(untilClose.port), { body: new Exploding('ok') })).reason, 'error TypeError', 'at the end of a body read until close')
})
