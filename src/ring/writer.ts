// The writing end of one ring (spec/vmbus-wire.md 1.3-1.7): frames packets exactly as Linux and DPDK
// do (descriptor + extension + payload, zero padded to 8, then the 8-byte trailer `(u64)start << 32`,
// all wrapping at D), never lets the ring become completely full (a packet is refused when
// writable <= its size + trailer), publishes write_index with one Atomics.store per batch, decides
// whether the reader must be signalled (empty -> non-empty, interrupt_mask clear) and manages
// pending_send_sz when blocked. Nothing is allocated per packet; a full ring is a result code, a
// corrupt read_index from the other side a sticky RingError.
//
// pending_send_sz sizing (automatic by default): a writer blocked with nothing uncommitted asks for
// max(packet + trailer, maximumPacketSize / 4) rounded up to 8 bytes ('quarter', OpenVMM's
// choice), so the reader wakes it once, after a quarter of the ring has drained, instead of on
// nearly every reader commit: with 'exact' (packet + trailer only, an option) a fast writer on a
// full ring is woken for every batch the reader frees. The writer itself re-checks for the packet's
// own size on every attempt, so a writer that polls is never held back by the larger request.

import {
  align8,
  checkGpaRanges,
  encodeGpaDirectHeader,
  encodeTransferPagesHeader,
  type GpaRange,
  gpaDirectHeaderLength,
  type TransferPageRange,
  transferPagesHeaderLength,
  VM_PKT_COMP,
  VMPACKET_DESCRIPTOR_SIZE,
  VMPACKET_TRAILER_SIZE,
} from '../wire/packets.js';
import { RingError } from './errors.js';
import {
  CONTROL_INTERRUPT_MASK,
  CONTROL_PENDING_SEND_SZ,
  CONTROL_READ_INDEX,
  CONTROL_WRITE_INDEX,
  copyIn,
  type RingMemory,
  WORD_COPY_MAX,
  WordView,
} from './memory.js';

/** The packet was written (not yet visible to the reader until `commit`). */
export const RING_WRITE_OK = 0;
/** Not enough free space now; nothing was written. Commit, then retry or wait for the reader. */
export const RING_WRITE_FULL = 1;
/** The packet can never fit this ring (longer than `maximumPacketSize`); nothing was written. */
export const RING_WRITE_TOO_LARGE = 2;
export type RingWriteResult = typeof RING_WRITE_OK | typeof RING_WRITE_FULL | typeof RING_WRITE_TOO_LARGE;

/**
 * What an automatic pending_send_sz asks for (spec 1.7):
 * - 'quarter' (default; OpenVMM's `WriteState::poll_ready`): max(packet + trailer,
 *   maximumPacketSize / 4), rounded up to a multiple of 8: the reader signals once a quarter of the
 *   ring is free, which avoids a wakeup per reader commit while the ring stays nearly full;
 * - 'exact': the packet + trailer, the least space that lets the blocked packet in.
 */
export type PendingSendSizing = 'quarter' | 'exact';

export interface RingWriterOptions {
  /**
   * When a packet does not fit and nothing is left uncommitted, set pending_send_sz (sized by
   * `pendingSendSizing`), re-check, and clear it again once a packet fits (spec 1.7). Default true.
   */
  autoPendingSendSize?: boolean;
  /** How much free space the automatic pending_send_sz asks for. Default 'quarter'. */
  pendingSendSizing?: PendingSendSizing;
}

const EMPTY = new Uint8Array(0);
const TOO_LARGE = -2;
/** The most bytes a descriptor's u16 len8 can describe. */
const MAX_LEN8_BYTES = 0xffff * 8;
const FULL = -1;

export class RingWriter {
  readonly ring: RingMemory;
  /** D, the data area's size. */
  readonly dataSize: number;
  /**
   * Largest packet (descriptor + extension + padded payload, trailer excluded) this ring can ever
   * hold: D - 16, since packet + trailer must stay below the free space of an empty ring (D), and
   * never more than the descriptor's u16 len8 can describe (0xFFFF * 8 bytes).
   */
  readonly maximumPacketSize: number;
  /** How an automatic pending_send_sz is sized. */
  readonly pendingSendSizing: PendingSendSizing;
  private readonly control: Int32Array;
  private readonly data: Uint8Array | null;
  private readonly data32: Int32Array | null;
  private readonly dv: DataView | null;
  private readonly words = new WordView();
  private readonly autoPending: boolean;
  /** The least automatic pending_send_sz: ceil8(maximumPacketSize / 4) for 'quarter', 0 for 'exact'. */
  private readonly pendingFloor: number;
  /** write_index as last published. */
  private committed: number;
  /** Where the next packet goes (>= committed in ring order). */
  private w: number;
  /** read_index as last loaded (only ever behind the real one, so free space is never overstated). */
  private r: number;
  /** True while this writer has a non-zero pending_send_sz stored. */
  private pendingSet = false;
  private error: RingError | null = null;
  private scratch = new Uint8Array(256);
  private scratchView = new DataView(this.scratch.buffer);

  /** Takes over a ring whose write_index and read_index are as the control page says (validated). */
  constructor(ring: RingMemory, options: RingWriterOptions = {}) {
    this.ring = ring;
    this.dataSize = ring.dataSize;
    this.maximumPacketSize = Math.min(ring.dataSize - 2 * VMPACKET_TRAILER_SIZE, MAX_LEN8_BYTES);
    this.control = ring.control;
    this.data = ring.data;
    this.data32 = ring.data32;
    this.dv = ring.dataView;
    this.autoPending = options.autoPendingSendSize ?? true;
    const sizing = options.pendingSendSizing ?? 'quarter';
    if (sizing !== 'quarter' && sizing !== 'exact') {
      throw new RangeError(`pendingSendSizing must be 'quarter' or 'exact', not ${String(sizing)}`);
    }
    this.pendingSendSizing = sizing;
    this.pendingFloor = sizing === 'quarter' ? (Math.ceil(this.maximumPacketSize / 4) + 7) & ~7 : 0;
    const w = Atomics.load(this.control, CONTROL_WRITE_INDEX) >>> 0;
    if (w >= this.dataSize || (w & 7) !== 0) {
      throw this.fail('write_index', `${w} is not a multiple of 8 below ${this.dataSize}`);
    }
    this.committed = w;
    this.w = w;
    this.r = w;
    this.loadReadIndex();
  }

  /** The sticky error, once the ring was found corrupt; every later call throws it. */
  get failure(): RingError | null {
    return this.error;
  }

  /** Bytes written since the last `commit` (trailers included). */
  get uncommittedBytes(): number {
    const d = this.w - this.committed;
    return d >= 0 ? d : d + this.dataSize;
  }

  /** Where the next packet will start. */
  get writeIndex(): number {
    return this.w;
  }

  /**
   * Free bytes as Linux's `hv_get_bytes_to_write` counts them (reloading read_index), measured from
   * this writer's position (uncommitted packets count as used). A packet of P bytes plus its 8-byte
   * trailer fits iff P + 8 < bytesWritable().
   */
  bytesWritable(): number {
    if (this.error) throw this.error;
    const r = this.loadReadIndex();
    const w = this.w;
    return w >= r ? this.dataSize - (w - r) : r - w;
  }

  /**
   * Writes one packet with no descriptor extension (offset8 = 2), like `rte_vmbus_chan_send`: type
   * 6 (inband), 0xB (completion) or any other. The payload is `payload[payloadOffset, +payloadLength)`.
   */
  writePacket(
    type: number,
    flags: number,
    transIdLo: number,
    transIdHi: number,
    payload: Uint8Array = EMPTY,
    payloadOffset = 0,
    payloadLength: number = payload.length - payloadOffset,
  ): RingWriteResult {
    checkSlice(payload, payloadOffset, payloadLength);
    if (payloadLength > this.maximumPacketSize) return RING_WRITE_TOO_LARGE;
    const pktLen = (VMPACKET_DESCRIPTOR_SIZE + payloadLength + 7) & ~7;
    const w = this.reserve(pktLen);
    if (w < 0) return w === FULL ? RING_WRITE_FULL : RING_WRITE_TOO_LARGE;
    // Fast path: the packet and its trailer lie inside one segment, the contiguous data area or
    // (scattered ring) one page. Zero the packet's last 8 bytes first (the padding, if any, lies
    // there), then the descriptor, then the payload over whatever of them it covers.
    const total = pktLen + VMPACKET_TRAILER_SIZE;
    let seg = this.data;
    let seg32 = this.data32;
    let dv = this.dv;
    let o = w;
    let limit = this.dataSize;
    if (seg === null) {
      const i = w >>> 12;
      seg = this.ring.pages![i]!;
      seg32 = this.ring.pages32 === null ? null : this.ring.pages32[i]!;
      dv = this.ring.pageViews![i]!;
      o = w & 4095;
      limit = 4096;
    }
    if (o + total <= limit) {
      const end = o + pktLen;
      dv = dv!;
      dv.setUint32(end - 8, 0, true);
      dv.setUint32(end - 4, 0, true);
      dv.setUint32(o, (type & 0xffff) | (2 << 16), true);
      dv.setUint32(o + 4, (pktLen >>> 3) | ((flags & 0xffff) << 16), true);
      dv.setUint32(o + 8, transIdLo, true);
      dv.setUint32(o + 12, transIdHi, true);
      if (payloadLength > 0) {
        copyIn(
          seg,
          seg32,
          o + VMPACKET_DESCRIPTOR_SIZE,
          payload,
          payloadLength <= WORD_COPY_MAX ? this.words.of(payload) : null,
          payloadOffset,
          payloadLength,
        );
      }
      dv.setUint32(end, 0, true);
      dv.setUint32(end + 4, w, true);
      const next = w + total;
      this.w = next === this.dataSize ? 0 : next;
      return RING_WRITE_OK;
    }
    const s = this.scratchView;
    s.setUint32(0, (type & 0xffff) | (2 << 16), true);
    s.setUint32(4, (pktLen >>> 3) | ((flags & 0xffff) << 16), true);
    s.setUint32(8, transIdLo, true);
    s.setUint32(12, transIdHi, true);
    this.putPacket(w, VMPACKET_DESCRIPTOR_SIZE, pktLen, payload, payloadOffset, payloadLength);
    return RING_WRITE_OK;
  }

  /** A completion (type 0xB, flags 0, as OpenVMM writes them) echoing the peer's transaction id. */
  writeCompletion(
    transIdLo: number,
    transIdHi: number,
    payload: Uint8Array = EMPTY,
    payloadOffset = 0,
    payloadLength: number = payload.length - payloadOffset,
  ): RingWriteResult {
    return this.writePacket(VM_PKT_COMP, 0, transIdLo, transIdHi, payload, payloadOffset, payloadLength);
  }

  /**
   * A GPA-direct packet (type 9), byte-identical to `rte_vmbus_chan_send_sglist` (which always uses
   * flags = 1) when every range has one PFN. Malformed ranges are a caller error (RangeError).
   */
  writeGpaDirect(
    flags: number,
    transIdLo: number,
    transIdHi: number,
    ranges: readonly GpaRange[],
    payload: Uint8Array = EMPTY,
    payloadOffset = 0,
    payloadLength: number = payload.length - payloadOffset,
  ): RingWriteResult {
    checkSlice(payload, payloadOffset, payloadLength);
    checkGpaRanges(ranges);
    const headerLength = gpaDirectHeaderLength(ranges);
    const pktLen = align8(headerLength + payloadLength);
    if (pktLen > this.maximumPacketSize) return RING_WRITE_TOO_LARGE;
    const s = this.scratchFor(headerLength);
    const w = this.reserve(pktLen);
    if (w < 0) return w === FULL ? RING_WRITE_FULL : RING_WRITE_TOO_LARGE;
    encodeGpaDirectHeader(s, 0, flags, transIdLo, transIdHi, ranges, payloadLength);
    this.putPacket(w, headerLength, pktLen, payload, payloadOffset, payloadLength);
    return RING_WRITE_OK;
  }

  /** A transfer-page packet (type 7): ranges into transfer page set `transferPageSetId`. */
  writeTransferPages(
    flags: number,
    transIdLo: number,
    transIdHi: number,
    transferPageSetId: number,
    ranges: readonly TransferPageRange[],
    payload: Uint8Array = EMPTY,
    payloadOffset = 0,
    payloadLength: number = payload.length - payloadOffset,
    senderOwnsSet = 0,
  ): RingWriteResult {
    checkSlice(payload, payloadOffset, payloadLength);
    const headerLength = transferPagesHeaderLength(ranges.length);
    const pktLen = align8(headerLength + payloadLength);
    if (pktLen > this.maximumPacketSize) return RING_WRITE_TOO_LARGE;
    const s = this.scratchFor(headerLength);
    const w = this.reserve(pktLen);
    if (w < 0) return w === FULL ? RING_WRITE_FULL : RING_WRITE_TOO_LARGE;
    encodeTransferPagesHeader(
      s,
      0,
      flags,
      transIdLo,
      transIdHi,
      transferPageSetId,
      senderOwnsSet,
      ranges,
      payloadLength,
    );
    this.putPacket(w, headerLength, pktLen, payload, payloadOffset, payloadLength);
    return RING_WRITE_OK;
  }

  /**
   * A pre-encoded packet `packet[offset, +length)`, descriptor included (length a multiple of 8, at
   * least 16), followed by the trailer. Its bytes are not checked: tools and tests use this to write
   * exactly what they want, including malformed descriptors.
   */
  writeRaw(packet: Uint8Array, offset = 0, length: number = packet.length - offset): RingWriteResult {
    checkSlice(packet, offset, length);
    if (length < VMPACKET_DESCRIPTOR_SIZE || length % 8 !== 0) {
      throw new RangeError(`a raw packet must be a multiple of 8 bytes, at least 16; got ${length}`);
    }
    const w = this.reserve(length);
    if (w < 0) return w === FULL ? RING_WRITE_FULL : RING_WRITE_TOO_LARGE;
    this.ring.write(w, packet, offset, length);
    this.putTrailer(this.advance(w, length), w);
    return RING_WRITE_OK;
  }

  /**
   * Publishes everything written since the last commit with one Atomics.store of write_index, then
   * returns whether the reader must be signalled (spec 1.6): interrupt_mask == 0 and read_index equal
   * to the write index before this batch. Returns false when nothing was written.
   */
  commit(): boolean {
    if (this.error) throw this.error;
    const w = this.w;
    const before = this.committed;
    if (w === before) return false;
    Atomics.store(this.control, CONTROL_WRITE_INDEX, w);
    this.committed = w;
    if (Atomics.load(this.control, CONTROL_INTERRUPT_MASK) !== 0) return false;
    const r = Atomics.load(this.control, CONTROL_READ_INDEX) >>> 0;
    if (r < this.dataSize && (r & 7) === 0) this.r = r;
    return r === before;
  }

  /** Forgets the packets written since the last commit (the reader never saw them). */
  discard(): void {
    if (this.error) throw this.error;
    this.w = this.committed;
  }

  /**
   * Stores pending_send_sz (spec 1.7): the free bytes this writer waits for, 0 to clear. A writer
   * clears a value it set (by hand or automatically) as soon as a packet fits.
   */
  setPendingSendSize(bytes: number): void {
    if (!Number.isInteger(bytes) || bytes < 0 || bytes > this.dataSize) {
      throw new RangeError(`pending send size ${bytes} is not an integer in [0, ${this.dataSize}]`);
    }
    Atomics.store(this.control, CONTROL_PENDING_SEND_SZ, bytes);
    this.pendingSet = bytes !== 0;
  }

  clearPendingSendSize(): void {
    this.setPendingSendSize(0);
  }

  // --- internals ---

  private fail(field: string, message: string): RingError {
    this.error ??= new RingError('bad-index', field, message);
    return this.error;
  }

  private loadReadIndex(): number {
    const r = Atomics.load(this.control, CONTROL_READ_INDEX) >>> 0;
    if (r >= this.dataSize || (r & 7) !== 0) {
      throw this.fail('read_index', `${r} is not a multiple of 8 below ${this.dataSize}`);
    }
    this.r = r;
    return r;
  }

  /** Start index for a packet of `pktLen` bytes (+ trailer), or FULL / TOO_LARGE. */
  private reserve(pktLen: number): number {
    if (this.error) throw this.error;
    if (pktLen > this.maximumPacketSize) return TOO_LARGE;
    const total = pktLen + VMPACKET_TRAILER_SIZE;
    const D = this.dataSize;
    const w = this.w;
    let r = this.r;
    if ((w >= r ? D - (w - r) : r - w) <= total) {
      r = this.loadReadIndex();
      if ((w >= r ? D - (w - r) : r - w) <= total) {
        if (!this.autoPending || w !== this.committed) return FULL;
        // Blocked with nothing uncommitted: ask the reader for at least `total` free bytes (see
        // the module comment), then re-check for `total` (the store and load are sequentially
        // consistent: the full barrier of spec 1.7).
        Atomics.store(
          this.control,
          CONTROL_PENDING_SEND_SZ,
          total > this.pendingFloor ? total : this.pendingFloor,
        );
        this.pendingSet = true;
        r = this.loadReadIndex();
        if ((w >= r ? D - (w - r) : r - w) <= total) return FULL;
      }
    }
    if (this.pendingSet) {
      Atomics.store(this.control, CONTROL_PENDING_SEND_SZ, 0);
      this.pendingSet = false;
    }
    return w;
  }

  private advance(pos: number, n: number): number {
    pos += n;
    return pos >= this.dataSize ? pos - this.dataSize : pos;
  }

  private scratchFor(headerLength: number): DataView {
    if (this.scratch.length < headerLength) {
      this.scratch = new Uint8Array(align8(headerLength) * 2);
      this.scratchView = new DataView(this.scratch.buffer);
    }
    return this.scratchView;
  }

  /** The general path: header from scratch, payload, padding, trailer, each wrapping. */
  private putPacket(
    w: number,
    headerLength: number,
    pktLen: number,
    payload: Uint8Array,
    payloadOffset: number,
    payloadLength: number,
  ): void {
    const ring = this.ring;
    ring.write(w, this.scratch, 0, headerLength);
    let pos = this.advance(w, headerLength);
    if (payloadLength > 0) {
      ring.write(
        pos,
        payload,
        payloadOffset,
        payloadLength,
        payloadLength <= WORD_COPY_MAX ? this.words.of(payload) : null,
      );
      pos = this.advance(pos, payloadLength);
    }
    const pad = pktLen - headerLength - payloadLength;
    if (pad > 0) {
      ring.zero(pos, pad);
      pos = this.advance(pos, pad);
    }
    this.putTrailer(pos, w);
  }

  private putTrailer(pos: number, start: number): void {
    const s = this.scratchView;
    s.setUint32(0, 0, true);
    s.setUint32(4, start, true);
    this.ring.write(pos, this.scratch, 0, VMPACKET_TRAILER_SIZE);
    this.w = this.advance(pos, VMPACKET_TRAILER_SIZE);
  }
}

function checkSlice(buf: Uint8Array, offset: number, length: number): void {
  if (!(offset >= 0 && length >= 0 && offset + length <= buf.length)) {
    throw new RangeError(`bytes [${offset}, +${length}) are outside a buffer of ${buf.length}`);
  }
}
