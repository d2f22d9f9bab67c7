// Saved state of the host's VMBus server (servicing, issue 5): the server's ServerState
// (server-state.ts, already plain data) as bytes, and back, with every field checked on the way
// in. The layout is a 16-byte header (magic 'VMBS', format version, body length, CRC-32 of the
// body) followed by a self-describing encoding of plain data (null, booleans, numbers, strings,
// byte arrays, arrays, objects), documented in docs/servicing.md. A refusal is a
// BusSavedStateError with a code. The host's whole VMBus for one partition (server state plus
// where the host's SynIC end stood, magic 'VMBH') uses the same layout. VmbusServer.restore
// rebuilds a server from the decoded state. The CRC-32 here is also used by the KMCL's channel
// saved state.

import type { HvHostEndSavedState } from '../hv/end.js';
import { SERVER_STATE_VERSION, type ServerChannelPhase, type ServerState } from './server-state.js';

/** 'VMBS' read as a little-endian u32. */
export const BUS_SAVED_STATE_MAGIC = 0x5342_4d56;
export const BUS_SAVED_STATE_VERSION = 1;
export const BUS_SAVED_STATE_HEADER_SIZE = 16;
/** 'VMBH' read as a little-endian u32: a partition's host VMBus (server + SynIC end). */
export const HOST_VMBUS_SAVED_STATE_MAGIC = 0x4842_4d56;
const MAX_DEPTH = 16;
const MAX_BODY = 1 << 28;

/**
 * `truncated`, `corrupt` (bad magic, length or checksum), `version` (another format), `shape`
 * (fields missing, of the wrong kind, or inconsistent), `memory` (the state does not match the
 * guest's memory it is restored over).
 */
export type BusSavedStateErrorCode = 'truncated' | 'corrupt' | 'version' | 'shape' | 'memory';

/** A saved server state that cannot be used. */
export class BusSavedStateError extends Error {
  override readonly name = 'BusSavedStateError';
  constructor(
    readonly code: BusSavedStateErrorCode,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320)

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Continues a CRC-32 over bytes [from, to) of `data`; start with crc = 0. */
export function crc32(data: Uint8Array, from = 0, to = data.length, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = from; i < to; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Plain-data encoding

const T_NULL = 0;
const T_FALSE = 1;
const T_TRUE = 2;
const T_NUMBER = 3;
const T_STRING = 4;
const T_BYTES = 5;
const T_ARRAY = 6;
const T_OBJECT = 7;

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

class Out {
  buf = new Uint8Array(1024);
  dv = new DataView(this.buf.buffer);
  pos = 0;
  room(n: number): void {
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
    this.dv.setUint32(this.pos, v, true);
    this.pos += 4;
  }
  raw(b: Uint8Array): void {
    this.u32(b.length);
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

function put(o: Out, v: unknown, depth: number): void {
  if (depth > MAX_DEPTH) throw new RangeError('saved state: nested too deeply');
  if (v === null) o.u8(T_NULL);
  else if (v === false) o.u8(T_FALSE);
  else if (v === true) o.u8(T_TRUE);
  else if (typeof v === 'number') {
    o.u8(T_NUMBER);
    o.room(8);
    o.dv.setFloat64(o.pos, v, true);
    o.pos += 8;
  } else if (typeof v === 'string') {
    o.u8(T_STRING);
    o.raw(utf8.encode(v));
  } else if (v instanceof Uint8Array) {
    o.u8(T_BYTES);
    o.raw(v);
  } else if (Array.isArray(v)) {
    o.u8(T_ARRAY);
    o.u32(v.length);
    for (const x of v) put(o, x, depth + 1);
  } else if (typeof v === 'object') {
    const keys = Object.keys(v as object);
    o.u8(T_OBJECT);
    o.u32(keys.length);
    for (const k of keys) {
      o.raw(utf8.encode(k));
      put(o, (v as Record<string, unknown>)[k], depth + 1);
    }
  } else throw new TypeError(`saved state: ${typeof v} is not plain data`);
}

class In {
  pos = 0;
  private readonly dv: DataView;
  constructor(private readonly b: Uint8Array) {
    this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  need(n: number): void {
    if (this.pos + n > this.b.length)
      throw new BusSavedStateError('truncated', 'saved server state is truncated');
  }
  u8(): number {
    this.need(1);
    return this.b[this.pos++]!;
  }
  u32(): number {
    this.need(4);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  raw(): Uint8Array {
    const n = this.u32();
    this.need(n);
    const out = this.b.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  str(): string {
    try {
      return utf8Strict.decode(this.raw());
    } catch (e) {
      if (e instanceof BusSavedStateError) throw e;
      throw new BusSavedStateError('corrupt', 'saved server state has a string that is not UTF-8');
    }
  }
  value(depth: number): unknown {
    if (depth > MAX_DEPTH) throw new BusSavedStateError('corrupt', 'saved server state is nested too deeply');
    const tag = this.u8();
    switch (tag) {
      case T_NULL:
        return null;
      case T_FALSE:
        return false;
      case T_TRUE:
        return true;
      case T_NUMBER: {
        this.need(8);
        const v = this.dv.getFloat64(this.pos, true);
        this.pos += 8;
        return v;
      }
      case T_STRING:
        return this.str();
      case T_BYTES:
        return this.raw();
      case T_ARRAY: {
        const n = this.u32();
        if (n > this.b.length - this.pos)
          throw new BusSavedStateError('corrupt', 'array longer than the data');
        const out: unknown[] = [];
        for (let i = 0; i < n; i++) out.push(this.value(depth + 1));
        return out;
      }
      case T_OBJECT: {
        const n = this.u32();
        if (n > this.b.length - this.pos)
          throw new BusSavedStateError('corrupt', 'object larger than the data');
        const out: Record<string, unknown> = {};
        for (let i = 0; i < n; i++) {
          const k = this.str();
          if (k === '__proto__') throw new BusSavedStateError('corrupt', 'key "__proto__" refused');
          if (Object.hasOwn(out, k)) throw new BusSavedStateError('corrupt', `key "${k}" appears twice`);
          out[k] = this.value(depth + 1);
        }
        return out;
      }
      default:
        throw new BusSavedStateError('corrupt', `unknown value tag ${tag}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Shape checks (everything a restored server would rely on)

type Check = (v: unknown, path: string) => void;

function bad(path: string, what: string): BusSavedStateError {
  return new BusSavedStateError('shape', `saved server state: ${path} ${what}`);
}
const uint: Check = (v, p) => {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
    throw bad(p, 'is not a non-negative integer');
};
const str: Check = (v, p) => {
  if (typeof v !== 'string') throw bad(p, 'is not a string');
};
const bool: Check = (v, p) => {
  if (typeof v !== 'boolean') throw bad(p, 'is not a boolean');
};
const bytes: Check = (v, p) => {
  if (!(v instanceof Uint8Array)) throw bad(p, 'is not bytes');
};
const nullable =
  (c: Check): Check =>
  (v, p) => {
    if (v !== null) c(v, p);
  };
const oneOf =
  (...values: string[]): Check =>
  (v, p) => {
    if (typeof v !== 'string' || !values.includes(v)) throw bad(p, `is not one of ${values.join(', ')}`);
  };
const arr =
  (c: Check): Check =>
  (v, p) => {
    if (!Array.isArray(v)) throw bad(p, 'is not an array');
    for (let i = 0; i < v.length; i++) c(v[i], `${p}[${i}]`);
  };
const obj =
  (fields: Record<string, Check>): Check =>
  (v, p) => {
    if (v === null || typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array)
      throw bad(p, 'is not an object');
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (!Object.hasOwn(fields, k)) throw bad(`${p}.${k}`, 'is not a known field');
    for (const [k, c] of Object.entries(fields)) {
      if (!Object.hasOwn(o, k)) throw bad(`${p}.${k}`, 'is missing');
      c(o[k], `${p}.${k}`);
    }
  };

const PHASES: ServerChannelPhase[] = ['unsent', 'closed', 'opening', 'open', 'closing', 'revoked'];

const openState = obj({
  openId: uint,
  ringGpadlId: uint,
  targetVp: uint,
  downstreamPageOffset: uint,
  userData: bytes,
  connectionId: uint,
  eventFlag: uint,
  flags: uint,
});

const contact = obj({
  versionRequested: uint,
  targetVcpu: uint,
  targetInfo: str,
  msgSint: uint,
  msgVtl: uint,
  featureFlags: uint,
  parentToChildMonitorPage: str,
  childToParentMonitorPage: str,
  clientId: nullable(str),
  multiclient: bool,
});

const connection: Check = (v, p) => {
  const kind = (v as { kind?: unknown } | null)?.kind;
  if (kind === 'disconnected') obj({ kind: str })(v, p);
  else if (kind === 'connected') {
    obj({
      kind: str,
      version: uint,
      featureFlags: uint,
      msgConnId: uint,
      targetVp: uint,
      clientId: str,
      monitorPages: nullable(obj({ parentToChild: str, childToParent: str })),
      interruptPage: str,
      offersSent: bool,
      paused: bool,
    })(v, p);
  } else if (kind === 'disconnecting') {
    obj({
      kind: str,
      version: uint,
      next: oneOf('unload-response', 'reconnect', 'none'),
      contact: nullable(contact),
    })(v, p);
  } else throw bad(`${p}.kind`, 'is not a connection state');
};

const serverState = obj({
  stateVersion: uint,
  nextOfferId: uint,
  connection,
  channels: arr(
    obj({
      offerId: uint,
      relid: uint,
      connectionId: uint,
      offer: obj({
        interfaceType: str,
        interfaceInstance: str,
        channelFlags: uint,
        mmioMegabytes: uint,
        mmioMegabytesOptional: uint,
        userDefined: bytes,
        subChannelIndex: uint,
      }),
      phase: oneOf(...PHASES),
      open: nullable(openState),
      reopen: nullable(openState),
      openSeq: uint,
      revoking: bool,
    }),
  ),
  gpadls: arr(
    obj({
      gpadlId: uint,
      relid: uint,
      rangeCount: uint,
      rangeData: bytes,
      ranges: arr(obj({ byteCount: uint, byteOffset: uint, pfns: arr(uint) })),
      pfnCount: uint,
      byteCount: uint,
      phase: oneOf('created', 'tearing-down'),
      mapCount: uint,
      teardownHook: oneOf('none', 'running', 'done'),
    }),
  ),
  incompleteGpadls: arr(obj({ gpadlId: uint, relid: uint, rangeCount: uint, buf: bytes, filled: uint })),
  pendingMessages: arr(bytes),
  inbox: arr(obj({ bytes, multiclient: bool })),
});

/** Cross-field checks a shape check cannot express. */
function checkConsistency(s: ServerState): void {
  if (s.stateVersion !== SERVER_STATE_VERSION)
    throw new BusSavedStateError('version', `server state version ${s.stateVersion} is not supported`);
  const relids = new Set<number>();
  const offerIds = new Set<number>();
  for (const c of s.channels) {
    if (relids.has(c.relid) || offerIds.has(c.offerId)) throw bad('channels', `repeat relid ${c.relid}`);
    if (c.offerId >= s.nextOfferId) throw bad('channels', `offer id ${c.offerId} not below nextOfferId`);
    relids.add(c.relid);
    offerIds.add(c.offerId);
    const needsOpen = c.phase === 'opening' || c.phase === 'open' || c.phase === 'closing';
    if (needsOpen !== (c.open !== null))
      throw bad(`channel ${c.relid}`, `phase ${c.phase} disagrees with its open request`);
  }
  const ids = new Set<number>();
  for (const g of [...s.gpadls, ...s.incompleteGpadls]) {
    if (ids.has(g.gpadlId)) throw bad('gpadls', `repeat GPADL id ${g.gpadlId}`);
    ids.add(g.gpadlId);
    if (!relids.has(g.relid)) throw bad('gpadls', `GPADL ${g.gpadlId} names no channel`);
  }
  for (const g of s.gpadls) {
    if (g.ranges.length !== g.rangeCount) throw bad('gpadls', `GPADL ${g.gpadlId} range count`);
    let pfns = 0;
    for (const r of g.ranges) pfns += r.pfns.length;
    if (pfns !== g.pfnCount) throw bad('gpadls', `GPADL ${g.gpadlId} PFN count`);
  }
  for (const g of s.incompleteGpadls)
    if (g.filled > g.buf.length) throw bad('incompleteGpadls', `GPADL ${g.gpadlId} overfilled`);
}

// ---------------------------------------------------------------------------------------------
// Public API

/** The host's VMBus for one partition, as a servicing image holds it. */
export interface HostVmbusSavedState {
  /** The VMBus server (VmbusServer.saveState). */
  readonly server: ServerState;
  /** Where the host's SynIC end stood (HvHostEnd.detach). */
  readonly link: HvHostEndSavedState;
}

const linkState = obj({
  kind: oneOf('hv-host-end'),
  version: uint,
  toHostReadIndex: uint,
  toGuestWriteIndex: uint,
  ports: arr(obj({ slot: uint, connectionId: uint, kinds: uint })),
  deletedSlots: arr(uint),
});

function encodeWithHeader(magic: number, value: unknown): Uint8Array {
  const o = new Out();
  o.room(BUS_SAVED_STATE_HEADER_SIZE);
  o.pos = BUS_SAVED_STATE_HEADER_SIZE;
  put(o, value, 0);
  const out = o.buf.slice(0, o.pos);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, magic, true);
  dv.setUint16(4, BUS_SAVED_STATE_VERSION, true);
  dv.setUint16(6, BUS_SAVED_STATE_HEADER_SIZE, true);
  dv.setUint32(8, out.length - BUS_SAVED_STATE_HEADER_SIZE, true);
  dv.setUint32(12, crc32(out, BUS_SAVED_STATE_HEADER_SIZE), true);
  return out;
}

function decodeWithHeader(magic: number, data: Uint8Array, what: string): unknown {
  if (!(data instanceof Uint8Array)) throw new BusSavedStateError('corrupt', `${what} is not bytes`);
  if (data.length < BUS_SAVED_STATE_HEADER_SIZE)
    throw new BusSavedStateError('truncated', `${what} is shorter than its header`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (dv.getUint32(0, true) !== magic) throw new BusSavedStateError('corrupt', `${what}: bad magic`);
  const version = dv.getUint16(4, true);
  if (version !== BUS_SAVED_STATE_VERSION)
    throw new BusSavedStateError('version', `${what}: format ${version} is not supported`);
  if (dv.getUint16(6, true) !== BUS_SAVED_STATE_HEADER_SIZE)
    throw new BusSavedStateError('corrupt', `${what}: bad header size`);
  const length = dv.getUint32(8, true);
  if (length > MAX_BODY) throw new BusSavedStateError('corrupt', `${what}: body of ${length} bytes`);
  if (data.length - BUS_SAVED_STATE_HEADER_SIZE !== length)
    throw new BusSavedStateError(
      data.length - BUS_SAVED_STATE_HEADER_SIZE < length ? 'truncated' : 'corrupt',
      `${what}: length mismatch`,
    );
  if (crc32(data, BUS_SAVED_STATE_HEADER_SIZE) !== dv.getUint32(12, true))
    throw new BusSavedStateError('corrupt', `${what}: checksum mismatch`);
  const i = new In(data.subarray(BUS_SAVED_STATE_HEADER_SIZE));
  const v = i.value(0);
  if (i.pos !== length) throw new BusSavedStateError('corrupt', `${what}: trailing bytes`);
  return v;
}

/** Encodes a server state (from VmbusServer.saveState) with its header. */
export function encodeServerSavedState(state: ServerState): Uint8Array {
  return encodeWithHeader(BUS_SAVED_STATE_MAGIC, state);
}

/** Decodes and checks a saved server state; throws BusSavedStateError. */
export function decodeServerSavedState(data: Uint8Array): ServerState {
  const v = decodeWithHeader(BUS_SAVED_STATE_MAGIC, data, 'saved server state');
  serverState(v, 'state');
  const s = v as ServerState;
  checkConsistency(s);
  return s;
}

/** Encodes a partition's host VMBus (server state and SynIC end) with its header ('VMBH'). */
export function encodeHostVmbusSavedState(state: HostVmbusSavedState): Uint8Array {
  return encodeWithHeader(HOST_VMBUS_SAVED_STATE_MAGIC, { server: state.server, link: state.link });
}

/**
 * Decodes and checks a partition's saved host VMBus; throws BusSavedStateError. What only the
 * partition can tell (memory, the link's size) is checked when it is restored.
 */
export function decodeHostVmbusSavedState(data: Uint8Array): HostVmbusSavedState {
  const v = decodeWithHeader(HOST_VMBUS_SAVED_STATE_MAGIC, data, 'saved host VMBus state');
  obj({ server: serverState, link: linkState })(v, 'state');
  const s = v as HostVmbusSavedState;
  if (s.link.version !== 1)
    throw new BusSavedStateError('version', `SynIC end state version ${s.link.version}`);
  checkConsistency(s.server);
  return s;
}
