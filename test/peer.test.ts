import t from 'tap'
import { Registry } from '../lib/registry.js'
import type { UpstreamOptions } from '../lib/upstream.js'
import { CHECK_OUTCOMES, FAILURE_KINDS, STATUS_CLASSES, checkOutcome, statusClassIndex, type CheckResult, type Peer, type PeerChange } from '../lib/peer.js'
import { until } from './helpers/wait.js'

// The peer's own rules, read through the registry that owns it: what makes it
// routable, what is announced, nginx's passive accounting, the check runs.

function upstreamWith (options: Partial<UpstreamOptions> & Pick<UpstreamOptions, 'servers'>) {
  const registry = new Registry({ upstreams: { u: options } })
  const changes: PeerChange[] = []
  registry.on('change', change => changes.push(change))
  t.teardown(() => registry.close())
  return { upstream: registry.get('u'), changes }
}

function peerWith (server: object = {}, extra: string[] = []): { peer: Peer, changes: PeerChange[] } {
  const { upstream, changes } = upstreamWith({ servers: [{ address: '127.0.0.1:1', ...server }, ...extra] })
  return { peer: upstream.peers[0], changes }
}

const check = (ok: boolean, at = 0): CheckResult => ({ ok, reason: ok ? 'OK' : 'timed out', latencyMs: 1, at })

t.test('routable: up (or starting with a passed check), ready, not unhealthy, no passive failure', async t => {
  const { peer } = peerWith({}, ['127.0.0.1:2'])
  t.ok(peer.routable, 'a new peer: up, ready, health unknown')
  for (const admin of ['drain', 'maint'] as const) {
    peer.setAdmin(admin)
    t.notOk(peer.routable, admin)
    peer.setAdmin('ready')
  }
  t.ok(peer.routable)
  peer.setHealth('unhealthy')
  t.notOk(peer.routable, 'unhealthy')
  peer.setHealth('healthy')
  t.ok(peer.routable, 'healthy')
  for (const process of ['down', 'stopping'] as const) {
    peer.setProcess(process)
    t.notOk(peer.routable, `${process}, even healthy`)
  }
  peer.setProcess('starting')
  t.ok(peer.routable, 'starting and healthy')
  peer.setHealth('unknown')
  t.notOk(peer.routable, 'starting, no check passed yet')
  peer.setProcess('up')
  peer.recordFailure('ECONNREFUSED')
  t.equal(peer.passive, 'failed')
  t.notOk(peer.routable, 'a passive failure')
})

t.test('running: up or starting is what scaling counts as running', async t => {
  const { peer } = peerWith()
  const running = (): Record<string, boolean> => Object.fromEntries((['up', 'starting', 'stopping', 'down'] as const).map(state => {
    peer.setProcess(state)
    return [state, peer.running]
  }))
  t.same(running(), { up: true, starting: true, stopping: false, down: false })
})

t.test('every change is announced once, with what it was, what it is, why and when; a repeated state is not a change', async t => {
  const { peer, changes } = peerWith()
  const before = Date.now()
  peer.setProcess('down', 'stopped')
  peer.setProcess('down', 'stopped again')
  peer.setAdmin('maint', 'operator')
  peer.setAdmin('maint')
  peer.setHealth('healthy', 'OK')
  peer.setHealth('healthy')
  peer.setWeight(3)
  peer.setWeight(3)
  peer.setPin('down', 'operator stop')
  peer.setPin('down')
  t.match(changes, [
    { upstream: 'u', index: 0, field: 'process', from: 'up', to: 'down', reason: 'stopped' },
    { field: 'admin', from: 'ready', to: 'maint', reason: 'operator' },
    { field: 'health', from: 'unknown', to: 'healthy', reason: 'OK' },
    { field: 'weight', from: 1, to: 3 },
    { field: 'pin', from: 'none', to: 'down', reason: 'operator stop' }
  ])
  t.equal(changes.length, 5)
  t.ok(changes.every(change => change.at >= before && change.at <= Date.now()), 'stamped when it happened')
  t.equal(peer.lastChange, changes[4].at, 'lastChange is the last announced change')
  t.same([peer.process, peer.admin, peer.health, peer.weight, peer.pin], ['down', 'maint', 'healthy', 3, 'down'])
  peer.setPid(1234)
  t.equal(peer.pid, 1234)
  peer.setPid(null)
  t.equal(peer.pid, null)
  t.equal(changes.length, 5, 'the pid is read, not announced')
})

t.test('start back-off: announced by step, kept as a copy, over when its time has come', async t => {
  const { peer, changes } = peerWith()
  t.equal(peer.backoff, null)
  t.ok(peer.startAllowed(), 'no back-off: a start may be tried')
  const backoff = { step: 1, until: 5000, reason: 'SPAWN_ERROR', cause: 'program' as const }
  peer.setBackoff(backoff)
  backoff.until = 0
  t.equal(peer.backoff?.until, 5000, 'the caller\'s object changing later does not move it')
  t.notOk(peer.startAllowed(4999), 'before its end')
  t.ok(peer.startAllowed(5000), 'from its end on')
  peer.setBackoff({ step: 1, until: 5000, reason: 'SPAWN_ERROR again', cause: 'program' })
  t.equal(changes.length, 1, 'the same step and end: not a change')
  peer.setBackoff({ step: 1, until: 6000, reason: 'later', cause: 'program' })
  peer.setBackoff({ step: 2, until: 6000, reason: 'FATAL', cause: 'supervisord' })
  peer.setBackoff(null)
  peer.setBackoff(null)
  t.match(changes, [
    { field: 'backoff', from: 0, to: 1, reason: 'SPAWN_ERROR' },
    { field: 'backoff', from: 1, to: 1, reason: 'later' },
    { field: 'backoff', from: 1, to: 2, reason: 'FATAL' },
    { field: 'backoff', from: 2, to: 0, reason: 'start back-off over' }
  ])
  t.equal(changes.length, 4)
})

t.test('checks: the last `history` kept oldest first, rise and fall count runs, a process going down starts them again', async t => {
  const { peer } = peerWith()
  t.equal(peer.lastCheck, null)
  t.same([peer.rise, peer.fall], [0, 0])
  const outcomes = [true, true, false, false, false, true]
  outcomes.forEach((ok, i) => peer.recordCheck(check(ok, i), 4))
  t.same(peer.checks.map(c => c.at), [2, 3, 4, 5], 'at most 4, the newest last')
  t.equal(peer.lastCheck?.at, 5)
  t.same([peer.rise, peer.fall], [1, 0], 'a pass ends the run of failures')
  peer.recordCheck(check(false, 6), 4)
  peer.recordCheck(check(false, 7), 4)
  t.same([peer.rise, peer.fall], [0, 2])
  peer.recordCheck(check(true, 8), 1)
  t.same(peer.checks.map(c => c.at), [8], 'a smaller history trims at once')
  peer.resetCheckRuns()
  t.same([peer.rise, peer.fall], [0, 0])
})

t.test('in flight: acquire and release count requests; the balancer hears every move', async t => {
  const heard: number[] = []
  const { upstream } = upstreamWith({
    servers: ['127.0.0.1:1'],
    balancer: { name: 'spy', pick: up => up.peers[0], inflightChanged: peer => { heard.push(peer.inflight) } }
  })
  const peer = upstream.peers[0]
  peer.acquire()
  peer.acquire()
  peer.release()
  t.same([peer.inflight, peer.requests], [1, 2])
  t.same(heard, [1, 2, 1])
})

t.test('whenIdle: at once when idle, else resolved by the last release or an abort', async t => {
  const { peer } = peerWith()
  await peer.whenIdle()
  t.pass('idle: at once')
  peer.acquire()
  peer.acquire()
  let drained = false
  const both = peer.whenIdle().then(() => { drained = true })
  peer.release()
  await new Promise(resolve => setImmediate(resolve))
  t.notOk(drained, 'one of two released: still waiting')
  peer.release()
  await both
  peer.acquire()
  const controller = new AbortController()
  let abortedDone = 0
  const aborted = peer.whenIdle(controller.signal).then(() => abortedDone++)
  let idle = 0
  const waiting = peer.whenIdle().then(() => idle++)
  controller.abort()
  await aborted
  t.equal(abortedDone, 1, 'the abort ends its wait')
  t.equal(idle, 0, 'the other wait goes on')
  peer.release()
  await waiting
  t.equal(idle, 1)
  const already = new AbortController()
  already.abort()
  peer.acquire()
  await peer.whenIdle(already.signal)
  t.pass('a signal already aborted: at once')
  const late = new AbortController()
  const settled = peer.whenIdle(late.signal)
  peer.release()
  await settled
  late.abort()
  t.pass('aborting after it resolved is harmless')
})

t.test('passive failures, as nginx\'s max_fails and fail_timeout: maxFails in a row, each within failTimeout of the one before', async t => {
  const { peer, changes } = peerWith({ maxFails: 2, failTimeout: 100 }, ['127.0.0.1:2'])
  peer.recordFailure('a', 1000)
  peer.recordFailure('b', 1101)
  t.equal(peer.passive, 'ok', 'more than failTimeout after the one before: counting starts again')
  peer.recordFailure('ECONNREFUSED', 1201)
  t.equal(peer.passive, 'failed', 'failTimeout after the one before is within it: two in a row')
  peer.recordFailure('more', 1202)
  t.equal(peer.fails, 4, 'every failure is counted, also while out')
  t.match(changes, [{ upstream: 'u', index: 0, field: 'passive', from: 'ok', to: 'failed', reason: 'ECONNREFUSED' }], 'announced once')
  t.equal(changes.length, 1)
  t.ok(await until(() => peer.passive === 'ok', 2000), 'back after failTimeout')
  t.match(changes[1], { field: 'passive', from: 'failed', to: 'ok', reason: 'failTimeout passed' })
})

t.test('after a passive failure a peer is on probation until a response comes more than failTimeout after its last failure', async t => {
  const { peer } = peerWith({ maxFails: 2, failTimeout: 100 }, ['127.0.0.1:2'])
  const out = async (at: number): Promise<void> => {
    peer.recordFailure('x', at)
    t.equal(peer.passive, 'failed', `one failure at ${at} takes it out`)
    t.ok(await until(() => peer.passive === 'ok', 2000), 'back after failTimeout')
  }
  peer.recordFailure('x', 0)
  await out(50)
  await out(100)
  peer.recordSuccess(200)
  await out(200)
  peer.recordFailure('y', 250)
  peer.recordSuccess(10_000)
  t.equal(peer.passive, 'failed', 'a response while out does not count')
  t.ok(await until(() => peer.passive === 'ok', 2000))
  await out(10_001)
  peer.recordSuccess(10_102)
  peer.recordFailure('z', 10_102)
  t.equal(peer.passive, 'ok', 'a response more than failTimeout after the last failure: probation over, one failure is not enough')
  peer.recordFailure('z', 10_103)
  t.equal(peer.passive, 'failed', 'two are')
  peer.clearPassive('operator')
})

t.test('maxFails 0 never takes a peer out; nor are failures of a lone peer, unless it can be started on demand', async t => {
  const { peer: never } = peerWith({ maxFails: 0 }, ['127.0.0.1:2'])
  for (let i = 0; i < 5; i++) never.recordFailure('x')
  t.same([never.passive, never.fails], ['ok', 5])
  const { upstream: single } = upstreamWith({ servers: ['127.0.0.1:1'] })
  const lone = single.peers[0]
  t.ok(lone.lone)
  lone.recordFailure('x')
  t.same([lone.passive, lone.fails], ['ok', 1], 'nowhere else to send its requests')
  single.startOnDemand()
  t.notOk(lone.lone)
  lone.recordFailure('x')
  t.equal(lone.passive, 'failed', 'taken out, so that it is read again and started')
  lone.clearPassive('test')
  const { upstream: withBackup } = upstreamWith({ servers: ['127.0.0.1:1', { address: '127.0.0.1:2', backup: true }] })
  t.notOk(withBackup.peers[0].lone, 'a backup is somewhere else')
})

t.test('an operator clears a passive failure at once and with no probation; dispose drops the timer unannounced', async t => {
  const { peer, changes } = peerWith({ maxFails: 2, failTimeout: 60_000 }, ['127.0.0.1:2'])
  peer.clearPassive('nothing to clear')
  t.equal(changes.length, 0, 'not out: nothing announced')
  peer.recordFailure('x', 1)
  peer.recordFailure('x', 2)
  peer.clearPassive('operator')
  t.match(changes, [{ to: 'failed' }, { field: 'passive', from: 'failed', to: 'ok', reason: 'operator' }])
  peer.recordFailure('x', 3)
  t.equal(peer.passive, 'ok', 'no probation: one failure of two')
  const { peer: other, changes: otherChanges } = peerWith({ failTimeout: 50 }, ['127.0.0.1:2'])
  other.recordFailure('x')
  other.dispose()
  await new Promise(resolve => setTimeout(resolve, 150))
  t.equal(other.passive, 'failed', 'no timer ended it')
  t.equal(otherChanges.length, 1)
})

t.test('status classes as HAProxy counts them: 1xx to 5xx, anything else "other"', async t => {
  const cases: Array<[number, string]> = [[100, '1xx'], [199, '1xx'], [200, '2xx'], [302, '3xx'], [404, '4xx'], [499, '4xx'], [500, '5xx'], [599, '5xx'], [99, 'other'], [0, 'other'], [600, 'other'], [700, 'other']]
  for (const [status, name] of cases) t.equal(STATUS_CLASSES[statusClassIndex(status)], name, `${status} is ${name}`)
})

t.test('a check\'s outcome is one of a bounded set of words', async t => {
  t.equal(checkOutcome({ ok: true, reason: 'bad status 500' }), 'ok', 'a passed check is ok, whatever its reason says')
  t.equal(checkOutcome({ ok: false, reason: 'bad status 503' }), 'bad status', 'the status is not a word of its own')
  t.equal(checkOutcome({ ok: false, reason: 'got bad status' }), 'error', 'only a reason that starts with it')
  for (const word of CHECK_OUTCOMES.filter(word => word !== 'ok')) t.equal(checkOutcome({ ok: false, reason: word }), word)
  t.equal(checkOutcome({ ok: false, reason: 'EHOSTUNREACH' }), 'error', 'any other reason')
})

t.test('answers, failures by kind, retries and redispatches are counted on the peer', async t => {
  const { peer } = peerWith({ maxFails: 0 })
  t.same(peer.responses, [0, 0, 0, 0, 0, 0])
  peer.recordResponse(200, 0.002)
  peer.recordResponse(204, 0.004)
  peer.recordResponse(503, 1.5)
  t.same(peer.responses, [0, 2, 0, 0, 1, 0], 'by status class')
  t.same([peer.responseTime.count, peer.responseTime.sum], [3, 1.506], 'response times in seconds')
  t.same(peer.failuresByKind, { connect: 0, timeout: 0, response: 0, status: 0, other: 0 })
  peer.recordFailure('ECONNREFUSED', 1, 'connect')
  peer.recordFailure('timed out', 2, 'timeout')
  peer.recordFailure('bad', 3, 'response')
  peer.recordFailure('http_503', 4, 'status')
  peer.recordFailure('why not', 5)
  peer.recordFailure('client', 6, 'client' as never)
  t.same(peer.failuresByKind, { connect: 1, timeout: 1, response: 1, status: 1, other: 2 }, 'no kind, or one that is not a peer\'s: other')
  t.same(FAILURE_KINDS, Object.keys(peer.failuresByKind), 'every kind is listed')
  peer.recordRetry()
  peer.recordRetry()
  peer.recordRedispatch()
  t.same([peer.retries, peer.redispatches], [2, 1])
})

t.test('checks: counted by outcome, timed in seconds, the last `history` kept', async t => {
  const { peer } = peerWith()
  peer.recordCheck({ ok: true, reason: 'OK', latencyMs: 2, at: 1 }, 2)
  peer.recordCheck({ ok: false, reason: 'bad status 500', latencyMs: 4, at: 2 }, 2)
  t.same(peer.checks.map(c => c.at), [1, 2], 'history of 2: both kept')
  peer.recordCheck({ ok: false, reason: 'bad status 502', latencyMs: 6, at: 3 }, 2)
  t.same(peer.checks.map(c => c.at), [2, 3], 'the oldest goes')
  t.equal(peer.lastCheck?.at, 3)
  t.same([...peer.checkOutcomes], [['ok', 1], ['bad status', 2]])
  t.same([peer.checkDuration.count, Math.round(peer.checkDuration.sum * 1000)], [3, 12], 'latencies in seconds')
  t.same([peer.rise, peer.fall], [0, 2])
})

t.test('maxConns: full at its cap, and a slot freed from the cap is announced to the upstream', async t => {
  const { upstream } = upstreamWith({ servers: [{ address: '127.0.0.1:1', maxConns: 2 }, '127.0.0.1:2'] })
  const [capped, open] = upstream.peers
  const freed: number[] = []
  upstream.onSlotFree(peer => freed.push(peer.index))
  capped.acquire()
  t.notOk(capped.full, 'one of two')
  capped.acquire()
  t.ok(capped.full, 'two of two')
  capped.release()
  t.notOk(capped.full)
  t.same(freed, [0], 'from the cap: announced')
  capped.release()
  t.same(freed, [0], 'below the cap: not again')
  for (let i = 0; i < 5; i++) open.acquire()
  t.notOk(open.full, 'no maxConns: never full')
  for (let i = 0; i < 5; i++) open.release()
  t.same(freed, [0], 'and never announced')
})

t.test('the peer\'s names: its upstream, its program once a bridge assigns one, why its process changed', async t => {
  const { peer } = peerWith()
  t.equal(peer.upstream, 'u')
  t.equal(peer.program, null)
  peer.assignProgram('backend0')
  t.equal(peer.program, 'backend0')
  t.equal(peer.processReason, undefined)
  peer.setProcess('down', 'supervisord says EXITED')
  t.equal(peer.processReason, 'supervisord says EXITED')
})

t.test('a response within failTimeout of a failure does not start the count again; a failure long after the peer came back still finds it on probation', async t => {
  const { peer } = peerWith({ maxFails: 2, failTimeout: 100 }, ['127.0.0.1:2'])
  peer.recordFailure('x', 1000)
  peer.recordSuccess(1050)
  peer.recordFailure('x', 1060)
  t.equal(peer.passive, 'failed', 'two failures within failTimeout, a response between them')
  t.ok(await until(() => peer.passive === 'ok', 2000))
  peer.recordFailure('x', 5000)
  t.equal(peer.passive, 'failed', 'no response since it came back: one failure takes it out, however late')
  peer.clearPassive('test')
})

t.test('an IPv6 server\'s address is bracketed', async t => {
  const { upstream } = upstreamWith({ servers: ['[::1]:8080', 'http://[2001:db8::5]:81'] })
  t.same(upstream.peers.map(peer => [peer.address, peer.origin]), [['[::1]:8080', 'http://[::1]:8080'], ['[2001:db8::5]:81', 'http://[2001:db8::5]:81']])
})
