import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { CheckResult, HealthState, Peer, PeerChange, ProcessState } from './peer.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import { hostPort, Prober, type ProbeTarget } from './health-probe.js'
import { CheckSchedule, type ScheduledTask } from './check-schedule.js'
import { healthSettings, PLUGIN_OPTIONS, type HealthPluginOptions, type HealthSettings } from './health-options.js'
import { booleanOption, numberOption, rejectUnknownOptions } from './options.js'
import { PeerShare, SharedChecks, type SharedResultTaker } from './health-sharing.js'
import type { SharedHealthRecord } from './store/types.js'

export type { HealthCheckOptions, HealthPluginOptions } from './health-options.js'

/** ms at most between the first checks of two peers of an upstream. */
const SPREAD_STEP = 10

/** Where a peer is checked: its host, the check port or its own, over TLS when it is https. */
function targetOf (peer: Peer, upstream: Upstream, settings: HealthSettings): ProbeTarget {
  const port = settings.port ?? peer.port
  return {
    host: peer.host,
    port,
    address: hostPort(peer.host, port),
    tls: peer.scheme === 'https' ? upstream.tls : undefined
  }
}

/**
 * The checks of one peer: one at a time, the next scheduled when the previous
 * ends, none while its process is down or stopping. It is its own entry in
 * the shared schedule: due for its next check while it waits, due for its
 * timeout while a check runs.
 */
class PeerChecker implements ScheduledTask, SharedResultTaker {
  due = 0
  slot = -1
  readonly #peer: Peer
  readonly #settings: HealthSettings
  readonly #history: number
  readonly #log: FastifyBaseLogger
  readonly #schedule: CheckSchedule
  readonly #prober: Prober
  /** ms after start of the first check: the first round is spread over the interval. */
  readonly #offset: number
  #checking = false
  /** The process came (back) up during a check: check again as soon as it ends. */
  #again = false
  #started = false
  /** In a group: the lease that says whether this gateway checks the peer, and where results go. */
  readonly #share: PeerShare | undefined
  /** Epoch ms the process last went down or stopping here: a shared result written before describes an older process. */
  #downAt = 0
  /** `at` of the last shared check recorded. */
  #sharedAt = 0

  constructor (peer: Peer, upstream: Upstream, settings: HealthSettings, history: number, log: FastifyBaseLogger, schedule: CheckSchedule, share?: PeerShare) {
    this.#peer = peer
    this.#share = share
    share?.keeper.on('acquired', () => {
      if (this.#started && !this.#checking && this.#peer.running) this.#schedule.at(this, performance.now())
    })
    // As HAProxy does, so that a large upstream is not checked in one burst;
    // at most SPREAD_STEP apart, so that a small one is still checked at once.
    this.#offset = peer.index * Math.min(settings.interval / upstream.peers.length, SPREAD_STEP)
    this.#settings = settings
    this.#history = history
    this.#log = log
    this.#schedule = schedule
    this.#prober = new Prober(targetOf(peer, upstream, settings), settings.probe)
    if (settings.initialState === 'down') peer.setHealth('unhealthy', 'no check passed yet')
  }

  start (): void {
    this.#started = true
    if (this.#peer.running) this.#schedule.at(this, performance.now() + this.#offset + Math.random() * this.#settings.jitter)
  }

  processChanged (state: ProcessState): void {
    if (!this.#started) return
    if (state === 'up' || state === 'starting') {
      if (this.#checking) this.#again = true
      else this.#schedule.at(this, performance.now())
      return
    }
    this.#pause()
    this.#downAt = Date.now()
    if (state === 'down') {
      this.#peer.resetCheckRuns()
      this.#setHealth(this.#settings.initialState === 'down' ? 'unhealthy' : 'unknown', 'process down')
    }
  }

  /** Another gateway's result, taken when it checks the peer and the result is of the process that runs now. */
  applyShared (record: SharedHealthRecord, now: number): void {
    const peer = this.#peer
    if (!this.#started || this.#share?.here !== false || !peer.running || now - record.age < this.#downAt) return
    if (record.check !== null && record.check.at !== this.#sharedAt) {
      this.#sharedAt = record.check.at
      peer.recordCheck(record.check, this.#history)
    }
    this.#setHealth(record.health, `${record.check?.reason ?? record.health}, checked by gateway ${record.by}`)
  }

  stop (): void {
    this.#started = false
    this.#pause()
  }

  /** The schedule's call: the next check is due, or the one in flight has timed out. */
  run (now: number): void {
    if (this.#checking) return this.#prober.timeout()
    // Another gateway checks it: look again an interval on (the lease may come here).
    if (this.#share?.here === false) return this.#schedule.at(this, now + this.#settings.interval)
    this.#checking = true
    this.#schedule.at(this, now + this.#settings.timeout)
    this.#prober.check(this.#done)
  }

  /** No check until the process is up again: the one in flight is dropped, a kept connection closed. */
  #pause (): void {
    this.#schedule.cancel(this)
    this.#checking = false
    this.#again = false
    this.#prober.close()
  }

  readonly #done = (result: CheckResult): void => {
    this.#schedule.cancel(this)
    this.#checking = false
    try {
      this.#record(result)
    } catch (error) {
      this.#log.error({ err: error, upstream: this.#peer.upstream, index: this.#peer.index }, 'a registry change listener threw')
    }
    // A change listener may have asked for a check already, or stopped the process.
    if (!this.#started || this.#checking || this.slot !== -1 || !this.#peer.running) return
    const again = this.#again
    this.#again = false
    this.#schedule.at(this, performance.now() + (again ? 0 : this.#settings.interval + Math.random() * this.#settings.jitter))
  }

  #record (result: CheckResult): void {
    const peer = this.#peer
    peer.recordCheck(result, this.#history)
    const from = peer.health
    if (result.ok) {
      if (peer.rise >= this.#settings.rise) this.#setHealth('healthy', result.reason)
    } else if (peer.fall >= this.#settings.fall && !(peer.process === 'starting' && from === 'unknown')) {
      // A process still starting that no check has passed is not routable
      // anyway, and that it refuses connections yet says nothing of the
      // process it becomes: marked unhealthy, it would be out when its start
      // ends, and the requests held for it would start another peer.
      this.#setHealth('unhealthy', result.reason)
    }
    this.#share?.written(peer.health, result, peer.health !== from)
  }

  #setHealth (state: HealthState, reason: string): void {
    const peer = this.#peer
    const from = peer.health
    if (from === state) return
    peer.setHealth(state, reason)
    // A check's result is shared by #record; this is the process going down.
    if (reason === 'process down') this.#share?.written(state, null, true)
    this.#log.info({ upstream: peer.upstream, index: peer.index, peer: peer.address, from, to: state, reason },
      `peer ${peer.index} (${peer.address}) of upstream "${peer.upstream}" is ${state}: ${reason}`)
  }
}

/**
 * The checkers of every upstream that has a `healthCheck` section, on one
 * schedule (one timer for all peers), started and stopped together.
 */
export class HealthChecks {
  readonly #registry: Registry
  readonly #checkers = new Map<string, PeerChecker[]>()
  readonly #schedule: CheckSchedule
  /** In a group whose store is shared (and shareChecks): one owner per peer's checks. */
  readonly #shared: SharedChecks | undefined

  constructor (registry: Registry, options: HealthPluginOptions, log: FastifyBaseLogger) {
    rejectUnknownOptions(options, PLUGIN_OPTIONS, 'health')
    const history = numberOption(options.history, 32, 'health', 'history', { min: 1, max: 10_000, integer: true })
    const share = registry.group.shared && booleanOption(options.shareChecks, true, 'health', 'shareChecks')
    this.#registry = registry
    this.#schedule = new CheckSchedule(error => log.error({ err: error }, 'a health check failed to run'))
    this.#shared = share ? new SharedChecks(registry.group, error => log.error({ err: error }, 'reading the shared health checks failed')) : undefined
    registry.claim('healthCheck')
    for (const upstream of registry.upstreams.values()) {
      if (upstream.options.healthCheck === undefined) continue
      const settings = healthSettings(upstream.options.healthCheck, `upstream "${upstream.name}"`)
      const freshMs = 3 * (settings.interval + settings.timeout) + settings.jitter
      const shares = share ? upstream.peers.map(peer => new PeerShare(registry.group, peer, freshMs)) : []
      const checkers = upstream.peers.map((peer, i) => new PeerChecker(peer, upstream, settings, history, log, this.#schedule, shares[i]))
      this.#checkers.set(upstream.name, checkers)
      this.#shared?.add(upstream.name, checkers, shares)
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
    this.#shared?.start()
  }

  /** Aborts the checks in flight (not recorded), closes kept connections, clears the timer and gives up the checks' leases. */
  async stop (): Promise<void> {
    this.#registry.off('change', this.#onChange)
    for (const peers of this.#checkers.values()) {
      for (const checker of peers) checker.stop()
    }
    this.#schedule.clear()
    await this.#shared?.stop()
  }
}
