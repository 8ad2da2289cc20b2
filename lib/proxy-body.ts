import { Readable, finished } from 'node:stream'
import type { IncomingHttpHeaders } from 'node:http'

/** The request has a body to send on (a chunked one, or a Content-Length above 0). */
export function hasBody (headers: IncomingHttpHeaders): boolean {
  return headers['transfer-encoding'] !== undefined || (headers['content-length'] !== undefined && headers['content-length'] !== '0')
}

/** The source of a body that is whole from the start: never read. */
const NO_SOURCE = Readable.from([])

/**
 * A client's request body on its way to one peer or more. A body of up to
 * `keep` bytes is read in full before the request is sent (as nginx reads a
 * body before it connects upstream), so it can be sent again to another
 * peer, and a slow client never holds a peer's connection; a longer one is
 * streamed from the client as the peer reads it, and can be sent again only
 * while no attempt has taken any of it.
 */
export class RequestBody {
  readonly #source: Readable
  /** What was read before the request was sent: the whole body when `kept`, else its first chunks. */
  readonly #prefix: Buffer[] = []
  #whole: Buffer | null = null
  /** Some attempt took bytes from the client beyond the prefix. */
  #touched = false
  /** The attempt stream the client's bytes flow into now. */
  #current: Readable | null = null
  /** Reading the client's body failed (it went away, or sent a broken body): the client's fault. */
  failed: Error | null = null

  private constructor (source: Readable) {
    this.#source = source
  }

  /** A body that is already whole in memory (Fastify parsed it, and reply-from serialized it again). */
  static whole (bytes: Buffer): RequestBody {
    const body = new RequestBody(NO_SOURCE)
    body.#whole = bytes
    return body
  }

  /** Reads up to `keep` bytes of `source` (nothing when the declared length is already larger). */
  static async read (source: Readable, keep: number, declaredLength: number): Promise<RequestBody> {
    const body = new RequestBody(source)
    // Called back once: at the end, without an error (a reset after it is not the body's), or on the error or premature close that came first.
    finished(source, error => {
      if (error !== undefined && error !== null) body.#fail(error)
    })
    if (declaredLength <= keep || Number.isNaN(declaredLength)) await body.#readPrefix(keep)
    return body
  }

  /** The whole body is in memory: it can be sent again after a send. */
  get kept (): boolean {
    return this.#whole !== null
  }

  /** No attempt has consumed the client's bytes beyond the prefix: it can still be sent whole (a kept body is never consumed: each attempt gets its bytes). */
  get intact (): boolean {
    return !this.#touched
  }

  /**
   * What one attempt sends: the kept bytes, or a stream of the prefix
   * followed by the rest from the client; `progress` is told each time the
   * peer takes more of it.
   */
  forAttempt (progress?: () => void): Buffer | Readable {
    if (this.#whole !== null) return this.#whole
    let next = 0
    const stream: Readable = new Readable({
      read: () => {
        progress?.()
        if (next < this.#prefix.length) {
          stream.push(this.#prefix[next++])
          return
        }
        this.#flowInto(stream)
      },
      destroy: (error, callback) => {
        if (this.#current === stream) this.#current = null
        this.#source.pause()
        callback(error)
      }
    })
    return stream
  }

  async #readPrefix (keep: number): Promise<void> {
    const source = this.#source
    let bytes = 0
    await new Promise<void>((resolve, reject) => {
      const stop = (): void => {
        source.pause()
        source.off('data', onData)
        source.off('end', onEnd)
        source.off('error', onError)
        source.off('close', onClose)
      }
      const onData = (chunk: Buffer): void => {
        this.#prefix.push(chunk)
        bytes += chunk.length
        if (bytes > keep) {
          stop()
          resolve()
        }
      }
      const onEnd = (): void => {
        this.#whole = this.#prefix.length === 1 ? this.#prefix[0] : Buffer.concat(this.#prefix)
        stop()
        resolve()
      }
      const onError = (error: Error): void => {
        stop()
        reject(error)
      }
      const onClose = (): void => onError(this.failed ?? new Error('the client closed the connection before its body ended'))
      source.on('data', onData)
      source.on('end', onEnd)
      source.on('error', onError)
      source.on('close', onClose)
      source.resume()
    })
  }

  #flowInto (stream: Readable): void {
    if (this.#current !== stream) {
      if (this.#current === null && !this.#touched) {
        this.#source.on('data', this.#onData)
        this.#source.on('end', this.#onEnd)
      }
      this.#current = stream
      this.#touched = true
    }
    this.#source.resume()
  }

  readonly #onData = (chunk: Buffer): void => {
    if (this.#current === null || !this.#current.push(chunk)) this.#source.pause()
  }

  readonly #onEnd = (): void => {
    this.#current?.push(null)
  }

  #fail (error: Error): void {
    this.failed = error
    this.#current?.destroy(error)
  }
}
