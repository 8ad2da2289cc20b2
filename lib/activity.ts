import type { CommandEvent, RegistryEvents } from './events.js'
import type { EventEmitter } from 'node:events'
import type { Peer, PeerChange } from './peer.js'
import type { Upstream } from './upstream.js'
import { peerState, type PeerState } from './peer-state.js'

/** The request rate is over at most this long (ms): the oldest read of the counts within it. */
const RATE_WINDOW = 60_000
/** ms at least between two reads kept, and the shortest span a rate is given over. */
const SAMPLE_EVERY = 1000

interface PeerActivity {
  state: PeerState
  /** Epoch ms it entered `state`. */
  since: number
  lastCommand: CommandEvent | null
  /** Request counts as read by requestRate(), oldest first (at most one a second, within RATE_WINDOW). */
  samples: Array<{ at: number, requests: number }>
}

/**
 * What the model does not keep but an operator asks first: how long each
 * peer has been in its state, its request rate, and the last supervisord
 * command on it with its outcome. Kept from the registry's events, and
 * from the request counts as the status page reads them: no timer, and
 * nothing at all while nobody looks.
 */
export class Activity {
  /** Epoch ms the gateway's registry was made: its uptime counts from here. */
  readonly startedAt = Date.now()
  readonly #upstreams: ReadonlyMap<string, Upstream>
  readonly #peers = new Map<Peer, PeerActivity>()
  /** The upstreams that have backups, and their backups. */
  readonly #backups = new Map<Upstream, Peer[]>()

  constructor (registry: EventEmitter<RegistryEvents>, upstreams: ReadonlyMap<string, Upstream>) {
    this.#upstreams = upstreams
    for (const upstream of upstreams.values()) {
      for (const peer of upstream.peers) {
        this.#peers.set(peer, { state: peerState(peer, upstream), since: this.startedAt, lastCommand: null, samples: [] })
      }
      const backups = upstream.peers.filter(peer => peer.backup)
      if (backups.length > 0) this.#backups.set(upstream, backups)
    }
    registry.on('change', this.#onChange)
    registry.on('command', this.#onCommand)
  }

  /** The peer's state and since when (epoch ms) it has been in it. */
  state (peer: Peer, now = Date.now()): { state: PeerState, since: number } {
    const activity = this.#of(peer)
    this.#update(peer, activity, now)
    return { state: activity.state, since: activity.since }
  }

  /** The last supervisord command on the peer that ended, with its outcome (null: none yet). */
  lastCommand (peer: Peer): CommandEvent | null {
    return this.#of(peer).lastCommand
  }

  /**
   * Requests per second sent to the peer since the oldest read of the last
   * minute (a page that reloads every 5 s shows the last minute's rate);
   * null on a first read, or when the last was over a minute ago.
   */
  requestRate (peer: Peer, now = Date.now()): number | null {
    const samples = this.#of(peer).samples
    while (samples.length > 0 && now - samples[0].at > RATE_WINDOW) samples.shift()
    const oldest = samples[0]
    const newest = samples.at(-1)
    if (newest === undefined || now - newest.at >= SAMPLE_EVERY) samples.push({ at: now, requests: peer.requests })
    if (oldest === undefined || now - oldest.at < SAMPLE_EVERY) return null
    return (peer.requests - oldest.requests) / ((now - oldest.at) / 1000)
  }

  #of (peer: Peer): PeerActivity {
    return this.#peers.get(peer) as PeerActivity
  }

  #update (peer: Peer, activity: PeerActivity, now: number): void {
    const state = peerState(peer, this.#upstreams.get(peer.upstream) as Upstream, now)
    if (state === activity.state) return
    // A back-off runs out with no event: it ended at its `until`.
    activity.since = activity.state === 'back-off' && peer.backoff !== null && peer.backoff.until <= now ? peer.backoff.until : now
    activity.state = state
  }

  readonly #onChange = (change: PeerChange): void => {
    const upstream = this.#upstreams.get(change.upstream)
    const changed = upstream?.peers[change.index]
    if (upstream === undefined || changed === undefined) return
    this.#update(changed, this.#of(changed), change.at)
    // One peer's change can move a backup's state (it stands by while a
    // primary serves), and no other's: so not every peer of a large upstream
    // on each change (1000 checked peers coming up were 10^6 updates).
    for (const backup of this.#backups.get(upstream) ?? []) this.#update(backup, this.#of(backup), change.at)
  }

  readonly #onCommand = (event: CommandEvent): void => {
    const peer = this.#upstreams.get(event.upstream)?.peers[event.index]
    if (peer !== undefined) this.#of(peer).lastCommand = event
  }
}
