import type { Balancer, BalancedUpstream } from './balancer.js'
import type { Peer } from '../lib/peer.js'
import { PeerHeap } from './peer-heap.js'

/**
 * Fewest in-flight requests relative to weight (nginx-upstream-fair's idea);
 * ties go to the peer that has waited longest since its last request. The
 * routable peers sit in heaps that the upstream keeps current as in-flight
 * counts move, so a pick reads the top instead of scanning every peer.
 */
export class FairBalancer implements Balancer {
  readonly name = 'fair'
  #version = -1
  #lastPick = new Float64Array(0)
  #picks = 0
  readonly #primary: PeerHeap
  readonly #backup: PeerHeap

  constructor () {
    const less = (a: Peer, b: Peer): boolean => {
      const left = a.inflight * b.weight
      const right = b.inflight * a.weight
      return left < right || (left === right && this.#lastPick[a.index] < this.#lastPick[b.index])
    }
    this.#primary = new PeerHeap(less)
    this.#backup = new PeerHeap(less)
  }

  pick (upstream: BalancedUpstream, _request: unknown, exclude?: readonly Peer[]): Peer | undefined {
    if (upstream.version !== this.#version) this.#rebuild(upstream)
    const peer = this.#primary.best(exclude) ?? this.#backup.best(exclude)
    if (peer !== undefined) {
      this.#lastPick[peer.index] = ++this.#picks
      this.inflightChanged(peer)
    }
    return peer
  }

  inflightChanged (peer: Peer): void {
    if (this.#primary.has(peer)) this.#primary.update(peer)
    else this.#backup.update(peer)
  }

  #rebuild (upstream: BalancedUpstream): void {
    const bound = upstream.peers.length
    if (this.#lastPick.length < bound) {
      const grown = new Float64Array(bound)
      grown.set(this.#lastPick)
      this.#lastPick = grown
    }
    const tiers = upstream.routableTiers()
    this.#primary.reset(tiers.primary, bound)
    this.#backup.reset(tiers.backup, bound)
    this.#version = upstream.version
  }
}
