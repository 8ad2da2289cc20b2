import Fastify, { type FastifyRequest, type RouteHandlerMethod } from 'fastify'
import { describe, expect, test } from 'tstyche'
import type { Registry as MetricsRegistry } from 'prom-client'
import {
  registry, supervisord, healthCheck, scaler, proxy, statusPage, supervisordRoutes, supervisordCommands, metrics,
  Peer, Registry, Upstream, errors, peerState, type PeerState, type PeerStatus,
  type Balancer, type BalancedUpstream, type ExecuteResult, type SupervisordBridge, type UpstreamOptions, type StatusSnapshot
} from '../../index.js'

describe('UpstreamOptions, augmented by each plugin that reads a section', () => {
  test('the sections of every plugin are typed', () => {
    expect<UpstreamOptions>().type.toBeAssignableFrom({
      servers: ['127.0.0.1:8000', { address: '127.0.0.1:8001', weight: 2, backup: true, maxFails: 3, failTimeout: 5000 }],
      balancer: 'fair' as const,
      supervisord: '127.0.0.1:9001 admin:secret',
      supervisordName: 'web',
      inheritBackendStatus: true,
      healthCheck: { path: '/healthz', interval: 2000, status: ['2xx', 404] as Array<'2xx' | 404> },
      scale: { minRunning: 1, loadThreshold: 50 }
    })
  })

  test('a wrong type in a section is a type error', () => {
    expect<UpstreamOptions>().type.not.toBeAssignableFrom({ servers: ['a:1'], healthCheck: { interval: '2s' } })
    expect<UpstreamOptions>().type.not.toBeAssignableFrom({ servers: ['a:1'], scale: { minRunning: 'one' } })
    expect<UpstreamOptions>().type.not.toBeAssignableFrom({ servers: ['a:1'], balancer: 'least-conn' })
    expect<UpstreamOptions>().type.not.toBeAssignableFrom({ servers: ['a:1'], supervisord: 9001 })
  })

  test('the hash balancer\'s key and method', () => {
    expect<UpstreamOptions>().type.toBeAssignableFrom({ servers: ['a:1'], balancer: 'hash' as const, hashKey: { cookie: 'sid' }, hashConsistent: false })
    expect<UpstreamOptions>().type.not.toBeAssignableFrom({ servers: ['a:1'], balancer: 'hash' as const, hashConsistent: 'no' })
  })

  test('servers are required', () => {
    expect<UpstreamOptions>().type.not.toBeAssignableFrom({ balancer: 'fair' as const })
  })
})

describe('decorators', () => {
  const app = Fastify()

  test('fastify.upstreams is the registry', () => {
    expect(app.upstreams).type.toBe<Registry>()
    expect(app.upstreams.get('backend')).type.toBe<Upstream>()
    expect(app.upstreams.get('backend').peers).type.toBe<readonly Peer[]>()
  })

  test('fastify.supervisord is the bridge; execute answers an ExecuteResult', () => {
    expect(app.supervisord).type.toBe<SupervisordBridge>()
    expect(app.supervisord.execute('backend', 'start', 'any')).type.toBe<Promise<ExecuteResult>>()
    expect(app.supervisord.execute).type.not.toBeCallableWith('backend', 'restart', 0)
  })

  test('fastify.supervisordMetrics is a prom-client registry, to merge into yours', () => {
    expect(app.supervisordMetrics).type.toBe<MetricsRegistry>()
  })

  test('supervisordStart/Stop return route handlers', () => {
    expect(app.supervisordStart('backend')).type.toBe<RouteHandlerMethod>()
    expect(app.supervisordStop('backend')).type.toBe<RouteHandlerMethod>()
  })

  test('request.upstreamPeer is the one public request field, a Peer or null', () => {
    expect<FastifyRequest['upstreamPeer']>().type.toBe<Peer | null>()
    expect<FastifyRequest>().type.not.toHaveProperty('upstreamTried')
    expect<FastifyRequest>().type.not.toHaveProperty('upstreamDest')
  })
})

describe('peer state is read-only from outside', () => {
  test('counters and check history cannot be assigned', () => {
    const peer = {} as Peer
    expect(peer.inflight).type.toBe<number>()
    expect(peer.checks).type.toBe<readonly CheckResultLike[]>()
    // inflight is written only by acquire/release, pid only by setPid
    // @ts-expect-error Cannot assign to 'inflight' because it is a read-only property
    peer.inflight = 3
    // @ts-expect-error Cannot assign to 'pid' because it is a read-only property
    peer.pid = 1
    expect(peer.checks).type.not.toHaveProperty('push')
  })

  test('the pin and the start back-off are read-only, set by their named methods', () => {
    const peer = {} as Peer
    expect(peer.pin).type.toBe<'none' | 'up' | 'down'>()
    expect(peer.backoff?.step).type.toBe<number | undefined>()
    // @ts-expect-error Cannot assign to 'pin' because it is a read-only property
    peer.pin = 'up'
    expect(peer.setPin).type.toBeCallableWith('down', 'operator stop')
    expect(peer.setPin).type.not.toBeCallableWith('pinned')
  })
})

describe('the start and stop rules and the pins, on the upstream and the bridge', () => {
  const app = Fastify()

  test('startCandidate and stopCandidate answer a Peer or undefined', () => {
    expect(app.upstreams.get('backend').startCandidate({ skipPinned: true })).type.toBe<Peer | undefined>()
    expect(app.upstreams.get('backend').stopCandidate({ keep: 0 })).type.toBe<Peer | undefined>()
  })

  test('execute may leave the peer unpinned; unpin releases it', () => {
    expect(app.supervisord.execute).type.toBeCallableWith('backend', 'stop', 1, { wait: true, pin: false })
    expect(app.supervisord.unpin('backend', 1)).type.toBe<Peer>()
  })

  test('the bridge\'s readiness and back-off options', () => {
    expect(app.register).type.toBeCallableWith(supervisord, { readyTimeout: 10_000, startBackoff: { initial: 500, max: 30_000 } })
    expect(app.register).type.not.toBeCallableWith(supervisord, { startBackoff: { initial: '1s' } })
  })
})

type CheckResultLike = Peer['checks'][number]

describe('a custom balancer', () => {
  test('an object with a name and pick() is a Balancer', () => {
    const firstRoutable: Balancer = {
      name: 'first',
      pick: (upstream: BalancedUpstream) => upstream.routableTiers().primary[0]
    }
    expect<UpstreamOptions>().type.toBeAssignableFrom({ servers: ['a:1'], balancer: firstRoutable })
  })

  test('pick must return a Peer or undefined', () => {
    expect<Balancer>().type.not.toBeAssignableFrom({ name: 'bad', pick: () => 'peer 0' })
  })
})

describe('plugins take their own options', () => {
  const app = Fastify()

  test('registry, proxy, status page and routes', () => {
    expect(app.register).type.toBeCallableWith(registry, { upstreams: { backend: { servers: ['127.0.0.1:8000'] } } })
    expect(app.register).type.toBeCallableWith(proxy, { upstream: 'backend', prefix: '/api', headersTimeout: 5000 })
    expect(app.register).type.toBeCallableWith(proxy, { hosts: { 'shop.example.com': 'shop', '*.example.org': 'org' }, upstream: 'fallback' })
    expect(app.register).type.toBeCallableWith(proxy, { upstream: 'backend', nextUpstream: ['error', 'timeout', 'http_502', 'non_idempotent'], nextUpstreamTimeout: 10_000 })
    expect(app.register).type.toBeCallableWith(proxy, { upstream: 'backend', websocket: true, wsDrainTimeout: 5000, wsHooks: { onConnect: () => {} }, xForwarded: true, preserveHost: true })
    expect(app.register).type.toBeCallableWith(proxy, { upstream: 'backend', preHandler: async () => {}, replyOptions: { contentType: 'text/plain' } })
    expect(app.register).type.toBeCallableWith(registry, { upstreams: { backend: { servers: [{ address: '127.0.0.1:8000', maxConns: 10 }] } } })
    expect(app.register).type.toBeCallableWith(statusPage, { path: '/health', refresh: 0 })
    expect(app.register).type.toBeCallableWith(supervisordRoutes, { upstream: 'backend', allow: ['10.0.0.0/8'], token: 't' })
    expect(app.register).type.toBeCallableWith(supervisord, { callTimeout: 2000 })
    expect(app.register).type.toBeCallableWith(healthCheck, { history: 10 })
    expect(app.register).type.toBeCallableWith(scaler)
    expect(app.register).type.toBeCallableWith(supervisordCommands)
    expect(app.register).type.toBeCallableWith(metrics, { path: false })
    expect(app.register).type.toBeCallableWith(metrics, { path: '/m', allow: ['10.0.0.0/8'], token: 't' })
    expect(app.register).type.toBeCallableWith(statusPage, { allow: ['127.0.0.1'], token: 't', others: 'forbidden', readiness: '/ready' })
  })

  test('a misspelt or mistyped option is a type error', () => {
    expect(app.register).type.not.toBeCallableWith(proxy, { upstream: 'backend', headersTimeout: '5s' })
    expect(app.register).type.not.toBeCallableWith(proxy, { upstream: 'backend', nextUpstream: ['http_418'] })
    expect(app.register).type.not.toBeCallableWith(proxy, { upstream: 'backend', failStatuses: [502] })
    expect(app.register).type.not.toBeCallableWith(statusPage, { path: 42 })
    expect(app.register).type.not.toBeCallableWith(supervisordRoutes, { upstream: 'backend', methods: ['DELETE'] })
    expect(app.register).type.not.toBeCallableWith(statusPage, { others: 'nobody' })
    expect(app.register).type.not.toBeCallableWith(metrics, { path: true })
  })

  test('a peer\'s state is one of the twelve words', () => {
    expect(peerState).type.toBeCallableWith({} as Peer, {} as Upstream)
    expect<PeerStatus['state']>().type.toBe<PeerState>()
    expect<PeerState>().type.toBeAssignableFrom('crashed' as const)
    expect<PeerState>().type.not.toBeAssignableFrom('down' as const)
  })
})

describe('errors carry their codes', () => {
  test('every error constructor makes an error with a code and a status', () => {
    expect(new errors.NoPeerError('backend').code).type.toBe<'FST_SUPERVISORD_NO_PEER'>()
    expect(new errors.PeerOutOfRangeError('backend', '9', 2).statusCode).type.toBe<404>()
    expect(new errors.OptionError('proxy', 'bad')).type.toBeAssignableTo<TypeError>()
  })

  test('the status snapshot is plain data', () => {
    expect<StatusSnapshot['upstreams'][number]['peers'][number]['program']>().type.toBe<string | null>()
  })
})
