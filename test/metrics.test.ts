import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { Registry as MetricsRegistry, Counter } from 'prom-client'
import registry, { type RegistryOptions } from '../plugins/registry.js'
import proxy, { type ProxyOptions } from '../plugins/proxy.js'
import supervisord from '../plugins/supervisord.js'
import healthCheck from '../plugins/health.js'
import scaler from '../plugins/scaler.js'
import metrics, { type MetricsOptions } from '../plugins/metrics.js'
import { PEER_STATES } from '../lib/peer-state.js'
import { which } from '../lib/dev/supervisord-daemon.js'
import { backendFor, backendsFor, silentServer, whoAmI } from './helpers/backends.js'
import { listening } from './helpers/gateway.js'
import { Scrape, scrape } from './helpers/metrics.js'
import { proxyApp, skip, supervisordFor } from './helpers/supervisord.js'
import { STATES_UPSTREAMS, putInStates, STATE_OF_PEER } from './helpers/states.js'
import { until } from './helpers/wait.js'

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version

async function metricsApp (t: Test, upstreams: RegistryOptions['upstreams'], proxyOptions?: Partial<ProxyOptions>, options: MetricsOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  t.teardown(async () => await app.close())
  await app.register(registry, { upstreams })
  await app.register(metrics, options)
  if (proxyOptions !== undefined) await app.register(proxy, { upstream: Object.keys(upstreams)[0], ...proxyOptions })
  return app
}

const peer = (index: number, upstream = 'backend'): Record<string, string> => ({ upstream, peer: String(index) })

t.test('the text format: every family named with the prefix, typed and explained, read by a real parser', async t => {
  const app = await metricsApp(t, { backend: { servers: ['127.0.0.1:1'] } })
  const res = await app.inject('/metrics')
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8')
  t.equal(res.headers['cache-control'], 'no-store')
  const page = new Scrape(res.body)
  t.ok(page.families.size >= 30, `${page.families.size} families`)
  for (const [name, family] of page.families) {
    t.match(name, /^fastify_supervisord_[a-z_]+$/, `${name}: the prefix`)
    t.ok(family.help.length > 10, `${name}: explained`)
  }
  t.match(page.family('server_sessions_total'), { type: 'COUNTER' })
  t.match(page.family('server_current_sessions'), { type: 'GAUGE' })
  t.match(page.family('server_response_time_seconds'), { type: 'HISTOGRAM' })
  t.ok(Math.abs(page.value('process_start_time_seconds') - Date.now() / 1000) < 60, 'the start time, in seconds')
  t.equal(page.value('process_build_info', { version: VERSION }), 1, 'the version as a label')
  t.equal(page.value('server_info', { ...peer(0), address: '127.0.0.1:1', program: '', backup: 'false' }), 1, 'address and program as labels of one info series')
  t.notMatch(res.body, /path|url="/, 'no label carries a request path')
})

t.test('requests: responses by class, sessions, response time, in flight, by peer and by upstream', async t => {
  let slow = false
  const backend = await backendFor(t, (req, res, b) => {
    if (req.url === '/missing') { res.writeHead(404).end(); return }
    if (slow || req.url === '/slow') setTimeout(() => whoAmI(req, res, b), 1200)
    else whoAmI(req, res, b)
  })
  const app = await metricsApp(t, { backend: { servers: [backend.address] } }, {})
  await listening(app)
  const before = await scrape(app)
  t.equal(before.value('server_sessions_total', peer(0)), 0)
  t.equal(before.histogram('server_response_time_seconds', peer(0)).count, 0)

  for (let i = 0; i < 3; i++) t.equal((await app.inject('/')).statusCode, 200)
  t.equal((await app.inject('/missing')).statusCode, 404)
  t.equal((await app.inject('/slow')).statusCode, 200)
  const after = await scrape(app)
  t.equal(after.value('server_sessions_total', peer(0)), 5, 'sessions_total: each request sent')
  t.equal(after.value('server_http_responses_total', { ...peer(0), code: '2xx' }), 4, 'http_responses_total: 2xx')
  t.equal(after.value('server_http_responses_total', { ...peer(0), code: '4xx' }), 1, 'http_responses_total: 4xx')
  t.equal(after.value('backend_http_responses_total', { upstream: 'backend', code: '2xx' }), 4, 'the upstream\'s answers')
  // Far apart, so that a loaded machine's fast answers stay under 1 s (one took over 100 ms in a full run).
  const time = after.histogram('server_response_time_seconds', peer(0), '1')
  t.equal(time.count, 5, 'response time: one observation per response')
  t.equal(time.under, 4, 'the slow one (1.2 s) is above the 1 s bucket')
  t.ok(time.sum >= 1.2, `the sum holds the slow one (${time.sum} s)`)

  slow = true
  const inFlight = app.inject('/')
  t.ok(await until(() => backend.hits === 6), 'the request is at the peer')
  t.equal((await scrape(app)).value('server_current_sessions', peer(0)), 1, 'current_sessions: in flight now')
  await inFlight
  t.equal((await scrape(app)).value('server_current_sessions', peer(0)), 0)
})

t.test('failures: passive failures by kind, retries and redispatches, the gateway\'s own 5xx', async t => {
  const good = await backendFor(t, (req, res, b) => req.url === '/fail' ? res.writeHead(503).end() : whoAmI(req, res, b), 1)
  const hang = await silentServer(t)
  const app = await metricsApp(t, { backend: { servers: ['127.0.0.1:1', good.address, `127.0.0.1:${hang.port}`], balancer: 'round-robin' } },
    { nextUpstream: ['error', 'timeout', 'http_503'], headersTimeout: 1000, nextUpstreamTries: 2 })
  await listening(app)
  // Round-robin: the first request goes to peer 0 (refused), then to peer 1.
  t.equal((await app.inject('/')).statusCode, 200)
  let page = await scrape(app)
  t.equal(page.value('server_passive_failures_total', { ...peer(0), kind: 'connect' }), 1, 'passive_failures_total: a refused connection is kind "connect"')
  t.equal(page.value('server_redispatch_warnings_total', peer(0)), 1, 'redispatch_warnings_total: the request left peer 0')
  t.equal(page.value('server_retry_warnings_total', peer(1)), 1, 'retry_warnings_total: and was retried on peer 1')
  t.equal(page.value('server_passive_state', { ...peer(0), state: 'failed' }), 1)

  // A POST is not passed to the next peer once sent (nginx's rule): the 503 is counted and answered.
  t.equal((await app.inject({ method: 'POST', url: '/fail' })).statusCode, 503)
  page = await scrape(app)
  t.equal(page.value('server_passive_failures_total', { ...peer(1), kind: 'status' }), 1, 'an answer nextUpstream names (http_503) is kind "status"')
  t.equal(page.value('server_http_responses_total', { ...peer(1), code: '5xx' }), 1)

  // Peer 1 is out now too: the next GET goes to the silent peer and times out.
  const timedOut = await app.inject('/')
  t.equal(timedOut.statusCode, 504)
  page = await scrape(app)
  t.equal(page.value('server_passive_failures_total', { ...peer(2), kind: 'timeout' }), 1, 'a headers timeout is kind "timeout"')
  t.equal(page.value('backend_http_responses_total', { upstream: 'backend', code: '5xx' }), 2, 'the upstream counts the gateway\'s own 504 with the peer\'s 503')
})

t.test('states: process, admin, health, passive, pin and the status page\'s state, one-hot; weight', async t => {
  const app = await metricsApp(t, STATES_UPSTREAMS)
  await app.register(supervisord, { pollInterval: 0 })
  await app.ready()
  putInStates(app)
  app.upstreams.setWeight('pool', 3, 40)
  const page = await scrape(app)
  STATE_OF_PEER.forEach((state, index) => {
    const labels = peer(index, 'pool')
    t.equal(page.value('server_status', { ...labels, state }), 1, `peer ${index}: server_status ${state} is 1`)
    const hot = page.family('server_status').metrics.filter(s => s.labels?.peer === String(index))
    t.equal(hot.length, PEER_STATES.length, `peer ${index}: a series for every state`)
    t.equal(hot.filter(s => s.value === '1').length, 1, `peer ${index}: one of them is 1`)
  })
  t.equal(page.value('server_process_state', { ...peer(2, 'pool'), state: 'starting' }), 1)
  t.equal(page.value('server_process_state', { ...peer(2, 'pool'), state: 'up' }), 0)
  t.equal(page.value('server_admin_state', { ...peer(7, 'pool'), state: 'drain' }), 1)
  t.equal(page.value('server_admin_state', { ...peer(8, 'pool'), state: 'maint' }), 1)
  t.equal(page.value('server_health_state', { ...peer(9, 'pool'), state: 'unhealthy' }), 1)
  t.equal(page.value('server_passive_state', { ...peer(10, 'pool'), state: 'failed' }), 1)
  t.equal(page.value('server_pin_state', { ...peer(4, 'pool'), state: 'down' }), 1)
  t.equal(page.value('server_start_backoff_step', peer(11, 'pool')), 2, 'start_backoff_step')
  const left = page.value('server_start_backoff_seconds', peer(11, 'pool'))
  t.ok(left > 50 && left <= 60, `start_backoff_seconds: ${left} s to go`)
  t.equal(page.value('server_weight', peer(3, 'pool')), 40)
  t.ok(page.value('server_state_seconds', peer(0, 'pool')) >= 0, 'state_seconds')
  t.equal(page.value('backend_active_servers', { upstream: 'pool' }), 1, 'active_servers: the one serving primary')
  t.equal(page.value('backend_backup_servers', { upstream: 'pool' }), 1, 'backup_servers: the backup standing by')
  t.equal(page.value('backend_ready', { upstream: 'pool' }), 1)
})

t.test('active checks: results by outcome, their duration, up/down transitions', async t => {
  const backend = await backendFor(t)
  const app = await metricsApp(t, { backend: { servers: [backend.address, '127.0.0.1:1'], healthCheck: { interval: 50, rise: 1, fall: 1 } } })
  await app.register(healthCheck)
  await app.ready()
  t.ok(await until(() => app.upstreams.get('backend').peers[1].fall >= 2 && app.upstreams.get('backend').peers[0].rise >= 2))
  const page = await scrape(app)
  t.ok(page.value('server_check_results_total', { ...peer(0), result: 'ok' }) >= 2, 'check_results_total: ok')
  t.ok(page.value('server_check_results_total', { ...peer(1), result: 'connection refused' }) >= 2, 'check_results_total: connection refused')
  t.equal(page.value('server_check_results_total', { ...peer(0), result: 'timed out' }), 0)
  t.ok(page.histogram('server_check_duration_seconds', peer(0)).count >= 2, 'check_duration_seconds: one per check')
  t.equal(page.value('server_check_up_down_total', peer(1)), 1, 'check_up_down_total: went unhealthy once')
  t.equal(page.sample('server_check_up_down_total', peer(0)), undefined, 'never for the healthy one')
})

t.test('held requests: current, max, overflows, timeouts, and how long they waited', async t => {
  const backend = await backendFor(t)
  const app = await metricsApp(t, { backend: { servers: [{ address: backend.address, down: true }] } }, { maxHeld: 2, holdTimeout: 300 })
  await listening(app)
  const upstream = app.upstreams.get('backend')
  upstream.startOnDemand()
  // A starter that is slow: the first demand is left to time out.
  const held = [app.inject('/'), app.inject('/')]
  t.ok(await until(() => upstream.hold.current === 2))
  let page = await scrape(app)
  t.equal(page.value('backend_current_queue', { upstream: 'backend' }), 2, 'current_queue: held now')
  t.equal((await app.inject('/')).json().code, 'FST_SUPERVISORD_HOLD_OVERFLOW')
  t.same((await Promise.all(held)).map(r => r.json().code), ['FST_SUPERVISORD_HOLD_TIMEOUT', 'FST_SUPERVISORD_HOLD_TIMEOUT'])
  page = await scrape(app)
  t.equal(page.value('backend_current_queue', { upstream: 'backend' }), 0)
  t.equal(page.value('backend_max_queue', { upstream: 'backend' }), 2, 'max_queue: the most at once')
  t.equal(page.value('backend_queue_overflows_total', { upstream: 'backend' }), 1, 'queue_overflows_total')
  t.equal(page.value('backend_queue_timeouts_total', { upstream: 'backend' }), 2, 'queue_timeouts_total')
  t.equal(page.histogram('backend_queue_time_seconds', { upstream: 'backend' }).count, 0, 'none got a peer yet')

  app.upstreams.on('demand', () => setTimeout(() => upstream.peers[0].setProcess('up'), 150))
  t.equal((await app.inject('/')).statusCode, 200)
  page = await scrape(app)
  const wait = page.histogram('backend_queue_time_seconds', { upstream: 'backend' }, '0.1')
  t.equal(wait.count, 1, 'queue_time_seconds: the released request')
  t.equal(wait.under, 0, 'it waited more than 0.1 s')
  t.ok(wait.sum >= 0.14, `about the start's 150 ms (${wait.sum} s)`)
})

t.test('the scaler: its load and threshold, when it decides next, decisions by reason', async t => {
  const app = await metricsApp(t, { backend: { servers: ['127.0.0.1:1', '127.0.0.1:2'].map(address => ({ address, down: true })), supervisord: 'none', inheritBackendStatus: true, scale: { minRunning: 1, window: 100, loadThreshold: 50 } } as never })
  await app.register(supervisord)
  await app.register(scaler)
  await app.ready()
  t.ok(await until(async () => !Number.isNaN((await scrape(app)).value('backend_scale_load', { upstream: 'backend' }))), 'a load once a window ended')
  const page = await scrape(app)
  t.equal(page.value('backend_scale_load', { upstream: 'backend' }), 0, 'scale_load: idle')
  t.equal(page.value('backend_scale_threshold', { upstream: 'backend' }), 50)
  const next = page.value('backend_scale_next_decision_seconds', { upstream: 'backend' })
  t.ok(next >= 0 && next <= 0.1, `next decision in ${next} s`)
  t.equal(page.value('backend_scale_decisions_total', { upstream: 'backend', action: 'start', reason: 'min running' }), 1, 'scale_decisions_total: minRunning started one')
  t.equal(page.value('supervisord_commands_total', { ...peer(0), command: 'start', outcome: 'ok', fault: '' }), 1, 'and the bridge carried it out (none mode)')
})

t.test('supervisord commands by outcome and fault, and the cold start, against a real supervisord', { skip }, async t => {
  const sv = await supervisordFor(t, { programs: [{ count: 1 }], broken: ['broken0'] })
  const { app } = await proxyApp(t, {
    backend: { servers: [sv.programs[0].address], supervisord: sv.option },
    broken: { servers: ['127.0.0.1:1'], supervisord: sv.option }
  }, { startBackoff: { initial: 60_000, max: 60_000 } })
  await app.register(metrics)
  await listening(app)
  t.equal((await app.inject('/')).statusCode, 200, 'the first request was held while backend0 started')
  const failed = await app.supervisord.execute('broken', 'start', 0, { wait: true })
  t.equal(failed.fault, 'SPAWN_ERROR')
  const page = await scrape(app)
  t.equal(page.value('supervisord_commands_total', { ...peer(0), command: 'start', outcome: 'ok', fault: '' }), 1, 'commands_total: the start on demand, ok')
  t.equal(page.value('supervisord_commands_total', { ...peer(0, 'broken'), command: 'start', outcome: 'failed', fault: 'SPAWN_ERROR' }), 1, 'commands_total: the failed one with its fault')
  t.equal(page.value('server_start_backoff_step', peer(0, 'broken')), 1, 'and it backs off')
  const wait = page.histogram('backend_queue_time_seconds', { upstream: 'backend' }, '30')
  t.equal(wait.count, 1, 'the held request\'s wait')
  t.ok(wait.sum >= 0.5 && wait.under === 1, `about supervisord's startsecs (1 s): ${wait.sum} s`)
})

t.test('the guard: loopback by default, an allow list, a token', async t => {
  const app = await metricsApp(t, { backend: { servers: ['127.0.0.1:1'] } })
  t.equal((await app.inject({ url: '/metrics', remoteAddress: '127.0.0.1' })).statusCode, 200)
  const outside = await app.inject({ url: '/metrics', remoteAddress: '192.0.2.7' })
  t.equal(outside.statusCode, 403)
  t.match(outside.json(), { code: 'FST_SUPERVISORD_FORBIDDEN', message: 'address 192.0.2.7 is not allowed to read the metrics' })

  const tokened = await metricsApp(t, { backend: { servers: ['127.0.0.1:1'] } }, undefined, { token: 'scrape-me', path: '/internal/metrics' })
  t.equal((await tokened.inject({ url: '/internal/metrics', remoteAddress: '192.0.2.7' })).statusCode, 403, 'without the token')
  t.equal((await tokened.inject({ url: '/internal/metrics', remoteAddress: '192.0.2.7', headers: { authorization: 'Bearer scrape-me' } })).statusCode, 200, 'with it, from anywhere')
  t.equal((await tokened.inject('/metrics')).statusCode, 404, 'only at its path')

  const listed = await metricsApp(t, { backend: { servers: ['127.0.0.1:1'] } }, undefined, { allow: ['10.0.0.0/8'] })
  t.equal((await listed.inject({ url: '/metrics', remoteAddress: '10.9.8.7' })).statusCode, 200)
  t.equal((await listed.inject({ url: '/metrics', remoteAddress: '127.0.0.1' })).statusCode, 403, 'loopback is not in this list')
})

t.test('the suite\'s own registry, merged into the application\'s; no route with path: false', async t => {
  const app = await metricsApp(t, { backend: { servers: ['127.0.0.1:1'] } }, undefined, { path: false })
  const own = new MetricsRegistry()
  const mine = new Counter({ name: 'app_things_total', help: 'Things of the application.', registers: [own] })
  mine.inc(3)
  const merged = MetricsRegistry.merge([own, app.supervisordMetrics])
  app.get('/all-metrics', async (_request, reply) => reply.type(merged.contentType).send(await merged.metrics()))
  t.equal((await app.inject('/metrics')).statusCode, 404)
  const page = new Scrape((await app.inject('/all-metrics')).body)
  t.equal(Number(page.families.get('app_things_total')?.metrics[0].value), 3, 'the application\'s')
  t.equal(page.value('server_sessions_total', peer(0)), 0, 'and the suite\'s, histograms included')
  t.match(page.family('server_response_time_seconds'), { type: 'HISTOGRAM' })
})

t.test('options are checked at registration', async t => {
  for (const [options, message] of [
    [{ path: 'metrics' }, /metrics: option "path" must start with "\/" \(or be false\), got "metrics"/],
    [{ path: '' }, /metrics: option "path" must be a non-empty string/],
    [{ allow: 'everyone' }, /metrics: option "allow" must be a non-empty list/],
    [{ paht: '/m' }, /metrics: unknown option "paht" \(known: path, allow, token\)/]
  ] as const) {
    const app = Fastify()
    await app.register(registry, { upstreams: { backend: { servers: ['127.0.0.1:1'] } } })
    await t.rejects(async () => { await app.register(metrics, options as never) }, message)
    await app.close()
  }
})

t.test('label sets are bounded by the peers: one series per peer (and state), no more', async t => {
  const backends = await backendsFor(t, 2)
  const app = await metricsApp(t, { backend: { servers: Array.from({ length: 200 }, (_, i) => backends[i % 2].address) } })
  const page = await scrape(app)
  t.equal(page.family('server_sessions_total').metrics.length, 200, 'one series per peer')
  t.equal(page.family('server_status').metrics.length, 200 * PEER_STATES.length)
})

const promtool = which('promtool')
const promtoolSkip = promtool === undefined && process.env.CI !== 'true' ? 'promtool not on the PATH (Debian package prometheus)' : false

t.test('Prometheus\'s own promtool checks the page: valid text format, and its lint finds nothing', { skip: promtoolSkip }, async t => {
  if (promtool === undefined) throw new Error('promtool is not on the PATH (CI=true: this test fails instead of skipping)')
  const backend = await backendFor(t)
  const app = await metricsApp(t, { backend: { servers: [backend.address, '127.0.0.1:1'], healthCheck: { interval: 50 } } }, {})
  await app.register(healthCheck)
  await app.register(supervisord)
  await listening(app)
  for (let i = 0; i < 4; i++) await app.inject('/')
  const text = (await app.inject('/metrics')).body
  const child = spawn(promtool, ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stdin.end(text)
  const code = await new Promise<number | null>(resolve => child.once('close', resolve))
  t.equal(code, 0, `promtool check metrics: ${output.trim() || 'no problem'}`)
  t.equal(output.trim(), '', 'nothing to say')
})
