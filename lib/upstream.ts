import type { EventEmitter } from 'node:events'
import type { FastifyRequest } from 'fastify'
import type { Balancer, BalancedUpstream, RoutableTiers } from '../balancers/balancer.js'
import { BALANCER_NAMES, createBalancer, isBalancer, type BalancerName } from '../balancers/index.js'
import type { HashKey } from '../balancers/hash.js'
import type { RegistryEvents } from './events.js'
import { Peer, statusClassIndex, type PeerChange, type PeerOwner, type StartBackoff } from './peer.js'
import { Buckets, WAIT_BUCKETS } from './buckets.js'
import { PeerOutOfRangeError } from './errors.js'
import { tlsSettings, type TlsOptions, type UpstreamTls } from './tls-options.js'
import { optionKeys, booleanOption, durationOption, numberOption, optionError, rejectUnknownOptions, showValue, splitHostPort } from './options.js'

export interface ServerOptions {
  /** `host:port`, `[v6]:port`, `http://host:port` or `https://host:port` (reached over TLS, see the upstream's `tls`). */
  address: string
  /** Share of traffic relative to the other peers (default 1). */
  weight?: number
  /** Used only when no primary peer is routable. */
  backup?: boolean
  /** In-flight requests (and WebSocket sessions) at most, as nginx's max_conns and HAProxy's maxconn (default 0: no limit). */
  maxConns?: number
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
  /** For `balancer: 'hash'`: nginx's `hash $key consistent` (default true) or its plain `hash $key` (false). */
  hashConsistent?: boolean
  /** How `https://` servers are reached: CA, client certificate, SNI, verification (default Node's roots, verified). */
  tls?: TlsOptions
}

/**
 * What a request that finds no routable peer can hope for, best first:
 * `starting` a peer is being started; `startable` one can be (`peer`);
 * `recovering` a peer runs but is out for its health or a passive failure,
 * and may come back by itself; `backoff` every peer that could be started
 * failed its last start and waits until `retryAt`; `none` nothing can be
 * started (every peer down is drained or in maint).
 */
export type StartOutlook =
  | { state: 'routable' }
  | { state: 'starting' }
  | { state: 'startable', peer: Peer }
  | { state: 'recovering' }
  | { state: 'backoff', retryAt: number }
  | { state: 'none' }

export interface CandidateOptions {
  /** Leave pinned peers alone (what the scaler does; demand starts and operators do not). */
  skipPinned?: boolean
  /** Epoch ms the start back-off is held against (default now). */
  now?: number
}

export interface StopCandidateOptions {
  /** Leave pinned peers alone (what the scaler does). */
  skipPinned?: boolean
  /** Running peers (up or starting) that must remain (default 1: never the last one). */
  keep?: number
}

/** What the scaler last measured and when it decides next (read by the status page and the metrics). */
export interface ScaleReading {
  /** Requests per second per running peer over the last window (null before the first window ended). */
  load: number | null
  /** What `load` counts: this gateway's requests, or the whole group's (on the gateway that leads the group's scaler). */
  over: 'gateway' | 'group'
  /** The loadThreshold it is held against. */
  threshold: number
  /** Peers running (up or starting) when it was measured. */
  running: number
  minRunning: number
  maxRunning: number
  /** Epoch ms of the last window's end (null before the first). */
  at: number | null
  /** Epoch ms of the next decision. */
  nextAt: number
}

/** Requests held for a cold start, across the proxies over this upstream. */
export interface HoldStats {
  /** Held now. */
  current: number
  /** The most held at once since start. */
  max: number
  /** Refused because `maxHeld` were held already. */
  overflows: number
  /** Answered 503 after `holdTimeout`. */
  timeouts: number
  /** How long each released request had been held, in seconds. */
  wait: Buckets
  /** ms the longest-held request of the last release had waited (null before any). */
  lastWaitMs: number | null
  /** Epoch ms of the last release (null before any). */
  lastReleaseAt: number | null
}

const SERVER_KEYS = optionKeys<ServerOptions>()('address', 'weight', 'backup', 'down', 'maxFails', 'failTimeout', 'maxConns')
export const MAX_WEIGHT = 1000

export class Upstream implements PeerOwner, BalancedUpstream {
  readonly name: string
  readonly peers: readonly Peer[]
  readonly balancer: Balancer
  /** The upstream's whole configuration, for the plugins that own its other sections. */
  readonly options: Readonly<UpstreamOptions>
  /** The `tls` section, checked, with its secure context built once; set when some server is `https://`. */
  readonly tls: UpstreamTls | undefined
  #version = 0
  #startsOnDemand = false
  #supervisord = 'none'
  readonly #registry: EventEmitter<RegistryEvents>
  #tiers: RoutableTiers = { primary: [], backup: [] }
  #tiersVersion = -1
  /** Primaries by index, then backups by index: the order peers are started in. */
  readonly #startOrder: readonly Peer[]
  #refused = 0
  readonly #hold: HoldStats = { current: 0, max: 0, overflows: 0, timeouts: 0, wait: new Buckets(WAIT_BUCKETS), lastWaitMs: null, lastReleaseAt: null }
  /** Every answer of the proxies over this upstream, the gateway's own errors included, by status class. */
  readonly #answers = [0, 0, 0, 0, 0, 0]
  #scale: ScaleReading | null = null
  /** Told when a peer at its maxConns gives a slot back (requests queued for one wait on it). */
  readonly #slotListeners = new Set<(peer: Peer) => void>()

  constructor (registry: EventEmitter<RegistryEvents>, name: string, options: UpstreamOptions) {
    const where = `upstream "${name}"`
    this.#registry = registry
    this.name = name
    this.options = options
    if (!Array.isArray(options.servers) || options.servers.length === 0) {
      throw optionError(where, 'option "servers" must be a non-empty array of addresses or server objects')
    }
    this.peers = options.servers.map((server, index) => new Peer(this, serverConfig(server, index, `${where} server ${index}`)))
    this.balancer = balancerOf(options, where)
    this.#startOrder = [...this.peers.filter(peer => !peer.backup), ...this.peers.filter(peer => peer.backup)]
    const https = this.peers.some(peer => peer.scheme === 'https')
    if (options.tls !== undefined && !https) throw optionError(where, 'option "tls" is only read for https:// servers (none is)')
    this.tls = https ? tlsSettings(options.tls, where) : undefined
  }

  /** Bumped on every announced peer change: a balancer may cache until it moves. */
  get version (): number { return this.#version }

  /**
   * Whether a plugin can start peers on demand (the supervisord bridge, not in
   * `none` mode): the proxy then holds requests while no peer is routable, and
   * emits `demand`, instead of answering 503 at once.
   */
  get startsOnDemand (): boolean { return this.#startsOnDemand }

  /** A plugin that answers `demand` events says so. */
  startOnDemand (): void {
    this.#startsOnDemand = true
  }

  /** Where the supervisord of this upstream listens, never with credentials (`none` without one). */
  get supervisord (): string { return this.#supervisord }

  /** The supervisord bridge says where this upstream's supervisord listens and names each peer's program. */
  assignSupervisord (label: string, programs: readonly string[]): void {
    this.#supervisord = label
    for (const peer of this.peers) peer.assignProgram(programs[peer.index])
  }

  peerChanged (change: PeerChange): void {
    this.#version++
    this.#registry.emit('change', change)
  }

  inflightChanged (peer: Peer): void {
    this.balancer.inflightChanged?.(peer)
  }

  slotFreed (peer: Peer): void {
    for (const listener of this.#slotListeners) listener(peer)
  }

  /** Listens (or stops listening) for a slot freed on a peer that was at its `maxConns`. */
  onSlotFree (listener: (peer: Peer) => void, on = true): void {
    if (on) this.#slotListeners.add(listener)
    else this.#slotListeners.delete(listener)
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
    const peer = Number.isInteger(index) ? this.peers[index] : undefined
    if (peer === undefined) {
      throw new PeerOutOfRangeError(this.name, String(index), this.peers.length - 1)
    }
    return peer
  }

  /** Asks whoever can start peers (the supervisord bridge) for one. */
  demand (): void {
    this.#registry.emit('demand', { upstream: this.name, at: Date.now() })
  }

  /**
   * The one rule for which peer to start (demand, `any`, the scaler): the
   * first, primaries before backups and by index, whose process is down,
   * whose admin state is `ready` (a drained or maint peer could never take
   * the request) and that is not in start back-off.
   */
  startCandidate (options: CandidateOptions = {}): Peer | undefined {
    const now = options.now ?? Date.now()
    return this.#startOrder.find(peer => peer.process === 'down' && peer.admin === 'ready' && peer.startAllowed(now) &&
      !(options.skipPinned === true && peer.pin !== 'none'))
  }

  /**
   * The one rule for which peer to stop (`any`, the scaler): the last in start
   * order whose process is up, as long as more than `keep` peers run (up or
   * starting); never the last one running unless `keep` is 0.
   */
  stopCandidate (options: StopCandidateOptions = {}): Peer | undefined {
    const keep = options.keep ?? 1
    let running = 0
    for (const peer of this.peers) if (peer.running) running++
    if (running <= keep) return undefined
    for (let i = this.#startOrder.length - 1; i >= 0; i--) {
      const peer = this.#startOrder[i]
      if (peer.process === 'up' && !(options.skipPinned === true && peer.pin !== 'none')) return peer
    }
    return undefined
  }

  /** What a request that finds no routable peer can hope for (see StartOutlook). */
  startOutlook (now = Date.now()): StartOutlook {
    if (this.routable) return { state: 'routable' }
    let candidate: Peer | undefined
    let starting = false
    let recovering = false
    let retryAt = Infinity
    for (const peer of this.#startOrder) {
      if (peer.admin !== 'ready') continue
      switch (peer.process) {
        case 'starting': starting = true; break
        case 'up': case 'stopping': recovering = true; break
        case 'down':
          if (peer.startAllowed(now)) candidate ??= peer
          else retryAt = Math.min(retryAt, (peer.backoff as StartBackoff).until)
      }
    }
    if (starting) return { state: 'starting' }
    if (candidate !== undefined) return { state: 'startable', peer: candidate }
    if (recovering) return { state: 'recovering' }
    if (retryAt !== Infinity) return { state: 'backoff', retryAt }
    return { state: 'none' }
  }

  /** The hold queues' counters (see HoldStats). */
  get hold (): Readonly<HoldStats> { return this.#hold }

  /** A request was held (+1) or left the queue (-1, released, failed or gone). */
  holdMoved (delta: 1 | -1): void {
    this.#hold.current += delta
    if (this.#hold.current > this.#hold.max) this.#hold.max = this.#hold.current
  }

  /** A request was refused because the queue was full. */
  countHoldOverflow (): void {
    this.#hold.overflows++
  }

  /** Held requests answered 503 because `holdTimeout` passed. */
  countHoldTimeouts (requests: number): void {
    this.#hold.timeouts += requests
  }

  /** A held request got a peer after `ms`; `first` for the longest-held of a release. */
  recordHoldWait (ms: number, first: boolean): void {
    this.#hold.wait.observe(ms / 1000)
    if (first) {
      this.#hold.lastWaitMs = ms
      this.#hold.lastReleaseAt = Date.now()
    }
  }

  /** Answers of the proxies over this upstream by status class (the order of STATUS_CLASSES). */
  get answers (): readonly number[] { return this.#answers }

  /** A proxy over this upstream answered a request with `status` (a peer's answer, or the gateway's own error). */
  recordAnswer (status: number): void {
    this.#answers[statusClassIndex(status)]++
  }

  /** The scaler's last measurement, null when no scaler runs for this upstream. */
  get scale (): Readonly<ScaleReading> | null { return this.#scale }

  /** The scaler measured (a reading, not a change of state: not announced). */
  recordScale (reading: ScaleReading): void {
    this.#scale = { ...reading }
  }

  /** Requests answered at once (or failed) because every startable peer was in back-off: counted for the next log line. */
  countRefused (requests = 1): void {
    this.#refused += requests
  }

  /** The requests refused since the last call (the supervisord bridge logs them once per back-off step). */
  takeRefused (): number {
    const refused = this.#refused
    this.#refused = 0
    return refused
  }
}

function balancerOf (options: UpstreamOptions, where: string): Balancer {
  const balancer = options.balancer ?? 'round-robin'
  if (isBalancer(balancer)) return balancer
  if (!BALANCER_NAMES.includes(balancer)) {
    throw optionError(where, `option "balancer" must be one of ${BALANCER_NAMES.join(', ')} or an object with a pick() method, got ${showValue(balancer)}`)
  }
  for (const option of ['hashKey', 'hashConsistent'] as const) {
    if (options[option] !== undefined && balancer !== 'hash') {
      throw optionError(where, `option "${option}" is only read by balancer "hash" (balancer is "${balancer}")`)
    }
  }
  if (options.hashKey !== undefined && !validHashKey(options.hashKey)) {
    throw optionError(where, `option "hashKey" must be "url", { header: name }, { cookie: name } or a function, got ${showValue(options.hashKey)}`)
  }
  return createBalancer(balancer, options.hashKey, booleanOption(options.hashConsistent, true, where, 'hashConsistent'))
}

function validHashKey (key: unknown): boolean {
  if (key === 'url' || typeof key === 'function') return true
  if (typeof key !== 'object' || key === null) return false
  const value = (key as Record<string, unknown>).header ?? (key as Record<string, unknown>).cookie
  return Object.keys(key).length === 1 && typeof value === 'string' && value !== ''
}

/** `host:port`, `[v6]:port`, `http://host[:port][/]` or `https://host[:port][/]`, into scheme, host and port. */
export function parseAddress (address: unknown, where: string): { scheme: 'http' | 'https', host: string, port: number } {
  let hostPort = typeof address === 'string' ? address : ''
  let scheme: 'http' | 'https' = 'http'
  if (/^https?:\/\//i.test(hostPort)) {
    const url = URL.canParse(hostPort) ? new URL(hostPort) : undefined
    if (url === undefined || (url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') {
      throw optionError(where, `option "address" must be host:port, http://host:port or https://host:port (no path), got ${showValue(address)}`)
    }
    scheme = url.protocol === 'https:' ? 'https' : 'http'
    // The URL drops a port that is the scheme's default: put it back.
    hostPort = url.port === '' ? `${url.host}:${scheme === 'https' ? 443 : 80}` : url.host
  }
  const parts = splitHostPort(hostPort)
  if (parts === undefined) {
    throw optionError(where, `option "address" must be host:port with a port from 1 to 65535, got ${showValue(address)}`)
  }
  return { scheme, ...parts }
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
    maxConns: numberOption(options.maxConns, 0, where, 'maxConns', { min: 0, integer: true }),
    failTimeout: durationOption(options.failTimeout, 10_000, where, 'failTimeout')
  }
}
