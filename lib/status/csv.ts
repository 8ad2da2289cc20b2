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
  ['backoff_retry_ms', p => p.backoff?.retryInMs]
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
