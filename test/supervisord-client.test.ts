import t from 'tap'
import { SupervisordCallError, SupervisordClient, isUnavailable } from '../lib/supervisord-client.js'
import { backendFor, freePort, silentServer } from './helpers/backends.js'
import { getDirect, serving, skip, supervisordFor } from './helpers/supervisord.js'

/** Runs `call` and returns the SupervisordCallError it must fail with. */
async function failure (call: () => Promise<unknown>): Promise<SupervisordCallError> {
  try {
    await call()
  } catch (error) {
    if (error instanceof SupervisordCallError) return error
    throw error
  }
  throw new Error('the call succeeded')
}

t.test('a hanging supervisord: every call ends with TIMEOUT within its bound', async t => {
  const { port } = await silentServer(t)
  const client = new SupervisordClient({ kind: 'tcp', host: '127.0.0.1', port }, { timeout: 300 })
  const started = Date.now()
  const error = await failure(() => client.startProcess('backend0'))
  const elapsed = Date.now() - started
  t.equal(error.fault, 'TIMEOUT')
  t.equal(error.program, 'backend0')
  t.equal(error.method, 'startProcess')
  t.match(error.message, /supervisord 127\.0\.0\.1:\d+: could not start program "backend0": no answer within 300 ms/)
  t.ok(elapsed >= 280 && elapsed < 1000, `ended after ${elapsed} ms`)
  t.ok(isUnavailable(error.fault))
})

t.test('closing aborts calls in flight and refuses later ones, with ABORTED', async t => {
  const { port } = await silentServer(t)
  const closing = new AbortController()
  const client = new SupervisordClient({ kind: 'tcp', host: '127.0.0.1', port }, { timeout: 10_000, signal: closing.signal })
  const started = Date.now()
  const pending = failure(() => client.getAllProcessInfo())
  setTimeout(() => closing.abort(), 50)
  const error = await pending
  t.equal(error.fault, 'ABORTED')
  t.ok(Date.now() - started < 1000, 'did not wait for the timeout')
  t.match(error.message, /could not getAllProcessInfo: the server is closing/)
  t.equal((await failure(() => client.getState())).fault, 'ABORTED', 'a call after close fails at once')
})

t.test('nothing listening: UNREACHABLE, over TCP and over a unix socket', async t => {
  const port = await freePort()
  const tcp = await failure(() => new SupervisordClient({ kind: 'tcp', host: '127.0.0.1', port }).getState())
  t.equal(tcp.fault, 'UNREACHABLE')
  t.match(tcp.message, /unreachable \(ECONNREFUSED\)/)
  const unix = await failure(() => new SupervisordClient({ kind: 'unix', path: `/tmp/fsv-missing-${process.pid}.sock` }).stopProcess('backend1'))
  t.equal(unix.fault, 'UNREACHABLE')
  t.match(unix.message, /supervisord unix:\/tmp\/fsv-missing-\d+\.sock: could not stop program "backend1": unreachable \(ENOENT\)/)
})

t.test('an HTTP server that is not supervisord: PROTOCOL', async t => {
  const backend = await backendFor(t)
  const error = await failure(() => new SupervisordClient({ kind: 'tcp', host: '127.0.0.1', port: backend.port }).getState())
  t.equal(error.fault, 'PROTOCOL')
  t.match(error.message, /bad answer/)
  t.notOk(isUnavailable(error.fault))
})

t.test('against a real supervisord', { skip }, async t => {
  const sv = await supervisordFor(t, { programs: [{ count: 2 }], broken: ['broken0'] })

  t.test('over TCP with credentials: state, start, info, stop', async t => {
    const client = new SupervisordClient(sv.tcp)
    t.same(await client.getState(), { statecode: 1, statename: 'RUNNING' })
    t.equal(await client.startProcess('backend0'), true)
    const info = await client.getProcessInfo('backend0')
    t.equal(info.statename, 'RUNNING')
    t.ok(info.pid > 0)
    t.same(await serving(sv.programs[0].address), { status: 200, body: '{"backend":0}' }, 'the program really serves')
    const all = await client.getAllProcessInfo()
    t.same(all.map(p => p.name).sort(), ['backend0', 'backend1', 'broken0'])
    t.equal(await client.stopProcess('backend0'), true)
    t.equal((await client.getProcessInfo('backend0')).statename, 'STOPPED')
    t.match(await getDirect(sv.programs[0].address), { error: 'ECONNREFUSED' })
  })

  t.test('over the unix socket with credentials', async t => {
    const client = new SupervisordClient(sv.unix)
    t.equal(client.label, `unix:${sv.socket}`)
    t.equal((await client.getState()).statename, 'RUNNING')
    t.equal(await client.startProcess('backend1', false), true, 'without wait it answers at once')
    t.match((await client.getProcessInfo('backend1')).statename, /^(STARTING|RUNNING)$/)
    t.equal(await client.stopProcess('backend1'), true)
  })

  t.test('wrong or missing credentials: UNAUTHORIZED, "supervisord rejected the credentials"', async t => {
    for (const target of [{ ...sv.tcp, password: 'wrong' }, { ...sv.unix, password: 'wrong' }]) {
      const error = await failure(() => new SupervisordClient(target).getState())
      t.equal(error.fault, 'UNAUTHORIZED')
      t.match(error.message, /supervisord rejected the credentials \(HTTP 401, user "admin"\)/)
      t.notMatch(error.message, /wrong/, 'the password is never shown')
    }
    const anonymous = await failure(() => new SupervisordClient({ kind: 'tcp', host: '127.0.0.1', port: sv.port }).startProcess('backend0'))
    t.equal(anonymous.fault, 'UNAUTHORIZED')
    t.match(anonymous.message, /could not start program "backend0": supervisord rejected the credentials \(HTTP 401, none were given\)/)
  })

  t.test('a program that exits at once: SPAWN_ERROR, naming the program', async t => {
    const error = await failure(() => sv.client.startProcess('broken0'))
    t.equal(error.fault, 'SPAWN_ERROR')
    t.equal(error.faultCode, 50)
    t.match(error.message, /could not start program "broken0": SPAWN_ERROR: broken0/)
  })

  t.test('an unknown program: BAD_NAME', async t => {
    const error = await failure(() => sv.client.getProcessInfo('nope'))
    t.equal(error.fault, 'BAD_NAME')
    t.equal(error.faultCode, 10)
    t.match(error.message, /could not read the state of program "nope": BAD_NAME: nope/)
  })

  t.test('ALREADY_STARTED and NOT_RUNNING are reported with their names (the bridge counts them as success)', async t => {
    t.equal((await failure(() => sv.client.stopProcess('backend0'))).fault, 'NOT_RUNNING')
    await sv.client.startProcess('backend0')
    const again = await failure(() => sv.client.startProcess('backend0'))
    t.equal(again.fault, 'ALREADY_STARTED')
    t.equal(again.faultCode, 60)
    await sv.client.stopProcess('backend0')
  })
})
