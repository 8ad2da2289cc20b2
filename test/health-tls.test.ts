import t, { type Test } from 'tap'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import type { TLSSocket } from 'node:tls'
import Fastify from 'fastify'
import registry from '../plugins/registry.js'
import health, { type HealthCheckOptions } from '../plugins/health.js'
import { Registry, type RegistryOptions } from '../lib/registry.js'
import { parseAddress } from '../lib/upstream.js'
import type { TlsOptions } from '../lib/tls-options.js'
import { probe } from '../lib/health-probe.js'
import { backendFor, silentServer, tcpServer } from './helpers/backends.js'
import { makePki, tlsSkip } from './helpers/tls.js'
import { until } from './helpers/wait.js'

interface TlsBackend {
  port: number
  /** Per request: the SNI the client sent (false: none), whether the TLS session was resumed. */
  requests: Array<{ servername: string | false | null, resumed: boolean, client?: string | string[] }>
  /** TLS connections accepted. */
  handshakes: number
}

/** A real HTTPS backend on 127.0.0.1 answering `ok`, closed in the teardown. */
async function tlsBackend (t: Test, options: https.ServerOptions): Promise<TlsBackend> {
  const backend: TlsBackend = { port: 0, requests: [], handshakes: 0 }
  const server = https.createServer(options, (req, res) => {
    const socket = req.socket as TLSSocket
    const peer = socket.getPeerCertificate()
    backend.requests.push({ servername: socket.servername, resumed: socket.isSessionReused(), client: peer?.subject?.CN })
    res.end('ok')
  })
  server.keepAliveTimeout = 60_000
  server.on('secureConnection', () => backend.handshakes++)
  server.on('tlsClientError', () => {})
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  backend.port = (server.address() as AddressInfo).port
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return backend
}

/** A checked upstream `api` of one server; its peer. */
async function checkedPeer (t: Test, address: string, tls: TlsOptions | undefined, healthCheck: HealthCheckOptions = {}) {
  const app = Fastify({ logger: false })
  await app.register(registry, { upstreams: { api: { servers: [address], tls, healthCheck: { interval: 20, rise: 1, fall: 1, ...healthCheck } } } })
  await app.register(health)
  t.teardown(async () => await app.close())
  await app.ready()
  return app.upstreams.get('api').peers[0]
}

const build = (upstreams: unknown) => () => new Registry({ upstreams } as RegistryOptions)

t.test('https:// addresses: scheme, origin and default ports', async t => {
  t.same(parseAddress('https://127.0.0.1:8443', 'x'), { scheme: 'https', host: '127.0.0.1', port: 8443 })
  t.same(parseAddress('https://localhost/', 'x'), { scheme: 'https', host: 'localhost', port: 443 })
  t.same(parseAddress('HTTPS://[::1]:443', 'x'), { scheme: 'https', host: '::1', port: 443 })
  t.same(parseAddress('http://localhost', 'x'), { scheme: 'http', host: 'localhost', port: 80 })
  t.same(parseAddress('127.0.0.1:80', 'x'), { scheme: 'http', host: '127.0.0.1', port: 80 })
  const r = new Registry({ upstreams: { a: { servers: ['https://localhost:8443', '127.0.0.1:8000'] } } })
  const [secure, plain] = r.get('a').peers
  t.same([secure.scheme, secure.origin, secure.address], ['https', 'https://localhost:8443', 'localhost:8443'])
  t.same([plain.scheme, plain.origin], ['http', 'http://127.0.0.1:8000'])
  t.equal(r.get('a').tls?.rejectUnauthorized, true, 'an https upstream gets the defaults: verified against Node\'s roots')
  t.ok(r.get('a').tls?.secureContext, 'with its secure context made once')
  t.equal(new Registry({ upstreams: { a: { servers: ['127.0.0.1:1'] } } }).get('a').tls, undefined, 'none without https servers')
  for (const address of ['https://127.0.0.1:8443/path', 'https://user:pw@127.0.0.1:8443', 'https://127.0.0.1:8443?x=1', 'https://127.0.0.1:8443#top', 'https://:1']) {
    t.throws(build({ api: { servers: [address] } }), /server 0: option "address" must be host:port, http:\/\/host:port or https:\/\/host:port \(no path\)/, address)
  }
  t.throws(build({ api: { servers: ['ftp://127.0.0.1:21'] } }), /server 0: option "address" must be host:port/)
})

t.test('the tls option is checked at registration', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  const servers = ['https://127.0.0.1:8443']
  const cases: Array<[unknown, RegExp]> = [
    ['yes', /upstream "api": option "tls" must be an object/],
    [{ rejectUnauthorised: false }, /upstream "api": unknown option "tls.rejectUnauthorised" \(known: ca, cert, key, servername, rejectUnauthorized\)/],
    [{ ca: '' }, /option "tls.ca" must be a PEM string or Buffer/],
    [{ ca: [] }, /option "tls.ca" must be a PEM string or Buffer/],
    [{ ca: 42 }, /option "tls.ca" must be a PEM string or Buffer, or a non-empty list of them, got 42/],
    [{ ca: 'not a certificate' }, /option "tls.ca" must hold PEM certificates/],
    [{ ca: '-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----' }, /option "tls.ca" holds a certificate that cannot be read/],
    [{ cert: pki.clientCert }, /options "tls.cert" and "tls.key" go together/],
    [{ key: pki.clientKey }, /options "tls.cert" and "tls.key" go together/],
    [{ cert: pki.clientCert, key: pki.serverKey }, /options "tls.ca", "tls.cert" and "tls.key" must be valid PEM, the key matching the certificate: .*key values mismatch/],
    [{ cert: 'garbage', key: 'garbage' }, /must be valid PEM/],
    [{ servername: '127.0.0.1' }, /option "tls.servername" must be a host name \(SNI takes no IP address\), got "127.0.0.1"/],
    [{ servername: 'bad name' }, /option "tls.servername" must be a host name/],
    [{ servername: 7 }, /option "tls.servername"/],
    [{ rejectUnauthorized: 'no' }, /option "tls.rejectUnauthorized" must be true or false/]
  ]
  for (const [tls, message] of cases) t.throws(build({ api: { servers, tls } }), message, JSON.stringify(tls).slice(0, 60))
  t.throws(build({ api: { servers: ['127.0.0.1:8000'], tls: {} } }), /upstream "api": option "tls" is only read for https:\/\/ servers \(none is\)/)
  const ok = new Registry({ upstreams: { api: { servers, tls: { ca: [pki.ca, Buffer.from(pki.otherCa)], cert: pki.clientCert, key: pki.clientKey, servername: 'localhost', rejectUnauthorized: false } } } })
  t.match(ok.get('api').tls, { servername: 'localhost', rejectUnauthorized: false })
})

t.test('checks over TLS: verified with the CA given, SNI from the host name or the option', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  // A backend per peer: each sees only its own peer's checks.
  const backends = await Promise.all([0, 1, 2].map(async () => await tlsBackend(t, { key: pki.serverKey, cert: pki.serverCert })))
  const byIp = await checkedPeer(t, `https://127.0.0.1:${backends[0].port}`, { ca: pki.ca })
  t.ok(await until(() => byIp.health === 'healthy'), 'healthy over TLS')
  t.equal(byIp.lastCheck?.reason, 'OK')
  t.same([...new Set(backends[0].requests.map(request => request.servername))], [false], 'no SNI for an IP address')
  const byName = await checkedPeer(t, `https://localhost:${backends[1].port}`, { ca: pki.ca })
  t.ok(await until(() => byName.health === 'healthy'), 'healthy by name')
  t.same([...new Set(backends[1].requests.map(request => request.servername))], ['localhost'], 'SNI: the host name')
  const named = await checkedPeer(t, `https://127.0.0.1:${backends[2].port}`, { ca: pki.ca, servername: 'localhost' })
  t.ok(await until(() => named.health === 'healthy'), 'healthy with servername')
  t.same([...new Set(backends[2].requests.map(request => request.servername))], ['localhost'], 'SNI: the servername option')
})

t.test('a TLS failure reads as one: wrong CA, expired, wrong name, not TLS at all', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  const valid = await tlsBackend(t, { key: pki.serverKey, cert: pki.serverCert })
  const expired = await tlsBackend(t, { key: pki.serverKey, cert: pki.expiredCert })
  const plain = await backendFor(t, (_req, res) => res.end('ok'))
  const cases: Array<[string, number, TlsOptions | undefined, string | RegExp]> = [
    ['wrong CA', valid.port, { ca: pki.otherCa }, 'tls error UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ['Node\'s roots only', valid.port, undefined, 'tls error UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ['expired', expired.port, { ca: pki.ca }, 'tls error CERT_HAS_EXPIRED'],
    ['another name', valid.port, { ca: pki.ca, servername: 'example.com' }, 'tls error ERR_TLS_CERT_ALTNAME_INVALID'],
    ['a plain HTTP backend', plain.port, { ca: pki.ca }, /^tls error ERR_SSL_/]
  ]
  for (const [what, port, tls, reason] of cases) {
    const peer = await checkedPeer(t, `https://127.0.0.1:${port}`, tls)
    t.ok(await until(() => peer.health === 'unhealthy'), `${what}: unhealthy`)
    t.match(peer.lastCheck?.reason, reason, what)
  }
  t.equal(valid.requests.length + expired.requests.length + plain.hits, 0, 'no request was sent over an unverified connection')

  const trusting = await checkedPeer(t, `https://127.0.0.1:${valid.port}`, { ca: pki.otherCa, rejectUnauthorized: false })
  t.ok(await until(() => trusting.health === 'healthy'), 'rejectUnauthorized false: the wrong CA passes')
  const expiredTrusted = await checkedPeer(t, `https://127.0.0.1:${expired.port}`, { rejectUnauthorized: false })
  t.ok(await until(() => expiredTrusted.health === 'healthy'), 'rejectUnauthorized false: the expired certificate passes')

  const silent = await silentServer(t)
  const hanging = await checkedPeer(t, `https://127.0.0.1:${silent.port}`, { ca: pki.ca }, { timeout: 100 })
  t.ok(await until(() => hanging.health === 'unhealthy'), 'a handshake that never ends')
  t.equal(hanging.lastCheck?.reason, 'timed out')
  const hangUp = await tcpServer(t, socket => socket.end())
  const closing = await checkedPeer(t, `https://127.0.0.1:${hangUp.port}`, { ca: pki.ca })
  t.ok(await until(() => closing.health === 'unhealthy'), 'a close during the handshake')
  t.match(closing.lastCheck?.reason, /^tls error /)
})

t.test('client certificates: cert and key are sent to a backend that asks', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  const backend = await tlsBackend(t, { key: pki.serverKey, cert: pki.serverCert, ca: pki.ca, requestCert: true, rejectUnauthorized: true })
  const withCert = await checkedPeer(t, `https://127.0.0.1:${backend.port}`, { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey })
  t.ok(await until(() => withCert.health === 'healthy'), 'healthy with the client certificate')
  t.equal(backend.requests[0].client, 'checker')
  const without = await checkedPeer(t, `https://127.0.0.1:${backend.port}`, { ca: pki.ca })
  t.ok(await until(() => without.health === 'unhealthy'), 'refused without one')
  t.match(without.lastCheck?.reason, /^tls error /, 'a TLS alert after the handshake is a tls error too')
})

t.test('keep-alive over TLS: one handshake for many checks; without it, sessions are resumed', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  const kept = await tlsBackend(t, { key: pki.serverKey, cert: pki.serverCert })
  const peer = await checkedPeer(t, `https://127.0.0.1:${kept.port}`, { ca: pki.ca }, { interval: 5, keepAlive: true })
  t.ok(await until(() => peer.checks.length >= 10), 'ten checks')
  t.ok(peer.checks.every(check => check.ok))
  t.equal(kept.handshakes, 1, 'one TLS connection')

  const fresh = await tlsBackend(t, { key: pki.serverKey, cert: pki.serverCert })
  const other = await checkedPeer(t, `https://127.0.0.1:${fresh.port}`, { ca: pki.ca }, { interval: 5 })
  t.ok(await until(() => other.checks.length >= 5), 'five checks')
  t.ok(fresh.handshakes >= 5, 'a connection per check')
  t.ok(fresh.requests.slice(1).some(request => request.resumed), 'later handshakes resume the TLS session')
})

t.test('a tcp check of an https peer only connects; the standalone probe takes tls too', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  let received = 0
  const server = await tcpServer(t, socket => socket.on('data', data => { received += data.length }))
  const peer = await checkedPeer(t, `https://127.0.0.1:${server.port}`, { ca: pki.ca }, { type: 'tcp' })
  t.ok(await until(() => peer.health === 'healthy'), 'healthy')
  t.ok(await until(() => server.open.size === 0, 2000))
  t.equal(received, 0, 'not even a ClientHello')

  const backend = await tlsBackend(t, { key: pki.serverKey, cert: pki.serverCert })
  t.equal((await probe({ host: '127.0.0.1', port: backend.port, tls: { ca: pki.ca } })).reason, 'OK')
  t.equal((await probe({ host: '127.0.0.1', port: backend.port, tls: {} })).reason, 'tls error UNABLE_TO_VERIFY_LEAF_SIGNATURE')
})
