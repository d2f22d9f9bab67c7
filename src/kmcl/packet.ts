// Packet objects of the KMCL (spec/kmcl-api.md 3.1-3.2) and the allocation-free machinery under
// them: outgoing packet objects (VMBPACKET) with their staging area, incoming packet tokens
// (VMBPACKETCOMPLETION), generation-checked numeric handles for both (so a stale handle is caught
// as use-after-free or double completion even though the objects are pooled and reused), the
// per-channel transaction table that matches completions to requests, a FIFO, and the encoders
// that lay a packet out in its staging area exactly as it will sit in the ring.

import type { Mdl } from '../memory/mdl.js';
import { PAGE_SIZE } from '../wire/constants.js';
import {
  GPA_DIRECT_HEADER_SIZE,
  GPA_RANGE_HEADER_SIZE,
  VM_PKT_DATA_USING_GPA_DIRECT,
  VMBUS_PIPE_HEADER_SIZE,
  VMBUS_PIPE_TYPE_DATA,
  VMPACKET_DESCRIPTOR_SIZE,
  writeDescriptor,
} from '../wire/packets.js';
import type { NTSTATUS } from './ntstatus.js';

declare const packetBrand: unique symbol;
declare const tokenBrand: unique symbol;

/** The handle of a packet object from VmbPacketAllocate: an opaque, generation-checked number. */
export type VmbPacketHandle = number & { readonly [packetBrand]: true };
/**
 * VMBPACKET: an allocated packet's handle, or for VmbPacketInitialize the caller's own memory
 * (the Uint8Array it passed) which, as in C, is the packet object.
 */
export type VMBPACKET = VmbPacketHandle | Uint8Array;
/** VMBPACKETCOMPLETION: names one received packet until VmbChannelPacketComplete. */
export type VMBPACKETCOMPLETION = number & { readonly [tokenBrand]: true };

/** EVT_VMB_PACKET_COMPLETION_ROUTINE. */
export type EvtVmbPacketCompletionRoutine = (
  Packet: VMBPACKET,
  Status: NTSTATUS,
  Buffer: Uint8Array | null,
  BufferLength: number,
) => void;

// ---------------------------------------------------------------------------------------------
// Generation-checked handles

const SLOT_BITS = 18;
/** Objects one handle table can hold. */
export const HANDLE_SLOT_LIMIT = 1 << SLOT_BITS;
const GEN_LIMIT = 1 << 12;

/** Something a HandleTable names: it owns one slot for life; its handle changes per "life". */
export interface Handled {
  slot: number;
  gen: number;
  handle: number;
}

/**
 * Maps numeric handles to pooled objects. A handle is `gen * 2^18 + slot` (below 2^30, a small
 * integer for the engine): retiring an object bumps its generation, so the old handle stops
 * resolving while the object itself is reused.
 */
export class HandleTable<T extends Handled> {
  private readonly slots: (T | null)[] = [null];

  /** Gives `obj` a slot and a first handle; false when the table is full. */
  register(obj: T): boolean {
    if (this.slots.length >= HANDLE_SLOT_LIMIT) return false;
    obj.slot = this.slots.length;
    obj.gen = 1;
    obj.handle = obj.gen * HANDLE_SLOT_LIMIT + obj.slot;
    this.slots.push(obj);
    return true;
  }

  /** The object `handle` names now, or null (never issued, or retired since). */
  resolve(handle: unknown): T | null {
    if (typeof handle !== 'number' || !Number.isInteger(handle) || handle <= 0) return null;
    const slot = handle % HANDLE_SLOT_LIMIT;
    const obj = this.slots[slot];
    return obj != null && obj.handle === handle ? obj : null;
  }

  /** Invalidates the object's current handle and gives it the next one. */
  retire(obj: T): void {
    obj.gen = (obj.gen + 1) % GEN_LIMIT || 1;
    obj.handle = obj.gen * HANDLE_SLOT_LIMIT + obj.slot;
  }

  /** True when `handle` has the shape of one of this table's handles but names no live object. */
  isStale(handle: unknown): boolean {
    if (typeof handle !== 'number' || !Number.isInteger(handle) || handle <= 0) return false;
    const slot = handle % HANDLE_SLOT_LIMIT;
    return slot < this.slots.length && this.slots[slot] !== null && this.resolve(handle) === null;
  }
}

// ---------------------------------------------------------------------------------------------
// FIFO

/** A growable ring-array queue; no allocation once it reached its working size. */
export class Fifo<T> {
  private items: (T | undefined)[] = new Array(16);
  private head = 0;
  private count = 0;

  get length(): number {
    return this.count;
  }

  push(item: T): void {
    if (this.count === this.items.length) this.grow();
    this.items[(this.head + this.count) % this.items.length] = item;
    this.count++;
  }

  peek(): T | undefined {
    return this.count === 0 ? undefined : this.items[this.head];
  }

  shift(): T | undefined {
    if (this.count === 0) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.items.length;
    this.count--;
    return item;
  }

  /** Removes the first occurrence of `item` (O(n)); true if it was there. */
  remove(item: T): boolean {
    const n = this.items.length;
    for (let i = 0; i < this.count; i++) {
      if (this.items[(this.head + i) % n] !== item) continue;
      for (let j = i; j + 1 < this.count; j++) {
        this.items[(this.head + j) % n] = this.items[(this.head + j + 1) % n];
      }
      this.items[(this.head + this.count - 1) % n] = undefined;
      this.count--;
      return true;
    }
    return false;
  }

  /** The items in queue order (allocates: save/teardown only). */
  toArray(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.count; i++) out.push(this.items[(this.head + i) % this.items.length]!);
    return out;
  }

  private grow(): void {
    const old = this.items;
    const next: (T | undefined)[] = new Array(old.length * 2);
    for (let i = 0; i < this.count; i++) next[i] = old[(this.head + i) % old.length];
    this.items = next;
    this.head = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Outgoing packet objects

export type PacketState = 'free' | 'idle' | 'queued' | 'awaiting';

/** An outgoing packet object: one message or transaction for its whole life; reusable. */
export class KmclPacket implements Handled {
  slot = 0;
  gen = 0;
  handle = 0;
  /** The channel the packet belongs to (opaque to this module). */
  readonly owner: object;
  /** True for VmbPacketAllocate packets (pooled), false for VmbPacketInitialize ones. */
  readonly allocated: boolean;
  /** Caller memory of a VmbPacketInitialize packet (its public handle), else null. */
  readonly storage: Uint8Array | null;
  private stagingArea: Uint8Array;
  private stagingView: DataView | null = null;
  /** Bytes of `staging` in use once encoded. */
  length = 0;
  state: PacketState = 'idle';
  pointer: unknown = null;
  /** Null: the default routine (frees an allocated packet). */
  routine: EvtVmbPacketCompletionRoutine | null = null;
  /** Initialize'd packets must be given a routine before they are sent. */
  routineSet = false;
  /** Transaction id halves while a WAIT_FOR_COMPLETION transaction is queued or awaiting. */
  transIdLo = 0;
  transIdHi = 0;
  /** Waits for the peer's completion. */
  wait = false;

  constructor(owner: object, staging: Uint8Array, storage: Uint8Array | null) {
    this.owner = owner;
    this.allocated = storage === null;
    this.storage = storage;
    this.stagingArea = staging;
  }

  /**
   * The packet as it will sit in the ring (descriptor, extension, payload, padding). Normally the
   * channel's staging size; smaller for a packet allocated during a restore (none at all, or just
   * its restored bytes), which its next send replaces with a full one.
   */
  get staging(): Uint8Array {
    return this.stagingArea;
  }

  /** A DataView over `staging`, made at its first use (a restored packet may never need one). */
  get view(): DataView {
    if (this.stagingView === null) {
      const s = this.stagingArea;
      this.stagingView = new DataView(s.buffer, s.byteOffset, s.byteLength);
    }
    return this.stagingView;
  }

  /**
   * Replaces the staging area: an allocated packet after the channel's limits grew, or one that
   * was allocated during a restore.
   */
  setStaging(staging: Uint8Array): void {
    this.stagingArea = staging;
    this.stagingView = null;
  }

  /** VMBPACKET as the caller knows it. */
  get publicHandle(): VMBPACKET {
    return this.storage ?? (this.handle as VmbPacketHandle);
  }
}

// ---------------------------------------------------------------------------------------------
// Incoming packet tokens

export type TokenState = 'free' | 'delivering' | 'outstanding' | 'deferred' | 'queued-completion';

/** One received packet, from delivery to VmbChannelPacketComplete; pooled per channel. */
export class KmclToken implements Handled {
  slot = 0;
  gen = 0;
  handle = 0;
  readonly owner: object;
  state: TokenState = 'free';
  /** The payload as delivered (copied out of the ring). */
  buffer: Uint8Array = new Uint8Array(64);
  private viewCache: Uint8Array = this.buffer.subarray(0, 0);
  length = 0;
  /** ProcessPacket Flags (VMBUS_CHANNEL_PROCESS_PACKET_FLAG_*). */
  flags = 0;
  completionRequested = false;
  transIdLo = 0;
  transIdHi = 0;
  /** Per-packet client context area (VmbChannelInitSetClientContextSize), zeroed per delivery. */
  context: Uint8Array | null = null;
  // External data (GPA direct): ranges as parsed and checked at receive time.
  rangeCount = 0;
  readonly rangeByteCount: number[] = [];
  readonly rangeByteOffset: number[] = [];
  readonly rangePfnCount: number[] = [];
  readonly pfns: number[] = [];
  /** The grant made by VmbChannelPacketGetExternalData (a GrantedMdl), revoked at completion. */
  grant: { revoke(): void } | null = null;
  grantReadOnly = false;
  /** The completion packet when it had to wait for ring space. */
  staging: Uint8Array | null = null;
  stagingLength = 0;

  constructor(owner: object) {
    this.owner = owner;
  }

  /** Room for a payload of `n` bytes (grows only when a larger packet than ever arrives). */
  reserve(n: number): Uint8Array {
    if (this.buffer.length < n) {
      this.buffer = new Uint8Array(Math.max(n, this.buffer.length * 2));
      this.viewCache = this.buffer.subarray(0, 0);
    }
    return this.buffer;
  }

  /** The delivered payload, exactly `length` bytes (a cached view: new only when the length changes). */
  payloadView(): Uint8Array {
    if (this.viewCache.length !== this.length) this.viewCache = this.buffer.subarray(0, this.length);
    return this.viewCache;
  }

  /** Room for a completion packet of `n` bytes. */
  reserveStaging(n: number): Uint8Array {
    if (this.staging === null || this.staging.length < n) {
      this.staging = new Uint8Array(Math.max(n, 64, (this.staging?.length ?? 0) * 2));
    }
    return this.staging;
  }

  /** The external data as an MDL chain (one MDL per range); allocates, called once per packet. */
  externalMdl(): Mdl {
    let head: Mdl | null = null;
    let tail: Mdl | null = null;
    let p = 0;
    for (let i = 0; i < this.rangeCount; i++) {
      const n = this.rangePfnCount[i]!;
      const mdl: Mdl = {
        byteOffset: this.rangeByteOffset[i]!,
        byteCount: this.rangeByteCount[i]!,
        pfns: this.pfns.slice(p, p + n),
        next: null,
      };
      p += n;
      if (tail === null) head = mdl;
      else tail.next = mdl;
      tail = mdl;
    }
    return head!;
  }
}

// ---------------------------------------------------------------------------------------------
// Transaction table

/**
 * Matches completions to WAIT_FOR_COMPLETION packets. A transaction id is (lo = slot, hi =
 * generation): slots are small and reused, generations make a stale or forged id miss.
 */
export class TransactionTable {
  private slots: (KmclPacket | null)[] = [null];
  private gens: number[] = [0];
  private free: number[] = [];
  private live = 0;

  get size(): number {
    return this.live;
  }

  /** Gives `p` a transaction id (written to p.transIdLo / p.transIdHi). */
  add(p: KmclPacket): void {
    let slot = this.free.pop();
    if (slot === undefined) {
      slot = this.slots.length;
      this.slots.push(null);
      this.gens.push(0);
    }
    const gen = (this.gens[slot]! + 1) >>> 0 || 1;
    this.gens[slot] = gen;
    this.slots[slot] = p;
    p.transIdLo = slot;
    p.transIdHi = gen;
    this.live++;
  }

  /** The packet with this id, or null. Does not remove it. */
  find(lo: number, hi: number): KmclPacket | null {
    if (lo <= 0 || lo >= this.slots.length) return null;
    const p = this.slots[lo]!;
    return p !== null && this.gens[lo] === hi ? p : null;
  }

  /** Retires `p`'s id; a late completion carrying it will not match. */
  remove(p: KmclPacket): void {
    const slot = p.transIdLo;
    if (slot <= 0 || slot >= this.slots.length || this.slots[slot] !== p) return;
    this.slots[slot] = null;
    this.free.push(slot);
    this.live--;
    p.transIdLo = 0;
    p.transIdHi = 0;
  }

  /**
   * Servicing: gives `p` exactly the id it had before a save (slot `lo`, generation `hi`). False
   * when that slot is taken. Call rebuildFree() after the last one.
   */
  restoreId(p: KmclPacket, lo: number, hi: number): boolean {
    if (lo <= 0 || hi <= 0) return false;
    while (this.slots.length <= lo) {
      this.slots.push(null);
      this.gens.push(0);
    }
    if (this.slots[lo] !== null) return false;
    this.slots[lo] = p;
    this.gens[lo] = hi >>> 0;
    p.transIdLo = lo;
    p.transIdHi = hi >>> 0;
    this.live++;
    return true;
  }

  /** Recomputes the free-slot list (after restoreId). */
  rebuildFree(): void {
    this.free.length = 0;
    for (let i = this.slots.length - 1; i > 0; i--) if (this.slots[i] === null) this.free.push(i);
  }

  /** Every packet with an id, in slot order (allocates: teardown only). */
  snapshot(): KmclPacket[] {
    const out: KmclPacket[] = [];
    for (const p of this.slots) if (p !== null) out.push(p);
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Encoders (into a packet's staging area)

/** Descriptor + [pipe header] + payload + zero padding. Returns the packet length (multiple of 8). */
export function encodeInband(
  staging: Uint8Array,
  view: DataView,
  type: number,
  flags: number,
  transIdLo: number,
  transIdHi: number,
  payload: Uint8Array | null,
  payloadLength: number,
  pipe: boolean,
): number {
  let pos = VMPACKET_DESCRIPTOR_SIZE;
  if (pipe) {
    view.setUint32(pos, VMBUS_PIPE_TYPE_DATA, true);
    view.setUint32(pos + 4, payloadLength, true);
    pos += VMBUS_PIPE_HEADER_SIZE;
  }
  const end = pos + payloadLength;
  const len = (end + 7) & ~7;
  writeDescriptor(view, 0, type, 2, len >>> 3, flags, transIdLo, transIdHi);
  if (payloadLength > 0) {
    if (payloadLength === payload!.length) staging.set(payload!, pos);
    else staging.set(payload!.subarray(0, payloadLength), pos);
  }
  for (let i = end; i < len; i++) staging[i] = 0;
  return len;
}

/** Bytes a GPA-direct header needs for `ranges` ranges holding `pfns` PFNs in total. */
export function gpaDirectHeaderBytes(ranges: number, pfns: number): number {
  return GPA_DIRECT_HEADER_SIZE + ranges * GPA_RANGE_HEADER_SIZE + pfns * 8;
}

/**
 * Starts a GPA-direct packet (type 9): writes the extension's reserved word and range count.
 * Ranges follow at GPA_DIRECT_HEADER_SIZE (see `putRange`), then `finishGpaDirect`.
 */
export function beginGpaDirect(view: DataView, rangeCount: number): number {
  view.setUint32(16, 0, true);
  view.setUint32(20, rangeCount, true);
  return GPA_DIRECT_HEADER_SIZE;
}

/** Writes a `gpa_range` header at `pos`; PFNs follow with `putPfn`. Returns the PFN position. */
export function putRange(view: DataView, pos: number, byteCount: number, byteOffset: number): number {
  view.setUint32(pos, byteCount, true);
  view.setUint32(pos + 4, byteOffset, true);
  return pos + GPA_RANGE_HEADER_SIZE;
}

/** Writes one u64 PFN at `pos`; returns the next position. */
export function putPfn(view: DataView, pos: number, pfn: number): number {
  view.setUint32(pos, pfn >>> 0, true);
  view.setUint32(pos + 4, Math.floor(pfn / 0x100000000), true);
  return pos + 8;
}

/** Completes a GPA-direct packet whose header ends at `headerLength`: descriptor, payload, padding. */
export function finishGpaDirect(
  staging: Uint8Array,
  view: DataView,
  headerLength: number,
  flags: number,
  transIdLo: number,
  transIdHi: number,
  payload: Uint8Array | null,
  payloadLength: number,
): number {
  const end = headerLength + payloadLength;
  const len = (end + 7) & ~7;
  writeDescriptor(
    view,
    0,
    VM_PKT_DATA_USING_GPA_DIRECT,
    headerLength >>> 3,
    len >>> 3,
    flags,
    transIdLo,
    transIdHi,
  );
  if (payloadLength > 0) {
    if (payloadLength === payload!.length) staging.set(payload!, headerLength);
    else staging.set(payload!.subarray(0, payloadLength), headerLength);
  }
  for (let i = end; i < len; i++) staging[i] = 0;
  return len;
}

/** Pages a PFN-array external buffer of `maxBytes` may use. */
export function maxExternalPfns(maxBytes: number): number {
  return Math.ceil(maxBytes / PAGE_SIZE);
}
