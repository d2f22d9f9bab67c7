// The echo protocol both drivers of examples/echo share, as a real VSP/VSC pair shares a protocol
// header: the offer's interface GUIDs, the message layouts and their codes. Every message starts
// with an 8-byte header {u32 MessageType, u32 DataLength} followed by DataLength bytes; every
// completion starts with {u32 Status (an NTSTATUS), u32 DataLength}. Lengths are explicit because
// VMBus pads every payload to 8 bytes. All fields are little-endian.
//
//   ECHO_MSG_VERSION  guest -> host, sent once with VmbChannelSendSynchronousRequest in
//                     EvtChannelPostStarted: data = u32 version; completion data = u32 version
//                     the host speaks; Status STATUS_NOT_SUPPORTED when the majors differ.
//   ECHO_MSG_ECHO     guest -> host transaction: data = any bytes (up to ECHO_MAX_DATA); the
//                     completion carries the same bytes back.

import { Guid } from '../../src/wire/guid.js';

/** The echo service's type GUID (invented for this example). */
export const ECHO_INTERFACE_TYPE = Guid.parse('3e1b7c90-5d2a-4c61-9f0e-ec40ec40ec40');
/** The instance the example VSP offers. */
export const ECHO_INTERFACE_INSTANCE = Guid.parse('3e1b7c90-5d2a-4c61-9f0e-000000000001');

/** Protocol version 1.0 (major << 16 | minor). */
export const ECHO_PROTOCOL_VERSION = 0x0001_0000;

export const ECHO_MSG_VERSION = 1;
export const ECHO_MSG_ECHO = 2;

/** Bytes of a message or completion header. */
export const ECHO_HEADER_SIZE = 8;
/** Largest echo payload. */
export const ECHO_MAX_DATA = 2048;
/** VmbChannelInitSetMaximumPacketSize for both ends: the largest message or completion. */
export const ECHO_MAX_PACKET = ECHO_HEADER_SIZE + ECHO_MAX_DATA;

/** Writes a header {u32, u32} at offset 0 of `buf`. */
export function putHeader(buf: Uint8Array, first: number, dataLength: number): void {
  const v = new DataView(buf.buffer, buf.byteOffset, ECHO_HEADER_SIZE);
  v.setUint32(0, first >>> 0, true);
  v.setUint32(4, dataLength >>> 0, true);
}

/** Reads the header of `buf[0, length)`, or null if `length` is too short for one. */
export function readHeader(buf: Uint8Array, length: number): { first: number; dataLength: number } | null {
  if (length < ECHO_HEADER_SIZE || buf.length < ECHO_HEADER_SIZE) return null;
  const v = new DataView(buf.buffer, buf.byteOffset, ECHO_HEADER_SIZE);
  return { first: v.getUint32(0, true), dataLength: v.getUint32(4, true) };
}
