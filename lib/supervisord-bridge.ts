import type { FastifyBaseLogger } from 'fastify'
import type { Peer, PeerChange, ProcessState } from './peer.js'
import type { DemandEvent, ScaleEvent } from './events.js'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import { parseSupervisord, programNames, supervisordLabel, type SupervisordOptions, type SupervisordTarget } from './supervisord-address.js'
import { SupervisordCallError, SupervisordClient, type ProcessInfo } from './supervisord-client.js'
import { BadCommandError, NotManagedError } from './errors.js'
import { optionKeys, booleanOption, durationOption, optionError, rejectUnknownOptions, showValue } from './options.js'

/** The sections of an upstream's options that the bridge reads. */
export interface SupervisordSections {
  /** `'host:port'`, `'unix:/path.sock'`, either followed by ` user:pass`, `'none'`, or `{ address, username, password }`. */
  supervisord?: string | SupervisordOptions
  /** Program name prefix: peer N is program `<supervisordName>N` (default the upstream's name). */
  supervisordName?: string
  /** Initial process states from the configuration (`down: true` peers down, others up); otherwise all start down. */
  inheritBackendStatus?: boolean
  /** A peer that fails passively (maxFails in failTimeout) is stopped, to be started again on demand. */
  stopOnFailure?: boolean
}

declare module './upstream.js' {
  interface UpstreamOptions extends SupervisordSections {}
}

export interface SupervisordBridgeOptions {
  /** ms for one call to supervisord, its wait for `startsecs` included (default 5000). */
  callTimeout?: number
  /** ms between two `getAllProcessInfo` polls, counted from the end of the previous one (default 10000; 0: only at start-up). */
  pollInterval?: number
  /** ms that must pass between two `any` commands on an upstream (default 30000). */
  antiFlap?: number
  /** ms a stop waits for the peer's in-flight requests to end before supervisord is asked (default 30000). */
  drainTimeout?: number
}

export type Command = 'start' | 'stop'

export interface ExecuteOptions {
  /** Resolve after supervisord's answer rather than once the command is accepted (default false). */
  wait?: boolean
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
  /** supervisord's fault name, or TIMEOUT, UNAUTHORIZED, UNREACHABLE, ABORTED, PROTOCOL; CANCELLED when a later command replaced it. */
  fault?: string
  reason?: string
  /** For an anti-flap refusal: ms until an `any` command is taken again. */
  retryAfter?: number
}

/** The supervisord bridge, as decorated on the instance. */
export interface SupervisordBridge {
  /** Starts or stops peer `backend` (or `any` peer) of an upstream; see ExecuteResult. Throws on an unknown upstream, one without `supervisord`, or an index out of range. */
  execute (upstream: string, command: Command, backend: number | 'any', options?: ExecuteOptions): Promise<ExecuteResult>
  /** Reads every managed program's state from supervisord now (what the timer does every `pollInterval`). */
  poll (): Promise<void>
  /** Whether the upstream has a `supervisord` option. */
  manages (upstream: string): boolean
  /** The supervisord program name of a peer of a managed upstream. */
  program (upstream: string, index: number): string
  /** Where the upstream's supervisord listens, without credentials (`none` included). */
  label (upstream: string): string
}

interface PeerControl {
  peer: Peer
  program: string
  /** Bumped when a command is accepted and when it ends: a run, or a poll, that sees it moved knows it is stale. */
  generation: number
  pending: { command: Command, done: Promise<ExecuteResult> } | undefined
  /** The end of the last command's supervisord call: calls on one peer are sent in order. */
  chain: Promise<void>
  /** The last stop set admin to `drain` and must put it back. */
  drained: boolean
  /** A poll did not find this program in supervisord's configuration (warned once). */
  missing: boolean
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
}

interface Accepted {
  result: ExecuteResult
  done: Promise<ExecuteResult>
}

interface Outcome { ok: boolean, fault?: string, reason?: string }

const SECTIONS = optionKeys<SupervisordSections>()('supervisord', 'supervisordName', 'inheritBackendStatus', 'stopOnFailure')
const PLUGIN_OPTIONS = optionKeys<SupervisordBridgeOptions>()('callTimeout', 'pollInterval', 'antiFlap', 'drainTimeout')
const DRAIN_TICK = 20
const TARGET: Record<Command, ProcessState> = { start: 'up', stop: 'down' }
const MOVING: Record<Command, ProcessState> = { start: 'starting', stop: 'stopping' }
/** The fault that means "it already is so": success, as ngx_supervisord counted it. */
const DONE_ALREADY: Record<Command, string> = { start: 'ALREADY_STARTED', stop: 'NOT_RUNNING' }

/** What execute() answers about an accepted command, with the peer's process state as it is now. */
function resultOf (pc: PeerControl, command: Command, more: Pick<ExecuteResult, 'ok' | 'fault' | 'reason'> = {}): ExecuteResult {
  return { upstream: pc.peer.upstream, command, backend: pc.peer.index, program: pc.program, accepted: true, state: pc.peer.process, ...more }
}

/** supervisord's process state codes as the registry's process dimension. */
function processStateOf (info: ProcessInfo): ProcessState {
  switch (info.state) {
    case 20: return 'up'
    case 10: case 30: return 'starting'
    case 40: return 'stopping'
    default: return 'down'
  }
}

export function pluginSettings (options: SupervisordBridgeOptions) {
  const where = 'supervisord'
  rejectUnknownOptions(options, PLUGIN_OPTIONS, where)
  return {
    callTimeout: durationOption(options.callTimeout, 5000, where, 'callTimeout', 1),
    pollInterval: durationOption(options.pollInterval, 10_000, where, 'pollInterval', 0),
    antiFlap: durationOption(options.antiFlap, 30_000, where, 'antiFlap', 0),
    drainTimeout: durationOption(options.drainTimeout, 30_000, where, 'drainTimeout', 0)
  }
}

type Settings = ReturnType<typeof pluginSettings>

/** An upstream's supervisord sections, checked; undefined when it has none. */
function upstreamSettings (upstream: Upstream) {
  const options = upstream.options
  const where = `upstream "${upstream.name}"`
  if (options.supervisord === undefined) {
    const stray = SECTIONS.find(section => (options as Record<string, unknown>)[section] !== undefined)
    if (stray !== undefined) throw optionError(where, `option "${stray}" is only read together with option "supervisord"`)
    return undefined
  }
  const target = parseSupervisord(options.supervisord, where)
  const programs = programNames(upstream, options.supervisordName, where)
  const stopOnFailure = booleanOption(options.stopOnFailure, false, where, 'stopOnFailure')
  if (stopOnFailure && target.kind === 'none') {
    throw optionError(where, 'option "stopOnFailure" needs a supervisord to stop the peer with (supervisord is "none")')
  }
  return {
    target,
    programs,
    inherit: booleanOption(options.inheritBackendStatus, false, where, 'inheritBackendStatus'),
    stopOnFailure
  }
}

/**
 * Carries out start/stop commands on peers, keeps each peer's process state
 * as ngx_supervisord's state machine did, and keeps it true by polling.
 */
export class Bridge implements SupervisordBridge {
  readonly #managed = new Map<string, Managed>()
  readonly #registry: Registry
  readonly #settings: Settings
  readonly #log: FastifyBaseLogger
  readonly #closing = new AbortController()
  #pollTimer: NodeJS.Timeout | undefined
  #polling: Promise<void> | undefined
  /** Clients by target, shared by the upstreams that name the same supervisord. */
  readonly #clients = new Map<string, SupervisordClient>()
  /** What one `getAllProcessInfo` call answers for: the peers of every upstream behind that client. */
  readonly #polled = new Map<SupervisordClient, PeerControl[]>()

  constructor (registry: Registry, settings: Settings, log: FastifyBaseLogger) {
    this.#registry = registry
    this.#settings = settings
    this.#log = log
    for (const upstream of registry.upstreams.values()) {
      const config = upstreamSettings(upstream)
      if (config === undefined) continue
      const client = config.target.kind === 'none' ? undefined : this.#clientFor(config.target)
      const peers = upstream.peers.map((peer): PeerControl => ({
        peer,
        program: config.programs[peer.index],
        generation: 0,
        pending: undefined,
        chain: Promise.resolve(),
        drained: false,
        missing: false
      }))
      this.#managed.set(upstream.name, {
        upstream,
        target: config.target,
        client,
        stopOnFailure: config.stopOnFailure,
        peers,
        anyBusy: false,
        lastAny: -Infinity
      })
      if (client !== undefined) this.#polled.set(client, [...(this.#polled.get(client) ?? []), ...peers])
      if (!config.inherit) {
        for (const peer of upstream.peers) peer.setProcess('down', 'not started yet')
      }
      if (config.target.kind !== 'none') upstream.startOnDemand()
      upstream.assignSupervisord(supervisordLabel(config.target), config.programs)
    }
    for (const section of SECTIONS) registry.claim(section)
    registry.on('demand', this.#onDemand)
    registry.on('change', this.#onChange)
    registry.on('scale', this.#onScale)
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
    const accepted = backend === 'any'
      ? this.#any(managed, command)
      : this.#accept(managed, this.#peerControl(managed, backend), command)
    return options.wait === true ? await accepted.done : accepted.result
  }

  async poll (): Promise<void> {
    // Never two at once: a caller during a poll shares it.
    this.#polling ??= this.#pollAll().finally(() => { this.#polling = undefined })
    await this.#polling
  }

  /** First poll (awaited), then one every pollInterval after the previous ended. */
  async start (): Promise<void> {
    await this.poll()
    this.#schedule()
  }

  async close (): Promise<void> {
    this.#closing.abort()
    clearTimeout(this.#pollTimer)
    this.#registry.off('demand', this.#onDemand)
    this.#registry.off('change', this.#onChange)
    this.#registry.off('scale', this.#onScale)
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

  #any (managed: Managed, command: Command): Accepted {
    const refuse = (reason: string, retryAfter?: number): Accepted => {
      const result: ExecuteResult = { upstream: managed.upstream.name, command, backend: 'any', accepted: false, state: null, reason }
      if (retryAfter !== undefined) result.retryAfter = retryAfter
      return { result, done: Promise.resolve(result) }
    }
    if (managed.anyBusy) return refuse('another "any" command on this upstream has not ended yet')
    const remaining = managed.lastAny + this.#settings.antiFlap - Date.now()
    if (remaining > 0) return refuse(`anti-flap: "any" commands are at least ${this.#settings.antiFlap} ms apart (next in ${remaining} ms)`, remaining)
    const pc = command === 'start' ? this.#startCandidate(managed) : this.#stopCandidate(managed)
    if (pc === undefined) {
      return refuse(command === 'start' ? 'no peer is down (or all down peers are in maint)' : 'no running peer can be stopped without stopping the last one')
    }
    managed.anyBusy = true
    managed.lastAny = Date.now()
    const accepted = this.#accept(managed, pc, command)
    const free = (): void => { managed.anyBusy = false }
    accepted.done.then(free, free)
    return accepted
  }

  #startCandidate (managed: Managed): PeerControl | undefined {
    return managed.peers.find(pc => pc.peer.process === 'down' && pc.peer.admin !== 'maint')
  }

  /** The highest-index running peer, never the last one running. */
  #stopCandidate (managed: Managed): PeerControl | undefined {
    const running = managed.peers.filter(pc => pc.peer.running)
    return running.length > 1 ? running[running.length - 1] : undefined
  }

  /**
   * ngx_supervisord's state machine: START from down/stopping → starting,
   * STOP from up/starting → stopping; a peer already in (or on its way to)
   * the target state is left alone.
   */
  #accept (managed: Managed, pc: PeerControl, command: Command): Accepted {
    const { peer } = pc
    if (pc.pending?.command === command) {
      return { result: resultOf(pc, command), done: pc.pending.done }
    }
    if (pc.pending === undefined && (peer.process === TARGET[command] || peer.process === MOVING[command])) {
      const result = resultOf(pc, command, { ok: true, reason: `already ${peer.process}` })
      return { result, done: Promise.resolve(result) }
    }
    if (managed.client === undefined) {
      const result = this.#finishNone(managed, pc, command)
      return { result, done: Promise.resolve(result) }
    }
    const generation = ++pc.generation
    peer.setProcess(MOVING[command], `${command} requested`)
    const done = this.#run(managed, managed.client, pc, command, generation)
    pc.pending = { command, done }
    return { result: resultOf(pc, command), done }
  }

  /** `none` mode: the command takes effect at once and listeners are told. */
  #finishNone (managed: Managed, pc: PeerControl, command: Command): ExecuteResult {
    pc.generation++
    pc.peer.setProcess(TARGET[command], `${command} (supervisord none)`)
    this.#emit(managed, pc, command, { ok: true })
    return resultOf(pc, command, { ok: true })
  }

  async #run (managed: Managed, client: SupervisordClient, pc: PeerControl, command: Command, generation: number): Promise<ExecuteResult> {
    const previous = pc.chain
    let release = (): void => {}
    pc.chain = new Promise(resolve => { release = resolve })
    let outcome: Outcome
    try {
      await previous
      if (command === 'stop') await this.#drain(pc, generation)
      outcome = pc.generation === generation
        ? await this.#send(client, pc, command)
        : { ok: false, fault: 'CANCELLED', reason: `a later command on program "${pc.program}" replaced it` }
    } finally {
      release()
    }
    return this.#finish(managed, pc, command, generation, outcome)
  }

  /** Takes the peer out of rotation and waits (bounded) for its in-flight requests. */
  async #drain (pc: PeerControl, generation: number): Promise<void> {
    const { peer } = pc
    if (peer.admin === 'ready') {
      peer.setAdmin('drain', 'stopping')
      pc.drained = true
    }
    const deadline = Date.now() + this.#settings.drainTimeout
    while (peer.inflight > 0 && Date.now() < deadline && pc.generation === generation && !this.#closing.signal.aborted) {
      await new Promise(resolve => setTimeout(resolve, DRAIN_TICK))
    }
    if (peer.inflight > 0 && pc.generation === generation && !this.#closing.signal.aborted) {
      this.#log.warn({ upstream: peer.upstream, program: pc.program, inflight: peer.inflight },
        `supervisord: drainTimeout (${this.#settings.drainTimeout} ms) passed, stopping with requests in flight`)
    }
  }

  async #send (client: SupervisordClient, pc: PeerControl, command: Command): Promise<Outcome> {
    try {
      await (command === 'start' ? client.startProcess(pc.program, true) : client.stopProcess(pc.program, true))
      return { ok: true }
    } catch (error) {
      const fault = error instanceof SupervisordCallError ? error.fault : 'PROTOCOL'
      if (fault === DONE_ALREADY[command]) return { ok: true, reason: (error as Error).message }
      return { ok: false, fault, reason: (error as Error).message }
    }
  }

  #finish (managed: Managed, pc: PeerControl, command: Command, generation: number, outcome: Outcome): ExecuteResult {
    const { peer } = pc
    // A later command owns the peer now: this one's end changes nothing but is still told.
    const current = pc.generation === generation
    if (current) {
      pc.pending = undefined
      // A poll sent before this end may answer after it: its (older) state must not win.
      pc.generation++
      if (command === 'start') {
        peer.setProcess(outcome.ok ? 'up' : 'down', outcome.ok ? 'started' : outcome.fault)
        if (outcome.ok) this.#refreshPid(managed, pc)
      } else {
        peer.setProcess(outcome.ok ? 'down' : 'up', outcome.ok ? 'stopped' : outcome.fault)
        if (outcome.ok) peer.setPid(null)
      }
    }
    if (pc.drained && (!current || command === 'stop')) {
      pc.drained = false
      if (peer.admin === 'drain') peer.setAdmin('ready', command === 'stop' && outcome.ok ? 'stopped' : 'stop did not happen')
    }
    if (!outcome.ok && outcome.fault !== 'CANCELLED' && !this.#closing.signal.aborted) {
      this.#log.error({ upstream: peer.upstream, program: pc.program, fault: outcome.fault, supervisord: supervisordLabel(managed.target) },
        outcome.reason ?? `supervisord: ${command} failed`)
    }
    this.#emit(managed, pc, command, outcome)
    return resultOf(pc, command, outcome)
  }

  /** The pid of a started program, for the status page (best effort: the next poll sets it too). */
  #refreshPid (managed: Managed, pc: PeerControl): void {
    const generation = pc.generation
    managed.client?.getProcessInfo(pc.program).then(info => {
      // No command has moved the peer since the start ended, nor a poll seen it go.
      if (pc.generation === generation && pc.peer.process === 'up') pc.peer.setPid(info.pid > 0 ? info.pid : null)
    }, (error: Error) => this.#log.debug({ err: error, program: pc.program }, 'supervisord: could not read the pid of a started program'))
  }

  #emit (managed: Managed, pc: PeerControl, command: Command, outcome: Outcome): void {
    this.#registry.emit('command', {
      upstream: managed.upstream.name, index: pc.peer.index, command, ok: outcome.ok, fault: outcome.fault, reason: outcome.reason, at: Date.now()
    })
  }

  /** A request is waiting for a peer: start the lowest-index down one, unless a start is already on its way. */
  readonly #onDemand = (event: DemandEvent): void => {
    const managed = this.#managed.get(event.upstream)
    if (managed?.client === undefined || this.#closing.signal.aborted || managed.upstream.routable) return
    if (managed.peers.some(pc => pc.pending?.command === 'start')) return
    const pc = this.#startCandidate(managed)
    if (pc === undefined) {
      this.#log.warn({ upstream: event.upstream }, 'supervisord: a request waits for a peer, but none is down to be started')
      return
    }
    this.#background(this.#accept(managed, pc, 'start'))
  }

  /** stopOnFailure: a peer that failed passively is stopped, to be started again on demand. */
  readonly #onChange = (change: PeerChange): void => {
    if (change.field !== 'passive' || change.to !== 'failed' || this.#closing.signal.aborted) return
    const managed = this.#managed.get(change.upstream)
    if (managed === undefined || !managed.stopOnFailure) return
    const pc = managed.peers[change.index]
    this.#log.warn({ upstream: change.upstream, program: pc.program, reason: change.reason }, 'supervisord: stopping a failed peer (stopOnFailure)')
    this.#background(this.#accept(managed, pc, 'stop'))
  }

  /** The scaler decided: carry it out on the peer it chose (a stop drains first, as any stop). */
  readonly #onScale = (event: ScaleEvent): void => {
    const managed = this.#managed.get(event.upstream)
    const pc = managed?.peers[event.index]
    if (managed === undefined || pc === undefined || this.#closing.signal.aborted) return
    this.#background(this.#accept(managed, pc, event.action))
  }

  /** A command nobody awaits: an error thrown by an event listener must not become an unhandled rejection. */
  #background (accepted: Accepted): void {
    accepted.done.catch(error => this.#log.error({ err: error }, 'supervisord: a command failed unexpectedly'))
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
      if (!this.#closing.signal.aborted) this.#log.warn({ supervisord: client.label, fault: (error as SupervisordCallError).fault }, (error as Error).message)
      return
    }
    const byName = new Map<string, ProcessInfo>()
    for (const info of infos) {
      byName.set(info.name, info)
      byName.set(`${info.group}:${info.name}`, info)
    }
    peers.forEach((pc, i) => {
      const info = byName.get(pc.program)
      if (info === undefined) {
        if (!pc.missing) this.#log.warn({ upstream: pc.peer.upstream, program: pc.program }, `supervisord ${client.label} has no program "${pc.program}"`)
        pc.missing = true
        return
      }
      pc.missing = false
      // A command accepted during the poll knows better than the answer.
      if (pc.pending !== undefined || pc.generation !== generations[i]) return
      pc.peer.setProcess(processStateOf(info), `supervisord says ${info.statename}`)
      pc.peer.setPid(info.pid > 0 ? info.pid : null)
    })
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
