import createError from '@fastify/error'

// Every error the suite answers with is made here once, with its code and status.

export const NoPeerError = createError(
  'FST_SUPERVISORD_NO_PEER', 'No routable peer in upstream "%s"', 503)
export const PeerConnectError = createError(
  'FST_SUPERVISORD_PEER_CONNECT', 'Peer %s of upstream "%s" failed: %s', 502)
export const PeerTimeoutError = createError(
  'FST_SUPERVISORD_PEER_TIMEOUT', 'Peer %s of upstream "%s" timed out: %s', 504)
export const HoldOverflowError = createError(
  'FST_SUPERVISORD_HOLD_OVERFLOW', 'Too many requests held for upstream "%s" (maxHeld %d)', 503)
export const HoldTimeoutError = createError(
  'FST_SUPERVISORD_HOLD_TIMEOUT', 'No peer of upstream "%s" became routable within %d ms', 503)
export const StartFailedError = createError(
  'FST_SUPERVISORD_START_FAILED', 'Could not start a peer of upstream "%s": %s', 502)
export const SupervisordError = createError(
  'FST_SUPERVISORD_COMMAND_FAILED', '%s', 502)
export const SupervisordUnavailableError = createError(
  'FST_SUPERVISORD_UNAVAILABLE', '%s', 503)
export const BackendOutOfRangeError = createError(
  'FST_SUPERVISORD_BACKEND_OUT_OF_RANGE', 'Upstream "%s" has no backend %s (valid: 0..%d or any)', 404)
export const ForbiddenError = createError(
  'FST_SUPERVISORD_FORBIDDEN', '%s', 403)
export const BadQueryError = createError(
  'FST_SUPERVISORD_BAD_QUERY', '%s', 400)
