import { pathToFileURL } from 'node:url'

// `npm run bench` runs every benchmark; `npm run bench -- peers` only those whose name contains "peers".
const benches: Record<string, () => Promise<{ run: () => Promise<unknown> }>> = {
  'balancer-cost': async () => await import('./balancer-cost.js'),
  'metrics-cost': async () => await import('./metrics-cost.js'),
  peers: async () => await import('./peers.js'),
  faults: async () => await import('./faults.js'),
  'health-checks': async () => await import('./health-checks.js'),
  'cold-start': async () => await import('./cold-start.js'),
  vhosts: async () => await import('./vhosts.js'),
  websocket: async () => await import('./websocket.js'),
  gateways: async () => await import('./gateways.js')
}

export async function main (filter = process.argv[2] ?? ''): Promise<void> {
  const chosen = Object.keys(benches).filter(name => name.includes(filter))
  if (chosen.length === 0) throw new Error(`no benchmark named like "${filter}"; there are: ${Object.keys(benches).join(', ')}`)
  for (const name of chosen) await (await benches[name]()).run()
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await main()
