// fastify-supervisord: the package face. Register `registry` first, then any
// of the plugins; each declares what it depends on.

export { default as registry } from './plugins/registry.js'
export { Registry } from './lib/registry.js'
export type { RegistryOptions } from './lib/registry.js'
export { Upstream, parseAddress, MAX_WEIGHT } from './lib/upstream.js'
export type { UpstreamOptions, ServerOptions } from './lib/upstream.js'
export type { TlsOptions, UpstreamTls } from './lib/tls-options.js'
export type { RegistryEvents, DemandEvent, CommandEvent, ScaleEvent } from './lib/events.js'
export { Peer, ADMIN_STATES, FAILURE_KINDS, STATUS_CLASSES, CHECK_OUTCOMES } from './lib/peer.js'
export type { ProcessState, AdminState, HealthState, PassiveState, PinState, StartBackoff, CheckResult, PeerChange, FailureKind, StatusClass, CheckOutcome } from './lib/peer.js'
export type { ScaleReading, HoldStats, StartOutlook } from './lib/upstream.js'
export { PEER_STATES, STATE_MEANINGS, peerState } from './lib/peer-state.js'
export type { PeerState } from './lib/peer-state.js'
export { Buckets } from './lib/buckets.js'

export { default as proxy } from './plugins/proxy.js'
export type { ProxyOptions, ProxyHooks, ProxyReplyOptions, WebSocketHooks, WebSocketHookContext } from './lib/proxy-options.js'
export type { NextUpstreamWord } from './lib/fault.js'

export { default as supervisord } from './plugins/supervisord.js'
export type { SupervisordBridge, SupervisordBridgeOptions, ExecuteOptions, ExecuteResult, Command } from './lib/supervisord-bridge.js'
export { SupervisordClient, SupervisordCallError, SUPERVISORD_FAULTS } from './lib/supervisord-client.js'
export type { SupervisordClientOptions, ProcessInfo } from './lib/supervisord-client.js'
export { parseSupervisord, supervisordLabel } from './lib/supervisord-address.js'
export type { SupervisordOptions, SupervisordTarget } from './lib/supervisord-address.js'

export { default as healthCheck } from './plugins/health.js'
export type { HealthCheckOptions, HealthPluginOptions } from './lib/health-checker.js'
export { probe, Prober } from './lib/health-probe.js'
export type { ProbeOptions, ProbeTarget, ProbeTls, ExpectedStatus } from './lib/health-probe.js'

export { default as scaler } from './plugins/scaler.js'
export type { ScaleOptions } from './lib/scaler.js'

export { supervisordCommands, supervisordRoutes } from './routes/supervisord-routes.js'
export type { SupervisordRoutesOptions } from './routes/supervisord-routes.js'
export { default as statusPage } from './routes/status-page.js'
export type { StatusPageOptions } from './routes/status-page.js'
export { statusSnapshot, upstreamStatus } from './lib/status/snapshot.js'
export type { SnapshotOptions } from './lib/status/snapshot.js'
export type { StatusSnapshot, UpstreamStatus, PeerStatus, GatewayStatus, CheckStatus, LastCheckStatus, CommandStatus, GroupStatus } from './lib/status/types.js'
export { readiness } from './lib/status/readiness.js'

export { default as metrics } from './plugins/metrics.js'
export type { MetricsOptions } from './plugins/metrics.js'
export { SuiteMetrics, METRICS_PREFIX } from './lib/metrics.js'
export type { AccessOptions } from './lib/guard.js'
export type { AccessFields } from './lib/proxy-observer.js'

export type { Balancer, BalancedUpstream, RoutableTiers } from './balancers/balancer.js'
export { createBalancer, BALANCER_NAMES } from './balancers/index.js'
export type { BalancerName } from './balancers/index.js'
export { RoundRobinBalancer } from './balancers/round-robin.js'
export { FairBalancer } from './balancers/fair.js'
export { IpHashBalancer } from './balancers/ip-hash.js'
export { HashBalancer } from './balancers/hash.js'
export type { HashKey } from './balancers/hash.js'

export { closeGracefully } from './lib/graceful-close.js'
export type { GracefulCloseOptions } from './lib/graceful-close.js'

export * as errors from './lib/errors.js'

export { MemoryStore, MemoryBackend } from './lib/store/memory-store.js'
export type { MemoryStoreOptions } from './lib/store/memory-store.js'
export { RedisStore } from './lib/store/redis-store.js'
export type { RedisStoreOptions } from './lib/store/redis-store.js'
export type { RedisClientLike } from './lib/store/redis-link.js'
export type { StoreOptions, RedisTimingOptions } from './lib/store/options.js'
export type {
  Store, StoreState, StoreStatus, StoreEvents, StoreMessage, PublishedEvent, SettingsEvent, ProcessEvent, HealthEvent, ResyncEvent,
  PeerSettings, PeerPin, SettingName, PeerRef, PeerSettingsRecord, SettingsSnapshot, SharedHealth, SharedHealthRecord, LoadSum, Member, MemberDetails
} from './lib/store/types.js'
export { Group, leaseNames } from './lib/group.js'
export type { GroupOptions, GroupEvents } from './lib/group.js'
export { LeaseKeeper, withLease } from './lib/store/lease.js'
export type { LeaseKeeperOptions, LeaseEvents, LeaseTaskResult } from './lib/store/lease.js'
