import type { Upstream, StartOutlook } from '../upstream.js'

/**
 * Whether an upstream can take a request: a peer is routable, or one is
 * being started or can be started on demand (by the supervisord bridge; not
 * in `none` mode). Not when its peers run but are out (unhealthy, failed),
 * every startable one is in back-off, or none can be started at all.
 */
export function readiness (upstream: Upstream, now = Date.now()): { ready: boolean, outlook: StartOutlook['state'] } {
  const outlook = upstream.startOutlook(now).state
  const ready = outlook === 'routable' || (upstream.startsOnDemand && (outlook === 'starting' || outlook === 'startable'))
  return { ready, outlook }
}
