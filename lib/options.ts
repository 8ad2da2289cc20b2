import { OptionError } from './errors.js'

// Option checks shared by every plugin: each failure names where (upstream,
// server index) and which option was wrong, and what was given.

export function optionError (where: string, message: string): Error {
  return new OptionError(where, message)
}

function show (value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'function') return 'a function'
  if (value instanceof RegExp) return String(value)
  try { return JSON.stringify(value) ?? String(value) } catch { return String(value) }
}

/** `positive`: above 0 (for rates and thresholds, where any fraction will do). */
export interface NumberRange { min?: number, max?: number, integer?: boolean, positive?: boolean }

export function numberOption (value: unknown, fallback: number, where: string, name: string, range: NumberRange = {}): number {
  if (value === undefined) return fallback
  const { min = 0, max = Number.MAX_SAFE_INTEGER, integer = false, positive = false } = range
  const low = positive ? value as number <= 0 : value as number < min
  if (typeof value !== 'number' || Number.isNaN(value) || low || value > max || (integer && !Number.isInteger(value))) {
    const kind = integer ? 'an integer' : 'a number'
    const bounds = positive ? `greater than 0 (at most ${max})` : `from ${min} to ${max}`
    throw optionError(where, `option "${name}" must be ${kind} ${bounds}, got ${show(value)}`)
  }
  return value
}

export function booleanOption (value: unknown, fallback: boolean, where: string, name: string): boolean {
  if (value === undefined) return fallback
  if (typeof value !== 'boolean') throw optionError(where, `option "${name}" must be true or false, got ${show(value)}`)
  return value
}

export function stringOption (value: unknown, fallback: string, where: string, name: string): string {
  if (value === undefined) return fallback
  if (typeof value !== 'string' || value === '') throw optionError(where, `option "${name}" must be a non-empty string, got ${show(value)}`)
  return value
}

export function oneOfOption<T extends string> (value: unknown, fallback: T, allowed: readonly T[], where: string, name: string): T {
  if (value === undefined) return fallback
  if (!allowed.includes(value as T)) {
    throw optionError(where, `option "${name}" must be one of ${allowed.map(a => `"${a}"`).join(', ')}, got ${show(value)}`)
  }
  return value as T
}

/** Longest delay a Node timer takes: a larger ms option would fire at once. */
const MAX_TIMER = 2 ** 31 - 1

/** A delay in ms, from `min` to the longest a timer can wait. */
export function durationOption (value: unknown, fallback: number, where: string, name: string, min = 1): number {
  return numberOption(value, fallback, where, name, { min, max: MAX_TIMER })
}

/** Fails on a key that is not in `known` (most likely a typo), naming it. `section` prefixes nested names. */
export function rejectUnknownOptions (options: object | undefined, known: readonly string[], where: string, section?: string): void {
  for (const key of Object.keys(options ?? {})) {
    if (!known.includes(key)) {
      const name = section === undefined ? key : `${section}.${key}`
      throw optionError(where, `unknown option "${name}" (known: ${known.join(', ')})`)
    }
  }
}

export function objectOption (value: unknown, where: string, name: string, known: readonly string[]): Record<string, unknown> {
  if (value === undefined) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw optionError(where, `option "${name}" must be an object, got ${show(value)}`)
  }
  rejectUnknownOptions(value, known, where, name)
  return value as Record<string, unknown>
}

export { show as showValue }

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/

/** `host:port` or `[v6]:port` into its parts; undefined when it is neither or the port is out of range. */
export function splitHostPort (text: string): { host: string, port: number } | undefined {
  const match = HOST_PORT.exec(text)
  if (match === null) return undefined
  const port = Number(match[2])
  if (port < 1 || port > 65535) return undefined
  return { host: match[1].startsWith('[') ? match[1].slice(1, -1) : match[1], port }
}

/**
 * The keys of an options interface as a list, checked by the compiler both
 * ways: a name the interface lacks, or one of its keys left out, is a type
 * error, so the list that unknown options are held against cannot drift.
 */
export function optionKeys<T extends object> () {
  return <const K extends ReadonlyArray<keyof T & string>>(
    ...keys: K & ([Exclude<keyof T, K[number]>] extends [never] ? unknown : { missing: Exclude<keyof T, K[number]> })
  ): readonly string[] => keys
}

/** An HTTP token (RFC 9110 §5.6.2): a method, a header name, a WebSocket subprotocol. */
export const HTTP_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
