// Test-only coordination between the host half and the guest half of a scenario, outside the
// link under test: "I am ready" notes, and a blocking call that lets the guest make the host act
// while a guest handler is still running. Same-thread: plain callbacks. Cross-thread: a small
// SharedArrayBuffer with Atomics.
import assert from 'node:assert/strict';

export interface HostSide {
  notify(code: number): void;
  waitFor(code: number): Promise<void>;
  /** What the guest's `callHost(code)` runs, on the host's thread. */
  serve(code: number, action: () => void): void;
  dispose(): void;
}

export interface GuestSide {
  notify(code: number): void;
  waitFor(code: number): Promise<void>;
  /** Runs the host's action for `code` and returns once it is done (blocks a guest worker). */
  callHost(code: number): void;
}

const CODES = 16;
const TO_GUEST = 0;
const TO_HOST = 16;
const REQ = 40;
const DONE = 41;
const DISPOSED = 42;
const WORDS = 64;

type WaitAsyncResult = { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (
  Atomics as unknown as { waitAsync: (a: Int32Array, i: number, v: number) => WaitAsyncResult }
).waitAsync;

class Mailbox {
  private readonly counts = new Array<number>(CODES).fill(0);
  private readonly waiters: ((() => void) | undefined)[] = new Array(CODES);
  notify(code: number): void {
    const waiter = this.waiters[code];
    if (waiter) {
      this.waiters[code] = undefined;
      waiter();
    } else this.counts[code]!++;
  }
  waitFor(code: number): Promise<void> {
    if (this.counts[code]! > 0) {
      this.counts[code]!--;
      return Promise.resolve();
    }
    assert.equal(this.waiters[code], undefined, 'one waiter per code');
    return new Promise((resolve) => {
      this.waiters[code] = resolve;
    });
  }
}

/** Both halves in one thread. */
export function createLocalSide(): { host: HostSide; guest: GuestSide } {
  const toHost = new Mailbox();
  const toGuest = new Mailbox();
  const actions = new Map<number, () => void>();
  return {
    host: {
      notify: (code) => toGuest.notify(code),
      waitFor: (code) => toHost.waitFor(code),
      serve: (code, action) => void actions.set(code, action),
      dispose: () => {},
    },
    guest: {
      notify: (code) => toHost.notify(code),
      waitFor: (code) => toGuest.waitFor(code),
      callHost: (code) => {
        const action = actions.get(code);
        assert.ok(action, `no host action for ${code}`);
        action();
      },
    },
  };
}

async function waitCounter(a: Int32Array, index: number): Promise<void> {
  for (;;) {
    const v = Atomics.load(a, index);
    if (v > 0) {
      Atomics.sub(a, index, 1);
      return;
    }
    const r = waitAsync(a, index, v);
    if (r.async) await r.value;
  }
}

function bump(a: Int32Array, index: number): void {
  Atomics.add(a, index, 1);
  Atomics.notify(a, index);
}

/** The host half of a cross-thread side channel; hand `buffer` to the guest's worker. */
export function createSharedSide(): { buffer: SharedArrayBuffer; host: HostSide } {
  const buffer = new SharedArrayBuffer(WORDS * 4);
  const a = new Int32Array(buffer);
  const actions = new Map<number, () => void>();
  let serving = false;
  const serveLoop = async (): Promise<void> => {
    while (Atomics.load(a, DISPOSED) === 0) {
      const req = Atomics.load(a, REQ);
      if (req !== 0) {
        actions.get(req - 1)?.();
        Atomics.store(a, REQ, 0);
        Atomics.store(a, DONE, 1);
        Atomics.notify(a, DONE);
        continue;
      }
      const r = waitAsync(a, REQ, 0);
      if (r.async) await r.value;
    }
  };
  return {
    buffer,
    host: {
      notify: (code) => bump(a, TO_GUEST + code),
      waitFor: (code) => waitCounter(a, TO_HOST + code),
      serve: (code, action) => {
        actions.set(code, action);
        if (!serving) {
          serving = true;
          void serveLoop();
        }
      },
      dispose: () => {
        Atomics.store(a, DISPOSED, 1);
        Atomics.notify(a, REQ);
      },
    },
  };
}

/** The guest half of a cross-thread side channel, in the guest's worker. */
export function attachSharedGuestSide(buffer: SharedArrayBuffer): GuestSide {
  const a = new Int32Array(buffer);
  return {
    notify: (code) => bump(a, TO_HOST + code),
    waitFor: (code) => waitCounter(a, TO_GUEST + code),
    callHost: (code) => {
      Atomics.store(a, DONE, 0);
      Atomics.store(a, REQ, code + 1);
      Atomics.notify(a, REQ);
      if (Atomics.wait(a, DONE, 0, 10_000) === 'timed-out')
        throw new Error(`host never answered call ${code}`);
    },
  };
}
