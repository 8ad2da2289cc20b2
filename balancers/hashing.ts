import type { Peer } from '../lib/peer.js'

/** FNV-1a over UTF-16 code units, finished with murmur3's avalanche so close keys spread. */
export function hash32 (text: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return mix32(h)
}

export function mix32 (h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/**
 * Remembers the weights a structure was built for: hash tables are built over
 * every peer (routable or not, so keys stay put) and need rebuilding only when
 * a weight changes, not on every state change. Weights are compared only when
 * the upstream's version moved, so a pick does not scan the peers.
 */
export class WeightsSeen {
  #weights: number[] = []
  #version = -1

  changed (upstream: { version: number, peers: readonly Peer[] }): boolean {
    if (upstream.version === this.#version) return false
    this.#version = upstream.version
    const peers = upstream.peers
    let changed = peers.length !== this.#weights.length
    for (let i = 0; i < peers.length; i++) {
      if (this.#weights[i] !== peers[i].weight) {
        this.#weights[i] = peers[i].weight
        changed = true
      }
    }
    this.#weights.length = peers.length
    return changed
  }
}
