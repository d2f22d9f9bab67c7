// A minimal typed listener list for the bus's events (offer, rescind, protocol error, ...).
// Listeners run synchronously in registration order; one that throws does not stop the others:
// its error goes to the list's error sink (the owner's handler-error reporting).

/** Removes the listener it was returned for. */
export type Unsubscribe = () => void;

export class Listeners<T, R = void> {
  private list: ((value: T) => R)[] = [];

  constructor(private readonly onListenerError: (error: unknown) => void) {}

  get size(): number {
    return this.list.length;
  }

  add(listener: (value: T) => R): Unsubscribe {
    if (typeof listener !== 'function') throw new TypeError('a listener must be a function');
    this.list = [...this.list, listener];
    return () => {
      this.list = this.list.filter((l) => l !== listener);
    };
  }

  /** Calls every listener with `value`; returns what they returned (errors are reported, skipped). */
  emit(value: T): R[] {
    const list = this.list;
    if (list.length === 0) return [];
    const results: R[] = [];
    for (const listener of list) {
      try {
        results.push(listener(value));
      } catch (error) {
        this.onListenerError(error);
      }
    }
    return results;
  }
}

/** Surfaces an upper-layer bug nobody listens for, like an EventEmitter 'error' without a listener. */
export function rethrowLater(error: unknown): void {
  queueMicrotask(() => {
    throw error;
  });
}
