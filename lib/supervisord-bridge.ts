import type { FastifyBaseLogger } from 'fastify'
import type { Peer, PeerChange, ProcessState } from './peer.js'
import type { DemandEvent, ScaleEvent } from './events.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import { supervisordLabel, type SupervisordTarget } from './supervisord-address.js'
import { SupervisordCallError, SupervisordClient, isDaemonFault, type ProcessInfo } from './supervisord-client.js'
import { SECTIONS, upstreamSettings, type BridgeSettings } from './supervisord-options.js'
import { accepts, failed, probePause, processStateOf, untilServing, type StartOutcome as Outcome } from './start-readiness.js'
import { startInGroup, type GroupStartOutcome } from './group-start.js'
import type { StoreMessage } from './store/types.js'
import { BadCommandError, NotManagedError } from './errors.js'
import { showValue } from './options.js'

export { pluginSettings } from './supervisord-options.js'
export type { SupervisordSections, SupervisordBridgeOptions, StartBackoffOptions } from './supervisord-options.js'

export type Command = 'start' | 'stop'

export interface ExecuteOptions {
  /** Resolve after supervisord's answer rather than once the command is accepted (default false). */
  wait?: boolean
  /** Pin the peer (default true): the scaler leaves it alone until `unpin()`. */
  pin?: boolean
  /** Why, for the log line of the command (default `operator`). */
  why?: string
}

export interface ExecuteResult {
  upstream: string
  command: Command
  /** The peer's index (the one chosen for `any`), or `'any'` when none was chosen. */
  backend: number | 'any'
  /** supervisord program name of the peer, when one was chosen. */
  program?: string
  /** False when the command was refused (an `any` command busy, inside the anti-flap window, or with no candidate). */
  accepted: boolean
  /** The peer's process state when the result was made (null when no peer was chosen). */
  state: ProcessState | null
  /** Set once the command has ended: whether it succeeded. */
  ok?: boolean
  /** supervisord's fault name, or TIMEOUT, UNAUTHORIZED, UNREACHABLE, ABORTED, PROTOCOL; NOT_READY when the program never accepted a connection; CANCELLED when a later command replaced it. */
  fault?: string
  reason?: string
  /** For an anti-flap refusal: ms until an `any` command is taken again. */
  retryAfter?: number
}

/** The supervisord bridge, as decorated on the instance. */
export interface SupervisordBridge {
  /** Starts or stops peer `backend` (or `any` peer) of an upstream and pins it; see ExecuteResult. Throws on an unknown upstream, one without `supervisord`, or an index out of range. */
  execute (upstream: string, command: Command, backend: number | 'any', options?: ExecuteOptions): Promise<ExecuteResult>
  /** Releases an operator's pin: the scaler may start or stop the peer again. */
  unpin (upstream: string, index: number): Peer
  /** Reads every managed program's state from supervisord now (what the timer does every `pollInterval`). */
  poll (): Promise<void>
  /** Whether the upstream has a `supervisord` option. */
  manages (upstream: string): boolean
  /** The supervisord program name of a peer of a managed upstream. */
  program (upstream: string, index: number): string
  /** Where the upstream's supervisord listens, without credentials (`none` included). */
  label (upstream: string): string
}

/** Who asked for a command and when: for its log line. */
interface Asked {
  /** operator, demand, scaler (and its reason), stopOnFailure. */
  why: string
  /** Epoch ms it was accepted. */
  since: number
}

interface Pending extends Asked {
  command: Command
  done: Promise<ExecuteResult>
  /** Aborted when a later command replaces this one: its drain or readiness wait ends. */
  cancel: AbortController
}

interface PeerControl {
  peer: Peer
  program: string
  managed: Managed
  /** Bumped when a command is accepted and when it ends: a run, or a poll, that sees it moved knows it is stale. */
  generation: number
  pending: Pending | undefined
  /** The end of the last command's supervisord call: calls on one peer are sent in order. */
  chain: Promise<void>
  /** The last stop set admin to `drain` and must put it back. */
  drained: boolean
  /** A poll did not find this program in supervisord's configuration (warned once). */
  missing: boolean
  /** A read of this one program's state is under way. */
  refreshing: boolean
  /** A RUNNING program found by a poll is probed until it answers. */
  watching: boolean
}

interface Managed {
  upstream: Upstream
  target: SupervisordTarget
  /** Undefined in `none` mode. */
  client: SupervisordClient | undefined
  stopOnFailure: boolean
  peers: PeerControl[]
  anyBusy: boolean
  lastAny: number
  /** When a demand that found nothing to start last read supervisord's state. */
  lastDemandPoll: number
}

interface Accepted {
  result: ExecuteResult
  done: Promise<ExecuteResult>
}

const TARGET: Record<Command, ProcessState> = { start: 'up', stop: 'down' }
const MOVING: Record<Command, ProcessState> = { start: 'starting', stop: 'stopping' }
/** The fault that means "it already is so": success, as ngx_supervisord counted it. */
const DONE_ALREADY: Record<Command, string> = { start: 'ALREADY_STARTED', stop: 'NOT_RUNNING' }
/** ms at least between two polls asked by demands that found nothing to start. */
const DEMAND_POLL_EVERY = 1000

/** What execute() answers about an accepted command, with the peer's process state as it is now. */
function resultOf (pc: PeerControl, command: Command, more: Pick<ExecuteResult, 'ok' | 'fault' | 'reason'> = {}): ExecuteResult {
  return { upstream: pc.peer.upstream, command, backend: pc.peer.index, program: pc.program, accepted: true, state: pc.peer.process, ...more }
}

/**
 * Carries out start/stop commands on peers, keeps each peer's process state
 * as ngx_supervisord's state machine did, and keeps it true by polling. A
 * started peer is `up` once supervisord says RUNNING and its address accepts
 * a connection; a failed start puts it in back-off, and demand moves on to
 * the next candidate.
 */
export class Bridge implements SupervisordBridge {
  readonly #managed = new Map<string, Managed>()
  readonly #registry: Registry
  readonly #settings: BridgeSettings
  readonly #log: FastifyBaseLogger
  readonly #closing = new AbortController()
  #pollTimer: NodeJS.Timeout | undefined
  #started = false
  #polling: Promise<void> | undefined
  /** Clients by target, shared by the upstreams that name the same supervisord. */
  readonly #clients = new Map<string, SupervisordClient>()
  /** What one `getAllProcessInfo` call answers for: the peers of every upstream behind that client. */
  readonly #polled = new Map<SupervisordClient, PeerControl[]>()
  /** Failed starts in a row that were the daemon's fault, per daemon. */
  readonly #daemonSteps = new Map<SupervisordClient, number>()
  /** The fault of the last poll of a daemon, while its polls fail: logged when it begins or changes, not at every poll. */
  readonly #pollFaults = new Map<SupervisordClient, string>()

  constructor (registry: Registry, settings: BridgeSettings, log: FastifyBaseLogger) {
    this.#registry = registry
    this.#settings = settings
    this.#log = log
    for (const upstream of registry.upstreams.values()) {
      const config = upstreamSettings(upstream)
      if (config === undefined) continue
      const client = config.target.kind === 'none' ? undefined : this.#clientFor(config.target)
      const managed: Managed = {
        upstream,
        target: config.target,
        client,
        stopOnFailure: config.stopOnFailure,
        peers: [],
        anyBusy: false,
        lastAny: -Infinity,
        lastDemandPoll: -Infinity
      }
      managed.peers = upstream.peers.map((peer): PeerControl => ({
        peer,
        program: config.programs[peer.index],
        managed,
        generation: 0,
        pending: undefined,
        chain: Promise.resolve(),
        drained: false,
        missing: false,
        refreshing: false,
        watching: false
      }))
      this.#managed.set(upstream.name, managed)
      if (client !== undefined) this.#polled.set(client, [...(this.#polled.get(client) ?? []), ...managed.peers])
      if (!config.inherit) {
        for (const peer of upstream.peers) peer.setProcess('down', 'not started yet')
      }
      if (config.target.kind !== 'none') upstream.startOnDemand()
      else if (upstream.peers.every(peer => peer.process === 'down')) {
        log.warn({ upstream: upstream.name }, `supervisord: upstream "${upstream.name}" is supervisord "none" and every peer starts down: ` +
          'none mode never starts a peer on demand, so every request gets 503 until one is started by its route or execute() ' +
          '(set inheritBackendStatus to start the peers that are not "down: true" in rotation)')
      }
      upstream.assignSupervisord(supervisordLabel(config.target), config.programs)
    }
    for (const section of SECTIONS) registry.claim(section)
    registry.on('demand', this.#onDemand)
    registry.on('change', this.#onChange)
    registry.on('scale', this.#onScale)
    registry.group.on('message', this.#onGroupMessage)
  }

  manages (upstream: string): boolean {
    this.#registry.get(upstream)
    return this.#managed.has(upstream)
  }

  program (upstream: string, index: number): string {
    return this.#peerControl(this.#get(upstream), index).program
  }

  label (upstream: string): string {
    return supervisordLabel(this.#get(upstream).target)
  }

  async execute (upstream: string, command: Command, backend: number | 'any', options: ExecuteOptions = {}): Promise<ExecuteResult> {
    const managed = this.#get(upstream)
    if (command !== 'start' && command !== 'stop') throw new BadCommandError(showValue(command))
    const pc = backend === 'any' ? this.#anyCandidate(managed, command) : this.#peerControl(managed, backend)
    if (!('peer' in pc)) return pc
    // Operator intent: the scaler leaves the peer alone until it is released.
    if (options.pin !== false) this.#registry.setPin(upstream, pc.peer.index, command === 'start' ? 'up' : 'down', `operator ${command}`)
    const why = options.why ?? 'operator'
    const accepted = backend === 'any' ? this.#anyAccepted(managed, pc, command, why) : this.#accept(managed, pc, command, why)
    return options.wait === true ? await accepted.done : accepted.result
  }

  unpin (upstream: string, index: number): Peer {
    const { peer } = this.#peerControl(this.#get(upstream), index)
    return this.#registry.setPin(upstream, peer.index, 'none', 'released')
  }

  async poll (): Promise<void> {
    // Never two at once: a caller during a poll shares it.
    this.#polling ??= this.#pollAll().finally(() => { this.#polling = undefined })
    await this.#polling
  }

  /** First poll (awaited), then one every pollInterval after the previous ended. */
  async start (): Promise<void> {
    this.#started = true
    await this.poll()
    this.#schedule()
  }

  async close (): Promise<void> {
    this.#closing.abort()
    clearTimeout(this.#pollTimer)
    this.#registry.off('demand', this.#onDemand)
    this.#registry.off('change', this.#onChange)
    this.#registry.off('scale', this.#onScale)
    this.#registry.group.off('message', this.#onGroupMessage)
    const running = [...this.#managed.values()].flatMap(m => m.peers.map(pc => pc.pending?.done))
    await Promise.allSettled([this.#polling, ...running])
  }

  #get (name: string): Managed {
    const managed = this.#managed.get(name)
    if (managed !== undefined) return managed
    this.#registry.get(name)
    throw new NotManagedError(name)
  }

  #peerControl (managed: Managed, index: number): PeerControl {
    return managed.peers[managed.upstream.peer(index).index]
  }

  #clientFor (target: Exclude<SupervisordTarget, { kind: 'none' }>): SupervisordClient {
    const key = JSON.stringify(target)
    let client = this.#clients.get(key)
    if (client === undefined) {
      client = new SupervisordClient(target, { timeout: this.#settings.callTimeout, signal: this.#closing.signal })
      this.#clients.set(key, client)
    }
    return client
  }

  /** The peer an `any` command goes to (the upstream's one rule), or the refusal. */
  #anyCandidate (managed: Managed, command: Command): PeerControl | ExecuteResult {
    const refuse = (reason: string, retryAfter?: number): ExecuteResult => {
      const result: ExecuteResult = { upstream: managed.upstream.name, command, backend: 'any', accepted: false, state: null, reason }
      if (retryAfter !== undefined) result.retryAfter = retryAfter
      return result
    }
    if (managed.anyBusy) return refuse('another "any" command on this upstream has not ended yet')
    const remaining = managed.lastAny + this.#settings.antiFlap - Date.now()
    if (remaining > 0) return refuse(`anti-flap: "any" commands are at least ${this.#settings.antiFlap} ms apart (next in ${remaining} ms)`, remaining)
    const upstream = managed.upstream
    const peer = command === 'start' ? upstream.startCandidate() : upstream.stopCandidate()
    if (peer === undefined) {
      return refuse(command === 'start'
        ? 'no peer can be started (none is down with admin state ready and out of start back-off)'
        : 'no running peer can be stopped without stopping the last one')
    }
    return managed.peers[peer.index]
  }

  #anyAccepted (managed: Managed, pc: PeerControl, command: Command, why: string): Accepted {
    managed.anyBusy = true
    managed.lastAny = Date.now()
    const accepted = this.#accept(managed, pc, command, why)
    const free = (): void => { managed.anyBusy = false }
    accepted.done.then(free, free)
    return accepted
  }

  /**
   * ngx_supervisord's state machine: START from down/stopping → starting,
   * STOP from up/starting → stopping; a peer already in (or on its way to)
   * the target state is left alone.
   */
  #accept (managed: Managed, pc: PeerControl, command: Command, why: string): Accepted {
    const { peer } = pc
    if (pc.pending?.command === command) {
      return { result: resultOf(pc, command), done: pc.pending.done }
    }
    if (pc.pending === undefined && (peer.process === TARGET[command] || peer.process === MOVING[command])) {
      const result = resultOf(pc, command, { ok: true, reason: `already ${peer.process}` })
      return { result, done: Promise.resolve(result) }
    }
    if (managed.client === undefined) {
      const result = this.#finishNone(managed, pc, command, why)
      return { result, done: Promise.resolve(result) }
    }
    pc.pending?.cancel.abort()
    const generation = ++pc.generation
    const cancel = new AbortController()
    peer.setProcess(MOVING[command], `${command} requested`)
    const asked: Asked = { why, since: Date.now() }
    const done = this.#run(managed, managed.client, pc, command, generation, asked, AbortSignal.any([cancel.signal, this.#closing.signal]))
    pc.pending = { command, ...asked, done, cancel }
    return { result: resultOf(pc, command), done }
  }

  /** `none` mode: the command takes effect at once and listeners are told. */
  #finishNone (managed: Managed, pc: PeerControl, command: Command, why: string): ExecuteResult {
    pc.generation++
    pc.peer.setProcess(TARGET[command], `${command} (supervisord none)`)
    this.#log.info({ upstream: pc.peer.upstream, program: pc.program, command, why },
      `supervisord none: peer ${pc.peer.index} (${pc.program}) ${command === 'start' ? 'taken in' : 'taken out'} at once (${why})`)
    this.#emit(managed, pc, command, { ok: true })
    return resultOf(pc, command, { ok: true })
  }

  async #run (managed: Managed, client: SupervisordClient, pc: PeerControl, command: Command, generation: number, asked: Asked, signal: AbortSignal): Promise<ExecuteResult> {
    const previous = pc.chain
    let release = (): void => {}
    pc.chain = new Promise(resolve => { release = resolve })
    let outcome: Outcome
    try {
      await previous
      if (command === 'stop') await this.#drain(pc, signal)
      if (pc.generation !== generation) {
        outcome = { ok: false, fault: 'CANCELLED', reason: `a later command on program "${pc.program}" replaced it` }
      } else if (command === 'start' && this.#registry.group.shared) {
        outcome = await this.#startInGroup(client, pc, signal)
      } else {
        outcome = await this.#sendAndServe(client, pc, command, signal)
      }
    } finally {
      release()
    }
    if (outcome.fault === 'NOT_READY') {
      // It runs but never answered: stop it (best effort), a start elsewhere may do better.
      client.stopProcess(pc.program, false).catch(() => {})
    }
    return this.#finish(managed, pc, command, generation, asked, outcome)
  }

  /** Sends the command; a start is then waited for until the program serves. */
  async #sendAndServe (client: SupervisordClient, pc: PeerControl, command: Command, signal: AbortSignal, outcome?: Outcome): Promise<Outcome> {
    outcome ??= await this.#send(client, pc, command)
    if (command !== 'start' || !outcome.ok) return outcome
    const serving = await untilServing(client, pc.program, pc.peer,
      { readyTimeout: this.#settings.readyTimeout, running: outcome.already !== true, signal, closing: this.#closing.signal })
    return serving.ok ? outcome : serving
  }

  /**
   * One start for the whole group: the gateway that gets the peer's start
   * lease starts it (unless supervisord says it runs already: another
   * gateway was just quicker); the others wait for its word and then, as
   * after ALREADY_STARTED, until the program serves.
   */
  async #startInGroup (client: SupervisordClient, pc: PeerControl, signal: AbortSignal): Promise<GroupStartOutcome> {
    const already = { ok: true, already: true }
    return await startInGroup({
      group: this.#registry.group,
      upstream: pc.peer.upstream,
      index: pc.peer.index,
      program: pc.program,
      here: async before => {
        const info = await client.getProcessInfo(pc.program).catch(() => undefined)
        const runs = info !== undefined && processStateOf(info) !== 'down' && processStateOf(info) !== 'stopping'
        if (!runs) return await this.#sendAndServe(client, pc, 'start', signal)
        // Started already: by the gateway that held the lease before (its word lost or not here yet), or from outside the group.
        return { ...await this.#sendAndServe(client, pc, 'start', signal, already), heard: true, ...(before === null ? {} : { by: before }) }
      },
      serving: async () => await this.#sendAndServe(client, pc, 'start', signal, already),
      deadline: Date.now() + this.#settings.callTimeout + this.#settings.readyTimeout + this.#registry.group.leaseTtl,
      signal,
      closing: this.#closing.signal
    })
  }

  /** Takes the peer out of rotation and waits (bounded) for its in-flight requests to end. */
  async #drain (pc: PeerControl, signal: AbortSignal): Promise<void> {
    const { peer } = pc
    if (peer.admin === 'ready') {
      peer.setAdmin('drain', 'stopping')
      pc.drained = true
    }
    const timeout = AbortSignal.timeout(this.#settings.drainTimeout)
    await peer.whenIdle(AbortSignal.any([signal, timeout]))
    if (peer.inflight > 0 && !signal.aborted) {
      this.#log.warn({ upstream: peer.upstream, program: pc.program, inflight: peer.inflight },
        `supervisord: drainTimeout (${this.#settings.drainTimeout} ms) passed, stopping with requests in flight`)
    }
  }

  async #send (client: SupervisordClient, pc: PeerControl, command: Command): Promise<Outcome> {
    try {
      await (command === 'start' ? client.startProcess(pc.program, true) : client.stopProcess(pc.program, true))
      return { ok: true }
    } catch (error) {
      const outcome = failed(error)
      if (outcome.fault === DONE_ALREADY[command]) return { ok: true, reason: outcome.reason, already: true }
      return outcome
    }
  }

  #finish (managed: Managed, pc: PeerControl, command: Command, generation: number, asked: Asked, outcome: GroupStartOutcome): ExecuteResult {
    const { peer } = pc
    // A later command owns the peer now: this one's end changes nothing but is still told.
    const current = pc.generation === generation
    const told = outcome.fault !== 'CANCELLED' && !this.#closing.signal.aborted
    if (current) {
      pc.pending = undefined
      // A poll sent before this end may answer after it: its (older) state must not win.
      pc.generation++
      if (command === 'start') this.#startEnded(managed, pc, asked, outcome, told)
      else if (outcome.ok) {
        peer.setProcess('down', 'stopped')
        peer.setPid(null)
        if (told) {
          this.#log.info({ upstream: peer.upstream, program: pc.program, command, why: asked.why, ms: Date.now() - asked.since },
            `supervisord: stopped program "${pc.program}" (${asked.why}) in ${Date.now() - asked.since} ms`)
        }
      } else if (outcome.fault === 'TIMEOUT') {
        // supervisord may still carry it out: out of rotation until its state is read again.
        this.#refresh(pc)
      } else {
        peer.setProcess('up', outcome.fault)
      }
    }
    if (pc.drained && (!current || command === 'stop')) {
      pc.drained = false
      if (peer.admin === 'drain') peer.setAdmin('ready', command === 'stop' && outcome.ok ? 'stopped' : 'stop did not happen')
    }
    if (!outcome.ok && told && command === 'stop') {
      this.#log.error({ upstream: peer.upstream, program: pc.program, why: asked.why, fault: outcome.fault, supervisord: supervisordLabel(managed.target) },
        outcome.reason ?? 'supervisord: stop failed')
    }
    this.#emit(managed, pc, command, outcome)
    // The other gateways of the group need not wait for their poll (a start they only heard of is not theirs to tell).
    if (told && outcome.heard !== true) {
      this.#registry.group.publish({ type: 'process', upstream: peer.upstream, index: peer.index, command, ok: outcome.ok, by: this.#registry.group.id, at: Date.now() })
    }
    const { heard: _heard, by: _by, ...result } = outcome
    return resultOf(pc, command, result)
  }

  /** A start ended: up (back-off over), or down in back-off, with one log line either way it matters. */
  #startEnded (managed: Managed, pc: PeerControl, asked: Asked, outcome: GroupStartOutcome, told: boolean): void {
    const { peer } = pc
    const client = managed.client as SupervisordClient
    if (outcome.ok) {
      const failedBefore = peer.backoff?.step ?? 0
      this.#clearBackoff(client, pc)
      // A new process: the failures of the old one are not its own.
      peer.clearPassive('process started')
      // Held requests are released within this change (or were, when a check passed first).
      peer.setProcess('up', 'started')
      this.#refreshPid(managed, pc)
      if (told) this.#logStart(managed, pc, asked, failedBefore, outcome)
      return
    }
    if (told) {
      // Set before the process goes down, so that whoever looks for the next candidate skips this one.
      const { step, delay, everyProgram } = this.#backOff(client, pc, outcome)
      this.#log.error({
        upstream: peer.upstream,
        program: pc.program,
        why: asked.why,
        fault: outcome.fault,
        supervisord: client.label,
        backoffMs: delay,
        step,
        refused: managed.upstream.takeRefused()
      }, `${outcome.reason ?? `supervisord: start of "${pc.program}" failed`}; ` +
        `no start of ${everyProgram ? `any program of supervisord ${client.label}` : `"${pc.program}"`} for ${delay} ms (failed start ${step} in a row)`)
    }
    peer.setProcess('down', outcome.fault)
  }

  /**
   * One line per start that succeeded: the program, who asked, how long it
   * took and, for a start on demand, how long the longest-held request had
   * waited when it was released.
   */
  #logStart (managed: Managed, pc: PeerControl, asked: Asked, failedBefore: number, { heard, by }: GroupStartOutcome): void {
    const ms = Date.now() - asked.since
    const hold = managed.upstream.hold
    const waitedMs = hold.lastReleaseAt !== null && hold.lastReleaseAt >= asked.since ? hold.lastWaitMs : null
    const details: Record<string, unknown> = { upstream: pc.peer.upstream, program: pc.program, command: 'start', why: asked.why, ms }
    // Started by another gateway of the group (or found running): this one only waited for it to serve.
    if (by !== undefined) details.by = by
    let message = heard !== true
      ? `supervisord: started program "${pc.program}" (${asked.why}) in ${ms} ms`
      : `supervisord: program "${pc.program}" ${by === undefined ? 'found running' : `started by gateway ${by}`} (${asked.why}), serving here in ${ms} ms`
    if (asked.why === 'demand') {
      details.waitedMs = waitedMs
      message += waitedMs === null ? '; no request was held any more' : `; the first held request waited ${waitedMs} ms`
    }
    if (failedBefore > 0) {
      details.failedBefore = failedBefore
      details.refused = managed.upstream.takeRefused()
      message += ` (after ${failedBefore} failed starts)`
    }
    this.#log.info(details, message)
  }

  /** The start back-off of the peer, or of every peer behind the daemon when the daemon failed. */
  #backOff (client: SupervisordClient, pc: PeerControl, outcome: Outcome): { step: number, delay: number, everyProgram: boolean } {
    const now = Date.now()
    const reason = outcome.reason ?? outcome.fault ?? 'start failed'
    const delayOf = (step: number): number => Math.min(this.#settings.startBackoff.initial * 2 ** Math.min(step - 1, 30), this.#settings.startBackoff.max)
    if (isDaemonFault(outcome.fault)) {
      const step = (this.#daemonSteps.get(client) ?? 0) + 1
      this.#daemonSteps.set(client, step)
      const delay = delayOf(step)
      for (const other of this.#polled.get(client) ?? []) other.peer.setBackoff({ step, until: now + delay, reason, cause: 'supervisord' })
      return { step, delay, everyProgram: true }
    }
    const step = (pc.peer.backoff?.step ?? 0) + 1
    const delay = delayOf(step)
    pc.peer.setBackoff({ step, until: now + delay, reason, cause: 'program' })
    return { step, delay, everyProgram: false }
  }

  /** A start succeeded: its back-off is over, and so is any the daemon caused. */
  #clearBackoff (client: SupervisordClient, pc: PeerControl): void {
    pc.peer.setBackoff(null)
    if (!this.#daemonSteps.delete(client)) return
    for (const other of this.#polled.get(client) ?? []) {
      if (other.peer.backoff?.cause === 'supervisord') other.peer.setBackoff(null)
    }
  }

  /** The pid of a started program, for the status page (best effort: the next poll sets it too). */
  #refreshPid (managed: Managed, pc: PeerControl): void {
    const generation = pc.generation
    managed.client?.getProcessInfo(pc.program).then(info => {
      // No command has moved the peer since the start ended, nor a poll seen it go.
      if (pc.generation === generation && pc.peer.process === 'up') pc.peer.setPid(info.pid > 0 ? info.pid : null)
    }, (error: Error) => this.#log.debug({ err: error, program: pc.program }, 'supervisord: could not read the pid of a started program'))
  }

  /** Reads one program's state now (after a stop that timed out, or a passive failure), unless a command or read is under way. */
  #refresh (pc: PeerControl): void {
    const client = pc.managed.client
    if (client === undefined || pc.refreshing || this.#closing.signal.aborted) return
    pc.refreshing = true
    const generation = pc.generation
    client.getProcessInfo(pc.program)
      .then(async info => { if (pc.pending === undefined && pc.generation === generation) await this.#adopt(pc, info) },
        (error: Error) => this.#log.warn({ upstream: pc.peer.upstream, program: pc.program, fault: (error as SupervisordCallError).fault }, error.message))
      .finally(() => { pc.refreshing = false })
      .catch(error => this.#log.error({ err: error }, 'supervisord: reading a program\'s state failed unexpectedly'))
  }

  #emit (managed: Managed, pc: PeerControl, command: Command, outcome: GroupStartOutcome): void {
    this.#registry.emit('command', {
      upstream: managed.upstream.name,
      index: pc.peer.index,
      command,
      ok: outcome.ok,
      fault: outcome.fault,
      reason: outcome.reason,
      ...(outcome.by === undefined ? {} : { by: outcome.by }),
      at: Date.now()
    })
  }

  /**
   * A request is waiting for a peer: start the upstream's start candidate,
   * unless a start is already on its way. With nothing to start, a peer that
   * runs may have died unseen: supervisord's state is read (at most once a
   * second).
   */
  readonly #onDemand = (event: DemandEvent): void => {
    const managed = this.#managed.get(event.upstream)
    if (managed?.client === undefined || this.#closing.signal.aborted || managed.upstream.routable) return
    if (managed.peers.some(pc => pc.pending?.command === 'start')) return
    const peer = managed.upstream.startCandidate()
    if (peer !== undefined) {
      // Requests need a peer: an operator's stop no longer holds once it is started again.
      if (peer.pin === 'down') this.#registry.setPin(peer.upstream, peer.index, 'none', 'started on demand')
      this.#background(this.#accept(managed, managed.peers[peer.index], 'start', 'demand'))
      return
    }
    const now = Date.now()
    if (now - managed.lastDemandPoll < DEMAND_POLL_EVERY) return
    managed.lastDemandPoll = now
    this.poll().catch(error => this.#log.error({ err: error }, 'supervisord: poll failed'))
  }

  /**
   * A peer failed passively: with stopOnFailure it is stopped, to be started
   * again on demand; otherwise its program's state is read at once (it may
   * have died, and can then be started again).
   */
  readonly #onChange = (change: PeerChange): void => {
    if (change.field !== 'passive' || change.to !== 'failed' || this.#closing.signal.aborted) return
    const managed = this.#managed.get(change.upstream)
    if (managed?.client === undefined) return
    const pc = managed.peers[change.index]
    if (!managed.stopOnFailure) return this.#refresh(pc)
    this.#log.warn({ upstream: change.upstream, program: pc.program, reason: change.reason }, 'supervisord: stopping a failed peer (stopOnFailure)')
    this.#background(this.#accept(managed, pc, 'stop', 'stopOnFailure'))
  }

  /**
   * Another gateway of the group started or stopped a program: its state is
   * read now rather than at the next poll (supervisord stays the truth). When
   * the store is back after a fault, messages may have been lost: a poll.
   */
  readonly #onGroupMessage = (message: StoreMessage): void => {
    if (!this.#started || this.#closing.signal.aborted) return
    if (message.type === 'resync') return this.#background(this.poll())
    if (message.type !== 'process') return
    const pc = this.#managed.get(message.upstream)?.peers[message.index]
    // A command of this gateway's own on the peer finds the truth itself.
    if (pc?.managed.client === undefined || pc.pending !== undefined) return
    this.#refresh(pc)
  }

  /** The scaler decided: carry it out on the peer it chose (a stop drains first, as any stop), unless an operator pinned it meanwhile. */
  readonly #onScale = (event: ScaleEvent): void => {
    const managed = this.#managed.get(event.upstream)
    const pc = managed?.peers[event.index]
    if (managed === undefined || pc === undefined || this.#closing.signal.aborted || pc.peer.pin !== 'none') return
    this.#background(this.#accept(managed, pc, event.action, `scaler: ${event.reason}`))
  }

  /** Work nobody awaits (a command, a wait): an error must not become an unhandled rejection. */
  #background (work: Accepted | Promise<unknown>): void {
    const done = work instanceof Promise ? work : work.done
    done.catch(error => this.#log.error({ err: error }, 'supervisord: background work failed unexpectedly'))
  }

  async #pollAll (): Promise<void> {
    await Promise.all([...this.#polled].map(async ([client, peers]) => await this.#pollOne(client, peers)))
  }

  async #pollOne (client: SupervisordClient, peers: readonly PeerControl[]): Promise<void> {
    const generations = peers.map(pc => pc.generation)
    let infos: ProcessInfo[]
    try {
      infos = await client.getAllProcessInfo()
    } catch (error) {
      if (this.#closing.signal.aborted) return
      const fault = (error as SupervisordCallError).fault
      const level = this.#pollFaults.get(client) === fault ? 'debug' : 'warn'
      this.#pollFaults.set(client, fault)
      this.#log[level]({ supervisord: client.label, fault }, (error as Error).message)
      return
    }
    if (this.#pollFaults.delete(client)) this.#log.info({ supervisord: client.label }, `supervisord ${client.label} answers polls again`)
    const byName = new Map<string, ProcessInfo>()
    for (const info of infos) {
      byName.set(info.name, info)
      byName.set(`${info.group}:${info.name}`, info)
    }
    await Promise.all(peers.map(async (pc, i) => {
      const info = byName.get(pc.program)
      if (info === undefined) {
        if (!pc.missing) this.#log.warn({ upstream: pc.peer.upstream, program: pc.program }, `supervisord ${client.label} has no program "${pc.program}"`)
        pc.missing = true
        return
      }
      pc.missing = false
      // A command accepted during the poll knows better than the answer.
      if (pc.pending !== undefined || pc.generation !== generations[i]) return
      await this.#adopt(pc, info)
    }))
  }

  /**
   * What supervisord says of a program no command of ours is moving becomes
   * the peer's state. RUNNING counts as `up` once its address accepts a
   * connection: until then the peer is `starting`, probed every PROBE_EVERY
   * ms, and `up` after readyTimeout whatever the probes say (supervisord is
   * the truth for the process; health and passive checks judge the rest).
   */
  async #adopt (pc: PeerControl, info: ProcessInfo): Promise<void> {
    const { peer } = pc
    peer.setPid(info.pid > 0 ? info.pid : null)
    const state = processStateOf(info)
    if (state !== 'up' || peer.process === 'up') return peer.setProcess(state, `supervisord says ${info.statename}`)
    if (pc.watching) return
    const generation = pc.generation
    const deadline = Date.now() + this.#settings.readyTimeout
    const untouched = (): boolean => pc.pending === undefined && pc.generation === generation && !this.#closing.signal.aborted
    let result = await accepts(peer, this.#closing.signal)
    if (!untouched()) return
    if (!result.ok) {
      peer.setProcess('starting', `supervisord says ${info.statename}; ${peer.address} does not accept connections yet`)
      // Not awaited: a poll does not wait for a slow program.
      pc.watching = true
      this.#background((async () => {
        while (!result.ok && Date.now() < deadline) {
          await probePause(this.#closing.signal)
          if (!untouched()) return
          result = await accepts(peer, this.#closing.signal)
        }
        if (!untouched()) return
        if (!result.ok) this.#log.warn({ upstream: peer.upstream, program: pc.program }, `supervisord: program "${pc.program}" is RUNNING but ${peer.address} did not accept a connection within readyTimeout: ${result.reason}`)
        this.#adopted(pc, info)
      })().finally(() => { pc.watching = false }))
      return
    }
    this.#adopted(pc, info)
  }

  #adopted (pc: PeerControl, info: ProcessInfo): void {
    pc.peer.setBackoff(null)
    pc.peer.setProcess('up', `supervisord says ${info.statename}`)
  }

  #schedule (): void {
    if (this.#settings.pollInterval === 0 || this.#closing.signal.aborted) return
    this.#pollTimer = setTimeout(() => {
      this.poll()
        .catch(error => this.#log.error({ err: error }, 'supervisord: poll failed'))
        .finally(() => this.#schedule())
    }, this.#settings.pollInterval)
    this.#pollTimer.unref()
  }
}
