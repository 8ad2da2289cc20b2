import { Agent, buildConnector } from 'undici'
import type { ProxySettings } from './proxy-options.js'
import { serverName, type UpstreamTls } from './tls-options.js'

/**
 * The undici agent a proxy sends an upstream's attempts on. The attempts keep
 * their own timers; undici's are a backstop for the connect only. With the
 * upstream's `tls` section (its `https://` peers), connections are made with
 * its CA, client certificate and verification, and SNI is the section's
 * `servername` or the peer's host when it is a name: never the client's Host
 * (which `preserveHost` sends on, and undici would otherwise take for SNI).
 */
export function proxyAgent (settings: ProxySettings, tls?: UpstreamTls): Agent {
  const connect = tls === undefined
    ? { timeout: settings.connectTimeout }
    : tlsConnector(settings.connectTimeout, tls)
  return new Agent({
    connect,
    headersTimeout: 0,
    bodyTimeout: 0,
    keepAliveTimeout: settings.keepAliveTimeout,
    connections: settings.connections ?? null,
    pipelining: 1
  })
}

function tlsConnector (timeout: number, tls: UpstreamTls): buildConnector.connector {
  const { ca, cert, key, rejectUnauthorized, secureContext } = tls
  const base = buildConnector({ timeout, ca, cert, key, rejectUnauthorized, secureContext } as buildConnector.BuildOptions)
  // undici gives an IPv6 host in its URL brackets.
  return (options, callback) => base({ ...options, servername: serverName(options.hostname.replace(/^\[(.*)\]$/, '$1'), tls) }, callback)
}

/** What the `ws` client of a WebSocket session to an `https://` peer is given: the same CA, certificate, verification and SNI. */
export function wsTlsOptions (host: string, tls: UpstreamTls | undefined): Record<string, unknown> {
  if (tls === undefined) return {}
  const { ca, cert, key, rejectUnauthorized, secureContext } = tls
  // ws sends the host as SNI unless `servername` is given ('' for none, as for an IP).
  return { ca, cert, key, rejectUnauthorized, secureContext, servername: serverName(host, tls) ?? '' }
}
