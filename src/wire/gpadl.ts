// GPADLs on the wire: the gpa_range list (shared with GPA-direct packets), splitting a GPADL into a
// GPADL_HEADER plus GPADL_BODY messages, and reassembling those messages on the receiving side with
// every count, offset and limit checked (spec/vmbus-wire.md 2.3 and 3.4).

import { PAGE_SIZE } from './constants.js';
import { WireError, type WireErrorCode } from './errors.js';
import { PFN_LIMIT, readPfnOrMinus1, readU32, writeU16, writeU32, writeU64Number } from './messages/bytes.js';
import {
  GPADL_BODY_MAX_PFNS,
  GPADL_BODY_SIZE,
  GPADL_HEADER_MAX_VALUES,
  GPADL_HEADER_SIZE,
  type GpadlBodyMessage,
  type GpadlHeaderMessage,
} from './messages.js';
import type { GpaRange } from './packets.js';

// One gpa_range: `byteCount` bytes starting `byteOffset` bytes into the first page of `pfns`, with
// `pfns.length === ceil((byteOffset + byteCount) / 4096)`. The type is declared once, in packets.ts
// (the packet codec uses the same record), and re-exported here.
export type { GpaRange };

/** GPADL_HEADER `range_buflen` is a u16: no GPADL can carry more than this many range bytes. */
export const GPADL_MAX_RANGE_BUFLEN = 0xffff;
/** Largest single-range GPADL: (65535 - 8) / 8 = 8190 pages (32 MiB - 8 KiB). */
export const GPADL_MAX_PAGES_ONE_RANGE = Math.floor((GPADL_MAX_RANGE_BUFLEN - 8) / 8);
/** GPADL_BODY `msgnumber` this implementation sends: 0, as Linux (kzalloc) and OpenVMM (`rsvd: 0`). */
export const GPADL_BODY_MSGNUMBER = 0;

/** Number of PFNs a range with this offset and length spans. */
function gpaRangePfnCount(byteOffset: number, byteCount: number): number {
  return Math.ceil((byteOffset + byteCount) / PAGE_SIZE);
}

/** Encoded size of a range list: 8 bytes of header plus 8 per PFN, per range. */
export function gpaRangesByteLength(ranges: readonly GpaRange[]): number {
  let n = 0;
  for (const r of ranges) n += 8 + 8 * r.pfns.length;
  return n;
}

function checkRange(r: GpaRange, i: number): void {
  const where = `gpa_range[${i}]`;
  if (!Number.isInteger(r.byteCount) || r.byteCount < 1 || r.byteCount > 0xffffffff) {
    throw new RangeError(`${where}.byteCount must be an integer 1..2^32-1, got ${r.byteCount}`);
  }
  if (!Number.isInteger(r.byteOffset) || r.byteOffset < 0 || r.byteOffset >= PAGE_SIZE) {
    throw new RangeError(`${where}.byteOffset must be an integer 0..4095, got ${r.byteOffset}`);
  }
  const want = gpaRangePfnCount(r.byteOffset, r.byteCount);
  if (!Array.isArray(r.pfns) || r.pfns.length !== want) {
    throw new RangeError(`${where}.pfns must hold ${want} PFNs, got ${r.pfns?.length}`);
  }
  for (let j = 0; j < want; j++) {
    const p = r.pfns[j]!;
    if (!Number.isInteger(p) || p < 0 || p >= PFN_LIMIT) {
      throw new RangeError(`${where}.pfns[${j}] must be an integer 0..2^52-1, got ${p}`);
    }
  }
}

/**
 * Writes a range list at `offset` and returns the bytes written. Ranges that break the format
 * (byteCount 0, byteOffset >= 4096, wrong PFN count, PFN >= 2^52) are a caller's error (RangeError).
 */
export function encodeGpaRangesInto(ranges: readonly GpaRange[], out: Uint8Array, offset: number): number {
  for (let i = 0; i < ranges.length; i++) checkRange(ranges[i]!, i);
  const len = gpaRangesByteLength(ranges);
  if (!Number.isInteger(offset) || offset < 0 || offset + len > out.length) {
    throw new RangeError(`encodeGpaRangesInto: ${len} bytes do not fit at offset ${offset} of ${out.length}`);
  }
  let o = offset;
  for (const r of ranges) {
    writeU32(out, o, r.byteCount);
    writeU32(out, o + 4, r.byteOffset);
    o += 8;
    const pfns = r.pfns;
    for (let j = 0; j < pfns.length; j++, o += 8) writeU64Number(out, o, pfns[j]!);
  }
  return len;
}

export function encodeGpaRanges(ranges: readonly GpaRange[]): Uint8Array {
  const out = new Uint8Array(gpaRangesByteLength(ranges));
  encodeGpaRangesInto(ranges, out, 0);
  return out;
}

/**
 * Validates `rangeCount` packed ranges in `bytes[offset, end)` without allocating and returns the
 * offset just past the last one. Refuses with a WireError naming `field[i]...`: a range that
 * needs more bytes than remain ('inconsistent'), byte_count 0 or byte_offset >= 4096
 * ('out-of-range'), a PFN >= 2^52 ('out-of-range'). Bytes after the last range are not examined.
 */
export function scanGpaRanges(
  bytes: Uint8Array,
  offset: number,
  end: number,
  rangeCount: number,
  field = 'gpa_range',
): number {
  let o = offset;
  for (let i = 0; i < rangeCount; i++) {
    if (end - o < 8) {
      throw new WireError(
        'inconsistent',
        `${field}[${i}]`,
        `range ${i} of ${rangeCount} starts beyond the range data`,
      );
    }
    const byteCount = readU32(bytes, o);
    const byteOffset = readU32(bytes, o + 4);
    if (byteCount === 0) throw new WireError('out-of-range', `${field}[${i}].byte_count`, 'is 0');
    if (byteOffset >= PAGE_SIZE) {
      throw new WireError('out-of-range', `${field}[${i}].byte_offset`, `${byteOffset} is not inside a page`);
    }
    const n = gpaRangePfnCount(byteOffset, byteCount);
    o += 8;
    if ((end - o) / 8 < n) {
      throw new WireError(
        'inconsistent',
        `${field}[${i}].pfn_array`,
        `needs ${n} PFNs, only ${Math.floor((end - o) / 8)} present`,
      );
    }
    for (let j = 0; j < n; j++, o += 8) {
      if (readPfnOrMinus1(bytes, o) < 0) {
        throw new WireError('out-of-range', `${field}[${i}].pfn_array[${j}]`, 'PFN >= 2^52');
      }
    }
  }
  return o;
}

/** Validates (as scanGpaRanges) and decodes `rangeCount` ranges from `bytes[offset, end)`. */
export function decodeGpaRanges(
  bytes: Uint8Array,
  rangeCount: number,
  offset = 0,
  end = bytes.length,
  field = 'gpa_range',
): GpaRange[] {
  scanGpaRanges(bytes, offset, end, rangeCount, field);
  const ranges = new Array<GpaRange>(rangeCount);
  let o = offset;
  for (let i = 0; i < rangeCount; i++) {
    const byteCount = readU32(bytes, o);
    const byteOffset = readU32(bytes, o + 4);
    o += 8;
    const n = gpaRangePfnCount(byteOffset, byteCount);
    const pfns = new Array<number>(n);
    for (let j = 0; j < n; j++, o += 8) pfns[j] = readU32(bytes, o + 4) * 0x100000000 + readU32(bytes, o);
    ranges[i] = { byteCount, byteOffset, pfns };
  }
  return ranges;
}

/**
 * The ranges of a GPADL_HEADER that carries its whole range list (no GPADL_BODY follows), e.g. a
 * ring of up to 26 pages. Bytes after `range_buflen` are ignored (sender padding).
 */
export function parseGpadlHeaderRanges(msg: GpadlHeaderMessage): GpaRange[] {
  if (msg.rangeBufLen % 8 !== 0) {
    throw new WireError(
      'misaligned',
      'GPADL_HEADER.range_buflen',
      `${msg.rangeBufLen} is not a multiple of 8`,
    );
  }
  if (msg.rangeData.length < msg.rangeBufLen) {
    throw new WireError(
      'truncated',
      'GPADL_HEADER.range',
      `range_buflen is ${msg.rangeBufLen} but the header carries ${msg.rangeData.length} bytes; the rest comes in GPADL_BODY messages (use GpadlReassembler)`,
    );
  }
  const end = scanGpaRanges(msg.rangeData, 0, msg.rangeBufLen, msg.rangeCount, 'GPADL_HEADER.range');
  if (end !== msg.rangeBufLen) {
    throw new WireError(
      'inconsistent',
      'GPADL_HEADER.range_buflen',
      `${msg.rangeBufLen - end} bytes after the last range`,
    );
  }
  return decodeGpaRanges(msg.rangeData, msg.rangeCount, 0, msg.rangeBufLen, 'GPADL_HEADER.range');
}

// ---------------------------------------------------------------------------------------------
// Sending side.

/**
 * The messages that describe a GPADL: one GPADL_HEADER holding up to 27 u64 values (one range
 * header + 26 PFNs), then GPADL_BODY messages of up to 28 values each, each at most 240 bytes and
 * exactly as long as its data (as Linux and OpenVMM send). Body `msgnumber` is 0 (Linux and
 * OpenVMM). Throws RangeError for malformed ranges or a range list longer than the u16
 * `range_buflen` can describe (65535 bytes: 8190 pages in one range).
 */
export function splitGpadl(childRelid: number, gpadlId: number, ranges: readonly GpaRange[]): Uint8Array[] {
  for (const [name, v] of [
    ['childRelid', childRelid],
    ['gpadlId', gpadlId],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff)
      throw new RangeError(`splitGpadl: ${name} must be a u32`);
  }
  if (ranges.length < 1 || ranges.length > 0xffff) {
    throw new RangeError(`splitGpadl: a GPADL has 1..65535 ranges, got ${ranges.length}`);
  }
  const len = gpaRangesByteLength(ranges);
  if (len > GPADL_MAX_RANGE_BUFLEN) {
    throw new RangeError(
      `splitGpadl: ${len} bytes of ranges exceed the u16 range_buflen (max ${GPADL_MAX_RANGE_BUFLEN}: ${GPADL_MAX_PAGES_ONE_RANGE} pages in one range)`,
    );
  }
  const data = new Uint8Array(len);
  encodeGpaRangesInto(ranges, data, 0);

  const messages: Uint8Array[] = [];
  const first = Math.min(len, GPADL_HEADER_MAX_VALUES * 8);
  const header = new Uint8Array(GPADL_HEADER_SIZE + first);
  writeU32(header, 0, 8); // CHANNELMSG_GPADL_HEADER
  writeU32(header, 8, childRelid);
  writeU32(header, 12, gpadlId);
  writeU16(header, 16, len);
  writeU16(header, 18, ranges.length);
  header.set(data.subarray(0, first), GPADL_HEADER_SIZE);
  messages.push(header);
  for (let o = first; o < len; o += GPADL_BODY_MAX_PFNS * 8) {
    const chunk = Math.min(len - o, GPADL_BODY_MAX_PFNS * 8);
    const body = new Uint8Array(GPADL_BODY_SIZE + chunk);
    writeU32(body, 0, 9); // CHANNELMSG_GPADL_BODY
    writeU32(body, 8, GPADL_BODY_MSGNUMBER);
    writeU32(body, 12, gpadlId);
    body.set(data.subarray(o, o + chunk), GPADL_BODY_SIZE);
    messages.push(body);
  }
  return messages;
}

/** Number of messages splitGpadl produces for a range list of `rangeBytes` bytes. */
export function gpadlMessageCount(rangeBytes: number): number {
  const rest = Math.max(0, rangeBytes - GPADL_HEADER_MAX_VALUES * 8);
  return 1 + Math.ceil(rest / (GPADL_BODY_MAX_PFNS * 8));
}

// ---------------------------------------------------------------------------------------------
// Receiving side.

/** What a receiver is willing to accept for one GPADL. */
export interface GpadlLimits {
  /** Most ranges in one GPADL. */
  maxRanges: number;
  /** Most PFNs in one GPADL, all ranges together. */
  maxPfns: number;
  /** Most bytes described by one GPADL (sum of the ranges' byte_count). */
  maxBytes: number;
  /** Most GPADLs in progress at once (default: unlimited). */
  maxPending?: number;
}

/** A fully received GPADL. */
export interface CompletedGpadl {
  childRelid: number;
  gpadl: number;
  ranges: GpaRange[];
  /** PFNs in all ranges. */
  pfnCount: number;
  /** Sum of the ranges' byte_count. */
  byteCount: number;
  /** The raw range list, exactly `range_buflen` bytes (for saved state). */
  rangeData: Uint8Array;
}

/** A refused GPADL message; says which GPADL (and channel, when known) failed. */
export class GpadlError extends WireError {
  constructor(
    code: WireErrorCode,
    field: string,
    message: string,
    /** The GPADL id the message named. */
    readonly gpadl: number,
    /** The channel of the GPADL, when known (always for header errors). */
    readonly childRelid: number | undefined,
  ) {
    super(code, field, message);
  }
}

interface PendingGpadl {
  readonly childRelid: number;
  readonly gpadl: number;
  readonly rangeCount: number;
  readonly buf: Uint8Array;
  filled: number;
}

/**
 * Reassembles GPADLs from GPADL_HEADER and GPADL_BODY messages, several in progress at once (bodies
 * are matched by GPADL id). `header()` and `body()` return the CompletedGpadl when the message
 * completes one, else undefined. Every refusal is a GpadlError (a WireError); after a refused body
 * the GPADL is dropped, after a refused header nothing is stored.
 *
 * Accepted, as OpenVMM does: u64 values beyond `range_buflen` in the completing message, and a
 * partial u64 at the end of any message, which is ignored (UEFI pads every message to 240 bytes,
 * so its headers carry 27 and a half values).
 * Refused: `range_buflen` not a multiple of 8 ('misaligned'); zero ranges, or more ranges, PFNs or
 * bytes than the limits ('out-of-range'); ranges that overrun `range_buflen` or leave bytes of it
 * unused ('inconsistent'); byte_count 0 or byte_offset >= 4096 ('out-of-range'); a header for an id
 * already in progress, or a body for an id not in progress - a wrong id, or more data after the
 * GPADL completed ('inconsistent').
 */
export class GpadlReassembler {
  private readonly pending = new Map<number, PendingGpadl>();
  readonly limits: Readonly<GpadlLimits>;

  constructor(limits: GpadlLimits) {
    for (const key of ['maxRanges', 'maxPfns', 'maxBytes', 'maxPending'] as const) {
      const v = limits[key];
      if (v === undefined && key === 'maxPending') continue;
      if (typeof v !== 'number' || !(v >= 0)) throw new RangeError(`GpadlReassembler: ${key} must be >= 0`);
    }
    this.limits = Object.freeze({ ...limits });
  }

  /** GPADLs whose header arrived but that are not complete yet. */
  get pendingCount(): number {
    return this.pending.size;
  }

  isPending(gpadl: number): boolean {
    return this.pending.has(gpadl);
  }

  /** Starts a GPADL; returns it if the header alone completes it. */
  header(msg: GpadlHeaderMessage): CompletedGpadl | undefined {
    const { gpadl, childRelid, rangeBufLen, rangeCount, rangeData } = msg;
    const refuse = (code: WireErrorCode, field: string, text: string): never => {
      throw new GpadlError(code, `GPADL_HEADER.${field}`, text, gpadl, childRelid);
    };
    if (this.pending.has(gpadl)) refuse('inconsistent', 'gpadl', `GPADL ${gpadl} is already in progress`);
    const maxPending = this.limits.maxPending;
    if (maxPending !== undefined && this.pending.size >= maxPending) {
      refuse(
        'out-of-range',
        'gpadl',
        `already ${this.pending.size} GPADLs in progress (limit ${maxPending})`,
      );
    }
    if (rangeBufLen % 8 !== 0) refuse('misaligned', 'range_buflen', `${rangeBufLen} is not a multiple of 8`);
    if (rangeCount === 0) refuse('out-of-range', 'rangecount', 'a GPADL needs at least one range');
    if (rangeCount > this.limits.maxRanges) {
      refuse(
        'out-of-range',
        'rangecount',
        `${rangeCount} ranges exceed the limit of ${this.limits.maxRanges}`,
      );
    }
    if (rangeBufLen < 16 * rangeCount) {
      refuse('inconsistent', 'rangecount', `${rangeCount} ranges cannot fit in range_buflen ${rangeBufLen}`);
    }
    const pfnCount = rangeBufLen / 8 - rangeCount;
    if (pfnCount > this.limits.maxPfns) {
      refuse('out-of-range', 'range_buflen', `${pfnCount} PFNs exceed the limit of ${this.limits.maxPfns}`);
    }
    const buf = new Uint8Array(rangeBufLen);
    // Whole u64 values only, as OpenVMM: a 240-byte (UEFI-padded) header carries 27.5 of them.
    const take = Math.min(rangeData.length - (rangeData.length % 8), rangeBufLen);
    buf.set(rangeData.subarray(0, take));
    const p: PendingGpadl = { childRelid, gpadl, rangeCount, buf, filled: take };
    if (take === rangeBufLen) return this.finish(p, 'GPADL_HEADER');
    this.pending.set(gpadl, p);
    return undefined;
  }

  /** Adds a GPADL_BODY; returns the GPADL if this body completes it. */
  body(msg: GpadlBodyMessage): CompletedGpadl | undefined {
    const p = this.pending.get(msg.gpadl);
    if (p === undefined) {
      throw new GpadlError(
        'inconsistent',
        'GPADL_BODY.gpadl',
        `no GPADL ${msg.gpadl} in progress`,
        msg.gpadl,
        undefined,
      );
    }
    const { pfns } = msg;
    const remaining = (p.buf.length - p.filled) / 8;
    const take = Math.min(remaining, pfns.length);
    const buf = p.buf;
    let o = p.filled;
    for (let i = 0; i < take; i++, o += 8) {
      const v = pfns[i]!;
      if (!Number.isInteger(v) || v < 0 || v >= PFN_LIMIT) {
        this.pending.delete(p.gpadl);
        throw new GpadlError(
          'out-of-range',
          `GPADL_BODY.pfn[${i}]`,
          `${v} is not a PFN`,
          p.gpadl,
          p.childRelid,
        );
      }
      writeU64Number(buf, o, v);
    }
    p.filled = o;
    if (p.filled < buf.length) return undefined;
    this.pending.delete(p.gpadl);
    return this.finish(p, 'GPADL_BODY');
  }

  /** Drops an in-progress GPADL; returns whether there was one. */
  cancel(gpadl: number): boolean {
    return this.pending.delete(gpadl);
  }

  /** Drops every in-progress GPADL of a channel (rescind, close, unload); returns their ids. */
  cancelChannel(childRelid: number): number[] {
    const dropped: number[] = [];
    for (const [id, p] of this.pending) {
      if (p.childRelid === childRelid) {
        this.pending.delete(id);
        dropped.push(id);
      }
    }
    return dropped;
  }

  /** Drops everything in progress. */
  clear(): void {
    this.pending.clear();
  }

  private finish(p: PendingGpadl, message: string): CompletedGpadl {
    const { buf, rangeCount } = p;
    try {
      const end = scanGpaRanges(buf, 0, buf.length, rangeCount, 'GPADL.range');
      if (end !== buf.length) {
        throw new WireError(
          'inconsistent',
          `${message}.range_buflen`,
          `${buf.length - end} bytes after the last range`,
        );
      }
    } catch (err) {
      if (err instanceof WireError)
        throw new GpadlError(err.code, err.field, err.message, p.gpadl, p.childRelid);
      throw err;
    }
    const ranges = decodeGpaRanges(buf, rangeCount, 0, buf.length, 'GPADL.range');
    let byteCount = 0;
    let pfnCount = 0;
    for (const r of ranges) {
      byteCount += r.byteCount;
      pfnCount += r.pfns.length;
    }
    if (byteCount > this.limits.maxBytes) {
      throw new GpadlError(
        'out-of-range',
        'GPADL.range.byte_count',
        `${byteCount} bytes exceed the limit of ${this.limits.maxBytes}`,
        p.gpadl,
        p.childRelid,
      );
    }
    return { childRelid: p.childRelid, gpadl: p.gpadl, ranges, pfnCount, byteCount, rangeData: buf };
  }
}

/** Bytes a GPADL of `pages` whole pages in one range needs in `range_buflen`. */
export function gpadlRangeBufLen(pages: number): number {
  return 8 + 8 * pages;
}

/** A single-range GPADL over whole pages: `{ byteCount: pfns.length * 4096, byteOffset: 0, pfns }`. */
export function pageRange(pfns: readonly number[]): GpaRange {
  return { byteCount: pfns.length * PAGE_SIZE, byteOffset: 0, pfns: pfns.slice() };
}
