import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'
import type { GroupGatewayConfig, GroupRequest } from './group-gateway.js'
import type { GroupStatus, PeerStatus } from '../../lib/status/types.js'
import type { ScaleEvent } from '../../lib/events.js'
import type { ExecuteResult } from '../../lib/supervisord-bridge.js'
import { until } from './wait.js'

// Gateways of a group, each in a process of its own (group-gateway.ts), for
// the tests that need real processes: one killed with SIGKILL, a Redis they
// share. Every one is killed in the test's teardown if it still runs.

export type { GroupGatewayConfig }

export interface GatewayState { peers: PeerStatus[], group: GroupStatus }

export interface GroupGateway {
  id: string
  pid: number
  base: string
  child: ChildProcess
  /** Its log lines, parsed. */
  lines: Array<Record<string, unknown>>
  state (): Promise<GatewayState>
  setAdmin (index: number, state: 'ready' | 'drain' | 'maint'): Promise<void>
  execute (command: 'start' | 'stop', index: number): Promise<ExecuteResult>
  scales (): Promise<ScaleEvent[]>
  /** Its exit, once it has exited. */
  exited (): boolean
}

const SCRIPT = fileURLToPath(new URL('./group-gateway.ts', import.meta.url))

export async function groupGateway (t: Test, config: GroupGatewayConfig): Promise<GroupGateway> {
  // The test's own loader (TypeScript, coverage) is inherited through execArgv.
  const child = fork(SCRIPT, [JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  const lines: GroupGateway['lines'] = []
  let buffered = ''
  let stderr = ''
  child.stdout?.on('data', (chunk: Buffer) => {
    buffered += chunk.toString()
    const complete = buffered.split('\n')
    buffered = complete.pop() ?? ''
    for (const line of complete) if (line.startsWith('{')) lines.push(JSON.parse(line))
  })
  child.stderr?.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString()).slice(-4000) })
  const pending = new Map<number, { resolve: (value: unknown) => void, reject: (error: Error) => void }>()
  let next = 0
  let port = 0
  child.on('message', (message: { ready?: boolean, port?: number, id?: number, result?: unknown, error?: string }) => {
    if (message.ready === true) port = message.port as number
    const waiter = message.id === undefined ? undefined : pending.get(message.id)
    if (waiter === undefined) return
    pending.delete(message.id as number)
    if (message.error !== undefined) waiter.reject(new Error(message.error))
    else waiter.resolve(message.result)
  })
  child.on('exit', () => {
    for (const waiter of pending.values()) waiter.reject(new Error(`gateway ${config.id} exited`))
    pending.clear()
  })
  const exited = (): boolean => child.exitCode !== null || child.signalCode !== null
  // A gateway compiles its TypeScript as it starts (the test's loader): seconds, many more on a loaded machine.
  if (!await until(() => port !== 0 || exited(), 90_000, 20) || port === 0) {
    child.kill('SIGKILL')
    throw new Error(`gateway ${config.id} did not start: ${stderr}`)
  }
  const ask = async <T>(request: GroupRequest): Promise<T> => await new Promise<T>((resolve, reject) => {
    const id = next++
    pending.set(id, { resolve: resolve as (value: unknown) => void, reject })
    child.send({ id, request })
  })
  return {
    id: config.id,
    pid: child.pid as number,
    base: `http://127.0.0.1:${port}`,
    child,
    lines,
    state: async () => await ask<GatewayState>({ op: 'state' }),
    setAdmin: async (index, state) => { await ask({ op: 'setAdmin', index, state }) },
    execute: async (command, index) => await ask<ExecuteResult>({ op: 'execute', command, index }),
    scales: async () => await ask<ScaleEvent[]>({ op: 'scales' }),
    exited
  }
}

/** `n` gateways of one group, started side by side, named `<prefix>-a`, `-b`, ... */
export async function groupOf (t: Test, n: number, config: (id: string) => GroupGatewayConfig, prefix = 'gw'): Promise<GroupGateway[]> {
  const ids = Array.from({ length: n }, (_, i) => `${prefix}-${String.fromCharCode(97 + i)}`)
  const started = Date.now()
  const gateways = await Promise.all(ids.map(async id => await groupGateway(t, config(id))))
  t.comment(`${n} gateway processes ready in ${Date.now() - started} ms`)
  return gateways
}
