import { optionError, rejectUnknownOptions } from '../options.js'
import { encodeSetting, peerField } from './records.js'
import { MEMORY_STORE_OPTIONS, namespaceOption, STORE_WHERE, type StoreOptions } from './options.js'
import { peersOf, SharedStore, type SettingChange, type StoredHealth } from './shared-store.js'

// The default store: one process, nothing to install. It keeps what the Redis
// store keeps, with the same semantics (leases that lapse, a versioned
// settings hash, values kept as text, a channel whose messages arrive after
// the call that sent them), synchronously under the hood.

interface Expiring { expiresAt: number }

/** What one namespace holds: the in-process counterpart of its Redis keys. */
class MemorySpace {
  version = 0
  readonly settings = new Map<string, string>()
  readonly leases = new Map<string, Expiring & { owner: string }>()
  readonly health = new Map<string, { text: string, storedAt: number, freshMs: number }>()
  readonly load = new Map<string, Expiring & { counts: Map<string, number> }>()
  readonly members = new Map<string, Expiring & { text: string }>()
  readonly subscribers = new Set<(text: string) => void>()
}

/** Whether an expiring entry is gone; forgets it when it is. */
function lapsed<T extends Expiring> (map: Map<string, T>, key: string, entry: T | undefined, now: number): entry is undefined {
  if (entry === undefined) return true
  if (entry.expiresAt > now) return false
  map.delete(key)
  return true
}

function sweep<T extends Expiring> (map: Map<string, T>, now: number): void {
  for (const [key, entry] of map) lapsed(map, key, entry, now)
}

/**
 * The state several MemoryStores share: give the same backend to stores of
 * several gateways in one process and they act as one group (each namespace
 * apart), as RedisStores on one Redis do.
 */
export class MemoryBackend {
  readonly #spaces = new Map<string, MemorySpace>()

  /** @internal */
  space (namespace: string): MemorySpace {
    let space = this.#spaces.get(namespace)
    if (space === undefined) {
      space = new MemorySpace()
      this.#spaces.set(namespace, space)
    }
    return space
  }
}

export interface MemoryStoreOptions extends StoreOptions {
  /** Shared with other MemoryStores in this process (default: a backend of its own). */
  backend?: MemoryBackend
}

export class MemoryStore extends SharedStore {
  readonly kind = 'memory'
  readonly #space: MemorySpace
  readonly #subscriber = (text: string): void => this.received(text)

  constructor (options: MemoryStoreOptions = {}) {
    rejectUnknownOptions(options, MEMORY_STORE_OPTIONS, STORE_WHERE)
    const namespace = namespaceOption(options.namespace)
    if (options.backend !== undefined && !(options.backend instanceof MemoryBackend)) {
      throw optionError(STORE_WHERE, 'option "backend" must be a MemoryBackend')
    }
    super(namespace, 'ok')
    this.#space = (options.backend ?? new MemoryBackend()).space(namespace)
    this.#space.subscribers.add(this.#subscriber)
  }

  async connect (): Promise<void> {}

  protected async closeNow (): Promise<void> {
    this.#space.subscribers.delete(this.#subscriber)
  }

  /** Never degraded, so never asked to write kept changes (`onlyIfNewer`). */
  protected async writeSettingsNow (changes: SettingChange[]): Promise<number> {
    const space = this.#space
    const version = ++space.version
    for (const change of changes) {
      space.settings.set(peerField(change.upstream, change.index, change.name),
        encodeSetting(JSON.stringify(change.value), version, change.at, JSON.stringify(change.by)))
    }
    const last = changes.at(-1) as SettingChange
    this.#publish(JSON.stringify({ type: 'settings', version, peers: peersOf(changes), by: last.by, at: last.at }))
    return version
  }

  protected async readSettingsNow (sinceVersion: number | undefined): Promise<{ version: number, fields: Array<[string, string]> } | null> {
    const space = this.#space
    if (sinceVersion === space.version) return null
    return { version: space.version, fields: [...space.settings] }
  }

  #lease (name: string, now: number): (Expiring & { owner: string }) | undefined {
    const lease = this.#space.leases.get(name)
    return lapsed(this.#space.leases, name, lease, now) ? undefined : lease
  }

  protected async acquireNow (name: string, owner: string, ttlMs: number): Promise<boolean> {
    const now = Date.now()
    const lease = this.#lease(name, now)
    if (lease !== undefined && lease.owner !== owner) return false
    this.#space.leases.set(name, { owner, expiresAt: now + ttlMs })
    return true
  }

  protected async renewNow (name: string, owner: string, ttlMs: number): Promise<boolean> {
    const now = Date.now()
    const lease = this.#lease(name, now)
    if (lease?.owner !== owner) return false
    lease.expiresAt = now + ttlMs
    return true
  }

  protected async releaseNow (name: string, owner: string): Promise<boolean> {
    if (this.#lease(name, Date.now())?.owner !== owner) return false
    this.#space.leases.delete(name)
    return true
  }

  protected async ownersNow (names: readonly string[]): Promise<Array<string | null>> {
    const now = Date.now()
    return names.map(name => this.#lease(name, now)?.owner ?? null)
  }

  protected async writeHealthNow (field: string, text: string, freshMs: number): Promise<void> {
    this.#space.health.set(field, { text, storedAt: Date.now(), freshMs })
  }

  protected async readHealthNow (): Promise<StoredHealth[]> {
    const now = Date.now()
    const fresh: StoredHealth[] = []
    for (const [field, entry] of this.#space.health) {
      const age = now - entry.storedAt
      if (age > entry.freshMs) this.#space.health.delete(field)
      else fresh.push({ field, age, text: entry.text })
    }
    return fresh
  }

  protected async writeLoadNow (name: string, window: number, gateway: string, count: number, ttlMs: number): Promise<void> {
    const now = Date.now()
    const loads = this.#space.load
    sweep(loads, now)
    const key = `${window}:${name}`
    const entry = loads.get(key) ?? { counts: new Map<string, number>(), expiresAt: 0 }
    entry.counts.set(gateway, count)
    entry.expiresAt = now + ttlMs
    loads.set(key, entry)
  }

  protected async readLoadNow (name: string, window: number): Promise<Array<[string, string]>> {
    const key = `${window}:${name}`
    const entry = this.#space.load.get(key)
    if (lapsed(this.#space.load, key, entry, Date.now())) return []
    return [...entry.counts].map(([gateway, count]) => [gateway, String(count)])
  }

  protected async announceNow (id: string, text: string, ttlMs: number): Promise<void> {
    this.#space.members.set(id, { text, expiresAt: Date.now() + ttlMs })
  }

  protected async withdrawNow (id: string): Promise<void> {
    this.#space.members.delete(id)
  }

  protected async membersNow (): Promise<string[]> {
    sweep(this.#space.members, Date.now())
    return [...this.#space.members.values()].map(member => member.text)
  }

  protected async publishNow (text: string): Promise<void> {
    this.#publish(text)
  }

  #publish (text: string): void {
    for (const subscriber of this.#space.subscribers) subscriber(text)
  }
}
