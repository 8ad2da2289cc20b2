import type { FastifyRequest } from 'fastify'
import type { Balancer, BalancedUpstream } from './balancer.js'
import { usable } from './balancer.js'
import type { Peer } from '../lib/peer.js'
import { HASH_TRIES, tierOf, tiersOf, WeightedWalk, WeightsSeen } from './hashing.js'
import { RoundRobinBalancer } from './round-robin.js'

/**
 * nginx's ip_hash (ngx_http_upstream_ip_hash_module), to the same server for
 * the same address and server list: the hash starts at 89 and takes each of
 * the address's bytes in as `(hash * 113 + byte) % 6271`; `hash % total
 * weight` is walked over the primary servers' weights (every primary, down or
 * not, so clients of the peers that stay up keep their peer). A server that
 * is not usable (or already tried by this request) has the same bytes taken
 * in again, up to 20 more times; then round-robin picks.
 *
 * nginx refuses `backup` with ip_hash; here backups get the same placement
 * among themselves, used only while no primary is routable.
 */
export class IpHashBalancer implements Balancer {
  readonly name = 'ip-hash'
  readonly #fallback = new RoundRobinBalancer()
  readonly #weights = new WeightsSeen()
  #primary = new WeightedWalk([])
  #backup = new WeightedWalk([])
  readonly #bytes = new Uint8Array(16)

  pick (upstream: BalancedUpstream, request: FastifyRequest, exclude?: readonly Peer[]): Peer | undefined {
    if (this.#weights.changed(upstream)) {
      const { primary, backup } = tiersOf(upstream.peers)
      this.#primary = new WeightedWalk(primary)
      this.#backup = new WeightedWalk(backup)
    }
    const walk = tierOf(upstream, this.#primary, this.#backup)
    if (walk === undefined) return undefined
    // nginx hashes only with two servers or more
    if (walk.peers.length > 1) {
      const bytes = this.#bytes
      const length = clientBytes(request.ip ?? '', bytes)
      let hash = 89
      for (let tries = 0; tries < HASH_TRIES; tries++) {
        for (let i = 0; i < length; i++) hash = (hash * 113 + bytes[i]) % 6271
        const peer = walk.at(hash % walk.total)
        if (usable(peer, exclude)) return peer
      }
    }
    return this.#fallback.pick(upstream, request, exclude)
  }
}

/**
 * Writes into `out` the bytes of a client address that nginx's ip_hash reads
 * and returns how many: the first three of an IPv4 address (its /24), all 16
 * of an IPv6 one. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
 * dual-stack Node server sees of IPv4 clients) counts as its IPv4 address, as
 * nginx sees IPv4 clients on its usual IPv4 listener. What is not an address
 * hashes as nginx's pseudo-address for other families: three zero bytes.
 */
export function clientBytes (ip: string, out: Uint8Array): number {
  if (ipv4Into(ip, 0, ip.length, out, 0)) return 3
  if (ipv6Into(ip, out)) {
    if (isV4Mapped(out)) {
      out.copyWithin(0, 12, 15)
      return 3
    }
    return 16
  }
  out.fill(0, 0, 3)
  return 3
}

function isV4Mapped (bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false
  return bytes[10] === 0xff && bytes[11] === 0xff
}

/** Dotted-quad `text[start, end)` into out[at..at+3]; false if it is not one. */
function ipv4Into (text: string, start: number, end: number, out: Uint8Array, at: number): boolean {
  let part = 0
  let value = 0
  let digits = 0
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i)
    if (c >= 48 && c <= 57) {
      value = value * 10 + c - 48
      if (++digits > 3 || value > 255) return false
    } else if (c === 46 && digits > 0 && part < 3) {
      out[at + part++] = value
      value = 0
      digits = 0
    } else {
      return false
    }
  }
  if (digits === 0 || part !== 3) return false
  out[at + 3] = value
  return true
}

function hexValue (c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  if (c >= 97 && c <= 102) return c - 87
  if (c >= 65 && c <= 70) return c - 55
  return -1
}

/** An IPv6 address (`::` shorthand, a dotted-quad tail, a `%zone` ignored) into 16 bytes of `out`; false if it is not one. */
function ipv6Into (text: string, out: Uint8Array): boolean {
  const zone = text.indexOf('%')
  const end = zone === -1 ? text.length : zone
  let n = 0
  let gap = -1
  let i = 0
  if (text.startsWith('::')) {
    gap = 0
    i = 2
  }
  while (i < end) {
    let j = i
    let value = 0
    while (j < end && j - i < 4) {
      const digit = hexValue(text.charCodeAt(j))
      if (digit < 0) break
      value = value * 16 + digit
      j++
    }
    if (j < end && text.charCodeAt(j) === 46) {
      if (n > 12 || !ipv4Into(text, i, end, out, n)) return false
      n += 4
      break
    }
    if (j === i || n === 16) return false
    out[n++] = value >> 8
    out[n++] = value & 0xff
    if (j === end) break
    if (text.charCodeAt(j) !== 58 || ++j === end) return false
    if (text.charCodeAt(j) === 58) {
      if (gap !== -1) return false
      gap = n
      j++
    }
    i = j
  }
  if (gap === -1) return n === 16
  if (n === 16) return false
  const tail = n - gap
  out.copyWithin(16 - tail, gap, n)
  out.fill(0, gap, 16 - tail)
  return true
}
