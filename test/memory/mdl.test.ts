// Tests for MDLs and PFN arrays: builders, validation, chain helpers, slicing, and the read/write
// helpers checked against a byte-by-byte reference model, with scattered pages and chains.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { PageAllocator } from '../../src/memory/allocator.js';
import { GuestMemory, MemoryAccessError, PAGE_SIZE } from '../../src/memory/guest-memory.js';
import {
  chainMdls,
  forEachMdl,
  type Mdl,
  mdlChainByteCount,
  mdlChainLength,
  mdlChainPfns,
  mdlFromGpaRange,
  mdlFromPfns,
  mdlRead,
  mdlSlice,
  mdlWrite,
  pfnArrayRead,
  pfnArrayWrite,
  validateMdl,
} from '../../src/memory/mdl.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof MemoryAccessError) return e.code;
    throw e;
  }
  return 'no error';
}

/** Reference model: the GPA of every byte of the chain, in order. */
function chainGpas(mdl: Mdl): number[] {
  const out: number[] = [];
  for (let m: Mdl | null | undefined = mdl; m != null; m = m.next) {
    for (let i = 0; i < m.byteCount; i++) {
      const pos = m.byteOffset + i;
      out.push(m.pfns[Math.floor(pos / PAGE_SIZE)] * PAGE_SIZE + (pos % PAGE_SIZE));
    }
  }
  return out;
}

function randomFill(mem: GuestMemory, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < mem.size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    mem.bytes[i] = x & 0xff;
  }
}

/** Counts `set` calls on one typed array (own-property shadowing of the prototype method). */
function countSets(target: Uint8Array): { calls: number; restore(): void } {
  const counter = {
    calls: 0,
    restore: () => {
      delete (target as { set?: unknown }).set;
    },
  };
  const original = Uint8Array.prototype.set;
  Object.defineProperty(target, 'set', {
    configurable: true,
    value(this: Uint8Array, ...args: Parameters<Uint8Array['set']>) {
      counter.calls++;
      return original.apply(this, args);
    },
  });
  return counter;
}

describe('MDL builders and validation', () => {
  test('mdlFromGpaRange describes a contiguous range', () => {
    const mem = new GuestMemory(1024 * 1024);
    const mdl = mdlFromGpaRange(mem, 3 * PAGE_SIZE + 100, 2 * PAGE_SIZE);
    assert.equal(mdl.byteOffset, 100);
    assert.equal(mdl.byteCount, 2 * PAGE_SIZE);
    assert.deepEqual(Array.from(mdl.pfns), [3, 4, 5]);
    assert.deepEqual(Array.from(mdlFromGpaRange(mem, 0, PAGE_SIZE).pfns), [0]);
    assert.equal(
      code(() => mdlFromGpaRange(mem, mem.size - 10, 11)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mdlFromGpaRange(mem, mem.size - 10, 10)),
      'no error',
    );
  });

  test('mdlFromPfns from an allocation, default byte count, shape errors', () => {
    const mem = new GuestMemory(1024 * 1024);
    const pfns = new PageAllocator(mem, { seed: 9 }).allocateScattered(3);
    const whole = mdlFromPfns(pfns);
    assert.equal(whole.byteCount, 3 * PAGE_SIZE);
    const part = mdlFromPfns(pfns, 10, 2 * PAGE_SIZE + 1);
    assert.equal(part.byteCount, 2 * PAGE_SIZE + 1);
    assert.equal(validateMdl(mem, part), 2 * PAGE_SIZE + 1);
    assert.equal(
      code(() => mdlFromPfns(pfns, 4096, 10)),
      'invalid',
    );
    assert.equal(
      code(() => mdlFromPfns(pfns, -1, 10)),
      'invalid',
    );
    assert.equal(
      code(() => mdlFromPfns(pfns, 0, 2 * PAGE_SIZE)),
      'invalid',
    ); // needs 2 PFNs, has 3
    assert.equal(
      code(() => mdlFromPfns(pfns, 4000, 2 * PAGE_SIZE + 97)),
      'invalid',
    ); // needs 4
    assert.equal(
      code(() => mdlFromPfns(pfns, 4000, 2 * PAGE_SIZE + 96)),
      'no error',
    );
    assert.equal(
      code(() => mdlFromPfns([1], 0, 1.5)),
      'invalid',
    );
  });

  test('validateMdl: PFNs outside RAM are out-of-bounds, loops are invalid', () => {
    const mem = new GuestMemory(64 * PAGE_SIZE);
    assert.equal(
      code(() => validateMdl(mem, mdlFromPfns([1, 64]))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => validateMdl(mem, mdlFromPfns([1, -1]))),
      'out-of-bounds',
    );
    const a = mdlFromPfns([1]);
    const b = mdlFromPfns([2]);
    const c = mdlFromPfns([3]);
    chainMdls([a, b, c]);
    c.next = b;
    assert.equal(
      code(() => validateMdl(mem, a)),
      'invalid',
    );
    assert.equal(
      code(() => mdlChainByteCount(a)),
      'invalid',
    );
    a.next = a;
    assert.equal(
      code(() => mdlChainLength(a)),
      'invalid',
    );
    const empty = mdlFromPfns([], 0, 0);
    empty.next = empty;
    assert.equal(
      code(() => mdlRead(mem, empty, 1, new Uint8Array(0))),
      'invalid',
    );
  });

  test('chains: length, byte count, PFNs, forEachMdl order', () => {
    const chain = chainMdls([
      mdlFromPfns([5, 9], 100, 5000),
      mdlFromPfns([2], 0, 10),
      mdlFromPfns([7], 4095, 1),
    ]);
    assert.equal(mdlChainLength(chain), 3);
    assert.equal(mdlChainByteCount(chain), 5011);
    assert.deepEqual(mdlChainPfns(chain), [5, 9, 2, 7]);
    const seen: number[] = [];
    forEachMdl(chain, (m, i) => seen.push(i, m.byteCount));
    assert.deepEqual(seen, [0, 5000, 1, 10, 2, 1]);
    assert.equal(
      code(() => chainMdls([])),
      'invalid',
    );
  });

  test('mdlSlice keeps the bytes of the sub-range', () => {
    const mem = new GuestMemory(64 * PAGE_SIZE);
    randomFill(mem, 5);
    const chain = chainMdls([mdlFromPfns([5, 9, 3], 100, 9000), mdlFromPfns([20, 2], 4000, 200)]);
    const gpas = chainGpas(chain);
    for (const [off, len] of [
      [0, 9200],
      [4000, 100],
      [8990, 20],
      [9000, 200],
      [9100, 100],
      [9200, 0],
    ]) {
      const slice = mdlSlice(chain, off, len);
      assert.equal(mdlChainByteCount(slice), len);
      assert.deepEqual(chainGpas(slice), gpas.slice(off, off + len), `slice ${off}+${len}`);
      validateMdl(mem, slice);
    }
    assert.equal(mdlChainByteCount(mdlSlice(chain, 1000)), 8200);
    assert.equal(
      code(() => mdlSlice(chain, 9100, 101)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mdlSlice(chain, 9201)),
      'out-of-bounds',
    );
  });
});

describe('MDL and PFN-array reads and writes', () => {
  test('read and write across page boundaries with scattered pages', () => {
    const mem = new GuestMemory(1024 * 1024);
    randomFill(mem, 1);
    const pfns = new PageAllocator(mem, { seed: 4 }).allocateScattered(5);
    const mdl = mdlFromPfns(pfns, 1000, 4 * PAGE_SIZE);
    const gpas = chainGpas(mdl);
    const dst = new Uint8Array(6000);
    mdlRead(mem, mdl, 3000, dst);
    for (let i = 0; i < dst.length; i++) assert.equal(dst[i], mem.bytes[gpas[3000 + i]]);
    const src = new Uint8Array(9000).map((_, i) => (i * 7 + 3) & 0xff);
    mdlWrite(mem, mdl, 100, src);
    for (let i = 0; i < src.length; i++) assert.equal(mem.bytes[gpas[100 + i]], src[i]);
  });

  test('runs of adjacent pages are copied with one set; scattered pages with one per page', () => {
    const mem = new GuestMemory(1024 * 1024);
    const contiguous = mdlFromPfns(new PageAllocator(mem).allocateContiguous(16));
    const scattered = mdlFromPfns(new PageAllocator(mem, { seed: 2 }).allocateScattered(16));
    const data = new Uint8Array(64 * 1024).fill(0x5a);
    const counter = countSets(mem.bytes);
    try {
      mdlWrite(mem, contiguous, 0, data);
      assert.equal(counter.calls, 1);
      counter.calls = 0;
      mdlWrite(mem, scattered, 0, data);
      assert.equal(counter.calls, 16);
    } finally {
      counter.restore();
    }
    const out = new Uint8Array(64 * 1024);
    const outCounter = countSets(out);
    try {
      mdlRead(mem, contiguous, 0, out);
      assert.equal(outCounter.calls, 1);
      outCounter.calls = 0;
      mdlRead(mem, scattered, 0, out);
      assert.equal(outCounter.calls, 16);
      outCounter.calls = 0;
      mdlRead(mem, mdlFromPfns([10, 11, 12, 40, 41, 7]), 100, out.subarray(0, 6 * PAGE_SIZE - 100));
      assert.equal(outCounter.calls, 0); // the copies went to the subarray object
      const six = new Uint8Array(6 * PAGE_SIZE - 100);
      const sixCounter = countSets(six);
      mdlRead(mem, mdlFromPfns([10, 11, 12, 40, 41, 7]), 100, six);
      assert.equal(sixCounter.calls, 3); // runs 10-12, 40-41, 7
      sixCounter.restore();
    } finally {
      outCounter.restore();
    }
  });

  test('chained MDLs read and write as one buffer', () => {
    const mem = new GuestMemory(64 * PAGE_SIZE);
    randomFill(mem, 3);
    const chain = chainMdls([
      mdlFromPfns([7], 4000, 96),
      mdlFromPfns([8, 30], 50, 5000),
      mdlFromPfns([2], 10, 0),
      mdlFromPfns([3], 1, 10),
    ]);
    const gpas = chainGpas(chain);
    assert.equal(gpas.length, 5106);
    const dst = new Uint8Array(5106);
    mdlRead(mem, chain, 0, dst);
    assert.deepEqual(
      Array.from(dst),
      gpas.map((g) => mem.bytes[g]),
    );
    assert.equal(
      code(() => mdlWrite(mem, chain, 5000, new Uint8Array(107))),
      'out-of-bounds',
    );
    const src = new Uint8Array(106).fill(0xee);
    mdlWrite(mem, chain, 5000, src);
    for (let i = 0; i < 106; i++) assert.equal(mem.bytes[gpas[5000 + i]], 0xee);
  });

  test('out-of-bounds and malformed accesses are refused and copy nothing', () => {
    const mem = new GuestMemory(64 * PAGE_SIZE);
    const chain = chainMdls([mdlFromPfns([7], 0, 100), mdlFromPfns([8], 0, 100)]);
    const before = Uint8Array.from(mem.bytes);
    assert.equal(
      code(() => mdlWrite(mem, chain, 150, new Uint8Array(51).fill(1))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mdlWrite(mem, chain, 201, new Uint8Array(0))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mdlWrite(mem, chain, 200, new Uint8Array(0))),
      'no error',
    );
    assert.equal(
      code(() => mdlRead(mem, chain, -1, new Uint8Array(1))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mdlRead(mem, chain, 0.5, new Uint8Array(1))),
      'out-of-bounds',
    );
    // A bad PFN in the second MDL refuses the whole write, including the part in the first.
    const bad = chainMdls([mdlFromPfns([7], 0, 100), { byteOffset: 0, byteCount: 100, pfns: [64] }]);
    assert.equal(
      code(() => mdlWrite(mem, bad, 50, new Uint8Array(100).fill(1))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mdlWrite(mem, bad, 0, new Uint8Array(100).fill(1))),
      'no error',
    ); // bad PFN untouched
    mem.bytes.fill(0, 7 * PAGE_SIZE, 8 * PAGE_SIZE);
    // Malformed MDLs in the chain.
    const wrongCount = chainMdls([mdlFromPfns([7], 0, 100), { byteOffset: 0, byteCount: 5000, pfns: [8] }]);
    assert.equal(
      code(() => mdlWrite(mem, wrongCount, 0, new Uint8Array(150).fill(1))),
      'invalid',
    );
    const wrongOffset: Mdl = { byteOffset: 4096, byteCount: 1, pfns: [1, 2] };
    assert.equal(
      code(() => mdlRead(mem, wrongOffset, 0, new Uint8Array(1))),
      'invalid',
    );
    assert.deepEqual(mem.bytes, before);
  });

  test('PFN arrays: whole pages in order', () => {
    const mem = new GuestMemory(64 * PAGE_SIZE);
    randomFill(mem, 8);
    const pfns = [9, 3, 4, 60];
    const gpas = chainGpas(mdlFromPfns(pfns));
    const dst = new Uint8Array(3 * PAGE_SIZE);
    pfnArrayRead(mem, pfns, 2000, dst);
    assert.deepEqual(
      Array.from(dst),
      gpas.slice(2000, 2000 + dst.length).map((g) => mem.bytes[g]),
    );
    const src = new Uint8Array(PAGE_SIZE + 10).fill(0x11);
    pfnArrayWrite(mem, Uint32Array.from(pfns), 3 * PAGE_SIZE - 10, src);
    for (let i = 0; i < src.length; i++) assert.equal(mem.bytes[gpas[3 * PAGE_SIZE - 10 + i]], 0x11);
    assert.equal(
      code(() => pfnArrayRead(mem, pfns, 4 * PAGE_SIZE - 1, new Uint8Array(2))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => pfnArrayRead(mem, [1, 64], 0, new Uint8Array(PAGE_SIZE + 1))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => pfnArrayRead(mem, [1, 64], 0, new Uint8Array(PAGE_SIZE))),
      'no error',
    );
  });

  test('property: chain reads and writes match the byte-by-byte model', () => {
    const pages = 32;
    const mdlArb = fc
      .record({
        byteOffset: fc.integer({ min: 0, max: 4095 }),
        byteCount: fc.integer({ min: 0, max: 3 * PAGE_SIZE }),
      })
      .chain(({ byteOffset, byteCount }) =>
        fc
          .array(fc.integer({ min: 0, max: pages - 1 }), {
            minLength: Math.ceil((byteOffset + byteCount) / PAGE_SIZE),
            maxLength: Math.ceil((byteOffset + byteCount) / PAGE_SIZE),
          })
          .map((pfns): Mdl => ({ byteOffset, byteCount, pfns, next: null })),
      );
    fc.assert(
      fc.property(
        fc.array(mdlArb, { minLength: 1, maxLength: 4 }),
        fc.nat(),
        fc.nat(),
        fc.boolean(),
        fc.integer(),
        (mdls, a, b, write, seed) => {
          const mem = new GuestMemory(pages * PAGE_SIZE);
          randomFill(mem, seed);
          const chain = chainMdls(mdls);
          const gpas = chainGpas(chain);
          const total = gpas.length;
          const offset = a % (total + 2); // sometimes past the end
          const length = b % (total + 2 - offset + 1);
          const fits = offset + length <= total;
          const expected = Uint8Array.from(mem.bytes);
          const buf = new Uint8Array(length);
          if (write) {
            for (let i = 0; i < length; i++) buf[i] = (i * 31 + seed) & 0xff;
            if (fits) for (let i = 0; i < length; i++) expected[gpas[offset + i]] = buf[i];
            const c = code(() => mdlWrite(mem, chain, offset, buf));
            assert.equal(c, fits ? 'no error' : 'out-of-bounds');
            assert.deepEqual(mem.bytes, expected);
          } else {
            const c = code(() => mdlRead(mem, chain, offset, buf));
            assert.equal(c, fits ? 'no error' : 'out-of-bounds');
            if (fits) for (let i = 0; i < length; i++) assert.equal(buf[i], expected[gpas[offset + i]]);
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});
