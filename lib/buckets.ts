/**
 * A histogram kept as plain numbers in the model: a count per bucket, the
 * sum and the count, written on the request path for the cost of a few
 * comparisons, and read (cumulated, as Prometheus wants it) only when
 * metrics are scraped.
 */
export class Buckets {
  /** Upper bounds, ascending; a value above the last counts only in +Inf. */
  readonly bounds: readonly number[]
  readonly #counts: number[]
  #sum = 0
  #count = 0

  constructor (bounds: readonly number[]) {
    this.bounds = bounds
    this.#counts = new Array<number>(bounds.length).fill(0)
  }

  observe (value: number): void {
    const bounds = this.bounds
    let i = 0
    while (i < bounds.length && value > bounds[i]) i++
    if (i < bounds.length) this.#counts[i]++
    this.#sum += value
    this.#count++
  }

  get sum (): number { return this.#sum }
  get count (): number { return this.#count }

  /** Observations at or below each bound (cumulative), in the order of `bounds`. */
  cumulative (): number[] {
    let total = 0
    return this.#counts.map(count => (total += count))
  }
}

/** Seconds: a proxied response's headers, a check (1 ms to 30 s). */
export const LATENCY_BUCKETS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
/** Seconds a held request waited for a cold start (10 ms to 2 min). */
export const WAIT_BUCKETS: readonly number[] = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120]
