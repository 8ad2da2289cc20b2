import t from 'tap'
import { createHook } from 'node:async_hooks'
import { performance } from 'node:perf_hooks'
import Fastify from 'fastify'
import registry from '../plugins/registry.js'
import health from '../plugins/health.js'
import { CheckSchedule, type ScheduledTask } from '../lib/check-schedule.js'
import { backendFor, tcpServer } from './helpers/backends.js'
import { sleep, until } from './helpers/wait.js'

// Timers alive right now, unref()ed ones included (getActiveResourcesInfo leaves those out).
const liveTimers = new Set<number>()
const hook = createHook({
  init (id, type) { if (type === 'Timeout') liveTimers.add(id) },
  destroy (id) { liveTimers.delete(id) }
}).enable()
t.teardown(() => { hook.disable() })
/** Live timers once the hooks' destroy calls (queued, not synchronous) have come in. */
async function timers (): Promise<number> {
  for (let i = 0; i < 3; i++) await new Promise(resolve => setImmediate(resolve))
  return liveTimers.size
}

function task (name: string, ran: string[], then?: (now: number) => void): ScheduledTask {
  return { due: 0, slot: -1, run: now => { ran.push(name); then?.(now) } }
}

t.test('the schedule runs tasks in due order on one timer; at() moves, cancel() removes', async t => {
  const ran: string[] = []
  const errors: unknown[] = []
  const schedule = new CheckSchedule(error => errors.push(error))
  t.teardown(() => schedule.clear())
  const before = await timers()
  const now = performance.now()
  const tasks = Array.from({ length: 50 }, (_, i) => task(`t${i}`, ran))
  // Inserted in a shuffled order: due 2 ms apart by index.
  for (const i of [...tasks.keys()].sort(() => Math.random() - 0.5)) schedule.at(tasks[i], now + 20 + i * 2)
  t.equal(schedule.size, 50)
  t.equal(await timers(), before + 1, 'one timer for fifty tasks')
  schedule.at(tasks[49], now + 5)
  schedule.cancel(tasks[10])
  schedule.cancel(tasks[10])
  t.equal(tasks[10].slot, -1)
  schedule.at(tasks[0], now + 31)
  t.ok(await until(() => ran.length === 49, 5000), 'all but the cancelled ran')
  const expected = ['t49', ...tasks.slice(1, 49).map((_, i) => `t${i + 1}`)].filter(name => name !== 't10')
  expected.splice(expected.indexOf('t6'), 0, 't0')
  t.same(ran, expected, 'moved earlier, moved later, cancelled')
  t.equal(schedule.size, 0)
  t.equal(await timers(), before, 'no timer once empty')
  t.same(errors, [])
})

t.test('a task that throws is reported and the others run; a task may schedule itself again', async t => {
  const ran: string[] = []
  const errors: unknown[] = []
  const schedule = new CheckSchedule(error => errors.push(error))
  t.teardown(() => schedule.clear())
  let repeats = 0
  const again: ScheduledTask = task('again', ran, now => { if (++repeats < 3) schedule.at(again, now + 1) })
  const thrower: ScheduledTask = { due: 0, slot: -1, run: () => { throw new Error('task bug') } }
  const now = performance.now()
  schedule.at(thrower, now)
  schedule.at(again, now)
  schedule.at(task('after', ran), now + 2)
  t.ok(await until(() => ran.length === 4, 5000))
  t.same(ran.filter(name => name === 'again').length, 3)
  t.match(errors, [{ message: 'task bug' }])
})

t.test('hundreds due at once run over several timer turns, none lost', async t => {
  const ran: string[] = []
  const schedule = new CheckSchedule(() => {})
  t.teardown(() => schedule.clear())
  const now = performance.now()
  for (let i = 0; i < 1000; i++) schedule.at(task(`t${i}`, ran), now)
  await sleep(0)
  t.ok(ran.length < 1000, `a turn ran ${ran.length} of 1000`)
  t.ok(await until(() => ran.length === 1000, 5000), 'the rest in the next turns')
  schedule.clear()
  t.equal(schedule.size, 0)
})

t.test('the checker: one timer for every peer of every upstream, gone after close', async t => {
  // A raw keep-alive backend: an http server in this process would add a keep-alive timer per connection.
  const b = await tcpServer(t, socket => socket.on('data', () => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')))
  const address = `127.0.0.1:${b.port}`
  const app = Fastify({ logger: false })
  // 300 peers (the same backend: what counts here is the checker's side).
  await app.register(registry, {
    upstreams: {
      a: { servers: Array.from({ length: 200 }, () => address), healthCheck: { interval: 50, keepAlive: true } },
      b: { servers: Array.from({ length: 100 }, () => address), healthCheck: { interval: 70, type: 'tcp' } }
    }
  })
  await app.register(health)
  const before = await timers()
  await app.ready()
  const peers = [...app.upstreams.upstreams.values()].flatMap(upstream => upstream.peers)
  t.ok(await until(() => peers.every(peer => peer.checks.length >= 2), 10_000), 'every peer checked twice')
  let most = 0
  for (let i = 0; i < 20; i++) {
    most = Math.max(most, await timers() - before)
  }
  t.ok(most <= 1, `${most} timer(s) for 300 peers`)
  await app.close()
  t.equal(await timers(), before, 'no timer left after close')
})

t.test('the first round is spread over the interval, not sent in one burst', async t => {
  const arrivals: number[] = []
  const b = await backendFor(t, (_req, res) => { arrivals.push(Date.now()); res.end('ok') })
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: Array.from({ length: 100 }, () => b.address), healthCheck: { interval: 2000 } } } })
  await app.register(health)
  t.teardown(async () => await app.close())
  await app.ready()
  t.ok(await until(() => arrivals.length >= 100, 10_000), 'each peer checked once')
  const first = arrivals.slice(0, 100)
  // 100 peers over 2 s are 20 ms apart at most (10 ms apart here): the round spans about a second.
  const span = first[99] - first[0]
  t.ok(span >= 600, `the first round spans ${span} ms`)
  const inOneTenth = first.filter(time => time - first[0] < 100).length
  t.ok(inOneTenth <= 50, `${inOneTenth} of 100 in its first 100 ms`)
})

t.test('a check that overran its interval (it timed out) is followed an interval after it ended, never at once', async t => {
  const starts: number[] = []
  const server = await tcpServer(t, socket => { starts.push(performance.now()); socket.resume() })
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: [`127.0.0.1:${server.port}`], healthCheck: { interval: 100, timeout: 300 } } } })
  await app.register(health)
  t.teardown(async () => await app.close())
  await app.ready()
  t.ok(await until(() => starts.length >= 4, 5000), 'four checks')
  const gaps = starts.slice(1).map((start, i) => Math.round(start - starts[i]))
  t.ok(gaps.every(gap => gap >= 380), `timeout 300 ms + interval 100 ms between starts (${gaps.join(', ')} ms)`)
})
