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
