import { spawn } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import t, { type Test } from 'tap'
import { backendsFor, freePort, type Backend } from './helpers/backends.js'
import { skip, supervisordFor, USERNAME, PASSWORD } from './helpers/supervisord.js'
import { countOf } from './helpers/gateway.js'
import { until } from './helpers/wait.js'
import { request } from 'undici'

// Every README code block that is a complete program (it imports the package
// and listens) runs here, against real backends (and a real supervisord where
// it names one), with only its addresses changed. So the README cannot drift.

const root = path.resolve(import.meta.dirname, '..')

async function programs (): Promise<string[]> {
  const readme = await readFile(path.join(root, 'README.md'), 'utf8')
  return [...readme.matchAll(/```js\n([\s\S]*?)```/g)]
    .map(match => match[1])
    .filter(code => code.includes("from 'fastify-supervisord'") && code.includes('app.listen('))
}

interface Running { base: string, output: string[] }

/** Runs a README program from inside the package (so `fastify-supervisord` resolves to it) with the given substitutions. */
async function run (t: Test, code: string, substitutions: Array<[string, string]>): Promise<Running> {
  const port = await freePort()
  let source = code.replace('port: 3000', `port: ${port}`)
  for (const [from, to] of substitutions) source = source.replaceAll(from, to)
  const dir = path.join(root, '.tap', 'readme')
  await mkdir(dir, { recursive: true })
  const file = path.join(dir, `program-${port}.mjs`)
  await writeFile(file, source)
  const child = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL') })
  const output: string[] = []
  child.stdout.on('data', (chunk: Buffer) => output.push(chunk.toString()))
  child.stderr.on('data', (chunk: Buffer) => output.push(chunk.toString()))
  // Bounds for a loaded machine: a program that works listens within seconds; one that is broken exits or never says so.
  const listening = await until(() => output.join('').includes('Server listening') || child.exitCode !== null, 60_000)
  if (!listening || child.exitCode !== null) throw new Error(`README program did not start:\n${output.join('')}\n${source}`)
  return { base: `http://127.0.0.1:${port}`, output }
}

function backendPorts (backends: Backend[]): Array<[string, string]> {
  return backends.map((b, i) => [`127.0.0.1:${8000 + i}`, b.address])
}

async function get (url: string): Promise<{ status: number, body: string }> {
  // The first request of a cold start is held while supervisord starts the backend: well past that on a loaded machine.
  const res = await fetch(url, { signal: AbortSignal.timeout(30_000) })
  return { status: res.status, body: await res.text() }
}

t.test('the README has its four complete programs', async t => {
  const found = await programs()
  t.equal(found.length, 4, 'the quick start, the two nginx examples and the hosting gateway')
})

t.test('README: the minimal balancer with health checks and the status page', async t => {
  const [code] = await programs()
  const backends = await backendsFor(t, 2)
  const app = await run(t, code, backendPorts(backends))
  const served: number[] = []
  for (let i = 0; i < 6; i++) served.push(JSON.parse((await get(`${app.base}/`)).body).backend)
  // Answers, not backend hits: the health checks hit the backends too.
  const counts = countOf(served)
  t.same([counts.get(0), counts.get(1)], [2, 4], 'both backends serve, weight 2 twice the share')
  const health = JSON.parse((await get(`${app.base}/health?format=json`)).body)
  t.equal(health.upstreams[0].peers.length, 2)
})

t.test('README: example configuration #1 (supervisord, fair, cold start)', { skip }, async t => {
  const [, code] = await programs()
  const sv = await supervisordFor(t, { programs: [{ count: 2 }] })
  const app = await run(t, code, [
    ['127.0.0.1:9001', sv.address],
    ['admin:super', `${USERNAME}:${PASSWORD}`],
    ...sv.programs.map((p, i): [string, string] => [`127.0.0.1:${8000 + i}`, p.address])
  ])
  const first = await get(`${app.base}/`)
  t.equal(first.status, 200, 'the first request was held while backend0 started')
  t.equal(first.body, '{"backend":0}')
  t.equal(await sv.statename('backend0'), 'RUNNING')
})

t.test('README: example configuration #2 (supervisord none, inherited status, /_start/2)', async t => {
  const [, , code] = await programs()
  const backends = await backendsFor(t, 3)
  const app = await run(t, code, backendPorts(backends))
  for (let i = 0; i < 6; i++) t.equal((await get(`${app.base}/`)).status, 200)
  t.equal(backends[2].hits, 0, 'the down server gets nothing')
  const started = await get(`${app.base}/_start/2`)
  t.equal(started.status, 200)
  t.match(JSON.parse(started.body), { command: 'start', backend: 2, accepted: true, state: 'up' })
  for (let i = 0; i < 6; i++) await get(`${app.base}/`)
  t.equal(backends[2].hits, 2, 'now in rotation')
  t.equal((await get(`${app.base}/_stop/2`)).status, 200)
  t.equal((await get(`${app.base}/_start/x`)).status, 400)
})

t.test('README: a hosting gateway (sites by Host, each started on its first request)', { skip }, async t => {
  const [, , , code] = await programs()
  const sv = await supervisordFor(t, { programs: [{ prefix: 'shop', count: 1 }, { prefix: 'blog', count: 1 }] })
  const [shop, blog] = sv.programs
  const app = await run(t, code, [
    ['127.0.0.1:9001', sv.address],
    ['admin:super', `${USERNAME}:${PASSWORD}`],
    ['127.0.0.1:8000', shop.address],
    ['127.0.0.1:8001', blog.address]
  ])
  const hosted = async (host: string): Promise<{ status: number, body: string }> => {
    const res = await request(app.base, { headers: { host }, headersTimeout: 15_000 })
    return { status: res.statusCode, body: await res.body.text() }
  }
  t.equal(await sv.statename('shop0'), 'STOPPED', 'no site runs before its first request')
  t.same(await hosted('www.shop.example.com'), { status: 200, body: '{"backend":0}' }, 'held while shop0 started, then answered')
  t.equal(await sv.statename('shop0'), 'RUNNING')
  t.equal(await sv.statename('blog0'), 'STOPPED', 'the other site stays down')
  t.equal((await hosted('a.blog.example.com')).status, 200, 'a wildcard name starts its own site')
  t.equal(await sv.statename('blog0'), 'RUNNING')
  const unknown = await hosted('other.example.net')
  t.equal(unknown.status, 404)
  t.match(JSON.parse(unknown.body), { code: 'FST_SUPERVISORD_UNKNOWN_HOST' })
})
