import { optionError, showValue } from './options.js'

/** What a server name may be made of, once its wildcard is taken off (nginx takes any bytes; hostnames are these). */
const NAME = /^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/

/**
 * The host part of a Host header as nginx's `$host` has it: lower case, no
 * port, no trailing dot; an IPv6 literal keeps its brackets.
 */
export function hostOf (header: string | undefined): string {
  if (header === undefined || header === '') return ''
  let host = header.toLowerCase()
  if (host.startsWith('[')) {
    const end = host.indexOf(']')
    return end === -1 ? host : host.slice(0, end + 1)
  }
  const colon = host.lastIndexOf(':')
  if (colon !== -1) host = host.slice(0, colon)
  return host.endsWith('.') ? host.slice(0, -1) : host
}

/**
 * nginx's server_name matching over a table of names: an exact name first,
 * then the longest leading wildcard (`*.example.com`, which `example.com`
 * does not match), the longest trailing wildcard (`www.example.*`), then the
 * regular expressions (`~^api\d+\.`) in the order given. `.example.com` is
 * both `example.com` and `*.example.com`. Names are matched without case and
 * without the port.
 */
export class VirtualHosts<T> {
  readonly #exact = new Map<string, T>()
  /** `*.example.com` under `example.com` */
  readonly #leading = new Map<string, T>()
  /** `www.example.*` under `www.example` */
  readonly #trailing = new Map<string, T>()
  readonly #patterns: Array<[RegExp, T]> = []

  constructor (table: Record<string, T>, where: string) {
    for (const [name, value] of Object.entries(table)) this.#add(name, value, where)
  }

  #add (name: string, value: T, where: string): void {
    const bad = (why: string): Error => optionError(where, `option "hosts": server name ${showValue(name)} ${why}`)
    if (name.startsWith('~')) {
      let pattern: RegExp
      try {
        pattern = new RegExp(name.slice(1))
      } catch (error) {
        throw bad(`is not a valid regular expression (${(error as Error).message})`)
      }
      this.#patterns.push([pattern, value])
      return
    }
    const lower = name.toLowerCase()
    const set = (map: Map<string, T>, key: string): void => {
      if (!NAME.test(key)) throw bad('must be a host name, "*." or "." before one, ".*" after one, or "~" and a regular expression')
      if (map.has(key)) throw bad('is given twice')
      map.set(key, value)
    }
    if (lower.startsWith('*.')) set(this.#leading, lower.slice(2))
    else if (lower.endsWith('.*')) set(this.#trailing, lower.slice(0, -2))
    else if (lower.startsWith('.')) {
      set(this.#exact, lower.slice(1))
      set(this.#leading, lower.slice(1))
    } else set(this.#exact, lower.endsWith('.') ? lower.slice(0, -1) : lower)
  }

  /** The value for a Host header, or undefined when no name matches. */
  match (header: string | undefined): T | undefined {
    const host = hostOf(header)
    const exact = this.#exact.get(host)
    if (exact !== undefined) return exact
    if (this.#leading.size > 0) {
      for (let dot = host.indexOf('.'); dot !== -1; dot = host.indexOf('.', dot + 1)) {
        const found = this.#leading.get(host.slice(dot + 1))
        if (found !== undefined) return found
      }
    }
    if (this.#trailing.size > 0) {
      for (let dot = host.lastIndexOf('.'); dot > 0; dot = host.lastIndexOf('.', dot - 1)) {
        const found = this.#trailing.get(host.slice(0, dot))
        if (found !== undefined) return found
      }
    }
    for (const [pattern, value] of this.#patterns) if (pattern.test(host)) return value
    return undefined
  }
}
