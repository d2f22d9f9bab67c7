// Tests for the guest's page allocator: contiguous and scattered allocation, free and reuse,
// exhaustion, invalid frees, determinism, a model-based property test, and speed at 1 GiB scale.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { PageAllocator } from '../../src/memory/allocator.js';
import { GuestMemory, MemoryAccessError } from '../../src/memory/guest-memory.js';

const MiB = 1024 * 1024;

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof MemoryAccessError) return e.code;
    throw e;
  }
  return 'no error';
}

describe('PageAllocator', () => {
  test('contiguous allocation returns adjacent PFNs and never page 0', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB));
    const a = alloc.allocateContiguous(5);
    assert.deepEqual(Array.from(a), [1, 2, 3, 4, 5]);
    const b = alloc.allocate(3);
    assert.deepEqual(Array.from(b), [6, 7, 8]);
    assert.equal(alloc.allocatedPageCount, 8);
    assert.equal(alloc.freePageCount, 256 - 1 - 8);
    assert.equal(alloc.isAllocated(0), false);
    assert.equal(alloc.isAllocated(5), true);
    assert.equal(alloc.isAllocated(9), false);
  });

  test('reservedLowPages keeps low pages out; 0 reserves nothing', () => {
    const mem = new GuestMemory(MiB);
    assert.deepEqual(
      Array.from(new PageAllocator(mem, { reservedLowPages: 16 }).allocateContiguous(2)),
      [16, 17],
    );
    assert.deepEqual(
      Array.from(new PageAllocator(mem, { reservedLowPages: 0 }).allocateContiguous(2)),
      [0, 1],
    );
    assert.equal(
      code(() => new PageAllocator(mem, { reservedLowPages: 257 })),
      'invalid',
    );
  });

  test('contiguous allocation finds the first run large enough, skipping fragments', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB));
    const all = alloc.allocateContiguous(255); // pages 1..255
    alloc.free([3, 4, 10, 11, 12, 13, 100, 101, 102]);
    assert.deepEqual(Array.from(alloc.allocateContiguous(3)), [10, 11, 12]);
    assert.deepEqual(Array.from(alloc.allocateContiguous(3)), [100, 101, 102]);
    assert.deepEqual(Array.from(alloc.allocateContiguous(2)), [3, 4]);
    assert.deepEqual(Array.from(alloc.allocateContiguous(1)), [13]);
    assert.equal(alloc.freePageCount, 0);
    assert.equal(all.length, 255);
  });

  test('contiguous runs spanning bitmap words', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB), { reservedLowPages: 30 });
    const run = alloc.allocateContiguous(100);
    assert.equal(run[0], 30);
    assert.equal(run[99], 129);
    const next = alloc.allocateContiguous(126);
    assert.deepEqual([next[0], next[125]], [130, 255]);
    assert.equal(
      code(() => alloc.allocateContiguous(1)),
      'exhausted',
    );
  });

  test('scattered allocation: shuffled, no two successive PFNs adjacent, all distinct', () => {
    const alloc = new PageAllocator(new GuestMemory(4 * MiB), { seed: 7 });
    const pfns = Array.from(alloc.allocateScattered(200));
    assert.equal(new Set(pfns).size, 200);
    for (const p of pfns) assert.ok(p >= 1 && p < 1024);
    for (let i = 1; i < pfns.length; i++)
      assert.notEqual(pfns[i], pfns[i - 1] + 1, `pfns[${i}] follows its predecessor`);
    const sorted = [...pfns].sort((x, y) => x - y);
    assert.notDeepEqual(pfns, sorted);
    for (const p of pfns) assert.ok(alloc.isAllocated(p));
  });

  test('scattered allocation avoids adjacency even when most free pages are adjacent', () => {
    for (let seed = 1; seed <= 50; seed++) {
      const alloc = new PageAllocator(new GuestMemory(16 * 4096), { seed });
      const pfns = alloc.allocateScattered(10); // 15 free pages: a choice always remains
      for (let i = 1; i < pfns.length; i++) assert.notEqual(pfns[i], pfns[i - 1] + 1, `seed ${seed}`);
    }
  });

  test('scattered allocation is deterministic from the seed', () => {
    const run = (seed: number) => {
      const alloc = new PageAllocator(new GuestMemory(4 * MiB), { seed });
      const a = Array.from(alloc.allocateScattered(50));
      alloc.free(a.slice(0, 20));
      alloc.allocateContiguous(10);
      return [...a, ...alloc.allocateScattered(60)];
    };
    assert.deepEqual(run(42), run(42));
    assert.notDeepEqual(run(42), run(43));
  });

  test('scattered allocation falls back to adjacent pages when nothing else is left', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB));
    alloc.allocateContiguous(253); // pages 1..253 taken; 254 and 255 remain
    const last = alloc.allocateScattered(2);
    assert.deepEqual([...last].sort(), [254, 255]);
  });

  test('scattered allocation skips pages taken by contiguous allocations', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB), { seed: 3 });
    alloc.allocateScattered(1); // builds the shuffled pool
    const contiguous = alloc.allocateContiguous(100);
    const rest = alloc.allocateScattered(alloc.freePageCount);
    const all = new Set([...contiguous, ...rest]);
    assert.equal(all.size, 100 + rest.length);
    assert.equal(alloc.freePageCount, 0);
  });

  test('free and reuse', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB));
    const a = Array.from(alloc.allocateContiguous(255));
    assert.equal(
      code(() => alloc.allocateContiguous(1)),
      'exhausted',
    );
    alloc.free(a.slice(50, 60));
    assert.equal(alloc.freePageCount, 10);
    assert.deepEqual(Array.from(alloc.allocateContiguous(10)), a.slice(50, 60));
    alloc.free(a.slice(0, 5));
    const s = alloc.allocateScattered(5);
    assert.deepEqual(
      [...s].sort((x, y) => x - y),
      a.slice(0, 5),
    );
  });

  test('exhaustion throws and changes nothing', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB));
    alloc.allocateScattered(200);
    assert.equal(
      code(() => alloc.allocateScattered(56)),
      'exhausted',
    );
    assert.equal(
      code(() => alloc.allocateContiguous(56)),
      'exhausted',
    );
    assert.equal(alloc.freePageCount, 55);
    assert.equal(alloc.allocateScattered(55).length, 55);
    assert.equal(
      code(() => alloc.allocate(1, 'scattered')),
      'exhausted',
    );
  });

  test('contiguous exhaustion with enough free pages but no run', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB));
    const all = Array.from(alloc.allocateContiguous(255));
    alloc.free(all.filter((p) => p % 2 === 0));
    assert.ok(alloc.freePageCount > 100);
    assert.equal(
      code(() => alloc.allocateContiguous(2)),
      'exhausted',
    );
    assert.equal(alloc.allocateContiguous(1).length, 1);
  });

  test('invalid frees: double free, never allocated, reserved, out of range, duplicate, non-integer', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB));
    const a = Array.from(alloc.allocateContiguous(4));
    alloc.free([a[0]]);
    assert.equal(
      code(() => alloc.free([a[0]])),
      'invalid',
    );
    assert.equal(
      code(() => alloc.free([200])),
      'invalid',
    );
    assert.equal(
      code(() => alloc.free([0])),
      'invalid',
    );
    assert.equal(
      code(() => alloc.free([256])),
      'invalid',
    );
    assert.equal(
      code(() => alloc.free([-1])),
      'invalid',
    );
    assert.equal(
      code(() => alloc.free([1.5])),
      'invalid',
    );
    assert.equal(
      code(() => alloc.free([a[1], a[2], a[1]])),
      'invalid',
    );
    // All or nothing: the refused frees released none of a[1..3].
    assert.equal(alloc.freePageCount, 256 - 1 - 3);
    for (const p of a.slice(1)) assert.ok(alloc.isAllocated(p));
    assert.equal(
      code(() => alloc.free([a[1], 200])),
      'invalid',
    );
    assert.ok(alloc.isAllocated(a[1]));
    alloc.free(a.slice(1));
    assert.equal(alloc.allocatedPageCount, 0);
  });

  test('bad requests', () => {
    const alloc = new PageAllocator(new GuestMemory(MiB));
    assert.equal(
      code(() => alloc.allocate(-1)),
      'invalid',
    );
    assert.equal(
      code(() => alloc.allocate(1.5)),
      'invalid',
    );
    assert.equal(
      code(() => alloc.allocate(1, 'sideways' as 'contiguous')),
      'invalid',
    );
    assert.deepEqual(Array.from(alloc.allocate(0)), []);
    assert.deepEqual(Array.from(alloc.allocateScattered(0)), []);
  });

  test('property: allocations never overlap, frees return pages, counts match a model', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 1000 }),
        fc.array(
          fc.oneof(
            fc.record({
              op: fc.constant('alloc' as const),
              n: fc.integer({ min: 0, max: 40 }),
              scattered: fc.boolean(),
            }),
            fc.record({ op: fc.constant('free' as const), pick: fc.nat(), part: fc.nat() }),
          ),
          { maxLength: 60 },
        ),
        (seed, ops) => {
          const alloc = new PageAllocator(new GuestMemory(512 * 1024), { seed, reservedLowPages: 2 });
          const owned = new Set<number>();
          const blocks: number[][] = [];
          for (const o of ops) {
            if (o.op === 'alloc') {
              const free = 128 - 2 - owned.size;
              if (o.n > free) {
                assert.equal(
                  code(() => alloc.allocate(o.n, o.scattered ? 'scattered' : 'contiguous')),
                  'exhausted',
                );
                continue;
              }
              let got: Uint32Array;
              try {
                got = alloc.allocate(o.n, o.scattered ? 'scattered' : 'contiguous');
              } catch (e) {
                // Only a contiguous request may fail with enough pages free (fragmentation).
                assert.ok(!o.scattered && e instanceof MemoryAccessError && e.code === 'exhausted');
                continue;
              }
              assert.equal(got.length, o.n);
              if (!o.scattered) for (let i = 1; i < got.length; i++) assert.equal(got[i], got[0] + i);
              for (const p of got) {
                assert.ok(p >= 2 && p < 128);
                assert.ok(!owned.has(p), `PFN ${p} handed out twice`);
                owned.add(p);
              }
              blocks.push(Array.from(got));
            } else if (blocks.length > 0) {
              const block = blocks.splice(o.pick % blocks.length, 1)[0];
              const cut = o.part % (block.length + 1);
              alloc.free(block.slice(0, cut));
              for (const p of block.slice(0, cut)) owned.delete(p);
              if (cut < block.length) blocks.push(block.slice(cut));
            }
            assert.equal(alloc.allocatedPageCount, owned.size);
            assert.equal(alloc.freePageCount, 126 - owned.size);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  test('allocates and frees all 262,143 usable pages of a 1 GiB guest, contiguous and scattered', () => {
    const mem = new GuestMemory(1024 * MiB);
    const alloc = new PageAllocator(mem);
    const c = alloc.allocateContiguous(262_143);
    alloc.free(c);
    const s = alloc.allocateScattered(262_143);
    alloc.free(s);
    assert.equal(c.length, 262_143);
    assert.equal(c[262_142], 262_143);
    assert.equal(new Set(s).size, 262_143);
    assert.equal(alloc.allocatedPageCount, 0);
  });
});
