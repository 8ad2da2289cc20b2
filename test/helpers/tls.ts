import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import type { Test } from 'tap'
import { onPath } from '../../lib/dev/supervisord-daemon.js'

// Real certificates, made per test run by the openssl command in a temp dir:
// a CA, a second CA that signed nothing the backends use, and certificates
// for 127.0.0.1 and localhost.

const run = promisify(execFile)

/**
 * For `t.test(name, { skip }, ...)`: a reason to skip when openssl is not
 * installed, except on CI (CI=true), where the tests run and fail.
 */
export const tlsSkip: string | false = onPath('openssl') || process.env.CI === 'true' ? false : 'openssl not installed (not on the PATH)'
if (tlsSkip !== false) console.log(`# skipping TLS tests: ${tlsSkip}`)

export interface Pki {
  /** The CA that signed every certificate below. */
  ca: string
  /** A CA that signed none of them. */
  otherCa: string
  /** For 127.0.0.1 and localhost, valid. */
  serverCert: string
  serverKey: string
  /** The same names and key, expired. */
  expiredCert: string
  /** A client certificate (CN=checker) and its key. */
  clientCert: string
  clientKey: string
}

async function openssl (dir: string, args: string[]): Promise<void> {
  await run('openssl', args, { cwd: dir, timeout: 30_000 })
}

/** Makes the certificates in a temp dir, removed in the test's teardown. */
export async function makePki (t: Test): Promise<Pki> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fsv-tls-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
  await openssl(dir, ['req', '-x509', ...key, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=fastify-supervisord test CA'])
  await openssl(dir, ['req', '-x509', ...key, '-keyout', 'other.key', '-out', 'other.pem', '-days', '2', '-subj', '/CN=another CA'])
  await openssl(dir, ['req', ...key, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost'])
  await openssl(dir, ['req', ...key, '-keyout', 'client.key', '-out', 'client.csr', '-subj', '/CN=checker'])
  await writeFile(path.join(dir, 'server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
  await writeFile(path.join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n')
  const sign = (csr: string, out: string, days: string, ext: string): string[] =>
    ['x509', '-req', '-in', csr, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', out, '-days', days, '-extfile', ext]
  await openssl(dir, sign('server.csr', 'server.pem', '2', 'server.ext'))
  // A negative validity: notAfter before now.
  await openssl(dir, sign('server.csr', 'expired.pem', '-1', 'server.ext'))
  await openssl(dir, sign('client.csr', 'client.pem', '2', 'client.ext'))
  const read = async (name: string): Promise<string> => await readFile(path.join(dir, name), 'utf8')
  return {
    ca: await read('ca.pem'),
    otherCa: await read('other.pem'),
    serverCert: await read('server.pem'),
    serverKey: await read('server.key'),
    expiredCert: await read('expired.pem'),
    clientCert: await read('client.pem'),
    clientKey: await read('client.key')
  }
}
