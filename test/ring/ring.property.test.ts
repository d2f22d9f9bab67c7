// Property tests of the ring: random packet sequences (types, sizes, flags, ids, GPA-direct and
// transfer-page ranges, raw packets), random ring sizes and start indices (forcing packets and
// trailers to wrap), random batching of writes and reads, random interrupt_mask / pending_send_sz /
// feature_bits. Every step is checked against an independent model: the ring's bytes equal the
// model's image, indices match, every packet reads back as written, and both signal decisions follow
// spec 1.6 / 1.7. Each sequence runs on a contiguous and on a scattered-page ring at once, which must
// end up byte-identical.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import {
  CONTROL_FEATURE_BITS,
  CONTROL_INTERRUPT_MASK,
  CONTROL_PENDING_SEND_SZ,
  RING_WRITE_FULL,
  RING_WRITE_OK,
  RING_WRITE_TOO_LARGE,
  RingMemory,
  RingReader,
  RingWriter,
  type WakeupRule,
} from '../../src/ring/index.js';
import {
  encodePacketToBytes,
  type GpaRange,
  type PacketSpec,
  type TransferPageRange,
} from '../../src/wire/packets.js';

type WriteOp =
  | {
      op: 'packet';
      type: number;
      flags: number;
      lo: number;
      hi: number;
      payload: Uint8Array;
      sliceAt: number;
    }
  | { op: 'gpa'; flags: number; lo: number; hi: number; ranges: GpaRange[]; payload: Uint8Array }
  | {
      op: 'xfer';
      flags: number;
      lo: number;
      hi: number;
      set: number;
      owns: number;
      ranges: TransferPageRange[];
      payload: Uint8Array;
    }
  | { op: 'raw'; bytes: Uint8Array };
type Op =
  | WriteOp
  | { op: 'commitWrite' }
  | { op: 'read'; n: number }
  | { op: 'putBack' }
  | { op: 'commitRead' }
  | { op: 'mask'; v: number }
  | { op: 'pending'; v: number }
  | { op: 'features'; v: number };

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const payloadArb = fc.oneof(
  { weight: 10, arbitrary: fc.uint8Array({ maxLength: 64 }) },
  { weight: 1, arbitrary: fc.integer({ min: 3000, max: 9000 }).map((n) => new Uint8Array(n).fill(n & 0xff)) },
  { weight: 10, arbitrary: fc.uint8Array({ maxLength: 2000 }) },
  {
    weight: 10,
    arbitrary: fc
      .integer({ min: 0, max: 2000 })
      .map((n) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + n) & 0xff)),
  },
);
const gpaRange = fc
  .record({ byteOffset: fc.integer({ min: 0, max: 4095 }), byteCount: fc.integer({ min: 1, max: 12000 }) })
  .chain(({ byteOffset, byteCount }) => {
    const n = Math.ceil((byteOffset + byteCount) / 4096);
    return fc
      .array(fc.integer({ min: 0, max: 2 ** 52 - 1 }), { minLength: n, maxLength: n })
      .map((pfns) => ({ byteOffset, byteCount, pfns }));
  });
const rawSpec: fc.Arbitrary<PacketSpec> = fc.oneof(
  fc.record({
    kind: fc.constant('establish-gpadl' as const),
    gpadl: u32,
    ranges: fc.array(gpaRange, { maxLength: 2 }),
  }),
  fc.record({
    kind: fc.constant('additional-data' as const),
    totalBytes: u32,
    offset: u32,
    data: fc.uint8Array({ maxLength: 40 }),
    payload: fc.uint8Array({ maxLength: 40 }),
  }),
);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('packet' as const),
      type: fc.oneof(fc.constantFrom(6, 0xb), fc.integer({ min: 0, max: 0xffff })),
      flags: fc.integer({ min: 0, max: 0xffff }),
      lo: u32,
      hi: u32,
      payload: payloadArb,
      sliceAt: fc.integer({ min: 0, max: 3 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('gpa' as const),
      flags: fc.constantFrom(0, 1),
      lo: u32,
      hi: u32,
      ranges: fc.array(gpaRange, { minLength: 1, maxLength: 3 }),
      payload: payloadArb,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('xfer' as const),
      flags: fc.constantFrom(0, 1),
      lo: u32,
      hi: u32,
      set: fc.integer({ min: 0, max: 0xffff }),
      owns: fc.integer({ min: 0, max: 1 }),
      ranges: fc.array(fc.record({ byteCount: u32, byteOffset: u32 }), { maxLength: 5 }),
      payload: fc.uint8Array({ maxLength: 100 }),
    }),
  },
  { weight: 1, arbitrary: rawSpec.map((s) => ({ op: 'raw' as const, bytes: encodePacketToBytes(s) })) },
  { weight: 4, arbitrary: fc.constant({ op: 'commitWrite' as const }) },
  {
    weight: 5,
    arbitrary: fc.record({ op: fc.constant('read' as const), n: fc.integer({ min: 1, max: 8 }) }),
  },
  { weight: 1, arbitrary: fc.constant({ op: 'putBack' as const }) },
  { weight: 3, arbitrary: fc.constant({ op: 'commitRead' as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('mask' as const), v: fc.constantFrom(0, 1) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('pending' as const),
      v: fc.oneof(
        fc.integer({ min: 0, max: 70000 }),
        fc.integer({ min: 1, max: 1024 }).map((k) => 8 * k),
      ),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('features' as const), v: fc.constantFrom(0, 1) }) },
);

/** What a write op must put in the ring (descriptor onward, trailer excluded). */
function expectedBytes(op: WriteOp): Uint8Array {
  switch (op.op) {
    case 'packet':
      return encodePacketToBytes({
        kind: 'other',
        type: op.type,
        flags: op.flags,
        transactionId: (BigInt(op.hi) << 32n) | BigInt(op.lo),
        payload: op.payload,
      });
    case 'gpa':
      return encodePacketToBytes({
        kind: 'gpa-direct',
        flags: op.flags,
        transactionId: (BigInt(op.hi) << 32n) | BigInt(op.lo),
        ranges: op.ranges,
        payload: op.payload,
      });
    case 'xfer':
      return encodePacketToBytes({
        kind: 'transfer-pages',
        flags: op.flags,
        transactionId: (BigInt(op.hi) << 32n) | BigInt(op.lo),
        transferPageSetId: op.set,
        senderOwnsSet: op.owns,
        ranges: op.ranges,
        payload: op.payload,
      });
    case 'raw':
      return op.bytes;
  }
}

function doWrite(w: RingWriter, op: WriteOp): number {
  switch (op.op) {
    case 'packet': {
      if (op.sliceAt === 0) return w.writePacket(op.type, op.flags, op.lo, op.hi, op.payload);
      // The same payload handed over as a slice of a larger, offset buffer.
      const big = new Uint8Array(op.payload.length + 2 * op.sliceAt);
      big.set(op.payload, op.sliceAt);
      return w.writePacket(op.type, op.flags, op.lo, op.hi, big, op.sliceAt, op.payload.length);
    }
    case 'gpa':
      return w.writeGpaDirect(op.flags, op.lo, op.hi, op.ranges, op.payload);
    case 'xfer':
      return w.writeTransferPages(
        op.flags,
        op.lo,
        op.hi,
        op.set,
        op.ranges,
        op.payload,
        0,
        op.payload.length,
        op.owns,
      );
    case 'raw':
      return w.writeRaw(op.bytes);
  }
}

/** How often the interesting cases happened (asserted after the runs, so the test cannot go vacuous). */
const seen = {
  full: 0,
  tooLarge: 0,
  writerSignal: 0,
  readerSignal: 0,
  wrappedPacket: 0,
  wrappedTrailer: 0,
  packets: 0,
};

/** The independent model of one ring. */
class Model {
  image: Uint8Array;
  w: number; // published write_index
  wPriv: number;
  r: number; // published read_index
  rPriv: number;
  uncommitted: Uint8Array[] = [];
  queue: Uint8Array[] = []; // committed, not yet taken by next()
  taken: Uint8Array[] = []; // taken since the last read commit (for putBack)
  current: Uint8Array | null = null;
  mask = 0;
  pending = 0;
  features = 1;

  constructor(
    readonly D: number,
    start: number,
  ) {
    this.image = new Uint8Array(D);
    this.w = this.wPriv = this.r = this.rPriv = start;
  }
  writable(w: number, r: number): number {
    // Spec 1.3: w >= r ? D - (w - r) : r - w
    return w >= r ? this.D - (w - r) : r - w;
  }
  put(bytes: Uint8Array): void {
    for (const b of bytes) {
      this.image[this.wPriv] = b;
      this.wPriv = (this.wPriv + 1) % this.D;
    }
  }
}

function dataBytes(ring: RingMemory): Uint8Array {
  if (ring.data) return ring.data;
  const out = new Uint8Array(ring.dataSize);
  ring.pages!.forEach((p, i) => {
    out.set(p, i * 4096);
  });
  return out;
}

function makeRings(dataPages: number, start: number, perm: number[]): RingMemory[] {
  const flat = RingMemory.fromBytes(new Uint8Array(new SharedArrayBuffer(4096 * (dataPages + 1))));
  const mem = new GuestMemory(4096 * (dataPages + 2));
  const scattered = RingMemory.fromGuestMemory(
    mem,
    perm.map((i) => i + 1),
  );
  for (const ring of [flat, scattered]) ring.initialize({ startIndex: start });
  return [flat, scattered];
}

function runSequence(dataPages: number, start: number, perm: number[], ops: Op[], rule: WakeupRule): void {
  const D = dataPages * 4096;
  const rings = makeRings(dataPages, start, perm);
  assert.equal(
    rings[1]!.contiguous,
    dataPages === 1 || perm.slice(1).every((p, i, a) => i === 0 || p === a[i - 1]! + 1),
  );
  const writers = rings.map((ring) => new RingWriter(ring, { autoPendingSendSize: false }));
  const readers = rings.map((ring) => new RingReader(ring, { wakeupRule: rule }));
  const m = new Model(D, start);
  const scratch = new Uint8Array(D);
  const scratch2 = new Uint8Array(D);

  const checkIndices = () => {
    for (const ring of rings) {
      const c = ring.controlSnapshot();
      assert.equal(c.writeIndex, m.w);
      assert.equal(c.readIndex, m.r);
    }
  };
  const setControl = (word: number, v: number) => {
    for (const ring of rings) Atomics.store(ring.control, word, v);
  };

  for (const op of ops) {
    switch (op.op) {
      case 'packet':
      case 'gpa':
      case 'xfer':
      case 'raw': {
        const bytes = expectedBytes(op);
        const total = bytes.length + 8;
        let want: number;
        if (bytes.length > D - 16) want = RING_WRITE_TOO_LARGE;
        else if (m.writable(m.wPriv, m.r) > total) want = RING_WRITE_OK;
        else want = RING_WRITE_FULL;
        for (const w of writers) assert.equal(doWrite(w, op), want);
        if (want === RING_WRITE_FULL) seen.full++;
        if (want === RING_WRITE_TOO_LARGE) seen.tooLarge++;
        if (want === RING_WRITE_OK) {
          const startIdx = m.wPriv;
          if (startIdx + bytes.length > D) seen.wrappedPacket++;
          else if (startIdx + bytes.length + 8 > D) seen.wrappedTrailer++;
          m.put(bytes);
          m.put(
            Uint8Array.of(0, 0, 0, 0, startIdx & 0xff, (startIdx >> 8) & 0xff, (startIdx >> 16) & 0xff, 0),
          );
          m.uncommitted.push(bytes);
        }
        break;
      }
      case 'commitWrite': {
        const pre = m.w;
        const expectSignal = m.wPriv !== pre && m.mask === 0 && m.r === pre;
        m.w = m.wPriv;
        m.queue.push(...m.uncommitted);
        m.uncommitted = [];
        for (const w of writers) assert.equal(w.commit(), expectSignal);
        if (expectSignal) seen.writerSignal++;
        for (const ring of rings) assert.deepEqual(dataBytes(ring), m.image);
        break;
      }
      case 'read':
        for (let i = 0; i < op.n; i++) {
          const expected = m.queue.shift();
          for (const r of readers) {
            assert.equal(r.next(), expected !== undefined);
            if (!expected) continue;
            const p = r.packet;
            assert.equal(p.start, m.rPriv);
            assert.equal(p.packetLength, expected.length);
            const n = p.copyPacket(scratch);
            assert.deepEqual(scratch.subarray(0, n), expected);
            const dv = new DataView(expected.buffer, expected.byteOffset);
            assert.equal(p.type, dv.getUint16(0, true));
            assert.equal(p.offset8, dv.getUint16(2, true));
            assert.equal(p.flags, dv.getUint16(6, true));
            assert.equal(p.transIdLo, dv.getUint32(8, true));
            assert.equal(p.transIdHi, dv.getUint32(12, true));
            const pl = p.copyPayload(scratch2);
            assert.deepEqual(scratch2.subarray(0, pl), expected.subarray(p.headerLength));
            const view = p.payload();
            if (p.payloadContiguous) assert.deepEqual(view, expected.subarray(p.headerLength));
            else assert.equal(view, null);
            if (p.packetLength >= 12) assert.equal(p.u32(8), p.transIdLo);
          }
          if (!expected) {
            m.current = null;
            break;
          }
          seen.packets++;
          m.taken.push(expected);
          m.current = expected;
          m.rPriv = (m.rPriv + expected.length + 8) % D;
        }
        break;
      case 'putBack':
        for (const r of readers) {
          if (m.current) r.putBack();
          else assert.throws(() => r.putBack(), Error);
        }
        if (m.current) {
          m.taken.pop();
          m.queue.unshift(m.current);
          m.rPriv = (m.rPriv - m.current.length - 8 + D) % D;
          m.current = null;
        }
        break;
      case 'commitRead': {
        const oldR = m.r;
        m.r = m.rPriv;
        m.taken = [];
        m.current = null;
        let expectSignal = false;
        if (oldR !== m.r) {
          const before = m.writable(m.w, oldR);
          const after = m.writable(m.w, m.r);
          if (rule === 'linux') {
            // Spec 1.7 (Linux/DPDK): with feat_pending_send_sz, wake the writer when this batch moved
            // the free space from at most p to more than p.
            expectSignal =
              (m.features & 1) === 1 && m.pending !== 0 && before <= m.pending && m.pending < after;
          } else {
            // OpenVMM: free = writable - 8 crossed (p & ~7) upwards.
            const p = m.pending & ~7;
            expectSignal = p !== 0 && before - 8 < p && after - 8 >= p;
          }
        }
        for (const r of readers) assert.equal(r.commit(), expectSignal);
        if (expectSignal) seen.readerSignal++;
        break;
      }
      case 'mask':
        m.mask = op.v;
        setControl(CONTROL_INTERRUPT_MASK, op.v);
        break;
      case 'pending':
        m.pending = op.v;
        setControl(CONTROL_PENDING_SEND_SZ, op.v);
        break;
      case 'features':
        m.features = op.v;
        setControl(CONTROL_FEATURE_BITS, op.v);
        break;
    }
    checkIndices();
  }
  // Drain everything; what was written comes back in order.
  for (const w of writers) w.commit();
  m.queue.push(...m.uncommitted);
  m.w = m.wPriv;
  for (const r of readers) {
    for (const expected of m.queue) {
      assert.ok(r.next());
      const n = r.packet.copyPacket(scratch);
      assert.deepEqual(scratch.subarray(0, n), expected);
    }
    assert.equal(r.next(), false);
    r.commit();
  }
  for (const ring of rings) assert.deepEqual(dataBytes(ring), m.image);
  assert.deepEqual(dataBytes(rings[0]!), dataBytes(rings[1]!));
}

const ringArb = fc.oneof(fc.constantFrom(1, 2), fc.integer({ min: 1, max: 16 })).chain((pages) =>
  fc.record({
    pages: fc.constant(pages),
    start: fc.oneof(
      fc.nat(pages * 512 - 1).map((k) => k * 8),
      fc.integer({ min: 1, max: Math.min(64, pages * 512) }).map((k) => pages * 4096 - 8 * k),
    ),
    // A random permutation of [0, pages + 1): element 0 is the control page's PFN slot.
    perm: fc.shuffledSubarray(
      Array.from({ length: pages + 1 }, (_, i) => i),
      { minLength: pages + 1, maxLength: pages + 1 },
    ),
    consecutive: fc.boolean(),
  }),
);

for (const rule of ['linux', 'openvmm'] as const) {
  test(`property: random sequences match the model (${rule} wakeup rule), contiguous == scattered`, () => {
    for (const k of Object.keys(seen) as (keyof typeof seen)[]) seen[k] = 0;
    fc.assert(
      fc.property(ringArb, fc.array(opArb, { minLength: 5, maxLength: 120, size: 'max' }), (ring, ops) => {
        const perm = ring.consecutive ? ring.perm.slice().sort((a, b) => a - b) : ring.perm;
        runSequence(ring.pages, ring.start, perm, ops, rule);
      }),
      { numRuns: rule === 'linux' ? 200 : 100 },
    );
    if (process.env.RING_STATS) console.log(rule, seen);
    for (const [k, v] of Object.entries(seen)) assert.ok(v > 0, `case ${k} never happened`);
  });
}

test('property: a full ring accepts exactly what the never-full rule allows', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 4 }),
      fc.nat(),
      fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 80, size: 'max' }),
      (pages, s, sizes) => {
        const D = pages * 4096;
        const start = (s % (D / 8)) * 8;
        const [ring] = makeRings(
          pages,
          start,
          Array.from({ length: pages + 1 }, (_, i) => i),
        );
        const w = new RingWriter(ring!);
        let used = 0;
        for (const n of sizes) {
          const total = ((16 + n + 7) & ~7) + 8;
          const fits = D - used > total;
          assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(n)), fits ? RING_WRITE_OK : RING_WRITE_FULL);
          if (fits) used += total;
          assert.equal(w.bytesWritable(), D - used);
        }
        w.commit();
        assert.equal(ring!.controlSnapshot().writeIndex, (start + used) % D);
      },
    ),
    { numRuns: 200 },
  );
});
