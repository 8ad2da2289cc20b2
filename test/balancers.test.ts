import t from 'tap'
import type { FastifyRequest } from 'fastify'
import { Registry } from '../lib/registry.js'
import type { UpstreamOptions } from '../lib/upstream.js'
import type { Peer } from '../lib/peer.js'
import { backendFor, backendsFor, whoAmI } from './helpers/backends.js'
import { gateway, backendsOf, countOf } from './helpers/gateway.js'
import { until } from './helpers/wait.js'
import { clientKey } from '../balancers/ip-hash.js'
import { cookieValue } from '../balancers/hash.js'

function upstreamOf (options: UpstreamOptions) {
  return new Registry({ upstreams: { u: options } }).get('u')
}

function servers (n: number, extra: object = {}) {
  return Array.from({ length: n }, (_, i) => ({ address: `127.0.0.1:${20000 + i}`, ...extra }))
}

function requestWith (props: { ip?: string, url?: string, headers?: Record<string, string> }): FastifyRequest {
  return { ip: props.ip ?? '127.0.0.1', url: props.url ?? '/', headers: props.headers ?? {} } as unknown as FastifyRequest
}

t.test('round-robin: weights 5:1:1 interleave, equal weights go in order', async t => {
  const u = upstreamOf({ servers: [{ address: '127.0.0.1:1', weight: 5 }, '127.0.0.1:2', '127.0.0.1:3'] })
  const seq = Array.from({ length: 70 }, () => (u.pick(requestWith({})) as Peer).index)
  const counts = countOf(seq)
  t.same([counts.get(0), counts.get(1), counts.get(2)], [50, 10, 10])
  t.notMatch(seq.join(''), /0000/, `the heavy peer never gets four turns in a row (${seq.slice(0, 14).join('')})`)
  const even = upstreamOf({ servers: servers(4, { weight: 7 }) })
  t.same(Array.from({ length: 8 }, () => (even.pick(requestWith({})) as Peer).index), [0, 1, 2, 3, 0, 1, 2, 3])
})

t.test('round-robin: exclude skips tried peers; none left gives undefined', async t => {
  const u = upstreamOf({ servers: servers(3) })
  const [a, b, c] = u.peers
  t.equal(u.pick(requestWith({}), [a, b]), c)
  t.equal(u.pick(requestWith({}), [a, b, c]), undefined)
})

t.test('fair: the next request goes to the idle peer while another holds a slow one (real backends)', async t => {
  let release: (() => void) | undefined
  const slow = await backendFor(t, (_req, res) => { release = () => res.end('slow') }, 0)
  const fast = await backendFor(t, whoAmI, 1)
  const app = await gateway({ b: { servers: [slow.address, fast.address], balancer: 'fair' } })
  t.teardown(() => app.close())
  const peers = app.upstreams.get('b').peers
  const first = app.inject('/')
  t.ok(await until(() => release !== undefined, 2000), 'the first request reached the slow peer')
  t.equal(peers[0].inflight, 1, 'the slow request is in flight on peer 0')
  t.same(await backendsOf(app, 5), [1, 1, 1, 1, 1], 'all new requests go to the idle peer')
  release?.()
  t.equal((await first).statusCode, 200)
  t.equal(peers[0].inflight, 0)
  t.equal(peers[1].inflight, 0)
})

t.test('fair: weights scale the in-flight count, ties go to the peer that waited longest', async t => {
  const u = upstreamOf({ servers: [{ address: '127.0.0.1:1', weight: 2 }, '127.0.0.1:2', '127.0.0.1:3'], balancer: 'fair' })
  const [a, b, c] = u.peers
  const picked: Peer[] = []
  for (let i = 0; i < 4; i++) {
    const peer = u.pick(requestWith({})) as Peer
    peer.acquire()
    picked.push(peer)
  }
  // idle: a, b, c in order of waiting; then a again (1 in flight for weight 2 is less than 1 for weight 1)
  t.same(picked.map(p => p.index), [0, 1, 2, 0])
  t.same([a.inflight, b.inflight, c.inflight], [2, 1, 1])
  b.release()
  t.equal(u.pick(requestWith({})), b, 'b has the fewest in flight')
  // without acquiring, the tie breaks on waiting time: b was just picked, so c goes before b
  b.acquire()
  c.release()
  b.release()
  t.equal(u.pick(requestWith({})), c, 'c and b both idle: c waited longer')
})

t.test('fair: excluded and unroutable peers are skipped; backups only when no primary', async t => {
  const u = upstreamOf({ servers: [...servers(3), { address: '127.0.0.1:9', backup: true }], balancer: 'fair' })
  const [a, b, c, backup] = u.peers
  t.equal(u.pick(requestWith({}), [a]), b)
  a.setAdmin('maint')
  b.setAdmin('drain')
  t.equal(u.pick(requestWith({})), c)
  t.equal(u.pick(requestWith({}), [c]), backup, 'the backup when every primary is excluded')
  c.setHealth('unhealthy')
  t.equal(u.pick(requestWith({})), backup)
  backup.setProcess('down')
  t.equal(u.pick(requestWith({})), undefined)
})

t.test('ip-hash is sticky per /24 and remaps about 1/n of clients when a peer goes', async t => {
  const u = upstreamOf({ servers: servers(5), balancer: 'ip-hash' })
  const clients = Array.from({ length: 1000 }, (_, i) => `10.${i % 250}.${Math.floor(i / 250)}.7`)
  const before = clients.map(ip => (u.pick(requestWith({ ip })) as Peer).index)
  t.same(clients.map(ip => (u.pick(requestWith({ ip })) as Peer).index), before, 'same client, same peer')
  t.equal((u.pick(requestWith({ ip: '10.1.2.3' })) as Peer).index, (u.pick(requestWith({ ip: '10.1.2.200' })) as Peer).index, 'same /24, same peer')
  t.ok(countOf(before).size === 5, 'every peer gets clients')
  u.peers[2].setProcess('down')
  const after = clients.map(ip => (u.pick(requestWith({ ip })) as Peer).index)
  const moved = after.filter((p, i) => p !== before[i]).length
  t.ok(moved <= 350, `at most ~35% remapped (${moved / 10}%)`)
  t.ok(after.every((p, i) => before[i] === 2 || p === before[i]), 'only the removed peer\'s clients moved')
  t.notOk(after.includes(2))
})

t.test('ip-hash: weights, IPv6 and IPv4-mapped keys, fallback to round-robin and backups', async t => {
  t.equal(clientKey('192.168.1.20'), '192.168.1')
  t.equal(clientKey('::ffff:192.168.1.20'), '192.168.1')
  t.equal(clientKey('2001:db8::1'), '2001:db8::1')
  const u = upstreamOf({ servers: [{ address: '127.0.0.1:1', weight: 3 }, '127.0.0.1:2', { address: '127.0.0.1:3', backup: true }], balancer: 'ip-hash' })
  const counts = countOf(Array.from({ length: 2000 }, (_, i) => (u.pick(requestWith({ ip: `10.${i % 200}.${i % 7}.1` })) as Peer).index))
  t.ok((counts.get(0) ?? 0) > 2.4 * (counts.get(1) ?? 0), `weight 3 gets about three times the clients (${counts.get(0)} vs ${counts.get(1)})`)
  t.notOk(counts.has(2), 'the backup gets no client while primaries are up')
  const ip = '10.9.9.9'
  const own = u.pick(requestWith({ ip })) as Peer
  const other = u.peers[1 - own.index]
  t.equal(u.pick(requestWith({ ip }), [own]), other, 'excluded: rehashed to the other primary')
  u.peers[0].setProcess('down')
  u.peers[1].setProcess('down')
  t.equal((u.pick(requestWith({ ip })) as Peer).index, 2, 'the backup when no primary is routable')
})

t.test('hash: sticky on a header, a cookie, the URL or a function; consistent when one of 5 goes', async t => {
  const byHeader = upstreamOf({ servers: servers(5), balancer: 'hash', hashKey: { header: 'X-User' } })
  const keys = Array.from({ length: 1000 }, (_, i) => `user-${i}`)
  const before = keys.map(k => (byHeader.pick(requestWith({ headers: { 'x-user': k } })) as Peer).index)
  t.same(keys.map(k => (byHeader.pick(requestWith({ headers: { 'x-user': k } })) as Peer).index), before, 'sticky')
  const spread = countOf(before)
  t.equal(spread.size, 5)
  t.ok([...spread.values()].every(n => n > 120 && n < 280), `keys spread over the peers (${[...spread.values()].join(', ')})`)
  byHeader.peers[3].setAdmin('maint')
  const after = keys.map(k => (byHeader.pick(requestWith({ headers: { 'x-user': k } })) as Peer).index)
  const moved = after.filter((p, i) => p !== before[i]).length
  t.ok(moved <= 350, `at most ~35% remapped (${moved / 10}%)`)
  t.ok(after.every((p, i) => before[i] === 3 || p === before[i]), 'only the removed peer\'s keys moved')

  // Each key kind: the same key sticks whatever else the request carries, and many keys spread.
  const sids = keys.slice(0, 100)
  const byCookie = upstreamOf({ servers: servers(5), balancer: 'hash', hashKey: { cookie: 'sid' } })
  const cookiePeers = sids.map(sid => byCookie.pick(requestWith({ url: '/a', headers: { cookie: `a=1; sid=${sid}; b=2` } }))?.index)
  t.same(sids.map(sid => byCookie.pick(requestWith({ url: '/b', headers: { cookie: `sid=${sid}` } }))?.index), cookiePeers, 'a cookie: sticky')
  t.equal(new Set(cookiePeers).size, 5, 'a cookie: spread')
  t.equal(cookieValue('a=1; sid=abc', 'sid'), 'abc')
  t.equal(cookieValue('a=1', 'sid'), undefined)

  const urls = Array.from({ length: 100 }, (_, i) => `/x?${i}`)
  const byUrl = upstreamOf({ servers: servers(5), balancer: 'hash' })
  const urlPeers = urls.map(url => byUrl.pick(requestWith({ url }))?.index)
  t.same(urls.map(url => byUrl.pick(requestWith({ url, headers: { 'x-user': 'other' } }))?.index), urlPeers, 'the URL by default: sticky')
  t.equal(new Set(urlPeers).size, 5, 'the URL with its query string: spread')
  const byFn = upstreamOf({ servers: servers(5), balancer: 'hash', hashKey: req => req.headers['x-tenant'] as string | undefined })
  const fnPeers = sids.map(tenant => byFn.pick(requestWith({ url: '/a', headers: { 'x-tenant': tenant } }))?.index)
  t.same(sids.map(tenant => byFn.pick(requestWith({ url: '/b', headers: { 'x-tenant': tenant } }))?.index), fnPeers, 'a function: sticky')
  t.equal(new Set(fnPeers).size, 5, 'a function: spread')
  const noKey = countOf(Array.from({ length: 10 }, () => (byFn.pick(requestWith({})) as Peer).index))
  t.equal(noKey.size, 5, 'no key: round-robin over all peers')
})

t.test('hash: backups only when every primary is down, weights widen a peer\'s share', async t => {
  const u = upstreamOf({ servers: [{ address: '127.0.0.1:1', weight: 4 }, '127.0.0.1:2', { address: '127.0.0.1:3', backup: true }], balancer: 'hash' })
  const counts = countOf(Array.from({ length: 2000 }, (_, i) => (u.pick(requestWith({ url: `/k${i}` })) as Peer).index))
  t.ok((counts.get(0) ?? 0) > 3 * (counts.get(1) ?? 0), `weight 4 gets about four times the keys (${counts.get(0)} vs ${counts.get(1)})`)
  t.notOk(counts.has(2))
  u.peers[0].setProcess('down')
  u.peers[1].recordFailure('test')
  t.equal((u.pick(requestWith({ url: '/k1' })) as Peer).index, 2)
  u.peers[2].setProcess('down')
  t.equal(u.pick(requestWith({ url: '/k1' })), undefined)
  u.peers[1].clearPassive('test')
})

t.test('a weight changed at run time moves the share', async t => {
  const backends = await backendsFor(t, 2)
  const app = await gateway({ b: { servers: backends.map(b => b.address) } })
  t.teardown(() => app.close())
  t.same(countOf(await backendsOf(app, 20)).get(0), 10)
  app.upstreams.setWeight('b', 0, 3)
  t.same(countOf(await backendsOf(app, 40)).get(0), 30)
  t.throws(() => app.upstreams.setWeight('b', 0, 0), /upstream "b" server 0: option "weight" must be an integer from 1 to 1000, got 0/)
})

t.test('a user balancer object is used as given', async t => {
  const calls: number[] = []
  const last = {
    name: 'last',
    pick (upstream: { peers: readonly Peer[] }) {
      calls.push(1)
      return upstream.peers[upstream.peers.length - 1]
    }
  }
  const u = upstreamOf({ servers: servers(3), balancer: last })
  t.equal(u.pick(requestWith({}))?.index, 2)
  t.equal(u.balancer.name, 'last')
  t.equal(calls.length, 1)
})
