import { PassThrough, type Readable } from 'node:stream'
import t from 'tap'
import { RequestBody, hasBody } from '../lib/proxy-body.js'

// The client's body on its way to one peer or more, as the proxy uses it: a
// body up to `keep` bytes is read in full before the request is sent, so any
// attempt can carry it again; a longer one is streamed to the first attempt
// that reads it, and can be sent again only while no attempt has taken it.

const KEEP = 16

/** Everything an attempt's body yields, read to its end. */
async function drain (body: Buffer | Readable): Promise<Buffer> {
  if (Buffer.isBuffer(body)) return body
  const chunks: Buffer[] = []
  for await (const chunk of body) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

/** `promise`, or 'pending' if it has not settled within `ms`. */
async function within<T> (promise: Promise<T>, ms = 300): Promise<T | 'pending'> {
  let timer: NodeJS.Timeout | undefined
  const pending = new Promise<'pending'>(resolve => { timer = setTimeout(resolve, ms, 'pending') })
  try {
    return await Promise.race([promise, pending])
  } finally {
    clearTimeout(timer)
  }
}

t.test('hasBody: a chunked body, or a Content-Length above 0', async t => {
  t.equal(hasBody({}), false, 'no length, no chunking')
  t.equal(hasBody({ 'content-length': '0' }), false, 'Content-Length: 0')
  t.equal(hasBody({ 'content-length': '5' }), true)
  t.equal(hasBody({ 'transfer-encoding': 'chunked' }), true)
  t.equal(hasBody({ 'transfer-encoding': 'chunked', 'content-length': '0' }), true, 'chunked wins over a zero length')
})

t.test('a body up to keep bytes is read whole before the send, in one buffer that every attempt sends', async t => {
  for (const [name, parts, declared] of [
    ['one chunk, declared', ['a'.repeat(KEEP)], KEEP],
    ['exactly keep bytes, chunked (no length)', ['a'.repeat(KEEP)], NaN],
    ['several chunks, chunked', ['abc', 'def', 'gh'], NaN]
  ] as const) {
    const source = new PassThrough()
    const reading = RequestBody.read(source, KEEP, declared)
    for (const part of parts) source.write(part)
    source.end()
    const body = await reading
    const whole = parts.join('')
    t.ok(body.kept, `${name}: kept`)
    t.ok(body.intact, `${name}: intact`)
    for (const attempt of [1, 2]) {
      const sent = body.forAttempt()
      t.ok(Buffer.isBuffer(sent), `${name}: attempt ${attempt} sends the buffer itself, no stream`)
      t.equal((await drain(sent)).toString(), whole, `${name}: attempt ${attempt} carries the whole body`)
    }
  }
})

t.test('a body declared longer than keep is not read before the send: the first attempt streams it from the client', async t => {
  const source = new PassThrough()
  const body = await within(RequestBody.read(source, KEEP, 1000))
  t.not(body, 'pending', 'ready at once, with nothing read from the client')
  if (body === 'pending') return
  t.equal(body.kept, false, 'not kept: it cannot be sent again after a send')
  t.equal(body.intact, true, 'intact while no attempt has read it')
  const progress: number[] = []
  const attempt = body.forAttempt(() => progress.push(1))
  const sent = drain(attempt)
  source.write('x'.repeat(600))
  source.end('y'.repeat(400))
  t.equal((await sent).toString(), 'x'.repeat(600) + 'y'.repeat(400), 'the attempt gets every byte, in order')
  t.ok(progress.length > 0, 'each read is told to the attempt (its headers timer restarts)')
  t.equal(body.intact, false, 'taken by an attempt: it cannot be sent whole again')
})

t.test('a chunked body that outgrows keep: what was read first goes out first, then the rest from the client', async t => {
  const source = new PassThrough()
  const reading = RequestBody.read(source, KEEP, NaN)
  source.write('a'.repeat(10))
  source.write('b'.repeat(10))
  const body = await reading
  t.equal(body.kept, false)
  t.equal(source.listenerCount('data'), 0, 'reading the first chunks let go of the client\'s stream')
  const unread = body.forAttempt() as Readable
  unread.destroy()
  t.equal(body.intact, true, 'an attempt given up before it read anything leaves the body intact')
  const sent = drain(body.forAttempt())
  source.end('c'.repeat(10))
  t.equal((await sent).toString(), 'a'.repeat(10) + 'b'.repeat(10) + 'c'.repeat(10), 'the first chunks, then the rest, once each')
  t.equal(body.failed, null)
  t.equal(body.kept, false, 'streamed to its end, still not kept: the first read\'s listeners were gone')
})

t.test('a peer that reads slowly holds the client back: the attempt buffers a high-water mark, not the body', async t => {
  const source = new PassThrough()
  const body = await RequestBody.read(source, KEEP, 4_000_000)
  const attempt = body.forAttempt() as Readable
  attempt.once('data', () => attempt.pause())
  for (let i = 0; i < 64; i++) source.write(Buffer.alloc(64 * 1024, 'x'))
  await new Promise(resolve => setTimeout(resolve, 50))
  t.ok(attempt.readableLength <= 256 * 1024, `${attempt.readableLength} bytes buffered for the peer of the 4 MiB written`)
  attempt.destroy()
})

t.test('an attempt without a progress listener streams all the same', async t => {
  const source = new PassThrough()
  const body = await RequestBody.read(source, KEEP, 100)
  const sent = drain(body.forAttempt())
  source.end('z'.repeat(100))
  t.equal((await sent).length, 100)
})

t.test('a client that leaves or breaks its body before the send: the read fails, naming why', async t => {
  const closed = new PassThrough()
  const closing = RequestBody.read(closed, KEEP, NaN)
  closed.write('abc')
  closed.destroy()
  // finished() sees the premature close before the read's own close listener: its error is the one kept.
  await t.rejects(closing, { message: 'Premature close' })

  const broken = new PassThrough()
  const breaking = RequestBody.read(broken, KEEP, NaN)
  broken.write('abc')
  broken.destroy(new Error('bad chunk size'))
  await t.rejects(breaking, /bad chunk size/)
})

t.test('a client whose streamed body breaks mid-send: the body failed (the client\'s fault), the attempt\'s stream errors with it', async t => {
  const source = new PassThrough()
  const body = await RequestBody.read(source, KEEP, 1000)
  const attempt = body.forAttempt()
  const sent = drain(attempt)
  source.write('x'.repeat(100))
  await new Promise(resolve => setImmediate(resolve))
  source.destroy(new Error('client reset'))
  await t.rejects(sent, /client reset/)
  t.match(body.failed, { message: 'client reset' })
})

t.test('an error after the body ended is not a failure of the body', async t => {
  const source = new PassThrough()
  const reading = RequestBody.read(source, KEEP, 3)
  source.end('abc')
  const body = await reading
  source.destroy(new Error('late'))
  await new Promise(resolve => setImmediate(resolve))
  t.equal(body.failed, null)
  t.equal((await drain(body.forAttempt())).toString(), 'abc')
})

t.test('a body Fastify already parsed is whole: kept, intact, the same bytes for every attempt', async t => {
  const body = RequestBody.whole(Buffer.from('{"a":1}'))
  t.ok(body.kept)
  t.ok(body.intact)
  t.equal(body.failed, null)
  const first = body.forAttempt()
  t.ok(Buffer.isBuffer(first))
  t.equal(first.toString(), '{"a":1}')
  t.equal((await drain(body.forAttempt())).toString(), '{"a":1}')
})
