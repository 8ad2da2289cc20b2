import { setTimeout as sleep } from 'node:timers/promises'

export { sleep }

/**
 * Polls `check` every `every` ms until it holds; false if `ms` passed first.
 * Every wait in the tests is bounded: assert the result, e.g.
 * `t.ok(await until(() => peer.health === 'healthy'), 'healthy')`.
 */
export async function until (check: () => boolean | Promise<boolean>, ms = 5000, every = 10): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(every)
  }
  return await check()
}
