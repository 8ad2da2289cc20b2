// fastify-supervisord: the package face. Register `registry` first, then any
// of the plugins; each declares what it depends on.

export { default as registry, Registry, Upstream, parseAddress, MAX_WEIGHT } from './plugins/registry.js'
export type {
  RegistryOptions, UpstreamOptions, ServerOptions, RegistryEvents, DemandEvent, CommandEvent, ScaleEvent
} from './plugins/registry.js'
export { Peer, ADMIN_STATES } from './plugins/peer.js'
export type { ProcessState, AdminState, HealthState, PassiveState, CheckResult, PeerChange } from './plugins/peer.js'

export { default as proxy } from './plugins/proxy.js'
export type { ProxyOptions } from './plugins/proxy.js'

export { default as supervisord } from './plugins/supervisord.js'
export type { SupervisordBridge, SupervisordBridgeOptions, ExecuteOptions, ExecuteResult, Command } from './plugins/supervisord.js'
export { SupervisordClient, SupervisordCallError, SUPERVISORD_FAULTS } from './plugins/supervisord-client.js'
export type { SupervisordClientOptions, ProcessInfo } from './plugins/supervisord-client.js'
export { parseSupervisord, supervisordLabel } from './plugins/supervisord-address.js'
export type { SupervisordOptions, SupervisordTarget } from './plugins/supervisord-address.js'

export { default as healthCheck } from './plugins/health.js'
export type { HealthCheckOptions, HealthPluginOptions } from './plugins/health.js'
export { probe } from './plugins/health-probe.js'
export type { ProbeOptions, ExpectedStatus } from './plugins/health-probe.js'

export { default as scaler } from './plugins/scaler.js'
export type { ScaleOptions } from './plugins/scaler.js'

export { supervisordCommands, supervisordRoutes } from './routes/supervisord-routes.js'
export type { SupervisordRoutesOptions } from './routes/supervisord-routes.js'
export { default as statusPage, statusSnapshot } from './routes/status-page.js'
export type { StatusPageOptions, StatusSnapshot, UpstreamStatus, PeerStatus } from './routes/status-page.js'

export type { Balancer, BalancedUpstream, RoutableTiers } from './balancers/balancer.js'
export { createBalancer, BALANCER_NAMES } from './balancers/index.js'
export type { BalancerName } from './balancers/index.js'
export { RoundRobinBalancer } from './balancers/round-robin.js'
export { FairBalancer } from './balancers/fair.js'
export { IpHashBalancer } from './balancers/ip-hash.js'
export { HashBalancer } from './balancers/hash.js'
export type { HashKey } from './balancers/hash.js'

export * as errors from './plugins/errors.js'
