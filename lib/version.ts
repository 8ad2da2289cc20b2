import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The package's version, read once from its package.json (the source tree and dist/ sit at different depths under it). */
function packageVersion (): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const file = path.join(dir, 'package.json')
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string, version?: string }
      if (pkg.name === 'fastify-supervisord' && typeof pkg.version === 'string') return pkg.version
    }
    const parent = path.dirname(dir)
    /* c8 ignore next: the package always has its package.json above this file */
    if (parent === dir) return 'unknown'
    dir = parent
  }
}

export const VERSION = packageVersion()
