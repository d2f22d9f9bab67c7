// Memory descriptor lists (MDLs) and PFN arrays: how a buffer scattered over guest pages is
// described, as Windows MDLs and the wire's `gpa_range` do (byte offset into the first page, byte
// count, page list; MDLs chain through `next`). Builders, validation, and copy helpers that walk a
// chain and move each run of physically adjacent pages with a single `TypedArray.set`.

import { type GuestMemory, MemoryAccessError, PAGE_SIZE, spanPages } from './guest-memory.js';

/**
 * One MDL: `byteCount` bytes starting `byteOffset` bytes into page `pfns[0]` and continuing
 * through the following PFNs, with pfns.length === ceil((byteOffset + byteCount) / 4096).
 * `next` chains further MDLs; the chain's bytes are the concatenation of its MDLs' bytes.
 * Plain data: it can be copied, saved and rebuilt from a wire `gpa_range`.
 */
export interface Mdl {
  /** Offset of the first byte within the first page, 0..4095. */
  byteOffset: number;
  byteCount: number;
  pfns: ArrayLike<number>;
  next?: Mdl | null;
}

/** Checks one MDL's own shape (not its chain, not its PFNs): 'invalid' on a malformed descriptor. */
export function checkMdlShape(mdl: Mdl): void {
  const { byteOffset, byteCount, pfns } = mdl;
  if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset >= PAGE_SIZE) {
    throw new MemoryAccessError('invalid', `MDL byteOffset ${byteOffset} is not in [0, ${PAGE_SIZE})`);
  }
  if (!Number.isSafeInteger(byteCount) || byteCount < 0) {
    throw new MemoryAccessError('invalid', `MDL byteCount ${byteCount} is not a non-negative integer`);
  }
  const want = spanPages(byteOffset, byteCount);
  if (pfns == null || pfns.length !== want) {
    throw new MemoryAccessError(
      'invalid',
      `MDL with byteOffset ${byteOffset} and byteCount ${byteCount} needs ${want} PFNs, has ${pfns?.length}`,
    );
  }
}

/** Creates an MDL after checking its shape. `byteCount` defaults to the rest of the last page. */
export function mdlFromPfns(
  pfns: ArrayLike<number>,
  byteOffset = 0,
  byteCount = pfns.length * PAGE_SIZE - byteOffset,
  next: Mdl | null = null,
): Mdl {
  const mdl: Mdl = { byteOffset, byteCount, pfns, next };
  checkMdlShape(mdl);
  return mdl;
}

/** An MDL for the physically contiguous range [gpa, gpa + length) of guest RAM. */
export function mdlFromGpaRange(memory: GuestMemory, gpa: number, length: number): Mdl {
  memory.checkRange(gpa, length);
  const byteOffset = gpa % PAGE_SIZE;
  const first = (gpa - byteOffset) / PAGE_SIZE;
  const count = spanPages(byteOffset, length);
  if (first + count > memory.pageCount) {
    // Only reachable for length 0 at the very end of RAM with a non-zero in-page offset.
    throw new MemoryAccessError('out-of-bounds', `GPA 0x${gpa.toString(16)} spans past guest memory`);
  }
  const pfns: number[] = [];
  for (let i = 0; i < count; i++) pfns.push(first + i);
  return { byteOffset, byteCount: length, pfns, next: null };
}

/** Links `mdls` into one chain (overwriting their `next`) and returns its head. */
export function chainMdls(mdls: readonly Mdl[]): Mdl {
  if (mdls.length === 0) throw new MemoryAccessError('invalid', 'an MDL chain needs at least one MDL');
  for (let i = 0; i < mdls.length; i++) mdls[i].next = i + 1 < mdls.length ? mdls[i + 1] : null;
  return mdls[0];
}

/**
 * Walks a chain calling `visit` on each MDL, throwing 'invalid' if the chain loops back on itself
 * (Brent's cycle detection: no allocation, at most ~3x the chain length in steps).
 */
export function forEachMdl(mdl: Mdl, visit: (mdl: Mdl, index: number) => void): void {
  let cur: Mdl | null | undefined = mdl;
  let tortoise: Mdl = mdl;
  let power = 1;
  let lambda = 0;
  let index = 0;
  while (cur != null) {
    visit(cur, index++);
    cur = cur.next;
    if (cur === tortoise) throw new MemoryAccessError('invalid', 'the MDL chain loops back on itself');
    if (cur != null && ++lambda === power) {
      tortoise = cur;
      power *= 2;
      lambda = 0;
    }
  }
}

/** Number of MDLs in the chain. */
export function mdlChainLength(mdl: Mdl): number {
  let n = 0;
  forEachMdl(mdl, () => {
    n++;
  });
  return n;
}

/** Total bytes described by the chain (sum of byteCount). */
export function mdlChainByteCount(mdl: Mdl): number {
  let total = 0;
  forEachMdl(mdl, (m) => {
    checkMdlShape(m);
    total += m.byteCount;
  });
  return total;
}

/** Every PFN of the chain, MDL after MDL, in order. */
export function mdlChainPfns(mdl: Mdl): number[] {
  const out: number[] = [];
  forEachMdl(mdl, (m) => {
    checkMdlShape(m);
    for (let i = 0; i < m.pfns.length; i++) out.push(m.pfns[i]);
  });
  return out;
}

/**
 * Checks the whole chain against `memory`: every MDL well formed ('invalid'), no loop ('invalid'),
 * every PFN a page of guest RAM ('out-of-bounds'). Returns the chain's total byte count.
 */
export function validateMdl(memory: GuestMemory, mdl: Mdl): number {
  let total = 0;
  forEachMdl(mdl, (m) => {
    checkMdlShape(m);
    checkPfns(memory, m.pfns, 0, m.pfns.length);
    total += m.byteCount;
  });
  return total;
}

/**
 * A new chain describing bytes [offset, offset + length) of `mdl`'s chain (default: to the end),
 * e.g. for VmbPacketSendWithExternalMdl's MdlOffset/MdlLength or CreateGpadlFromMdl's sub-range.
 * PFN lists are copied. A zero-length slice is a single empty MDL.
 */
export function mdlSlice(mdl: Mdl, offset: number, length?: number): Mdl {
  const total = mdlChainByteCount(mdl);
  checkOffset(offset);
  const len = length ?? total - offset;
  if (!Number.isSafeInteger(len) || len < 0 || offset + len > total) {
    throw new MemoryAccessError(
      'out-of-bounds',
      `MDL slice ${offset}+${len} is outside the chain's ${total} bytes`,
    );
  }
  const pieces: Mdl[] = [];
  let skip = offset;
  let remaining = len;
  forEachMdl(mdl, (m) => {
    if (remaining === 0) return;
    if (skip >= m.byteCount) {
      skip -= m.byteCount;
      return;
    }
    const take = Math.min(m.byteCount - skip, remaining);
    const start = m.byteOffset + skip;
    const firstPage = Math.floor(start / PAGE_SIZE);
    const byteOffset = start - firstPage * PAGE_SIZE;
    const pages = spanPages(byteOffset, take);
    const pfns: number[] = [];
    for (let i = 0; i < pages; i++) pfns.push(m.pfns[firstPage + i]);
    pieces.push({ byteOffset, byteCount: take, pfns, next: null });
    remaining -= take;
    skip = 0;
  });
  if (pieces.length === 0) return { byteOffset: 0, byteCount: 0, pfns: [], next: null };
  return chainMdls(pieces);
}

/** Copies bytes [offset, offset + dst.length) of the MDL chain into `dst`. */
export function mdlRead(memory: GuestMemory, mdl: Mdl, offset: number, dst: Uint8Array): void {
  mdlAccess(memory, mdl, offset, dst, false);
}

/** Copies `src` into bytes [offset, offset + src.length) of the MDL chain. */
export function mdlWrite(memory: GuestMemory, mdl: Mdl, offset: number, src: Uint8Array): void {
  mdlAccess(memory, mdl, offset, src, true);
}

/**
 * Copies bytes [offset, offset + dst.length) of the buffer made of the whole pages `pfns` (in
 * order; the form of VmbPacketSendWithExternalPfns) into `dst`.
 */
export function pfnArrayRead(
  memory: GuestMemory,
  pfns: ArrayLike<number>,
  offset: number,
  dst: Uint8Array,
): void {
  pfnArrayAccess(memory, pfns, offset, dst, false);
}

/** Copies `src` into bytes [offset, offset + src.length) of the buffer made of the pages `pfns`. */
export function pfnArrayWrite(
  memory: GuestMemory,
  pfns: ArrayLike<number>,
  offset: number,
  src: Uint8Array,
): void {
  pfnArrayAccess(memory, pfns, offset, src, true);
}

/**
 * Low-level copy between `buf[bufPos, bufPos + length)` and guest pages `pfns[index], ...`,
 * starting `inPage` bytes into pfns[index]. Physically adjacent pages are merged into one `set`.
 * The caller has already checked the PFNs and the length; nothing is validated here.
 */
export function copyPageRuns(
  bytes: Uint8Array,
  pfns: ArrayLike<number>,
  index: number,
  inPage: number,
  buf: Uint8Array,
  bufPos: number,
  length: number,
  toGuest: boolean,
): void {
  while (length > 0) {
    const first = pfns[index];
    let pages = 1;
    let avail = PAGE_SIZE - inPage;
    while (avail < length && pfns[index + pages] === first + pages) {
      pages++;
      avail += PAGE_SIZE;
    }
    const n = Math.min(avail, length);
    const gpa = first * PAGE_SIZE + inPage;
    if (toGuest) {
      bytes.set(bufPos === 0 && n === buf.length ? buf : buf.subarray(bufPos, bufPos + n), gpa);
    } else {
      buf.set(bytes.subarray(gpa, gpa + n), bufPos);
    }
    bufPos += n;
    length -= n;
    index += pages;
    inPage = 0;
  }
}

function checkOffset(offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new MemoryAccessError('out-of-bounds', `offset ${offset} is not a non-negative integer`);
  }
}

/** Throws 'out-of-bounds' unless pfns[from, to) are all pages of guest RAM. */
function checkPfns(memory: GuestMemory, pfns: ArrayLike<number>, from: number, to: number): void {
  const pageCount = memory.pageCount;
  for (let i = from; i < to; i++) {
    const pfn = pfns[i];
    // Written so that NaN and non-numbers fail too.
    if (!(pfn >= 0 && pfn < pageCount && Number.isInteger(pfn))) {
      throw new MemoryAccessError(
        'out-of-bounds',
        `PFN ${pfn} (entry ${i}) is not a page of guest memory (${pageCount} pages)`,
      );
    }
  }
}

function pfnArrayAccess(
  memory: GuestMemory,
  pfns: ArrayLike<number>,
  offset: number,
  buf: Uint8Array,
  toGuest: boolean,
): void {
  checkOffset(offset);
  const length = buf.length;
  const size = pfns.length * PAGE_SIZE;
  if (offset + length > size) {
    throw new MemoryAccessError(
      'out-of-bounds',
      `range ${offset}+${length} is outside the ${pfns.length}-page PFN array (${size} bytes)`,
    );
  }
  if (length === 0) return;
  const index = Math.floor(offset / PAGE_SIZE);
  const last = Math.floor((offset + length - 1) / PAGE_SIZE);
  checkPfns(memory, pfns, index, last + 1);
  copyPageRuns(memory.bytes, pfns, index, offset - index * PAGE_SIZE, buf, 0, length, toGuest);
}

// Two passes: first check every MDL and PFN the access touches and that the chain is long enough,
// then copy, so a refused access copies nothing.
function mdlAccess(memory: GuestMemory, mdl: Mdl, offset: number, buf: Uint8Array, toGuest: boolean): void {
  checkOffset(offset);
  checkMdlShape(mdl);
  const length = buf.length;
  let skip = offset;
  let remaining = length;
  let cur: Mdl | null | undefined = mdl;
  // Brent's cycle detection (see forEachMdl), inlined to keep this path allocation-free.
  let tortoise: Mdl = mdl;
  let power = 1;
  let lambda = 0;
  while (skip > 0 || remaining > 0) {
    if (cur == null) {
      throw new MemoryAccessError(
        'out-of-bounds',
        `range ${offset}+${length} runs past the end of the MDL chain`,
      );
    }
    checkMdlShape(cur);
    if (skip >= cur.byteCount) {
      skip -= cur.byteCount;
    } else {
      const take = Math.min(cur.byteCount - skip, remaining);
      if (take > 0) {
        const start = cur.byteOffset + skip;
        checkPfns(
          memory,
          cur.pfns,
          Math.floor(start / PAGE_SIZE),
          Math.floor((start + take - 1) / PAGE_SIZE) + 1,
        );
      }
      remaining -= take;
      skip = 0;
    }
    cur = cur.next;
    if (cur === tortoise) throw new MemoryAccessError('invalid', 'the MDL chain loops back on itself');
    if (cur != null && ++lambda === power) {
      tortoise = cur;
      power *= 2;
      lambda = 0;
    }
  }
  if (length === 0) return;
  skip = offset;
  remaining = length;
  let bufPos = 0;
  cur = mdl;
  while (remaining > 0 && cur != null) {
    if (skip >= cur.byteCount) {
      skip -= cur.byteCount;
    } else {
      const take = Math.min(cur.byteCount - skip, remaining);
      const start = cur.byteOffset + skip;
      const index = Math.floor(start / PAGE_SIZE);
      copyPageRuns(memory.bytes, cur.pfns, index, start - index * PAGE_SIZE, buf, bufPos, take, toGuest);
      bufPos += take;
      remaining -= take;
      skip = 0;
    }
    cur = cur.next;
  }
}
