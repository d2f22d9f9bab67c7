// Tests for the host's checked view of guest memory: grants, read-only grants, revocation,
// overlapping grants, the GrantedMdl accessor, a model-based property test, and speed.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { PageAllocator } from '../../src/memory/allocator.js';
import { GuestMemory, MemoryAccessError, PAGE_SIZE } from '../../src/memory/guest-memory.js';
import { HostMemoryView, type MemoryGrant } from '../../src/memory/host-view.js';
import { chainMdls, mdlChainPfns, mdlFromPfns, mdlRead } from '../../src/memory/mdl.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof MemoryAccessError) return e.code;
    throw e;
  }
  return 'no error';
}

const P = PAGE_SIZE;

describe('HostMemoryView', () => {
  test('granted pages can be read and written; others are refused', () => {
    const mem = new GuestMemory(64 * P);
    mem.bytes.fill(0x33, 5 * P, 6 * P);
    const view = new HostMemoryView(mem);
    assert.equal(
      code(() => view.read(5 * P, new Uint8Array(4))),
      'not-granted',
    );
    view.grant([5, 6]);
    const dst = new Uint8Array(4);
    view.read(5 * P + 10, dst);
    assert.deepEqual(Array.from(dst), [0x33, 0x33, 0x33, 0x33]);
    view.write(6 * P + 100, Uint8Array.of(1, 2, 3));
    assert.deepEqual(Array.from(mem.bytes.subarray(6 * P + 100, 6 * P + 103)), [1, 2, 3]);
    view.read(5 * P, new Uint8Array(2 * P)); // exactly the two pages
    assert.equal(
      code(() => view.read(4 * P + P - 1, new Uint8Array(2))),
      'not-granted',
    );
    assert.equal(
      code(() => view.write(7 * P, new Uint8Array(1))),
      'not-granted',
    );
    assert.equal(
      code(() => view.read(mem.size - 1, new Uint8Array(2))),
      'out-of-bounds',
    );
    assert.equal(view.accessError(5 * P, 2 * P, 'write'), null);
    assert.equal(view.accessError(5 * P, 2 * P + 1, 'read'), 'not-granted');
  });

  test('a partially granted range is refused and nothing is copied', () => {
    const mem = new GuestMemory(64 * P);
    const view = new HostMemoryView(mem);
    view.grant([10, 12]);
    assert.equal(
      code(() => view.write(10 * P, new Uint8Array(3 * P).fill(9))),
      'not-granted',
    );
    assert.equal(mem.bytes[10 * P], 0);
    assert.equal(mem.bytes[12 * P], 0);
    const dst = new Uint8Array(P + 1).fill(7);
    assert.equal(
      code(() => view.read(12 * P - 1, dst)),
      'not-granted',
    );
    assert.equal(dst[0], 7);
  });

  test('read-only grants refuse writes', () => {
    const mem = new GuestMemory(64 * P);
    const view = new HostMemoryView(mem);
    const g = view.grant([3], { readOnly: true });
    assert.equal(g.readOnly, true);
    view.read(3 * P, new Uint8Array(P));
    assert.equal(
      code(() => view.write(3 * P, new Uint8Array(1).fill(1))),
      'read-only',
    );
    assert.equal(mem.bytes[3 * P], 0);
    view.grant([4]);
    // Write over a writable page and a read-only one: read-only.
    assert.equal(
      code(() => view.write(4 * P - 1, new Uint8Array(2))),
      'read-only',
    );
    // ...and over a never-granted page as well: not-granted wins.
    assert.equal(
      code(() => view.write(3 * P, new Uint8Array(3 * P))),
      'not-granted',
    );
  });

  test('revoked grants refuse access with "revoked"', () => {
    const mem = new GuestMemory(64 * P);
    const view = new HostMemoryView(mem);
    const g = view.grant([8, 9], { label: 'external data of packet 1' });
    view.read(8 * P, new Uint8Array(2 * P));
    assert.equal(view.liveGrantCount, 1);
    g.revoke();
    assert.equal(g.revoked, true);
    assert.equal(view.liveGrantCount, 0);
    assert.equal(
      code(() => view.read(8 * P, new Uint8Array(1))),
      'revoked',
    );
    assert.equal(
      code(() => view.write(9 * P, new Uint8Array(1))),
      'revoked',
    );
    assert.equal(
      code(() => view.read(9 * P, new Uint8Array(P + 1))),
      'not-granted',
    ); // page 10 never was
    g.revoke(); // idempotent
    assert.equal(view.liveGrantCount, 0);
    // A read-only grant revoked: a write was never allowed, a read was.
    const ro = view.grant([20], { readOnly: true });
    ro.revoke();
    assert.equal(
      code(() => view.read(20 * P, new Uint8Array(1))),
      'revoked',
    );
    assert.equal(
      code(() => view.write(20 * P, new Uint8Array(1))),
      'not-granted',
    );
  });

  test('overlapping grants: revoking one keeps the other', () => {
    const mem = new GuestMemory(64 * P);
    const view = new HostMemoryView(mem);
    const a = view.grant([1, 2, 3]);
    const b = view.grant([3, 4], { readOnly: true });
    view.write(3 * P, new Uint8Array(1)); // via a
    a.revoke();
    view.read(3 * P, new Uint8Array(2 * P)); // pages 3-4 via b
    assert.equal(
      code(() => view.write(3 * P, new Uint8Array(1))),
      'revoked',
    ); // a would have allowed it
    assert.equal(
      code(() => view.read(2 * P, new Uint8Array(1))),
      'revoked',
    );
    const c = view.grant([3]);
    view.write(3 * P, new Uint8Array(1));
    b.revoke();
    c.revoke();
    assert.equal(
      code(() => view.read(3 * P, new Uint8Array(1))),
      'revoked',
    );
    // The same page twice in one grant, plus another grant: counted per occurrence.
    const d = view.grant([30, 30]);
    const e = view.grant([30]);
    d.revoke();
    view.write(30 * P, new Uint8Array(1));
    e.revoke();
    assert.equal(
      code(() => view.read(30 * P, new Uint8Array(1))),
      'revoked',
    );
  });

  test('grants of PFNs outside RAM are refused and change nothing', () => {
    const mem = new GuestMemory(64 * P);
    const view = new HostMemoryView(mem);
    assert.equal(
      code(() => view.grant([1, 64])),
      'out-of-bounds',
    );
    assert.equal(
      code(() => view.grant([1, Number.NaN])),
      'out-of-bounds',
    );
    assert.equal(
      code(() => view.read(P, new Uint8Array(1))),
      'not-granted',
    );
    assert.equal(view.liveGrantCount, 0);
    assert.equal(
      code(() => view.grantMdl(mdlFromPfns([1, 99]))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => view.grantMdl({ byteOffset: 0, byteCount: 5000, pfns: [1] })),
      'invalid',
    );
    const loop = mdlFromPfns([1]);
    loop.next = loop;
    assert.equal(
      code(() => view.grantMdl(loop)),
      'invalid',
    );
    assert.equal(
      code(() => view.read(P, new Uint8Array(1))),
      'not-granted',
    );
  });

  test('revokeAll', () => {
    const mem = new GuestMemory(64 * P);
    const view = new HostMemoryView(mem);
    const a = view.grant([1]);
    const b = view.grantMdl(mdlFromPfns([2]));
    view.revokeAll();
    assert.ok(a.revoked && b.revoked);
    assert.equal(view.liveGrantCount, 0);
    assert.equal(
      code(() => view.read(P, new Uint8Array(1))),
      'revoked',
    );
  });
});

describe('GrantedMdl', () => {
  test('offset-addressed access over a scattered chain, in chain order', () => {
    const mem = new GuestMemory(256 * P);
    const alloc = new PageAllocator(mem, { seed: 11 });
    const chain = chainMdls([
      mdlFromPfns(alloc.allocateScattered(3), 300, 2 * P + 10),
      mdlFromPfns(alloc.allocateScattered(2), 4000, 1000),
    ]);
    const view = new HostMemoryView(mem);
    const m = view.grantMdl(chain);
    assert.equal(m.byteCount, 2 * P + 10 + 1000);
    assert.equal(m.readOnly, false);
    const src = new Uint8Array(m.byteCount).map((_, i) => (i * 13) & 0xff);
    m.write(0, src);
    const back = new Uint8Array(m.byteCount);
    mdlRead(mem, chain, 0, back); // the guest's view of the same bytes
    assert.deepEqual(back, src);
    const part = new Uint8Array(700);
    m.read(2 * P - 200, part);
    assert.deepEqual(part, src.subarray(2 * P - 200, 2 * P + 500));
    // The pages are granted through the view too, and the descriptor is a copy of the chain.
    view.read(chain.pfns[1] * P, new Uint8Array(P));
    assert.deepEqual(mdlChainPfns(m.mdl), mdlChainPfns(chain));
    assert.equal(m.mdl.byteOffset, 300);
    assert.equal(m.mdl.next?.byteCount, 1000);
    assert.equal(
      code(() => m.read(m.byteCount - 1, new Uint8Array(2))),
      'out-of-bounds',
    );
    assert.equal(
      code(() => m.read(-1, new Uint8Array(1))),
      'out-of-bounds',
    );
    m.read(m.byteCount, new Uint8Array(0));
  });

  test('read-only and revoked', () => {
    const mem = new GuestMemory(64 * P);
    const view = new HostMemoryView(mem);
    const ro = view.grantMdl(mdlFromPfns([5, 6], 0, 2 * P), { readOnly: true });
    ro.read(0, new Uint8Array(2 * P));
    assert.equal(
      code(() => ro.write(0, new Uint8Array(1).fill(1))),
      'read-only',
    );
    assert.equal(mem.bytes[5 * P], 0);
    const rw = view.grantMdl(mdlFromPfns([7]));
    rw.write(0, new Uint8Array(P).fill(2));
    rw.revoke();
    assert.equal(rw.revoked, true);
    assert.equal(
      code(() => rw.read(0, new Uint8Array(1))),
      'revoked',
    );
    assert.equal(
      code(() => rw.write(0, new Uint8Array(1))),
      'revoked',
    );
    assert.equal(
      code(() => ro.write(0, new Uint8Array(1))),
      'read-only',
    );
    ro.grant.revoke();
    assert.equal(
      code(() => ro.write(0, new Uint8Array(1))),
      'revoked',
    );
    assert.equal(
      code(() => ro.read(0, new Uint8Array(0))),
      'revoked',
    );
  });

  test('MemoryGrant.map gives the grant pages as one buffer', () => {
    const mem = new GuestMemory(64 * P);
    const view = new HostMemoryView(mem);
    const g = view.grant([9, 2, 3]);
    const m = g.map();
    assert.equal(g.map(), m);
    assert.equal(m.byteCount, 3 * P);
    m.write(P - 2, Uint8Array.of(1, 2, 3, 4));
    assert.deepEqual(Array.from(mem.bytes.subarray(10 * P - 2, 10 * P)), [1, 2]);
    assert.deepEqual(Array.from(mem.bytes.subarray(2 * P, 2 * P + 2)), [3, 4]);
    g.revoke();
    assert.equal(
      code(() => m.read(0, new Uint8Array(1))),
      'revoked',
    );
  });

  test('property: random grant/revoke/access sequences match a simple model', () => {
    const pages = 16;
    const op = fc.oneof(
      fc.record({
        kind: fc.constant('grant' as const),
        pfns: fc.array(fc.integer({ min: 0, max: pages - 1 }), { maxLength: 6 }),
        readOnly: fc.boolean(),
      }),
      fc.record({ kind: fc.constant('revoke' as const), which: fc.nat() }),
      fc.record({
        kind: fc.constant('access' as const),
        gpa: fc.integer({ min: 0, max: pages * P + 10 }),
        length: fc.integer({ min: 0, max: 3 * P }),
        write: fc.boolean(),
      }),
      fc.record({
        kind: fc.constant('mapped' as const),
        which: fc.nat(),
        offset: fc.nat({ max: 7 * P }),
        length: fc.nat({ max: 2 * P }),
        write: fc.boolean(),
      }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const mem = new GuestMemory(pages * P);
        const view = new HostMemoryView(mem);
        const grants: {
          pfns: number[];
          readOnly: boolean;
          live: boolean;
          handle: MemoryGrant;
        }[] = [];
        // Model: what an access should give, computed from the plain list of grants.
        const expect = (gpa: number, length: number, write: boolean): string => {
          if (gpa + length > pages * P) return 'out-of-bounds';
          if (length === 0) return 'no error';
          const codes = new Set<string>();
          for (let p = Math.floor(gpa / P); p <= Math.floor((gpa + length - 1) / P); p++) {
            const covers = (g: (typeof grants)[number]) => g.pfns.includes(p) && (!write || !g.readOnly);
            if (grants.some((g) => g.live && covers(g))) continue;
            if (grants.some((g) => !g.live && covers(g))) codes.add('revoked');
            else if (write && grants.some((g) => g.live && g.pfns.includes(p))) codes.add('read-only');
            else codes.add('not-granted');
          }
          for (const c of ['not-granted', 'read-only', 'revoked']) if (codes.has(c)) return c;
          return 'no error';
        };
        let stamp = 0;
        for (const o of ops) {
          if (o.kind === 'grant') {
            grants.push({ pfns: o.pfns, readOnly: o.readOnly, live: true, handle: view.grant(o.pfns, o) });
          } else if (o.kind === 'revoke' && grants.length > 0) {
            const g = grants[o.which % grants.length];
            g.handle.revoke();
            g.live = false;
          } else if (o.kind === 'access') {
            const buf = new Uint8Array(o.length).fill(++stamp & 0xff);
            const before = Uint8Array.from(mem.bytes);
            const want = expect(o.gpa, o.length, o.write);
            const got = code(() => (o.write ? view.write(o.gpa, buf) : view.read(o.gpa, buf)));
            assert.equal(got, want);
            if (o.write && want === 'no error') before.set(buf, o.gpa);
            assert.deepEqual(mem.bytes, before);
            if (!o.write && want === 'no error')
              assert.deepEqual(buf, mem.bytes.subarray(o.gpa, o.gpa + o.length));
          } else if (o.kind === 'mapped' && grants.length > 0) {
            const g = grants[o.which % grants.length];
            const m = g.handle.map();
            const buf = new Uint8Array(o.length).fill(++stamp & 0xff);
            let want = 'no error';
            if (!g.live) want = 'revoked';
            else if (o.write && g.readOnly) want = 'read-only';
            else if (o.offset + o.length > g.pfns.length * P) want = 'out-of-bounds';
            const before = Uint8Array.from(mem.bytes);
            assert.equal(
              code(() => (o.write ? m.write(o.offset, buf) : m.read(o.offset, buf))),
              want,
            );
            for (let i = 0; want === 'no error' && i < o.length; i++) {
              const pos: number = o.offset + i;
              const gpa: number = g.pfns[Math.floor(pos / P)] * P + (pos % P);
              if (o.write) before[gpa] = buf[i];
              else assert.equal(buf[i], mem.bytes[gpa]);
            }
            assert.deepEqual(mem.bytes, before);
          }
          assert.equal(view.liveGrantCount, grants.filter((g) => g.live).length);
        }
      }),
      { numRuns: 300 },
    );
  });

  test('a 262,144-page grant covers all of a 1 GiB guest; a granted MDL read equals the raw page copies', () => {
    const mem = new GuestMemory(1024 * 1024 * 1024);
    const view = new HostMemoryView(mem);
    const all = new Uint32Array(262_144).map((_, i) => i);
    const big = view.grant(all);
    view.check(262_143 * P, P, 'write');
    big.revoke();
    assert.throws(() => view.check(262_143 * P, P, 'read'), MemoryAccessError);

    const pfns = new PageAllocator(mem, { seed: 5 }).allocateScattered(16);
    for (let i = 0; i < 16; i++) mem.bytes.fill(i + 1, pfns[i] * P, pfns[i] * P + P);
    const mapped = view.grantMdl(mdlFromPfns(pfns));
    const dst = new Uint8Array(64 * 1024);
    mapped.read(0, dst);
    const expected = new Uint8Array(64 * 1024);
    for (let i = 0; i < 16; i++) expected.set(mem.bytes.subarray(pfns[i] * P, pfns[i] * P + P), i * P);
    assert.deepEqual(dst, expected);
  });
});
