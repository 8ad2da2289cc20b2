import { durationOption, numberOption, optionError, optionKeys, rejectUnknownOptions, showValue } from '../options.js'

// The options of the stores, checked once at construction: a mistake names
// the option, as every plugin's options do.

export const DEFAULT_NAMESPACE = 'fastify-supervisord'
export const STORE_WHERE = 'store'

/** Letters, digits, `.`, `_` and `-`; no `:`, which separates the parts of a key. */
const NAMESPACE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

export interface StoreOptions {
  /** Prefix of every key and channel, so that several gateway groups can share one Redis (default `fastify-supervisord`). */
  namespace?: string
}

export function namespaceOption (value: unknown): string {
  if (value === undefined) return DEFAULT_NAMESPACE
  if (typeof value !== 'string' || !NAMESPACE.test(value)) {
    throw optionError(STORE_WHERE, `option "namespace" must be 1 to 64 letters, digits, ".", "_" or "-" (starting with a letter or digit), got ${showValue(value)}`)
  }
  return value
}

export const MEMORY_STORE_OPTIONS = optionKeys<StoreOptions & { backend?: unknown }>()('namespace', 'backend')

/** The Redis store's options, once checked. */
export interface RedisSettings {
  namespace: string
  /** ms a call may take before it fails and the store is degraded. */
  commandTimeout: number
  /** ms between attempts to reach Redis while the store is degraded. */
  retryInterval: number
  /** ms `connect()` waits for a first answer. */
  connectTimeout: number
  /** Commands sent and not answered yet beyond which calls fail at once. */
  maxPending: number
}

export interface RedisTimingOptions {
  /** ms a store call may take before it fails and the store is `degraded` (default 500). */
  commandTimeout?: number
  /** ms between attempts to reach Redis while the store is degraded (default 1000). */
  retryInterval?: number
  /** ms `connect()` waits for a first answer before it calls the store degraded (default 2000). */
  connectTimeout?: number
  /** Commands sent and not answered yet beyond which calls fail at once (default 1000). */
  maxPending?: number
}

export function redisSettings (options: StoreOptions & RedisTimingOptions, known: readonly string[]): RedisSettings {
  rejectUnknownOptions(options, known, STORE_WHERE)
  return {
    namespace: namespaceOption(options.namespace),
    commandTimeout: durationOption(options.commandTimeout, 500, STORE_WHERE, 'commandTimeout'),
    retryInterval: durationOption(options.retryInterval, 1000, STORE_WHERE, 'retryInterval'),
    connectTimeout: durationOption(options.connectTimeout, 2000, STORE_WHERE, 'connectTimeout'),
    maxPending: numberOption(options.maxPending, 1000, STORE_WHERE, 'maxPending', { min: 1, max: 1_000_000, integer: true })
  }
}
