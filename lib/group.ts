import { randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { hostname } from 'node:os'
import type { AdminState, Peer, PinState } from './peer.js'
import type { Upstream } from './upstream.js'
import { MemoryStore } from './store/memory-store.js'
import { LeaseKeeper } from './store/lease.js'
import type { Member, PeerPin, PeerSettings, PeerSettingsRecord, PublishedEvent, SettingName, Store, StoreMessage, StoreStatus } from './store/types.js'
import { durationOption, optionError, showValue } from './options.js'

// The gateways of a group, as this one takes part in it: the store they
// share, this gateway's name in it, the operator settings kept in step both
// ways, the leases it tracks (for the status page), and the members. Nothing
// here is on a request's path: requests read the registry only, and what the
// store says is applied to it in the background.

export interface GroupOptions {
  /**
   * The store the gateways of a group share (a RedisStore for several
   * processes or hosts). Default: a MemoryStore of this gateway's own, a
   * group of one, which nothing is written to.
   */
  store?: Store
  /** This gateway's name in the group (default `<host>:<pid>:<random>`). */
  gatewayId?: string
  /** ms between two re-reads of the shared settings and health, and two announcements of this gateway (default 5000). */
  syncInterval?: number
  /** ms a lease lasts unrenewed (a start, a peer's checks, the scaler's lead): how long the group waits for a gateway that died (default 5000). */
  leaseTtl?: number
}

export const GROUP_OPTIONS = ['store', 'gatewayId', 'syncInterval', 'leaseTtl'] as const

/** The names of the leases of a group, in one place. */
export const leaseNames = {
  start: (upstream: string, index: number): string => `start:${upstream}/${index}`,
  checks: (upstream: string, index: number): string => `checks:${upstream}/${index}`,
  scaler: 'scaler'
} as const

/** Messages from the other gateways of the group (its own are left out), and the store's `resync`. */
export interface GroupEvents {
  message: [StoreMessage]
  state: [StoreStatus]
}

/** Where the group logs: a Fastify logger fits (without info and warn, only errors are told). */
export interface GroupLog {
  error (details: object, message: string): void
  warn? (details: object, message: string): void
  info? (details: object, message: string): void
}

const STORE_METHODS = ['connect', 'close', 'writeSettings', 'readSettings', 'acquire', 'renew', 'release', 'owners', 'writeHealth', 'readHealth',
  'writeLoad', 'readLoad', 'announce', 'members', 'publish', 'on'] as const
const GATEWAY_ID = /^[\x21-\x7e]{1,200}$/

const TO_STORE: Record<PinState, PeerPin | null> = { none: null, up: 'start', down: 'stop' }
const FROM_STORE: Record<PeerPin, PinState> = { start: 'up', stop: 'down' }

function settingKey (upstream: string, index: number, name: SettingName): string {
  return `${name}:${index}:${upstream}`
}

export class Group extends EventEmitter<GroupEvents> {
  readonly store: Store
  /** This gateway's name in the group. */
  readonly id: string
  /** A store was given: the gateways share settings, starts, checks and the scaler's lead. Otherwise a group of one, and nothing goes to the store. */
  readonly shared: boolean
  readonly syncInterval: number
  readonly leaseTtl: number
  readonly #upstreams: ReadonlyMap<string, Upstream>
  readonly #log: GroupLog
  readonly #startedAt = Date.now()
  /** The store version of the settings last read. */
  #version: number | undefined
  /** Per setting, the value last applied from the store or written by this gateway: only a change is applied. */
  readonly #applied = new Map<string, unknown>()
  /** Per setting written by this gateway: no snapshot older than its write (Infinity while it is under way) is applied to it. */
  readonly #written = new Map<string, number>()
  #reading: Promise<void> | undefined
  #readAgain = false
  readonly #leases = new Map<string, LeaseKeeper>()
  readonly #owners = new Map<string, string | null>()
  #members: Member[] = []
  #timer: NodeJS.Timeout | undefined
  #running = false
  #degradedLogged = false

  constructor (upstreams: ReadonlyMap<string, Upstream>, options: GroupOptions, log: GroupLog) {
    super()
    this.setMaxListeners(0)
    const where = 'registry'
    this.#upstreams = upstreams
    this.#log = log
    this.shared = options.store !== undefined
    if (this.shared && !isStore(options.store)) {
      throw optionError(where, `option "store" must be a store (a MemoryStore or a RedisStore), got ${showValue(options.store)}`)
    }
    this.store = options.store ?? new MemoryStore()
    if (options.gatewayId !== undefined && (typeof options.gatewayId !== 'string' || !GATEWAY_ID.test(options.gatewayId))) {
      throw optionError(where, `option "gatewayId" must be 1 to 200 printable characters without spaces, got ${showValue(options.gatewayId)}`)
    }
    this.id = options.gatewayId ?? `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`
    this.syncInterval = durationOption(options.syncInterval, 5000, where, 'syncInterval', 50)
    this.leaseTtl = durationOption(options.leaseTtl, 5000, where, 'leaseTtl', 30)
  }

  /** The store answers: shared state is current. When it does not, each gateway goes on alone on its last known state. */
  get ok (): boolean {
    return this.store.status.state === 'ok'
  }

  /** Connects the store, applies what it holds, announces this gateway; then keeps in step every syncInterval. */
  async start (): Promise<void> {
    if (!this.shared || this.#running) return
    this.#running = true
    this.store.on('state', this.#onState)
    this.store.on('message', this.#onMessage)
    await this.store.connect()
    if (this.ok) {
      this.#log.info?.({ store: this.store.kind, gateway: this.id }, `store ${this.store.kind} connected: gateway ${this.id} joins group "${this.store.namespace}"`)
    } else {
      this.#logDegraded(this.store.status)
    }
    await this.#sync()
    this.#schedule()
  }

  async close (): Promise<void> {
    if (!this.#running) return
    this.#running = false
    clearTimeout(this.#timer)
    await Promise.allSettled([...this.#leases.values()].map(async keeper => await keeper.stop()))
    await this.#reading
    this.store.off('state', this.#onState)
    this.store.off('message', this.#onMessage)
    await this.store.close()
  }

  /** Sends an event to the other gateways (never rejects; nothing when the group is of one). */
  publish (event: PublishedEvent): void {
    if (this.shared) this.store.publish(event).catch(() => {})
  }

  /**
   * An operator changed a peer's settings on this gateway (through the
   * registry): written to the store, not awaited. Settings applied from the
   * store never come here, so nothing is written back.
   */
  share (peer: Peer, patch: { admin?: AdminState, weight?: number, pin?: PinState }): void {
    if (!this.shared) return
    const stored: Partial<PeerSettings> = {}
    if (patch.admin !== undefined) stored.admin = patch.admin
    if (patch.weight !== undefined) stored.weight = patch.weight
    if (patch.pin !== undefined) stored.pin = TO_STORE[patch.pin]
    const keys = (Object.keys(stored) as SettingName[]).map(name => settingKey(peer.upstream, peer.index, name))
    for (const [i, name] of (Object.keys(stored) as SettingName[]).entries()) {
      this.#applied.set(keys[i], stored[name])
      this.#written.set(keys[i], Infinity)
    }
    this.store.writeSettings(peer.upstream, peer.index, stored, this.id).then(version => {
      for (const key of keys) {
        // null: the store keeps it and writes it when it is back, then says `resync`.
        if (version === null) this.#written.delete(key)
        else this.#written.set(key, version)
      }
    }, (error: Error) => this.#log.error({ err: error }, 'store: writing a peer setting failed unexpectedly'))
  }

  /** A lease this gateway keeps while it runs, tracked for the status page; started and stopped by its user. */
  keeper (name: string): LeaseKeeper {
    const keeper = new LeaseKeeper(this.store, name, this.id, { ttlMs: this.leaseTtl })
    this.#leases.set(name, keeper)
    return keeper
  }

  /** Who holds a tracked lease, as far as this gateway knows (its own at once, the others' as of the last sync); undefined when none is tracked by that name. */
  owner (name: string): string | null | undefined {
    const keeper = this.#leases.get(name)
    if (keeper === undefined) return undefined
    if (keeper.held) return this.id
    const owner = this.#owners.get(name) ?? null
    return owner === this.id ? null : owner
  }

  /** The gateways of the group as of the last sync (this one alone in a group of one). */
  get members (): readonly Member[] {
    if (!this.shared) return [{ id: this.id, details: this.#details(), at: this.#startedAt }]
    return this.#members
  }

  /** Settings, members and lease owners again: on a timer, on `settings` from another gateway, on `resync`. */
  readSoon (): void {
    if (this.#reading !== undefined) {
      this.#readAgain = true
      return
    }
    this.#reading = this.#sync().catch((error: Error) => this.#log.error({ err: error }, 'store: keeping in step with the group failed unexpectedly')).finally(() => {
      this.#reading = undefined
      if (this.#readAgain && this.#running) {
        this.#readAgain = false
        this.readSoon()
      }
    })
  }

  #details (): Record<string, string | number> {
    return { host: hostname(), pid: process.pid, startedAt: this.#startedAt }
  }

  #schedule (): void {
    if (!this.#running) return
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      this.readSoon()
      this.#reading?.finally(() => this.#schedule())
    }, this.syncInterval).unref()
  }

  /** One round: announce, read the settings (if they moved), the members and the tracked leases' owners. Never rejects. */
  async #sync (): Promise<void> {
    if (!this.ok) return
    this.store.announce(this.id, this.#details(), 3 * this.syncInterval)
    const names = [...this.#leases.keys()]
    const [settings, members, owners] = await Promise.allSettled([
      this.store.readSettings(this.#version),
      this.store.members(),
      this.store.owners(names)
    ])
    if (settings.status === 'fulfilled' && settings.value !== null) this.#apply(settings.value.version, settings.value.peers)
    if (members.status === 'fulfilled') this.#members = members.value
    if (owners.status === 'fulfilled') names.forEach((name, i) => this.#owners.set(name, owners.value[i]))
  }

  /** What the store holds, applied where it changed since last applied; never written back. */
  #apply (version: number, records: PeerSettingsRecord[]): void {
    this.#version = version
    for (const record of records) {
      const peer = this.#upstreams.get(record.upstream)?.peers[record.index]
      if (peer === undefined) continue
      const reason = `gateway ${record.by}`
      for (const name of ['admin', 'weight', 'pin'] as const) {
        const value = record[name]
        if (value === undefined) continue
        const key = settingKey(record.upstream, record.index, name)
        const written = this.#written.get(key)
        if (written !== undefined) {
          if (version < written) continue
          this.#written.delete(key)
        }
        if (this.#applied.get(key) === value) continue
        this.#applied.set(key, value)
        if (name === 'admin') peer.setAdmin(value as AdminState, reason)
        else if (name === 'weight') peer.setWeight(value as number)
        else peer.setPin(value === null ? 'none' : FROM_STORE[value as PeerPin], reason)
      }
    }
  }

  readonly #onMessage = (message: StoreMessage): void => {
    if (message.type !== 'resync' && message.by === this.id) return
    if (message.type === 'resync' || (message.type === 'settings' && message.version !== this.#version)) this.readSoon()
    this.emit('message', message)
  }

  readonly #onState = (status: StoreStatus): void => {
    if (status.state === 'degraded') this.#logDegraded(status)
    else if (status.state === 'ok' && this.#degradedLogged) {
      this.#degradedLogged = false
      this.#log.info?.({ store: this.store.kind }, `store ${this.store.kind} is back: reconciling with the group`)
    }
    this.emit('state', status)
  }

  #logDegraded (status: StoreStatus): void {
    if (this.#degradedLogged) return
    this.#degradedLogged = true
    this.#log.warn?.({ store: this.store.kind, reason: status.reason }, `store ${this.store.kind} degraded (${status.reason ?? 'no answer'}): ` +
      'routing on the last known state; checks, starts and scaling decided by this gateway alone until it is back')
  }
}

function isStore (value: unknown): value is Store {
  return typeof value === 'object' && value !== null && STORE_METHODS.every(method => typeof (value as Record<string, unknown>)[method] === 'function')
}
