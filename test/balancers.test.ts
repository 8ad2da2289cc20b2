import t from 'tap'
import type { FastifyRequest } from 'fastify'
import { Registry } from '../lib/registry.js'
import type { UpstreamOptions } from '../lib/upstream.js'
import type { Peer } from '../lib/peer.js'
import { backendFor, backendsFor, whoAmI } from './helpers/backends.js'
import { gateway, backendsOf, countOf } from './helpers/gateway.js'
import { until } from './helpers/wait.js'
import { clientBytes } from '../balancers/ip-hash.js'
import { cookieValue, pointBase } from '../balancers/hash.js'
import { crc32, crc32Bytes } from '../balancers/hashing.js'

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

function bytesOf (ip: string): number[] {
  const out = new Uint8Array(16)
  return [...out.subarray(0, clientBytes(ip, out))]
}

t.test('ip-hash reads the bytes nginx reads: three of IPv4, sixteen of IPv6', async t => {
  t.same(bytesOf('192.168.1.20'), [192, 168, 1])
  t.same(bytesOf('::ffff:192.168.1.20'), [192, 168, 1], 'IPv4-mapped: as its IPv4 address')
  t.same(bytesOf('::FFFF:c0a8:0114'), [192, 168, 1], 'IPv4-mapped in hex')
  t.same(bytesOf('2001:db8::1'), [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
  t.same(bytesOf('fe80::a:B:c%eth0'), [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0x0b, 0, 0x0c], 'zone ignored, either case')
  t.same(bytesOf('1:2:3:4:5:6:7:8'), [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8])
  t.same(bytesOf('1::'), [0, 1, ...Array(14).fill(0)])
  t.same(bytesOf('::'), Array(16).fill(0))
  t.same(bytesOf('64:ff9b::10.1.2.3'), [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 2, 3], 'a dotted-quad tail')
  for (const garbage of ['', 'unknown', '1.2.3', '1.2.3.256', '1.2.3.4.5', '1..2.3', '01234.1.1.1', ':1', '1:', '1:::2', '1::2::3',
    '12345::', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7::8', '::1.2.3', '1:2:3:4:5:6:7:1.2.3.4', 'g::1']) {
    t.same(bytesOf(garbage), [0, 0, 0], `${JSON.stringify(garbage)}: nginx's pseudo-address`)
  }
})

t.test('ip-hash: weights, fallback to round-robin, backups placed among themselves', async t => {
  const u = upstreamOf({ servers: [{ address: '127.0.0.1:1', weight: 3 }, '127.0.0.1:2', { address: '127.0.0.1:3', backup: true }, { address: '127.0.0.1:4', backup: true }], balancer: 'ip-hash' })
  const clients = Array.from({ length: 2000 }, (_, i) => `10.${i % 200}.${i % 7}.1`)
  const counts = countOf(clients.map(ip => (u.pick(requestWith({ ip })) as Peer).index))
  t.ok((counts.get(0) ?? 0) > 2.4 * (counts.get(1) ?? 0), `weight 3 gets about three times the clients (${counts.get(0)} vs ${counts.get(1)})`)
  t.notOk(counts.has(2) || counts.has(3), 'no backup gets a client while primaries are up')
  const ip = '10.9.9.9'
  const own = u.pick(requestWith({ ip })) as Peer
  const other = u.peers[1 - own.index]
  t.equal(u.pick(requestWith({ ip }), [own]), other, 'excluded: rehashed to the other primary')
  u.peers[0].setProcess('down')
  u.peers[1].setProcess('down')
  const onBackups = clients.map(ip => (u.pick(requestWith({ ip })) as Peer).index)
  t.same(countOf(onBackups).size, 2, 'no primary routable: clients spread over both backups')
  t.ok(clients.every((ip, i) => [1, 2, 3].every(() => u.pick(requestWith({ ip }))?.index === onBackups[i])), 'and stick to them, pick after pick')
  u.peers[3].setAdmin('maint')
  t.ok(clients.every(ip => u.pick(requestWith({ ip }))?.index === 2), 'one backup left: every client on it')
  u.peers[2].setAdmin('maint')
  t.equal(u.pick(requestWith({ ip })), undefined, 'none routable')
})

t.test('ip-hash and hash: with every other peer unusable, the 21 tries end in round-robin, never in nothing', async t => {
  for (const options of [{ balancer: 'ip-hash' }, { balancer: 'hash' }, { balancer: 'hash', hashConsistent: false }] as const) {
    const u = upstreamOf({ servers: [{ address: '127.0.0.1:1', weight: 50 }, ...servers(3)], ...options })
    const requests = Array.from({ length: 300 }, (_, i) => requestWith({ ip: `10.0.${i}.1`, url: `/k${i}` }))
    const before = requests.map(r => (u.pick(r) as Peer).index)
    const last = u.peers[3]
    const heldByLast = before.filter(p => p === 3).length
    t.ok(heldByLast > 0, `${options.balancer} ${JSON.stringify(options)}: the light peer holds some keys (${heldByLast})`)
    for (const peer of u.peers.slice(0, 3)) peer.setAdmin('maint')
    t.ok(requests.every(r => u.pick(r) === last), `${JSON.stringify(options)}: every key reaches the one routable peer`)
    t.equal(u.pick(requests[0], [last]), undefined, `${JSON.stringify(options)}: none left once it is excluded`)
  }
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
  t.equal(cookieValue('sidx=1;SID = abc ;b=2', 'sid'), 'abc ', 'as nginx: any case, spaces before the value skipped, after it kept')
  t.equal(cookieValue('a=1;  sid=', 'sid'), '', 'empty: no key, so round-robin')
  t.equal(cookieValue('sid', 'sid'), undefined)

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

t.test('hash consistent: false is nginx\'s plain hash: sticky, weighted, rehashed past an unusable peer', async t => {
  const u = upstreamOf({ servers: [{ address: '127.0.0.1:1', weight: 3 }, ...servers(3)], balancer: 'hash', hashConsistent: false })
  const keys = Array.from({ length: 2000 }, (_, i) => `/k${i}`)
  const before = keys.map(url => (u.pick(requestWith({ url })) as Peer).index)
  t.same(keys.map(url => (u.pick(requestWith({ url, headers: { 'x-other': '1' } })) as Peer).index), before, 'sticky')
  const counts = countOf(before)
  t.equal(counts.size, 4)
  t.ok((counts.get(0) ?? 0) > 2.4 * (counts.get(1) ?? 0), `weight 3 gets about three times the keys (${counts.get(0)} vs ${counts.get(1)})`)
  u.peers[2].setAdmin('maint')
  const after = keys.map(url => (u.pick(requestWith({ url })) as Peer).index)
  t.ok(after.every((p, i) => before[i] === 2 || p === before[i]), 'a peer out of rotation: only its keys move (the others are not rehashed)')
  t.notOk(after.includes(2))
  const own = u.pick(requestWith({ url: '/k1' })) as Peer
  t.not(u.pick(requestWith({ url: '/k1' }), [own]), own, 'excluded: rehashed elsewhere')
})

t.test('hash: the points and the key\'s bytes are nginx\'s', async t => {
  t.equal(pointBase('127.0.0.1:8001'), '127.0.0.1\u00008001')
  t.equal(pointBase('[::1]:8001'), '[::1]\u00008001', 'IPv6: the host keeps its brackets')
  t.equal(pointBase('backend1'), 'backend1\u0000', 'no port: an empty one')
  t.equal(pointBase('backend1:http'), 'backend1:http\u0000')
  t.equal(crc32('123456789'), 0xcbf43926, 'the CRC-32 check value')
  t.equal(crc32('\u00e9'), crc32Bytes(Uint8Array.of(0xe9), 0), 'a character up to U+00FF is its byte, as Node hands over header bytes')
  t.equal(crc32('€'), crc32Bytes(Buffer.from('€'), 0), 'a key with a character above U+00FF: its UTF-8 bytes')
  t.equal(crc32('b', crc32('a')), crc32('ab'), 'a CRC continues from a seed')
  t.throws(() => upstreamOf({ servers: servers(2), hashConsistent: false }), /upstream "u": option "hashConsistent" is only read by balancer "hash" \(balancer is "round-robin"\)/)
  t.throws(() => upstreamOf({ servers: servers(2), balancer: 'hash', hashConsistent: 'no' as unknown as boolean }), /upstream "u": option "hashConsistent" must be true or false, got "no"/)
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
