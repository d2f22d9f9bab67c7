// Ring packets (spec/vmbus-wire.md section 2): the 16-byte `vmpacket_descriptor`, the descriptor
// extensions of every packet type (GPA direct, transfer pages, the in-ring GPADL and transfer-page-set
// forms, additional data), and the 8-byte pipe-mode payload header. Encoders write into a caller's
// buffer at an offset; decoders read from explicit offsets, never past their input, and report bad
// bytes only as WireError naming the field.
//
// Two faces: `decodePacket`/`encodePacket` work on plain objects (a typed union with the body
// decoded) for tools and tests; the small accessor functions (`readDescriptor`, `gpaRange*`, ...)
// read fields in place from a DataView and allocate nothing, for the hot path.
//
// Transaction ids are u64 and must be carried exactly (a receiver echoes the peer's id unchanged in
// its completion). The hot path never makes a bigint: an id travels as two u32 halves `transIdLo`
// and `transIdHi` (see `PacketDescriptor`); `transactionIdNumber(lo, hi)` gives it as a plain number
// when it is a safe integer (high half < 2^21) and -1 otherwise, and `transactionIdBigInt` gives the
// exact bigint for tools. The object face (`decodePacket`) carries both the halves and the bigint.

import { needBytes, WireError } from './errors.js';

// ---------------------------------------------------------------------------------------------
// Constants

export const VM_PKT_INVALID = 0x0;
export const VM_PKT_SYNCH = 0x1;
export const VM_PKT_ADD_XFER_PAGESET = 0x2;
export const VM_PKT_RM_XFER_PAGESET = 0x3;
export const VM_PKT_ESTABLISH_GPADL = 0x4;
export const VM_PKT_TEARDOWN_GPADL = 0x5;
export const VM_PKT_DATA_INBAND = 0x6;
export const VM_PKT_DATA_USING_XFER_PAGES = 0x7;
export const VM_PKT_DATA_USING_GPADL = 0x8;
export const VM_PKT_DATA_USING_GPA_DIRECT = 0x9;
export const VM_PKT_CANCEL_REQUEST = 0xa;
export const VM_PKT_COMP = 0xb;
export const VM_PKT_DATA_USING_ADDITIONAL_PKT = 0xc;
export const VM_PKT_ADDITIONAL_DATA = 0xd;

const VM_PKT_NAMES: readonly string[] = [
  'VM_PKT_INVALID',
  'VM_PKT_SYNCH',
  'VM_PKT_ADD_XFER_PAGESET',
  'VM_PKT_RM_XFER_PAGESET',
  'VM_PKT_ESTABLISH_GPADL',
  'VM_PKT_TEARDOWN_GPADL',
  'VM_PKT_DATA_INBAND',
  'VM_PKT_DATA_USING_XFER_PAGES',
  'VM_PKT_DATA_USING_GPADL',
  'VM_PKT_DATA_USING_GPA_DIRECT',
  'VM_PKT_CANCEL_REQUEST',
  'VM_PKT_COMP',
  'VM_PKT_DATA_USING_ADDITIONAL_PKT',
  'VM_PKT_ADDITIONAL_DATA',
];

/** True for the type numbers 0x0..0xD that Linux's `enum vmbus_packet_type` defines. */
export function isKnownPacketType(type: number): boolean {
  return Number.isInteger(type) && type >= 0 && type < VM_PKT_NAMES.length;
}

/** `VM_PKT_DATA_INBAND` for 6, ..., or `unknown(0x1f)` for a number the format does not define. */
export function packetTypeName(type: number): string {
  return isKnownPacketType(type) ? VM_PKT_NAMES[type]! : `unknown(0x${type.toString(16)})`;
}

/** The type number for a `VM_PKT_*` name, or undefined. */
export function packetTypeFromName(name: string): number | undefined {
  const i = VM_PKT_NAMES.indexOf(name);
  return i < 0 ? undefined : i;
}

/** Descriptor flag bit 0: the sender wants a VM_PKT_COMP echoing its transaction id. */
export const VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED = 1;

/** Size of `vmpacket_descriptor`. */
export const VMPACKET_DESCRIPTOR_SIZE = 16;
/** Size of the trailer (previous packet start index) that follows every packet in a ring. */
export const VMPACKET_TRAILER_SIZE = 8;
/** Size of `gpa_range` before its PFN array (`u32 byte_count; u32 byte_offset`). */
export const GPA_RANGE_HEADER_SIZE = 8;
/** Size of `vmtransfer_page_range`. */
export const TRANSFER_PAGE_RANGE_SIZE = 8;
/** Header (descriptor + extension, without ranges) of GPA-direct and transfer-page packets. */
export const GPA_DIRECT_HEADER_SIZE = 24;
export const TRANSFER_PAGES_HEADER_SIZE = 24;
/** Descriptor + fixed fields of the type 2/3/5/8 packets. */
export const GPADL_PACKET_SIZE = 24;
/** Descriptor + the fixed fields of `vmestablish_gpadl` (ranges follow). */
export const ESTABLISH_GPADL_HEADER_SIZE = 24;
/** Descriptor + the fixed fields of `vmadditional_data` (data follows). */
export const ADDITIONAL_DATA_HEADER_SIZE = 32;

/** Ring page size the wire uses for PFNs and byte offsets. */
const WIRE_PAGE_SIZE = 4096;
/** PFNs are below 2^52: no 64-bit GPA has a larger one. */
export const PFN_LIMIT = 2 ** 52;
const TWO_32 = 2 ** 32;
const TWO_21 = 2 ** 21;

// Pipe mode (section 2.4).
export const VMBUS_PIPE_TYPE_DATA = 1;
export const VMBUS_PIPE_TYPE_PARTIAL = 2;
export const VMBUS_PIPE_TYPE_SETUP_GPA_DIRECT = 3;
export const VMBUS_PIPE_TYPE_TEARDOWN_GPA_DIRECT = 4;
export const MAX_PIPE_DATA_PAYLOAD = 16384;
export const VMBUS_PIPE_HEADER_SIZE = 8;

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Rounds up to a multiple of 8. */
export function align8(n: number): number {
  const r = n % 8;
  return r === 0 ? n : n + 8 - r;
}

/** The transaction id as a plain number when it is a safe integer (high half < 2^21), else -1. */
export function transactionIdNumber(lo: number, hi: number): number {
  return hi < TWO_21 ? hi * TWO_32 + lo : -1;
}

/** The exact u64 transaction id (allocates a bigint: tools only). */
export function transactionIdBigInt(lo: number, hi: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** Low u32 half of a transaction id given as a non-negative safe integer or a u64 bigint. */
export function transactionIdLo(id: number | bigint): number {
  if (typeof id === 'bigint') return Number(BigInt.asUintN(32, id));
  checkIdNumber(id);
  return id >>> 0;
}

/** High u32 half of a transaction id given as a non-negative safe integer or a u64 bigint. */
export function transactionIdHi(id: number | bigint): number {
  if (typeof id === 'bigint') {
    if (id < 0n || id > 0xffff_ffff_ffff_ffffn) throw new RangeError(`transaction id ${id} is not a u64`);
    return Number(id >> 32n);
  }
  checkIdNumber(id);
  return Math.floor(id / TWO_32);
}

function checkIdNumber(id: number): void {
  if (!Number.isSafeInteger(id) || id < 0) {
    throw new RangeError(`transaction id ${id} is not a non-negative safe integer (use a bigint)`);
  }
}

function readU64Number(dv: DataView, off: number): number {
  return dv.getUint32(off + 4, true) * TWO_32 + dv.getUint32(off, true);
}

function writeU64Number(dv: DataView, off: number, value: number): void {
  dv.setUint32(off, value >>> 0, true);
  dv.setUint32(off + 4, Math.floor(value / TWO_32), true);
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---------------------------------------------------------------------------------------------
// The descriptor: allocation-free accessors

/**
 * The fields of one `vmpacket_descriptor`, as plain numbers. Meant to be allocated once and reused
 * (`readDescriptor` fills it in place).
 */
export class PacketDescriptor {
  type = 0;
  offset8 = 0;
  len8 = 0;
  flags = 0;
  /** Low u32 half of `trans_id`. */
  transIdLo = 0;
  /** High u32 half of `trans_id`. */
  transIdHi = 0;

  /** Header length in bytes (descriptor + extension): where the payload starts. */
  get headerLength(): number {
    return this.offset8 * 8;
  }
  /** Packet length in bytes, trailer excluded. */
  get packetLength(): number {
    return this.len8 * 8;
  }
  /** Payload length in bytes, tail padding included. */
  get payloadLength(): number {
    return (this.len8 - this.offset8) * 8;
  }
  /** `trans_id` as a number when safe (high half < 2^21), else -1. */
  get transactionIdNumber(): number {
    return transactionIdNumber(this.transIdLo, this.transIdHi);
  }
  /** `trans_id` exactly (allocates). */
  get transactionId(): bigint {
    return transactionIdBigInt(this.transIdLo, this.transIdHi);
  }
  get completionRequested(): boolean {
    return (this.flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED) !== 0;
  }
}

/**
 * Reads and validates the descriptor at `offset`, where `available` bytes of packet (trailer not
 * counted) can be read. Checks `offset8 >= 2`, `offset8 <= len8` and `len8 * 8 <= available`; the
 * type is not checked (see `isKnownPacketType`). Fills and returns `out`; allocates nothing.
 */
export function readDescriptor(
  dv: DataView,
  offset: number,
  available: number,
  out: PacketDescriptor,
): PacketDescriptor {
  needBytes('vmpacket_descriptor', available, VMPACKET_DESCRIPTOR_SIZE);
  const offset8 = dv.getUint16(offset + 2, true);
  const len8 = dv.getUint16(offset + 4, true);
  checkDescriptorLengths(offset8, len8, available);
  out.type = dv.getUint16(offset, true);
  out.offset8 = offset8;
  out.len8 = len8;
  out.flags = dv.getUint16(offset + 6, true);
  out.transIdLo = dv.getUint32(offset + 8, true);
  out.transIdHi = dv.getUint32(offset + 12, true);
  return out;
}

/** The length checks every reader applies to a descriptor (throws WireError). */
export function checkDescriptorLengths(offset8: number, len8: number, available: number): void {
  if (offset8 < 2) {
    throw new WireError('out-of-range', 'vmpacket_descriptor.offset8', `${offset8} is below 2`);
  }
  if (offset8 > len8) {
    throw new WireError('inconsistent', 'vmpacket_descriptor.offset8', `${offset8} exceeds len8 ${len8}`);
  }
  if (len8 * 8 > available) {
    throw new WireError(
      'truncated',
      'vmpacket_descriptor.len8',
      `packet of ${len8 * 8} bytes but only ${available} available`,
    );
  }
}

/** Writes a 16-byte descriptor at `offset`. Values are taken modulo their field width. */
export function writeDescriptor(
  dv: DataView,
  offset: number,
  type: number,
  offset8: number,
  len8: number,
  flags: number,
  transIdLo: number,
  transIdHi: number,
): void {
  dv.setUint16(offset, type, true);
  dv.setUint16(offset + 2, offset8, true);
  dv.setUint16(offset + 4, len8, true);
  dv.setUint16(offset + 6, flags, true);
  dv.setUint32(offset + 8, transIdLo, true);
  dv.setUint32(offset + 12, transIdHi, true);
}

export function descriptorType(dv: DataView, packetOffset: number): number {
  return dv.getUint16(packetOffset, true);
}
export function descriptorOffset8(dv: DataView, packetOffset: number): number {
  return dv.getUint16(packetOffset + 2, true);
}
export function descriptorLen8(dv: DataView, packetOffset: number): number {
  return dv.getUint16(packetOffset + 4, true);
}
export function descriptorFlags(dv: DataView, packetOffset: number): number {
  return dv.getUint16(packetOffset + 6, true);
}
export function descriptorTransIdLo(dv: DataView, packetOffset: number): number {
  return dv.getUint32(packetOffset + 8, true);
}
export function descriptorTransIdHi(dv: DataView, packetOffset: number): number {
  return dv.getUint32(packetOffset + 12, true);
}

// ---------------------------------------------------------------------------------------------
// GPA ranges: allocation-free accessors

/** `gpa_range`: a byte range spread over whole pages (PFNs are 4 KiB page numbers). */
export interface GpaRange {
  byteCount: number;
  byteOffset: number;
  pfns: number[];
}

/** `vmtransfer_page_range`: a byte range inside a transfer page set. */
export interface TransferPageRange {
  byteCount: number;
  byteOffset: number;
}

/** PFNs a `gpa_range` carries: ceil((byte_offset + byte_count) / 4096). */
export function gpaRangePfnCountFor(byteOffset: number, byteCount: number): number {
  return Math.ceil((byteOffset + byteCount) / WIRE_PAGE_SIZE);
}

/** Encoded size of a `gpa_range` (header + PFN array). */
export function gpaRangeEncodedSize(range: GpaRange): number {
  return GPA_RANGE_HEADER_SIZE + 8 * range.pfns.length;
}

export function gpaRangeByteCount(dv: DataView, rangeOffset: number): number {
  return dv.getUint32(rangeOffset, true);
}
export function gpaRangeByteOffset(dv: DataView, rangeOffset: number): number {
  return dv.getUint32(rangeOffset + 4, true);
}
/** PFN count of the range at `rangeOffset` (from its byte_offset and byte_count). */
export function gpaRangePfnCount(dv: DataView, rangeOffset: number): number {
  return gpaRangePfnCountFor(dv.getUint32(rangeOffset + 4, true), dv.getUint32(rangeOffset, true));
}
/** The i-th PFN of the range at `rangeOffset` (a number: validated PFNs are below 2^52). */
export function gpaRangePfn(dv: DataView, rangeOffset: number, i: number): number {
  return readU64Number(dv, rangeOffset + GPA_RANGE_HEADER_SIZE + 8 * i);
}
/** Offset just past the range at `rangeOffset`. */
export function gpaRangeEnd(dv: DataView, rangeOffset: number): number {
  return rangeOffset + GPA_RANGE_HEADER_SIZE + 8 * gpaRangePfnCount(dv, rangeOffset);
}

/**
 * Validates `count` consecutive `gpa_range`s starting at `offset` that must end at or before `end`;
 * returns the offset just past the last one. Allocates nothing. `field` prefixes the error's field
 * name (`gpa_direct`, `establish_gpadl`); `allowZeroCount` admits byte_count 0 (GPA direct refuses it).
 */
export function validateGpaRanges(
  dv: DataView,
  offset: number,
  end: number,
  count: number,
  field: string,
  allowZeroCount = false,
): number {
  for (let i = 0; i < count; i++) {
    if (offset + GPA_RANGE_HEADER_SIZE > end) {
      throw new WireError(
        'inconsistent',
        `${field}.rangecount`,
        `range ${i} of ${count} overruns the header`,
      );
    }
    const byteCount = dv.getUint32(offset, true);
    const byteOffset = dv.getUint32(offset + 4, true);
    if (byteCount === 0 && !allowZeroCount) {
      throw new WireError('out-of-range', 'gpa_range.byte_count', `range ${i} has byte_count 0`);
    }
    if (byteOffset >= WIRE_PAGE_SIZE) {
      throw new WireError(
        'out-of-range',
        'gpa_range.byte_offset',
        `range ${i} has byte_offset ${byteOffset}`,
      );
    }
    const pfnCount = gpaRangePfnCountFor(byteOffset, byteCount);
    const pfnStart = offset + GPA_RANGE_HEADER_SIZE;
    if (pfnStart + 8 * pfnCount > end) {
      throw new WireError(
        'inconsistent',
        `${field}.rangecount`,
        `range ${i} (${pfnCount} PFNs) overruns the header`,
      );
    }
    for (let j = 0; j < pfnCount; j++) {
      if (dv.getUint32(pfnStart + 8 * j + 4, true) >= 0x100000) {
        throw new WireError('out-of-range', 'gpa_range.pfn_array', `range ${i} PFN ${j} is not below 2^52`);
      }
    }
    offset = pfnStart + 8 * pfnCount;
  }
  return offset;
}

/** Validates one GpaRange given by a caller before encoding (throws RangeError). */
function checkGpaRangeForEncoding(range: GpaRange, allowZeroCount: boolean): void {
  const { byteCount, byteOffset, pfns } = range;
  if (!Number.isInteger(byteCount) || byteCount < 0 || byteCount > 0xffffffff) {
    throw new RangeError(`gpa_range.byte_count ${byteCount} is not a u32`);
  }
  if (byteCount === 0 && !allowZeroCount) throw new RangeError('gpa_range.byte_count is 0');
  if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset >= WIRE_PAGE_SIZE) {
    throw new RangeError(`gpa_range.byte_offset ${byteOffset} is not in [0, 4096)`);
  }
  const want = gpaRangePfnCountFor(byteOffset, byteCount);
  if (pfns.length !== want) {
    throw new RangeError(
      `gpa_range with byte_offset ${byteOffset} and byte_count ${byteCount} needs ${want} PFNs, got ${pfns.length}`,
    );
  }
  for (const pfn of pfns) {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= PFN_LIMIT) {
      throw new RangeError(`PFN ${pfn} is not an integer in [0, 2^52)`);
    }
  }
}

/** Writes GpaRanges at `offset` (already validated); returns the offset past them. */
function writeGpaRanges(dv: DataView, offset: number, ranges: readonly GpaRange[]): number {
  for (const r of ranges) {
    dv.setUint32(offset, r.byteCount, true);
    dv.setUint32(offset + 4, r.byteOffset, true);
    offset += GPA_RANGE_HEADER_SIZE;
    for (const pfn of r.pfns) {
      writeU64Number(dv, offset, pfn);
      offset += 8;
    }
  }
  return offset;
}

function readGpaRanges(dv: DataView, offset: number, count: number): GpaRange[] {
  const out: GpaRange[] = [];
  for (let i = 0; i < count; i++) {
    const byteCount = dv.getUint32(offset, true);
    const byteOffset = dv.getUint32(offset + 4, true);
    const n = gpaRangePfnCountFor(byteOffset, byteCount);
    const pfns: number[] = new Array(n);
    for (let j = 0; j < n; j++) pfns[j] = readU64Number(dv, offset + GPA_RANGE_HEADER_SIZE + 8 * j);
    out.push({ byteCount, byteOffset, pfns });
    offset += GPA_RANGE_HEADER_SIZE + 8 * n;
  }
  return out;
}

/** Header length (descriptor + extension) of a GPA-direct packet with these ranges. */
export function gpaDirectHeaderLength(ranges: readonly GpaRange[]): number {
  let n = GPA_DIRECT_HEADER_SIZE;
  for (const r of ranges) n += GPA_RANGE_HEADER_SIZE + 8 * r.pfns.length;
  return n;
}

/** Header length (descriptor + extension) of a transfer-page packet with `rangeCount` ranges. */
export function transferPagesHeaderLength(rangeCount: number): number {
  return TRANSFER_PAGES_HEADER_SIZE + TRANSFER_PAGE_RANGE_SIZE * rangeCount;
}

/**
 * Range count of the GPA-direct packet at `packetOffset` whose header is `headerLength` bytes,
 * after validating every range against the header (allocation-free). The first range starts at
 * `packetOffset + 24`; walk them with `gpaRangeEnd`.
 */
export function gpaDirectRangeCount(dv: DataView, packetOffset: number, headerLength: number): number {
  if (headerLength < GPA_DIRECT_HEADER_SIZE) {
    throw new WireError(
      'inconsistent',
      'gpa_direct.rangecount',
      `header of ${headerLength} bytes has no range count`,
    );
  }
  const count = dv.getUint32(packetOffset + 20, true);
  validateGpaRanges(
    dv,
    packetOffset + GPA_DIRECT_HEADER_SIZE,
    packetOffset + headerLength,
    count,
    'gpa_direct',
  );
  return count;
}

/**
 * Range count of the transfer-page packet at `packetOffset` with a `headerLength`-byte header,
 * checked against the header (allocation-free). Range i is at `packetOffset + 24 + 8 * i`.
 */
export function transferPagesRangeCount(dv: DataView, packetOffset: number, headerLength: number): number {
  if (headerLength < TRANSFER_PAGES_HEADER_SIZE) {
    throw new WireError(
      'inconsistent',
      'vmtransfer_page_packet_header.range_cnt',
      `header of ${headerLength} bytes has no range count`,
    );
  }
  const count = dv.getUint32(packetOffset + 20, true);
  if (TRANSFER_PAGES_HEADER_SIZE + TRANSFER_PAGE_RANGE_SIZE * count > headerLength) {
    throw new WireError(
      'inconsistent',
      'vmtransfer_page_packet_header.range_cnt',
      `${count} ranges overrun the ${headerLength}-byte header`,
    );
  }
  return count;
}

/**
 * Throws a RangeError unless every range is well formed for a GPA-direct packet (or, with
 * `allowZeroCount`, an establish-GPADL packet): u32 byte_count (non-zero), byte_offset < 4096, exactly
 * ceil((byte_offset + byte_count) / 4096) PFNs, each an integer below 2^52. Allocates nothing.
 */
export function checkGpaRanges(ranges: readonly GpaRange[], allowZeroCount = false): void {
  for (let i = 0; i < ranges.length; i++) checkGpaRangeForEncoding(ranges[i]!, allowZeroCount);
}

/**
 * Writes the descriptor and extension of a GPA-direct packet (type 9) at `offset`, for a payload of
 * `payloadLength` bytes to follow, as DPDK's `rte_vmbus_chan_send_sglist` lays it out: offset8 =
 * header / 8, len8 = align8(header + payload) / 8, reserved 0. Ranges must already be checked
 * (`checkGpaRanges`). Returns the header length. Allocates nothing.
 */
export function encodeGpaDirectHeader(
  dv: DataView,
  offset: number,
  flags: number,
  transIdLo: number,
  transIdHi: number,
  ranges: readonly GpaRange[],
  payloadLength: number,
): number {
  const headerLength = gpaDirectHeaderLength(ranges);
  const len8 = align8(headerLength + payloadLength) / 8;
  writeDescriptor(
    dv,
    offset,
    VM_PKT_DATA_USING_GPA_DIRECT,
    headerLength / 8,
    len8,
    flags,
    transIdLo,
    transIdHi,
  );
  dv.setUint32(offset + 16, 0, true);
  dv.setUint32(offset + 20, ranges.length, true);
  writeGpaRanges(dv, offset + GPA_DIRECT_HEADER_SIZE, ranges);
  return headerLength;
}

/**
 * Writes the descriptor and `vmtransfer_page_packet_header` + ranges of a transfer-page packet
 * (type 7) at `offset`, for `payloadLength` payload bytes to follow. Returns the header length.
 */
export function encodeTransferPagesHeader(
  dv: DataView,
  offset: number,
  flags: number,
  transIdLo: number,
  transIdHi: number,
  transferPageSetId: number,
  senderOwnsSet: number,
  ranges: readonly TransferPageRange[],
  payloadLength: number,
): number {
  const headerLength = transferPagesHeaderLength(ranges.length);
  const len8 = align8(headerLength + payloadLength) / 8;
  writeDescriptor(
    dv,
    offset,
    VM_PKT_DATA_USING_XFER_PAGES,
    headerLength / 8,
    len8,
    flags,
    transIdLo,
    transIdHi,
  );
  dv.setUint16(offset + 16, transferPageSetId, true);
  dv.setUint8(offset + 18, senderOwnsSet);
  dv.setUint8(offset + 19, 0);
  dv.setUint32(offset + 20, ranges.length, true);
  let r = offset + TRANSFER_PAGES_HEADER_SIZE;
  for (let i = 0; i < ranges.length; i++) {
    dv.setUint32(r, ranges[i]!.byteCount, true);
    dv.setUint32(r + 4, ranges[i]!.byteOffset, true);
    r += TRANSFER_PAGE_RANGE_SIZE;
  }
  return headerLength;
}

// ---------------------------------------------------------------------------------------------
// Pipe-mode payload header

export interface PipeHeader {
  /** VMBUS_PIPE_TYPE_* */
  packetType: number;
  /** The raw `len` word (for PARTIAL the high 16 bits are bytes already consumed). */
  len: number;
}

export function encodePipeHeader(buf: Uint8Array, offset: number, packetType: number, len: number): number {
  needBytes('pipe_header', buf.length - offset, VMBUS_PIPE_HEADER_SIZE);
  const dv = viewOf(buf);
  dv.setUint32(offset, packetType, true);
  dv.setUint32(offset + 4, len, true);
  return VMBUS_PIPE_HEADER_SIZE;
}

/**
 * Decodes the pipe header at `offset` of a payload. Refuses unknown types; for DATA, SETUP and
 * TEARDOWN refuses `len > 16384` and, when `payloadLength` is given, `8 + len > payloadLength`.
 */
export function decodePipeHeader(bytes: Uint8Array, offset = 0, payloadLength?: number): PipeHeader {
  needBytes(
    'pipe_header',
    Math.min(payloadLength ?? Infinity, bytes.length - offset),
    VMBUS_PIPE_HEADER_SIZE,
  );
  const dv = viewOf(bytes);
  const packetType = dv.getUint32(offset, true);
  const len = dv.getUint32(offset + 4, true);
  if (packetType < VMBUS_PIPE_TYPE_DATA || packetType > VMBUS_PIPE_TYPE_TEARDOWN_GPA_DIRECT) {
    throw new WireError('unknown-type', 'pipe_header.packet_type', `pipe packet type ${packetType}`);
  }
  const dataLen = packetType === VMBUS_PIPE_TYPE_PARTIAL ? len & 0xffff : len;
  if (dataLen > MAX_PIPE_DATA_PAYLOAD) {
    throw new WireError('oversized', 'pipe_header.len', `${dataLen} exceeds ${MAX_PIPE_DATA_PAYLOAD}`);
  }
  if (payloadLength !== undefined && VMBUS_PIPE_HEADER_SIZE + dataLen > payloadLength) {
    throw new WireError('inconsistent', 'pipe_header.len', `${dataLen} bytes do not fit in the payload`);
  }
  return { packetType, len };
}

// ---------------------------------------------------------------------------------------------
// The object face: decodePacket / encodePacket

interface DecodedBase {
  /** The raw descriptor type. */
  type: number;
  /** `VM_PKT_*` name or `unknown(0x..)`. */
  typeName: string;
  offset8: number;
  len8: number;
  flags: number;
  transIdLo: number;
  transIdHi: number;
  transactionId: bigint;
  /** offset8 * 8 */
  headerLength: number;
  /** len8 * 8 (trailer excluded) */
  packetLength: number;
  /** View (no copy) of the payload, tail padding included: bytes [offset8*8, len8*8). */
  payload: Uint8Array;
}

export interface InbandPacket extends DecodedBase {
  kind: 'inband';
}
export interface CompletionPacket extends DecodedBase {
  kind: 'completion';
}
export interface GpaDirectPacket extends DecodedBase {
  kind: 'gpa-direct';
  /** The u32 at offset 16 (senders write 0; may hold garbage). */
  reserved: number;
  ranges: GpaRange[];
}
export interface TransferPagesPacket extends DecodedBase {
  kind: 'transfer-pages';
  transferPageSetId: number;
  senderOwnsSet: number;
  reserved: number;
  ranges: TransferPageRange[];
}
export interface GpadlPacket extends DecodedBase {
  kind: 'gpadl';
  gpadl: number;
  reserved: number;
}
export interface TransferPageSetPacket extends DecodedBase {
  kind: 'add-transfer-page-set' | 'remove-transfer-page-set';
  gpadl: number;
  transferPageSetId: number;
  reserved: number;
}
export interface EstablishGpadlPacket extends DecodedBase {
  kind: 'establish-gpadl';
  gpadl: number;
  ranges: GpaRange[];
}
export interface TeardownGpadlPacket extends DecodedBase {
  kind: 'teardown-gpadl';
  gpadl: number;
  reserved: number;
}
export interface AdditionalDataPacket extends DecodedBase {
  kind: 'additional-data';
  totalBytes: bigint;
  offset: number;
  byteCount: number;
  /** View of the `byte_cnt` data bytes starting at packet offset 32. */
  data: Uint8Array;
}
/** A defined type with no extension layout (0, 1, 0xA, 0xC), or (lenient decoding) an unknown type. */
export interface OtherPacket extends DecodedBase {
  kind: 'other' | 'unknown';
  /** View of header bytes [16, offset8*8). */
  extension: Uint8Array;
}

export type DecodedPacket =
  | InbandPacket
  | CompletionPacket
  | GpaDirectPacket
  | TransferPagesPacket
  | GpadlPacket
  | TransferPageSetPacket
  | EstablishGpadlPacket
  | TeardownGpadlPacket
  | AdditionalDataPacket
  | OtherPacket;

export interface DecodeOptions {
  /** Refuse type numbers above 0xD with an `unknown-type` WireError (default false: kind 'unknown'). */
  strict?: boolean;
}

function needHeader(field: string, headerLength: number, need: number): void {
  if (headerLength < need) {
    throw new WireError('inconsistent', field, `header of ${headerLength} bytes is shorter than ${need}`);
  }
}

/**
 * Decodes the packet that starts at `offset` of `bytes` (descriptor first; the trailer, if present
 * after `len8 * 8`, is ignored). Returns views into `bytes` for payload and data, no copies.
 */
export function decodePacket(bytes: Uint8Array, offset = 0, options: DecodeOptions = {}): DecodedPacket {
  if (!Number.isInteger(offset) || offset < 0 || offset > bytes.length) {
    throw new RangeError(`offset ${offset} is outside the ${bytes.length}-byte input`);
  }
  const available = bytes.length - offset;
  const dv = viewOf(bytes);
  const d = readDescriptor(dv, offset, available, new PacketDescriptor());
  const headerLength = d.offset8 * 8;
  const packetLength = d.len8 * 8;
  const base: DecodedBase = {
    type: d.type,
    typeName: packetTypeName(d.type),
    offset8: d.offset8,
    len8: d.len8,
    flags: d.flags,
    transIdLo: d.transIdLo,
    transIdHi: d.transIdHi,
    transactionId: transactionIdBigInt(d.transIdLo, d.transIdHi),
    headerLength,
    packetLength,
    payload: bytes.subarray(offset + headerLength, offset + packetLength),
  };
  const o = offset;
  switch (d.type) {
    case VM_PKT_DATA_INBAND:
      return { ...base, kind: 'inband' };
    case VM_PKT_COMP:
      return { ...base, kind: 'completion' };
    case VM_PKT_DATA_USING_GPA_DIRECT: {
      const count = gpaDirectRangeCount(dv, o, headerLength);
      return {
        ...base,
        kind: 'gpa-direct',
        reserved: dv.getUint32(o + 16, true),
        ranges: readGpaRanges(dv, o + GPA_DIRECT_HEADER_SIZE, count),
      };
    }
    case VM_PKT_DATA_USING_XFER_PAGES: {
      const count = transferPagesRangeCount(dv, o, headerLength);
      const ranges: TransferPageRange[] = [];
      for (let i = 0; i < count; i++) {
        const r = o + TRANSFER_PAGES_HEADER_SIZE + TRANSFER_PAGE_RANGE_SIZE * i;
        ranges.push({ byteCount: dv.getUint32(r, true), byteOffset: dv.getUint32(r + 4, true) });
      }
      return {
        ...base,
        kind: 'transfer-pages',
        transferPageSetId: dv.getUint16(o + 16, true),
        senderOwnsSet: dv.getUint8(o + 18),
        reserved: dv.getUint8(o + 19),
        ranges,
      };
    }
    case VM_PKT_DATA_USING_GPADL:
      needHeader('vmgpadl_packet_header.gpadl', headerLength, GPADL_PACKET_SIZE);
      return {
        ...base,
        kind: 'gpadl',
        gpadl: dv.getUint32(o + 16, true),
        reserved: dv.getUint32(o + 20, true),
      };
    case VM_PKT_ADD_XFER_PAGESET:
    case VM_PKT_RM_XFER_PAGESET:
      needHeader('vmadd_remove_transfer_page_set.gpadl', headerLength, GPADL_PACKET_SIZE);
      return {
        ...base,
        kind: d.type === VM_PKT_ADD_XFER_PAGESET ? 'add-transfer-page-set' : 'remove-transfer-page-set',
        gpadl: dv.getUint32(o + 16, true),
        transferPageSetId: dv.getUint16(o + 20, true),
        reserved: dv.getUint16(o + 22, true),
      };
    case VM_PKT_ESTABLISH_GPADL: {
      needHeader('vmestablish_gpadl.range_cnt', headerLength, ESTABLISH_GPADL_HEADER_SIZE);
      const count = dv.getUint32(o + 20, true);
      validateGpaRanges(
        dv,
        o + ESTABLISH_GPADL_HEADER_SIZE,
        o + headerLength,
        count,
        'vmestablish_gpadl',
        true,
      );
      return {
        ...base,
        kind: 'establish-gpadl',
        gpadl: dv.getUint32(o + 16, true),
        ranges: readGpaRanges(dv, o + ESTABLISH_GPADL_HEADER_SIZE, count),
      };
    }
    case VM_PKT_TEARDOWN_GPADL:
      needHeader('vmteardown_gpadl.gpadl', headerLength, GPADL_PACKET_SIZE);
      return {
        ...base,
        kind: 'teardown-gpadl',
        gpadl: dv.getUint32(o + 16, true),
        reserved: dv.getUint32(o + 20, true),
      };
    case VM_PKT_ADDITIONAL_DATA: {
      needHeader('vmadditional_data.byte_cnt', headerLength, ADDITIONAL_DATA_HEADER_SIZE);
      const byteCount = dv.getUint32(o + 28, true);
      if (ADDITIONAL_DATA_HEADER_SIZE + byteCount > packetLength) {
        throw new WireError(
          'inconsistent',
          'vmadditional_data.byte_cnt',
          `${byteCount} data bytes overrun the ${packetLength}-byte packet`,
        );
      }
      return {
        ...base,
        kind: 'additional-data',
        totalBytes: dv.getBigUint64(o + 16, true),
        offset: dv.getUint32(o + 24, true),
        byteCount,
        data: bytes.subarray(o + ADDITIONAL_DATA_HEADER_SIZE, o + ADDITIONAL_DATA_HEADER_SIZE + byteCount),
      };
    }
    default: {
      const known = isKnownPacketType(d.type);
      if (!known && options.strict) {
        throw new WireError(
          'unknown-type',
          'vmpacket_descriptor.type',
          `packet type 0x${d.type.toString(16)}`,
        );
      }
      return {
        ...base,
        kind: known ? 'other' : 'unknown',
        extension: bytes.subarray(o + VMPACKET_DESCRIPTOR_SIZE, o + headerLength),
      };
    }
  }
}

/** `decodePacket` with `strict: true`: unknown type numbers are a WireError. */
export function decodePacketStrict(bytes: Uint8Array, offset = 0): DecodedPacket {
  return decodePacket(bytes, offset, { strict: true });
}

// --- encoding from objects ---

interface SpecBase {
  /** Descriptor flags (default 0). */
  flags?: number;
  /** Default 0. */
  transactionId?: number | bigint;
  /** Bytes after the header; padded with zeroes to a multiple of 8. Default empty. */
  payload?: Uint8Array;
}

/** What `encodePacket` writes: like DecodedPacket, without the derived fields. */
export type PacketSpec =
  | (SpecBase & { kind: 'inband' | 'completion' })
  | (SpecBase & { kind: 'gpa-direct'; reserved?: number; ranges: readonly GpaRange[] })
  | (SpecBase & {
      kind: 'transfer-pages';
      transferPageSetId: number;
      senderOwnsSet?: number;
      reserved?: number;
      ranges: readonly TransferPageRange[];
    })
  | (SpecBase & { kind: 'gpadl' | 'teardown-gpadl'; gpadl: number; reserved?: number })
  | (SpecBase & {
      kind: 'add-transfer-page-set' | 'remove-transfer-page-set';
      gpadl: number;
      transferPageSetId: number;
      reserved?: number;
    })
  | (SpecBase & { kind: 'establish-gpadl'; gpadl: number; ranges: readonly GpaRange[] })
  | (SpecBase & { kind: 'additional-data'; totalBytes: number | bigint; offset: number; data: Uint8Array })
  | (SpecBase & { kind: 'other' | 'unknown'; type: number; extension?: Uint8Array });

function specHeaderLength(spec: PacketSpec): number {
  switch (spec.kind) {
    case 'inband':
    case 'completion':
      return VMPACKET_DESCRIPTOR_SIZE;
    case 'gpa-direct':
      return gpaDirectHeaderLength(spec.ranges);
    case 'transfer-pages':
      return transferPagesHeaderLength(spec.ranges.length);
    case 'gpadl':
    case 'teardown-gpadl':
    case 'add-transfer-page-set':
    case 'remove-transfer-page-set':
      return GPADL_PACKET_SIZE;
    case 'establish-gpadl':
      return ESTABLISH_GPADL_HEADER_SIZE + spec.ranges.reduce((n, r) => n + gpaRangeEncodedSize(r), 0);
    case 'additional-data':
      return align8(ADDITIONAL_DATA_HEADER_SIZE + spec.data.length);
    case 'other':
    case 'unknown':
      return align8(VMPACKET_DESCRIPTOR_SIZE + (spec.extension?.length ?? 0));
  }
}

function specType(spec: PacketSpec): number {
  switch (spec.kind) {
    case 'inband':
      return VM_PKT_DATA_INBAND;
    case 'completion':
      return VM_PKT_COMP;
    case 'gpa-direct':
      return VM_PKT_DATA_USING_GPA_DIRECT;
    case 'transfer-pages':
      return VM_PKT_DATA_USING_XFER_PAGES;
    case 'gpadl':
      return VM_PKT_DATA_USING_GPADL;
    case 'teardown-gpadl':
      return VM_PKT_TEARDOWN_GPADL;
    case 'add-transfer-page-set':
      return VM_PKT_ADD_XFER_PAGESET;
    case 'remove-transfer-page-set':
      return VM_PKT_RM_XFER_PAGESET;
    case 'establish-gpadl':
      return VM_PKT_ESTABLISH_GPADL;
    case 'additional-data':
      return VM_PKT_ADDITIONAL_DATA;
    case 'other':
    case 'unknown':
      return spec.type;
  }
}

/** Bytes `encodePacket` writes for `spec`: align8(header + payload), trailer excluded. */
export function encodedPacketLength(spec: PacketSpec): number {
  return align8(specHeaderLength(spec) + (spec.payload?.length ?? 0));
}

/**
 * Encodes `spec` at `offset` of `buf` (descriptor + extension + payload + zero padding to 8; no
 * trailer) and returns the bytes written. Inband and completion packets come out as Linux's
 * `vmbus_sendpacket` and DPDK's `rte_vmbus_chan_send` write them (offset8 = 2), GPA direct as
 * `rte_vmbus_chan_send_sglist`. A field that does not fit or a GPA range that is not well formed is
 * a caller error (RangeError).
 */
export function encodePacket(spec: PacketSpec, buf: Uint8Array, offset = 0): number {
  const type = specType(spec);
  if (!Number.isInteger(type) || type < 0 || type > 0xffff) throw new RangeError(`packet type ${type}`);
  const flags = spec.flags ?? 0;
  if (!Number.isInteger(flags) || flags < 0 || flags > 0xffff) throw new RangeError(`flags ${flags}`);
  if (spec.kind === 'gpa-direct') {
    for (const r of spec.ranges) checkGpaRangeForEncoding(r, false);
  } else if (spec.kind === 'establish-gpadl') {
    for (const r of spec.ranges) checkGpaRangeForEncoding(r, true);
  }
  const headerLength = specHeaderLength(spec);
  const payload = spec.payload ?? EMPTY;
  const total = align8(headerLength + payload.length);
  if (total / 8 > 0xffff) throw new RangeError(`packet of ${total} bytes exceeds len8's 16 bits`);
  if (!Number.isInteger(offset) || offset < 0 || offset + total > buf.length) {
    throw new RangeError(`packet of ${total} bytes does not fit at offset ${offset} of ${buf.length}`);
  }
  const id = spec.transactionId ?? 0;
  const dv = viewOf(buf);
  buf.fill(0, offset, offset + total);
  writeDescriptor(
    dv,
    offset,
    type,
    headerLength / 8,
    total / 8,
    flags,
    transactionIdLo(id),
    transactionIdHi(id),
  );
  const o = offset;
  switch (spec.kind) {
    case 'inband':
    case 'completion':
      break;
    case 'gpa-direct':
      dv.setUint32(o + 16, spec.reserved ?? 0, true);
      dv.setUint32(o + 20, spec.ranges.length, true);
      writeGpaRanges(dv, o + GPA_DIRECT_HEADER_SIZE, spec.ranges);
      break;
    case 'transfer-pages': {
      dv.setUint16(o + 16, spec.transferPageSetId, true);
      dv.setUint8(o + 18, spec.senderOwnsSet ?? 0);
      dv.setUint8(o + 19, spec.reserved ?? 0);
      dv.setUint32(o + 20, spec.ranges.length, true);
      let r = o + TRANSFER_PAGES_HEADER_SIZE;
      for (const range of spec.ranges) {
        dv.setUint32(r, range.byteCount, true);
        dv.setUint32(r + 4, range.byteOffset, true);
        r += TRANSFER_PAGE_RANGE_SIZE;
      }
      break;
    }
    case 'gpadl':
    case 'teardown-gpadl':
      dv.setUint32(o + 16, spec.gpadl, true);
      dv.setUint32(o + 20, spec.reserved ?? 0, true);
      break;
    case 'add-transfer-page-set':
    case 'remove-transfer-page-set':
      dv.setUint32(o + 16, spec.gpadl, true);
      dv.setUint16(o + 20, spec.transferPageSetId, true);
      dv.setUint16(o + 22, spec.reserved ?? 0, true);
      break;
    case 'establish-gpadl':
      dv.setUint32(o + 16, spec.gpadl, true);
      dv.setUint32(o + 20, spec.ranges.length, true);
      writeGpaRanges(dv, o + ESTABLISH_GPADL_HEADER_SIZE, spec.ranges);
      break;
    case 'additional-data':
      dv.setBigUint64(o + 16, BigInt(spec.totalBytes), true);
      dv.setUint32(o + 24, spec.offset, true);
      dv.setUint32(o + 28, spec.data.length, true);
      buf.set(spec.data, o + ADDITIONAL_DATA_HEADER_SIZE);
      break;
    case 'other':
    case 'unknown':
      if (spec.extension) buf.set(spec.extension, o + VMPACKET_DESCRIPTOR_SIZE);
      break;
  }
  buf.set(payload, o + headerLength);
  return total;
}

/** `encodePacket` into a new buffer of exactly the packet's length. */
export function encodePacketToBytes(spec: PacketSpec): Uint8Array {
  const out = new Uint8Array(encodedPacketLength(spec));
  encodePacket(spec, out, 0);
  return out;
}

const EMPTY = new Uint8Array(0);
