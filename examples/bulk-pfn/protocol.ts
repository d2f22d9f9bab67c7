// The bulk-transfer protocol both drivers of examples/bulk-pfn share. The bytes never travel
// through the ring: the guest describes pages of its own RAM as external data
// (VmbPacketSendWithExternalPfns) and the host copies to or from those pages while it holds the
// packet. All fields are u32, little-endian.
//
//   request (16 bytes, inline):    Operation, BlockId, ByteCount, Reserved (0)
//   completion (16 bytes):         Status (NTSTATUS), ByteCount, Checksum, Reserved (0)
//
//   BULK_OP_WRITE  the host reads ByteCount bytes from the guest pages and stores them as block
//                  BlockId; Checksum is the FNV-1a hash of the bytes it read.
//   BULK_OP_READ   the host writes block BlockId's first ByteCount bytes into the guest pages;
//                  Checksum is the FNV-1a hash of the bytes it wrote. STATUS_NOT_FOUND if the
//                  block does not exist, STATUS_INVALID_PARAMETER if it is shorter than ByteCount.

import { Guid } from '../../src/wire/guid.js';

/** The bulk service's type GUID (invented for this example). */
export const BULK_INTERFACE_TYPE = Guid.parse('9d0c41a2-7b3e-4f58-8c6d-b0b0b0b0b0b0');
export const BULK_INTERFACE_INSTANCE = Guid.parse('9d0c41a2-7b3e-4f58-8c6d-000000000001');

export const BULK_OP_WRITE = 1;
export const BULK_OP_READ = 2;

/** Bytes of a request and of a completion. */
export const BULK_MESSAGE_SIZE = 16;
/** Largest transfer: 1 MiB (VmbChannelInitSetMaximumExternalData on both ends). */
export const BULK_MAX_TRANSFER = 1024 * 1024;
/** Most bytes the host keeps for the guest (it refuses writes beyond this). */
export const BULK_HOST_STORE_LIMIT = 8 * 1024 * 1024;

/** The four u32 fields of a request or completion. */
export interface BulkMessage {
  a: number;
  b: number;
  c: number;
  d: number;
}

export function putMessage(buf: Uint8Array, a: number, b: number, c: number, d = 0): void {
  const v = new DataView(buf.buffer, buf.byteOffset, BULK_MESSAGE_SIZE);
  v.setUint32(0, a >>> 0, true);
  v.setUint32(4, b >>> 0, true);
  v.setUint32(8, c >>> 0, true);
  v.setUint32(12, d >>> 0, true);
}

/** The fields of `buf[0, length)`, or null if it is too short to hold a message. */
export function readMessage(buf: Uint8Array | null, length: number): BulkMessage | null {
  if (buf === null || length < BULK_MESSAGE_SIZE || buf.length < BULK_MESSAGE_SIZE) return null;
  const v = new DataView(buf.buffer, buf.byteOffset, BULK_MESSAGE_SIZE);
  return {
    a: v.getUint32(0, true),
    b: v.getUint32(4, true),
    c: v.getUint32(8, true),
    d: v.getUint32(12, true),
  };
}

/** 32-bit FNV-1a of `data`. */
export function fnv1a(data: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i]!, 0x01000193);
  return h >>> 0;
}
