import type { Upstream } from './upstream.js'
import { parseSupervisord, programNames, type SupervisordOptions } from './supervisord-address.js'
import { optionKeys, booleanOption, durationOption, objectOption, optionError, rejectUnknownOptions } from './options.js'

// The supervisord bridge's options: the plugin's own, and the sections of each
// upstream it reads, checked at registration.

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

export interface StartBackoffOptions {
  /** ms no start is tried after the first failed one (default 1000). */
  initial?: number
  /** ms the delay doubles up to (default 60000). */
  max?: number
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
  /** ms a started program has, once supervisord says RUNNING, to accept a TCP connection on its address (default 30000). */
  readyTimeout?: number
  /** The back-off after a failed start: no start of that peer (of every peer, when supervisord itself failed) until it ends. */
  startBackoff?: StartBackoffOptions
}

export const SECTIONS = optionKeys<SupervisordSections>()('supervisord', 'supervisordName', 'inheritBackendStatus', 'stopOnFailure')
const PLUGIN_OPTIONS = optionKeys<SupervisordBridgeOptions>()('callTimeout', 'pollInterval', 'antiFlap', 'drainTimeout', 'readyTimeout', 'startBackoff')
const BACKOFF_OPTIONS = optionKeys<StartBackoffOptions>()('initial', 'max')

export function pluginSettings (options: SupervisordBridgeOptions) {
  const where = 'supervisord'
  rejectUnknownOptions(options, PLUGIN_OPTIONS, where)
  const backoff = objectOption(options.startBackoff, where, 'startBackoff', BACKOFF_OPTIONS) as StartBackoffOptions
  const initial = durationOption(backoff.initial, 1000, where, 'startBackoff.initial', 1)
  const max = durationOption(backoff.max, 60_000, where, 'startBackoff.max', 1)
  if (max < initial) throw optionError(where, `option "startBackoff.max" (${max}) must not be below "startBackoff.initial" (${initial})`)
  return {
    callTimeout: durationOption(options.callTimeout, 5000, where, 'callTimeout', 1),
    pollInterval: durationOption(options.pollInterval, 10_000, where, 'pollInterval', 0),
    antiFlap: durationOption(options.antiFlap, 30_000, where, 'antiFlap', 0),
    drainTimeout: durationOption(options.drainTimeout, 30_000, where, 'drainTimeout', 0),
    readyTimeout: durationOption(options.readyTimeout, 30_000, where, 'readyTimeout', 1),
    startBackoff: { initial, max }
  }
}

export type BridgeSettings = ReturnType<typeof pluginSettings>

/** An upstream's supervisord sections, checked; undefined when it has none. */
export function upstreamSettings (upstream: Upstream) {
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
