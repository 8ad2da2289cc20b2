import { createHash, timingSafeEqual } from 'node:crypto'
import { BlockList, isIP } from 'node:net'
import type { FastifyRequest } from 'fastify'
import { ForbiddenError } from './errors.js'
import { optionError, showValue, stringOption } from './options.js'

/** Who may use a guarded route when neither an allow-list nor a token is given. */
export const LOOPBACK = ['127.0.0.1', '::1']
const BITS = /^\d+$/

/** An `allow` option (IPv4/IPv6 addresses and CIDRs) as a BlockList, or an error naming the bad entry. */
export function allowList (value: unknown, where: string): BlockList {
  if (!Array.isArray(value) || value.length === 0) {
    throw optionError(where, `option "allow" must be a non-empty list of addresses or CIDRs, got ${showValue(value)}`)
  }
  const list = new BlockList()
  for (const entry of value) {
    const [address, bits, ...rest] = typeof entry === 'string' ? entry.split('/') : []
    const family = isIP(address ?? '')
    const prefix = bits === undefined ? undefined : Number(bits)
    const max = family === 6 ? 128 : 32
    if (family === 0 || rest.length > 0 || (prefix !== undefined && (!BITS.test(bits) || prefix > max))) {
      throw optionError(where, `option "allow" entries must be IPv4 or IPv6 addresses or CIDRs (e.g. "10.0.0.0/8", "::1"), got ${showValue(entry)}`)
    }
    const type = family === 6 ? 'ipv6' : 'ipv4'
    if (prefix === undefined) list.addAddress(address, type)
    else list.addSubnet(address, prefix, type)
  }
  return list
}

const digest = (text: string): Buffer => createHash('sha256').update(text).digest()

/** Why a request was refused: its address is not allowed, or it lacks the token. */
export type Refusal = 'address' | 'token'

/** The `allow` and `token` options of a guarded plugin (routes, metrics, status page). */
export interface AccessOptions {
  /** Client addresses let in: IPv4/IPv6 addresses and CIDRs (default loopback only when no `token` is set). */
  allow?: string[]
  /** A token the client must send, as `Authorization: Bearer <token>` or as the password of HTTP Basic. With `allow` too, both are required. */
  token?: string
}

/**
 * The one guard of the suite: an allow-list of addresses and/or a token,
 * loopback only when neither is given. `check` says whether a request may
 * pass (and why not); `hook` is an onRequest hook that answers 403 to the
 * rest, naming what they may not do.
 */
export class Access {
  readonly #allow: BlockList | undefined
  readonly #expected: Buffer | undefined
  readonly #action: string

  /** `action` completes "not allowed to ..." in the 403 answer. */
  constructor (options: AccessOptions, where: string, action: string) {
    const token = options.token === undefined ? undefined : stringOption(options.token, '', where, 'token')
    // Neither an allow-list nor a token: loopback only.
    this.#allow = options.allow !== undefined || token === undefined ? allowList(options.allow ?? LOOPBACK, where) : undefined
    this.#expected = token === undefined ? undefined : digest(token)
    this.#action = action
  }

  /** A token is required (a browser is asked for it by HTTP Basic). */
  get needsToken (): boolean { return this.#expected !== undefined }

  /** Undefined when the request may pass; otherwise what it lacks. */
  check (request: FastifyRequest): Refusal | undefined {
    if (this.#allow !== undefined) {
      const ip = request.ip
      if (!this.#allow.check(ip, isIP(ip) === 6 ? 'ipv6' : 'ipv4')) return 'address'
    }
    if (this.#expected !== undefined) {
      const sent = tokenOf(request.headers.authorization)
      // Digests have equal lengths, so the comparison takes the same time whatever was sent.
      if (sent === undefined || !timingSafeEqual(digest(sent), this.#expected)) return 'token'
    }
    return undefined
  }

  /** The error a refused request is answered with (403). */
  refusal (request: FastifyRequest, why: Refusal): Error {
    return new ForbiddenError(why === 'address'
      ? `address ${request.ip} is not allowed to ${this.#action}`
      : `a valid bearer token is required to ${this.#action}`)
  }

  readonly hook = async (request: FastifyRequest): Promise<void> => {
    const why = this.check(request)
    if (why !== undefined) throw this.refusal(request, why)
  }
}

/**
 * The token of `Authorization: Bearer <token>`, or the password of
 * `Authorization: Basic` (any user name): what a browser sends once asked,
 * so that an HTML form can post to a token-guarded route without a script.
 */
function tokenOf (authorization: string | undefined): string | undefined {
  const match = /^(Bearer|Basic)\s+(\S+)\s*$/i.exec(authorization ?? '')
  if (match === null) return undefined
  if (match[1].toLowerCase() === 'bearer') return match[2]
  const decoded = Buffer.from(match[2], 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  return colon === -1 ? undefined : decoded.slice(colon + 1)
}
