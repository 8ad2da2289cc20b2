import type { FastifyRequest } from 'fastify'
import type { Peer } from '../lib/peer.js'

/** What a balancer may read of an upstream. */
export interface BalancedUpstream {
  readonly name: string
  readonly peers: readonly Peer[]
  /** Bumped on every peer state or weight change: a balancer may cache until it moves. */
  readonly version: number
  /** Peers routable right now, by tier, cached per version. */
  routableTiers (): RoutableTiers
}

export interface RoutableTiers {
  primary: readonly Peer[]
  backup: readonly Peer[]
}

/**
 * Picks the peer for a request, skipping peers that are not routable and those
 * in `exclude` (already tried by this request). Backup peers are picked only
 * when no primary peer can be.
 */
export interface Balancer {
  readonly name: string
  pick (upstream: BalancedUpstream, request: FastifyRequest, exclude?: readonly Peer[]): Peer | undefined
  /** Told whenever a peer's in-flight count moves (load-aware balancers keep an index on it). */
  inflightChanged? (peer: Peer): void
}

/** A peer a pick may return: routable, below its `maxConns`, and not already tried by the request. */
export function usable (peer: Peer, exclude: readonly Peer[] | undefined): boolean {
  return peer.routable && !peer.full && (exclude === undefined || !exclude.includes(peer))
}
