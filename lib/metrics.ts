import { setImmediate } from 'node:timers/promises'
import { Counter, Registry as MetricsRegistry, type Metric } from 'prom-client'
import type { Registry } from './registry.js'
import type { Upstream } from './upstream.js'
import type { Peer } from './peer.js'
import type { Buckets } from './buckets.js'
import type { CommandEvent, ScaleEvent } from './events.js'
import type { PeerChange } from './peer.js'
import { ADMIN_STATES, CHECK_OUTCOMES, FAILURE_KINDS, STATUS_CLASSES, type ProcessState } from './peer.js'
import { PEER_STATES, peerState } from './peer-state.js'
import { readiness } from './status/readiness.js'
import { VERSION } from './version.js'
import { leaseNames } from './group.js'

/** Every family's name starts with this. The rest is named after HAProxy's exporter where it has a counterpart. */
export const METRICS_PREFIX = 'fastify_supervisord_'

type Labels = Record<string, string>

const PROCESS_STATES: readonly ProcessState[] = ['down', 'starting', 'up', 'stopping']
const HEALTH_STATES = ['unknown', 'healthy', 'unhealthy'] as const
const PASSIVE_STATES = ['ok', 'failed'] as const
const PIN_STATES = ['none', 'up', 'down'] as const

/** A sample: its peer's or upstream's labels (one object per peer, kept), and one more label of its own (a state, a status class). */
type Push = (labels: Labels, value: number, key?: string, keyValue?: string) => void

const LABEL_ESCAPES = /[\\"\n]/

function escapeLabel (value: string): string {
  return LABEL_ESCAPES.test(value) ? value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n') : value
}

/** A peer's or upstream's labels, formatted once: the objects are kept for as long as the peers. */
const LABELS_TEXT = new WeakMap<Labels, string>()

function labelsText (labels: Labels): string {
  let text = LABELS_TEXT.get(labels)
  if (text === undefined) {
    text = Object.entries(labels).map(([key, value]) => `${key}="${escapeLabel(value)}"`).join(',')
    LABELS_TEXT.set(labels, text)
  }
  return text
}

function valueText (value: number): string {
  if (Number.isNaN(value)) return 'NaN'
  if (!Number.isFinite(value)) return value > 0 ? '+Inf' : '-Inf'
  return String(value)
}

/**
 * A family read from the model when scraped: an object with what
 * prom-client's registry reads of a metric (name, help, type, get(),
 * reset()). Reading the model's plain numbers straight into the values
 * costs a scrape much less than setting prom-client gauges label set by
 * label set, and prom-client's own Histogram can only be written one
 * observation at a time.
 */
class ModelFamily {
  readonly aggregator = 'sum'
  readonly name: string
  readonly help: string
  readonly type: 'gauge' | 'counter' | 'histogram'
  readonly labelNames: string[]
  readonly #read: (push: Push) => void
  readonly #buckets: (() => Iterable<[Labels, Buckets]>) | undefined

  constructor (name: string, help: string, type: 'gauge' | 'counter', labelNames: string[], read: (push: Push) => void)
  constructor (name: string, help: string, type: 'histogram', labelNames: string[], read: () => Iterable<[Labels, Buckets]>)
  constructor (name: string, help: string, type: ModelFamily['type'], labelNames: string[], read: ((push: Push) => void) | (() => Iterable<[Labels, Buckets]>)) {
    this.name = name
    this.help = help
    this.type = type
    this.labelNames = labelNames
    if (type === 'histogram') {
      this.#buckets = read as () => Iterable<[Labels, Buckets]>
      this.#read = () => {}
    } else {
      this.#read = read as (push: Push) => void
    }
  }

  /** Each sample: its name (the family's, or with a histogram's suffix), labels, value and the label of its own. */
  #each (sample: (metricName: string, labels: Labels, value: number, key?: string, keyValue?: string) => void): void {
    if (this.#buckets === undefined) {
      this.#read((labels, value, key, keyValue) => sample(this.name, labels, value, key, keyValue))
      return
    }
    const bucket = `${this.name}_bucket`
    for (const [labels, buckets] of this.#buckets()) {
      const cumulative = buckets.cumulative()
      buckets.bounds.forEach((bound, i) => sample(bucket, labels, cumulative[i], 'le', String(bound)))
      sample(bucket, labels, buckets.count, 'le', '+Inf')
      sample(`${this.name}_sum`, labels, buckets.sum)
      sample(`${this.name}_count`, labels, buckets.count)
    }
  }

  /** prom-client's shape, for a registry this one is merged into. */
  async get () {
    const values: Array<{ metricName: string, labels: Labels, value: number }> = []
    this.#each((metricName, labels, value, key, keyValue) => values.push({ metricName, labels: key === undefined ? labels : { ...labels, [key]: keyValue as string }, value }))
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  /**
   * The family in the text format, as prom-client writes it. Written here,
   * not by prom-client's registry: its formatter costs about 20 µs a
   * sample, which at a thousand peers (some 90 000 samples) held the event
   * loop for a third of a second per scrape.
   */
  text (): string {
    const lines = [`# HELP ${this.name} ${this.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${this.name} ${this.type}`]
    this.#each((metricName, labels, value, key, keyValue) => {
      let pairs = labelsText(labels)
      if (key !== undefined) pairs += `${pairs === '' ? '' : ','}${key}="${escapeLabel(keyValue as string)}"`
      lines.push(`${metricName}${pairs === '' ? '' : `{${pairs}}`} ${valueText(value)}`)
    })
    return lines.join('\n')
  }

  reset (): void {}
}

/**
 * The suite's Prometheus metrics, on a registry of their own (merge it into
 * yours with prom-client's `Registry.merge`). Almost everything is read from
 * the model when scraped (counters and histograms kept as plain numbers on
 * the peers and upstreams), so a proxied request pays nothing here; what
 * happens rarely (supervisord commands, scaling decisions, a peer going
 * unhealthy) is counted from the registry's events.
 */
export class SuiteMetrics {
  readonly registry = new MetricsRegistry()
  readonly #upstreams: Registry
  readonly #commands: Counter
  readonly #decisions: Counter
  readonly #upDown: Counter

  constructor (upstreams: Registry) {
    this.#upstreams = upstreams
    const registers = [this.registry]
    const name = (suffix: string): string => METRICS_PREFIX + suffix
    const server = ['upstream', 'peer']
    const self = this

    const register = (family: ModelFamily): void => this.registry.registerMetric(family as unknown as Metric)
    /** A gauge read from the model at scrape. */
    const gauge = (suffix: string, help: string, labelNames: string[], read: (set: Push) => void): void =>
      register(new ModelFamily(name(suffix), help, 'gauge', labelNames, read))
    /** A counter whose total is kept in the model, read at scrape. */
    const counted = (suffix: string, help: string, labelNames: string[], read: (set: Push) => void): void =>
      register(new ModelFamily(name(suffix), help, 'counter', labelNames, read))
    /** A histogram whose buckets are kept in the model, read at scrape. */
    const histogram = (suffix: string, help: string, labelNames: string[], read: () => Iterable<[Labels, Buckets]>): void =>
      register(new ModelFamily(name(suffix), help, 'histogram', labelNames, read))
    // One labels object per peer and per upstream, made once: a scrape formats each once and allocates none.
    const peerLabels = new Map<Peer, Labels>()
    const upstreamLabels = new Map<Upstream, Labels>()
    for (const upstream of upstreams.upstreams.values()) {
      upstreamLabels.set(upstream, { upstream: upstream.name })
      for (const peer of upstream.peers) peerLabels.set(peer, { upstream: upstream.name, peer: String(peer.index) })
    }
    const infoLabels = new Map<Peer, Labels>()
    const eachPeer = (each: (peer: Peer, labels: Labels, upstream: Upstream) => void): void => {
      for (const upstream of self.#upstreams.upstreams.values()) {
        for (const peer of upstream.peers) each(peer, peerLabels.get(peer) as Labels, upstream)
      }
    }
    const eachUpstream = (each: (upstream: Upstream, labels: Labels) => void): void => {
      for (const upstream of self.#upstreams.upstreams.values()) each(upstream, upstreamLabels.get(upstream) as Labels)
    }
    const oneHot = <T extends string>(states: readonly T[], current: T, labels: Labels, set: Push): void => {
      for (const state of states) set(labels, state === current ? 1 : 0, 'state', state)
    }

    // The process
    const startTime = upstreams.activity.startedAt / 1000
    gauge('process_start_time_seconds', 'When the gateway started, in seconds since the epoch (HAProxy: haproxy_process_start_time_seconds).', [],
      set => set({}, startTime))
    gauge('process_build_info', 'fastify-supervisord\'s version, as a label (HAProxy: haproxy_process_build_info).', ['version'],
      set => set({ version: VERSION }, 1))

    // The group of gateways that act as one through the store (a group of one without a shared store)
    const group = upstreams.group
    gauge('group_store_up', 'Whether the store answers (1), or the gateway goes on alone on its last known state (0, degraded); always 1 for a group of one.', ['store'],
      set => set({ store: group.store.kind }, group.ok ? 1 : 0))
    gauge('group_members', 'Gateways in the group as of the last sync, this one included.', [],
      set => set({}, group.members.length))
    gauge('group_scaler_lead', 'Whether this gateway leads the group\'s scaler (it decides on the summed load); only in a group with a scaler.', [],
      set => { const lead = group.owner(leaseNames.scaler); if (lead !== undefined) set({}, lead === group.id ? 1 : 0) })
    gauge('server_check_owner', 'Whether this gateway holds the lease on the peer\'s active checks (the others route on its results); only where the group shares checks.', server,
      set => eachPeer((peer, labels) => { const owner = group.owner(leaseNames.checks(peer.upstream, peer.index)); if (owner !== undefined) set(labels, owner === group.id ? 1 : 0) }))

    // Upstreams (HAProxy's backends)
    counted('backend_http_responses_total', 'Answers of the proxies over the upstream by status class, the gateway\'s own errors included (HAProxy: haproxy_backend_http_responses_total).',
      ['upstream', 'code'], set => eachUpstream((upstream, labels) => STATUS_CLASSES.forEach((code, i) => set(labels, upstream.answers[i], 'code', code))))
    gauge('backend_active_servers', 'Primary peers routable now (HAProxy: haproxy_backend_active_servers).', ['upstream'],
      set => eachUpstream((upstream, labels) => set(labels, upstream.routableTiers().primary.length)))
    gauge('backend_backup_servers', 'Backup peers routable now (HAProxy: haproxy_backend_backup_servers).', ['upstream'],
      set => eachUpstream((upstream, labels) => set(labels, upstream.routableTiers().backup.length)))
    gauge('backend_ready', 'Whether the upstream can take a request: a peer is routable, or one is starting or can be started on demand (the readiness probe).', ['upstream'],
      set => eachUpstream((upstream, labels) => set(labels, readiness(upstream).ready ? 1 : 0)))
    gauge('backend_current_queue', 'Requests held now for a cold start (HAProxy: haproxy_backend_current_queue).', ['upstream'],
      set => eachUpstream((upstream, labels) => set(labels, upstream.hold.current)))
    gauge('backend_max_queue', 'The most requests held at once since start (HAProxy: haproxy_backend_max_queue).', ['upstream'],
      set => eachUpstream((upstream, labels) => set(labels, upstream.hold.max)))
    counted('backend_queue_overflows_total', 'Requests refused 503 because maxHeld were held already.', ['upstream'],
      set => eachUpstream((upstream, labels) => set(labels, upstream.hold.overflows)))
    counted('backend_queue_timeouts_total', 'Held requests answered 503 after holdTimeout.', ['upstream'],
      set => eachUpstream((upstream, labels) => set(labels, upstream.hold.timeouts)))
    histogram('backend_queue_time_seconds', 'How long each held request waited for a cold start before it got a peer (HAProxy: haproxy_backend_queue_time_average_seconds).', ['upstream'],
      function * () { for (const upstream of self.#upstreams.upstreams.values()) yield [upstreamLabels.get(upstream) as Labels, upstream.hold.wait] })
    gauge('backend_scale_load', 'The scaler\'s last load: requests per second per running peer over its window (the group\'s on the gateway that leads the group\'s scaler, this gateway\'s own on the others).', ['upstream'],
      set => eachUpstream((upstream, labels) => { if (upstream.scale?.load != null) set(labels, upstream.scale.load) }))
    gauge('backend_scale_threshold', 'The scaler\'s loadThreshold.', ['upstream'],
      set => eachUpstream((upstream, labels) => { if (upstream.scale !== null) set(labels, upstream.scale.threshold) }))
    gauge('backend_scale_next_decision_seconds', 'Seconds until the scaler decides next.', ['upstream'],
      set => eachUpstream((upstream, labels) => { if (upstream.scale !== null) set(labels, Math.max(0, (upstream.scale.nextAt - Date.now()) / 1000)) }))
    this.#decisions = new Counter({
      name: name('backend_scale_decisions_total'), help: 'Scaling decisions, by action and reason (load, idle, low load, min running, in-flight).', labelNames: ['upstream', 'action', 'reason'], registers
    })

    // Peers (HAProxy's servers)
    gauge('server_info', 'A peer\'s address and supervisord program, as labels (always 1).', ['upstream', 'peer', 'address', 'program', 'backup'],
      set => eachPeer((peer, labels) => {
        let info = infoLabels.get(peer)
        // The bridge names programs at its registration, which may come after this plugin's.
        if (info?.program !== (peer.program ?? '')) infoLabels.set(peer, info = { ...labels, address: peer.address, program: peer.program ?? '', backup: String(peer.backup) })
        set(info, 1)
      }))
    gauge('server_status', 'What the peer is doing, one-hot over the status page\'s states (HAProxy: haproxy_server_status).', [...server, 'state'],
      set => eachPeer((peer, labels, upstream) => oneHot(PEER_STATES, peerState(peer, upstream), labels, set)))
    gauge('server_state_seconds', 'Seconds the peer has been in its server_status state.', server,
      set => eachPeer((peer, labels) => set(labels, Math.max(0, (Date.now() - self.#upstreams.activity.state(peer).since) / 1000))))
    gauge('server_process_state', 'The peer\'s process state, one-hot (down, starting, up, stopping).', [...server, 'state'],
      set => eachPeer((peer, labels) => oneHot(PROCESS_STATES, peer.process, labels, set)))
    gauge('server_admin_state', 'The peer\'s admin state, one-hot (ready, drain, maint).', [...server, 'state'],
      set => eachPeer((peer, labels) => oneHot(ADMIN_STATES, peer.admin, labels, set)))
    gauge('server_health_state', 'The peer\'s active health, one-hot (unknown, healthy, unhealthy).', [...server, 'state'],
      set => eachPeer((peer, labels) => oneHot(HEALTH_STATES, peer.health, labels, set)))
    gauge('server_passive_state', 'The peer\'s passive state, one-hot (ok, failed).', [...server, 'state'],
      set => eachPeer((peer, labels) => oneHot(PASSIVE_STATES, peer.passive, labels, set)))
    gauge('server_pin_state', 'An operator\'s pin, one-hot (none, up, down).', [...server, 'state'],
      set => eachPeer((peer, labels) => oneHot(PIN_STATES, peer.pin, labels, set)))
    gauge('server_weight', 'The peer\'s weight (HAProxy: haproxy_server_weight).', server,
      set => eachPeer((peer, labels) => set(labels, peer.weight)))
    gauge('server_current_sessions', 'Requests in flight to the peer (HAProxy: haproxy_server_current_sessions).', server,
      set => eachPeer((peer, labels) => set(labels, peer.inflight)))
    counted('server_sessions_total', 'Requests sent to the peer (HAProxy: haproxy_server_sessions_total).', server,
      set => eachPeer((peer, labels) => set(labels, peer.requests)))
    counted('server_http_responses_total', 'Responses the peer sent, by status class (HAProxy: haproxy_server_http_responses_total).', [...server, 'code'],
      set => eachPeer((peer, labels) => STATUS_CLASSES.forEach((code, i) => set(labels, peer.responses[i], 'code', code))))
    histogram('server_response_time_seconds', 'From a request sent to the peer to its response headers (HAProxy\'s Tr; HAProxy: haproxy_server_response_time_average_seconds).', server,
      function * () { for (const [peer, labels] of peerLabels) yield [labels, peer.responseTime] })
    counted('server_passive_failures_total', 'Failures charged to the peer, by kind: connect (refused, reset), timeout, response (malformed, truncated), status (one nextUpstream lists) (HAProxy: haproxy_server_connection_errors_total and haproxy_server_response_errors_total).',
      [...server, 'kind'], set => eachPeer((peer, labels) => { for (const kind of FAILURE_KINDS) set(labels, peer.failuresByKind[kind], 'kind', kind) }))
    counted('server_retry_warnings_total', 'Requests the peer got after another peer failed them, or after they were held again (HAProxy: haproxy_server_retry_warnings_total).', server,
      set => eachPeer((peer, labels) => set(labels, peer.retries)))
    counted('server_redispatch_warnings_total', 'Requests moved from the peer to another, after a failure or when it was taken out (HAProxy: haproxy_server_redispatch_warnings_total).', server,
      set => eachPeer((peer, labels) => set(labels, peer.redispatches)))
    counted('server_check_results_total', 'Active checks by outcome (ok, timed out, connection refused, bad status, bad body, body too large, closed early, error) (HAProxy: haproxy_server_check_failures_total).',
      [...server, 'result'], set => eachPeer((peer, labels) => { for (const result of CHECK_OUTCOMES) set(labels, peer.checkOutcomes.get(result) ?? 0, 'result', result) }))
    histogram('server_check_duration_seconds', 'How long each active check took (HAProxy: haproxy_server_check_duration_seconds, the last one only).', server,
      function * () { for (const [peer, labels] of peerLabels) yield [labels, peer.checkDuration] })
    this.#upDown = new Counter({
      name: name('server_check_up_down_total'), help: 'Times active checks took the peer from healthy or unknown to unhealthy (HAProxy: haproxy_server_check_up_down_total).', labelNames: server, registers
    })
    gauge('server_start_backoff_step', 'Failed starts in a row of the peer (0: not in start back-off).', server,
      set => eachPeer((peer, labels) => set(labels, peer.backoff?.step ?? 0)))
    gauge('server_start_backoff_seconds', 'Seconds until a start of the peer may be tried again (0: now).', server,
      set => eachPeer((peer, labels) => set(labels, peer.backoff === null ? 0 : Math.max(0, (peer.backoff.until - Date.now()) / 1000))))
    this.#commands = new Counter({
      name: name('supervisord_commands_total'),
      help: 'supervisord commands this gateway sent that ended, by command (start, stop), outcome (ok, failed) and fault (supervisord\'s fault name, TIMEOUT, UNREACHABLE, ...; empty when ok).',
      labelNames: [...server, 'command', 'outcome', 'fault'],
      registers
    })

    upstreams.on('command', this.#onCommand)
    upstreams.on('scale', this.#onScale)
    upstreams.on('change', this.#onChange)
  }

  readonly #onCommand = (event: CommandEvent): void => {
    // Sent by another gateway of the group, which counts it: the group's sum counts each command once.
    if (event.by !== undefined) return
    this.#commands.inc({ upstream: event.upstream, peer: String(event.index), command: event.command, outcome: event.ok ? 'ok' : 'failed', fault: event.ok ? '' : event.fault ?? 'UNKNOWN' })
  }

  readonly #onScale = (event: ScaleEvent): void => {
    this.#decisions.inc({ upstream: event.upstream, action: event.action, reason: event.reason })
  }

  readonly #onChange = (change: PeerChange): void => {
    if (change.field === 'health' && change.to === 'unhealthy') this.#upDown.inc({ upstream: change.upstream, peer: String(change.index) })
  }

  /**
   * The text format, as `registry.metrics()` writes it, but one family at a
   * time with the event loop let go in between: a scrape of a large pool
   * never holds requests up for its whole length.
   */
  async exposition (): Promise<string> {
    const parts: string[] = []
    for (const metric of this.registry.getMetricsAsArray() as unknown[]) {
      parts.push(metric instanceof ModelFamily ? metric.text() : await this.registry.getSingleMetricAsString((metric as { name: string }).name))
      await setImmediate()
    }
    return parts.join('\n\n') + '\n'
  }

  /** Stops counting events (the server is closing). */
  close (): void {
    this.#upstreams.off('command', this.#onCommand)
    this.#upstreams.off('scale', this.#onScale)
    this.#upstreams.off('change', this.#onChange)
  }
}
