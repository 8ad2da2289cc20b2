import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import registry from '../plugins/registry.js'
import type { Upstream, UpstreamOptions } from '../lib/upstream.js'
import health, { type HealthCheckOptions, type HealthPluginOptions } from '../plugins/health.js'
import type { Peer, PeerChange } from '../lib/peer.js'
import { backendFor, freePort, silentServer, tcpServer, type BackendHandler } from './helpers/backends.js'
import { loggerInto } from './helpers/gateway.js'
import { sleep, until } from './helpers/wait.js'

const ok: BackendHandler = (_req, res) => res.end('ok')
const failing: BackendHandler = (_req, res) => { res.writeHead(500).end('broken') }

/** The registry with one upstream `api` and the health checker, ready (checks running). */
async function checkedApp (t: Test, upstream: UpstreamOptions, options?: HealthPluginOptions, logs?: object[]): Promise<{ app: FastifyInstance, upstream: Upstream, peer: Peer }> {
  const app = Fastify({ logger: logs === undefined ? false : loggerInto(logs) })
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
  const b = await backendFor(t, ok)
  const { app, peer } = await checkedApp(t, { servers: [b.address], healthCheck: { interval: 20, rise: 3, fall: 2 } })
  const changes = healthChanges(app)
  t.ok(await until(() => peer.health === 'healthy'), 'healthy')
  t.ok(peer.routable)
  b.handler = failing
  t.ok(await until(() => peer.health === 'unhealthy'), 'unhealthy')
  t.notOk(peer.routable, 'an unhealthy peer takes no requests')
  t.equal(peer.lastCheck?.reason, 'bad status 500')
  b.handler = ok
  t.ok(await until(() => peer.health === 'healthy'), 'healthy again')
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
  const b = await backendFor(t, (_req, res) => res.end('{"status": "ready"}'))
  const other = await backendFor(t, (_req, res) => res.end('{"status": "ready"}'))
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
  t.ok(await until(() => text.health === 'healthy' && pattern.health === 'healthy'), 'both healthy')
  b.handler = (_req, res) => res.end('{"status": "starting"}')
  other.handler = (_req, res) => res.end('{"status":"draining"}')
  t.ok(await until(() => text.health === 'unhealthy' && pattern.health === 'unhealthy'), 'both unhealthy')
  t.equal(text.lastCheck?.reason, 'bad body')
  t.equal(pattern.lastCheck?.reason, 'bad body')
})

t.test('expected statuses: lists and classes; the request as configured', async t => {
  const seen: Array<Record<string, unknown>> = []
  const b = await backendFor(t, (req, res) => {
    seen.push({ method: req.method, url: req.url, ...req.headers })
    res.writeHead(503).end()
  })
  const { app, peer } = await checkedApp(t, {
    servers: [b.address],
    healthCheck: { interval: 20, rise: 1, fall: 1, status: [200, 503], method: 'HEAD', path: '/status', headers: { Host: 'api.internal', 'X-Check': '1' } }
  })
  const changes = healthChanges(app)
  t.ok(await until(() => peer.health === 'healthy'), 'healthy on 503')
  t.match(seen[0], { method: 'HEAD', url: '/status', host: 'api.internal', 'x-check': '1', connection: 'close' })
  let answered200 = 0
  b.handler = (_req, res) => { answered200++; res.writeHead(200).end() }
  // Checks run one after the other: the third 200 is asked for once the first two are recorded.
  t.ok(await until(() => answered200 >= 3), 'two checks answered 200')
  t.equal(peer.health, 'healthy', '200 is in the list too (fall 1: one failure would have shown)')
  t.same(changes.map(c => c.to), ['healthy'], 'and it never left healthy')
  b.handler = (_req, res) => { res.writeHead(204).end() }
  t.ok(await until(() => peer.health === 'unhealthy'), 'unhealthy on 204')
  t.equal(peer.lastCheck?.reason, 'bad status 204')

  const classes = await backendFor(t, (_req, res) => { res.writeHead(404).end() })
  const second = await checkedApp(t, { servers: [classes.address], healthCheck: { interval: 20, rise: 1, fall: 1, status: '4xx' } })
  t.ok(await until(() => second.peer.health === 'healthy'), 'healthy on 404 with 4xx')
  const third = await checkedApp(t, { servers: [classes.address], healthCheck: { interval: 20, rise: 1, fall: 1 } })
  t.ok(await until(() => third.peer.health === 'unhealthy'), 'unhealthy on 404 by default')
  t.equal(third.peer.lastCheck?.reason, 'bad status 404')
})

t.test('a check that gets no answer within `timeout` fails: timed out', async t => {
  const server = await silentServer(t)
  const { peer } = await checkedApp(t, { servers: [`127.0.0.1:${server.port}`], healthCheck: { interval: 10, timeout: 60, fall: 1 } })
  t.ok(await until(() => peer.health === 'unhealthy'), 'unhealthy')
  t.equal(peer.lastCheck?.reason, 'timed out')
  t.ok((peer.lastCheck?.latencyMs ?? 0) >= 55, `latency ${peer.lastCheck?.latencyMs} ms`)
})

t.test('tcp checks: a listener passes, a closed port is refused', async t => {
  const server = await tcpServer(t, () => {})
  const refused = await freePort()
  const { upstream } = await checkedApp(t, {
    servers: [`127.0.0.1:${server.port}`, `127.0.0.1:${refused}`],
    healthCheck: { type: 'tcp', interval: 20, rise: 1, fall: 1 }
  })
  const [listening, closed] = upstream.peers
  t.ok(await until(() => listening.health === 'healthy' && closed.health === 'unhealthy'), 'one healthy, one unhealthy')
  t.equal(listening.lastCheck?.reason, 'OK')
  t.equal(closed.lastCheck?.reason, 'connection refused')
  t.ok(server.connections >= 1, 'the tcp check connected')
})

t.test('checks of a peer never overlap, even when a check outlasts the interval', async t => {
  let active = 0
  let most = 0
  let connections = 0
  // Requests in progress at the backend: a server socket's close event may
  // come a loop turn after the next connection, its response's never does.
  const b = await backendFor(t, (_req, res) => {
    most = Math.max(most, ++active)
    setTimeout(() => res.end('slow'), 100)
    res.on('close', () => active--)
  })
  b.server.on('connection', () => connections++)
  const { peer } = await checkedApp(t, { servers: [b.address], healthCheck: { interval: 5, timeout: 1000 } })
  t.ok(await until(() => peer.checks.length >= 4), 'four checks')
  t.equal(most, 1, 'one check at a time at the backend')
  t.ok(connections >= peer.checks.length && connections <= peer.checks.length + 1, 'one connection per check')
  t.ok(peer.checks.every(check => check.ok && check.latencyMs >= 95))
})

t.test('close aborts a hanging check at once', async t => {
  const server = await silentServer(t)
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: [`127.0.0.1:${server.port}`], healthCheck: { timeout: 60_000 } } } })
  await app.register(health)
  await app.ready()
  t.ok(await until(() => server.connections === 1), 'the check connected')
  const start = Date.now()
  await app.close()
  const took = Date.now() - start
  t.ok(took < 500, `closed in ${took} ms`)
  t.equal(app.upstreams.get('api').peers[0].checks.length, 0, 'the aborted check is not recorded')
  t.ok(await until(() => server.open.size === 0, 1000), 'the backend saw the socket of the check close')
})

t.test('priority: with active checks passing, a passive failure still takes the peer out', async t => {
  const b = await backendFor(t, ok)
  const { peer } = await checkedApp(t, {
    // A backup beside it: a lone peer is never taken out passively (nginx).
    servers: [{ address: b.address, maxFails: 1, failTimeout: 60_000 }, { address: b.address, backup: true }],
    healthCheck: { interval: 20, rise: 2, fall: 1 }
  })
  t.ok(await until(() => peer.health === 'healthy'), 'healthy')
  peer.recordFailure('connect ECONNRESET')
  t.equal(peer.passive, 'failed')
  t.notOk(peer.routable, 'a passive failure takes the peer out while active checks pass')
  const since = Date.now()
  t.ok(await until(() => peer.checks.filter(check => check.at >= since).length >= 2), 'two more checks')
  t.equal(peer.health, 'healthy')
  t.ok(peer.checks.every(check => check.ok))
  t.notOk(peer.routable, 'passing checks do not bring it back before failTimeout')
  peer.clearPassive('test')
  t.ok(peer.routable)
})

t.test('priority: with the active check failing, the peer stays out until `rise` passes', async t => {
  const b = await backendFor(t, failing)
  const { app, peer } = await checkedApp(t, { servers: [b.address], healthCheck: { interval: 100, rise: 3, fall: 1 } })
  const changes = healthChanges(app)
  t.ok(await until(() => peer.health === 'unhealthy'), 'unhealthy')
  t.notOk(peer.routable)
  t.equal(peer.passive, 'ok', 'passive state allows it; the active check wins')
  b.handler = ok
  t.ok(await until(() => peer.lastCheck?.ok === true), 'one pass')
  t.notOk(peer.routable, 'one pass of three')
  t.ok(await until(() => peer.health === 'healthy'), 'rise passes')
  t.ok(peer.routable)
  t.match(changes.at(-1), { from: 'unhealthy', to: 'healthy', rise: 3 })
  t.same(changes.at(-1)?.checks.slice(-4), ['bad status 500', 'OK', 'OK', 'OK'], 'routable again at the third pass, not before')
})

t.test('initialState "down": peers start unhealthy and take traffic after `rise` passes', async t => {
  const b = await backendFor(t, ok)
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: [b.address], healthCheck: { interval: 100, rise: 2, initialState: 'down' } } } })
  await app.register(health)
  t.teardown(async () => await app.close())
  const peer = app.upstreams.get('api').peers[0]
  const changes = healthChanges(app)
  t.equal(peer.health, 'unhealthy', 'unhealthy from registration')
  t.notOk(peer.routable)
  await app.ready()
  t.ok(await until(() => peer.rise === 1), 'one pass')
  t.notOk(peer.routable, 'one pass of two')
  t.ok(await until(() => peer.health === 'healthy'), 'healthy')
  t.ok(peer.routable)
  t.same(changes.map(c => [c.from, c.to, c.checks.length]), [['unhealthy', 'healthy', 2]])

  const unknown = await backendFor(t, failing)
  const second = await checkedApp(t, { servers: [unknown.address], healthCheck: { interval: 30, fall: 2 } })
  t.equal(second.peer.health, 'unknown')
  t.ok(second.peer.routable, 'initialState "unknown": routable until the first failures')
  t.ok(await until(() => second.peer.health === 'unhealthy'), 'unhealthy')
})

t.test('process states: no checks while down or stopping; checked at once when starting or up', async t => {
  const b = await backendFor(t, ok)
  const other = await backendFor(t, ok, 1)
  // Peer 0 is the first of the first round: it would be checked at once if its process did not count.
  const { upstream, peer } = await checkedApp(t, { servers: [{ address: b.address, down: true }, other.address], healthCheck: { interval: 60_000, rise: 1 } })
  t.ok(await until(() => upstream.peers[1].lastCheck !== null, 1000), 'the peer that is up was checked')
  t.equal(b.hits, 0, 'a peer whose process is down is not checked')
  t.equal(peer.health, 'unknown')

  const start = Date.now()
  peer.setProcess('starting')
  t.ok(await until(() => peer.health === 'healthy', 1000), 'checked at once')
  t.ok(Date.now() - start < 500, `checked ${Date.now() - start} ms after starting (interval is 60 s)`)
  t.ok(peer.routable, 'starting and healthy: routable before supervisord says up')

  peer.setProcess('up')
  t.ok(await until(() => b.hits === 2, 1000), 'checked again when up')

  peer.setProcess('stopping')
  peer.setProcess('down')
  t.equal(peer.health, 'unknown', 'health goes back to the initial state')
  t.same([peer.rise, peer.fall], [0, 0], 'counters reset')
})

t.test('a process still starting that refuses its checks is not unhealthy: it is out anyway, and is judged once up (a start ends with it routable)', async t => {
  const port = await freePort()
  const { app, peer } = await checkedApp(t, { servers: [{ address: `127.0.0.1:${port}`, down: true }], healthCheck: { interval: 20, rise: 1, fall: 1 } })
  const changes = healthChanges(app)
  peer.setProcess('starting')
  t.ok(await until(() => peer.checks.length >= 3), 'checked while starting')
  t.match(peer.lastCheck, { ok: false, reason: 'connection refused' })
  t.equal(peer.health, 'unknown', 'not unhealthy for refusing while it starts')
  t.notOk(peer.routable, 'and not routable before it is up or a check passes')
  peer.setProcess('up')
  t.ok(peer.routable, 'its start over: routable at once (requests held for it go to it, not to another start)')
  t.ok(await until(() => peer.health === 'unhealthy'), 'once up, a refused check takes it out')
  t.match(changes, [{ from: 'unknown', to: 'unhealthy', reason: 'connection refused' }])

  // A process that passed a check while starting takes requests: a failure then counts.
  const b = await backendFor(t, ok)
  const passed = await checkedApp(t, { servers: [{ address: b.address, down: true }], healthCheck: { interval: 20, rise: 1, fall: 1 } })
  passed.peer.setProcess('starting')
  t.ok(await until(() => passed.peer.health === 'healthy'), 'healthy while starting')
  b.handler = failing
  t.ok(await until(() => passed.peer.health === 'unhealthy'), 'and unhealthy when its check fails, still starting')
  t.equal(passed.peer.process, 'starting')
})

t.test('process states: checks every interval stop while the process is stopping or down', async t => {
  const b = await backendFor(t, ok)
  const { peer } = await checkedApp(t, { servers: [b.address], healthCheck: { interval: 20, rise: 1 } })
  t.ok(await until(() => b.hits >= 2), 'checked every 20 ms while up')
  for (const state of ['stopping', 'down'] as const) {
    peer.setProcess(state)
    // A check already on its way when the state changed may still arrive.
    await sleep(20)
    const hits = b.hits
    await sleep(150)
    t.equal(b.hits, hits, `no check in seven intervals while ${state}`)
  }
  const before = b.hits
  peer.setProcess('up')
  t.ok(await until(() => b.hits > before), 'checked again once up')
})

t.test('a process that comes up during a check is checked again as soon as that check ends', async t => {
  const b = await backendFor(t, (_req, res) => { setTimeout(() => res.end('ok'), 80) })
  const { peer } = await checkedApp(t, { servers: [{ address: b.address, down: true }], healthCheck: { interval: 60_000, rise: 1 } })
  peer.setProcess('starting')
  t.ok(await until(() => b.hits === 1), 'the first check reached the backend')
  peer.setProcess('up')
  t.ok(await until(() => peer.checks.length === 2, 1000), 'a second check')
  t.equal(b.hits, 2, 'one after the other')
})

t.test('a peer whose process goes down mid-check: the check is dropped', async t => {
  let answered = false
  const b = await backendFor(t, (_req, res) => { setTimeout(() => { answered = true; res.end('ok') }, 200) })
  const { peer } = await checkedApp(t, { servers: [b.address], healthCheck: { interval: 60_000, initialState: 'down' } })
  t.ok(await until(() => b.hits === 1), 'the check reached the backend')
  peer.setProcess('down')
  // Past the moment the backend answers (or would have, had the check stayed).
  t.ok(await until(() => answered, 2000), 'the backend answered')
  await sleep(50)
  t.equal(peer.checks.length, 0, 'no result recorded')
  t.equal(peer.health, 'unhealthy', 'back to initialState "down"')
})

t.test('upstreams without healthCheck are not checked; history is bounded', async t => {
  const checked = await backendFor(t, ok)
  const unchecked = await backendFor(t, ok)
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
  t.ok(await until(() => checked.hits >= 6), 'six checks')
  t.equal(peer.checks.length, 3, 'history: 3')
  t.equal(peer.checks.at(-1), peer.lastCheck)
  t.equal(unchecked.hits, 0)
  t.equal(app.upstreams.get('plain').peers[0].lastCheck, null)
})

t.test('health transitions are logged with upstream, index and reason', async t => {
  const b = await backendFor(t, failing)
  const logs: Array<Record<string, unknown>> = []
  const { peer } = await checkedApp(t, { servers: [b.address], healthCheck: { interval: 10, fall: 1, jitter: 5 } }, undefined, logs)
  t.ok(await until(() => peer.health === 'unhealthy'), 'unhealthy')
  t.match(logs.find(line => line.to === 'unhealthy'), {
    level: 30, upstream: 'api', index: 0, peer: b.address, from: 'unknown', to: 'unhealthy', reason: 'bad status 500'
  })
})

t.test('a change listener that throws is logged and checks go on', async t => {
  const b = await backendFor(t, ok)
  const logs: Array<Record<string, unknown>> = []
  const { app, peer } = await checkedApp(t, { servers: [b.address], healthCheck: { interval: 10, rise: 1, fall: 1 } }, undefined, logs)
  app.upstreams.on('change', change => { if (change.field === 'health') throw new Error('listener bug') })
  t.ok(await until(() => peer.health === 'healthy'), 'healthy')
  b.handler = failing
  t.ok(await until(() => peer.health === 'unhealthy'), 'unhealthy')
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
