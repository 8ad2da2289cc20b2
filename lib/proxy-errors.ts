import type { Fault } from './fault.js'
import type { Peer } from './peer.js'
import {
  BadRequestError, ClientGoneError, HoldOverflowError, HoldTimeoutError, NoPeerError, PeerBadResponseError, PeerConnectError,
  PeerTimeoutError, UpstreamFailedError
} from './errors.js'

/** Errors whose message names nothing but the upstream (and numbers from its options): safe for any client. */
const PUBLIC_CODES = new Set<string>([
  new NoPeerError('').code, new HoldOverflowError('', 0).code, new HoldTimeoutError('', 0).code,
  new PeerConnectError('', '').code, new PeerTimeoutError('', '').code, new PeerBadResponseError('', '').code,
  new BadRequestError('', '').code, new ClientGoneError().code
])

/** What the client is answered when its request failed for `fault` at `peer`. */
export function errorFor (fault: Fault, upstream: string, peer: Peer, exposeErrors: boolean): Error {
  const detail = exposeErrors ? `: peer ${peer.address}: ${fault.reason}` : ''
  switch (fault.kind) {
    case 'connect': return new PeerConnectError(upstream, detail)
    case 'timeout': return new PeerTimeoutError(upstream, detail)
    case 'response':
    case 'status': return new PeerBadResponseError(upstream, detail)
    case 'request': return new BadRequestError(upstream, fault.reason)
    // Nobody's fault with nowhere to go: the proxy is shutting down.
    default: return new NoPeerError(upstream)
  }
}

/**
 * An error about to be sent to a client, as the client may see it: with
 * `exposeErrors` as it is; otherwise an error whose message may carry
 * internal details (a supervisord address, a user name, a program name, a
 * reason from the daemon) keeps its code and status but says only which
 * upstream failed. The full reason is in the log of whoever raised it.
 */
export function forClient (error: Error & { code?: string, statusCode?: number }, upstream: string, exposeErrors: boolean): Error {
  if (exposeErrors || (error.statusCode ?? 500) < 500 || (error.code !== undefined && PUBLIC_CODES.has(error.code))) return error
  const safe = new UpstreamFailedError(upstream) as Error & { code: string, statusCode: number }
  if (error.code !== undefined) safe.code = error.code
  safe.statusCode = error.statusCode ?? 502
  return safe
}
