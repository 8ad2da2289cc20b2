import { optionError, optionKeys, rejectUnknownOptions, showValue, splitHostPort, stringOption } from './options.js'

/** Where an upstream's supervisord listens: `host:port`, `unix:/path/to.sock` or `none`. */
export interface SupervisordOptions {
  address: string
  /** HTTP Basic credentials, as `[inet_http_server]`/`[unix_http_server]` username and password. */
  username?: string
  password?: string
}

export type SupervisordTarget =
  | { kind: 'none' }
  | { kind: 'tcp', host: string, port: number, username?: string, password?: string }
  | { kind: 'unix', path: string, username?: string, password?: string }

const OBJECT_KEYS = optionKeys<SupervisordOptions>()('address', 'username', 'password')

/**
 * An address as given, for an error message, with whatever may be a password
 * masked: a `user:pass@` part, any `:part` that is not a port number (the
 * password of `admin:secret` given where the address goes), words after the
 * address, a value that is not a string.
 */
function shownAddress (address: unknown): string {
  if (typeof address !== 'string') return address === null ? 'null' : Array.isArray(address) ? 'an array' : `a ${typeof address}`
  let first = address.trim().split(/\s+/)[0] ?? ''
  const at = first.lastIndexOf('@')
  if (at !== -1) first = `***@${first.slice(at + 1)}`
  const v6 = /^\[[0-9a-fA-F:.]*\]/.exec(first)?.[0] ?? ''
  const [host, ...rest] = first.slice(v6.length).split(':')
  return showValue([v6 + host, ...rest.map(part => /^\d*$/.test(part) ? part : '***')].join(':'))
}

/**
 * Parses an upstream's `supervisord` option: `'none'`, `'host:port'`,
 * `'unix:/path/to.sock'`, optionally with credentials as nginx wrote them
 * (`'127.0.0.1:9001 admin:super'`), or `{ address, username, password }`.
 * No error it throws shows the password, whatever the option's shape.
 */
export function parseSupervisord (option: string | SupervisordOptions, where: string): SupervisordTarget {
  let address: string
  let username: string | undefined
  let password: string | undefined
  if (typeof option === 'string') {
    const [addr, credentials, ...rest] = option.trim().split(/\s+/)
    if (rest.length > 0) throw optionError(where, `option "supervisord" must be "address [user:pass]" (address ${shownAddress(addr)}, then ${rest.length + 1} more words)`)
    address = addr
    if (credentials !== undefined) {
      const colon = credentials.indexOf(':')
      if (colon <= 0) throw optionError(where, 'option "supervisord" credentials must be user:pass')
      username = credentials.slice(0, colon)
      password = credentials.slice(colon + 1)
    }
  } else if (typeof option === 'object' && option !== null && !Array.isArray(option) && typeof option.address === 'string') {
    rejectUnknownOptions(option, OBJECT_KEYS, where, 'supervisord')
    ;({ address, username, password } = option)
    if ((username === undefined) !== (password === undefined) || (username !== undefined && (typeof username !== 'string' || typeof password !== 'string'))) {
      throw optionError(where, 'option "supervisord" needs both "username" and "password" strings, or neither')
    }
  } else {
    const given = typeof option === 'object' && option !== null && !Array.isArray(option)
      ? `an object whose "address" is ${shownAddress((option as { address?: unknown }).address)}`
      : shownAddress(option)
    throw optionError(where, `option "supervisord" must be "none", "host:port", "unix:/path" or { address, username, password }, got ${given}`)
  }
  if (address === 'none') {
    if (username !== undefined) throw optionError(where, 'option "supervisord" is "none": credentials make no sense there')
    return { kind: 'none' }
  }
  if (address.startsWith('unix:')) {
    const path = address.slice(5)
    if (!path.startsWith('/')) throw optionError(where, 'option "supervisord" unix socket path must be absolute ("unix:/path/to.sock")')
    return { kind: 'unix', path, username, password }
  }
  const parts = splitHostPort(address)
  if (parts === undefined) {
    throw optionError(where, `option "supervisord" must be "none", "host:port" or "unix:/path", got ${shownAddress(address)}`)
  }
  return { kind: 'tcp', ...parts, username, password }
}

/** How a target is shown to people (logs, status page): never with credentials. */
export function supervisordLabel (target: SupervisordTarget): string {
  switch (target.kind) {
    case 'none': return 'none'
    case 'unix': return `unix:${target.path}`
    case 'tcp': return target.host.includes(':') ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`
  }
}

const PROGRAM = /^[A-Za-z0-9_.:-]+$/

/**
 * The supervisord program names of an upstream's peers, by index:
 * `<supervisordName or upstream name><index>`, e.g. `[program:backend0]`.
 * The one place that rule is written (the bridge and the status page use it).
 */
export function programNames (upstream: { name: string, peers: readonly unknown[] }, supervisordName: unknown, where: string): string[] {
  const prefix = stringOption(supervisordName, upstream.name, where, 'supervisordName')
  if (!PROGRAM.test(prefix)) {
    throw optionError(where, `option "supervisordName" must be letters, digits, "_", ".", ":" or "-", got ${showValue(prefix)}`)
  }
  return upstream.peers.map((_, index) => `${prefix}${index}`)
}
