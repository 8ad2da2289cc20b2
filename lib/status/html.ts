import { FAILURE_KINDS } from '../peer.js'
import { PEER_STATES, STATE_MEANINGS, type PeerState } from '../peer-state.js'
import type { OperatorCommand } from '../operator-routes.js'
import type { AdminState, HealthState, PassiveState, ProcessState } from '../peer.js'
import type { CheckStatus, GroupStatus, LastCheckStatus, PeerStatus, StatusFilter, StatusSnapshot, UpstreamStatus } from './types.js'

/** Markup that is already safe; anything else put in an `html` template is escaped. */
class Html {
  constructor (readonly text: string) {}
}

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }

export function escapeHtml (text: string): string {
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

/**
 * Each state's own colours (text, background): told apart at a glance, and
 * an idle on-demand peer is grey, not red. Crashes, back-off and passive
 * failures are drawn inverted, the loudest.
 */
export const STATE_COLOURS: Record<PeerState, { fg: string, bg: string }> = {
  serving: { fg: '#116329', bg: '#dafbe1' },
  'backup-standby': { fg: '#0b6e77', bg: '#d3f4f6' },
  starting: { fg: '#0550ae', bg: '#ddf4ff' },
  stopped: { fg: '#424a53', bg: '#eaeef2' },
  'stopped-by-operator': { fg: '#6639ba', bg: '#f3e8ff' },
  crashed: { fg: '#ffffff', bg: '#a40e26' },
  stopping: { fg: '#3e4b8f', bg: '#e4e8fb' },
  draining: { fg: '#7d4e00', bg: '#fff8c5' },
  maint: { fg: '#953800', bg: '#ffe7d1' },
  unhealthy: { fg: '#cf222e', bg: '#ffebe9' },
  'passive-failed': { fg: '#ffffff', bg: '#d1570f' },
  'back-off': { fg: '#ffffff', bg: '#6e4a00' }
}

const LABELS: Record<PeerState, string> = {
  serving: 'serving',
  'backup-standby': 'backup standby',
  starting: 'starting',
  stopped: 'stopped',
  'stopped-by-operator': 'stopped by operator',
  crashed: 'crashed',
  stopping: 'stopping',
  draining: 'draining',
  maint: 'maint',
  unhealthy: 'unhealthy',
  'passive-failed': 'passive failed',
  'back-off': 'back-off'
}

/** How each dimension's value reads: good, passing (warn) or bad. */
const TONE: Record<ProcessState | AdminState | HealthState | PassiveState, 'good' | 'warn' | 'bad' | 'neutral'> = {
  up: 'good',
  starting: 'warn',
  stopping: 'warn',
  down: 'neutral',
  ready: 'good',
  drain: 'warn',
  maint: 'bad',
  healthy: 'good',
  unknown: 'neutral',
  unhealthy: 'bad',
  ok: 'good',
  failed: 'bad'
}

const STATE_CSS = PEER_STATES.map(state => {
  const { fg, bg } = STATE_COLOURS[state]
  // The row is tinted with the state's light colour; an inverted state tints it with a light wash of its own.
  const light = fg === '#ffffff' ? `color-mix(in srgb, ${bg} 14%, #fff)` : bg
  return `.badge.s-${state} { color: ${fg}; background: ${bg}; border-color: ${fg === '#ffffff' ? bg : fg}; }\n` +
    `tr.peer.s-${state} { background: ${light}; }\ntr.peer.s-${state} > td:first-child { box-shadow: inset 4px 0 ${fg === '#ffffff' ? bg : fg}; }`
}).join('\n')

const CSS = new Html(`
:root { color-scheme: light; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; }
body { margin: 0 auto; padding: 12px 16px; max-width: 1400px; }
h1 { font-size: 19px; margin: 0 0 2px; }
h2 { font-size: 15px; margin: 0; display: inline; }
.meta, .muted { color: #59636e; }
nav { margin: 6px 0 10px; }
nav a { margin-right: 10px; color: #0969da; }
nav a.current { font-weight: 600; color: #1f2328; text-decoration: none; }
details.legend { margin: 0 0 12px; background: #fff; border: 1px solid #d1d9e0; border-radius: 6px; padding: 6px 10px; }
details.legend summary { cursor: pointer; font-weight: 600; }
dl.legend { display: grid; grid-template-columns: max-content 1fr; gap: 3px 10px; margin: 8px 0 2px; }
dl.legend dd { margin: 0; color: #59636e; }
section { background: #fff; border: 1px solid #d1d9e0; border-radius: 6px; margin-bottom: 14px; overflow-x: auto; }
section > header { padding: 8px 10px; border-bottom: 1px solid #d1d9e0; }
section > header .meta { margin-left: 10px; }
section > header p { margin: 4px 0 0; }
.count { display: inline-block; margin-left: 10px; padding: 1px 8px; border-radius: 10px; font-weight: 600; }
.count.all { background: #dafbe1; color: #116329; }
.count.some { background: #fff8c5; color: #7d4e00; }
.count.none { background: #ffebe9; color: #a40e26; }
.ready { font-weight: 600; }
.ready.yes { color: #116329; }
.ready.no { color: #a40e26; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 4px 6px; text-align: left; vertical-align: top; border-bottom: 1px solid #eaeef2; }
th { font-size: 11px; font-weight: 600; color: #59636e; background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.last { max-width: 14em; overflow-wrap: anywhere; }
tr.peer > td { border-bottom: none; }
tr.actions > td { padding: 0 6px 5px 10px; border-bottom: 1px solid #d1d9e0; }
.badge { display: inline-block; font-weight: 700; text-transform: uppercase; font-size: 11px; letter-spacing: .02em; padding: 1px 6px; border: 1px solid; border-radius: 4px; white-space: nowrap; }
.since { display: block; font-size: 11px; color: #59636e; }
.good { color: #1a7f37; }
.warn { color: #9a6700; font-weight: 600; }
.bad { color: #cf222e; font-weight: 600; }
.neutral { color: #59636e; }
.tag { display: inline-block; font-size: 11px; padding: 0 5px; border: 1px solid #d1d9e0; border-radius: 8px; margin: 1px 4px 0 0; color: #59636e; background: #fff; }
.tag.bad { color: #cf222e; border-color: #cf222e; }
.line { display: block; }
.stale { color: #8c959f; font-style: italic; }
svg.spark.stale { opacity: .35; }
.empty { padding: 10px 12px; }
svg.spark { display: block; }
form.act { display: inline-block; margin: 0 4px 0 0; }
form.act button { font: inherit; font-size: 12px; padding: 1px 8px; border: 1px solid #d1d9e0; border-radius: 5px; background: #f6f8fa; color: #1f2328; cursor: pointer; }
form.act button:hover { background: #eaeef2; }
form.act input[type=number] { width: 4.5em; font: inherit; font-size: 12px; padding: 1px 3px; }
.signin { margin-left: 8px; }
footer { font-size: 12px; }
${STATE_CSS}
`)

export function duration (ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`
  const seconds = ms / 1000
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`
  if (seconds < 86_400) return `${Math.round(seconds / 3600)} h`
  return `${Math.round(seconds / 86_400)} d`
}

function tone (value: keyof typeof TONE): Html {
  return html`<span class="${TONE[value]}">${value}</span>`
}

function badge (state: PeerState): Html {
  return html`<span class="badge s-${state}" title="${STATE_MEANINGS[state]}">${LABELS[state]}</span>`
}

const BAR_WIDTH = 4
const BAR_GAP = 1
const SPARK_HEIGHT = 20
/** Latencies under this fill less than the full height, so a fast peer does not look slow. */
const SPARK_FLOOR_MS = 10

/** A bar per recent check, oldest on the left: height is latency, green passed, red failed; faded when stale. */
function sparkline (checks: CheckStatus[], stale: boolean): Html {
  if (checks.length === 0) return html`<span class="muted">no checks yet</span>`
  const scale = Math.max(SPARK_FLOOR_MS, ...checks.map(check => check.latencyMs))
  const width = checks.length * (BAR_WIDTH + BAR_GAP) - BAR_GAP
  const failed = checks.filter(check => !check.ok).length
  const bars = checks.map((check, i) => {
    const height = Math.max(2, Math.round(check.latencyMs / scale * SPARK_HEIGHT))
    return html`<rect class="bar ${check.ok ? 'ok' : 'fail'}" x="${i * (BAR_WIDTH + BAR_GAP)}" y="${SPARK_HEIGHT - height}" width="${BAR_WIDTH}" height="${height}" fill="${check.ok ? '#2da44e' : '#cf222e'}"><title>${check.reason}, ${check.latencyMs} ms, ${duration(check.ageMs)} ago</title></rect>`
  })
  return html`<svg class="spark${stale ? ' stale' : ''}" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${SPARK_HEIGHT}" viewBox="0 0 ${width} ${SPARK_HEIGHT}" role="img" aria-label="${checks.length} recent checks, ${failed} failed">${bars}</svg>`
}

function lastCheckCell (check: LastCheckStatus | null): Html {
  if (check === null) return html`<span class="muted">never checked</span>`
  const text = html`<span class="${check.ok ? 'good' : 'bad'}">${check.reason}</span> <span class="muted">${check.latencyMs} ms, ${duration(check.ageMs)} ago</span>`
  return check.stale ? html`<span class="stale" title="not checked while its process is not running">stale: ${check.reason}, ${duration(check.ageMs)} ago</span>` : text
}

function peerCell (peer: PeerStatus): Html {
  const tags = [
    peer.backup && html`<span class="tag">backup</span>`,
    peer.weight !== 1 && html`<span class="tag">weight ${peer.weight}</span>`,
    peer.pin !== 'none' && html`<span class="tag" title="pinned ${peer.pin} by an operator's ${peer.pin === 'up' ? 'start' : 'stop'}: the scaler leaves it alone until released">pinned ${peer.pin}</span>`
  ]
  const name = peer.address === null ? html`<span class="muted">peer ${peer.index}</span>` : html`<span class="line">${peer.address}</span>`
  const program = peer.program === null ? '' : html`<span class="line muted">${peer.program}${peer.pid !== null && ` · pid ${peer.pid}`}</span>`
  return html`${name}${program}${tags}`
}

function trafficCell (peer: PeerStatus): Html {
  return html`<span class="line">${peer.inflight} in flight</span><span class="line muted">${peer.requestRate === null ? '– req/s' : `${peer.requestRate} req/s`}</span><span class="line muted">${peer.requests} total</span>`
}

function errorsCell (peer: PeerStatus): Html {
  const kinds = FAILURE_KINDS.filter(kind => peer.errors[kind] > 0).map(kind => html`<span class="line bad">${kind} ${peer.errors[kind]}</span>`)
  const fivexx = peer.responses['5xx']
  return html`${kinds.length === 0 ? html`<span class="line muted">no failures</span>` : kinds}${fivexx > 0 && html`<span class="line">5xx answers ${fivexx}</span>`}<span class="line muted" title="retried here after another peer failed · moved away from here to another peer">retried ${peer.retries} · moved ${peer.redispatches}</span>`
}

function supervisordCell (peer: PeerStatus): Html {
  const command = peer.lastCommand
  const last = command === null
    ? html`<span class="line muted">no command yet</span>`
    : html`<span class="line ${command.ok ? '' : 'bad'}">${command.command} ${command.ok ? 'ok' : `failed ${command.fault ?? ''}`}</span><span class="line muted">${duration(command.ageMs)} ago${command.by !== null && ` · sent by ${command.by}`}</span>`
  const backoff = peer.backoff !== null && html`<span class="tag bad" title="start back-off: ${peer.backoff.step} failed starts in a row">retry in ${duration(peer.backoff.retryInMs)}</span>`
  return html`${last}${backoff}`
}

const HEADINGS = ['State', 'Peer', 'Process · admin · health · passive', 'Traffic', 'Errors', 'Checks', 'Last command']

/** The operator's forms of one upstream: where each command posts, and how. */
export interface PeerForms {
  method: 'POST' | 'GET'
  paths: Partial<Record<OperatorCommand, string>>
}

/** The commands that make sense for a peer in its state, each a form posting to its route. */
function actions (peer: PeerStatus, forms: PeerForms, back: string): Html {
  const form = (command: OperatorCommand, label: string, extra: Html | '' = ''): Html | false => {
    const path = forms.paths[command]
    if (path === undefined) return false
    return html`<form class="act" method="${forms.method.toLowerCase()}" action="${path}/${peer.index}"><input type="hidden" name="back" value="${back}">${extra}<button type="submit" name="do" value="${command}">${label}</button></form>`
  }
  const running = peer.process === 'up' || peer.process === 'starting'
  return html`<tr class="actions s-${peer.state}"><td colspan="${HEADINGS.length}">${[
    !running && form('start', 'start'),
    peer.process !== 'down' && form('stop', 'stop'),
    peer.admin !== 'drain' && form('drain', 'drain'),
    peer.admin !== 'maint' && form('maint', 'maint'),
    peer.admin !== 'ready' && form('ready', 'ready'),
    peer.pin !== 'none' && form('release', 'release pin'),
    form('weight', 'set weight', html`<input type="number" name="value" min="1" max="1000" step="1" required value="${peer.weight}" aria-label="weight of peer ${peer.index}"> `)
  ]}</td></tr>`
}

/** Who checks the peer, where the group shares the checks (undefined: this gateway checks all its peers itself). */
function checkerLine (checker: string | null | undefined, group: GroupStatus): Html | false {
  if (checker === undefined) return false
  return html`<span class="line muted">checked by ${checker === null ? 'nobody now' : checker === group.gateway ? 'this gateway' : checker}</span>`
}

function peerRows (peer: PeerStatus, forms: PeerForms | undefined, back: string, checker: Html | false): Html {
  const stale = peer.lastCheck?.stale ?? !(peer.process === 'up' || peer.process === 'starting')
  return html`<tr class="peer s-${peer.state}" id="peer-${peer.index}">
<td>${badge(peer.state)}<span class="since">for ${duration(peer.inStateMs)}</span></td>
<td><span class="line"><b>#${peer.index}</b></span>${peerCell(peer)}</td>
<td><span class="line">${tone(peer.process)} · ${tone(peer.admin)}</span><span class="line">${tone(peer.health)} · ${tone(peer.passive)}</span><span class="line muted">rise ${peer.rise} / fall ${peer.fall}</span></td>
<td class="num">${trafficCell(peer)}</td>
<td>${errorsCell(peer)}</td>
<td class="last">${sparkline(peer.checks, stale)}${lastCheckCell(peer.lastCheck)}${checker}</td>
<td>${supervisordCell(peer)}</td>
</tr>${forms !== undefined && actions(peer, forms, back)}`
}

function countClass (summary: UpstreamStatus['summary']): string {
  if (summary.routable === 0) return 'none'
  return summary.routable === summary.total ? 'all' : 'some'
}

const OUTLOOK: Record<UpstreamStatus['readiness']['outlook'], string> = {
  routable: 'a peer is routable',
  starting: 'a peer is starting',
  startable: 'a peer can be started',
  recovering: 'its peers run but are out',
  backoff: 'every startable peer is in start back-off',
  none: 'no peer can be started'
}

/** Whose requests the scaler's load counts, in a group whose scaler one gateway leads. */
function loadScope (scale: NonNullable<UpstreamStatus['scale']>, group: GroupStatus): string {
  if (scale.over === 'group') return ' over the group'
  if (group.scaler === undefined) return ''
  return group.scaler === group.gateway ? ' on this gateway' : ` on this gateway (the group's lead, ${group.scaler ?? 'nobody now'}, decides on the sum)`
}

function upstreamHeader (upstream: UpstreamStatus, group: GroupStatus): Html {
  const { summary, hold, scale, readiness } = upstream
  const scaleLine = scale === null
    ? ''
    : html`<p class="meta">scaler: load ${scale.load === null ? '– (first window not over)' : `${scale.load} req/s per running peer${loadScope(scale, group)}`} against a threshold of ${scale.threshold} · ${scale.running} running (min ${scale.minRunning}, max ${scale.maxRunning}) · next decision in ${duration(scale.nextDecisionInMs)}</p>`
  return html`<header><h2>${upstream.name}</h2><span class="count ${countClass(summary)}">routable ${summary.routable} of ${summary.total}</span>
<span class="ready ${readiness.ready ? 'yes' : 'no'}" title="${OUTLOOK[readiness.outlook]}">${readiness.ready ? 'ready' : 'not ready'}</span>
<span class="meta">balancer ${upstream.balancer}${upstream.supervisord !== null && ` · supervisord ${upstream.supervisord}`}</span>
<p class="meta hold">held ${hold.current} now · max ${hold.max} · ${hold.overflows} overflows · ${hold.timeouts} timed out</p>${scaleLine}</header>`
}

function upstreamSection (upstream: UpstreamStatus, page: HtmlPageOptions, group: GroupStatus): Html {
  const forms = page.forms?.get(upstream.name)
  const checkers = new Map(group.checks.filter(check => check.upstream === upstream.name).map(check => [check.index, check.owner]))
  const table = upstream.peers.length === 0
    ? html`<p class="empty muted">No peer is ${page.status}.</p>`
    : html`<table><thead><tr>${HEADINGS.map(heading => html`<th scope="col">${heading}</th>`)}</tr></thead>
<tbody>${upstream.peers.map(peer => peerRows(peer, forms, page.back, checkerLine(checkers.get(peer.index), group)))}</tbody></table>`
  return html`<section class="upstream" id="upstream-${upstream.name}">
${upstreamHeader(upstream, group)}
${table}
</section>`
}

/** The gateways of the group, when a store is shared: the store's state, the members, who checks and who leads the scaler. */
function groupSection (group: GroupStatus): Html | false {
  if (!group.store.shared) return false
  const owners = new Map<string | null, number>()
  for (const { owner } of group.checks) owners.set(owner, (owners.get(owner) ?? 0) + 1)
  const unowned = owners.get(null) ?? 0
  const you = (id: string): Html => html`${id}${id === group.gateway && html` <span class="tag">this gateway</span>`}`
  // Redacted: the store's state only (gateway ids hold host names).
  const members = group.members.length > 0 && html`<table><thead><tr><th scope="col">Gateway</th><th scope="col">Host</th><th scope="col">PID</th><th scope="col">Seen</th><th scope="col">Checks</th></tr></thead>
<tbody>${group.members.map(member => html`<tr class="member"><td>${you(member.id)}</td><td>${member.host}</td><td class="num">${member.pid}</td><td>${duration(member.ageMs)} ago</td><td class="num">${owners.get(member.id) ?? 0}</td></tr>`)}</tbody></table>`
  return html`<section class="group" id="group">
<header><h2>Gateways</h2><span class="meta">store: <span class="store ${group.store.state === 'ok' ? 'good' : 'bad'}">${group.store.kind} ${group.store.state}</span> for ${duration(group.store.sinceMs)}</span>${group.scaler !== undefined && html`<span class="meta">scaler led by ${group.scaler ?? 'nobody'}</span>`}${unowned > 0 && html`<span class="meta">checks of ${unowned} peer${unowned === 1 ? '' : 's'} held by nobody at the last sync</span>`}</header>
${members}
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

function legend (): Html {
  return html`<details class="legend"><summary>Legend</summary><dl class="legend">${PEER_STATES.map(state =>
    html`<dt>${badge(state)}</dt><dd>${STATE_MEANINGS[state]}</dd>`)}</dl></details>`
}

export interface HtmlPageOptions {
  title: string
  refresh: number
  status?: StatusFilter
  now: number
  /** The upstreams whose operator forms this viewer may use (they pass the routes' guard). */
  forms?: ReadonlyMap<string, PeerForms>
  /** Where the forms send the browser back to: this page. */
  back: string
  /** A link that asks the browser for the token (HTTP Basic), when a token would show more. */
  signIn?: string
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
  const { gateway } = snapshot
  return '<!doctype html>\n' + html`<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
${page.refresh > 0 && html`<meta http-equiv="refresh" content="${page.refresh}">`}
<title>${down > 0 ? `(${down} down) ` : ''}${page.title}</title>
<style>${CSS}</style></head>
<body><h1>${page.title}</h1>
<p class="meta">fastify-supervisord ${gateway.version} · up ${duration(gateway.uptimeMs)} · ${snapshot.upstreams.length} upstream${snapshot.upstreams.length === 1 ? '' : 's'} · ${routable} of ${total} peers routable${page.refresh > 0 ? ` · refreshes every ${page.refresh} s` : ''}${page.signIn !== undefined && html`<a class="signin" href="${page.signIn}">sign in</a>`}</p>
${navigation(page.status)}
${groupSection(snapshot.group)}
${legend()}
${snapshot.upstreams.map(upstream => upstreamSection(upstream, page, snapshot.group))}
<footer class="muted">Generated <time datetime="${new Date(page.now).toISOString()}">${new Date(page.now).toISOString()}</time></footer>
</body></html>
`.text
}
