import { setTimeout as sleep } from 'node:timers/promises'
import type { ProcessState } from './peer.js'
import { probe, type ProbeTarget } from './health-probe.js'
import { SupervisordCallError, type ProcessInfo, type SupervisordClient } from './supervisord-client.js'

// When a started program counts as up: supervisord's word and its port's.

/** How a command ended, as the bridge tells it. */
export interface StartOutcome {
  ok: boolean
  fault?: string
  reason?: string
  /** supervisord answered ALREADY_STARTED: the program may still be STARTING. */
  already?: boolean
}

export interface ServingWait {
  readyTimeout: number
  /** Whether supervisord already said RUNNING (its start call returned). */
  running: boolean
  signal: AbortSignal
  /** The server's closing signal (part of `signal`). */
  closing: AbortSignal
}

/** ms between two TCP probes of a started program that does not accept connections yet. */
const PROBE_EVERY = 75
/** ms a TCP probe of a started program may take. */
const PROBE_TIMEOUT = 1000
/** ms between two reads of a program's state while supervisord says STARTING. */
const STARTING_READ_EVERY = 200
/** ms between two reads of a RUNNING program's state while it does not accept connections (it may have died). */
const RUNNING_READ_EVERY = 1000
const RUNNING = 20

/** supervisord's process state codes as the registry's process dimension. */
export function processStateOf (info: ProcessInfo): ProcessState {
  switch (info.state) {
    case 20: return 'up'
    case 10: case 30: return 'starting'
    case 40: return 'stopping'
    default: return 'down'
  }
}

/** An error of a call, as an outcome. */
export function failed (error: unknown): StartOutcome {
  return { ok: false, fault: error instanceof SupervisordCallError ? error.fault : 'PROTOCOL', reason: (error as Error).message }
}

/** One TCP probe: does the peer's address accept a connection now? */
export async function accepts (peer: ProbeTarget, signal: AbortSignal): Promise<{ ok: boolean, reason: string }> {
  return await probe(peer, { type: 'tcp', timeout: PROBE_TIMEOUT }, signal)
}

/** Waits PROBE_EVERY ms (less if aborted) before the next probe. */
export async function probePause (signal: AbortSignal): Promise<void> {
  await sleep(PROBE_EVERY, undefined, { signal, ref: false }).catch(() => {})
}

/**
 * A started program is serving once supervisord says RUNNING and its
 * address accepts a TCP connection, probed every PROBE_EVERY ms for at most
 * `readyTimeout`. With `running` false (after ALREADY_STARTED: a start by
 * someone else, maybe still STARTING) supervisord's state is read first, and
 * again until RUNNING; a program that leaves STARTING/RUNNING meanwhile has
 * failed its start. `signal` ends the wait: `closing` says whether the
 * server is closing (ABORTED) or a later command replaced this one (CANCELLED).
 */
export async function untilServing (client: SupervisordClient, program: string, peer: ProbeTarget & { address: string }, wait: ServingWait): Promise<StartOutcome> {
  const { readyTimeout, signal, closing } = wait
  let running = wait.running
  const deadline = Date.now() + readyTimeout
  let nextRead = running ? Date.now() + RUNNING_READ_EVERY : 0
  let last = 'not probed yet'
  while (!signal.aborted) {
    if (Date.now() >= nextRead) {
      let info: ProcessInfo
      try {
        info = await client.getProcessInfo(program)
      } catch (error) {
        return failed(error)
      }
      if (info.state !== RUNNING && processStateOf(info) !== 'starting') {
        const why = info.spawnerr !== '' ? `: ${info.spawnerr}` : ''
        return { ok: false, fault: info.statename, reason: `supervisord ${client.label}: program "${program}" is ${info.statename}${why}` }
      }
      running = info.state === RUNNING
      nextRead = Date.now() + (running ? RUNNING_READ_EVERY : STARTING_READ_EVERY)
    }
    if (running) {
      const result = await accepts(peer, signal)
      if (result.ok) return { ok: true }
      last = result.reason
    }
    if (Date.now() >= deadline) {
      return {
        ok: false,
        fault: 'NOT_READY',
        reason: running
          ? `program "${program}" runs, but ${peer.address} did not accept a connection within readyTimeout (${readyTimeout} ms): ${last}`
          : `program "${program}" was still STARTING after readyTimeout (${readyTimeout} ms)`
      }
    }
    await sleep(running ? PROBE_EVERY : Math.max(0, nextRead - Date.now()), undefined, { signal, ref: false }).catch(() => {})
  }
  return closing.aborted
    ? { ok: false, fault: 'ABORTED', reason: 'the server is closing' }
    : { ok: false, fault: 'CANCELLED', reason: `a later command on program "${program}" replaced it` }
}
