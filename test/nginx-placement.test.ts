import t from 'tap'
import { request } from 'undici'
import type { FastifyInstance } from 'fastify'
import type { UpstreamOptions } from '../lib/upstream.js'
import { backendsFor, freePort, type Backend } from './helpers/backends.js'
import { clientFor, gateway } from './helpers/gateway.js'
import { nginxSkip, startNginx } from './helpers/nginx.js'

// The same server list and weights behind a real nginx and behind the
// gateway: every client address and key must land on the same backend, so
// that moving from nginx keeps sticky clients and cache locality.

const MODULES = ['http_realip_module']
const WEIGHTS = [1, 3, 2, 1, 5]
const DOWN = 3

interface Site {
  name: string
  /** The nginx balancing directive. */
  directive: string
  /** The same upstream for the gateway, less its servers. */
  options: Omit<UpstreamOptions, 'servers'>
  /** Server DOWN is marked `down` on both sides. */
  down?: boolean
  /** Weights and down servers other than WEIGHTS and DOWN. */
  servers?: Array<{ weight: number, down: boolean }>
  /** Sent one at a time: the answers depend on the order (round-robin after the tries run out). */
  sequential?: boolean
  /** The requests to compare, as path and headers (for nginx, `x-real-ip` carries the client address). */
  requests: Array<{ path: string, headers: Record<string, string> }>
}

const ipv4 = Array.from({ length: 200 }, (_, i) => `${1 + (i * 37) % 222}.${(i * 91) % 256}.${(i * 53 + 7) % 256}.${1 + (i * 13) % 254}`)
const ipv6 = [
  ...Array.from({ length: 40 }, (_, i) => `2001:db8:${(i * 4099).toString(16)}::${(i * 7919).toString(16)}`),
  ...Array.from({ length: 10 }, (_, i) => `64:ff9b::10.${i}.${i * 3}.1`)
]
const byAddress = (ips: string[]) => ips.map(ip => ({ path: '/', headers: { 'x-real-ip': ip, 'x-forwarded-for': ip } }))
// A server holding nearly every point and down: most keys use up their 21 tries
// on it, and nginx balances those round-robin over the other two, in arrival order.
const HEAVY_DOWN = [{ weight: 100, down: true }, { weight: 1, down: false }, { weight: 1, down: false }]
const urls = Array.from({ length: 300 }, (_, i) => ({ path: `/item/${i * 7}?v=${i % 13}`, headers: {} }))

const sites: Site[] = [
  { name: 'ip_hash, IPv4 networks', directive: 'ip_hash;', options: { balancer: 'ip-hash' }, requests: byAddress(ipv4) },
  { name: 'ip_hash, IPv6 addresses', directive: 'ip_hash;', options: { balancer: 'ip-hash' }, requests: byAddress(ipv6) },
  { name: 'ip_hash, a server down (rehash)', directive: 'ip_hash;', options: { balancer: 'ip-hash' }, down: true, requests: byAddress(ipv4) },
  { name: 'hash $request_uri consistent', directive: 'hash $request_uri consistent;', options: { balancer: 'hash' }, requests: urls },
  { name: 'hash $request_uri consistent, a server down', directive: 'hash $request_uri consistent;', options: { balancer: 'hash' }, down: true, requests: urls },
  { name: 'hash $request_uri', directive: 'hash $request_uri;', options: { balancer: 'hash', hashConsistent: false }, requests: urls },
  { name: 'hash $request_uri, a server down (rehash)', directive: 'hash $request_uri;', options: { balancer: 'hash', hashConsistent: false }, down: true, requests: urls },
  { name: 'ip_hash, 21 tries on a heavy down server, then round-robin', directive: 'ip_hash;', options: { balancer: 'ip-hash' }, servers: HEAVY_DOWN, sequential: true, requests: byAddress(ipv4) },
  { name: 'hash consistent, 21 tries on a heavy down server, then round-robin', directive: 'hash $request_uri consistent;', options: { balancer: 'hash' }, servers: HEAVY_DOWN, sequential: true, requests: urls },
  { name: 'hash, 21 rehashes on a heavy down server, then round-robin', directive: 'hash $request_uri;', options: { balancer: 'hash', hashConsistent: false }, servers: HEAVY_DOWN, sequential: true, requests: urls },
  {
    name: 'hash $cookie_sid consistent',
    directive: 'hash $cookie_sid consistent;',
    options: { balancer: 'hash', hashKey: { cookie: 'sid' } },
    // nginx's reading of a cookie: the name in any case, spaces around `=`, a longer name that starts alike skipped
    requests: Array.from({ length: 120 }, (_, i) => ({
      path: `/p${i % 3}`,
      headers: { cookie: [`theme=dark; sid=s${i * 31}; lang=en`, `lang=en;SID = s${i * 31}`, `sidx=zz; sid=s${i * 31}`][i % 3] }
    }))
  },
  {
    name: 'hash $http_x_user consistent',
    directive: 'hash $http_x_user consistent;',
    options: { balancer: 'hash', hashKey: { header: 'X-User' } },
    requests: Array.from({ length: 100 }, (_, i) => ({ path: '/', headers: { 'x-user': `user-${i * 17}@example.org` } }))
  }
]

function serversOf (site: Site): Array<{ weight: number, down: boolean }> {
  return site.servers ?? WEIGHTS.map((weight, i) => ({ weight, down: site.down === true && i === DOWN }))
}

function serverLine (backend: Backend, server: { weight: number, down: boolean }): string {
  return `server ${backend.address} weight=${server.weight}${server.down ? ' down' : ''};`
}

t.test('ip_hash and hash place every client and key on the backend nginx picks', { skip: nginxSkip(MODULES) }, async t => {
  const backends = await backendsFor(t, WEIGHTS.length)
  const ports = await Promise.all(sites.map(async () => await freePort()))
  const http = [
    'set_real_ip_from 127.0.0.1;',
    'real_ip_header X-Real-IP;',
    ...sites.map((site, s) => `upstream site${s} {
        ${site.directive}
        ${serversOf(site).map((server, i) => serverLine(backends[i], server)).join('\n        ')}
    }
    server {
        listen 127.0.0.1:${ports[s]};
        location / { proxy_pass http://site${s}; }
    }`)
  ].join('\n    ')
  await startNginx(t, http, ports, MODULES)
  const dispatcher = clientFor(t)

  for (const [s, site] of sites.entries()) {
    const servers = serversOf(site).map((server, i) => ({ address: backends[i].address, ...server }))
    const app: FastifyInstance = await gateway({ u: { servers, ...site.options } })
    const viaNginx: number[] = []
    // a few at a time (nginx answers in parallel, the order of the results is kept), or one by one
    const batchSize = site.sequential === true ? 1 : 16
    for (let i = 0; i < site.requests.length; i += batchSize) {
      const batch = site.requests.slice(i, i + batchSize).map(async ({ path, headers }) => {
        const res = await request(`http://127.0.0.1:${ports[s]}${path}`, { headers, dispatcher })
        await res.body.dump()
        return res.statusCode === 200 ? Number(res.headers['x-backend']) : -res.statusCode
      })
      viaNginx.push(...await Promise.all(batch))
    }
    const viaGateway: number[] = []
    for (const { path, headers } of site.requests) {
      const res = await app.inject({ url: path, headers })
      viaGateway.push(res.statusCode === 200 ? Number(res.headers['x-backend']) : -res.statusCode)
    }
    await app.close()
    const agree = viaGateway.filter((b, i) => b === viaNginx[i]).length
    t.equal(agree, site.requests.length, `${site.name}: ${agree} of ${site.requests.length} on nginx's backend`)
    t.same(viaGateway, viaNginx, `${site.name}: the same backends in the same order`)
    const used = new Set(viaNginx)
    const up = serversOf(site).filter(server => !server.down).length
    t.equal(used.size, up, `${site.name}: nginx used every backend that is up (${[...used].sort().join(',')})`)
    serversOf(site).forEach((server, i) => { if (server.down) t.notOk(viaGateway.includes(i), `${site.name}: none on the down server`) })
  }
})
