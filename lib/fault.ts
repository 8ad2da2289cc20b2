// Whose fault a failed attempt is, decided here once for every path of the
// proxy (errors before the answer, errors in the body, `nextUpstream`
// statuses, rescues), and whether the request may go to another peer after it.

/** Who a failure is charged to: only `peer` failures count against a peer (passive failures). */
export type Party = 'peer' | 'client' | 'nobody'

export type FaultKind =
  /** The peer refused or dropped the connection. */
  | 'connect'
  /** Connect, headers or body timeout. */
  | 'timeout'
  /** Malformed, truncated or over-long response, a flood of interim responses. */
  | 'response'
  /** A status listed in `nextUpstream` (http_502, ...): retried when it may be, else passed on. */
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
 * `nextUpstream`. http_403 and http_404 are never the peer's fault (nginx
 * passes such requests on but never counts them against the server).
 */
export function faultOf (failure: Error | number, facts: AttemptFacts): Fault {
  const fault = classify(failure, facts)
  if (fault.party === 'peer' && facts.peerLeaving) fault.party = 'nobody'
  return fault
}

function classify (failure: Error | number, facts: AttemptFacts): Fault {
  if (typeof failure === 'number') return { party: failure === 403 || failure === 404 ? 'nobody' : 'peer', kind: 'status', reason: `status ${failure}` }
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

/** nginx's proxy_next_upstream words, as the proxy's `nextUpstream` option takes them. */
export const NEXT_UPSTREAM_WORDS = ['error', 'timeout', 'invalid_header', 'http_500', 'http_502', 'http_503', 'http_504',
  'http_403', 'http_404', 'http_429', 'non_idempotent', 'off'] as const
export type NextUpstreamWord = typeof NEXT_UPSTREAM_WORDS[number]

/** When a failed attempt may go to the next peer: proxy_next_upstream, read. */
export interface NextUpstream {
  /** `error`: the connection failed, or dropped before the response headers. */
  error: boolean
  /** `timeout`: a connect, headers or body timeout. */
  timeout: boolean
  /** `invalid_header`: a malformed, truncated or empty response. */
  invalidHeader: boolean
  /** `http_NNN`: these statuses go to the next peer (and, but for 403 and 404, count as the peer's failures). */
  statuses: ReadonlySet<number>
  /** `non_idempotent`: a POST, PATCH... may go on after it was sent. */
  nonIdempotent: boolean
  /** `off`: no request ever goes to another peer. */
  off: boolean
}

/** nginx's default (`error timeout`) and `invalid_header`: a malformed answer is never one to pass on. */
export const DEFAULT_NEXT_UPSTREAM: readonly NextUpstreamWord[] = ['error', 'timeout', 'invalid_header']

/** A list of nginx's words into the rules (the words are checked by the caller). */
export function nextUpstreamOf (words: readonly NextUpstreamWord[]): NextUpstream {
  const statuses = new Set<number>()
  for (const word of words) if (word.startsWith('http_')) statuses.add(Number(word.slice(5)))
  return {
    error: words.includes('error'),
    timeout: words.includes('timeout'),
    invalidHeader: words.includes('invalid_header'),
    statuses,
    nonIdempotent: words.includes('non_idempotent'),
    off: words.includes('off')
  }
}

export interface RetryFacts {
  sent: boolean
  method: string
  /** The whole body is kept (or there is none): it can be sent again after it was sent. */
  bodyKept: boolean
  /** No attempt has consumed the client's body beyond what is kept. */
  bodyIntact: boolean
}

/** Whether `nextUpstream` lets a failure of this kind go on at all (the other conditions aside). */
function allowedBy (fault: Fault, next: NextUpstream): boolean {
  if (next.off) return false
  switch (fault.kind) {
    case 'connect': return next.error
    case 'timeout': return next.timeout
    case 'response': return next.invalidHeader
    // A status becomes a fault only when it is listed.
    case 'status': return true
    // The peer was taken out of rotation while the request waited on it.
    case 'rescue': return true
    default: return false
  }
}

/**
 * Whether a failed attempt may go to another peer, as nginx decides: the
 * failure is one `nextUpstream` names; and the request never reached the
 * peer, whatever its method, while its body can still be sent; or, after a
 * send, its method is idempotent (or `non_idempotent` is given) and its body
 * was kept. Never the client's fault, never during shutdown.
 */
export function mayRetry (fault: Fault, facts: RetryFacts, next: NextUpstream): boolean {
  if (fault.party === 'client' || fault.kind === 'closing' || !allowedBy(fault, next)) return false
  if (!facts.sent) return facts.bodyIntact
  return (next.nonIdempotent || IDEMPOTENT.has(facts.method)) && facts.bodyKept
}
