// Integration-component framing: the 8-byte `vmbuspipe_hdr {u32 flags; u32 msgsize}`, the 20-byte
// `icmsg_hdr`, the `icmsg_negotiate` version lists, Linux's `vmbus_prep_negotiate_resp` version
// choice, and the UTF-16 string fields the services carry. Every offset is explicit and every
// decoder checks its length first: bad bytes are a WireError, never a read past the input.
//
// Layout (offsets from the start of the icmsg_hdr):
//   0 icverframe {u16 major; u16 minor}   4 u16 icmsgtype   6 icvermsg {u16 major; u16 minor}
//  10 u16 icmsgsize   12 u32 status   16 u8 ictransaction_id   17 u8 icflags   18 u8 reserved[2]
// The negotiate body: u16 icframe_vercnt; u16 icmsg_vercnt; u32 reserved; ic_version[f + m].

import { needBytes, WireError } from '../../wire/errors.js';
import { readU16, readU32, writeU16, writeU32 } from '../../wire/messages/bytes.js';
import { VMBUS_PIPE_TYPE_DATA } from '../../wire/packets.js';
import {
  IC_VERSION_NEGOTIATION_MAX_VER_COUNT,
  IC_VERSION_SIZE,
  ICMSG_HDR_SIZE,
  ICMSG_NEGOTIATE_SIZE,
  ICMSGHDRFLAG_REQUEST,
  ICMSGHDRFLAG_TRANSACTION,
  ICMSGTYPE_NEGOTIATE,
  VMBUSPIPE_HDR_SIZE,
} from './constants.js';

/** The decoded icmsg_hdr. Versions are `major << 16 | minor`. */
export interface IcHeader {
  frameworkVersion: number;
  messageType: number;
  messageVersion: number;
  /** icmsgsize: the body length the sender claims. */
  messageSize: number;
  status: number;
  transactionId: number;
  flags: number;
}

export function newIcHeader(): IcHeader {
  return {
    frameworkVersion: 0,
    messageType: 0,
    messageVersion: 0,
    messageSize: 0,
    status: 0,
    transactionId: 0,
    flags: 0,
  };
}

/** Where the icmsg_hdr starts: after the pipe header when the message carries one. */
export function icHeaderOffset(pipeHeader: boolean): number {
  return pipeHeader ? VMBUSPIPE_HDR_SIZE : 0;
}

/** Where the service body starts (Linux `ICMSG_HDR` with a pipe header). */
export function icBodyOffset(pipeHeader: boolean): number {
  return icHeaderOffset(pipeHeader) + ICMSG_HDR_SIZE;
}

function readVersion(b: Uint8Array, o: number): number {
  return ((readU16(b, o) << 16) | readU16(b, o + 2)) >>> 0;
}

function writeVersion(b: Uint8Array, o: number, v: number): void {
  writeU16(b, o, v >>> 16);
  writeU16(b, o + 2, v & 0xffff);
}

/** Decodes the icmsg_hdr of `msg` (a WireError('truncated') if the header is not all there). */
export function readIcHeader(msg: Uint8Array, pipeHeader: boolean, out: IcHeader = newIcHeader()): IcHeader {
  const h = icHeaderOffset(pipeHeader);
  needBytes('icmsg_hdr', msg.length, h + ICMSG_HDR_SIZE);
  out.frameworkVersion = readVersion(msg, h);
  out.messageType = readU16(msg, h + 4);
  out.messageVersion = readVersion(msg, h + 6);
  out.messageSize = readU16(msg, h + 10);
  out.status = readU32(msg, h + 12);
  out.transactionId = msg[h + 16]!;
  out.flags = msg[h + 17]!;
  return out;
}

/**
 * Writes the pipe header (if any: flags = VMBUS_PIPE_TYPE_DATA, msgsize = everything after it) and
 * the icmsg_hdr at the start of `msg`, whose length is the whole message.
 */
export function writeIcHeader(msg: Uint8Array, h: IcHeader, pipeHeader: boolean): void {
  const o = icHeaderOffset(pipeHeader);
  if (msg.length < o + ICMSG_HDR_SIZE) throw new RangeError('IC message buffer shorter than its header');
  if (pipeHeader) {
    writeU32(msg, 0, VMBUS_PIPE_TYPE_DATA);
    writeU32(msg, 4, msg.length - VMBUSPIPE_HDR_SIZE);
  }
  writeVersion(msg, o, h.frameworkVersion);
  writeU16(msg, o + 4, h.messageType);
  writeVersion(msg, o + 6, h.messageVersion);
  writeU16(msg, o + 10, h.messageSize);
  writeU32(msg, o + 12, h.status >>> 0);
  msg[o + 16] = h.transactionId & 0xff;
  msg[o + 17] = h.flags & 0xff;
  msg[o + 18] = 0;
  msg[o + 19] = 0;
}

/** Sets icmsg_hdr.status in place. */
export function setIcStatus(msg: Uint8Array, pipeHeader: boolean, status: number): void {
  writeU32(msg, icHeaderOffset(pipeHeader) + 12, status >>> 0);
}

/** Sets icmsg_hdr.icflags in place. */
export function setIcFlags(msg: Uint8Array, pipeHeader: boolean, flags: number): void {
  msg[icHeaderOffset(pipeHeader) + 17] = flags & 0xff;
}

/** A zeroed message of header + `bodyLength` bytes with its headers written (messageSize = bodyLength). */
export function allocIcMessage(h: IcHeader, bodyLength: number, pipeHeader: boolean): Uint8Array {
  const msg = new Uint8Array(icBodyOffset(pipeHeader) + bodyLength);
  h.messageSize = bodyLength;
  writeIcHeader(msg, h, pipeHeader);
  return msg;
}

// ---------------------------------------------------------------------------------------------
// Version negotiation.

/** The two version lists of an icmsg_negotiate. */
export interface IcNegotiate {
  frameworkVersions: number[];
  messageVersions: number[];
}

/** Size of a negotiate message with `f` framework and `m` message versions (Linux ICMSG_NEGOTIATE_PKT_SIZE). */
export function icNegotiateSize(pipeHeader: boolean, f: number, m: number): number {
  return icBodyOffset(pipeHeader) + ICMSG_NEGOTIATE_SIZE + (f + m) * IC_VERSION_SIZE;
}

/** Reads and checks the two counts; returns [f, m]. */
function readNegotiateCounts(msg: Uint8Array, pipeHeader: boolean): [number, number] {
  const b = icBodyOffset(pipeHeader);
  needBytes('icmsg_negotiate', msg.length, b + ICMSG_NEGOTIATE_SIZE);
  const f = readU16(msg, b);
  const m = readU16(msg, b + 2);
  if (f > IC_VERSION_NEGOTIATION_MAX_VER_COUNT) {
    throw new WireError('out-of-range', 'icmsg_negotiate.icframe_vercnt', `${f} versions (at most 100)`);
  }
  if (m > IC_VERSION_NEGOTIATION_MAX_VER_COUNT) {
    throw new WireError('out-of-range', 'icmsg_negotiate.icmsg_vercnt', `${m} versions (at most 100)`);
  }
  if (icNegotiateSize(pipeHeader, f, m) > msg.length) {
    throw new WireError(
      'inconsistent',
      'icmsg_negotiate.icversion_data',
      `${f} + ${m} versions need ${icNegotiateSize(pipeHeader, f, m)} bytes, the message has ${msg.length}`,
    );
  }
  return [f, m];
}

/** Decodes the version lists of a negotiate message (request or response). */
export function decodeIcNegotiate(msg: Uint8Array, pipeHeader: boolean): IcNegotiate {
  const [f, m] = readNegotiateCounts(msg, pipeHeader);
  const v = icBodyOffset(pipeHeader) + ICMSG_NEGOTIATE_SIZE;
  const frameworkVersions: number[] = [];
  const messageVersions: number[] = [];
  for (let i = 0; i < f; i++) frameworkVersions.push(readVersion(msg, v + i * IC_VERSION_SIZE));
  for (let i = 0; i < m; i++) messageVersions.push(readVersion(msg, v + (f + i) * IC_VERSION_SIZE));
  return { frameworkVersions, messageVersions };
}

/**
 * A host's negotiate request, as OpenVMM sends it: zero versions in the header, icmsgsize = the
 * negotiate body, flags TRANSACTION | REQUEST, then both lists.
 */
export function encodeIcNegotiateRequest(
  pipeHeader: boolean,
  transactionId: number,
  frameworkVersions: readonly number[],
  messageVersions: readonly number[],
): Uint8Array {
  const f = frameworkVersions.length;
  const m = messageVersions.length;
  if (f > IC_VERSION_NEGOTIATION_MAX_VER_COUNT || m > IC_VERSION_NEGOTIATION_MAX_VER_COUNT) {
    throw new RangeError('at most 100 versions per list');
  }
  const h = newIcHeader();
  h.messageType = ICMSGTYPE_NEGOTIATE;
  h.transactionId = transactionId;
  h.flags = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_REQUEST;
  const msg = allocIcMessage(h, ICMSG_NEGOTIATE_SIZE + (f + m) * IC_VERSION_SIZE, pipeHeader);
  const b = icBodyOffset(pipeHeader);
  writeU16(msg, b, f);
  writeU16(msg, b + 2, m);
  const v = b + ICMSG_NEGOTIATE_SIZE;
  for (let i = 0; i < f; i++) writeVersion(msg, v + i * IC_VERSION_SIZE, frameworkVersions[i]!);
  for (let i = 0; i < m; i++) writeVersion(msg, v + (f + i) * IC_VERSION_SIZE, messageVersions[i]!);
  return msg;
}

/** What `prepIcNegotiateResponse` chose. */
export interface IcNegotiateOutcome {
  found: boolean;
  /** The chosen (or, on failure, the placeholder) framework version Linux reports. */
  framework: number;
  /** The chosen (or placeholder) message version. */
  message: number;
}

/**
 * Turns the negotiate request in `msg` into the guest's response in place, exactly as Linux's
 * `vmbus_prep_negotiate_resp` does: icmsgsize = 0x10; the first of `fwVersions` (most preferred
 * first) that the host offers, then the first of `srvVersions` the host offers; on success both
 * counts become 1 and the chosen pair is written as icversion_data[0..1]; on failure both counts
 * become 0 and icversion_data[0..1] hold Linux's placeholders (the host's counts as majors, or the
 * matched framework version when only the service versions failed). Status and length are left as
 * they were. Version entries that would fall past the end of `msg` are not written.
 *
 * Counts over 100 or lists that overrun the message are a WireError (Linux answers those with the
 * failure response; we refuse them as hostile).
 */
export function prepIcNegotiateResponse(
  msg: Uint8Array,
  pipeHeader: boolean,
  fwVersions: readonly number[],
  srvVersions: readonly number[],
): IcNegotiateOutcome {
  const [f, m] = readNegotiateCounts(msg, pipeHeader);
  const h = icHeaderOffset(pipeHeader);
  const b = icBodyOffset(pipeHeader);
  const v = b + ICMSG_NEGOTIATE_SIZE;
  writeU16(msg, h + 10, 0x10);

  let frameMajor = f;
  let frameMinor = 0;
  let msgMajor = m;
  let msgMinor = 0;
  let found = false;
  for (let i = 0; i < fwVersions.length && !found; i++) {
    const want = fwVersions[i]! >>> 0;
    for (let j = 0; j < f; j++) {
      if (readVersion(msg, v + j * IC_VERSION_SIZE) === want) {
        frameMajor = want >>> 16;
        frameMinor = want & 0xffff;
        found = true;
        break;
      }
    }
  }
  if (found) {
    found = false;
    for (let i = 0; i < srvVersions.length && !found; i++) {
      const want = srvVersions[i]! >>> 0;
      for (let j = f; j < f + m; j++) {
        if (readVersion(msg, v + j * IC_VERSION_SIZE) === want) {
          msgMajor = want >>> 16;
          msgMinor = want & 0xffff;
          found = true;
          break;
        }
      }
    }
  }
  writeU16(msg, b, found ? 1 : 0);
  writeU16(msg, b + 2, found ? 1 : 0);
  const framework = ((frameMajor << 16) | frameMinor) >>> 0;
  const message = ((msgMajor << 16) | msgMinor) >>> 0;
  if (v + IC_VERSION_SIZE <= msg.length) writeVersion(msg, v, framework);
  if (v + 2 * IC_VERSION_SIZE <= msg.length) writeVersion(msg, v + IC_VERSION_SIZE, message);
  return { found, framework, message };
}

// ---------------------------------------------------------------------------------------------
// UTF-16LE string fields (KVP keys and values, the shutdown display message).

/**
 * Reads UTF-16LE code units from `b[offset, offset + maxBytes)` up to the first NUL unit (or the
 * end of the field; an odd trailing byte is ignored).
 */
export function readUtf16z(b: Uint8Array, offset: number, maxBytes: number): string {
  needBytes('utf16 string', b.length - offset, maxBytes);
  const units = maxBytes >>> 1;
  let s = '';
  for (let i = 0; i < units; i++) {
    const u = readU16(b, offset + 2 * i);
    if (u === 0) break;
    s += String.fromCharCode(u);
  }
  return s;
}

/**
 * Writes `text` as UTF-16LE at `offset`, at most `maxUnits` code units, then one NUL unit.
 * Returns the number of units written before the NUL.
 */
export function writeUtf16z(b: Uint8Array, offset: number, text: string, maxUnits: number): number {
  const n = Math.min(text.length, maxUnits);
  if (offset + 2 * (n + 1) > b.length) throw new RangeError('UTF-16 string does not fit');
  for (let i = 0; i < n; i++) writeU16(b, offset + 2 * i, text.charCodeAt(i));
  writeU16(b, offset + 2 * n, 0);
  return n;
}
