import { createHash, timingSafeEqual } from 'node:crypto'
import { BlockList, isIP } from 'node:net'
import type { FastifyRequest } from 'fastify'
import { ForbiddenError } from './errors.js'
import { optionError, showValue } from './options.js'

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

export function guard (allow: BlockList | undefined, token: string | undefined) {
  const expected = token === undefined ? undefined : digest(token)
  return async function supervisordGuard (request: FastifyRequest): Promise<void> {
    if (allow !== undefined) {
      const ip = request.ip
      if (!allow.check(ip, isIP(ip) === 6 ? 'ipv6' : 'ipv4')) throw new ForbiddenError(`address ${ip} is not allowed to command supervisord`)
    }
    if (expected !== undefined) {
      const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? '')
      // Digests have equal lengths, so the comparison takes the same time whatever was sent.
      if (match === null || !timingSafeEqual(digest(match[1]), expected)) {
        throw new ForbiddenError('a valid bearer token is required to command supervisord')
      }
    }
  }
}
