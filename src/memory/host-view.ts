// The host's checked view of guest memory. The host may touch guest RAM only where the guest let
// it in: the pages of a mapped GPADL, or a packet's external data until the packet is completed.
// Each such permission is a grant (a PFN list, read-only or writable) that can be revoked. Checks
// cost a couple of typed-array lookups per page: per-page counters of live grants, no JS objects
// per page. A GrantedMdl is the MDL-shaped accessor over one grant that KMCL hands to servers.

import { type GuestMemory, MemoryAccessError, type MemoryErrorCode, PAGE_SIZE } from './guest-memory.js';
import { checkMdlShape, copyPageRuns, forEachMdl, type Mdl } from './mdl.js';

export interface GrantOptions {
  /** Reads only; writes through this grant are refused with 'read-only'. Default false. */
  readOnly?: boolean;
  /** Names the grant in error messages, e.g. "GPADL 7 of channel 3". */
  label?: string;
}

export type AccessKind = 'read' | 'write';

/** Bits of the per-page record of revoked grants. */
const REVOKED_READ = 1;
const REVOKED_WRITE = 2;

/** The counters a view and its grants share. */
interface GrantTable {
  readonly memory: GuestMemory;
  /** Live grants covering each page (counting a page once per occurrence in a grant). */
  readonly readers: Uint32Array;
  /** Live writable grants covering each page. */
  readonly writers: Uint32Array;
  /** REVOKED_READ / REVOKED_WRITE once a revoked (writable) grant covered the page. */
  readonly revokedMarks: Uint8Array;
  readonly live: Set<MemoryGrant>;
}

/** One permission for the host to touch a set of guest pages; made by HostMemoryView.grant. */
export class MemoryGrant {
  /** The granted pages, in the order given (a private copy). */
  readonly pfns: Uint32Array;
  readonly readOnly: boolean;
  readonly label: string;
  private readonly table: GrantTable;
  private isRevoked = false;
  private wholePages: GrantedMdl | null = null;

  /** @internal Use HostMemoryView.grant / grantMdl. `pfns` must be checked and owned by the grant. */
  constructor(table: GrantTable, pfns: Uint32Array, readOnly: boolean, label: string) {
    this.table = table;
    this.pfns = pfns;
    this.readOnly = readOnly;
    this.label = label;
    const { readers, writers } = table;
    for (let i = 0; i < pfns.length; i++) readers[pfns[i]]++;
    if (!readOnly) for (let i = 0; i < pfns.length; i++) writers[pfns[i]]++;
    table.live.add(this);
  }

  get revoked(): boolean {
    return this.isRevoked;
  }

  /** Withdraws the grant; every later access that needed it is refused. Idempotent. */
  revoke(): void {
    if (this.isRevoked) return;
    this.isRevoked = true;
    const { readers, writers, revokedMarks, live } = this.table;
    const pfns = this.pfns;
    const mark = this.readOnly ? REVOKED_READ : REVOKED_READ | REVOKED_WRITE;
    for (let i = 0; i < pfns.length; i++) {
      const pfn = pfns[i];
      readers[pfn]--;
      revokedMarks[pfn] |= mark;
    }
    if (!this.readOnly) for (let i = 0; i < pfns.length; i++) writers[pfns[i]]--;
    live.delete(this);
  }

  /** The grant's pages as one offset-addressed buffer of pfns.length * 4096 bytes (same object each call). */
  map(): GrantedMdl {
    this.wholePages ??= new GrantedMdl(
      this.table.memory,
      this,
      [0],
      [0],
      [this.pfns.length * PAGE_SIZE],
      [0],
    );
    return this.wholePages;
  }
}

/**
 * An MDL chain the host was granted, addressed by byte offset within the chain (offset 0 is the
 * first MDL's byteOffset within its first page), like a mapped MDL. Works only while its grant is
 * live: afterwards every access throws 'revoked'. Each call checks the grant once and copies each
 * run of physically adjacent pages with one `TypedArray.set`.
 */
export class GrantedMdl {
  readonly grant: MemoryGrant;
  /** Total bytes of the chain. */
  readonly byteCount: number;
  readonly readOnly: boolean;
  private readonly bytes: Uint8Array;
  private readonly pfns: Uint32Array;
  // One entry per MDL of the chain: where it starts in the chain's bytes, its byteOffset and
  // byteCount, and the index in `pfns` of its first page.
  private readonly pieceStart: number[];
  private readonly pieceByteOffset: number[];
  private readonly pieceByteCount: number[];
  private readonly piecePage: number[];
  private descriptor: Mdl | null = null;

  /** @internal Use HostMemoryView.grantMdl or MemoryGrant.map. */
  constructor(
    memory: GuestMemory,
    grant: MemoryGrant,
    pieceStart: number[],
    pieceByteOffset: number[],
    pieceByteCount: number[],
    piecePage: number[],
  ) {
    this.grant = grant;
    this.readOnly = grant.readOnly;
    this.bytes = memory.bytes;
    this.pfns = grant.pfns;
    this.pieceStart = pieceStart;
    this.pieceByteOffset = pieceByteOffset;
    this.pieceByteCount = pieceByteCount;
    this.piecePage = piecePage;
    const last = pieceStart.length - 1;
    this.byteCount = pieceStart[last] + pieceByteCount[last];
  }

  get revoked(): boolean {
    return this.grant.revoked;
  }

  /** The chain's descriptor (a copy; changing it does not change what this object accesses). */
  get mdl(): Mdl {
    if (this.descriptor === null) {
      const pieces: Mdl[] = [];
      for (let k = 0; k < this.pieceStart.length; k++) {
        const pages =
          (k + 1 < this.piecePage.length ? this.piecePage[k + 1] : this.pfns.length) - this.piecePage[k];
        const pfns = Array.from(this.pfns.subarray(this.piecePage[k], this.piecePage[k] + pages));
        pieces.push({
          byteOffset: this.pieceByteOffset[k],
          byteCount: this.pieceByteCount[k],
          pfns,
          next: null,
        });
      }
      for (let k = 0; k + 1 < pieces.length; k++) pieces[k].next = pieces[k + 1];
      this.descriptor = pieces[0];
    }
    return this.descriptor;
  }

  /** Copies bytes [offset, offset + dst.length) of the chain into `dst`. */
  read(offset: number, dst: Uint8Array): void {
    this.access(offset, dst, false);
  }

  /** Copies `src` into bytes [offset, offset + src.length) of the chain; refused if read-only. */
  write(offset: number, src: Uint8Array): void {
    if (this.readOnly && !this.grant.revoked) {
      throw new MemoryAccessError('read-only', `write through read-only grant ${this.grant.label}`);
    }
    this.access(offset, src, true);
  }

  /** Revokes the underlying grant. */
  revoke(): void {
    this.grant.revoke();
  }

  private access(offset: number, buf: Uint8Array, toGuest: boolean): void {
    if (this.grant.revoked) {
      throw new MemoryAccessError('revoked', `grant ${this.grant.label} has been revoked`);
    }
    const length = buf.length;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.byteCount) {
      throw new MemoryAccessError(
        'out-of-bounds',
        `range ${offset}+${length} is outside the ${this.byteCount} bytes of grant ${this.grant.label}`,
      );
    }
    if (length === 0) return;
    const starts = this.pieceStart;
    // Last piece starting at or before `offset` (it contains `offset`, see the bounds check).
    let k = 0;
    if (starts.length > 1) {
      let lo = 0;
      let hi = starts.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >>> 1;
        if (starts[mid] <= offset) lo = mid;
        else hi = mid - 1;
      }
      k = lo;
    }
    let skip = offset - starts[k];
    let bufPos = 0;
    let remaining = length;
    while (remaining > 0) {
      const count = this.pieceByteCount[k];
      if (skip < count) {
        const take = Math.min(count - skip, remaining);
        const start = this.pieceByteOffset[k] + skip;
        const page = Math.floor(start / PAGE_SIZE);
        copyPageRuns(
          this.bytes,
          this.pfns,
          this.piecePage[k] + page,
          start - page * PAGE_SIZE,
          buf,
          bufPos,
          take,
          toGuest,
        );
        bufPos += take;
        remaining -= take;
        skip = 0;
      } else {
        skip -= count;
      }
      k++;
    }
  }
}

/**
 * How the host touches guest memory: by guest physical address, allowed only on pages covered by
 * a live grant (a writable one for writes). Refusals are MemoryAccessError 'not-granted',
 * 'read-only' or 'revoked'; nothing is copied by a refused access.
 */
export class HostMemoryView {
  readonly memory: GuestMemory;
  private readonly table: GrantTable;
  private grantSerial = 0;

  constructor(memory: GuestMemory) {
    this.memory = memory;
    this.table = {
      memory,
      readers: new Uint32Array(memory.pageCount),
      writers: new Uint32Array(memory.pageCount),
      revokedMarks: new Uint8Array(memory.pageCount),
      live: new Set(),
    };
  }

  /** Live (not revoked) grants. */
  get liveGrantCount(): number {
    return this.table.live.size;
  }

  /** Grants access to the whole pages `pfns` (e.g. a mapped GPADL's pages). 'out-of-bounds' if a PFN is not in RAM. */
  grant(pfns: ArrayLike<number>, options: GrantOptions = {}): MemoryGrant {
    const copy = new Uint32Array(pfns.length);
    const pageCount = this.memory.pageCount;
    for (let i = 0; i < pfns.length; i++) {
      const pfn = pfns[i];
      if (!(pfn >= 0 && pfn < pageCount && Number.isInteger(pfn))) {
        throw new MemoryAccessError(
          'out-of-bounds',
          `grant of PFN ${pfn} (entry ${i}): not a page of guest memory (${pageCount} pages)`,
        );
      }
      copy[i] = pfn;
    }
    return new MemoryGrant(this.table, copy, options.readOnly === true, this.labelFor(options));
  }

  /**
   * Grants access to the pages of an MDL chain (a packet's external data, a GPADL's ranges) and
   * returns the offset-addressed accessor over exactly those bytes. The chain is checked first:
   * 'invalid' for a malformed MDL or a looping chain, 'out-of-bounds' for a PFN outside RAM.
   */
  grantMdl(mdl: Mdl, options: GrantOptions = {}): GrantedMdl {
    const pieceStart: number[] = [];
    const pieceByteOffset: number[] = [];
    const pieceByteCount: number[] = [];
    const piecePage: number[] = [];
    let bytes = 0;
    let pages = 0;
    forEachMdl(mdl, (m) => {
      checkMdlShape(m);
      pieceStart.push(bytes);
      pieceByteOffset.push(m.byteOffset);
      pieceByteCount.push(m.byteCount);
      piecePage.push(pages);
      bytes += m.byteCount;
      pages += m.pfns.length;
    });
    const pfns = new Uint32Array(pages);
    const pageCount = this.memory.pageCount;
    let i = 0;
    forEachMdl(mdl, (m) => {
      for (let j = 0; j < m.pfns.length; j++) {
        const pfn = m.pfns[j];
        if (!(pfn >= 0 && pfn < pageCount && Number.isInteger(pfn))) {
          throw new MemoryAccessError(
            'out-of-bounds',
            `grant of PFN ${pfn}: not a page of guest memory (${pageCount} pages)`,
          );
        }
        pfns[i++] = pfn;
      }
    });
    const grant = new MemoryGrant(this.table, pfns, options.readOnly === true, this.labelFor(options));
    return new GrantedMdl(this.memory, grant, pieceStart, pieceByteOffset, pieceByteCount, piecePage);
  }

  /** Revokes every live grant (e.g. when the guest resets). */
  revokeAll(): void {
    for (const grant of [...this.table.live]) grant.revoke();
  }

  /** Why an access to [gpa, gpa + length) would be refused, or null if it is allowed. */
  accessError(gpa: number, length: number, access: AccessKind): MemoryErrorCode | null {
    try {
      this.check(gpa, length, access);
      return null;
    } catch (e) {
      if (e instanceof MemoryAccessError) return e.code;
      throw e;
    }
  }

  /**
   * Throws unless the host may `access` [gpa, gpa + length): 'out-of-bounds' outside RAM; else,
   * over the refused pages, 'not-granted' if some page was never let in for this access,
   * otherwise 'read-only' if some page is covered only by read-only grants (for a write),
   * otherwise 'revoked' (every refused page was covered, for this access, by a since revoked grant).
   */
  check(gpa: number, length: number, access: AccessKind): void {
    this.memory.checkRange(gpa, length);
    if (length === 0) return;
    const first = Math.floor(gpa / PAGE_SIZE);
    const last = Math.floor((gpa + length - 1) / PAGE_SIZE);
    const counts = access === 'write' ? this.table.writers : this.table.readers;
    for (let p = first; p <= last; p++) {
      if (counts[p] === 0) throw this.refusal(gpa, length, first, last, access);
    }
  }

  /** Copies guest bytes at `gpa` into `dst` if every page touched is granted. */
  read(gpa: number, dst: Uint8Array): void {
    this.check(gpa, dst.length, 'read');
    dst.set(this.memory.bytes.subarray(gpa, gpa + dst.length));
  }

  /** Copies `src` to guest RAM at `gpa` if every page touched is granted writable. */
  write(gpa: number, src: Uint8Array): void {
    this.check(gpa, src.length, 'write');
    this.memory.bytes.set(src, gpa);
  }

  private labelFor(options: GrantOptions): string {
    this.grantSerial++;
    return options.label ?? `#${this.grantSerial}`;
  }

  private refusal(
    gpa: number,
    length: number,
    first: number,
    last: number,
    access: AccessKind,
  ): MemoryAccessError {
    const { readers, writers, revokedMarks } = this.table;
    const write = access === 'write';
    const counts = write ? writers : readers;
    const revokedBit = write ? REVOKED_WRITE : REVOKED_READ;
    let notGranted = -1;
    let readOnly = -1;
    let revoked = -1;
    for (let p = first; p <= last; p++) {
      if (counts[p] !== 0) continue;
      if (revokedMarks[p] & revokedBit) {
        if (revoked < 0) revoked = p;
      } else if (write && readers[p] !== 0) {
        if (readOnly < 0) readOnly = p;
      } else if (notGranted < 0) {
        notGranted = p;
      }
    }
    const range = `GPA range 0x${gpa.toString(16)}+${length}`;
    if (notGranted >= 0) {
      return new MemoryAccessError(
        'not-granted',
        `${access} of ${range}: page 0x${notGranted.toString(16)} was not granted to the host`,
      );
    }
    if (readOnly >= 0) {
      return new MemoryAccessError(
        'read-only',
        `write of ${range}: page 0x${readOnly.toString(16)} is granted read-only`,
      );
    }
    return new MemoryAccessError(
      'revoked',
      `${access} of ${range}: the grant of page 0x${revoked.toString(16)} has been revoked`,
    );
  }
}
