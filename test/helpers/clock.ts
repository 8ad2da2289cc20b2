import type { FastifyInstance } from 'fastify'
import { createClock } from '@sinonjs/fake-timers'
import { Scaler } from '../../lib/scaler.js'

/** A fake clock, at the real time to start with, that only what it is handed to reads: it moves when the test ticks it. */
export type FakeClock = ReturnType<typeof createClock>

/**
 * The scaler on a fake clock, in place of the scaler plugin: started when the
 * app is ready, stopped when it closes. The gateway, the bridge and the
 * backends keep real time; the scaler's windows end when the test ticks.
 * Gateways of a group handed one clock count the same windows.
 */
export function scalerOnFakeClock (app: FastifyInstance, clock: FakeClock = createClock(Date.now())): FakeClock {
  const scaler = new Scaler(app.upstreams, app.log, {
    now: () => clock.now,
    setTimeout: (callback, ms) => clock.setTimeout(callback, ms),
    clearTimeout: timer => clock.clearTimeout(timer as number)
  })
  app.addHook('onReady', async () => scaler.start())
  app.addHook('onClose', async () => scaler.stop())
  return clock
}
