import type { Peer } from '../lib/peer.js'
import { PeerHeap } from './peer-heap.js'
import { usable } from './balancer.js'

function gcd (a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b]
  return a
}

/**
 * One weighted cycle over `peers`, each appearing weight/g times (g the
 * weights' gcd), with every peer's turns spread evenly across the cycle, the
 * property nginx's smooth weighted round-robin is known for: weights 5:1:1
 * give a b a a a c a, never a a a a a b c. Stride scheduling: a peer's k-th
 * turn falls at (k + phase) / share, where peers of equal share get phases
 * spread over (0, 1) so they do not all fall due together. Built with a heap
 * in O(cycle × log n), so large upstreams stay cheap to rebuild.
 */
export function weightedCycle (peers: readonly Peer[]): Peer[] {
  let g = 0
  let bound = 0
  for (const peer of peers) {
    g = gcd(peer.weight, g)
    bound = Math.max(bound, peer.index + 1)
  }
  const turns = new Float64Array(bound)
  const taken = new Float64Array(bound)
  const phase = new Float64Array(bound)
  const sameShare = new Map<number, Peer[]>()
  for (const peer of peers) {
    const group = sameShare.get(peer.weight)
    if (group === undefined) sameShare.set(peer.weight, [peer])
    else group.push(peer)
  }
  let length = 0
  for (const group of sameShare.values()) {
    group.forEach((peer, rank) => {
      phase[peer.index] = (rank + 0.5) / group.length
      turns[peer.index] = phase[peer.index] / (peer.weight / g)
      length += peer.weight / g
    })
  }
  const heap = new PeerHeap((a, b) =>
    turns[a.index] < turns[b.index] || (turns[a.index] === turns[b.index] && a.index < b.index))
  heap.reset(peers, bound)
  const cycle = new Array<Peer>(length)
  for (let i = 0; i < length; i++) {
    const peer = heap.items[0]
    cycle[i] = peer
    const share = peer.weight / g
    turns[peer.index] = (++taken[peer.index] + phase[peer.index]) / share
    heap.update(peer)
  }
  return cycle
}

/**
 * Walks a cycle from where it last stopped, skipping peers that are not
 * usable. A pick with peers to exclude is a retry of a request that already
 * had its turn: it looks ahead from the cursor without moving it, so retries
 * do not shift the rotation of the requests that follow (nginx: a failing
 * peer stays the first try of its share of requests, not of every one).
 */
export class CycleCursor {
  #cycle: Peer[] = []
  #at = 0

  /** A new cycle (the routable peers changed): the peer that was next stays next, if it is in it. */
  reset (cycle: Peer[]): void {
    const next = this.#cycle[this.#at]
    this.#cycle = cycle
    const at = next === undefined ? -1 : cycle.indexOf(next)
    this.#at = at !== -1 ? at : cycle.length === 0 ? 0 : this.#at % cycle.length
  }

  next (exclude: readonly Peer[] | undefined): Peer | undefined {
    const cycle = this.#cycle
    let at = this.#at
    for (let n = 0; n < cycle.length; n++) {
      const peer = cycle[at]
      at = at + 1 === cycle.length ? 0 : at + 1
      if (usable(peer, exclude)) {
        if (exclude === undefined || exclude.length === 0) this.#at = at
        return peer
      }
    }
    return undefined
  }
}
