// Scenario functions run unchanged on both hv transports. Each scenario has a host half (runs in
// the test's thread) and a guest half (same thread, or a worker per guest partition) and returns
// a trace that depends only on what was delivered, never on timing, so both transports must
// produce exactly the `expected` trace.
//
// Convention: `host()` registers everything it listens on synchronously, before its first await;
// the guest half starts after that (like a guest booting after its partition was set up).

import assert from 'node:assert/strict';
import {
  type CreatePartitionOptions,
  type GuestPartition,
  type HostPartition,
  HV_STATUS_INSUFFICIENT_BUFFERS,
  HV_STATUS_INVALID_CONNECTION_ID,
  HV_STATUS_INVALID_PARAMETER,
  HvError,
  type HvTransport,
} from '../../src/hv/index.js';
import type { GuestSide, HostSide } from './side-channel.js';

export interface HostCtx {
  readonly transport: HvTransport;
  readonly partitions: readonly HostPartition[];
  readonly sides: readonly HostSide[];
}

export interface GuestCtx {
  readonly transport: HvTransport;
  /** Index of this guest among the scenario's partitions. */
  readonly index: number;
  readonly partition: GuestPartition;
  readonly side: GuestSide;
}

export interface Trace {
  host: string[];
  guests: string[][];
}

export interface Scenario {
  readonly name: string;
  readonly partitions: number;
  readonly options: CreatePartitionOptions;
  host(ctx: HostCtx): Promise<string[]>;
  guest(ctx: GuestCtx): Promise<string[]>;
  readonly expected: Trace;
}

// Side-channel codes.
const READY = 0;
const DONE = 1;
const SAW_FINAL = 2;
const SET_AGAIN = 3;
const BLOCKED = 4;

const VMBUS_SINT = 2;
const MSG_CONN = 1;
const MSG_CONN_4 = 4;

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** The HV status name a promise rejected with, or 'resolved'. */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    assert.ok(e instanceof HvError, `expected an HvError, got ${String(e)}`);
    return e.code;
  }
}

function thrownCode(fn: () => void): string {
  try {
    fn();
    return 'no error';
  } catch (e) {
    assert.ok(e instanceof HvError, `expected an HvError, got ${String(e)}`);
    return e.code;
  }
}

// ---------------------------------------------------------------------------------------------
// 1. 10,000 messages each way through a 4-slot queue: order kept, nothing dropped, posters wait.

const ORDER_COUNT = 10_000;
const lengthFor = (seq: number): number => 4 + ((seq * 7) % 237);

function fillMessage(seq: number, buf: Uint8Array): Uint8Array {
  const msg = buf.subarray(0, lengthFor(seq));
  new DataView(msg.buffer, msg.byteOffset).setUint32(0, seq, true);
  for (let i = 4; i < msg.length; i++) msg[i] = (seq + i) & 0xff;
  return msg;
}

/** Receives ORDER_COUNT messages, checking sequence and contents; resolves with a verdict. */
function orderedReceiver(onFirst: () => void): {
  handler: (m: { data: Uint8Array; length: number; messageType: number }) => void;
  done: Promise<string>;
} {
  let expect = 0;
  let bad = '';
  let finish!: (verdict: string) => void;
  const done = new Promise<string>((r) => {
    finish = r;
  });
  return {
    handler(m) {
      const seq = new DataView(m.data.buffer, m.data.byteOffset).getUint32(0, true);
      if (!bad) {
        if (seq !== expect) bad = `got #${seq}, expected #${expect}`;
        else if (m.length !== lengthFor(seq)) bad = `#${seq} has length ${m.length}`;
        else if (m.messageType !== 1) bad = `#${seq} has type ${m.messageType}`;
        else {
          for (let i = 4; i < m.length; i++) {
            if (m.data[i] !== ((seq + i) & 0xff)) {
              bad = `#${seq} byte ${i} differs`;
              break;
            }
          }
        }
      }
      expect++;
      if (expect === 1) onFirst();
      if (expect === ORDER_COUNT) finish(bad || `received ${ORDER_COUNT} in order`);
    },
    done,
  };
}

/** Posts ORDER_COUNT messages without waiting between them; checks the posts resolve in order. */
async function postAll(post: (msg: Uint8Array) => Promise<void>): Promise<string> {
  const buf = new Uint8Array(240);
  const resolved: number[] = [];
  const posts: Promise<void>[] = [];
  for (let seq = 0; seq < ORDER_COUNT; seq++) {
    posts.push(post(fillMessage(seq, buf)).then(() => void resolved.push(seq)));
  }
  await Promise.all(posts);
  const inOrder = resolved.every((v, i) => v === i);
  return inOrder ? `${ORDER_COUNT} posts resolved in order` : 'posts resolved out of order';
}

const orderedMessages: Scenario = {
  name: 'ordered delivery of 10,000 messages each way through a 4-slot queue',
  partitions: 1,
  options: { queueSlots: 4 },
  async host({ partitions: [p] }) {
    const guestUp = deferred();
    const rx = orderedReceiver(guestUp.resolve);
    p!.host.onMessage(MSG_CONN, rx.handler);
    // The guest enables SINT 2 before posting, so its first message says it can receive.
    await guestUp.promise;
    const sent = await postAll((m) => p!.host.post(VMBUS_SINT, m));
    return [`host ${await rx.done}`, `host ${sent}`, `host saw ${p!.host.stats.malformed} malformed`];
  },
  async guest({ partition }) {
    const rx = orderedReceiver(() => {});
    partition.link.onMessage(VMBUS_SINT, rx.handler);
    const sent = await postAll((m) => partition.link.post(MSG_CONN, m));
    return [`guest ${await rx.done}`, `guest ${sent}`];
  },
  expected: {
    host: [
      `host received ${ORDER_COUNT} in order`,
      `host ${ORDER_COUNT} posts resolved in order`,
      'host saw 0 malformed',
    ],
    guests: [[`guest received ${ORDER_COUNT} in order`, `guest ${ORDER_COUNT} posts resolved in order`]],
  },
};

// ---------------------------------------------------------------------------------------------
// 2. Refusals: oversized payloads, unknown connection ids (and the 4 -> 1 fallback), bad flags.
// Messages and signals travel separately (as on Hyper-V), so traces list each kind on its own.

const refusals: Scenario = {
  name: 'oversized payloads and unknown connection ids are refused',
  partitions: 1,
  options: {},
  async host({ partitions: [p], sides: [side] }) {
    const messages: string[] = [];
    const events: string[] = [];
    const got240 = deferred();
    p!.host.onMessage(MSG_CONN, (m) => {
      messages.push(`host got ${m.length} bytes on ${m.port}: ${m.data[0]}`);
      if (m.data[0] === 3) got240.resolve();
    });
    p!.host.onEvent(0x2001, (c) => events.push(`host event 0x${c.toString(16)}`));
    await side!.waitFor(READY); // the guest enabled SINT 2
    const own = [
      `post 241 to SINT 2: ${await outcome(p!.host.post(VMBUS_SINT, new Uint8Array(241)))}`,
      `post to SINT 3: ${await outcome(p!.host.post(3, new Uint8Array(8)))}`,
      `post to SINT 16: ${await outcome(p!.host.post(16, new Uint8Array(8)))}`,
      `set flag 2048: ${thrownCode(() => p!.host.setEventFlag(2048))}`,
      `set flag -1: 0x${p!.host.trySetEventFlag(-1).toString(16)}`,
      `post 240 to SINT 2: ${await outcome(p!.host.post(VMBUS_SINT, new Uint8Array(240).fill(9)))}`,
    ];
    await side!.waitFor(DONE);
    await got240.promise;
    return [...own, ...messages, ...events];
  },
  async guest({ partition, side }) {
    const link = partition.link;
    const trace: string[] = [];
    const got = deferred();
    let received = '';
    link.onMessage(VMBUS_SINT, (m) => {
      received = `guest got ${m.length} bytes: ${m.data[239]}`;
      got.resolve();
    });
    side.notify(READY);
    const big = new Uint8Array(241).fill(1);
    trace.push(`post 241: ${await outcome(link.post(MSG_CONN, big))}`);
    trace.push(`tryPost 241: 0x${link.tryPost(MSG_CONN, big).toString(16)}`);
    trace.push(`post type 0: ${await outcome(link.post(MSG_CONN, new Uint8Array(8), 0))}`);
    // Protocol >= 5.0 first tries connection id 4; a host without it refuses, the guest falls back to 1.
    const first = await outcome(link.post(MSG_CONN_4, new Uint8Array([2])));
    trace.push(`post to 4: ${first}`);
    if (first === 'HV_STATUS_INVALID_CONNECTION_ID') await link.post(MSG_CONN, new Uint8Array([2]));
    trace.push(`signal 0x2002: ${thrownCode(() => link.signalEvent(0x2002))}`);
    trace.push(`trySignal 0x2002: 0x${link.trySignalEvent(0x2002).toString(16)}`);
    trace.push(`signal 2^24: ${thrownCode(() => link.signalEvent(0x1000000))}`);
    trace.push(`signal 0x2001: ${thrownCode(() => link.signalEvent(0x2001))}`);
    trace.push(`post 240: ${await outcome(link.post(MSG_CONN, new Uint8Array(240).fill(3)))}`);
    side.notify(DONE);
    await got.promise;
    trace.push(received);
    return trace;
  },
  expected: {
    host: [
      'post 241 to SINT 2: HV_STATUS_INVALID_PARAMETER',
      'post to SINT 3: HV_STATUS_INVALID_SYNIC_STATE',
      'post to SINT 16: HV_STATUS_INVALID_PARAMETER',
      'set flag 2048: HV_STATUS_INVALID_PARAMETER',
      `set flag -1: 0x${HV_STATUS_INVALID_PARAMETER.toString(16)}`,
      'post 240 to SINT 2: resolved',
      'host got 1 bytes on 1: 2',
      'host got 240 bytes on 1: 3',
      'host event 0x2001',
    ],
    guests: [
      [
        'post 241: HV_STATUS_INVALID_PARAMETER',
        `tryPost 241: 0x${HV_STATUS_INVALID_PARAMETER.toString(16)}`,
        'post type 0: HV_STATUS_INVALID_PARAMETER',
        'post to 4: HV_STATUS_INVALID_CONNECTION_ID',
        'signal 0x2002: HV_STATUS_INVALID_CONNECTION_ID',
        `trySignal 0x2002: 0x${HV_STATUS_INVALID_CONNECTION_ID.toString(16)}`,
        'signal 2^24: HV_STATUS_INVALID_CONNECTION_ID',
        'signal 0x2001: no error',
        'post 240: resolved',
        'guest got 240 bytes: 9',
      ],
    ],
  },
};

// ---------------------------------------------------------------------------------------------
// 3. Many signals coalesce, none is lost: the receiver's last look sees the final value.

const SIGNALS = 2000;
const CHUNK = 50;
const COUNTER_GPA = 0x1000;
// Words at COUNTER_GPA: 0 host's value, 1 guest's value, 2 host value the guest last saw,
// 3 guest value the host last saw.

const macrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Stores 1..SIGNALS into `mem[valueWord]`, signalling after each store. Every CHUNK signals it
 * waits until the receiver has handled one of them, so flags are cleared and set again many times
 * (each time needing a fresh wake-up), while the signals inside a chunk coalesce.
 */
async function signalAll(
  mem: Int32Array,
  valueWord: number,
  seenWord: number,
  signal: () => void,
): Promise<void> {
  for (let i = 1; i <= SIGNALS; i++) {
    Atomics.store(mem, valueWord, i);
    signal();
    if (i % CHUNK === 0) while (Atomics.load(mem, seenWord) <= i - CHUNK) await macrotask();
  }
}

const coalescing: Scenario = {
  name: 'many signals coalesce but the receiver always sees the final state',
  partitions: 1,
  options: {},
  async host({ partitions: [p], sides: [side] }) {
    const mem = p!.memory.int32View(COUNTER_GPA, 4);
    let calls = 0;
    const final = deferred();
    p!.host.onEvent(0x2001, () => {
      calls++;
      const v = Atomics.load(mem, 1);
      Atomics.store(mem, 3, v);
      if (v === SIGNALS) final.resolve();
    });
    await side!.waitFor(READY);
    await signalAll(mem, 0, 2, () => p!.host.setEventFlag(7));
    await final.promise;
    await side!.waitFor(SAW_FINAL);
    return [
      `host saw final guest value ${Atomics.load(mem, 3)}`,
      `host calls in ${SIGNALS / CHUNK}..${SIGNALS}: ${calls >= SIGNALS / CHUNK && calls <= SIGNALS}`,
    ];
  },
  async guest({ partition, side }) {
    const mem = partition.memory.int32View(COUNTER_GPA, 4);
    let calls = 0;
    const final = deferred();
    partition.link.onEvent(7, () => {
      calls++;
      const v = Atomics.load(mem, 0);
      Atomics.store(mem, 2, v);
      if (v === SIGNALS) final.resolve();
    });
    side.notify(READY);
    await signalAll(mem, 1, 3, () => partition.link.signalEvent(0x2001));
    await final.promise;
    side.notify(SAW_FINAL);
    return [
      `guest saw final host value ${Atomics.load(mem, 2)}`,
      `guest calls in ${SIGNALS / CHUNK}..${SIGNALS}: ${calls >= SIGNALS / CHUNK && calls <= SIGNALS}`,
    ];
  },
  expected: {
    host: [`host saw final guest value ${SIGNALS}`, `host calls in ${SIGNALS / CHUNK}..${SIGNALS}: true`],
    guests: [
      [`guest saw final host value ${SIGNALS}`, `guest calls in ${SIGNALS / CHUNK}..${SIGNALS}: true`],
    ],
  },
};

// ---------------------------------------------------------------------------------------------
// 4. A flag set while its handler runs is delivered again (clear first, then process).

const signalDuringHandler: Scenario = {
  name: 'a signal arriving during handler processing is delivered again',
  partitions: 1,
  options: {},
  async host({ partitions: [p], sides: [side] }) {
    const trace: string[] = [];
    side!.serve(SET_AGAIN, () => {
      trace.push('host sets flag 9 again while the guest handler runs');
      p!.host.setEventFlag(9);
    });
    await side!.waitFor(READY);
    trace.push('host sets flag 9');
    p!.host.setEventFlag(9);
    await side!.waitFor(DONE);
    return trace;
  },
  async guest({ partition, side }) {
    const trace: string[] = [];
    let calls = 0;
    const second = deferred();
    partition.link.onEvent(9, (flag) => {
      calls++;
      trace.push(`guest handler for flag ${flag}, call ${calls}`);
      // Blocks this handler until the host has set flag 9 again (cross-thread: really concurrent).
      if (calls === 1) side.callHost(SET_AGAIN);
      else {
        side.notify(DONE);
        second.resolve();
      }
    });
    side.notify(READY);
    await second.promise;
    return trace;
  },
  expected: {
    host: ['host sets flag 9', 'host sets flag 9 again while the guest handler runs'],
    guests: [['guest handler for flag 9, call 1', 'guest handler for flag 9, call 2']],
  },
};
// ---------------------------------------------------------------------------------------------
// 5. Several partitions: nobody sees another partition's messages, signals or ports.

const isolation: Scenario = {
  name: 'several partitions do not see each other’s messages or signals',
  partitions: 3,
  options: {},
  async host({ partitions, sides }) {
    const messages = partitions.map(() => [] as string[]);
    const events = partitions.map(() => [] as string[]);
    const hellos = partitions.map(() => deferred());
    const signals = partitions.map(() => deferred());
    const flagSeen = deferred();
    partitions.forEach((p, i) => {
      p.host.onMessage(MSG_CONN, (m) => {
        const text = new TextDecoder().decode(m.payload);
        messages[i]!.push(`p${p.partitionId} got "${text}"`);
        if (text.startsWith('hello')) hellos[i]!.resolve();
        if (text === 'flag 5 seen') flagSeen.resolve();
      });
      p.host.onEvent(0x2000 + p.partitionId, (c) => {
        events[i]!.push(`p${p.partitionId} signalled on 0x${c.toString(16)}`);
        signals[i]!.resolve();
      });
    });
    await Promise.all([...hellos, ...signals].map((d) => d.promise));
    await Promise.all(sides.map((s) => s.waitFor(READY)));
    // Only partition 2 gets a message and a flag.
    const p2 = partitions[1]!;
    await p2.host.post(VMBUS_SINT, new TextEncoder().encode('ping'));
    p2.host.setEventFlag(5);
    await flagSeen.promise;
    for (const p of partitions) await p.host.post(VMBUS_SINT, new TextEncoder().encode('bye'));
    await Promise.all(sides.map((s) => s.waitFor(DONE)));
    return partitions.flatMap((_, i) => [...messages[i]!, ...events[i]!]);
  },
  async guest({ partition, side }) {
    const link = partition.link;
    const id = partition.partitionId;
    const messages: string[] = [];
    const events: string[] = [];
    const bye = deferred();
    link.onMessage(VMBUS_SINT, (m) => {
      const text = new TextDecoder().decode(m.payload);
      messages.push(`p${id} got "${text}"`);
      if (text === 'bye') bye.resolve();
    });
    link.onEvent(5, (flag) => {
      events.push(`p${id} flag ${flag}`);
      void link.post(MSG_CONN, new TextEncoder().encode('flag 5 seen'));
    });
    await link.post(MSG_CONN, new TextEncoder().encode(`hello from ${partition.name}`));
    link.signalEvent(0x2000 + id);
    // Another partition's channel port is not in this partition's port table.
    const other = id === 1 ? 2 : 1;
    const refused = `p${id} signal 0x${(0x2000 + other).toString(16)}: ${thrownCode(() => link.signalEvent(0x2000 + other))}`;
    side.notify(READY);
    await bye.promise;
    side.notify(DONE);
    return [refused, ...messages, ...events];
  },
  expected: {
    host: [
      'p1 got "hello from partition-1"',
      'p1 signalled on 0x2001',
      'p2 got "hello from partition-2"',
      'p2 got "flag 5 seen"',
      'p2 signalled on 0x2002',
      'p3 got "hello from partition-3"',
      'p3 signalled on 0x2003',
    ],
    guests: [
      ['p1 signal 0x2002: HV_STATUS_INVALID_CONNECTION_ID', 'p1 got "bye"'],
      ['p2 signal 0x2001: HV_STATUS_INVALID_CONNECTION_ID', 'p2 got "ping"', 'p2 got "bye"', 'p2 flag 5'],
      ['p3 signal 0x2001: HV_STATUS_INVALID_CONNECTION_ID', 'p3 got "bye"'],
    ],
  },
};

// ---------------------------------------------------------------------------------------------
// 6. close() releases waiters on both ends: waiting posts reject, later calls fail, no hang.

const closeReleases: Scenario = {
  name: 'close() rejects waiting posts on both ends with a typed error',
  partitions: 1,
  options: { queueSlots: 2 },
  async host({ partitions: [p], sides: [side] }) {
    const host = p!.host;
    let received = 0;
    host.onMessage(MSG_CONN, () => received++);
    host.setPolling(true); // the host takes nothing: the guest's third post must wait
    await side!.waitFor(BLOCKED);
    const posts = [1, 2, 3].map(() => host.post(VMBUS_SINT, new Uint8Array(16)));
    const first = await Promise.all(posts.slice(0, 2).map(outcome));
    const pendingBefore = host.pendingPosts;
    host.close();
    const trace = [
      `host posts 1-2: ${first.join(', ')}`,
      `host waiting posts before close: ${pendingBefore}`,
      `host post 3: ${await outcome(posts[2]!)}`,
      `host post after close: ${await outcome(host.post(VMBUS_SINT, new Uint8Array(1)))}`,
      `host setEventFlag after close: ${thrownCode(() => host.setEventFlag(1))}`,
      `host received: ${received}`,
      `host closed: ${host.closed}`,
    ];
    await side!.waitFor(DONE);
    return trace;
  },
  async guest({ partition, side }) {
    const link = partition.link;
    let received = 0;
    link.onMessage(VMBUS_SINT, () => received++);
    link.setPolling(true); // and the guest takes nothing either
    const posts = [1, 2, 3].map(() => link.post(MSG_CONN, new Uint8Array(16)));
    const first = await Promise.all(posts.slice(0, 2).map(outcome));
    const trace = [
      `guest posts 1-2: ${first.join(', ')}`,
      `guest waiting posts: ${link.pendingPosts}`,
      `guest tryPost while full: ${link.tryPost(MSG_CONN, new Uint8Array(1)) === HV_STATUS_INSUFFICIENT_BUFFERS ? 'HV_STATUS_INSUFFICIENT_BUFFERS' : 'other'}`,
    ];
    const closed = deferred();
    link.onClose(closed.resolve);
    side.notify(BLOCKED);
    trace.push(`guest post 3: ${await outcome(posts[2]!)}`);
    await closed.promise;
    trace.push(
      `guest post after close: ${await outcome(link.post(MSG_CONN, new Uint8Array(1)))}`,
      `guest signal after close: ${thrownCode(() => link.signalEvent(0x2001))}`,
      `guest received: ${received}`,
    );
    side.notify(DONE);
    return trace;
  },
  expected: {
    host: [
      'host posts 1-2: resolved, resolved',
      'host waiting posts before close: 1',
      'host post 3: HV_STATUS_INVALID_PARTITION_STATE',
      'host post after close: HV_STATUS_INVALID_PARTITION_STATE',
      'host setEventFlag after close: HV_STATUS_INVALID_PARTITION_STATE',
      'host received: 0',
      'host closed: true',
    ],
    guests: [
      [
        'guest posts 1-2: resolved, resolved',
        'guest waiting posts: 1',
        'guest tryPost while full: HV_STATUS_INSUFFICIENT_BUFFERS',
        'guest post 3: HV_STATUS_INVALID_PARTITION_STATE',
        'guest post after close: HV_STATUS_INVALID_PARTITION_STATE',
        'guest signal after close: HV_STATUS_INVALID_PARTITION_STATE',
        'guest received: 0',
      ],
    ],
  },
};

export const SCENARIOS: readonly Scenario[] = [
  orderedMessages,
  refusals,
  coalescing,
  signalDuringHandler,
  isolation,
  closeReleases,
];

export function scenarioByName(name: string): Scenario {
  const s = SCENARIOS.find((x) => x.name === name);
  if (!s) throw new Error(`no scenario ${name}`);
  return s;
}
