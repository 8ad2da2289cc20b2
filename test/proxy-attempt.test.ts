import net from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { MAX_INTERIM_RESPONSES } from '../lib/proxy-attempt.js'
import { backendFor, tcpServer } from './helpers/backends.js'
import { gateway, listening, loggerInto } from './helpers/gateway.js'
import { sleep, until } from './helpers/wait.js'

type Line = Record<string, unknown> & { level: number, msg: string }

// One attempt on one peer, at its edges: what each of its timers says, how
// many interim responses it takes, which statuses are answers, and what a
// client that reads slowly does to the peer and to the body timer.

t.test(`up to ${MAX_INTERIM_RESPONSES} interim responses before the answer pass; one more is a malformed response (502)`, async t => {
  for (const [count, status] of [[MAX_INTERIM_RESPONSES, 200], [MAX_INTERIM_RESPONSES + 1, 502]]) {
    const server = await tcpServer(t, socket => {
      socket.once('data', () => socket.end('HTTP/1.1 102 Processing\r\n\r\n'.repeat(count) + 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok'))
    })
    const app = await gateway({ b: { servers: [`127.0.0.1:${server.port}`] } })
    t.teardown(() => app.close())
    t.equal((await app.inject('/')).statusCode, status, `${count} interim responses: ${status}`)
  }
})

t.test('599 is an answer, passed on', async t => {
  const server = await tcpServer(t, socket => {
    socket.once('data', () => socket.end('HTTP/1.1 599 Network Timeout\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno'))
  })
  const app = await gateway({ b: { servers: [`127.0.0.1:${server.port}`] } })
  t.teardown(() => app.close())
  const res = await app.inject('/')
  t.equal(res.statusCode, 599)
  t.equal(res.body, 'no')
})

t.test('a client that reads nothing holds the peer back, and the body timer waits for it; it then gets the whole answer', async t => {
  const TOTAL = 64 * 1024 * 1024
  const chunk = Buffer.alloc(64 * 1024, 'x')
  let written = 0
  const backend = await backendFor(t, (_req, res) => {
    res.writeHead(200, { 'content-length': String(TOTAL) })
    const pump = (): void => {
      while (written < TOTAL) {
        written += chunk.length
        if (!res.write(chunk)) {
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  })
  const app = await gateway({ b: { servers: [backend.address] } }, { bodyTimeout: 200 })
  t.teardown(() => app.close())
  const port = Number(new URL(await listening(app)).port)
  const client = net.connect(port, '127.0.0.1')
  t.teardown(() => client.destroy())
  client.pause()
  client.write('GET / HTTP/1.1\r\nHost: gateway\r\n\r\n')
  await sleep(1000)
  t.ok(written < TOTAL / 4, `the peer sent ${(written / 1048576).toFixed(1)} MiB of 64 while the client read nothing (for five body timeouts)`)
  let received = 0
  client.on('data', (data: Buffer) => { received += data.length })
  client.resume()
  t.ok(await until(() => received >= TOTAL, 20_000), `the client got all of it (${(received / 1048576).toFixed(1)} MiB), the body timer never fired`)
})

t.test('each timer fails the attempt as a timeout of its phase, named with its time in the peer\'s failure', async t => {
  const lines: Line[] = []
  const logger = { logger: loggerInto(lines) }
  const failures = (): Line[] => lines.filter(line => line.msg === 'proxy: peer failed')

  const late = await backendFor(t, (_req, res) => { setTimeout(() => res.end('late'), 600) })
  const headers = await gateway({ h: { servers: [late.address] } }, { headersTimeout: 300 }, logger)
  t.teardown(() => headers.close())
  t.equal((await headers.inject('/')).statusCode, 504)
  t.match(failures(), [{ level: 40, kind: 'timeout', reason: 'UND_ERR_HEADERS_TIMEOUT: no response headers within 300 ms' }], 'headers')

  lines.length = 0
  const stalling = await backendFor(t, (_req, res) => { res.writeHead(200, { 'content-length': '10' }); res.write('12345') })
  const body = await gateway({ s: { servers: [stalling.address] } }, { bodyTimeout: 250 }, logger)
  t.teardown(() => body.close())
  const cut = await request(await listening(body))
  t.equal(await cut.body.text().then(() => 'whole', () => 'cut'), 'cut')
  t.match(failures(), [{ kind: 'timeout', reason: 'UND_ERR_BODY_TIMEOUT: no response body data for 250 ms' }], 'body')

  lines.length = 0
  // One connection per peer, busy: the next request waits for a connection.
  const busy = await backendFor(t, (_req, res) => { setTimeout(() => res.end('done'), 1000) })
  const connect = await gateway({ c: { servers: [busy.address] } }, { connections: 1, connectTimeout: 200, headersTimeout: 5000 }, logger)
  t.teardown(() => connect.close())
  const first = connect.inject('/')
  t.ok(await until(() => busy.hits === 1))
  t.equal((await connect.inject('/')).statusCode, 504)
  t.match(failures(), [{ kind: 'timeout', reason: 'UND_ERR_CONNECT_TIMEOUT: no connection to the peer within 200 ms' }], 'connect')
  t.equal((await first).statusCode, 200)
})
