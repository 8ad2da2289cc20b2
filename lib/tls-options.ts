import { X509Certificate } from 'node:crypto'
import net from 'node:net'
import tls from 'node:tls'
import { optionKeys, booleanOption, objectOption, optionError, showValue } from './options.js'

type Pem = string | Buffer

/** An upstream's `tls` section: how its `https://` peers are reached (proxy and health checks alike). */
export interface TlsOptions {
  /** CA certificates (PEM) that sign the peers' certificates; default Node's bundled roots. */
  ca?: Pem | Pem[]
  /** Client certificate (PEM), with `key`, for peers that ask for one. */
  cert?: Pem | Pem[]
  /** Private key (PEM) of `cert`. */
  key?: Pem | Pem[]
  /** SNI and the name the certificate must carry (default: the peer's host when it is a name). */
  servername?: string
  /** Refuse peers whose certificate does not verify (default true). */
  rejectUnauthorized?: boolean
}

/**
 * The `tls` section checked and made ready: `secureContext` is built once at
 * registration (a bad PEM or a key that does not match fails there), so no
 * connection parses certificates again. Spread into `tls.connect` options.
 */
export interface UpstreamTls {
  readonly ca?: Pem | Pem[]
  readonly cert?: Pem | Pem[]
  readonly key?: Pem | Pem[]
  readonly servername?: string
  readonly rejectUnauthorized: boolean
  readonly secureContext: tls.SecureContext
}

const TLS_OPTIONS = optionKeys<TlsOptions>()('ca', 'cert', 'key', 'servername', 'rejectUnauthorized')
const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/

function pemOption (value: unknown, where: string, name: string): Pem | Pem[] | undefined {
  if (value === undefined) return undefined
  const list = Array.isArray(value) ? value : [value]
  const valid = list.length > 0 && list.every(entry => (typeof entry === 'string' && entry !== '') || (Buffer.isBuffer(entry) && entry.length > 0))
  if (!valid) {
    throw optionError(where, `option "tls.${name}" must be a PEM string or Buffer, or a non-empty list of them, got ${typeof value === 'string' ? 'an empty string' : showValue(value)}`)
  }
  return value as Pem | Pem[]
}

const CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g

/** OpenSSL skips what is not a certificate in a CA list without a word: each entry must hold some, all readable. */
function checkCertificates (pems: Pem | Pem[], where: string): void {
  for (const pem of Array.isArray(pems) ? pems : [pems]) {
    const blocks = pem.toString('latin1').match(CERTIFICATE) ?? []
    if (blocks.length === 0) throw optionError(where, 'option "tls.ca" must hold PEM certificates (-----BEGIN CERTIFICATE-----), found none in an entry')
    for (const block of blocks) {
      try {
        // eslint-disable-next-line no-new
        new X509Certificate(block)
      } catch (error) {
        throw optionError(where, `option "tls.ca" holds a certificate that cannot be read: ${(error as Error).message}`)
      }
    }
  }
}

/** Checks an upstream's `tls` section and builds its secure context; `{}` gives Node's defaults. */
export function tlsSettings (value: unknown, where: string): UpstreamTls {
  const options = objectOption(value, where, 'tls', TLS_OPTIONS) as TlsOptions
  const ca = pemOption(options.ca, where, 'ca')
  const cert = pemOption(options.cert, where, 'cert')
  const key = pemOption(options.key, where, 'key')
  if (ca !== undefined) checkCertificates(ca, where)
  if ((cert === undefined) !== (key === undefined)) {
    throw optionError(where, 'options "tls.cert" and "tls.key" go together: give both or neither')
  }
  const servername = options.servername
  if (servername !== undefined && (typeof servername !== 'string' || !HOSTNAME.test(servername) || net.isIP(servername) !== 0)) {
    throw optionError(where, `option "tls.servername" must be a host name (SNI takes no IP address), got ${showValue(servername)}`)
  }
  const rejectUnauthorized = booleanOption(options.rejectUnauthorized, true, where, 'tls.rejectUnauthorized')
  let secureContext: tls.SecureContext
  try {
    secureContext = tls.createSecureContext({ ca, cert, key })
  } catch (error) {
    // OpenSSL's words name the part it could not read (PEM routines, key values mismatch...).
    throw optionError(where, `options "tls.ca", "tls.cert" and "tls.key" must be valid PEM, the key matching the certificate: ${(error as Error).message}`)
  }
  return { ca, cert, key, servername, rejectUnauthorized, secureContext }
}

/** The name sent as SNI and checked in the certificate: the option, or the host when it is a name (never an IP). */
export function serverName (host: string, settings: { servername?: string }): string | undefined {
  return settings.servername ?? (net.isIP(host) === 0 ? host : undefined)
}
