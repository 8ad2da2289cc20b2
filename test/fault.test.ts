import t from 'tap'
import type { FastifyBaseLogger } from 'fastify'
import { DEFAULT_NEXT_UPSTREAM, faultOf, mayRetry as retry, nextUpstreamOf, type AttemptFacts, type Fault } from '../lib/fault.js'
import { errorFor, forClient } from '../lib/proxy-errors.js'
import { FailureLog } from '../lib/failure-log.js'
import { Registry } from '../lib/registry.js'
import { ClientGoneError, MalformedResponseError, PeerTakenOutError, StartFailedError, HoldTimeoutError, BadRequestError } from '../lib/errors.js'
import { sleep, until } from './helpers/wait.js'

// The fault rules as a table: what each failure is charged to, and whether
// the request may go to another peer after it.

function coded (code: string, message = code, name = 'Error'): Error {
  const error = new Error(message) as Error & { code: string }
  error.code = code
  error.name = name
  return error
}

const SENT: AttemptFacts = { sent: true, answered: false, clientBodyFailed: false, peerLeaving: false }
const NOT_SENT: AttemptFacts = { ...SENT, sent: false }
const ANSWERED: AttemptFacts = { ...SENT, answered: true }

t.test('whose fault: each kind of failure, charged once', async t => {
  const parserError = new Error('Response does not match the HTTP/1.1 protocol (Invalid character in chunk size)')
  parserError.name = 'HTTPParserError'
  const table: Array<[string, Error | number, AttemptFacts, Pick<Fault, 'party' | 'kind'>]> = [
    ['connection refused', coded('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:1'), NOT_SENT, { party: 'peer', kind: 'connect' }],
    ['reset', coded('ECONNRESET'), SENT, { party: 'peer', kind: 'connect' }],
    ['other side closed', coded('UND_ERR_SOCKET', 'other side closed'), SENT, { party: 'peer', kind: 'connect' }],
    ['connect timeout', coded('UND_ERR_CONNECT_TIMEOUT'), NOT_SENT, { party: 'peer', kind: 'timeout' }],
    ['headers timeout', coded('UND_ERR_HEADERS_TIMEOUT'), SENT, { party: 'peer', kind: 'timeout' }],
    ['body timeout', coded('UND_ERR_BODY_TIMEOUT'), ANSWERED, { party: 'peer', kind: 'timeout' }],
    ['a parser error without a code', parserError, SENT, { party: 'peer', kind: 'response' }],
    ['a parser error with its code', coded('HPE_INVALID_CHUNK_SIZE'), ANSWERED, { party: 'peer', kind: 'response' }],
    ['over-long head', coded('UND_ERR_HEADERS_OVERFLOW'), SENT, { party: 'peer', kind: 'response' }],
    ['a 100 where none was asked for', coded('UND_ERR_SOCKET', 'bad response'), SENT, { party: 'peer', kind: 'response' }],
    ['interim flood', new MalformedResponseError('more than 10 interim responses'), SENT, { party: 'peer', kind: 'response' }],
    ['cut after the head', coded('UND_ERR_SOCKET', 'other side closed'), ANSWERED, { party: 'peer', kind: 'response' }],
    ['a fail status', 503, ANSWERED, { party: 'peer', kind: 'status' }],
    ['a header undici refuses', coded('UND_ERR_INVALID_ARG', 'invalid x-odd header'), NOT_SENT, { party: 'client', kind: 'request' }],
    ['Expect, had it been sent on', coded('UND_ERR_NOT_SUPPORTED', 'expect header not supported'), NOT_SENT, { party: 'client', kind: 'request' }],
    ['the client\'s body broke', coded('ECONNRESET', 'aborted'), { ...SENT, clientBodyFailed: true }, { party: 'client', kind: 'request' }],
    ['the client went away', new ClientGoneError(), SENT, { party: 'client', kind: 'gone' }],
    ['rescued', new PeerTakenOutError('health unhealthy'), SENT, { party: 'nobody', kind: 'rescue' }],
    ['shutting down', coded('UND_ERR_DESTROYED'), NOT_SENT, { party: 'nobody', kind: 'closing' }],
    ['a peer being stopped resets', coded('ECONNRESET'), { ...SENT, peerLeaving: true }, { party: 'nobody', kind: 'connect' }]
  ]
  for (const [name, failure, facts, expected] of table) t.match(faultOf(failure, facts), expected, name)
  t.match(faultOf(coded('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:1'), NOT_SENT).reason, 'ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:1', 'the reason keeps the code and the message, for the log')
})

t.test('what follows: retried as nginx, never twice once a POST was sent', async t => {
  const defaults = nextUpstreamOf(DEFAULT_NEXT_UPSTREAM)
  const mayRetry = (fault: Fault, facts: Parameters<typeof retry>[1]): boolean => retry(fault, facts, defaults)
  const peer: Fault = { party: 'peer', kind: 'connect', reason: '' }
  const facts = { sent: false, method: 'POST', bodyKept: false, bodyIntact: true }
  t.ok(mayRetry(peer, facts), 'a POST that never reached the peer')
  t.notOk(mayRetry(peer, { ...facts, bodyIntact: false }), 'unless its body was already consumed')
  t.notOk(mayRetry(peer, { ...facts, sent: true, bodyKept: true }), 'a POST that was sent: never')
  for (const method of ['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']) {
    t.ok(mayRetry(peer, { ...facts, sent: true, method, bodyKept: true }), `${method} after a send, its body kept`)
    t.notOk(mayRetry(peer, { ...facts, sent: true, method, bodyKept: false }), `${method} after a send, its body streamed`)
  }
  t.notOk(mayRetry(peer, { ...facts, sent: true, method: 'PATCH', bodyKept: true }), 'PATCH is not idempotent')
  t.notOk(mayRetry({ party: 'client', kind: 'request', reason: '' }, { ...facts, method: 'GET' }), 'the client\'s fault: never')
  t.notOk(mayRetry({ party: 'nobody', kind: 'closing', reason: '' }, { ...facts, method: 'GET' }), 'shutting down: never')
  t.ok(mayRetry({ party: 'nobody', kind: 'rescue', reason: '' }, { ...facts, sent: true, method: 'GET', bodyKept: true }), 'a rescued GET')
})

t.test('what clients see: the code and the upstream; details only when exposed', async t => {
  const registry = new Registry({ upstreams: { api: { servers: ['127.0.0.1:8001'] } } })
  const [peer] = registry.get('api').peers
  const fault = (kind: Fault['kind']): Fault => ({ party: 'peer', kind, reason: 'ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:8001' })
  const codes = (['connect', 'timeout', 'response', 'status', 'request', 'closing'] as const).map(kind => {
    const error = errorFor(fault(kind), 'api', peer, false) as Error & { code: string, statusCode: number }
    return [kind, error.code, error.statusCode]
  })
  t.same(codes, [
    ['connect', 'FST_SUPERVISORD_PEER_CONNECT', 502], ['timeout', 'FST_SUPERVISORD_PEER_TIMEOUT', 504],
    ['response', 'FST_SUPERVISORD_PEER_BAD_RESPONSE', 502], ['status', 'FST_SUPERVISORD_PEER_BAD_RESPONSE', 502],
    ['request', 'FST_SUPERVISORD_BAD_REQUEST', 400], ['closing', 'FST_SUPERVISORD_NO_PEER', 503]
  ])
  t.equal(errorFor(fault('connect'), 'api', peer, false).message, 'A peer of upstream "api" could not be reached or dropped the connection')
  t.equal(errorFor(fault('connect'), 'api', peer, true).message,
    'A peer of upstream "api" could not be reached or dropped the connection: peer 127.0.0.1:8001: ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:8001')
  t.equal(errorFor(fault('timeout'), 'api', peer, false).stack, undefined, 'no stack is captured')

  const secret = new StartFailedError('api', 'supervisord unix:/run/s.sock (user admin): api0 SPAWN_ERROR')
  const safe = forClient(secret, 'api', false) as Error & { code: string, statusCode: number }
  t.match(safe, { code: 'FST_SUPERVISORD_START_FAILED', statusCode: 502, message: 'Upstream "api" could not serve the request (the reason is in the gateway\'s log)' })
  t.equal(forClient(secret, 'api', true), secret, 'exposeErrors: as it is')
  const timeout = new HoldTimeoutError('api', 30000)
  t.equal(forClient(timeout, 'api', false), timeout, 'an error that names only the upstream passes')
  const plain = forClient(new Error('ENOENT /etc/secret'), 'api', false) as Error & { code: string, statusCode: number }
  t.match(plain, { statusCode: 502, message: /^Upstream "api" could not serve/ }, 'an error of unknown shape says nothing either')
  const clientError = new BadRequestError('api', 'invalid x header')
  t.equal(forClient(clientError, 'api', false), clientError, 'a 4xx (the client\'s own request) passes')
  registry.close()
})

t.test('failure log: the first line at once, then one line per key per window with a count, while the burst lasts', async t => {
  const lines: Array<[string, Record<string, unknown>, string]> = []
  const logger = {
    warn: (fields: Record<string, unknown>, message: string) => lines.push(['warn', fields, message]),
    info: (fields: Record<string, unknown>, message: string) => lines.push(['info', fields, message])
  } as unknown as FastifyBaseLogger
  const log = new FailureLog(logger, 50)
  for (let i = 0; i < 5; i++) log.write('warn', 'p0 refused', { peer: 'p0' }, 'peer failed')
  log.write('info', 'client', { reason: 'x' }, 'client failed')
  t.same(lines.map(([level, , message]) => [level, message]), [['warn', 'peer failed'], ['info', 'client failed']], 'one line each at once')
  t.ok(await until(() => lines.length === 3, 2000), 'the window ends: one line for the rest')
  t.match(lines[2], ['warn', { peer: 'p0', repeated: 4 }, 'peer failed (4 more within 50 ms)'])
  log.write('warn', 'p0 refused', { peer: 'p0' }, 'peer failed')
  log.write('warn', 'p0 refused', { peer: 'p0' }, 'peer failed')
  t.equal(lines.length, 3, 'still within the burst: counted, not written')
  log.close()
  t.match(lines[3], ['warn', { repeated: 2 }], 'close writes what is counted')
  await sleep(120)
  t.equal(lines.length, 4, 'and stops the timers')
})

t.test('whose fault, the rest of the codes: every timeout, every malformed answer, every refused request, every closing word', async t => {
  for (const code of ['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']) t.match(faultOf(coded(code), SENT), { party: 'peer', kind: 'timeout' }, code)
  for (const code of ['UND_ERR_HEADERS_OVERFLOW', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_EXCEEDED_MAX_SIZE', 'FST_SUPERVISORD_MALFORMED_RESPONSE']) {
    t.match(faultOf(coded(code), SENT), { party: 'peer', kind: 'response', reason: `${code}: ${code}` }, code)
  }
  t.match(faultOf(coded('UND_ERR_SOCKET', 'bad upgrade'), SENT), { party: 'peer', kind: 'response' }, 'bad upgrade')
  for (const code of ['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED', 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH']) {
    t.match(faultOf(coded(code), NOT_SENT), { party: 'client', kind: 'request' }, `${code} before a byte was sent: the client's request`)
    t.match(faultOf(coded(code), SENT), { party: 'peer', kind: 'connect' }, `${code} once it was being sent: not the client's`)
  }
  for (const code of ['UND_ERR_DESTROYED', 'UND_ERR_CLOSED']) t.match(faultOf(coded(code), SENT), { party: 'nobody', kind: 'closing' }, code)
  t.match(faultOf(coded('ECONNRESET'), ANSWERED), { party: 'peer', kind: 'response', reason: 'truncated response: ECONNRESET: ECONNRESET' }, 'cut after the head: a truncated response')
  t.match(faultOf(coded('ECONNRESET', 'aborted'), { ...SENT, clientBodyFailed: true }), { reason: 'the client\'s body failed: ECONNRESET: aborted' })
  t.match(faultOf(503, { ...ANSWERED, peerLeaving: true }), { party: 'nobody' }, 'a peer being stopped: nothing is held against it')
  t.match(faultOf(new ClientGoneError(), { ...SENT, peerLeaving: true }), { party: 'client' }, 'and the client\'s own faults stay the client\'s')
  for (const status of [403, 404]) t.match(faultOf(status, ANSWERED), { party: 'nobody', kind: 'status', reason: `status ${status}` }, `${status}: passed on, never the peer's fault`)
  for (const status of [429, 500, 502, 504]) t.match(faultOf(status, ANSWERED), { party: 'peer', kind: 'status' }, `${status}`)
})

t.test('nextUpstream: each of nginx\'s words, read as nginx reads them', async t => {
  const read = nextUpstreamOf(['http_502', 'http_429', 'non_idempotent'])
  t.same([...read.statuses].sort(), [429, 502])
  t.same([read.error, read.timeout, read.invalidHeader, read.nonIdempotent, read.off], [false, false, false, true, false])
  t.same(nextUpstreamOf(DEFAULT_NEXT_UPSTREAM), { error: true, timeout: true, invalidHeader: true, statuses: new Set(), nonIdempotent: false, off: false }, 'the default: error timeout invalid_header')
  t.ok(nextUpstreamOf(['off']).off)
  const facts = { sent: true, method: 'GET', bodyKept: true, bodyIntact: true }
  const kinds = ['connect', 'timeout', 'response', 'status', 'rescue', 'request', 'gone', 'closing'] as const
  const allowed = (words: Parameters<typeof nextUpstreamOf>[0]): string[] => kinds.filter(kind => retry({ party: 'peer', kind, reason: '' }, facts, nextUpstreamOf(words)))
  t.same(allowed(['error']), ['connect', 'status', 'rescue'], 'error: a failed connection (and a listed status or a rescue, always)')
  t.same(allowed(['timeout']), ['timeout', 'status', 'rescue'], 'timeout')
  t.same(allowed(['invalid_header']), ['response', 'status', 'rescue'], 'invalid_header')
  t.same(allowed(['error', 'timeout', 'invalid_header', 'off']), [], 'off: nothing goes on, whatever else is listed')
  t.ok(retry({ party: 'peer', kind: 'connect', reason: '' }, { ...facts, method: 'POST' }, nextUpstreamOf(['error', 'non_idempotent'])), 'non_idempotent: a sent POST may go on')
  t.notOk(retry({ party: 'peer', kind: 'connect', reason: '' }, { ...facts, method: 'POST', bodyKept: false }, nextUpstreamOf(['error', 'non_idempotent'])), 'but not with its body streamed')
})

t.test('what clients see, at the edges: a 4xx of any code passes, an error without a code gets the upstream\'s, a status is kept', async t => {
  const notFound = Object.assign(new Error('no route /x on 10.0.0.5'), { code: 'SOME_CODE', statusCode: 404 })
  t.equal(forClient(notFound, 'api', false), notFound, 'a 4xx passes whatever its code')
  const bare = forClient(new Error('ENOENT /etc/secret'), 'api', false) as Error & { code: string }
  t.equal(bare.code, 'FST_SUPERVISORD_UPSTREAM_FAILED', 'no code of its own: the upstream\'s failure')
  const unavailable = forClient(Object.assign(new Error('at 10.0.0.5'), { code: 'PRIVATE', statusCode: 503 }), 'api', false) as Error & { code: string, statusCode: number }
  t.match(unavailable, { code: 'PRIVATE', statusCode: 503, message: /^Upstream "api" could not serve/ }, 'its code and status kept, its message not')
  t.match(faultOf(coded('HPE_INVALID_CONSTANT'), SENT), { party: 'peer', kind: 'response', reason: 'HPE_INVALID_CONSTANT: HPE_INVALID_CONSTANT' }, 'a parser code before any head: a malformed response, not a cut one')
})
