import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import registry, { type RegistryOptions } from '../plugins/registry.js'
import type { CheckResult } from '../lib/peer.js'
import statusPage, { type StatusPageOptions } from '../routes/status-page.js'
import { negotiateFormat } from '../lib/status/negotiate.js'
import { statusCsv } from '../lib/status/csv.js'
import { statusSnapshot } from '../lib/status/snapshot.js'
import type { StatusSnapshot } from '../lib/status/types.js'
import { browserSkip, launchBrowser } from './helpers/browser.js'

// Runs inside the page (tsconfig has no DOM lib).
declare function getComputedStyle (element: unknown): { backgroundColor: string, color: string, fill: string, opacity: string }

const CSV_HEADER = 'upstream,index,address,program,pid,process,admin,health,passive,routable,inflight,requests,fails,rise,fall,last_ok,last_reason,last_latency_ms,last_age_ms,pin,backoff_step,backoff_retry_ms,' +
  'state,in_state_ms,request_rate,errors_connect,errors_timeout,errors_response,errors_status,errors_other,' +
  'responses_1xx,responses_2xx,responses_3xx,responses_4xx,responses_5xx,responses_other,retries,redispatches,' +
  'last_check_stale,last_command,last_command_ok,last_command_fault,last_command_age_ms,weight,backup'
/** The columns of the first version, before `state`. */
const OLD_COLUMNS = 22
const NASTY_REASON = 'bad status 503, "Service Unavailable"'
const SCRIPT_REASON = '<script>alert("x")</script> & more'

const UPSTREAMS = {
  backend: {
    servers: ['127.0.0.1:8000', '127.0.0.1:8001', { address: '127.0.0.1:8002', weight: 3, backup: true }],
    balancer: 'fair',
    supervisord: '127.0.0.1:9001 admin:s3cret'
  },
  api: {
    servers: ['[::1]:9000', '127.0.0.1:9001'],
    supervisord: { address: 'unix:/run/supervisor.sock', username: 'rootuser', password: 'hunter2pw' },
    supervisordName: 'apiprog'
  },
  plain: { servers: ['127.0.0.1:7000'] }
} as unknown as RegistryOptions['upstreams']

function check (ok: boolean, reason: string, latencyMs: number, at: number): CheckResult {
  return { ok, reason, latencyMs, at }
}

/** Puts the peers in known states the way the health checker, proxy and bridge would. */
function populate (app: FastifyInstance, now = Date.now()): void {
  const [up, down, drained] = app.upstreams.get('backend').peers
  up.setHealth('healthy')
  up.setPid(4242)
  for (let i = 0; i < 5; i++) up.recordCheck(check(true, 'OK', 1 + i * 2, now - (5 - i) * 1000), 32)
  up.acquire()
  up.acquire()
  up.release()

  down.setProcess('down', 'exited')
  down.setBackoff({ step: 2, until: now + 4000, reason: 'supervisord rejected the credentials (HTTP 401, user "admin")', cause: 'supervisord' })
  down.setHealth('unhealthy')
  for (const result of [check(true, 'OK', 2, now - 4000), check(false, 'connection refused', 0.4, now - 3000),
    check(false, SCRIPT_REASON, 2000, now - 2000), check(false, NASTY_REASON, 12.345, now - 300)]) down.recordCheck(result, 32)

  drained.setAdmin('drain')
  drained.setPin('up', 'operator start')
  const [api0, api1] = app.upstreams.get('api').peers
  api0.setPid(77)
  api1.recordFailure('ECONNRESET')
}

async function build (t: Test, options: StatusPageOptions = {}, upstreams = UPSTREAMS): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(registry, { upstreams })
  // What the supervisord bridge does in a real gateway: claim its sections, say where supervisord listens, name the programs.
  app.upstreams.claim('supervisord')
  app.upstreams.claim('supervisordName')
  if (upstreams === UPSTREAMS) {
    app.upstreams.get('backend').assignSupervisord('127.0.0.1:9001', ['backend0', 'backend1', 'backend2'])
    app.upstreams.get('api').assignSupervisord('unix:/run/supervisor.sock', ['apiprog0', 'apiprog1'])
  }
  await app.register(statusPage, options)
  t.teardown(async () => await app.close())
  return app
}

async function get (app: FastifyInstance, url: string, accept?: string) {
  return await app.inject({ method: 'GET', url, headers: accept === undefined ? {} : { accept } })
}

const BROWSER_ACCEPT = 'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8'

t.test('snapshot: the stable JSON shape, from the registry', async t => {
  const app = await build(t)
  const now = Date.now()
  populate(app, now)
  const snapshot = statusSnapshot(app.upstreams, { now })
  t.same(snapshot.upstreams.map(u => [u.name, u.balancer, u.supervisord, u.summary]), [
    ['backend', 'fair', '127.0.0.1:9001', { routable: 1, total: 3 }],
    ['api', 'round-robin', 'unix:/run/supervisor.sock', { routable: 1, total: 2 }],
    ['plain', 'round-robin', 'none', { routable: 1, total: 1 }]
  ])
  const [up, down, drained] = snapshot.upstreams[0].peers
  t.strictSame(up, {
    index: 0,
    address: '127.0.0.1:8000',
    program: 'backend0',
    pid: 4242,
    state: 'serving',
    inStateMs: up.inStateMs,
    process: 'up',
    admin: 'ready',
    pin: 'none',
    backoff: null,
    health: 'healthy',
    passive: 'ok',
    routable: true,
    inflight: 1,
    requests: 2,
    requestRate: null,
    fails: 0,
    errors: { connect: 0, timeout: 0, response: 0, status: 0, other: 0 },
    responses: { '1xx': 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, other: 0 },
    retries: 0,
    redispatches: 0,
    rise: 5,
    fall: 0,
    lastCheck: { ok: true, reason: 'OK', latencyMs: 9, ageMs: 1000, stale: false },
    lastCommand: null,
    weight: 1,
    backup: false,
    checks: [5000, 4000, 3000, 2000, 1000].map((ageMs, i) => ({ ok: true, reason: 'OK', latencyMs: 1 + i * 2, ageMs }))
  })
  t.strictSame(down.lastCheck, { ok: false, reason: NASTY_REASON, latencyMs: 12.3, ageMs: 300, stale: true }, 'latency rounded to 0.1 ms; stale: a stopped peer is not checked')
  t.match(down, { process: 'down', health: 'unhealthy', routable: false, fall: 3, pid: null })
  t.strictSame(down.backoff, { step: 2, retryInMs: 4000 }, 'the back-off without its reason (it may name supervisord\'s user)')
  t.match(drained, { admin: 'drain', pin: 'up', routable: false, weight: 3, backup: true, lastCheck: null, checks: [] })
  t.match(snapshot.upstreams[1].peers, [{ address: '[::1]:9000', program: 'apiprog0', pid: 77 }, { program: 'apiprog1', passive: 'failed', fails: 1 }])
})

t.test('snapshot: the request rate, since the oldest read within the last minute', async t => {
  const app = await build(t)
  const peer = app.upstreams.get('plain').peers[0]
  const rate = (now: number) => statusSnapshot(app.upstreams, { now }).upstreams[2].peers[0].requestRate
  const t0 = Date.now()
  t.equal(rate(t0), null, 'nothing to compare a first read with')
  for (let i = 0; i < 10; i++) { peer.acquire(); peer.release() }
  t.equal(rate(t0 + 500), null, 'nor a read within a second of it')
  t.equal(rate(t0 + 2000), 5, '10 requests in 2 s')
  for (let i = 0; i < 30; i++) { peer.acquire(); peer.release() }
  t.equal(rate(t0 + 10_000), 4, '40 in 10 s: still from the first read')
  t.equal(rate(t0 + 61_000), 0.5, 'a minute on: from the read at 2 s, the 30 since (in 59 s)')
  t.equal(rate(t0 + 200_000), null, 'every read over a minute old: no rate')
})

t.test('time in state: a backup leaves standby when the last serving primary goes, from that moment; a primary\'s change leaves the other primary alone', async t => {
  const app = await build(t)
  const { activity } = app.upstreams
  const [first, second, backup] = app.upstreams.get('backend').peers
  const pause = async (): Promise<void> => await new Promise(resolve => setTimeout(resolve, 30))
  t.strictSame([first, second, backup].map(peer => activity.state(peer).state), ['serving', 'serving', 'backup-standby'])
  await pause()
  first.setHealth('unhealthy', 'check failed')
  await pause()
  t.strictSame(activity.state(second), { state: 'serving', since: activity.startedAt }, 'the other primary serves on, since the start')
  t.strictSame(activity.state(backup), { state: 'backup-standby', since: activity.startedAt }, 'one primary still serves: the backup stands by')
  const before = Date.now()
  second.setHealth('unhealthy', 'check failed')
  const after = Date.now()
  await pause()
  const { state, since } = activity.state(backup)
  t.equal(state, 'serving')
  t.ok(since >= before && since <= after, `serving since the last primary went (${since - before} ms after), not since the page looked`)
})

t.test('snapshot: the history shown is bounded to the most recent checks', async t => {
  const app = await build(t)
  const peer = app.upstreams.get('plain').peers[0]
  for (let i = 0; i < 45; i++) peer.recordCheck(check(true, `check ${i}`, 1, 0), 100)
  const { checks } = statusSnapshot(app.upstreams, { now: 0 }).upstreams[2].peers[0]
  t.equal(checks.length, 30)
  t.equal(checks[29].reason, 'check 44', 'newest last')
})

t.test('JSON answer', async t => {
  const app = await build(t)
  populate(app)
  const res = await get(app, '/health?format=json')
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8')
  t.equal(res.headers['cache-control'], 'no-store')
  t.match(res.headers.vary, /accept/i)
  const body = res.json() as StatusSnapshot
  t.equal(body.upstreams.length, 3)
  t.match(body.upstreams[0].peers[1], { index: 1, program: 'backend1', routable: false, lastCheck: { ok: false, reason: NASTY_REASON } })
  t.ok(body.upstreams[0].peers[0].lastCheck!.ageMs >= 1000)
})

t.test('Accept negotiation', async t => {
  const app = await build(t)
  const cases: Array<[string | undefined, string]> = [
    [undefined, 'application/json'],
    ['*/*', 'application/json'],
    [BROWSER_ACCEPT, 'text/html'],
    ['text/html', 'text/html'],
    ['application/json', 'application/json'],
    ['application/json, text/plain, */*', 'application/json'],
    ['text/csv', 'text/csv'],
    ['text/csv;q=0.9, application/json;q=0.5', 'text/csv'],
    ['text/html;q=0, */*', 'application/json'],
    ['text/*', 'text/html'],
    ['text/*, text/csv', 'text/csv'],
    ['image/png', 'application/json'],
    ['text/plain', 'application/json']
  ]
  for (const [accept, type] of cases) {
    const res = await get(app, '/health', accept)
    t.equal(res.headers['content-type'], `${type}; charset=utf-8`, `Accept: ${accept ?? '(none)'}`)
  }
  const forced = await get(app, '/health?format=csv', BROWSER_ACCEPT)
  t.equal(forced.headers['content-type'], 'text/csv; charset=utf-8', '?format wins over Accept')
  t.equal(negotiateFormat('  '), 'json')
  t.equal(negotiateFormat('TEXT/HTML ; Q=1'), 'html', 'case-insensitive')
  t.equal(negotiateFormat('application/json;q=0.5, text/html;q=0.6'), 'html')
  t.equal(negotiateFormat('application/json;q=bogus, text/csv;q=0.1'), 'csv', 'a malformed q counts as 0')
})

t.test('?status filters peers: up = routable, down = not routable', async t => {
  const app = await build(t)
  populate(app)
  const peers = async (url: string) => ((await get(app, url)).json() as StatusSnapshot).upstreams
    .map(u => [u.name, u.peers.map(p => p.index)])
  t.same(await peers('/health?status=up'), [['backend', [0]], ['api', [0]], ['plain', [0]]])
  t.same(await peers('/health?status=down'), [['backend', [1, 2]], ['api', [1]], ['plain', []]])
  t.same(await peers('/health?status=up&unknown=1&format=json'), [['backend', [0]], ['api', [0]], ['plain', [0]]], 'unknown keys are ignored')
  const csv = (await get(app, '/health?status=down&format=csv')).body.trim().split('\r\n')
  t.same(csv.map(line => line.split(',').slice(0, 2).join(',')), ['upstream,index', 'backend,1', 'backend,2', 'api,1'])
  const html = (await get(app, '/health?status=down', 'text/html')).body
  t.notMatch(html, /class="peer up"/)
  t.match(html, /No peer is down\./, 'an upstream with no match says so')
  t.match(html, /routable 1 of 1/, 'the summary still counts every peer')
})

t.test('unknown format or status: 400 naming the allowed values', async t => {
  const app = await build(t)
  const cases: Array<[string, RegExp]> = [
    ['/health?format=xml', /query "format" must be one of html, json, csv, got "xml"/],
    ['/health?format=', /query "format" must be one of html, json, csv, got ""/],
    ['/health?status=sideways', /query "status" must be one of up, down, got "sideways"/],
    ['/health?status=up&status=down', /query "status" must be one of up, down, got \["up","down"\]/]
  ]
  for (const [url, message] of cases) {
    const res = await get(app, url, 'text/html')
    t.equal(res.statusCode, 400, url)
    t.match(res.headers['content-type'], /^application\/json/)
    t.match(res.json(), { statusCode: 400, code: 'FST_SUPERVISORD_BAD_QUERY', message }, url)
  }
})

t.test('supervisord credentials are never shown, in any format', async t => {
  const app = await build(t)
  populate(app)
  for (const format of ['html', 'json', 'csv']) {
    const body = (await get(app, `/health?format=${format}`)).body
    for (const secret of ['s3cret', 'admin:', 'rootuser', 'hunter2pw']) {
      t.notOk(body.includes(secret), `${format} does not contain ${secret}`)
    }
    if (format !== 'csv') t.ok(body.includes('127.0.0.1:9001') && body.includes('unix:/run/supervisor.sock'), `${format} shows the addresses`)
  }
})

t.test('CSV: header, one row per peer, RFC 4180 quoting', async t => {
  const app = await build(t)
  populate(app)
  const res = await get(app, '/health', 'text/csv')
  t.equal(res.headers['content-type'], 'text/csv; charset=utf-8')
  t.equal(res.headers['cache-control'], 'no-store')
  const lines = res.body.split('\r\n')
  t.equal(lines.pop(), '', 'every row ends with CRLF')
  t.equal(lines[0], CSV_HEADER)
  t.equal(lines.length, 1 + 6)
  // The first 22 columns (a quoted field may hold a comma), ages and retry made stable; then the ones added since.
  const fields = (line: string) => line.match(/("([^"]|"")*"|[^,]*)(,|$)/g)!.map(f => f.replace(/,$/, '')).slice(0, -1)
  const old = (line: string) => {
    const f = fields(line).slice(0, OLD_COLUMNS)
    if (f[18] !== '') f[18] = 'AGE'
    if (f[21] !== '') f[21] = 'RETRY'
    return f.join(',')
  }
  const added = (line: string) => fields(line).slice(OLD_COLUMNS).join(',').replace(/^([a-z-]+),\d+,/, '$1,IN_STATE,')
  t.equal(old(lines[1]), 'backend,0,127.0.0.1:8000,backend0,4242,up,ready,healthy,ok,true,1,2,0,5,0,true,OK,9,AGE,none,0,')
  t.equal(added(lines[1]), 'serving,IN_STATE,,0,0,0,0,0,0,0,0,0,0,0,0,0,false,,,,,1,false', 'state, time in state, no rate yet, counters, a fresh check, no command')
  t.equal(old(lines[2]), 'backend,1,127.0.0.1:8001,backend1,,down,ready,unhealthy,ok,false,0,0,0,0,3,false,"bad status 503, ""Service Unavailable""",12.3,AGE,none,2,RETRY')
  t.equal(added(lines[2]), 'back-off,IN_STATE,,0,0,0,0,0,0,0,0,0,0,0,0,0,true,,,,,1,false', 'a stopped peer\'s last check is stale')
  t.equal(old(lines[3]), 'backend,2,127.0.0.1:8002,backend2,,up,drain,unknown,ok,false,0,0,0,0,0,,,,,up,0,', 'no check yet: empty fields')
  t.equal(added(lines[3]), 'draining,IN_STATE,,0,0,0,0,0,0,0,0,0,0,0,0,0,,,,,,3,true')
  t.equal(lines[4].split(',').slice(0, 4).join(','), 'api,0,[::1]:9000,apiprog0')

  const lineBreak = statusCsv({
    gateway: { version: '0', uptimeMs: 0 },
    upstreams: [{
      name: 'x',
      balancer: 'b',
      supervisord: 'none',
      summary: { routable: 0, total: 1 },
      readiness: { ready: false, outlook: 'none' },
      hold: { current: 0, max: 0, overflows: 0, timeouts: 0 },
      scale: null,
      peers: [{ ...snapshotPeer(), lastCheck: { ok: false, reason: 'line\r\nbreak', latencyMs: 1, ageMs: 2, stale: false } }]
    }],
    group: { gateway: 'g', store: { kind: 'memory', shared: false, state: 'ok', sinceMs: 0 }, members: [], checks: [] }
  })
  t.match(lineBreak, /,"line\r\nbreak",1,2,none,0,,serving,/, 'a line break is quoted')
})

function snapshotPeer (): StatusSnapshot['upstreams'][number]['peers'][number] {
  return {
    index: 0,
    address: 'h:1',
    program: 'x0',
    pid: null,
    state: 'serving',
    inStateMs: 0,
    process: 'up',
    admin: 'ready',
    pin: 'none',
    backoff: null,
    health: 'unknown',
    passive: 'ok',
    routable: true,
    inflight: 0,
    requests: 0,
    requestRate: null,
    fails: 0,
    errors: { connect: 0, timeout: 0, response: 0, status: 0, other: 0 },
    responses: { '1xx': 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, other: 0 },
    retries: 0,
    redispatches: 0,
    lastCommand: null,
    rise: 0,
    fall: 0,
    lastCheck: null,
    weight: 1,
    backup: false,
    checks: []
  }
}

t.test('HTML: self-contained, escaped, each peer in its state, one bar per check', async t => {
  const app = await build(t, { title: 'Gateway <prod> & "co"' })
  populate(app)
  const res = await get(app, '/health', BROWSER_ACCEPT)
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/html; charset=utf-8')
  t.equal(res.headers['cache-control'], 'no-store')
  const page = res.body
  t.match(page, /^<!doctype html>/)
  t.match(page, /<meta http-equiv="refresh" content="5">/)
  t.match(page, /<title>\(3 down\) Gateway &lt;prod&gt; &amp; &quot;co&quot;<\/title>/)
  t.notMatch(page, /<script/i, 'no script at all, and the reason is escaped')
  t.ok(page.includes('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more'))
  t.notMatch(page, /(src|href)="(https?:)?\/\//, 'no external asset')
  t.notMatch(page, /<link/)
  t.match(page, /routable 1 of 3/)
  t.match(page, /balancer fair · supervisord 127\.0\.0\.1:9001/)
  t.match(page, /fastify-supervisord \d+\.\d+\.\d+ · up \d+ ms · 3 upstreams/, 'the version and the uptime in the header')
  t.match(page, /held 0 now · max 0 · 0 overflows · 0 timed out/, 'the hold queue')

  const rows = page.split('<tr class="peer ').slice(1)
  t.same(rows.map(row => row.slice(0, row.indexOf('"'))), ['s-serving', 's-back-off', 's-draining', 's-serving', 's-passive-failed', 's-serving'])
  t.equal(rows[0].match(/<rect class="bar ok"/g)?.length, 5)
  t.equal(rows[1].match(/<rect class="bar fail"/g)?.length, 3)
  t.equal(rows[1].match(/<rect /g)?.length, 4)
  t.match(rows[2], /no checks yet/)
  t.match(rows[2], /<span class="tag">backup<\/span><span class="tag">weight 3<\/span>/)
  t.match(rows[1], /<span class="neutral">down<\/span>/)
  t.match(rows[2], /<span class="warn">drain<\/span>/)
  t.match(rows[4], /<span class="line bad">other 1<\/span>/, 'a passive failure by its kind')
  t.match(page, /<a href="\?format=json">JSON<\/a>/)
  t.notMatch(page, /<form/, 'no form without operator routes')

  const plain = app.upstreams.get('plain').peers[0]
  const now = Date.now()
  for (const ago of [172_800_000, 10_800_000, 300_000, 30_000]) plain.recordCheck(check(true, 'OK', 1, now - ago), 32)
  const ages = (await get(app, '/health', 'text/html')).body.split('id="upstream-plain"')[1]
  t.match(ages, /OK, 1 ms, 2 d ago.*OK, 1 ms, 3 h ago.*OK, 1 ms, 5 min ago.*OK, 1 ms, 30 s ago/s, 'ages read in the largest unit')

  const filtered = (await get(app, '/health?status=down', 'text/html')).body
  t.match(filtered, /<a href="\?format=csv&amp;status=down">CSV<\/a>/, 'format links keep the filter, escaped')
  t.match(filtered, /<a href="\?status=down" class="current" aria-current="page">down<\/a>/)
})

t.test('HTML refresh can be turned off', async t => {
  const app = await build(t, { refresh: 0, path: '/status' })
  const page = (await get(app, '/status', 'text/html')).body
  t.notMatch(page, /http-equiv/)
  t.notMatch(page, /refreshes every/)
  t.match(page, /<title>fastify-supervisord status<\/title>/)
  t.equal((await get(app, '/health')).statusCode, 404, 'only the configured path')
})

t.test('options are checked at registration, naming the option', async t => {
  const cases: Array<[unknown, RegExp]> = [
    [{ path: 'health' }, /status page: option "path" must start with "\/", got "health"/],
    [{ path: '' }, /status page: option "path" must be a non-empty string/],
    [{ refresh: -1 }, /status page: option "refresh" must be an integer from 0 to 86400, got -1/],
    [{ refresh: '5' }, /option "refresh" must be an integer/],
    [{ refresh: 1.5 }, /option "refresh" must be an integer/],
    [{ title: 7 }, /option "title" must be a non-empty string, got 7/],
    [{ others: 'some' }, /option "others" must be one of "redacted", "full", "forbidden", got "some"/],
    [{ readiness: 'ready' }, /option "readiness" must start with "\/", got "ready"/],
    [{ readiness: 1 }, /option "readiness" must be true, false or a path, got 1/],
    [{ allow: ['nowhere'] }, /status page: option "allow" entries must be IPv4 or IPv6 addresses/],
    [{ token: '' }, /status page: option "token" must be a non-empty string/],
    [{ titel: 'x' }, /status page: unknown option "titel" \(known: path, refresh, title, allow, token, others, readiness\)/]
  ]
  for (const [options, message] of cases) {
    await t.rejects(build(t, options as StatusPageOptions), { message }, JSON.stringify(options))
  }
  const alone = Fastify()
  t.teardown(async () => await alone.close())
  await t.rejects(async () => { await alone.register(statusPage) }, /fastify-supervisord-registry/, 'needs the registry')
})

t.test('in a real headless Chromium', { skip: browserSkip() }, async t => {
  const browser = await launchBrowser(t)

  t.test('states stand out, sparklines render', async t => {
    const app = await build(t, { refresh: 0 })
    populate(app)
    const origin = await app.listen({ host: '127.0.0.1', port: 0 })
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 } })
    t.teardown(async () => await page.close())
    page.setDefaultTimeout(5000)
    const response = await page.goto(`${origin}/health`, { timeout: 10_000 })
    t.equal(response?.headers()['content-type'], 'text/html; charset=utf-8', 'the browser is answered HTML')

    const background = async (selector: string) =>
      await page.locator(selector).first().evaluate(el => getComputedStyle(el).backgroundColor)
    const servingColour = await background('#upstream-backend tr.peer.s-serving')
    const backoffColour = await background('#upstream-backend tr.peer.s-back-off')
    t.not(backoffColour, servingColour, `a row in back-off (${backoffColour}) is coloured unlike a serving one (${servingColour})`)

    const badge = page.locator('#upstream-backend tr.peer.s-back-off .badge')
    t.ok(await badge.isVisible(), 'the state is visible')
    t.equal(await badge.innerText(), 'BACK-OFF')
    t.equal(await badge.evaluate(el => getComputedStyle(el).backgroundColor), 'rgb(110, 74, 0)', 'in its own colour')

    const rows = page.locator('#upstream-backend tr.peer')
    t.equal(await rows.nth(0).locator('svg.spark rect.bar').count(), 5)
    t.equal(await rows.nth(1).locator('svg.spark rect.bar').count(), 4)
    const bars = await rows.nth(1).locator('svg.spark rect.bar').evaluateAll(rects => rects.map(rect => {
      const box = rect.getBoundingClientRect()
      return { height: Math.round(box.height), fill: getComputedStyle(rect).fill }
    }))
    t.ok(bars.every(bar => bar.height >= 2), 'every bar is drawn')
    t.equal(bars[2].height, 20, 'the slowest check is the tallest bar')
    t.same(bars.map(bar => bar.fill), ['rgb(45, 164, 78)', 'rgb(207, 34, 46)', 'rgb(207, 34, 46)', 'rgb(207, 34, 46)'], 'green passes, red failures')
    t.equal(await rows.nth(1).locator('svg.spark').evaluate(el => getComputedStyle(el).opacity), '0.35', 'faded: the peer is stopped, its checks are old')
    t.equal(await page.locator('script').count(), 0, 'the escaped reason did not become a script')

    const overflow = await page.locator('section.upstream').evaluateAll(sections => sections.map(s => s.scrollWidth - s.clientWidth))
    t.same(overflow, [0, 0, 0], 'every table fits a 1400 px window')
  })

  t.test('the page reloads itself every `refresh` seconds', async t => {
    const app = await build(t, { refresh: 1 })
    const origin = await app.listen({ host: '127.0.0.1', port: 0 })
    const page = await browser.newPage()
    t.teardown(async () => await page.close())
    await page.goto(`${origin}/health?status=up`, { timeout: 10_000 })
    const reload = await page.waitForRequest(request => request.url().endsWith('/health?status=up'), { timeout: 5000 })
    t.equal(reload.url(), `${origin}/health?status=up`, 'reloaded, filter kept')
  })
})

t.test('HTML: a pinned peer and one in start back-off are marked', async t => {
  const app = await build(t)
  populate(app)
  const body = (await get(app, '/health', 'text/html')).body
  t.match(body, /<span class="tag" title="pinned up by an operator's start: the scaler leaves it alone until released">pinned up<\/span>/)
  t.match(body, /<span class="tag bad" title="start back-off: 2 failed starts in a row">retry in \d\.\d s<\/span>/)
  t.notMatch(body, /rejected the credentials/, 'not the reason: it may name supervisord\'s user')
})
