import type { Peer } from '../lib/peer.js'
import { usable } from './balancer.js'

/**
 * A binary min-heap of peers that knows where each peer sits, so that a
 * peer whose key moved (in-flight count, next turn) is re-placed in O(log n).
 */
export class PeerHeap {
  readonly items: Peer[] = []
  #pos: Int32Array = new Int32Array(0)
  readonly #less: (a: Peer, b: Peer) => boolean

  constructor (less: (a: Peer, b: Peer) => boolean) {
    this.#less = less
  }

  reset (peers: readonly Peer[], indexBound: number): void {
    if (this.#pos.length < indexBound) this.#pos = new Int32Array(indexBound)
    this.#pos.fill(-1)
    this.items.length = 0
    for (const peer of peers) {
      this.#pos[peer.index] = this.items.length
      this.items.push(peer)
    }
    for (let i = (this.items.length >> 1) - 1; i >= 0; i--) this.#down(i)
  }

  has (peer: Peer): boolean {
    return peer.index < this.#pos.length && this.#pos[peer.index] >= 0
  }

  /** Re-places a peer after its key changed; peers not in the heap are ignored. */
  update (peer: Peer): void {
    if (!this.has(peer)) return
    const i = this.#pos[peer.index]
    if (i > 0 && this.#less(peer, this.items[(i - 1) >> 1])) this.#up(i)
    else this.#down(i)
  }

  /**
   * The smallest usable peer (routable, not in `exclude`). Walks the heap
   * best-first, so the cost grows with the number of unusable peers met, not
   * with the heap size.
   */
  best (exclude: readonly Peer[] | undefined): Peer | undefined {
    const items = this.items
    if (items.length === 0) return undefined
    if (usable(items[0], exclude)) return items[0]
    const frontier = [0]
    while (frontier.length > 0) {
      let at = 0
      for (let k = 1; k < frontier.length; k++) {
        if (this.#less(items[frontier[k]], items[frontier[at]])) at = k
      }
      const i = frontier[at]
      frontier[at] = frontier[frontier.length - 1]
      frontier.pop()
      if (i !== 0 && usable(items[i], exclude)) return items[i]
      const left = 2 * i + 1
      if (left < items.length) frontier.push(left)
      if (left + 1 < items.length) frontier.push(left + 1)
    }
    return undefined
  }

  #up (i: number): void {
    const items = this.items
    const peer = items[i]
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.#less(peer, items[parent])) break
      this.#place(items[parent], i)
      i = parent
    }
    this.#place(peer, i)
  }

  #down (i: number): void {
    const items = this.items
    const n = items.length
    const peer = items[i]
    for (;;) {
      let child = 2 * i + 1
      if (child >= n) break
      if (child + 1 < n && this.#less(items[child + 1], items[child])) child++
      if (!this.#less(items[child], peer)) break
      this.#place(items[child], i)
      i = child
    }
    this.#place(peer, i)
  }

  #place (peer: Peer, i: number): void {
    this.items[i] = peer
    this.#pos[peer.index] = i
  }
}
