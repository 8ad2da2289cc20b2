import CRC32 from 'crc-32'
import type { Peer } from '../lib/peer.js'
import type { BalancedUpstream } from './balancer.js'

/** nginx's hash methods try a server, then up to 20 more, before they fall back to round-robin. */
export const HASH_TRIES = 21

/**
 * CRC-32 (zlib's, which is nginx's ngx_crc32) of a text's bytes, optionally
 * continuing from the CRC of what came before it. Node hands header values
 * over one character per byte and URLs are ASCII, so a character up to U+00FF
 * is its byte, as nginx saw it on the wire; a text with a character above
 * (only a key function can return one) is hashed as its UTF-8.
 */
export function crc32 (text: string, seed?: number): number {
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) > 0xff) return CRC32.str(text, seed) >>> 0
  }
  return CRC32.bstr(text, seed) >>> 0
}

/** CRC-32 of bytes, continuing from `seed`. */
export function crc32Bytes (bytes: Uint8Array, seed: number): number {
  return CRC32.buf(bytes, seed) >>> 0
}

/**
 * nginx's weighted walk over an upstream's servers in configuration order:
 * `w` (0 <= w < total) falls to the first server whose cumulative weight
 * exceeds it. nginx walks the list; a binary search over the running sums
 * gives the same server in log n steps.
 */
export class WeightedWalk {
  readonly peers: readonly Peer[]
  readonly total: number
  readonly #ends: Int32Array

  constructor (peers: readonly Peer[]) {
    this.peers = peers
    this.#ends = new Int32Array(peers.length)
    let sum = 0
    for (let i = 0; i < peers.length; i++) {
      sum += peers[i].weight
      this.#ends[i] = sum
    }
    this.total = sum
  }

  at (w: number): Peer {
    const ends = this.#ends
    let lo = 0
    let hi = ends.length - 1
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (ends[mid] <= w) lo = mid + 1
      else hi = mid
    }
    return this.peers[lo]
  }
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
    let changed = false
    for (let i = 0; i < peers.length; i++) {
      if (this.#weights[i] !== peers[i].weight) {
        this.#weights[i] = peers[i].weight
        changed = true
      }
    }
    return changed
  }
}

/** Primary and backup servers, each in configuration order (nginx keeps backups in a list of their own). */
export function tiersOf (peers: readonly Peer[]): { primary: Peer[], backup: Peer[] } {
  return { primary: peers.filter(peer => !peer.backup), backup: peers.filter(peer => peer.backup) }
}

/**
 * What a hash method places a request over: the primaries while one is
 * routable, else the backups while one is, else nothing. nginx's hash methods
 * refuse `backup`; here backups get the same placement among themselves.
 */
export function tierOf<T> (upstream: BalancedUpstream, primary: T, backup: T): T | undefined {
  const tiers = upstream.routableTiers()
  if (tiers.primary.length > 0) return primary
  return tiers.backup.length > 0 ? backup : undefined
}
