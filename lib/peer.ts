import { Buckets, LATENCY_BUCKETS } from './buckets.js'
import type { FaultKind } from './fault.js'

export type ProcessState = 'down' | 'starting' | 'up' | 'stopping'
export type AdminState = 'ready' | 'drain' | 'maint'
export type HealthState = 'unknown' | 'healthy' | 'unhealthy'
export type PassiveState = 'ok' | 'failed'
/** An operator's start (`up`) or stop (`down`) that the scaler leaves alone until it is released. */
export type PinState = 'none' | 'up' | 'down'

/** Why and until when no start of a peer is tried again (set by the supervisord bridge). */
export interface StartBackoff {
  /** Failed starts in a row: the delay doubles with each. */
  step: number
  /** Epoch ms before which no start is tried. */
  until: number
  /** What the last failed start said. */
  reason: string
  /** `supervisord`: the daemon failed (credentials, unreachable, hanging), so every program behind it backs off; `program`: this program did. */
  cause: 'supervisord' | 'program'
}

export const ADMIN_STATES: readonly AdminState[] = ['ready', 'drain', 'maint']

/** What a passive failure was, in the words of the fault rules (see fault.ts): refused or reset, timed out, a bad response, a status `nextUpstream` lists. */
export type FailureKind = Extract<FaultKind, 'connect' | 'timeout' | 'response' | 'status'> | 'other'
export const FAILURE_KINDS: readonly FailureKind[] = ['connect', 'timeout', 'response', 'status', 'other']

/** Status classes of the responses a peer sent, as HAProxy counts them. */
export const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx', 'other'] as const
export type StatusClass = typeof STATUS_CLASSES[number]

/** The index in STATUS_CLASSES of a status. */
export function statusClassIndex (status: number): number {
  const hundreds = Math.floor(status / 100)
  return hundreds >= 1 && hundreds <= 5 ? hundreds - 1 : 5
}

/** A check's outcome in a bounded set of words (the reason may carry a status or an error code). */
export const CHECK_OUTCOMES = ['ok', 'timed out', 'connection refused', 'bad status', 'bad body', 'body too large', 'closed early', 'error'] as const
export type CheckOutcome = typeof CHECK_OUTCOMES[number]

export function checkOutcome (result: Pick<CheckResult, 'ok' | 'reason'>): CheckOutcome {
  if (result.ok) return 'ok'
  const words = result.reason.startsWith('bad status') ? 'bad status' : result.reason
  return (CHECK_OUTCOMES as readonly string[]).includes(words) ? words as CheckOutcome : 'error'
}

/** One active check's outcome, in the words the nginx check modules used. */
export interface CheckResult {
  ok: boolean
  /** OK, timed out, connection refused, bad status N, bad body, body too large, closed early, ... */
  reason: string
  latencyMs: number
  /** Epoch milliseconds when the check ended. */
  at: number
}

export interface PeerChange {
  upstream: string
  index: number
  /** `backoff` goes from one step to the next (0: none); `pin` from one PinState to another. */
  field: 'process' | 'admin' | 'health' | 'passive' | 'weight' | 'backoff' | 'pin'
  from: string | number
  to: string | number
  reason?: string
  at: number
}

/** What a peer needs from its upstream: its peers, one way to report a change, one to report in-flight moves. */
export interface PeerOwner {
  readonly name: string
  readonly peers: readonly Peer[]
  /** Whether a peer can be started on demand (the supervisord bridge, not in `none` mode). */
  readonly startsOnDemand: boolean
  peerChanged (change: PeerChange): void
  inflightChanged (peer: Peer): void
  /** A peer that was at its maxConns gave a slot back. */
  slotFreed? (peer: Peer): void
}

export interface PeerConfig {
  index: number
  /** `https`: reached over TLS, with the upstream's `tls` settings. */
  scheme: 'http' | 'https'
  host: string
  port: number
  weight: number
  backup: boolean
  down: boolean
  maxFails: number
  failTimeout: number
  /** Requests (and WebSocket sessions) at once; 0: no limit. */
  maxConns: number
}

/**
 * A server of an upstream. Its dimensions are written only through the set*
 * methods so that every change is announced; `routable` is derived from them.
 */
export class Peer {
  readonly index: number
  /** `https` for an `https://` address: the proxy and the checks reach it over TLS. */
  readonly scheme: 'http' | 'https'
  readonly host: string
  readonly port: number
  /** `host:port`, as written in logs and on the status page. */
  readonly address: string
  /** `http://host:port` or `https://host:port`, what the proxy sends to. */
  readonly origin: string
  readonly backup: boolean
  readonly configuredDown: boolean
  readonly maxFails: number
  readonly failTimeout: number
  /** nginx's max_conns, HAProxy's maxconn: in-flight requests at most (0: no limit). */
  readonly maxConns: number

  #owner: PeerOwner
  #weight: number
  #process: ProcessState
  #processReason: string | undefined
  #admin: AdminState = 'ready'
  #health: HealthState = 'unknown'
  #passive: PassiveState = 'ok'
  /** Failures counted towards maxFails (nginx's `fails`), and when the last one was. */
  #failCount = 0
  #lastFailure = 0
  #passiveTimer: NodeJS.Timeout | undefined
  #program: string | null = null
  #pin: PinState = 'none'
  #backoff: StartBackoff | null = null
  /** Waiting for in-flight to reach 0 (a drain). */
  #idleWaiters: Array<() => void> = []

  #inflight = 0
  #requests = 0
  #fails = 0
  #lastChange = Date.now()
  #pid: number | null = null
  #rise = 0
  #fall = 0
  readonly #checks: CheckResult[] = []
  // Counters read by the metrics and the status page, written by the named methods below.
  readonly #responses = [0, 0, 0, 0, 0, 0]
  readonly #failuresByKind: Record<FailureKind, number> = { connect: 0, timeout: 0, response: 0, status: 0, other: 0 }
  #retries = 0
  #redispatches = 0
  readonly #checkOutcomes = new Map<CheckOutcome, number>()
  /** Seconds from a request sent to this peer to its response headers (HAProxy's Tr). */
  readonly responseTime = new Buckets(LATENCY_BUCKETS)
  /** Seconds each active check took. */
  readonly checkDuration = new Buckets(LATENCY_BUCKETS)

  constructor (owner: PeerOwner, config: PeerConfig) {
    this.#owner = owner
    this.index = config.index
    this.scheme = config.scheme
    this.host = config.host
    this.port = config.port
    const hostPart = config.host.includes(':') ? `[${config.host}]` : config.host
    this.address = `${hostPart}:${config.port}`
    this.origin = `${config.scheme}://${this.address}`
    this.#weight = config.weight
    this.backup = config.backup
    this.configuredDown = config.down
    this.maxFails = config.maxFails
    this.failTimeout = config.failTimeout
    this.maxConns = config.maxConns
    this.#process = config.down ? 'down' : 'up'
  }

  get upstream (): string { return this.#owner.name }
  /** Its supervisord program name, once a supervisord bridge manages the upstream. */
  get program (): string | null { return this.#program }
  get weight (): number { return this.#weight }
  get process (): ProcessState { return this.#process }
  /** Why the process state last changed (`supervisord says EXITED`, `stopped`, a fault name, ...). */
  get processReason (): string | undefined { return this.#processReason }
  get admin (): AdminState { return this.#admin }
  get health (): HealthState { return this.#health }
  get passive (): PassiveState { return this.#passive }
  /** Requests sent to it and not ended yet. */
  get inflight (): number { return this.#inflight }
  /** At its `maxConns`: balancers pass it by until a request ends. */
  get full (): boolean { return this.maxConns > 0 && this.#inflight >= this.maxConns }
  /** Requests sent to it since start. */
  get requests (): number { return this.#requests }
  /** Passive failures counted since start. */
  get fails (): number { return this.#fails }
  /** Epoch ms of the last announced change of any dimension. */
  get lastChange (): number { return this.#lastChange }
  /** Its process id, when the supervisord bridge knows it. */
  get pid (): number | null { return this.#pid }
  /** Consecutive passing active checks. */
  get rise (): number { return this.#rise }
  /** Consecutive failing active checks. */
  get fall (): number { return this.#fall }
  /** Responses it sent, by status class (the order of STATUS_CLASSES). */
  get responses (): readonly number[] { return this.#responses }
  /** Passive failures since start, by kind. */
  get failuresByKind (): Readonly<Record<FailureKind, number>> { return this.#failuresByKind }
  /** Requests sent to it after another peer failed them (or after they were held again). */
  get retries (): number { return this.#retries }
  /** Requests moved from it to another peer (a failure, or a rescue when it was taken out), HAProxy's redispatches. */
  get redispatches (): number { return this.#redispatches }
  /** Active checks since start, by outcome. */
  get checkOutcomes (): ReadonlyMap<CheckOutcome, number> { return this.#checkOutcomes }
  /** Most recent active checks, oldest first, bounded by the health checker. */
  get checks (): readonly CheckResult[] { return this.#checks }
  get lastCheck (): CheckResult | null { return this.#checks.at(-1) ?? null }
  /** An operator's start or stop the scaler must leave alone (`none`: not pinned). */
  get pin (): PinState { return this.#pin }
  /** The start back-off, while a failed start keeps new ones away (null: none). */
  get backoff (): Readonly<StartBackoff> | null { return this.#backoff }

  /** A start may be tried now: no back-off, or it has run out. */
  startAllowed (now = Date.now()): boolean {
    return this.#backoff === null || this.#backoff.until <= now
  }

  /** Its process runs or is being started: what scaling and `any` count as running. */
  get running (): boolean {
    return this.#process === 'up' || this.#process === 'starting'
  }

  /**
   * A peer takes new requests when every dimension allows it. A starting
   * process counts once an active check has passed: readiness may come
   * before supervisord's startsecs.
   */
  get routable (): boolean {
    return (this.#process === 'up' || (this.#process === 'starting' && this.#health === 'healthy')) &&
      this.#admin === 'ready' &&
      this.#health !== 'unhealthy' &&
      this.#passive === 'ok'
  }

  /** The supervisord bridge names the peer's program (configuration, set once at registration). */
  assignProgram (program: string): void {
    this.#program = program
  }

  setProcess (state: ProcessState, reason?: string): void {
    const from = this.#process
    if (from === state) return
    this.#process = state
    this.#processReason = reason
    this.#changed('process', from, state, reason)
  }

  setAdmin (state: AdminState, reason?: string): void {
    const from = this.#admin
    if (from === state) return
    this.#admin = state
    this.#changed('admin', from, state, reason)
  }

  setHealth (state: HealthState, reason?: string): void {
    const from = this.#health
    if (from === state) return
    this.#health = state
    this.#changed('health', from, state, reason)
  }

  setWeight (weight: number): void {
    const from = this.#weight
    if (from === weight) return
    this.#weight = weight
    this.#changed('weight', from, weight)
  }

  /** The supervisord bridge puts the peer in start back-off, or out of it (null). */
  setBackoff (backoff: StartBackoff | null): void {
    const from = this.#backoff
    if (from === backoff || (from !== null && backoff !== null && from.step === backoff.step && from.until === backoff.until)) return
    this.#backoff = backoff === null ? null : { ...backoff }
    this.#changed('backoff', from?.step ?? 0, backoff?.step ?? 0, backoff?.reason ?? 'start back-off over')
  }

  /** An operator pinned the peer (`up` after a start, `down` after a stop), or released it (`none`). */
  setPin (pin: PinState, reason?: string): void {
    const from = this.#pin
    if (from === pin) return
    this.#pin = pin
    this.#changed('pin', from, pin, reason)
  }

  /** The supervisord bridge read the process id (null: not running). */
  setPid (pid: number | null): void {
    this.#pid = pid
  }

  /**
   * The health checker's result of one check: kept in `checks` (at most
   * `history` of them) and counted in the rise/fall runs. Health itself is set
   * by the checker, which knows the thresholds.
   */
  recordCheck (result: CheckResult, history: number): void {
    const outcome = checkOutcome(result)
    this.#checkOutcomes.set(outcome, (this.#checkOutcomes.get(outcome) ?? 0) + 1)
    this.checkDuration.observe(result.latencyMs / 1000)
    this.#checks.push(result)
    if (this.#checks.length > history) this.#checks.splice(0, this.#checks.length - history)
    if (result.ok) {
      this.#rise++
      this.#fall = 0
    } else {
      this.#fall++
      this.#rise = 0
    }
  }

  /** The process went down: rise and fall runs start again. */
  resetCheckRuns (): void {
    this.#rise = 0
    this.#fall = 0
  }

  /** A request was sent to this peer. */
  acquire (): void {
    this.#inflight++
    this.#requests++
    this.#owner.inflightChanged(this)
  }

  /** A request sent to this peer ended (response done, error or client gone). */
  release (): void {
    this.#inflight--
    this.#owner.inflightChanged(this)
    if (this.#inflight === this.maxConns - 1) this.#owner.slotFreed?.(this)
    if (this.#inflight === 0 && this.#idleWaiters.length > 0) {
      const waiters = this.#idleWaiters
      this.#idleWaiters = []
      for (const resolve of waiters) resolve()
    }
  }

  /**
   * Resolves once no request is in flight (at once if none is), or when
   * `signal` aborts: a drain waits on this, not on a timer.
   */
  async whenIdle (signal?: AbortSignal): Promise<void> {
    if (this.#inflight <= 0 || signal?.aborted === true) return
    await new Promise<void>(resolve => {
      const done = (): void => {
        signal?.removeEventListener('abort', onAbort)
        resolve()
      }
      const onAbort = (): void => {
        this.#idleWaiters = this.#idleWaiters.filter(waiter => waiter !== done)
        resolve()
      }
      this.#idleWaiters.push(done)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /**
   * The only server of its upstream (one primary, no backup): nginx's
   * `single`. Passive failures never take it out, since there is nowhere
   * else to send its requests — unless it can be started on demand: then a
   * refusal means its process may be gone, and taking it out is what gets
   * it read again and started (the request is held meanwhile).
   */
  get lone (): boolean {
    return this.#owner.peers.length === 1 && !this.#owner.startsOnDemand
  }

  /**
   * Passive (in-band) accounting, as nginx's max_fails/fail_timeout: maxFails
   * failures, each within failTimeout of the one before, take the peer out
   * for failTimeout. When it comes back it is on probation: one more failure
   * takes it out again, a success (after failTimeout) clears the count. A
   * lone peer is never taken out; maxFails 0 disables it.
   */
  recordFailure (reason: string, now = Date.now(), kind: FaultKind | 'other' = 'other'): void {
    this.#fails++
    this.#failuresByKind[kind in this.#failuresByKind ? kind as FailureKind : 'other']++
    if (this.maxFails === 0 || this.#passive === 'failed' || this.lone) return
    const onProbation = this.#failCount >= this.maxFails
    if (!onProbation && now - this.#lastFailure > this.failTimeout) this.#failCount = 0
    this.#lastFailure = now
    if (!onProbation && ++this.#failCount < this.maxFails) return
    this.#passive = 'failed'
    this.#changed('passive', 'ok', 'failed', reason)
    this.#passiveTimer = setTimeout(() => this.#endPassive('failTimeout passed'), this.failTimeout)
    this.#passiveTimer.unref()
  }

  /** The peer answered with `status`, `seconds` after the request was sent to it. */
  recordResponse (status: number, seconds: number): void {
    this.#responses[statusClassIndex(status)]++
    this.responseTime.observe(seconds)
  }

  /** A request came to this peer after another failed it (or after it was held again). */
  recordRetry (): void {
    this.#retries++
  }

  /** A request left this peer for another (a failure, or a rescue). */
  recordRedispatch (): void {
    this.#redispatches++
  }

  /**
   * A response came: once failTimeout has passed since the last failure,
   * the count starts again (nginx: "mark peer live if check passed").
   */
  recordSuccess (now = Date.now()): void {
    if (this.#failCount !== 0 && this.#passive === 'ok' && now - this.#lastFailure > this.failTimeout) this.#failCount = 0
  }

  /** Drops the pending passive-recovery timer without announcing anything (registry closing). */
  dispose (): void {
    clearTimeout(this.#passiveTimer)
    this.#passiveTimer = undefined
  }

  /** An operator ends a passive failure: the peer is trusted again, with no probation. */
  clearPassive (reason: string): void {
    this.#failCount = 0
    this.#endPassive(reason)
  }

  #endPassive (reason: string): void {
    clearTimeout(this.#passiveTimer)
    this.#passiveTimer = undefined
    if (this.#passive === 'ok') return
    this.#passive = 'ok'
    this.#changed('passive', 'failed', 'ok', reason)
  }

  #changed (field: PeerChange['field'], from: string | number, to: string | number, reason?: string): void {
    const at = Date.now()
    this.#lastChange = at
    this.#owner.peerChanged({ upstream: this.#owner.name, index: this.index, field, from, to, reason, at })
  }
}
