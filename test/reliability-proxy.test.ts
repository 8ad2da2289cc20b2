import http from 'node:http'
import type net from 'node:net'
import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { request } from 'undici'
import registry from '../plugins/registry.js'
import proxy from '../plugins/proxy.js'
import healthCheck from '../plugins/health.js'
import { Registry } from '../lib/registry.js'
import { spawnBackend, type BackendProcess } from '../lib/dev/backend-process.js'
import { onPath } from '../lib/dev/supervisord-daemon.js'
import { backendFor, backendsFor, freePort, silentServer, tcpServer, whoAmI, type BackendHandler } from './helpers/backends.js'
import { clientFor, gateway, listening, loggerInto } from './helpers/gateway.js'
import { lastBody, rawExchange } from './helpers/raw-http.js'
import { sleep, until } from './helpers/wait.js'

// The proxy's fault model, one test per fault: what is charged to the peer,
// what to the client, what goes to another peer, what the client sees. The
// hostile clients are raw sockets (an HTTP library would refuse to send what
// they send); the hostile backends are raw `net` servers where a real HTTP
// server cannot misbehave on demand; the hung backend is a real process
// stopped with SIGSTOP.

/** A backend handler that keeps the request headers and body it was sent. */
function recording (seen: Array<{ method: string, headers: http.IncomingHttpHeaders, body: string }>): BackendHandler {
  return (req, res, backend) => {
    let body = ''
    req.setEncoding('latin1')
    req.on('data', chunk => { body += chunk })
    req.on('end', () => {
      seen.push({ method: req.method ?? '', headers: req.headers, body })
      whoAmI(req, res, backend)
    })
  }
}

function portOf (base: string): number {
  return Number(new URL(base).port)
}

/** A GET with the given extra header lines on a raw socket. */
async function rawGet (port: number, headerLines: string[]): Promise<ReturnType<typeof rawExchange>> {
  return await rawExchange(port, [`GET / HTTP/1.1\r\nHost: gateway\r\n${headerLines.map(line => `${line}\r\n`).join('')}Connection: close\r\n\r\n`])
}

function passive (app: FastifyInstance, upstream = 'b'): Array<[string, number]> {
  return app.upstreams.get(upstream).peers.map(peer => [peer.passive, peer.fails])
}

t.test('poison headers (Expect, Keep-Alive, bare Upgrade, hop-by-hop) are answered and dropped; no peer is charged', async t => {
  const seen: Parameters<typeof recording>[0] = []
  const backends = await backendsFor(t, 3, recording(seen))
  const app = await gateway({ b: { servers: backends.map(b => b.address) } })
  t.teardown(() => app.close())
  const base = await listening(app)
  const port = portOf(base)
  const poisons = [
    ['Expect: 100-continue'],
    ['Keep-Alive: 1'],
    ['Upgrade: foo'],
    ['TE: trailers'],
    ['Proxy-Connection: keep-alive'],
    ['Connection: x-hop', 'X-Hop: secret']
  ]
  for (const lines of poisons) {
    const answer = await rawGet(port, lines)
    t.equal(answer.statuses.at(-1), 200, `${lines.join(', ')}: answered 200`)
  }
  t.equal(seen.length, poisons.length, 'every one reached a backend')
  for (const { headers } of seen) {
    t.notOk(['expect', 'keep-alive', 'upgrade', 'te', 'proxy-connection', 'x-hop'].some(name => name in headers), 'no hop-by-hop header was forwarded')
  }
  t.same(passive(app), [['ok', 0], ['ok', 0], ['ok', 0]], 'no peer charged')
  const statuses = await Promise.all(Array.from({ length: 30 }, async () => (await request(base)).statusCode))
  t.same(statuses, Array(30).fill(200), 'ordinary traffic flows on')
})

t.test('a 2 MB POST with Expect: 100-continue, as curl sends it, gets 100 Continue and reaches the peer whole', async t => {
  const seen: Parameters<typeof recording>[0] = []
  const backends = await backendsFor(t, 2, recording(seen))
  const app = await gateway({ b: { servers: backends.map(b => b.address) } })
  t.teardown(() => app.close())
  const port = portOf(await listening(app))
  const body = Buffer.alloc(2 * 1024 * 1024, 'x')
  const head = `POST /upload HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`
  // The head first; the body only once the gateway said 100 Continue.
  const continued = await rawExchange(port, [head], { until: /HTTP\/1\.1 100 Continue\r\n\r\n/, ms: 3000 })
  t.same(continued.statuses, [100], '100 Continue before the body')
  const answer = await rawExchange(port, [head, body], { gapMs: 50 })
  t.same(answer.statuses, [100, 200])
  t.match(JSON.parse(lastBody(answer)), { backend: Number }, 'answered by a peer')
  t.equal(seen.at(-1)?.body.length, body.length, 'the peer got all 2 MB')
  t.notOk(seen.some(request => 'expect' in request.headers), 'Expect was not forwarded')
  t.same(passive(app), [['ok', 0], ['ok', 0]])
})

const curl = onPath('curl')
t.test('curl --data-binary @2MB (curl adds Expect itself)', { skip: curl || process.env.CI === 'true' ? false : 'curl not installed' }, async t => {
  const seen: Parameters<typeof recording>[0] = []
  const backends = await backendsFor(t, 1, recording(seen))
  const app = await gateway({ b: { servers: [backends[0].address] } })
  t.teardown(() => app.close())
  const base = await listening(app)
  const dir = await mkdtemp(path.join(tmpdir(), 'fsv-curl-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'body')
  await writeFile(file, Buffer.alloc(2 * 1024 * 1024, 'y'))
  const child = spawn('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '20', '--data-binary', `@${file}`,
    '-H', 'content-type: application/octet-stream', `${base}/upload`])
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  await new Promise(resolve => child.once('exit', resolve))
  t.equal(out, '200')
  t.equal(seen[0]?.body.length, 2 * 1024 * 1024, 'all of it reached the peer')
})

t.test('a header the HTTP client refuses to send is the client\'s fault: 400, no peer charged, no retry', async t => {
  const seen: Parameters<typeof recording>[0] = []
  const backends = await backendsFor(t, 2, recording(seen))
  // A lenient parser lets a control character through to the proxy; undici will not send it.
  const app = await gateway({ b: { servers: backends.map(b => b.address) } }, {}, { http: { insecureHTTPParser: true } })
  t.teardown(() => app.close())
  const port = portOf(await listening(app))
  const answer = await rawGet(port, ['X-Odd: a\x01b'])
  t.equal(answer.statuses.at(-1), 400)
  t.match(JSON.parse(lastBody(answer)), { code: 'FST_SUPERVISORD_BAD_REQUEST', message: /cannot be forwarded to upstream "b": .*invalid x-odd header/ })
  t.equal(seen.length, 0, 'no peer saw it')
  t.same(passive(app), [['ok', 0], ['ok', 0]], 'no peer charged')
})

t.test('a client whose body breaks or stops mid-stream is the client\'s fault: the peer is not charged', async t => {
  let closedEarly = 0
  const backends = await backendsFor(t, 2, (req, res) => {
    req.resume()
    req.on('end', () => res.end('ok'))
    res.on('close', () => { if (!res.writableFinished) closedEarly++ })
  })
  const app = await gateway({ b: { servers: backends.map(b => b.address) } })
  t.teardown(() => app.close())
  const base = await listening(app)
  const port = portOf(base)
  const chunk = `10000\r\n${'z'.repeat(0x10000)}\r\n`
  // Longer than retryBodySize (64 KiB), so streamed to the peer as it comes.
  const broken = ['POST / HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n', chunk, chunk, 'zz\r\nboom\r\n']
  const cutShort = ['POST / HTTP/1.1\r\nHost: gateway\r\nContent-Length: 500000\r\n\r\n', 'y'.repeat(100_000), 'y'.repeat(100_000)]
  for (const [name, parts] of [['a chunk size that is not hex', broken], ['the client leaves half way', cutShort]] as const) {
    const before = closedEarly
    const answer = await rawExchange(port, [...parts], { gapMs: 100, ms: 400 })
    t.ok(answer.statuses.every(status => status === 400), `${name}: the client gets 400, or nothing`)
    t.ok(await until(() => closedEarly === before + 1, 3000), `${name}: the peer saw the request end without its body`)
    t.same(passive(app), [['ok', 0], ['ok', 0]], `${name}: no peer charged`)
    t.ok(await until(() => app.upstreams.get('b').peers.every(peer => peer.inflight === 0)), `${name}: its slot given back`)
  }
  t.equal(backends[0].hits + backends[1].hits, 2, 'neither was sent to another peer')
  t.equal((await request(base)).statusCode, 200, 'the gateway serves on')
})

/**
 * Raw backends that break HTTP in the ways a real server does not on demand.
 * All but the bad chunk break the head: those GETs can go on to the next
 * peer; a broken body comes after the head was taken, so it is a 502.
 */
const MALFORMED: Record<string, (socket: net.Socket) => void> = {
  garbage: socket => { socket.end('THIS IS NOT HTTP\r\n\r\n') },
  'over-long head': socket => { socket.end(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(100_000)}\r\n\r\n`) },
  'never-ending head': socket => {
    socket.write('HTTP/1.1 200 OK\r\n')
    const timer = setInterval(() => { if (!socket.destroyed) socket.write(`X-More: ${'b'.repeat(1000)}\r\n`) }, 5)
    socket.on('close', () => clearInterval(timer))
  },
  '1xx flood (100)': socket => { socket.write('HTTP/1.1 100 Continue\r\n\r\n'.repeat(5000)) },
  '1xx flood (102, never a final answer)': socket => { socket.write('HTTP/1.1 102 Processing\r\n\r\n'.repeat(200)) },
  'status 999': socket => { socket.end('HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n') },
  'content-length mismatch': socket => { socket.end('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!') }
}
const BAD_BODY: Record<string, (socket: net.Socket) => void> = {
  'bad chunk size': socket => { socket.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n') }
}

t.test('a malformed response is a 502 and a failure of that peer, never the parser\'s text; a GET goes on to the next peer', async t => {
  for (const [name, misbehave] of Object.entries({ ...MALFORMED, ...BAD_BODY })) {
    await t.test(name, async t => {
      const bad = await tcpServer(t, socket => { socket.once('data', () => misbehave(socket)) })
      const good = await backendFor(t, whoAmI, 1)
      const servers = [`127.0.0.1:${bad.port}`, good.address]
      const once = await gateway({ b: { servers } }, { nextUpstreamTries: 1, headersTimeout: 5000 })
      t.teardown(() => once.close())
      const res = await once.inject('/')
      t.equal(res.statusCode, 502)
      t.same(res.json(), { statusCode: 502, code: 'FST_SUPERVISORD_PEER_BAD_RESPONSE', error: 'Bad Gateway', message: 'A peer of upstream "b" sent a malformed or truncated response' })
      t.same(passive(once), [['failed', 1], ['ok', 0]], 'charged to the peer that sent it')

      const retried = await gateway({ b: { servers } }, { headersTimeout: 5000 })
      t.teardown(() => retried.close())
      const answer = await retried.inject('/')
      if (name in BAD_BODY) {
        t.equal(answer.statusCode, 502, 'the head was taken: no other peer')
      } else {
        t.equal(answer.statusCode, 200, 'the GET is answered by the next peer')
        t.equal(answer.headers['x-backend'], '1')
      }
    })
  }
})

t.test('a response cut short after its headers went out: the client\'s connection is cut, the peer charged', async t => {
  const truncating = await tcpServer(t, socket => {
    socket.once('data', () => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n' + 'p'.repeat(1000))
      setTimeout(() => socket.destroy(), 100)
    })
  })
  const stalling = await tcpServer(t, socket => {
    socket.once('data', () => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n' + 'q'.repeat(1000)))
  })
  for (const [name, peer, kind] of [['truncated', truncating, 'response'], ['stalled (bodyTimeout)', stalling, 'timeout']] as const) {
    const lines: Array<Record<string, unknown>> = []
    const app = await gateway({ b: { servers: [`127.0.0.1:${peer.port}`, '127.0.0.1:1'] } }, { bodyTimeout: 500 }, { logger: loggerInto(lines, 'warn') })
    const port = portOf(await listening(app))
    const answer = await rawGet(port, [])
    t.equal(answer.statuses[0], 200, `${name}: the head went out`)
    t.ok(answer.closed, `${name}: the connection was cut`)
    t.ok(lastBody(answer).length < 100_000, `${name}: short of Content-Length`)
    t.same(passive(app)[0], ['failed', 1], `${name}: the peer is charged`)
    t.match(lines.find(line => line.msg === 'proxy: peer failed'), { kind }, `${name}: logged as ${kind}`)
    t.notOk(lines.some(line => (line.err as { stack?: string } | undefined)?.stack), `${name}: no stack in the log`)
    await app.close()
  }
})

t.test('slowloris clients hold no peer: slow heads and slow small bodies never reach a backend, others are served', async t => {
  const backends = await backendsFor(t, 2)
  const app = await gateway({ b: { servers: backends.map(b => b.address) } })
  t.teardown(() => app.close())
  const base = await listening(app)
  const port = portOf(base)
  const slowHead = 'GET / HTTP/1.1\r\nHost: gateway\r\nX-Slow: ' + 'a'.repeat(30)
  const slowBody = ['POST / HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n', ...Array<string>(30).fill('b')]
  const slow = [
    ...Array.from({ length: 10 }, async () => await rawExchange(port, [...slowHead], { gapMs: 50, ms: 2500 })),
    ...Array.from({ length: 10 }, async () => await rawExchange(port, slowBody, { gapMs: 50, ms: 2500 }))
  ]
  const open = async (): Promise<number> => await new Promise(resolve => app.server.getConnections((_error, count) => resolve(count)))
  t.ok(await until(async () => await open() >= 20), 'the twenty slow clients are connected')
  const statuses: number[] = []
  for (let i = 0; i < 40; i++) statuses.push((await request(base)).statusCode)
  t.same(statuses, Array(40).fill(200), 'ordinary requests answered while the slow ones dribble')
  await Promise.all(slow)
  t.equal(backends[0].hits + backends[1].hits, 40, 'no slow request reached a backend')
  t.ok(await until(() => app.upstreams.get('b').peers.every(peer => peer.inflight === 0)), 'no in-flight slot held')
  t.same(passive(app), [['ok', 0], ['ok', 0]])
})

t.test('a POST whose connection was refused goes to the next peer, exactly once', async t => {
  const seen: Parameters<typeof recording>[0] = []
  const live = await backendFor(t, recording(seen), 1)
  const app = await gateway({ b: { servers: [`127.0.0.1:${await freePort()}`, live.address] } })
  t.teardown(() => app.close())
  const base = await listening(app)
  const small = await request(base, { method: 'POST', body: 'id=1', headers: { 'x-post-id': '1' } })
  t.equal(small.statusCode, 200)
  t.same(await small.body.json(), { backend: 1 })
  // Longer than retryBodySize (64 KiB), so streamed: nothing of it was read by the refused attempt.
  const large = await request(base, { method: 'POST', body: Buffer.alloc(200_000, 'l'), headers: { 'x-post-id': '2' } })
  t.equal(large.statusCode, 200)
  await large.body.dump()
  t.same(seen.map(s => [s.headers['x-post-id'], s.body.length]), [['1', 4], ['2', 200_000]], 'each POST reached the live peer once, whole')
  t.equal(app.upstreams.get('b').peers[0].fails, 1, 'the refusing peer was charged (and then out)')
})

t.test('PUT and DELETE are idempotent: sent again to the next peer after a send failure', async t => {
  const resetter = await backendFor(t, req => { req.socket.destroy() }, 0)
  const seen: Parameters<typeof recording>[0] = []
  const live = await backendFor(t, recording(seen), 1)
  const app = await gateway({ b: { servers: [{ address: resetter.address, maxFails: 0 }, live.address] } })
  t.teardown(() => app.close())
  const base = await listening(app)
  for (const method of ['PUT', 'DELETE', 'PUT', 'DELETE']) {
    const res = await request(base, { method, body: `${method} body` })
    t.equal(res.statusCode, 200, `${method} answered`)
    await res.body.dump()
  }
  t.equal(resetter.hits, 2, 'round-robin sent two of them to the resetting peer first')
  t.same(seen.map(s => [s.method, s.body]), [['PUT', 'PUT body'], ['DELETE', 'DELETE body'], ['PUT', 'PUT body'], ['DELETE', 'DELETE body']],
    'each reached the live peer once, with its body')
})

t.test('a GET with a small body is retried with it; one with a body too long to keep is not', async t => {
  const resetter = await backendFor(t, req => { req.socket.destroy() }, 0)
  const seen: Parameters<typeof recording>[0] = []
  const live = await backendFor(t, recording(seen), 1)
  const app = await gateway({ b: { servers: [{ address: resetter.address, maxFails: 0 }, live.address] } }, { nextUpstreamTries: 2 })
  t.teardown(() => app.close())
  const base = await listening(app)
  const small = await request(base, { method: 'GET', body: 'q=small' })
  t.equal(small.statusCode, 200)
  await small.body.dump()
  t.same(seen.map(s => s.body), ['q=small'], 'the retry carried the kept body')

  const requestsBefore = resetter.hits
  await request(base).then(async res => await res.body.dump()) // the live peer's turn: the next GET starts at the resetter again
  const large = await request(base, { method: 'GET', body: Buffer.alloc(100_000, 'g') })
  t.equal(resetter.hits, requestsBefore + 1, 'the large GET went to the resetting peer')
  t.equal(large.statusCode, 502, 'and was not sent again: its body was streamed, not kept')
  await large.body.dump()
  t.equal(seen.length, 2, 'the live peer never saw it')
})

t.test('a retry does not move the round-robin cursor: a failing peer is the first try of half the requests (2 peers, maxFails 0)', async t => {
  const resetter = await backendFor(t, req => { req.socket.destroy() }, 0)
  const live = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [{ address: resetter.address, maxFails: 0 }, live.address] } })
  t.teardown(() => app.close())
  const statuses: number[] = []
  for (let i = 0; i < 10; i++) statuses.push((await app.inject('/')).statusCode)
  t.same(statuses, Array(10).fill(200))
  t.equal(resetter.hits, 5, 'first try of 5 of 10, as nginx (not 10 of 10)')
  t.equal(live.hits, 10)
})

t.test('a lone primary is never taken out passively; with a backup it is (nginx)', async t => {
  let failNext = true
  const flaky = await backendFor(t, (req, res, backend) => {
    if (failNext) {
      failNext = false
      req.socket.destroy()
      return
    }
    whoAmI(req, res, backend)
  })
  const lone = await gateway({ b: { servers: [flaky.address] } })
  t.teardown(() => lone.close())
  t.equal((await lone.inject('/')).statusCode, 502, 'the reset reaches the client')
  t.same(passive(lone), [['ok', 1]], 'counted, but the only peer stays in rotation')
  t.equal((await lone.inject('/')).statusCode, 200, 'the next request is served, not 503')

  failNext = true
  const backup = await backendFor(t, whoAmI, 1)
  const withBackup = await gateway({ b: { servers: [flaky.address, { address: backup.address, backup: true }] } })
  t.teardown(() => withBackup.close())
  const res = await withBackup.inject('/')
  t.equal(res.headers['x-backend'], '1', 'the backup answered')
  t.equal(withBackup.upstreams.get('b').peers[0].passive, 'failed', 'the primary is out: there is a backup to send to')
})

t.test('after failTimeout a peer that fails again is out after one failure; a success ends the probation', async t => {
  const r = new Registry({ upstreams: { a: { servers: [{ address: '127.0.0.1:1', maxFails: 3, failTimeout: 150 }, '127.0.0.1:2'] } } })
  t.teardown(() => r.close())
  const [peer] = r.get('a').peers
  for (let i = 0; i < 2; i++) peer.recordFailure('x')
  t.equal(peer.passive, 'ok', 'two of three')
  peer.recordFailure('x')
  t.equal(peer.passive, 'failed', 'three: out')
  t.ok(await until(() => peer.passive === 'ok', 2000), 'back after failTimeout')
  peer.recordFailure('again')
  t.equal(peer.passive, 'failed', 'one more failure: out again at once')
  t.ok(await until(() => peer.passive === 'ok', 2000))
  peer.recordSuccess()
  peer.recordFailure('x')
  t.equal(peer.passive, 'ok', 'a success after failTimeout cleared the count: maxFails again')
  peer.recordFailure('x')
  peer.recordFailure('x')
  t.equal(peer.passive, 'failed')
})

t.test('requests waiting on a peer taken out are rescued at once if they may be sent again; a POST stays', async t => {
  // A hung peer that keeps what it is sent: a request is on it once its head arrived (before that it is not sent yet, and may go anywhere).
  let received = ''
  const hung = await tcpServer(t, socket => socket.on('data', (chunk: Buffer) => { received += chunk.toString('latin1') }))
  const arrived = (): number => received.match(/(GET|POST) \/ HTTP\/1\.1/g)?.length ?? 0
  const seen: Parameters<typeof recording>[0] = []
  const live = await backendFor(t, recording(seen), 1)
  // headersTimeout far beyond the test's own bounds: whatever is answered was rescued.
  const app = await gateway({ b: { servers: [`127.0.0.1:${hung.port}`, live.address] } }, { headersTimeout: 60_000 })
  t.teardown(() => app.close())
  const base = await listening(app)
  const dispatcher = clientFor(t)
  const [peer, livePeer] = app.upstreams.get('b').peers
  const takeOuts = { unhealthy: () => peer.setHealth('unhealthy'), down: () => peer.setProcess('down'), 'passive failure': () => peer.recordFailure('by the test') }
  for (const [name, takeOut] of Object.entries(takeOuts)) {
    // Everything to the hung peer first: the live one in maintenance meanwhile.
    livePeer.setAdmin('maint')
    received = ''
    const gets = Array.from({ length: 4 }, async () => await request(base, { dispatcher }))
    const leaving = new AbortController()
    const post = request(base, { dispatcher, method: 'POST', body: 'once', signal: leaving.signal }).catch(() => 'aborted')
    t.ok(await until(() => peer.inflight === 5 && arrived() === 5), `${name}: four GETs and a POST sent to the hung peer, waiting`)
    livePeer.setAdmin('ready')
    takeOut()
    const answers = await Promise.all(gets)
    t.same(answers.map(res => res.statusCode), [200, 200, 200, 200], `${name}: every GET answered by the live peer`)
    await Promise.all(answers.map(async res => await res.body.dump()))
    t.equal(peer.inflight, 1, `${name}: the POST still waits on the hung peer, not sent again`)
    leaving.abort()
    t.equal(await post, 'aborted')
    t.ok(await until(() => peer.inflight === 0), `${name}: and leaves with its client`)
    peer.setHealth('unknown')
    peer.setProcess('up')
    peer.clearPassive('test')
  }
  t.same(seen.map(s => s.method), Array(12).fill('GET'), 'each GET reached the live peer once; no POST did')
})

t.test('a request still queued for a connection to a peer taken out is rescued too, whatever its method', async t => {
  const hung = await silentServer(t)
  const seen: Parameters<typeof recording>[0] = []
  const live = await backendFor(t, recording(seen), 1)
  // One connection per peer: the second request waits in undici's queue, never written.
  const app = await gateway({ b: { servers: [`127.0.0.1:${hung.port}`, live.address] } }, { connections: 1, headersTimeout: 60_000 })
  t.teardown(() => app.close())
  const base = await listening(app)
  const dispatcher = clientFor(t)
  const [peer, livePeer] = app.upstreams.get('b').peers
  livePeer.setAdmin('maint')
  const get = request(base, { dispatcher })
  t.ok(await until(() => hung.connections === 1), 'the GET is written to the hung peer')
  const post = request(base, { dispatcher, method: 'POST', body: 'queued' })
  t.ok(await until(() => peer.inflight === 2), 'the POST waits behind it')
  livePeer.setAdmin('ready')
  peer.setHealth('unhealthy')
  const [got, posted] = await Promise.all([get, post])
  t.same([got.statusCode, posted.statusCode], [200, 200], 'both answered by the live peer')
  await Promise.all([got.body.dump(), posted.body.dump()])
  t.same(seen.map(s => [s.method, s.body]).sort(), [['GET', ''], ['POST', 'queued']], 'the POST had never been sent: it went on, once')
  t.equal(peer.inflight, 0)
})

t.test('a peer being stopped drains: its requests finish, or go on uncharged when the stop drops them', async t => {
  const held: Array<{ req: http.IncomingMessage, res: http.ServerResponse }> = []
  const stopping = await backendFor(t, (req, res) => { held.push({ req, res }) }, 0)
  const live = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [stopping.address, live.address] } })
  t.teardown(() => app.close())
  const [peer] = app.upstreams.get('b').peers
  // Round-robin: the first and the third to the peer about to stop.
  const [first, second, third] = [app.inject('/'), app.inject('/'), app.inject('/')]
  t.ok(await until(() => held.length === 2), 'two GETs at the peer about to stop')
  t.equal((await second).headers['x-backend'], '1')
  peer.setProcess('stopping', 'stop requested')
  await sleep(100)
  t.equal(peer.inflight, 2, 'a stop drains: nothing is taken from it')
  whoAmI(held[0].req, held[0].res, stopping)
  t.equal((await first).headers['x-backend'], '0', 'the first finishes there')
  held[1].req.socket.destroy()
  t.equal((await third).headers['x-backend'], '1', 'the one its stop dropped goes to the next peer')
  t.same(passive(app), [['ok', 0], ['ok', 0]], 'a peer stopped on purpose is not charged')
  t.equal(live.hits, 2)
})

t.test('a hung backend process (SIGSTOP) stalls only the requests on it, until the checks take it out', async t => {
  const children: BackendProcess[] = await Promise.all([0, 1, 2].map(async id => await spawnBackend(id)))
  t.teardown(async () => { await Promise.all(children.map(async child => await child.stop())) })
  const app = Fastify({ logger: false })
  await app.register(registry, {
    upstreams: { b: { servers: children.map(c => c.address), healthCheck: { interval: 200, timeout: 300, rise: 1, fall: 1 } } }
  })
  await app.register(healthCheck)
  await app.register(proxy, { upstream: 'b', headersTimeout: 20_000, disableRequestLogging: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const dispatcher = clientFor(t)
  const peers = app.upstreams.get('b').peers
  t.ok(await until(() => peers.every(peer => peer.lastCheck?.ok === true)), 'checked healthy')

  const latencies: number[] = []
  const failures: number[] = []
  let served = 0
  let stopped = 0
  const clients = Array.from({ length: 20 }, async () => {
    for (let i = 0; i < 40; i++) {
      const started = Date.now()
      const res = await request(`${base}/?ms=20`, { dispatcher })
      await res.body.dump()
      if (res.statusCode !== 200) failures.push(res.statusCode)
      served++
      if (stopped !== 0 && started >= stopped - 50) latencies.push(Date.now() - started)
    }
  })
  t.ok(await until(() => served >= 40), 'the clients are under way')
  stopped = Date.now()
  children[1].child.kill('SIGSTOP')
  await Promise.all(clients)
  t.same(failures, [], 'every request answered 200')
  t.equal(peers[1].health, 'unhealthy', 'the checks took the hung peer out')
  const longest = Math.max(...latencies)
  // Detection: one interval plus the check's timeout (500 ms); a wide margin for a loaded machine, far below headersTimeout (20 s).
  t.ok(longest < 5000, `the longest stall (${longest} ms) is about detection time, not headersTimeout`)
  t.equal(peers[1].inflight, 0, 'nothing left on the hung peer')
})

t.test('a client that goes away aborts its upstream request: the backend sees it closed, in-flight is back to 0', async t => {
  let open = 0
  let closedEarly = 0
  const slow = await backendFor(t, (_req, res) => {
    open++
    res.on('close', () => {
      open--
      if (!res.writableFinished) closedEarly++
    })
    // A 5 s request, unless the gateway gives it up.
    setTimeout(() => { if (!res.destroyed) res.end('late') }, 5000).unref()
  })
  const app = await gateway({ b: { servers: [slow.address] } })
  t.teardown(() => app.close())
  const base = await listening(app)
  const dispatcher = clientFor(t)
  const controllers = Array.from({ length: 50 }, () => new AbortController())
  const pending = controllers.map(async controller => await request(base, { dispatcher, signal: controller.signal }).catch(() => 'aborted'))
  t.ok(await until(() => open === 50), 'fifty requests at the backend')
  t.equal(app.upstreams.get('b').peers[0].inflight, 50)
  for (const controller of controllers) controller.abort()
  t.same(new Set(await Promise.all(pending)), new Set(['aborted']))
  t.ok(await until(() => closedEarly === 50, 3000), 'the backend saw all fifty closed before it answered')
  t.equal(open, 0)
  t.equal(app.upstreams.get('b').peers[0].inflight, 0, 'in-flight is the truth')
  t.same(passive(app), [['ok', 0]], 'a client leaving is nobody\'s failure')
})

t.test('error bodies name the code and the upstream, never an address (unless exposeErrors)', async t => {
  const port = await freePort()
  const closed = await gateway({ b: { servers: [`127.0.0.1:${port}`] } })
  t.teardown(() => closed.close())
  const res = await closed.inject('/')
  t.equal(res.statusCode, 502)
  t.same(res.json(), { statusCode: 502, code: 'FST_SUPERVISORD_PEER_CONNECT', error: 'Bad Gateway', message: 'A peer of upstream "b" could not be reached or dropped the connection' })
  t.notMatch(res.body, /127\.0\.0\.1|ECONNREFUSED/)
  t.notMatch(res.body, String(port))

  const exposed = await gateway({ b: { servers: [`127.0.0.1:${port}`] } }, { exposeErrors: true })
  t.teardown(() => exposed.close())
  t.match((await exposed.inject('/')).json().message, `peer 127.0.0.1:${port}: ECONNREFUSED`, 'exposeErrors: the peer and the reason')

  // A failed start, as the supervisord bridge reports it, with what a client must not see.
  const held = await gateway({ b: { servers: [{ address: `127.0.0.1:${port}`, down: true }] } }, { holdTimeout: 5000 })
  t.teardown(() => held.close())
  held.upstreams.get('b').startOnDemand()
  held.upstreams.on('demand', () => {
    // As the bridge does: the failed peer backs off (so it is no candidate), then the command is told.
    const reason = 'supervisord unix:/run/secret.sock (user admin): b0: SPAWN_ERROR'
    held.upstreams.get('b').peers[0].setBackoff({ step: 1, until: Date.now() + 60_000, reason, cause: 'program' })
    held.upstreams.emit('command', { upstream: 'b', index: 0, command: 'start', ok: false, fault: 'SPAWN_ERROR', reason, at: Date.now() })
  })
  const failed = await held.inject('/')
  t.equal(failed.statusCode, 502)
  t.equal(failed.json().code, 'FST_SUPERVISORD_START_FAILED', 'the code is kept')
  t.equal(failed.json().message, 'Upstream "b" could not serve the request (the reason is in the gateway\'s log)')
  t.notMatch(failed.body, /secret|admin|b0|SPAWN/)
})

t.test('a burst of one failure is one log line per peer and reason per second, with a count, and no stack', async t => {
  const lines: Array<Record<string, unknown>> = []
  const live = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [{ address: `127.0.0.1:${await freePort()}`, maxFails: 0 }, live.address] } }, {},
    { logger: loggerInto(lines, 'warn') })
  const started = Date.now()
  const statuses = new Set<number>()
  for (let i = 0; i < 100; i++) statuses.add((await app.inject('/')).statusCode)
  const elapsed = Date.now() - started
  t.same([...statuses], [200])
  await app.close()
  const failed = lines.filter(line => line.msg?.toString().startsWith('proxy: peer failed'))
  t.equal(app.upstreams.get('b').peers[0].fails, 50, 'fifty failures')
  t.ok(failed.length <= 2 + Math.ceil(elapsed / 1000), `${failed.length} lines for them in ${elapsed} ms`)
  t.equal(failed.reduce((sum, line) => sum + Number(line.repeated ?? 1), 0), 50, 'every failure counted in them')
  t.match(failed[0], { level: 40, upstream: 'b', kind: 'connect', reason: /ECONNREFUSED/ })
  t.notOk(lines.some(line => 'stack' in line || (typeof line.err === 'object' && line.err !== null && 'stack' in line.err)), 'no stack anywhere')
})

t.test('a failed attempt gives its in-flight slot back at once; retries leave every count at 0', async t => {
  const resetter = await backendFor(t, req => { req.socket.destroy() }, 0)
  const held: { answer?: () => void } = {}
  const holding = await backendFor(t, (req, res, backend) => { held.answer = () => whoAmI(req, res, backend) }, 1)
  const app = await gateway({ b: { servers: [{ address: resetter.address, maxFails: 0 }, holding.address] } })
  t.teardown(() => app.close())
  const [failing, live] = app.upstreams.get('b').peers
  const pending = app.inject('/')
  t.ok(await until(() => held.answer !== undefined), 'failed on peer 0, sent on to peer 1, which holds it')
  t.equal(failing.inflight, 0, 'the failed attempt\'s slot was given back')
  t.equal(live.inflight, 1)
  const answerHeld = (): void => held.answer?.()
  answerHeld()
  t.equal((await pending).statusCode, 200)
  for (let i = 0; i < 6; i++) {
    held.answer = undefined
    const next = app.inject('/')
    await until(() => held.answer !== undefined)
    answerHeld()
    await next
  }
  t.same([failing.inflight, live.inflight], [0, 0], 'all slots back after failures and retries')
  t.equal(failing.requests, 4, 'peer 0 was tried by every other request')
})

t.test('peerHeader must be an HTTP token, checked at registration; it names the peer that answered after a retry', async t => {
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { peerHeader: 'x peer' }), /proxy to upstream "b": option "peerHeader" must be a header name \(an HTTP token/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { peerHeader: '' }), /option "peerHeader" must be a header name/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { retryBodySize: -1 }), /option "retryBodySize" must be/)
  await t.rejects(gateway({ b: { servers: ['127.0.0.1:1'] } }, { exposeErrors: 'yes' as never }), /option "exposeErrors" must be/)
  const live = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [`127.0.0.1:${await freePort()}`, live.address] } }, { peerHeader: 'X-Served-By' })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.headers['x-served-by'], live.address)
})

t.test('the gateway survives every hostile input above and still serves', async (t: Test) => {
  const backends = await backendsFor(t, 2)
  const bad = await tcpServer(t, socket => { socket.once('data', () => { for (const misbehave of Object.values(MALFORMED).slice(0, 1)) misbehave(socket) }) })
  const app = await gateway({ b: { servers: [...backends.map(b => b.address), `127.0.0.1:${bad.port}`] } }, { peerHeader: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const port = portOf(base)
  await Promise.all([
    rawGet(port, ['Expect: 100-continue']), rawGet(port, ['Keep-Alive: 1']), rawGet(port, ['Upgrade: foo']),
    rawExchange(port, ['POST / HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n']),
    rawExchange(port, ['GET / HTTP/1.1\r\nHost: g\r\n' + 'X-Long: ' + 'h'.repeat(100_000) + '\r\n\r\n'])
  ])
  const statuses = await Promise.all(Array.from({ length: 20 }, async () => (await request(base)).statusCode))
  t.same(statuses, Array(20).fill(200), 'served')
  t.same(passive(app).slice(0, 2), [['ok', 0], ['ok', 0]], 'the good peers were never charged')
})
