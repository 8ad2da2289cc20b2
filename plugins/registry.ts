import { EventEmitter } from 'node:events'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { Balancer, BalancedUpstream, RoutableTiers } from '../balancers/balancer.js'
import { BALANCER_NAMES, createBalancer, isBalancer, type BalancerName } from '../balancers/index.js'
import type { HashKey } from '../balancers/hash.js'
import { ADMIN_STATES, Peer, type AdminState, type PeerChange, type PeerOwner } from './peer.js'
import { booleanOption, durationOption, numberOption, optionError, rejectUnknownOptions, showValue, splitHostPort } from './options.js'

export interface ServerOptions {
  /** `host:port`, `[v6]:port` or `http://host:port`. */
  address: string
  /** Share of traffic relative to the other peers (default 1). */
  weight?: number
  /** Used only when no primary peer is routable. */
  backup?: boolean
  /** Starts out down (with supervisord: when `inheritBackendStatus` is set). */
  down?: boolean
  /** Passive failures within `failTimeout` that take the peer out (default 1, 0 disables). */
  maxFails?: number
  /** Window for `maxFails` and time out of rotation, in ms (default 10000). */
  failTimeout?: number
}

/**
 * One upstream's configuration. Plugins that read a section of their own
 * (supervisord, healthCheck, scale) add it here by declaration merging and
 * claim it at registration.
 */
export interface UpstreamOptions {
  servers: Array<string | ServerOptions>
  /** Default `round-robin`; or any object implementing `Balancer`. */
  balancer?: BalancerName | Balancer
  /** For `balancer: 'hash'`: where the key is read (default the URL). */
  hashKey?: HashKey
}

export interface RegistryOptions {
  /** By name, or as a list of `{ name, ...options }` (as a config file may hold them). */
  upstreams: Record<string, UpstreamOptions> | Array<UpstreamOptions & { name: string }>
}

/** A request found no routable peer and could be held while one is started. */
export interface DemandEvent { upstream: string, at: number }

/** A supervisord command ended (in `none` mode too). */
export interface CommandEvent {
  upstream: string
  index: number
  command: 'start' | 'stop'
  ok: boolean
  /** supervisord's fault name (SPAWN_ERROR, BAD_NAME, ...) or a transport failure (TIMEOUT, UNAUTHORIZED, UNREACHABLE). */
  fault?: string
  /** Human-readable reason, for logs and answers. */
  reason?: string
  at: number
}

/** A scaling decision, with the numbers that made it; the supervisord bridge carries it out. */
export interface ScaleEvent {
  upstream: string
  action: 'start' | 'stop'
  index: number
  /** Requests per second per running peer over the window (mean in-flight per running peer for reason 'in-flight'). */
  load: number
  running: number
  /** The loadThreshold (targetInFlight for reason 'in-flight') the load was held against. */
  threshold: number
  reason: 'load' | 'idle' | 'low load' | 'min running' | 'in-flight'
  at: number
}

/** Events of the registry: the "monitor" API, with any number of listeners. */
export interface RegistryEvents {
  change: [PeerChange]
  demand: [DemandEvent]
  command: [CommandEvent]
  scale: [ScaleEvent]
}

const SERVER_KEYS = ['address', 'weight', 'backup', 'down', 'maxFails', 'failTimeout']
const REGISTRY_SECTIONS = ['servers', 'balancer', 'hashKey']
export const MAX_WEIGHT = 1000

export class Upstream implements PeerOwner, BalancedUpstream {
  readonly name: string
  readonly peers: readonly Peer[]
  readonly balancer: Balancer
  /** The upstream's whole configuration, for the plugins that own its other sections. */
  readonly options: Readonly<UpstreamOptions>
  version = 0
  /**
   * Set by a plugin that can start peers on demand (the supervisord bridge,
   * not in `none` mode): the proxy then holds requests while no peer is
   * routable, and emits `demand`, instead of answering 503 at once.
   */
  startsOnDemand = false
  readonly #registry: Registry
  #tiers: RoutableTiers = { primary: [], backup: [] }
  #tiersVersion = -1

  constructor (registry: Registry, name: string, options: UpstreamOptions) {
    const where = `upstream "${name}"`
    this.#registry = registry
    this.name = name
    this.options = options
    if (!Array.isArray(options.servers) || options.servers.length === 0) {
      throw optionError(where, 'option "servers" must be a non-empty array of addresses or server objects')
    }
    this.peers = options.servers.map((server, index) => new Peer(this, serverConfig(server, index, `${where} server ${index}`)))
    this.balancer = balancerOf(options, where)
  }

  peerChanged (change: PeerChange): void {
    this.version++
    this.#registry.emit('change', change)
  }

  inflightChanged (peer: Peer): void {
    this.balancer.inflightChanged?.(peer)
  }

  routableTiers (): RoutableTiers {
    if (this.#tiersVersion !== this.version) {
      const primary: Peer[] = []
      const backup: Peer[] = []
      for (const peer of this.peers) {
        if (peer.routable) (peer.backup ? backup : primary).push(peer)
      }
      this.#tiers = { primary, backup }
      this.#tiersVersion = this.version
    }
    return this.#tiers
  }

  /** Some peer takes requests right now (passive failures included). */
  get routable (): boolean {
    const tiers = this.routableTiers()
    return tiers.primary.length > 0 || tiers.backup.length > 0
  }

  pick (request: FastifyRequest, exclude?: readonly Peer[]): Peer | undefined {
    return this.balancer.pick(this, request, exclude)
  }

  /** The peer at `index`, or an error naming the valid range. */
  peer (index: number): Peer {
    const peer = this.peers[index]
    if (peer === undefined) {
      throw new RangeError(`upstream "${this.name}" has no server ${index} (valid: 0..${this.peers.length - 1})`)
    }
    return peer
  }

  /** Asks whoever can start peers (the supervisord bridge) for one. */
  demand (): void {
    this.#registry.emit('demand', { upstream: this.name, at: Date.now() })
  }
}

/**
 * The upstreams and their peers' state, shared by every plugin of the suite.
 * Plugins never call each other: they read and write peers here and listen
 * to its events.
 */
export class Registry extends EventEmitter<RegistryEvents> {
  readonly upstreams: ReadonlyMap<string, Upstream>
  readonly #claimed = new Set(REGISTRY_SECTIONS)

  constructor (options: RegistryOptions) {
    super()
    this.setMaxListeners(0)
    if (typeof options?.upstreams !== 'object' || options.upstreams === null || Object.keys(options.upstreams).length === 0) {
      throw optionError('registry', 'option "upstreams" must name at least one upstream: { upstreams: { backend: { servers: [...] } } }')
    }
    const upstreams = new Map<string, Upstream>()
    for (const [name, upstream] of namedUpstreams(options.upstreams)) {
      if (upstreams.has(name)) throw optionError(`upstream "${name}"`, 'is defined twice (upstream names must be unique)')
      upstreams.set(name, new Upstream(this, name, upstream))
    }
    this.upstreams = upstreams
  }

  /** The upstream called `name`, or an error naming the ones there are. */
  get (name: string): Upstream {
    const upstream = this.upstreams.get(name)
    if (upstream === undefined) {
      throw new Error(`fastify-supervisord: unknown upstream "${name}" (known: ${[...this.upstreams.keys()].map(n => `"${n}"`).join(', ')})`)
    }
    return upstream
  }

  /** Takes a peer in (`ready`) or out of rotation (`drain`: in-flight requests finish; `maint`). */
  setAdmin (upstream: string, index: number, state: AdminState, reason = 'operator'): Peer {
    if (!ADMIN_STATES.includes(state)) {
      throw new TypeError(`admin state must be one of ${ADMIN_STATES.join(', ')}, got ${showValue(state)}`)
    }
    const peer = this.get(upstream).peer(index)
    peer.setAdmin(state, reason)
    return peer
  }

  setWeight (upstream: string, index: number, weight: number): Peer {
    const peer = this.get(upstream).peer(index)
    peer.setWeight(numberOption(weight, 1, `upstream "${upstream}" server ${index}`, 'weight', { min: 1, max: MAX_WEIGHT, integer: true }))
    return peer
  }

  /** A plugin says it reads this section of the upstreams' options. */
  claim (section: string): void {
    this.#claimed.add(section)
  }

  /** Options sections that no registered plugin reads: most likely typos. */
  unclaimedSections (): string[] {
    const unclaimed: string[] = []
    for (const upstream of this.upstreams.values()) {
      for (const key of Object.keys(upstream.options)) {
        if (!this.#claimed.has(key)) unclaimed.push(`upstream "${upstream.name}": option "${key}"`)
      }
    }
    return unclaimed
  }

  close (): void {
    for (const upstream of this.upstreams.values()) {
      for (const peer of upstream.peers) peer.dispose()
    }
  }
}

function namedUpstreams (upstreams: RegistryOptions['upstreams']): Array<[string, UpstreamOptions]> {
  const entries: Array<[unknown, unknown]> = Array.isArray(upstreams)
    ? upstreams.map((upstream, i) => [upstream?.name ?? `#${i}`, upstream])
    : Object.entries(upstreams)
  return entries.map(([name, upstream]) => {
    if (typeof name !== 'string' || name === '' || /[^A-Za-z0-9_.-]/.test(name)) {
      throw optionError(`upstream ${showValue(name)}`, 'name must be letters, digits, "_", "." or "-" (it prefixes supervisord program names)')
    }
    if (typeof upstream !== 'object' || upstream === null) {
      throw optionError(`upstream "${name}"`, `must be an object with "servers", got ${showValue(upstream)}`)
    }
    if (Array.isArray(upstreams)) {
      const { name: _name, ...rest } = upstream as UpstreamOptions & { name: string }
      return [name, rest]
    }
    return [name, upstream as UpstreamOptions]
  })
}

function balancerOf (options: UpstreamOptions, where: string): Balancer {
  const balancer = options.balancer ?? 'round-robin'
  if (isBalancer(balancer)) return balancer
  if (!BALANCER_NAMES.includes(balancer)) {
    throw optionError(where, `option "balancer" must be one of ${BALANCER_NAMES.join(', ')} or an object with a pick() method, got ${showValue(balancer)}`)
  }
  if (options.hashKey !== undefined && balancer !== 'hash') {
    throw optionError(where, `option "hashKey" is only read by balancer "hash" (balancer is "${balancer}")`)
  }
  if (options.hashKey !== undefined && !validHashKey(options.hashKey)) {
    throw optionError(where, `option "hashKey" must be "url", { header: name }, { cookie: name } or a function, got ${showValue(options.hashKey)}`)
  }
  return createBalancer(balancer, options.hashKey)
}

function validHashKey (key: unknown): boolean {
  if (key === 'url' || typeof key === 'function') return true
  if (typeof key !== 'object' || key === null) return false
  const value = (key as Record<string, unknown>).header ?? (key as Record<string, unknown>).cookie
  return Object.keys(key).length === 1 && typeof value === 'string' && value !== ''
}

/** `host:port`, `[v6]:port` or `http://host:port[/]`, into host and port. */
export function parseAddress (address: unknown, where: string): { host: string, port: number } {
  let hostPort = typeof address === 'string' ? address : ''
  if (/^http:\/\//i.test(hostPort)) {
    const url = URL.canParse(hostPort) ? new URL(hostPort) : undefined
    if (url === undefined || url.port === '' || (url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.username !== '') {
      throw optionError(where, `option "address" must be host:port or http://host:port (no path), got ${showValue(address)}`)
    }
    hostPort = url.host
  }
  const parts = splitHostPort(hostPort)
  if (parts === undefined) {
    throw optionError(where, `option "address" must be host:port with a port from 1 to 65535, got ${showValue(address)}`)
  }
  return parts
}

function serverConfig (server: string | ServerOptions, index: number, where: string) {
  const options: ServerOptions = typeof server === 'string' ? { address: server } : server
  if (typeof options !== 'object' || options === null) {
    throw optionError(where, `must be an address string or an object with "address", got ${showValue(server)}`)
  }
  rejectUnknownOptions(options, SERVER_KEYS, where)
  return {
    index,
    ...parseAddress(options.address, where),
    weight: numberOption(options.weight, 1, where, 'weight', { min: 1, max: MAX_WEIGHT, integer: true }),
    backup: booleanOption(options.backup, false, where, 'backup'),
    down: booleanOption(options.down, false, where, 'down'),
    maxFails: numberOption(options.maxFails, 1, where, 'maxFails', { min: 0, integer: true }),
    failTimeout: durationOption(options.failTimeout, 10_000, where, 'failTimeout')
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The upstreams, their peers' state and the events of every change. */
    upstreams: Registry
  }
}

async function registryPlugin (fastify: FastifyInstance, options: RegistryOptions): Promise<void> {
  const registry = new Registry(options)
  fastify.decorate('upstreams', registry)
  fastify.addHook('onReady', async () => {
    const unclaimed = registry.unclaimedSections()
    if (unclaimed.length > 0) {
      throw new Error(`fastify-supervisord: no registered plugin reads ${unclaimed.join('; ')} (misspelt, or its plugin is not registered)`)
    }
  })
  fastify.addHook('onClose', async () => registry.close())
}

export default fp(registryPlugin, {
  name: 'fastify-supervisord-registry',
  fastify: '5.x'
})
