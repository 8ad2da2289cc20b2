import type { AdminState, HealthState, PassiveState, ProcessState } from '../peer.js'
import type { CheckStatus, PeerStatus, StatusFilter, StatusSnapshot, UpstreamStatus } from './types.js'

/** Markup that is already safe; anything else put in an `html` template is escaped. */
class Html {
  constructor (readonly text: string) {}
}

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }

function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, char => HTML_ESCAPES[char])
}

function markup (value: unknown): string {
  if (value instanceof Html) return value.text
  if (Array.isArray(value)) return value.map(markup).join('')
  if (value === null || value === undefined || value === false) return ''
  return escapeHtml(String(value))
}

/** A template whose interpolations are HTML-escaped unless they are `Html` themselves. */
function html (strings: TemplateStringsArray, ...values: unknown[]): Html {
  let text = strings[0]
  values.forEach((value, i) => { text += markup(value) + strings[i + 1] })
  return new Html(text)
}

/** How each state reads at a glance: good, passing (warn) or bad. */
const TONE: Record<ProcessState | AdminState | HealthState | PassiveState, 'good' | 'warn' | 'bad' | 'neutral'> = {
  up: 'good',
  starting: 'warn',
  stopping: 'warn',
  down: 'bad',
  ready: 'good',
  drain: 'warn',
  maint: 'bad',
  healthy: 'good',
  unknown: 'neutral',
  unhealthy: 'bad',
  ok: 'good',
  failed: 'bad'
}

const CSS = new Html(`
:root { color-scheme: light; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; }
body { margin: 0 auto; padding: 16px 24px; max-width: 1400px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0; display: inline; }
.meta, .muted { color: #59636e; }
nav { margin: 8px 0 16px; }
nav a { margin-right: 10px; color: #0969da; }
nav a.current { font-weight: 600; color: #1f2328; text-decoration: none; }
section { background: #fff; border: 1px solid #d1d9e0; border-radius: 6px; margin-bottom: 16px; overflow-x: auto; }
section > header { padding: 10px 12px; border-bottom: 1px solid #d1d9e0; }
section > header .meta { margin-left: 12px; }
.count { display: inline-block; margin-left: 12px; padding: 1px 8px; border-radius: 10px; font-weight: 600; }
.count.all { background: #dafbe1; color: #116329; }
.count.some { background: #fff8c5; color: #7d4e00; }
.count.none { background: #ffebe9; color: #a40e26; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 4px 8px; text-align: left; white-space: nowrap; border-bottom: 1px solid #eaeef2; }
th { font-size: 12px; font-weight: 600; color: #59636e; background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.last { white-space: normal; min-width: 12em; max-width: 28em; overflow-wrap: anywhere; }
tr.peer.up { background: #fff; }
tr.peer.down { background: #ffebe9; }
tr.peer.down td:first-child { box-shadow: inset 4px 0 #cf222e; }
.state { font-weight: 700; text-transform: uppercase; font-size: 12px; }
tr.peer.up .state { color: #1a7f37; }
tr.peer.down .state { color: #cf222e; }
.good { color: #1a7f37; }
.warn { color: #9a6700; font-weight: 600; }
.bad { color: #cf222e; font-weight: 600; }
.tag.under { display: table; margin: 2px 0 0; padding: 0 4px; }
.tag { font-size: 11px; padding: 0 5px; border: 1px solid #d1d9e0; border-radius: 8px; margin-left: 6px; color: #59636e; }
.empty { padding: 10px 12px; }
svg.spark { display: block; }
footer { font-size: 12px; }
`)

function duration (ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`
  const seconds = ms / 1000
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`
  if (seconds < 86_400) return `${Math.round(seconds / 3600)} h`
  return `${Math.round(seconds / 86_400)} d`
}

function state (value: keyof typeof TONE): Html {
  return html`<span class="${TONE[value]}">${value}</span>`
}

const BAR_WIDTH = 5
const BAR_GAP = 2
const SPARK_HEIGHT = 22
/** Latencies under this fill less than the full height, so a fast peer does not look slow. */
const SPARK_FLOOR_MS = 10

/** A bar per recent check, oldest on the left: height is latency, green passed, red failed. */
function sparkline (checks: CheckStatus[]): Html {
  if (checks.length === 0) return html`<span class="muted">no checks yet</span>`
  const scale = Math.max(SPARK_FLOOR_MS, ...checks.map(check => check.latencyMs))
  const width = checks.length * (BAR_WIDTH + BAR_GAP) - BAR_GAP
  const failed = checks.filter(check => !check.ok).length
  const bars = checks.map((check, i) => {
    const height = Math.max(2, Math.round(check.latencyMs / scale * SPARK_HEIGHT))
    return html`<rect class="bar ${check.ok ? 'ok' : 'fail'}" x="${i * (BAR_WIDTH + BAR_GAP)}" y="${SPARK_HEIGHT - height}" width="${BAR_WIDTH}" height="${height}" fill="${check.ok ? '#2da44e' : '#cf222e'}"><title>${check.reason}, ${check.latencyMs} ms, ${duration(check.ageMs)} ago</title></rect>`
  })
  return html`<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${SPARK_HEIGHT}" viewBox="0 0 ${width} ${SPARK_HEIGHT}" role="img" aria-label="${checks.length} recent checks, ${failed} failed">${bars}</svg>`
}

function lastCheckCell (check: CheckStatus | null): Html {
  if (check === null) return html`<span class="muted">never</span>`
  return html`<span class="${check.ok ? 'good' : 'bad'}">${check.reason}</span> <span class="muted">${check.latencyMs} ms, ${duration(check.ageMs)} ago</span>`
}

const HEADINGS = ['State', '#', 'Address', 'Program', 'PID', 'Process', 'Admin', 'Health', 'Passive',
  'In-flight', 'Requests', 'Fails', 'Rise / fall', 'Recent checks', 'Last check']

/** One row, its cells in the order of HEADINGS. */
function peerRow (peer: PeerStatus): Html {
  const up = peer.routable ? 'up' : 'down'
  return html`<tr class="peer ${up}">
<td class="state">${up}</td><td class="num">${peer.index}</td>
<td>${peer.address}${peer.backup && html`<span class="tag">backup</span>`}${peer.weight !== 1 && html`<span class="tag">weight ${peer.weight}</span>`}</td>
<td>${peer.program}</td><td class="num">${peer.pid ?? html`<span class="muted">-</span>`}</td>
<td>${state(peer.process)}${peer.backoff !== null && html`<span class="tag under bad" title="start back-off: ${peer.backoff.step} failed starts in a row, next try in ${duration(peer.backoff.retryInMs)}">retry ${duration(peer.backoff.retryInMs)}</span>`}</td>
<td>${state(peer.admin)}${peer.pin !== 'none' && html`<span class="tag under" title="pinned ${peer.pin} by an operator's ${peer.pin === 'up' ? 'start' : 'stop'}: the scaler leaves it alone until released">pinned</span>`}</td><td>${state(peer.health)}</td><td>${state(peer.passive)}</td>
<td class="num">${peer.inflight}</td><td class="num">${peer.requests}</td><td class="num">${peer.fails}</td>
<td class="num">${peer.rise} / ${peer.fall}</td><td>${sparkline(peer.checks)}</td><td class="last">${lastCheckCell(peer.lastCheck)}</td>
</tr>`
}

function countClass (summary: UpstreamStatus['summary']): string {
  if (summary.routable === 0) return 'none'
  return summary.routable === summary.total ? 'all' : 'some'
}

function upstreamSection (upstream: UpstreamStatus, status: StatusFilter | undefined): Html {
  const { summary } = upstream
  const table = upstream.peers.length === 0
    ? html`<p class="empty muted">No peer is ${status}.</p>`
    : html`<table><thead><tr>${HEADINGS.map(heading => html`<th scope="col">${heading}</th>`)}</tr></thead>
<tbody>${upstream.peers.map(peerRow)}</tbody></table>`
  return html`<section class="upstream" id="upstream-${upstream.name}">
<header><h2>${upstream.name}</h2><span class="count ${countClass(summary)}">routable ${summary.routable} of ${summary.total}</span><span class="meta">balancer ${upstream.balancer} · supervisord ${upstream.supervisord}</span></header>
${table}
</section>`
}

function queryLink (params: Record<string, string | undefined>): string {
  const query = new URLSearchParams()
  for (const [key, value] of Object.entries(params)) if (value !== undefined) query.set(key, value)
  const text = query.toString()
  return text === '' ? '?' : `?${text}`
}

function navigation (status: StatusFilter | undefined): Html {
  const filters: Array<[string, StatusFilter | undefined]> = [['all peers', undefined], ['up', 'up'], ['down', 'down']]
  return html`<nav>${filters.map(([label, value]) =>
    html`<a href="${queryLink({ status: value })}"${value === status ? html` class="current" aria-current="page"` : ''}>${label}</a>`)}
<span class="muted">·</span> <a href="${queryLink({ format: 'json', status })}">JSON</a><a href="${queryLink({ format: 'csv', status })}">CSV</a></nav>`
}

export interface HtmlPageOptions {
  title: string
  refresh: number
  status?: StatusFilter
  now: number
}

/** The whole page, self-contained: inline CSS and SVG, no script, no external asset. */
export function statusHtml (snapshot: StatusSnapshot, page: HtmlPageOptions): string {
  let routable = 0
  let total = 0
  for (const { summary } of snapshot.upstreams) {
    routable += summary.routable
    total += summary.total
  }
  const down = total - routable
  return '<!doctype html>\n' + html`<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
${page.refresh > 0 && html`<meta http-equiv="refresh" content="${page.refresh}">`}
<title>${down > 0 ? `(${down} down) ` : ''}${page.title}</title>
<style>${CSS}</style></head>
<body><h1>${page.title}</h1>
<p class="meta">${snapshot.upstreams.length} upstream${snapshot.upstreams.length === 1 ? '' : 's'} · ${routable} of ${total} peers routable${page.refresh > 0 ? ` · refreshes every ${page.refresh} s` : ''}</p>
${navigation(page.status)}
${snapshot.upstreams.map(upstream => upstreamSection(upstream, page.status))}
<footer class="muted">Generated <time datetime="${new Date(page.now).toISOString()}">${new Date(page.now).toISOString()}</time></footer>
</body></html>
`.text
}
