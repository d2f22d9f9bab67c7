// The VMBus channel-management messages (SynIC payloads, spec/vmbus-wire.md 3.3-3.4): one typed
// object per message, a byte-exact encoder and a validating decoder whose output re-encodes to
// exactly the bytes it was given (padding, reserved fields and trailing bytes included).

import {
  CHANNEL_MESSAGE_HEADER_SIZE,
  type CHANNELMSG_ALLOFFERS_DELIVERED,
  type CHANNELMSG_CLOSE_RESERVED_CHANNEL,
  type CHANNELMSG_CLOSE_RESERVED_RESPONSE,
  type CHANNELMSG_CLOSECHANNEL,
  type CHANNELMSG_GPADL_BODY,
  type CHANNELMSG_GPADL_CREATED,
  type CHANNELMSG_GPADL_HEADER,
  type CHANNELMSG_GPADL_TEARDOWN,
  type CHANNELMSG_GPADL_TORNDOWN,
  type CHANNELMSG_INITIATE_CONTACT,
  type CHANNELMSG_MODIFY_CONNECTION,
  type CHANNELMSG_MODIFY_CONNECTION_RESPONSE,
  type CHANNELMSG_MODIFYCHANNEL,
  type CHANNELMSG_MODIFYCHANNEL_RESPONSE,
  type CHANNELMSG_OFFERCHANNEL,
  type CHANNELMSG_OPEN_RESERVED_CHANNEL,
  type CHANNELMSG_OPENCHANNEL,
  type CHANNELMSG_OPENCHANNEL_RESULT,
  type CHANNELMSG_PAUSE,
  type CHANNELMSG_PAUSE_RESPONSE,
  type CHANNELMSG_RELID_RELEASED,
  type CHANNELMSG_REQUESTOFFERS,
  type CHANNELMSG_RESCIND_CHANNELOFFER,
  type CHANNELMSG_RESUME,
  type CHANNELMSG_TL_CONNECT_REQUEST,
  type CHANNELMSG_TL_CONNECT_RESULT,
  type CHANNELMSG_UNLOAD,
  type CHANNELMSG_UNLOAD_RESPONSE,
  type CHANNELMSG_VERSION_RESPONSE,
  MAX_SIZE_CHANNEL_MESSAGE,
} from './constants.js';
import { WireError, type WireErrorCode } from './errors.js';
import { Guid } from './guid.js';
import {
  copyBytes,
  PFN_LIMIT,
  readPfnOrMinus1,
  readU16,
  readU32,
  readU64,
  writeU16,
  writeU32,
  writeU64,
  writeU64Number,
} from './messages/bytes.js';
import {
  type FieldSpec,
  type FormSpec,
  GPADL_BODY_SIZE,
  GPADL_HEADER_SIZE,
  LAYOUTS,
  type TypeSpec,
} from './messages/layout.js';

// ---------------------------------------------------------------------------------------------
// Message types. Conventions:
// - `type` is the CHANNELMSG number; types with several sizes carry `form` (the OpenVMM struct name).
// - u8/u16/u32 fields are numbers, u64 GPAs are bigints, GUIDs are Guid, byte areas Uint8Array.
// - status fields are the u32 on the wire, unsigned (0xC0000236, not a negative i32).
// - Optional reserved fields (`headerPadding`, `padding`, ...) are omitted when zero.
// - `trailing`: bytes a sender put after the fixed structure (QEMU and UEFI pad); kept so that
//   decode -> encode reproduces the input, omitted when empty.

interface MessageCommon {
  /** The header's u32 padding (offset 4), when non-zero. */
  headerPadding?: number;
  /** Bytes after the structure, when any. */
  trailing?: Uint8Array;
}

export interface OfferChannelMessage extends MessageCommon {
  type: typeof CHANNELMSG_OFFERCHANNEL;
  ifType: Guid;
  ifInstance: Guid;
  /** u64 @40: Linux `reserved1`, FreeBSD `chlat` (100 ns units); OpenVMM writes 0. */
  channelLatency: bigint;
  /** u32 @48: Linux `reserved2` low half, FreeBSD `chrev`. */
  channelRevision: number;
  /** u32 @52: Linux `reserved2` high half, FreeBSD `svrctx_sz`. */
  serverContextSize: number;
  chnFlags: number;
  mmioMegabytes: number;
  /** 120 bytes; pipe offers start with the u32 pipe mode. */
  userDefined: Uint8Array;
  subChannelIndex: number;
  /** u16 @182: Linux `reserved3`, OpenVMM `mmio_megabytes_optional`. */
  mmioMegabytesOptional: number;
  childRelid: number;
  monitorId: number;
  /** The whole byte @189 (bit 0 = monitor allocated). */
  monitorAllocated: number;
  /** The whole u16 @190 (bit 0 = dedicated interrupt). */
  isDedicatedInterrupt: number;
  connectionId: number;
}

export interface RescindChannelOfferMessage extends MessageCommon {
  type: typeof CHANNELMSG_RESCIND_CHANNELOFFER;
  childRelid: number;
}

export interface RequestOffersMessage extends MessageCommon {
  type: typeof CHANNELMSG_REQUESTOFFERS;
}

export interface AllOffersDeliveredMessage extends MessageCommon {
  type: typeof CHANNELMSG_ALLOFFERS_DELIVERED;
}

interface OpenChannelFields extends MessageCommon {
  type: typeof CHANNELMSG_OPENCHANNEL;
  childRelid: number;
  openId: number;
  ringBufferGpadlHandle: number;
  targetVp: number;
  /** Page offset of the host-to-guest ring inside the ring GPADL. */
  downstreamRingBufferPageOffset: number;
  /** 120 bytes. */
  userData: Uint8Array;
}

/** OPENCHANNEL, 148 bytes. */
export interface OpenChannelV1Message extends OpenChannelFields {
  form: 'OpenChannel';
}

/** OPENCHANNEL 6.0 form (feature 0x1 or 0x2), 156 bytes. */
export interface OpenChannel2Message extends OpenChannelFields {
  form: 'OpenChannel2';
  connectionId: number;
  eventFlag: number;
  /** Bit 0 = redirect_interrupt. */
  flags: number;
}

export type OpenChannelMessage = OpenChannelV1Message | OpenChannel2Message;

export interface OpenChannelResultMessage extends MessageCommon {
  type: typeof CHANNELMSG_OPENCHANNEL_RESULT;
  childRelid: number;
  openId: number;
  status: number;
}

export interface CloseChannelMessage extends MessageCommon {
  type: typeof CHANNELMSG_CLOSECHANNEL;
  childRelid: number;
}

/**
 * GPADL_HEADER. Everything after byte 20 is `rangeData`, kept raw: it may be only the start of the
 * range list (the rest follows in GPADL_BODY messages) or carry sender padding. Parse it with
 * `parseGpadlHeaderRanges` or a `GpadlReassembler` (gpadl.ts).
 */
export interface GpadlHeaderMessage {
  type: typeof CHANNELMSG_GPADL_HEADER;
  headerPadding?: number;
  childRelid: number;
  gpadl: number;
  /** Bytes of all gpa_range records, their 8-byte headers included. */
  rangeBufLen: number;
  rangeCount: number;
  rangeData: Uint8Array;
  /** Never present: every byte after offset 20 belongs to `rangeData`. */
  trailing?: never;
}

/** GPADL_BODY: more u64 values of the range list (PFNs, or range headers of later ranges). */
export interface GpadlBodyMessage extends MessageCommon {
  type: typeof CHANNELMSG_GPADL_BODY;
  /** Linux leaves 0; OpenVMM calls it `rsvd`. */
  msgNumber: number;
  gpadl: number;
  /** Each u64 value as a number (< 2^52). */
  pfns: number[];
}

export interface GpadlCreatedMessage extends MessageCommon {
  type: typeof CHANNELMSG_GPADL_CREATED;
  childRelid: number;
  gpadl: number;
  creationStatus: number;
}

export interface GpadlTeardownMessage extends MessageCommon {
  type: typeof CHANNELMSG_GPADL_TEARDOWN;
  childRelid: number;
  gpadl: number;
}

export interface GpadlTorndownMessage extends MessageCommon {
  type: typeof CHANNELMSG_GPADL_TORNDOWN;
  gpadl: number;
}

export interface RelidReleasedMessage extends MessageCommon {
  type: typeof CHANNELMSG_RELID_RELEASED;
  childRelid: number;
}

/**
 * INITIATE_CONTACT. Bytes 16-23 are `interrupt_page` (< 5.0) or `msg_sint, msg_vtl, reserved[2],
 * feature_flags` (>= 5.0). Decode fills both views. Encode accepts either or both; when both are
 * given they must agree (a RangeError otherwise); absent views encode as 0.
 */
interface InitiateContactFields extends MessageCommon {
  type: typeof CHANNELMSG_INITIATE_CONTACT;
  vmbusVersionRequested: number;
  targetVcpu: number;
  interruptPage?: bigint;
  msgSint?: number;
  msgVtl?: number;
  /** Bytes 18-19, when non-zero. */
  msgReserved?: number;
  featureFlags?: number;
  /** Parent-to-child monitor page GPA. */
  monitorPage1: bigint;
  /** Child-to-parent monitor page GPA. */
  monitorPage2: bigint;
}

export interface InitiateContactV1Message extends InitiateContactFields {
  form: 'InitiateContact';
}

/** 6.0 with feature CLIENT_ID, 56 bytes. */
export interface InitiateContact2Message extends InitiateContactFields {
  form: 'InitiateContact2';
  clientId: Guid;
}

export type InitiateContactMessage = InitiateContactV1Message | InitiateContact2Message;

interface VersionResponseFields extends MessageCommon {
  type: typeof CHANNELMSG_VERSION_RESPONSE;
  /** The whole byte (non-zero = supported). */
  versionSupported: number;
  connectionState: number;
  /** u16 @10, when non-zero. */
  padding?: number;
  msgConnId: number;
}

export interface VersionResponseV1Message extends VersionResponseFields {
  form: 'VersionResponse';
}

export interface VersionResponse2Message extends VersionResponseFields {
  form: 'VersionResponse2';
  supportedFeatures: number;
}

export interface VersionResponse3Message extends VersionResponseFields {
  form: 'VersionResponse3';
  supportedFeatures: number;
  /** u32 @20, when non-zero. */
  padding2?: number;
  parentToChildMonitorGpa: bigint;
  childToParentMonitorGpa: bigint;
}

export type VersionResponseMessage =
  | VersionResponseV1Message
  | VersionResponse2Message
  | VersionResponse3Message;

export interface UnloadMessage extends MessageCommon {
  type: typeof CHANNELMSG_UNLOAD;
}

export interface UnloadResponseMessage extends MessageCommon {
  type: typeof CHANNELMSG_UNLOAD_RESPONSE;
}

export interface OpenReservedChannelMessage extends MessageCommon {
  type: typeof CHANNELMSG_OPEN_RESERVED_CHANNEL;
  childRelid: number;
  targetVp: number;
  targetSint: number;
  ringBufferGpadlHandle: number;
  downstreamRingBufferPageOffset: number;
}

export interface CloseReservedChannelMessage extends MessageCommon {
  type: typeof CHANNELMSG_CLOSE_RESERVED_CHANNEL;
  childRelid: number;
  targetVp: number;
  targetSint: number;
}

export interface CloseReservedResponseMessage extends MessageCommon {
  type: typeof CHANNELMSG_CLOSE_RESERVED_RESPONSE;
  childRelid: number;
}

interface TlConnectRequestFields extends MessageCommon {
  type: typeof CHANNELMSG_TL_CONNECT_REQUEST;
  guestEndpointId: Guid;
  hostServiceId: Guid;
}

export interface TlConnectRequestV1Message extends TlConnectRequestFields {
  form: 'TlConnectRequest';
}

/** 5.2+ form with the silo id, 56 bytes. */
export interface TlConnectRequest2Message extends TlConnectRequestFields {
  form: 'TlConnectRequest2';
  siloId: Guid;
}

export type TlConnectRequestMessage = TlConnectRequestV1Message | TlConnectRequest2Message;

export interface ModifyChannelMessage extends MessageCommon {
  type: typeof CHANNELMSG_MODIFYCHANNEL;
  childRelid: number;
  targetVp: number;
}

export interface TlConnectResultMessage extends MessageCommon {
  type: typeof CHANNELMSG_TL_CONNECT_RESULT;
  endpointId: Guid;
  serviceId: Guid;
  status: number;
}

export interface ModifyChannelResponseMessage extends MessageCommon {
  type: typeof CHANNELMSG_MODIFYCHANNEL_RESPONSE;
  childRelid: number;
  status: number;
}

export interface ModifyConnectionMessage extends MessageCommon {
  type: typeof CHANNELMSG_MODIFY_CONNECTION;
  parentToChildMonitorGpa: bigint;
  childToParentMonitorGpa: bigint;
}

export interface ModifyConnectionResponseMessage extends MessageCommon {
  type: typeof CHANNELMSG_MODIFY_CONNECTION_RESPONSE;
  connectionState: number;
}

export interface PauseMessage extends MessageCommon {
  type: typeof CHANNELMSG_PAUSE;
}

export interface PauseResponseMessage extends MessageCommon {
  type: typeof CHANNELMSG_PAUSE_RESPONSE;
}

export interface ResumeMessage extends MessageCommon {
  type: typeof CHANNELMSG_RESUME;
}

export type ChannelMessage =
  | OfferChannelMessage
  | RescindChannelOfferMessage
  | RequestOffersMessage
  | AllOffersDeliveredMessage
  | OpenChannelMessage
  | OpenChannelResultMessage
  | CloseChannelMessage
  | GpadlHeaderMessage
  | GpadlBodyMessage
  | GpadlCreatedMessage
  | GpadlTeardownMessage
  | GpadlTorndownMessage
  | RelidReleasedMessage
  | InitiateContactMessage
  | VersionResponseMessage
  | UnloadMessage
  | UnloadResponseMessage
  | OpenReservedChannelMessage
  | CloseReservedChannelMessage
  | CloseReservedResponseMessage
  | TlConnectRequestMessage
  | ModifyChannelMessage
  | TlConnectResultMessage
  | ModifyChannelResponseMessage
  | ModifyConnectionMessage
  | ModifyConnectionResponseMessage
  | PauseMessage
  | PauseResponseMessage
  | ResumeMessage;

/** The message object type for one CHANNELMSG number. */
export type ChannelMessageOf<T extends ChannelMessage['type']> = Extract<ChannelMessage, { type: T }>;

/** Largest number of u64 values after a GPADL_HEADER's fixed part: 1 range header + 26 PFNs. */
export const GPADL_HEADER_MAX_VALUES = Math.floor((MAX_SIZE_CHANNEL_MESSAGE - GPADL_HEADER_SIZE) / 8);
/** Largest number of PFNs in one GPADL_BODY: 28. */
export const GPADL_BODY_MAX_PFNS = (MAX_SIZE_CHANNEL_MESSAGE - GPADL_BODY_SIZE) / 8;
export { GPADL_BODY_SIZE, GPADL_HEADER_SIZE };

// ---------------------------------------------------------------------------------------------
// Encoding.

/**
 * A message object the encoder cannot represent (a caller's contract violation): a RangeError that
 * also says which field and why, so message-json.ts can turn it into a WireError.
 */
export class MessageEncodeError extends RangeError {
  override readonly name = 'MessageEncodeError';
  constructor(
    readonly code: WireErrorCode,
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

function fail(code: WireErrorCode, field: string, message: string): never {
  throw new MessageEncodeError(code, field, message);
}

type AnyMessage = Record<string, unknown>;

const MAX_BY_KIND = { u8: 0xff, u16: 0xffff, u32: 0xffffffff } as const;

function layoutOf(msg: AnyMessage): TypeSpec {
  const type = msg.type;
  const spec = typeof type === 'number' && Number.isInteger(type) ? LAYOUTS[type] : undefined;
  if (spec === undefined) fail('unknown-type', 'type', `not a channel message type: ${String(type)}`);
  return spec;
}

function formOf(spec: TypeSpec, msg: AnyMessage): FormSpec {
  const forms = spec.forms;
  if (forms.length === 1) return forms[0]!;
  for (let i = 0; i < forms.length; i++) if (forms[i]!.form === msg.form) return forms[i]!;
  const names = forms.map((fm) => fm.form).join(', ');
  fail('unknown-type', `${spec.short}.form`, `must be one of ${names}, got ${String(msg.form)}`);
}

function checkInt(field: string, v: unknown, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    fail('out-of-range', field, `expected an integer 0..${max}, got ${String(v)}`);
  }
  return v;
}

function checkU64(field: string, v: unknown): bigint {
  if (typeof v !== 'bigint' || v < 0n || v > 0xffffffffffffffffn) {
    fail('out-of-range', field, `expected a u64 bigint, got ${String(v)}`);
  }
  return v;
}

function checkBytes(field: string, v: unknown, size: number | undefined): Uint8Array {
  if (!(v instanceof Uint8Array)) fail('out-of-range', field, 'expected a Uint8Array');
  if (size !== undefined && v.length !== size)
    fail('out-of-range', field, `expected ${size} bytes, got ${v.length}`);
  return v;
}

function trailingOf(short: string, msg: AnyMessage): Uint8Array | undefined {
  return msg.trailing === undefined ? undefined : checkBytes(`${short}.trailing`, msg.trailing, undefined);
}

/** Exact encoded size of a message (throws MessageEncodeError if it cannot be encoded). */
export function encodedMessageLength(msg: ChannelMessage): number {
  const m = msg as unknown as AnyMessage;
  const spec = layoutOf(m);
  const fm = formOf(spec, m);
  let len: number;
  if (spec.kind === 'gpadl-header') {
    if (m.trailing !== undefined)
      fail('out-of-range', `${spec.short}.trailing`, 'GPADL_HEADER has no trailing field');
    len = fm.size + checkBytes(`${spec.short}.rangeData`, m.rangeData, undefined).length;
  } else if (spec.kind === 'gpadl-body') {
    const pfns = m.pfns;
    if (!Array.isArray(pfns)) fail('out-of-range', `${spec.short}.pfns`, 'expected an array of numbers');
    len = fm.size + 8 * pfns.length + (trailingOf(spec.short, m)?.length ?? 0);
  } else {
    len = fm.size + (trailingOf(spec.short, m)?.length ?? 0);
  }
  if (len > MAX_SIZE_CHANNEL_MESSAGE) {
    fail(
      'oversized',
      spec.short,
      `${len} bytes is more than the ${MAX_SIZE_CHANNEL_MESSAGE} a message may have`,
    );
  }
  return len;
}

/** Encodes a message into a new array of exactly its wire size. */
export function encodeMessage(msg: ChannelMessage): Uint8Array {
  const out = new Uint8Array(encodedMessageLength(msg));
  encodeMessageInto(msg, out, 0);
  return out;
}

/**
 * Encodes a message into `out` at `offset` (every byte of the message is written, reserved ones as
 * zero) and returns its length. Throws MessageEncodeError (a RangeError) for a message object that
 * cannot be encoded, or if `out` is too small; `out` is untouched in that case.
 */
export function encodeMessageInto(msg: ChannelMessage, out: Uint8Array, offset: number): number {
  const m = msg as unknown as AnyMessage;
  const len = encodedMessageLength(msg);
  if (!Number.isInteger(offset) || offset < 0 || offset + len > out.length) {
    throw new RangeError(`encodeMessageInto: ${len} bytes do not fit at offset ${offset} of ${out.length}`);
  }
  const spec = layoutOf(m);
  const fm = formOf(spec, m);
  const s = spec.short;
  // Validate everything before the first write.
  const padding =
    m.headerPadding === undefined ? 0 : checkInt(`${s}.headerPadding`, m.headerPadding, 0xffffffff);
  for (const fd of fm.fields) if (!fd.view) checkField(s, fd, m[fd.key]);
  const targetInfo = spec.type === 14 ? initiateTargetInfo(s, m) : 0n;
  if (spec.kind === 'gpadl-body') {
    const pfns = m.pfns as unknown[];
    for (let i = 0; i < pfns.length; i++) checkInt(`${s}.pfn[${i}]`, pfns[i], PFN_LIMIT - 1);
  }

  out.fill(0, offset, offset + len);
  writeU32(out, offset, spec.type);
  writeU32(out, offset + 4, padding);
  for (const fd of fm.fields) if (!fd.view) writeField(out, offset, fd, m[fd.key]);
  if (spec.type === 14) writeU64(out, offset + 16, targetInfo);
  let end = offset + fm.size;
  if (spec.kind === 'gpadl-header') {
    const data = m.rangeData as Uint8Array;
    out.set(data, end);
    end += data.length;
  } else if (spec.kind === 'gpadl-body') {
    const pfns = m.pfns as number[];
    for (let i = 0; i < pfns.length; i++, end += 8) writeU64Number(out, end, pfns[i]!);
  }
  const trailing = m.trailing as Uint8Array | undefined;
  if (trailing !== undefined) out.set(trailing, end);
  return len;
}

function checkField(short: string, fd: FieldSpec, v: unknown): void {
  const field = `${short}.${fd.key}`;
  if (v === undefined && fd.reserved) return;
  if (v === undefined) fail('truncated', field, 'missing');
  switch (fd.kind) {
    case 'u8':
    case 'u16':
    case 'u32':
      checkInt(field, v, MAX_BY_KIND[fd.kind]);
      return;
    case 'u64':
      checkU64(field, v);
      return;
    case 'guid':
      if (!(v instanceof Guid)) fail('out-of-range', field, 'expected a Guid');
      return;
    case 'bytes':
      checkBytes(field, v, fd.size);
      return;
  }
}

function writeField(out: Uint8Array, base: number, fd: FieldSpec, v: unknown): void {
  if (v === undefined) return; // absent reserved field: stays zero
  const o = base + fd.offset;
  switch (fd.kind) {
    case 'u8':
      out[o] = v as number;
      return;
    case 'u16':
      writeU16(out, o, v as number);
      return;
    case 'u32':
      writeU32(out, o, v as number);
      return;
    case 'u64':
      writeU64(out, o, v as bigint);
      return;
    case 'guid':
      (v as Guid).write(out, o);
      return;
    case 'bytes':
      out.set(v as Uint8Array, o);
      return;
  }
}

/** The u64 at INITIATE_CONTACT offset 16, from whichever views the message carries. */
function initiateTargetInfo(short: string, m: AnyMessage): bigint {
  const sint = m.msgSint === undefined ? 0 : checkInt(`${short}.msgSint`, m.msgSint, 0xff);
  const vtl = m.msgVtl === undefined ? 0 : checkInt(`${short}.msgVtl`, m.msgVtl, 0xff);
  const rsvd = m.msgReserved === undefined ? 0 : checkInt(`${short}.msgReserved`, m.msgReserved, 0xffff);
  const flags =
    m.featureFlags === undefined ? 0 : checkInt(`${short}.featureFlags`, m.featureFlags, 0xffffffff);
  const hasSplit =
    m.msgSint !== undefined ||
    m.msgVtl !== undefined ||
    m.msgReserved !== undefined ||
    m.featureFlags !== undefined;
  const split = (BigInt(flags) << 32n) | BigInt((sint | (vtl << 8) | (rsvd << 16)) >>> 0);
  if (m.interruptPage === undefined) return split;
  const raw = checkU64(`${short}.interruptPage`, m.interruptPage);
  if (hasSplit && raw !== split) {
    fail(
      'inconsistent',
      `${short}.interruptPage`,
      `0x${raw.toString(16)} disagrees with msgSint/msgVtl/msgReserved/featureFlags (0x${split.toString(16)})`,
    );
  }
  return raw;
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/**
 * Decodes one channel message (the SynIC payload, header included). Refuses, with a WireError:
 * more than 240 bytes ('oversized'), no complete header or too few bytes for the type's smallest
 * form ('truncated', naming message and field), a type number 0 or > 29 ('unknown-type',
 * `header.msgtype`), a GPADL_BODY PFN >= 2^52 ('out-of-range'). Of types with several sizes, the
 * largest form that fits is chosen; bytes after it are kept in `trailing`.
 */
export function decodeMessage(bytes: Uint8Array): ChannelMessage {
  const len = bytes.length;
  if (len > MAX_SIZE_CHANNEL_MESSAGE) {
    throw new WireError(
      'oversized',
      'message',
      `${len} bytes; a channel message has at most ${MAX_SIZE_CHANNEL_MESSAGE}`,
    );
  }
  if (len < CHANNEL_MESSAGE_HEADER_SIZE) {
    throw new WireError('truncated', 'header', `needs ${CHANNEL_MESSAGE_HEADER_SIZE} bytes, got ${len}`);
  }
  const type = readU32(bytes, 0);
  const spec = type < LAYOUTS.length ? LAYOUTS[type] : undefined;
  if (spec === undefined)
    throw new WireError('unknown-type', 'header.msgtype', `unknown channel message type ${type}`);
  let fm: FormSpec | undefined;
  for (const candidate of spec.forms) if (candidate.size <= len) fm = candidate;
  if (fm === undefined) {
    const smallest = spec.forms[0]!;
    const missing = smallest.fields.find((fd) => fd.offset + fd.size > len);
    const field = `${spec.short}.${missing?.wire ?? 'header'}`;
    throw new WireError('truncated', field, `${spec.name} needs ${smallest.size} bytes, got ${len}`);
  }
  const m: AnyMessage = { type };
  if (fm.form !== undefined) m.form = fm.form;
  for (const fd of fm.fields) {
    const v = readField(bytes, fd);
    if (fd.reserved && (v === 0 || v === 0n)) continue;
    m[fd.key] = v;
  }
  let end = fm.size;
  if (spec.kind === 'gpadl-header') {
    m.rangeData = copyBytes(bytes, end, len);
    end = len;
  } else if (spec.kind === 'gpadl-body') {
    const count = (len - end) >>> 3;
    const pfns = new Array<number>(count);
    for (let i = 0; i < count; i++, end += 8) {
      const pfn = readPfnOrMinus1(bytes, end);
      if (pfn < 0) {
        throw new WireError(
          'out-of-range',
          `${spec.short}.pfn[${i}]`,
          'PFN >= 2^52 names no address a 64-bit GPA can hold',
        );
      }
      pfns[i] = pfn;
    }
    m.pfns = pfns;
  }
  if (end < len) m.trailing = copyBytes(bytes, end, len);
  const padding = readU32(bytes, 4);
  if (padding !== 0) m.headerPadding = padding;
  return m as unknown as ChannelMessage;
}

function readField(b: Uint8Array, fd: FieldSpec): number | bigint | Guid | Uint8Array {
  const o = fd.offset;
  switch (fd.kind) {
    case 'u8':
      return b[o]!;
    case 'u16':
      return readU16(b, o);
    case 'u32':
      return readU32(b, o);
    case 'u64':
      return readU64(b, o);
    case 'guid':
      return Guid.read(b, o);
    case 'bytes':
      return copyBytes(b, o, o + fd.size);
  }
}

/** `CHANNELMSG_*` name of a message object. */
export function messageName(msg: ChannelMessage): string {
  return layoutOf(msg as unknown as AnyMessage).name;
}
