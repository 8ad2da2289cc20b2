import net from 'node:net'
import tls from 'node:tls'
import { performance } from 'node:perf_hooks'
import type { CheckResult } from './peer.js'
import { serverName } from './tls-options.js'

// Active checks over a raw socket: no HTTP client, no agent, no pool. A
// Prober belongs to one peer and is reused for every check of it: its request
// bytes, its response reader and its socket listeners are made once, and with
// keepAlive its connection too. Nothing a backend sends can make it throw,
// recurse or read without bound: every verdict is a CheckResult.

export type StatusClass = '1xx' | '2xx' | '3xx' | '4xx' | '5xx'
/** An expected status: exact (`204`) or a class (`'2xx'`). */
export type ExpectedStatus = number | StatusClass

export interface ProbeOptions {
  /** `http` (default) sends a request and judges the response; `tcp` only connects. */
  type?: 'http' | 'tcp'
  /** ms for the whole check, connect (and TLS handshake) included (default 2000). */
  timeout?: number
  /** Default `GET`. */
  method?: string
  /** Default `/`. */
  path?: string
  /** Request headers; a `Host` here replaces the default (the address checked). */
  headers?: Readonly<Record<string, string>>
  /** Statuses that pass (default `['2xx', '3xx']`). */
  status?: readonly ExpectedStatus[]
  /** The body must contain this string, or match this RegExp. */
  body?: string | RegExp
  /** Body bytes read at most; a longer body fails with `body too large` (default 65536). */
  maxBody?: number
  /**
   * http: keep the connection open after a check that passed and send the
   * next check of the same Prober on it (HTTP/1.1 keep-alive). Default false:
   * `Connection: close`, a connection per check.
   */
  keepAlive?: boolean
}

/** TLS settings of a check (an upstream's `tls` section fits): spread into `tls.connect` options. */
export interface ProbeTls {
  secureContext?: tls.SecureContext
  ca?: string | Buffer | Array<string | Buffer>
  cert?: string | Buffer | Array<string | Buffer>
  key?: string | Buffer | Array<string | Buffer>
  servername?: string
  rejectUnauthorized?: boolean
}

/** Where to probe: a Peer fits. */
export interface ProbeTarget {
  host: string
  port: number
  /** `host:port` for the Host header (default built from host and port). */
  address?: string
  /** Check over TLS with these settings (default plain TCP). */
  tls?: ProbeTls
}

export const DEFAULT_STATUS: readonly ExpectedStatus[] = ['2xx', '3xx']
export const DEFAULT_MAX_BODY = 64 * 1024
export const DEFAULT_PROBE_TIMEOUT = 2000
/** A response head (status line and headers), or a trailer section, longer than this is refused. */
const MAX_HEAD = 16 * 1024
/** Interim (1xx) responses read before the final one at most. */
export const MAX_INTERIM = 16
/** A chunk-size line longer than this is refused. */
const MAX_CHUNK_LINE = 1024
const HEAD_END = Buffer.from('\r\n\r\n')
const CRLF = Buffer.from('\r\n')
const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: |$)/
const TOO_LARGE = 'body too large'
const HANDSHAKE_CLOSED = 'tls error closed during the handshake'
const CR = 13
const LF = 10

export function statusExpected (status: number, expected: readonly ExpectedStatus[]): boolean {
  for (const entry of expected) {
    if (typeof entry === 'number' ? entry === status : Math.floor(status / 100) === entry.charCodeAt(0) - 48) return true
  }
  return false
}

/** `host:port`, an IPv6 host in brackets. */
export function hostPort (host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`
}

/**
 * The request an http check sends: the Host first, then the user's headers,
 * then `Connection: close` (none with keepAlive: HTTP/1.1 connections persist).
 */
export function checkRequest (target: ProbeTarget, method = 'GET', path = '/', headers: Readonly<Record<string, string>> = {}, keepAlive = false): string {
  let host = target.address ?? hostPort(target.host, target.port)
  let rest = ''
  for (const name in headers) {
    if (name.toLowerCase() === 'host') host = headers[name]
    else rest += `${name}: ${headers[name]}\r\n`
  }
  return `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n${rest}${keepAlive ? '' : 'Connection: close\r\n'}\r\n`
}

type Phase = 'head' | 'length' | 'chunked' | 'trailers' | 'close' | 'done'

/**
 * Reads one HTTP/1.x response as it arrives and gives the verdict as soon as
 * there is one: `feed` returns undefined while more bytes are needed. A loop,
 * never a recursion, over interim responses, chunks and phases; every part a
 * backend controls is bounded (head and trailer size, interim responses,
 * body, chunk lines and framing). The body is kept only when it is to be
 * matched. `reset` makes it ready for the next response.
 */
export class ResponseReader {
  readonly #method: string
  readonly #status: readonly ExpectedStatus[]
  readonly #body: string | RegExp | undefined
  readonly #maxBody: number
  /** Read to the exact end of the message (trailers included), so that the connection can carry the next one. */
  readonly #exact: boolean
  /** Chunked body bytes on the wire, framing included, at most. */
  readonly #maxChunkedWire: number
  #phase: Phase = 'head'
  #verdict: string | undefined
  /** The start of a head (or trailer section) whose end has not arrived. */
  #pending: Buffer | undefined
  #interim = 0
  /** Bytes still due: of the Content-Length body, or of the current chunk. */
  #left = 0
  /** CR LF still due after a chunk's data. */
  #crlf = 0
  #chunkLine = ''
  #size = 0
  #chunkedWire = 0
  /** The response lets the connection carry another (HTTP/1.1, no `Connection: close`). */
  #persistent = false
  /** Bytes came after the end of the message. */
  #surplus = false
  readonly #parts: Buffer[] = []

  constructor (options: ProbeOptions = {}) {
    this.#method = options.method ?? 'GET'
    this.#status = options.status ?? DEFAULT_STATUS
    this.#body = options.body
    this.#maxBody = options.maxBody ?? DEFAULT_MAX_BODY
    this.#exact = options.keepAlive === true
    this.#maxChunkedWire = 2 * this.#maxBody + MAX_HEAD
  }

  /** Ready for the next response. */
  reset (): void {
    this.#phase = 'head'
    this.#verdict = undefined
    this.#pending = undefined
    this.#interim = 0
    this.#left = 0
    this.#crlf = 0
    this.#chunkLine = ''
    this.#size = 0
    this.#chunkedWire = 0
    this.#persistent = false
    this.#surplus = false
    this.#parts.length = 0
  }

  /**
   * After an `OK`: the message ended exactly where the bytes did, and the
   * response allows another on the same connection.
   */
  get reusable (): boolean {
    return this.#verdict === 'OK' && this.#phase === 'done' && this.#persistent && !this.#surplus
  }

  feed (data: Buffer): string | undefined {
    if (this.#verdict !== undefined) {
      this.#surplus = true
      return this.#verdict
    }
    let at = 0
    while (this.#verdict === undefined && at < data.length) {
      switch (this.#phase) {
        case 'head': at = this.#readHead(data, at); break
        case 'length': at = this.#readLength(data, at); break
        case 'chunked': at = this.#readChunked(data, at); break
        case 'trailers': at = this.#readTrailers(data, at); break
        case 'close': at = this.#readClose(data, at); break
      }
    }
    if (at < data.length) this.#surplus = true
    return this.#verdict
  }

  /** The peer closed its side: complete if the body runs until close (or only trailers were left), early otherwise. */
  end (): string {
    if (this.#verdict !== undefined) return this.#verdict
    if (this.#phase !== 'close' && this.#phase !== 'trailers') return 'closed early'
    const verdict = this.#judgeBody()
    this.#phase = 'done'
    this.#verdict = verdict
    return verdict
  }

  #fail (reason: string): number {
    this.#verdict = reason
    this.#phase = 'done'
    return Infinity
  }

  /**
   * The text of a head (or trailer section) from `at`, without its CR LF CR LF,
   * and where the bytes after it start; undefined while its end has not arrived.
   */
  #section (data: Buffer, at: number, what: string): { text: string, next: number } | number {
    const pending = this.#pending
    if (pending === undefined) {
      const end = data.indexOf(HEAD_END, at)
      if (end !== -1 && end - at <= MAX_HEAD) return { text: data.toString('latin1', at, end), next: end + HEAD_END.length }
      if (end !== -1 || data.length - at > MAX_HEAD) return this.#fail(`bad response: ${what} over 16 KiB`)
      this.#pending = Buffer.from(data.subarray(at))
      return data.length
    }
    // Only as much of `data` as could still belong to the section is copied.
    const piece = data.subarray(at, Math.min(data.length, at + MAX_HEAD + HEAD_END.length - pending.length))
    const joined = Buffer.concat([pending, piece])
    const end = joined.indexOf(HEAD_END, Math.max(0, pending.length - HEAD_END.length + 1))
    if (end !== -1 && end <= MAX_HEAD) {
      this.#pending = undefined
      return { text: joined.toString('latin1', 0, end), next: at + end + HEAD_END.length - pending.length }
    }
    if (end !== -1 || joined.length > MAX_HEAD) return this.#fail(`bad response: ${what} over 16 KiB`)
    this.#pending = joined
    return data.length
  }

  #readHead (data: Buffer, at: number): number {
    const section = this.#section(data, at, 'head')
    if (typeof section === 'number') return section
    const { text, next } = section
    const lineEnd = text.indexOf('\r\n')
    const match = STATUS_LINE.exec(lineEnd === -1 ? text : text.slice(0, lineEnd))
    if (match === null) return this.#fail('bad response: not an HTTP/1.x status line')
    const status = Number(match[2])
    if (status < 100) return this.#fail('bad response: not an HTTP/1.x status line')
    if (status < 200 && status !== 101) {
      // An interim response: the final one follows in the same bytes or later ones.
      if (++this.#interim > MAX_INTERIM) return this.#fail(`bad response: over ${MAX_INTERIM} interim (1xx) responses`)
      return next
    }
    if (!statusExpected(status, this.#status)) return this.#fail(`bad status ${status}`)
    let length: number | undefined
    let chunked = false
    let close = match[1] === '0'
    let from = lineEnd === -1 ? text.length : lineEnd + 2
    while (from < text.length) {
      let to = text.indexOf('\r\n', from)
      if (to === -1) to = text.length
      const colon = text.indexOf(':', from)
      if (colon <= from || colon > to) return this.#fail('bad response: a header line without a name')
      const name = text.slice(from, colon).trim().toLowerCase()
      const value = text.slice(colon + 1, to).trim()
      from = to + 2
      if (name === 'content-length') {
        if (!/^\d{1,15}$/.test(value) || (length !== undefined && length !== Number(value))) return this.#fail('bad response: bad Content-Length')
        length = Number(value)
      } else if (name === 'transfer-encoding') {
        chunked = /(?:^|,)\s*chunked$/i.test(value)
      } else if (name === 'connection') {
        close = /(?:^|,)\s*close\s*(?:,|$)/i.test(value)
      }
    }
    this.#persistent = !close && status !== 101
    if (this.#method === 'HEAD' || status === 204 || status === 304 || status === 101) return this.#complete(next)
    if (chunked) {
      this.#phase = 'chunked'
    } else if (length !== undefined) {
      if (length > this.#maxBody) return this.#fail(TOO_LARGE)
      if (length === 0) return this.#complete(next)
      this.#phase = 'length'
      this.#left = length
    } else {
      this.#phase = 'close'
      this.#persistent = false
    }
    return next
  }

  #readLength (data: Buffer, at: number): number {
    const end = Math.min(data.length, at + this.#left)
    this.#left -= end - at
    this.#keep(data, at, end)
    return this.#left === 0 ? this.#complete(end) : end
  }

  #readClose (data: Buffer, at: number): number {
    this.#keep(data, at, data.length)
    return this.#verdict === undefined ? data.length : Infinity
  }

  #readChunked (data: Buffer, start: number): number {
    let at = start
    while (at < data.length) {
      if (this.#left > 0) {
        const end = Math.min(data.length, at + this.#left)
        this.#keep(data, at, end)
        if (this.#verdict !== undefined) return Infinity
        this.#left -= end - at
        at = end
        if (this.#left === 0) this.#crlf = 2
      } else if (this.#crlf > 0) {
        if (data[at] !== (this.#crlf === 2 ? CR : LF)) return this.#fail('bad response: no CR LF after chunk data')
        this.#crlf--
        at++
      } else {
        const newline = data.indexOf(LF, at)
        this.#chunkLine += data.toString('latin1', at, newline === -1 ? data.length : newline)
        if (this.#chunkLine.length > MAX_CHUNK_LINE) return this.#fail('bad response: chunk size line over 1 KiB')
        if (newline === -1) {
          at = data.length
          break
        }
        at = newline + 1
        const size = chunkSize(this.#chunkLine)
        this.#chunkLine = ''
        if (size === undefined) return this.#fail('bad response: bad chunk size')
        if (size === 0) {
          // The last chunk: its trailers matter only to a connection that carries on.
          if (!this.#exact) return this.#complete(at)
          // The size line's CR LF starts the CR LF CR LF that ends the trailer section (at once, when there is none).
          this.#phase = 'trailers'
          this.#pending = CRLF
          break
        }
        if (this.#size + size > this.#maxBody) return this.#fail(TOO_LARGE)
        this.#left = size
      }
    }
    // Chunk lines and extensions are framing, not body: they are bounded too.
    this.#chunkedWire += at - start
    if (this.#chunkedWire > this.#maxChunkedWire) return this.#fail(TOO_LARGE)
    return this.#verdict === undefined ? at : Infinity
  }

  #readTrailers (data: Buffer, at: number): number {
    const section = this.#section(data, at, 'trailer section')
    return typeof section === 'number' ? section : this.#complete(section.next)
  }

  #keep (data: Buffer, from: number, to: number): void {
    this.#size += to - from
    if (this.#size > this.#maxBody) {
      this.#fail(TOO_LARGE)
      return
    }
    if (this.#body !== undefined && to > from) this.#parts.push(data.subarray(from, to))
  }

  /** The message is complete (at `next` in the bytes being read): judge the body. */
  #complete (next = Infinity): number {
    if (this.#verdict !== undefined) return Infinity
    this.#phase = 'done'
    this.#verdict = this.#judgeBody()
    return next
  }

  #judgeBody (): string {
    const expected = this.#body
    if (expected === undefined) return 'OK'
    const text = Buffer.concat(this.#parts).toString('utf8')
    this.#parts.length = 0
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

/** Where a check was when its socket failed. */
type Stage = 'connecting' | 'handshake' | 'exchange'

function errorReason (error: Error & { code?: string }, stage: Stage): string {
  const code = error.code ?? error.name
  if (code === 'ECONNREFUSED') return 'connection refused'
  if (code === 'ETIMEDOUT') return 'timed out'
  // An alert may come after the handshake too (a client certificate refused under TLS 1.3).
  if (stage === 'handshake' || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) return `tls error ${code}`
  if (stage === 'exchange' && (code === 'ECONNRESET' || code === 'EPIPE')) return 'closed early'
  return `error ${code}`
}

export type ProbeDone = (result: CheckResult) => void

/**
 * The checks of one target, one at a time: `check` starts one and calls
 * `done` once with its result, unless `cancel` drops it first. The caller
 * times checks out (`timeout`), so that a thousand probers need no timer of
 * their own. With keepAlive the connection of a check that passed carries the
 * next; it is closed on any doubt (a failed check, bytes while idle, a close).
 */
export class Prober {
  readonly #target: ProbeTarget
  /** TLS settings, for http checks of an https target (a tcp check only connects). */
  readonly #tls: ProbeTls | undefined
  readonly #tcp: boolean
  readonly #keepAlive: boolean
  readonly #request: Buffer
  readonly #reader: ResponseReader
  readonly #servername: string | undefined
  #socket: net.Socket | undefined
  #done: ProbeDone | undefined
  #stage: Stage = 'connecting'
  #start = 0
  /** The check in flight was sent on a connection kept from an earlier one. */
  #reused = false
  #received = 0
  /** The TLS session of the last handshake, offered again on the next connection. */
  #session: Buffer | undefined

  constructor (target: ProbeTarget, options: ProbeOptions = {}) {
    this.#target = target
    this.#tcp = options.type === 'tcp'
    this.#keepAlive = options.keepAlive === true && !this.#tcp
    this.#request = Buffer.from(checkRequest(target, options.method, options.path, options.headers, this.#keepAlive), 'latin1')
    this.#reader = new ResponseReader(options)
    this.#tls = this.#tcp ? undefined : target.tls
    this.#servername = this.#tls === undefined ? undefined : serverName(target.host, this.#tls)
  }

  /** A check is in flight. */
  get busy (): boolean { return this.#done !== undefined }

  check (done: ProbeDone): void {
    this.cancel()
    this.#done = done
    this.#start = performance.now()
    this.#received = 0
    this.#reader.reset()
    const kept = this.#socket
    if (kept !== undefined && kept.readyState === 'open') {
      this.#reused = true
      this.#stage = 'exchange'
      kept.ref()
      kept.write(this.#request)
      return
    }
    this.#connect()
  }

  /** Ends the check in flight as `timed out`. */
  timeout (): void {
    this.#finish('timed out')
  }

  /** Drops the check in flight without a result (an abort): its connection is closed. */
  cancel (): void {
    if (this.#done === undefined) return
    this.#done = undefined
    this.#retire()
  }

  /** Cancels the check in flight and closes a kept connection. */
  close (): void {
    this.cancel()
    this.#retire()
  }

  #connect (): void {
    this.#retire()
    this.#reused = false
    this.#stage = 'connecting'
    const { host, port } = this.#target
    let socket: net.Socket
    try {
      socket = this.#tls === undefined
        ? net.connect(port, host)
        : tls.connect({ ...this.#tls, host, port, servername: this.#servername, session: this.#session })
    } catch (error) {
      this.#finish(errorReason(error as Error, 'connecting'))
      return
    }
    this.#socket = socket
    socket.on('error', this.#onError)
    socket.on('close', this.#onClose)
    socket.on('connect', this.#onConnect)
    if (this.#tls !== undefined) {
      socket.on('secureConnect', this.#onSecure)
      socket.on('session', this.#onSession)
    }
    if (this.#tcp) return
    socket.on('data', this.#onData)
    socket.on('end', this.#onEnd)
  }

  /** Closes the current connection and forgets it; its late events no longer reach this prober. */
  #retire (reset = false): void {
    const socket = this.#socket
    if (socket === undefined) return
    this.#socket = undefined
    socket.off('close', this.#onClose)
    socket.off('connect', this.#onConnect)
    socket.off('secureConnect', this.#onSecure)
    socket.off('session', this.#onSession)
    socket.off('data', this.#onData)
    socket.off('end', this.#onEnd)
    // Errors still to come (a reset racing the destroy) are of no interest; unheard, one would throw.
    socket.off('error', this.#onError)
    socket.on('error', ignore)
    if (reset) socket.resetAndDestroy()
    else socket.destroy()
  }

  #finish (reason: string, keep = false): void {
    const done = this.#done
    if (done === undefined) return
    this.#done = undefined
    if (keep && this.#socket !== undefined) this.#socket.unref()
    else this.#retire(this.#tcp)
    done({ ok: reason === 'OK', reason, latencyMs: Math.round((performance.now() - this.#start) * 100) / 100, at: Date.now() })
  }

  /**
   * A kept connection the backend had closed meanwhile fails before a byte
   * comes back: that says nothing of the backend, so the check is sent again
   * on a new connection (within the same timeout).
   */
  #retryOnNew (): boolean {
    if (!this.#reused || this.#received > 0 || this.#done === undefined) return false
    this.#connect()
    return true
  }

  readonly #onConnect = (): void => {
    if (this.#done === undefined) return
    // A TCP check closes with a reset, as HAProxy does: no TIME_WAIT left behind per check.
    if (this.#tcp) return this.#finish('OK')
    if (this.#tls !== undefined) {
      this.#stage = 'handshake'
      return
    }
    this.#stage = 'exchange'
    this.#socket?.write(this.#request)
  }

  readonly #onSecure = (): void => {
    if (this.#done === undefined) return
    this.#stage = 'exchange'
    this.#socket?.write(this.#request)
  }

  readonly #onSession = (session: Buffer): void => {
    this.#session = session
  }

  readonly #onData = (data: Buffer): void => {
    // Bytes on an idle kept connection belong to no request: never trust that connection again.
    if (this.#done === undefined) return this.#retire()
    this.#received += data.length
    const verdict = this.#judge(data)
    if (verdict !== undefined) this.#finish(verdict, this.#keepAlive && this.#reader.reusable)
  }

  readonly #onEnd = (): void => {
    if (this.#done === undefined) return this.#retire()
    if (this.#retryOnNew()) return
    this.#finish(this.#stage === 'handshake' ? HANDSHAKE_CLOSED : this.#judge(undefined) as string)
  }

  /** The reader's verdict on more bytes, or on the end (undefined). */
  #judge (data: Buffer | undefined): string | undefined {
    try {
      return data === undefined ? this.#reader.end() : this.#reader.feed(data)
    } catch (error) {
      // Not expected from any input; should it happen, it is this check's failure, never the process's.
      return `error ${(error as Error).name}`
    }
  }

  readonly #onClose = (): void => {
    if (this.#done === undefined) return this.#retire()
    if (this.#retryOnNew()) return
    this.#finish(this.#stage === 'handshake' ? HANDSHAKE_CLOSED : 'closed early')
  }

  readonly #onError = (error: Error): void => {
    if (this.#done === undefined) return this.#retire()
    if (this.#retryOnNew()) return
    this.#finish(errorReason(error, this.#stage))
  }
}

function ignore (): void {}

/**
 * Checks a target once. Resolves with the result, never rejects; the socket is
 * gone and the timer cleared by then. An abort ends the check at once with
 * `error ABORT_ERR`.
 */
export async function probe (target: ProbeTarget, options: ProbeOptions = {}, signal?: AbortSignal): Promise<CheckResult> {
  return await new Promise<CheckResult>(resolve => {
    const prober = new Prober(target, { ...options, keepAlive: false })
    const start = performance.now()
    const aborted = (): void => {
      clearTimeout(timer)
      prober.cancel()
      resolve({ ok: false, reason: 'error ABORT_ERR', latencyMs: Math.round((performance.now() - start) * 100) / 100, at: Date.now() })
    }
    const timer = setTimeout(() => prober.timeout(), options.timeout ?? DEFAULT_PROBE_TIMEOUT)
    timer.unref()
    if (signal?.aborted === true) return aborted()
    signal?.addEventListener('abort', aborted, { once: true })
    prober.check(result => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', aborted)
      resolve(result)
    })
  })
}
