// Guest RAM: one SharedArrayBuffer addressed by guest physical address (GPA), in 4096-byte pages
// (PFN = GPA >> 12). This is the only memory host and guest share; rings, GPADL buffers and
// external data all live here. Every access is bounds-checked against the partition's size.

import { PAGE_SHIFT, PAGE_SIZE } from '../wire/constants.js';

export { PAGE_SHIFT, PAGE_SIZE };
export const PAGE_MASK = PAGE_SIZE - 1;

/** The page a GPA falls in (PFN = GPA >> 12, computed without 32-bit truncation). */
export function gpaToPfn(gpa: number): number {
  return Math.floor(gpa / PAGE_SIZE);
}

/** The GPA of the first byte of page `pfn`. */
export function pfnToGpa(pfn: number): number {
  return pfn * PAGE_SIZE;
}

/**
 * How many pages a buffer of `byteCount` bytes starting `byteOffset` bytes into its first page
 * spans: ceil((byteOffset + byteCount) / 4096), the PFN count of an MDL or a wire `gpa_range`.
 */
export function spanPages(byteOffset: number, byteCount: number): number {
  return Math.ceil((byteOffset + byteCount) / PAGE_SIZE);
}

/** Default guest RAM size: 64 MiB. */
export const DEFAULT_GUEST_MEMORY_BYTES = 64 * 1024 * 1024;

export type MemoryErrorCode =
  | 'out-of-bounds' // the range is not inside guest RAM
  | 'not-granted' // a checked host view was asked for pages it was not given
  | 'read-only' // a write through a read-only grant
  | 'revoked' // the grant behind a view was withdrawn (packet completed, GPADL unmapped)
  | 'exhausted' // the allocator has no pages left
  | 'invalid'; // a malformed request (unaligned size, double free, bad descriptor)

/** A refused guest-memory access; never a silent read or write. */
export class MemoryAccessError extends Error {
  override readonly name = 'MemoryAccessError';
  constructor(
    readonly code: MemoryErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export class GuestMemory {
  readonly buffer: SharedArrayBuffer;
  /** All of guest RAM as bytes; offset = GPA. */
  readonly bytes: Uint8Array;
  readonly size: number;
  readonly pageCount: number;

  /** New zeroed guest RAM of `size` bytes (a positive multiple of 4096), or a view of an existing buffer. */
  constructor(sizeOrBuffer: number | SharedArrayBuffer = DEFAULT_GUEST_MEMORY_BYTES) {
    const buffer = typeof sizeOrBuffer === 'number' ? new SharedArrayBuffer(sizeOrBuffer) : sizeOrBuffer;
    if (buffer.byteLength === 0 || buffer.byteLength % PAGE_SIZE !== 0) {
      throw new MemoryAccessError(
        'invalid',
        `guest memory size ${buffer.byteLength} is not a positive multiple of ${PAGE_SIZE}`,
      );
    }
    this.buffer = buffer;
    this.bytes = new Uint8Array(buffer);
    this.size = buffer.byteLength;
    this.pageCount = buffer.byteLength / PAGE_SIZE;
  }

  /** Throws unless [gpa, gpa + length) lies inside guest RAM. */
  checkRange(gpa: number, length: number): void {
    if (
      !Number.isInteger(gpa) ||
      !Number.isInteger(length) ||
      gpa < 0 ||
      length < 0 ||
      gpa + length > this.size
    ) {
      throw new MemoryAccessError(
        'out-of-bounds',
        `GPA range 0x${gpa.toString(16)}+${length} is outside guest memory (${this.size} bytes)`,
      );
    }
  }

  /** Throws unless `pfn` names a page of guest RAM. */
  checkPfn(pfn: number): void {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.pageCount) {
      throw new MemoryAccessError(
        'out-of-bounds',
        `PFN 0x${pfn.toString(16)} is outside guest memory (${this.pageCount} pages)`,
      );
    }
  }

  /** A live view (no copy) of [gpa, gpa + length). */
  view(gpa: number, length: number): Uint8Array {
    this.checkRange(gpa, length);
    return this.bytes.subarray(gpa, gpa + length);
  }

  /** A live view of one whole page. */
  page(pfn: number): Uint8Array {
    this.checkPfn(pfn);
    const gpa = pfn * PAGE_SIZE;
    return this.bytes.subarray(gpa, gpa + PAGE_SIZE);
  }

  /** An Int32Array over `words` 32-bit words at `gpa` (4-byte aligned), for Atomics on control words. */
  int32View(gpa: number, words: number): Int32Array {
    if (gpa % 4 !== 0)
      throw new MemoryAccessError('invalid', `GPA 0x${gpa.toString(16)} is not 4-byte aligned`);
    this.checkRange(gpa, words * 4);
    return new Int32Array(this.buffer, gpa, words);
  }

  /** Copies guest bytes at `gpa` into `dst`. */
  read(gpa: number, dst: Uint8Array): void {
    this.checkRange(gpa, dst.length);
    dst.set(this.bytes.subarray(gpa, gpa + dst.length));
  }

  /** Copies `src` into guest RAM at `gpa`. */
  write(gpa: number, src: Uint8Array): void {
    this.checkRange(gpa, src.length);
    this.bytes.set(src, gpa);
  }

  /** Sets [gpa, gpa + length) to `value` (default 0), e.g. to scrub freshly allocated pages. */
  fill(gpa: number, length: number, value = 0): void {
    this.checkRange(gpa, length);
    this.bytes.fill(value, gpa, gpa + length);
  }
}
