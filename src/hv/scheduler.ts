// The deterministic scheduler of the same-thread transport: when one end rings the other, the
// receiving end is queued here (once, however often it was rung) and serviced in FIFO order, from a
// macrotask pump or when the caller drains explicitly. Same inputs, same order: runs replay.

/** Something the scheduler can run: an end of a same-thread link. */
export interface HvSchedulable {
  /** True while queued; maintained by the scheduler. */
  hvScheduled: boolean;
  /** Does the pending work (services the end). */
  runScheduled(): void;
}

export interface HvSchedulerOptions {
  /**
   * `'auto'` (default): queued work runs on a macrotask (setImmediate) by itself.
   * `'manual'`: nothing runs until `runUntilIdle()` or `idle()` is called.
   */
  readonly mode?: 'auto' | 'manual';
}

export class HvScheduler {
  readonly mode: 'auto' | 'manual';
  private queue: (HvSchedulable | undefined)[] = [];
  private head = 0;
  private pumpQueued = false;
  private readonly pump = (): void => {
    this.pumpQueued = false;
    // Run only what was queued when the pump started, then give the event loop (and the
    // promise continuations of posters) a turn before the next batch.
    let batch = this.pending;
    while (batch-- > 0 && this.head < this.queue.length) this.runOne();
    if (this.head < this.queue.length) this.queuePump();
  };

  constructor(options: HvSchedulerOptions = {}) {
    this.mode = options.mode ?? 'auto';
  }

  /** Number of queued tasks. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  /** Queues `task` unless it is already queued. */
  schedule(task: HvSchedulable): void {
    if (task.hvScheduled) return;
    task.hvScheduled = true;
    this.queue.push(task);
    if (this.mode === 'auto') this.queuePump();
  }

  /**
   * Runs queued work synchronously until nothing is queued; returns how many tasks ran.
   * Promise continuations (a poster whose post was waiting for a slot) run only after this
   * returns; `idle()` also lets them run. Throws if still busy after `maxSteps` tasks.
   */
  runUntilIdle(maxSteps = 1_000_000): number {
    let steps = 0;
    while (this.head < this.queue.length) {
      if (steps++ >= maxSteps) {
        throw new Error(`HvScheduler.runUntilIdle: still busy after ${maxSteps} steps`);
      }
      this.runOne();
    }
    return steps;
  }

  /**
   * Resolves once nothing is queued even after pending promise continuations have run: the
   * same-thread system is quiet. (A system that keeps itself busy never becomes idle.)
   */
  async idle(): Promise<void> {
    for (;;) {
      this.runUntilIdle();
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.head >= this.queue.length) return;
    }
  }

  private runOne(): void {
    const task = this.queue[this.head]!;
    this.queue[this.head] = undefined;
    this.head++;
    if (this.head === this.queue.length) {
      this.queue.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    task.hvScheduled = false;
    task.runScheduled();
  }

  private queuePump(): void {
    if (this.pumpQueued) return;
    this.pumpQueued = true;
    setImmediate(this.pump);
  }
}
