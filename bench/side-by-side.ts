import { cpuSeconds, type Children } from './children.js'
import { median } from './load.js'

// What the smaller side-by-side benches (virtual hosts, WebSocket) share:
// systems measured in alternating rounds, each in a process of its own, the
// CPU its process spent per unit of work, and ratios taken round by round.

export interface System { id: string, label: string, port: number, pid: number | undefined }
export interface Measured { rate: number, count: number, errors: number, p50: number, p99: number }
export interface Round extends Measured { system: string, round: number, cpuUsPerUnit: number | null }

export function envNumber (name: string, fallback: number): number {
  const text = process.env[name]
  if (text === undefined || text === '') return fallback
  const value = Number(text)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a number above 0, got "${text}"`)
  return value
}

/** The entries of `all` the comma-separated list in env `name` names, in its order (all of them when unset). */
export function envList<T> (name: string, all: readonly T[], key: (entry: T) => string, env: NodeJS.ProcessEnv = process.env): T[] {
  const text = env[name]
  if (text === undefined || text === '') return [...all]
  const words = text.split(',').map(word => word.trim())
  const unknown = words.filter(word => !all.some(entry => key(entry) === word))
  if (unknown.length > 0) throw new Error(`${name}: unknown ${unknown.join(', ')}; known: ${all.map(key).join(', ')}`)
  return words.map(word => all.find(entry => key(entry) === word) as T)
}

/** Rounds of `measure` over every system in turn (A B A B ...), with each system's own CPU per unit of work. */
export async function alternate (systems: System[], rounds: number, measure: (system: System) => Promise<Measured>): Promise<Round[]> {
  const results: Round[] = []
  for (let round = 0; round < rounds; round++) {
    for (const system of systems) {
      const before = system.pid === undefined ? undefined : cpuSeconds(system.pid)
      const measured = await measure(system)
      const after = system.pid === undefined ? undefined : cpuSeconds(system.pid)
      const cpuUsPerUnit = before === undefined || after === undefined || measured.count === 0 ? null : (after - before) * 1e6 / measured.count
      results.push({ ...measured, system: system.id, round, cpuUsPerUnit })
    }
  }
  return results
}

/** The median of `of`'s per-round ratio to `to`, and the lowest and highest round. */
export function ratio (rounds: Round[], of: string, to: string, field: 'rate' | 'cpuUsPerUnit'): { median: number, min: number, max: number } | null {
  const ratios: number[] = []
  for (const row of rounds.filter(r => r.system === of)) {
    const base = rounds.find(r => r.system === to && r.round === row.round)
    const a = row[field]
    const b = base?.[field]
    if (a === null || b === null || b === undefined || b === 0) return null
    ratios.push(a / b)
  }
  return ratios.length === 0 ? null : { median: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios) }
}

export function fmt (n: number | null | undefined, digits = 0): string {
  if (n === null || n === undefined || Number.isNaN(n)) return '—'
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
}

export function table (head: string[], rows: string[][]): string {
  return [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`, ...rows.map(row => `| ${row.join(' | ')} |`)].join('\n')
}

/** Stops every child and says whether any is still running. */
export async function stopAll (children: Children, print: (line: string) => void): Promise<void> {
  await children.stopAll()
  const running = children.running()
  if (running.length > 0) throw new Error(`still running: ${running.map(c => `${c.name} (${c.pid})`).join(', ')}`)
  print(`(${children.all.length} child processes started and stopped, none left running)`)
}
