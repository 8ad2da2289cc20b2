import { EventEmitter } from 'node:events'
import { StoreArgumentError, StoreUnavailableError } from '../errors.js'
import { showValue } from '../options.js'
import type { MemberDetails, Member, PeerSettings, PublishedEvent, SettingName, SettingsSnapshot, SharedHealth, SharedHealthRecord, LoadSum, Store, StoreEvents, StoreMessage, StoreState, StoreStatus, PeerSettingsRecord, PeerRef } from './types.js'
import {
  checkCount, checkDetails, checkEvent, checkHealth, checkIndex, checkName, checkPatch, checkTtl, checkWindow,
  decodeHealth, decodeMember, decodeMessage, decodeSetting, parsePeerField, peerField
} from './records.js'

/** One setting to write, as a store receives it (checked already). */
export interface SettingChange {
  upstream: string
  index: number
  name: SettingName
  value: PeerSettings[SettingName]
  /** Epoch ms of the change, by the writer's clock. */
  at: number
  by: string
}

/** A health entry as a store hands it back: its field, ms since written (store clock), and its text. */
export interface StoredHealth { field: string, age: number, text: string }

/** A write that did not happen: the store resolves false/null instead of rejecting. */
const NOT_WRITTEN = Symbol('not written')

/**
 * What both stores share: arguments checked at the call, what is read back
 * checked again, writes that never reject, reads that reject only with
 * StoreUnavailableError, the state announced once per change, settings
 * written while the store was unreachable kept and written when it is back,
 * and the member announcement repeated then.
 *
 * A store implements the operations below on checked arguments; each may
 * reject with anything, which the public methods turn into their contract.
 */
export abstract class SharedStore extends EventEmitter<StoreEvents> implements Store {
  abstract readonly kind: 'memory' | 'redis'
  readonly namespace: string
  #status: StoreStatus
  /** Settings not written yet, the latest change per setting of each peer. */
  readonly #unwritten = new Map<string, SettingChange>()
  #announced: { id: string, text: string, ttlMs: number } | undefined

  constructor (namespace: string, state: StoreState) {
    super()
    this.setMaxListeners(0)
    this.namespace = namespace
    this.#status = { state, reason: state === 'connecting' ? 'connecting' : null, since: Date.now() }
  }

  get status (): StoreStatus { return { ...this.#status } }

  /** Settings changes waiting for the store to be back. */
  get unwritten (): number { return this.#unwritten.size }

  protected abstract writeSettingsNow (changes: SettingChange[], onlyIfNewer: boolean): Promise<number>
  protected abstract readSettingsNow (sinceVersion: number | undefined): Promise<{ version: number, fields: Array<[string, string]> } | null>
  protected abstract acquireNow (name: string, owner: string, ttlMs: number): Promise<boolean>
  protected abstract renewNow (name: string, owner: string, ttlMs: number): Promise<boolean>
  protected abstract releaseNow (name: string, owner: string): Promise<boolean>
  protected abstract ownersNow (names: readonly string[]): Promise<Array<string | null>>
  protected abstract writeHealthNow (field: string, text: string, freshMs: number): Promise<void>
  protected abstract readHealthNow (): Promise<StoredHealth[]>
  protected abstract writeLoadNow (name: string, window: number, gateway: string, count: number, ttlMs: number): Promise<void>
  protected abstract readLoadNow (name: string, window: number): Promise<Array<[string, string]>>
  protected abstract announceNow (id: string, text: string, ttlMs: number): Promise<void>
  protected abstract withdrawNow (id: string): Promise<void>
  protected abstract membersNow (): Promise<string[]>
  protected abstract publishNow (text: string): Promise<void>
  protected abstract closeNow (): Promise<void>

  abstract connect (): Promise<void>

  /** Announces a state change, once per change. */
  protected setState (state: StoreState, reason: string | null): void {
    if (state === this.#status.state) return
    this.#status = { state, reason, since: Date.now() }
    this.emit('state', this.status)
    if (state === 'ok') this.#dispatch({ type: 'resync', at: Date.now() })
  }

  /** A message from the channel: checked, then handed to listeners outside the caller's stack. */
  protected received (text: string): void {
    const message = decodeMessage(text)
    if (message !== undefined) this.#dispatch(message)
  }

  #dispatch (message: StoreMessage): void {
    queueMicrotask(() => this.emit('message', message))
  }

  /**
   * The store is reachable again: writes what was kept, announces the member
   * again. Rejects when the store failed again meanwhile.
   */
  protected async reconcile (): Promise<void> {
    if (this.#unwritten.size > 0) {
      const changes = [...this.#unwritten.values()]
      await this.writeSettingsNow(changes, true)
      // Only what was sent: a change kept meanwhile waits for the next round.
      for (const change of changes) {
        const key = peerField(change.upstream, change.index, change.name)
        if (this.#unwritten.get(key) === change) this.#unwritten.delete(key)
      }
    }
    const announced = this.#announced
    if (announced !== undefined) await this.announceNow(announced.id, announced.text, announced.ttlMs)
  }

  async #soft<T> (operation: () => Promise<T>): Promise<T | typeof NOT_WRITTEN> {
    try {
      return await operation()
    } catch {
      return NOT_WRITTEN
    }
  }

  async #written (operation: () => Promise<void>): Promise<boolean> {
    return await this.#soft(operation) !== NOT_WRITTEN
  }

  async #hard<T> (operation: () => Promise<T>): Promise<T> {
    try {
      return await operation()
    } catch (error) {
      if (error instanceof StoreUnavailableError) throw error
      throw new StoreUnavailableError((error as Error).message, { cause: error })
    }
  }

  writeSettings (upstream: string, index: number, patch: Partial<PeerSettings>, by: string): Promise<number | null> {
    checkName(upstream, 'upstream')
    checkIndex(index)
    checkName(by, 'writer')
    const at = Date.now()
    const changes = checkPatch(patch).map(([name, value]): SettingChange => ({ upstream, index, name, value, at, by }))
    return this.#writeSettings(changes)
  }

  async #writeSettings (changes: SettingChange[]): Promise<number | null> {
    const version = this.#status.state === 'ok' ? await this.#soft(async () => await this.writeSettingsNow(changes, false)) : NOT_WRITTEN
    if (version !== NOT_WRITTEN) {
      // Written: an older kept change of the same setting must not overwrite it later.
      for (const change of changes) this.#unwritten.delete(peerField(change.upstream, change.index, change.name))
      return version
    }
    for (const change of changes) this.#unwritten.set(peerField(change.upstream, change.index, change.name), change)
    return null
  }

  readSettings (sinceVersion?: number): Promise<SettingsSnapshot | null> {
    if (sinceVersion !== undefined) checkWindow(sinceVersion)
    return this.#hard(async () => {
      const stored = await this.readSettingsNow(sinceVersion)
      return stored === null ? null : { version: stored.version, peers: settingsRecords(stored.fields) }
    })
  }

  acquire (name: string, owner: string, ttlMs: number): Promise<boolean> {
    checkName(name, 'lease name')
    checkName(owner, 'lease owner')
    checkTtl(ttlMs)
    return this.#hard(async () => await this.acquireNow(name, owner, ttlMs))
  }

  renew (name: string, owner: string, ttlMs: number): Promise<boolean> {
    checkName(name, 'lease name')
    checkName(owner, 'lease owner')
    checkTtl(ttlMs)
    return this.#hard(async () => await this.renewNow(name, owner, ttlMs))
  }

  release (name: string, owner: string): Promise<boolean> {
    checkName(name, 'lease name')
    checkName(owner, 'lease owner')
    return this.#hard(async () => await this.releaseNow(name, owner))
  }

  owner (name: string): Promise<string | null> {
    return this.owners([name]).then(owners => owners[0])
  }

  owners (names: readonly string[]): Promise<Array<string | null>> {
    if (!Array.isArray(names)) throw new StoreArgumentError(`lease names must be an array, got ${showValue(names)}`)
    for (const name of names) checkName(name, 'lease name')
    if (names.length === 0) return Promise.resolve([])
    return this.#hard(async () => await this.ownersNow(names))
  }

  writeHealth (upstream: string, index: number, health: SharedHealth, freshMs: number): Promise<boolean> {
    checkName(upstream, 'upstream')
    checkIndex(index)
    const text = JSON.stringify(checkHealth(health))
    checkTtl(freshMs, 'freshMs')
    return this.#written(async () => await this.writeHealthNow(peerField(upstream, index), text, freshMs))
  }

  readHealth (): Promise<SharedHealthRecord[]> {
    return this.#hard(async () => {
      const records: SharedHealthRecord[] = []
      for (const { field, age, text } of await this.readHealthNow()) {
        const peer = parsePeerField(field, false)
        const health = decodeHealth(text)
        if (peer !== undefined && health !== undefined) records.push({ upstream: peer.upstream, index: peer.index, ...health, age })
      }
      return records
    })
  }

  writeLoad (name: string, window: number, gateway: string, count: number, ttlMs: number): Promise<boolean> {
    checkName(name, 'load name')
    checkWindow(window)
    checkName(gateway, 'gateway')
    checkCount(count)
    checkTtl(ttlMs)
    return this.#written(async () => await this.writeLoadNow(name, window, gateway, count, ttlMs))
  }

  readLoad (name: string, window: number): Promise<LoadSum> {
    checkName(name, 'load name')
    checkWindow(window)
    return this.#hard(async () => {
      const sum: LoadSum = { total: 0, gateways: {} }
      for (const [gateway, text] of await this.readLoadNow(name, window)) {
        const count = Number(text)
        if (!Number.isFinite(count) || count < 0) continue
        sum.gateways[gateway] = count
        sum.total += count
      }
      return sum
    })
  }

  announce (id: string, details: MemberDetails, ttlMs: number): Promise<boolean> {
    checkName(id, 'member id')
    const text = JSON.stringify({ id, details: checkDetails(details), at: Date.now() })
    checkTtl(ttlMs)
    this.#announced = { id, text, ttlMs }
    return this.#written(async () => await this.announceNow(id, text, ttlMs))
  }

  withdraw (id: string): Promise<boolean> {
    checkName(id, 'member id')
    if (this.#announced?.id === id) this.#announced = undefined
    return this.#written(async () => await this.withdrawNow(id))
  }

  members (): Promise<Member[]> {
    return this.#hard(async () => {
      const members: Member[] = []
      for (const text of await this.membersNow()) {
        const member = decodeMember(text)
        if (member !== undefined) members.push(member)
      }
      return members.sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
    })
  }

  publish (event: PublishedEvent): Promise<boolean> {
    const text = JSON.stringify(checkEvent(event))
    return this.#written(async () => await this.publishNow(text))
  }

  async close (): Promise<void> {
    const announced = this.#announced
    this.#announced = undefined
    if (announced !== undefined) await this.#soft(async () => await this.withdrawNow(announced.id))
    await this.closeNow()
  }
}

/** The stored fields of the settings hash, grouped by peer; entries that do not hold up are skipped. */
function settingsRecords (fields: Array<[string, string]>): PeerSettingsRecord[] {
  const peers = new Map<string, PeerSettingsRecord>()
  for (const [field, text] of fields) {
    const parsed = parsePeerField(field, true)
    if (parsed === undefined) continue
    const setting = decodeSetting(parsed.setting as SettingName, text)
    if (setting === undefined) continue
    const key = peerField(parsed.upstream, parsed.index)
    let record = peers.get(key)
    if (record === undefined) {
      record = { upstream: parsed.upstream, index: parsed.index, version: setting.version, at: setting.at, by: setting.by }
      peers.set(key, record)
    }
    Object.assign(record, { [parsed.setting as SettingName]: setting.value })
    if (setting.version > record.version) Object.assign(record, { version: setting.version, at: setting.at, by: setting.by })
  }
  return [...peers.values()].sort((a, b) => a.upstream < b.upstream ? -1 : a.upstream > b.upstream ? 1 : a.index - b.index)
}

/** The distinct peers of some changes, in order, for a `settings` message. */
export function peersOf (changes: SettingChange[]): PeerRef[] {
  const peers = new Map<string, PeerRef>()
  for (const { upstream, index } of changes) peers.set(peerField(upstream, index), { upstream, index })
  return [...peers.values()]
}
