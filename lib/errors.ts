import createError from '@fastify/error'

// Every error the suite throws or answers with is made here once, with its
// code and status. Mistakes in how the suite is set up or called (options,
// names, arguments) are TypeErrors, as Fastify core's own FST_ERR_* are.

/** A bad option at registration: `fastify-supervisord: <where>: <what>`. */
export const OptionError = createError(
  'FST_SUPERVISORD_OPTION', 'fastify-supervisord: %s: %s', 500, TypeError)
/** An option section that no registered plugin reads (most likely a typo), found at `ready()`. */
export const UnreadOptionError = createError(
  'FST_SUPERVISORD_UNREAD_OPTION', 'fastify-supervisord: no registered plugin reads %s (misspelt, or its plugin is not registered)', 500, TypeError)
export const UnknownUpstreamError = createError(
  'FST_SUPERVISORD_UNKNOWN_UPSTREAM', 'fastify-supervisord: unknown upstream "%s" (known: %s)', 500, TypeError)
export const NotManagedError = createError(
  'FST_SUPERVISORD_NOT_MANAGED', 'fastify-supervisord: upstream "%s" has no "supervisord" option (use supervisord: "none" to start and stop peers without a daemon)', 500, TypeError)
export const BadAdminStateError = createError(
  'FST_SUPERVISORD_BAD_ADMIN_STATE', 'admin state must be one of %s, got %s', 400, TypeError)
export const BadPinError = createError(
  'FST_SUPERVISORD_BAD_PIN', 'pin must be one of none, up, down, got %s', 400, TypeError)
export const BadCommandError = createError(
  'FST_SUPERVISORD_BAD_COMMAND', 'command must be "start" or "stop", got %s', 400, TypeError)
/** The one "no such peer" error, for the API and the routes alike. */
export const PeerOutOfRangeError = createError(
  'FST_SUPERVISORD_BACKEND_OUT_OF_RANGE', 'Upstream "%s" has no backend %s (valid: 0..%d or any)', 404, RangeError)

export const NoPeerError = createError(
  'FST_SUPERVISORD_NO_PEER', 'No routable peer in upstream "%s"', 503)
/** A proxy with `hosts` and no default upstream got a Host that none of its server names matches. */
export const UnknownHostError = createError(
  'FST_SUPERVISORD_UNKNOWN_HOST', 'No upstream serves this host', 404, Error, false)
/** reply.from() was called in a balancing proxy's context without the options the proxy gave (they carry the balancing). */
export const UnbalancedFromError = createError(
  'FST_SUPERVISORD_UNBALANCED_FROM', 'reply.from() in a balancing proxy must be given the options of the handler (or of reply.fromParameters())', 500)

// What the proxy answers when an attempt failed. The message names the
// upstream only; the last `%s` is empty unless `exposeErrors` adds the peer
// and the reason. No stack is captured: these are answers, not bugs, and a
// burst of them must not fill the log with traces.
export const PeerConnectError = createError(
  'FST_SUPERVISORD_PEER_CONNECT', 'A peer of upstream "%s" could not be reached or dropped the connection%s', 502, Error, false)
export const PeerTimeoutError = createError(
  'FST_SUPERVISORD_PEER_TIMEOUT', 'A peer of upstream "%s" timed out%s', 504, Error, false)
export const PeerBadResponseError = createError(
  'FST_SUPERVISORD_PEER_BAD_RESPONSE', 'A peer of upstream "%s" sent a malformed or truncated response%s', 502, Error, false)
/** The client's request cannot be sent on as it is (a header the HTTP client refuses, a broken body). */
export const BadRequestError = createError(
  'FST_SUPERVISORD_BAD_REQUEST', 'The request cannot be forwarded to upstream "%s": %s', 400, Error, false)
/** An error whose message may carry internal details (supervisord addresses, program names), as clients see it. */
export const UpstreamFailedError = createError(
  'FST_SUPERVISORD_UPSTREAM_FAILED', 'Upstream "%s" could not serve the request (the reason is in the gateway\'s log)', 502, Error, false)

// Reasons the proxy aborts an attempt of its own accord; never sent to clients.
/** The client went away: its upstream request is aborted. */
export const ClientGoneError = createError(
  'FST_SUPERVISORD_CLIENT_GONE', 'The client went away', 400, Error, false)
/** The peer was taken out of rotation while the attempt waited for its answer: it goes to another peer. */
export const PeerTakenOutError = createError(
  'FST_SUPERVISORD_PEER_TAKEN_OUT', 'The peer was taken out of rotation (%s)', 502, Error, false)
/** A response that the HTTP parser accepts but the proxy does not (a status over 599, a flood of interim responses). */
export const MalformedResponseError = createError(
  'FST_SUPERVISORD_MALFORMED_RESPONSE', '%s', 502, Error, false)
export const HoldOverflowError = createError(
  'FST_SUPERVISORD_HOLD_OVERFLOW', 'Too many requests held for upstream "%s" (maxHeld %d)', 503)
export const HoldTimeoutError = createError(
  'FST_SUPERVISORD_HOLD_TIMEOUT', 'No peer of upstream "%s" could take the request within %d ms', 503)
/** Every peer that could be started failed its start (the last reason; clients see it only with `exposeErrors`). */
export const StartFailedError = createError(
  'FST_SUPERVISORD_START_FAILED', 'Could not start a peer of upstream "%s": %s', 502, Error, false)
const StartBackoffBase = createError(
  'FST_SUPERVISORD_START_BACKOFF', 'No peer of upstream "%s" can be started before its start back-off ends (next try in %d s)', 503, Error, false)

/** No peer is routable and every one that could be started is in start back-off: answered at once, with Retry-After. */
export class StartBackoffError extends StartBackoffBase {
  /** Seconds until the next start may be tried (the Retry-After value). */
  readonly retryAfter: number

  constructor (upstream: string, retryAfter: number) {
    super(upstream, retryAfter)
    this.retryAfter = retryAfter
  }
}

/** The base of every supervisord failure: a call that failed, or a command that did. */
export const SupervisordFailure = createError(
  'FST_SUPERVISORD_FAILURE', '%s', 502)
// @fastify/error types `Base` as ErrorConstructor; it only reads its prototype,
// so one of its own error classes serves as a base (instanceof then holds).
const supervisordBase = SupervisordFailure as unknown as ErrorConstructor
/** A command carried out with `?wait=1` failed: supervisord refused it or the program did not start. */
export const SupervisordError = createError(
  'FST_SUPERVISORD_COMMAND_FAILED', '%s', 502, supervisordBase)
/** A command carried out with `?wait=1` could not reach supervisord. */
export const SupervisordUnavailableError = createError(
  'FST_SUPERVISORD_UNAVAILABLE', '%s', 503, supervisordBase)
const SupervisordCallFailure = createError(
  'FST_SUPERVISORD_CALL', '%s', 502, supervisordBase)

/**
 * A failed call: `fault` is supervisord's fault name (BAD_NAME, SPAWN_ERROR,
 * ...) or a transport failure (TIMEOUT, UNAUTHORIZED, UNREACHABLE, ABORTED,
 * PROTOCOL).
 */
export class SupervisordCallError extends SupervisordCallFailure {
  readonly fault: string
  /** supervisord's numeric fault code, when it answered with a fault. */
  readonly faultCode: number | undefined
  readonly method: string
  readonly program: string | undefined

  constructor (message: string, details: { fault: string, faultCode?: number, method: string, program?: string }, cause?: unknown) {
    super(message, { cause })
    this.name = 'SupervisordCallError'
    this.fault = details.fault
    this.faultCode = details.faultCode
    this.method = details.method
    this.program = details.program
  }
}

export const ForbiddenError = createError(
  'FST_SUPERVISORD_FORBIDDEN', '%s', 403)
export const BadQueryError = createError(
  'FST_SUPERVISORD_BAD_QUERY', '%s', 400)

/** A store call that could not be answered in time: the store is degraded (Redis unreachable, slow or stopped). */
export const StoreUnavailableError = createError(
  'FST_SUPERVISORD_STORE_UNAVAILABLE', 'fastify-supervisord: store unavailable: %s', 503)
/** A store method called with a bad argument (a programming mistake, thrown at the call). */
export const StoreArgumentError = createError(
  'FST_SUPERVISORD_STORE_ARGUMENT', 'fastify-supervisord: store: %s', 500, TypeError)
/** A method an operator route does not take (answered with Allow). */
export const MethodNotAllowedError = createError(
  'FST_SUPERVISORD_METHOD_NOT_ALLOWED', 'Method %s is not allowed here (allowed: %s)', 405)
/** A path under the operator routes' prefix that is no route: answered there, never proxied. */
export const RouteNotFoundError = createError(
  'FST_SUPERVISORD_ROUTE_NOT_FOUND', 'No operator route %s %s', 404)
