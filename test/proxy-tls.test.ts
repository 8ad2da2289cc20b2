import https from 'node:https'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { gateway, listening } from './helpers/gateway.js'
import { makePki, tlsSkip, type Pki } from './helpers/tls.js'
import { wsClient } from './helpers/ws.js'

// HTTPS upstreams for the proxy, against real TLS backends with a CA the test
// makes: requests and WebSocket sessions go over TLS with the upstream's tls
// section, and a peer whose certificate does not verify is a peer failure.

interface TlsBackend { port: number, sni: Array<string | false | null>, clients: unknown[] }

async function tlsBackend (t: Test, pki: Pki, options: https.ServerOptions = {}, ws = false): Promise<TlsBackend> {
  const state: TlsBackend = { port: 0, sni: [], clients: [] }
  const server = https.createServer({ cert: pki.serverCert, key: pki.serverKey, ...options }, (req, res) => {
    const socket = req.socket as import('node:tls').TLSSocket
    state.clients.push(socket.getPeerCertificate().subject?.CN)
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ tls: socket.encrypted === true, url: req.url }))
  })
  server.on('secureConnection', socket => state.sni.push(socket.servername))
  if (ws) {
    const wss = new WebSocketServer({ server })
    wss.on('connection', socket => socket.on('message', data => socket.send(`over tls: ${String(data)}`)))
    t.teardown(() => wss.close())
  }
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  state.port = (server.address() as AddressInfo).port
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return state
}

t.test('https:// peers are proxied over TLS with the upstream\'s CA; SNI is the peer\'s name, never the client\'s Host', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  const backend = await tlsBackend(t, pki)
  const byIp = await gateway({ b: { servers: [`https://127.0.0.1:${backend.port}`], tls: { ca: pki.ca } } }, { preserveHost: true })
  t.teardown(() => byIp.close())
  const res = await byIp.inject({ url: '/secure?x=1', headers: { host: 'shop.example.com' } })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { tls: true, url: '/secure?x=1' })
  t.same(backend.sni, [false], 'an IP peer gets no SNI, though the client\'s Host was sent on')

  const byName = await gateway({ b: { servers: [`https://localhost:${backend.port}`], tls: { ca: pki.ca } } }, { preserveHost: true })
  t.teardown(() => byName.close())
  t.equal((await byName.inject({ url: '/', headers: { host: 'shop.example.com' } })).statusCode, 200)
  t.equal(backend.sni.at(-1), 'localhost', 'a named peer gets its own name as SNI')
})

t.test('a certificate that does not verify is the peer\'s failure: 502, charged, the next peer tried', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  const good = await tlsBackend(t, pki)
  const expired = await tlsBackend(t, pki, { cert: pki.expiredCert })
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['a CA that signed nothing', { ca: pki.otherCa }, `https://127.0.0.1:${good.port}`],
    ['a name the certificate does not carry', { ca: pki.ca, servername: 'elsewhere.example.com' }, `https://127.0.0.1:${good.port}`],
    ['an expired certificate', { ca: pki.ca }, `https://127.0.0.1:${expired.port}`]
  ]
  for (const [name, tls, address] of cases) {
    const app = await gateway({ b: { servers: [address], tls } })
    t.teardown(() => app.close())
    const res = await app.inject('/')
    t.equal(res.statusCode, 502, name)
    t.equal(res.json().code, 'FST_SUPERVISORD_PEER_CONNECT', name)
    t.equal(app.upstreams.get('b').peers[0].fails, 1, `${name}: charged to the peer`)
  }
  const unverified = await gateway({ b: { servers: [`https://127.0.0.1:${good.port}`], tls: { ca: pki.otherCa, rejectUnauthorized: false } } })
  t.teardown(() => unverified.close())
  t.equal((await unverified.inject('/')).statusCode, 200, 'rejectUnauthorized: false lets it through')

  const failover = await gateway({ b: { servers: [`https://127.0.0.1:${expired.port}`, `https://127.0.0.1:${good.port}`], tls: { ca: pki.ca } } })
  t.teardown(() => failover.close())
  t.equal((await failover.inject('/')).statusCode, 200, 'the GET went on to the peer whose certificate verifies')
})

t.test('a peer that asks for a client certificate gets the upstream\'s cert and key', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  const backend = await tlsBackend(t, pki, { requestCert: true, rejectUnauthorized: true, ca: pki.ca })
  const without = await gateway({ b: { servers: [`https://127.0.0.1:${backend.port}`], tls: { ca: pki.ca } } })
  t.teardown(() => without.close())
  t.equal((await without.inject('/')).statusCode, 502, 'refused without one')
  const withCert = await gateway({ b: { servers: [`https://127.0.0.1:${backend.port}`], tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey } } })
  t.teardown(() => withCert.close())
  t.equal((await withCert.inject('/')).statusCode, 200)
  t.equal(backend.clients.at(-1), 'checker', 'the peer saw the client certificate')
})

t.test('WebSocket sessions to an https:// peer go over TLS (wss) with the same settings', { skip: tlsSkip }, async t => {
  const pki = await makePki(t)
  const backend = await tlsBackend(t, pki, {}, true)
  const app = await gateway({ b: { servers: [`https://localhost:${backend.port}`], tls: { ca: pki.ca } } }, { websocket: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const client = await wsClient(t, base.replace('http', 'ws'))
  client.socket.send('hello')
  t.equal(await client.next(), 'over tls: hello')
  t.equal(backend.sni.at(-1), 'localhost')
  const untrusted = await gateway({ c: { servers: [`https://localhost:${backend.port}`], tls: { ca: pki.otherCa } } }, { websocket: true })
  t.teardown(() => untrusted.close())
  const refused = new WebSocket((await listening(untrusted)).replace('http', 'ws'))
  refused.on('error', () => {})
  const status = await new Promise<number>(resolve => refused.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0)))
  t.equal(status, 502, 'a peer whose certificate does not verify: 502 before any upgrade')
})
