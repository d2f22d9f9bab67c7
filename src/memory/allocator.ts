// The guest's page allocator: hands out pages of guest RAM as PFN lists, either as one contiguous
// run or deliberately scattered (non-adjacent, shuffled, reproducible from a seed) the way memory
// of a long-running guest really looks. A bitmap, one bit per page, is the truth; scattered
// requests are served from a shuffled stack of free pages, so every call costs O(pages handed out
// or given back) plus, for contiguous runs, a word-at-a-time bitmap scan.

import { type GuestMemory, MemoryAccessError } from './guest-memory.js';

/** `contiguous`: one run of adjacent PFNs. `scattered`: shuffled PFNs, no two successive ones adjacent. */
export type AllocationMode = 'contiguous' | 'scattered';

export interface PageAllocatorOptions {
  /** Pages [0, reservedLowPages) are never handed out. Default 1: a PFN of 0 is always a bug. */
  reservedLowPages?: number;
  /** Seed of the scattered mode's shuffle (default 1): the same seed and calls give the same PFNs. */
  seed?: number;
}

const FULL_WORD = 0xffffffff;
/** A freed page goes to a random place among the top entries of the scattered-mode stack. */
const SHUFFLE_WINDOW = 256;

export class PageAllocator {
  readonly memory: GuestMemory;
  /** Pages of guest RAM (including reserved ones). */
  readonly pageCount: number;
  readonly reservedLowPages: number;

  /** One bit per page, set = in use (allocated, reserved, or past the end of RAM). */
  private readonly bitmap: Uint32Array;
  private freeCount: number;
  /** No word below this index has a clear bit. */
  private firstFreeWord = 0;

  // Scattered mode: a stack holding every free page (plus stale entries for pages since taken by
  // a contiguous allocation, skipped when popped), created on first use. `inPool` says which pages
  // are on the stack, so each page is on it at most once.
  private pool: Uint32Array | null = null;
  private poolSize = 0;
  private inPool: Uint8Array | null = null;
  private rngState: number;

  constructor(memory: GuestMemory, options: PageAllocatorOptions = {}) {
    const reserved = options.reservedLowPages ?? 1;
    if (!Number.isInteger(reserved) || reserved < 0 || reserved > memory.pageCount) {
      throw new MemoryAccessError(
        'invalid',
        `reservedLowPages ${reserved} is not an integer in [0, ${memory.pageCount}]`,
      );
    }
    const seed = options.seed ?? 1;
    if (!Number.isInteger(seed)) throw new MemoryAccessError('invalid', `seed ${seed} is not an integer`);
    this.memory = memory;
    this.pageCount = memory.pageCount;
    this.reservedLowPages = reserved;
    this.rngState = seed >>> 0 || 0x9e3779b9;
    const words = Math.ceil(this.pageCount / 32);
    this.bitmap = new Uint32Array(words);
    this.setRange(0, reserved);
    // Bits past the last page are permanently "in use".
    for (let p = this.pageCount; p < words * 32; p++) this.bitmap[p >>> 5] |= 1 << (p & 31);
    this.freeCount = this.pageCount - reserved;
    this.advanceFirstFreeWord();
  }

  /** Pages that can still be allocated. */
  get freePageCount(): number {
    return this.freeCount;
  }

  /** Pages currently handed out (reserved pages not counted). */
  get allocatedPageCount(): number {
    return this.pageCount - this.reservedLowPages - this.freeCount;
  }

  /** Whether `pfn` is currently handed out (false for reserved and out-of-range pages). */
  isAllocated(pfn: number): boolean {
    if (!Number.isInteger(pfn) || pfn < this.reservedLowPages || pfn >= this.pageCount) return false;
    return (this.bitmap[pfn >>> 5] & (1 << (pfn & 31))) !== 0;
  }

  /**
   * Allocates `count` pages and returns their PFNs (a fresh array the caller owns), in the order
   * the buffer uses them. Throws
   * MemoryAccessError('exhausted') without changing anything if the request cannot be met.
   */
  allocate(count: number, mode: AllocationMode = 'contiguous'): Uint32Array {
    if (mode === 'contiguous') return this.allocateContiguous(count);
    if (mode === 'scattered') return this.allocateScattered(count);
    throw new MemoryAccessError('invalid', `unknown allocation mode ${String(mode)}`);
  }

  /** `count` adjacent pages (lowest-addressed run that fits): [first, first + 1, ...]. */
  allocateContiguous(count: number): Uint32Array {
    this.checkCount(count);
    if (count === 0) return new Uint32Array(0);
    const first = count <= this.freeCount ? this.findRun(count) : -1;
    if (first < 0) {
      throw new MemoryAccessError(
        'exhausted',
        `no run of ${count} contiguous free pages (${this.freeCount} pages free in total)`,
      );
    }
    this.setRange(first, count);
    this.freeCount -= count;
    this.advanceFirstFreeWord();
    const out = new Uint32Array(count);
    for (let i = 0; i < count; i++) out[i] = first + i;
    return out;
  }

  /**
   * `count` pages in shuffled order, no PFN directly following its predecessor (pfns[i + 1] !==
   * pfns[i] + 1) unless the free pages leave no other choice. Deterministic for a given seed and
   * call history.
   */
  allocateScattered(count: number): Uint32Array {
    this.checkCount(count);
    if (count === 0) return new Uint32Array(0);
    if (count > this.freeCount) {
      throw new MemoryAccessError('exhausted', `cannot allocate ${count} pages: only ${this.freeCount} free`);
    }
    this.ensurePool();
    const out = new Uint32Array(count);
    let prev = -2;
    for (let i = 0; i < count; i++) {
      let pfn = this.popFree();
      if (pfn === prev + 1) {
        const other = this.popFree();
        if (other >= 0) {
          this.pushBack(pfn);
          pfn = other;
        }
      }
      this.bitmap[pfn >>> 5] |= 1 << (pfn & 31);
      out[i] = pfn;
      prev = pfn;
    }
    this.freeCount -= count;
    this.advanceFirstFreeWord();
    return out;
  }

  /**
   * Gives pages back. All or nothing: a PFN that is out of range, reserved, not allocated, or
   * listed twice throws MemoryAccessError('invalid') and frees none of them.
   */
  free(pfns: ArrayLike<number>): void {
    const n = pfns.length;
    const bitmap = this.bitmap;
    const pageCount = this.pageCount;
    const reserved = this.reservedLowPages;
    for (let i = 0; i < n; i++) {
      const pfn = pfns[i];
      // (pfn >>> 0) === pfn: an integer in [0, 2^32); written so that NaN fails too.
      if (
        !(pfn >= reserved && pfn < pageCount && pfn >>> 0 === pfn) ||
        (bitmap[pfn >>> 5] & (1 << (pfn & 31))) === 0
      ) {
        throw this.badFree(pfn);
      }
    }
    let lowest = this.firstFreeWord;
    for (let i = 0; i < n; i++) {
      const pfn = pfns[i];
      const w = pfn >>> 5;
      const bit = 1 << (pfn & 31);
      if ((bitmap[w] & bit) === 0) {
        // Listed twice: put back what this call already cleared (all distinct so far).
        for (let j = 0; j < i; j++) bitmap[pfns[j] >>> 5] |= 1 << (pfns[j] & 31);
        throw new MemoryAccessError('invalid', `double free of PFN 0x${pfn.toString(16)}`);
      }
      bitmap[w] &= ~bit;
      if (w < lowest) lowest = w;
    }
    this.freeCount += n;
    this.firstFreeWord = lowest;
    if (this.pool !== null) this.addToPool(pfns);
  }

  private badFree(pfn: number): MemoryAccessError {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.pageCount) {
      return new MemoryAccessError('invalid', `free of PFN ${pfn}: outside guest memory`);
    }
    if (pfn < this.reservedLowPages) {
      return new MemoryAccessError('invalid', `free of PFN 0x${pfn.toString(16)}: a reserved page`);
    }
    return new MemoryAccessError('invalid', `free of PFN 0x${pfn.toString(16)}: not allocated`);
  }

  private checkCount(count: number): void {
    if (!Number.isSafeInteger(count) || count < 0) {
      throw new MemoryAccessError('invalid', `page count ${count} is not a non-negative integer`);
    }
  }

  /** First PFN of the lowest run of `count` clear bits, or -1. */
  private findRun(count: number): number {
    const bitmap = this.bitmap;
    const words = bitmap.length;
    let run = 0;
    let start = 0;
    for (let w = this.firstFreeWord; w < words; w++) {
      const word = bitmap[w];
      if (word === 0) {
        if (run === 0) start = w * 32;
        run += 32;
        if (run >= count) return start;
      } else if (word === FULL_WORD) {
        run = 0;
      } else {
        for (let b = 0; b < 32; b++) {
          if ((word >>> b) & 1) {
            run = 0;
          } else {
            if (run === 0) start = w * 32 + b;
            if (++run >= count) return start;
          }
        }
      }
    }
    return -1;
  }

  /** Sets the bits of pages [first, first + count). */
  private setRange(first: number, count: number): void {
    const bitmap = this.bitmap;
    let p = first;
    const end = first + count;
    while (p < end && (p & 31) !== 0) {
      bitmap[p >>> 5] |= 1 << (p & 31);
      p++;
    }
    const fullEnd = end - (end & 31);
    if (p < fullEnd) {
      bitmap.fill(FULL_WORD, p >>> 5, fullEnd >>> 5);
      p = fullEnd;
    }
    while (p < end) {
      bitmap[p >>> 5] |= 1 << (p & 31);
      p++;
    }
  }

  private advanceFirstFreeWord(): void {
    const bitmap = this.bitmap;
    let w = this.firstFreeWord;
    while (w < bitmap.length && bitmap[w] === FULL_WORD) w++;
    this.firstFreeWord = w;
  }

  /** xorshift32: a small deterministic generator; returns an integer in [0, bound). */
  private random(bound: number): number {
    let x = this.rngState;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rngState = x >>> 0;
    return Math.floor((this.rngState / 0x100000000) * bound);
  }

  private ensurePool(): void {
    if (this.pool !== null) return;
    const pool = new Uint32Array(this.pageCount);
    const inPool = new Uint8Array(this.pageCount);
    let size = 0;
    for (let p = this.reservedLowPages; p < this.pageCount; p++) {
      if ((this.bitmap[p >>> 5] & (1 << (p & 31))) === 0) {
        pool[size++] = p;
        inPool[p] = 1;
      }
    }
    for (let i = size - 1; i > 0; i--) {
      const j = this.random(i + 1);
      const t = pool[i];
      pool[i] = pool[j];
      pool[j] = t;
    }
    this.pool = pool;
    this.inPool = inPool;
    this.poolSize = size;
  }

  /** Pops the next free page off the shuffled stack, or -1 if none is left. */
  private popFree(): number {
    const pool = this.pool!;
    const inPool = this.inPool!;
    while (this.poolSize > 0) {
      const pfn = pool[--this.poolSize];
      inPool[pfn] = 0;
      if ((this.bitmap[pfn >>> 5] & (1 << (pfn & 31))) === 0) return pfn;
    }
    return -1;
  }

  /** Returns a just-popped free page to the top of the stack. */
  private pushBack(pfn: number): void {
    this.pool![this.poolSize++] = pfn;
    this.inPool![pfn] = 1;
  }

  /**
   * Adds freed pages to the stack, each at a random place among the top SHUFFLE_WINDOW entries, so
   * they are reused soon but in shuffled order. Pages still on the stack are not added twice.
   */
  private addToPool(pfns: ArrayLike<number>): void {
    const pool = this.pool!;
    const inPool = this.inPool!;
    let size = this.poolSize;
    let x = this.rngState;
    for (let i = 0; i < pfns.length; i++) {
      const pfn = pfns[i];
      if (inPool[pfn] === 1) continue;
      inPool[pfn] = 1;
      // xorshift32, inlined from random() for speed.
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const span = size < SHUFFLE_WINDOW ? size + 1 : SHUFFLE_WINDOW;
      const j = size + 1 - span + Math.floor(((x >>> 0) / 0x100000000) * span);
      pool[size] = pool[j];
      pool[j] = pfn;
      size++;
    }
    this.rngState = x >>> 0;
    this.poolSize = size;
  }
}
