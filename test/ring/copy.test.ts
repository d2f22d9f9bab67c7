// Copies between a ring and the caller's bytes: every path (word loops both ways, words assembled
// from or split into bytes, one `set`, subarray + `set`) gives the same bytes for any alignment,
// offset, length and buffer, in contiguous and scattered rings; WordView takes on only arrays used
// repeatedly; and the hot path (write, next, copy, commit) allocates nothing per packet in steady
// state, even when the caller rotates through many arrays.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import v8 from 'node:v8';
import fc from 'fast-check';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { RING_WRITE_OK, type RingMemory, RingReader, RingWriter } from '../../src/ring/index.js';
import { RingMemory as Ring, WordView } from '../../src/ring/memory.js';

const PAGES = 3;
/** Guest pages: ring control page 1, data pages 2-4 (contiguous) or 12, 7, 9 (scattered). */
function makeRing(mem: GuestMemory, scattered: boolean, start: number): RingMemory {
  const ring = Ring.fromGuestMemory(mem, scattered ? [1, 12, 7, 9] : [1, 2, 3, 4]);
  ring.initialize({ startIndex: start });
  return ring;
}

/** Where a caller's array lives: its own buffer, or guest RAM outside the ring (the ring's buffer). */
interface Place {
  inGuest: boolean;
  /** Byte offset of the array in its buffer (any alignment). */
  at: number;
  /** Extra bytes the array has before and after the part used. */
  before: number;
  after: number;
}

const place = fc.record({
  inGuest: fc.boolean(),
  at: fc.integer({ min: 0, max: 7 }),
  before: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 9 })),
  after: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 9 })),
});

/** Lengths around the copy thresholds (16, 32, 128) and up to several pages. */
const length = fc.oneof(
  fc.integer({ min: 0, max: 40 }),
  fc.integer({ min: 120, max: 136 }),
  fc.integer({ min: 0, max: 600 }),
  fc.integer({ min: 4000, max: 9000 }),
);

/** Guest RAM [64 KiB, 128 KiB) holds sources, [128 KiB, 192 KiB) destinations. */
function array(mem: GuestMemory, p: Place, len: number, guestBase: number): Uint8Array {
  const n = p.before + len + p.after;
  if (p.inGuest) return mem.view(guestBase + p.at, n);
  return new Uint8Array(new ArrayBuffer(n + 8), p.at, n);
}

describe('copies between the ring and caller arrays', () => {
  test('every alignment, offset, length and buffer gives the same bytes (fast-check)', () => {
    let inGuestCopies = 0;
    let largeCopies = 0;
    let repeatedCopies = 0;
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.integer({ min: 0, max: (PAGES * 4096) / 8 - 1 }),
        fc.array(
          fc.tuple(length, place, place, fc.integer({ min: 0, max: 255 }), fc.integer({ min: 1, max: 4 })),
          { minLength: 1, maxLength: 6 },
        ),
        (scattered, startSlot, packets) => {
          const mem = new GuestMemory(64 * 4096);
          const ring = makeRing(mem, scattered, startSlot * 8);
          const w = new RingWriter(ring);
          const r = new RingReader(ring);
          for (const [len, sp, dp, seed, times] of packets) {
            // The same arrays `times` times in a row: from the second time, WordView has views of them.
            const src = array(mem, sp, len, 16 * 4096);
            const dst = array(mem, dp, len, 32 * 4096);
            const padded = new Uint8Array(((len + 7) & ~7) + 3);
            const head = new Uint8Array(16);
            for (let t = 0; t < times; t++) {
              for (let i = 0; i < src.length; i++) src[i] = (seed + t + i * 13) & 0xff;
              const payload = src.slice(sp.before, sp.before + len);
              const res =
                sp.before === 0 && sp.after === 0
                  ? w.writePacket(6, 0, seed, t, src)
                  : w.writePacket(6, 0, seed, t, src, sp.before, len);
              if (res !== RING_WRITE_OK) {
                assert.ok(len + 16 > w.maximumPacketSize);
                break;
              }
              w.commit();
              assert.equal(r.next(), true);
              const p = r.packet;
              assert.equal(p.transIdLo, seed);
              assert.equal(p.transIdHi, t);
              assert.equal(p.payloadLength, (len + 7) & ~7);
              dst.fill(0xee);
              assert.equal(p.copyPayload(dst, dp.before, len), len);
              assert.deepEqual(dst.subarray(dp.before, dp.before + len), payload);
              for (let i = 0; i < dp.before; i++) assert.equal(dst[i], 0xee);
              for (let i = dp.before + len; i < dst.length; i++) assert.equal(dst[i], 0xee);
              // The padding is zero; copyRange reads any part of the packet, the descriptor included.
              padded.fill(0xee);
              p.copyRange(16, p.payloadLength, padded, 3);
              assert.deepEqual(padded.subarray(3, 3 + len), payload);
              for (let i = 3 + len; i < padded.length; i++) assert.equal(padded[i], 0);
              p.copyHeader(head);
              assert.equal(new DataView(head.buffer).getUint32(8, true), seed);
              r.commit();
              if (sp.inGuest || dp.inGuest) inGuestCopies++;
              if (len > 128) largeCopies++;
              if (t > 0) repeatedCopies++;
            }
          }
        },
      ),
      { numRuns: 300 },
    );
    assert.ok(
      inGuestCopies > 100 && largeCopies > 100 && repeatedCopies > 100,
      `${inGuestCopies} in guest RAM, ${largeCopies} large, ${repeatedCopies} repeated`,
    );
  });
});

/** Bytes in V8's young generation (new objects land there first). */
function youngBytes(): number {
  let n = 0;
  for (const s of v8.getHeapSpaceStatistics()) {
    if (s.space_name === 'new_space' || s.space_name === 'new_large_object_space') n += s.space_used_size;
  }
  return n;
}

/**
 * How many bytes the young generation grows by while `work` runs: the median over `rounds` runs
 * (after `warmup` runs), less what measuring costs. A run during which a scavenge emptied the young
 * generation shows a drop and is left out.
 */
function youngGrowth(work: () => void, rounds = 21, warmup = 10): number {
  for (let i = 0; i < warmup; i++) work();
  const costs: number[] = [];
  for (let i = 0; i < 9; i++) {
    const a = youngBytes();
    const b = youngBytes();
    if (b >= a) costs.push(b - a);
  }
  const cost = median(costs);
  const growth: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const a = youngBytes();
    work();
    const b = youngBytes();
    if (b >= a) growth.push(Math.max(0, b - a - cost));
  }
  assert.ok(growth.length > rounds / 2, 'too many scavenges to measure');
  return median(growth);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/** A writer and reader on one ring, streaming packets from rotating sources into rotating destinations. */
function streamer(
  ring: RingMemory,
  size: number,
  sources: Uint8Array[],
  offsets: number[],
  dsts: Uint8Array[],
) {
  const w = new RingWriter(ring);
  const r = new RingReader(ring);
  const p = r.packet;
  const head = new Uint8Array(16);
  const k = sources.length;
  let id = 0;
  let got = 0;
  let sum = 0;
  return {
    /** Packets read so far. */
    get count(): number {
      return got;
    },
    /** Streams `n` packets (batches of up to 16 per commit); returns a checksum of what was read. */
    run(n: number): number {
      const end = got + n;
      while (got < end) {
        for (let b = 0; b < 16 && id < end; b++, id++) {
          const i = id % k;
          if (w.writePacket(6, 0, id, 0, sources[i]!, offsets[i]!, size) !== RING_WRITE_OK) break;
        }
        w.commit();
        while (r.next()) {
          const d = dsts[got % dsts.length]!;
          p.copyPayload(d, 0, size);
          p.copyHeader(head);
          if (p.transIdLo !== got) throw new Error(`packet ${p.transIdLo}, expected ${got}`);
          sum = (sum + d[size - 1]! + head[8]!) | 0;
          got++;
        }
        r.commit();
      }
      return sum;
    },
  };
}

/** ArrayBuffer's resizable form (ES2024; Node 20 has it, the ES2023 typings do not). */
const ResizableBuffer = ArrayBuffer as unknown as new (
  length: number,
  options: { maxByteLength: number },
) => ArrayBuffer & { resize(length: number): void };

describe('WordView', () => {
  test('takes on an array only after a streak that doubles; no pattern makes it allocate often', () => {
    const arrays = Array.from({ length: 16 }, () => new Uint8Array(64));
    for (const run of [1, 2, 3, 5, 8, 100, 5000]) {
      const v = new WordView();
      let views = 0;
      let last: Int32Array | null = null;
      let hits = 0;
      const uses = 200_000;
      for (let i = 0; i < uses; i++) {
        const got = v.of(arrays[Math.floor(i / run) % 16]!);
        if (got !== null) hits++;
        if (got !== null && got !== last) views++;
        if (got !== null) last = got;
      }
      // Streaks needed: 2, 4, 8, ..., 1024, then 1024 each time.
      const bound = run < 2 ? 0 : 10 + Math.floor(uses / 1024);
      assert.ok(views <= bound, `runs of ${run}: ${views} views made, at most ${bound}`);
      if (run === 1) assert.equal(hits, 0);
      if (run === 5000) assert.ok(hits > uses * 0.75, `runs of ${run}: ${hits} hits`); // (5000 - 1024) / 5000
    }
    const odd = new Uint8Array(new ArrayBuffer(16), 1, 8);
    const v = new WordView();
    assert.equal(v.of(odd), null);
    assert.equal(v.of(odd), null); // taken on, but not 4-byte aligned: no view
  });

  test('makes no view over a buffer that can change size (the view could end up too short)', () => {
    const b = new ResizableBuffer(64, { maxByteLength: 4096 });
    const tracking = new Uint8Array(b);
    const v = new WordView();
    for (let i = 0; i < 8; i++) assert.equal(v.of(tracking), null);
    // Through a ring: the array grows between copies, every byte still arrives.
    const mem = new GuestMemory(16 * 4096);
    const w = new RingWriter(makeRing(mem, false, 0));
    const r = new RingReader(w.ring);
    for (let n = 64; n <= 128; n += 16) {
      b.resize(n);
      tracking.forEach((_, i) => {
        tracking[i] = n + i;
      });
      assert.equal(w.writePacket(6, 0, n, 0, tracking), RING_WRITE_OK);
      w.commit();
      assert.equal(r.next(), true);
      const out = new Uint8Array(new ResizableBuffer(n, { maxByteLength: 4096 }));
      r.packet.copyPayload(out, 0, n);
      assert.deepEqual(out, tracking);
      r.commit();
    }
  });
});

describe('no allocation per packet in steady state', () => {
  test('the measurement sees allocations (so the tests below can fail)', () => {
    const buf = new ArrayBuffer(64);
    let keep = 0;
    const grown = youngGrowth(() => {
      for (let i = 0; i < 1000; i++) keep += new Int32Array(buf, 0, 8).length;
    });
    assert.ok(grown >= 1000 * 32, `${grown} bytes for 1000 Int32Arrays`);
    assert.ok(keep > 0);
  });

  const separate = (n: number, size: number, at = 0) =>
    Array.from({ length: n }, (_, i) => {
      const a = new Uint8Array(new ArrayBuffer(size + at), at, size);
      a.fill(i + 1);
      return a;
    });

  for (const scattered of [false, true]) {
    const kind = scattered ? 'scattered' : 'contiguous';
    test(`${kind} ring: 64 B and 61 B packets from 16 rotating arrays, any alignment`, () => {
      const mem = new GuestMemory(64 * 4096);
      // 64 B whole arrays, each in its own buffer; 61 B slices at odd offsets of one block.
      const whole = streamer(
        makeRing(mem, scattered, 0),
        64,
        separate(16, 64),
        new Array(16).fill(0),
        separate(16, 64),
      );
      const block = new Uint8Array(16 * 61 + 3).map((_, i) => i);
      const odd = streamer(
        makeRing(mem, scattered, 8),
        61,
        new Array(16).fill(block),
        Array.from({ length: 16 }, (_, i) => 3 + i * 61),
        separate(16, 61, 1),
      );
      // 16 arrays used 3 times each in turn, read into 2 alternating arrays.
      const arrays = separate(16, 64);
      const runs = streamer(
        makeRing(mem, scattered, 16),
        64,
        Array.from({ length: 48 }, (_, i) => arrays[Math.floor(i / 3)]!),
        new Array(48).fill(0),
        separate(2, 64),
      );
      assert.equal(
        youngGrowth(() => whole.run(2000)),
        0,
        '64 B: bytes allocated per 2000 packets',
      );
      assert.equal(
        youngGrowth(() => runs.run(2000)),
        0,
        'runs of 3: bytes allocated per 2000 packets',
      );
      assert.equal(
        youngGrowth(() => odd.run(2000)),
        0,
        '61 B: bytes allocated per 2000 packets',
      );
    });
  }
});
