import { createHash } from 'node:crypto'
import net from 'node:net'
import t from 'tap'
import WebSocket from 'ws'
import { freePort, silentServer, tcpServer } from './helpers/backends.js'
import { gateway, listening, loggerInto, onDemandGateway } from './helpers/gateway.js'
import { handshake, wsBackendFor, wsBackendProcess, wsClient } from './helpers/ws.js'
import { until } from './helpers/wait.js'
import { closeReason, safeClose } from '../lib/ws-proxy.js'

// WebSocket proxying against real ws backends: each upgrade is balanced like
// a request and holds its peer's in-flight slot for the session's life.

function wsUrl (base: string, path = '/'): string {
  return base.replace(/^http/, 'ws') + path
}

t.test('each upgrade is balanced; the session holds its in-flight slot for its life; messages, binary frames and subprotocols pass', async t => {
  const backends = [await wsBackendFor(t, 0), await wsBackendFor(t, 1)]
  const app = await gateway({ b: { servers: backends.map(b => b.address) } }, { websocket: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const peers = app.upstreams.get('b').peers
  const clients: Array<Awaited<ReturnType<typeof wsClient>>> = []
  for (let i = 0; i < 4; i++) {
    const client = await wsClient(t, wsUrl(base, `/room/${i}?q=${i}`), ['chat', 'superchat'])
    clients.push(client)
    t.match(JSON.parse(await client.next()), { backend: i % 2, url: `/room/${i}?q=${i}` }, `upgrade ${i}: round-robin, path and query passed on`)
    t.equal(client.socket.protocol, 'chat', 'the peer\'s choice of subprotocol reaches the client')
  }
  t.same(peers.map(p => p.inflight), [2, 2], 'two open sessions per peer count as in flight')
  clients[0].socket.send(Buffer.from([1, 2, 3]), { binary: true })
  const echoed = await new Promise<[Buffer, boolean]>(resolve => clients[0].socket.once('message', (data, isBinary) => resolve([data as Buffer, isBinary])))
  t.same([[...echoed[0]], echoed[1]], [[1, 2, 3], true], 'a binary frame comes back binary')
  clients[1].socket.close(4001, 'done here')
  t.equal((backends[1].requests[0].headers['sec-websocket-protocol']), 'chat,superchat', 'every subprotocol the client offered reached the peer')
  t.ok(await until(() => peers[1].inflight === 1), 'a closed session gives its slot back')
  for (const client of clients) client.socket.close()
  t.ok(await until(() => peers[0].inflight === 0 && peers[1].inflight === 0), 'all back to 0')
})

t.test('fair balancing sees open sessions: new upgrades go to the peer with fewer', async t => {
  const backends = [await wsBackendFor(t, 0), await wsBackendFor(t, 1)]
  const app = await gateway({ b: { servers: backends.map(b => b.address), balancer: 'fair' } }, { websocket: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const first = await wsClient(t, wsUrl(base))
  const firstPeer = JSON.parse(await first.next()).backend
  const seen = []
  for (let i = 0; i < 3; i++) {
    const client = await wsClient(t, wsUrl(base))
    seen.push(JSON.parse(await client.next()).backend)
    client.socket.close()
    await until(() => app.upstreams.get('b').peers[1 - firstPeer].inflight === 0)
  }
  t.same(seen, [1 - firstPeer, 1 - firstPeer, 1 - firstPeer], 'the peer holding a session is passed by while the other is idle')
})

t.test('a peer that refuses is charged and the next one tried before the client gets its 101; none left: 502 over HTTP', async t => {
  const dead = await freePort()
  const live = await wsBackendFor(t, 1)
  const app = await gateway({ b: { servers: [`127.0.0.1:${dead}`, live.address] } }, { websocket: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const client = await wsClient(t, wsUrl(base))
  t.match(JSON.parse(await client.next()), { backend: 1 }, 'answered by the live peer')
  const [refusing] = app.upstreams.get('b').peers
  t.match(refusing, { fails: 1, passive: 'failed' }, 'the refusing peer is charged')

  const alone = await gateway({ c: { servers: [`127.0.0.1:${dead}`] } }, { websocket: true })
  t.teardown(() => alone.close())
  const refused = await handshake(wsUrl(await listening(alone)))
  t.not(refused, 'open')
  t.equal((refused as { status: number }).status, 502, 'no peer could take it: the client is answered 502 before any upgrade')
  t.match(JSON.parse((refused as { body: string }).body), { code: 'FST_SUPERVISORD_PEER_CONNECT' })
})

t.test('a peer that answers the handshake over plain HTTP: a nextUpstream status goes to the next peer, another answer to the client', async t => {
  const busy = await tcpServer(t, socket => socket.once('data', () => socket.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy')))
  const forbidden = await tcpServer(t, socket => socket.once('data', () => socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nX-Why: token\r\nConnection: close\r\n\r\nno')))
  const live = await wsBackendFor(t, 2)
  const app = await gateway({ b: { servers: [`127.0.0.1:${busy.port}`, live.address] } }, { websocket: true, nextUpstream: ['error', 'timeout', 'http_503'] })
  t.teardown(() => app.close())
  const client = await wsClient(t, wsUrl(await listening(app)))
  t.match(JSON.parse(await client.next()), { backend: 2 }, 'the 503 was not shown: the next peer took the session')
  t.equal(app.upstreams.get('b').peers[0].fails, 1, 'the 503 counts against its peer')

  const passOn = await gateway({ c: { servers: [`127.0.0.1:${forbidden.port}`, live.address] } }, { websocket: true })
  t.teardown(() => passOn.close())
  t.same(await handshake(wsUrl(await listening(passOn))), { status: 403, body: 'no' }, 'the peer\'s own refusal reaches the client as it is')
  t.equal(passOn.upstreams.get('c').peers[0].fails, 0, 'and is not its failure')
})

t.test('a handshake is held while a peer is started, and sent once it is up', async t => {
  const backend = await wsBackendFor(t, 0)
  const { app, upstream, base, demands } = await onDemandGateway(t, [{ address: backend.address, down: true }], { websocket: true })
  app.upstreams.on('demand', () => {
    upstream.peers[0].setProcess('starting')
    setTimeout(() => upstream.peers[0].setProcess('up'), 150)
  })
  const started = Date.now()
  const client = await wsClient(t, wsUrl(base))
  t.ok(Date.now() - started >= 140, 'the client waited for the start')
  t.match(JSON.parse(await client.next()), { backend: 0 })
  t.equal(demands(), 1)
  t.equal(upstream.peers[0].inflight, 1)
})

t.test('maxConns counts sessions: an upgrade beyond the cap waits in the queue until a session ends', async t => {
  const backend = await wsBackendFor(t, 0)
  const app = await gateway({ b: { servers: [{ address: backend.address, maxConns: 1 }] } }, { websocket: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const first = await wsClient(t, wsUrl(base))
  await first.next()
  let secondOpen = false
  const second = wsClient(t, wsUrl(base)).then(client => { secondOpen = true; return client })
  t.notOk(await until(() => secondOpen, 300), 'the second waits while the first holds the only slot')
  t.equal(backend.connections, 1, 'and never reached the peer')
  first.socket.close()
  const client = await second
  t.match(JSON.parse(await client.next()), { backend: 0 }, 'it goes through once the first ends')
})

t.test('a drained peer\'s sessions are closed with 1012 after wsDrainTimeout; back in rotation first, they stay', async t => {
  const backends = [await wsBackendFor(t, 0), await wsBackendFor(t, 1)]
  const app = await gateway({ b: { servers: backends.map(b => b.address) } }, { websocket: true, wsDrainTimeout: 200 })
  t.teardown(() => app.close())
  const base = await listening(app)
  const peers = app.upstreams.get('b').peers
  const onPeer0 = await wsClient(t, wsUrl(base))
  t.match(JSON.parse(await onPeer0.next()), { backend: 0 })
  const onPeer1 = await wsClient(t, wsUrl(base))
  await onPeer1.next()

  app.upstreams.setAdmin('b', 0, 'drain')
  await new Promise(resolve => setTimeout(resolve, 50))
  app.upstreams.setAdmin('b', 0, 'ready')
  t.notOk(await until(async () => onPeer0.socket.readyState !== WebSocket.OPEN, 400), 'taken back before the timeout: the session stays')

  const started = Date.now()
  app.upstreams.setAdmin('b', 0, 'drain')
  const { code } = await onPeer0.closed
  t.equal(code, 1012, 'closed with 1012 (service restart)')
  t.ok(Date.now() - started >= 180, 'after the drain timeout')
  t.ok(await until(() => peers[0].inflight === 0), 'its slot is back: the drain can finish')
  t.equal(onPeer1.socket.readyState, WebSocket.OPEN, 'the other peer\'s session is untouched')
  t.ok(await until(() => backends[0].open.size === 0), 'the peer side is closed too')
})

t.test('a backend process killed mid-session: the client gets 1014, the peer is charged, new sessions go to the live peer', async t => {
  const doomed = await wsBackendProcess(t, 0)
  const live = await wsBackendFor(t, 1)
  const app = await gateway({ b: { servers: [doomed.address, live.address] } }, { websocket: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const client = await wsClient(t, wsUrl(base))
  t.match(JSON.parse(await client.next()), { backend: 0 })
  client.socket.send('still there?')
  t.equal(await client.next(), 'still there?')
  doomed.child.kill('SIGKILL')
  const { code, reason } = await client.closed
  t.same({ code, reason }, { code: 1014, reason: 'bad gateway' }, 'a clean close code, not a dropped connection')
  const [peer] = app.upstreams.get('b').peers
  t.match(peer, { fails: 1, inflight: 0 }, 'charged to the peer that died, its slot given back')
  const next = await wsClient(t, wsUrl(base))
  t.match(JSON.parse(await next.next()), { backend: 1 })
})

t.test('close codes and reasons pass both ways; a 123-byte reason of multi-byte characters arrives whole', async t => {
  const reason = 'é'.repeat(61) + 'x'
  t.equal(Buffer.byteLength(reason), 123)
  const backend = await wsBackendFor(t, 0, socket => socket.on('message', data => {
    if (String(data) === 'bye') socket.close(4321, reason)
  }))
  const app = await gateway({ b: { servers: [backend.address] } }, { websocket: true })
  t.teardown(() => app.close())
  const base = await listening(app)
  const client = await wsClient(t, wsUrl(base))
  client.socket.send('bye')
  t.same(await client.closed, { code: 4321, reason }, 'the peer\'s code and reason')

  const seen: Array<[number, string]> = []
  const listening2 = await wsBackendFor(t, 1, socket => socket.on('close', (code, why) => seen.push([code, String(why)])))
  const other = await gateway({ c: { servers: [listening2.address] } }, { websocket: true })
  t.teardown(() => other.close())
  const second = await wsClient(t, wsUrl(await listening(other)))
  second.socket.close(4000, 'client done')
  t.ok(await until(() => seen.length === 1), 'the peer saw the close')
  t.same(seen[0], [4000, 'client done'], 'the client\'s code and reason')
})

t.test('no close reason can throw: it is cut at 123 bytes on a character boundary, codes ws may not send become 1011', async t => {
  t.equal(closeReason('a'.repeat(200)).length, 123)
  const cut = closeReason('€'.repeat(60))
  t.equal(cut.length, 123, '41 three-byte characters')
  t.equal(cut.toString(), '€'.repeat(41), 'no character split')
  t.equal(closeReason('é'.repeat(70)).toString(), 'é'.repeat(61), 'a two-byte character that would straddle byte 123 is left out')
  const backend = await wsBackendFor(t, 0, () => {})
  const app = await gateway({ b: { servers: [backend.address] } }, { websocket: true })
  t.teardown(() => app.close())
  const client = await wsClient(t, wsUrl(await listening(app)))
  const [peerSide] = [...backend.open]
  const seen = new Promise<[number, string]>(resolve => client.socket.once('close', (code, why) => resolve([code, String(why)])))
  t.doesNotThrow(() => safeClose(peerSide, 1006, 'x'.repeat(500)), 'a reserved code and a 500-byte reason do not throw')
  const [code, why] = await seen
  t.equal(code, 1011, 'the client sees 1011: 1006 may not be sent')
  t.equal(Buffer.byteLength(why), 123, 'with the reason cut to fit')
})

t.test('a backend that sends garbage after its handshake: the client gets 1014, the peer is charged, the gateway lives on', async t => {
  const garbage = await tcpServer(t, socket => socket.once('data', (head: Buffer) => {
    const key = /sec-websocket-key: (.+)\r\n/i.exec(String(head))?.[1] ?? ''
    const accept = createAccept(key)
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`)
    // An unmasked frame with reserved bits set and a bad opcode, then noise.
    setTimeout(() => socket.write(Buffer.from([0xff, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])), 50)
  }))
  const lines: Array<Record<string, unknown>> = []
  const app = await gateway({ b: { servers: [`127.0.0.1:${garbage.port}`] } }, { websocket: true }, { logger: loggerInto(lines, 'warn') })
  t.teardown(() => app.close())
  const base = await listening(app)
  const client = await wsClient(t, wsUrl(base))
  t.equal((await client.closed).code, 1014)
  t.equal(app.upstreams.get('b').peers[0].fails, 1)
  t.match(lines.find(line => line.msg === 'proxy: peer failed'), { kind: 'response' }, 'logged as a bad response of the peer')
  t.equal((await handshake(wsUrl(base, '/again'))) === 'open', true, 'the gateway still takes upgrades')
})

t.test('an upgrade runs the route\'s hooks first: one refused by onRequest never reaches a peer', async t => {
  const backend = await wsBackendFor(t, 0)
  const app = await gateway({ b: { servers: [backend.address] } }, {
    websocket: true,
    onRequest: async (request, reply) => {
      if (request.headers.authorization !== 'Bearer ok') await reply.code(401).send({ error: 'no' })
    }
  })
  t.teardown(() => app.close())
  const base = await listening(app)
  t.same(await handshake(wsUrl(base)), { status: 401, body: '{"error":"no"}' })
  t.equal(backend.connections, 0)
  t.equal(await handshake(wsUrl(base), { headers: { authorization: 'Bearer ok' } }), 'open')
  t.ok(await until(() => backend.connections === 1))
})

t.test('a bad handshake is 400 and reaches no peer; a plain request with Upgrade: h2c is proxied as HTTP', async t => {
  const backend = await wsBackendFor(t, 0)
  const app = await gateway({ b: { servers: [backend.address] } }, { websocket: true })
  t.teardown(() => app.close())
  const port = Number(new URL(await listening(app)).port)
  const bad = await raw(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n')
  t.match(bad, /^HTTP\/1\.1 400/)
  const handshake = 'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
  const badProtocol = await raw(port, `${handshake}Sec-WebSocket-Protocol: chat, not a token\r\n\r\n`)
  t.match(badProtocol, /^HTTP\/1\.1 400/, 'a subprotocol that is not a token: the client\'s bad handshake, not a 500')
  t.equal(backend.connections, 0)
  t.same(app.upstreams.get('b').peers.map(peer => [peer.inflight, peer.fails]), [[0, 0]], 'no slot taken, nothing charged')
  const h2c = await raw(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n')
  t.match(h2c, /^HTTP\/1\.1 426/, 'answered by the backend over plain HTTP, its Upgrade header dropped')
})

t.test('closing the gateway closes every session with 1001, in bounded time', async t => {
  const backend = await wsBackendFor(t, 0)
  const app = await gateway({ b: { servers: [backend.address] } }, { websocket: true })
  const base = await listening(app)
  const clients = await Promise.all([0, 1, 2].map(async () => await wsClient(t, wsUrl(base))))
  const started = Date.now()
  await app.close()
  t.ok(Date.now() - started < 5000, 'closed without waiting on the sessions')
  for (const client of clients) t.equal((await client.closed).code, 1001)
  t.equal(app.upstreams.get('b').peers[0].inflight, 0)
})

function createAccept (key: string): string {
  return createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64')
}

async function raw (port: number, text: string): Promise<string> {
  return await new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(text))
    let answer = ''
    socket.on('data', chunk => { answer += String(chunk) })
    socket.on('error', () => {})
    socket.on('close', () => resolve(answer))
    setTimeout(() => socket.destroy(), 3000).unref()
  })
}

t.test('a peer silent on the handshake: headersTimeout answers 504 and the peer is charged; a client leaving mid-handshake closes the peer side', async t => {
  const silent = await silentServer(t)
  const app = await gateway({ b: { servers: [`127.0.0.1:${silent.port}`] } }, { websocket: true, headersTimeout: 300 })
  t.teardown(() => app.close())
  const base = await listening(app)
  const started = Date.now()
  const answer = await handshake(wsUrl(base))
  t.match(answer, { status: 504 })
  t.ok(Date.now() - started < 2000, 'timed by the proxy\'s own timer')
  t.equal(app.upstreams.get('b').peers[0].fails, 1)

  const leaving = new WebSocket(wsUrl(base))
  leaving.on('error', () => {})
  t.ok(await until(() => silent.open.size === 1), 'the peer side is being opened')
  leaving.terminate()
  t.ok(await until(() => silent.open.size === 0), 'the client left: its handshake to the peer is given up')
  t.equal(app.upstreams.get('b').peers[0].inflight, 0)
})

t.test('wsClientOptions.queryString replaces the query string passed to the peer, as @fastify/http-proxy', async t => {
  const backend = await wsBackendFor(t, 0)
  const fixed = await gateway({ b: { servers: [backend.address] } }, { websocket: true, wsClientOptions: { queryString: { token: 'x y' } } })
  t.teardown(() => fixed.close())
  const client = await wsClient(t, wsUrl(await listening(fixed), '/q?drop=1'))
  t.match(JSON.parse(await client.next()), { url: '/q?token=x%20y' })
  const computed = await gateway({ c: { servers: [backend.address] } }, { websocket: true, wsClientOptions: { queryString: (search: string | undefined) => `seen=${encodeURIComponent(search ?? '')}` } })
  t.teardown(() => computed.close())
  const second = await wsClient(t, wsUrl(await listening(computed), '/q?a=1'))
  t.match(JSON.parse(await second.next()), { url: '/q?seen=%3Fa%3D1' })
})
