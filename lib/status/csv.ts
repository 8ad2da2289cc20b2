import { FAILURE_KINDS, STATUS_CLASSES } from '../peer.js'
import type { PeerStatus, StatusSnapshot } from './types.js'

const CSV_COLUMNS: Array<[string, (peer: PeerStatus) => unknown]> = [
  ['index', p => p.index],
  ['address', p => p.address],
  ['program', p => p.program],
  ['pid', p => p.pid],
  ['process', p => p.process],
  ['admin', p => p.admin],
  ['health', p => p.health],
  ['passive', p => p.passive],
  ['routable', p => p.routable],
  ['inflight', p => p.inflight],
  ['requests', p => p.requests],
  ['fails', p => p.fails],
  ['rise', p => p.rise],
  ['fall', p => p.fall],
  ['last_ok', p => p.lastCheck?.ok],
  ['last_reason', p => p.lastCheck?.reason],
  ['last_latency_ms', p => p.lastCheck?.latencyMs],
  ['last_age_ms', p => p.lastCheck?.ageMs],
  ['pin', p => p.pin],
  ['backoff_step', p => p.backoff?.step ?? 0],
  ['backoff_retry_ms', p => p.backoff?.retryInMs],
  ['state', p => p.state],
  ['in_state_ms', p => p.inStateMs],
  ['request_rate', p => p.requestRate],
  ...FAILURE_KINDS.map((kind): [string, (peer: PeerStatus) => unknown] => [`errors_${kind}`, p => p.errors[kind]]),
  ...STATUS_CLASSES.map((name): [string, (peer: PeerStatus) => unknown] => [`responses_${name}`, p => p.responses[name]]),
  ['retries', p => p.retries],
  ['redispatches', p => p.redispatches],
  ['last_check_stale', p => p.lastCheck?.stale],
  ['last_command', p => p.lastCommand?.command],
  ['last_command_ok', p => p.lastCommand?.ok],
  ['last_command_fault', p => p.lastCommand?.fault],
  ['last_command_age_ms', p => p.lastCommand?.ageMs],
  ['weight', p => p.weight],
  ['backup', p => p.backup]
]

/** RFC 4180: a field holding a comma, quote or line break is quoted, its quotes doubled; null is empty. */
function csvField (value: unknown): string {
  const text = value === null || value === undefined ? '' : String(value)
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text
}

function csvRow (fields: unknown[]): string {
  return fields.map(csvField).join(',') + '\r\n'
}

/** A header row, then one row per peer, each led by its upstream's name. */
export function statusCsv (snapshot: StatusSnapshot): string {
  let csv = csvRow(['upstream', ...CSV_COLUMNS.map(([name]) => name)])
  for (const upstream of snapshot.upstreams) {
    for (const peer of upstream.peers) csv += csvRow([upstream.name, ...CSV_COLUMNS.map(([, value]) => value(peer))])
  }
  return csv
}
