import xmlrpc from 'xmlrpc'
import type { RequestOptions } from 'node:http'
import { supervisordLabel, type SupervisordTarget } from './supervisord-address.js'
import { SupervisordCallError } from './errors.js'

export { SupervisordCallError }

/** A target that can be called: `none` has no daemon. */
export type SupervisordEndpoint = Exclude<SupervisordTarget, { kind: 'none' }>

/** supervisord's fault codes (supervisor/xmlrpc.py `Faults`). */
export const SUPERVISORD_FAULTS: Readonly<Record<number, string>> = {
  1: 'UNKNOWN_METHOD',
  2: 'INCORRECT_PARAMETERS',
  3: 'BAD_ARGUMENTS',
  4: 'SIGNATURE_UNSUPPORTED',
  6: 'SHUTDOWN_STATE',
  10: 'BAD_NAME',
  11: 'BAD_SIGNAL',
  20: 'NO_FILE',
  21: 'NOT_EXECUTABLE',
  30: 'FAILED',
  40: 'ABNORMAL_TERMINATION',
  50: 'SPAWN_ERROR',
  60: 'ALREADY_STARTED',
  70: 'NOT_RUNNING',
  80: 'SUCCESS',
  90: 'ALREADY_ADDED',
  91: 'STILL_RUNNING',
  92: 'CANT_REREAD'
}

/** A fault that says supervisord could not be talked to (as opposed to a refusal of the command). */
export function isUnavailable (fault: string | undefined): boolean {
  return fault === 'TIMEOUT' || fault === 'UNREACHABLE' || fault === 'ABORTED'
}

/**
 * A fault of the daemon rather than of one program (wrong credentials, no
 * daemon there, an answer that is no XML-RPC, shutting down): every program
 * behind it would fail the same way.
 */
export function isDaemonFault (fault: string | undefined): boolean {
  return fault === 'UNAUTHORIZED' || fault === 'UNREACHABLE' || fault === 'PROTOCOL' || fault === 'SHUTDOWN_STATE'
}

/** One entry of `supervisor.getAllProcessInfo` / `getProcessInfo`. */
export interface ProcessInfo {
  name: string
  group: string
  /** 0 STOPPED, 10 STARTING, 20 RUNNING, 30 BACKOFF, 40 STOPPING, 100 EXITED, 200 FATAL, 1000 UNKNOWN */
  state: number
  statename: string
  /** 0 when not running. */
  pid: number
  spawnerr: string
  exitstatus: number
  description: string
  start: number
  stop: number
  now: number
}

export interface SupervisordState { statecode: number, statename: string }

export interface SupervisordClientOptions {
  /** ms a call may take, supervisord's own `wait` included (default 5000). */
  timeout?: number
  /** Aborts every call in flight and fails the later ones (the server is closing). */
  signal?: AbortSignal
}

const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EACCES', 'ENOTFOUND', 'EAI_AGAIN'])
const VERBS: Record<string, string> = {
  startProcess: 'start',
  stopProcess: 'stop',
  getProcessInfo: 'read the state of'
}

interface CallDetails { method: string, program?: string }

interface RawError extends Error {
  code?: string | number
  faultCode?: number
  faultString?: string
  res?: { statusCode?: number }
}

/**
 * The five calls the bridge makes to one supervisord, over TCP (HTTP Basic
 * optional) or its unix socket. The `xmlrpc` package ignores a `timeout`
 * option, so every call carries its own AbortSignal, which the package hands
 * to `http.request` with the rest of its options (so does `socketPath`).
 */
export class SupervisordClient {
  readonly target: SupervisordEndpoint
  /** How the target is shown in messages, never with credentials. */
  readonly label: string
  readonly timeout: number
  readonly #signal: AbortSignal | undefined
  readonly #headers: Record<string, string>

  constructor (target: SupervisordEndpoint, options: SupervisordClientOptions = {}) {
    this.target = target
    this.label = supervisordLabel(target)
    this.timeout = options.timeout ?? 5000
    this.#signal = options.signal
    // Set here rather than through the package's basic_auth, which builds it with the deprecated `new Buffer`.
    this.#headers = { Connection: 'close' }
    if (target.username !== undefined && target.password !== undefined) {
      this.#headers.Authorization = 'Basic ' + Buffer.from(`${target.username}:${target.password}`).toString('base64')
    }
  }

  /** Starts `name`; with `wait`, supervisord answers once it is RUNNING (after its startsecs). */
  async startProcess (name: string, wait = true): Promise<boolean> {
    return await this.call<boolean>('startProcess', [name, wait], name)
  }

  /** Stops `name`; with `wait`, supervisord answers once it has exited. */
  async stopProcess (name: string, wait = true): Promise<boolean> {
    return await this.call<boolean>('stopProcess', [name, wait], name)
  }

  async getProcessInfo (name: string): Promise<ProcessInfo> {
    return await this.call<ProcessInfo>('getProcessInfo', [name], name)
  }

  async getAllProcessInfo (): Promise<ProcessInfo[]> {
    return await this.call<ProcessInfo[]>('getAllProcessInfo', [])
  }

  async getState (): Promise<SupervisordState> {
    return await this.call<SupervisordState>('getState', [])
  }

  /** Any `supervisor.*` method; fails with a SupervisordCallError, never waits past the timeout. */
  async call<T> (method: string, params: unknown[], program?: string): Promise<T> {
    const details = { method, program }
    const closing = (): SupervisordCallError => this.#error(details, 'ABORTED', 'the server is closing')
    if (this.#signal?.aborted === true) throw closing()
    const controller = new AbortController()
    return await new Promise<T>((resolve, reject) => {
      let settled = false
      const settle = (error: SupervisordCallError | null, value?: T): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        this.#signal?.removeEventListener('abort', onClose)
        if (error === null) {
          resolve(value as T)
        } else {
          reject(error)
          controller.abort()
        }
      }
      const onClose = (): void => settle(closing())
      // Not unref()ed: a caller awaiting the answer must get one even when nothing else keeps the process up.
      const timer = setTimeout(() => settle(this.#error(details, 'TIMEOUT', `no answer within ${this.timeout} ms`)), this.timeout)
      this.#signal?.addEventListener('abort', onClose, { once: true })
      this.#client(controller.signal).methodCall(`supervisor.${method}`, params, (error, value) => {
        settle(error === null || error === undefined ? null : this.#mapError(error as RawError, details), value as T)
      })
    })
  }

  #client (signal: AbortSignal): xmlrpc.Client {
    // A new client per call: the package writes Content-Length into its shared options.
    const options: RequestOptions = {
      path: '/RPC2',
      headers: { ...this.#headers },
      agent: false,
      signal
    }
    if (this.target.kind === 'unix') options.socketPath = this.target.path
    else Object.assign(options, { host: this.target.host, port: this.target.port })
    return xmlrpc.createClient(options as Parameters<typeof xmlrpc.createClient>[0])
  }

  #mapError (error: RawError, details: CallDetails): SupervisordCallError {
    if (typeof error.faultCode === 'number') {
      const fault = SUPERVISORD_FAULTS[error.faultCode] ?? /^([A-Z_]+)/.exec(error.faultString ?? '')?.[1] ?? 'UNKNOWN'
      // supervisord's fault strings read "SPAWN_ERROR: backend0"; others may not start with the name.
      const text = error.faultString ?? ''
      return this.#error(details, fault, text.startsWith(fault) ? text : `${fault}: ${text}`, error, error.faultCode)
    }
    const status = error.res?.statusCode
    // A 401 is an HTML page, which the package reports as "Unknown XML-RPC tag 'TITLE'".
    if (status === 401 || /Unknown XML-RPC tag 'TITLE'/.test(error.message)) {
      const given = this.target.username === undefined ? 'none were given' : `user "${this.target.username}"`
      return this.#error(details, 'UNAUTHORIZED', `supervisord rejected the credentials (HTTP 401, ${given})`, error)
    }
    if (typeof error.code === 'string' && UNREACHABLE_CODES.has(error.code)) {
      return this.#error(details, 'UNREACHABLE', `unreachable (${error.code})`, error)
    }
    const what = status !== undefined && status !== 200 ? `HTTP ${status}` : error.message
    return this.#error(details, 'PROTOCOL', `bad answer: ${what}`, error)
  }

  /** `supervisord <label>: could not <start program "x">: <what>`, with its fault. */
  #error (details: CallDetails, fault: string, what: string, cause?: unknown, faultCode?: number): SupervisordCallError {
    const { method, program } = details
    const action = program === undefined ? method : `${VERBS[method] ?? method} program "${program}"`
    return new SupervisordCallError(`supervisord ${this.label}: could not ${action}: ${what}`, { ...details, fault, faultCode }, cause)
  }
}
