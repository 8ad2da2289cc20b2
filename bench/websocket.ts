import { startBackendProcess } from './backends-process.js'
import { Children } from './children.js'
import { startNodeProxy } from './node-proxy.js'
import type { WsLoadJob, WsLoadResult } from './ws-load-worker.js'
import { alternate, envNumber, fmt, ratio, stopAll, table, type Round, type System } from './side-by-side.js'
import { inWorker, median } from './load.js'

// `npm run bench -- websocket`: WebSocket message throughput through this
// proxy, beside plain @fastify/http-proxy and the backend hit directly: each
// session sends a message and waits for its echo, in alternating rounds,
// every proxy in a process of its own.

export async function run (print: (line: string) => void = console.log): Promise<Round[]> {
  const rounds = envNumber('BENCH_ROUNDS', 3)
  const seconds = envNumber('BENCH_SECONDS', 5)
  const sessions = envNumber('BENCH_SESSIONS', 50)
  const size = envNumber('BENCH_MESSAGE_SIZE', 64)
  const warmup = envNumber('BENCH_WARMUP', 1)
  const children = new Children()
  try {
    const backends = await startBackendProcess(2, 'ws')
    children.track('ws backends', backends.child)
    const servers = backends.ports.map(port => `127.0.0.1:${port}`)
    const plain = await startNodeProxy('ws-plain', servers, children)
    const bare = await startNodeProxy('ws-bare', servers, children)
    const systems: System[] = [
      { id: 'direct', label: 'direct to the backend', port: backends.ports[0], pid: undefined },
      { id: 'plain', label: 'plain @fastify/http-proxy (websocket: true)', port: plain.port, pid: plain.pid },
      { id: 'bare', label: 'this proxy (websocket: true), round-robin over 2', port: bare.port, pid: bare.pid }
    ]
    const load = async (system: System, ms: number): Promise<WsLoadResult> => await inWorker<WsLoadResult>('./ws-load-worker.js',
      { url: `ws://127.0.0.1:${system.port}/`, sessions, warmupMs: Math.min(500, warmup * 500), ms, size, maxMessages: 100_000_000 } satisfies WsLoadJob)
    for (const system of systems) await load(system, warmup * 1000)
    const results = await alternate(systems, rounds, async system => {
      const result = await load(system, seconds * 1000)
      return { rate: result.perSecond, count: result.messages, errors: result.errors, p50: result.p50, p99: result.p99 }
    })
    print(`\n**WebSocket messages** (${sessions} sessions, ${size}-byte messages echoed, ${rounds} rounds of ${seconds} s; ratios: median of per-round ratios, lowest–highest)\n`)
    print(table(['system', 'messages/s', 'proxy CPU µs/message', 'round trip p50 ms', 'p99 ms', 'errors', 'messages/s × plain', 'CPU × plain'], systems.map(system => {
      const own = results.filter(r => r.system === system.id)
      const rate = ratio(results, system.id, 'plain', 'rate')
      const cpu = ratio(results, system.id, 'plain', 'cpuUsPerUnit')
      return [system.label, fmt(median(own.map(r => r.rate))), fmt(median(own.map(r => r.cpuUsPerUnit ?? NaN)), 1), fmt(median(own.map(r => r.p50)), 2),
        fmt(median(own.map(r => r.p99)), 1), String(own.reduce((n, r) => n + r.errors, 0)),
        rate === null ? '—' : `${fmt(rate.median, 2)} (${fmt(rate.min, 2)}–${fmt(rate.max, 2)})`,
        cpu === null ? '—' : `${fmt(cpu.median, 2)} (${fmt(cpu.min, 2)}–${fmt(cpu.max, 2)})`]
    })))
    return results
  } finally {
    await stopAll(children, print)
  }
}
