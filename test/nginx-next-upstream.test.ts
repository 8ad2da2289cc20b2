import t from 'tap'
import { request } from 'undici'
import { backendFor, freePort, type BackendHandler } from './helpers/backends.js'
import { gateway, listening } from './helpers/gateway.js'
import { nginxSkip, startNginx } from './helpers/nginx.js'

// proxy_next_upstream behind a real nginx and nextUpstream behind the
// gateway, over the same backends: the same answers, request for request.

function answering (status: number, body: string): BackendHandler {
  return (_req, res) => {
    res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  }
}

async function answers (base: string, n: number): Promise<Array<[number, string]>> {
  const seen: Array<[number, string]> = []
  for (let i = 0; i < n; i++) {
    const res = await request(`${base}/x`, { headers: { connection: 'close' } })
    seen.push([res.statusCode, await res.body.text()])
  }
  return seen
}

t.test('proxy_next_upstream http_502 and nextUpstream http_502 give the same answers', { skip: nginxSkip() }, async t => {
  const bad = await backendFor(t, answering(502, 'bad gateway page of peer 0'), 0)
  const good = await backendFor(t, answering(200, 'ok from peer 1'), 1)
  const worse = await backendFor(t, answering(502, 'bad gateway page of peer 2'), 2)
  const cases: Array<[string, string[], string[]]> = [
    ['a 502 is passed over for the next server', [bad.address, good.address], ['error', 'timeout', 'http_502']],
    ['every server answers 502: the last one\'s answer', [bad.address, worse.address], ['error', 'timeout', 'http_502']],
    ['without http_502 the 502 is passed on', [bad.address, good.address], ['error', 'timeout']]
  ]
  for (const [name, servers, words] of cases) {
    const port = await freePort()
    await startNginx(t, `
    upstream u { ${servers.map(s => `server ${s} max_fails=0;`).join(' ')} }
    server {
        listen 127.0.0.1:${port};
        location / { proxy_pass http://u; proxy_next_upstream ${words.join(' ')}; }
    }`, [port])
    const app = await gateway({ u: { servers: servers.map(address => ({ address, maxFails: 0 })) } }, { nextUpstream: words as never })
    t.teardown(() => app.close())
    const ours = await answers(await listening(app), 4)
    const nginx = await answers(`http://127.0.0.1:${port}`, 4)
    t.same(ours, nginx, `${name}: ${JSON.stringify(nginx)}`)
  }
})
