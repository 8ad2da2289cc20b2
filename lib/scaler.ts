import type { FastifyBaseLogger } from 'fastify'
import type { Registry } from './registry.js'
import type { Peer } from './peer.js'
import type { ScaleEvent } from './events.js'
import type { ScaleReading, Upstream } from './upstream.js'
import { optionKeys, booleanOption, durationOption, numberOption, objectOption, optionError } from './options.js'
import { leaseNames, type Group } from './group.js'
import type { LeaseKeeper } from './store/lease.js'

export interface ScaleOptions {
  /** Peers kept running whatever the load (default 0: an idle upstream stops everything). */
  minRunning?: number
  /** Peers running at most (default all). */
  maxRunning?: number
  /** Requests per second per running peer above which another is started (default 100). */
  loadThreshold?: number
  /** ms between two decisions on request rate (default 60000). */
  window?: number
  /** Stop a peer after a window with no request at all (default true). */
  idleStop?: boolean
  /** Mean in-flight requests per running peer that starts another at once (default off). */
  targetInFlight?: number
  /** ms over which in-flight must stay above `targetInFlight`; no scale-down within it (default 6000). */
  panicWindow?: number
}

declare module './upstream.js' {
  interface UpstreamOptions {
    /** Load-based scaling of the peers supervisord runs (the fair patch of ngx_supervisord). */
    scale?: ScaleOptions
  }
}

const SCALE_KEYS = optionKeys<ScaleOptions>()('minRunning', 'maxRunning', 'loadThreshold', 'window', 'idleStop', 'targetInFlight', 'panicWindow')
const PANIC_SAMPLES = 6
// The seed's rule: below 40% of the threshold, one peer fewer would do.
const LOW_LOAD = 0.4

function settings (upstream: Upstream) {
  const where = `upstream "${upstream.name}"`
  const raw = objectOption(upstream.options.scale, where, 'scale', SCALE_KEYS) as ScaleOptions
  const n = upstream.peers.length
  const minRunning = numberOption(raw.minRunning, 0, where, 'scale.minRunning', { min: 0, max: n, integer: true })
  const maxRunning = numberOption(raw.maxRunning, n, where, 'scale.maxRunning', { min: 1, max: n, integer: true })
  if (minRunning > maxRunning) {
    throw optionError(where, `option "scale.minRunning" (${minRunning}) must not exceed "scale.maxRunning" (${maxRunning})`)
  }
  const loadThreshold = numberOption(raw.loadThreshold, 100, where, 'scale.loadThreshold', { positive: true })
  return {
    minRunning,
    maxRunning,
    loadThreshold,
    window: durationOption(raw.window, 60_000, where, 'scale.window', 10),
    idleStop: booleanOption(raw.idleStop, true, where, 'scale.idleStop'),
    targetInFlight: raw.targetInFlight === undefined ? undefined : numberOption(raw.targetInFlight, 0, where, 'scale.targetInFlight', { positive: true }),
    panicWindow: durationOption(raw.panicWindow, 6000, where, 'scale.panicWindow', 10)
  }
}

type Settings = ReturnType<typeof settings>

/**
 * Where the scaler reads the time and sets its timers: the real clock, or a
 * fake one that a test moves on (`@sinonjs/fake-timers`' createClock(), say),
 * so that windows end when the test says, not after real seconds.
 */
export interface ScalerClock {
  now: () => number
  setTimeout: (callback: () => void, ms: number) => unknown
  clearTimeout: (timer: unknown) => void
}

const REAL_CLOCK: ScalerClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimeout: timer => clearTimeout(timer as NodeJS.Timeout)
}

/** The load counters of an upstream in the store: requests in a window, and in-flight at its end. */
const REQUESTS = (upstream: string): string => `requests:${upstream}`
const INFLIGHT = (upstream: string): string => `inflight:${upstream}`

/** One upstream's scaler: a decision every window on request rate, and a fast path on in-flight. */
class UpstreamScaler {
  readonly #registry: Registry
  readonly #log: FastifyBaseLogger
  readonly #upstream: Upstream
  readonly #settings: Settings
  readonly #clock: ScalerClock
  /** In a group: the lead, which decides on the load of every gateway (the others only count). */
  readonly #lead: LeaseKeeper | undefined
  #windowTimer: unknown
  #graceTimer: unknown
  #panicTimer: unknown
  #lastRequests = 0
  #inflightSamples: number[] = []
  #panicUntil = 0
  /** In a group: the clock's window (now / window) now counted, and the first one counted whole. */
  #window = 0
  #firstWhole = 0

  constructor (registry: Registry, log: FastifyBaseLogger, upstream: Upstream, scaleSettings: Settings, clock: ScalerClock, lead: LeaseKeeper | undefined) {
    this.#registry = registry
    this.#log = log
    this.#upstream = upstream
    this.#settings = scaleSettings
    this.#clock = clock
    this.#lead = lead
    lead?.on('acquired', () => this.#minRunning())
  }

  start (): void {
    this.#lastRequests = this.#totalRequests()
    if (this.#lead === undefined) {
      // minRunning holds from the start, not from the end of the first window.
      this.#minRunning()
      this.#read(null, this.#running().length, 'gateway', this.#clock.now() + this.#settings.window)
      this.#windowTimer = this.#clock.setTimeout(() => this.#onWindow(), this.#settings.window)
    } else {
      // The group counts in windows of the clock, so that every gateway's count of window N is of the same span.
      this.#window = Math.floor(this.#clock.now() / this.#settings.window)
      this.#firstWhole = this.#window + 1
      this.#nextGroupWindow()
      this.#read(null, this.#running().length, 'gateway', this.#groupWindowEnd())
    }
    if (this.#settings.targetInFlight !== undefined) {
      this.#panicTimer = this.#clock.setTimeout(() => this.#onSample(), this.#settings.panicWindow / PANIC_SAMPLES)
    }
  }

  #running (): Peer[] {
    return this.#upstream.peers.filter(peer => peer.running)
  }

  #minRunning (): void {
    const up = this.#running()
    for (let missing = this.#settings.minRunning - up.length; missing > 0; missing--) this.#start(0, up.length, 'min running')
  }

  stop (): void {
    this.#clock.clearTimeout(this.#windowTimer)
    this.#clock.clearTimeout(this.#graceTimer)
    this.#clock.clearTimeout(this.#panicTimer)
  }

  /** Epoch ms the group window now counted ends. */
  #groupWindowEnd (): number {
    return (this.#window + 1) * this.#settings.window
  }

  #nextGroupWindow (): void {
    this.#windowTimer = this.#clock.setTimeout(() => this.#onGroupWindow(), Math.max(0, this.#groupWindowEnd() - this.#clock.now()))
  }

  /** How long after a group window's end the lead reads the sum: the others' counts are on their way. */
  #grace (): number {
    return Math.min(2000, this.#settings.window / 4)
  }

  /**
   * A window of the clock ended: every gateway writes its count of it;
   * the lead reads the sum a moment later (the others' counts are on their
   * way) and decides. When the store cannot tell, every gateway decides on
   * its own count, which is a lower bound of the load: enough to start a
   * peer, never to stop one.
   */
  #onGroupWindow (): void {
    const group = this.#registry.group
    const { window } = this.#settings
    const ended = this.#window
    this.#window = Math.max(ended + 1, Math.floor(this.#clock.now() / window))
    const total = this.#totalRequests()
    const requests = total - this.#lastRequests
    this.#lastRequests = total
    const inflight = this.#inflight()
    const name = this.#upstream.name
    group.store.writeLoad(REQUESTS(name), ended, group.id, requests, 2 * window)
    group.store.writeLoad(INFLIGHT(name), ended, group.id, inflight, 2 * window)
    this.#nextGroupWindow()
    const leads = this.#lead?.held === true && group.ok
    // What this gateway counted, shown until (unless) the lead's sum replaces it.
    this.#read(this.#loadOf(requests), this.#running().length, 'gateway', leads ? this.#clock.now() + this.#grace() : this.#groupWindowEnd())
    // A window this gateway saw only part of may be the group's first: its sum says too little.
    if (ended < this.#firstWhole) return
    if (!group.ok) return this.#decideOn(requests, inflight, true, 'gateway')
    if (!leads) return
    this.#clock.clearTimeout(this.#graceTimer)
    this.#graceTimer = this.#clock.setTimeout(() => {
      this.#decideOnGroup(ended, requests, inflight).catch(error => this.#log.error({ err: error }, 'scale: a decision failed unexpectedly'))
    }, this.#grace())
  }

  async #decideOnGroup (ended: number, requests: number, inflight: number): Promise<void> {
    const group = this.#registry.group
    const name = this.#upstream.name
    let sums
    try {
      sums = await Promise.all([group.store.readLoad(REQUESTS(name), ended), group.store.readLoad(INFLIGHT(name), ended)])
    } catch {
      return this.#decideOn(requests, inflight, true, 'gateway')
    }
    // This gateway's own count is known here, whether or not its write has landed.
    const others = (sum: { total: number, gateways: Record<string, number> }): number => sum.total - (sum.gateways[group.id] ?? 0)
    if (this.#lead?.held !== true) return
    this.#decideOn(requests + others(sums[0]), inflight + others(sums[1]), false, 'group')
  }

  /** Requests per second per running peer, for `requests` counted over a window. */
  #loadOf (requests: number): number {
    return requests / (this.#settings.window / 1000) / Math.max(this.#running().length, 1)
  }

  #decideOn (requests: number, inflight: number, startOnly: boolean, over: ScaleReading['over']): void {
    const up = this.#running()
    const load = this.#loadOf(requests)
    this.#read(load, up.length, over, this.#lead === undefined ? this.#clock.now() + this.#settings.window : this.#groupWindowEnd() + this.#grace())
    this.#decide(requests, load, up, inflight, startOnly)
  }

  #totalRequests (): number {
    let total = 0
    for (const peer of this.#upstream.peers) total += peer.requests
    return total
  }

  #inflight (): number {
    let inflight = 0
    for (const peer of this.#upstream.peers) inflight += peer.inflight
    return inflight
  }

  #onWindow (): void {
    const total = this.#totalRequests()
    const requests = total - this.#lastRequests
    this.#lastRequests = total
    this.#decideOn(requests, this.#inflight(), false, 'gateway')
    this.#windowTimer = this.#clock.setTimeout(() => this.#onWindow(), this.#settings.window)
  }

  /** What the status page and the metrics show: the last load against the threshold, what it counts, and when the next decision comes. */
  #read (load: number | null, running: number, over: ScaleReading['over'], nextAt: number): void {
    const { loadThreshold: threshold, minRunning, maxRunning } = this.#settings
    this.#upstream.recordScale({
      load: load === null ? null : Math.round(load * 100) / 100,
      over,
      threshold,
      running,
      minRunning,
      maxRunning,
      at: load === null ? null : this.#clock.now(),
      nextAt
    })
  }

  #decide (requests: number, load: number, up: Peer[], inflight: number, startOnly: boolean): void {
    const { minRunning, maxRunning, loadThreshold, idleStop } = this.#settings
    if (up.length < minRunning) {
      this.#start(load, up.length, 'min running')
    } else if (load > loadThreshold) {
      if (up.length < maxRunning) this.#start(load, up.length, 'load')
    } else if (startOnly || this.#clock.now() < this.#panicUntil || up.length <= minRunning || up.some(peer => peer.process === 'starting')) {
      // In a burst, at the floor, or a start still under way (it counts as
      // capacity but cannot serve yet): keep what runs.
    } else if (requests === 0 && inflight === 0) {
      // idle: nothing started in the window and nothing still in flight (a slow request is not idleness)
      if (idleStop) this.#stop(load, up, 'idle', minRunning)
    } else if (load < LOW_LOAD * loadThreshold && up.length > 1) {
      this.#stop(load, up, 'low load', Math.max(minRunning, 1))
    }
  }

  #onSample (): void {
    const { targetInFlight, panicWindow } = this.#settings
    const up = this.#running()
    const samples = this.#inflightSamples
    samples.push(this.#inflight() / Math.max(up.length, 1))
    if (samples.length > PANIC_SAMPLES) samples.shift()
    const mean = samples.reduce((a, b) => a + b, 0) / samples.length
    if (samples.length >= 2 && mean > (targetInFlight as number)) {
      this.#panicUntil = this.#clock.now() + panicWindow
      // One at a time: wait for the last start to land before asking again.
      if (up.length < this.#settings.maxRunning && !up.some(peer => peer.process === 'starting')) {
        this.#start(mean, up.length, 'in-flight')
        samples.length = 0
      }
    }
    this.#panicTimer = this.#clock.setTimeout(() => this.#onSample(), panicWindow / PANIC_SAMPLES)
  }

  /** The upstream's start rule, leaving pinned peers to the operator. */
  #start (load: number, runningCount: number, reason: ScaleEvent['reason']): void {
    // A peer already asked for is no longer down (the bridge sets it starting at once).
    const peer = this.#upstream.startCandidate({ skipPinned: true })
    if (peer !== undefined) this.#emit('start', peer, load, runningCount, reason)
  }

  /** The upstream's stop rule, leaving pinned peers to the operator and at least `keep` running. */
  #stop (load: number, up: Peer[], reason: ScaleEvent['reason'], keep: number): void {
    const peer = this.#upstream.stopCandidate({ skipPinned: true, keep })
    if (peer !== undefined) this.#emit('stop', peer, load, up.length, reason)
  }

  #emit (action: ScaleEvent['action'], peer: Peer, load: number, runningCount: number, reason: ScaleEvent['reason']): void {
    const event: ScaleEvent = {
      upstream: this.#upstream.name,
      action,
      index: peer.index,
      load: Math.round(load * 100) / 100,
      running: runningCount,
      threshold: reason === 'in-flight' ? this.#settings.targetInFlight as number : this.#settings.loadThreshold,
      reason,
      at: this.#clock.now()
    }
    // The program's own name (supervisordName may differ from the upstream's), its address without a bridge.
    const program = peer.program ?? peer.address
    this.#log.info({ ...event, program },
      `scale: ${action} ${program} (peer ${peer.index} of upstream "${this.#upstream.name}"): ${reason}, load ${event.load} ` +
      `${reason === 'in-flight' ? 'in flight' : 'req/s'} per running peer against ${event.threshold}, ${runningCount} running`)
    this.#registry.emit('scale', event)
  }
}

/**
 * A scaler for every upstream with a `scale` section; the registry claims the
 * section. In a group whose store is shared, one gateway leads (a lease) and
 * decides on the summed load of all.
 */
export class Scaler {
  readonly #scalers: UpstreamScaler[] = []
  readonly #lead: LeaseKeeper | undefined

  constructor (registry: Registry, log: FastifyBaseLogger, clock: ScalerClock = REAL_CLOCK) {
    registry.claim('scale')
    const group: Group = registry.group
    const scaled = [...registry.upstreams.values()].filter(upstream => upstream.options.scale !== undefined)
    this.#lead = group.shared && scaled.length > 0 ? group.keeper(leaseNames.scaler) : undefined
    this.#lead?.on('acquired', () => log.info({ gateway: group.id }, `scale: gateway ${group.id} leads the scaler of the group`))
    for (const upstream of scaled) this.#scalers.push(new UpstreamScaler(registry, log, upstream, settings(upstream), clock, this.#lead))
  }

  start (): void {
    for (const scaler of this.#scalers) scaler.start()
    this.#lead?.start()
  }

  async stop (): Promise<void> {
    for (const scaler of this.#scalers) scaler.stop()
    await this.#lead?.stop()
  }
}
