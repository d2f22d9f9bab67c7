// vstor packet codec (Linux storvsc_drv.c `struct vstor_packet`, packed):
//   0 u32 operation   4 u32 flags   8 u32 status   12 union (0x34 bytes) {
//     vmscsi_request: 0 u16 length; 2 u8 srb_status; 3 u8 scsi_status; 4 u8 port_number;
//       5 u8 path_id; 6 u8 target_id; 7 u8 lun; 8 u8 cdb_length; 9 u8 sense_info_length;
//       10 u8 data_in; 11 u8 reserved; 12 u32 data_transfer_length; 16 u8 cdb[16] / sense[20];
//       -- Win8 extension: 36 u16 reserve; 38 u8 queue_tag; 39 u8 queue_action; 40 u32 srb_flags;
//       44 u32 time_out_value; 48 u32 queue_sort_key  (0x34 bytes; 0x24 before Win8)
//     vmstorage_channel_properties: 0 u32 reserved; 4 u16 max_channel_cnt; 6 u16 reserved1;
//       8 u32 flags; 12 u32 max_transfer_bytes; 16 u64 reserved2
//     vmstorage_protocol_version: 0 u16 major_minor; 2 u16 revision
//     u16 sub_channel_count }
// A packet is 64 bytes from Win8 on and 48 before (the vmscsi_request without its extension).
// Decoding copies into a reusable VstorPacket; field access is explicit-offset and allocation-free.

import { needBytes } from '../../wire/errors.js';
import { readU16, readU32, writeU16, writeU32 } from '../../wire/messages/bytes.js';
import { VMSTOR_PROTO_VERSION_WIN8 } from './constants.js';

export const VSTOR_PACKET_HEADER_SIZE = 12;
/** sizeof(struct vmscsi_request) with the Win8 extension. */
export const VMSCSI_REQUEST_SIZE = 0x34;
/** Its size before Win8. */
export const VMSCSI_REQUEST_SIZE_PRE_WIN8 = 0x24;
export const VMSCSI_WIN8_EXTENSION_SIZE = VMSCSI_REQUEST_SIZE - VMSCSI_REQUEST_SIZE_PRE_WIN8;
/** The union area. */
export const VSTOR_PAYLOAD_SIZE = 0x34;
export const VSTOR_PACKET_SIZE = VSTOR_PACKET_HEADER_SIZE + VSTOR_PAYLOAD_SIZE;
export const VSTOR_PACKET_SIZE_PRE_WIN8 = VSTOR_PACKET_HEADER_SIZE + VMSCSI_REQUEST_SIZE_PRE_WIN8;
export const STORVSC_MAX_CMD_LEN = 0x10;
export const STORVSC_SENSE_BUFFER_SIZE = 0x14;
export const VMSTORAGE_CHANNEL_PROPERTIES_SIZE = 24;
export const VMSTORAGE_PROTOCOL_VERSION_SIZE = 4;

/** Copies `n` bytes with a plain loop: the codec's copies are at most 52 bytes, and a loop needs no view. */
export function copySmall(
  src: Uint8Array,
  srcOffset: number,
  dst: Uint8Array,
  dstOffset: number,
  n: number,
): void {
  for (let i = 0; i < n; i++) dst[dstOffset + i] = src[srcOffset + i]!;
}

/** Packet size for a negotiated protocol version. */
export function vstorPacketSize(version: number): number {
  return version >= VMSTOR_PROTO_VERSION_WIN8 ? VSTOR_PACKET_SIZE : VSTOR_PACKET_SIZE_PRE_WIN8;
}

/** A decoded packet: header fields plus the raw union area (zero-padded to 0x34). */
export class VstorPacket {
  operation = 0;
  flags = 0;
  status = 0;
  readonly payload = new Uint8Array(VSTOR_PAYLOAD_SIZE);
  /** How many union bytes the packet really carried (0..0x34). */
  payloadLength = VSTOR_PAYLOAD_SIZE;

  /** Zeroes everything (payloadLength back to 0x34). */
  clear(): this {
    this.operation = 0;
    this.flags = 0;
    this.status = 0;
    this.payload.fill(0);
    this.payloadLength = VSTOR_PAYLOAD_SIZE;
    return this;
  }
}

/**
 * Decodes `bytes[0, length)` into `out`. Needs the 12-byte header (WireError('truncated')
 * otherwise); union bytes past 0x34 are ignored, missing ones read as zero (payloadLength says
 * how many came).
 */
export function decodeVstorPacket(bytes: Uint8Array, out: VstorPacket, length = bytes.length): VstorPacket {
  const n = Math.min(length, bytes.length);
  needBytes('vstor_packet', n, VSTOR_PACKET_HEADER_SIZE);
  out.operation = readU32(bytes, 0);
  out.flags = readU32(bytes, 4);
  out.status = readU32(bytes, 8);
  const p = Math.min(n - VSTOR_PACKET_HEADER_SIZE, VSTOR_PAYLOAD_SIZE);
  copySmall(bytes, VSTOR_PACKET_HEADER_SIZE, out.payload, 0, p);
  out.payload.fill(0, p);
  out.payloadLength = p;
  return out;
}

/** Encodes `pkt` as a packet of `size` bytes (12 + the first size - 12 union bytes) into `out`. */
export function encodeVstorPacket(pkt: VstorPacket, out: Uint8Array, size = VSTOR_PACKET_SIZE): number {
  if (size < VSTOR_PACKET_HEADER_SIZE || size > VSTOR_PACKET_SIZE)
    throw new RangeError(`bad vstor packet size ${size}`);
  if (out.length < size) throw new RangeError('vstor packet does not fit');
  writeU32(out, 0, pkt.operation >>> 0);
  writeU32(out, 4, pkt.flags >>> 0);
  writeU32(out, 8, pkt.status >>> 0);
  copySmall(pkt.payload, 0, out, VSTOR_PACKET_HEADER_SIZE, size - VSTOR_PACKET_HEADER_SIZE);
  return size;
}

// ---------------------------------------------------------------------------------------------
// vmscsi_request.

export interface VmscsiRequest {
  length: number;
  srbStatus: number;
  scsiStatus: number;
  portNumber: number;
  pathId: number;
  targetId: number;
  lun: number;
  cdbLength: number;
  senseInfoLength: number;
  dataIn: number;
  reserved: number;
  dataTransferLength: number;
  /** The 20-byte cdb / sense_data union (cdb in requests, sense data in completions). */
  readonly cdb: Uint8Array;
  reserve: number;
  queueTag: number;
  queueAction: number;
  srbFlags: number;
  timeOutValue: number;
  queueSortKey: number;
}

export function newVmscsiRequest(): VmscsiRequest {
  return {
    length: 0,
    srbStatus: 0,
    scsiStatus: 0,
    portNumber: 0,
    pathId: 0,
    targetId: 0,
    lun: 0,
    cdbLength: 0,
    senseInfoLength: 0,
    dataIn: 0,
    reserved: 0,
    dataTransferLength: 0,
    cdb: new Uint8Array(STORVSC_SENSE_BUFFER_SIZE),
    reserve: 0,
    queueTag: 0,
    queueAction: 0,
    srbFlags: 0,
    timeOutValue: 0,
    queueSortKey: 0,
  };
}

/** Reads the vmscsi_request in a 0x34-byte union area (the Win8 fields read 0 if they did not come). */
export function readVmscsiRequest(payload: Uint8Array, out: VmscsiRequest): VmscsiRequest {
  needBytes('vmscsi_request', payload.length, VMSCSI_REQUEST_SIZE);
  out.length = readU16(payload, 0);
  out.srbStatus = payload[2]!;
  out.scsiStatus = payload[3]!;
  out.portNumber = payload[4]!;
  out.pathId = payload[5]!;
  out.targetId = payload[6]!;
  out.lun = payload[7]!;
  out.cdbLength = payload[8]!;
  out.senseInfoLength = payload[9]!;
  out.dataIn = payload[10]!;
  out.reserved = payload[11]!;
  out.dataTransferLength = readU32(payload, 12);
  copySmall(payload, 16, out.cdb, 0, STORVSC_SENSE_BUFFER_SIZE);
  out.reserve = readU16(payload, 36);
  out.queueTag = payload[38]!;
  out.queueAction = payload[39]!;
  out.srbFlags = readU32(payload, 40);
  out.timeOutValue = readU32(payload, 44);
  out.queueSortKey = readU32(payload, 48);
  return out;
}

/** Writes a vmscsi_request into a 0x34-byte union area. */
export function writeVmscsiRequest(req: VmscsiRequest, payload: Uint8Array): void {
  if (payload.length < VMSCSI_REQUEST_SIZE) throw new RangeError('union area shorter than vmscsi_request');
  writeU16(payload, 0, req.length);
  payload[2] = req.srbStatus;
  payload[3] = req.scsiStatus;
  payload[4] = req.portNumber;
  payload[5] = req.pathId;
  payload[6] = req.targetId;
  payload[7] = req.lun;
  payload[8] = req.cdbLength;
  payload[9] = req.senseInfoLength;
  payload[10] = req.dataIn;
  payload[11] = req.reserved;
  writeU32(payload, 12, req.dataTransferLength >>> 0);
  copySmall(req.cdb, 0, payload, 16, STORVSC_SENSE_BUFFER_SIZE);
  writeU16(payload, 36, req.reserve);
  payload[38] = req.queueTag;
  payload[39] = req.queueAction;
  writeU32(payload, 40, req.srbFlags >>> 0);
  writeU32(payload, 44, req.timeOutValue >>> 0);
  writeU32(payload, 48, req.queueSortKey >>> 0);
}

// ---------------------------------------------------------------------------------------------
// The other union members.

export interface VstorChannelProperties {
  maxChannelCount: number;
  flags: number;
  maxTransferBytes: number;
}

export function readChannelProperties(payload: Uint8Array): VstorChannelProperties {
  needBytes('vmstorage_channel_properties', payload.length, VMSTORAGE_CHANNEL_PROPERTIES_SIZE);
  return {
    maxChannelCount: readU16(payload, 4),
    flags: readU32(payload, 8),
    maxTransferBytes: readU32(payload, 12),
  };
}

export function writeChannelProperties(p: VstorChannelProperties, payload: Uint8Array): void {
  payload.fill(0, 0, VMSTORAGE_CHANNEL_PROPERTIES_SIZE);
  writeU16(payload, 4, p.maxChannelCount);
  writeU32(payload, 8, p.flags >>> 0);
  writeU32(payload, 12, p.maxTransferBytes >>> 0);
}

/** vmstorage_protocol_version.major_minor. */
export function readProtocolVersion(payload: Uint8Array): number {
  return readU16(payload, 0);
}

export function writeProtocolVersion(version: number, payload: Uint8Array, revision = 0): void {
  writeU16(payload, 0, version);
  writeU16(payload, 2, revision);
}

/** The u16 sub_channel_count of CREATE_SUB_CHANNELS. */
export function readSubChannelCount(payload: Uint8Array): number {
  return readU16(payload, 0);
}

export function writeSubChannelCount(count: number, payload: Uint8Array): void {
  writeU16(payload, 0, count);
}
