import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type http from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import {
  registry, supervisord, healthCheck, proxy, scaler, statusPage, supervisordRoutes, metrics, closeGracefully, RedisStore,
  type UpstreamOptions
} from '../index.js'
import { freePort, onPath, startDaemon } from '../lib/dev/supervisord-daemon.js'
import { startExampleBackend } from './backend.js'

export interface GatewaySettings {
  /** Gateway port on 127.0.0.1 (default 3000). */
  port: number
  /** Backend N listens on basePort + N (default 8000). */
  backendPort: number
  /** Bearer token the operator routes also require, when set. */
  adminToken?: string
  /** 'supervisord' when it is on the PATH, else 'none'; forced by the caller if given. */
  mode?: 'supervisord' | 'none'
  /** ms in-flight requests have at shutdown before their connections are cut (default 3000). */
  shutdownGrace?: number
  /**
   * Use this supervisord (`host:port user:pass` or `unix:/path user:pass`)
   * and its programs backend0..2 instead of starting one; `none`: the
   * backends run already (started in-process by another gateway).
   */
  supervisordUrl?: string
  /** Share state with the other gateways of a group through this Redis (`redis://host:port`). */
  redisUrl?: string
}

export interface Gateway {
  app: FastifyInstance
  mode: 'supervisord' | 'none'
  /** supervisord's pid when this gateway started its own. */
  supervisordPid?: number
  /**
   * Closes the gateway (in-flight requests have `shutdownGrace` ms, then
   * are cut), then whatever runs the backends. Nothing is left behind, and
   * supervisord is stopped even when the gateway did not close in time.
   */
  shutdown (): Promise<void>
}

const BACKENDS = 3

/** What runs the backends, as a gateway's upstream names it. */
export interface Backends {
  mode: 'supervisord' | 'none'
  /** The upstream's `supervisord` option. */
  option: NonNullable<UpstreamOptions['supervisord']>
  /** The backends are up already (in-process, none mode). */
  running: boolean
  /** That option as SUPERVISORD_URL, for more gateways of the group; undefined for one given to us. */
  url?: string
  supervisordPid?: number
  /** Where the url is written (owner-only), for the other gateways. */
  urlFile?: string
  /** Why this way, for the log. */
  why: string
  stop (): Promise<void>
}

/** supervisord of our own in a temp dir: loopback only, generated credentials, backends as programs. */
async function ownSupervisord (backendPort: number, share: boolean): Promise<Backends> {
  const dir = await mkdtemp(path.join(tmpdir(), 'fastify-supervisord-example-'))
  const backendScript = fileURLToPath(new URL('./backend.js', import.meta.url))
  const username = 'gateway'
  const password = randomBytes(18).toString('base64url')
  const port = await freePort()
  const programs = Array.from({ length: BACKENDS }, (_, i) => ({
    name: `backend${i}`,
    command: `${process.execPath} ${backendScript} ${i} ${backendPort + i}`,
    startsecs: 1
  }))
  try {
    const daemon = await startDaemon({ dir, port, username, password, programs })
    const url = `127.0.0.1:${port} ${username}:${password}`
    // For the other gateways of a group, readable by this user only.
    const urlFile = share ? path.join(dir, 'supervisord-url') : undefined
    if (urlFile !== undefined) await writeFile(urlFile, url + '\n', { mode: 0o600 })
    return {
      mode: 'supervisord',
      option: { address: `127.0.0.1:${port}`, username, password },
      running: false,
      url,
      urlFile,
      supervisordPid: daemon.pid,
      why: 'supervisord is on the PATH: starting our own, backends are its programs',
      stop: async () => {
        await daemon.stop()
        await rm(dir, { recursive: true, force: true })
      }
    }
  } catch (error) {
    await rm(dir, { recursive: true, force: true })
    throw error
  }
}

/**
 * The backends of a gateway: the supervisord of SUPERVISORD_URL, or one of
 * our own when supervisord is on the PATH, or three in this process.
 */
export async function startBackends (settings: Pick<GatewaySettings, 'backendPort' | 'mode' | 'supervisordUrl' | 'redisUrl'>): Promise<Backends> {
  const given = settings.supervisordUrl
  if (given === 'none') {
    return { mode: 'none', option: 'none', running: true, why: 'SUPERVISORD_URL is none: the backends run already, in another gateway\'s process', stop: async () => {} }
  }
  if (given !== undefined) {
    return { mode: 'supervisord', option: given, running: false, why: 'SUPERVISORD_URL is set: its supervisord and its programs backend0..2', stop: async () => {} }
  }
  const mode = settings.mode ?? (onPath('supervisord') ? 'supervisord' : 'none')
  if (mode === 'supervisord') return await ownSupervisord(settings.backendPort, settings.redisUrl !== undefined)
  const servers: http.Server[] = []
  try {
    for (let i = 0; i < BACKENDS; i++) servers.push(await startExampleBackend(i, settings.backendPort + i))
  } catch (error) {
    for (const server of servers) server.close()
    throw error
  }
  return {
    mode: 'none',
    option: 'none',
    running: true,
    url: 'none',
    why: 'supervisord is not on the PATH: supervisord "none" mode, backends run in this process',
    stop: async () => {
      for (const server of servers) {
        server.closeAllConnections()
        await new Promise(resolve => server.close(resolve))
      }
    }
  }
}

/**
 * The example gateway: upstream `backend` of three peers, balanced `fair`,
 * health-checked on /healthz, scaled with one always running; the status page
 * at /health (its readiness probe at /health?ready), Prometheus metrics at
 * /metrics, the operator routes under /_supervisord, and everything else
 * proxied. The routes, the metrics and the page's details and forms answer
 * loopback only, and also need ADMIN_TOKEN when it is set. With `redisUrl`,
 * one gateway of a group sharing that Redis; `backends` given, it proxies to
 * those instead of starting its own.
 */
export async function startGateway (settings: GatewaySettings, given?: Backends): Promise<Gateway> {
  const app = Fastify({ logger: { level: 'info' } })
  const backends = given ?? await startBackends(settings)
  const stopBackends = given === undefined ? backends.stop : async () => {}
  app.log.info({ mode: backends.mode }, backends.why)

  try {
    await app.register(registry, {
      upstreams: {
        backend: {
          servers: Array.from({ length: BACKENDS }, (_, i) => `127.0.0.1:${settings.backendPort + i}`),
          balancer: 'fair',
          supervisord: backends.option,
          // none mode: the in-process backends are all up already
          inheritBackendStatus: backends.running,
          healthCheck: { path: '/healthz', interval: 2000, timeout: 1000, rise: 1, fall: 2 },
          scale: { minRunning: 1 }
        }
      },
      store: settings.redisUrl === undefined ? undefined : new RedisStore({ url: settings.redisUrl })
    })
    await app.register(supervisord)
    await app.register(healthCheck)
    await app.register(scaler)
    const operators = { allow: ['127.0.0.1', '::1'], token: settings.adminToken }
    await app.register(statusPage, { path: '/health', ...operators })
    await app.register(metrics, { path: '/metrics', ...operators })
    await app.register(supervisordRoutes, { upstream: 'backend', prefix: '/_supervisord', ...operators })
    await app.register(proxy, { upstream: 'backend', disableRequestLogging: true })
    await app.listen({ port: settings.port, host: '127.0.0.1' })
  } catch (error) {
    await app.close().catch(() => {})
    await stopBackends()
    throw error
  }
  if (settings.redisUrl !== undefined && backends.urlFile !== undefined && given === undefined) {
    app.log.info({ file: backends.urlFile }, `more gateways of this group: REDIS_URL=${settings.redisUrl} SUPERVISORD_URL="$(cat ${backends.urlFile})" PORT=... npm start`)
  }

  return {
    app,
    mode: backends.mode,
    supervisordPid: given === undefined ? backends.supervisordPid : undefined,
    shutdown: async () => {
      const grace = settings.shutdownGrace ?? 3000
      const closed = closeGracefully(app, { grace }).then(() => true)
      if (!await Promise.race([closed, sleep(grace + 1000, false, { ref: false })])) {
        app.log.error({ grace }, 'the gateway did not close within its shutdown grace: stopping the backends anyway')
      }
      await stopBackends()
    }
  }
}
