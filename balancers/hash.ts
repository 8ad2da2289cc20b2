import type { FastifyRequest } from 'fastify'
import type { Balancer, BalancedUpstream } from './balancer.js'
import { usable } from './balancer.js'
import type { Peer } from '../lib/peer.js'
import { hash32, WeightsSeen } from './hashing.js'
import { RoundRobinBalancer } from './round-robin.js'

/** Where the hash balancer reads its key: the URL, a header, a cookie, or a function of the request. */
export type HashKey =
  | 'url'
  | { header: string }
  | { cookie: string }
  | ((request: FastifyRequest) => string | undefined)

/** Ring points per unit of weight, as ketama and nginx's `hash ... consistent`. */
const POINTS_PER_WEIGHT = 160

interface Ring {
  points: Uint32Array
  owners: Peer[]
}

/**
 * Consistent hashing (ketama ring) over all primary peers: a key goes to the
 * first point clockwise from its hash whose peer is usable, so removing one
 * of n peers remaps only that peer's keys (about 1/n). Backups get their own
 * ring, used when no primary is routable. A request without a key is
 * balanced round-robin, as nginx does.
 */
export class HashBalancer implements Balancer {
  readonly name = 'hash'
  readonly #readKey: (request: FastifyRequest) => string | undefined
  readonly #fallback = new RoundRobinBalancer()
  readonly #weights = new WeightsSeen()
  #primary: Ring = emptyRing()
  #backup: Ring = emptyRing()

  constructor (key: HashKey = 'url') {
    this.#readKey = keyReader(key)
  }

  pick (upstream: BalancedUpstream, request: FastifyRequest, exclude?: readonly Peer[]): Peer | undefined {
    const key = this.#readKey(request)
    if (key === undefined || key === '') return this.#fallback.pick(upstream, request, exclude)
    if (this.#weights.changed(upstream)) {
      this.#primary = ringOf(upstream.peers.filter(peer => !peer.backup))
      this.#backup = ringOf(upstream.peers.filter(peer => peer.backup))
    }
    const h = hash32(key)
    const tiers = upstream.routableTiers()
    return (tiers.primary.length > 0 ? lookup(this.#primary, h, exclude) : undefined) ??
      (tiers.backup.length > 0 ? lookup(this.#backup, h, exclude) : undefined)
  }
}

function keyReader (key: HashKey): (request: FastifyRequest) => string | undefined {
  if (typeof key === 'function') return key
  if (key === 'url') return request => request.url
  if ('header' in key) {
    const name = key.header.toLowerCase()
    return request => {
      const value = request.headers[name]
      return Array.isArray(value) ? value.join(',') : value
    }
  }
  const name = key.cookie
  return request => cookieValue(request.headers.cookie, name)
}

export function cookieValue (header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim()
  }
  return undefined
}

function emptyRing (): Ring {
  return { points: new Uint32Array(0), owners: [] }
}

function ringOf (peers: readonly Peer[]): Ring {
  const entries: Array<[number, Peer]> = []
  for (const peer of peers) {
    for (let v = 0; v < peer.weight * POINTS_PER_WEIGHT; v++) {
      entries.push([hash32(`${peer.address}-${v}`), peer])
    }
  }
  entries.sort((a, b) => a[0] - b[0])
  return { points: Uint32Array.from(entries, e => e[0]), owners: entries.map(e => e[1]) }
}

function lookup (ring: Ring, h: number, exclude: readonly Peer[] | undefined): Peer | undefined {
  const { points, owners } = ring
  const n = points.length
  let lo = 0
  let hi = n
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (points[mid] < h) lo = mid + 1
    else hi = mid
  }
  for (let step = 0; step < n; step++) {
    const peer = owners[(lo + step) % n]
    if (usable(peer, exclude)) return peer
  }
  return undefined
}
