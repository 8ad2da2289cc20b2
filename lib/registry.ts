import { EventEmitter } from 'node:events'
import type { RegistryEvents } from './events.js'
import { ADMIN_STATES, type AdminState, type Peer, type PinState } from './peer.js'
import { MAX_WEIGHT, Upstream, type UpstreamOptions } from './upstream.js'
import { numberOption, optionError, showValue } from './options.js'
import { BadAdminStateError, BadPinError, UnknownUpstreamError } from './errors.js'
import { Activity } from './activity.js'
import type { OperatorRoutes } from './operator-routes.js'
import { Group, type GroupLog, type GroupOptions } from './group.js'

/** Where a registry reports a listener that threw, and its group what it does (a Fastify logger fits). */
export interface RegistryLog extends GroupLog {}

/** Without a logger (the registry used on its own), errors and warnings are process warnings. */
const WARNING_LOG: RegistryLog = {
  error: (details, message) => process.emitWarning(`${message}: ${String((details as { err?: unknown }).err)}`, 'FastifySupervisordWarning'),
  warn: (_details, message) => process.emitWarning(message, 'FastifySupervisordWarning')
}

const PINS: readonly PinState[] = ['none', 'up', 'down']

export interface RegistryOptions extends GroupOptions {
  /** By name, or as a list of `{ name, ...options }` (as a config file may hold them). */
  upstreams: Record<string, UpstreamOptions> | Array<UpstreamOptions & { name: string }>
}

/** Option sections of an upstream that the registry itself reads. */
const REGISTRY_SECTIONS = ['servers', 'balancer', 'hashKey', 'hashConsistent', 'tls'] as const satisfies ReadonlyArray<keyof UpstreamOptions>

/**
 * The upstreams and their peers' state, shared by every plugin of the suite.
 * Plugins never call each other: they read and write peers here and listen
 * to its events.
 */
export class Registry extends EventEmitter<RegistryEvents> {
  readonly upstreams: ReadonlyMap<string, Upstream>
  /** Time in state, request rates and last commands of the peers. */
  readonly activity: Activity
  readonly #operatorRoutes = new Map<string, OperatorRoutes>()
  /** The gateways this one forms one gateway with, through the store (a group of one by default). */
  readonly group: Group
  readonly #claimed = new Set<string>(REGISTRY_SECTIONS)
  readonly #log: RegistryLog

  constructor (options: RegistryOptions, log: RegistryLog = WARNING_LOG) {
    super()
    this.#log = log
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
    this.activity = new Activity(this, upstreams)
    this.group = new Group(upstreams, options, log)
  }

  /**
   * Every listener hears every event, in order. A listener that throws is
   * logged (with the event) and skipped: the change it was told of still
   * stands, the listeners after it are still told, and the code that made
   * the change never sees the error.
   */
  override emit<E extends keyof RegistryEvents> (event: E, ...args: RegistryEvents[E]): boolean {
    const listeners = this.rawListeners(event) as Array<(...a: RegistryEvents[E]) => void>
    for (const listener of listeners) {
      try {
        listener.apply(this, args)
      } catch (error) {
        this.#log.error({ err: error, event, details: args[0] }, `fastify-supervisord: a registry "${event}" listener threw`)
      }
    }
    return listeners.length > 0
  }

  /** The upstream called `name`, or an error naming the ones there are. */
  get (name: string): Upstream {
    const upstream = this.upstreams.get(name)
    if (upstream === undefined) {
      throw new UnknownUpstreamError(name, [...this.upstreams.keys()].map(n => `"${n}"`).join(', '))
    }
    return upstream
  }

  /**
   * Takes a peer in (`ready`) or out of rotation (`drain`: in-flight requests
   * finish; `maint`). The one door for operators: the change is shared with
   * the group (as are setWeight and setPin).
   */
  setAdmin (upstream: string, index: number, state: AdminState, reason = 'operator'): Peer {
    if (!ADMIN_STATES.includes(state)) {
      throw new BadAdminStateError(ADMIN_STATES.join(', '), showValue(state))
    }
    const peer = this.get(upstream).peer(index)
    peer.setAdmin(state, reason)
    this.group.share(peer, { admin: state })
    return peer
  }

  setWeight (upstream: string, index: number, weight: number): Peer {
    const peer = this.get(upstream).peer(index)
    peer.setWeight(numberOption(weight, 1, `upstream "${upstream}" server ${index}`, 'weight', { min: 1, max: MAX_WEIGHT, integer: true }))
    this.group.share(peer, { weight: peer.weight })
    return peer
  }

  /** Pins a peer (`up` after an operator's start, `down` after a stop: the scaler leaves it alone) or releases it (`none`). */
  setPin (upstream: string, index: number, pin: PinState, reason: string): Peer {
    if (!PINS.includes(pin)) throw new BadPinError(showValue(pin))
    const peer = this.get(upstream).peer(index)
    peer.setPin(pin, reason)
    this.group.share(peer, { pin })
    return peer
  }

  /** The operator routes plugin says where it answers for an upstream, so that the status page can post to it. */
  announceOperatorRoutes (routes: OperatorRoutes): void {
    this.get(routes.upstream)
    this.#operatorRoutes.set(routes.upstream, routes)
  }

  /** Where the operator routes of an upstream are mounted, if they are. */
  operatorRoutes (upstream: string): OperatorRoutes | undefined {
    return this.#operatorRoutes.get(upstream)
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
