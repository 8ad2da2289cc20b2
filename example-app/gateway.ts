import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type http from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import {
  registry, supervisord, healthCheck, proxy, scaler, statusPage, supervisordRoutes, metrics, closeGracefully,
  type UpstreamOptions
} from '../index.js'
import { freePort, onPath, startDaemon, type Daemon } from '../lib/dev/supervisord-daemon.js'
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
}

export interface Gateway {
  app: FastifyInstance
  mode: 'supervisord' | 'none'
  /** supervisord's pid in supervisord mode. */
  supervisordPid?: number
  /**
   * Closes the gateway (in-flight requests have `shutdownGrace` ms, then
   * are cut), then whatever runs the backends. Nothing is left behind, and
   * supervisord is stopped even when the gateway did not close in time.
   */
  shutdown (): Promise<void>
}

const BACKENDS = 3

/** supervisord of our own in a temp dir: loopback only, generated credentials, backends as programs. */
async function ownSupervisord (backendPort: number): Promise<{ daemon: Daemon, dir: string, option: UpstreamOptions['supervisord'] }> {
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
  const daemon = await startDaemon({ dir, port, username, password, programs })
  return { daemon, dir, option: { address: `127.0.0.1:${port}`, username, password } }
}

/**
 * The example gateway: upstream `backend` of three peers, balanced `fair`,
 * health-checked on /healthz, scaled with one always running; the status page
 * at /health (its readiness probe at /health?ready), Prometheus metrics at
 * /metrics, the operator routes under /_supervisord, and everything else
 * proxied. The routes, the metrics and the page's details and forms answer
 * loopback only, and also need ADMIN_TOKEN when it is set.
 */
export async function startGateway (settings: GatewaySettings): Promise<Gateway> {
  const mode = settings.mode ?? (onPath('supervisord') ? 'supervisord' : 'none')
  const app = Fastify({ logger: { level: 'info' } })
  app.log.info({ mode }, mode === 'supervisord'
    ? 'supervisord is on the PATH: starting our own, backends are its programs'
    : 'supervisord is not on the PATH: supervisord "none" mode, backends run in this process')

  let own: Awaited<ReturnType<typeof ownSupervisord>> | undefined
  const inProcess: http.Server[] = []
  const cleanup = async (): Promise<void> => {
    await own?.daemon.stop()
    if (own !== undefined) await rm(own.dir, { recursive: true, force: true })
    for (const server of inProcess) {
      server.closeAllConnections()
      await new Promise(resolve => server.close(resolve))
    }
  }

  try {
    if (mode === 'supervisord') {
      own = await ownSupervisord(settings.backendPort)
    } else {
      for (let i = 0; i < BACKENDS; i++) inProcess.push(await startExampleBackend(i, settings.backendPort + i))
    }
    await app.register(registry, {
      upstreams: {
        backend: {
          servers: Array.from({ length: BACKENDS }, (_, i) => `127.0.0.1:${settings.backendPort + i}`),
          balancer: 'fair',
          supervisord: own?.option ?? 'none',
          // none mode: the in-process backends are all up already
          inheritBackendStatus: own === undefined,
          healthCheck: { path: '/healthz', interval: 2000, timeout: 1000, rise: 1, fall: 2 },
          scale: { minRunning: 1 }
        }
      }
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
    await cleanup()
    throw error
  }

  return {
    app,
    mode,
    supervisordPid: own?.daemon.pid,
    shutdown: async () => {
      const grace = settings.shutdownGrace ?? 3000
      const closed = closeGracefully(app, { grace }).then(() => true)
      if (!await Promise.race([closed, sleep(grace + 1000, false, { ref: false })])) {
        app.log.error({ grace }, 'the gateway did not close within its shutdown grace: stopping the backends anyway')
      }
      await cleanup()
    }
  }
}
