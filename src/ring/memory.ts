// The memory behind one ring (spec/vmbus-wire.md 1.1-1.2): a 4096-byte control page, accessed as an
// Int32Array with Atomics, and a data area of D bytes (a positive multiple of 4096). The data area is
// either one contiguous Uint8Array (the fast path: a guest's own ring, a ring file) or a list of
// scattered 4096-byte pages (a host mapping a guest's ring GPADL, whose PFNs can be anywhere in guest
// RAM). Readers and writers copy through the wrapping helpers here, or go straight to `data` /
// `dataView` when the ring is contiguous. Copies between the ring and a caller's bytes allocate
// nothing per packet, whatever arrays the caller rotates through (see `WordView`), except a copy
// over WORD_COPY_MAX bytes of part of an array (a payload slice, a packet split by the wrap or a page
// boundary, every payload copied out of the ring), which allocates one subarray (see `copyBulk`).

import { type GuestMemory, MemoryAccessError, PAGE_SIZE } from '../memory/guest-memory.js';
import { RingError } from './errors.js';

/** Size of the control (header) page. */
export const RING_CONTROL_SIZE = 4096;
/** Word indexes (32-bit) of the control fields in the control page. */
export const CONTROL_WRITE_INDEX = 0;
export const CONTROL_READ_INDEX = 1;
export const CONTROL_INTERRUPT_MASK = 2;
export const CONTROL_PENDING_SEND_SZ = 3;
export const CONTROL_FEATURE_BITS = 16;
/** feature_bits bit 0: `feat_pending_send_sz`. */
export const RING_FEATURE_PENDING_SEND_SZ = 1;
/** Largest data area accepted (indices stay below 2^31, so Int32 control words hold them exactly). */
export const MAX_RING_DATA_SIZE = 2 ** 31 - PAGE_SIZE;

/** The control words of a ring, as read by `RingMemory.controlSnapshot` (tools, tests). */
export interface RingControlSnapshot {
  writeIndex: number;
  readIndex: number;
  interruptMask: number;
  pendingSendSize: number;
  featureBits: number;
}

export interface RingInitOptions {
  /** Initial read_index and write_index (a multiple of 8 below the data size); default 0. */
  startIndex?: number;
  /** Default 1 (`feat_pending_send_sz`), as Linux sets on both rings. */
  featureBits?: number;
  /** Default 0. */
  interruptMask?: number;
}

/**
 * Copies up to this length never allocate: they move 32-bit words through the ring's own Int32Array,
 * with the caller's array read or written as words too when `WordView` has a view of it, else as
 * bytes assembled into (split out of) each word, so any caller array of any alignment works; single
 * bytes when the ring side is unaligned. Above this length one `set` is faster than any loop
 * (measured: about 2x at 256 B, 5x at 4 KiB), see `copyBulk`.
 */
export const WORD_COPY_MAX = 128;
/** A whole source array longer than this is copied with one `set` when there is no word view of it. */
const WHOLE_SET_MIN = 32;
/** Int32Array words use the platform's byte order; the byte-assembling loops assume little-endian. */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;
/** The most consecutive uses `WordView` ever asks of a new array before it makes a view of it. */
const WORD_VIEW_MAX_STREAK = 1024;

/**
 * A one-entry cache of an Int32Array view over a caller's Uint8Array, so that small copies of a
 * caller who keeps using one array (one payload block, one receive buffer) move words on both sides
 * after one identity check. It makes a view of a new array only once that array has come `streak`
 * times in a row (2 at first, doubling with each new view, up to 1024): a caller that rotates
 * through several arrays, or passes a fresh subarray each time, never makes it allocate (its copies
 * assemble bytes into words instead), and no pattern of use makes it allocate more than once per
 * 1024 copies in the long run.
 */
export class WordView {
  private u8: Uint8Array | null = null;
  private i32: Int32Array | null = null;
  private candidate: Uint8Array | null = null;
  private seen = 0;
  private streak = 2;

  /** The view over `u8`: null while `u8` is not taken on, or when it is not 4-byte aligned. */
  of(u8: Uint8Array): Int32Array | null {
    return u8 === this.u8 || this.take(u8) ? this.i32 : null;
  }

  private take(u8: Uint8Array): boolean {
    if (u8 !== this.candidate) {
      this.candidate = u8;
      this.seen = 1;
      return false;
    }
    if (++this.seen < this.streak) return false;
    this.candidate = null;
    if (this.streak < WORD_VIEW_MAX_STREAK) this.streak <<= 1;
    this.u8 = u8;
    const b = u8.buffer;
    // A view over a buffer that can change size could end up shorter than `u8`: none is made.
    const fixed = !(b as { resizable?: boolean }).resizable && !(b as { growable?: boolean }).growable;
    this.i32 = fixed && (u8.byteOffset & 3) === 0 ? new Int32Array(b, u8.byteOffset, u8.length >>> 2) : null;
    return true;
  }
}

/**
 * Copies `len` bytes of the caller's array `src` (`src32`: its view from `WordView`, or null) into
 * a ring segment `dst` (`dst32`: an Int32Array over it, or null). Up to WORD_COPY_MAX bytes this
 * allocates nothing: words both ways, else one `set` of a whole `src`, else words assembled from
 * `src`'s bytes, else bytes. Larger copies: see `copyBulk`.
 */
export function copyIn(
  dst: Uint8Array,
  dst32: Int32Array | null,
  dstOff: number,
  src: Uint8Array,
  src32: Int32Array | null,
  srcOff: number,
  len: number,
): void {
  if (len > WORD_COPY_MAX) {
    copyBulk(dst, dstOff, src, srcOff, len);
    return;
  }
  let i = 0;
  if (dst32 !== null && (dstOff & 3) === 0) {
    const a = dstOff >>> 2;
    const n = len >>> 2;
    if (src32 !== null && (srcOff & 3) === 0) {
      const b = srcOff >>> 2;
      for (let k = 0; k < n; k++) dst32[a + k] = src32[b + k]!;
      i = n << 2;
    } else if (len > WHOLE_SET_MIN && srcOff === 0 && len === src.length) {
      dst.set(src, dstOff);
      return;
    } else if (LITTLE_ENDIAN) {
      for (let k = 0; k < n; k++) {
        const j = srcOff + (k << 2);
        dst32[a + k] = src[j]! | (src[j + 1]! << 8) | (src[j + 2]! << 16) | (src[j + 3]! << 24);
      }
      i = n << 2;
    }
  }
  for (; i < len; i++) dst[dstOff + i] = src[srcOff + i]!;
}

/**
 * Copies `len` bytes of a ring segment `src` (`src32`: an Int32Array over it, or null) into the
 * caller's array `dst` (`dst32`: its view from `WordView`, or null). Up to WORD_COPY_MAX bytes this
 * allocates nothing: words both ways, else words split into `dst`'s bytes, else bytes.
 */
export function copyOut(
  dst: Uint8Array,
  dst32: Int32Array | null,
  dstOff: number,
  src: Uint8Array,
  src32: Int32Array | null,
  srcOff: number,
  len: number,
): void {
  if (len > WORD_COPY_MAX) {
    copyBulk(dst, dstOff, src, srcOff, len);
    return;
  }
  let i = 0;
  if (src32 !== null && (srcOff & 3) === 0) {
    const a = srcOff >>> 2;
    const n = len >>> 2;
    if (dst32 !== null && (dstOff & 3) === 0) {
      const b = dstOff >>> 2;
      for (let k = 0; k < n; k++) dst32[b + k] = src32[a + k]!;
      i = n << 2;
    } else if (LITTLE_ENDIAN) {
      for (let k = 0; k < n; k++) {
        const v = src32[a + k]!;
        const j = dstOff + (k << 2);
        dst[j] = v;
        dst[j + 1] = v >>> 8;
        dst[j + 2] = v >>> 16;
        dst[j + 3] = v >>> 24;
      }
      i = n << 2;
    }
  }
  for (; i < len; i++) dst[dstOff + i] = src[srcOff + i]!;
}

/**
 * A large copy: one `set` of the whole source array (no allocation), or else of a subarray, which
 * allocates one short-lived view per call. No builtin copies part of one array into another without
 * one (Buffer#copy makes one too); an allocation-free word loop was 2x slower at 256 B and 5x at
 * 4 KiB; `copyWithin` needs both sides in one buffer, and asking a caller's array for its `.buffer`
 * costs more (about 40 ns in Node 20) than the subarray it would save.
 */
function copyBulk(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, len: number): void {
  if (srcOff === 0 && len === src.length) dst.set(src, dstOff);
  else dst.set(src.subarray(srcOff, srcOff + len), dstOff);
}

export class RingMemory {
  /** The whole control page as 1024 Int32 words; use Atomics on words 0-3 and 16. */
  readonly control: Int32Array;
  /** D: the data area's size in bytes. */
  readonly dataSize: number;
  /** The contiguous data area, or null when it is scattered over `pages`. */
  readonly data: Uint8Array | null;
  /** A DataView over `data`, or null. */
  readonly dataView: DataView | null;
  /** The data pages (4096 bytes each) when scattered, else null. */
  readonly pages: readonly Uint8Array[] | null;
  /** Int32Array views over `data` / each of `pages` (for word copies). */
  readonly data32: Int32Array | null;
  readonly pages32: readonly Int32Array[] | null;
  /** DataViews over each of `pages` (for page-local fast paths), else null. */
  readonly pageViews: readonly DataView[] | null;
  /**
   * `control`: at least the first 17 words of the control page (normally all 1024). `data`: the
   * contiguous data area, or its pages in ring order.
   */
  constructor(control: Int32Array, data: Uint8Array | readonly Uint8Array[]) {
    if (control.length < CONTROL_FEATURE_BITS + 1) {
      throw new RingError('bad-layout', 'control', `control page view has ${control.length} words, needs 17`);
    }
    let size: number;
    if (data instanceof Uint8Array) {
      size = data.length;
      this.data = data;
      this.dataView = new DataView(data.buffer, data.byteOffset, data.byteLength);
      this.pages = null;
      this.data32 =
        data.byteOffset % 4 === 0 ? new Int32Array(data.buffer, data.byteOffset, data.length >>> 2) : null;
      this.pages32 = null;
      this.pageViews = null;
    } else {
      for (const p of data) {
        if (p.length !== PAGE_SIZE) {
          throw new RingError('bad-layout', 'data', `a data page has ${p.length} bytes, not ${PAGE_SIZE}`);
        }
      }
      size = data.length * PAGE_SIZE;
      this.data = null;
      this.dataView = null;
      this.pages = [...data];
      this.data32 = null;
      this.pages32 = data.every((p) => p.byteOffset % 4 === 0)
        ? data.map((p) => new Int32Array(p.buffer, p.byteOffset, PAGE_SIZE / 4))
        : null;
      this.pageViews = data.map((p) => new DataView(p.buffer, p.byteOffset, PAGE_SIZE));
    }
    if (size === 0 || size % PAGE_SIZE !== 0 || size > MAX_RING_DATA_SIZE) {
      throw new RingError(
        'bad-layout',
        'data',
        `data area of ${size} bytes is not a positive multiple of ${PAGE_SIZE} up to ${MAX_RING_DATA_SIZE}`,
      );
    }
    this.control = control;
    this.dataSize = size;
  }

  /** True when the data area is one contiguous array. */
  get contiguous(): boolean {
    return this.data !== null;
  }

  /**
   * A ring held in one buffer: control page at 0, data area after it (a ring file). The length must
   * be a multiple of 4096 and at least 8192; the buffer's byte offset a multiple of 4. Plain
   * ArrayBuffers work too (Atomics accept non-shared Int32Arrays).
   */
  static fromBytes(bytes: Uint8Array | ArrayBuffer | SharedArrayBuffer): RingMemory {
    const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    if (u8.length < RING_CONTROL_SIZE + PAGE_SIZE || u8.length % PAGE_SIZE !== 0) {
      throw new RingError(
        'bad-layout',
        'ring',
        `a ring of ${u8.length} bytes is not a control page plus a multiple of ${PAGE_SIZE} bytes of data`,
      );
    }
    if (u8.byteOffset % 4 !== 0) throw new RangeError('ring bytes must start at a 4-byte aligned offset');
    const control = new Int32Array(u8.buffer, u8.byteOffset, RING_CONTROL_SIZE / 4);
    return new RingMemory(control, u8.subarray(RING_CONTROL_SIZE));
  }

  /**
   * The ring whose pages are `pfns` in guest memory: `pfns[0]` is the control page, the rest the data
   * pages in order. Consecutive data PFNs give the contiguous fast path. A PFN outside guest memory
   * is a RingError `bad-memory`.
   */
  static fromGuestMemory(mem: GuestMemory, pfns: readonly number[]): RingMemory {
    if (pfns.length < 2) {
      throw new RingError('bad-layout', 'ring', `a ring needs at least 2 pages, got ${pfns.length}`);
    }
    try {
      for (const pfn of pfns) mem.checkPfn(pfn);
      const control = mem.int32View(pfns[0]! * PAGE_SIZE, RING_CONTROL_SIZE / 4);
      let consecutive = true;
      for (let i = 2; i < pfns.length; i++) {
        if (pfns[i] !== pfns[i - 1]! + 1) {
          consecutive = false;
          break;
        }
      }
      const dataPages = pfns.length - 1;
      if (consecutive) return new RingMemory(control, mem.view(pfns[1]! * PAGE_SIZE, dataPages * PAGE_SIZE));
      const pages: Uint8Array[] = [];
      for (let i = 1; i < pfns.length; i++) pages.push(mem.page(pfns[i]!));
      return new RingMemory(control, pages);
    } catch (e) {
      if (e instanceof MemoryAccessError) throw new RingError('bad-memory', 'pfn', e.message, { cause: e });
      throw e;
    }
  }

  /** Reads the five control words (Atomics loads). */
  controlSnapshot(): RingControlSnapshot {
    const c = this.control;
    return {
      writeIndex: Atomics.load(c, CONTROL_WRITE_INDEX) >>> 0,
      readIndex: Atomics.load(c, CONTROL_READ_INDEX) >>> 0,
      interruptMask: Atomics.load(c, CONTROL_INTERRUPT_MASK) >>> 0,
      pendingSendSize: Atomics.load(c, CONTROL_PENDING_SEND_SZ) >>> 0,
      featureBits: Atomics.load(c, CONTROL_FEATURE_BITS) >>> 0,
    };
  }

  /**
   * Sets up an empty ring as Linux's `hv_ringbuffer_init` does: zeroes the control page, both
   * indices at `startIndex`, feature_bits (default 1) and interrupt_mask (default 0).
   */
  initialize(options: RingInitOptions = {}): void {
    const start = options.startIndex ?? 0;
    if (!Number.isInteger(start) || start < 0 || start >= this.dataSize || start % 8 !== 0) {
      throw new RangeError(`start index ${start} is not a multiple of 8 below ${this.dataSize}`);
    }
    const c = this.control;
    for (let i = 0; i < c.length; i++) Atomics.store(c, i, 0);
    Atomics.store(c, CONTROL_FEATURE_BITS, options.featureBits ?? RING_FEATURE_PENDING_SEND_SZ);
    Atomics.store(c, CONTROL_INTERRUPT_MASK, options.interruptMask ?? 0);
    Atomics.store(c, CONTROL_READ_INDEX, start);
    Atomics.store(c, CONTROL_WRITE_INDEX, start);
  }

  /**
   * Copies `len` (<= D) bytes of `src` into the data area at `pos` (< D), wrapping at D. `src32`
   * (an Int32Array over `src`, see WordView) enables word copies.
   */
  write(pos: number, src: Uint8Array, srcOff: number, len: number, src32: Int32Array | null = null): void {
    const data = this.data;
    if (data !== null) {
      const first = this.dataSize - pos;
      if (len <= first) {
        copyIn(data, this.data32, pos, src, src32, srcOff, len);
      } else {
        copyIn(data, this.data32, pos, src, src32, srcOff, first);
        copyIn(data, this.data32, 0, src, src32, srcOff + first, len - first);
      }
      return;
    }
    const pages = this.pages!;
    const pages32 = this.pages32;
    while (len > 0) {
      const inPage = pos & (PAGE_SIZE - 1);
      const n = Math.min(len, PAGE_SIZE - inPage);
      const i = pos >>> 12;
      copyIn(pages[i]!, pages32 === null ? null : pages32[i]!, inPage, src, src32, srcOff, n);
      srcOff += n;
      len -= n;
      pos += n;
      if (pos === this.dataSize) pos = 0;
    }
  }

  /**
   * Copies `len` (<= D) bytes of the data area at `pos` (< D) into `dst`, wrapping at D. `dst32`
   * (an Int32Array over `dst`, see WordView) enables word copies.
   */
  read(pos: number, dst: Uint8Array, dstOff: number, len: number, dst32: Int32Array | null = null): void {
    const data = this.data;
    if (data !== null) {
      const first = this.dataSize - pos;
      if (len <= first) {
        copyOut(dst, dst32, dstOff, data, this.data32, pos, len);
      } else {
        copyOut(dst, dst32, dstOff, data, this.data32, pos, first);
        copyOut(dst, dst32, dstOff + first, data, this.data32, 0, len - first);
      }
      return;
    }
    const pages = this.pages!;
    const pages32 = this.pages32;
    while (len > 0) {
      const inPage = pos & (PAGE_SIZE - 1);
      const n = Math.min(len, PAGE_SIZE - inPage);
      const i = pos >>> 12;
      copyOut(dst, dst32, dstOff, pages[i]!, pages32 === null ? null : pages32[i]!, inPage, n);
      dstOff += n;
      len -= n;
      pos += n;
      if (pos === this.dataSize) pos = 0;
    }
  }

  /** Writes `len` (<= D) zero bytes at `pos` (< D), wrapping at D. */
  zero(pos: number, len: number): void {
    const D = this.dataSize;
    const data = this.data;
    while (len > 0) {
      let n: number;
      if (data !== null) {
        n = Math.min(len, D - pos);
        if (n <= 16) for (let i = 0; i < n; i++) data[pos + i] = 0;
        else data.fill(0, pos, pos + n);
      } else {
        const inPage = pos & (PAGE_SIZE - 1);
        n = Math.min(len, PAGE_SIZE - inPage);
        this.pages![pos >>> 12]!.fill(0, inPage, inPage + n);
      }
      len -= n;
      pos += n;
      if (pos === D) pos = 0;
    }
  }

  /** The byte at `pos` (< D). */
  byteAt(pos: number): number {
    const data = this.data;
    return data !== null ? data[pos]! : this.pages![pos >>> 12]![pos & (PAGE_SIZE - 1)]!;
  }
}

/** The two rings of one channel, named by direction. */
export interface ChannelRings {
  /** Pages [0, N): guest-to-host (the guest's TX, the host's incoming ring). */
  guestToHost: RingMemory;
  /** Pages [N, end): host-to-guest (the host's outgoing ring, the guest's RX). */
  hostToGuest: RingMemory;
}

/**
 * Both rings of a channel from its ring GPADL's PFN list and `downstream_ringbuffer_pageoffset` N
 * (spec 1.1). Each ring must have at least 2 pages (0 < N < pages is implied); violations are a
 * RingError `bad-layout` naming `downstream_ringbuffer_pageoffset`.
 */
export function channelRingsFromGpadl(
  mem: GuestMemory,
  pfns: readonly number[],
  downstreamPageOffset: number,
): ChannelRings {
  const n = downstreamPageOffset;
  if (!Number.isInteger(n) || n <= 0 || n >= pfns.length) {
    throw new RingError(
      'bad-layout',
      'downstream_ringbuffer_pageoffset',
      `${n} is not inside the ${pfns.length}-page ring GPADL`,
    );
  }
  if (n < 2 || pfns.length - n < 2) {
    throw new RingError(
      'bad-layout',
      'downstream_ringbuffer_pageoffset',
      `${n} leaves a ring with fewer than 2 pages (GPADL has ${pfns.length})`,
    );
  }
  return {
    guestToHost: RingMemory.fromGuestMemory(mem, pfns.slice(0, n)),
    hostToGuest: RingMemory.fromGuestMemory(mem, pfns.slice(n)),
  };
}
