// Worker thread of the ring benchmarks. The bench starts two of these on one GuestMemory
// SharedArrayBuffer and keeps them for the whole suite (warm JIT); each command makes one of them
// the writer and the other the reader of one timed stream: through a ring (RingWriter / RingReader
// on pages of guest memory) or, for the anchor, through a MessagePort. Only bytes and numbers cross
// into the worker: the guest memory buffer, a small sync buffer, PFN lists.
//
// Waiting: poll for up to SPIN_MICROSECONDS, then Atomics.wait on a "bell" word of the sync buffer
// (one per direction; Atomics.notify only when the other side sleeps). A bell is rung only when the
// ring says so: the writer's commit() (empty -> non-empty
// while the reader is not masked) and the reader's commit() (pending_send_sz crossed). While the
// reader is busy it keeps interrupt_mask set (beginRead); before sleeping it clears it and
// re-checks (endRead), the Linux/OVMM protocol, so no wake-up is lost.

import { type MessagePort, parentPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { RING_WRITE_OK, RingMemory, RingReader, RingWriter } from '../src/ring/index.js';
import { VM_PKT_DATA_INBAND } from '../src/wire/packets.js';

/** Words of the sync buffer. */
export const SYNC_GO = 0;
export const SYNC_READER_BELL = 1;
export const SYNC_WRITER_BELL = 2;
/** Set while the reader / writer sleeps on its bell (a bell-ringer skips Atomics.notify otherwise). */
export const SYNC_READER_SLEEPING = 3;
export const SYNC_WRITER_SLEEPING = 4;
export const SYNC_WORDS = 16;

/** How long a side polls an empty (or full) ring before going to sleep on its bell. */
export const SPIN_MICROSECONDS = 50;
/** Polls between two looks at the clock while spinning. */
const POLLS_PER_CLOCK = 256;
/** A sleep longer than this is counted as a lost wake-up (and the loop polls again). */
const WAIT_TIMEOUT_MS = 2000;
/** Distinct precomputed payloads; packet i carries payload i % PATTERNS with i in its first 4 bytes. */
const PATTERNS = 16;
/** Every FULL_CHECK_EVERY-th packet is compared byte for byte. */
export const FULL_CHECK_EVERY = 1024;

export interface BenchWorkerData {
  readonly memory: SharedArrayBuffer;
  readonly sync: SharedArrayBuffer;
}

export interface RingStreamCommand {
  readonly cmd: 'ring-write' | 'ring-read';
  readonly id: number;
  /** The ring's pages in guest memory: control page, then data pages. */
  readonly pfns: readonly number[];
  readonly packets: number;
  /** Payload bytes per packet: a multiple of 4, at least 8. */
  readonly size: number;
  /** Packets per commit (1 = publish every packet). */
  readonly batch: number;
  /** Start when SYNC_GO reaches this value. */
  readonly go: number;
}

export interface PortStreamCommand {
  readonly cmd: 'port-write' | 'port-read';
  readonly id: number;
  readonly port: MessagePort;
  readonly packets: number;
  readonly size: number;
  /** Writer: most unacknowledged messages in flight. */
  readonly window: number;
  /** Reader: acknowledge every this many messages. */
  readonly ackEvery: number;
  readonly go: number;
}

export type BenchCommand = RingStreamCommand | PortStreamCommand;

/** What a worker reports for its half of a stream. */
export interface StreamResult {
  /** Writer: when it started (after the go barrier); reader: when it began waiting. Clock: clockMs. */
  readonly startMs: number;
  /** Writer: last commit / post; reader: last packet verified. */
  readonly endMs: number;
  readonly packets: number;
  /** Bells rung by this side (as the ring decided). */
  readonly signals: number;
  /** Times this side slept on its bell. */
  readonly sleeps: number;
  /** Sleeps that ended by timeout rather than by a bell (lost wake-ups). */
  readonly timeouts: number;
  /** Reader: packets whose bytes, id or type were wrong. */
  readonly mismatches: number;
  /** Reader: packets compared byte for byte. */
  readonly fullChecks: number;
  /** Reader: a sum over sampled payload words (keeps the checks observable). */
  readonly checksum: number;
}

export type WorkerReply =
  | { readonly id: number; readonly type: 'ready' }
  | { readonly id: number; readonly type: 'done'; readonly result: StreamResult }
  | { readonly id: number; readonly type: 'error'; readonly message: string };

function clockMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Byte j of payload pattern k (bytes 0-3 of a packet are overwritten with its index). */
function patternByte(k: number, j: number): number {
  return (k * 7 + j) & 0xff;
}

/** The PATTERNS payloads, each in its own ArrayBuffer (MessagePort clones whole buffers). */
function makePayloads(size: number): { bytes: Uint8Array[]; words: Int32Array[] } {
  const bytes: Uint8Array[] = [];
  const words: Int32Array[] = [];
  for (let k = 0; k < PATTERNS; k++) {
    const b = new Uint8Array(size);
    for (let j = 0; j < size; j++) b[j] = patternByte(k, j);
    bytes.push(b);
    words.push(new Int32Array(b.buffer));
  }
  return { bytes, words };
}

/**
 * The PATTERNS payloads back to back in one buffer (pattern k at k * size): the ring writer then
 * always sees the same source array, whose word view it caches.
 */
function makePayloadBlock(size: number): { bytes: Uint8Array; words: Int32Array } {
  const bytes = new Uint8Array(size * PATTERNS);
  for (let k = 0; k < PATTERNS; k++) for (let j = 0; j < size; j++) bytes[k * size + j] = patternByte(k, j);
  return { bytes, words: new Int32Array(bytes.buffer) };
}

function checkSize(size: number): void {
  if (!Number.isInteger(size) || size < 8 || size % 4 !== 0) {
    throw new RangeError(`payload size ${size} must be a multiple of 4, at least 8`);
  }
}

function waitGo(sync: Int32Array, go: number): void {
  for (;;) {
    const v = Atomics.load(sync, SYNC_GO);
    if (v >= go) return;
    Atomics.wait(sync, SYNC_GO, v);
  }
}

/**
 * Spin bookkeeping: true while the side should keep polling. `idle` counts fruitless polls since
 * the last progress (the caller resets it to 0 on progress).
 */
class Spinner {
  idle = 0;
  private since = 0;

  keepPolling(): boolean {
    if (this.idle++ === 0) {
      this.since = performance.now();
      return true;
    }
    if ((this.idle & (POLLS_PER_CLOCK - 1)) !== 0) return true;
    if (performance.now() - this.since < SPIN_MICROSECONDS / 1000) return true;
    this.idle = 0;
    return false;
  }
}

/**
 * Rings a bell: bumps it (a sleeper that read the old value returns at once) and wakes the
 * sleeper, if one sleeps (Atomics.notify is skipped otherwise).
 */
function ring(sync: Int32Array, bell: number, sleeping: number): void {
  Atomics.add(sync, bell, 1);
  if (Atomics.load(sync, sleeping) !== 0) Atomics.notify(sync, bell);
}

/** Sleeps on `bell` unless it moved past `seq`; true if the sleep timed out. */
function sleep(sync: Int32Array, bell: number, sleeping: number, seq: number): boolean {
  Atomics.store(sync, sleeping, 1);
  const r = Atomics.wait(sync, bell, seq, WAIT_TIMEOUT_MS);
  Atomics.store(sync, sleeping, 0);
  return r === 'timed-out';
}

function ringWrite(
  mem: GuestMemory,
  sync: Int32Array,
  c: RingStreamCommand,
  ready: () => void,
): StreamResult {
  checkSize(c.size);
  const writer = new RingWriter(RingMemory.fromGuestMemory(mem, c.pfns));
  const { bytes, words } = makePayloadBlock(c.size);
  const sizeWords = c.size >>> 2;
  const n = c.packets;
  const size = c.size;
  const batch = c.batch;
  const need = ((16 + size + 7) & ~7) + 8;
  let signals = 0;
  let sleeps = 0;
  let timeouts = 0;
  ready();
  waitGo(sync, c.go);
  const startMs = clockMs();
  let i = 0;
  const spin = new Spinner();
  while (i < n) {
    let put = 0;
    while (put < batch && i < n) {
      const k = i & (PATTERNS - 1);
      words[k * sizeWords] = i;
      if (writer.writePacket(VM_PKT_DATA_INBAND, 0, i, 0, bytes, k * size, size) !== RING_WRITE_OK) break;
      i++;
      put++;
    }
    if (put > 0) {
      if (writer.commit()) {
        signals++;
        ring(sync, SYNC_READER_BELL, SYNC_READER_SLEEPING);
      }
      spin.idle = 0;
      continue;
    }
    // Full, nothing uncommitted: the failed write stored pending_send_sz. Poll, then sleep.
    if (spin.keepPolling()) continue;
    const seq = Atomics.load(sync, SYNC_WRITER_BELL);
    if (writer.bytesWritable() > need) continue;
    sleeps++;
    if (sleep(sync, SYNC_WRITER_BELL, SYNC_WRITER_SLEEPING, seq)) timeouts++;
  }
  const endMs = clockMs();
  return { startMs, endMs, packets: n, signals, sleeps, timeouts, mismatches: 0, fullChecks: 0, checksum: 0 };
}

function ringRead(mem: GuestMemory, sync: Int32Array, c: RingStreamCommand, ready: () => void): StreamResult {
  checkSize(c.size);
  const reader = new RingReader(RingMemory.fromGuestMemory(mem, c.pfns));
  const pkt = reader.packet;
  const size = c.size;
  const padded = (size + 7) & ~7;
  const n = c.packets;
  const batch = c.batch;
  const expected = makePayloads(size);
  const lastWord = (size >>> 2) - 1;
  const expectedLast = expected.words.map((w) => w[lastWord]!);
  const copy = new Uint8Array(size);
  const copy32 = new Int32Array(copy.buffer);
  let signals = 0;
  let sleeps = 0;
  let timeouts = 0;
  let mismatches = 0;
  let fullChecks = 0;
  let checksum = 0;
  reader.beginRead();
  ready();
  waitGo(sync, c.go);
  const startMs = clockMs();
  let i = 0;
  const spin = new Spinner();
  while (i < n) {
    let got = 0;
    while (got < batch && reader.next()) {
      // Consume like DPDK's rte_vmbus_chan_recv_raw: copy the payload out of the ring, then check
      // the id, the type, the length, the stamped index and the last word; every
      // FULL_CHECK_EVERY-th packet all bytes.
      if (
        pkt.type !== VM_PKT_DATA_INBAND ||
        pkt.transIdLo !== i ||
        pkt.transIdHi !== 0 ||
        pkt.payloadLength !== padded
      ) {
        mismatches++;
      } else {
        pkt.copyPayload(copy, 0, size);
        const k = i & (PATTERNS - 1);
        if (copy32[0] !== i || copy32[lastWord] !== expectedLast[k]) mismatches++;
        else if (i % FULL_CHECK_EVERY === 0) {
          fullChecks++;
          const e = expected.bytes[k]!;
          for (let j = 4; j < size; j++) {
            if (copy[j] !== e[j]) {
              mismatches++;
              break;
            }
          }
        }
        checksum = (checksum + copy32[1]!) | 0;
      }
      i++;
      got++;
    }
    if (got > 0) {
      if (reader.commit()) {
        signals++;
        ring(sync, SYNC_WRITER_BELL, SYNC_WRITER_SLEEPING);
      }
      spin.idle = 0;
      continue;
    }
    if (spin.keepPolling()) continue;
    const seq = Atomics.load(sync, SYNC_READER_BELL);
    if (reader.endRead()) {
      reader.beginRead();
      continue;
    }
    sleeps++;
    if (sleep(sync, SYNC_READER_BELL, SYNC_READER_SLEEPING, seq)) timeouts++;
    reader.beginRead();
  }
  const endMs = clockMs();
  return { startMs, endMs, packets: n, signals, sleeps, timeouts, mismatches, fullChecks, checksum };
}

function portWrite(sync: Int32Array, c: PortStreamCommand, ready: () => void): Promise<StreamResult> {
  checkSize(c.size);
  const { bytes, words } = makePayloads(c.size);
  const port = c.port;
  const n = c.packets;
  const window = c.window;
  let acked = 0;
  let wake: (() => void) | null = null;
  port.on('message', (count: number) => {
    acked = count;
    const w = wake;
    wake = null;
    w?.();
  });
  ready();
  waitGo(sync, c.go);
  return (async () => {
    const startMs = clockMs();
    let sleeps = 0;
    let i = 0;
    while (i < n) {
      while (i < n && i - acked < window) {
        const k = i & (PATTERNS - 1);
        words[k]![0] = i;
        port.postMessage(bytes[k]);
        i++;
      }
      if (i < n) {
        sleeps++;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    }
    const endMs = clockMs();
    // Let the last messages arrive before the port is closed.
    while (acked < n) {
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
    }
    port.close();
    return {
      startMs,
      endMs,
      packets: n,
      signals: 0,
      sleeps,
      timeouts: 0,
      mismatches: 0,
      fullChecks: 0,
      checksum: 0,
    };
  })();
}

function portRead(c: PortStreamCommand, ready: () => void): Promise<StreamResult> {
  checkSize(c.size);
  const expected = makePayloads(c.size);
  const size = c.size;
  const lastWord = (size >>> 2) - 1;
  const expectedLast = expected.words.map((w) => w[lastWord]! >>> 0);
  const port = c.port;
  const n = c.packets;
  const ackEvery = c.ackEvery;
  const startMs = clockMs();
  let i = 0;
  let mismatches = 0;
  let fullChecks = 0;
  let checksum = 0;
  return new Promise<StreamResult>((resolve) => {
    port.on('message', (m: Uint8Array) => {
      const k = i & (PATTERNS - 1);
      const o = (size - 4) | 0;
      if (
        !(m instanceof Uint8Array) ||
        m.length !== size ||
        (m[0]! | (m[1]! << 8) | (m[2]! << 16) | (m[3]! << 24)) !== i ||
        (m[o]! | (m[o + 1]! << 8) | (m[o + 2]! << 16) | (m[o + 3]! << 24)) >>> 0 !== expectedLast[k]
      ) {
        mismatches++;
      } else if (i % FULL_CHECK_EVERY === 0) {
        fullChecks++;
        const e = expected.bytes[k]!;
        for (let j = 4; j < size; j++) {
          if (m[j] !== e[j]) {
            mismatches++;
            break;
          }
        }
      }
      if (m instanceof Uint8Array) checksum = (checksum + m[4]!) | 0;
      i++;
      if (i % ackEvery === 0 || i === n) port.postMessage(i);
      if (i === n) {
        const endMs = clockMs();
        port.close();
        resolve({
          startMs,
          endMs,
          packets: n,
          signals: 0,
          sleeps: 0,
          timeouts: 0,
          mismatches,
          fullChecks,
          checksum,
        });
      }
    });
    ready();
  });
}

async function serve(data: BenchWorkerData): Promise<void> {
  const port = parentPort!;
  const mem = new GuestMemory(data.memory);
  const sync = new Int32Array(data.sync);
  port.on('message', async (c: BenchCommand) => {
    const ready = () => port.postMessage({ id: c.id, type: 'ready' } satisfies WorkerReply);
    try {
      let result: StreamResult;
      switch (c.cmd) {
        case 'ring-write':
          result = ringWrite(mem, sync, c, ready);
          break;
        case 'ring-read':
          result = ringRead(mem, sync, c, ready);
          break;
        case 'port-write':
          result = await portWrite(sync, c, ready);
          break;
        case 'port-read':
          result = await portRead(c, ready);
          break;
        default:
          throw new Error(`unknown bench command ${(c as { cmd: string }).cmd}`);
      }
      port.postMessage({ id: c.id, type: 'done', result } satisfies WorkerReply);
    } catch (e) {
      port.postMessage({
        id: c.id,
        type: 'error',
        message: e instanceof Error ? (e.stack ?? e.message) : String(e),
      } satisfies WorkerReply);
    }
  });
}

if (parentPort !== null && workerData !== null && typeof workerData === 'object' && 'sync' in workerData) {
  void serve(workerData as BenchWorkerData);
}
