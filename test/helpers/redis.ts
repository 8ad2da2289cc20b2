import type { Test } from 'tap'
import { redisInstalled, startRedis, type RedisServer } from '../../lib/dev/redis-server.js'

// A real redis-server per test (lib/dev/redis-server.ts), skipped with a
// printed reason when it is not installed, except on CI.

export { startRedis, type RedisServer }

/**
 * For `t.test(name, { skip }, ...)`: a reason to skip when redis-server is not
 * installed, except on CI (CI=true), where the tests run and fail.
 */
export const redisSkip: string | false = redisInstalled() || process.env.CI === 'true' ? false : 'redis-server not installed (not on the PATH)'
if (redisSkip !== false) console.log(`# skipping Redis tests: ${redisSkip}`)

/** startRedis, stopped in the test's teardown. */
export async function redisFor (t: Test): Promise<RedisServer> {
  const redis = await startRedis()
  t.teardown(async () => await redis.stop())
  return redis
}
