// The reading end of one ring (spec/vmbus-wire.md 1.3-1.7): walks packets in place through one
// reusable cursor (no copy, no allocation per packet), advances by len8 * 8 + 8, publishes read_index
// once per batch and decides whether the writer must be woken (pending_send_sz), and implements the
// interrupt_mask begin/end-read contract. Control words and descriptors come from the other
// partition: an index outside the ring or a descriptor that does not fit is a RingError, after which
// the reader stays failed; it never reads outside the ring and never loops.

import { transactionIdBigInt, transactionIdNumber, VMPACKET_TRAILER_SIZE } from '../wire/packets.js';
import { RingError, type RingErrorCode } from './errors.js';
import {
  CONTROL_FEATURE_BITS,
  CONTROL_INTERRUPT_MASK,
  CONTROL_PENDING_SEND_SZ,
  CONTROL_READ_INDEX,
  CONTROL_WRITE_INDEX,
  copyOut,
  RING_FEATURE_PENDING_SEND_SZ,
  type RingMemory,
  WORD_COPY_MAX,
  WordView,
} from './memory.js';

/**
 * How the reader decides to wake a writer blocked on pending_send_sz (spec 1.7):
 * - 'linux' (default; Linux `hv_pkt_iter_close`, DPDK, FreeBSD): only if feature_bits bit 0 is set;
 *   with p = pending_send_sz and cur = writable bytes after the batch, signal iff
 *   cur - bytesRead <= p < cur.
 * - 'openvmm' (OpenVMM `commit_read`): ignores feature_bits; p = pending_send_sz & ~7; signal iff
 *   p != 0 and free(before) < p <= free(after), where free = writable - 8.
 */
export type WakeupRule = 'linux' | 'openvmm';

export interface RingReaderOptions {
  wakeupRule?: WakeupRule;
}

/**
 * The packet under a RingReader's cursor. One object per reader, refilled by every `next()`; its
 * bytes stay valid until `commit()` hands the space back to the writer.
 */
export class RingPacket {
  type = 0;
  offset8 = 0;
  len8 = 0;
  flags = 0;
  /** Low u32 half of `trans_id`. */
  transIdLo = 0;
  /** High u32 half of `trans_id`. */
  transIdHi = 0;
  /** Ring offset of the descriptor. */
  start = 0;
  /** Ring offset of the payload (already wrapped). */
  payloadStart = 0;
  /** (len8 - offset8) * 8: payload bytes, tail padding included. */
  payloadLength = 0;
  /** The ring's contiguous data area (null when scattered): the packet is at `start` when `contiguous`. */
  readonly bytes: Uint8Array | null;
  /** A DataView over `bytes` (null when scattered). */
  readonly view: DataView | null;
  private readonly ring: RingMemory;
  private readonly D: number;
  /** Caches for the arrays `copyPayload` and the other copies write to (a caller often has one of each). */
  private readonly payloadWords = new WordView();
  private readonly words = new WordView();

  constructor(ring: RingMemory) {
    this.ring = ring;
    this.D = ring.dataSize;
    this.bytes = ring.data;
    this.view = ring.dataView;
  }

  /** offset8 * 8: descriptor + extension. */
  get headerLength(): number {
    return this.offset8 * 8;
  }
  /** len8 * 8: the packet without its trailer. */
  get packetLength(): number {
    return this.len8 * 8;
  }
  /** `trans_id` as a number when it is a safe integer (high half < 2^21), else -1. */
  get transactionIdNumber(): number {
    return transactionIdNumber(this.transIdLo, this.transIdHi);
  }
  /** `trans_id` exactly (allocates a bigint: tools). */
  get transactionId(): bigint {
    return transactionIdBigInt(this.transIdLo, this.transIdHi);
  }
  /** True when the whole packet lies unwrapped in `bytes` at [start, start + packetLength). */
  get contiguous(): boolean {
    return this.bytes !== null && this.start + this.len8 * 8 <= this.D;
  }
  /** True when the payload lies unwrapped in `bytes` at [payloadStart, payloadStart + payloadLength). */
  get payloadContiguous(): boolean {
    return this.bytes !== null && this.payloadStart + this.payloadLength <= this.D;
  }

  /** The payload as a view into the ring (no copy; allocates the view) when contiguous, else null. */
  payload(): Uint8Array | null {
    return this.payloadContiguous
      ? this.bytes!.subarray(this.payloadStart, this.payloadStart + this.payloadLength)
      : null;
  }

  /** Copies the first `length` payload bytes (default all) into `dst` at `dstOffset`; returns `length`. */
  copyPayload(dst: Uint8Array, dstOffset = 0, length: number = this.payloadLength): number {
    if (
      !(length >= 0 && length <= this.payloadLength && dstOffset >= 0 && dstOffset + length <= dst.length)
    ) {
      throw new RangeError(
        `cannot copy ${length} of ${this.payloadLength} payload bytes to [${dstOffset}, ${dst.length})`,
      );
    }
    const p = this.payloadStart;
    const dst32 = length <= WORD_COPY_MAX ? this.payloadWords.of(dst) : null;
    if (this.bytes !== null && p + length <= this.D) {
      copyOut(dst, dst32, dstOffset, this.bytes, this.ring.data32, p, length);
    } else {
      this.ring.read(p, dst, dstOffset, length, dst32);
    }
    return length;
  }

  /** Copies the whole packet (descriptor included, trailer excluded) into `dst`; returns its length. */
  copyPacket(dst: Uint8Array, dstOffset = 0): number {
    return this.copyRange(0, this.len8 * 8, dst, dstOffset);
  }

  /** Copies descriptor + extension (offset8 * 8 bytes) into `dst`; returns its length. */
  copyHeader(dst: Uint8Array, dstOffset = 0): number {
    return this.copyRange(0, this.offset8 * 8, dst, dstOffset);
  }

  /** Copies packet bytes [from, from + length) into `dst` at `dstOffset`; returns `length`. */
  copyRange(from: number, length: number, dst: Uint8Array, dstOffset = 0): number {
    const n = this.len8 * 8;
    if (
      !(from >= 0 && length >= 0 && from + length <= n && dstOffset >= 0 && dstOffset + length <= dst.length)
    ) {
      throw new RangeError(
        `cannot copy packet bytes [${from}, +${length}) of ${n} to [${dstOffset}, ${dst.length})`,
      );
    }
    let pos = this.start + from;
    if (pos >= this.D) pos -= this.D;
    this.ring.read(pos, dst, dstOffset, length, length <= WORD_COPY_MAX ? this.words.of(dst) : null);
    return length;
  }

  /** The byte at packet offset `off` (wrap-aware). */
  u8(off: number): number {
    return this.ring.byteAt(this.pos(off, 1));
  }
  /** The little-endian u16 at packet offset `off` (wrap-aware). */
  u16(off: number): number {
    const p = this.pos(off, 2);
    if (this.view !== null && p + 2 <= this.D) return this.view.getUint16(p, true);
    return this.ring.byteAt(p) | (this.ring.byteAt(this.wrap(p + 1)) << 8);
  }
  /** The little-endian u32 at packet offset `off` (wrap-aware). */
  u32(off: number): number {
    const p = this.pos(off, 4);
    if (this.view !== null && p + 4 <= this.D) return this.view.getUint32(p, true);
    const r = this.ring;
    return (
      (r.byteAt(p) |
        (r.byteAt(this.wrap(p + 1)) << 8) |
        (r.byteAt(this.wrap(p + 2)) << 16) |
        (r.byteAt(this.wrap(p + 3)) << 24)) >>>
      0
    );
  }

  private wrap(p: number): number {
    return p >= this.D ? p - this.D : p;
  }

  private pos(off: number, size: number): number {
    if (!(off >= 0 && off + size <= this.len8 * 8)) {
      throw new RangeError(`packet offset ${off} (+${size}) is outside the ${this.len8 * 8}-byte packet`);
    }
    return this.wrap(this.start + off);
  }
}

export class RingReader {
  readonly ring: RingMemory;
  readonly dataSize: number;
  /** The cursor: describes the packet the last `next()` returned true for. */
  readonly packet: RingPacket;
  readonly wakeupRule: WakeupRule;
  private readonly control: Int32Array;
  private readonly dv: DataView | null;
  /** read_index as last published. */
  private committed: number;
  /** Start of the next unread packet. */
  private pos: number;
  /** write_index as last loaded (validated). */
  private w: number;
  /** True when `packet` holds a packet that `putBack` may return. */
  private current = false;
  private error: RingError | null = null;
  private readonly scratch = new Uint8Array(16);
  private readonly scratchView = new DataView(this.scratch.buffer);

  /** Takes over a ring at the read_index its control page holds (validated). */
  constructor(ring: RingMemory, options: RingReaderOptions = {}) {
    this.ring = ring;
    this.dataSize = ring.dataSize;
    this.control = ring.control;
    this.dv = ring.dataView;
    this.packet = new RingPacket(ring);
    this.wakeupRule = options.wakeupRule ?? 'linux';
    const r = Atomics.load(this.control, CONTROL_READ_INDEX) >>> 0;
    if (r >= this.dataSize || (r & 7) !== 0) {
      throw this.fail('bad-index', 'read_index', `${r} is not a multiple of 8 below ${this.dataSize}`);
    }
    this.committed = r;
    this.pos = r;
    this.w = r;
  }

  /** The sticky error, once the ring was found corrupt; every later call throws it. */
  get failure(): RingError | null {
    return this.error;
  }

  /** Where the next packet starts (read_index once committed). */
  get readIndex(): number {
    return this.pos;
  }

  /** Bytes consumed by `next()` since the last commit (trailers included). */
  get uncommittedBytes(): number {
    const d = this.pos - this.committed;
    return d >= 0 ? d : d + this.dataSize;
  }

  /** Readable bytes past the cursor (reloads write_index). */
  bytesReadable(): number {
    if (this.error) throw this.error;
    const w = this.loadWriteIndex();
    const d = w - this.pos;
    return d >= 0 ? d : d + this.dataSize;
  }

  /**
   * Moves the cursor to the next packet: true with `packet` filled in, false when the ring holds no
   * more (published) packets. Throws RingError (sticky) when write_index or the descriptor is corrupt.
   */
  next(): boolean {
    if (this.error) throw this.error;
    const D = this.dataSize;
    const pos = this.pos;
    let w = this.w;
    if (pos === w) {
      w = this.loadWriteIndex();
      if (pos === w) {
        this.current = false;
        return false;
      }
    }
    const avail = w > pos ? w - pos : D - pos + w;
    let a: number;
    let b: number;
    let lo: number;
    let hi: number;
    // The descriptor in place when it lies inside one segment (the data area, or one page).
    let dv = this.dv;
    let o = pos;
    let limit = D;
    if (dv === null) {
      dv = this.ring.pageViews![pos >>> 12]!;
      o = pos & 4095;
      limit = 4096;
    }
    if (o + 16 <= limit) {
      a = dv.getUint32(o, true);
      b = dv.getUint32(o + 4, true);
      lo = dv.getUint32(o + 8, true);
      hi = dv.getUint32(o + 12, true);
    } else {
      if (avail < 16)
        throw this.fail('bad-length', 'write_index', `only ${avail} bytes readable, less than a descriptor`);
      this.ring.read(pos, this.scratch, 0, 16);
      const s = this.scratchView;
      a = s.getUint32(0, true);
      b = s.getUint32(4, true);
      lo = s.getUint32(8, true);
      hi = s.getUint32(12, true);
    }
    const offset8 = a >>> 16;
    const len8 = b & 0xffff;
    if (offset8 < 2) {
      throw this.fail(
        'bad-descriptor',
        'vmpacket_descriptor.offset8',
        `${offset8} is below 2 at ring offset ${pos}`,
      );
    }
    if (offset8 > len8) {
      throw this.fail(
        'bad-descriptor',
        'vmpacket_descriptor.offset8',
        `${offset8} exceeds len8 ${len8} at ring offset ${pos}`,
      );
    }
    const size = len8 * 8 + VMPACKET_TRAILER_SIZE;
    if (size > avail) {
      throw this.fail(
        'bad-length',
        'vmpacket_descriptor.len8',
        `packet of ${size} bytes (with trailer) but only ${avail} readable at ring offset ${pos}`,
      );
    }
    const p = this.packet;
    p.type = a & 0xffff;
    p.offset8 = offset8;
    p.len8 = len8;
    p.flags = b >>> 16;
    p.transIdLo = lo;
    p.transIdHi = hi;
    p.start = pos;
    const ps = pos + offset8 * 8;
    p.payloadStart = ps >= D ? ps - D : ps;
    p.payloadLength = (len8 - offset8) * 8;
    const np = pos + size;
    this.pos = np >= D ? np - D : np;
    this.current = true;
    return true;
  }

  /** Un-reads the packet the cursor holds, so the next `next()` returns it again. */
  putBack(): void {
    if (this.error) throw this.error;
    if (!this.current) throw new Error('putBack: no packet under the cursor');
    this.pos = this.packet.start;
    this.current = false;
  }

  /**
   * Publishes read_index (one Atomics.store for the whole batch) and returns whether the writer
   * must be signalled, by the reader's wakeup rule. Packet bytes seen so far are no longer valid.
   */
  commit(): boolean {
    if (this.error) throw this.error;
    this.current = false;
    const pos = this.pos;
    const old = this.committed;
    if (pos === old) return false;
    const D = this.dataSize;
    const bytesRead = pos > old ? pos - old : D - old + pos;
    const c = this.control;
    Atomics.store(c, CONTROL_READ_INDEX, pos);
    this.committed = pos;
    if (this.wakeupRule === 'linux') {
      if ((Atomics.load(c, CONTROL_FEATURE_BITS) & RING_FEATURE_PENDING_SEND_SZ) === 0) return false;
      const p = Atomics.load(c, CONTROL_PENDING_SEND_SZ) >>> 0;
      if (p === 0) return false;
      const w = Atomics.load(c, CONTROL_WRITE_INDEX) >>> 0;
      if (w >= D || (w & 7) !== 0) return false; // corrupt: the next next() reports it
      const cur = w >= pos ? D - (w - pos) : pos - w;
      const before = cur - bytesRead;
      return before >= 0 && before <= p && p < cur;
    }
    const p = (Atomics.load(c, CONTROL_PENDING_SEND_SZ) & ~7) >>> 0;
    if (p === 0) return false;
    const w = Atomics.load(c, CONTROL_WRITE_INDEX) >>> 0;
    if (w >= D || (w & 7) !== 0) return false;
    const freeAfter = (pos > w ? pos - w : D - (w - pos)) - 8;
    const freeBefore = (old > w ? old - w : D - (w - old)) - 8;
    return freeBefore < p && freeAfter >= p;
  }

  /** Sets interrupt_mask = 1: "don't signal me, I am draining" (spec 1.6). */
  beginRead(): void {
    Atomics.store(this.control, CONTROL_INTERRUPT_MASK, 1);
  }

  /**
   * Clears interrupt_mask, then re-checks write_index (the store/load pair is sequentially
   * consistent): true when packets arrived past the cursor, which the caller must then drain
   * (no signal will come for them). A corrupt write_index also returns true, so `next()` reports it.
   */
  endRead(): boolean {
    Atomics.store(this.control, CONTROL_INTERRUPT_MASK, 0);
    const w = Atomics.load(this.control, CONTROL_WRITE_INDEX) >>> 0;
    return w !== this.pos;
  }

  // --- internals ---

  private fail(code: RingErrorCode, field: string, message: string): RingError {
    this.current = false;
    this.error ??= new RingError(code, field, message);
    return this.error;
  }

  private loadWriteIndex(): number {
    const w = Atomics.load(this.control, CONTROL_WRITE_INDEX) >>> 0;
    if (w >= this.dataSize || (w & 7) !== 0) {
      throw this.fail('bad-index', 'write_index', `${w} is not a multiple of 8 below ${this.dataSize}`);
    }
    this.w = w;
    return w;
  }
}
