import { EventEmitter } from 'node:events'
import { Redis, type RedisOptions } from 'ioredis'
import { StoreUnavailableError } from '../errors.js'
import type { RedisSettings } from './options.js'
import type { Script } from './redis-scripts.js'

// The Redis store's two connections (commands, and the channel), and the
// rule that no call waits longer than commandTimeout whatever Redis does:
//
// - each call races a timer; a late answer is still counted until it comes;
// - nothing is queued while Redis is away (enableOfflineQueue: false), nothing
//   is sent again after a reconnect (a lease taken late would be a surprise),
//   and while the link is down calls fail at once without being sent;
// - once down, the link probes with one PING at a time, and only when every
//   command it sent has been answered (a stopped Redis answers nothing: the
//   probe waits instead of piling up), and only with both connections ready
//   and the channel subscribed again.

export interface LinkEvents {
  /** Both connections answer again (or for the first time). */
  up: []
  /** A call failed or a connection was lost (once per failure); the first reason since it was up. */
  down: [string]
  /** A message on the channel. */
  message: [string]
}

/** What the Redis store takes of a client that is given to it: its settings, through duplicate(). */
export interface RedisClientLike {
  duplicate (override?: Partial<RedisOptions>): Redis
}

export interface RedisLinkOptions extends RedisSettings {
  url?: string
  client?: RedisClientLike
  channel: string
}

type Argument = string | number

/** An answer that Redis gave as an error (a script's mistake, a key of the wrong type): Redis is there. */
function isReply (error: unknown): boolean {
  return (error as Error | undefined)?.name === 'ReplyError'
}

/** What went wrong, in the words of whoever failed (not wrapped in the store's message). */
function reasonOf (error: unknown): string {
  const failure = error as Error
  return failure.cause instanceof Error ? failure.cause.message : failure.message
}

export class RedisLink extends EventEmitter<LinkEvents> {
  readonly #settings: RedisLinkOptions
  readonly #command: Redis
  readonly #subscriber: Redis
  #up = false
  #failedSinceUp = false
  #downReason = 'connecting'
  #subscribed = false
  #pending = 0
  #probe: NodeJS.Timeout | undefined
  #closed = false
  #lastError = ''

  constructor (settings: RedisLinkOptions) {
    super()
    this.#settings = settings
    const own: Partial<RedisOptions> = {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      autoResubscribe: false,
      enableReadyCheck: true,
      connectTimeout: settings.connectTimeout,
      retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 10), settings.retryInterval)
    }
    this.#command = settings.client === undefined ? new Redis(settings.url as string, own) : settings.client.duplicate(own)
    this.#subscriber = this.#command.duplicate(own)

    for (const connection of [this.#command, this.#subscriber]) {
      connection.on('error', (error: Error) => { this.#lastError = error.message })
    }
    this.#command.on('ready', () => this.#soon())
    this.#command.on('close', () => this.#down('connection to Redis closed'))
    this.#subscriber.on('ready', () => { this.#subscribe() })
    this.#subscriber.on('close', () => {
      this.#subscribed = false
      this.#down('subscriber connection to Redis closed')
    })
    this.#subscriber.on('message', (channel: string, text: string) => {
      if (channel === settings.channel) this.emit('message', text)
    })
    this.#command.connect().catch(() => {})
    this.#subscriber.connect().catch(() => {})
  }

  /** Whether calls are sent (the probe succeeded and nothing failed since). */
  get up (): boolean { return this.#up }
  /** Commands sent and not answered yet (answers that came after their timeout included). */
  get pending (): number { return this.#pending }

  async #subscribe (): Promise<void> {
    try {
      const subscriber = this.#subscriber
      await this.#send(async () => await subscriber.subscribe(this.#settings.channel), Date.now() + this.#settings.commandTimeout)
      this.#subscribed = true
      this.#soon()
    } catch (error) {
      this.#down(`could not subscribe: ${reasonOf(error)}`)
    }
  }

  #down (reason: string): void {
    if (this.#closed) return
    this.#up = false
    if (!this.#failedSinceUp) {
      this.#failedSinceUp = true
      this.#downReason = this.#lastError === '' ? reason : `${reason} (${this.#lastError})`
    }
    // The store announces a change of state once, however many failures come.
    this.emit('down', this.#downReason)
    this.#schedule(this.#settings.retryInterval)
  }

  /** A probe now, unless one is due sooner. */
  #soon (): void {
    if (!this.#up) this.#schedule(0)
  }

  #schedule (delay: number): void {
    if (this.#closed) return
    clearTimeout(this.#probe)
    this.#probe = setTimeout(() => { this.#check() }, delay).unref()
  }

  async #check (): Promise<void> {
    this.#probe = undefined
    if (this.#up || this.#closed) return
    if (this.#command.status === 'ready' && this.#subscribed && this.#pending === 0) {
      try {
        await this.#send(async () => await this.#command.ping(), Date.now() + this.#settings.commandTimeout)
        if (this.#closed) return
        this.#up = true
        this.#failedSinceUp = false
        this.#lastError = ''
        this.emit('up')
        return
      } catch {}
    }
    this.#schedule(this.#settings.retryInterval)
  }

  /** One command, answered or failed by `deadline`. */
  #send (command: () => Promise<unknown>, deadline: number): Promise<unknown> {
    this.#pending++
    const answer = command()
    answer.then(() => { this.#pending-- }, () => { this.#pending-- })
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const reason = `no answer from Redis within ${this.#settings.commandTimeout} ms`
        reject(new StoreUnavailableError(reason, { cause: new Error(reason) }))
      }, Math.max(0, deadline - Date.now()))
      answer.then(value => {
        clearTimeout(timer)
        resolve(value)
      }, (error: Error) => {
        clearTimeout(timer)
        reject(isReply(error) ? error : new StoreUnavailableError(error.message, { cause: error }))
      })
    })
  }

  /** A command, failing at once while the link is down; a failure that is not Redis' answer takes the link down. */
  async call (command: string, args: Argument[], deadline = Date.now() + this.#settings.commandTimeout): Promise<unknown> {
    if (!this.#up) throw new StoreUnavailableError(this.#closed ? 'store closed' : this.#downReason)
    if (this.#pending >= this.#settings.maxPending) {
      const reason = `${this.#pending} commands wait for Redis (maxPending ${this.#settings.maxPending})`
      this.#down(reason)
      throw new StoreUnavailableError(reason)
    }
    try {
      return await this.#send(async () => await this.#command.call(command, ...args), deadline)
    } catch (error) {
      if (!isReply(error)) this.#down(reasonOf(error))
      throw error
    }
  }

  /** A script by its sha, sent whole when Redis does not know it (after a restart); both within one timeout. */
  async eval (script: Script, keys: string[], args: Argument[]): Promise<unknown> {
    const deadline = Date.now() + this.#settings.commandTimeout
    try {
      return await this.call('EVALSHA', [script.sha, keys.length, ...keys, ...args], deadline)
    } catch (error) {
      if (!isReply(error) || !(error as Error).message.startsWith('NOSCRIPT')) throw error
      return await this.call('EVAL', [script.source, keys.length, ...keys, ...args], deadline)
    }
  }

  close (): void {
    this.#closed = true
    this.#up = false
    clearTimeout(this.#probe)
    this.#command.disconnect()
    this.#subscriber.disconnect()
  }
}
