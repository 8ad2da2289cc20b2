import type { FastifyBaseLogger } from 'fastify'

interface Window {
  level: 'warn' | 'info'
  fields: Record<string, unknown>
  message: string
  /** Occurrences since the last line. */
  count: number
  timer: NodeJS.Timeout
}

/**
 * Log lines for failures that come in bursts (a dead peer under load): the
 * first of a kind is written at once, the rest are counted and written as one
 * line per kind per second with their count, for as long as the burst lasts.
 * A kind is what `key` says (e.g. peer and reason).
 */
export class FailureLog {
  readonly #log: FastifyBaseLogger
  readonly #windowMs: number
  readonly #windows = new Map<string, Window>()

  constructor (log: FastifyBaseLogger, windowMs = 1000) {
    this.#log = log
    this.#windowMs = windowMs
  }

  write (level: 'warn' | 'info', key: string, fields: Record<string, unknown>, message: string): void {
    const open = this.#windows.get(key)
    if (open !== undefined) {
      open.count++
      open.fields = fields
      return
    }
    this.#log[level](fields, message)
    this.#windows.set(key, { level, fields, message, count: 0, timer: this.#arm(key) })
  }

  /** Writes what is counted and stops the timers (the server is closing). */
  close (): void {
    for (const window of this.#windows.values()) {
      clearTimeout(window.timer)
      this.#flush(window)
    }
    this.#windows.clear()
  }

  #arm (key: string): NodeJS.Timeout {
    const timer = setTimeout(() => this.#tick(key), this.#windowMs)
    timer.unref()
    return timer
  }

  #tick (key: string): void {
    const window = this.#windows.get(key) as Window
    if (window.count === 0) {
      this.#windows.delete(key)
      return
    }
    this.#flush(window)
    window.count = 0
    window.timer = this.#arm(key)
  }

  #flush (window: Window): void {
    if (window.count === 0) return
    this.#log[window.level]({ ...window.fields, repeated: window.count }, `${window.message} (${window.count} more within ${this.#windowMs} ms)`)
  }
}
