// GPADL messages: splitting range lists into GPADL_HEADER + GPADL_BODY within 240 bytes, reassembly, limits and refusals.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { WireError } from '../../src/wire/errors.js';
import {
  type CompletedGpadl,
  decodeGpaRanges,
  encodeGpaRanges,
  GPADL_MAX_PAGES_ONE_RANGE,
  GpadlError,
  type GpadlLimits,
  GpadlReassembler,
  type GpaRange,
  gpadlMessageCount,
  gpaRangesByteLength,
  pageRange,
  parseGpadlHeaderRanges,
  scanGpaRanges,
  splitGpadl,
} from '../../src/wire/gpadl.js';
import {
  type ChannelMessage,
  decodeMessage,
  type GpadlBodyMessage,
  type GpadlHeaderMessage,
} from '../../src/wire/messages.js';

const LIMITS: GpadlLimits = { maxRanges: 64, maxPfns: 1 << 20, maxBytes: 2 ** 40 };

const pfnsFrom = (start: number, n: number) => Array.from({ length: n }, (_, i) => start + i);

/** Feeds messages (bytes) to a reassembler; returns the completed GPADL (exactly one expected, last). */
function reassemble(r: GpadlReassembler, messages: Uint8Array[]): CompletedGpadl {
  let done: CompletedGpadl | undefined;
  messages.forEach((bytes, i) => {
    assert.equal(done, undefined, 'completed before the last message');
    const m = decodeMessage(bytes);
    done = m.type === 8 ? r.header(m) : m.type === 9 ? r.body(m) : assert.fail(`unexpected type ${m.type}`);
    if (i < messages.length - 1) assert.equal(done, undefined);
  });
  assert.ok(done !== undefined);
  return done;
}

function checkMessages(messages: Uint8Array[], relid: number, gpadl: number, ranges: GpaRange[]): void {
  const len = gpaRangesByteLength(ranges);
  assert.equal(messages.length, gpadlMessageCount(len));
  const header = decodeMessage(messages[0]!) as GpadlHeaderMessage;
  assert.equal(header.type, 8);
  assert.equal(header.childRelid, relid);
  assert.equal(header.gpadl, gpadl);
  assert.equal(header.rangeBufLen, len);
  assert.equal(header.rangeCount, ranges.length);
  assert.equal(header.rangeData.length, Math.min(len, 27 * 8));
  for (const bytes of messages.slice(1)) {
    const body = decodeMessage(bytes) as GpadlBodyMessage;
    assert.equal(body.type, 9);
    assert.equal(body.gpadl, gpadl);
    assert.equal(body.msgNumber, 0);
    assert.equal(body.trailing, undefined);
  }
  for (const bytes of messages) assert.ok(bytes.length <= 240, `${bytes.length} bytes`);
  // all but the last message are full
  for (const bytes of messages.slice(0, -1)) assert.ok(bytes.length >= 236);
}

describe('splitGpadl + GpadlReassembler', () => {
  for (const [pages, count] of [
    [1, 1],
    [26, 1],
    [27, 2],
    [54, 2],
    [55, 3],
  ] as const) {
    test(`${pages} pages -> ${count} message(s), reassembled exactly`, () => {
      const ranges = [pageRange(pfnsFrom(0x1000, pages))];
      const messages = splitGpadl(3, 0xe1e10, ranges);
      assert.equal(messages.length, count);
      checkMessages(messages, 3, 0xe1e10, ranges);
      const r = new GpadlReassembler(LIMITS);
      const done = reassemble(r, messages);
      assert.deepEqual(done.ranges, ranges);
      assert.equal(done.childRelid, 3);
      assert.equal(done.gpadl, 0xe1e10);
      assert.equal(done.pfnCount, pages);
      assert.equal(done.byteCount, pages * 4096);
      assert.equal(done.rangeData.length, 8 + 8 * pages);
      assert.equal(r.pendingCount, 0);
    });
  }

  test('26 pages fill the header exactly (236 bytes); 27 spill one PFN into a 24-byte body', () => {
    assert.equal(splitGpadl(1, 1, [pageRange(pfnsFrom(0, 26))])[0]!.length, 236);
    const m = splitGpadl(1, 1, [pageRange(pfnsFrom(0, 27))]);
    assert.deepEqual(
      m.map((b) => b.length),
      [236, 24],
    );
    assert.deepEqual((decodeMessage(m[1]!) as GpadlBodyMessage).pfns, [26]);
  });

  test('the spec ring example', () => {
    const [header] = splitGpadl(1, 0xe1e10, [pageRange([0x1000, 0x1001, 0x1002, 0x1003])]);
    assert.equal(
      Buffer.from(header!).toString('hex'),
      '08000000' +
        '00000000' +
        '01000000' +
        '101e0e00' +
        '2800' +
        '0100' +
        '00400000' +
        '00000000' +
        '0010000000000000' +
        '0110000000000000' +
        '0210000000000000' +
        '0310000000000000',
    );
  });

  test('multi-range GPADLs with offsets, range headers crossing message boundaries', () => {
    const ranges: GpaRange[] = [
      { byteCount: 100, byteOffset: 4000, pfns: [7, 9] },
      { byteCount: 30 * 4096, byteOffset: 0, pfns: pfnsFrom(0x2000, 30) },
      { byteCount: 1, byteOffset: 4095, pfns: [2 ** 52 - 1] },
      { byteCount: 5 * 4096 - 10, byteOffset: 10, pfns: pfnsFrom(0x9000, 5) },
    ];
    const messages = splitGpadl(9, 77, ranges);
    checkMessages(messages, 9, 77, ranges);
    const done = reassemble(new GpadlReassembler(LIMITS), messages);
    assert.deepEqual(done.ranges, ranges);
    assert.equal(done.pfnCount, 38);
    assert.equal(done.byteCount, 100 + 30 * 4096 + 1 + 5 * 4096 - 10);
  });

  test('property: any valid range list splits into <= 240-byte messages and reassembles exactly', () => {
    const rangeArb = fc
      .record({
        byteOffset: fc.integer({ min: 0, max: 4095 }),
        byteCount: fc.integer({ min: 1, max: 70 * 4096 }),
      })
      .chain(({ byteOffset, byteCount }) =>
        fc
          .array(fc.integer({ min: 0, max: 2 ** 52 - 1 }), {
            minLength: Math.ceil((byteOffset + byteCount) / 4096),
            maxLength: Math.ceil((byteOffset + byteCount) / 4096),
          })
          .map((pfns) => ({ byteOffset, byteCount, pfns })),
      );
    fc.assert(
      fc.property(
        fc.array(rangeArb, { minLength: 1, maxLength: 6 }),
        fc.nat(),
        fc.nat(),
        (ranges, relid, id) => {
          const messages = splitGpadl(relid, id, ranges);
          checkMessages(messages, relid, id, ranges);
          assert.deepEqual(reassemble(new GpadlReassembler(LIMITS), messages).ranges, ranges);
        },
      ),
      { numRuns: 150 },
    );
  });

  test(`the largest wire GPADL (${GPADL_MAX_PAGES_ONE_RANGE} pages, range_buflen 65528) reassembles exactly`, () => {
    const ranges = [pageRange(pfnsFrom(0x100000, GPADL_MAX_PAGES_ONE_RANGE))];
    const messages = splitGpadl(1, 5, ranges);
    assert.equal(messages.length, 1 + Math.ceil((GPADL_MAX_PAGES_ONE_RANGE + 1 - 27) / 28));
    checkMessages(messages, 1, 5, ranges);
    assert.deepEqual(reassemble(new GpadlReassembler(LIMITS), messages).ranges, ranges);
  });

  test('a 262,144-page (1 GiB) GPADL cannot be described: range_buflen is a u16', () => {
    assert.throws(() => splitGpadl(1, 1, [pageRange(pfnsFrom(0, 262144))]), /range_buflen/);
    assert.throws(
      () => splitGpadl(1, 1, [pageRange(pfnsFrom(0, GPADL_MAX_PAGES_ONE_RANGE + 1))]),
      RangeError,
    );
  });

  test('1 GiB as 33 interleaved GPADLs (262,144 pages) all reassemble exactly', () => {
    const r = new GpadlReassembler(LIMITS);
    const per = GPADL_MAX_PAGES_ONE_RANGE;
    const lists: Uint8Array[][] = [];
    const expected: GpaRange[][] = [];
    for (let done = 0, id = 0; done < 262144; id++) {
      const n = Math.min(per, 262144 - done);
      const ranges = [pageRange(pfnsFrom(done, n))];
      expected.push(ranges);
      lists.push(splitGpadl(id % 4, 0xe1e10 + id, ranges));
      done += n;
    }
    assert.equal(lists.length, 33);
    const completed = new Map<number, CompletedGpadl>();
    const longest = Math.max(...lists.map((l) => l.length));
    for (let i = 0; i < longest; i++) {
      for (const list of lists) {
        const bytes = list[i];
        if (bytes === undefined) continue;
        assert.ok(bytes.length <= 240);
        const m = decodeMessage(bytes);
        const c = m.type === 8 ? r.header(m) : m.type === 9 ? r.body(m) : undefined;
        if (c !== undefined) completed.set(c.gpadl, c);
      }
    }
    assert.equal(completed.size, 33);
    let total = 0;
    expected.forEach((ranges, id) => {
      assert.deepEqual(completed.get(0xe1e10 + id)!.ranges, ranges);
      total += ranges[0]!.pfns.length;
    });
    assert.equal(total, 262144);
    assert.equal(r.pendingCount, 0);
  });

  test('splitGpadl refuses malformed ranges (caller error)', () => {
    assert.throws(() => splitGpadl(1, 1, []), RangeError);
    assert.throws(() => splitGpadl(-1, 1, [pageRange([1])]), RangeError);
    assert.throws(() => splitGpadl(1, 2 ** 32, [pageRange([1])]), RangeError);
    assert.throws(() => splitGpadl(1, 1, [{ byteCount: 0, byteOffset: 0, pfns: [] }]), RangeError);
    assert.throws(() => splitGpadl(1, 1, [{ byteCount: 1, byteOffset: 4096, pfns: [1, 2] }]), RangeError);
    assert.throws(() => splitGpadl(1, 1, [{ byteCount: 4097, byteOffset: 0, pfns: [1] }]), RangeError);
    assert.throws(() => splitGpadl(1, 1, [{ byteCount: 10, byteOffset: 0, pfns: [2 ** 52] }]), RangeError);
  });
});

// --- hostile input to the reassembler ---

const header = (over: Partial<GpadlHeaderMessage>): GpadlHeaderMessage => ({
  type: 8,
  childRelid: 4,
  gpadl: 100,
  rangeBufLen: 24,
  rangeCount: 1,
  rangeData: encodeGpaRanges([{ byteCount: 8192, byteOffset: 0, pfns: [1, 2] }]),
  ...over,
});
const body = (gpadl: number, pfns: number[], trailing?: Uint8Array): GpadlBodyMessage =>
  trailing === undefined
    ? { type: 9, msgNumber: 0, gpadl, pfns }
    : { type: 9, msgNumber: 0, gpadl, pfns, trailing };

function refused(fn: () => unknown, code: string, fieldPart: string, gpadl?: number): void {
  assert.throws(
    fn,
    (e: unknown) =>
      e instanceof GpadlError &&
      e instanceof WireError &&
      e.code === code &&
      e.field.includes(fieldPart) &&
      (gpadl === undefined || e.gpadl === gpadl),
    `${code} ${fieldPart}`,
  );
}

describe('GpadlReassembler refuses inconsistent data', () => {
  test('range_buflen not a multiple of 8', () => {
    refused(
      () => new GpadlReassembler(LIMITS).header(header({ rangeBufLen: 23 })),
      'misaligned',
      'range_buflen',
      100,
    );
  });

  test('a range count that overruns range_buflen', () => {
    refused(
      () => new GpadlReassembler(LIMITS).header(header({ rangeCount: 2 })),
      'inconsistent',
      'rangecount',
    );
    const data = encodeGpaRanges([{ byteCount: 8192, byteOffset: 0, pfns: [1, 2] }]);
    // 2 ranges announced, 32 bytes: the first range eats 24, the second has only 8 (header, no PFN)
    refused(
      () =>
        new GpadlReassembler(LIMITS).header(
          header({
            rangeCount: 2,
            rangeBufLen: 32,
            rangeData: Uint8Array.from([...data, 1, 0, 0, 0, 0, 0, 0, 0]),
          }),
        ),
      'inconsistent',
      'range[1].pfn_array',
    );
    // one range whose byte_count needs 3 PFNs in a 24-byte range list
    const over = encodeGpaRanges([{ byteCount: 8192, byteOffset: 0, pfns: [1, 2] }]);
    over[1] = 0x30; // byte_count 0x3000 -> 3 pages
    refused(
      () => new GpadlReassembler(LIMITS).header(header({ rangeData: over })),
      'inconsistent',
      'range[0].pfn_array',
    );
  });

  test('bytes of range_buflen left after the last range', () => {
    const data = Uint8Array.from([
      ...encodeGpaRanges([{ byteCount: 4096, byteOffset: 0, pfns: [1] }]),
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
    ]);
    refused(
      () => new GpadlReassembler(LIMITS).header(header({ rangeData: data })),
      'inconsistent',
      'range_buflen',
    );
  });

  test('byte_offset >= 4096 and byte_count 0', () => {
    const off = encodeGpaRanges([{ byteCount: 8192, byteOffset: 0, pfns: [1, 2] }]);
    off[5] = 0x10; // byte_offset 4096
    refused(
      () => new GpadlReassembler(LIMITS).header(header({ rangeData: off })),
      'out-of-range',
      'byte_offset',
    );
    const zero = encodeGpaRanges([{ byteCount: 8192, byteOffset: 0, pfns: [1, 2] }]);
    zero.fill(0, 0, 4);
    refused(
      () => new GpadlReassembler(LIMITS).header(header({ rangeData: zero })),
      'out-of-range',
      'byte_count',
    );
  });

  test('a PFN >= 2^52 inside the header range data', () => {
    const data = encodeGpaRanges([{ byteCount: 8192, byteOffset: 0, pfns: [1, 2] }]);
    data[23] = 0x80;
    refused(
      () => new GpadlReassembler(LIMITS).header(header({ rangeData: data })),
      'out-of-range',
      'pfn_array[1]',
    );
  });

  test('zero ranges', () => {
    refused(
      () => new GpadlReassembler(LIMITS).header(header({ rangeCount: 0 })),
      'out-of-range',
      'rangecount',
    );
  });

  test('a body for the wrong id, and more PFNs after the GPADL completed', () => {
    const r = new GpadlReassembler(LIMITS);
    const [h, b1] = splitGpadl(4, 100, [pageRange(pfnsFrom(0, 30))]).map(decodeMessage) as [
      GpadlHeaderMessage,
      GpadlBodyMessage,
    ];
    assert.equal(r.header(h), undefined);
    refused(() => r.body(body(101, [1, 2, 3])), 'inconsistent', 'GPADL_BODY.gpadl', 101);
    assert.ok(r.isPending(100), 'a stray body does not disturb the GPADL in progress');
    assert.ok(r.body(b1) !== undefined);
    refused(() => r.body(body(100, [5])), 'inconsistent', 'GPADL_BODY.gpadl', 100);
  });

  test('a header for an id already in progress', () => {
    const r = new GpadlReassembler(LIMITS);
    const [h] = splitGpadl(4, 100, [pageRange(pfnsFrom(0, 30))]).map(decodeMessage) as [GpadlHeaderMessage];
    r.header(h);
    refused(() => r.header(h), 'inconsistent', 'GPADL_HEADER.gpadl');
    assert.ok(r.isPending(100));
  });

  test('a partial u64 at the end of an incomplete message is ignored, as OpenVMM does', () => {
    const r = new GpadlReassembler(LIMITS);
    const ranges = [pageRange(pfnsFrom(0, 30))];
    const [h, b] = splitGpadl(4, 100, ranges).map(decodeMessage) as [GpadlHeaderMessage, GpadlBodyMessage];
    // header: 27 whole values + 4 stray bytes; body: the remaining 4 values after a 2-byte tail
    const data = new Uint8Array(220);
    data.set(h.rangeData);
    assert.equal(r.header({ ...h, rangeData: data }), undefined);
    assert.equal(r.body({ ...b, pfns: b.pfns.slice(0, 1), trailing: Uint8Array.of(1, 2) }), undefined);
    assert.deepEqual(r.body({ ...b, pfns: b.pfns.slice(1) })?.ranges, ranges);
  });

  test('limits: ranges, PFNs, bytes, GPADLs in progress', () => {
    const ranges = [pageRange([1]), pageRange([2]), pageRange([3])];
    const h3 = decodeMessage(splitGpadl(1, 1, ranges)[0]!) as GpadlHeaderMessage;
    refused(() => new GpadlReassembler({ ...LIMITS, maxRanges: 2 }).header(h3), 'out-of-range', 'rangecount');
    assert.ok(new GpadlReassembler({ ...LIMITS, maxRanges: 3 }).header(h3) !== undefined);
    refused(() => new GpadlReassembler({ ...LIMITS, maxPfns: 2 }).header(h3), 'out-of-range', 'range_buflen');
    refused(
      () => new GpadlReassembler({ ...LIMITS, maxBytes: 3 * 4096 - 1 }).header(h3),
      'out-of-range',
      'byte_count',
    );
    assert.ok(new GpadlReassembler({ ...LIMITS, maxBytes: 3 * 4096 }).header(h3) !== undefined);
    const r = new GpadlReassembler({ ...LIMITS, maxPending: 1 });
    const big = (id: number) =>
      decodeMessage(splitGpadl(1, id, [pageRange(pfnsFrom(0, 40))])[0]!) as GpadlHeaderMessage;
    r.header(big(1));
    refused(() => r.header(big(2)), 'out-of-range', 'gpadl', 2);
  });

  test('limits are checked on the header, before any body arrives', () => {
    const r = new GpadlReassembler({ ...LIMITS, maxPfns: 100 });
    const h = decodeMessage(splitGpadl(1, 1, [pageRange(pfnsFrom(0, 101))])[0]!) as GpadlHeaderMessage;
    refused(() => r.header(h), 'out-of-range', 'range_buflen');
    assert.equal(r.pendingCount, 0);
  });

  test('GpadlError says which channel failed', () => {
    const r = new GpadlReassembler(LIMITS);
    const [h, b] = splitGpadl(6, 200, [pageRange(pfnsFrom(0, 28))]).map(decodeMessage) as [
      GpadlHeaderMessage,
      GpadlBodyMessage,
    ];
    r.header(h);
    // corrupt the range header via a wrong last PFN count: feed the body with a bad value
    try {
      r.body({ ...b, pfns: [2 ** 52] });
      assert.fail('accepted');
    } catch (e) {
      assert.ok(e instanceof GpadlError);
      assert.equal(e.childRelid, 6);
      assert.equal(e.gpadl, 200);
    }
  });
});

describe('GpadlReassembler tolerates sender padding', () => {
  test('u64 values after range_buflen in the completing header (UEFI pads to 240 bytes)', () => {
    const h = header({});
    const padded = new Uint8Array(220).fill(0xcc);
    padded.set(h.rangeData);
    const done = new GpadlReassembler(LIMITS).header({ ...h, rangeData: padded });
    assert.deepEqual(done?.ranges, [{ byteCount: 8192, byteOffset: 0, pfns: [1, 2] }]);
    assert.equal(done?.rangeData.length, 24);
  });

  test('extra PFNs and a partial u64 after the end in the completing body', () => {
    const r = new GpadlReassembler(LIMITS);
    const [h, b] = splitGpadl(4, 100, [pageRange(pfnsFrom(0, 30))]).map(decodeMessage) as [
      GpadlHeaderMessage,
      GpadlBodyMessage,
    ];
    r.header(h);
    const done = r.body({ ...b, pfns: [...b.pfns, 0, 0, 0], trailing: Uint8Array.of(9, 9) });
    assert.deepEqual(done?.ranges, [pageRange(pfnsFrom(0, 30))]);
  });

  test('UEFI-style messages padded to 240 bytes decode and reassemble', () => {
    const ranges = [pageRange(pfnsFrom(0x500, 60))];
    const padded = splitGpadl(2, 3, ranges).map((m) => {
      const out = new Uint8Array(240);
      out.set(m);
      return out;
    });
    assert.deepEqual(reassemble(new GpadlReassembler(LIMITS), padded).ranges, ranges);
  });
});

describe('GpadlReassembler bookkeeping', () => {
  test('cancel, cancelChannel, clear', () => {
    const r = new GpadlReassembler(LIMITS);
    const start = (relid: number, id: number) =>
      r.header(decodeMessage(splitGpadl(relid, id, [pageRange(pfnsFrom(0, 40))])[0]!) as GpadlHeaderMessage);
    start(1, 10);
    start(1, 11);
    start(2, 12);
    assert.equal(r.pendingCount, 3);
    assert.ok(r.cancel(10));
    assert.ok(!r.cancel(10));
    assert.deepEqual(r.cancelChannel(1), [11]);
    assert.ok(r.isPending(12));
    r.clear();
    assert.equal(r.pendingCount, 0);
  });

  test('constructor refuses nonsensical limits', () => {
    assert.throws(() => new GpadlReassembler({ maxRanges: -1, maxPfns: 1, maxBytes: 1 }), RangeError);
    assert.throws(() => new GpadlReassembler({ maxRanges: 1, maxPfns: Number.NaN, maxBytes: 1 }), RangeError);
  });
});

describe('gpa_range list codec', () => {
  test('encode/decode round-trips; scan returns the end offset', () => {
    const ranges: GpaRange[] = [
      { byteCount: 10, byteOffset: 4090, pfns: [1, 2] },
      { byteCount: 4096, byteOffset: 0, pfns: [2 ** 52 - 1] },
    ];
    const bytes = encodeGpaRanges(ranges);
    assert.equal(bytes.length, gpaRangesByteLength(ranges));
    assert.equal(bytes.length, 8 + 16 + 8 + 8);
    const padded = Uint8Array.from([0xff, ...bytes, 0xee]);
    assert.equal(scanGpaRanges(padded, 1, padded.length, 2), 1 + bytes.length);
    assert.deepEqual(decodeGpaRanges(padded, 2, 1, padded.length), ranges);
  });

  test('decoding never reads past `end`', () => {
    const bytes = encodeGpaRanges([{ byteCount: 4096, byteOffset: 0, pfns: [5] }]);
    assert.throws(
      () => decodeGpaRanges(bytes, 1, 0, 15, 'gpa_direct'),
      (e: unknown) =>
        e instanceof WireError && e.code === 'inconsistent' && e.field === 'gpa_direct[0].pfn_array',
    );
    assert.throws(
      () => decodeGpaRanges(bytes, 2),
      (e: unknown) => e instanceof WireError && e.field === 'gpa_range[1]',
    );
  });

  test('parseGpadlHeaderRanges for a header that carries the whole list', () => {
    const h = decodeMessage(splitGpadl(1, 2, [pageRange([7, 8])])[0]!) as GpadlHeaderMessage;
    assert.deepEqual(parseGpadlHeaderRanges(h), [pageRange([7, 8])]);
    const partial = decodeMessage(splitGpadl(1, 2, [pageRange(pfnsFrom(0, 40))])[0]!) as GpadlHeaderMessage;
    assert.throws(
      () => parseGpadlHeaderRanges(partial),
      (e: unknown) => e instanceof WireError && e.code === 'truncated',
    );
    const spec = decodeMessage(
      Uint8Array.from(Buffer.from('08000000000000000500000001000000070006000a0b0c0d', 'hex')),
    );
    assert.throws(
      () => parseGpadlHeaderRanges(spec as GpadlHeaderMessage),
      (e: unknown) => e instanceof WireError && e.code === 'misaligned',
    );
  });
});

// keep the ChannelMessage import used for type narrowing helpers
export type _Unused = ChannelMessage;
