import { setTimeout as sleep } from 'node:timers/promises'
import { leaseNames, type Group } from './group.js'
import { withLease } from './store/lease.js'
import type { ProcessEvent, StoreMessage } from './store/types.js'
import { StoreUnavailableError } from './errors.js'
import type { StartOutcome } from './start-readiness.js'

// "Who starts program X": one gateway of the group, by a lease in the store.
// The others hold their requests until it says how the start ended (or its
// lease goes), then wait, as for any start, until the program serves.

export interface GroupStartOutcome extends StartOutcome {
  /** Another gateway carried the start out (or it was running already): this one only heard of it (and tells nobody). */
  heard?: boolean
  /** The gateway that carried it out, when known. */
  by?: string
}

export interface GroupStart {
  group: Group
  upstream: string
  index: number
  program: string
  /** Starts it from this gateway (the lease held, or the store cannot tell); `before` held the lease until now, if another did. */
  here: (before: string | null) => Promise<GroupStartOutcome>
  /** Another gateway started it: resolves once it serves (supervisord's state read, the port probed). */
  serving: () => Promise<StartOutcome>
  /** Epoch ms past which this gateway stops waiting for another's start. */
  deadline: number
  signal: AbortSignal
  /** The server's closing signal (part of `signal`): ABORTED rather than CANCELLED. */
  closing: AbortSignal
}

/** What a gateway that does not hold the lease heard: the start's end, the lease gone without a word, or nothing in time. */
type Heard = ProcessEvent | 'free' | 'nothing'

/** Listens for another gateway's word on a peer's start from now on (so that no message is missed while the lease is asked for). */
function listen (group: Group, upstream: string, index: number) {
  const word: { heard?: ProcessEvent } = {}
  let wake = (): void => {}
  const onMessage = (message: StoreMessage): void => {
    if (message.type !== 'process' || message.command !== 'start' || message.upstream !== upstream || message.index !== index) return
    word.heard = message
    wake()
  }
  group.on('message', onMessage)
  return {
    stop: () => group.off('message', onMessage),
    /** The word, or whether the lease is still held (asked every `every` ms), until `deadline`. */
    until: async (name: string, every: number, deadline: number, signal: AbortSignal): Promise<Heard> => {
      while (word.heard === undefined && !signal.aborted && Date.now() < deadline) {
        const woken = new Promise<void>(resolve => { wake = resolve })
        await Promise.race([woken, sleep(Math.min(every, Math.max(0, deadline - Date.now())), undefined, { signal, ref: false }).catch(() => {})])
        if (word.heard !== undefined || signal.aborted) break
        // The lease gone: the start ended (its message lost) or its gateway died. Unknowable: ask again for it.
        if (await group.store.owner(name).catch(() => null) === null) return word.heard ?? 'free'
      }
      return word.heard ?? 'nothing'
    }
  }
}

/** Starts a peer once for the whole group: here if this gateway gets the lease (or the store cannot tell), else waits for the one that did. */
export async function startInGroup (start: GroupStart): Promise<GroupStartOutcome> {
  const { group, upstream, index, program, signal } = start
  const name = leaseNames.start(upstream, index)
  const every = Math.max(20, Math.min(500, Math.floor(group.leaseTtl / 3)))
  let owner: string | null = null
  while (!signal.aborted && Date.now() < start.deadline) {
    const word = listen(group, upstream, index)
    let heard: Heard
    try {
      const result = await withLease(group.store, name, group.id, group.leaseTtl, async () => await start.here(owner))
      if (result.acquired) return result.value
      owner = result.owner
      heard = await word.until(name, every, start.deadline, signal)
    } catch (error) {
      // Nobody can tell who starts it: this gateway does (supervisord answers ALREADY_STARTED to a second start).
      if (error instanceof StoreUnavailableError) return await start.here(owner)
      throw error
    } finally {
      word.stop()
    }
    if (heard === 'free') continue
    if (heard === 'nothing') break
    if (!heard.ok) return { ok: false, fault: 'FAILED_ELSEWHERE', reason: `gateway ${heard.by} could not start program "${program}"`, heard: true, by: heard.by }
    return { ...await start.serving(), heard: true, by: heard.by }
  }
  if (signal.aborted) {
    return start.closing.aborted
      ? { ok: false, fault: 'ABORTED', reason: 'the server is closing' }
      : { ok: false, fault: 'CANCELLED', reason: `a later command on program "${program}" replaced it` }
  }
  return { ok: false, fault: 'TIMEOUT', reason: `gateway ${owner ?? '(unknown)'} was starting program "${program}" and said nothing of it in time`, heard: true }
}
