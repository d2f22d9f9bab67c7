// Tests of the ring packet codecs (src/wire/packets.ts): the spec's byte vectors (1.10, 2.3), every
// decoder refusal, round trips of every packet kind, the allocation-free accessors, and a fuzz run
// that checks decoding never throws anything but WireError.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { WireError } from '../../src/wire/errors.js';
import {
  checkGpaRanges,
  decodePacket,
  decodePacketStrict,
  decodePipeHeader,
  encodedPacketLength,
  encodeGpaDirectHeader,
  encodePacket,
  encodePacketToBytes,
  encodePipeHeader,
  type GpaRange,
  gpaDirectRangeCount,
  gpaRangeByteCount,
  gpaRangeByteOffset,
  gpaRangeEnd,
  gpaRangePfn,
  gpaRangePfnCount,
  MAX_PIPE_DATA_PAYLOAD,
  PacketDescriptor,
  type PacketSpec,
  packetTypeFromName,
  packetTypeName,
  readDescriptor,
  transactionIdBigInt,
  transactionIdHi,
  transactionIdLo,
  transactionIdNumber,
  transferPagesRangeCount,
  VM_PKT_ADDITIONAL_DATA,
  VM_PKT_COMP,
  VM_PKT_DATA_INBAND,
  VM_PKT_DATA_USING_GPA_DIRECT,
  VM_PKT_INVALID,
  VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
  VMBUS_PIPE_TYPE_DATA,
  VMBUS_PIPE_TYPE_PARTIAL,
  VMBUS_PIPE_TYPE_TEARDOWN_GPA_DIRECT,
  VMPACKET_DESCRIPTOR_SIZE,
  VMPACKET_TRAILER_SIZE,
  writeDescriptor,
} from '../../src/wire/packets.js';

function hex(s: string): Uint8Array {
  const clean = s.replace(/[^0-9a-f]/gi, '');
  return Uint8Array.from(clean.match(/../g) ?? [], (h) => Number.parseInt(h, 16));
}

function expectWireError(fn: () => unknown, code: string, field: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof WireError, `expected WireError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.field, field);
    return true;
  });
}

describe('constants and names', () => {
  test('packet type numbers and Linux names', () => {
    assert.equal(VM_PKT_INVALID, 0);
    assert.equal(VM_PKT_DATA_INBAND, 6);
    assert.equal(VM_PKT_DATA_USING_GPA_DIRECT, 9);
    assert.equal(VM_PKT_COMP, 0xb);
    assert.equal(VM_PKT_ADDITIONAL_DATA, 0xd);
    assert.equal(packetTypeName(6), 'VM_PKT_DATA_INBAND');
    assert.equal(packetTypeName(0xb), 'VM_PKT_COMP');
    assert.equal(packetTypeName(0xd), 'VM_PKT_ADDITIONAL_DATA');
    assert.equal(packetTypeName(0xe), 'unknown(0xe)');
    assert.equal(packetTypeFromName('VM_PKT_DATA_USING_XFER_PAGES'), 7);
    assert.equal(packetTypeFromName('nope'), undefined);
    assert.equal(VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED, 1);
    assert.equal(VMPACKET_DESCRIPTOR_SIZE, 16);
    assert.equal(VMPACKET_TRAILER_SIZE, 8);
    assert.equal(MAX_PIPE_DATA_PAYLOAD, 16384);
  });

  test('transaction id halves round-trip exactly, numbers only when safe', () => {
    const id = 0x1122334455667788n;
    const lo = transactionIdLo(id);
    const hi = transactionIdHi(id);
    assert.equal(lo, 0x55667788);
    assert.equal(hi, 0x11223344);
    assert.equal(transactionIdBigInt(lo, hi), id);
    assert.equal(transactionIdNumber(lo, hi), -1);
    assert.equal(transactionIdNumber(5, 0), 5);
    assert.equal(transactionIdNumber(0xffffffff, 0x1fffff), Number.MAX_SAFE_INTEGER);
    assert.equal(transactionIdNumber(0, 0x200000), -1);
    assert.equal(transactionIdLo(2 ** 40 + 3), 3);
    assert.equal(transactionIdHi(2 ** 40 + 3), 2 ** 8);
    assert.equal(transactionIdHi(0xffff_ffff_ffff_ffffn), 0xffffffff);
    assert.throws(() => transactionIdLo(-1), RangeError);
    assert.throws(() => transactionIdHi((2 ** 64) as number), RangeError);
    assert.throws(() => transactionIdHi(1n << 64n), RangeError);
  });
});

describe('spec byte vectors', () => {
  test('1.10: inband 01 02 03, trans 0x1122334455667788, completion requested', () => {
    const buf = new Uint8Array(24);
    const n = encodePacket(
      {
        kind: 'inband',
        flags: VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
        transactionId: 0x1122334455667788n,
        payload: hex('010203'),
      },
      buf,
    );
    assert.equal(n, 24); // + 8-byte trailer = 32 in the ring
    assert.deepEqual(buf, hex('06 00 02 00 03 00 01 00 88 77 66 55 44 33 22 11 01 02 03 00 00 00 00 00'));
    const d = decodePacket(buf);
    assert.equal(d.kind, 'inband');
    assert.equal(d.transactionId, 0x1122334455667788n);
    assert.equal(d.transIdLo, 0x55667788);
    assert.equal(d.transIdHi, 0x11223344);
    assert.equal(d.offset8, 2);
    assert.equal(d.len8, 3);
    assert.equal(d.flags, 1);
    assert.deepEqual(d.payload, hex('0102030000000000'));
  });

  test('1.10: completion with 8 payload bytes for transaction 5', () => {
    const payload = hex('a1a2a3a4a5a6a7a8');
    const bytes = encodePacketToBytes({ kind: 'completion', transactionId: 5, payload });
    assert.deepEqual(bytes, hex(`0b 00 02 00 03 00 00 00 05 00 00 00 00 00 00 00 a1a2a3a4a5a6a7a8`));
    const d = decodePacket(bytes);
    assert.equal(d.kind, 'completion');
    assert.equal(d.typeName, 'VM_PKT_COMP');
    assert.equal(d.transactionId, 5n);
  });

  test('2.3: GPA direct, one range 0x2000@0x10 over PFNs 0x500-0x502, 16-byte payload, trans 7', () => {
    const payload = Uint8Array.from({ length: 16 }, (_, i) => 0xc0 + i);
    const spec: PacketSpec = {
      kind: 'gpa-direct',
      flags: 1,
      transactionId: 7,
      ranges: [{ byteCount: 0x2000, byteOffset: 0x10, pfns: [0x500, 0x501, 0x502] }],
      payload,
    };
    const bytes = encodePacketToBytes(spec);
    assert.equal(bytes.length, 72);
    const expected = hex(
      '09 00 07 00 09 00 01 00 07 00 00 00 00 00 00 00' +
        '00 00 00 00 01 00 00 00' +
        '00 20 00 00 10 00 00 00' +
        '00 05 00 00 00 00 00 00 01 05 00 00 00 00 00 00 02 05 00 00 00 00 00 00',
    );
    assert.deepEqual(bytes.subarray(0, 56), expected);
    assert.deepEqual(bytes.subarray(56), payload);
    const d = decodePacket(bytes);
    assert.equal(d.kind, 'gpa-direct');
    assert.equal(d.offset8, 7);
    assert.equal(d.len8, 9);
    if (d.kind !== 'gpa-direct') return;
    assert.deepEqual(d.ranges, [{ byteCount: 0x2000, byteOffset: 0x10, pfns: [0x500, 0x501, 0x502] }]);
    assert.deepEqual(d.payload, payload);
  });
});

describe('decoder refusals', () => {
  const good = encodePacketToBytes({ kind: 'inband', payload: hex('0102030405060708') });
  const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

  test('short input', () => {
    expectWireError(() => decodePacket(good.subarray(0, 15)), 'truncated', 'vmpacket_descriptor');
    expectWireError(() => decodePacket(new Uint8Array(0)), 'truncated', 'vmpacket_descriptor');
  });

  test('offset8 < 2, offset8 > len8, len8 * 8 past the input', () => {
    const b = good.slice();
    dv(b).setUint16(2, 1, true);
    expectWireError(() => decodePacket(b), 'out-of-range', 'vmpacket_descriptor.offset8');
    dv(b).setUint16(2, 4, true);
    expectWireError(() => decodePacket(b), 'inconsistent', 'vmpacket_descriptor.offset8');
    dv(b).setUint16(2, 2, true);
    dv(b).setUint16(4, 4, true);
    expectWireError(() => decodePacket(b), 'truncated', 'vmpacket_descriptor.len8');
    // The same packet decodes at a non-zero offset and cannot read past its input.
    const shifted = new Uint8Array(40);
    shifted.set(good, 16);
    assert.equal(decodePacket(shifted, 16).kind, 'inband');
    expectWireError(() => decodePacket(shifted.subarray(0, 39), 16), 'truncated', 'vmpacket_descriptor.len8');
  });

  test('unknown type only refused by the strict decoder, raw type exposed', () => {
    const b = good.slice();
    dv(b).setUint16(0, 0x42, true);
    const d = decodePacket(b);
    assert.equal(d.kind, 'unknown');
    assert.equal(d.type, 0x42);
    assert.equal(d.typeName, 'unknown(0x42)');
    expectWireError(() => decodePacketStrict(b), 'unknown-type', 'vmpacket_descriptor.type');
    dv(b).setUint16(0, 1, true); // SYNCH: defined, no layout
    assert.equal(decodePacketStrict(b).kind, 'other');
  });

  const gpa = (ranges: GpaRange[]) => encodePacketToBytes({ kind: 'gpa-direct', flags: 1, ranges });

  test('GPA direct: range count overrunning the header', () => {
    const b = gpa([{ byteCount: 100, byteOffset: 0, pfns: [1] }]);
    dv(b).setUint32(20, 2, true);
    expectWireError(() => decodePacket(b), 'inconsistent', 'gpa_direct.rangecount');
    const c = gpa([{ byteCount: 100, byteOffset: 0, pfns: [1] }]);
    dv(c).setUint32(24, 5000, true); // byte_count now needs 2 PFNs
    expectWireError(() => decodePacket(c), 'inconsistent', 'gpa_direct.rangecount');
    const short = c.slice();
    dv(short).setUint16(2, 2, true); // header too short for the extension
    expectWireError(() => decodePacket(short), 'inconsistent', 'gpa_direct.rangecount');
  });

  test('GPA direct: byte_offset >= 4096, byte_count 0, PFN >= 2^52', () => {
    const b = gpa([{ byteCount: 100, byteOffset: 0, pfns: [1] }]);
    dv(b).setUint32(28, 4096, true);
    expectWireError(() => decodePacket(b), 'out-of-range', 'gpa_range.byte_offset');
    const c = gpa([{ byteCount: 100, byteOffset: 0, pfns: [1] }]);
    dv(c).setUint32(24, 0, true);
    expectWireError(() => decodePacket(c), 'out-of-range', 'gpa_range.byte_count');
    const e = gpa([{ byteCount: 100, byteOffset: 0, pfns: [2 ** 52 - 1] }]);
    assert.equal(decodePacket(e).kind, 'gpa-direct');
    dv(e).setUint32(36, 0x100000, true);
    expectWireError(() => decodePacket(e), 'out-of-range', 'gpa_range.pfn_array');
  });

  test('transfer pages, GPADL-family and additional-data headers that are too short', () => {
    const tp = encodePacketToBytes({
      kind: 'transfer-pages',
      transferPageSetId: 1,
      ranges: [{ byteCount: 1, byteOffset: 2 }],
    });
    dv(tp).setUint32(20, 2, true);
    expectWireError(() => decodePacket(tp), 'inconsistent', 'vmtransfer_page_packet_header.range_cnt');
    const gp = encodePacketToBytes({ kind: 'gpadl', gpadl: 9 });
    dv(gp).setUint16(2, 2, true);
    expectWireError(() => decodePacket(gp), 'inconsistent', 'vmgpadl_packet_header.gpadl');
    const ad = encodePacketToBytes({ kind: 'additional-data', totalBytes: 10, offset: 0, data: hex('0102') });
    dv(ad).setUint32(28, 9, true);
    expectWireError(() => decodePacket(ad), 'inconsistent', 'vmadditional_data.byte_cnt');
    const eg = encodePacketToBytes({
      kind: 'establish-gpadl',
      gpadl: 3,
      ranges: [{ byteCount: 8192, byteOffset: 0, pfns: [1, 2] }],
    });
    dv(eg).setUint32(20, 3, true);
    expectWireError(() => decodePacket(eg), 'inconsistent', 'vmestablish_gpadl.rangecount');
  });
});

describe('encoder', () => {
  test('every kind round-trips through decodePacket', () => {
    const p = hex('0102030405');
    const cases: PacketSpec[] = [
      {
        kind: 'transfer-pages',
        flags: 1,
        transactionId: 9n,
        transferPageSetId: 0xbeef,
        senderOwnsSet: 1,
        ranges: [
          { byteCount: 10, byteOffset: 20 },
          { byteCount: 30, byteOffset: 40 },
        ],
        payload: p,
      },
      { kind: 'gpadl', gpadl: 0xe1e10, reserved: 0 },
      { kind: 'add-transfer-page-set', gpadl: 0x100, transferPageSetId: 7 },
      { kind: 'remove-transfer-page-set', gpadl: 0x100, transferPageSetId: 7 },
      {
        kind: 'establish-gpadl',
        gpadl: 2,
        ranges: [
          { byteCount: 0, byteOffset: 0, pfns: [] },
          { byteCount: 5000, byteOffset: 4000, pfns: [1, 2, 3] },
        ],
      },
      { kind: 'teardown-gpadl', gpadl: 2 },
      { kind: 'additional-data', totalBytes: 2n ** 40n, offset: 8, data: hex('aabbccdd') },
      { kind: 'other', type: 0xa, extension: hex('0102030405060708') },
    ];
    for (const spec of cases) {
      const bytes = encodePacketToBytes(spec);
      assert.equal(bytes.length, encodedPacketLength(spec));
      const d = decodePacket(bytes);
      assert.equal(d.kind, spec.kind);
      for (const [k, v] of Object.entries(spec)) {
        if (k === 'payload' || k === 'kind' || k === 'transactionId') continue;
        if (k === 'totalBytes')
          assert.equal((d as unknown as Record<string, unknown>)[k], BigInt(v as bigint));
        else assert.deepEqual((d as unknown as Record<string, unknown>)[k], v, `${spec.kind}.${k}`);
      }
      assert.equal(d.transactionId, BigInt(spec.transactionId ?? 0));
      if (spec.payload) assert.deepEqual(d.payload.subarray(0, spec.payload.length), spec.payload);
      // Re-encoding the decoded packet gives the same bytes.
      assert.deepEqual(encodePacketToBytes({ ...(d as unknown as PacketSpec), payload: d.payload }), bytes);
    }
  });

  test('malformed GPA ranges and oversized packets are caller errors', () => {
    assert.throws(() => checkGpaRanges([{ byteCount: 10, byteOffset: 0, pfns: [1, 2] }]), RangeError);
    assert.throws(() => checkGpaRanges([{ byteCount: 0, byteOffset: 0, pfns: [] }]), RangeError);
    assert.throws(() => checkGpaRanges([{ byteCount: 1, byteOffset: 4096, pfns: [1, 2] }]), RangeError);
    assert.throws(() => checkGpaRanges([{ byteCount: 1, byteOffset: 0, pfns: [2 ** 52] }]), RangeError);
    checkGpaRanges([{ byteCount: 0, byteOffset: 0, pfns: [] }], true);
    assert.throws(
      () => encodePacketToBytes({ kind: 'inband', payload: new Uint8Array(0x10000 * 8) }),
      RangeError,
    );
    assert.throws(() => encodePacket({ kind: 'inband', payload: hex('01') }, new Uint8Array(23)), RangeError);
  });

  test('property: random specs round-trip and decode to what was encoded', () => {
    const range = fc
      .record({
        byteOffset: fc.integer({ min: 0, max: 4095 }),
        byteCount: fc.integer({ min: 1, max: 20000 }),
      })
      .chain(({ byteOffset, byteCount }) =>
        fc
          .array(fc.integer({ min: 0, max: 2 ** 52 - 1 }), {
            minLength: Math.ceil((byteOffset + byteCount) / 4096),
            maxLength: Math.ceil((byteOffset + byteCount) / 4096),
          })
          .map((pfns) => ({ byteOffset, byteCount, pfns })),
      );
    const spec = fc.oneof(
      fc.record({ kind: fc.constantFrom('inband' as const, 'completion' as const) }),
      fc.record({
        kind: fc.constant('gpa-direct' as const),
        ranges: fc.array(range, { minLength: 1, maxLength: 4 }),
      }),
    );
    fc.assert(
      fc.property(
        spec,
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.integer({ min: 0, max: 0xffff }),
        fc.uint8Array({ maxLength: 300 }),
        (s, id, flags, payload) => {
          const full = { ...s, transactionId: id, flags, payload } as PacketSpec;
          const bytes = encodePacketToBytes(full);
          const d = decodePacketStrict(bytes);
          assert.equal(d.kind, s.kind);
          assert.equal(d.transactionId, id);
          assert.equal(d.flags, flags);
          assert.equal(d.packetLength, bytes.length);
          assert.deepEqual(d.payload.subarray(0, payload.length), payload);
          assert.ok(d.payload.subarray(payload.length).every((x) => x === 0));
          if (d.kind === 'gpa-direct' && s.kind === 'gpa-direct') assert.deepEqual(d.ranges, s.ranges);
        },
      ),
      { numRuns: 300 },
    );
  });

  test('fuzz: decoding arbitrary or mutated bytes throws only WireError', () => {
    const seed = encodePacketToBytes({
      kind: 'gpa-direct',
      flags: 1,
      ranges: [{ byteCount: 5000, byteOffset: 100, pfns: [1, 2] }],
      payload: hex('0102030405060708'),
    });
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 200 }),
          fc
            .array(fc.tuple(fc.nat(seed.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 6 })
            .map((muts) => {
              const b = seed.slice();
              for (const [i, v] of muts) b[i] = v;
              return b;
            }),
        ),
        fc.integer({ min: 0, max: 0xd }),
        (bytes, type) => {
          if (bytes.length >= 2 && type % 3 === 0) new DataView(bytes.buffer).setUint16(0, type, true);
          for (const strict of [false, true]) {
            try {
              const d = decodePacket(bytes, 0, { strict });
              assert.ok(d.packetLength <= bytes.length);
            } catch (e) {
              assert.ok(e instanceof WireError, String(e));
            }
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('allocation-free accessors', () => {
  test('readDescriptor fills a reused object and validates lengths', () => {
    const b = new Uint8Array(64);
    const dv = new DataView(b.buffer);
    writeDescriptor(dv, 8, 6, 2, 4, 1, 0x55667788, 0x11223344);
    const d = new PacketDescriptor();
    assert.equal(readDescriptor(dv, 8, 32, d), d);
    assert.equal(d.type, 6);
    assert.equal(d.headerLength, 16);
    assert.equal(d.packetLength, 32);
    assert.equal(d.payloadLength, 16);
    assert.equal(d.completionRequested, true);
    assert.equal(d.transactionId, 0x1122334455667788n);
    assert.equal(d.transactionIdNumber, -1);
    expectWireError(() => readDescriptor(dv, 8, 31, d), 'truncated', 'vmpacket_descriptor.len8');
  });

  test('GPA-direct ranges walked in place', () => {
    const ranges = [
      { byteCount: 4096, byteOffset: 0, pfns: [0x1234] },
      { byteCount: 5000, byteOffset: 4000, pfns: [7, 8, 2 ** 50] },
    ];
    const buf = new Uint8Array(128);
    const dv = new DataView(buf.buffer);
    const hl = encodeGpaDirectHeader(dv, 0, 1, 0x42, 0, ranges, 4);
    assert.equal(hl, 24 + 16 + 32);
    assert.equal(gpaDirectRangeCount(dv, 0, hl), 2);
    let r = 24;
    assert.equal(gpaRangeByteCount(dv, r), 4096);
    assert.equal(gpaRangePfn(dv, r, 0), 0x1234);
    r = gpaRangeEnd(dv, r);
    assert.equal(gpaRangeByteOffset(dv, r), 4000);
    assert.equal(gpaRangePfnCount(dv, r), 3);
    assert.equal(gpaRangePfn(dv, r, 2), 2 ** 50);
    assert.equal(gpaRangeEnd(dv, r), hl);
    expectWireError(() => gpaDirectRangeCount(dv, 0, hl - 8), 'inconsistent', 'gpa_direct.rangecount');
    expectWireError(
      () => transferPagesRangeCount(dv, 0, 16),
      'inconsistent',
      'vmtransfer_page_packet_header.range_cnt',
    );
  });
});

describe('pipe header', () => {
  test('encode/decode and refusals', () => {
    const b = new Uint8Array(24);
    assert.equal(encodePipeHeader(b, 0, VMBUS_PIPE_TYPE_DATA, 16), 8);
    assert.deepEqual(b.subarray(0, 8), hex('01000000 10000000'));
    assert.deepEqual(decodePipeHeader(b, 0, 24), { packetType: 1, len: 16 });
    expectWireError(() => decodePipeHeader(b, 0, 23), 'inconsistent', 'pipe_header.len');
    expectWireError(() => decodePipeHeader(b, 17), 'truncated', 'pipe_header');
    encodePipeHeader(b, 0, VMBUS_PIPE_TYPE_DATA, MAX_PIPE_DATA_PAYLOAD + 1);
    expectWireError(() => decodePipeHeader(b), 'oversized', 'pipe_header.len');
    encodePipeHeader(b, 0, VMBUS_PIPE_TYPE_PARTIAL, (5 << 16) | 10);
    assert.deepEqual(decodePipeHeader(b, 0, 24), { packetType: 2, len: (5 << 16) | 10 });
    encodePipeHeader(b, 0, VMBUS_PIPE_TYPE_TEARDOWN_GPA_DIRECT + 1, 0);
    expectWireError(() => decodePipeHeader(b), 'unknown-type', 'pipe_header.packet_type');
  });
});
