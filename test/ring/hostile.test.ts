// Hostile rings: the other partition controls write_index (for our reader), read_index (for our
// writer) and every byte of the data area. Random and mutated rings must give only RingError or
// WireError, the reader must stop (sticky failure) and terminate, and nothing may be read outside
// the ring: the data lives in exact-size buffers (a DataView access outside throws RangeError, which
// fails the test) and every copy goes through a backing that checks its bounds.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  CONTROL_READ_INDEX,
  CONTROL_WRITE_INDEX,
  RING_WRITE_OK,
  RingError,
  RingMemory,
  RingReader,
  RingWriter,
} from '../../src/ring/index.js';
import { WireError } from '../../src/wire/errors.js';
import { decodePacket } from '../../src/wire/packets.js';

/** A backing whose wrapping helpers assert they stay inside the ring. */
class CheckedRing extends RingMemory {
  accesses = 0;
  private check(pos: number, len: number): void {
    this.accesses++;
    assert.ok(
      Number.isInteger(pos) && pos >= 0 && pos < this.dataSize,
      `pos ${pos} outside [0, ${this.dataSize})`,
    );
    assert.ok(Number.isInteger(len) && len >= 0 && len <= this.dataSize, `len ${len} larger than the ring`);
  }
  override read(
    pos: number,
    dst: Uint8Array,
    dstOff: number,
    len: number,
    dst32: Int32Array | null = null,
  ): void {
    this.check(pos, len);
    super.read(pos, dst, dstOff, len, dst32);
  }
  override write(
    pos: number,
    src: Uint8Array,
    srcOff: number,
    len: number,
    src32: Int32Array | null = null,
  ): void {
    this.check(pos, len);
    super.write(pos, src, srcOff, len, src32);
  }
  override zero(pos: number, len: number): void {
    this.check(pos, len);
    super.zero(pos, len);
  }
  override byteAt(pos: number): number {
    this.check(pos, 1);
    return super.byteAt(pos);
  }
}

/** A ring over exact-size buffers: one data buffer, or one buffer per page when scattered. */
function makeRing(data: Uint8Array, scattered: boolean): CheckedRing {
  const control = new Int32Array(1024);
  if (!scattered) return new CheckedRing(control, data.slice());
  const pages: Uint8Array[] = [];
  for (let i = 0; i < data.length; i += 4096) pages.push(data.slice(i, i + 4096));
  return new CheckedRing(control, pages);
}

/** Packets handed out and errors seen, by code (asserted after runs so the tests cannot go vacuous). */
const stats = { packets: 0, errors: new Map<string, number>() };

function isTyped(e: unknown): boolean {
  return e instanceof RingError || e instanceof WireError;
}

/**
 * Reads everything the reader will give, checking each packet lies inside the readable region and
 * exercising every accessor. Returns the error that stopped it, or null.
 */
function drain(ring: CheckedRing): RingError | null {
  const D = ring.dataSize;
  let reader: RingReader;
  try {
    reader = new RingReader(ring);
  } catch (e) {
    assert.ok(e instanceof RingError && e.field === 'read_index', String(e));
    return e;
  }
  const r0 = reader.readIndex;
  const w = Atomics.load(ring.control, CONTROL_WRITE_INDEX) >>> 0;
  const readable = (w - r0 + D) % D;
  const scratch = new Uint8Array(D);
  let count = 0;
  try {
    while (reader.next()) {
      count++;
      stats.packets++;
      assert.ok(count <= D / 24, 'reader returned more packets than the ring can hold');
      const p = reader.packet;
      // The packet and its trailer lie inside [r0, w) (circularly).
      const from = (p.start - r0 + D) % D;
      assert.ok(from + p.packetLength + 8 <= readable, 'packet outside the readable bytes');
      assert.ok(p.offset8 >= 2 && p.offset8 <= p.len8);
      assert.equal(p.payloadStart, (p.start + p.headerLength) % D);
      const n = p.copyPacket(scratch);
      assert.equal(n, p.packetLength);
      p.copyHeader(scratch);
      p.copyPayload(scratch);
      const view = p.payload();
      if (view) assert.equal(view.length, p.payloadLength);
      for (let off = 0; off + 4 <= p.packetLength; off += 12) p.u32(off) + p.u16(off) + p.u8(off);
      try {
        decodePacket(scratch.subarray(0, n));
      } catch (e) {
        assert.ok(e instanceof WireError, String(e));
      }
      if (count % 3 === 0) reader.commit();
    }
    reader.commit();
    return null;
  } catch (e) {
    assert.ok(e instanceof RingError, `expected RingError, got ${String(e)}`);
    stats.errors.set(e.code, (stats.errors.get(e.code) ?? 0) + 1);
    // Sticky: the reader stays failed with the same error.
    assert.equal(reader.failure, e);
    assert.throws(
      () => reader.next(),
      (x: unknown) => x === e,
    );
    assert.throws(
      () => reader.commit(),
      (x: unknown) => x === e,
    );
    return e;
  }
}

const indexArb = (D: number) =>
  fc.oneof(
    fc.nat(D / 8 - 1).map((k) => k * 8),
    fc.integer({ min: 0, max: 0xffffffff }),
    fc.constantFrom(D, D - 4, 0xfffffff8, 0x80000000),
  );

describe('hostile rings', () => {
  test('random control words and data: typed errors only, terminates, stays inside the ring', () => {
    // A chain of descriptor-like records (small offset8/len8, sometimes wrong) laid from a random
    // start, over random filler, with a write_index that is often a record boundary.
    const record = fc.record({
      type: fc.integer({ min: 0, max: 0xffff }),
      len8: fc.oneof(fc.integer({ min: 2, max: 12 }), fc.integer({ min: 0, max: 0xffff })),
      offset8: fc.oneof(fc.constant(2), fc.integer({ min: 0, max: 14 })),
      flags: fc.integer({ min: 0, max: 0xffff }),
    });
    fc.assert(
      fc.property(
        fc.constantFrom(4096, 8192),
        fc.boolean(),
        fc.uint8Array({ minLength: 1, maxLength: 64 }),
        fc.nat(),
        fc.array(record, { minLength: 1, maxLength: 40 }),
        fc.nat(),
        indexArb(8192),
        fc.boolean(),
        (D, scattered, filler, s, records, cut, randomW, useCut) => {
          const data = new Uint8Array(D);
          for (let i = 0; i < D; i++) data[i] = filler[i % filler.length]!;
          const start = (s % (D / 8)) * 8;
          const boundaries = [start];
          let pos = start;
          const dv = new DataView(data.buffer);
          for (const rec of records) {
            const put16 = (off: number, v: number) => {
              dv.setUint8((pos + off) % D, v & 0xff);
              dv.setUint8((pos + off + 1) % D, v >> 8);
            };
            put16(0, rec.type);
            put16(2, rec.offset8);
            put16(4, rec.len8);
            put16(6, rec.flags);
            pos = (pos + ((rec.len8 * 8 + 8) % D)) % D;
            boundaries.push(pos);
          }
          const ring = makeRing(data, scattered);
          const w = useCut ? boundaries[cut % boundaries.length]! : randomW;
          Atomics.store(ring.control, CONTROL_WRITE_INDEX, w);
          Atomics.store(ring.control, CONTROL_READ_INDEX, s % 17 === 0 ? s : start);
          const err = drain(ring);
          if (err) assert.ok(isTyped(err), 'typed');
        },
      ),
      { numRuns: 1500 },
    );
    if (process.env.RING_STATS) console.log(stats);
    assert.ok(stats.packets > 100, `only ${stats.packets} packets read`);
    for (const code of ['bad-index', 'bad-descriptor', 'bad-length']) {
      assert.ok((stats.errors.get(code) ?? 0) > 10, `too few ${code}`);
    }
  });

  test('valid rings with mutated bytes and indices: typed errors only', () => {
    let failures = 0;
    fc.assert(
      fc.property(
        fc.constantFrom(4096, 8192),
        fc.boolean(),
        fc.array(fc.integer({ min: 0, max: 600 }), { minLength: 1, maxLength: 30 }),
        fc.nat(),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
        fc.option(fc.nat(), { nil: undefined }),
        (D, scattered, sizes, start, mutations, newW) => {
          const ring = makeRing(new Uint8Array(D), scattered);
          ring.initialize({ startIndex: (start % (D / 8)) * 8 });
          const writer = new RingWriter(ring);
          for (const n of sizes) {
            if (writer.writePacket(6, 1, n, 0, new Uint8Array(n).fill(n)) !== RING_WRITE_OK) break;
          }
          writer.commit();
          const page = (pos: number) =>
            ring.data ? ([ring.data, pos] as const) : ([ring.pages![pos >> 12]!, pos & 4095] as const);
          for (const [at, v] of mutations) {
            const [bytes, i] = page(at % D);
            bytes[i] = v;
          }
          if (newW !== undefined)
            Atomics.store(ring.control, CONTROL_WRITE_INDEX, newW % 3 === 0 ? newW : (newW % (D / 8)) * 8);
          if (drain(ring)) failures++;
        },
      ),
      { numRuns: 1000 },
    );
    assert.ok(failures > 0, 'no mutation ever produced a corrupt ring');
  });

  test('specific corruptions are reported with code and field', () => {
    const D = 4096;
    const cases: [string, (ring: RingMemory) => void, string, string][] = [
      [
        'write_index >= D',
        (r) => Atomics.store(r.control, CONTROL_WRITE_INDEX, D),
        'bad-index',
        'write_index',
      ],
      [
        'write_index misaligned',
        (r) => Atomics.store(r.control, CONTROL_WRITE_INDEX, 36),
        'bad-index',
        'write_index',
      ],
      ['offset8 < 2', (r) => (r.data![2] = 1), 'bad-descriptor', 'vmpacket_descriptor.offset8'],
      ['offset8 > len8', (r) => (r.data![2] = 9), 'bad-descriptor', 'vmpacket_descriptor.offset8'],
      ['len8 past write_index', (r) => (r.data![4] = 5), 'bad-length', 'vmpacket_descriptor.len8'],
      [
        'fewer bytes than a packet',
        (r) => Atomics.store(r.control, CONTROL_WRITE_INDEX, 16),
        'bad-length',
        'vmpacket_descriptor.len8',
      ],
    ];
    for (const [name, corrupt, code, field] of cases) {
      const ring = RingMemory.fromBytes(new Uint8Array(4096 + D));
      ring.initialize();
      const w = new RingWriter(ring);
      w.writePacket(6, 0, 1, 0, new Uint8Array(8)); // 32 bytes: descriptor, payload, trailer
      w.commit();
      corrupt(ring);
      const r = new RingReader(ring);
      assert.throws(
        () => r.next(),
        (e: unknown) => e instanceof RingError && e.code === code && e.field === field,
        name,
      );
      assert.equal(r.failure?.code, code);
    }
    const ring = RingMemory.fromBytes(new Uint8Array(4096 + D));
    Atomics.store(ring.control, CONTROL_READ_INDEX, 12);
    assert.throws(
      () => new RingReader(ring),
      (e: unknown) => e instanceof RingError && e.field === 'read_index',
    );
  });

  test('writer: a hostile read_index is a sticky RingError', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(4096, 8192),
        fc.boolean(),
        indexArb(4096),
        fc.array(fc.nat(300), { maxLength: 40 }),
        (D, scattered, badR, sizes) => {
          const ring = makeRing(new Uint8Array(D), scattered);
          ring.initialize();
          const w = new RingWriter(ring);
          const valid = badR < D && badR % 8 === 0;
          let err: unknown = null;
          Atomics.store(ring.control, CONTROL_READ_INDEX, badR);
          try {
            for (const n of sizes) w.writePacket(6, 0, 0, 0, new Uint8Array(n));
            w.bytesWritable();
            w.commit();
          } catch (e) {
            err = e;
          }
          if (valid) {
            assert.equal(err, null);
          } else {
            assert.ok(
              err instanceof RingError && err.code === 'bad-index' && err.field === 'read_index',
              String(err),
            );
            assert.equal(w.failure, err);
            assert.throws(
              () => w.writePacket(6, 0, 0, 0),
              (x: unknown) => x === err,
            );
            assert.throws(
              () => w.commit(),
              (x: unknown) => x === err,
            );
            Atomics.store(ring.control, CONTROL_READ_INDEX, 0);
            assert.throws(
              () => w.writePacket(6, 0, 0, 0),
              (x: unknown) => x === err,
            ); // still failed
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
