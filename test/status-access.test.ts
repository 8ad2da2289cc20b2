import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import registry, { type RegistryOptions } from '../plugins/registry.js'
import supervisord from '../plugins/supervisord.js'
import statusPage, { type StatusPageOptions } from '../routes/status-page.js'
import { supervisordRoutes, type SupervisordRoutesOptions } from '../routes/supervisord-routes.js'
import type { StatusSnapshot } from '../lib/status/types.js'

const OUTSIDE = '192.0.2.7'
const HTML = 'text/html'
const basic = (password: string): string => `Basic ${Buffer.from(`operator:${password}`).toString('base64')}`

async function pageApp (t: Test, upstreams: RegistryOptions['upstreams'], page: StatusPageOptions = {}, routes?: Partial<SupervisordRoutesOptions>): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(async () => await app.close())
  await app.register(registry, { upstreams })
  await app.register(supervisord, { pollInterval: 0 })
  await app.register(statusPage, { refresh: 0, ...page })
  if (routes !== undefined) await app.register(supervisordRoutes, { upstream: Object.keys(upstreams)[0], ...routes })
  await app.ready()
  return app
}

const NONE_UP: RegistryOptions['upstreams'] = { backend: { servers: ['127.0.0.1:8000', '127.0.0.1:8001'], supervisord: 'none', inheritBackendStatus: true } as never }

t.test('readiness: 200 while every upstream can take a request, 503 when one cannot, to anyone', async t => {
  const app = await pageApp(t, {
    backend: { servers: ['127.0.0.1:8000', '127.0.0.1:8001'], supervisord: 'none', inheritBackendStatus: true },
    other: { servers: ['127.0.0.1:8002'] }
  } as never)
  const [b0, b1] = app.upstreams.get('backend').peers
  const other = app.upstreams.get('other')
  const probe = async () => {
    const res = await app.inject({ url: '/health?ready', remoteAddress: OUTSIDE })
    return { status: res.statusCode, body: res.json() }
  }
  t.same(await probe(), { status: 200, body: { ready: true, upstreams: [{ name: 'backend', ready: true, outlook: 'routable' }, { name: 'other', ready: true, outlook: 'routable' }] } },
    'every upstream routable: 200, answered outside the guard')
  b0.setHealth('unhealthy')
  t.equal((await probe()).status, 200, 'one peer out, another serves')
  b1.recordFailure('ECONNREFUSED', Date.now(), 'connect')
  t.match(await probe(), { status: 503, body: { ready: false, upstreams: [{ name: 'backend', ready: false, outlook: 'recovering' }, { ready: true }] } },
    'every peer runs but is out: 503')
  b0.setHealth('healthy')
  b1.setProcess('down')
  b0.setProcess('down')
  t.match(await probe(), { status: 503, body: { upstreams: [{ ready: false, outlook: 'startable' }] } }, 'none mode never starts one: startable is not ready')

  other.startOnDemand()
  other.peers[0].setProcess('down')
  t.match(await probe(), { body: { upstreams: [{ ready: false }, { name: 'other', ready: true, outlook: 'startable' }] } }, 'an upstream that starts peers on demand is ready with a peer to start')
  other.peers[0].setProcess('starting')
  t.match(await probe(), { body: { upstreams: [{}, { ready: true, outlook: 'starting' }] } }, 'and while one starts')
  other.peers[0].setProcess('down')
  other.peers[0].setBackoff({ step: 1, until: Date.now() + 60_000, reason: 'x', cause: 'program' })
  t.match(await probe(), { body: { upstreams: [{}, { ready: false, outlook: 'backoff' }] } }, 'not when every startable peer is in back-off')
  other.peers[0].setBackoff(null)
  other.peers[0].setAdmin('maint')
  t.match(await probe(), { body: { upstreams: [{}, { ready: false, outlook: 'none' }] } }, 'nor when none can be started (maint)')

  b0.setProcess('up')
  other.peers[0].setAdmin('ready')
  t.equal((await probe()).status, 200, 'back')
  t.equal((await app.inject({ method: 'HEAD', url: '/health?ready' })).statusCode, 200, 'HEAD answers too')
  t.equal((await app.inject({ url: '/health?ready' })).headers['cache-control'], 'no-store')
})

t.test('readiness at a path of its own, or off', async t => {
  const own = await pageApp(t, NONE_UP, { readiness: '/ready' })
  t.same((await own.inject('/ready')).json(), { ready: true, upstreams: [{ name: 'backend', ready: true, outlook: 'routable' }] })
  t.equal((await own.inject('/health?ready')).statusCode, 200, 'and at ?ready')
  own.upstreams.setAdmin('backend', 0, 'drain')
  own.upstreams.setAdmin('backend', 1, 'drain')
  t.equal((await own.inject('/ready')).statusCode, 503, 'all drained: 503')
  const off = await pageApp(t, NONE_UP, { readiness: false })
  off.upstreams.setAdmin('backend', 0, 'drain')
  off.upstreams.setAdmin('backend', 1, 'drain')
  const page = await off.inject('/health?ready')
  t.equal(page.statusCode, 200, 'off: ?ready is the page as ever')
  t.ok('gateway' in page.json())
})

t.test('the guard: addresses, programs, pids and supervisord\'s address only to those who pass it', async t => {
  const upstreams = { backend: { servers: ['127.0.0.1:8000', '127.0.0.1:8001'], supervisord: 'none', inheritBackendStatus: true, supervisordName: 'web' } } as never
  const app = await pageApp(t, upstreams)
  app.upstreams.get('backend').peers[0].setPid(4242)
  const inside = (await app.inject('/health?format=json')).json() as StatusSnapshot
  t.match(inside.upstreams[0], { supervisord: 'none', peers: [{ address: '127.0.0.1:8000', program: 'web0', pid: 4242 }, { address: '127.0.0.1:8001', program: 'web1' }] }, 'loopback (the default guard): everything')
  const outside = (await app.inject({ url: '/health?format=json', remoteAddress: OUTSIDE })).json() as StatusSnapshot
  t.match(outside.upstreams[0], { supervisord: null, peers: [{ address: null, program: null, pid: null, state: 'serving' }, { address: null, program: null, pid: null }] },
    'outside: the states, not where the peers are')
  const html = (await app.inject({ url: '/health', remoteAddress: OUTSIDE, headers: { accept: HTML } })).body
  t.notMatch(html, /127\.0\.0\.1|web0|4242|supervisord none/, 'nor in the HTML')
  t.match(html, /<span class="muted">peer 0<\/span>/)
  const csv = (await app.inject({ url: '/health?format=csv', remoteAddress: OUTSIDE })).body
  t.notMatch(csv, /127\.0\.0\.1|web0|4242/, 'nor in the CSV')
  t.match(csv.split('\r\n')[1], /^backend,0,,,,up,/)

  const forbidden = await pageApp(t, upstreams, { others: 'forbidden' })
  const refused = await forbidden.inject({ url: '/health', remoteAddress: OUTSIDE })
  t.equal(refused.statusCode, 403)
  t.match(refused.json(), { code: 'FST_SUPERVISORD_FORBIDDEN', message: `address ${OUTSIDE} is not allowed to see the status page` })
  t.equal((await forbidden.inject({ url: '/health?ready', remoteAddress: OUTSIDE })).statusCode, 200, 'the probe is still answered')
  const everyone = await pageApp(t, upstreams, { others: 'full' })
  t.match((await everyone.inject({ url: '/health?format=json', remoteAddress: OUTSIDE })).json(), { upstreams: [{ peers: [{ address: '127.0.0.1:8000' }] }] }, 'others: full shows all')
  const listed = await pageApp(t, upstreams, { allow: ['192.0.2.0/24'] })
  t.match((await listed.inject({ url: '/health?format=json', remoteAddress: OUTSIDE })).json(), { upstreams: [{ peers: [{ address: '127.0.0.1:8000' }] }] }, 'an allow list')
  t.match((await listed.inject({ url: '/health?format=json' })).json(), { upstreams: [{ peers: [{ address: null }] }] }, 'loopback is not in it')
})

t.test('the token: a bearer or HTTP Basic; ?login asks a browser for it', async t => {
  const app = await pageApp(t, NONE_UP, { token: 'page-token' })
  const view = async (headers: Record<string, string>) => ((await app.inject({ url: '/health?format=json', remoteAddress: OUTSIDE, headers })).json() as StatusSnapshot).upstreams[0].peers[0].address
  t.equal(await view({}), null, 'without it: redacted, from anywhere')
  t.equal(await view({ authorization: 'Bearer page-token' }), '127.0.0.1:8000', 'a bearer token')
  t.equal(await view({ authorization: basic('page-token') }), '127.0.0.1:8000', 'the token as the password of HTTP Basic')
  t.equal(await view({ authorization: basic('wrong') }), null)

  const login = await app.inject({ url: '/health?login', remoteAddress: OUTSIDE })
  t.equal(login.statusCode, 401, '?login without the token: 401')
  t.equal(login.headers['www-authenticate'], 'Basic realm="fastify-supervisord", charset="UTF-8"', 'a challenge a browser answers with a prompt')
  t.match(login.body, /the token as the password/)
  const signedIn = await app.inject({ url: '/health?login', remoteAddress: OUTSIDE, headers: { authorization: basic('page-token') } })
  t.equal(signedIn.statusCode, 303, 'with it: back to the page')
  t.equal(signedIn.headers.location, '/health')
  const page = (await app.inject({ url: '/health', remoteAddress: OUTSIDE, headers: { accept: HTML } })).body
  t.match(page, /<a class="signin" href="\/health\?login">sign in<\/a>/, 'the page offers to sign in')
  t.notMatch((await app.inject({ url: '/health', remoteAddress: OUTSIDE, headers: { accept: HTML, authorization: basic('page-token') } })).body, /class="signin"/, 'not once signed in')
  t.notMatch((await (await pageApp(t, NONE_UP)).inject({ url: '/health', headers: { accept: HTML } })).body, /class="signin"/, 'nor when no token would show more')
  t.equal((await (await pageApp(t, NONE_UP)).inject({ url: '/health?login' })).statusCode, 303, 'nothing to sign in for: 303 back')
})

t.test('forms only where the operator routes are mounted, for a viewer who passes their guard', async t => {
  const none = await pageApp(t, NONE_UP)
  t.notMatch((await none.inject({ url: '/health', headers: { accept: HTML } })).body, /<form/, 'no routes: no form')

  const app = await pageApp(t, NONE_UP, { others: 'full' }, { prefix: '/ops' })
  const inside = (await app.inject({ url: '/health?status=up', headers: { accept: HTML } })).body
  const row = inside.split('<tr class="actions')[1].split('</tr>')[0]
  t.match(row, /<form class="act" method="post" action="\/ops\/stop\/0"><input type="hidden" name="back" value="\/health\?status=up"><button type="submit" name="do" value="stop">stop<\/button><\/form>/,
    'a form per command, posting to the route, sending the browser back here with its filter')
  for (const command of ['drain', 'maint', 'weight']) t.match(row, new RegExp(`action="/ops/${command}/0"`), command)
  t.notMatch(row, /action="\/ops\/start\/0"/, 'no start for a peer that runs')
  t.notMatch(row, /action="\/ops\/ready\/0"/, 'no ready for a peer that is ready')
  t.notMatch(row, /action="\/ops\/release\/0"/, 'no release for a peer that is not pinned')
  t.match(row, /<input type="number" name="value" min="1" max="1000" step="1" required value="1"/)
  t.notMatch((await app.inject({ url: '/health', remoteAddress: OUTSIDE, headers: { accept: HTML } })).body, /<form/, 'outside the routes\' guard: no form')

  const get = await pageApp(t, NONE_UP, {}, { methods: ['GET'] })
  t.match((await get.inject({ url: '/health', headers: { accept: HTML } })).body, /<form class="act" method="get" action="\/_supervisord\/drain\/0">/, 'routes that take GET only: forms that GET')
})
