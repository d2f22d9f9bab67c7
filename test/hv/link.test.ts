// Unit tests of one partition link: the hypercall-level results (tryPost, trySignalEvent), the
// deterministic scheduler, polled mode, flag scanning order, the host port table, and input from
// a hostile guest that scribbles on the shared state.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  attachHvGuest,
  attachHvHost,
  createHvLinkDescriptor,
  createSameThreadLink,
  HV_STATUS_INSUFFICIENT_BUFFERS,
  HV_STATUS_INVALID_CONNECTION_ID,
  HV_STATUS_SUCCESS,
  HvError,
  HvScheduler,
} from '../../src/hv/index.js';
import { WireError } from '../../src/wire/errors.js';

const bytes = (...v: number[]): Uint8Array => new Uint8Array(v);

describe('message queue', () => {
  test('tryPost reports HV_STATUS_INSUFFICIENT_BUFFERS when the queue is full, and succeeds once drained', () => {
    const link = createSameThreadLink({ queueSlots: 2, scheduler: new HvScheduler({ mode: 'manual' }) });
    const got: number[] = [];
    link.host.onMessage(1, (m) => got.push(m.data[0]!));
    assert.equal(link.guest.tryPost(1, bytes(1)), HV_STATUS_SUCCESS);
    assert.equal(link.guest.tryPost(1, bytes(2)), HV_STATUS_SUCCESS);
    assert.equal(link.guest.tryPost(1, bytes(3)), HV_STATUS_INSUFFICIENT_BUFFERS);
    assert.deepEqual(got, []);
    link.runUntilIdle();
    assert.deepEqual(got, [1, 2]);
    assert.equal(link.guest.tryPost(1, bytes(3)), HV_STATUS_SUCCESS);
    link.runUntilIdle();
    assert.deepEqual(got, [1, 2, 3]);
    link.close();
  });

  test('tryPost does not overtake posts that are waiting for a slot', async () => {
    const link = createSameThreadLink({ queueSlots: 1, scheduler: new HvScheduler({ mode: 'manual' }) });
    const got: number[] = [];
    link.host.onMessage(1, (m) => got.push(m.data[0]!));
    const first = link.guest.post(1, bytes(1));
    const second = link.guest.post(1, bytes(2)); // waits
    assert.equal(link.guest.pendingPosts, 1);
    assert.equal(link.guest.tryPost(1, bytes(9)), HV_STATUS_INSUFFICIENT_BUFFERS);
    await link.idle();
    await Promise.all([first, second]);
    assert.deepEqual(got, [1, 2]);
    link.close();
  });

  test('the sender may reuse its buffer as soon as post() returns, even when the post waits', async () => {
    const link = createSameThreadLink({ queueSlots: 1 });
    const got: number[] = [];
    link.host.onMessage(1, (m) => got.push(m.data[0]!));
    const buf = new Uint8Array(4);
    const posts = [];
    for (let i = 0; i < 5; i++) {
      buf[0] = i;
      posts.push(link.guest.post(1, buf));
    }
    buf.fill(0xee);
    await Promise.all(posts);
    await link.idle();
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
    link.close();
  });

  test('a waiting post whose port went away is rejected with HV_STATUS_INVALID_CONNECTION_ID', async () => {
    const link = createSameThreadLink({ queueSlots: 1, scheduler: new HvScheduler({ mode: 'manual' }) });
    link.host.onMessage(1, () => {});
    const first = link.guest.post(1, bytes(1));
    const second = link.guest.post(1, bytes(2));
    link.host.onMessage(1, null);
    link.runUntilIdle();
    await first;
    await assert.rejects(
      second,
      (e: unknown) => e instanceof HvError && e.status === HV_STATUS_INVALID_CONNECTION_ID,
    );
    link.close();
  });

  test('a message that arrives after its port was closed is counted and reported, not delivered', async () => {
    const link = createSameThreadLink({ scheduler: new HvScheduler({ mode: 'manual' }) });
    const errors: unknown[] = [];
    link.host.onError((e) => errors.push(e));
    link.host.onMessage(1, () => assert.fail('must not be delivered'));
    await link.guest.post(1, bytes(1));
    link.host.onMessage(1, null);
    link.runUntilIdle();
    assert.equal(link.host.stats.unrouted, 1);
    assert.ok(errors[0] instanceof HvError && errors[0].status === HV_STATUS_INVALID_CONNECTION_ID);
    link.close();
  });

  test('the message object carries port, type and a bounded payload view', async () => {
    const link = createSameThreadLink();
    const seen: string[] = [];
    link.guest.onMessage(2, (m) => seen.push(`${m.port}/${m.messageType}/${[...m.payload].join(',')}`));
    link.guest.onMessage(7, (m) => seen.push(`${m.port}/${m.messageType}/${m.length}`));
    await link.host.post(2, bytes(5, 6, 7));
    await link.host.post(7, new Uint8Array(0), 0x42);
    await link.idle();
    assert.deepEqual(seen, ['2/1/5,6,7', '7/66/0']);
    link.close();
  });

  test('handler errors go to onError and delivery goes on', async () => {
    const link = createSameThreadLink();
    const errors: unknown[] = [];
    const got: number[] = [];
    link.host.onError((e) => errors.push(e));
    link.host.onMessage(1, (m) => {
      got.push(m.data[0]!);
      if (m.data[0] === 1) throw new Error('boom');
    });
    await link.guest.post(1, bytes(1));
    await link.guest.post(1, bytes(2));
    await link.idle();
    assert.deepEqual(got, [1, 2]);
    assert.equal((errors[0] as Error).message, 'boom');
    link.close();
  });
});

describe('same-thread scheduling', () => {
  /** A ping-pong with messages and flags in both directions; logs every delivery in global order. */
  async function pingPong(): Promise<string[]> {
    const log: string[] = [];
    const link = createSameThreadLink({ queueSlots: 3 });
    const { host, guest } = link;
    host.onMessage(1, (m) => {
      log.push(`H msg ${m.data[0]}`);
      if (m.data[0]! % 3 === 0) host.setEventFlag(m.data[0]! % 50);
      void host.post(2, bytes(m.data[0]! + 1));
    });
    host.onEvent(0x2001, (c) => log.push(`H ev ${c}`));
    guest.onMessage(2, (m) => {
      log.push(`G msg ${m.data[0]}`);
      if (m.data[0]! < 200) void guest.post(1, bytes(m.data[0]! + 1));
      if (m.data[0]! % 4 === 0) guest.signalEvent(0x2001);
    });
    for (let f = 0; f < 50; f++) guest.onEvent(f, (flag) => log.push(`G flag ${flag}`));
    await Promise.all([guest.post(1, bytes(0)), guest.post(1, bytes(100)), guest.post(1, bytes(50))]);
    await link.idle();
    link.close();
    return log;
  }

  test('the same inputs give the same interleaving of every delivery', async () => {
    const a = await pingPong();
    const b = await pingPong();
    assert.ok(a.length > 300, `expected a long exchange, got ${a.length}`);
    assert.deepEqual(a, b);
  });

  test('a manual scheduler delivers nothing until drained', async () => {
    const scheduler = new HvScheduler({ mode: 'manual' });
    const link = createSameThreadLink({ scheduler });
    const got: string[] = [];
    link.host.onMessage(1, () => got.push('msg'));
    link.guest.onEvent(3, () => got.push('flag'));
    await link.guest.post(1, bytes(1));
    link.host.setEventFlag(3);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(got, []);
    assert.ok(scheduler.pending > 0);
    assert.ok(scheduler.runUntilIdle() > 0);
    assert.deepEqual(got.sort(), ['flag', 'msg']);
    link.close();
  });

  test('several links on one scheduler are serviced in one deterministic order', async () => {
    const run = async (): Promise<string[]> => {
      const scheduler = new HvScheduler();
      const links = [0, 1, 2].map(() => createSameThreadLink({ scheduler }));
      const log: string[] = [];
      links.forEach((l, i) => {
        l.host.onMessage(1, (m) => log.push(`link${i} got ${m.data[0]}`));
      });
      for (let k = 0; k < 5; k++) for (const l of [2, 0, 1]) void links[l]!.guest.post(1, bytes(k));
      await scheduler.idle();
      for (const l of links) l.close();
      return log;
    };
    const a = await run();
    assert.equal(a.length, 15);
    assert.deepEqual(a, await run());
  });
});

describe('polled mode', () => {
  test('a polled end processes only in poll(), and is not woken', async () => {
    const link = createSameThreadLink();
    const got: number[] = [];
    link.host.setPolling(true);
    link.host.onMessage(1, (m) => got.push(m.data[0]!));
    link.host.onEvent(0x2001, () => got.push(-1));
    await link.idle();
    const wakeups = link.host.stats.wakeups;
    await link.guest.post(1, bytes(1));
    link.guest.signalEvent(0x2001);
    await link.idle();
    assert.deepEqual(got, []);
    assert.equal(link.host.stats.wakeups, wakeups);
    assert.equal(link.host.poll(), 2);
    assert.deepEqual(got, [1, -1]);
    assert.equal(link.host.poll(), 0);
    link.host.setPolling(false);
    await link.guest.post(1, bytes(2));
    await link.idle();
    assert.deepEqual(got, [1, -1, 2]);
    link.close();
  });

  test('poll() from inside a handler of the same end does nothing', async () => {
    const link = createSameThreadLink();
    const inner: number[] = [];
    link.host.onMessage(1, () => inner.push(link.host.poll()));
    await link.guest.post(1, bytes(1));
    await link.guest.post(1, bytes(2));
    await link.idle();
    assert.deepEqual(inner, [0, 0]);
    link.close();
  });

  test('cross-thread ends in polled mode: the peer skips Atomics.notify, poll() delivers', async () => {
    const d = createHvLinkDescriptor();
    const host = attachHvHost(d, { polling: true });
    const guest = attachHvGuest(d, { polling: true });
    const got: string[] = [];
    host.onMessage(1, (m) => got.push(`msg ${m.data[0]}`));
    guest.onEvent(5, (f) => got.push(`flag ${f}`));
    await guest.post(1, bytes(7));
    host.setEventFlag(5);
    await new Promise((r) => setTimeout(r, 5));
    assert.deepEqual(got, []);
    assert.equal(guest.poll() + host.poll(), 2);
    assert.deepEqual(got.sort(), ['flag 5', 'msg 7']);
    host.close();
    assert.ok(guest.closed);
  });
});

describe('event flags', () => {
  test('set flags are each delivered once, lowest first, in one scan', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 0, max: 2047 }), { minLength: 1, maxLength: 64 }),
        (flags) => {
          const link = createSameThreadLink({ scheduler: new HvScheduler({ mode: 'manual' }) });
          const seen: number[] = [];
          for (let f = 0; f < 2048; f++) link.guest.onEvent(f, (flag) => seen.push(flag));
          for (const f of flags) {
            link.host.setEventFlag(f);
            link.host.setEventFlag(f); // a second set before the scan coalesces
          }
          link.runUntilIdle();
          link.close();
          assert.deepEqual(
            seen,
            [...flags].sort((a, b) => a - b),
          );
        },
      ),
      { numRuns: 60 },
    );
  });

  test('signals to many host event ports each reach their own handler once', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: 2047 }), { minLength: 1, maxLength: 100 }),
        fc.array(fc.integer({ min: 0, max: 99 }), { maxLength: 200 }),
        (relids, picks) => {
          const link = createSameThreadLink({ scheduler: new HvScheduler({ mode: 'manual' }) });
          const seen = new Map<number, number>();
          for (const r of relids) link.host.onEvent(0x2000 + r, (c) => seen.set(c, (seen.get(c) ?? 0) + 1));
          const signalled = new Set<number>();
          for (const p of picks) {
            const c = 0x2000 + relids[p % relids.length]!;
            link.guest.signalEvent(c);
            signalled.add(c);
          }
          link.runUntilIdle();
          link.close();
          assert.deepEqual([...seen.keys()].sort(), [...signalled].sort());
          for (const n of seen.values()) assert.equal(n, 1);
        },
      ),
      { numRuns: 60 },
    );
  });

  test('a signal with nothing behind it is harmless', async () => {
    const link = createSameThreadLink();
    let calls = 0;
    link.guest.onEvent(4, () => calls++);
    link.host.setEventFlag(4);
    link.host.setEventFlag(9); // nobody handles flag 9
    await link.idle();
    assert.equal(calls, 1);
    assert.equal(link.guest.stats.unrouted, 1);
    link.close();
  });
});

describe('host port table', () => {
  test('guest lookups agree with the host registrations through any add/remove sequence', () => {
    const op = fc.record({
      conn: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 0xffffff })),
      kind: fc.constantFrom('message', 'event'),
      on: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 120 }), (ops) => {
        // A small table so probing, deletion markers and reuse all happen.
        const link = createSameThreadLink({ portCapacity: 32 });
        const model = { message: new Set<number>(), event: new Set<number>() };
        for (const o of ops) {
          const set = model[o.kind as 'message' | 'event'];
          const live = new Set([...model.message, ...model.event]);
          if (o.on && !live.has(o.conn) && live.size >= 32) continue; // table full: tested below
          if (o.kind === 'message') link.host.onMessage(o.conn, o.on ? () => {} : null);
          else link.host.onEvent(o.conn, o.on ? () => {} : null);
          if (o.on) set.add(o.conn);
          else set.delete(o.conn);
          for (const c of new Set([...live, o.conn])) {
            assert.equal(link.guest.hostListens(c), model.message.has(c), `message port ${c}`);
            assert.equal(link.guest.hostListens(c, true), model.event.has(c), `event port ${c}`);
          }
        }
        link.close();
      }),
      { numRuns: 80 },
    );
  });

  test('a full table refuses another connection id with a clear error', () => {
    const link = createSameThreadLink({ portCapacity: 32 });
    for (let i = 0; i < 32; i++) link.host.onEvent(0x2000 + i, () => {});
    assert.throws(() => link.host.onEvent(0x3000, () => {}), /port table is full/);
    link.host.onEvent(0x2005, null);
    link.host.onEvent(0x3000, () => {});
    assert.ok(link.guest.hostListens(0x3000, true));
    link.close();
  });

  test('registration arguments are checked', () => {
    const link = createSameThreadLink();
    assert.throws(() => link.host.onMessage(-1, () => {}), RangeError);
    assert.throws(() => link.host.onEvent(0x1000000, () => {}), RangeError);
    assert.throws(() => link.guest.onMessage(16, () => {}), RangeError);
    assert.throws(() => link.guest.onEvent(2048, () => {}), RangeError);
    link.close();
  });
});

describe('a hostile guest scribbling on the shared state', () => {
  test('an oversized payload_size is refused as a WireError and later messages still arrive', async () => {
    const link = createSameThreadLink({ scheduler: new HvScheduler({ mode: 'manual' }) });
    const errors: unknown[] = [];
    const got: number[] = [];
    link.host.onError((e) => errors.push(e));
    link.host.onMessage(1, (m) => got.push(m.data[0]!));
    // The guest posts, then rewrites the slot's payload_size to 0xffffffff before the host looks.
    await link.guest.post(1, bytes(3));
    const q = new Int32Array(link.descriptor.toHost);
    q[1] = -1;
    link.host.poll();
    assert.equal(link.host.stats.malformed, 1);
    assert.ok(errors[0] instanceof WireError && errors[0].code === 'oversized');
    assert.equal(Atomics.load(q, 0), 0, 'the forged slot was freed');
    await link.guest.post(1, bytes(4));
    link.host.poll();
    assert.deepEqual(got, [4]);
    link.close();
  });

  test('garbage in the shared port table and pending bits never reaches the host outside its own ports', () => {
    const link = createSameThreadLink({ portCapacity: 64, scheduler: new HvScheduler({ mode: 'manual' }) });
    const seen: number[] = [];
    link.host.onEvent(0x2001, (c) => seen.push(c));
    link.host.onMessage(1, () => {});
    const ctrl = new Int32Array(link.descriptor.control);
    // Scribble over everything after the fixed header: keys, kinds, pending and summary bits.
    for (let i = 128; i < ctrl.length; i++) ctrl[i] = (i * 0x9e3779b1) | 0;
    link.host.poll();
    // Only the host's own registered port can be called (spuriously, which is harmless).
    assert.ok(seen.every((c) => c === 0x2001));
    assert.ok(link.host.stats.eventsReceived > seen.length, 'garbage bits were seen and ignored');
    link.close();
  });
});

describe('descriptors and attaching', () => {
  test('bad options and mismatched descriptors are refused', () => {
    assert.throws(() => createHvLinkDescriptor({ queueSlots: 0 }), RangeError);
    assert.throws(() => createHvLinkDescriptor({ portCapacity: 100 }), RangeError);
    const d = createHvLinkDescriptor();
    assert.throws(() => attachHvHost({ ...d, queueSlots: 8 }), TypeError);
    assert.throws(() => attachHvGuest({ ...d, toHost: new SharedArrayBuffer(16) }), TypeError);
    assert.throws(
      () => attachHvGuest({ ...d, control: new SharedArrayBuffer(d.control.byteLength) }),
      TypeError,
    );
  });

  test('a descriptor survives structured cloning and the clone shares the same bytes', async () => {
    const d = createHvLinkDescriptor({ queueSlots: 4 });
    const host = attachHvHost(d);
    const guest = attachHvGuest(structuredClone(d));
    const got = new Promise<number>((resolve) => host.onMessage(1, (m) => resolve(m.data[0]!)));
    await guest.post(1, bytes(42));
    assert.equal(await got, 42);
    host.close();
    assert.ok(guest.closed);
  });
});
