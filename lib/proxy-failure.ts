import type { FastifyRequest } from 'fastify'

/** Methods sent again to another peer after a failed attempt. */
export const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS'])
const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'ETIMEDOUT'])

/** How a failed attempt ended, from the error reply-from hands over (the cause carries the socket's code). */
export function failureOf (error: Error & { code?: string }): { timeout: boolean, reason: string } {
  const cause = error.cause as { code?: string, message?: string } | undefined
  const code = cause?.code ?? error.code ?? 'ERROR'
  const timeout = TIMEOUT_CODES.has(code) || error.code === 'FST_REPLY_FROM_GATEWAY_TIMEOUT'
  return { timeout, reason: `${code}: ${cause?.message ?? error.message}` }
}

export function hasBody (request: FastifyRequest): boolean {
  const headers = request.headers
  return headers['transfer-encoding'] !== undefined || (headers['content-length'] !== undefined && headers['content-length'] !== '0')
}
