import type { FastifyBaseLogger } from 'fastify'
import type { CheckResult, HealthState, Peer, PeerChange, ProcessState } from './peer.js'
import type { Registry } from './registry.js'
import { probe, DEFAULT_MAX_BODY, DEFAULT_PROBE_TIMEOUT, DEFAULT_STATUS, type ExpectedStatus, type ProbeOptions } from './health-probe.js'
import { optionKeys, durationOption, numberOption, objectOption, oneOfOption, optionError, rejectUnknownOptions, showValue, stringOption } from './options.js'

/** An upstream's `healthCheck` section: active checks of each of its peers. */
export interface HealthCheckOptions {
  /** ms from the end of one check of a peer to the start of the next (default 10000). */
  interval?: number
  /** Up to this many ms are added at random to each interval, and delay the first check (default 0). */
  jitter?: number
  /** ms for one check, connect included (default 2000). */
  timeout?: number
  /** Consecutive passes that make a peer healthy (default 2). */
  rise?: number
  /** Consecutive failures that make a peer unhealthy (default 2). */
  fall?: number
  /** `http` (default) or `tcp` (connect only). */
  type?: 'http' | 'tcp'
  /** http: request method (default `GET`). */
  method?: string
  /** http: request path (default `/`). */
  path?: string
  /** http: request headers; `Host` defaults to the peer's address. */
  headers?: Record<string, string>
  /** http: statuses that pass, exact or classes (default `['2xx', '3xx']`). */
  status?: ExpectedStatus | ExpectedStatus[]
  /** http: the body must contain this string or match this RegExp. */
  body?: string | RegExp
  /** http: body bytes read before the check fails with `body too large` (default 65536). */
  maxBody?: number
  /**
   * `unknown` (default): peers take traffic until `fall` checks fail.
   * `down`: peers start unhealthy and take traffic after `rise` passes.
   */
  initialState?: 'unknown' | 'down'
}

export interface HealthPluginOptions {
  /** Results kept per peer in `peer.checks` (default 32). */
  history?: number
}

declare module './upstream.js' {
  interface UpstreamOptions {
    /** Active health checks of this upstream's peers (read by the health plugin). */
    healthCheck?: HealthCheckOptions
  }
}

interface HealthSettings {
  interval: number
  jitter: number
  rise: number
  fall: number
  initialState: 'unknown' | 'down'
  probe: ProbeOptions
}

/** ms at most between the first checks of two peers of an upstream. */
const SPREAD_STEP = 10
const CHECK_OPTIONS = optionKeys<HealthCheckOptions>()('interval', 'jitter', 'timeout', 'rise', 'fall', 'type', 'method', 'path',
  'headers', 'status', 'body', 'maxBody', 'initialState')
const HTTP_ONLY = ['method', 'path', 'headers', 'status', 'body', 'maxBody'] as const satisfies ReadonlyArray<keyof HealthCheckOptions>
const PLUGIN_OPTIONS = optionKeys<HealthPluginOptions>()('history')
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
// Control characters are exactly what these two refuse.
// eslint-disable-next-line no-control-regex
const PATH = /^(?:\/[^\s\x00-\x1f\x7f]*|\*)$/
// eslint-disable-next-line no-control-regex
const HEADER_VALUE = /^[^\r\n\x00]*$/
/** Set by the checker itself: a user value would break how the response is read. */
const RESERVED_HEADERS = ['connection', 'content-length', 'transfer-encoding']

function healthSettings (value: unknown, where: string): HealthSettings {
  const options = objectOption(value, where, 'healthCheck', CHECK_OPTIONS) as HealthCheckOptions
  const type = oneOfOption(options.type, 'http', ['http', 'tcp'], where, 'healthCheck.type')
  const timeout = durationOption(options.timeout, DEFAULT_PROBE_TIMEOUT, where, 'healthCheck.timeout')
  const settings = {
    interval: durationOption(options.interval, 10_000, where, 'healthCheck.interval'),
    jitter: durationOption(options.jitter, 0, where, 'healthCheck.jitter', 0),
    rise: numberOption(options.rise, 2, where, 'healthCheck.rise', { min: 1, max: 1000, integer: true }),
    fall: numberOption(options.fall, 2, where, 'healthCheck.fall', { min: 1, max: 1000, integer: true }),
    initialState: oneOfOption(options.initialState, 'unknown', ['unknown', 'down'], where, 'healthCheck.initialState')
  }
  if (type === 'tcp') {
    const stray = HTTP_ONLY.find(key => (options as Record<string, unknown>)[key] !== undefined)
    if (stray !== undefined) throw optionError(where, `option "healthCheck.${stray}" is only read by type "http" (type is "tcp")`)
    return { ...settings, probe: { type, timeout } }
  }
  const method = stringOption(options.method, 'GET', where, 'healthCheck.method')
  if (!TOKEN.test(method)) throw optionError(where, `option "healthCheck.method" must be an HTTP method such as "GET", got ${showValue(method)}`)
  const path = stringOption(options.path, '/', where, 'healthCheck.path')
  if (!PATH.test(path)) throw optionError(where, `option "healthCheck.path" must start with "/" and hold no spaces or control characters, got ${showValue(path)}`)
  return {
    ...settings,
    probe: {
      type,
      timeout,
      method,
      path,
      headers: headersOption(options.headers, where),
      status: statusOption(options.status, where),
      body: bodyOption(options.body, where),
      maxBody: numberOption(options.maxBody, DEFAULT_MAX_BODY, where, 'healthCheck.maxBody', { min: 0, max: 2 ** 30, integer: true })
    }
  }
}

function headersOption (value: unknown, where: string): Record<string, string> {
  if (value === undefined) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw optionError(where, `option "healthCheck.headers" must be an object of header names to strings, got ${showValue(value)}`)
  }
  const headers: Record<string, string> = {}
  for (const [name, header] of Object.entries(value)) {
    if (!TOKEN.test(name)) throw optionError(where, `option "healthCheck.headers" has an invalid header name ${showValue(name)}`)
    if (RESERVED_HEADERS.includes(name.toLowerCase())) {
      throw optionError(where, `option "healthCheck.headers" may not set "${name}" (the checker sends Connection: close and no body)`)
    }
    if (typeof header !== 'string' || !HEADER_VALUE.test(header)) {
      throw optionError(where, `option "healthCheck.headers" must map "${name}" to a string without CR, LF or NUL, got ${showValue(header)}`)
    }
    headers[name] = header
  }
  return headers
}

function statusOption (value: unknown, where: string): ExpectedStatus[] {
  if (value === undefined) return [...DEFAULT_STATUS]
  const list = Array.isArray(value) ? value : [value]
  const valid = (entry: unknown): boolean => typeof entry === 'string'
    ? /^[1-5]xx$/.test(entry)
    : Number.isInteger(entry) && (entry as number) >= 100 && (entry as number) <= 599
  if (list.length === 0 || !list.every(valid)) {
    throw optionError(where, `option "healthCheck.status" must be a status (100-599) or class ("2xx"), or a non-empty list of them, got ${showValue(value)}`)
  }
  return list as ExpectedStatus[]
}

function bodyOption (value: unknown, where: string): string | RegExp | undefined {
  if (value === undefined) return undefined
  // A global or sticky RegExp keeps lastIndex between tests: a copy without those flags does not.
  if (value instanceof RegExp) return new RegExp(value.source, value.flags.replace(/[gy]/g, ''))
  return stringOption(value, '', where, 'healthCheck.body')
}

/**
 * The checks of one peer: one at a time, the next scheduled when the previous
 * ends, none while its process is down or stopping.
 */
class PeerChecker {
  readonly #peer: Peer
  readonly #settings: HealthSettings
  readonly #history: number
  readonly #log: FastifyBaseLogger
  #timer: NodeJS.Timeout | undefined
  /** Shared by this peer's checks until one is aborted. */
  #controller = new AbortController()
  #running: Promise<void> | undefined
  /** The process came (back) up during a check: check again as soon as it ends. */
  #again = false
  #started = false
  readonly #offset: number

  constructor (peer: Peer, settings: HealthSettings, history: number, log: FastifyBaseLogger, peers: number) {
    this.#peer = peer
    // The first round is spread over the interval (as HAProxy does), at most
    // SPREAD_STEP apart, so that a large upstream is not checked in one burst
    // while a small one is still checked at once.
    this.#offset = peer.index * Math.min(settings.interval / peers, SPREAD_STEP)
    this.#settings = settings
    this.#history = history
    this.#log = log
    if (settings.initialState === 'down') peer.setHealth('unhealthy', 'no check passed yet')
  }

  start (): void {
    this.#started = true
    if (this.#peer.running) this.#schedule(this.#offset + Math.random() * this.#settings.jitter)
  }

  processChanged (state: ProcessState): void {
    if (!this.#started) return
    if (state === 'up' || state === 'starting') return this.#checkNow()
    this.#pause()
    if (state === 'down') {
      this.#peer.resetCheckRuns()
      this.#setHealth(this.#settings.initialState === 'down' ? 'unhealthy' : 'unknown', 'process down')
    }
  }

  async stop (): Promise<void> {
    this.#started = false
    const running = this.#running
    this.#pause()
    await running
  }

  #checkNow (): void {
    if (this.#running !== undefined) {
      this.#again = true
      return
    }
    clearTimeout(this.#timer)
    this.#check()
  }

  #pause (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    if (this.#running !== undefined) {
      this.#controller.abort()
      this.#controller = new AbortController()
      this.#running = undefined
    }
    this.#again = false
  }

  #schedule (delay: number): void {
    this.#timer = setTimeout(this.#check, delay)
    this.#timer.unref()
  }

  readonly #check = (): void => {
    this.#timer = undefined
    const signal = this.#controller.signal
    this.#running = probe(this.#peer, this.#settings.probe, signal).then(result => {
      if (signal.aborted) return
      this.#running = undefined
      try {
        this.#record(result)
      } catch (error) {
        this.#log.error({ err: error, upstream: this.#peer.upstream, index: this.#peer.index }, 'a registry change listener threw')
      }
      this.#next()
    })
  }

  #next (): void {
    // A change listener may have started a check already, or stopped the process.
    if (!this.#started || this.#running !== undefined || this.#timer !== undefined || !this.#peer.running) return
    const again = this.#again
    this.#again = false
    this.#schedule(again ? 0 : this.#settings.interval + Math.random() * this.#settings.jitter)
  }

  #record (result: CheckResult): void {
    const peer = this.#peer
    peer.recordCheck(result, this.#history)
    if (result.ok) {
      if (peer.rise >= this.#settings.rise) this.#setHealth('healthy', result.reason)
    } else if (peer.fall >= this.#settings.fall) {
      this.#setHealth('unhealthy', result.reason)
    }
  }

  #setHealth (state: HealthState, reason: string): void {
    const peer = this.#peer
    const from = peer.health
    if (from === state) return
    peer.setHealth(state, reason)
    this.#log.info({ upstream: peer.upstream, index: peer.index, peer: peer.address, from, to: state, reason },
      `peer ${peer.index} (${peer.address}) of upstream "${peer.upstream}" is ${state}: ${reason}`)
  }
}

/** The checkers of every upstream that has a `healthCheck` section, started and stopped together. */
export class HealthChecks {
  readonly #registry: Registry
  readonly #checkers = new Map<string, PeerChecker[]>()

  constructor (registry: Registry, options: HealthPluginOptions, log: FastifyBaseLogger) {
    rejectUnknownOptions(options, PLUGIN_OPTIONS, 'health')
    const history = numberOption(options.history, 32, 'health', 'history', { min: 1, max: 10_000, integer: true })
    this.#registry = registry
    registry.claim('healthCheck')
    for (const upstream of registry.upstreams.values()) {
      if (upstream.options.healthCheck === undefined) continue
      const settings = healthSettings(upstream.options.healthCheck, `upstream "${upstream.name}"`)
      this.#checkers.set(upstream.name, upstream.peers.map(peer => new PeerChecker(peer, settings, history, log, upstream.peers.length)))
    }
  }

  readonly #onChange = (change: PeerChange): void => {
    if (change.field !== 'process') return
    this.#checkers.get(change.upstream)?.[change.index]?.processChanged(change.to as ProcessState)
  }

  start (): void {
    this.#registry.on('change', this.#onChange)
    for (const peers of this.#checkers.values()) {
      for (const checker of peers) checker.start()
    }
  }

  async stop (): Promise<void> {
    this.#registry.off('change', this.#onChange)
    await Promise.all([...this.#checkers.values()].flat().map(async checker => await checker.stop()))
  }
}
