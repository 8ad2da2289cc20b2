import t from 'tap'
import type { FastifyRequest } from 'fastify'
import { Registry } from '../lib/registry.js'
import type { UpstreamOptions } from '../lib/upstream.js'
import type { Peer } from '../lib/peer.js'
import { backendFor, backendsFor, whoAmI } from './helpers/backends.js'
import { gateway, backendsOf, countOf } from './helpers/gateway.js'
import { until } from './helpers/wait.js'
import { clientBytes } from '../balancers/ip-hash.js'
import { cookieValue, HashBalancer, pointBase } from '../balancers/hash.js'
import { BALANCER_NAMES, createBalancer } from '../balancers/index.js'
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
  t.same(bytesOf('1:2:3:4:5:6:10.1.2.3'), [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 10, 1, 2, 3], 'six groups and a dotted quad')
  t.same(bytesOf('A::1'), [0, 0x0a, ...Array(13).fill(0), 1], 'every hex digit, A included')
  t.same(bytesOf('255.255.255.255'), [255, 255, 255])
  t.same(bytesOf('1::ffff:10.1.2.3'), [0, 1, ...Array(8).fill(0), 0xff, 0xff, 10, 1, 2, 3], 'mapped only with ten zero bytes first')
  t.same(bytesOf('::ff:10.1.2.3'), [...Array(11).fill(0), 0xff, 10, 1, 2, 3], 'and both of ffff')
  t.same(bytesOf('::ff00:10.1.2.3'), [...Array(10).fill(0), 0xff, 0, 10, 1, 2, 3])
  for (const garbage of ['', 'unknown', '1.2.3', '1.2.3.256', '1.2.3.4.5', '1..2.3', '01234.1.1.1', ':1', '1:', '1:::2', '1::2::3',
    '12345::', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7::8', '::1.2.3', '1:2:3:4:5:6:7:1.2.3.4', 'g::1',
    '1.2.3.', '1.2.3.a', '1-2.3.4', '1g::1', '1::2:3:4:5:6:7:8:9', '1::3:4:5:6:7:8:1.2.3.4']) {
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
  t.equal(cookieValue('uid=1; sid=2', 'sid'), '2', 'another name of the same length is passed by')
  t.equal(cookieValue('xsid=1', 'sid'), undefined, 'a name only at the start or after a ";"')
  t.equal(cookieValue('a=1; bsid=2', 'sid'), undefined)
  t.equal(cookieValue(undefined, 'sid'), undefined, 'no header')

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
  t.equal(pointBase('backend1:80-1'), 'backend1:80-1\u0000', 'a port is digits only')
  t.equal(pointBase('127.0.0.1:8009'), '127.0.0.1\u00008009', 'every digit, 9 included')
  t.equal(pointBase(':8001'), '\u00008001', 'an empty host')
  t.equal(crc32('123456789'), 0xcbf43926, 'the CRC-32 check value')
  t.equal(crc32('\u00e9'), crc32Bytes(Uint8Array.of(0xe9), 0), 'a character up to U+00FF is its byte, as Node hands over header bytes')
  t.equal(crc32('\u00ff'), crc32Bytes(Uint8Array.of(0xff), 0), 'U+00FF included')
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

/** A small seeded generator (mulberry32), so a randomised test replays the same steps every run. */
function seeded (seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

t.test('each built-in balancer is named as its option (what the status page shows)', async t => {
  for (const name of BALANCER_NAMES) {
    t.equal(createBalancer(name).name, name)
    t.equal(upstreamOf({ servers: servers(2), balancer: name }).balancer.name, name)
  }
})

t.test('fair, against its definition over 3000 random steps: the usable peer with the fewest in flight per weight, ties to the one that waited longest', async t => {
  const random = seeded(12)
  const u = upstreamOf({
    servers: [...Array.from({ length: 7 }, (_, i) => ({ address: `127.0.0.1:${20000 + i}`, weight: 1 + (i % 4) })), ...servers(3, { backup: true }).map((s, i) => ({ ...s, address: `127.0.0.1:${21000 + i}` }))],
    balancer: 'fair'
  })
  const peers = u.peers
  const lastPicked = new Map<Peer, number>()
  const wrong: string[] = []
  let picks = 0
  const lighter = (a: Peer, b: Peer): number => a.inflight * b.weight - b.inflight * a.weight || (lastPicked.get(a) ?? 0) - (lastPicked.get(b) ?? 0)
  for (let step = 0; step < 3000; step++) {
    const roll = random()
    const peer = peers[Math.floor(random() * peers.length)]
    if (roll < 0.5) {
      const exclude = random() < 0.3 ? peers.filter(() => random() < 0.2) : undefined
      const usable = peers.filter(p => p.routable && !(exclude ?? []).includes(p))
      const tier = usable.some(p => !p.backup) ? usable.filter(p => !p.backup) : usable
      const best = tier.length === 0 ? [] : tier.filter(p => tier.every(q => lighter(p, q) <= 0))
      const picked = u.pick(requestWith({}), exclude)
      if (picked === undefined ? best.length > 0 : !best.includes(picked)) {
        wrong.push(`step ${step}: picked ${picked?.index}, expected one of ${best.map(p => p.index).join(',')}`)
      }
      if (picked !== undefined) {
        lastPicked.set(picked, ++picks)
        picked.acquire()
      }
    } else if (roll < 0.85) {
      // a request ends, also on a peer taken out meanwhile (its in-flight count still moves)
      if (peer.inflight > 0) peer.release()
    } else if (roll < 0.95) {
      const change = Math.floor(random() * 3)
      if (change === 0) peer.setAdmin(peer.admin === 'ready' ? 'drain' : 'ready')
      else if (change === 1) peer.setProcess(peer.process === 'up' ? 'down' : 'up')
      else peer.setHealth(peer.health === 'unhealthy' ? 'healthy' : 'unhealthy')
    } else {
      peer.setWeight(1 + Math.floor(random() * 4))
    }
  }
  t.same(wrong.slice(0, 5), [], `${wrong.length} of ${picks} picks broke the rule`)
  t.ok(picks > 1000 && new Set(lastPicked.keys()).size === peers.length, 'the steps picked often, and every peer, backups included')
})

t.test('fair: sequential requests to idle peers go round in order of waiting; backups are balanced the same way', async t => {
  const u = upstreamOf({ servers: [...servers(4), ...servers(2, { backup: true }).map((s, i) => ({ ...s, address: `127.0.0.1:${21000 + i}` }))], balancer: 'fair' })
  const served = (n: number): number[] => Array.from({ length: n }, () => {
    const peer = u.pick(requestWith({})) as Peer
    peer.acquire()
    peer.release()
    return peer.index
  })
  const round = served(4)
  t.same([...round].sort(), [0, 1, 2, 3], 'none served yet: each peer once')
  t.same(served(8), [...round, ...round], 'then each to the peer idle the longest: the same order again')
  for (const peer of u.peers.slice(0, 4)) peer.setProcess('down')
  t.same(served(4), [4, 5, 4, 5], 'no primary: the backups in turn')
  const busy = u.pick(requestWith({})) as Peer
  busy.acquire()
  t.same([u.pick(requestWith({}))?.index, u.pick(requestWith({}))?.index], [9 - busy.index, 9 - busy.index], 'a backup with a request in flight is passed by')
  busy.release()
  const [a, b] = u.peers
  a.setProcess('up')
  b.setProcess('up')
  const first = u.pick(requestWith({})) as Peer
  first.acquire()
  const second = u.pick(requestWith({})) as Peer
  second.acquire()
  first.release()
  t.equal(u.pick(requestWith({})), first, 'fewer in flight wins over having waited longer')
})

t.test('every balancer treats a peer taken out at run time, before any pick, as one configured down', async t => {
  const requests = Array.from({ length: 200 }, (_, i) => requestWith({ ip: `10.${i}.1.1`, url: `/k${i}` }))
  for (const options of [{ balancer: 'round-robin' }, { balancer: 'fair' }, { balancer: 'ip-hash' }, { balancer: 'hash' }, { balancer: 'hash', hashConsistent: false }] as const) {
    const configured = upstreamOf({ servers: servers(5).map((s, i) => ({ ...s, down: i === 2 })), ...options })
    const atRunTime = upstreamOf({ servers: servers(5), ...options })
    atRunTime.peers[2].setProcess('down')
    const picks = (u: typeof configured): Array<number | undefined> => requests.map(r => {
      const peer = u.pick(r)
      peer?.acquire()
      return peer?.index
    })
    t.same(picks(atRunTime), picks(configured), JSON.stringify(options))
  }
})

t.test('ip-hash and hash: a weight set at run time places keys as the same weight configured; backups are placed as if alone', async t => {
  const requests = Array.from({ length: 400 }, (_, i) => requestWith({ ip: `10.${i % 250}.${i >> 3}.1`, url: `/k${i}` }))
  const addressOf = (u: ReturnType<typeof upstreamOf>) => requests.map(r => u.pick(r)?.address)
  for (const options of [{ balancer: 'ip-hash' }, { balancer: 'hash' }, { balancer: 'hash', hashConsistent: false }] as const) {
    const name = JSON.stringify(options)
    const configured = upstreamOf({ servers: servers(4).map((s, i) => ({ ...s, weight: i === 1 ? 4 : 1 })), ...options })
    const atRunTime = upstreamOf({ servers: servers(4), ...options })
    const before = addressOf(atRunTime)
    atRunTime.peers[1].setWeight(4)
    const after = addressOf(atRunTime)
    t.same(after, addressOf(configured), `${name}: weight 4 set at run time`)
    t.not(after.join(), before.join(), `${name}: and the placement moved`)

    const withBackups = upstreamOf({ servers: [...servers(2).map(s => ({ ...s, down: true })), ...servers(3, { backup: true }).map((s, i) => ({ ...s, address: `127.0.0.1:${21000 + i}`, weight: 1 + i }))], ...options })
    const alone = upstreamOf({ servers: servers(3).map((s, i) => ({ ...s, address: `127.0.0.1:${21000 + i}`, weight: 1 + i })), ...options })
    t.same(addressOf(withBackups), addressOf(alone), `${name}: every primary down, the backups place keys as those servers alone would`)
  }
})

t.test('hash: a key sticks to its peer whatever comes between; an empty or missing key is balanced round-robin', async t => {
  const keyed = [
    { hashKey: { cookie: 'sid' }, request: (k: string) => requestWith({ headers: { cookie: `a=1; sid=${k}` } }) },
    { hashKey: { header: 'x-user' }, request: (k: string) => requestWith({ headers: { 'x-user': k } }) },
    { hashKey: (r: FastifyRequest) => r.headers['x-tenant'] as string | undefined, request: (k: string) => requestWith({ headers: { 'x-tenant': k } }) },
    { hashKey: 'url', request: (k: string) => requestWith({ url: `/${k}` }) }
  ] as const
  for (const { hashKey, request } of keyed) {
    const u = upstreamOf({ servers: servers(5), balancer: 'hash', hashKey: hashKey as never })
    const name = typeof hashKey === 'function' ? 'a function' : JSON.stringify(hashKey)
    const keys = Array.from({ length: 50 }, (_, i) => `key-${i}`)
    const placed = keys.map(k => u.pick(request(k))?.index)
    t.equal(new Set(placed).size, 5, `${name}: keys spread`)
    const again = keys.map(k => [1, 2, 3].map(() => u.pick(request(k))?.index))
    t.ok(again.every((seen, i) => seen.every(p => p === placed[i])), `${name}: the same key three times in a row, the same peer each time`)
  }
  const byCookie = upstreamOf({ servers: servers(5), balancer: 'hash', hashKey: { cookie: 'sid' } })
  const spread = (headers: Record<string, string>): number => new Set(Array.from({ length: 10 }, () => byCookie.pick(requestWith({ headers }))?.index)).size
  t.equal(spread({ cookie: 'sid=' }), 5, 'an empty key: round-robin, as nginx')
  t.equal(spread({ cookie: 'other=1' }), 5, 'no such cookie: round-robin')
  t.equal(spread({}), 5, 'no cookie header at all: round-robin')
})

t.test('hash: a header sent twice is one key, its values joined with ", " as nginx\'s $http_ reads it', async t => {
  const u = upstreamOf({ servers: servers(5), balancer: 'hash', hashKey: { header: 'x-user' } })
  const pairs = Array.from({ length: 50 }, (_, i) => [`a${i}`, `b${i}`])
  const joined = pairs.map(([a, b]) => u.pick(requestWith({ headers: { 'x-user': `${a}, ${b}` } }))?.index)
  const twice = pairs.map(([a, b]) => u.pick({ ip: '127.0.0.1', url: '/', headers: { 'x-user': [a, b] } } as unknown as FastifyRequest)?.index)
  t.same(twice, joined)
})

t.test('hash: without options it is nginx\'s consistent hash of the URL', async t => {
  const requests = Array.from({ length: 200 }, (_, i) => requestWith({ url: `/k${i}`, headers: { 'x-user': `u${i % 3}` } }))
  const placement = (balancer: UpstreamOptions['balancer']) => {
    const u = upstreamOf({ servers: servers(5), balancer })
    return requests.map(r => u.pick(r)?.index)
  }
  const consistent = placement(new HashBalancer('url', true))
  t.not(consistent.join(), placement(new HashBalancer('url', false)).join(), 'the two placements differ')
  t.same(placement(new HashBalancer()), consistent, 'new HashBalancer()')
  t.same(placement(createBalancer('hash')), consistent, 'createBalancer(\'hash\')')
  t.same(placement('hash'), consistent, 'balancer: \'hash\'')
})

t.test('a balancer option that is neither a built-in\'s name nor has a pick() method fails at registration', async t => {
  t.throws(() => upstreamOf({ servers: servers(2), balancer: { name: 'no-pick' } as never }),
    /upstream "u": option "balancer" must be one of round-robin, fair, ip-hash, hash or an object with a pick\(\) method, got/)
})

t.test('round-robin keeps its rotation when the routable peers change, and a retry does not move it', async t => {
  const u = upstreamOf({ servers: servers(4) })
  const next = (exclude?: Peer[]): number | undefined => u.pick(requestWith({}), exclude)?.index
  t.same([next(), next()], [0, 1])
  u.peers[0].setAdmin('drain')
  t.equal(next(), 2, 'a peer already served leaves: the one that was next stays next')
  u.peers[3].setAdmin('drain')
  t.same([next(), next()], [1, 2], 'the next one leaves: the rotation goes on after it')
  u.peers[0].setAdmin('ready')
  u.peers[3].setAdmin('ready')
  t.equal(next(), 1, 'both back: the rotation goes on from where it was')
  t.equal(next([u.peers[2]]), 3, 'a retry looks ahead past the peer it tried')
  t.equal(next(), 2, 'and the rotation of later requests is where it was')
  t.same([next([]), next([]), next([])], [3, 0, 1], 'an empty exclude list is a first try: it moves the rotation')
  for (const peer of u.peers) peer.setProcess('down')
  t.equal(next(), undefined, 'none routable')
  u.peers[2].setProcess('up')
  t.same([next(), next()], [2, 2], 'one back: the rotation starts again with it')
})

t.test('round-robin: the documented 5:1:1 order, weights with a common factor rotate as the reduced ones, every point of the rotation close to each peer\'s share', async t => {
  const rotation = (weights: number[], n = weights.reduce((a, b) => a + b, 0)): number[] => {
    const u = upstreamOf({ servers: weights.map((weight, i) => ({ address: `127.0.0.1:${20000 + i}`, weight })) })
    return Array.from({ length: n }, () => (u.pick(requestWith({})) as Peer).index)
  }
  t.same(rotation([5, 1, 1]), [0, 1, 0, 0, 0, 2, 0], 'a b a a a c a')
  t.same(rotation([3, 2, 1]), [0, 1, 0, 2, 1, 0], 'a b a c b a: equal turns by configuration order')
  for (const [weights, reduced] of [[[2, 4], [1, 2]], [[6, 4, 2], [3, 2, 1]], [[10, 10, 5], [2, 2, 1]], [[9, 3, 3, 6], [3, 1, 1, 2]]]) {
    t.same(rotation(weights, 24), rotation(reduced, 24), `${weights.join(':')} as ${reduced.join(':')}`)
  }
  const random = seeded(7)
  let worst = { lag: 0, weights: [] as number[] }
  for (let set = 0; set < 300; set++) {
    const weights = Array.from({ length: 1 + Math.floor(random() * 7) }, () => 1 + Math.floor(random() * (random() < 0.5 ? 5 : 20)))
    const total = weights.reduce((a, b) => a + b, 0)
    const turns = weights.map(() => 0)
    rotation(weights, 2 * total).forEach((index, k) => {
      turns[index]++
      weights.forEach((weight, i) => {
        const lag = Math.abs(turns[i] - (k + 1) * weight / total)
        if (lag > worst.lag) worst = { lag, weights }
      })
    })
  }
  t.ok(worst.lag < 1.5, `every peer within a turn and a half of its share at every point (worst ${worst.lag.toFixed(2)} turns, weights ${worst.weights.join(':')})`)
})
