import { pathToFileURL } from 'node:url'

// `npm run bench` runs every benchmark; `npm run bench -- proxy` only those whose name matches.
const benches: Record<string, () => Promise<{ run: () => Promise<void> }>> = {
  'balancer-cost': async () => await import('./balancer-cost.js'),
  'proxy-throughput': async () => await import('./proxy-throughput.js'),
  'health-checks': async () => await import('./health-checks.js'),
  'cold-start': async () => await import('./cold-start.js')
}

export async function main (filter = process.argv[2] ?? ''): Promise<void> {
  for (const [name, load] of Object.entries(benches)) {
    if (!name.includes(filter)) continue
    await (await load()).run()
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await main()
