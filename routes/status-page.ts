import vary from 'vary'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { optionKeys, numberOption, optionError, rejectUnknownOptions, showValue, stringOption } from '../lib/options.js'
import { statusSnapshot } from '../lib/status/snapshot.js'
import { statusCsv } from '../lib/status/csv.js'
import { statusHtml } from '../lib/status/html.js'
import { FORMATS, negotiateFormat, queryValue } from '../lib/status/negotiate.js'
import type { StatusFilter, StatusSnapshot } from '../lib/status/types.js'

export interface StatusPageOptions {
  /** Where the page is mounted (default '/health'). */
  path?: string
  /** Seconds between reloads of the HTML page (default 5; 0 turns it off). */
  refresh?: number
  /** Heading and window title of the HTML page (default 'fastify-supervisord status'). */
  title?: string
}

const FILTERS: readonly StatusFilter[] = ['up', 'down']
const KNOWN_OPTIONS = optionKeys<StatusPageOptions>()('path', 'refresh', 'title')

function settings (options: StatusPageOptions) {
  const where = 'status page'
  rejectUnknownOptions(options, KNOWN_OPTIONS, where)
  const path = stringOption(options.path, '/health', where, 'path')
  if (!path.startsWith('/')) throw optionError(where, `option "path" must start with "/", got ${showValue(path)}`)
  return {
    path,
    refresh: numberOption(options.refresh, 5, where, 'refresh', { min: 0, max: 86_400, integer: true }),
    title: stringOption(options.title, 'fastify-supervisord status', where, 'title')
  }
}

/**
 * The status page: HTML for browsers, JSON and CSV for machines, chosen by
 * `?format=` or the Accept header, filtered by `?status=up|down`.
 */
async function statusPagePlugin (fastify: FastifyInstance, options: StatusPageOptions): Promise<void> {
  const config = settings(options ?? {})
  fastify.get(config.path, async (request: FastifyRequest, reply: FastifyReply): Promise<StatusSnapshot | string> => {
    const query = request.query as Record<string, unknown>
    const format = queryValue(query.format, FORMATS, 'format') ?? negotiateFormat(request.headers.accept)
    const status = queryValue(query.status, FILTERS, 'status')
    const now = Date.now()
    const snapshot = statusSnapshot(fastify.upstreams, status, now)
    reply.header('cache-control', 'no-store').header('vary', vary.append(String(reply.getHeader('vary') ?? ''), 'Accept'))
    switch (format) {
      case 'json':
        reply.type('application/json; charset=utf-8')
        return snapshot
      case 'csv':
        reply.type('text/csv; charset=utf-8')
        return statusCsv(snapshot)
      case 'html':
        reply.type('text/html; charset=utf-8')
        return statusHtml(snapshot, { ...config, status, now })
    }
  })
}

export default fp(statusPagePlugin, {
  name: 'fastify-supervisord-status',
  fastify: '5.x',
  dependencies: ['fastify-supervisord-registry']
})
