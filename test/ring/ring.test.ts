// Unit tests of one ring (src/ring): the spec 1.10 bytes in a ring, OpenVMM's ring tests (signal on
// empty -> non-empty, interrupt_mask, pending_send_sz), the never-full rule at its boundary, batching,
// the reader cursor, the memory backings and the channel-ring split.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import {
  CONTROL_INTERRUPT_MASK,
  CONTROL_PENDING_SEND_SZ,
  CONTROL_READ_INDEX,
  CONTROL_WRITE_INDEX,
  channelRingsFromGpadl,
  RING_WRITE_FULL,
  RING_WRITE_OK,
  RING_WRITE_TOO_LARGE,
  RingError,
  RingMemory,
  RingReader,
  RingWriter,
} from '../../src/ring/index.js';
import { decodePacket, encodePacketToBytes } from '../../src/wire/packets.js';

function hex(s: string): Uint8Array {
  const clean = s.replace(/[^0-9a-f]/gi, '');
  return Uint8Array.from(clean.match(/../g) ?? [], (h) => Number.parseInt(h, 16));
}

/** A fresh ring with `dataSize` bytes of data in its own buffer, initialised Linux-style. */
function makeRing(dataSize: number, startIndex = 0, interruptMask = 0): RingMemory {
  const ring = RingMemory.fromBytes(new Uint8Array(new SharedArrayBuffer(4096 + dataSize)));
  ring.initialize({ startIndex, interruptMask });
  return ring;
}

function writeSimple(w: RingWriter, payload: Uint8Array): boolean | null {
  const r = w.writePacket(6, 0, 0, 0, payload);
  if (r === RING_WRITE_FULL) return null;
  assert.equal(r, RING_WRITE_OK);
  return w.commit();
}

function readSimple(r: RingReader): [Uint8Array, boolean] {
  assert.equal(r.next(), true);
  const out = new Uint8Array(r.packet.payloadLength);
  r.packet.copyPayload(out);
  return [out, r.commit()];
}

describe('spec 1.10 in a ring', () => {
  test('inband packet and completion: bytes, trailers and indices', () => {
    const ring = makeRing(4096);
    const w = new RingWriter(ring);
    assert.equal(w.writePacket(6, 1, 0x55667788, 0x11223344, hex('010203')), RING_WRITE_OK);
    assert.equal(w.commit(), true);
    assert.equal(ring.controlSnapshot().writeIndex, 32);
    assert.deepEqual(
      ring.data!.subarray(0, 32),
      hex('06 00 02 00 03 00 01 00 88 77 66 55 44 33 22 11 01 02 03 00 00 00 00 00 00 00 00 00 00 00 00 00'),
    );
    const payload = hex('a1a2a3a4a5a6a7a8');
    assert.equal(w.writeCompletion(5, 0, payload), RING_WRITE_OK);
    assert.equal(w.commit(), false); // ring was not empty
    assert.deepEqual(
      ring.data!.subarray(32, 64),
      hex('0b 00 02 00 03 00 00 00 05 00 00 00 00 00 00 00 a1a2a3a4a5a6a7a8 00 00 00 00 20 00 00 00'),
    );
    const r = new RingReader(ring);
    assert.ok(r.next());
    assert.equal(r.packet.type, 6);
    assert.equal(r.packet.transactionId, 0x1122334455667788n);
    assert.deepEqual(r.packet.payload(), hex('0102030000000000'));
    assert.ok(r.next());
    assert.equal(r.packet.type, 0xb);
    assert.equal(r.packet.transactionIdNumber, 5);
    assert.equal(r.packet.start, 32);
    assert.equal(r.next(), false);
    assert.equal(r.commit(), false);
    assert.equal(ring.controlSnapshot().readIndex, 64);
  });

  test('a completion echoes a u64 transaction id exactly', () => {
    const ring = makeRing(4096);
    const w = new RingWriter(ring);
    const r = new RingReader(ring);
    w.writePacket(6, 1, 0xfffffffe, 0xffffffff, hex('00'));
    w.commit();
    assert.ok(r.next());
    w.writeCompletion(r.packet.transIdLo, r.packet.transIdHi);
    w.commit();
    assert.ok(r.next());
    assert.equal(r.packet.transactionId, 0xfffffffffffffffen);
  });
});

describe('OpenVMM ring tests', () => {
  test('test_ring: signal on empty -> non-empty, payload read back', () => {
    const ring = makeRing(16384);
    const w = new RingWriter(ring);
    const r = new RingReader(ring);
    const p = hex('0102030405060708');
    assert.equal(writeSimple(w, p), true);
    const [msg, signal] = readSimple(r);
    assert.equal(signal, false);
    assert.deepEqual(msg, p);
  });

  test('test_interrupt_mask: masked reader gets no signal', () => {
    const ring = makeRing(16384, 0, 1);
    const w = new RingWriter(ring);
    const r = new RingReader(ring);
    assert.equal(writeSimple(w, hex('010203')), false);
    assert.equal(readSimple(r)[1], false);
    Atomics.store(ring.control, CONTROL_INTERRUPT_MASK, 0);
    assert.equal(writeSimple(w, hex('010203')), true);
    assert.equal(readSimple(r)[1], false);
  });

  for (const rule of ['linux', 'openvmm'] as const) {
    test(`test_pending_send_size (${rule} rule): exactly one wakeup`, () => {
      const ring = makeRing(16384);
      const w = new RingWriter(ring, { autoPendingSendSize: false });
      const r = new RingReader(ring, { wakeupRule: rule });
      for (const v of [1, 2, 3, 4]) assert.notEqual(writeSimple(w, new Uint8Array(4000).fill(v)), null);
      assert.equal(writeSimple(w, new Uint8Array(4000).fill(5)), null);
      assert.equal(readSimple(r)[1], false); // no pending send size yet
      assert.notEqual(writeSimple(w, new Uint8Array(4000).fill(5)), null);
      assert.equal(writeSimple(w, new Uint8Array(4000).fill(6)), null);
      w.setPendingSendSize(4024 * 2);
      assert.equal(readSimple(r)[1], false);
      assert.equal(readSimple(r)[1], true);
      assert.equal(readSimple(r)[1], false);
      assert.equal(readSimple(r)[1], false);
    });
  }

  for (const rule of ['linux', 'openvmm'] as const) {
    test(`pending_send_sz boundary (${rule} rule): free space equal to pending is not enough`, () => {
      const ring = makeRing(16384);
      const w = new RingWriter(ring, { autoPendingSendSize: false });
      const r = new RingReader(ring, { wakeupRule: rule });
      for (let i = 0; i < 4; i++) writeSimple(w, new Uint8Array(4000));
      assert.equal(w.bytesWritable(), 288);
      w.setPendingSendSize(288 + 4024);
      assert.equal(readSimple(r)[1], false); // writable == 4312 == pending: a 4312-byte write still fails
      assert.equal(readSimple(r)[1], true);
    });
  }

  test('linux rule honours feature_bits; openvmm rule ignores it', () => {
    for (const rule of ['linux', 'openvmm'] as const) {
      const ring = makeRing(16384);
      ring.initialize({ featureBits: 0 });
      const w = new RingWriter(ring, { autoPendingSendSize: false });
      const r = new RingReader(ring, { wakeupRule: rule });
      for (let i = 0; i < 4; i++) writeSimple(w, new Uint8Array(4000));
      w.setPendingSendSize(4024);
      assert.equal(readSimple(r)[1], rule === 'openvmm');
    }
  });
});

describe('writer', () => {
  test('never full: a packet that exactly fills the free space is refused, 8 bytes less fits', () => {
    const ring = makeRing(8192, 4000);
    const w = new RingWriter(ring);
    assert.equal(w.bytesWritable(), 8192);
    // Use up some space, so the boundary is not the empty-ring case.
    assert.equal(w.writePacket(6, 0, 1, 0, new Uint8Array(1000)), RING_WRITE_OK); // 1016 + 8
    w.commit();
    const free = w.bytesWritable();
    assert.equal(free, 8192 - 1024);
    // packet + trailer == free: refused (would make write_index catch up with read_index).
    const exact = free - 8 - 16;
    assert.equal(w.writePacket(6, 0, 2, 0, new Uint8Array(exact)), RING_WRITE_FULL);
    assert.equal(ring.controlSnapshot().writeIndex, 4000 + 1024);
    assert.equal(w.uncommittedBytes, 0);
    assert.equal(w.writePacket(6, 0, 2, 0, new Uint8Array(exact - 8)), RING_WRITE_OK);
    w.commit();
    assert.equal(w.bytesWritable(), 8);
    assert.equal(w.writePacket(6, 0, 3, 0), RING_WRITE_FULL);
  });

  test('maximumPacketSize is D - 16; larger packets are TOO_LARGE, not FULL', () => {
    const ring = makeRing(8192);
    const w = new RingWriter(ring);
    assert.equal(w.maximumPacketSize, 8192 - 16);
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(8192 - 16 - 16 + 1)), RING_WRITE_TOO_LARGE);
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(8192 - 16 - 16)), RING_WRITE_OK);
    w.commit();
    const r = new RingReader(ring);
    assert.ok(r.next());
    assert.equal(r.packet.packetLength, 8192 - 16);
    assert.equal(r.commit(), false);
    assert.equal(ring.controlSnapshot().readIndex, 8184);
    assert.equal(r.next(), false);
  });

  test('maximumPacketSize never exceeds what the u16 len8 can describe (0xFFFF * 8 bytes)', () => {
    const ring = makeRing(1024 * 1024);
    const w = new RingWriter(ring);
    assert.equal(w.maximumPacketSize, 0xffff * 8);
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(600_000)), RING_WRITE_TOO_LARGE);
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(0xffff * 8 - 16)), RING_WRITE_OK);
    w.commit();
    const r = new RingReader(ring);
    assert.ok(r.next());
    assert.equal(r.packet.len8, 0xffff);
  });

  test('batch: one publish, signal decided against the pre-batch write index', () => {
    const ring = makeRing(4096);
    const w = new RingWriter(ring);
    const r = new RingReader(ring);
    for (let i = 0; i < 3; i++) assert.equal(w.writePacket(6, 0, i, 0, hex('aa')), RING_WRITE_OK);
    assert.equal(ring.controlSnapshot().writeIndex, 0); // not yet visible
    assert.equal(r.next(), false);
    assert.equal(w.uncommittedBytes, 96);
    assert.equal(w.commit(), true);
    assert.equal(ring.controlSnapshot().writeIndex, 96);
    assert.equal(w.commit(), false); // nothing new
    // Reader takes one packet and commits; the writer's next batch does not signal (ring not empty).
    assert.ok(r.next());
    r.commit();
    w.writePacket(6, 0, 9, 0);
    assert.equal(w.commit(), false);
    // Reader drains; next batch signals again.
    while (r.next());
    r.commit();
    w.writePacket(6, 0, 10, 0);
    w.writePacket(6, 0, 11, 0);
    assert.equal(w.commit(), true);
  });

  test('discard forgets the uncommitted packets', () => {
    const ring = makeRing(4096);
    const w = new RingWriter(ring);
    w.writePacket(6, 0, 1, 0, hex('01'));
    w.commit();
    w.writePacket(6, 0, 2, 0, hex('02'));
    w.discard();
    w.writePacket(6, 0, 3, 0, hex('03'));
    w.commit();
    const r = new RingReader(ring);
    const ids: number[] = [];
    while (r.next()) ids.push(r.packet.transIdLo);
    assert.deepEqual(ids, [1, 3]);
  });

  test('pending_send_sz (exact sizing): set automatically when blocked, cleared once a packet fits', () => {
    const ring = makeRing(16384);
    const w = new RingWriter(ring, { pendingSendSizing: 'exact' });
    const r = new RingReader(ring);
    for (let i = 0; i < 4; i++) assert.notEqual(writeSimple(w, new Uint8Array(4000)), null);
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(4000)), RING_WRITE_FULL);
    assert.equal(Atomics.load(ring.control, CONTROL_PENDING_SEND_SZ), 4024);
    // One packet freed: 4312 writable > 4024 needed: exactly this commit signals the writer.
    assert.equal(readSimple(r)[1], true);
    assert.equal(readSimple(r)[1], false);
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(4000)), RING_WRITE_OK);
    assert.equal(Atomics.load(ring.control, CONTROL_PENDING_SEND_SZ), 0);
  });

  for (const rule of ['linux', 'openvmm'] as const) {
    test(`pending_send_sz (quarter sizing, the default; ${rule} rule): one wakeup, once a quarter is free`, () => {
      // D = 65536: maximumPacketSize 65520, a quarter 16380, rounded up to 8: 16384.
      const ring = makeRing(65536);
      const w = new RingWriter(ring);
      assert.equal(w.pendingSendSizing, 'quarter');
      const r = new RingReader(ring, { wakeupRule: rule });
      const payload = new Uint8Array(1000); // 1016-byte packet + 8-byte trailer = 1024
      let n = 0;
      while (writeSimple(w, payload) !== null) n++;
      assert.equal(n, 63); // 63 * 1024 used, 1024 writable: the never-full rule refuses the 64th
      assert.equal(Atomics.load(ring.control, CONTROL_PENDING_SEND_SZ), 16384);
      // Reads free 1024 bytes each; the 16th makes 17408 writable, the first above 16384.
      const wakeups: number[] = [];
      for (let i = 1; i <= n; i++) if (readSimple(r)[1]) wakeups.push(i);
      assert.deepEqual(wakeups, [16]);
      // The request is a wakeup threshold only: a writer that polls gets in as soon as its packet fits.
      const ring2 = makeRing(65536);
      const w2 = new RingWriter(ring2);
      const r2 = new RingReader(ring2, { wakeupRule: rule });
      while (writeSimple(w2, payload) !== null) {}
      assert.equal(readSimple(r2)[1], false);
      assert.equal(w2.writePacket(6, 0, 0, 0, payload), RING_WRITE_OK);
      assert.equal(Atomics.load(ring2.control, CONTROL_PENDING_SEND_SZ), 0);
    });
  }

  test('pending_send_sz (quarter sizing): a packet larger than a quarter asks for its own size', () => {
    const ring = makeRing(16384); // a quarter: ceil8(16368 / 4) = 4096
    const w = new RingWriter(ring);
    assert.notEqual(writeSimple(w, new Uint8Array(11000)), null); // 5360 bytes left
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(6000)), RING_WRITE_FULL);
    assert.equal(Atomics.load(ring.control, CONTROL_PENDING_SEND_SZ), 6024); // 16 + 6000 + 8
    const small = makeRing(4096); // maximumPacketSize 4080, a quarter 1020 -> 1024
    const ws = new RingWriter(small);
    assert.notEqual(writeSimple(ws, new Uint8Array(3500)), null); // 568 bytes left
    assert.equal(ws.writePacket(6, 0, 0, 0, new Uint8Array(600)), RING_WRITE_FULL); // needs 624
    assert.equal(Atomics.load(small.control, CONTROL_PENDING_SEND_SZ), 1024);
    assert.throws(() => new RingWriter(small, { pendingSendSizing: 'half' as 'exact' }), RangeError);
  });

  test('a writer that only writes when woken: quarter sizing wakes it once per quarter ring, exact per commit', () => {
    const counts: Record<string, number> = {};
    for (const sizing of ['quarter', 'exact'] as const) {
      const ring = makeRing(65536);
      const w = new RingWriter(ring, { pendingSendSizing: sizing });
      const r = new RingReader(ring);
      const payload = new Uint8Array(1000);
      let sent = 0;
      // Writes and commits until a write fails with nothing uncommitted (which arms pending_send_sz).
      const fill = () => {
        for (;;) {
          let put = 0;
          while (w.writePacket(6, 0, sent, 0, payload) === RING_WRITE_OK) {
            sent++;
            put++;
          }
          w.commit();
          if (put === 0) return;
        }
      };
      fill();
      let got = 0;
      let wakeups = 0;
      while (got < 2048) {
        // The reader takes 4 packets per commit; the writer refills only when signalled.
        for (let i = 0; i < 4; i++) {
          assert.equal(r.next(), true);
          assert.equal(r.packet.transIdLo, got++);
        }
        if (r.commit()) {
          wakeups++;
          fill();
        }
      }
      counts[sizing] = wakeups;
    }
    // 16 packets (16 KiB) per wakeup with 'quarter', 4 (one reader commit) with 'exact'.
    assert.deepEqual(counts, { quarter: 2048 / 16, exact: 2048 / 4 });
  });

  test('pending_send_sz is not armed while a batch is uncommitted', () => {
    const ring = makeRing(8192);
    const w = new RingWriter(ring);
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(5000)), RING_WRITE_OK);
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(4000)), RING_WRITE_FULL);
    assert.equal(Atomics.load(ring.control, CONTROL_PENDING_SEND_SZ), 0);
    w.commit();
    assert.equal(w.writePacket(6, 0, 0, 0, new Uint8Array(4000)), RING_WRITE_FULL);
    assert.equal(Atomics.load(ring.control, CONTROL_PENDING_SEND_SZ), 4024);
    w.clearPendingSendSize();
    assert.equal(Atomics.load(ring.control, CONTROL_PENDING_SEND_SZ), 0);
    assert.throws(() => w.setPendingSendSize(8193), RangeError);
  });

  test('GPA direct and transfer pages land as the wire encoder lays them out, wrapped', () => {
    const ring = makeRing(4096, 4096 - 40);
    const w = new RingWriter(ring);
    const ranges = [
      { byteCount: 100, byteOffset: 8, pfns: [0x99] },
      { byteCount: 7000, byteOffset: 300, pfns: [1, 2] },
    ];
    assert.equal(w.writeGpaDirect(1, 0x42, 0, ranges, hex('deadbeef')), RING_WRITE_OK);
    const tp = [{ byteCount: 1500, byteOffset: 0 }];
    assert.equal(w.writeTransferPages(1, 7, 0, 0xbeef, tp, hex('0102'), 0, 2, 1), RING_WRITE_OK);
    w.commit();
    const r = new RingReader(ring);
    const buf = new Uint8Array(256);
    assert.ok(r.next());
    let n = r.packet.copyPacket(buf);
    assert.deepEqual(
      buf.subarray(0, n),
      encodePacketToBytes({
        kind: 'gpa-direct',
        flags: 1,
        transactionId: 0x42,
        ranges,
        payload: hex('deadbeef'),
      }),
    );
    assert.equal(r.packet.contiguous, false); // started 40 bytes before the end
    assert.ok(r.next());
    n = r.packet.copyPacket(buf);
    const d = decodePacket(buf.subarray(0, n));
    assert.equal(d.kind, 'transfer-pages');
    if (d.kind === 'transfer-pages') {
      assert.equal(d.transferPageSetId, 0xbeef);
      assert.equal(d.senderOwnsSet, 1);
      assert.deepEqual(d.ranges, tp);
    }
    assert.throws(
      () => w.writeGpaDirect(1, 0, 0, [{ byteCount: 5000, byteOffset: 0, pfns: [1] }]),
      RangeError,
    );
  });

  test('writeRaw writes exactly the given bytes plus the trailer', () => {
    const ring = makeRing(4096, 8);
    const w = new RingWriter(ring);
    const raw = hex('06 00 02 00 03 00 00 00 01 00 00 00 00 00 00 00 ff ee dd cc bb aa 99 88');
    assert.equal(w.writeRaw(raw), RING_WRITE_OK);
    w.commit();
    assert.deepEqual(ring.data!.subarray(8, 40), Uint8Array.of(...raw, 0, 0, 0, 0, 8, 0, 0, 0));
    assert.throws(() => w.writeRaw(raw, 0, 20), RangeError);
  });
});

describe('reader', () => {
  test('putBack returns the packet again; commit publishes once', () => {
    const ring = makeRing(4096);
    const w = new RingWriter(ring);
    for (let i = 1; i <= 3; i++) w.writePacket(6, 0, i, 0, hex('01020304'));
    w.commit();
    const r = new RingReader(ring);
    assert.ok(r.next());
    assert.ok(r.next());
    assert.equal(r.packet.transIdLo, 2);
    r.putBack();
    assert.throws(() => r.putBack(), Error);
    assert.ok(r.next());
    assert.equal(r.packet.transIdLo, 2);
    assert.equal(r.uncommittedBytes, 64);
    assert.equal(ring.controlSnapshot().readIndex, 0);
    r.commit();
    assert.equal(ring.controlSnapshot().readIndex, 64);
    assert.equal(r.bytesReadable(), 32);
  });

  test('accessors across the wrap: u8/u16/u32, copyPayload, payload() null when wrapped', () => {
    const ring = makeRing(4096, 4096 - 16);
    const w = new RingWriter(ring);
    const payload = Uint8Array.from({ length: 40 }, (_, i) => i + 1);
    w.writePacket(0x1234, 1, 0xa0b0c0d0, 7, payload);
    w.commit();
    const r = new RingReader(ring);
    assert.ok(r.next());
    const p = r.packet;
    assert.equal(p.type, 0x1234);
    assert.equal(p.payloadStart, 0);
    assert.equal(p.payloadContiguous, true);
    assert.equal(p.contiguous, false);
    assert.equal(p.u16(0), 0x1234);
    assert.equal(p.u32(8), 0xa0b0c0d0);
    assert.equal(p.u8(16), 1);
    assert.equal(p.u32(17), 0x05040302);
    assert.throws(() => p.u32(p.packetLength - 3), RangeError);
    const out = new Uint8Array(48);
    p.copyPayload(out, 3, 40);
    assert.deepEqual(out.subarray(3, 43), payload);
    assert.throws(() => p.copyPayload(out, 10), RangeError);
    r.commit();
    // A packet whose payload wraps: descriptor at D - 24, payload starts 8 bytes before the end.
    const ring2 = makeRing(4096, 4096 - 24);
    const w2 = new RingWriter(ring2);
    w2.writePacket(6, 0, 0, 0, payload);
    w2.commit();
    const r2 = new RingReader(ring2);
    assert.ok(r2.next());
    assert.equal(r2.packet.payload(), null);
    assert.equal(r2.packet.u32(16 + 6), 0x0a090807);
    assert.equal(r2.packet.u16(23), 0x0908);
    const out2 = new Uint8Array(40);
    r2.packet.copyPayload(out2);
    assert.deepEqual(out2, payload);
  });

  test('beginRead/endRead: unmask then re-check for data that arrived meanwhile', () => {
    const ring = makeRing(4096);
    const w = new RingWriter(ring);
    const r = new RingReader(ring);
    r.beginRead();
    w.writePacket(6, 0, 1, 0);
    assert.equal(w.commit(), false); // masked: the writer does not signal
    assert.equal(r.endRead(), true); // so the reader must find it itself
    assert.equal(ring.controlSnapshot().interruptMask, 0);
    r.beginRead();
    while (r.next());
    r.commit();
    assert.equal(r.endRead(), false);
    w.writePacket(6, 0, 2, 0);
    assert.equal(w.commit(), true);
  });
});

describe('memory backings', () => {
  test('fromGuestMemory: consecutive PFNs are contiguous, scattered ones are pages; same bytes', () => {
    const mem = new GuestMemory(64 * 4096);
    const flat = RingMemory.fromGuestMemory(mem, [3, 4, 5, 6]);
    assert.equal(flat.contiguous, true);
    assert.equal(flat.dataSize, 3 * 4096);
    const scattered = RingMemory.fromGuestMemory(mem, [10, 30, 20, 25]);
    assert.equal(scattered.contiguous, false);
    for (const ring of [flat, scattered]) {
      ring.initialize({ startIndex: 4096 * 3 - 48 });
      const w = new RingWriter(ring);
      for (let i = 0; i < 50; i++)
        w.writePacket(
          6,
          1,
          i,
          0,
          Uint8Array.from({ length: 3 * i + 1 }, (_, j) => i + j),
        );
      w.commit();
    }
    const a = mem.bytes;
    assert.deepEqual(
      a.subarray(4 * 4096, 7 * 4096),
      Uint8Array.of(
        ...a.subarray(30 * 4096, 31 * 4096),
        ...a.subarray(20 * 4096, 21 * 4096),
        ...a.subarray(25 * 4096, 26 * 4096),
      ),
    );
    assert.deepEqual(a.subarray(3 * 4096, 4 * 4096), a.subarray(10 * 4096, 11 * 4096));
  });

  test('geometry errors are typed', () => {
    const mem = new GuestMemory(16 * 4096);
    const bad = (fn: () => unknown, code: string, field: string) =>
      assert.throws(fn, (e: unknown) => e instanceof RingError && e.code === code && e.field === field);
    bad(() => RingMemory.fromGuestMemory(mem, [1]), 'bad-layout', 'ring');
    bad(() => RingMemory.fromGuestMemory(mem, [1, 99]), 'bad-memory', 'pfn');
    bad(() => RingMemory.fromBytes(new Uint8Array(4096)), 'bad-layout', 'ring');
    bad(() => RingMemory.fromBytes(new Uint8Array(4096 * 2 + 8)), 'bad-layout', 'ring');
    bad(() => new RingMemory(new Int32Array(1024), [new Uint8Array(100)]), 'bad-layout', 'data');
    const pfns = [1, 2, 3, 4, 5, 6];
    for (const n of [0, 1, 5, 6, -1, 2.5]) {
      bad(() => channelRingsFromGpadl(mem, pfns, n), 'bad-layout', 'downstream_ringbuffer_pageoffset');
    }
    const { guestToHost, hostToGuest } = channelRingsFromGpadl(mem, pfns, 2);
    assert.equal(guestToHost.dataSize, 4096);
    assert.equal(hostToGuest.dataSize, 3 * 4096);
    // Pages [0, N) and [N, end): control pages are PFN 1 and PFN 3.
    hostToGuest.initialize({ startIndex: 8 });
    assert.equal(new DataView(mem.buffer).getUint32(3 * 4096 + 4, true), 8);
    guestToHost.initialize({ startIndex: 16 });
    assert.equal(new DataView(mem.buffer).getUint32(1 * 4096, true), 16);
  });

  test('ring files: a plain ArrayBuffer works, control words at the spec offsets', () => {
    const buf = new ArrayBuffer(3 * 4096);
    const ring = RingMemory.fromBytes(buf);
    ring.initialize({ startIndex: 16 });
    const w = new RingWriter(ring);
    w.writePacket(6, 0, 0, 0, hex('01'));
    w.commit();
    const dv = new DataView(buf);
    assert.equal(dv.getUint32(0x0, true), 16 + 32);
    assert.equal(dv.getUint32(0x4, true), 16);
    assert.equal(dv.getUint32(0x40, true), 1);
    assert.equal(Atomics.load(ring.control, CONTROL_WRITE_INDEX), 48);
    assert.equal(Atomics.load(ring.control, CONTROL_READ_INDEX), 16);
  });
});
