import t, { type Test } from 'tap'
import net from 'node:net'
import { Writable } from 'node:stream'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import registry, { type Upstream, type UpstreamOptions } from '../plugins/registry.js'
import health, { type HealthCheckOptions, type HealthPluginOptions } from '../plugins/health.js'
import type { Peer, PeerChange } from '../plugins/peer.js'
import { closedPort, startBackend, type Backend, type BackendHandler } from './helpers/backends.js'

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** Waits until `predicate` holds, at most `ms`; fails the test with `what` otherwise. */
async function until (_t: Test, what: string, predicate: () => boolean, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`)
    await sleep(2)
  }
}

const ok: BackendHandler = (_req, res) => res.end('ok')
const failing: BackendHandler = (_req, res) => { res.writeHead(500).end('broken') }

async function backend (t: Test, handler: BackendHandler = ok): Promise<Backend> {
  const started = await startBackend(0, handler)
  t.teardown(async () => await started.close())
  return started
}

async function gateway (t: Test, upstream: UpstreamOptions, options?: HealthPluginOptions, logs?: object[]): Promise<{ app: FastifyInstance, upstream: Upstream, peer: Peer }> {
  const stream = new Writable({ write (line, _encoding, done) { logs?.push(JSON.parse(String(line))); done() } })
  const app = Fastify({ logger: logs === undefined ? false : { level: 'info', stream } })
  await app.register(registry, { upstreams: { api: upstream } })
  await app.register(health, options ?? {})
  t.teardown(async () => await app.close())
  await app.ready()
  const api = app.upstreams.get('api')
  return { app, upstream: api, peer: api.peers[0] }
}

/** Health changes of the registry, each with the checks the peer had at that moment. */
function healthChanges (app: FastifyInstance): Array<PeerChange & { checks: string[], rise: number, fall: number }> {
  const changes: Array<PeerChange & { checks: string[], rise: number, fall: number }> = []
  app.upstreams.on('change', change => {
    if (change.field !== 'health') return
    const peer = app.upstreams.get(change.upstream).peers[change.index]
    changes.push({ ...change, checks: peer.checks.map(c => c.reason), rise: peer.rise, fall: peer.fall })
  })
  return changes
}

t.test('a peer answering 500 is unhealthy after `fall` checks, and back after `rise` passes', async t => {
  const b = await backend(t)
  const { app, peer } = await gateway(t, { servers: [b.address], healthCheck: { interval: 20, rise: 3, fall: 2 } })
  const changes = healthChanges(app)
  await until(t, 'healthy', () => peer.health === 'healthy')
  t.equal(peer.rise, 3)
  t.ok(peer.routable)
  b.handler = failing
  await until(t, 'unhealthy', () => peer.health === 'unhealthy')
  t.notOk(peer.routable, 'an unhealthy peer takes no requests')
  t.equal(peer.lastCheck?.reason, 'bad status 500')
  b.handler = ok
  await until(t, 'healthy again', () => peer.health === 'healthy')
  t.ok(peer.routable)
  const [healthy, unhealthy, recovered] = changes
  t.match(healthy, { upstream: 'api', index: 0, from: 'unknown', to: 'healthy', reason: 'OK', rise: 3 })
  t.same(healthy.checks, ['OK', 'OK', 'OK'], 'healthy at the third pass, not before')
  t.match(unhealthy, { from: 'healthy', to: 'unhealthy', reason: 'bad status 500', fall: 2 })
  t.same(unhealthy.checks.slice(-3), ['OK', 'bad status 500', 'bad status 500'], 'unhealthy at the second failure, not the first')
  t.match(recovered, { from: 'unhealthy', to: 'healthy', rise: 3 })
  t.same(recovered.checks.slice(-4), ['bad status 500', 'OK', 'OK', 'OK'])
  t.equal(changes.length, 3)
})

t.test('body expectations: a string and a RegExp', async t => {
  const b = await backend(t, (_req, res) => res.end('{"status": "ready"}'))
  const other = await backend(t, (_req, res) => res.end('{"status": "ready"}'))
  const app = Fastify({ logger: false })
  await app.register(registry, {
    upstreams: {
      text: { servers: [b.address], healthCheck: { interval: 20, rise: 1, fall: 1, body: '"ready"' } },
      pattern: { servers: [other.address], healthCheck: { interval: 20, rise: 1, fall: 1, body: /"status":\s*"ready"/ } }
    }
  })
  await app.register(health)
  t.teardown(async () => await app.close())
  await app.ready()
  const [text, pattern] = ['text', 'pattern'].map(name => app.upstreams.get(name).peers[0])
  await until(t, 'both healthy', () => text.health === 'healthy' && pattern.health === 'healthy')
  b.handler = (_req, res) => res.end('{"status": "starting"}')
  other.handler = (_req, res) => res.end('{"status":"draining"}')
  await until(t, 'both unhealthy', () => text.health === 'unhealthy' && pattern.health === 'unhealthy')
  t.equal(text.lastCheck?.reason, 'bad body')
  t.equal(pattern.lastCheck?.reason, 'bad body')
})

t.test('expected statuses: lists and classes; the request as configured', async t => {
  const seen: Array<Record<string, unknown>> = []
  const b = await backend(t, (req, res) => {
    seen.push({ method: req.method, url: req.url, ...req.headers })
    res.writeHead(503).end()
  })
  const { peer } = await gateway(t, {
    servers: [b.address],
    healthCheck: { interval: 20, rise: 1, fall: 1, status: [200, 503], method: 'HEAD', path: '/status', headers: { Host: 'api.internal', 'X-Check': '1' } }
  })
  await until(t, 'healthy on 503', () => peer.health === 'healthy')
  t.match(seen[0], { method: 'HEAD', url: '/status', host: 'api.internal', 'x-check': '1', connection: 'close' })
  b.handler = (_req, res) => { res.writeHead(200).end() }
  await sleep(60)
  t.equal(peer.health, 'healthy')
  b.handler = (_req, res) => { res.writeHead(204).end() }
  await until(t, 'unhealthy on 204', () => peer.health === 'unhealthy')
  t.equal(peer.lastCheck?.reason, 'bad status 204')

  const classes = await backend(t, (_req, res) => { res.writeHead(404).end() })
  const second = await gateway(t, { servers: [classes.address], healthCheck: { interval: 20, rise: 1, fall: 1, status: '4xx' } })
  await until(t, 'healthy on 404 with 4xx', () => second.peer.health === 'healthy')
  const third = await gateway(t, { servers: [classes.address], healthCheck: { interval: 20, rise: 1, fall: 1 } })
  await until(t, 'unhealthy on 404 by default', () => third.peer.health === 'unhealthy')
  t.equal(third.peer.lastCheck?.reason, 'bad status 404')
})

t.test('a check that gets no answer within `timeout` fails: timed out', async t => {
  const server = net.createServer(socket => socket.resume())
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise(resolve => server.close(resolve)))
  const { peer } = await gateway(t, { servers: [`127.0.0.1:${(server.address() as AddressInfo).port}`], healthCheck: { interval: 10, timeout: 60, fall: 1 } })
  await until(t, 'unhealthy', () => peer.health === 'unhealthy')
  t.equal(peer.lastCheck?.reason, 'timed out')
  t.ok((peer.lastCheck?.latencyMs ?? 0) >= 55, `latency ${peer.lastCheck?.latencyMs} ms`)
})

t.test('tcp checks: a listener passes, a closed port is refused', async t => {
  let connections = 0
  const server = net.createServer(socket => { connections++; socket.on('error', () => {}) })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise(resolve => server.close(resolve)))
  const refused = await closedPort()
  const { upstream } = await gateway(t, {
    servers: [`127.0.0.1:${(server.address() as AddressInfo).port}`, `127.0.0.1:${refused}`],
    healthCheck: { type: 'tcp', interval: 20, rise: 1, fall: 1 }
  })
  const [listening, closed] = upstream.peers
  await until(t, 'one healthy, one unhealthy', () => listening.health === 'healthy' && closed.health === 'unhealthy')
  t.equal(listening.lastCheck?.reason, 'OK')
  t.equal(closed.lastCheck?.reason, 'connection refused')
  t.ok(connections >= 1)
})

t.test('checks of a peer never overlap, even when a check outlasts the interval', async t => {
  let active = 0
  let most = 0
  let connections = 0
  // Requests in progress at the backend: a server socket's close event may
  // come a loop turn after the next connection, its response's never does.
  const b = await backend(t, (_req, res) => {
    most = Math.max(most, ++active)
    setTimeout(() => res.end('slow'), 100)
    res.on('close', () => active--)
  })
  b.server.on('connection', () => connections++)
  const { peer } = await gateway(t, { servers: [b.address], healthCheck: { interval: 5, timeout: 1000 } })
  await until(t, 'four checks', () => peer.checks.length >= 4)
  t.equal(most, 1, 'one check at a time at the backend')
  t.ok(connections >= peer.checks.length && connections <= peer.checks.length + 1, 'one connection per check')
  t.ok(peer.checks.every(check => check.ok && check.latencyMs >= 95))
})

t.test('close aborts a hanging check at once', async t => {
  let connected = 0
  let open = 0
  const server = net.createServer(socket => {
    connected++
    open++
    socket.on('close', () => open--)
    socket.resume()
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise(resolve => server.close(resolve)))
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: [`127.0.0.1:${(server.address() as AddressInfo).port}`], healthCheck: { timeout: 60_000 } } } })
  await app.register(health)
  await app.ready()
  await until(t, 'the check connected', () => connected === 1)
  await sleep(20)
  const start = Date.now()
  await app.close()
  const took = Date.now() - start
  t.ok(took < 500, `closed in ${took} ms`)
  t.equal(app.upstreams.get('api').peers[0].checks.length, 0, 'the aborted check is not recorded')
  await until(t, 'the backend saw the socket of the check close', () => open === 0, 1000)
})

t.test('priority: with active checks passing, a passive failure still takes the peer out', async t => {
  const b = await backend(t)
  const { peer } = await gateway(t, {
    servers: [{ address: b.address, maxFails: 1, failTimeout: 60_000 }],
    healthCheck: { interval: 20, rise: 2, fall: 1 }
  })
  await until(t, 'healthy', () => peer.health === 'healthy')
  peer.recordFailure('connect ECONNRESET')
  t.equal(peer.passive, 'failed')
  t.notOk(peer.routable, 'a passive failure takes the peer out while active checks pass')
  const since = Date.now()
  await until(t, 'two more checks', () => peer.checks.filter(check => check.at >= since).length >= 2)
  t.equal(peer.health, 'healthy')
  t.ok(peer.checks.every(check => check.ok))
  t.notOk(peer.routable, 'passing checks do not bring it back before failTimeout')
  peer.clearPassive('test')
  t.ok(peer.routable)
})

t.test('priority: with the active check failing, the peer stays out until `rise` passes', async t => {
  const b = await backend(t, failing)
  const { app, peer } = await gateway(t, { servers: [b.address], healthCheck: { interval: 100, rise: 3, fall: 1 } })
  const changes = healthChanges(app)
  await until(t, 'unhealthy', () => peer.health === 'unhealthy')
  t.notOk(peer.routable)
  t.equal(peer.passive, 'ok', 'passive state allows it; the active check wins')
  b.handler = ok
  await until(t, 'one pass', () => peer.lastCheck?.ok === true)
  t.notOk(peer.routable, 'one pass of three')
  await until(t, 'rise passes', () => peer.health === 'healthy')
  t.ok(peer.routable)
  t.match(changes.at(-1), { from: 'unhealthy', to: 'healthy', rise: 3 })
  t.same(changes.at(-1)?.checks.slice(-4), ['bad status 500', 'OK', 'OK', 'OK'], 'routable again at the third pass, not before')
})

t.test('initialState "down": peers start unhealthy and take traffic after `rise` passes', async t => {
  const b = await backend(t)
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: [b.address], healthCheck: { interval: 100, rise: 2, initialState: 'down' } } } })
  await app.register(health)
  t.teardown(async () => await app.close())
  const peer = app.upstreams.get('api').peers[0]
  const changes = healthChanges(app)
  t.equal(peer.health, 'unhealthy', 'unhealthy from registration')
  t.notOk(peer.routable)
  await app.ready()
  await until(t, 'one pass', () => peer.rise === 1)
  t.notOk(peer.routable, 'one pass of two')
  await until(t, 'healthy', () => peer.health === 'healthy')
  t.ok(peer.routable)
  t.same(changes.map(c => [c.from, c.to, c.checks.length]), [['unhealthy', 'healthy', 2]])

  const unknown = await backend(t, failing)
  const second = await gateway(t, { servers: [unknown.address], healthCheck: { interval: 30, fall: 2 } })
  t.equal(second.peer.health, 'unknown')
  t.ok(second.peer.routable, 'initialState "unknown": routable until the first failures')
  await until(t, 'unhealthy', () => second.peer.health === 'unhealthy')
})

t.test('process states: no checks while down or stopping; checked at once when starting or up', async t => {
  const b = await backend(t)
  const { peer } = await gateway(t, { servers: [{ address: b.address, down: true }], healthCheck: { interval: 60_000, rise: 1 } })
  await sleep(50)
  t.equal(b.hits, 0, 'a peer whose process is down is not checked')
  t.equal(peer.health, 'unknown')

  const start = Date.now()
  peer.setProcess('starting')
  await until(t, 'checked at once', () => peer.health === 'healthy', 1000)
  t.ok(Date.now() - start < 500, `checked ${Date.now() - start} ms after starting (interval is 60 s)`)
  t.ok(peer.routable, 'starting and healthy: routable before supervisord says up')

  peer.setProcess('up')
  await until(t, 'checked again when up', () => b.hits === 2, 1000)

  peer.setProcess('stopping')
  peer.setProcess('down')
  t.equal(peer.health, 'unknown', 'health goes back to the initial state')
  t.same([peer.rise, peer.fall], [0, 0], 'counters reset')
  await sleep(50)
  t.equal(b.hits, 2)
})

t.test('a process that comes up during a check is checked again as soon as that check ends', async t => {
  const b = await backend(t, (_req, res) => { setTimeout(() => res.end('ok'), 80) })
  const { peer } = await gateway(t, { servers: [{ address: b.address, down: true }], healthCheck: { interval: 60_000, rise: 1 } })
  peer.setProcess('starting')
  await until(t, 'the first check reached the backend', () => b.hits === 1)
  peer.setProcess('up')
  await until(t, 'a second check', () => peer.checks.length === 2, 1000)
  t.equal(b.hits, 2, 'one after the other')
})

t.test('a peer whose process goes down mid-check: the check is dropped', async t => {
  const b = await backend(t, (_req, res) => { setTimeout(() => res.end('ok'), 200) })
  const { peer } = await gateway(t, { servers: [b.address], healthCheck: { interval: 60_000, initialState: 'down' } })
  await until(t, 'the check reached the backend', () => b.hits === 1)
  peer.setProcess('down')
  await sleep(250)
  t.equal(peer.checks.length, 0)
  t.equal(peer.health, 'unhealthy', 'back to initialState "down"')
})

t.test('upstreams without healthCheck are not checked; history is bounded', async t => {
  const checked = await backend(t)
  const unchecked = await backend(t)
  const app = Fastify({ logger: false })
  await app.register(registry, {
    upstreams: {
      checked: { servers: [checked.address], healthCheck: { interval: 5 } },
      plain: { servers: [unchecked.address] }
    }
  })
  await app.register(health, { history: 3 })
  t.teardown(async () => await app.close())
  await app.ready()
  const peer = app.upstreams.get('checked').peers[0]
  await until(t, 'six checks', () => checked.hits >= 6)
  t.equal(peer.checks.length, 3, 'history: 3')
  t.equal(peer.checks.at(-1), peer.lastCheck)
  t.equal(unchecked.hits, 0)
  t.equal(app.upstreams.get('plain').peers[0].lastCheck, null)
})

t.test('health transitions are logged with upstream, index and reason', async t => {
  const b = await backend(t, failing)
  const logs: Array<Record<string, unknown>> = []
  const { peer } = await gateway(t, { servers: [b.address], healthCheck: { interval: 10, fall: 1, jitter: 5 } }, undefined, logs)
  await until(t, 'unhealthy', () => peer.health === 'unhealthy')
  t.match(logs.find(line => line.to === 'unhealthy'), {
    level: 30, upstream: 'api', index: 0, peer: b.address, from: 'unknown', to: 'unhealthy', reason: 'bad status 500'
  })
})

t.test('a change listener that throws is logged and checks go on', async t => {
  const b = await backend(t)
  const logs: Array<Record<string, unknown>> = []
  const { app, peer } = await gateway(t, { servers: [b.address], healthCheck: { interval: 10, rise: 1, fall: 1 } }, undefined, logs)
  app.upstreams.on('change', change => { if (change.field === 'health') throw new Error('listener bug') })
  await until(t, 'healthy', () => peer.health === 'healthy')
  b.handler = failing
  await until(t, 'unhealthy', () => peer.health === 'unhealthy')
  t.ok(logs.some(line => line.level === 50 && (line.err as { message?: string })?.message === 'listener bug'))
})

t.test('bad options fail at registration, naming the upstream and the option', async t => {
  const cases: Array<[unknown, RegExp]> = [
    ['yes', /upstream "api": option "healthCheck" must be an object/],
    [{ intervall: 5 }, /upstream "api": unknown option "healthCheck.intervall"/],
    [{ interval: 0 }, /upstream "api": option "healthCheck.interval" must be a number from 1/],
    [{ interval: '5s' }, /option "healthCheck.interval"/],
    [{ jitter: -1 }, /option "healthCheck.jitter"/],
    [{ timeout: 0 }, /option "healthCheck.timeout"/],
    [{ rise: 0 }, /option "healthCheck.rise" must be an integer/],
    [{ fall: 1.5 }, /option "healthCheck.fall" must be an integer/],
    [{ type: 'udp' }, /option "healthCheck.type" must be one of "http", "tcp", got "udp"/],
    [{ type: 'tcp', path: '/health' }, /option "healthCheck.path" is only read by type "http"/],
    [{ method: 'GET /evil' }, /option "healthCheck.method" must be an HTTP method/],
    [{ method: '' }, /option "healthCheck.method" must be a non-empty string/],
    [{ path: 'health' }, /option "healthCheck.path" must start with "\/"/],
    [{ path: '/a b' }, /option "healthCheck.path"/],
    [{ path: '/a\r\nX-Evil: 1' }, /option "healthCheck.path"/],
    [{ headers: 'Host: x' }, /option "healthCheck.headers" must be an object/],
    [{ headers: { 'bad name': 'x' } }, /option "healthCheck.headers" has an invalid header name "bad name"/],
    [{ headers: { 'X-A': 'a\r\nX-B: b' } }, /option "healthCheck.headers" must map "X-A" to a string without CR/],
    [{ headers: { 'X-A': 1 } }, /option "healthCheck.headers" must map "X-A"/],
    [{ headers: { Connection: 'keep-alive' } }, /option "healthCheck.headers" may not set "Connection"/],
    [{ status: [] }, /option "healthCheck.status" must be a status/],
    [{ status: [200, '6xx'] }, /option "healthCheck.status"/],
    [{ status: [99] }, /option "healthCheck.status"/],
    [{ status: '2XX' }, /option "healthCheck.status"/],
    [{ body: '' }, /option "healthCheck.body" must be a non-empty string/],
    [{ body: 42 }, /option "healthCheck.body"/],
    [{ maxBody: -1 }, /option "healthCheck.maxBody"/],
    [{ maxBody: 1.5 }, /option "healthCheck.maxBody"/],
    [{ initialState: 'up' }, /option "healthCheck.initialState" must be one of "unknown", "down"/]
  ]
  for (const [healthCheck, message] of cases) {
    const app = Fastify({ logger: false })
    await app.register(registry, { upstreams: { api: { servers: ['127.0.0.1:1'], healthCheck: healthCheck as HealthCheckOptions } } })
    await t.rejects(async () => { await app.register(health) }, message, JSON.stringify(healthCheck))
    await app.close()
  }
  for (const [options, message] of [[{ history: 0 }, /health: option "history" must be an integer from 1/], [{ histroy: 3 }, /health: unknown option "histroy"/]] as const) {
    const app = Fastify({ logger: false })
    await app.register(registry, { upstreams: { api: { servers: ['127.0.0.1:1'] } } })
    await t.rejects(async () => { await app.register(health, options as HealthPluginOptions) }, message)
    await app.close()
  }
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: ['127.0.0.1:1'], healthCheck: { interval: 5 } } } })
  t.teardown(async () => await app.close())
  await t.rejects(async () => { await app.ready() }, /upstream "api": option "healthCheck"/,
    'without the health plugin, the section is reported as read by no plugin')
})
