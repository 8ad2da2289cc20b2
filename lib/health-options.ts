import { DEFAULT_MAX_BODY, DEFAULT_PROBE_TIMEOUT, DEFAULT_STATUS, type ExpectedStatus, type ProbeOptions } from './health-probe.js'
import { HTTP_TOKEN, optionKeys, booleanOption, durationOption, numberOption, objectOption, oneOfOption, optionError, showValue, stringOption } from './options.js'

/** An upstream's `healthCheck` section: active checks of each of its peers. */
export interface HealthCheckOptions {
  /** ms from the end of one check of a peer to the start of the next (default 10000). */
  interval?: number
  /** Up to this many ms are added at random to each interval, and delay the first check (default 0). */
  jitter?: number
  /** ms for one check, connect (and TLS handshake) included (default 2000). */
  timeout?: number
  /** Consecutive passes that make a peer healthy (default 2). */
  rise?: number
  /** Consecutive failures that make a peer unhealthy (default 2). */
  fall?: number
  /** `http` (default) or `tcp` (connect only). */
  type?: 'http' | 'tcp'
  /** Check this port of each peer's host instead of its traffic port (nginx's `check port=N`). */
  port?: number
  /** http: request method (default `GET`). */
  method?: string
  /** http: request path (default `/`). */
  path?: string
  /** http: request headers; `Host` defaults to the address checked. */
  headers?: Record<string, string>
  /** http: statuses that pass, exact or classes (default `['2xx', '3xx']`). */
  status?: ExpectedStatus | ExpectedStatus[]
  /** http: the body must contain this string or match this RegExp. */
  body?: string | RegExp
  /** http: body bytes read before the check fails with `body too large` (default 65536). */
  maxBody?: number
  /**
   * http: keep each peer's check connection open and send the next check on
   * it (HTTP/1.1 keep-alive, at most one connection per peer, closed on any
   * doubt). Default false, as HAProxy: `Connection: close`, one per check.
   */
  keepAlive?: boolean
  /**
   * `unknown` (default): peers take traffic until `fall` checks fail.
   * `down`: peers start unhealthy and take traffic after `rise` passes.
   */
  initialState?: 'unknown' | 'down'
}

export interface HealthPluginOptions {
  /** Results kept per peer in `peer.checks` (default 32). */
  history?: number
  /**
   * With a store shared by a group of gateways: each peer is checked by one
   * gateway of the group (its lease's owner), which shares the results; the
   * others route on them (default true). false: every gateway checks every
   * peer itself and shares nothing.
   */
  shareChecks?: boolean
}

declare module './upstream.js' {
  interface UpstreamOptions {
    /** Active health checks of this upstream's peers (read by the health plugin). */
    healthCheck?: HealthCheckOptions
  }
}

/** An upstream's `healthCheck` section, checked, with its defaults. */
export interface HealthSettings {
  interval: number
  jitter: number
  timeout: number
  rise: number
  fall: number
  /** undefined: each peer's own port. */
  port: number | undefined
  initialState: 'unknown' | 'down'
  probe: ProbeOptions
}

const CHECK_OPTIONS = optionKeys<HealthCheckOptions>()('interval', 'jitter', 'timeout', 'rise', 'fall', 'type', 'port', 'method', 'path',
  'headers', 'status', 'body', 'maxBody', 'keepAlive', 'initialState')
const HTTP_ONLY = ['method', 'path', 'headers', 'status', 'body', 'maxBody', 'keepAlive'] as const satisfies ReadonlyArray<keyof HealthCheckOptions>
export const PLUGIN_OPTIONS = optionKeys<HealthPluginOptions>()('history', 'shareChecks')
// Control characters are exactly what these two refuse.
// eslint-disable-next-line no-control-regex
const PATH = /^(?:\/[^\s\x00-\x1f\x7f]*|\*)$/
// eslint-disable-next-line no-control-regex
const HEADER_VALUE = /^[^\r\n\x00]*$/
/** Set by the checker itself: a user value would break how the response is read. */
const RESERVED_HEADERS = ['connection', 'content-length', 'transfer-encoding']

export function healthSettings (value: unknown, where: string): HealthSettings {
  const options = objectOption(value, where, 'healthCheck', CHECK_OPTIONS) as HealthCheckOptions
  const type = oneOfOption(options.type, 'http', ['http', 'tcp'], where, 'healthCheck.type')
  const timeout = durationOption(options.timeout, DEFAULT_PROBE_TIMEOUT, where, 'healthCheck.timeout')
  const settings = {
    interval: durationOption(options.interval, 10_000, where, 'healthCheck.interval'),
    jitter: durationOption(options.jitter, 0, where, 'healthCheck.jitter', 0),
    timeout,
    rise: numberOption(options.rise, 2, where, 'healthCheck.rise', { min: 1, max: 1000, integer: true }),
    fall: numberOption(options.fall, 2, where, 'healthCheck.fall', { min: 1, max: 1000, integer: true }),
    port: options.port === undefined ? undefined : numberOption(options.port, 0, where, 'healthCheck.port', { min: 1, max: 65535, integer: true }),
    initialState: oneOfOption(options.initialState, 'unknown', ['unknown', 'down'], where, 'healthCheck.initialState')
  }
  if (type === 'tcp') {
    const stray = HTTP_ONLY.find(key => (options as Record<string, unknown>)[key] !== undefined)
    if (stray !== undefined) throw optionError(where, `option "healthCheck.${stray}" is only read by type "http" (type is "tcp")`)
    return { ...settings, probe: { type, timeout } }
  }
  const method = stringOption(options.method, 'GET', where, 'healthCheck.method')
  if (!HTTP_TOKEN.test(method)) throw optionError(where, `option "healthCheck.method" must be an HTTP method such as "GET", got ${showValue(method)}`)
  const path = stringOption(options.path, '/', where, 'healthCheck.path')
  if (!PATH.test(path)) throw optionError(where, `option "healthCheck.path" must start with "/" and hold no spaces or control characters, got ${showValue(path)}`)
  return {
    ...settings,
    probe: {
      type,
      timeout,
      method,
      path,
      headers: headersOption(options.headers, where),
      status: statusOption(options.status, where),
      body: bodyOption(options.body, where),
      maxBody: numberOption(options.maxBody, DEFAULT_MAX_BODY, where, 'healthCheck.maxBody', { min: 0, max: 2 ** 30, integer: true }),
      keepAlive: booleanOption(options.keepAlive, false, where, 'healthCheck.keepAlive')
    }
  }
}

function headersOption (value: unknown, where: string): Record<string, string> {
  if (value === undefined) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw optionError(where, `option "healthCheck.headers" must be an object of header names to strings, got ${showValue(value)}`)
  }
  const headers: Record<string, string> = {}
  for (const [name, header] of Object.entries(value)) {
    if (!HTTP_TOKEN.test(name)) throw optionError(where, `option "healthCheck.headers" has an invalid header name ${showValue(name)}`)
    if (RESERVED_HEADERS.includes(name.toLowerCase())) {
      throw optionError(where, `option "healthCheck.headers" may not set "${name}" (the checker sends no body, and Connection: close unless keepAlive is set)`)
    }
    if (typeof header !== 'string' || !HEADER_VALUE.test(header)) {
      throw optionError(where, `option "healthCheck.headers" must map "${name}" to a string without CR, LF or NUL, got ${showValue(header)}`)
    }
    headers[name] = header
  }
  return headers
}

function statusOption (value: unknown, where: string): ExpectedStatus[] {
  if (value === undefined) return [...DEFAULT_STATUS]
  const list = Array.isArray(value) ? value : [value]
  const valid = (entry: unknown): boolean => typeof entry === 'string'
    ? /^[1-5]xx$/.test(entry)
    : Number.isInteger(entry) && (entry as number) >= 100 && (entry as number) <= 599
  if (list.length === 0 || !list.every(valid)) {
    throw optionError(where, `option "healthCheck.status" must be a status (100-599) or class ("2xx"), or a non-empty list of them, got ${showValue(value)}`)
  }
  return list as ExpectedStatus[]
}

function bodyOption (value: unknown, where: string): string | RegExp | undefined {
  if (value === undefined) return undefined
  // A global or sticky RegExp keeps lastIndex between tests: a copy without those flags does not.
  if (value instanceof RegExp) return new RegExp(value.source, value.flags.replace(/[gy]/g, ''))
  return stringOption(value, '', where, 'healthCheck.body')
}
