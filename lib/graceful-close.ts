import type { FastifyInstance } from 'fastify'
import { durationOption } from './options.js'

export interface GracefulCloseOptions {
  /** ms in-flight requests have to finish before their connections are cut (default 3000). */
  grace?: number
}

/**
 * Closes a Fastify server in bounded time, whatever its clients do. Fastify
 * (`forceCloseConnections: 'idle'`, `return503OnClosing`) closes the
 * connections idle at close and answers new requests 503 with
 * `Connection: close`; a keep-alive connection busy at that moment would
 * then stay open, idle, for the server's keepAliveTimeout (72 s in
 * Fastify). Here it is closed once its response is out, and whatever is
 * still open after `grace` is cut.
 */
export async function closeGracefully (app: FastifyInstance, options: GracefulCloseOptions = {}): Promise<void> {
  const grace = durationOption(options.grace, 3000, 'closeGracefully', 'grace', 0)
  const server = app.server
  // Read by Node when a response ends: the connection then closes at once instead of idling.
  server.keepAliveTimeout = 1
  const cut = setTimeout(() => server.closeAllConnections(), grace)
  cut.unref()
  try {
    await app.close()
  } finally {
    clearTimeout(cut)
  }
}
