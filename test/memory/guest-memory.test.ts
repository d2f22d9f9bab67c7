// Tests for guest RAM: sizes, bounds checks on every accessor, page geometry helpers, and a 1 GiB
// guest whose last pages are allocated, touched and bounds-checked.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PageAllocator } from '../../src/memory/allocator.js';
import {
  DEFAULT_GUEST_MEMORY_BYTES,
  GuestMemory,
  gpaToPfn,
  MemoryAccessError,
  PAGE_SIZE,
  pfnToGpa,
  spanPages,
} from '../../src/memory/guest-memory.js';
import { HostMemoryView } from '../../src/memory/host-view.js';
import { mdlFromPfns, mdlRead, mdlWrite } from '../../src/memory/mdl.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof MemoryAccessError) return e.code;
    throw e;
  }
  return 'no error';
}

describe('GuestMemory', () => {
  test('default size is 64 MiB; sizes must be positive multiples of 4096', () => {
    const mem = new GuestMemory();
    assert.equal(mem.size, DEFAULT_GUEST_MEMORY_BYTES);
    assert.equal(mem.size, 64 * 1024 * 1024);
    assert.equal(mem.pageCount, 16384);
    assert.ok(mem.buffer instanceof SharedArrayBuffer);
    assert.equal(
      code(() => new GuestMemory(0)),
      'invalid',
    );
    assert.equal(
      code(() => new GuestMemory(4097)),
      'invalid',
    );
  });

  test('a second GuestMemory over the same buffer sees the same bytes', () => {
    const a = new GuestMemory(8 * PAGE_SIZE);
    const b = new GuestMemory(a.buffer);
    a.write(5000, Uint8Array.of(1, 2, 3));
    const dst = new Uint8Array(3);
    b.read(5000, dst);
    assert.deepEqual(Array.from(dst), [1, 2, 3]);
  });

  test('every accessor is bounds-checked', () => {
    const mem = new GuestMemory(4 * PAGE_SIZE);
    assert.equal(
      code(() => mem.checkRange(4 * PAGE_SIZE, 0)),
      'no error',
    );
    assert.equal(
      code(() => mem.checkRange(4 * PAGE_SIZE, 1)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.checkRange(-1, 1)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.checkRange(0.5, 1)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.checkPfn(4)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.view(3 * PAGE_SIZE, PAGE_SIZE + 1)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.page(-1)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.read(4 * PAGE_SIZE - 1, new Uint8Array(2))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.write(4 * PAGE_SIZE - 1, new Uint8Array(2))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.fill(4 * PAGE_SIZE - 1, 2)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.int32View(2, 1)),
      'invalid',
    );
    assert.equal(
      code(() => mem.int32View(4 * PAGE_SIZE - 4, 2)),
      'out-of-bounds',
    );
  });

  test('views are live; fill and int32View', () => {
    const mem = new GuestMemory(4 * PAGE_SIZE);
    const page = mem.page(2);
    mem.fill(2 * PAGE_SIZE + 10, 5, 0xab);
    assert.equal(page[10], 0xab);
    assert.equal(page[15], 0);
    const words = mem.int32View(PAGE_SIZE, 2);
    Atomics.store(words, 1, -2);
    assert.deepEqual(Array.from(mem.view(PAGE_SIZE + 4, 4)), [0xfe, 0xff, 0xff, 0xff]);
  });

  test('page geometry helpers', () => {
    assert.equal(gpaToPfn(0x1fff), 1);
    assert.equal(gpaToPfn(2 ** 33 + 5), 2 ** 21); // no 32-bit truncation
    assert.equal(pfnToGpa(2 ** 21), 2 ** 33);
    assert.equal(spanPages(0, 0), 0);
    assert.equal(spanPages(0, 4096), 1);
    assert.equal(spanPages(4095, 2), 2);
    assert.equal(spanPages(100, 0), 1);
  });

  test('1 GiB guest: pages at its end are allocated, touched and bounds-checked', () => {
    const GiB = 1024 * 1024 * 1024;
    const mem = new GuestMemory(GiB);
    assert.equal(mem.pageCount, 262_144);
    const alloc = new PageAllocator(mem, { reservedLowPages: 262_144 - 8 });
    const pfns = alloc.allocateContiguous(8);
    assert.deepEqual(
      Array.from(pfns),
      [262_136, 262_137, 262_138, 262_139, 262_140, 262_141, 262_142, 262_143],
    );
    assert.equal(
      code(() => alloc.allocateContiguous(1)),
      'exhausted',
    );
    const mdl = mdlFromPfns(pfns);
    const data = new Uint8Array(8 * PAGE_SIZE).map((_, i) => i & 0xff);
    mdlWrite(mem, mdl, 0, data);
    assert.equal(mem.bytes[GiB - 1], (8 * PAGE_SIZE - 1) & 0xff);
    const back = new Uint8Array(8 * PAGE_SIZE);
    mdlRead(mem, mdl, 0, back);
    assert.deepEqual(back, data);
    assert.equal(mem.page(262_143)[PAGE_SIZE - 1], 0xff);
    assert.equal(
      code(() => mem.page(262_144)),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mem.read(GiB - 4, new Uint8Array(5))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => mdlRead(mem, mdlFromPfns([262_144]), 0, new Uint8Array(1))),
      'out-of-bounds',
    );
    // The host, granted the last page, can reach its last byte and not one past it.
    const view = new HostMemoryView(mem);
    view.grant([262_143]);
    const last = new Uint8Array(1);
    view.read(GiB - 1, last);
    assert.equal(last[0], 0xff);
    assert.equal(
      code(() => view.read(GiB - 1, new Uint8Array(2))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => view.grant([262_144])),
      'out-of-bounds',
    );
  });
});
