import { mkdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import registry from '../plugins/registry.js'
import supervisord from '../plugins/supervisord.js'
import statusPage, { type StatusPageOptions } from '../routes/status-page.js'
import { supervisordRoutes, type SupervisordRoutesOptions } from '../routes/supervisord-routes.js'
import { STATE_COLOURS } from '../lib/status/html.js'
import { PEER_STATES, STATE_MEANINGS } from '../lib/peer-state.js'
import { statusSnapshot } from '../lib/status/snapshot.js'
import { browserSkip, launchBrowser } from './helpers/browser.js'
import { STATE_OF_PEER, STATES_UPSTREAMS, putInStates } from './helpers/states.js'

// Runs inside the page (tsconfig has no DOM lib).
declare function getComputedStyle (element: unknown): { backgroundColor: string, color: string, fill: string, opacity: string }

/** Where the screenshots go: SCREENSHOT_DIR to keep them and look at them, else the test's own dir. */
async function shotDir (t: Test): Promise<string> {
  const dir = process.env.SCREENSHOT_DIR ?? t.testdir()
  await mkdir(dir, { recursive: true })
  return dir
}

function rgb (hex: string): string {
  const n = parseInt(hex.slice(1), 16)
  return `rgb(${n >> 16}, ${(n >> 8) & 255}, ${n & 255})`
}

async function statesApp (t: Test, page: StatusPageOptions = {}, routes?: Partial<SupervisordRoutesOptions>): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(async () => await app.close())
  await app.register(registry, { upstreams: STATES_UPSTREAMS })
  await app.register(supervisord, { pollInterval: 0, antiFlap: 0 })
  await app.register(statusPage, { refresh: 0, ...page })
  if (routes !== undefined) await app.register(supervisordRoutes, { upstream: 'pool', ...routes })
  return app
}

t.test('every state has its own name in the snapshot, and the legend explains each', async t => {
  const app = await statesApp(t)
  await app.ready()
  putInStates(app)
  const peers = statusSnapshot(app.upstreams).upstreams[0].peers
  t.same(peers.map(peer => peer.state), STATE_OF_PEER, 'each peer is in the state it was put in')
  t.same([...new Set(STATE_OF_PEER)].sort(), [...PEER_STATES].sort(), 'the fixture covers every state')
  const page = (await app.inject({ url: '/health', headers: { accept: 'text/html' } })).body
  for (const state of PEER_STATES) {
    t.match(page, new RegExp(`<tr class="peer s-${state}" id="peer-\\d+">`), `a row of state ${state}`)
    t.ok(page.includes(`<dd>${STATE_MEANINGS[state].replaceAll("'", '&#39;')}</dd>`), `the legend says what ${state} means`)
  }
  const stopped = page.split('id="peer-3"')[1].split('</tr>')[0]
  t.match(stopped, /<svg class="spark stale"/, 'a stopped peer\'s checks are drawn faded')
  t.match(stopped, /<span class="stale" title="not checked while its process is not running">stale: OK, \d\.\d s ago<\/span>/, 'and its last check is marked stale')
  const serving = page.split('id="peer-0"')[1].split('</tr>')[0]
  t.notMatch(serving, /stale/, 'a running peer\'s last check is not stale')
})

t.test('in a real headless Chromium at 900 px', { skip: browserSkip() }, async t => {
  const browser = await launchBrowser(t)
  const app = await statesApp(t, {}, {})
  const origin = await app.listen({ host: '127.0.0.1', port: 0 })
  putInStates(app)
  const page = await browser.newPage({ viewport: { width: 900, height: 1000 } })
  t.teardown(async () => await page.close())
  page.setDefaultTimeout(5000)
  await page.goto(`${origin}/health`, { timeout: 10_000 })
  const dir = await shotDir(t)

  const seen = new Map<string, string>()
  for (const state of PEER_STATES) {
    const row = page.locator(`#upstream-pool tr.peer.s-${state}`)
    t.equal(await row.count(), 1, `one row is ${state}`)
    const badge = row.locator('.badge')
    t.ok(await badge.isVisible(), `the ${state} badge is visible`)
    const { color, backgroundColor } = await badge.evaluate(el => getComputedStyle(el))
    t.equal(color, rgb(STATE_COLOURS[state].fg), `${state}: its text colour`)
    t.equal(backgroundColor, rgb(STATE_COLOURS[state].bg), `${state}: its background`)
    seen.set(state, `${color} on ${backgroundColor}`)
    const file = join(dir, `state-${state}.png`)
    await row.screenshot({ path: file, timeout: 10_000 })
    t.same([...(await readFile(file)).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], `${state}: a PNG of its row`)
  }
  t.equal(new Set(seen.values()).size, PEER_STATES.length, 'no two states look alike')

  const overflow = await page.locator('section.upstream').evaluateAll(sections => sections.map(s => s.scrollWidth - s.clientWidth))
  t.same(overflow, [0], 'the table fits a 900 px window')
  const legend = page.locator('details.legend')
  await legend.locator('summary').click()
  t.equal(await legend.locator('dt .badge').count(), PEER_STATES.length, 'the legend, opened, shows every state')
  const full = join(dir, 'status-900.png')
  await page.screenshot({ path: full, fullPage: true, timeout: 10_000 })
  t.ok((await stat(full)).size > 0, 'the whole page was written')
  t.equal(await page.locator('script').count(), 0, 'no script')
})

t.test('each form, clicked in Chromium, changes the peer and comes back to the page', { skip: browserSkip() }, async t => {
  const browser = await launchBrowser(t)
  const app = await statesApp(t, {}, {})
  const origin = await app.listen({ host: '127.0.0.1', port: 0 })
  const pool = app.upstreams.get('pool')
  const page = await browser.newPage({ viewport: { width: 900, height: 1000 } })
  t.teardown(async () => await page.close())
  page.setDefaultTimeout(5000)
  await page.goto(`${origin}/health`, { timeout: 10_000 })

  /** Clicks a form's button in peer `index`'s actions and waits for the page to come back. */
  const click = async (index: number, command: string): Promise<void> => {
    const button = page.locator(`#peer-${index} + tr.actions button[value="${command}"]`)
    await Promise.all([page.waitForURL(`${origin}/health`), button.click()])
  }
  const stateOf = async (index: number): Promise<string> => await page.locator(`#peer-${index} .badge`).innerText()

  await click(0, 'drain')
  t.equal(pool.peers[0].admin, 'drain', 'drain: the peer is drained')
  t.equal(await stateOf(0), 'DRAINING', 'and the page, back, says so')
  await click(0, 'ready')
  t.equal(pool.peers[0].admin, 'ready', 'ready: back in rotation')
  t.equal(await stateOf(0), 'SERVING')
  await click(0, 'maint')
  t.equal(pool.peers[0].admin, 'maint')
  t.equal(await stateOf(0), 'MAINT')
  await click(0, 'ready')

  await click(2, 'stop')
  t.equal(pool.peers[2].process, 'down', 'stop: the peer is stopped')
  t.equal(await stateOf(2), 'STOPPED BY OPERATOR', 'pinned down by the operator\'s stop')
  await click(2, 'release')
  t.equal(pool.peers[2].pin, 'none', 'release pin: released')
  t.equal(await stateOf(2), 'STOPPED')
  await click(2, 'start')
  t.equal(pool.peers[2].process, 'up', 'start: the peer runs')
  t.equal(pool.peers[2].pin, 'up')
  t.equal(await stateOf(2), 'SERVING')

  // The filter is kept on the way back.
  await page.goto(`${origin}/health?status=up`)
  await Promise.all([page.waitForURL(`${origin}/health?status=up`), page.locator('#peer-1 + tr.actions button[value="maint"]').click()])
  t.equal(pool.peers[1].admin, 'maint')
  t.equal(await page.locator('#peer-1').count(), 0, 'back on the filtered page, where the peer in maint is no longer listed')

  await page.goto(`${origin}/health`)
  await page.locator('#peer-3 + tr.actions input[name="value"]').fill('7')
  await click(3, 'weight')
  t.equal(pool.peers[3].weight, 7, 'set weight: the weight is 7')
  t.match(await page.locator('#peer-3').innerText(), /weight 7/)
})

t.test('forms behind a token: the browser signs in once (HTTP Basic), then every form carries it', { skip: browserSkip() }, async t => {
  const browser = await launchBrowser(t)
  const token = 'form-token-123'
  const app = await statesApp(t, { token }, { token })
  const origin = await app.listen({ host: '127.0.0.1', port: 0 })
  const anonymous = await browser.newPage()
  t.teardown(async () => await anonymous.close())
  await anonymous.goto(`${origin}/health`, { timeout: 10_000 })
  t.equal(await anonymous.locator('tr.actions').count(), 0, 'without the token: no form')
  t.equal(await anonymous.locator('a.signin').count(), 1, 'but a sign-in link')
  t.notMatch(await anonymous.content(), /127\.0\.0\.1:71/, 'and no address')

  const context = await browser.newContext({ httpCredentials: { username: 'operator', password: token } })
  t.teardown(async () => await context.close())
  const page = await context.newPage()
  await page.goto(`${origin}/health`, { timeout: 10_000 })
  await Promise.all([page.waitForURL(`${origin}/health`), page.locator('a.signin').click()])
  t.equal(await page.locator('a.signin').count(), 0, 'signed in: no link any more')
  t.match(await page.content(), /127\.0\.0\.1:7100/, 'addresses shown')
  await Promise.all([page.waitForURL(`${origin}/health`), page.locator('#peer-0 + tr.actions button[value="drain"]').click()])
  t.equal(app.upstreams.get('pool').peers[0].admin, 'drain', 'the form post carried the token')
})
