import t from 'tap'
import Fastify from 'fastify'
import registry from '../plugins/registry.js'
import { Registry, type RegistryOptions } from '../lib/registry.js'
import { parseAddress } from '../lib/upstream.js'
import type { PeerChange } from '../lib/peer.js'

function build (upstreams: unknown) {
  return () => new Registry({ upstreams } as RegistryOptions)
}

t.test('bad options fail with the upstream, the server index and the option named', async t => {
  t.throws(build({}), /option "upstreams" must name at least one upstream/)
  t.throws(build({ api: { servers: [] } }), /upstream "api": option "servers" must be a non-empty array/)
  t.throws(build({ api: { servers: ['127.0.0.1:1'], balancer: 'least-conn' } }),
    /upstream "api": option "balancer" must be one of round-robin, fair, ip-hash, hash .* got "least-conn"/)
  t.throws(build({ api: { servers: ['127.0.0.1:1', 'localhost'] } }),
    /upstream "api" server 1: option "address" must be host:port with a port from 1 to 65535, got "localhost"/)
  t.throws(build({ api: { servers: ['127.0.0.1:70000'] } }), /server 0: option "address"/)
  t.throws(build({ api: { servers: ['http://127.0.0.1:80/path'] } }), /server 0: option "address" must be host:port, http:\/\/host:port or https:\/\/host:port \(no path\)/)
  t.throws(build({ api: { servers: [{ address: '127.0.0.1:1', weight: 0 }] } }),
    /upstream "api" server 0: option "weight" must be an integer from 1 to 1000, got 0/)
  t.throws(build({ api: { servers: [{ address: '127.0.0.1:1', weight: -2 }] } }), /option "weight"/)
  t.throws(build({ api: { servers: [{ address: '127.0.0.1:1', wieght: 2 }] } }), /server 0: unknown option "wieght"/)
  t.throws(build({ api: { servers: [{ address: '127.0.0.1:1', failTimeout: 'soon' }] } }), /option "failTimeout" must be a number/)
  t.throws(build({ api: { servers: [{ address: '127.0.0.1:1', backup: 'yes' }] } }), /option "backup" must be true or false/)
  t.throws(build({ api: { servers: [42] } }), /upstream "api" server 0: must be an address string or an object/)
  t.throws(build({ api: { servers: ['127.0.0.1:1'], hashKey: 'url' } }), /option "hashKey" is only read by balancer "hash"/)
  t.throws(build({ api: { servers: ['127.0.0.1:1'], balancer: 'hash', hashKey: { header: '' } } }), /option "hashKey" must be/)
  t.throws(build([{ name: 'api', servers: ['127.0.0.1:1'] }, { name: 'api', servers: ['127.0.0.1:2'] }]),
    /upstream "api": is defined twice/)
  t.throws(build({ 'bad name': { servers: ['127.0.0.1:1'] } }), /upstream "bad name": name must be letters/)
  t.throws(build({ api: null }), /upstream "api": must be an object with "servers"/)
})

t.test('addresses: host:port, [v6]:port and http URLs', async t => {
  t.same(parseAddress('127.0.0.1:8000', 'x'), { scheme: 'http', host: '127.0.0.1', port: 8000 })
  t.same(parseAddress('[::1]:8000', 'x'), { scheme: 'http', host: '::1', port: 8000 })
  t.same(parseAddress('http://localhost:8001/', 'x'), { scheme: 'http', host: 'localhost', port: 8001 })
  const r = new Registry({ upstreams: { a: { servers: ['[::1]:9000'] } } })
  t.equal(r.get('a').peers[0].origin, 'http://[::1]:9000')
})

t.test('the list form and defaults', async t => {
  const r = new Registry({ upstreams: [{ name: 'a', servers: ['127.0.0.1:1', { address: '127.0.0.1:2', down: true, backup: true }] }] })
  const [p0, p1] = r.get('a').peers
  t.equal(p0.weight, 1)
  t.equal(p0.maxFails, 1)
  t.equal(p0.failTimeout, 10_000)
  t.equal(p0.process, 'up')
  t.equal(p1.process, 'down', 'down: true starts down')
  t.ok(p1.backup)
  t.equal(r.get('a').balancer.name, 'round-robin')
  t.throws(() => r.get('b'), /unknown upstream "b" \(known: "a"\)/)
  t.throws(() => r.get('a').peer(5), { code: 'FST_SUPERVISORD_BACKEND_OUT_OF_RANGE', message: 'Upstream "a" has no backend 5 (valid: 0..1 or any)' })
})

t.test('every change is an event any number of listeners hear; routable is derived', async t => {
  const r = new Registry({ upstreams: { a: { servers: ['127.0.0.1:1'] } } })
  const heard: PeerChange[][] = [[], [], []]
  for (const list of heard) r.on('change', change => list.push(change))
  const peer = r.get('a').peers[0]
  t.ok(peer.routable)
  r.setAdmin('a', 0, 'drain')
  t.notOk(peer.routable, 'drain takes it out')
  r.setAdmin('a', 0, 'drain')
  r.setAdmin('a', 0, 'ready')
  r.setWeight('a', 0, 5)
  peer.setHealth('unhealthy', 'bad status 500')
  t.notOk(peer.routable)
  peer.setHealth('healthy', 'OK')
  peer.setProcess('starting')
  t.ok(peer.routable, 'a starting process that passed a check is routable')
  peer.setHealth('unknown')
  t.notOk(peer.routable, 'a starting process without a passed check is not')
  t.equal(heard[0].length, 7, 'a repeated state is not a change')
  t.same(heard[0], heard[2], 'every listener hears the same')
  t.match(heard[0][0], { upstream: 'a', index: 0, field: 'admin', from: 'ready', to: 'drain', reason: 'operator' })
  t.match(heard[0][2], { field: 'weight', from: 1, to: 5 })
  t.match(heard[0][3], { field: 'health', to: 'unhealthy', reason: 'bad status 500' })
  t.throws(() => r.setAdmin('a', 0, 'gone' as never), /admin state must be one of ready, drain, maint/)
})

t.test('the plugin decorates the instance, rejects unread sections, and clears timers on close', async t => {
  const app = Fastify()
  await app.register(registry, { upstreams: { a: { servers: [{ address: '127.0.0.1:1', failTimeout: 60_000 }] } } })
  app.upstreams.get('a').peers[0].recordFailure('x')
  await app.ready()
  const started = Date.now()
  await app.close()
  t.ok(Date.now() - started < 1000, 'a pending failTimeout does not hold the process')

  const typo = Fastify()
  await typo.register(registry, { upstreams: { a: { servers: ['127.0.0.1:1'], healthcheck: {} } as never } })
  await t.rejects(async () => { await typo.ready() }, /no registered plugin reads upstream "a": option "healthcheck"/)
})

t.test('a listener that throws is logged and skipped: the change stands, the listeners after it are told, the writer never sees it', async t => {
  const logged: Array<{ details: object, message: string }> = []
  const r = new Registry({ upstreams: { a: { servers: ['127.0.0.1:1'] } } }, { error: (details, message) => logged.push({ details, message }) })
  const after: PeerChange[] = []
  r.on('change', () => { throw new Error('listener bug') })
  r.on('change', change => after.push(change))
  t.doesNotThrow(() => r.setAdmin('a', 0, 'drain'), 'setAdmin does not throw')
  t.equal(r.get('a').peers[0].admin, 'drain', 'the change stands')
  t.match(after, [{ field: 'admin', to: 'drain' }], 'the next listener was told')
  t.match(logged, [{ message: 'fastify-supervisord: a registry "change" listener threw', details: { event: 'change', err: { message: 'listener bug' } } }])
  let once = 0
  r.once('demand', () => once++)
  r.get('a').demand()
  r.get('a').demand()
  t.equal(once, 1, 'once listeners still run once')
})

t.test('one start rule and one stop rule: primaries first by index, ready, out of back-off; pins for the scaler; never the last running', async t => {
  const r = new Registry({
    upstreams: {
      a: { servers: [{ address: '127.0.0.1:1', down: true }, { address: '127.0.0.1:2', down: true, backup: true }, { address: '127.0.0.1:3', down: true }, { address: '127.0.0.1:4', down: true }] }
    }
  })
  const upstream = r.get('a')
  const [p0, backup, p2, p3] = upstream.peers
  const start = (skipPinned = false): number | undefined => upstream.startCandidate({ skipPinned })?.index
  t.equal(start(), 0)
  r.setAdmin('a', 0, 'drain')
  t.equal(start(), 2, 'a drained peer is not started')
  p2.setBackoff({ step: 1, until: Date.now() + 60_000, reason: 'SPAWN_ERROR', cause: 'program' })
  t.equal(start(), 3, 'nor one in back-off')
  t.equal(upstream.startCandidate({ now: Date.now() + 61_000 })?.index, 2, 'until it ends')
  p3.setPin('down', 'operator stop')
  t.equal(start(), 3, 'demand and operators start a pinned peer')
  t.equal(start(true), 1, 'the scaler does not; backups come after every primary')
  t.same(upstream.startOutlook(), { state: 'startable', peer: p3 })
  p3.setProcess('starting')
  t.same(upstream.startOutlook(), { state: 'starting' })
  p3.setProcess('down')
  r.setAdmin('a', 3, 'maint')
  backup.setBackoff({ step: 2, until: Date.now() + 30_000, reason: 'x', cause: 'program' })
  t.same(upstream.startOutlook(), { state: 'backoff', retryAt: backup.backoff?.until }, 'the earliest end of a back-off')

  for (const peer of [p0, backup, p2]) peer.setProcess('up')
  t.equal(upstream.stopCandidate()?.index, 1, 'the last in start order: the backup')
  backup.setPin('up', 'operator start')
  t.equal(upstream.stopCandidate({ skipPinned: true })?.index, 2, 'the scaler leaves the pinned one')
  p2.setProcess('down')
  backup.setProcess('down')
  t.equal(upstream.stopCandidate(), undefined, 'never the last one running')
  t.equal(upstream.stopCandidate({ keep: 0 })?.index, 0, 'unless asked to keep none (the scaler with minRunning 0)')
  r.setAdmin('a', 0, 'ready')
  p0.recordFailure('ECONNREFUSED')
  p0.dispose()
  t.same(upstream.startOutlook(), { state: 'recovering' }, 'a peer that runs but is out may come back')
})
