import type { Balancer, BalancedUpstream } from './balancer.js'
import type { Peer } from '../lib/peer.js'
import { CycleCursor, weightedCycle } from './schedule.js'

/**
 * Smooth weighted round-robin over the routable peers. The cycle is rebuilt
 * only when the upstream's state moves, so a pick is a cursor step.
 */
export class RoundRobinBalancer implements Balancer {
  readonly name: string = 'round-robin'
  #version = -1
  readonly #primary = new CycleCursor()
  readonly #backup = new CycleCursor()

  pick (upstream: BalancedUpstream, _request: unknown, exclude?: readonly Peer[]): Peer | undefined {
    if (upstream.version !== this.#version) {
      const tiers = upstream.routableTiers()
      this.#primary.reset(weightedCycle(tiers.primary))
      this.#backup.reset(weightedCycle(tiers.backup))
      this.#version = upstream.version
    }
    return this.#primary.next(exclude) ?? this.#backup.next(exclude)
  }
}
