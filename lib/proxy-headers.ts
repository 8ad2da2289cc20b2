/** Header fields as reply-from hands them over (undefined: removed). */
export type HeaderFields = Record<string, string | string[] | number | undefined>

/**
 * Hop-by-hop fields (RFC 9110 §7.6.1): they describe one connection, so they
 * are never passed from one side of the proxy to the other. `Upgrade` is
 * among them: an upgrade is not proxied on this path, the request is sent as
 * plain HTTP (a WebSocket proxy would take upgrade requests before they reach
 * here).
 */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'http2-settings']

function dropHopByHop (headers: HeaderFields): void {
  const connection = headers.connection
  if (typeof connection === 'string') {
    for (const name of connection.split(',')) {
      const field = name.trim().toLowerCase()
      if (field !== '' && field !== 'host') delete headers[field]
    }
  }
  for (const field of HOP_BY_HOP) delete headers[field]
}

/**
 * What is sent on to the peer, as nginx does: hop-by-hop fields dropped, and
 * `Expect` too, since the gateway's HTTP server has answered
 * `100-continue` itself (undici would refuse to send it).
 */
export function requestHeadersForPeer (headers: HeaderFields): void {
  dropHopByHop(headers)
  delete headers.expect
}

/** What is sent on to the client of a peer's response. */
export function responseHeadersForClient (headers: HeaderFields): void {
  dropHopByHop(headers)
}

/** What of the client's request the forwarded headers tell (Fastify's view: `trustProxy` decides whose X-Forwarded-* is believed). */
export interface ForwardedFrom {
  /** The address of the connection's other end (nginx's $remote_addr). */
  remoteAddress: string | undefined
  /** `http` or `https` (nginx's $scheme). */
  protocol: string
  /** The host the client asked for, without its port (nginx's $host). */
  hostname: string
  /** The port the client asked for, when it named one. */
  port: number | null
}

/**
 * nginx's usual forwarded set: `X-Forwarded-For $proxy_add_x_forwarded_for`
 * (the client's list with this hop's client appended), `-Proto $scheme`,
 * `-Host $host` and `-Port` (the port the client asked for).
 */
export function addForwarded (headers: HeaderFields, from: ForwardedFrom): void {
  const chain = headers['x-forwarded-for']
  const client = from.remoteAddress ?? ''
  const before = Array.isArray(chain) ? chain.join(', ') : chain === undefined || chain === '' ? '' : String(chain)
  headers['x-forwarded-for'] = before === '' ? client : `${before}, ${client}`
  headers['x-forwarded-proto'] = from.protocol
  headers['x-forwarded-host'] = from.hostname
  headers['x-forwarded-port'] = String(from.port ?? (from.protocol === 'https' ? 443 : 80))
}
