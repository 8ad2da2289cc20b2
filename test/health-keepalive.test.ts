import t, { type Test } from 'tap'
import type net from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import registry from '../plugins/registry.js'
import health, { type HealthCheckOptions } from '../plugins/health.js'
import type { Peer } from '../lib/peer.js'
import { Prober } from '../lib/health-probe.js'
import type { CheckResult } from '../lib/peer.js'
import { backendFor, tcpServer } from './helpers/backends.js'
import { sleep, until } from './helpers/wait.js'

/** One upstream `api` over `servers`, checked with `healthCheck`, ready. */
async function checked (t: Test, servers: string[], healthCheck: HealthCheckOptions): Promise<{ app: FastifyInstance, peer: Peer }> {
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers, healthCheck } } })
  await app.register(health)
  t.teardown(async () => await app.close())
  await app.ready()
  return { app, peer: app.upstreams.get('api').peers[0] }
}

/**
 * A raw HTTP/1.1 server that answers each request with `answer(n, socket)`,
 * n counting the requests on that connection from 1; counts connections.
 */
async function rawBackend (t: Test, answer: (n: number, socket: net.Socket) => void) {
  return await tcpServer(t, socket => {
    let head = ''
    let n = 0
    socket.on('data', data => {
      head += data.toString('latin1')
      while (head.includes('\r\n\r\n')) {
        head = head.slice(head.indexOf('\r\n\r\n') + 4)
        answer(++n, socket)
      }
    })
  })
}

const OK = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'

t.test('keepAlive: every check of a peer goes over one connection, sent without Connection: close', async t => {
  const connections = new Set<unknown>()
  const seen: Array<string | undefined> = []
  const b = await backendFor(t, (req, res) => {
    connections.add(req.socket)
    seen.push(req.headers.connection)
    res.end('ok')
  })
  b.server.keepAliveTimeout = 60_000
  const { peer } = await checked(t, [b.address], { interval: 10, keepAlive: true, body: 'ok' })
  t.ok(await until(() => peer.checks.length >= 10), 'ten checks')
  t.ok(peer.checks.every(check => check.ok), 'all passed')
  t.equal(connections.size, 1, 'one connection')
  t.same([...new Set(seen)], [undefined], 'no Connection header (HTTP/1.1 persists)')

  const plain = await backendFor(t, (req, res) => { connections.add(req.socket); res.end('ok') })
  plain.server.keepAliveTimeout = 60_000
  connections.clear()
  const second = await checked(t, [plain.address], { interval: 10 })
  t.ok(await until(() => second.peer.checks.length >= 5), 'five checks')
  t.ok(connections.size >= 5, `off by default: ${connections.size} connections for ${second.peer.checks.length} checks`)
})

t.test('keepAlive: chunked responses with trailers, HEAD and 204 keep the connection', async t => {
  const answers = [
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n',
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n',
    'HTTP/1.1 204 No Content\r\n\r\n'
  ]
  for (const answer of answers) {
    const server = await rawBackend(t, (_n, socket) => {
      // Split at every few bytes, so the reader meets each part across reads.
      for (let i = 0; i < answer.length; i += 3) socket.write(answer.slice(i, i + 3))
    })
    const { peer } = await checked(t, [`127.0.0.1:${server.port}`], { interval: 5, keepAlive: true, timeout: 1000 })
    t.ok(await until(() => peer.checks.length >= 5), JSON.stringify(answer.slice(0, 40)))
    t.same([...new Set(peer.checks.map(check => check.reason))], ['OK'])
    t.equal(server.connections, 1, 'one connection')
  }
  const head = await rawBackend(t, (_n, socket) => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n'))
  const { peer } = await checked(t, [`127.0.0.1:${head.port}`], { interval: 5, keepAlive: true, method: 'HEAD' })
  t.ok(await until(() => peer.checks.length >= 5), 'HEAD: Content-Length announces no body')
  t.equal(head.connections, 1)
})

t.test('keepAlive: the connection is closed and a new one opened on any doubt', async t => {
  // n: the request's number on its connection.
  const cases: Array<[string, (n: number, socket: net.Socket) => void, (checks: CheckResult[]) => boolean]> = [
    ['the backend says Connection: close', (_n, socket) => socket.write('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok'), checks => checks.every(c => c.ok)],
    ['an HTTP/1.0 answer', (_n, socket) => socket.write('HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok'), checks => checks.every(c => c.ok)],
    ['bytes after the response', (_n, socket) => socket.write(OK + 'HTTP/1.1 200 OK\r\n'), checks => checks.every(c => c.ok)],
    ['a failed check', (n, socket) => socket.write(n === 1 ? 'HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n' : OK), checks => checks.every(c => !c.ok)],
    // Well inside the 200 ms between two checks.
    ['bytes while idle', (_n, socket) => { socket.write(OK); setTimeout(() => { if (!socket.destroyed) socket.write('surprise') }, 5) }, checks => checks.every(c => c.ok)]
  ]
  for (const [what, answer, expected] of cases) {
    const server = await rawBackend(t, answer)
    const { peer } = await checked(t, [`127.0.0.1:${server.port}`], { interval: what === 'bytes while idle' ? 200 : 20, keepAlive: true, fall: 10 })
    t.ok(await until(() => peer.checks.length >= 4), `${what}: four checks`)
    const checks = peer.checks.slice(0, 4)
    t.ok(expected(checks), `${what}: ${checks.map(c => c.reason).join(', ')}`)
    t.ok(server.connections >= 4, `${what}: a connection per check (${server.connections})`)
    t.ok(server.open.size <= 1, `${what}: at most one open`)
  }
})

t.test('keepAlive: a kept connection the backend closed meanwhile is not a failed check', async t => {
  // Answers the first request of each connection, then closes it when the next one arrives, unanswered.
  const racing = await rawBackend(t, (n, socket) => { if (n === 1) socket.write(OK); else socket.destroy() })
  const { peer } = await checked(t, [`127.0.0.1:${racing.port}`], { interval: 10, keepAlive: true, fall: 1 })
  t.ok(await until(() => peer.checks.length >= 5), 'five checks')
  t.same([...new Set(peer.checks.map(check => check.reason))], ['OK'], 'sent again on a new connection, and passed')
  t.not(peer.health, 'unhealthy', 'never unhealthy')
  t.ok(racing.connections >= 5)

  // The backend closes idle connections before the next check is due (a short keep-alive timeout).
  const b = await backendFor(t, (_req, res) => res.end('ok'))
  b.server.keepAliveTimeout = 20
  const second = await checked(t, [b.address], { interval: 60, keepAlive: true, fall: 1 })
  t.ok(await until(() => second.peer.checks.length >= 4), 'four checks')
  t.ok(second.peer.checks.every(check => check.ok), second.peer.checks.map(check => check.reason).join(', '))

  // But a check that fails again on the fresh connection fails: this backend answers its very first request only.
  let answered = 0
  const dead = await rawBackend(t, (_n, socket) => { if (answered++ === 0) socket.write(OK); else socket.destroy() })
  const third = await checked(t, [`127.0.0.1:${dead.port}`], { interval: 10, keepAlive: true, fall: 1 })
  t.ok(await until(() => third.peer.health === 'unhealthy'), 'unhealthy')
  t.same(third.peer.checks.slice(0, 2).map(check => check.reason), ['OK', 'closed early'])
})

t.test('keepAlive: close ends the kept connection; process down closes it too', async t => {
  const server = await rawBackend(t, (_n, socket) => socket.write(OK))
  const { app, peer } = await checked(t, [`127.0.0.1:${server.port}`], { interval: 10, keepAlive: true })
  t.ok(await until(() => peer.checks.length >= 2), 'checked')
  t.equal(server.open.size, 1)
  peer.setProcess('down')
  t.ok(await until(() => server.open.size === 0, 2000), 'process down: the connection closed')
  peer.setProcess('up')
  t.ok(await until(() => server.open.size === 1, 2000), 'up again: checked on a new connection')
  await app.close()
  t.ok(await until(() => server.open.size === 0, 2000), 'close: the connection closed')
})

t.test('a Prober reuses its connection only when asked to, and only after a pass', async t => {
  const server = await rawBackend(t, (_n, socket) => socket.write(OK))
  const once = async (prober: Prober): Promise<CheckResult> => await new Promise(resolve => prober.check(resolve))
  const kept = new Prober({ host: '127.0.0.1', port: server.port }, { keepAlive: true })
  t.teardown(() => kept.close())
  for (let i = 0; i < 3; i++) t.equal((await once(kept)).reason, 'OK')
  t.equal(server.connections, 1)
  t.notOk(kept.busy)
  const pending = new Promise<CheckResult>(resolve => kept.check(resolve))
  t.ok(kept.busy)
  kept.cancel()
  t.notOk(kept.busy, 'cancelled: no result will come')
  await sleep(20)
  const results: CheckResult[] = []
  pending.then(result => results.push(result), () => {})
  await sleep(20)
  t.same(results, [], 'the cancelled check never resolves')
  t.equal((await once(kept)).reason, 'OK', 'the next check on a new connection')
  t.equal(server.connections, 2)
})

t.test('healthCheck.port: checks go to another port of the same host', async t => {
  const traffic = await backendFor(t, (_req, res) => { res.writeHead(500).end('not the check port') })
  const hosts: Array<string | undefined> = []
  const management = await backendFor(t, (req, res) => { hosts.push(req.headers.host); res.end('ok') })
  const { peer } = await checked(t, [traffic.address], { interval: 10, rise: 1, port: management.port })
  t.ok(await until(() => peer.health === 'healthy'), 'healthy from the check port')
  t.equal(traffic.hits, 0, 'the traffic port is not checked')
  t.equal(hosts[0], `127.0.0.1:${management.port}`, 'Host: the address checked')
  t.equal(peer.address, traffic.address, 'the peer keeps its own address')

  const tcp = await tcpServer(t, () => {})
  const second = await checked(t, ['127.0.0.1:1'], { interval: 10, rise: 1, type: 'tcp', port: tcp.port })
  t.ok(await until(() => second.peer.health === 'healthy'), 'tcp checks too')

  for (const port of [0, 65536, 1.5, '8080']) {
    const app = Fastify({ logger: false })
    await app.register(registry, { upstreams: { api: { servers: ['127.0.0.1:1'], healthCheck: { port: port as number } } } })
    await t.rejects(async () => { await app.register(health) }, /upstream "api": option "healthCheck.port" must be an integer from 1 to 65535/, String(port))
    await app.close()
  }
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: ['127.0.0.1:1'], healthCheck: { type: 'tcp', keepAlive: true } } } })
  await t.rejects(async () => { await app.register(health) }, /option "healthCheck.keepAlive" is only read by type "http"/)
  await app.close()
  const bad = Fastify({ logger: false })
  await bad.register(registry, { upstreams: { api: { servers: ['127.0.0.1:1'], healthCheck: { keepAlive: 'yes' as unknown as boolean } } } })
  await t.rejects(async () => { await bad.register(health) }, /option "healthCheck.keepAlive" must be true or false/)
  await bad.close()
})
