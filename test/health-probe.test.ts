import t, { type Test } from 'tap'
import { checkRequest, probe, ResponseReader, statusExpected, type ProbeOptions } from '../lib/health-probe.js'
import { backendFor, freePort, silentServer, tcpServer, writeChunks } from './helpers/backends.js'
import { until } from './helpers/wait.js'

/** Answers with `response` once the request head has arrived, then closes. */
async function answering (t: Test, response: string | Buffer, close = true): Promise<{ port: number, requests: string[] }> {
  const requests: string[] = []
  const { port } = await tcpServer(t, socket => {
    let head = ''
    socket.on('data', data => {
      head += data.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      requests.push(head)
      if (close) socket.end(response)
      else socket.write(response)
    })
  })
  return { port, requests }
}

const at = (port: number) => ({ host: '127.0.0.1', port })

t.test('an http check passes on 2xx and 3xx and records reason, latency and time', async t => {
  const b = await backendFor(t, (_req, res) => res.end('fine'))
  const before = Date.now()
  const result = await probe(at(b.port))
  t.same({ ok: result.ok, reason: result.reason }, { ok: true, reason: 'OK' })
  t.ok(result.latencyMs >= 0 && result.latencyMs < 1000, `latency ${result.latencyMs} ms`)
  t.ok(result.at >= before && result.at <= Date.now())
  b.handler = (_req, res) => { res.writeHead(302, { location: '/elsewhere' }).end() }
  t.equal((await probe(at(b.port))).reason, 'OK', '3xx passes by default')
  b.handler = (_req, res) => { res.writeHead(500).end('broken') }
  t.same(await probe(at(b.port)).then(r => [r.ok, r.reason]), [false, 'bad status 500'])
  b.handler = (_req, res) => { res.writeHead(404).end() }
  t.equal((await probe(at(b.port))).reason, 'bad status 404')
})

t.test('expected statuses: lists of numbers and classes', async t => {
  const b = await backendFor(t, (_req, res) => { res.writeHead(503).end('maintenance') })
  t.equal((await probe(at(b.port), { status: [503] })).reason, 'OK')
  t.equal((await probe(at(b.port), { status: [200, '5xx'] })).reason, 'OK')
  t.equal((await probe(at(b.port), { status: ['2xx'] })).reason, 'bad status 503')
  b.handler = (_req, res) => { res.writeHead(200).end() }
  t.equal((await probe(at(b.port), { status: [204] })).reason, 'bad status 200')
  t.equal((await probe(at(b.port), { status: [204, 200] })).reason, 'OK')
  t.ok(statusExpected(404, ['4xx']))
  t.notOk(statusExpected(404, ['2xx', 403, '5xx']))
})

t.test('expected body: substring or RegExp, matched on the whole body', async t => {
  const b = await backendFor(t, (_req, res) => res.end('{"status": "ready", "version": 3}'))
  t.equal((await probe(at(b.port), { body: '"ready"' })).reason, 'OK')
  t.equal((await probe(at(b.port), { body: 'starting' })).reason, 'bad body')
  t.equal((await probe(at(b.port), { body: /"status":\s*"ready"/ })).reason, 'OK')
  t.equal((await probe(at(b.port), { body: /"status":\s*"down"/ })).reason, 'bad body')
  const global = /ready/g
  t.equal((await probe(at(b.port), { body: global })).reason, 'OK')
  t.equal((await probe(at(b.port), { body: global })).reason, 'OK', 'a global RegExp passes every time, not every other')
  b.handler = (_req, res) => { res.writeHead(500).end('ready') }
  t.equal((await probe(at(b.port), { body: 'ready' })).reason, 'bad status 500', 'the status is judged first')
})

t.test('the request: method, path, Host (the peer address unless overridden), headers, Connection: close', async t => {
  const seen: Array<{ method?: string, url?: string, headers: Record<string, unknown> }> = []
  const b = await backendFor(t, (req, res) => {
    seen.push({ method: req.method, url: req.url, headers: req.headers })
    res.setHeader('content-length', 5)
    res.end(req.method === 'HEAD' ? undefined : 'hello')
  })
  t.equal((await probe({ ...at(b.port), address: `localhost:${b.port}` }, { path: '/healthz?deep=1' })).reason, 'OK')
  t.equal((await probe(at(b.port), { method: 'HEAD', headers: { Host: 'api.example', 'X-Check': 'yes' } })).reason, 'OK',
    'HEAD: Content-Length announces a body that never comes')
  t.match(seen[0], { method: 'GET', url: '/healthz?deep=1', headers: { host: `localhost:${b.port}`, connection: 'close' } })
  t.match(seen[1], { method: 'HEAD', url: '/', headers: { host: 'api.example', 'x-check': 'yes', connection: 'close' } })
  t.equal(checkRequest({ host: '::1', port: 80 }), 'GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n')
})

t.test('chunked bodies are decoded, and body expectations match across chunks', async t => {
  const b = await backendFor(t, (_req, res) => {
    res.write('{"sta')
    setTimeout(() => { res.write('tus": "re') }, 5)
    setTimeout(() => res.end('ady"}'), 10)
  })
  t.equal((await probe(at(b.port), { body: '"status": "ready"' })).reason, 'OK')
  t.equal((await probe(at(b.port), { body: /^\{"status": "ready"\}$/ })).reason, 'OK', 'the chunk framing is not part of the body')
  const chunked = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n' +
    '4;name=value\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n'
  const server = await answering(t, chunked)
  t.equal((await probe(at(server.port), { body: 'Wikipedia in \r\n\r\nchunks.' })).reason, 'OK')
  // Every split of the response into two reads gives the same verdict.
  for (let cut = 1; cut < chunked.length; cut++) {
    const reader = new ResponseReader({ body: 'Wikipedia in \r\n\r\nchunks.' })
    const verdict = reader.feed(Buffer.from(chunked.slice(0, cut))) ?? reader.feed(Buffer.from(chunked.slice(cut)))
    if (verdict !== 'OK') t.fail(`split at ${cut}: ${verdict}`)
  }
  const reader = new ResponseReader()
  let verdict: string | undefined
  for (const byte of Buffer.from(chunked)) verdict ??= reader.feed(Buffer.from([byte]))
  t.equal(verdict, 'OK', 'fed a byte at a time')
  const broken = new ResponseReader()
  t.equal(broken.feed(Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n')), 'bad response: bad chunk size', 'a bad chunk size')
  const noCrlf = new ResponseReader()
  t.equal(noCrlf.feed(Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX')), 'bad response: no CR LF after chunk data', 'no CRLF after chunk data')
})

t.test('a body until close, an interim 1xx and bodiless statuses', async t => {
  const untilClose = await answering(t, 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall is well')
  t.equal((await probe(at(untilClose.port), { body: 'is well' })).reason, 'OK')
  const interim = await answering(t, 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
  t.equal((await probe(at(interim.port), { body: 'ok' })).reason, 'OK')
  const noContent = await answering(t, 'HTTP/1.1 204 No Content\r\n\r\n', false)
  t.equal((await probe(at(noContent.port), { timeout: 1000 })).reason, 'OK', '204 ends at the head, the socket still open')
  const empty = await answering(t, 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n', false)
  t.equal((await probe(at(empty.port), { timeout: 1000 })).reason, 'OK')
})

t.test('a body longer than maxBody stops the read at maxBody: body too large', async t => {
  const size = 10 * 1024 * 1024
  let written = 0
  let closed = false
  const streaming = await backendFor(t, (_req, res) => {
    res.on('close', () => { closed = true })
    res.on('error', () => {})
    // Chunked, 16 KiB at a time, as fast as the client takes it.
    const piece = Buffer.alloc(16 * 1024, 'x')
    writeChunks(res, piece, size / piece.length, { written: () => { written += piece.length } })
  })
  const start = Date.now()
  const result = await probe(at(streaming.port), { body: 'never there', timeout: 5000 })
  t.equal(result.reason, 'body too large')
  t.ok(Date.now() - start < 1000, `gave up in ${Date.now() - start} ms`)
  t.ok(await until(() => closed, 2000), 'the check closed its connection')
  t.ok(written < size, `the backend could not send it all (${(written / 1048576).toFixed(1)} of 10 MiB handed to its socket)`)

  const declared = await answering(t, `HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\n\r\n` + 'x'.repeat(1000), false)
  t.equal((await probe(at(declared.port))).reason, 'body too large', 'a Content-Length over maxBody fails at the head')
  const small = await answering(t, 'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n' + 'x'.repeat(100))
  t.equal((await probe(at(small.port), { maxBody: 99 })).reason, 'body too large')
  t.equal((await probe(at(small.port), { maxBody: 100 })).reason, 'OK')
  const closing = await answering(t, 'HTTP/1.0 200 OK\r\n\r\n' + 'y'.repeat(70_000))
  t.equal((await probe(at(closing.port))).reason, 'body too large', 'until close, past the default 64 KiB')
  const chunks = await answering(t, 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' + `${(70_000).toString(16)}\r\n`, false)
  t.equal((await probe(at(chunks.port))).reason, 'body too large', 'a chunk announced past maxBody fails at its size line')
})

t.test('timed out, connection refused, closed early, garbage', async t => {
  const silent = await silentServer(t)
  const start = Date.now()
  const timedOut = await probe(at(silent.port), { timeout: 150 })
  t.same([timedOut.ok, timedOut.reason], [false, 'timed out'])
  t.ok(Date.now() - start >= 140 && Date.now() - start < 1000, `after ${Date.now() - start} ms`)
  t.ok(timedOut.latencyMs >= 140)

  t.equal((await probe(at(await freePort()))).reason, 'connection refused')
  t.equal((await probe(at(await freePort()), { type: 'tcp' })).reason, 'connection refused')

  const hangUp = await tcpServer(t, socket => socket.end())
  t.equal((await probe(at(hangUp.port))).reason, 'closed early', 'no response at all')
  const reset = await tcpServer(t, socket => socket.once('data', () => socket.resetAndDestroy()))
  t.equal((await probe(at(reset.port))).reason, 'closed early', 'reset after the request')
  const halfHead = await answering(t, 'HTTP/1.1 200 OK\r\nContent-Le')
  t.equal((await probe(at(halfHead.port))).reason, 'closed early', 'in the head')
  const shortBody = await answering(t, 'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this')
  t.equal((await probe(at(shortBody.port))).reason, 'closed early', 'before Content-Length bytes')
  const cutChunks = await answering(t, 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel')
  t.equal((await probe(at(cutChunks.port))).reason, 'closed early', 'before the last chunk')

  const garbage = await answering(t, 'SSH-2.0-OpenSSH_9.6\r\n\r\n')
  t.equal((await probe(at(garbage.port))).reason, 'bad response: not an HTTP/1.x status line')
  const badHeader = await answering(t, 'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n')
  t.equal((await probe(at(badHeader.port))).reason, 'bad response: a header line without a name')
  const twoLengths = await answering(t, 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok')
  t.equal((await probe(at(twoLengths.port))).reason, 'bad response: bad Content-Length')
  const endless = await answering(t, 'HTTP/1.1 200 OK\r\n' + 'X-Padding: aaaaaaaaaaaaaaaa\r\n'.repeat(1000), false)
  t.equal((await probe(at(endless.port))).reason, 'bad response: head over 16 KiB', 'a head past 16 KiB')
  t.equal((await probe({ host: '127.0.0.1', port: 70000 })).reason, 'error ERR_SOCKET_BAD_PORT', 'never throws')
})

t.test('tcp checks only connect', async t => {
  let received = 0
  const plain = await tcpServer(t, socket => socket.on('data', data => { received += data.length }))
  const result = await probe(at(plain.port), { type: 'tcp' })
  t.same([result.ok, result.reason], [true, 'OK'])
  t.equal(plain.connections, 1)
  // Once the server sees the check's socket closed, whatever it sent has arrived.
  t.ok(await until(() => plain.open.size === 0, 1000), 'the check closed its connection')
  t.equal(received, 0, 'a tcp check sends nothing')
  const silent = await silentServer(t)
  t.equal((await probe(at(silent.port), { type: 'tcp' })).reason, 'OK', 'no answer is needed')
})

t.test('an abort ends a check at once; nothing is left behind', async t => {
  const silent = await silentServer(t)
  const controller = new AbortController()
  const start = Date.now()
  const pending = probe(at(silent.port), { timeout: 10_000 }, controller.signal)
  setTimeout(() => controller.abort(), 30)
  t.equal((await pending).reason, 'error ABORT_ERR')
  t.ok(Date.now() - start < 500)
  t.equal((await probe(at(silent.port), {}, AbortSignal.abort())).reason, 'error ABORT_ERR', 'already aborted')

  const b = await answering(t, 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
  const count = (type: string): number => process.getActiveResourcesInfo().filter(r => r === type).length
  const sockets = count('TCPSocketWrap')
  const timers = count('Timeout')
  const options: ProbeOptions[] = [{}, { type: 'tcp' }, { status: [500] }, { body: 'no' }, { timeout: 20 }]
  // Those sent to the silent server end by their timeout (short, to keep the test fast).
  await Promise.all(Array.from({ length: 200 }, async (_, i) => i % 7 === 0
    ? await probe(at(silent.port), { ...options[i % 5], timeout: 100 })
    : await probe(at(b.port), options[i % 5])))
  // The servers' ends close a moment after the probes' own.
  t.ok(await until(() => count('TCPSocketWrap') <= sockets, 1000), 'no socket left open')
  t.equal(count('Timeout'), timers, 'no timer left running')
})
