import { performance } from 'node:perf_hooks'

/**
 * What the schedule holds: an object that knows when it is due and where it
 * sits in the heap, so that scheduling allocates nothing. `due` and `slot` are
 * the schedule's to write.
 */
export interface ScheduledTask {
  /** performance.now() ms at which `run` is due. */
  due: number
  /** Its index in the heap; -1 when not scheduled. */
  slot: number
  /** Called once when due (it is no longer scheduled then; it may schedule itself again). */
  run (now: number): void
}

/** Tasks run in one timer turn at most; the rest follow a turn later, so a late timer is no burst. */
const MAX_PER_TURN = 256
/** A timer may fire a little before performance.now() says it is due. */
const EARLY = 1

/**
 * Many timed tasks on one timer: a binary min-heap keyed by due time, and a
 * single unref()ed timer armed for the earliest. At, cancel and the run of the
 * earliest are O(log n), whatever the number of tasks.
 */
export class CheckSchedule {
  readonly #heap: ScheduledTask[] = []
  #timer: NodeJS.Timeout | undefined
  /** performance.now() ms at which the timer fires; Infinity when none is armed. */
  #armedFor = Infinity
  /** Tasks are being run: they may schedule themselves, the timer is armed once after. */
  #running = false
  readonly #onError: (error: unknown) => void

  /** `onError` hears what a task's run threw; the other tasks run on. */
  constructor (onError: (error: unknown) => void) {
    this.#onError = onError
  }

  get size (): number { return this.#heap.length }

  /** Schedules `task` at `due` (performance.now() ms), or moves it there if already scheduled. */
  at (task: ScheduledTask, due: number): void {
    const heap = this.#heap
    if (task.slot === -1) {
      task.slot = heap.length
      heap.push(task)
      task.due = due
      this.#up(task.slot)
    } else {
      const earlier = due < task.due
      task.due = due
      if (earlier) this.#up(task.slot)
      else this.#down(task.slot)
    }
    if (!this.#running && due < this.#armedFor) this.#arm()
  }

  cancel (task: ScheduledTask): void {
    const slot = task.slot
    if (slot === -1) return
    task.slot = -1
    const heap = this.#heap
    const last = heap.pop() as ScheduledTask
    if (last === task) return
    heap[slot] = last
    last.slot = slot
    this.#up(slot)
    this.#down(last.slot)
    // The timer may now fire before anything is due: it then re-arms, which is cheaper than re-arming on every cancel.
  }

  /** Drops every task and the timer. */
  clear (): void {
    for (const task of this.#heap) task.slot = -1
    this.#heap.length = 0
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#armedFor = Infinity
  }

  #arm (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#armedFor = Infinity
    const first = this.#heap[0]
    if (first === undefined) return
    const delay = Math.max(1, Math.ceil(first.due - performance.now()))
    this.#armedFor = performance.now() + delay
    this.#timer = setTimeout(this.#fire, delay)
    this.#timer.unref()
  }

  readonly #fire = (): void => {
    this.#timer = undefined
    this.#armedFor = Infinity
    const heap = this.#heap
    const now = performance.now()
    this.#running = true
    for (let ran = 0; ran < MAX_PER_TURN && heap.length > 0 && heap[0].due <= now + EARLY; ran++) {
      const task = heap[0]
      this.cancel(task)
      try {
        task.run(now)
      } catch (error) {
        this.#onError(error)
      }
    }
    this.#running = false
    this.#arm()
  }

  #up (slot: number): void {
    const heap = this.#heap
    const task = heap[slot]
    while (slot > 0) {
      const parentSlot = (slot - 1) >> 1
      const parent = heap[parentSlot]
      if (parent.due <= task.due) break
      heap[slot] = parent
      parent.slot = slot
      slot = parentSlot
    }
    heap[slot] = task
    task.slot = slot
  }

  #down (slot: number): void {
    const heap = this.#heap
    const task = heap[slot]
    const length = heap.length
    for (;;) {
      let child = 2 * slot + 1
      if (child >= length) break
      if (child + 1 < length && heap[child + 1].due < heap[child].due) child++
      const next = heap[child]
      if (next.due >= task.due) break
      heap[slot] = next
      next.slot = slot
      slot = child
    }
    heap[slot] = task
    task.slot = slot
  }
}
