import type { FastifyRequest } from 'fastify'
import type { Balancer, BalancedUpstream } from './balancer.js'
import { usable } from './balancer.js'
import type { Peer } from '../lib/peer.js'
import { crc32, crc32Bytes, HASH_TRIES, tierOf, tiersOf, WeightedWalk, WeightsSeen } from './hashing.js'
import { RoundRobinBalancer } from './round-robin.js'

/** Where the hash balancer reads its key: the URL, a header, a cookie, or a function of the request. */
export type HashKey =
  | 'url'
  | { header: string }
  | { cookie: string }
  | ((request: FastifyRequest) => string | undefined)

/** Ring points per unit of weight, as ketama and nginx's `hash ... consistent`. */
const POINTS_PER_WEIGHT = 160

/** Above any server's position in its list: 2^21 servers, times a 32-bit hash, stays exact in a double. */
const ORDER_SPAN = 2 ** 21

/** Where a key goes among one tier's servers; undefined when the tries run out. */
interface Placement {
  /** Servers placed over: nginx hashes only over two or more. */
  readonly servers: number
  place (key: string, exclude: readonly Peer[] | undefined): Peer | undefined
}

/**
 * nginx's `hash $key consistent` (the default) or `hash $key` (`consistent:
 * false`), to the same server for the same key and server list. A request
 * without a key, or whose tries run out, is balanced round-robin, as nginx
 * does. nginx refuses `backup` with `hash`; here backups get the same
 * placement among themselves, used only while no primary is routable.
 */
export class HashBalancer implements Balancer {
  readonly name = 'hash'
  readonly #readKey: (request: FastifyRequest) => string | undefined
  readonly #placementOf: (peers: readonly Peer[]) => Placement
  readonly #fallback = new RoundRobinBalancer()
  readonly #weights = new WeightsSeen()
  #primary: Placement
  #backup: Placement

  constructor (key: HashKey = 'url', consistent = true) {
    this.#readKey = keyReader(key)
    this.#placementOf = consistent ? peers => new ConsistentRing(peers) : peers => new KeyModulo(peers)
    this.#primary = this.#backup = this.#placementOf([])
  }

  pick (upstream: BalancedUpstream, request: FastifyRequest, exclude?: readonly Peer[]): Peer | undefined {
    const key = this.#readKey(request)
    if (key === undefined || key === '') return this.#fallback.pick(upstream, request, exclude)
    if (this.#weights.changed(upstream)) {
      const { primary, backup } = tiersOf(upstream.peers)
      this.#primary = this.#placementOf(primary)
      this.#backup = this.#placementOf(backup)
    }
    const placement = tierOf(upstream, this.#primary, this.#backup)
    if (placement === undefined) return undefined
    return (placement.servers > 1 ? placement.place(key, exclude) : undefined) ??
      this.#fallback.pick(upstream, request, exclude)
  }
}

/**
 * nginx's ketama ring (ngx_http_upstream_hash_module, as Cache::Memcached::Fast):
 * each server has 160 points per unit of weight, chained as
 * `crc32(host "\0" port prev)` where prev is the point before (four bytes,
 * little-endian; zero for the first) and host and port are split at the
 * last colon of the server's name. A key goes to the first point at or after
 * `crc32(key)`; a point whose server is not usable passes to the next, 20
 * times at most. Removing one of n servers moves only its keys (about 1/n).
 */
class ConsistentRing implements Placement {
  readonly servers: number
  readonly #points: Uint32Array
  readonly #owners: Peer[]

  constructor (peers: readonly Peer[]) {
    this.servers = peers.length
    let count = 0
    for (const peer of peers) count += peer.weight * POINTS_PER_WEIGHT
    // hash and server order packed in one number (exact below 2^53): a numeric sort orders by hash, ties by order
    const packed = new Float64Array(count)
    const prev = new Uint8Array(4)
    const prevView = new DataView(prev.buffer)
    let n = 0
    peers.forEach((peer, order) => {
      const base = crc32(pointBase(peer.address))
      prev.fill(0)
      for (let j = 0; j < peer.weight * POINTS_PER_WEIGHT; j++) {
        const hash = crc32Bytes(prev, base)
        packed[n++] = hash * ORDER_SPAN + order
        prevView.setUint32(0, hash, true)
      }
    })
    packed.sort()
    // equal hashes keep one point, the first server's (nginx's qsort, glibc's merge sort, keeps that order)
    const points: number[] = []
    const owners: Peer[] = []
    for (const entry of packed) {
      const hash = Math.floor(entry / ORDER_SPAN)
      if (points.length > 0 && points[points.length - 1] === hash) continue
      points.push(hash)
      owners.push(peers[entry - hash * ORDER_SPAN])
    }
    this.#points = Uint32Array.from(points)
    this.#owners = owners
  }

  place (key: string, exclude: readonly Peer[] | undefined): Peer | undefined {
    const points = this.#points
    const n = points.length
    const hash = crc32(key)
    let lo = 0
    let hi = n
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (points[mid] < hash) lo = mid + 1
      else hi = mid
    }
    for (let tries = 0; tries < HASH_TRIES; tries++) {
      const peer = this.#owners[(lo + tries) % n]
      if (usable(peer, exclude)) return peer
    }
    return undefined
  }
}

/**
 * nginx's split of a server name for its ring points: the host, a zero byte,
 * then the port (the digits after the last colon; none if there are none).
 */
export function pointBase (server: string): string {
  for (let j = server.length - 1; j >= 0; j--) {
    const c = server.charCodeAt(j)
    if (c === 58) return `${server.slice(0, j)}\0${server.slice(j + 1)}`
    if (c < 48 || c > 57) break
  }
  return `${server}\0`
}

/**
 * nginx's plain `hash $key` (as Cache::Memcached): `(crc32(key) >> 16) &
 * 0x7fff`, modulo the total weight, walked over the servers' weights; a
 * server that is not usable adds `crc32(n key)` (n = 1, 2, ... as decimal
 * text) the same way, 20 times at most. Every key moves when a server is
 * added or removed: use it to keep the placement of an nginx that had it.
 */
class KeyModulo implements Placement {
  readonly servers: number
  readonly #walk: WeightedWalk

  constructor (peers: readonly Peer[]) {
    this.servers = peers.length
    this.#walk = new WeightedWalk(peers)
  }

  place (key: string, exclude: readonly Peer[] | undefined): Peer | undefined {
    const walk = this.#walk
    let hash = 0
    for (let rehash = 0; rehash < HASH_TRIES; rehash++) {
      const crc = rehash === 0 ? crc32(key) : crc32(key, crc32(String(rehash)))
      hash += (crc >>> 16) & 0x7fff
      const peer = walk.at(hash % walk.total)
      if (usable(peer, exclude)) return peer
    }
    return undefined
  }
}

function keyReader (key: HashKey): (request: FastifyRequest) => string | undefined {
  if (typeof key === 'function') return key
  if (key === 'url') return request => request.url
  if ('header' in key) {
    const name = key.header.toLowerCase()
    return request => {
      const value = request.headers[name]
      return Array.isArray(value) ? value.join(', ') : value
    }
  }
  const name = key.cookie
  return request => cookieValue(request.headers.cookie, name)
}

/**
 * A cookie's value as nginx's `$cookie_name` reads it: the name matched
 * without regard to case at the start or after a `;` (and spaces), spaces
 * around `=` skipped, the value up to the next `;`.
 */
export function cookieValue (header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined
  const lower = name.toLowerCase()
  // charCodeAt past the end is NaN: the space and `=` tests stop there on their own.
  let start = 0
  for (;;) {
    if (header.slice(start, start + name.length).toLowerCase() === lower) {
      let i = start + name.length
      while (header.charCodeAt(i) === 32) i++
      if (header.charCodeAt(i) === 61) {
        i++
        while (header.charCodeAt(i) === 32) i++
        const last = header.indexOf(';', i)
        return header.slice(i, last === -1 ? header.length : last)
      }
    }
    const next = header.indexOf(';', start)
    if (next === -1) return undefined
    start = next + 1
    while (header.charCodeAt(start) === 32) start++
  }
}
