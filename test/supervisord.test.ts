import Fastify from 'fastify'
import t from 'tap'
import registry, { type RegistryOptions } from '../plugins/registry.js'
import supervisord, { type SupervisordBridgeOptions } from '../plugins/supervisord.js'
import { SupervisordClient } from '../lib/supervisord-client.js'
import { freePort, silentServer } from './helpers/backends.js'
import { bridgeApp, getDirect, processes, proxyApp, serving, skip, supervisordFor } from './helpers/supervisord.js'
import { sleep, until } from './helpers/wait.js'

t.test('options are checked at registration, naming upstream and option', async t => {
  const cases: Array<[RegistryOptions['upstreams'], SupervisordBridgeOptions, RegExp]> = [
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'nowhere' } }, {}, /upstream "b": option "supervisord" must be "none", "host:port" or "unix:\/path"/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: '127.0.0.1:9001 admin' } }, {}, /upstream "b": option "supervisord" credentials must be user:pass/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: { address: '127.0.0.1:9001', username: 'admin' } } }, {}, /upstream "b": option "supervisord" needs both "username" and "password"/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 9001 as never } }, {}, /upstream "b": option "supervisord" must be "none", "host:port", "unix:\/path" or \{ address, username, password \}, got a number/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none admin:x' } }, {}, /upstream "b": option "supervisord" is "none": credentials make no sense/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'unix:run/s.sock' } }, {}, /upstream "b": option "supervisord" unix socket path must be absolute/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none', supervisordName: 'a b' } }, {}, /upstream "b": option "supervisordName" must be letters/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none', supervisordName: '' } }, {}, /upstream "b": option "supervisordName" must be a non-empty string/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none', inheritBackendStatus: 'yes' as never } }, {}, /upstream "b": option "inheritBackendStatus" must be true or false/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none', stopOnFailure: true } }, {}, /upstream "b": option "stopOnFailure" needs a supervisord/],
    [{ b: { servers: ['127.0.0.1:1'], supervisordName: 'x' } }, {}, /upstream "b": option "supervisordName" is only read together with option "supervisord"/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none' } }, { pollIntervall: 5 } as never, /supervisord: unknown option "pollIntervall"/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none' } }, { callTimeout: 0 }, /supervisord: option "callTimeout" must be a number from 1/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none' } }, { antiFlap: -1 }, /supervisord: option "antiFlap" must be a number from 0/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none' } }, { readyTimeout: 0 }, /supervisord: option "readyTimeout" must be a number from 1/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none' } }, { startBackoff: { initial: 5000, max: 1000 } }, /option "startBackoff.max" \(1000\) must not be below "startBackoff.initial" \(5000\)/],
    [{ b: { servers: ['127.0.0.1:1'], supervisord: 'none' } }, { startBackoff: { inital: 5 } } as never, /unknown option "startBackoff.inital"/]
  ]
  for (const [upstreams, options, message] of cases) {
    const app = Fastify({ logger: false })
    await app.register(registry, { upstreams })
    await t.rejects(async () => { await app.register(supervisord, options) }, message)
    await app.close()
  }
})

t.test('no error thrown at registration shows a password, whatever the supervisord option\'s shape', async t => {
  const secret = 'Sup3rSecretPw'
  const shapes: unknown[] = [
    `127.0.0.1:9001 admin:${secret} extra`,
    `admin:${secret} 127.0.0.1:9001`,
    `admin:${secret}@127.0.0.1:9001`,
    `http://admin:${secret}@127.0.0.1:9001`,
    `127.0.0.1:9001:${secret}`,
    `unix:relative/${secret}.sock admin:x`,
    `nowhere admin:${secret}`,
    `none admin:${secret}`,
    `127.0.0.1:9001 ${secret}`,
    { address: 9001, username: 'admin', password: secret },
    { address: `admin:${secret}`, username: 'admin', password: secret },
    { address: '127.0.0.1:9001', username: 'admin', pass: secret },
    { address: '127.0.0.1:9001', username: 7, password: secret },
    { address: '127.0.0.1:9001', password: secret },
    ['127.0.0.1:9001', secret],
    { username: 'admin', password: secret }
  ]
  for (const shape of shapes) {
    const app = Fastify({ logger: false })
    await app.register(registry, { upstreams: { b: { servers: ['127.0.0.1:1'], supervisord: shape as never } } })
    const error = await app.register(supervisord).then(() => undefined, (error: Error) => error)
    t.ok(error !== undefined, `refused: ${JSON.stringify(shape).replaceAll(secret, '***')}`)
    const seen = `${error?.message} ${error?.stack} ${JSON.stringify(error)}`
    t.notOk(seen.includes(secret), `no password in: ${error?.message.replaceAll(secret, '***')}`)
    await app.close().catch(() => {})
  }
})

t.test('none mode warns at registration when every peer starts down (requests are never held there)', async t => {
  const { logs } = await bridgeApp(t, {
    cold: { servers: ['127.0.0.1:1', '127.0.0.1:2'], supervisord: 'none' },
    allDown: { servers: [{ address: '127.0.0.1:3', down: true }], supervisord: 'none', inheritBackendStatus: true },
    warm: { servers: ['127.0.0.1:4', { address: '127.0.0.1:5', down: true }], supervisord: 'none', inheritBackendStatus: true }
  })
  t.match(logs, [
    { level: 40, upstream: 'cold', msg: /upstream "cold" is supervisord "none" and every peer starts down.*set inheritBackendStatus/ },
    { level: 40, upstream: 'allDown' }
  ])
  t.equal(logs.length, 2, 'not for an upstream with a peer in rotation')
})

t.test('the sections are claimed, so the registry does not call them typos', async t => {
  const { app } = await bridgeApp(t, { b: { servers: ['127.0.0.1:1'], supervisord: 'none', supervisordName: 'b', inheritBackendStatus: true } })
  await t.resolves(async () => { await app.ready() })
})

t.test('execute: unknown upstream, upstream without supervisord, index out of range, bad command', async t => {
  const { app } = await bridgeApp(t, {
    backend: { servers: ['127.0.0.1:1', '127.0.0.1:2'], supervisord: 'none' },
    plain: { servers: ['127.0.0.1:3'] }
  })
  await t.rejects(app.supervisord.execute('nope', 'start', 0), /unknown upstream "nope"/)
  await t.rejects(app.supervisord.execute('plain', 'start', 0), /upstream "plain" has no "supervisord" option/)
  await t.rejects(app.supervisord.execute('backend', 'start', 2), { code: 'FST_SUPERVISORD_BACKEND_OUT_OF_RANGE', statusCode: 404 })
  await t.rejects(app.supervisord.execute('backend', 'start', 1.5), { code: 'FST_SUPERVISORD_BACKEND_OUT_OF_RANGE' })
  await t.rejects(app.supervisord.execute('backend', 'restart' as never, 0), /command must be "start" or "stop"/)
  t.equal(app.supervisord.manages('backend'), true)
  t.equal(app.supervisord.manages('plain'), false)
  t.equal(app.supervisord.program('backend', 1), 'backend1')
  t.equal(app.supervisord.label('backend'), 'none')
})

t.test('none mode: commands flip rotation at once, with no daemon, and listeners are told', async t => {
  const { app, commands, changes } = await bridgeApp(t, {
    backend: {
      servers: ['127.0.0.1:1', '127.0.0.1:2', { address: '127.0.0.1:3', down: true }],
      supervisord: 'none',
      inheritBackendStatus: true
    }
  }, { antiFlap: 60_000 })
  await app.ready()
  const upstream = app.upstreams.get('backend')
  t.same(processes(app), ['up', 'up', 'down'], 'inherited from the configuration')
  t.equal(upstream.startsOnDemand, false, 'requests are not held in none mode')

  const started = await app.supervisord.execute('backend', 'start', 2)
  t.match(started, { upstream: 'backend', command: 'start', backend: 2, accepted: true, state: 'up', ok: true })
  t.ok(upstream.peers[2].routable)
  t.match(commands, [{ upstream: 'backend', index: 2, command: 'start', ok: true }])
  t.same(changes.filter(c => c.field === 'process').map(c => [c.index, c.from, c.to]), [[2, 'down', 'up']], 'straight to up, nothing in between')

  const noop = await app.supervisord.execute('backend', 'start', 0)
  t.match(noop, { accepted: true, state: 'up', ok: true, reason: 'already up' })
  t.equal(commands.length, 1, 'a no-op is not a command')

  const stopped = await app.supervisord.execute('backend', 'stop', 0, { wait: true })
  t.match(stopped, { backend: 0, accepted: true, state: 'down', ok: true })
  t.notOk(upstream.peers[0].routable)

  const any = await app.supervisord.execute('backend', 'stop', 'any')
  t.match(any, { backend: 2, accepted: true, state: 'down' }, '"any" stops the highest-index running peer')
  const flap = await app.supervisord.execute('backend', 'start', 'any')
  t.match(flap, { backend: 'any', accepted: false, state: null, reason: /anti-flap/ })
  t.ok(flap.retryAfter !== undefined && flap.retryAfter > 59_000 && flap.retryAfter <= 60_000)
  t.same(processes(app), ['down', 'up', 'down'])
  t.same(commands.map(c => `${c.command}${c.index}`), ['start2', 'stop0', 'stop2'])
})

t.test('none mode without inheritBackendStatus: every peer starts down; "any" never stops the last one', async t => {
  const { app } = await bridgeApp(t, { backend: { servers: ['127.0.0.1:1', '127.0.0.1:2'], supervisord: 'none' } }, { antiFlap: 0 })
  t.same(processes(app), ['down', 'down'])
  t.match(await app.supervisord.execute('backend', 'stop', 'any'), { accepted: false, reason: /last one/ })
  t.match(await app.supervisord.execute('backend', 'start', 'any'), { backend: 0, state: 'up' })
  t.match(await app.supervisord.execute('backend', 'start', 'any'), { backend: 1, state: 'up' })
  t.match(await app.supervisord.execute('backend', 'start', 'any'), { accepted: false, reason: /no peer can be started/ })
  app.upstreams.setAdmin('backend', 1, 'maint')
  t.match(await app.supervisord.execute('backend', 'stop', 'any'), { backend: 1, state: 'down' })
  t.match(await app.supervisord.execute('backend', 'start', 'any'), { accepted: false }, 'a peer in maint is not picked by "any"')
  t.match(await app.supervisord.execute('backend', 'start', 1), { backend: 1, state: 'up' }, 'but can be started by its index')
})

// Each subtest has its own supervisord: they run side by side.
t.test('with a real supervisord', { skip, jobs: 4 }, async t => {
  t.test('start and stop by index, waiting for supervisord: starting → up, stopping → down', async t => {
    const sv = await supervisordFor(t)
    const { app, commands, changes } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    await app.ready()
    const upstream = app.upstreams.get('backend')
    t.equal(upstream.startsOnDemand, true)
    t.same(processes(app), ['down', 'down'])

    const accepted = await app.supervisord.execute('backend', 'start', 1)
    t.match(accepted, { backend: 1, program: 'backend1', accepted: true, state: 'starting' })
    t.equal(accepted.ok, undefined, 'not waited for: no outcome yet')
    const waited = await app.supervisord.execute('backend', 'start', 1, { wait: true })
    t.match(waited, { backend: 1, accepted: true, state: 'up', ok: true })
    t.equal(await sv.statename('backend1'), 'RUNNING')
    t.same(await serving(sv.programs[1].address), { status: 200, body: '{"backend":1}' })
    t.ok(await until(() => upstream.peers[1].pid !== null), 'the pid is read after a start')
    t.same([upstream.peers[1].pid], await sv.backendPids())

    t.match(await app.supervisord.execute('backend', 'stop', 1, { wait: true }), { state: 'down', ok: true })
    t.equal(await sv.statename('backend1'), 'STOPPED')
    t.equal(upstream.peers[1].admin, 'ready', 'drained for the stop, ready again once down')
    t.equal(upstream.peers[1].pid, null)
    t.same(changes.filter(c => c.field === 'process').map(c => `${c.from}>${c.to}`), ['down>starting', 'starting>up', 'up>stopping', 'stopping>down'])
    t.match(commands, [{ index: 1, command: 'start', ok: true }, { index: 1, command: 'stop', ok: true }])
  })

  t.test('ALREADY_STARTED on start and NOT_RUNNING on stop count as success', async t => {
    const sv = await supervisordFor(t)
    const { app, logs } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    await app.ready()
    await sv.client.startProcess('backend0')
    t.equal(processes(app)[0], 'down', 'started behind its back, and no poll yet')
    t.match(await app.supervisord.execute('backend', 'start', 0, { wait: true }), { state: 'up', ok: true, reason: /ALREADY_STARTED/ })
    t.equal((await app.supervisord.execute('backend', 'start', 0, { wait: true })).fault, undefined)
    await sv.client.stopProcess('backend0')
    t.match(await app.supervisord.execute('backend', 'stop', 0, { wait: true }), { state: 'down', ok: true, reason: /NOT_RUNNING/ })
    t.same(logs.filter(l => l.level >= 50), [], 'nothing logged as an error')
  })

  t.test('SPAWN_ERROR and BAD_NAME: start fails, the peer stays down, the fault is logged and told', async t => {
    const sv = await supervisordFor(t, { programs: [], broken: ['broken0'] })
    const { app, logs, commands } = await bridgeApp(t, {
      broken: { servers: ['127.0.0.1:1'], supervisord: sv.option },
      ghost: { servers: ['127.0.0.1:2'], supervisord: sv.option, supervisordName: 'nope' }
    })
    const spawn = await app.supervisord.execute('broken', 'start', 0, { wait: true })
    t.match(spawn, { backend: 0, accepted: true, state: 'down', ok: false, fault: 'SPAWN_ERROR', reason: /could not start program "broken0": SPAWN_ERROR/ })
    const bad = await app.supervisord.execute('ghost', 'start', 0, { wait: true })
    t.match(bad, { program: 'nope0', state: 'down', ok: false, fault: 'BAD_NAME' })
    t.match(commands, [{ upstream: 'broken', command: 'start', ok: false, fault: 'SPAWN_ERROR' }, { upstream: 'ghost', ok: false, fault: 'BAD_NAME' }])
    t.match(logs.filter(l => l.level === 50), [{ fault: 'SPAWN_ERROR', program: 'broken0' }, { fault: 'BAD_NAME', program: 'nope0' }])
    const stop = await app.supervisord.execute('ghost', 'stop', 0, { wait: true })
    t.match(stop, { state: 'down', ok: true, reason: 'already down' }, 'a stop of a down peer sends nothing')
    await app.ready()
    await app.supervisord.poll()
    const missing = logs.filter(l => l.level === 40 && /has no program "nope0"/.test(l.msg))
    t.equal(missing.length, 1, 'a program missing from supervisord is warned about once, not at every poll')
  })

  t.test('"any": lowest down peer starts, highest running stops, one at a time, with an anti-flap window', async t => {
    // The window must outlast a start even on a loaded machine (it counts from the command's acceptance,
    // and is checked once the start has ended): quick starts (startsecs 0; readiness still waits for the port).
    const sv = await supervisordFor(t, { programs: [{ count: 3, startsecs: 0 }] })
    const { app } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } }, { antiFlap: 3000 })
    const afterWindow = async (refused: { retryAfter?: number }): Promise<void> => {
      await sleep((refused.retryAfter ?? 0) + 20)
    }
    t.match(await app.supervisord.execute('backend', 'start', 'any'), { backend: 0, accepted: true, state: 'starting' })
    t.match(await app.supervisord.execute('backend', 'start', 'any'), { backend: 'any', accepted: false, reason: /has not ended yet/ })
    t.ok(await until(() => processes(app)[0] === 'up'))
    const early = await app.supervisord.execute('backend', 'start', 'any')
    t.match(early, { accepted: false, reason: /anti-flap/ })
    t.ok(early.retryAfter !== undefined && early.retryAfter > 0 && early.retryAfter < 3000)
    await afterWindow(early)
    t.match(await app.supervisord.execute('backend', 'start', 'any', { wait: true }), { backend: 1, state: 'up', ok: true })
    t.same(processes(app), ['up', 'up', 'down'])
    const flap = await app.supervisord.execute('backend', 'stop', 'any')
    t.match(flap, { accepted: false, reason: /anti-flap/ }, 'the window holds between a start and a stop too')
    await afterWindow(flap)
    t.match(await app.supervisord.execute('backend', 'stop', 'any', { wait: true }), { backend: 1, state: 'down', ok: true })
    t.same(processes(app), ['up', 'down', 'down'])
    t.equal(await sv.statename('backend1'), 'STOPPED')
    t.equal(await sv.statename('backend0'), 'RUNNING')
  })

  t.test('the poll notices a backend killed outside, and one started outside (with its pid)', async t => {
    const sv = await supervisordFor(t)
    const { app } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } }, { pollInterval: 100 })
    await app.ready()
    const peers = app.upstreams.get('backend').peers
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    const [pid] = await sv.backendPids()
    process.kill(pid, 'SIGKILL')
    t.ok(await until(() => peers[0].process === 'down', 15_000), 'peer 0 is down after its process was killed')
    t.equal(peers[0].pid, null)

    await sv.client.startProcess('backend1')
    t.ok(await until(() => peers[1].process === 'up', 15_000), 'peer 1 is up after a start outside the proxy')
    t.equal(peers[1].pid, (await sv.client.getProcessInfo('backend1')).pid)
  })

  t.test('the first poll, at start-up, reads what is already running', async t => {
    const sv = await supervisordFor(t)
    await sv.client.startProcess('backend1')
    const { app } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    t.same(processes(app), ['down', 'down'])
    await app.ready()
    t.ok(await until(() => processes(app)[1] === 'up', 15_000), 'up once it accepts connections (RUNNING can come first)')
    t.same(processes(app), ['down', 'up'])
  })

  t.test('50 demands at once start exactly one peer, the lowest down', async t => {
    const sv = await supervisordFor(t)
    const { app, commands } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    await app.ready()
    const calls: string[] = []
    const original = SupervisordClient.prototype.startProcess
    SupervisordClient.prototype.startProcess = async function (this: SupervisordClient, name: string, wait?: boolean) {
      // Subtests run side by side: count only the calls to this test's supervisord.
      if (this.label === sv.address) calls.push(name)
      return await original.call(this, name, wait)
    }
    t.teardown(() => { SupervisordClient.prototype.startProcess = original })
    const upstream = app.upstreams.get('backend')
    for (let i = 0; i < 50; i++) upstream.demand()
    t.ok(await until(() => commands.length > 0, 15_000))
    for (let i = 0; i < 50; i++) upstream.demand()
    await sleep(100)
    t.same(calls, ['backend0'], 'one startProcess, and none once a peer is routable')
    t.same(processes(app), ['up', 'down'])
    t.equal(await sv.statename('backend1'), 'STOPPED')
  })

  t.test('stop drains: supervisord is asked only when the in-flight requests are done', async t => {
    const sv = await supervisordFor(t)
    const { app } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    const peer = app.upstreams.get('backend').peers[0]
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    peer.acquire()
    const stopping = app.supervisord.execute('backend', 'stop', 0, { wait: true })
    t.ok(await until(() => peer.process === 'stopping' && peer.admin === 'drain'), 'the stop drains first')
    t.notOk(peer.routable)
    t.equal(await sv.statename('backend0'), 'RUNNING', 'not asked yet: a request is in flight')
    peer.release()
    t.match(await stopping, { ok: true, state: 'down' })
    t.equal(peer.admin, 'ready')
    t.equal(await sv.statename('backend0'), 'STOPPED')
  })

  t.test('drainTimeout bounds the wait for in-flight requests', async t => {
    const sv = await supervisordFor(t)
    const { app, logs } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } }, { drainTimeout: 200 })
    const peer = app.upstreams.get('backend').peers[0]
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    peer.acquire()
    const started = Date.now()
    t.match(await app.supervisord.execute('backend', 'stop', 0, { wait: true }), { ok: true, state: 'down' })
    t.ok(Date.now() - started >= 200)
    t.match(logs, [{ level: 40, msg: /drainTimeout \(200 ms\) passed/ }])
    peer.release()
  })

  t.test('a start during a stop\'s drain replaces it: nothing is stopped, the peer is up and ready', async t => {
    const sv = await supervisordFor(t)
    const { app, commands } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    const peer = app.upstreams.get('backend').peers[0]
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    const pids = await sv.backendPids()
    peer.acquire()
    const stop = app.supervisord.execute('backend', 'stop', 0, { wait: true })
    t.ok(await until(() => peer.admin === 'drain'), 'the stop is draining')
    const start = await app.supervisord.execute('backend', 'start', 0, { wait: true })
    t.match(await stop, { ok: false, fault: 'CANCELLED' })
    t.match(start, { ok: true, state: 'up' })
    t.equal(peer.admin, 'ready')
    t.ok(peer.routable)
    t.same(await sv.backendPids(), pids, 'the same process kept running')
    t.match(commands.slice(-2), [{ command: 'stop', ok: false, fault: 'CANCELLED' }, { command: 'start', ok: true }])
    peer.release()
  })

  t.test('through the proxy: a slow request in flight completes with 200 before its peer is stopped', async t => {
    const sv = await supervisordFor(t, { programs: [{ count: 2, slowMs: 700 }] })
    const { app, changes } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    await serving(sv.programs[0].address)
    const peer = app.upstreams.get('backend').peers[0]
    const order: string[] = []
    const request = app.inject('/').then(res => { order.push('response'); return res })
    t.ok(await until(() => peer.inflight === 1, 10_000), 'the request is in flight')
    const stop = app.supervisord.execute('backend', 'stop', 0, { wait: true }).then(result => { order.push('stopped'); return result })
    const res = await request
    t.equal(res.statusCode, 200)
    t.same(res.json(), { backend: 0 })
    t.match(await stop, { ok: true, state: 'down' })
    t.same(order, ['response', 'stopped'])
    t.match(changes.filter(c => c.field === 'admin').map(c => c.to), ['drain', 'ready'])
    t.equal(await sv.statename('backend0'), 'STOPPED')
  })

  t.test('through the proxy: 50 requests on a cold upstream are held, one peer is started, all get 200', async t => {
    // RUNNING comes after startsecs, not when the program listens: 2 s leaves room on a loaded machine.
    const sv = await supervisordFor(t, { programs: [{ count: 2, startsecs: 2 }] })
    const { app, commands } = await proxyApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } })
    await app.ready()
    const responses = await Promise.all(Array.from({ length: 50 }, async () => await app.inject('/')))
    t.same(responses.map(r => r.statusCode), Array(50).fill(200))
    t.ok(responses.every(r => r.body === '{"backend":0}'))
    t.match(commands, [{ command: 'start', index: 0, ok: true }])
    t.equal(commands.length, 1, 'exactly one start')
    t.equal(await sv.statename('backend1'), 'STOPPED')
  })

  t.test('through the proxy: a start that fails answers the held request 502 with the code; the fault stays in the log', async t => {
    const sv = await supervisordFor(t, { programs: [], broken: ['broken0'] })
    const { app, logs } = await proxyApp(t, { broken: { servers: ['127.0.0.1:1'], supervisord: sv.option } })
    await app.ready()
    const res = await app.inject('/')
    t.equal(res.statusCode, 502)
    t.same(res.json(), { statusCode: 502, code: 'FST_SUPERVISORD_START_FAILED', error: 'Bad Gateway', message: 'Upstream "broken" could not serve the request (the reason is in the gateway\'s log)' })
    t.notMatch(res.body, /SPAWN_ERROR|broken0|admin|127\.0\.0\.1/)
    t.match(logs, [{ level: 50, fault: 'SPAWN_ERROR', program: 'broken0', msg: /could not start program "broken0": SPAWN_ERROR/ }], 'the reason is in the log')
  })

  t.test('stopOnFailure: a passive failure stops the peer through supervisord', async t => {
    const sv = await supervisordFor(t)
    const { app } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option, stopOnFailure: true } })
    const peer = app.upstreams.get('backend').peers[0]
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    peer.recordFailure('connection refused')
    t.ok(await until(() => peer.process === 'down', 15_000))
    t.equal(await sv.statename('backend0'), 'STOPPED')
  })

  t.test('supervisord killed while the app runs: commands fail UNREACHABLE, running backends keep serving', async t => {
    const sv = await supervisordFor(t)
    const { app, commands, logs } = await bridgeApp(t, { backend: { servers: sv.programs.map(p => p.address), supervisord: sv.option } }, { pollInterval: 100 }, 'debug')
    await app.ready()
    await app.supervisord.execute('backend', 'start', 0, { wait: true })
    t.same(await serving(sv.programs[0].address), { status: 200, body: '{"backend":0}' })
    const failedPolls = (level = 20): number => logs.filter(l => l.level === level && /could not getAllProcessInfo: unreachable/.test(l.msg)).length
    t.equal(failedPolls(), 0)
    process.kill(sv.pid, 'SIGKILL')
    t.ok(await until(async () => 'error' in await getDirect(`127.0.0.1:${sv.port}`), 3000), 'supervisord is gone')
    const result = await app.supervisord.execute('backend', 'start', 1, { wait: true })
    t.match(result, { ok: false, fault: 'UNREACHABLE', state: 'down', reason: /unreachable/ })
    t.match(commands.at(-1), { command: 'start', index: 1, ok: false, fault: 'UNREACHABLE' })
    t.ok(await until(() => failedPolls() >= 2, 3000), 'polls go on, and fail')
    t.equal(failedPolls(40), 1, 'warned once, the next ones at debug')
    t.equal(processes(app)[0], 'up', 'a failed poll changes nothing')
    t.same(await getDirect(sv.programs[0].address), { status: 200, body: '{"backend":0}' })
  })
})

t.test('a hanging supervisord: commands fail with TIMEOUT within callTimeout, close does not wait for them', async t => {
  const silent = await silentServer(t)
  const address = `127.0.0.1:${silent.port}`
  const { app, commands } = await bridgeApp(t, { backend: { servers: ['127.0.0.1:1', '127.0.0.1:2'], supervisord: address } }, { callTimeout: 300 })
  // Bounds for a loaded machine, far below a hang: without the timeout these calls would never end.
  const started = Date.now()
  await app.ready()
  t.ok(Date.now() - started < 5000, 'the start-up poll gives up within callTimeout')
  const result = await app.supervisord.execute('backend', 'start', 0, { wait: true })
  t.match(result, { ok: false, fault: 'TIMEOUT', state: 'down', reason: /no answer within 300 ms/ })
  t.match(commands, [{ command: 'start', ok: false, fault: 'TIMEOUT' }])

  const slow = await bridgeApp(t, { backend: { servers: ['127.0.0.1:1'], supervisord: address } }, { callTimeout: 20_000 })
  const connected = silent.connections
  const pending = slow.app.supervisord.execute('backend', 'start', 0, { wait: true })
  t.ok(await until(() => silent.connections > connected), 'the call is in flight')
  const closing = Date.now()
  await slow.app.close()
  t.ok(Date.now() - closing < 5000, 'close aborts the call in flight (callTimeout is 20 s)')
  t.match(await pending, { ok: false, fault: 'ABORTED' })
  t.same(slow.logs.filter(l => l.level >= 50), [], 'an abort at close is not logged as an error')
})

t.test('an unreachable supervisord at start-up is logged, not fatal', async t => {
  const port = await freePort()
  const { app, logs } = await bridgeApp(t, { backend: { servers: ['127.0.0.1:1'], supervisord: `127.0.0.1:${port} admin:secret` } }, {}, 'debug')
  await t.resolves(async () => { await app.ready() })
  const polls = () => logs.filter(l => /could not getAllProcessInfo: unreachable \(ECONNREFUSED\)/.test(l.msg))
  t.match(polls(), [{ level: 40 }])
  t.notMatch(JSON.stringify(logs), /secret/, 'credentials are never logged')
  app.upstreams.setAdmin('backend', 0, 'maint')
  app.upstreams.get('backend').demand()
  app.upstreams.get('backend').demand()
  t.ok(await until(() => polls().length === 2), 'a demand with nothing to start reads supervisord again, once')
  t.match(polls()[1], { level: 20 }, 'the same fault again: at debug')
  await sleep(100)
  t.equal(polls().length, 2, 'at most one such read a second')
})
