import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

export interface RawAnswer {
  /** Everything the server sent, as latin1 text. */
  text: string
  /** Status codes of the responses in `text`, interim ones included, in order. */
  statuses: number[]
  /** The server closed the connection (rather than the wait running out). */
  closed: boolean
}

/**
 * A hostile or unusual client: writes `parts` on a raw socket to 127.0.0.1,
 * `gapMs` apart, then collects what the server sends until it closes the
 * connection, `until` matches what came in, or `ms` passes. For requests an
 * HTTP client library refuses to send (Expect, Keep-Alive, bare Upgrade) or
 * sends too fast (slowloris).
 */
export async function rawExchange (port: number, parts: Array<string | Buffer>, options: { gapMs?: number, ms?: number, until?: RegExp } = {}): Promise<RawAnswer> {
  const { gapMs = 0, ms = 5000, until } = options
  const socket = net.connect(port, '127.0.0.1')
  socket.on('error', () => {})
  const chunks: Buffer[] = []
  let closed = false
  const done = new Promise<void>(resolve => {
    const timer = setTimeout(resolve, ms)
    socket.on('data', chunk => {
      chunks.push(chunk)
      if (until !== undefined && until.test(Buffer.concat(chunks).toString('latin1'))) {
        clearTimeout(timer)
        resolve()
      }
    })
    socket.on('close', () => {
      closed = true
      clearTimeout(timer)
      resolve()
    })
  })
  await new Promise<void>(resolve => socket.once('connect', resolve))
  for (const [i, part] of parts.entries()) {
    if (i > 0 && gapMs > 0) await sleep(gapMs)
    if (socket.destroyed) break
    socket.write(part)
  }
  await done
  socket.destroy()
  const text = Buffer.concat(chunks).toString('latin1')
  const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map(match => Number(match[1]))
  return { text, statuses, closed }
}

/** The body of the last response in a raw answer (after its head). */
export function lastBody (answer: RawAnswer): string {
  const at = answer.text.lastIndexOf('\r\n\r\n')
  return at === -1 ? '' : answer.text.slice(at + 4)
}
