import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import registry, { type RegistryOptions } from '../plugins/registry.js'
import proxy, { type ProxyOptions } from '../plugins/proxy.js'
import supervisord from '../plugins/supervisord.js'
import scaler from '../plugins/scaler.js'
import { backendFor } from './helpers/backends.js'
import { listening, loggerInto } from './helpers/gateway.js'
import { skip, supervisordFor } from './helpers/supervisord.js'
import { until } from './helpers/wait.js'

type Line = Record<string, unknown> & { level: number, msg: string }

const INFO = 30
const WARN = 40

async function logged (t: Test, upstreams: RegistryOptions['upstreams'], proxyOptions?: Partial<ProxyOptions>, serverOptions: object = {}): Promise<{ app: FastifyInstance, lines: Line[] }> {
  const lines: Line[] = []
  const app = Fastify({ logger: loggerInto(lines), ...serverOptions })
  t.teardown(async () => await app.close())
  await app.register(registry, { upstreams })
  if (proxyOptions !== undefined) await app.register(proxy, { upstream: Object.keys(upstreams)[0], ...proxyOptions })
  return { app, lines }
}

t.test('every change of a peer\'s state is one info line, naming the peer, its address and program', async t => {
  const { app, lines } = await logged(t, { web: { servers: ['127.0.0.1:8000', '127.0.0.1:8001'], supervisord: 'none', inheritBackendStatus: true, supervisordName: 'api' } as never })
  await app.register(supervisord)
  await app.ready()
  app.upstreams.setAdmin('web', 1, 'drain', 'operator 127.0.0.1')
  app.upstreams.setWeight('web', 0, 3)
  app.upstreams.get('web').peers[0].setHealth('unhealthy', 'timed out')
  const changes = lines.filter(line => line.field !== undefined)
  t.match(changes, [
    { level: INFO, msg: 'peer 1 (127.0.0.1:8001, program api1) of upstream "web": admin ready → drain (operator 127.0.0.1)', upstream: 'web', index: 1, peer: '127.0.0.1:8001', program: 'api1', field: 'admin', from: 'ready', to: 'drain' },
    { level: INFO, msg: 'peer 0 (127.0.0.1:8000, program api0) of upstream "web": weight 1 → 3', field: 'weight', from: 1, to: 3 },
    { level: INFO, msg: 'peer 0 (127.0.0.1:8000, program api0) of upstream "web": health unknown → unhealthy (timed out)', field: 'health' }
  ])
})

t.test('a scaling decision is one info line with its numbers and the program\'s own name', async t => {
  const { app, lines } = await logged(t, { web: { servers: ['127.0.0.1:8000', '127.0.0.1:8001'].map(address => ({ address, down: true })), supervisord: 'none', inheritBackendStatus: true, supervisordName: 'api', scale: { minRunning: 1, window: 60_000 } } as never })
  await app.register(supervisord)
  await app.register(scaler)
  await app.ready()
  const decision = lines.find(line => line.msg.startsWith('scale:'))
  t.match(decision, {
    level: INFO,
    msg: 'scale: start api0 (peer 0 of upstream "web"): min running, load 0 req/s per running peer against 100, 0 running',
    upstream: 'web',
    action: 'start',
    index: 0,
    program: 'api0',
    load: 0,
    running: 0,
    threshold: 100,
    reason: 'min running'
  }, 'api0, not web0')
  t.match(lines.find(line => line.command === 'start'), { level: INFO, msg: 'supervisord none: peer 0 (api0) taken in at once (scaler: min running)', why: 'scaler: min running' }, 'and the bridge says who asked')
})

t.test('proxy errors: at warn, without a stack, a burst as one line with a count', async t => {
  const { app, lines } = await logged(t, { backend: { servers: [{ address: '127.0.0.1:1', down: true }] } }, {})
  await listening(app)
  for (let i = 0; i < 20; i++) t.equal((await app.inject('/')).statusCode, 503)
  const answered = (): Line[] => lines.filter(line => line.msg.startsWith('proxy: answered'))
  t.match(answered(), [{ level: WARN, msg: 'proxy: answered 503 FST_SUPERVISORD_NO_PEER', upstream: 'backend', statusCode: 503, code: 'FST_SUPERVISORD_NO_PEER', reason: 'No routable peer in upstream "backend"' }],
    'the first at once')
  t.ok(await until(() => answered().length === 2, 3000), 'the rest within the second after')
  t.match(answered()[1], { level: WARN, repeated: 19, msg: 'proxy: answered 503 FST_SUPERVISORD_NO_PEER (19 more within 1000 ms)' }, 'counted, not written')
  for (const line of lines) {
    t.not(line.level, 50, `no error line: ${line.msg}`)
    t.notOk(JSON.stringify(line).includes('    at '), `no stack: ${line.msg}`)
  }
  t.match((await app.inject('/')).json(), { statusCode: 503, code: 'FST_SUPERVISORD_NO_PEER', error: 'Service Unavailable', message: 'No routable peer in upstream "backend"' }, 'the answer in Fastify\'s shape')
})

t.test('an error that is not the suite\'s goes to the application\'s error handler', async t => {
  const backend = await backendFor(t)
  const { app } = await logged(t, { backend: { servers: [backend.address] } }, undefined, { bodyLimit: 10 })
  let handled = 0
  // Set before the proxy is registered: its context inherits it, as any Fastify plugin's does.
  app.setErrorHandler(async (error, _request, reply) => {
    handled++
    return await reply.code(418).send({ mine: (error as { code?: string }).code })
  })
  await app.register(proxy, { upstream: 'backend' })
  const res = await app.inject({ method: 'POST', url: '/', payload: 'x'.repeat(100), headers: { 'content-type': 'text/plain' } })
  t.equal(res.statusCode, 418)
  t.same(res.json(), { mine: 'FST_ERR_CTP_BODY_TOO_LARGE' })
  t.equal(handled, 1)
})

t.test('the access line carries the peer that answered and its response time (nginx\'s $upstream_addr, $upstream_response_time)', async t => {
  const backend = await backendFor(t, (_req, res) => setTimeout(() => res.end('ok'), 30))
  const { app, lines } = await logged(t, { backend: { servers: ['127.0.0.1:1', backend.address] } }, { nextUpstreamTries: 2 })
  await listening(app)
  t.equal((await app.inject('/')).statusCode, 200)
  t.equal((await app.inject('/')).statusCode, 200)
  const access = lines.filter(line => line.msg === 'request completed')
  t.equal(access.length, 2)
  t.match(access[0], { upstream: 'backend', peer: backend.address, tried: ['127.0.0.1:1'], res: { statusCode: 200 } }, 'the first went to the refused peer first')
  t.notOk('tried' in access[1], 'the second went to the live peer at once')
  for (const line of access) {
    const ms = line.upstreamResponseTime as number
    t.ok(ms >= 25 && ms <= (line.responseTime as number), `upstreamResponseTime ${ms} ms: the backend's 30 ms, within the request's ${String(line.responseTime)} ms`)
  }
  const quiet = await logged(t, { backend: { servers: [backend.address] } }, {}, { disableRequestLogging: true })
  t.equal((await quiet.app.inject('/')).statusCode, 200)
  t.same(quiet.lines.filter(line => line.upstreamResponseTime !== undefined), [], 'no access line, nothing bound')
})

t.test('starts and stops, with who asked, how long it took and how long the first held request waited', { skip }, async t => {
  const sv = await supervisordFor(t, { programs: [{ prefix: 'api', count: 2 }] })
  const { app, lines } = await logged(t, { web: { servers: sv.programs.map(p => p.address), supervisord: sv.option, supervisordName: 'api' } as never }, { holdTimeout: 10_000 })
  await app.register(supervisord, { pollInterval: 0, antiFlap: 0 })
  await listening(app)
  t.equal((await app.inject('/')).statusCode, 200, 'held while api0 started')
  const demand = lines.find(line => line.why === 'demand')
  t.match(demand, { level: INFO, upstream: 'web', program: 'api0', command: 'start', why: 'demand', msg: /^supervisord: started program "api0" \(demand\) in \d+ ms; the first held request waited \d+ ms$/ })
  const waited = demand?.waitedMs as number
  t.ok(waited >= 900 && waited <= (demand?.ms as number) + 200, `waited ${waited} ms: supervisord's startsecs (1 s), about the start's ${String(demand?.ms)} ms`)

  t.match((await app.inject({ method: 'GET', url: '/' })).statusCode, 200)
  await app.supervisord.execute('web', 'start', 1, { wait: true })
  t.match(lines.find(line => line.why === 'operator' && line.command === 'start'), { level: INFO, program: 'api1', msg: /^supervisord: started program "api1" \(operator\) in \d+ ms$/ })
  await app.supervisord.execute('web', 'stop', 1, { wait: true })
  t.match(lines.find(line => line.command === 'stop'), { level: INFO, program: 'api1', why: 'operator', msg: /^supervisord: stopped program "api1" \(operator\) in \d+ ms$/ })
})
