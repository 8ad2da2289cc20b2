import type { Balancer } from './balancer.js'
import { RoundRobinBalancer } from './round-robin.js'
import { FairBalancer } from './fair.js'
import { IpHashBalancer } from './ip-hash.js'
import { HashBalancer, type HashKey } from './hash.js'

export const BALANCER_NAMES = ['round-robin', 'fair', 'ip-hash', 'hash'] as const
export type BalancerName = typeof BALANCER_NAMES[number]

/**
 * A fresh balancer of a built-in kind: each upstream gets its own, since
 * balancers keep state. `hashKey` and `hashConsistent` are read by `hash`.
 */
export function createBalancer (name: BalancerName, hashKey?: HashKey, hashConsistent = true): Balancer {
  switch (name) {
    case 'round-robin': return new RoundRobinBalancer()
    case 'fair': return new FairBalancer()
    case 'ip-hash': return new IpHashBalancer()
    case 'hash': return new HashBalancer(hashKey, hashConsistent)
  }
}

/** A balancer object (anything with a pick() method) rather than a built-in's name. */
export function isBalancer (value: BalancerName | Balancer): value is Balancer {
  return typeof (value as Partial<Balancer>).pick === 'function'
}
