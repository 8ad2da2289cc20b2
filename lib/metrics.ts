import { Counter, Gauge, Registry as MetricsRegistry, type Metric } from 'prom-client'
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

/** Every family's name starts with this. The rest is named after HAProxy's exporter where it has a counterpart. */
export const METRICS_PREFIX = 'fastify_supervisord_'

type Labels = Record<string, string>

const PROCESS_STATES: readonly ProcessState[] = ['down', 'starting', 'up', 'stopping']
const HEALTH_STATES = ['unknown', 'healthy', 'unhealthy'] as const
const PASSIVE_STATES = ['ok', 'failed'] as const
const PIN_STATES = ['none', 'up', 'down'] as const

/**
 * A histogram whose counts live in the model (a `Buckets`), read at scrape:
 * an object with what prom-client's registry reads of a metric (name, help,
 * type, get(), reset()), since prom-client's own Histogram can only be
 * written observation by observation.
 */
class ModelHistogram {
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  readonly name: string
  readonly help: string
  readonly labelNames: string[]
  readonly #read: () => Iterable<[Labels, Buckets]>

  constructor (name: string, help: string, labelNames: string[], read: () => Iterable<[Labels, Buckets]>) {
    this.name = name
    this.help = help
    this.labelNames = labelNames
    this.#read = read
  }

  async get () {
    const values: Array<{ metricName: string, labels: Record<string, string | number>, value: number }> = []
    for (const [labels, buckets] of this.#read()) {
      const cumulative = buckets.cumulative()
      buckets.bounds.forEach((bound, i) => values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: bound }, value: cumulative[i] }))
      values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: '+Inf' }, value: buckets.count })
      values.push({ metricName: `${this.name}_sum`, labels, value: buckets.sum })
      values.push({ metricName: `${this.name}_count`, labels, value: buckets.count })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
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

    /** A gauge set from the model at scrape. */
    const gauge = (suffix: string, help: string, labelNames: string[], read: (set: (labels: Labels, value: number) => void) => void): void => {
      // eslint-disable-next-line no-new
      new Gauge({
        name: name(suffix),
        help,
        labelNames,
        registers,
        collect () {
          this.reset()
          read((labels, value) => this.set(labels, value))
        }
      })
    }
    /** A counter whose total is kept in the model, read at scrape. */
    const counted = (suffix: string, help: string, labelNames: string[], read: (set: (labels: Labels, value: number) => void) => void): void => {
      // eslint-disable-next-line no-new
      new Counter({
        name: name(suffix),
        help,
        labelNames,
        registers,
        collect () {
          this.reset()
          read((labels, value) => this.inc(labels, value))
        }
      })
    }
    const histogram = (suffix: string, help: string, labelNames: string[], read: () => Iterable<[Labels, Buckets]>): void => {
      this.registry.registerMetric(new ModelHistogram(name(suffix), help, labelNames, read) as unknown as Metric)
    }
    const eachPeer = (each: (peer: Peer, labels: Labels, upstream: Upstream) => void): void => {
      for (const upstream of self.#upstreams.upstreams.values()) {
        for (const peer of upstream.peers) each(peer, { upstream: upstream.name, peer: String(peer.index) }, upstream)
      }
    }
    const eachUpstream = (each: (upstream: Upstream, labels: Labels) => void): void => {
      for (const upstream of self.#upstreams.upstreams.values()) each(upstream, { upstream: upstream.name })
    }
    const oneHot = <T extends string>(states: readonly T[], current: T, labels: Labels, set: (labels: Labels, value: number) => void): void => {
      for (const state of states) set({ ...labels, state }, state === current ? 1 : 0)
    }

    // The process
    const startTime = upstreams.activity.startedAt / 1000
    gauge('process_start_time_seconds', 'When the gateway started, in seconds since the epoch (HAProxy: haproxy_process_start_time_seconds).', [],
      set => set({}, startTime))
    gauge('process_build_info', 'fastify-supervisord\'s version, as a label (HAProxy: haproxy_process_build_info).', ['version'],
      set => set({ version: VERSION }, 1))

    // Upstreams (HAProxy's backends)
    counted('backend_http_responses_total', 'Answers of the proxies over the upstream by status class, the gateway\'s own errors included (HAProxy: haproxy_backend_http_responses_total).',
      ['upstream', 'code'], set => eachUpstream((upstream, labels) => STATUS_CLASSES.forEach((code, i) => set({ ...labels, code }, upstream.answers[i]))))
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
      function * () { for (const upstream of self.#upstreams.upstreams.values()) yield [{ upstream: upstream.name }, upstream.hold.wait] })
    gauge('backend_scale_load', 'The scaler\'s last load: requests per second per running peer over its window.', ['upstream'],
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
      set => eachPeer((peer, labels) => set({ ...labels, address: peer.address, program: peer.program ?? '', backup: String(peer.backup) }, 1)))
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
      set => eachPeer((peer, labels) => STATUS_CLASSES.forEach((code, i) => set({ ...labels, code }, peer.responses[i]))))
    histogram('server_response_time_seconds', 'From a request sent to the peer to its response headers (HAProxy\'s Tr; HAProxy: haproxy_server_response_time_average_seconds).', server,
      function * () { for (const upstream of self.#upstreams.upstreams.values()) for (const peer of upstream.peers) yield [{ upstream: upstream.name, peer: String(peer.index) }, peer.responseTime] })
    counted('server_passive_failures_total', 'Failures charged to the peer, by kind: connect (refused, reset), timeout, response (malformed, truncated), status (failStatuses) (HAProxy: haproxy_server_connection_errors_total and haproxy_server_response_errors_total).',
      [...server, 'kind'], set => eachPeer((peer, labels) => { for (const kind of FAILURE_KINDS) set({ ...labels, kind }, peer.failuresByKind[kind]) }))
    counted('server_retry_warnings_total', 'Requests the peer got after another peer failed them, or after they were held again (HAProxy: haproxy_server_retry_warnings_total).', server,
      set => eachPeer((peer, labels) => set(labels, peer.retries)))
    counted('server_redispatch_warnings_total', 'Requests moved from the peer to another, after a failure or when it was taken out (HAProxy: haproxy_server_redispatch_warnings_total).', server,
      set => eachPeer((peer, labels) => set(labels, peer.redispatches)))
    counted('server_check_results_total', 'Active checks by outcome (ok, timed out, connection refused, bad status, bad body, body too large, closed early, error) (HAProxy: haproxy_server_check_failures_total).',
      [...server, 'result'], set => eachPeer((peer, labels) => { for (const result of CHECK_OUTCOMES) set({ ...labels, result }, peer.checkOutcomes.get(result) ?? 0) }))
    histogram('server_check_duration_seconds', 'How long each active check took (HAProxy: haproxy_server_check_duration_seconds, the last one only).', server,
      function * () { for (const upstream of self.#upstreams.upstreams.values()) for (const peer of upstream.peers) yield [{ upstream: upstream.name, peer: String(peer.index) }, peer.checkDuration] })
    this.#upDown = new Counter({
      name: name('server_check_up_down_total'), help: 'Times active checks took the peer from healthy or unknown to unhealthy (HAProxy: haproxy_server_check_up_down_total).', labelNames: server, registers
    })
    gauge('server_start_backoff_step', 'Failed starts in a row of the peer (0: not in start back-off).', server,
      set => eachPeer((peer, labels) => set(labels, peer.backoff?.step ?? 0)))
    gauge('server_start_backoff_seconds', 'Seconds until a start of the peer may be tried again (0: now).', server,
      set => eachPeer((peer, labels) => set(labels, peer.backoff === null ? 0 : Math.max(0, (peer.backoff.until - Date.now()) / 1000))))
    this.#commands = new Counter({
      name: name('supervisord_commands_total'),
      help: 'supervisord commands that ended, by command (start, stop), outcome (ok, failed) and fault (supervisord\'s fault name, TIMEOUT, UNREACHABLE, ...; empty when ok).',
      labelNames: [...server, 'command', 'outcome', 'fault'],
      registers
    })

    upstreams.on('command', this.#onCommand)
    upstreams.on('scale', this.#onScale)
    upstreams.on('change', this.#onChange)
  }

  readonly #onCommand = (event: CommandEvent): void => {
    this.#commands.inc({ upstream: event.upstream, peer: String(event.index), command: event.command, outcome: event.ok ? 'ok' : 'failed', fault: event.ok ? '' : event.fault ?? 'UNKNOWN' })
  }

  readonly #onScale = (event: ScaleEvent): void => {
    this.#decisions.inc({ upstream: event.upstream, action: event.action, reason: event.reason })
  }

  readonly #onChange = (change: PeerChange): void => {
    if (change.field === 'health' && change.to === 'unhealthy') this.#upDown.inc({ upstream: change.upstream, peer: String(change.index) })
  }

  /** Stops counting events (the server is closing). */
  close (): void {
    this.#upstreams.off('command', this.#onCommand)
    this.#upstreams.off('scale', this.#onScale)
    this.#upstreams.off('change', this.#onChange)
  }
}
