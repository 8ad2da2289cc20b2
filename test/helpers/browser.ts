import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import { chromium, type Browser } from 'playwright-core'
import type { Test } from 'tap'

const NAMES = ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable']

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync']

/** The first Chromium on the PATH, or undefined. */
export function findChromium (): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    for (const name of NAMES) {
      const candidate = join(dir, name)
      try {
        accessSync(candidate, constants.X_OK)
        return candidate
      } catch {}
    }
  }
  return undefined
}

const MISSING = `no Chromium on the PATH (looked for ${NAMES.join(', ')})`

/**
 * For a test's `skip` option: the reason when there is no Chromium to run.
 * Under CI a missing browser is not a reason to skip: launchBrowser fails.
 */
export function browserSkip (): string | false {
  return findChromium() === undefined && process.env.CI !== 'true' ? MISSING : false
}

/** A headless Chromium, closed in the test's teardown. */
export async function launchBrowser (t: Test): Promise<Browser> {
  const executablePath = findChromium()
  if (executablePath === undefined) throw new Error(MISSING)
  const browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS, timeout: 30_000 })
  t.teardown(async () => await browser.close())
  return browser
}
