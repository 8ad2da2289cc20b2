import t, { type Test } from 'tap'
import { Agent, request } from 'undici'
import { redisFor, redisSkip, type RedisServer } from './helpers/redis.js'
import { rpcCounter, skip as supervisordSkip, supervisordFor } from './helpers/supervisord.js'
import { groupOf, type GroupGateway, type GroupGatewayConfig } from './helpers/group.js'
import { clientFor, loadFor } from './helpers/gateway.js'
import { sleep, until } from './helpers/wait.js'

// Three gateway processes, one real redis-server, one real supervisord behind
// a counting XML-RPC proxy: the group acts as one gateway.

const skip = redisSkip !== false ? redisSkip : supervisordSkip
const LEASE_TTL = 1500
const THRESHOLD = 40

async function get (base: string, dispatcher: Agent): Promise<number> {
  try {
    const res = await request(`${base}/`, { dispatcher })
    await res.body.text()
    return res.statusCode
  } catch {
    return -1
  }
}

/** A gateway's view of a peer, read over IPC. */
async function peer (gw: GroupGateway, index: number) {
  return (await gw.state()).peers[index]
}

async function everyone<T> (gateways: GroupGateway[], check: (gw: GroupGateway) => Promise<T>): Promise<T[]> {
  return await Promise.all(gateways.map(check))
}

async function group (t: Test, redis: RedisServer, upstream: (address: string) => Omit<GroupGatewayConfig['upstream'], 'servers'>, namespace: string, programs: number) {
  const sv = await supervisordFor(t, { programs: [{ count: programs, healthPath: '/healthz' }] })
  const counter = await rpcCounter(t, sv)
  const config = (id: string): GroupGatewayConfig => ({
    id,
    redisUrl: redis.url,
    namespace,
    upstream: { ...upstream(counter.address), servers: sv.programs.map(p => p.address) },
    // Polls far apart: what a gateway learns sooner, it learns from the group.
    bridge: { pollInterval: 30_000, startBackoff: { initial: 200, max: 1000 } },
    // A command unanswered within commandTimeout takes the store down (each gateway then decides alone): wide enough for a loaded machine.
    store: { commandTimeout: 1000, retryInterval: 200 },
    leaseTtl: LEASE_TTL
  })
  const gateways = await groupOf(t, 3, config)
  const dispatcher = clientFor(t)
  return { sv, counter, gateways, dispatcher }
}

t.test('three gateway processes on one Redis act as one gateway', { skip }, async t => {
  const redis = await redisFor(t)
  const { sv, counter, gateways, dispatcher } = await group(t, redis, address => ({
    supervisord: { address, username: 'admin', password: 'super' },
    healthCheck: { path: '/healthz', interval: 300, timeout: 1000, rise: 1, fall: 2 },
    // The cold burst (60 requests in a window: 30 req/s) stays under it; each gateway alone at 60% does too.
    scale: { loadThreshold: THRESHOLD, window: 2000, idleStop: false }
  }), 'processes', 3)
  const [a, b, c] = gateways

  await t.test('a cold burst of 60 requests spread over the three: one startProcess, 60 answers', async t => {
    const statuses = await Promise.all(Array.from({ length: 60 }, async (_, i) => await get(gateways[i % 3].base, dispatcher)))
    t.same(statuses.filter(status => status !== 200), [], `60 answers, all 200 (${statuses.length})`)
    const starts = counter.calls.filter(call => call === 'supervisor.startProcess')
    t.equal(starts.length, 1, 'exactly one startProcess reached supervisord')
    t.ok(await until(async () => await sv.statename('backend0') === 'RUNNING', 5000), 'backend0 RUNNING')
    const other = await sv.statename('backend1')
    if (other !== 'STOPPED' || starts.length !== 1) for (const gw of gateways) t.comment(gw.id, JSON.stringify(gw.lines.filter(l => !/listening|request completed|incoming/.test(String(l.msg))).map(l => `${String(l.time)} ${String(l.msg)}`)))
    t.equal(other, 'STOPPED', 'nothing else was started')
    t.ok(await until(async () => (await everyone(gateways, async gw => (await peer(gw, 0)).process)).every(process => process === 'up'), 5000),
      'every gateway has backend0 up')
    const leaders = (): GroupGateway[] => gateways.filter(gw => gw.lines.some(line => String(line.msg).startsWith('supervisord: started program "backend0"')))
    // Its log line comes over the gateway's stdout, after the requests may have been answered (a check passed while it started).
    await until(() => leaders().length > 0, 5000)
    t.equal(leaders().length, 1, 'one gateway logged the start as its own')
    const heard = gateways.flatMap(gw => gw.lines.filter(line => String(line.msg).startsWith('supervisord: program "backend0" started by gateway')).map(line => line.by))
    t.same(heard.filter(by => by !== leaders()[0]?.id), [], `the others that waited for it say whose start it was (${heard.length})`)
  })

  await t.test('a start by one gateway is heard by the others before their poll', async t => {
    // Both pinned by the operator: the scaler leaves them alone in the steps below.
    await a.execute('start', 0)
    const result = await a.execute('start', 1)
    t.equal(result.ok, true, 'gateway a started backend1')
    const heard = await until(async () => (await everyone([b, c], async gw => (await peer(gw, 1)).routable)).every(Boolean), 5000)
    if (!heard) for (const gw of gateways) t.comment(gw.id, JSON.stringify(gw.lines.filter(l => (l.level as number) >= 30 && !String(l.msg).includes('listening')).map(l => l.msg)), JSON.stringify((await gw.state()).peers.map(p => [p.process, p.health, p.admin, p.passive])))
    t.ok(heard, 'b and c route to backend1 well before their next poll (30 s)')
  })

  await t.test('a drain on gateway a: b and c send nothing new to that peer within 1 s', async t => {
    await a.setAdmin(0, 'drain')
    const applied = await until(async () => (await everyone([b, c], async gw => (await peer(gw, 0)).admin)).every(admin => admin === 'drain'), 1000)
    t.ok(applied, 'b and c drained backend0 within 1 s (the message, not the 5 s re-read)')
    const before = await everyone([b, c], async gw => (await peer(gw, 0)).requests)
    const statuses = await Promise.all(Array.from({ length: 40 }, async (_, i) => await get([b, c][i % 2].base, dispatcher)))
    t.same(statuses.filter(status => status !== 200), [], 'answered by backend1')
    t.same(await everyone([b, c], async gw => (await peer(gw, 0)).requests), before, 'no new request to backend0 from b or c')
    await a.setAdmin(0, 'ready')
    t.ok(await until(async () => (await everyone([b, c], async gw => (await peer(gw, 0)).admin)).every(admin => admin === 'ready'), 5000), 'ready again everywhere')
  })

  await t.test('the three at 60% of the threshold each: the scaler\'s lead starts a peer on their summed load', async t => {
    // 48 requests a second at each gateway: 60% of 40 per running peer (two run); 180% for the group.
    const sending = { on: true }
    const statuses: number[] = []
    const loops = gateways.map(async gw => {
      for (let i = 0; sending.on && i < 1000; i++) {
        const sent = Date.now()
        statuses.push(await get(gw.base, dispatcher))
        await sleep(Math.max(0, 1000 / 48 - (Date.now() - sent)))
      }
    })
    const started = await until(async () => (await everyone(gateways, async gw => (await peer(gw, 2)).process)).every(process => process === 'up' || process === 'starting'), 15_000, 100)
    sending.on = false
    await Promise.all(loops)
    t.ok(started, 'backend2 was started, and every gateway knows')
    const decisions = (await everyone(gateways, async gw => await gw.scales())).map(scales => scales.filter(event => event.reason === 'load'))
    const deciders = decisions.filter(scales => scales.length > 0)
    t.equal(deciders.length, 1, 'one gateway decided')
    t.ok(deciders[0]?.[0].load > THRESHOLD, `on the summed load (${deciders[0]?.[0].load} req/s per running peer; each gateway sent about ${48 / 2})`)
    t.same(statuses.filter(status => status !== 200), [], 'every request answered')
  })

  await t.test('redis-server stopped (SIGSTOP) under load: no failed request; the state reconciles after SIGCONT', async t => {
    const load = Promise.all(gateways.map(async gw => await loadFor(gw.base, dispatcher, 2, 4000, 20_000)))
    await sleep(500)
    redis.pause()
    t.ok(await until(async () => (await a.state()).group.store.state === 'degraded', 10_000), 'gateway a says store: degraded')
    // An operator's drain while the store cannot be reached: kept, and written when it is back.
    await a.setAdmin(0, 'drain')
    await sleep(1000)
    t.same(await everyone([b, c], async gw => (await peer(gw, 0)).admin), ['ready', 'ready'], 'b and c have not heard of it yet')
    redis.resume()
    const results = await load
    const statuses = results.flatMap(result => result.statuses)
    t.ok(statuses.length > 100, `under load (${statuses.length} requests)`)
    t.same(statuses.filter(status => status !== 200), [], 'no failed request')
    t.ok(await until(async () => (await everyone(gateways, async gw => (await gw.state()).group.store.state)).every(state => state === 'ok'), 10_000), 'store ok again everywhere')
    t.ok(await until(async () => (await everyone([b, c], async gw => (await peer(gw, 0)).admin)).every(admin => admin === 'drain'), 10_000),
      'the drain kept by a reached b and c once Redis was back')
    t.ok(a.lines.filter(line => typeof line.msg === 'string' && line.msg.startsWith('store redis degraded')).length === 1, 'the fault was logged once')
    await a.setAdmin(0, 'ready')
  })

  await t.test('the check owner killed with SIGKILL: another gateway owns its checks within the lease time', async t => {
    const owners = async (gw: GroupGateway): Promise<string[]> => (await gw.state()).group.checks.filter(check => check.owner === gw.id).map(check => `${check.upstream}/${check.index}`)
    t.ok(await until(async () => (await everyone(gateways, owners)).flat().length === 3, 5000), 'each peer\'s checks have one owner')
    const owned = await everyone(gateways, owners)
    t.equal(new Set(owned.flat()).size, 3, 'and only one')
    const victim = gateways[owned.findIndex(list => list.length > 0)]
    const survivors = gateways.filter(gw => gw !== victim)
    const lost = owned[gateways.indexOf(victim)]
    const killedAt = Date.now()
    process.kill(victim.pid, 'SIGKILL')
    const taken = await until(async () => {
      const now = (await everyone(survivors, owners)).flat()
      return lost.every(peer => now.includes(peer))
    }, 2 * LEASE_TTL + 2000, 50)
    const tookMs = Date.now() - killedAt
    t.ok(taken, `the checks of ${lost.join(', ')} were taken over by a survivor (${tookMs} ms; lease ${LEASE_TTL} ms, renewed every ${LEASE_TTL / 3} ms)`)
    const statuses = await Promise.all(Array.from({ length: 20 }, async (_, i) => await get(survivors[i % 2].base, dispatcher)))
    t.same(statuses.filter(status => status !== 200), [], 'the survivors answer')
  })
})
