import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { Peer } from '../lib/peer.js'
import { backendFor, type Backend, type BackendHandler } from './helpers/backends.js'
import { gateway, loggerInto } from './helpers/gateway.js'
import { until } from './helpers/wait.js'

// The dispatcher between attempts: which changes of a peer move the requests
// waiting on it, whom a failure is charged to, when a success clears the
// passive count, and how failures are logged.

type Line = Record<string, unknown> & { level: number, msg: string }

const INFO = 30
const WARN = 40

/** Answers with its id after `ms`. */
function after (ms: number): BackendHandler {
  return (_req, res, backend) => {
    const timer = setTimeout(() => res.end(String(backend.id)), ms)
    res.once('close', () => clearTimeout(timer))
  }
}

interface Pair { app: FastifyInstance, slow: Backend, other: Backend, peer: Peer, lines: Line[] }

/** Upstream `b`: peer 0 answers after 400 ms, peer 1 at once; upstream `o` has one peer of its own. */
async function pair (t: Test): Promise<Pair> {
  const slow = await backendFor(t, after(400), 0)
  const other = await backendFor(t, after(0), 1)
  const third = await backendFor(t, after(0), 2)
  const lines: Line[] = []
  const app = await gateway({
    b: { servers: [slow.address, other.address] },
    o: { servers: [third.address] }
  }, {}, { logger: loggerInto(lines) })
  t.teardown(() => app.close())
  await app.ready()
  return { app, slow, other, peer: app.upstreams.get('b').peers[0], lines }
}

/** A GET in flight on the slow peer when `change` is made: who answers it. */
async function answeredAfter (t: Test, change: (p: Pair) => void): Promise<{ by: string, slowHits: number, otherHits: number }> {
  const p = await pair(t)
  const pending = p.app.inject('/')
  t.ok(await until(() => p.slow.hits === 1), 'the first request went to peer 0')
  change(p)
  const res = await pending
  return { by: res.body, slowHits: p.slow.hits, otherHits: p.other.hits }
}

t.test('a change that leaves the peer in rotation (or drains it) leaves the requests waiting on it there', async t => {
  const leaves: Array<[string, (p: Pair) => void]> = [
    ['its weight', p => p.peer.setWeight(3)],
    ['its health to healthy', p => p.peer.setHealth('healthy')],
    ['its process to stopping (a stop drains first)', p => p.peer.setProcess('stopping')],
    ['its process to starting', p => p.peer.setProcess('starting')],
    ['its admin state to drain', p => p.peer.setAdmin('drain')],
    ['its admin state to maint', p => p.peer.setAdmin('maint')],
    ['a pin down (a stop to come)', p => p.peer.setPin('down')],
    ['another upstream\'s peer 0 going unhealthy', p => p.app.upstreams.get('o').peers[0].setHealth('unhealthy')],
    ['another upstream\'s peer 0 going down', p => p.app.upstreams.get('o').peers[0].setProcess('down')]
  ]
  for (const [what, change] of leaves) {
    const seen = await answeredAfter(t, change)
    t.same(seen, { by: '0', slowHits: 1, otherHits: 0 }, `${what}: answered by peer 0`)
  }
})

t.test('a change that takes the peer out moves the requests waiting on it to another peer at once', async t => {
  const takesOut: Array<[string, (p: Pair) => void]> = [
    ['health unhealthy', p => p.peer.setHealth('unhealthy', 'check failed')],
    ['passive failed', p => p.peer.recordFailure('status 500')],
    ['process down', p => p.peer.setProcess('down', 'exited')]
  ]
  for (const [what, change] of takesOut) {
    const started = Date.now()
    const seen = await answeredAfter(t, change)
    t.same(seen, { by: '1', slowHits: 1, otherHits: 1 }, `${what}: answered by peer 1`)
    t.ok(Date.now() - started < 350, `${what}: at once, not after peer 0's 400 ms`)
  }
})

t.test('what a peer being stopped drops is not charged to it; the same failure of a running peer is', async t => {
  for (const process of ['stopping', 'down', null] as const) {
    let cut = (): void => {}
    const dropping = await backendFor(t, (req, _res) => { cut = () => req.socket.destroy() }, 0)
    const spare = await backendFor(t, after(0), 1)
    const lines: Line[] = []
    const app = await gateway({ b: { servers: [dropping.address, spare.address] } }, { nextUpstreamTries: 1 }, { logger: loggerInto(lines) })
    t.teardown(() => app.close())
    const peer = app.upstreams.get('b').peers[0]
    const pending = app.inject('/')
    t.ok(await until(() => dropping.hits === 1))
    if (process !== null) peer.setProcess(process)
    cut()
    t.equal((await pending).statusCode, 502)
    const charged = process === null ? 1 : 0
    t.equal(peer.fails, charged, `process ${process ?? 'up'}: ${charged} failure charged`)
    t.equal(lines.filter(line => line.msg === 'proxy: peer failed').length, charged, `process ${process ?? 'up'}: ${charged} "peer failed" line`)
    t.same(lines.filter(line => line.msg === 'proxy: the client\'s request failed'), [], 'nor the client\'s')
  }
})

t.test('after a passive failure, a success clears the count: the next failure alone does not take the peer out again', async t => {
  for (const succeeds of [true, false]) {
    let mode: 'cut' | 'answer' = 'cut'
    const flaky = await backendFor(t, (req, res) => {
      if (mode === 'cut') req.socket.destroy()
      else res.end('ok')
    }, 0)
    const spare = await backendFor(t, after(0), 1)
    // Peer 1 drained: every request goes to peer 0, which is not alone in its upstream (a lone peer is never taken out).
    const app = await gateway({ b: { servers: [{ address: flaky.address, maxFails: 2, failTimeout: 200 }, spare.address] } }, { nextUpstreamTries: 1 })
    t.teardown(() => app.close())
    const [peer, drained] = app.upstreams.get('b').peers
    drained.setAdmin('drain')
    for (let i = 0; i < 2; i++) t.equal((await app.inject('/')).statusCode, 502)
    t.equal(peer.passive, 'failed', 'two failures took it out')
    t.ok(await until(() => peer.passive === 'ok', 2000), 'back after failTimeout, on probation')
    if (succeeds) {
      mode = 'answer'
      t.equal((await app.inject('/')).statusCode, 200)
      mode = 'cut'
    }
    t.equal((await app.inject('/')).statusCode, 502)
    t.equal(peer.passive, succeeds ? 'ok' : 'failed', succeeds ? 'after a success: one failure of two allowed' : 'on probation: one failure takes it out')
  }
})

t.test('failures are logged at warn, one line per peer and reason at once, the repeats of each counted', async t => {
  const cutting: BackendHandler = req => { req.socket.destroy() }
  const a = await backendFor(t, cutting, 0)
  const b = await backendFor(t, cutting, 1)
  const lines: Line[] = []
  const app = await gateway({ b: { servers: [{ address: a.address, maxFails: 0 }, { address: b.address, maxFails: 0 }] } }, { nextUpstreamTries: 1 }, { logger: loggerInto(lines) })
  t.teardown(() => app.close())
  for (let i = 0; i < 4; i++) t.equal((await app.inject('/')).statusCode, 502)
  const failed = lines.filter(line => line.msg === 'proxy: peer failed')
  t.same(failed.map(line => line.peer).sort(), [a.address, b.address].sort(), 'the first failure of each peer written at once')
  t.ok(failed.every(line => line.level === WARN && line.upstream === 'b' && line.kind === 'connect'), 'at warn, with the upstream and the kind')
  t.ok(await until(() => lines.filter(line => line.repeated === 1).length === 2, 3000), 'the second of each counted in a line of its own')
})

t.test('a request undici refuses to send is the client\'s: logged at info, not charged to the peer', async t => {
  const backend = await backendFor(t, after(0), 0)
  const lines: Line[] = []
  const app = await gateway({ b: { servers: [backend.address, backend.address] } }, {
    replyOptions: { rewriteRequestHeaders: (_request, headers) => ({ ...headers, 'x-odd': 'a\r\nb' }) }
  }, { logger: loggerInto(lines) })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.statusCode, 400)
  t.equal(backend.hits, 0, 'nothing reached the peer')
  t.same(app.upstreams.get('b').peers.map(peer => peer.fails), [0, 0], 'no peer charged, and it went to no other peer')
  t.match(lines.filter(line => line.msg === 'proxy: the client\'s request failed'), [{ level: INFO, upstream: 'b', reason: /UND_ERR_INVALID_ARG/ }])
  t.same(lines.filter(line => line.msg === 'proxy: peer failed'), [])
})

t.test('nextUpstreamTimeout counts from the first try: a second try starts within it, a third would not', async t => {
  const slow = await Promise.all([0, 1, 2].map(async id => await backendFor(t, after(1000), id)))
  // Each try times out at 300 ms: the second starts at 300 (within 500), the third would start at 600.
  const app = await gateway({ b: { servers: slow.map(b => b.address) } }, { headersTimeout: 300, nextUpstreamTimeout: 500, nextUpstreamTries: 3 })
  t.teardown(() => app.close())
  t.equal((await app.inject('/')).statusCode, 504)
  t.same(slow.map(b => b.hits), [1, 1, 0], 'two peers tried')
})

t.test('a status nextUpstream lists, from a peer being stopped, is not charged to it; from a running peer it is', async t => {
  for (const stopping of [true, false]) {
    const failing = await backendFor(t, (_req, res) => { setTimeout(() => { res.statusCode = 502; res.end('bad') }, 200) }, 0)
    const good = await backendFor(t, after(0), 1)
    const app = await gateway({ b: { servers: [failing.address, good.address] } }, { nextUpstream: ['error', 'timeout', 'http_502'] })
    t.teardown(() => app.close())
    const peer = app.upstreams.get('b').peers[0]
    const pending = app.inject('/')
    t.ok(await until(() => failing.hits === 1))
    if (stopping) peer.setProcess('stopping')
    const res = await pending
    t.equal(res.body, '1', 'the next peer answered')
    t.equal(peer.fails, stopping ? 0 : 1, stopping ? 'stopping: not charged' : 'running: charged')
  }
})

t.test('a streamed body a peer took is not sent again: the request fails with that peer; a kept one goes on to the next', async t => {
  // Reads the whole body, then drops the connection.
  const taking = await backendFor(t, (req) => {
    req.resume()
    req.on('end', () => req.socket.destroy())
  }, 0)
  const other = await backendFor(t, (req, res) => { req.resume(); req.on('end', () => res.end('1')) }, 1)
  for (const [size, answer] of [[64, '1'], [4096, null]] as const) {
    taking.hits = 0
    other.hits = 0
    const app = await gateway({ b: { servers: [taking.address, other.address] } }, { retryBodySize: 1024 })
    t.teardown(() => app.close())
    // Not text/plain, which Fastify parses whole (as plain @fastify/http-proxy does) whatever its size.
    const res = await app.inject({ method: 'PUT', url: '/', payload: 'x'.repeat(size), headers: { 'content-type': 'application/octet-stream' } })
    if (answer === null) {
      t.equal(res.statusCode, 502, `${size} bytes, streamed and taken: 502`)
      t.equal(other.hits, 0, 'not sent to the next peer')
    } else {
      t.equal(res.body, answer, `${size} bytes, kept: the next peer answered`)
    }
    t.equal(taking.hits, 1)
  }
})

t.test('a POST answered with a status nextUpstream lists was sent: it goes to no other peer (without non_idempotent)', async t => {
  const failing = await backendFor(t, (req, res) => { req.resume(); res.statusCode = 502; res.end('bad') }, 0)
  const good = await backendFor(t, after(0), 1)
  const app = await gateway({ b: { servers: [{ address: failing.address, maxFails: 0 }, good.address] } }, { nextUpstream: ['error', 'timeout', 'http_502'] })
  t.teardown(() => app.close())
  const res = await app.inject({ method: 'POST', url: '/', payload: 'x', headers: { 'content-type': 'application/octet-stream' } })
  t.equal(res.statusCode, 502, 'the peer\'s own answer')
  t.equal(res.body, 'bad')
  t.equal(good.hits, 0)
})
