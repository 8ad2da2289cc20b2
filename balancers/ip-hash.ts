import type { FastifyRequest } from 'fastify'
import type { Balancer, BalancedUpstream } from './balancer.js'
import { usable } from './balancer.js'
import type { Peer } from '../lib/peer.js'
import { hash32, mix32, WeightsSeen } from './hashing.js'
import { RoundRobinBalancer } from './round-robin.js'

const TRIES = 20

/** The part of a client address that picks its peer: the /24 of IPv4 (as nginx), the whole IPv6 address. */
export function clientKey (ip: string): string {
  const v4 = ip.startsWith('::ffff:') ? ip.slice(7) : ip
  if (v4.includes('.') && !v4.includes(':')) return v4.slice(0, v4.lastIndexOf('.'))
  return ip
}

/**
 * nginx's ip_hash: a client's /24 maps to a weighted slot over all primary
 * peers; when that peer is not usable the hash is stirred and tried again,
 * up to 20 times, then round-robin takes over (which also covers backups).
 * Clients of peers that stay up keep their peer when another goes away.
 */
export class IpHashBalancer implements Balancer {
  readonly name = 'ip-hash'
  readonly #fallback = new RoundRobinBalancer()
  readonly #weights = new WeightsSeen()
  #slots: Peer[] = []

  pick (upstream: BalancedUpstream, request: FastifyRequest, exclude?: readonly Peer[]): Peer | undefined {
    if (upstream.routableTiers().primary.length > 0) {
      if (this.#weights.changed(upstream)) this.#slots = slotsOf(upstream.peers)
      let h = hash32(clientKey(request.ip))
      for (let i = 0; i < TRIES; i++) {
        const peer = this.#slots[h % this.#slots.length]
        if (usable(peer, exclude)) return peer
        h = mix32(h + i + 1)
      }
    }
    return this.#fallback.pick(upstream, request, exclude)
  }
}

function slotsOf (peers: readonly Peer[]): Peer[] {
  const slots: Peer[] = []
  for (const peer of peers) {
    if (peer.backup) continue
    for (let w = 0; w < peer.weight; w++) slots.push(peer)
  }
  return slots
}
