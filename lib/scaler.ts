import type { FastifyBaseLogger } from 'fastify'
import type { Registry } from './registry.js'
import type { Peer } from './peer.js'
import type { ScaleEvent } from './events.js'
import type { Upstream } from './upstream.js'
import { optionKeys, booleanOption, durationOption, numberOption, objectOption, optionError } from './options.js'

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

/** One upstream's scaler: a decision every window on request rate, and a fast path on in-flight. */
class UpstreamScaler {
  readonly #registry: Registry
  readonly #log: FastifyBaseLogger
  readonly #upstream: Upstream
  readonly #settings: Settings
  readonly #clock: ScalerClock
  #windowTimer: unknown
  #panicTimer: unknown
  #lastRequests = 0
  #inflightSamples: number[] = []
  #panicUntil = 0

  constructor (registry: Registry, log: FastifyBaseLogger, upstream: Upstream, scaleSettings: Settings, clock: ScalerClock) {
    this.#registry = registry
    this.#log = log
    this.#upstream = upstream
    this.#settings = scaleSettings
    this.#clock = clock
  }

  start (): void {
    // minRunning holds from the start, not from the end of the first window.
    const up = this.#upstream.peers.filter(peer => peer.running)
    for (let missing = this.#settings.minRunning - up.length; missing > 0; missing--) this.#start(0, up.length, 'min running')
    this.#lastRequests = this.#totalRequests()
    this.#read(null, up.length)
    this.#windowTimer = this.#clock.setTimeout(() => this.#onWindow(), this.#settings.window)
    if (this.#settings.targetInFlight !== undefined) {
      this.#panicTimer = this.#clock.setTimeout(() => this.#onSample(), this.#settings.panicWindow / PANIC_SAMPLES)
    }
  }

  stop (): void {
    this.#clock.clearTimeout(this.#windowTimer)
    this.#clock.clearTimeout(this.#panicTimer)
  }

  #totalRequests (): number {
    let total = 0
    for (const peer of this.#upstream.peers) total += peer.requests
    return total
  }

  #onWindow (): void {
    const total = this.#totalRequests()
    const requests = total - this.#lastRequests
    this.#lastRequests = total
    const up = this.#upstream.peers.filter(peer => peer.running)
    const load = requests / (this.#settings.window / 1000) / Math.max(up.length, 1)
    this.#read(load, up.length)
    this.#decide(requests, load, up)
    this.#windowTimer = this.#clock.setTimeout(() => this.#onWindow(), this.#settings.window)
  }

  /** What the status page and the metrics show: the last load against the threshold, and when the next decision comes. */
  #read (load: number | null, running: number): void {
    const now = this.#clock.now()
    const { loadThreshold: threshold, minRunning, maxRunning, window } = this.#settings
    this.#upstream.recordScale({ load: load === null ? null : Math.round(load * 100) / 100, threshold, running, minRunning, maxRunning, at: load === null ? null : now, nextAt: now + window })
  }

  #decide (requests: number, load: number, up: Peer[]): void {
    const { minRunning, maxRunning, loadThreshold, idleStop } = this.#settings
    if (up.length < minRunning) {
      this.#start(load, up.length, 'min running')
    } else if (load > loadThreshold) {
      if (up.length < maxRunning) this.#start(load, up.length, 'load')
    } else if (this.#clock.now() < this.#panicUntil || up.length <= minRunning || up.some(peer => peer.process === 'starting')) {
      // In a burst, at the floor, or a start still under way (it counts as
      // capacity but cannot serve yet): keep what runs.
    } else if (requests === 0 && !up.some(peer => peer.inflight > 0)) {
      // idle: nothing started in the window and nothing still in flight (a slow request is not idleness)
      if (idleStop) this.#stop(load, up, 'idle', minRunning)
    } else if (load < LOW_LOAD * loadThreshold && up.length > 1) {
      this.#stop(load, up, 'low load', Math.max(minRunning, 1))
    }
  }

  #onSample (): void {
    const { targetInFlight, panicWindow } = this.#settings
    const up = this.#upstream.peers.filter(peer => peer.running)
    let inflight = 0
    for (const peer of this.#upstream.peers) inflight += peer.inflight
    const samples = this.#inflightSamples
    samples.push(inflight / Math.max(up.length, 1))
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

/** A scaler for every upstream with a `scale` section; the registry claims the section. */
export class Scaler {
  readonly #scalers: UpstreamScaler[] = []

  constructor (registry: Registry, log: FastifyBaseLogger, clock: ScalerClock = REAL_CLOCK) {
    registry.claim('scale')
    for (const upstream of registry.upstreams.values()) {
      if (upstream.options.scale === undefined) continue
      this.#scalers.push(new UpstreamScaler(registry, log, upstream, settings(upstream), clock))
    }
  }

  start (): void {
    for (const scaler of this.#scalers) scaler.start()
  }

  stop (): void {
    for (const scaler of this.#scalers) scaler.stop()
  }
}
