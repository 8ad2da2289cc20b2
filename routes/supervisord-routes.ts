import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import type { Command, ExecuteResult } from '../lib/supervisord-bridge.js'
import type { AdminState, Peer } from '../lib/peer.js'
import { isUnavailable } from '../lib/supervisord-client.js'
import { BadQueryError, MethodNotAllowedError, NotManagedError, RouteNotFoundError, SupervisordError, SupervisordUnavailableError } from '../lib/errors.js'
import { Access } from '../lib/guard.js'
import { optionKeys, optionError, rejectUnknownOptions, showValue, stringOption } from '../lib/options.js'
import { negotiateFormat } from '../lib/status/negotiate.js'
import { upstreamStatus } from '../lib/status/snapshot.js'
import type { OperatorCommand, OperatorRoutes } from '../lib/operator-routes.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** A route handler that starts peer `:backend` (an index or `any`) of `upstream`; throws now if the upstream is unknown or has no `supervisord`. */
    supervisordStart (upstream: string): RouteHandlerMethod
    /** A route handler that stops peer `:backend` (an index or `any`) of `upstream`, after draining it. */
    supervisordStop (upstream: string): RouteHandlerMethod
  }
}

export interface SupervisordRoutesOptions {
  /** The upstream the routes command. */
  upstream: string
  /** Where the routes are mounted (default `/_supervisord`: `/_supervisord/start/:backend`, `/_supervisord/stop/:backend`). */
  prefix?: string
  /** Path of the start route under the prefix (default `/start`; `/_start` with prefix `''` gives nginx's `/_start/N`). */
  startPath?: string
  /** Path of the stop route under the prefix (default `/stop`). */
  stopPath?: string
  /** Path of the route that releases an operator's pin under the prefix (default `/release`). */
  releasePath?: string
  /** HTTP methods of both routes (default `['POST']`; `['GET', 'POST']` for links and curl without -X). */
  methods?: Array<'GET' | 'POST'>
  /** Client addresses let in: IPv4/IPv6 addresses and CIDRs (default loopback only when no `token` is set). */
  allow?: string[]
  /** A token the client must send (`Authorization: Bearer <token>`, or as the password of HTTP Basic). With `allow` too, both are required. */
  token?: string
}

const ROUTE_OPTIONS = optionKeys<SupervisordRoutesOptions>()('upstream', 'prefix', 'startPath', 'stopPath', 'releasePath', 'methods', 'allow', 'token')
const INDEX = /^\d+$/

/** The `:backend` param as execute() takes it; the range is the bridge's to check (404). */
function backendParam (value: unknown, count: number): number | 'any' {
  if (value === 'any') return 'any'
  if (typeof value !== 'string' || !INDEX.test(value)) {
    throw new BadQueryError(`backend must be a peer index (0..${count - 1}) or "any", got ${showValue(value)}`)
  }
  return Number(value)
}

/** A field of the query string or, for a form post, of the body. */
function field (request: FastifyRequest, name: string): unknown {
  return (request.query as Record<string, unknown> | undefined)?.[name] ?? (request.body as Record<string, unknown> | undefined)?.[name]
}

function waitParam (request: FastifyRequest): boolean {
  const wait = field(request, 'wait')
  if (wait === undefined || wait === '0' || wait === 'false') return false
  if (wait === '1' || wait === 'true') return true
  throw new BadQueryError(`query "wait" must be 1 or 0, got ${showValue(wait)}`)
}

/** What the answer says: the command's result, or an error when a waited-for command failed. */
function answer (reply: FastifyReply, result: ExecuteResult, wait: boolean): Omit<ExecuteResult, 'retryAfter'> {
  const { retryAfter, ...body } = result
  if (!result.accepted || result.fault === 'CANCELLED') {
    if (retryAfter !== undefined) reply.header('retry-after', Math.ceil(retryAfter / 1000))
    reply.code(409)
  } else if (wait && result.ok === false) {
    const reason = result.reason ?? result.fault ?? 'command failed'
    throw isUnavailable(result.fault) ? new SupervisordUnavailableError(reason) : new SupervisordError(reason)
  }
  return body
}

/**
 * A handler for `<prefix>/:backend`: answers `{ upstream, command, backend,
 * accepted, state }` once the command is accepted, or with `?wait=1` after
 * supervisord's answer (200, or 502 with the fault; 503 when supervisord
 * cannot be reached).
 */
function commandHandler (fastify: FastifyInstance, upstream: string, command: Command): RouteHandlerMethod {
  // Both plugins that call this declare the bridge as a dependency: fastify.supervisord is there.
  const bridge = fastify.supervisord
  if (!bridge.manages(upstream)) {
    throw new NotManagedError(upstream)
  }
  const count = fastify.upstreams.get(upstream).peers.length
  return async function supervisordCommand (request: FastifyRequest, reply: FastifyReply) {
    const backend = backendParam((request.params as Record<string, unknown> | undefined)?.backend, count)
    const wait = waitParam(request)
    return answer(reply, await bridge.execute(upstream, command, backend, { wait }), wait)
  }
}

async function decorators (fastify: FastifyInstance): Promise<void> {
  fastify.decorate('supervisordStart', (upstream: string) => commandHandler(fastify, upstream, 'start'))
  fastify.decorate('supervisordStop', (upstream: string) => commandHandler(fastify, upstream, 'stop'))
}

/** Decorates `supervisordStart(upstream)` and `supervisordStop(upstream)`, which return route handlers. */
export const supervisordCommands = fp(decorators, {
  name: 'fastify-supervisord-commands',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-bridge']
})

function methodsOption (value: unknown, where: string): Array<'GET' | 'POST'> {
  if (value === undefined) return ['POST']
  if (!Array.isArray(value) || value.length === 0 || !value.every(m => m === 'GET' || m === 'POST')) {
    throw optionError(where, `option "methods" must be a non-empty list of "GET" and "POST", got ${showValue(value)}`)
  }
  return [...new Set(value as Array<'GET' | 'POST'>)]
}

function routePath (value: unknown, fallback: string, where: string, name: string): string {
  const path = stringOption(value, fallback, where, name)
  if (!/^\/[A-Za-z0-9._~/-]*$/.test(path) || path.endsWith('/')) {
    throw optionError(where, `option "${name}" must be a path like "/start" (no trailing slash), got ${showValue(path)}`)
  }
  return path
}

function safeDecode (text: string): string {
  try { return decodeURIComponent(text) } catch { return text }
}

/** `:backend` of the routes that take an index only (release, drain, maint, ready, weight). */
function indexParam (request: FastifyRequest, count: number): number {
  const value = (request.params as Record<string, unknown> | undefined)?.backend
  if (typeof value !== 'string' || !INDEX.test(value)) {
    throw new BadQueryError(`backend must be a peer index (0..${count - 1}), got ${showValue(value)}`)
  }
  return Number(value)
}

/** What the admin routes answer: the shape of start/stop's, with the peer's admin state, weight and pin. */
function peerAnswer (upstream: string, command: OperatorCommand, peer: Peer) {
  return { upstream, command, backend: peer.index, program: peer.program, accepted: true, state: peer.process, admin: peer.admin, weight: peer.weight, pin: peer.pin }
}

/** A handler for `<prefix>/release/:backend`: the scaler may move the peer again. */
function releaseHandler (fastify: FastifyInstance, upstream: string): RouteHandlerMethod {
  const count = fastify.upstreams.get(upstream).peers.length
  return async function supervisordRelease (request: FastifyRequest) {
    const peer = fastify.supervisord.unpin(upstream, indexParam(request, count))
    return { upstream, backend: peer.index, pin: peer.pin }
  }
}

/** `<prefix>/drain|maint|ready/:backend`: the registry's setAdmin, the one door to the admin state. */
function adminHandler (fastify: FastifyInstance, upstream: string, state: AdminState): RouteHandlerMethod {
  const count = fastify.upstreams.get(upstream).peers.length
  return async function supervisordAdmin (request: FastifyRequest) {
    const peer = fastify.upstreams.setAdmin(upstream, indexParam(request, count), state, `operator ${request.ip}`)
    return peerAnswer(upstream, state, peer)
  }
}

const WEIGHT = /^\d{1,4}$/

/** `<prefix>/weight/:backend?value=N`: the registry's setWeight (1..1000). */
function weightHandler (fastify: FastifyInstance, upstream: string): RouteHandlerMethod {
  const count = fastify.upstreams.get(upstream).peers.length
  return async function supervisordWeight (request: FastifyRequest) {
    const index = indexParam(request, count)
    const value = field(request, 'value')
    if (typeof value !== 'string' || !WEIGHT.test(value) || Number(value) < 1 || Number(value) > 1000) {
      throw new BadQueryError(`query "value" must be a weight, an integer from 1 to 1000, got ${showValue(value)}`)
    }
    return peerAnswer(upstream, 'weight', fastify.upstreams.setWeight(upstream, index, Number(value)))
  }
}

/**
 * Where a form post is sent back to: its `back` field when it is a path of
 * this site (never another host: an open redirect), else the page it came
 * from (the Referer's path, when same-origin), else `/`.
 */
function backTo (request: FastifyRequest): string {
  const back = field(request, 'back')
  if (typeof back === 'string' && /^\/(?![/\\])[^\s]*$/.test(back)) return back
  const referer = request.headers.referer
  if (referer !== undefined && URL.canParse(referer)) {
    const url = new URL(referer)
    if (url.host === request.host) return url.pathname + url.search
  }
  return '/'
}

/**
 * `POST <prefix>/start/:backend`, `POST <prefix>/stop/:backend` and
 * `POST <prefix>/release/:backend` for one upstream and, under a prefix,
 * `drain`, `maint`, `ready`, `weight/:backend?value=` and `GET <prefix>/`
 * (the upstream's peers as JSON), guarded by an allow-list and/or a token
 * (loopback only when neither is given); everything else gets 403. Every
 * request under the prefix is answered here, whatever its method or the
 * length of its path (405 with Allow, 400, 404): none falls through to a
 * proxy mounted at '/'. A command posted by a browser (HTML preferred in
 * its Accept) is answered 303 back to the page it came from; every command
 * is logged at info with the address it came from.
 */
async function routes (fastify: FastifyInstance, options: SupervisordRoutesOptions): Promise<void> {
  const where = `supervisord routes for upstream ${showValue(options?.upstream)}`
  rejectUnknownOptions(options, ROUTE_OPTIONS, where)
  if (typeof options.upstream !== 'string' || options.upstream === '') {
    throw optionError(where, `option "upstream" must name an upstream of the registry, got ${showValue(options.upstream)}`)
  }
  const upstream = options.upstream
  const methods = methodsOption(options.methods, where)
  const access = new Access(options, where, 'command supervisord')
  // Fastify has already applied a `prefix` given at register(); the default is applied here.
  const base = options.prefix === undefined ? '/_supervisord' : ''
  fastify.addHook('onRequest', access.hook)
  // The status page's forms post url-encoded fields (value, back); the WHATWG parser built into Node reads them.
  fastify.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 4096 },
    (_request, body, done) => done(null, Object.fromEntries(new URLSearchParams(body as string))))
  const commands = new Map<string, [OperatorCommand, RouteHandlerMethod]>([
    [routePath(options.startPath, '/start', where, 'startPath'), ['start', commandHandler(fastify, upstream, 'start')]],
    [routePath(options.stopPath, '/stop', where, 'stopPath'), ['stop', commandHandler(fastify, upstream, 'stop')]]
  ])
  const unprefixed = base === '' && fastify.prefix === ''
  // Mounted at the root (nginx's /_start/N), a release route is made only when asked for, and no admin route at all.
  if (!unprefixed || options.releasePath !== undefined) {
    commands.set(routePath(options.releasePath, '/release', where, 'releasePath'), ['release', releaseHandler(fastify, upstream)])
  }
  if (!unprefixed) {
    for (const state of ['drain', 'maint', 'ready'] as const) commands.set(`/${state}`, [state, adminHandler(fastify, upstream, state)])
    commands.set('/weight', ['weight', weightHandler(fastify, upstream)])
  }
  const allowed = methods.join(', ')
  const withMethod = (command: OperatorCommand, handler: RouteHandlerMethod): RouteHandlerMethod => async function (request, reply) {
    if (!(methods as string[]).includes(request.method)) {
      reply.header('allow', allowed)
      throw new MethodNotAllowedError(request.method, allowed)
    }
    const answer = await handler.call(this, request, reply) as Record<string, unknown>
    request.log.info({ upstream, command, backend: answer.backend, who: request.ip, accepted: answer.accepted ?? true, state: answer.state, admin: answer.admin, weight: answer.weight, pin: answer.pin },
      `operator: ${command} ${String(answer.backend)} of upstream "${upstream}" by ${request.ip}`)
    if (request.method === 'POST' && negotiateFormat(request.headers.accept) === 'html') {
      return await reply.redirect(backTo(request), 303)
    }
    return answer
  }
  const every = fastify.supportedMethods
  const handlers = new Map<string, RouteHandlerMethod>()
  for (const [path, [command, handler]] of commands) {
    handlers.set(path, withMethod(command, handler))
    fastify.route({ method: every, url: `${base}${path}/:backend`, handler: handlers.get(path) as RouteHandlerMethod })
  }

  // The listing: the upstream's peers, as the status page shows them to those who pass the guard.
  const listing: RouteHandlerMethod = async function (request, reply) {
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      reply.header('allow', 'GET, HEAD')
      throw new MethodNotAllowedError(request.method, 'GET, HEAD')
    }
    reply.header('cache-control', 'no-store')
    return { upstream, peers: upstreamStatus(fastify.upstreams, fastify.upstreams.get(upstream)).peers }
  }

  // The rest of the prefix, and what the router could not match as a route
  // (a :backend longer than maxParamLength): answered here, not proxied.
  const roots = unprefixed ? [...handlers.keys()] : [base]
  const rest: RouteHandlerMethod = async function (request, reply) {
    const url = request.url.split('?')[0]
    const path = url.slice(fastify.prefix.length + base.length)
    if (!unprefixed && (path === '' || path === '/')) return await listing.call(this, request, reply)
    const route = [...handlers.keys()].find(key => path.startsWith(`${key}/`))
    const backend = route === undefined ? '' : path.slice(route.length + 1)
    if (route === undefined || backend === '' || backend.includes('/')) throw new RouteNotFoundError(request.method, url)
    ;(request as { params: unknown }).params = { backend: safeDecode(backend) }
    return await (handlers.get(route) as RouteHandlerMethod).call(this, request, reply)
  }
  for (const root of roots) {
    fastify.route({ method: every, url: root === '' ? '/' : root, handler: rest })
    fastify.route({ method: every, url: `${root}/*`, handler: rest })
  }

  const paths: OperatorRoutes['paths'] = {}
  for (const [path, [command]] of commands) paths[command] = `${fastify.prefix}${base}${path}`
  fastify.upstreams.announceOperatorRoutes({ upstream, paths, method: methods.includes('POST') ? 'POST' : 'GET', access })
}

/** The operator routes of one upstream, mounted under a prefix and guarded (see SupervisordRoutesOptions). */
export const supervisordRoutes = fp(routes, {
  name: 'fastify-supervisord-routes',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-bridge'],
  encapsulate: true
})

export default supervisordCommands
