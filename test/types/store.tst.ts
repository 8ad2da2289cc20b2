import { describe, expect, test } from 'tstyche'
import { Redis } from 'ioredis'
import {
  MemoryStore, MemoryBackend, RedisStore, LeaseKeeper, withLease,
  type Store, type StoreStatus, type StoreMessage, type SettingsSnapshot, type SharedHealthRecord, type LoadSum, type Member,
  type LeaseTaskResult, type RedisStoreOptions, type MemoryStoreOptions
} from '../../index.js'

describe('the state store', () => {
  test('both stores are a Store', () => {
    expect<Store>().type.toBeAssignableFrom(new MemoryStore())
    expect<Store>().type.toBeAssignableFrom(new RedisStore({ url: 'redis://127.0.0.1:6379' }))
  })

  test('options', () => {
    expect<MemoryStoreOptions>().type.toBeAssignableFrom({ namespace: 'shop', backend: new MemoryBackend() })
    expect<RedisStoreOptions>().type.toBeAssignableFrom({ client: new Redis({ lazyConnect: true }), commandTimeout: 200, retryInterval: 500, connectTimeout: 1000, maxPending: 10 })
    expect<RedisStoreOptions>().type.not.toBeAssignableFrom({ url: 'redis://x', commandTimeout: '200ms' })
    expect<RedisStoreOptions>().type.not.toBeAssignableFrom({ client: {} })
  })

  const store: Store = new MemoryStore()

  test('writes resolve what they applied; reads and leases resolve their answer', () => {
    expect(store.writeSettings('backend', 0, { admin: 'drain', weight: 2, pin: null }, 'gw')).type.toBe<Promise<number | null>>()
    expect(store.writeSettings).type.not.toBeCallableWith('backend', 0, { admin: 'gone' }, 'gw')
    expect(store.readSettings(3)).type.toBe<Promise<SettingsSnapshot | null>>()
    expect(store.acquire('leader', 'gw', 1000)).type.toBe<Promise<boolean>>()
    expect(store.owners(['a', 'b'])).type.toBe<Promise<Array<string | null>>>()
    expect(store.readHealth()).type.toBe<Promise<SharedHealthRecord[]>>()
    expect(store.readLoad('backend', 1)).type.toBe<Promise<LoadSum>>()
    expect(store.members()).type.toBe<Promise<Member[]>>()
    expect(store.publish).type.toBeCallableWith({ type: 'process', upstream: 'backend', index: 0, command: 'start', ok: true, by: 'gw', at: 1 })
    expect(store.publish).type.not.toBeCallableWith({ type: 'resync', at: 1 })
    expect(store.status).type.toBe<StoreStatus>()
  })

  test('events are typed', () => {
    store.on('message', message => { expect(message).type.toBe<StoreMessage>() })
    store.on('state', status => { expect(status).type.toBe<StoreStatus>() })
  })

  test('lease helpers', () => {
    expect(new LeaseKeeper(store, 'leader', 'gw', { ttlMs: 3000 }).held).type.toBe<boolean>()
    expect(withLease(store, 'start:x', 'gw', 1000, async () => 42)).type.toBe<Promise<LeaseTaskResult<number>>>()
  })
})
