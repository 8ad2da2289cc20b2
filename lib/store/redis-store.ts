import { optionError, optionKeys, showValue } from '../options.js'
import { peersOf, SharedStore, type SettingChange, type StoredHealth } from './shared-store.js'
import { peerField } from './records.js'
import { redisSettings, STORE_WHERE, type RedisTimingOptions, type StoreOptions } from './options.js'
import { RedisLink, type RedisClientLike } from './redis-link.js'
import { ACQUIRE, ANNOUNCE, MEMBERS, READ_HEALTH, READ_SETTINGS, RELEASE, RENEW, WITHDRAW, WRITE_HEALTH, WRITE_LOAD, WRITE_SETTINGS } from './redis-scripts.js'

// The store of a group of gateways: every gateway process (on any host) with
// a RedisStore on the same Redis and namespace is one gateway. Keys, all
// under `<namespace>:`:
//   settings            hash: `<setting>:<index>:<upstream>` -> a setting, and `#version`
//   lease:<name>        string: the owner, with a PX ttl
//   health              hash: `<index>:<upstream>` -> `storedAt:expiresAt:record`
//   load:<window>:<name> hash: gateway -> count, with a PX ttl
//   member:<id>         string: the member's record, with a PX ttl
//   members             set: the ids announced (lapsed ones are dropped as they are found)
//   events              the pub/sub channel

export interface RedisStoreOptions extends StoreOptions, RedisTimingOptions {
  /** `redis://[user:pass@]host:port[/db]` or `rediss://...` (TLS). */
  url?: string
  /**
   * An ioredis client (the one of @fastify/redis, say) whose settings the store
   * takes: it opens two connections of its own with them (duplicate()), so that
   * its bounds hold whatever the client's options, and never closes the client.
   */
  client?: RedisClientLike
}

const REDIS_STORE_OPTIONS = optionKeys<RedisStoreOptions>()('namespace', 'url', 'client', 'commandTimeout', 'retryInterval', 'connectTimeout', 'maxPending')

function urlOption (url: unknown): string {
  let protocol = ''
  try { protocol = new URL(url as string).protocol } catch {}
  if (typeof url !== 'string' || (protocol !== 'redis:' && protocol !== 'rediss:')) {
    throw optionError(STORE_WHERE, `option "url" must be a redis:// or rediss:// URL, got ${showValue(url)}`)
  }
  return url
}

export class RedisStore extends SharedStore {
  readonly kind = 'redis'
  readonly #link: RedisLink
  readonly #keys: ReturnType<typeof keysOf>
  readonly #connectTimeout: number
  #reconciling = false

  constructor (options: RedisStoreOptions) {
    if (typeof options !== 'object' || options === null) throw optionError(STORE_WHERE, 'the Redis store needs options: { url } or { client }')
    const settings = redisSettings(options, REDIS_STORE_OPTIONS)
    if ((options.url === undefined) === (options.client === undefined)) {
      throw optionError(STORE_WHERE, 'give the Redis store one of the options "url" and "client"')
    }
    const url = options.url === undefined ? undefined : urlOption(options.url)
    if (options.client !== undefined && typeof options.client?.duplicate !== 'function') {
      throw optionError(STORE_WHERE, `option "client" must be an ioredis client, got ${showValue(options.client)}`)
    }
    super(settings.namespace, 'connecting')
    this.#keys = keysOf(settings.namespace)
    this.#connectTimeout = settings.connectTimeout
    this.#link = new RedisLink({ ...settings, url, client: options.client, channel: this.#keys.channel })
    this.#link.on('message', text => this.received(text))
    this.#link.on('down', reason => this.setState('degraded', reason))
    this.#link.on('up', () => { this.#recover() })
  }

  /** Commands sent to Redis and not answered yet. */
  get pending (): number { return this.#link.pending }

  /** Writes what was kept and announces the member again, then the store is ok; if Redis fails meanwhile, the next `up` tries again. */
  async #recover (): Promise<void> {
    if (this.#reconciling) return
    this.#reconciling = true
    try {
      // Changes kept while a round ran are written by the next one.
      for (let round = 0; round === 0 || (this.unwritten > 0 && round < 10); round++) await this.reconcile()
      if (this.#link.up) this.setState('ok', null)
    } catch {
    } finally {
      this.#reconciling = false
    }
  }

  async connect (): Promise<void> {
    if (this.status.state !== 'connecting') return
    await new Promise<void>(resolve => {
      const timer = setTimeout(() => {
        this.off('state', settled)
        this.setState('degraded', `no answer from Redis within ${this.#connectTimeout} ms`)
        resolve()
      }, this.#connectTimeout)
      const settled = (): void => {
        clearTimeout(timer)
        this.off('state', settled)
        resolve()
      }
      this.on('state', settled)
    })
  }

  protected async closeNow (): Promise<void> {
    this.#link.close()
  }

  protected async writeSettingsNow (changes: SettingChange[], onlyIfNewer: boolean): Promise<number> {
    const last = changes.at(-1) as SettingChange
    const tail = `"peers":${JSON.stringify(peersOf(changes))},"by":${JSON.stringify(last.by)},"at":${last.at}`
    const args: Array<string | number> = [this.#keys.channel, onlyIfNewer ? '1' : '0', tail]
    for (const change of changes) {
      args.push(peerField(change.upstream, change.index, change.name), JSON.stringify(change.value), change.at, JSON.stringify(change.by))
    }
    return Number(await this.#link.eval(WRITE_SETTINGS, [this.#keys.settings], args))
  }

  protected async readSettingsNow (sinceVersion: number | undefined): Promise<{ version: number, fields: Array<[string, string]> } | null> {
    const reply = await this.#link.eval(READ_SETTINGS, [this.#keys.settings], [sinceVersion ?? '']) as Array<number | string>
    if (reply[0] === 0) return null
    const fields: Array<[string, string]> = []
    for (let i = 2; i < reply.length; i += 2) fields.push([String(reply[i]), String(reply[i + 1])])
    return { version: Number(reply[1]), fields }
  }

  protected async acquireNow (name: string, owner: string, ttlMs: number): Promise<boolean> {
    return await this.#link.eval(ACQUIRE, [this.#keys.lease(name)], [owner, ttlMs]) === 1
  }

  protected async renewNow (name: string, owner: string, ttlMs: number): Promise<boolean> {
    return await this.#link.eval(RENEW, [this.#keys.lease(name)], [owner, ttlMs]) === 1
  }

  protected async releaseNow (name: string, owner: string): Promise<boolean> {
    return await this.#link.eval(RELEASE, [this.#keys.lease(name)], [owner]) === 1
  }

  protected async ownersNow (names: readonly string[]): Promise<Array<string | null>> {
    return await this.#link.call('MGET', names.map(name => this.#keys.lease(name))) as Array<string | null>
  }

  protected async writeHealthNow (field: string, text: string, freshMs: number): Promise<void> {
    await this.#link.eval(WRITE_HEALTH, [this.#keys.health], [field, freshMs, text])
  }

  protected async readHealthNow (): Promise<StoredHealth[]> {
    const reply = await this.#link.eval(READ_HEALTH, [this.#keys.health], []) as Array<string | number>
    const fresh: StoredHealth[] = []
    for (let i = 0; i < reply.length; i += 3) fresh.push({ field: String(reply[i]), age: Number(reply[i + 1]), text: String(reply[i + 2]) })
    return fresh
  }

  protected async writeLoadNow (name: string, window: number, gateway: string, count: number, ttlMs: number): Promise<void> {
    await this.#link.eval(WRITE_LOAD, [this.#keys.load(name, window)], [gateway, String(count), ttlMs])
  }

  protected async readLoadNow (name: string, window: number): Promise<Array<[string, string]>> {
    const reply = await this.#link.call('HGETALL', [this.#keys.load(name, window)]) as string[]
    const counts: Array<[string, string]> = []
    for (let i = 0; i < reply.length; i += 2) counts.push([reply[i], reply[i + 1]])
    return counts
  }

  protected async announceNow (id: string, text: string, ttlMs: number): Promise<void> {
    await this.#link.eval(ANNOUNCE, [this.#keys.member(id), this.#keys.members], [id, text, ttlMs])
  }

  protected async withdrawNow (id: string): Promise<void> {
    await this.#link.eval(WITHDRAW, [this.#keys.member(id), this.#keys.members], [id])
  }

  protected async membersNow (): Promise<string[]> {
    return await this.#link.eval(MEMBERS, [this.#keys.members], [this.#keys.member('')]) as string[]
  }

  protected async publishNow (text: string): Promise<void> {
    await this.#link.call('PUBLISH', [this.#keys.channel, text])
  }
}

function keysOf (namespace: string) {
  const prefix = `${namespace}:`
  return {
    settings: `${prefix}settings`,
    lease: (name: string) => `${prefix}lease:${name}`,
    health: `${prefix}health`,
    load: (name: string, window: number) => `${prefix}load:${window}:${name}`,
    member: (id: string) => `${prefix}member:${id}`,
    members: `${prefix}members`,
    channel: `${prefix}events`
  }
}
