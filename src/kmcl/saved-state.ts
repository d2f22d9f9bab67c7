// The saved-state format of a KMCL server channel (VmbChannelSave* / VmbChannelRestoreFromBuffer,
// spec/kmcl-api.md section 7): plain data, independent of object identity, versioned, and cut into
// self-checking chunks. docs/servicing.md documents the layout byte by byte. Everything here is
// pure: the encoder turns a ChannelSavedState into a body, the chunker cuts the body into chunks
// that fit the caller's buffers, the assembler accepts whole chunks back and the decoder validates
// every field before anything is applied to a channel. A refusal is a SavedStateError whose
// `status` is the NTSTATUS the API returns.

import { crc32 } from '../bus/saved-state.js';
import { Guid } from '../wire/guid.js';
import {
  type NTSTATUS,
  STATUS_BUFFER_OVERFLOW,
  STATUS_BUFFER_TOO_SMALL,
  STATUS_DATA_ERROR,
  STATUS_INVALID_PARAMETER,
  STATUS_MORE_PROCESSING_REQUIRED,
  STATUS_REVISION_MISMATCH,
  STATUS_SUCCESS,
} from './ntstatus.js';

/** 'VMSC' read as a little-endian u32. */
export const SAVED_STATE_MAGIC = 0x4353_4d56;
export const SAVED_STATE_VERSION = 1;
/** Bytes of a chunk header. */
export const CHUNK_HEADER_SIZE = 32;
/** The last chunk of a saved state. */
export const CHUNK_FLAG_LAST = 0x1;
/** A body larger than this is refused (a corrupted length field must not allocate gigabytes). */
export const MAX_SAVED_BODY = 1 << 28;
/** Largest per-packet VSP save area. */
export const MAX_VSP_PACKET_STATE = 1 << 20;
/** Largest transaction slot a restored packet may name. */
export const MAX_RESTORED_TRANSACTION_SLOT = 1 << 22;

/** CRC-32 (IEEE), shared with the bus's saved state. */
export { crc32 };

/** A refused saved state (or packet library buffer). */
export class SavedStateError extends Error {
  readonly status: NTSTATUS;
  constructor(status: NTSTATUS, message: string) {
    super(message);
    this.name = 'SavedStateError';
    this.status = status;
  }
}

function corrupt(message: string): SavedStateError {
  return new SavedStateError(STATUS_DATA_ERROR, `saved state refused: ${message}`);
}

// ---------------------------------------------------------------------------------------------
// Plain-data model

export type SavedConn = 'enabled' | 'open' | 'peerClosed';

/** KMCL's part of one outgoing packet object in use (the LibBuf of EvtVmbChannelRestorePacket). */
export interface SavedPacketLib {
  /** 'queued': waiting for ring space or for the channel to flow; 'awaiting': in the ring, waiting for the guest's completion. */
  state: 'queued' | 'awaiting';
  /** Sent with WAIT_FOR_COMPLETION (always true for 'awaiting'). */
  wait: boolean;
  transIdLo: number;
  transIdHi: number;
  /** The packet exactly as it goes into the ring (queued only; empty for awaiting). */
  bytes: Uint8Array;
}

export interface SavedPacket {
  lib: SavedPacketLib;
  /** What EvtVmbChannelSavePacket wrote (the SaveBuf of EvtVmbChannelRestorePacket). */
  vsp: Uint8Array;
}

export interface SavedGpadlMapping {
  handle: number;
  readOnly: boolean;
}

export interface ChannelSavedState {
  conn: SavedConn;
  /** VmbChannelPacketFail stopped the incoming queue (spec Q8). */
  incomingStopped: boolean;
  interfaceType: Guid;
  interfaceInstance: Guid;
  targetVtl: number;
  serverFlags: number;
  maximumPacketSize: number;
  /** Host-to-guest ring write index and guest-to-host ring read index (open only, else 0). */
  outWriteIndex: number;
  inReadIndex: number;
  mappings: SavedGpadlMapping[];
  /** Completion packets waiting for ring space, each as it goes into the ring, in order. */
  queuedCompletions: Uint8Array[];
  /** Queued packets first (in send order), then awaiting ones. */
  packets: SavedPacket[];
}

// ---------------------------------------------------------------------------------------------
// Byte cursors

class Out {
  buf: Uint8Array;
  dv: DataView;
  pos = 0;

  /** `capacity`: the exact size when the caller knows it (then nothing is copied or regrown). */
  constructor(capacity = 256) {
    this.buf = new Uint8Array(capacity);
    this.dv = new DataView(this.buf.buffer);
  }

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = Math.max(this.buf.length * 2, 256);
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.room(1);
    this.buf[this.pos++] = v;
  }
  u32(v: number): void {
    this.room(4);
    this.dv.setUint32(this.pos, v >>> 0, true);
    this.pos += 4;
  }
  /** u32 length + the first `n` bytes of `b` (all of it by default). */
  bytes(b: Uint8Array, n = b.length): void {
    this.u32(n);
    this.room(n);
    if (n === b.length) this.buf.set(b, this.pos);
    else if (n <= 64) for (let k = 0; k < n; k++) this.buf[this.pos + k] = b[k]!;
    else this.buf.set(b.subarray(0, n), this.pos);
    this.pos += n;
  }
  guid(g: Guid): void {
    this.room(16);
    g.write(this.buf, this.pos);
    this.pos += 16;
  }
  result(): Uint8Array {
    return this.pos === this.buf.length ? this.buf : this.buf.slice(0, this.pos);
  }
}

class In {
  private readonly dv: DataView;
  pos = 0;
  constructor(private readonly buf: Uint8Array) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  private need(n: number, what: string): void {
    if (this.pos + n > this.buf.length) throw corrupt(`truncated at ${what}`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  bytes(what: string, max: number): Uint8Array {
    const n = this.u32(`${what} length`);
    if (n > max) throw corrupt(`${what} length ${n} exceeds ${max}`);
    this.need(n, what);
    const b = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  guid(what: string): Guid {
    this.need(16, what);
    const g = Guid.read(this.buf, this.pos, what);
    this.pos += 16;
    return g;
  }
  count(what: string, minBytesEach: number): number {
    const n = this.u32(what);
    if (n * minBytesEach > this.buf.length - this.pos) throw corrupt(`${what} ${n} exceeds the data`);
    return n;
  }
  end(): void {
    if (this.pos !== this.buf.length) throw corrupt(`${this.buf.length - this.pos} trailing bytes`);
  }
}

// ---------------------------------------------------------------------------------------------
// Packet library buffers

const PKT_QUEUED = 1;
const PKT_AWAITING = 2;
/** Bytes of a packet library buffer before the packet's own bytes. */
const PACKET_LIB_HEADER = 16;

function readU16(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}

function readU32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

function refusal(status: NTSTATUS, message: string): SavedStateError {
  return new SavedStateError(
    status,
    status === STATUS_DATA_ERROR ? `saved state refused: ${message}` : `VmbPacketRestore: ${message}`,
  );
}

function libBytes(p: SavedPacketLib): number {
  return PACKET_LIB_HEADER + p.bytes.length;
}

/** Writes a packet library buffer: the packet's state, its id and the first `n` bytes of `bytes`. */
function writePacketLib(
  o: Out,
  queued: boolean,
  wait: boolean,
  transIdLo: number,
  transIdHi: number,
  bytes: Uint8Array,
  n: number,
): void {
  o.u8(queued ? PKT_QUEUED : PKT_AWAITING);
  o.u8(wait ? 1 : 0);
  o.u8(0);
  o.u8(0);
  o.u32(transIdLo);
  o.u32(transIdHi);
  o.bytes(bytes, n);
}

/**
 * The fields of one packet library buffer as `scanPacketLib` found them. One object is reused
 * for every packet of a restore, so reading a packet allocates nothing.
 */
export class PacketLibFields {
  /** 'queued' (true) or 'awaiting' (false). */
  queued = false;
  wait = false;
  transIdLo = 0;
  transIdHi = 0;
  /** Where the packet's bytes are in the scanned buffer (length 0 for an awaiting packet). */
  bytesOffset = 0;
  bytesLength = 0;
}

/**
 * Reads and validates the packet library buffer that starts at `buf[from]` and may extend up to
 * `limit`: everything VmbPacketRestore and the decoder both require (docs/servicing.md). Fills
 * `out` and returns the offset just after the buffer. `maxBytes` bounds a queued packet (the
 * channel's packet staging size). A refusal throws SavedStateError with `status`
 * (STATUS_DATA_ERROR for the decoder, STATUS_INVALID_PARAMETER for VmbPacketRestore).
 */
export function scanPacketLib(
  buf: Uint8Array,
  from: number,
  limit: number,
  maxBytes: number,
  status: NTSTATUS,
  out: PacketLibFields,
): number {
  if (limit - from < PACKET_LIB_HEADER) throw refusal(status, 'truncated packet library buffer');
  const kind = buf[from]!;
  const wait = buf[from + 1]!;
  if (kind !== PKT_QUEUED && kind !== PKT_AWAITING) throw refusal(status, `packet state ${kind}`);
  if (wait > 1) throw refusal(status, `packet wait ${wait}`);
  const lo = readU32(buf, from + 4);
  const hi = readU32(buf, from + 8);
  const n = readU32(buf, from + 12);
  if (n > maxBytes) throw refusal(status, `packet bytes length ${n} exceeds ${maxBytes}`);
  const start = from + PACKET_LIB_HEADER;
  if (n > limit - start) throw refusal(status, 'truncated at packet bytes');
  const queued = kind === PKT_QUEUED;
  const waits = wait === 1;
  if (!queued && (!waits || n !== 0))
    throw refusal(status, 'an awaiting packet must be a transaction without bytes');
  if (queued) {
    if (n < 16 || n % 8 !== 0) throw refusal(status, `queued packet of ${n} bytes`);
    if (readU16(buf, start + 4) * 8 !== n)
      throw refusal(status, 'queued packet length does not match its descriptor');
    if (waits && (readU32(buf, start + 8) !== lo || readU32(buf, start + 12) !== hi))
      throw refusal(status, 'queued transaction id does not match its descriptor');
  }
  if (waits) {
    if (lo === 0 || lo > MAX_RESTORED_TRANSACTION_SLOT || hi === 0)
      throw refusal(status, `transaction id ${hi}:${lo} out of range`);
  } else if (lo !== 0 || hi !== 0) throw refusal(status, 'a message without completion has an id');
  out.queued = queued;
  out.wait = waits;
  out.transIdLo = lo;
  out.transIdHi = hi;
  out.bytesOffset = start;
  out.bytesLength = n;
  return start + n;
}

/** The plain-data form of scanned fields (the packet bytes copied out of `buf`). */
function plainLib(buf: Uint8Array, f: PacketLibFields): SavedPacketLib {
  return {
    state: f.queued ? 'queued' : 'awaiting',
    wait: f.wait,
    transIdLo: f.transIdLo,
    transIdHi: f.transIdHi,
    bytes: buf.slice(f.bytesOffset, f.bytesOffset + f.bytesLength),
  };
}

/** The LibBuf handed to EvtVmbChannelRestorePacket. */
export function encodePacketLib(p: SavedPacketLib): Uint8Array {
  const o = new Out(libBytes(p));
  writePacketLib(o, p.state === 'queued', p.wait, p.transIdLo, p.transIdHi, p.bytes, p.bytes.length);
  return o.result();
}

/** Decodes a LibBuf given to VmbPacketRestore; refuses anything else with STATUS_INVALID_PARAMETER. */
export function decodePacketLib(buf: Uint8Array, maxBytes: number): SavedPacketLib {
  const f = new PacketLibFields();
  const end = scanPacketLib(buf, 0, buf.length, maxBytes, STATUS_INVALID_PARAMETER, f);
  if (end !== buf.length) throw refusal(STATUS_INVALID_PARAMETER, `${buf.length - end} trailing bytes`);
  return plainLib(buf, f);
}

// ---------------------------------------------------------------------------------------------
// Channel body

const CONN_CODES: Record<SavedConn, number> = { enabled: 1, open: 2, peerClosed: 3 };
const CONNS: SavedConn[] = ['enabled', 'open', 'peerClosed'];
const ROLE_SERVER = 1;

/** Bytes of the body's fixed part: role .. incoming read index. */
const BODY_HEADER = 56;

/** A channel's saved state without its packets: what a body holds before them. */
export type ChannelStateHeader = Omit<ChannelSavedState, 'packets'>;

/**
 * Writes a body in one pass: the fixed part, the mappings and the completions when constructed,
 * then `packetCount` packets straight from wherever their bytes are (no object per packet).
 * `packetBytes` is the packets' ring bytes and VSP bytes in total: the buffer is then exactly the
 * body's size (a wrong figure costs a copy, never correctness).
 */
export class ChannelStateWriter {
  private readonly o: Out;
  private left: number;

  constructor(s: ChannelStateHeader, packetCount: number, packetBytes: number) {
    let size = BODY_HEADER + 4 + 8 * s.mappings.length + 4 + 4;
    for (const c of s.queuedCompletions) size += 4 + c.length;
    size += packetCount * (PACKET_LIB_HEADER + 4) + packetBytes;
    const o = new Out(size);
    this.o = o;
    o.u8(ROLE_SERVER);
    o.u8(CONN_CODES[s.conn]);
    o.u8(s.incomingStopped ? 1 : 0);
    o.u8(0);
    o.guid(s.interfaceType);
    o.guid(s.interfaceInstance);
    o.u32(s.targetVtl);
    o.u32(s.serverFlags);
    o.u32(s.maximumPacketSize);
    o.u32(s.outWriteIndex);
    o.u32(s.inReadIndex);
    o.u32(s.mappings.length);
    for (const m of s.mappings) {
      o.u32(m.handle);
      o.u32(m.readOnly ? 1 : 0);
    }
    o.u32(s.queuedCompletions.length);
    for (const c of s.queuedCompletions) o.bytes(c);
    o.u32(packetCount);
    this.left = packetCount;
  }

  /**
   * Appends the next packet: its library buffer (state, id, the first `bytesLength` bytes of
   * `bytes`, 0 for an awaiting packet) and the VSP's bytes. Queued packets come first.
   */
  packet(
    queued: boolean,
    wait: boolean,
    transIdLo: number,
    transIdHi: number,
    bytes: Uint8Array,
    bytesLength: number,
    vsp: Uint8Array,
  ): void {
    if (this.left === 0) throw new Error('ChannelStateWriter: more packets than announced');
    writePacketLib(this.o, queued, wait, transIdLo, transIdHi, bytes, bytesLength);
    this.o.bytes(vsp);
    this.left--;
  }

  /** The body, once every announced packet was written. */
  finish(): Uint8Array {
    if (this.left !== 0) throw new Error(`ChannelStateWriter: ${this.left} packets missing`);
    return this.o.result();
  }
}

/** The body of a saved state given as plain data. */
export function encodeChannelState(s: ChannelSavedState): Uint8Array {
  let packetBytes = 0;
  for (const p of s.packets) packetBytes += p.lib.bytes.length + p.vsp.length;
  const w = new ChannelStateWriter(s, s.packets.length, packetBytes);
  for (const { lib, vsp } of s.packets) {
    w.packet(
      lib.state === 'queued',
      lib.wait,
      lib.transIdLo,
      lib.transIdHi,
      lib.bytes,
      lib.bytes.length,
      vsp,
    );
  }
  return w.finish();
}

/**
 * A validated body whose packets are left where they are: what a restore walks, one packet at a
 * time, without a copy or an object per packet. `decodeChannelState` is the plain-data form.
 */
export interface IndexedChannelState extends Omit<ChannelSavedState, 'packets'> {
  /** The body the packets are in. */
  readonly body: Uint8Array;
  readonly packetCount: number;
  /**
   * Four offsets into `body` per packet (packet k at 4k): start and end of its packet library
   * buffer (the LibBuf of EvtVmbChannelRestorePacket), start and end of the VSP's bytes.
   */
  readonly packetSpans: Uint32Array;
}

/**
 * Validates a whole body in one pass and finds its packets. `maxPacketBytes` bounds a queued
 * packet (the restoring channel's staging size). Throws SavedStateError (STATUS_DATA_ERROR) on
 * any inconsistency.
 */
export function indexChannelState(body: Uint8Array, maxPacketBytes: number): IndexedChannelState {
  const i = new In(body);
  const role = i.u8('role');
  if (role !== ROLE_SERVER) throw corrupt(`role ${role}`);
  const conn = CONNS[i.u8('conn') - 1];
  if (conn === undefined) throw corrupt('bad channel state');
  const stopped = i.u8('incoming stopped');
  if (stopped > 1) throw corrupt(`incoming-stopped flag ${stopped}`);
  if (i.u8('reserved') !== 0) throw corrupt('reserved byte set');
  const interfaceType = i.guid('interface type');
  const interfaceInstance = i.guid('interface instance');
  const targetVtl = i.u32('target VTL');
  const serverFlags = i.u32('server flags');
  const maximumPacketSize = i.u32('maximum packet size');
  const outWriteIndex = i.u32('outgoing write index');
  const inReadIndex = i.u32('incoming read index');
  const mappings: SavedGpadlMapping[] = [];
  const nm = i.count('mapping count', 8);
  const seen = new Set<number>();
  for (let k = 0; k < nm; k++) {
    const handle = i.u32('GPADL handle');
    const ro = i.u32('GPADL flags');
    if (ro > 1 || handle === 0 || seen.has(handle)) throw corrupt(`GPADL mapping ${handle}`);
    seen.add(handle);
    mappings.push({ handle, readOnly: ro === 1 });
  }
  const queuedCompletions: Uint8Array[] = [];
  const nc = i.count('completion count', 4);
  for (let k = 0; k < nc; k++) {
    const c = i.bytes('completion', maxPacketBytes);
    if (c.length < 16 || c.length % 8 !== 0) throw corrupt(`queued completion of ${c.length} bytes`);
    queuedCompletions.push(c);
  }
  const np = i.count('packet count', PACKET_LIB_HEADER + 4);
  const spans = new Uint32Array(np * 4);
  const lib = new PacketLibFields();
  // Transaction slots, checked for repeats after the loop with a bitmap (a Set of 10,000 numbers
  // costs more than the rest of the decode).
  const slots = new Uint32Array(np);
  let slotCount = 0;
  let maxSlot = 0;
  let awaitingSeen = false;
  let pos = i.pos;
  for (let k = 0; k < np; k++) {
    const libEnd = scanPacketLib(body, pos, body.length, maxPacketBytes, STATUS_DATA_ERROR, lib);
    if (body.length - libEnd < 4) throw corrupt('truncated at VSP packet state length');
    const n = readU32(body, libEnd);
    if (n > MAX_VSP_PACKET_STATE)
      throw corrupt(`VSP packet state length ${n} exceeds ${MAX_VSP_PACKET_STATE}`);
    const vspStart = libEnd + 4;
    if (n > body.length - vspStart) throw corrupt('truncated at VSP packet state');
    if (!lib.queued) awaitingSeen = true;
    else if (awaitingSeen) throw corrupt('a queued packet after an awaiting one');
    if (lib.wait) {
      slots[slotCount++] = lib.transIdLo;
      if (lib.transIdLo > maxSlot) maxSlot = lib.transIdLo;
    }
    spans[4 * k] = pos;
    spans[4 * k + 1] = libEnd;
    spans[4 * k + 2] = vspStart;
    spans[4 * k + 3] = vspStart + n;
    pos = vspStart + n;
  }
  i.pos = pos;
  i.end();
  // Slots are at most MAX_RESTORED_TRANSACTION_SLOT (scanPacketLib), so this is at most 512 KiB.
  const used = new Uint8Array((maxSlot >>> 3) + 1);
  for (let k = 0; k < slotCount; k++) {
    const slot = slots[k]!;
    const bit = 1 << (slot & 7);
    if ((used[slot >>> 3]! & bit) !== 0) throw corrupt(`transaction slot ${slot} used twice`);
    used[slot >>> 3] = used[slot >>> 3]! | bit;
  }
  if (conn !== 'open' && (queuedCompletions.length > 0 || mappings.length > 0 || awaitingSeen))
    throw corrupt('ring-bound state saved for a channel that is not open');
  return {
    conn,
    incomingStopped: stopped === 1,
    interfaceType,
    interfaceInstance,
    targetVtl,
    serverFlags,
    maximumPacketSize,
    outWriteIndex,
    inReadIndex,
    mappings,
    queuedCompletions,
    body,
    packetCount: np,
    packetSpans: spans,
  };
}

/**
 * Decodes and validates a whole body into plain data (every packet's bytes copied out).
 * `maxPacketBytes` bounds a queued packet (the restoring channel's staging size). Throws
 * SavedStateError (STATUS_DATA_ERROR) on any inconsistency.
 */
export function decodeChannelState(body: Uint8Array, maxPacketBytes: number): ChannelSavedState {
  const { body: b, packetCount, packetSpans, ...rest } = indexChannelState(body, maxPacketBytes);
  const packets: SavedPacket[] = [];
  const lib = new PacketLibFields();
  for (let k = 0; k < packetCount; k++) {
    scanPacketLib(b, packetSpans[4 * k]!, packetSpans[4 * k + 1]!, maxPacketBytes, STATUS_DATA_ERROR, lib);
    packets.push({ lib: plainLib(b, lib), vsp: b.slice(packetSpans[4 * k + 2]!, packetSpans[4 * k + 3]!) });
  }
  return { ...rest, packets };
}

// ---------------------------------------------------------------------------------------------
// Chunks

/** Cuts a body into chunks as VmbChannelSaveContinue hands out buffers. */
export class ChunkWriter {
  private offset = 0;
  private sequence = 0;

  constructor(private readonly body: Uint8Array) {}

  get done(): boolean {
    return this.offset === this.body.length && this.sequence > 0;
  }

  /** Bytes needed to write everything that remains in one call. */
  get bytesRequired(): number {
    return this.done ? 0 : CHUNK_HEADER_SIZE + this.body.length - this.offset;
  }

  /**
   * Writes the next chunk into `out[0, size)`: STATUS_SUCCESS (last chunk written),
   * STATUS_BUFFER_OVERFLOW (a chunk written, more remain), STATUS_BUFFER_TOO_SMALL (nothing
   * written: a chunk needs at least CHUNK_HEADER_SIZE + 1 bytes, or the header alone for an empty body).
   */
  next(out: Uint8Array, size: number): { status: NTSTATUS; filled: number; required: number } {
    const remaining = this.body.length - this.offset;
    const minimum = CHUNK_HEADER_SIZE + Math.min(1, remaining);
    if (this.done) return { status: STATUS_SUCCESS, filled: 0, required: 0 };
    if (size < minimum) return { status: STATUS_BUFFER_TOO_SMALL, filled: 0, required: this.bytesRequired };
    const take = Math.min(remaining, size - CHUNK_HEADER_SIZE);
    const last = take === remaining;
    const dv = new DataView(out.buffer, out.byteOffset, CHUNK_HEADER_SIZE);
    dv.setUint32(0, SAVED_STATE_MAGIC, true);
    dv.setUint16(4, SAVED_STATE_VERSION, true);
    dv.setUint16(6, CHUNK_HEADER_SIZE, true);
    dv.setUint32(8, this.sequence, true);
    dv.setUint32(12, last ? CHUNK_FLAG_LAST : 0, true);
    dv.setUint32(16, this.body.length, true);
    dv.setUint32(20, this.offset, true);
    dv.setUint32(24, take, true);
    out.set(this.body.subarray(this.offset, this.offset + take), CHUNK_HEADER_SIZE);
    const crc = crc32(out, CHUNK_HEADER_SIZE, CHUNK_HEADER_SIZE + take, crc32(out, 0, 28));
    dv.setUint32(28, crc, true);
    this.offset += take;
    this.sequence++;
    return {
      status: last ? STATUS_SUCCESS : STATUS_BUFFER_OVERFLOW,
      filled: CHUNK_HEADER_SIZE + take,
      required: this.bytesRequired,
    };
  }
}

/**
 * Reassembles a body from whole chunks (one or more per buffer). Any refusal throws
 * SavedStateError and the caller discards the assembler (a restore then starts over).
 */
export class ChunkAssembler {
  private body: Uint8Array | null = null;
  private offset = 0;
  private sequence = 0;
  private finished = false;

  /** STATUS_MORE_PROCESSING_REQUIRED until the last chunk, then STATUS_SUCCESS. */
  accept(buf: Uint8Array, size: number): NTSTATUS {
    if (this.finished) throw corrupt('data after the last chunk');
    if (size === 0) throw corrupt('empty buffer');
    let pos = 0;
    while (pos < size) {
      if (this.finished) throw corrupt('data after the last chunk');
      if (size - pos < CHUNK_HEADER_SIZE) throw corrupt('truncated chunk header');
      const dv = new DataView(buf.buffer, buf.byteOffset + pos, CHUNK_HEADER_SIZE);
      if (dv.getUint32(0, true) !== SAVED_STATE_MAGIC) throw corrupt('bad magic');
      const version = dv.getUint16(4, true);
      if (version !== SAVED_STATE_VERSION) {
        throw new SavedStateError(
          STATUS_REVISION_MISMATCH,
          `saved state version ${version} is not supported (this library reads version ${SAVED_STATE_VERSION})`,
        );
      }
      if (dv.getUint16(6, true) !== CHUNK_HEADER_SIZE) throw corrupt('bad chunk header size');
      const seq = dv.getUint32(8, true);
      const flags = dv.getUint32(12, true);
      const total = dv.getUint32(16, true);
      const offset = dv.getUint32(20, true);
      const take = dv.getUint32(24, true);
      if (take > size - pos - CHUNK_HEADER_SIZE) throw corrupt('truncated chunk');
      const end = pos + CHUNK_HEADER_SIZE + take;
      const crc = crc32(buf, pos + CHUNK_HEADER_SIZE, end, crc32(buf, pos, pos + 28));
      if (crc !== dv.getUint32(28, true)) throw corrupt(`chunk ${seq} checksum mismatch`);
      if ((flags & ~CHUNK_FLAG_LAST) !== 0) throw corrupt(`chunk flags 0x${flags.toString(16)}`);
      if (seq !== this.sequence) throw corrupt(`chunk ${seq} where ${this.sequence} was expected`);
      if (this.body === null) {
        if (total > MAX_SAVED_BODY) throw corrupt(`body of ${total} bytes`);
        this.body = new Uint8Array(total);
      } else if (total !== this.body.length) throw corrupt('chunks disagree on the body length');
      if (offset !== this.offset || offset + take > total) throw corrupt(`chunk ${seq} at a wrong offset`);
      if (take === 0 && total !== 0) throw corrupt(`empty chunk ${seq}`);
      const last = offset + take === total;
      if (last !== ((flags & CHUNK_FLAG_LAST) !== 0)) throw corrupt(`chunk ${seq} last-flag mismatch`);
      this.body.set(buf.subarray(pos + CHUNK_HEADER_SIZE, end), offset);
      this.offset += take;
      this.sequence++;
      if (last) this.finished = true;
      pos = end;
    }
    return this.finished ? STATUS_SUCCESS : STATUS_MORE_PROCESSING_REQUIRED;
  }

  /** The whole body once the last chunk arrived. */
  result(): Uint8Array {
    if (!this.finished || this.body === null) throw new Error('ChunkAssembler: not finished');
    return this.body;
  }
}
