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
  buf = new Uint8Array(256);
  dv = new DataView(this.buf.buffer);
  pos = 0;

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
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
  bytes(b: Uint8Array): void {
    this.u32(b.length);
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  guid(g: Guid): void {
    this.room(16);
    g.write(this.buf, this.pos);
    this.pos += 16;
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.pos);
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

function writePacketLib(o: Out, p: SavedPacketLib): void {
  o.u8(p.state === 'queued' ? PKT_QUEUED : PKT_AWAITING);
  o.u8(p.wait ? 1 : 0);
  o.u8(0);
  o.u8(0);
  o.u32(p.transIdLo);
  o.u32(p.transIdHi);
  o.bytes(p.bytes);
}

/** Validates a packet's shape: what VmbPacketRestore and the decoder both require. */
function checkPacketLib(p: SavedPacketLib, maxBytes: number, fail: (m: string) => SavedStateError): void {
  if (p.state === 'awaiting' && (!p.wait || p.bytes.length !== 0))
    throw fail('an awaiting packet must be a transaction without bytes');
  if (p.state === 'queued') {
    const n = p.bytes.length;
    if (n < 16 || n % 8 !== 0 || n > maxBytes) throw fail(`queued packet of ${n} bytes`);
    const dv = new DataView(p.bytes.buffer, p.bytes.byteOffset, n);
    if (dv.getUint16(4, true) * 8 !== n) throw fail('queued packet length does not match its descriptor');
    if (p.wait && (dv.getUint32(8, true) !== p.transIdLo || dv.getUint32(12, true) !== p.transIdHi))
      throw fail('queued transaction id does not match its descriptor');
  }
  if (p.wait) {
    if (p.transIdLo <= 0 || p.transIdLo > MAX_RESTORED_TRANSACTION_SLOT || p.transIdHi <= 0)
      throw fail(`transaction id ${p.transIdHi}:${p.transIdLo} out of range`);
  } else if (p.transIdLo !== 0 || p.transIdHi !== 0) throw fail('a message without completion has an id');
}

function readPacketLib(i: In, maxBytes: number, fail: (m: string) => SavedStateError): SavedPacketLib {
  const kind = i.u8('packet state');
  const wait = i.u8('packet wait');
  i.u8('reserved');
  i.u8('reserved');
  if (kind !== PKT_QUEUED && kind !== PKT_AWAITING) throw fail(`packet state ${kind}`);
  if (wait > 1) throw fail(`packet wait ${wait}`);
  const p: SavedPacketLib = {
    state: kind === PKT_QUEUED ? 'queued' : 'awaiting',
    wait: wait === 1,
    transIdLo: i.u32('transaction id'),
    transIdHi: i.u32('transaction id'),
    bytes: i.bytes('packet bytes', maxBytes),
  };
  checkPacketLib(p, maxBytes, fail);
  return p;
}

/** The LibBuf handed to EvtVmbChannelRestorePacket. */
export function encodePacketLib(p: SavedPacketLib): Uint8Array {
  const o = new Out();
  writePacketLib(o, p);
  return o.result();
}

/** Decodes a LibBuf given to VmbPacketRestore; refuses anything else with STATUS_INVALID_PARAMETER. */
export function decodePacketLib(buf: Uint8Array, maxBytes: number): SavedPacketLib {
  const fail = (m: string) => new SavedStateError(STATUS_INVALID_PARAMETER, `VmbPacketRestore: ${m}`);
  try {
    const i = new In(buf);
    const p = readPacketLib(i, maxBytes, fail);
    i.end();
    return p;
  } catch (e) {
    if (e instanceof SavedStateError && e.status !== STATUS_INVALID_PARAMETER) throw fail(e.message);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Channel body

const CONN_CODES: Record<SavedConn, number> = { enabled: 1, open: 2, peerClosed: 3 };
const CONNS: SavedConn[] = ['enabled', 'open', 'peerClosed'];
const ROLE_SERVER = 1;

export function encodeChannelState(s: ChannelSavedState): Uint8Array {
  const o = new Out();
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
  o.u32(s.packets.length);
  for (const p of s.packets) {
    writePacketLib(o, p.lib);
    o.bytes(p.vsp);
  }
  return o.result();
}

/**
 * Decodes and validates a whole body. `maxPacketBytes` bounds a queued packet (the restoring
 * channel's staging size). Throws SavedStateError (STATUS_DATA_ERROR) on any inconsistency.
 */
export function decodeChannelState(body: Uint8Array, maxPacketBytes: number): ChannelSavedState {
  const i = new In(body);
  const role = i.u8('role');
  if (role !== ROLE_SERVER) throw corrupt(`role ${role}`);
  const conn = CONNS[i.u8('conn') - 1];
  if (conn === undefined) throw corrupt('bad channel state');
  const stopped = i.u8('incoming stopped');
  if (stopped > 1) throw corrupt(`incoming-stopped flag ${stopped}`);
  if (i.u8('reserved') !== 0) throw corrupt('reserved byte set');
  const s: ChannelSavedState = {
    conn,
    incomingStopped: stopped === 1,
    interfaceType: i.guid('interface type'),
    interfaceInstance: i.guid('interface instance'),
    targetVtl: i.u32('target VTL'),
    serverFlags: i.u32('server flags'),
    maximumPacketSize: i.u32('maximum packet size'),
    outWriteIndex: i.u32('outgoing write index'),
    inReadIndex: i.u32('incoming read index'),
    mappings: [],
    queuedCompletions: [],
    packets: [],
  };
  const nm = i.count('mapping count', 8);
  const seen = new Set<number>();
  for (let k = 0; k < nm; k++) {
    const handle = i.u32('GPADL handle');
    const ro = i.u32('GPADL flags');
    if (ro > 1 || handle === 0 || seen.has(handle)) throw corrupt(`GPADL mapping ${handle}`);
    seen.add(handle);
    s.mappings.push({ handle, readOnly: ro === 1 });
  }
  const nc = i.count('completion count', 4);
  for (let k = 0; k < nc; k++) {
    const c = i.bytes('completion', maxPacketBytes);
    if (c.length < 16 || c.length % 8 !== 0) throw corrupt(`queued completion of ${c.length} bytes`);
    s.queuedCompletions.push(c);
  }
  const np = i.count('packet count', 20);
  const ids = new Set<number>();
  let awaitingSeen = false;
  for (let k = 0; k < np; k++) {
    const lib = readPacketLib(i, maxPacketBytes, corrupt);
    const vsp = i.bytes('VSP packet state', MAX_VSP_PACKET_STATE);
    if (lib.state === 'awaiting') awaitingSeen = true;
    else if (awaitingSeen) throw corrupt('a queued packet after an awaiting one');
    if (lib.wait) {
      if (ids.has(lib.transIdLo)) throw corrupt(`transaction slot ${lib.transIdLo} used twice`);
      ids.add(lib.transIdLo);
    }
    s.packets.push({ lib, vsp });
  }
  i.end();
  if (s.conn !== 'open' && (s.queuedCompletions.length > 0 || s.mappings.length > 0 || awaitingSeen))
    throw corrupt('ring-bound state saved for a channel that is not open');
  return s;
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
