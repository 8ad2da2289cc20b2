// Whose fault a failed attempt is, decided here once for every path of the
// proxy (errors before the answer, errors in the body, fail statuses,
// rescues), and whether the request may go to another peer after it.

/** Who a failure is charged to: only `peer` failures count against a peer (passive failures). */
export type Party = 'peer' | 'client' | 'nobody'

export type FaultKind =
  /** The peer refused or dropped the connection. */
  | 'connect'
  /** Connect, headers or body timeout. */
  | 'timeout'
  /** Malformed, truncated or over-long response, a flood of interim responses. */
  | 'response'
  /** A status listed in `failStatuses`: the response itself is passed on. */
  | 'status'
  /** The client's request cannot be sent as it is (a refused header, a broken body). */
  | 'request'
  /** The client went away. */
  | 'gone'
  /** The peer was taken out of rotation while the attempt waited. */
  | 'rescue'
  /** The proxy is shutting down. */
  | 'closing'

export interface Fault {
  party: Party
  kind: FaultKind
  /** For the log: the error's code and message (may name the peer's address; never sent to clients by default). */
  reason: string
}

/** What is known about a failed attempt besides its error. */
export interface AttemptFacts {
  /** The request was being written to the peer (undici had started it): bytes may have reached it. */
  sent: boolean
  /** Response headers had come. */
  answered: boolean
  /** Reading the client's body failed. */
  clientBodyFailed: boolean
  /** The peer is being stopped on purpose (supervisord `stopping`, or `down`): what it drops is not held against it. */
  peerLeaving: boolean
}

/** RFC 9110 §9.2.2: the methods a request may be repeated with. */
export const IDEMPOTENT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'])

const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT'])
const MALFORMED = new Set(['UND_ERR_HEADERS_OVERFLOW', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_EXCEEDED_MAX_SIZE',
  'FST_SUPERVISORD_MALFORMED_RESPONSE'])
/** undici refuses the request before sending it: it was the request as the client sent it. */
const REFUSED_REQUEST = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED', 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH'])
const CLOSING = new Set(['UND_ERR_DESTROYED', 'UND_ERR_CLOSED'])
/** undici's words for a response its parser gave up on (a socket error by code). */
const BAD_RESPONSE_MESSAGES = new Set(['bad response', 'bad upgrade'])

/**
 * The fault of one failed attempt: an error (any stage) or a status listed in
 * `failStatuses`.
 */
export function faultOf (failure: Error | number, facts: AttemptFacts): Fault {
  const fault = classify(failure, facts)
  if (fault.party === 'peer' && facts.peerLeaving) fault.party = 'nobody'
  return fault
}

function classify (failure: Error | number, facts: AttemptFacts): Fault {
  if (typeof failure === 'number') return { party: 'peer', kind: 'status', reason: `status ${failure}` }
  const code = (failure as Error & { code?: unknown }).code
  const name = typeof code === 'string' ? code : failure.name
  const reason = `${name}: ${failure.message}`
  if (name === 'FST_SUPERVISORD_CLIENT_GONE') return { party: 'client', kind: 'gone', reason }
  if (name === 'FST_SUPERVISORD_PEER_TAKEN_OUT') return { party: 'nobody', kind: 'rescue', reason }
  if (facts.clientBodyFailed) return { party: 'client', kind: 'request', reason: `the client's body failed: ${reason}` }
  if (!facts.sent && REFUSED_REQUEST.has(name)) return { party: 'client', kind: 'request', reason }
  if (CLOSING.has(name)) return { party: 'nobody', kind: 'closing', reason }
  if (TIMEOUTS.has(name)) return { party: 'peer', kind: 'timeout', reason }
  if (name.startsWith('HPE_') || failure.name === 'HTTPParserError' || MALFORMED.has(name) || BAD_RESPONSE_MESSAGES.has(failure.message)) {
    return { party: 'peer', kind: 'response', reason }
  }
  // The connection dropped after the headers: the body was cut short.
  if (facts.answered) return { party: 'peer', kind: 'response', reason: `truncated response: ${reason}` }
  return { party: 'peer', kind: 'connect', reason }
}

export interface RetryFacts {
  sent: boolean
  method: string
  /** The whole body is kept (or there is none): it can be sent again after it was sent. */
  bodyKept: boolean
  /** No attempt has consumed the client's body beyond what is kept. */
  bodyIntact: boolean
}

/**
 * Whether a failed attempt may go to another peer, as nginx decides: a
 * request that never reached the peer, whatever its method, while its body
 * can still be sent; after a send, only an idempotent method whose body was
 * kept. Never the client's fault, never during shutdown, and never a fail
 * status (its response is passed on).
 */
export function mayRetry (fault: Fault, facts: RetryFacts): boolean {
  if (fault.party === 'client' || fault.kind === 'closing' || fault.kind === 'status') return false
  if (!facts.sent) return facts.bodyIntact
  return IDEMPOTENT.has(facts.method) && facts.bodyKept
}
