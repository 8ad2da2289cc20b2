import vary from 'vary'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { optionKeys, numberOption, oneOfOption, optionError, rejectUnknownOptions, showValue, stringOption } from '../lib/options.js'
import { Access, type AccessOptions, type Refusal } from '../lib/guard.js'
import { statusSnapshot } from '../lib/status/snapshot.js'
import { statusCsv } from '../lib/status/csv.js'
import { escapeHtml, statusHtml, type PeerForms } from '../lib/status/html.js'
import { readiness } from '../lib/status/readiness.js'
import { FORMATS, negotiateFormat, queryValue } from '../lib/status/negotiate.js'
import type { StatusFilter, StatusSnapshot } from '../lib/status/types.js'

export interface StatusPageOptions extends AccessOptions {
  /** Where the page is mounted (default '/health'). */
  path?: string
  /** Seconds between reloads of the HTML page (default 5; 0 turns it off). */
  refresh?: number
  /** Heading and window title of the HTML page (default 'fastify-supervisord status'). */
  title?: string
  /**
   * What a viewer who does not pass the guard (`allow`, `token`) gets:
   * `redacted` (default) the page without addresses, program names, pids
   * and supervisord's address; `full` everything; `forbidden` 403.
   */
  others?: 'redacted' | 'full' | 'forbidden'
  /**
   * The readiness probe: `true` (default) answers `<path>?ready`, a path
   * answers there too, `false` turns it off. 200 when every upstream has a
   * routable peer or one it can start, 503 otherwise; answered to anyone.
   */
  readiness?: boolean | string
}

const FILTERS: readonly StatusFilter[] = ['up', 'down']
const KNOWN_OPTIONS = optionKeys<StatusPageOptions>()('path', 'refresh', 'title', 'allow', 'token', 'others', 'readiness')
/** The realm a browser is asked for the token in (HTTP Basic: any user name, the token as password). */
const REALM = 'fastify-supervisord'

function pathOption (value: unknown, fallback: string, where: string, name: string): string {
  const path = stringOption(value, fallback, where, name)
  if (!path.startsWith('/')) throw optionError(where, `option "${name}" must start with "/", got ${showValue(path)}`)
  return path
}

function settings (options: StatusPageOptions) {
  const where = 'status page'
  rejectUnknownOptions(options, KNOWN_OPTIONS, where)
  const path = pathOption(options.path, '/health', where, 'path')
  const ready = options.readiness ?? true
  if (typeof ready !== 'boolean' && typeof ready !== 'string') {
    throw optionError(where, `option "readiness" must be true, false or a path, got ${showValue(ready)}`)
  }
  return {
    path,
    refresh: numberOption(options.refresh, 5, where, 'refresh', { min: 0, max: 86_400, integer: true }),
    title: stringOption(options.title, 'fastify-supervisord status', where, 'title'),
    access: new Access(options, where, 'see the status page'),
    others: oneOfOption(options.others, 'redacted', ['redacted', 'full', 'forbidden'], where, 'others'),
    readiness: ready !== false,
    readinessPath: typeof ready === 'string' ? pathOption(ready, '', where, 'readiness') : undefined
  }
}

/**
 * The status page: HTML for browsers, JSON and CSV for machines, chosen by
 * `?format=` or the Accept header, filtered by `?status=up|down`; the
 * readiness probe (`?ready`); and, for viewers who pass the operator
 * routes' guard, forms that post to those routes.
 */
async function statusPagePlugin (fastify: FastifyInstance, options: StatusPageOptions): Promise<void> {
  const config = settings(options ?? {})
  const registry = fastify.upstreams

  const ready = async (_request: FastifyRequest, reply: FastifyReply) => {
    const now = Date.now()
    const upstreams = [...registry.upstreams.values()].map(upstream => ({ name: upstream.name, ...readiness(upstream, now) }))
    const allReady = upstreams.every(upstream => upstream.ready)
    reply.code(allReady ? 200 : 503).header('cache-control', 'no-store')
    return { ready: allReady, upstreams }
  }

  /** Tokens this viewer lacks, among the page's and the operator routes' guards it otherwise passes: what signing in would give. */
  const wouldSignIn = (request: FastifyRequest, refusal: Refusal | undefined): boolean => {
    if (refusal === 'token') return true
    for (const upstream of registry.upstreams.keys()) {
      if (registry.operatorRoutes(upstream)?.access.check(request) === 'token') return true
    }
    return false
  }

  fastify.get(config.path, async (request: FastifyRequest, reply: FastifyReply): Promise<StatusSnapshot | string | object> => {
    const query = request.query as Record<string, unknown>
    if (config.readiness && query.ready !== undefined) return await ready(request, reply)
    const refusal = config.access.check(request)
    if (query.login !== undefined) return signIn(request, reply, refusal)
    if (refusal !== undefined && config.others === 'forbidden') throw config.access.refusal(request, refusal)
    const format = queryValue(query.format, FORMATS, 'format') ?? negotiateFormat(request.headers.accept)
    const status = queryValue(query.status, FILTERS, 'status')
    const now = Date.now()
    const snapshot = statusSnapshot(registry, { status, now, redact: refusal !== undefined && config.others === 'redacted' })
    reply.header('cache-control', 'no-store').header('vary', vary.append(String(reply.getHeader('vary') ?? ''), 'Accept, Authorization'))
    switch (format) {
      case 'json':
        reply.type('application/json; charset=utf-8')
        return snapshot
      case 'csv':
        reply.type('text/csv; charset=utf-8')
        return statusCsv(snapshot)
      case 'html': {
        reply.type('text/html; charset=utf-8')
        const forms = new Map<string, PeerForms>()
        for (const upstream of registry.upstreams.keys()) {
          const routes = registry.operatorRoutes(upstream)
          if (routes !== undefined && routes.access.check(request) === undefined) forms.set(upstream, routes)
        }
        const back = request.url.split('?')[0] + (status === undefined ? '' : `?status=${status}`)
        return statusHtml(snapshot, { ...config, status, now, forms, back, signIn: wouldSignIn(request, refusal) ? `${config.path}?login` : undefined })
      }
    }
  })

  /**
   * `?login`: asks the browser for the token (HTTP Basic, the token as the
   * password), then sends it back to the page; the browser then sends it
   * with every request to this site, the forms' posts included.
   */
  function signIn (request: FastifyRequest, reply: FastifyReply, refusal: Refusal | undefined): string | FastifyReply {
    if (wouldSignIn(request, refusal)) {
      reply.code(401).header('www-authenticate', `Basic realm="${REALM}", charset="UTF-8"`).header('cache-control', 'no-store').type('text/html; charset=utf-8')
      return `<!doctype html><meta charset="utf-8"><title>Sign in</title><p>Enter any user name and the token as the password. <a href="${escapeHtml(config.path)}">Back to the status page</a></p>\n`
    }
    return reply.redirect(config.path, 303)
  }

  if (config.readinessPath !== undefined) fastify.get(config.readinessPath, ready)
}

export default fp(statusPagePlugin, {
  name: 'fastify-supervisord-status',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry']
})
