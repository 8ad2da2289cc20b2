import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { pinned, type Children } from './children.js'
import { exited } from '../lib/dev/supervisord-daemon.js'

/** One closed-loop round: `connections` each sending a request as soon as the last is answered. Latencies in ms. */
export interface ClosedLoopResult { requests: number, errors: number, seconds: number, rps: number, p50: number, p99: number }

// wrk's own summary, as one JSON line (latencies in µs).
const REPORT = `done = function (summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration":%d,"errors":%d,"p50":%.1f,"p99":%.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(99)))
end
`

/** Runs wrk (one thread, pinned to `cpu` when given) for whole seconds and reads its summary. */
export async function wrk (binary: string, dir: string, children: Children, url: string, connections: number, seconds: number, cpu?: number): Promise<ClosedLoopResult> {
  const script = path.join(dir, 'report.lua')
  await writeFile(script, REPORT)
  const whole = Math.max(1, Math.round(seconds))
  const [command, args] = pinned(binary, ['-t1', `-c${connections}`, `-d${whole}s`, '--timeout', '10s', '-s', script, url], cpu)
  const child = children.spawn('wrk', command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout?.setEncoding('utf8').on('data', (text: string) => { out += text })
  if (!await exited(child, (whole + 15) * 1000)) {
    child.kill('SIGKILL')
    await exited(child, 2000)
    throw new Error(`wrk ran past ${whole + 15} s and was killed`)
  }
  const line = out.split('\n').find(text => text.startsWith('{'))
  if (child.exitCode !== 0 || line === undefined) throw new Error(`wrk exited with ${child.exitCode ?? child.signalCode}: ${out} ${children.stderrOf(child)}`.trim())
  const report = JSON.parse(line) as { requests: number, duration: number, errors: number, p50: number, p99: number }
  const measured = report.duration / 1e6
  return { requests: report.requests, errors: report.errors, seconds: measured, rps: report.requests / measured, p50: report.p50 / 1000, p99: report.p99 / 1000 }
}
