import net from 'node:net'
import { performance } from 'node:perf_hooks'
import type { CheckResult } from './peer.js'

// One active check of one peer, over a raw socket: no HTTP client, no agent,
// no pool. A thousand of these a second must cost a few percent of a core.

export type StatusClass = '1xx' | '2xx' | '3xx' | '4xx' | '5xx'
/** An expected status: exact (`204`) or a class (`'2xx'`). */
export type ExpectedStatus = number | StatusClass

export interface ProbeOptions {
  /** `http` (default) sends a request and judges the response; `tcp` only connects. */
  type?: 'http' | 'tcp'
  /** ms for the whole check, connect included (default 2000). */
  timeout?: number
  /** Default `GET`. */
  method?: string
  /** Default `/`. */
  path?: string
  /** Request headers; a `Host` here replaces the default (the peer's address). */
  headers?: Readonly<Record<string, string>>
  /** Statuses that pass (default `['2xx', '3xx']`). */
  status?: readonly ExpectedStatus[]
  /** The body must contain this string, or match this RegExp. */
  body?: string | RegExp
  /** Body bytes read at most; a longer body fails with `body too large` (default 65536). */
  maxBody?: number
}

/** Where to probe: a Peer fits. */
export interface ProbeTarget {
  host: string
  port: number
  /** `host:port` for the Host header (default built from host and port). */
  address?: string
}

export const DEFAULT_STATUS: readonly ExpectedStatus[] = ['2xx', '3xx']
export const DEFAULT_MAX_BODY = 64 * 1024
export const DEFAULT_PROBE_TIMEOUT = 2000
/** A response head (status line and headers) longer than this is refused. */
const MAX_HEAD = 16 * 1024
/** A chunk-size line longer than this is refused. */
const MAX_CHUNK_LINE = 1024
const HEAD_END = Buffer.from('\r\n\r\n')
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: |$)/
const BAD_RESPONSE = 'error BAD_RESPONSE'
const TOO_LARGE = 'body too large'

export function statusExpected (status: number, expected: readonly ExpectedStatus[]): boolean {
  for (const entry of expected) {
    if (typeof entry === 'number' ? entry === status : Math.floor(status / 100) === entry.charCodeAt(0) - 48) return true
  }
  return false
}

/** The request an http check sends: the Host first, then the user's headers, then `Connection: close`. */
export function checkRequest (target: ProbeTarget, method = 'GET', path = '/', headers: Readonly<Record<string, string>> = {}): string {
  let host = target.address ?? `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`
  let rest = ''
  for (const name in headers) {
    if (name.toLowerCase() === 'host') host = headers[name]
    else rest += `${name}: ${headers[name]}\r\n`
  }
  return `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n${rest}Connection: close\r\n\r\n`
}

type Phase = 'head' | 'length' | 'chunked' | 'close'

/**
 * Reads one HTTP/1.x response as it arrives and gives the verdict as soon as
 * there is one: `feed` returns undefined while more bytes are needed.
 * The body is kept only when it is to be matched.
 */
export class ResponseReader {
  readonly #method: string
  readonly #status: readonly ExpectedStatus[]
  readonly #body: string | RegExp | undefined
  readonly #maxBody: number
  #phase: Phase = 'head'
  #head: Buffer | undefined
  /** Bytes still due: of the Content-Length body, or of the current chunk. */
  #left = 0
  /** CR LF still due after a chunk's data. */
  #crlf = 0
  #chunkLine = ''
  #size = 0
  readonly #parts: Buffer[] = []

  constructor (options: ProbeOptions = {}) {
    this.#method = options.method ?? 'GET'
    this.#status = options.status ?? DEFAULT_STATUS
    this.#body = options.body
    this.#maxBody = options.maxBody ?? DEFAULT_MAX_BODY
  }

  feed (data: Buffer): string | undefined {
    switch (this.#phase) {
      case 'head': return this.#feedHead(data)
      case 'length': return this.#feedLength(data)
      case 'chunked': return this.#feedChunked(data)
      case 'close': return this.#keep(data)
    }
  }

  /** The peer closed its side: complete if the body runs until close, early otherwise. */
  end (): string {
    return this.#phase === 'close' ? this.#complete() : 'closed early'
  }

  #feedHead (chunk: Buffer): string | undefined {
    const before = this.#head?.length ?? 0
    const data = this.#head === undefined ? chunk : Buffer.concat([this.#head, chunk])
    const end = data.indexOf(HEAD_END, Math.max(0, before - 3))
    if (end === -1) {
      if (data.length > MAX_HEAD) return BAD_RESPONSE
      this.#head = data
      return undefined
    }
    this.#head = undefined
    const verdict = this.#readHead(data.toString('latin1', 0, end))
    if (verdict !== undefined) return verdict
    // After an interim 1xx response the phase is still 'head': the real one follows.
    return this.feed(data.subarray(end + HEAD_END.length))
  }

  #readHead (head: string): string | undefined {
    const lines = head.split('\r\n')
    const match = STATUS_LINE.exec(lines[0])
    const status = match === null ? 0 : Number(match[1])
    if (status < 100) return BAD_RESPONSE
    if (status < 200 && status !== 101) return undefined
    if (!statusExpected(status, this.#status)) return `bad status ${status}`
    let length: number | undefined
    let chunked = false
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]
      const colon = line.indexOf(':')
      if (colon <= 0) return BAD_RESPONSE
      const name = line.slice(0, colon).trim().toLowerCase()
      const value = line.slice(colon + 1).trim()
      if (name === 'content-length') {
        if (!/^\d{1,15}$/.test(value) || (length !== undefined && length !== Number(value))) return BAD_RESPONSE
        length = Number(value)
      } else if (name === 'transfer-encoding') {
        chunked = /(?:^|,)\s*chunked$/i.test(value)
      }
    }
    if (this.#method === 'HEAD' || status === 204 || status === 304 || status === 101) return this.#complete()
    if (chunked) {
      this.#phase = 'chunked'
    } else if (length !== undefined) {
      if (length > this.#maxBody) return TOO_LARGE
      if (length === 0) return this.#complete()
      this.#phase = 'length'
      this.#left = length
    } else {
      this.#phase = 'close'
    }
    return undefined
  }

  #feedLength (data: Buffer): string | undefined {
    const part = data.length > this.#left ? data.subarray(0, this.#left) : data
    this.#left -= part.length
    this.#keep(part)
    return this.#left === 0 ? this.#complete() : undefined
  }

  #feedChunked (data: Buffer): string | undefined {
    let at = 0
    while (at < data.length) {
      if (this.#left > 0) {
        const end = Math.min(data.length, at + this.#left)
        this.#keep(data.subarray(at, end))
        this.#left -= end - at
        at = end
        if (this.#left === 0) this.#crlf = 2
      } else if (this.#crlf > 0) {
        if (data[at] !== (this.#crlf === 2 ? 13 : 10)) return BAD_RESPONSE
        this.#crlf--
        at++
      } else {
        const newline = data.indexOf(10, at)
        this.#chunkLine += data.toString('latin1', at, newline === -1 ? data.length : newline)
        if (this.#chunkLine.length > MAX_CHUNK_LINE) return BAD_RESPONSE
        if (newline === -1) return undefined
        at = newline + 1
        const size = chunkSize(this.#chunkLine)
        this.#chunkLine = ''
        if (size === undefined) return BAD_RESPONSE
        // The last chunk ends the body; its trailers are not needed for a verdict.
        if (size === 0) return this.#complete()
        if (this.#size + size > this.#maxBody) return TOO_LARGE
        this.#left = size
      }
    }
    return undefined
  }

  #keep (part: Buffer): string | undefined {
    this.#size += part.length
    if (this.#size > this.#maxBody) return TOO_LARGE
    if (this.#body !== undefined) this.#parts.push(part)
    return undefined
  }

  #complete (): string {
    const expected = this.#body
    if (expected === undefined) return 'OK'
    const text = Buffer.concat(this.#parts).toString('utf8')
    if (typeof expected === 'string') return text.includes(expected) ? 'OK' : 'bad body'
    expected.lastIndex = 0
    return expected.test(text) ? 'OK' : 'bad body'
  }
}

function chunkSize (line: string): number | undefined {
  const semicolon = line.indexOf(';')
  const hex = (semicolon === -1 ? line : line.slice(0, semicolon)).trim()
  return /^[0-9a-fA-F]{1,12}$/.test(hex) ? parseInt(hex, 16) : undefined
}

function errorReason (error: Error & { code?: string }, connected: boolean): string {
  const code = error.code ?? 'UNKNOWN'
  if (code === 'ECONNREFUSED') return 'connection refused'
  if (code === 'ETIMEDOUT') return 'timed out'
  if (connected && (code === 'ECONNRESET' || code === 'EPIPE')) return 'closed early'
  return `error ${code}`
}

/**
 * Checks a peer once. Resolves with the result, never rejects; the socket is
 * gone and the timer cleared by then. An abort ends the check at once with
 * `error ABORT_ERR`.
 */
export function probe (target: ProbeTarget, options: ProbeOptions = {}, signal?: AbortSignal): Promise<CheckResult> {
  return new Promise<CheckResult>(resolve => {
    const start = performance.now()
    const reader = options.type === 'tcp' ? undefined : new ResponseReader(options)
    let socket: net.Socket | undefined
    let connected = false
    let done = false
    const timer = setTimeout(() => finish('timed out'), options.timeout ?? DEFAULT_PROBE_TIMEOUT)
    timer.unref()

    function finish (reason: string, reset = false): void {
      if (done) return
      done = true
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      if (reset) socket?.resetAndDestroy()
      else socket?.destroy()
      resolve({ ok: reason === 'OK', reason, latencyMs: Math.round((performance.now() - start) * 100) / 100, at: Date.now() })
    }
    function onAbort (): void { finish('error ABORT_ERR') }

    if (signal?.aborted === true) return onAbort()
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      socket = net.connect(target.port, target.host)
    } catch (error) {
      return finish(errorReason(error as Error, false))
    }
    const connection = socket
    connection.on('error', error => finish(errorReason(error, connected)))
    connection.on('close', () => finish('closed early'))
    connection.on('connect', () => {
      connected = true
      // A TCP check closes with a reset, as HAProxy does: no TIME_WAIT left behind per check.
      if (reader === undefined) return finish('OK', true)
      connection.write(checkRequest(target, options.method, options.path, options.headers))
    })
    if (reader === undefined) return
    connection.on('data', (data: Buffer) => {
      const verdict = reader.feed(data)
      if (verdict !== undefined) finish(verdict)
    })
    connection.on('end', () => finish(reader.end()))
  })
}
