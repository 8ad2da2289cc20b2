import Fastify, { type FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import registry, { type RegistryOptions } from '../plugins/registry.js'
import supervisord, { type SupervisordBridgeOptions } from '../plugins/supervisord.js'
import supervisordCommands, { supervisordRoutes, type SupervisordRoutesOptions } from '../routes/supervisord-routes.js'
import proxy from '../plugins/proxy.js'
import { backendFor } from './helpers/backends.js'
import { getDirect, processes, serving, skip, supervisordFor } from './helpers/supervisord.js'
import { until } from './helpers/wait.js'
import { loggerInto } from './helpers/gateway.js'

const NONE: RegistryOptions['upstreams'] = {
  backend: { servers: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'], supervisord: 'none' },
  plain: { servers: ['127.0.0.1:4'] }
}

/** Registry, bridge and the guarded routes for `backend` (loopback only unless told). */
async function routesApp (t: Test, routes: Partial<SupervisordRoutesOptions> & { prefix?: string } = {}, upstreams = NONE,
  bridge: SupervisordBridgeOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(registry, { upstreams })
  await app.register(supervisord, { pollInterval: 0, antiFlap: 0, ...bridge })
  await app.register(supervisordRoutes, { upstream: 'backend', ...routes })
  return app
}

t.test('POST /_supervisord/start/:backend and /stop/:backend answer what was accepted', async t => {
  const app = await routesApp(t)
  const start = await app.inject({ method: 'POST', url: '/_supervisord/start/1' })
  t.equal(start.statusCode, 200)
  t.same(start.json(), { upstream: 'backend', command: 'start', backend: 1, program: 'backend1', accepted: true, state: 'up', ok: true })
  t.same(processes(app), ['down', 'up', 'down'])
  const stop = await app.inject({ method: 'POST', url: '/_supervisord/stop/1?wait=1' })
  t.equal(stop.statusCode, 200)
  t.match(stop.json(), { upstream: 'backend', command: 'stop', backend: 1, accepted: true, state: 'down' })
  const any = await app.inject({ method: 'POST', url: '/_supervisord/start/any' })
  t.match(any.json(), { backend: 0, accepted: true, state: 'up' })
  const refused = await app.inject({ method: 'POST', url: '/_supervisord/stop/any' })
  t.equal(refused.statusCode, 409, 'a refused "any" is a conflict')
  t.match(refused.json(), { backend: 'any', accepted: false, state: null, reason: /last one/ })
})

t.test('backend must be an index in range or "any"', async t => {
  const app = await routesApp(t)
  for (const bad of ['abc', '-1', '1.5', '0x1', 'ANY']) {
    const res = await app.inject({ method: 'POST', url: `/_supervisord/start/${bad}` })
    t.equal(res.statusCode, 400, bad)
    t.match(res.json(), { code: 'FST_SUPERVISORD_BAD_QUERY', message: /backend must be a peer index \(0\.\.2\) or "any"/ })
  }
  const out = await app.inject({ method: 'POST', url: '/_supervisord/stop/99' })
  t.equal(out.statusCode, 404)
  t.match(out.json(), { code: 'FST_SUPERVISORD_BACKEND_OUT_OF_RANGE', message: 'Upstream "backend" has no backend 99 (valid: 0..2 or any)' })
  const wait = await app.inject({ method: 'POST', url: '/_supervisord/start/0?wait=soon' })
  t.equal(wait.statusCode, 400)
  t.match(wait.json(), { message: /query "wait" must be 1 or 0/ })
  t.same(processes(app), ['down', 'down', 'down'], 'nothing was done')
})

t.test('the guard: loopback only by default', async t => {
  const app = await routesApp(t)
  t.equal((await app.inject({ method: 'POST', url: '/_supervisord/start/0', remoteAddress: '127.0.0.1' })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: '/_supervisord/start/1', remoteAddress: '::1' })).statusCode, 200)
  const outside = await app.inject({ method: 'POST', url: '/_supervisord/start/2', remoteAddress: '192.0.2.7' })
  t.equal(outside.statusCode, 403)
  t.match(outside.json(), { code: 'FST_SUPERVISORD_FORBIDDEN', message: 'address 192.0.2.7 is not allowed to command supervisord' })
  t.same(processes(app), ['up', 'up', 'down'])
})

t.test('the guard: an allow list of v4 and v6 addresses and CIDRs', async t => {
  const app = await routesApp(t, { allow: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.1'] })
  const from = async (remoteAddress: string): Promise<number> =>
    (await app.inject({ method: 'POST', url: '/_supervisord/start/0', remoteAddress })).statusCode
  t.equal(await from('10.20.30.40'), 200)
  t.equal(await from('2001:db8::5'), 200)
  t.equal(await from('192.0.2.1'), 200)
  t.equal(await from('::ffff:10.1.1.1'), 200, 'an IPv4-mapped address matches its IPv4 rule')
  t.equal(await from('127.0.0.1'), 403, 'loopback is not in this list')
  t.equal(await from('192.0.2.2'), 403)
  t.equal(await from('2001:db9::1'), 403)
})

t.test('the guard: a bearer token, and both when both are set', async t => {
  const tokenOnly = await routesApp(t, { token: 's3cret-token' })
  const call = async (app: FastifyInstance, headers: Record<string, string>, remoteAddress = '203.0.113.9') =>
    await app.inject({ method: 'POST', url: '/_supervisord/start/0', headers, remoteAddress })
  const missing = await call(tokenOnly, {})
  t.equal(missing.statusCode, 403)
  t.match(missing.json(), { message: 'a valid bearer token is required to command supervisord' })
  t.equal((await call(tokenOnly, { authorization: 'Bearer wrong' })).statusCode, 403)
  t.equal((await call(tokenOnly, { authorization: 'Bearer s3cret-token-and-more' })).statusCode, 403)
  t.equal((await call(tokenOnly, { authorization: 'Basic s3cret-token' })).statusCode, 403)
  t.equal((await call(tokenOnly, { authorization: 'Bearer s3cret-token' })).statusCode, 200, 'from any address with the token')
  const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
  t.equal((await call(tokenOnly, { authorization: basic('anyone', 's3cret-token') })).statusCode, 200, 'or with the token as the password of HTTP Basic (what a browser sends)')
  t.equal((await call(tokenOnly, { authorization: basic('s3cret-token', 'wrong') })).statusCode, 403, 'the user name is not the token')
  t.equal((await call(tokenOnly, { authorization: `Basic ${Buffer.from('s3cret-token').toString('base64')}` })).statusCode, 403, 'no colon: no password')

  const both = await routesApp(t, { token: 's3cret-token', allow: ['127.0.0.1'] })
  t.equal((await call(both, { authorization: 'Bearer s3cret-token' })).statusCode, 403, 'right token, wrong address')
  t.equal((await call(both, {}, '127.0.0.1')).statusCode, 403, 'right address, no token')
  t.equal((await call(both, { authorization: 'bearer s3cret-token' }, '127.0.0.1')).statusCode, 200)
})

t.test('POST only by default, GET on request; the prefix can be changed', async t => {
  const postOnly = await routesApp(t)
  const get = await postOnly.inject({ method: 'GET', url: '/_supervisord/start/0' })
  t.equal(get.statusCode, 405)
  t.equal(get.headers.allow, 'POST')
  const both = await routesApp(t, { methods: ['GET', 'POST'], prefix: '/ops' })
  t.equal((await both.inject({ method: 'GET', url: '/ops/start/0' })).statusCode, 200)
  t.equal((await both.inject({ method: 'POST', url: '/ops/stop/0' })).statusCode, 200)
  t.equal((await both.inject({ method: 'GET', url: '/_supervisord/start/0' })).statusCode, 404)
  t.equal((await both.inject({ method: 'PUT', url: '/ops/start/0' })).headers.allow, 'GET, POST')
  t.same(processes(both), ['down', 'down', 'down'])
})

t.test('nothing under the guarded prefix reaches a backend, even with a proxy at "/": 405, 400, 404, 403', async t => {
  const backend = await backendFor(t)
  const app = await routesApp(t, {}, {
    backend: { servers: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'], supervisord: 'none' },
    site: { servers: [backend.address] }
  })
  await app.register(proxy, { upstream: 'site' })
  const status = async (method: string, url: string, remoteAddress = '127.0.0.1'): Promise<number> =>
    (await app.inject({ method: method as 'GET', url, remoteAddress })).statusCode
  t.equal(await status('GET', '/elsewhere'), 200, 'the proxy serves the rest of the site')
  t.equal(backend.hits, 1)
  const long = 'a'.repeat(101)
  const cases: Array<[string, string, number]> = [
    ['GET', '/_supervisord/start/0', 405],
    ['HEAD', '/_supervisord/stop/0', 405],
    ['DELETE', '/_supervisord/stop/any', 405],
    ['GET', `/_supervisord/start/${long}`, 405],
    ['POST', `/_supervisord/start/${long}`, 400],
    ['POST', `/_supervisord/stop/${long}?wait=1`, 400],
    ['POST', '/_supervisord/start/abc', 400],
    ['POST', '/_supervisord/release/any', 400],
    ['POST', '/_supervisord/start/7', 404],
    ['GET', '/_supervisord', 200],
    ['GET', '/_supervisord/', 200],
    ['POST', '/_supervisord/', 405],
    ['POST', '/_supervisord/drain/any', 400],
    ['POST', '/_supervisord/maint/9', 404],
    ['POST', '/_supervisord/weight/0?value=0', 400],
    ['GET', '/_supervisord/ready/0', 405],
    ['POST', '/_supervisord/restart/0', 404],
    ['POST', '/_supervisord/start/0/more', 404],
    ['GET', `/_supervisord/${long}/${long}`, 404]
  ]
  for (const [method, url, expected] of cases) {
    t.equal(await status(method, url), expected, `${method} ${url.slice(0, 40)} from loopback`)
    t.equal(await status(method, url, '192.0.2.7'), 403, `${method} ${url.slice(0, 40)} from outside`)
  }
  t.equal(backend.hits, 1, 'no request under the prefix was proxied')
  t.same(processes(app), ['down', 'down', 'down'])
})

t.test('the guard covers only its own routes', async t => {
  const app = await routesApp(t, { allow: ['10.0.0.0/8'] })
  app.get('/public', async () => 'ok')
  t.equal((await app.inject({ url: '/public', remoteAddress: '127.0.0.1' })).statusCode, 200)
})

t.test('route options are checked at registration, naming the option', async t => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ upstream: 'nope' }, /unknown upstream "nope"/],
    [{ upstream: 'plain' }, /upstream "plain" has no "supervisord" option/],
    [{}, /option "upstream" must name an upstream of the registry, got undefined/],
    [{ upstream: 'backend', allow: ['10.0.0.0/33'] }, /option "allow" entries must be IPv4 or IPv6 addresses or CIDRs.*"10\.0\.0\.0\/33"/],
    [{ upstream: 'backend', allow: ['localhost'] }, /option "allow" entries/],
    [{ upstream: 'backend', allow: ['::1/129'] }, /option "allow" entries/],
    [{ upstream: 'backend', allow: [] }, /option "allow" must be a non-empty list/],
    [{ upstream: 'backend', token: '' }, /option "token" must be a non-empty string/],
    [{ upstream: 'backend', methods: ['PUT'] }, /option "methods" must be a non-empty list of "GET" and "POST"/],
    [{ upstream: 'backend', allowed: ['::1'] }, /unknown option "allowed"/]
  ]
  for (const [options, message] of cases) {
    const app = Fastify({ logger: false })
    await app.register(registry, { upstreams: NONE })
    await app.register(supervisord)
    await t.rejects(async () => { await app.register(supervisordRoutes, options as never) }, message)
    await app.close()
  }
  const bare = Fastify({ logger: false })
  await bare.register(registry, { upstreams: NONE })
  await t.rejects(async () => { await bare.register(supervisordRoutes, { upstream: 'backend' }) }, /fastify-supervisord-bridge/)
  await bare.close()
})

t.test('supervisordStart / supervisordStop decorators: handlers for routes of your own', async t => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(registry, { upstreams: NONE })
  await app.register(supervisord)
  await app.register(supervisordCommands)
  app.put('/up/:backend', app.supervisordStart('backend'))
  app.put('/down/:backend', app.supervisordStop('backend'))
  t.throws(() => app.supervisordStart('nope'), /unknown upstream "nope"/, 'an unknown upstream fails when the route is made')
  t.throws(() => app.supervisordStop('plain'), /upstream "plain" has no "supervisord" option/)
  t.match((await app.inject({ method: 'PUT', url: '/up/2' })).json(), { command: 'start', backend: 2, state: 'up' })
  t.match((await app.inject({ method: 'PUT', url: '/down/2' })).json(), { command: 'stop', backend: 2, state: 'down' })
})

// Each subtest has its own supervisord: they run side by side.
t.test('?wait=1 with a real supervisord', { skip, jobs: 3 }, async t => {
  t.test('200 once the backend runs, 502 with the fault when the start fails', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2 }], broken: ['broken0'] })
    const app = await routesApp(t, {}, {
      backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option },
      broken: { servers: ['127.0.0.1:1'], supervisord: sv.option }
    })
    await app.register(supervisordRoutes, { upstream: 'broken', prefix: '/broken' })
    const ok = await app.inject({ method: 'POST', url: '/_supervisord/start/0?wait=1' })
    t.equal(ok.statusCode, 200)
    t.match(ok.json(), { backend: 0, accepted: true, state: 'up', ok: true })
    t.same(await serving(sv.programs[0].address), { status: 200, body: '{"backend":0}' })

    const accepted = await app.inject({ method: 'POST', url: '/_supervisord/start/1' })
    t.match(accepted.json(), { backend: 1, accepted: true, state: 'starting' }, 'without wait: answered once accepted')
    t.ok(await until(() => processes(app)[1] === 'up', 15_000))

    const failed = await app.inject({ method: 'POST', url: '/broken/start/0?wait=1' })
    t.equal(failed.statusCode, 502)
    t.match(failed.json(), { code: 'FST_SUPERVISORD_COMMAND_FAILED', message: /could not start program "broken0": SPAWN_ERROR/ })
  })

  t.test('supervisord killed: 503 with the reason, while running backends keep serving', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2 }] })
    const app = await routesApp(t, {}, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    t.equal((await app.inject({ method: 'POST', url: '/_supervisord/start/0?wait=1' })).statusCode, 200)
    t.same(await serving(sv.programs[0].address), { status: 200, body: '{"backend":0}' })
    process.kill(sv.pid, 'SIGKILL')
    t.ok(await until(async () => 'error' in await getDirect(`127.0.0.1:${sv.port}`), 3000), 'supervisord is gone')
    const res = await app.inject({ method: 'POST', url: '/_supervisord/start/1?wait=1' })
    t.equal(res.statusCode, 503)
    t.match(res.json(), { code: 'FST_SUPERVISORD_UNAVAILABLE', message: /could not start program "backend1": unreachable \(ECONNREFUSED\)/ })
    t.same(await getDirect(sv.programs[0].address), { status: 200, body: '{"backend":0}' }, 'backend 0 still answers')
    t.same(processes(app), ['up', 'down'])
  })

  t.test('anti-flap: a second "any" too soon is 409 with Retry-After', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2 }] })
    const app = await routesApp(t, {}, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } }, { antiFlap: 30_000 })
    t.match((await app.inject({ method: 'POST', url: '/_supervisord/start/any?wait=1' })).json(), { backend: 0, ok: true })
    const again = await app.inject({ method: 'POST', url: '/_supervisord/start/any' })
    t.equal(again.statusCode, 409)
    const retryAfter = Number(again.headers['retry-after'])
    t.ok(retryAfter >= 20 && retryAfter <= 29, `Retry-After ${retryAfter} s: the rest of the 30 s window, rounded up`)
    t.match(again.json(), { accepted: false, reason: /anti-flap/ })
    t.notOk('retryAfter' in again.json(), 'said in the header, not in the body')
  })
})

t.test('drain, maint, ready and weight: the registry\'s one door, answered in the shape of start/stop', async t => {
  const app = await routesApp(t, {}, { backend: { servers: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'], supervisord: 'none', inheritBackendStatus: true } })
  const changes: unknown[] = []
  app.upstreams.on('change', change => changes.push(change))
  const post = async (url: string) => await app.inject({ method: 'POST', url })
  const drain = await post('/_supervisord/drain/1')
  t.equal(drain.statusCode, 200)
  t.same(drain.json(), { upstream: 'backend', command: 'drain', backend: 1, program: 'backend1', accepted: true, state: 'up', admin: 'drain', weight: 1, pin: 'none' })
  t.match(changes, [{ upstream: 'backend', index: 1, field: 'admin', from: 'ready', to: 'drain', reason: 'operator 127.0.0.1' }], 'announced, with who asked')
  t.match((await post('/_supervisord/maint/1')).json(), { command: 'maint', backend: 1, admin: 'maint' })
  t.match((await post('/_supervisord/ready/1')).json(), { command: 'ready', backend: 1, admin: 'ready' })
  t.match((await post('/_supervisord/weight/2?value=5')).json(), { command: 'weight', backend: 2, weight: 5, admin: 'ready' })
  t.equal(app.upstreams.get('backend').peers[2].weight, 5)
  t.same(app.upstreams.get('backend').peers.map(p => p.admin), ['ready', 'ready', 'ready'])

  for (const value of ['', '0', '1001', 'abc', '1.5', '-1', '00001']) {
    const res = await post(`/_supervisord/weight/0?value=${value}`)
    t.equal(res.statusCode, 400, `weight ${JSON.stringify(value)}`)
    t.match(res.json(), { code: 'FST_SUPERVISORD_BAD_QUERY', message: /query "value" must be a weight, an integer from 1 to 1000/ })
  }
  t.match((await post('/_supervisord/weight/0')).json(), { message: /got undefined/ }, 'no value at all')
  for (const command of ['drain', 'maint', 'ready', 'weight']) {
    t.match((await post(`/_supervisord/${command}/any`)).json(), { statusCode: 400, message: 'backend must be a peer index (0..2), got "any"' }, `${command} takes an index, not any`)
    t.match((await post(`/_supervisord/${command}/3?value=2`)).json(), { statusCode: 404, code: 'FST_SUPERVISORD_BACKEND_OUT_OF_RANGE' })
  }
  t.equal(app.upstreams.get('backend').peers[0].weight, 1, 'nothing changed by the refused ones')
})

t.test('GET <prefix>/ lists the upstream\'s peers as the status page shows them', async t => {
  const app = await routesApp(t, { prefix: '/ops' })
  await app.inject({ method: 'POST', url: '/ops/start/0' })
  for (const url of ['/ops', '/ops/']) {
    const res = await app.inject({ url })
    t.equal(res.statusCode, 200, url)
    t.equal(res.headers['cache-control'], 'no-store')
    const body = res.json()
    t.equal(body.upstream, 'backend')
    t.match(body.peers, [
      { index: 0, address: '127.0.0.1:1', program: 'backend0', state: 'serving', process: 'up', pin: 'up', lastCommand: { command: 'start', ok: true, fault: null } },
      { index: 1, state: 'stopped', process: 'down', lastCommand: null },
      { index: 2, state: 'stopped' }
    ])
  }
  t.equal((await app.inject({ method: 'HEAD', url: '/ops/' })).statusCode, 200)
  const post = await app.inject({ method: 'POST', url: '/ops/' })
  t.equal(post.statusCode, 405)
  t.equal(post.headers.allow, 'GET, HEAD')
  t.equal((await app.inject({ url: '/ops/', remoteAddress: '192.0.2.7' })).statusCode, 403, 'behind the guard')
})

t.test('a form post from a browser is answered 303 back to its page; never to another site', async t => {
  const app = await routesApp(t, {}, { backend: { servers: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'], supervisord: 'none', inheritBackendStatus: true } })
  const form = async (url: string, body: string, headers: Record<string, string> = {}) => await app.inject({
    method: 'POST', url, payload: body, headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'text/html,application/xhtml+xml,*/*;q=0.8', host: 'gw.example', ...headers }
  })
  const drained = await form('/_supervisord/drain/0', 'back=%2Fhealth%3Fstatus%3Ddown')
  t.equal(drained.statusCode, 303)
  t.equal(drained.headers.location, '/health?status=down')
  t.equal(app.upstreams.get('backend').peers[0].admin, 'drain', 'and the command was carried out')
  const weighed = await form('/_supervisord/weight/1', 'value=9&back=%2Fhealth')
  t.equal(weighed.headers.location, '/health')
  t.equal(app.upstreams.get('backend').peers[1].weight, 9, 'the value from the form\'s body')
  const cases: Array<[string, Record<string, string>, string]> = [
    ['back=%2F%2Fevil.example%2F', {}, '/'],
    ['back=https%3A%2F%2Fevil.example%2F', {}, '/'],
    ['back=%2F%5Cevil.example', {}, '/'],
    ['', { referer: 'http://gw.example/status?status=up' }, '/status?status=up'],
    ['', { referer: 'http://evil.example/health' }, '/'],
    ['back=javascript%3Aalert(1)', { referer: 'not a url' }, '/']
  ]
  for (const [body, headers, location] of cases) {
    const res = await form('/_supervisord/ready/0', body, headers)
    t.equal(res.headers.location, location, `${body || '(no back)'} ${JSON.stringify(headers)}`)
  }
  const machine = await app.inject({ method: 'POST', url: '/_supervisord/ready/0', payload: 'back=%2Fhealth', headers: { 'content-type': 'application/x-www-form-urlencoded' } })
  t.equal(machine.statusCode, 200, 'a client that does not ask for HTML gets the JSON answer')
  const bad = await form('/_supervisord/weight/0', 'value=nope&back=%2Fhealth')
  t.equal(bad.statusCode, 400, 'a refused form post is answered as any refused command')
})

t.test('every operator command is logged at info with who sent it', async t => {
  const lines: Array<Record<string, unknown>> = []
  const app = Fastify({ logger: loggerInto(lines) })
  t.teardown(() => app.close())
  await app.register(registry, { upstreams: NONE })
  await app.register(supervisord, { pollInterval: 0, antiFlap: 0 })
  await app.register(supervisordRoutes, { upstream: 'backend', allow: ['127.0.0.0/8', '10.0.0.0/8'] })
  await app.inject({ method: 'POST', url: '/_supervisord/start/2', remoteAddress: '10.1.2.3' })
  await app.inject({ method: 'POST', url: '/_supervisord/drain/1', remoteAddress: '127.0.0.5' })
  await app.inject({ method: 'POST', url: '/_supervisord/stop/any', remoteAddress: '10.1.2.3' })
  await app.inject({ method: 'POST', url: '/_supervisord/release/2', remoteAddress: '10.1.2.3' })
  const operator = lines.filter(line => String(line.msg).startsWith('operator:'))
  t.match(operator, [
    { level: 30, msg: 'operator: start 2 of upstream "backend" by 10.1.2.3', upstream: 'backend', command: 'start', backend: 2, who: '10.1.2.3', accepted: true, state: 'up' },
    { level: 30, msg: 'operator: drain 1 of upstream "backend" by 127.0.0.5', command: 'drain', backend: 1, who: '127.0.0.5', admin: 'drain' },
    { level: 30, msg: 'operator: stop any of upstream "backend" by 10.1.2.3', command: 'stop', backend: 'any', accepted: false },
    { level: 30, msg: 'operator: release 2 of upstream "backend" by 10.1.2.3', command: 'release', backend: 2, pin: 'none' }
  ])
  t.equal(operator.length, 4, 'one line each')
})

t.test('mounted at the root as nginx did: no admin route, no listing', async t => {
  const app = await routesApp(t, { prefix: '', startPath: '/_start', stopPath: '/_stop' })
  t.equal((await app.inject({ method: 'POST', url: '/_start/0' })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: '/drain/0' })).statusCode, 404)
  t.equal((await app.inject({ url: '/' })).statusCode, 404)
  t.equal(app.upstreams.operatorRoutes('backend')?.paths.drain, undefined, 'the status page is told there is no drain route')
  t.equal(app.upstreams.operatorRoutes('backend')?.paths.start, '/_start')
})
