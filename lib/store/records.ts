import { ADMIN_STATES, type CheckResult, type HealthState } from '../peer.js'
import { MAX_WEIGHT } from '../upstream.js'
import { showValue } from '../options.js'
import { StoreArgumentError } from '../errors.js'
import type { MemberDetails, PeerPin, PeerSettings, PublishedEvent, SettingName, SharedHealth, StoreMessage } from './types.js'

// What goes into a store and what comes out of it: arguments are checked at
// the call (a mistake throws there), and everything read back is checked
// again, since another gateway (another version, or a hand-edited key) wrote
// it: a record that does not hold up is skipped, never thrown.

const MAX_NAME = 512
const MAX_TIMER = 2 ** 31 - 1
const HEALTH_STATES: readonly HealthState[] = ['unknown', 'healthy', 'unhealthy']
const PINS: ReadonlyArray<PeerPin | null> = ['start', 'stop', null]
export const SETTING_NAMES: readonly SettingName[] = ['admin', 'weight', 'pin']
const MAX_DETAILS = 32

function bad (message: string): Error {
  return new StoreArgumentError(message)
}

export function checkName (value: unknown, what: string): string {
  if (typeof value !== 'string' || value === '' || value.length > MAX_NAME) {
    throw bad(`${what} must be a non-empty string of at most ${MAX_NAME} characters, got ${showValue(value)}`)
  }
  return value
}

export function checkIndex (value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw bad(`peer index must be an integer from 0, got ${showValue(value)}`)
  }
  return value
}

/** A ttl in ms: an integer a timer (and Redis' PX) can take. */
export function checkTtl (value: unknown, what = 'ttlMs'): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_TIMER) {
    throw bad(`${what} must be an integer number of ms from 1 to ${MAX_TIMER}, got ${showValue(value)}`)
  }
  return value
}

export function checkWindow (value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw bad(`load window must be an integer from 0, got ${showValue(value)}`)
  }
  return value
}

export function checkCount (value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw bad(`load count must be a finite number from 0, got ${showValue(value)}`)
  }
  return value
}

function validSetting (name: SettingName, value: unknown): boolean {
  switch (name) {
    case 'admin': return ADMIN_STATES.includes(value as never)
    case 'weight': return typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= MAX_WEIGHT
    case 'pin': return PINS.includes(value as never)
  }
}

/** The settings of a patch, checked, in a fixed order. */
export function checkPatch (patch: unknown): Array<[SettingName, PeerSettings[SettingName]]> {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) throw bad(`settings must be an object, got ${showValue(patch)}`)
  const entries: Array<[SettingName, PeerSettings[SettingName]]> = []
  for (const key of Object.keys(patch)) {
    if (!SETTING_NAMES.includes(key as SettingName)) throw bad(`unknown setting "${key}" (known: ${SETTING_NAMES.join(', ')})`)
  }
  for (const name of SETTING_NAMES) {
    if (!(name in patch)) continue
    const value = (patch as Record<string, unknown>)[name]
    if (!validSetting(name, value)) throw bad(`setting "${name}" got ${showValue(value)} (${settingRule(name)})`)
    entries.push([name, value as PeerSettings[SettingName]])
  }
  if (entries.length === 0) throw bad('settings must hold at least one of ' + SETTING_NAMES.join(', '))
  return entries
}

function settingRule (name: SettingName): string {
  switch (name) {
    case 'admin': return `one of ${ADMIN_STATES.join(', ')}`
    case 'weight': return `an integer from 1 to ${MAX_WEIGHT}`
    case 'pin': return '"start", "stop" or null'
  }
}

function validCheck (value: unknown): value is CheckResult {
  if (typeof value !== 'object' || value === null) return false
  const check = value as Record<string, unknown>
  return typeof check.ok === 'boolean' && typeof check.reason === 'string' &&
    typeof check.latencyMs === 'number' && Number.isFinite(check.latencyMs) &&
    typeof check.at === 'number' && Number.isFinite(check.at)
}

function validHealth (value: unknown): value is SharedHealth {
  if (typeof value !== 'object' || value === null) return false
  const health = value as Record<string, unknown>
  return HEALTH_STATES.includes(health.health as HealthState) &&
    (health.check === null || validCheck(health.check)) &&
    typeof health.by === 'string' && health.by !== ''
}

export function checkHealth (value: unknown): SharedHealth {
  if (!validHealth(value)) {
    throw bad(`shared health must be { health: ${HEALTH_STATES.join('|')}, check: CheckResult | null, by: string }, got ${showValue(value)}`)
  }
  const { health, check, by } = value
  return { health, check: check === null ? null : { ok: check.ok, reason: check.reason, latencyMs: check.latencyMs, at: check.at }, by }
}

function validDetails (value: unknown): value is MemberDetails {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const entries = Object.entries(value)
  return entries.length <= MAX_DETAILS && entries.every(([, v]) =>
    (typeof v === 'string' && v.length <= MAX_NAME) || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v)))
}

export function checkDetails (value: unknown): MemberDetails {
  if (!validDetails(value)) {
    throw bad(`member details must be an object of at most ${MAX_DETAILS} strings, numbers or booleans, got ${showValue(value)}`)
  }
  return { ...value }
}

export function checkEvent (event: unknown): PublishedEvent {
  const decoded = decodeMessage(JSON.stringify(event ?? null))
  if (decoded === undefined || (decoded.type !== 'process' && decoded.type !== 'health')) {
    throw bad(`a published event must be { type: "process", upstream, index, command, ok, by, at } or { type: "health", upstream, index, health, by, at }, got ${showValue(event)}`)
  }
  return decoded
}

function parse (text: string): unknown {
  try { return JSON.parse(text) } catch { return undefined }
}

/** A hash field for a peer's entry: the index first, so that any upstream name is unambiguous. */
export function peerField (upstream: string, index: number, setting?: SettingName): string {
  return setting === undefined ? `${index}:${upstream}` : `${setting}:${index}:${upstream}`
}

export function parsePeerField (field: string, withSetting: boolean): { upstream: string, index: number, setting?: SettingName } | undefined {
  const match = withSetting ? /^(admin|weight|pin):(\d+):(.+)$/s.exec(field) : /^()(\d+):(.+)$/s.exec(field)
  if (match === null || !Number.isSafeInteger(Number(match[2]))) return undefined
  return { upstream: match[3], index: Number(match[2]), setting: withSetting ? match[1] as SettingName : undefined }
}

/** One stored setting: its value and who changed it when, at which version. */
export interface StoredSetting { value: unknown, version: number, at: number, by: string }

/** As a store keeps one setting (the Redis store builds the same text in Lua). */
export function encodeSetting (value: string, version: number, at: number, by: string): string {
  return `{"value":${value},"version":${version},"at":${at},"by":${by}}`
}

export function decodeSetting (name: SettingName, text: string): StoredSetting | undefined {
  const record = parse(text) as Record<string, unknown> | undefined
  if (typeof record !== 'object' || record === null) return undefined
  const { value, version, at, by } = record
  if (!validSetting(name, value) || !Number.isSafeInteger(version) || typeof at !== 'number' || typeof by !== 'string') return undefined
  return { value, version: version as number, at, by }
}

export function decodeHealth (text: string): SharedHealth | undefined {
  const value = parse(text)
  return validHealth(value) ? value : undefined
}

export function decodeMember (text: string): { id: string, details: MemberDetails, at: number } | undefined {
  const value = parse(text) as Record<string, unknown> | undefined
  if (typeof value !== 'object' || value === null || typeof value.id !== 'string' || typeof value.at !== 'number' || !validDetails(value.details)) return undefined
  return { id: value.id, details: value.details, at: value.at }
}

function validRef (value: Record<string, unknown>): boolean {
  return typeof value.upstream === 'string' && value.upstream !== '' && Number.isSafeInteger(value.index) && (value.index as number) >= 0
}

function validStamp (value: Record<string, unknown>): boolean {
  return typeof value.by === 'string' && typeof value.at === 'number' && Number.isFinite(value.at)
}

/** A message from the channel; undefined for anything malformed or of a kind this version does not know. */
export function decodeMessage (text: string): Exclude<StoreMessage, { type: 'resync' }> | undefined {
  const value = parse(text) as Record<string, unknown> | undefined
  if (typeof value !== 'object' || value === null || !validStamp(value)) return undefined
  switch (value.type) {
    case 'settings':
      if (!Number.isSafeInteger(value.version) || !Array.isArray(value.peers) ||
        !value.peers.every(p => typeof p === 'object' && p !== null && validRef(p))) return undefined
      return {
        type: 'settings',
        version: value.version as number,
        peers: (value.peers as Array<{ upstream: string, index: number }>).map(p => ({ upstream: p.upstream, index: p.index })),
        by: value.by as string,
        at: value.at as number
      }
    case 'process':
      if (!validRef(value) || (value.command !== 'start' && value.command !== 'stop') || typeof value.ok !== 'boolean') return undefined
      return { type: 'process', upstream: value.upstream as string, index: value.index as number, command: value.command, ok: value.ok, by: value.by as string, at: value.at as number }
    case 'health':
      if (!validRef(value) || !HEALTH_STATES.includes(value.health as HealthState)) return undefined
      return { type: 'health', upstream: value.upstream as string, index: value.index as number, health: value.health as HealthState, by: value.by as string, at: value.at as number }
    default:
      return undefined
  }
}
