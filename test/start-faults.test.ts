import { readFile } from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import proxy from '../plugins/proxy.js'
import { supervisordRoutes } from '../routes/supervisord-routes.js'
import { clientFor, listening, loadFor } from './helpers/gateway.js'
import { bridgeApp, getDirect, processes, proxyApp, rpcCounter, serving, skip, supervisordFor } from './helpers/supervisord.js'
import { until } from './helpers/wait.js'
import { scalerOnFakeClock } from './helpers/clock.js'

// The faults of on-demand start, each against a real supervisord: a broken
// program, a drained peer, a wrong password, a missing binary, a program that
// exits at once, a backend that binds late, a start by someone else, a stop
// that outlasts its call, supervisord killed under load.

/** Count of `supervisor.<method>` calls recorded. */
const callsOf = (calls: string[], method: string): number => calls.filter(call => call === `supervisor.${method}`).length

t.test('start faults with a real supervisord', { skip, jobs: 3 }, async t => {
  t.test('a broken backend0 and a good backend1: held requests are served by backend1, backend0 is tried once', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2, faults: { 0: 'exit' } }] })
    const counter = await rpcCounter(t, sv)
    const { app, commands, logs } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: { ...sv.option, address: counter.address } } },
      {}, { holdTimeout: 15_000 })
    await app.ready()
    const responses = await Promise.all(Array.from({ length: 20 }, async () => await app.inject('/')))
    t.same(responses.map(r => r.statusCode), Array(20).fill(200), 'every held request served')
    t.ok(responses.every(r => r.body === '{"backend":1}'), 'by backend1')
    t.match(commands, [{ index: 0, command: 'start', ok: false, fault: 'SPAWN_ERROR' }, { index: 1, command: 'start', ok: true }])
    t.same(counter.calls.filter(c => c === 'supervisor.startProcess').length, 2, 'one start of each program')
    const peers = app.upstreams.get('backend').peers
    t.match(peers[0].backoff, { step: 1, cause: 'program', reason: /SPAWN_ERROR/ }, 'backend0 is in back-off, visible on its peer')
    t.equal(peers[1].backoff, null)
    t.match(logs, [{ level: 50, program: 'backend0', fault: 'SPAWN_ERROR', backoffMs: 1000, step: 1 }], 'one log line for the failed start')
  })

  t.test('a drained peer is never started on demand: the next ready one is', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 3 }] })
    const { app } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    await app.ready()
    app.upstreams.setAdmin('backend', 0, 'drain')
    app.upstreams.setAdmin('backend', 1, 'maint')
    const res = await app.inject('/')
    t.equal(res.statusCode, 200)
    t.equal(res.body, '{"backend":2}')
    t.same(processes(app), ['down', 'down', 'up'])
    t.equal(await sv.statename('backend0'), 'STOPPED')
    t.equal(await sv.statename('backend1'), 'STOPPED')
  })

  t.test('a wrong password under load: a handful of supervisord calls and log lines, 503s with Retry-After', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 3 }], password: 'not-the-one-the-gateway-has' })
    const counter = await rpcCounter(t, sv)
    const { app, logs, changes } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: { ...sv.option, address: counter.address } } })
    const base = await listening(app)
    const dispatcher = clientFor(t)
    const { statuses, retryAfter } = await loadFor(base, dispatcher, 4, 3000)
    const warned = logs.filter(line => line.level >= 40)
    t.ok(statuses.length > 20, `the clients were answered fast (${statuses.length} answers)`)
    t.ok(statuses.every(s => s === 502 || s === 503), 'only 502 (a start failed) and 503 (back-off)')
    t.ok(retryAfter.length > 0 && retryAfter.every(value => Number(value) >= 1 && Number(value) <= 60), `503s carry the back-off's Retry-After (${[...new Set(retryAfter)].join(', ')})`)
    t.ok(counter.calls.length <= 5, `at most 5 supervisord calls in 3 s (${counter.calls.join(', ')})`)
    t.ok(warned.length <= 10, `at most 10 log lines at warn or above (${warned.length})`)
    t.match(warned.find(line => line.fault === 'UNAUTHORIZED' && line.level === 50), { msg: /rejected the credentials.*no start of any program of supervisord/, backoffMs: 1000 })
    t.notMatch(JSON.stringify(logs), /not-the-one|admin:super|"password"|authorization/i, 'no password in the log')
    t.ok(changes.some(c => c.field === 'backoff' && c.index === 2 && c.to === 1), 'every program of that supervisord backs off, and it is announced')
  })

  t.test('a missing binary under load: starts bounded by the back-off', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2, faults: { 0: 'missing', 1: 'missing' } }] })
    const counter = await rpcCounter(t, sv)
    const { app, logs } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: { ...sv.option, address: counter.address } } })
    const base = await listening(app)
    const { statuses } = await loadFor(base, clientFor(t), 4, 3000)
    const starts = callsOf(counter.calls, 'startProcess')
    t.ok(starts >= 2, `each program was tried (${starts} starts)`)
    // NO_FILE comes back at once: without a back-off, a start per request. With it: 1 s, then 2 s.
    t.ok(starts <= 6, `at most 3 starts per program in 3 s (${starts})`)
    t.ok(statuses.every(s => s === 502 || s === 503), 'answered 502/503, never held for holdTimeout')
    t.ok(logs.filter(line => line.level >= 40).length <= starts + 1, 'one log line per failed start (and the start-up poll)')
  })

  t.test('a program that exits at once, under load: respawned only as the back-off allows, not per request', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 1, faults: { 0: 'exit' } }] })
    const { app, logs } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    const base = await listening(app)
    const { statuses } = await loadFor(base, clientFor(t), 4, 4500)
    // supervisord takes about a second to call a start failed: driven by traffic, about four spawns
    // in 4.5 s; with the back-off (1 s, then 2 s) two, three at most.
    const spawned = (await readFile(path.join(sv.dir, 'supervisord.log'), 'utf8')).match(/spawned: /g)?.length ?? 0
    t.ok(spawned >= 1 && spawned <= 3, `supervisord spawned it at most 3 times in 4.5 s (${spawned})`)
    t.ok(statuses.some(s => s === 503), 'requests are refused at once during the back-off')
    t.ok(statuses.every(s => s === 502 || s === 503), 'answered 502/503')
    t.equal(logs.filter(line => line.level >= 40 && line.fault === 'SPAWN_ERROR').length, spawned, 'one log line per failed start')
  })

  t.test('a backend that listens 2.5 s after its start: held requests wait for it, none gets 502', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 1, listenAfterMs: 2500, startsecs: 1 }] })
    const { app, changes } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } }, {}, { holdTimeout: 15_000 })
    await app.ready()
    const responses = await Promise.all(Array.from({ length: 20 }, async () => await app.inject('/')))
    t.same(responses.map(r => r.statusCode), Array(20).fill(200))
    const up = changes.find(c => c.field === 'process' && c.to === 'up')
    const asked = changes.find(c => c.field === 'process' && c.to === 'starting')
    t.ok(up !== undefined && asked !== undefined && up.at - asked.at >= 2000, 'up only once it listened, not at RUNNING (1 s)')
  })

  t.test('a program that runs but never accepts a connection fails its start (NOT_READY), is stopped, and the next one serves', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2, listenAfterMs: { 0: 600_000 } }] })
    const { app, logs, commands } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } },
      { readyTimeout: 1500 }, { holdTimeout: 15_000 })
    await app.ready()
    const responses = await Promise.all(Array.from({ length: 5 }, async () => await app.inject('/')))
    t.same(responses.map(r => r.body), Array(5).fill('{"backend":1}'))
    t.match(commands, [{ index: 0, ok: false, fault: 'NOT_READY' }, { index: 1, ok: true }])
    t.match(logs, [{ level: 50, program: 'backend0', fault: 'NOT_READY', msg: /did not accept a connection within readyTimeout \(1500 ms\)/ }])
    t.ok(await until(async () => await sv.statename('backend0') === 'STOPPED', 5000), 'the program that never answered was stopped')
  })

  t.test('a program found RUNNING by a poll is starting until its port answers', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 1, listenAfterMs: 4000, startsecs: 1 }] })
    const { app } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    await sv.client.startProcess('backend0')
    await app.ready()
    t.equal(processes(app)[0], 'starting', 'RUNNING, but not listening yet')
    t.ok(await until(() => processes(app)[0] === 'up', 15_000), 'up once it listens, without another poll')
    t.equal((await getDirect(sv.programs[0].address) as { status: number }).status, 200)
  })

  t.test('ALREADY_STARTED while supervisord says STARTING is a start under way: waited for until RUNNING', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 1, startsecs: 3 }] })
    const { app } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    await app.ready()
    // Another gateway, or supervisorctl, starts it first.
    await sv.client.startProcess('backend0', false)
    const result = await app.supervisord.execute('backend', 'start', 0, { wait: true })
    t.match(result, { ok: true, state: 'up', reason: /ALREADY_STARTED/ })
    t.equal(await sv.statename('backend0'), 'RUNNING', 'not up before supervisord said RUNNING')
    t.equal((await app.inject('/')).statusCode, 200)
  })

  t.test('the first GET after the last running backend died is held while it is started again', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 1 }] })
    const { app } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } }, {}, { holdTimeout: 15_000 })
    await app.ready()
    t.equal((await app.inject('/')).statusCode, 200)
    const [pid] = await sv.backendPids()
    process.kill(pid, 'SIGKILL')
    t.ok(await until(async () => 'error' in await getDirect(sv.programs[0].address), 3000), 'backend0 is gone, and no poll told the gateway')
    const res = await app.inject('/')
    t.equal(res.statusCode, 200, `held, not ${res.statusCode}: ${res.body}`)
    t.equal(res.body, '{"backend":0}')
    t.not((await sv.backendPids())[0], pid, 'served by a new process')
  })

  t.test('a stop that outlasts callTimeout keeps the peer out (stopping) until supervisord\'s state is read again', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2, stopDelayMs: 3000, startsecs: 0 }] })
    const { app, logs } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } }, { callTimeout: 1500, pollInterval: 500 })
    await app.ready()
    const peers = app.upstreams.get('backend').peers
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    await app.supervisord.execute('backend', 'start', 1, { wait: true })
    t.same(await serving(sv.programs[1].address), { status: 200, body: '{"backend":1}' }, 'backend1 serves')
    t.ok(await until(() => peers[1].routable), 'and is in rotation')
    const stop = await app.supervisord.execute('backend', 'stop', 1, { wait: true })
    t.match(stop, { ok: false, fault: 'TIMEOUT', state: 'stopping' })
    t.match(logs, [{ level: 50, fault: 'TIMEOUT', program: 'backend1' }])
    t.same(await serving(sv.programs[1].address), { status: 200, body: '{"backend":1}' }, 'backend1 still serves: supervisord is still stopping it')
    t.notOk(peers[1].routable, 'but it is out of rotation')
    const served = await Promise.all(Array.from({ length: 10 }, async () => (await app.inject('/')).body))
    t.same(served, Array(10).fill('{"backend":0}'), 'every request went to backend0')
    t.ok(await until(() => peers[1].process === 'down', 15_000), 'down once a read says STOPPED')
    t.equal(await sv.statename('backend1'), 'STOPPED')
  })

  t.test('supervisord SIGKILLed under load: running peers keep serving, starts back off, commands fail 503 with the reason in the log', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2 }, { prefix: 'cold', count: 2 }] })
    const cold = sv.programs.filter(p => p.name.startsWith('cold'))
    const { app, logs } = await proxyApp(t, {
      backend: { servers: sv.programs.slice(0, 2).map(p => p.address), supervisord: sv.option },
      cold: { servers: cold.map(p => p.address), supervisord: sv.option }
    }, { pollInterval: 200 })
    await app.register(proxy, { upstream: 'cold', prefix: '/cold' })
    await app.register(supervisordRoutes, { upstream: 'backend' })
    const base = await listening(app)
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    process.kill(sv.pid, 'SIGKILL')
    t.ok(await until(async () => 'error' in await getDirect(`127.0.0.1:${sv.port}`), 3000), 'supervisord is gone')
    const warnedBefore = logs.filter(line => line.level >= 40).length
    const dispatcher = clientFor(t)
    const [served, coldStarts] = await Promise.all([loadFor(base, dispatcher, 4, 2500), loadFor(`${base}/cold/`, dispatcher, 2, 2500)])
    const command = await app.inject({ method: 'POST', url: '/_supervisord/start/1?wait=1' })
    t.ok(served.statuses.length > 20 && served.statuses.every(s => s === 200),
      `every request to the running peer was served (${served.statuses.filter(s => s !== 200).length} of ${served.statuses.length} not)`)
    t.ok(coldStarts.statuses.every(s => s === 502 || s === 503), 'requests that need a start get 502 (that start failed), then 503')
    t.ok(coldStarts.retryAfter.length > 0 && coldStarts.retryAfter.every(value => Number(value) >= 1), 'with the back-off\'s Retry-After')
    const warned = logs.filter(line => line.level >= 40).length - warnedBefore
    t.ok(warned <= 8, `a handful of log lines at warn or above under load, not one per request or per poll (${warned})`)
    t.equal(command.statusCode, 503)
    t.equal(command.json().code, 'FST_SUPERVISORD_UNAVAILABLE')
    t.ok(logs.some(line => line.level >= 50 && line.program === 'backend1' && /unreachable \(ECONNREFUSED\)/.test(line.msg)), 'the reason is in the log')
    t.equal(processes(app)[0], 'up', 'failed polls changed nothing')
  })
})

t.test('an operator\'s start pins the peer: the scaler leaves it alone until it is released', async t => {
  const { app, changes } = await bridgeApp(t, {
    backend: { servers: ['127.0.0.1:1', '127.0.0.1:2'], supervisord: 'none', scale: { window: 100, loadThreshold: 1e9 } }
  }, {}, 'info')
  const clock = scalerOnFakeClock(app)
  await app.register(supervisordRoutes, { upstream: 'backend' })
  await app.ready()
  const peer = app.upstreams.get('backend').peers[1]
  t.equal((await app.inject({ method: 'POST', url: '/_supervisord/start/1' })).statusCode, 200)
  t.equal(peer.pin, 'up')
  t.match(changes.find(c => c.field === 'pin'), { index: 1, from: 'none', to: 'up', reason: 'operator start' }, 'the pin is announced')
  clock.tick(600)
  t.ok(await until(() => app.upstreams.get('backend').peers[0].process === 'down'), 'an idle window stops the peer not pinned')
  clock.tick(600)
  t.equal(peer.process, 'up', 'six more idle windows: the pinned one is not stopped')
  const released = await app.inject({ method: 'POST', url: '/_supervisord/release/1' })
  t.same(released.json(), { upstream: 'backend', backend: 1, pin: 'none' })
  t.equal(peer.process, 'up', 'released: up until the window ends')
  clock.tick(100)
  t.ok(await until(() => peer.process === 'down'), 'the next idle window stops it')
})
