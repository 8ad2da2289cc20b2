import net from 'node:net'
import t from 'tap'
import { MAX_INTERIM_RESPONSES } from '../lib/proxy-attempt.js'
import { backendFor, tcpServer } from './helpers/backends.js'
import { gateway, listening } from './helpers/gateway.js'
import { sleep, until } from './helpers/wait.js'

// One attempt on one peer, at its edges: how many interim responses it
// takes, which statuses are answers, and what a client that reads slowly
// does to the peer and to the body timer.

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
