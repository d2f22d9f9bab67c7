// `vmbus ring encode` and `vmbus ring decode`: ring files (one 4096-byte control page followed by the
// data area, as one ring sits in guest memory; shared/interop/README.md) written from a packet
// script with the project's RingWriter, byte for byte as DPDK's `dpdk-ringpeer create` + `write`
// make them, and read back with the project's RingReader and packet decoder. The cores
// (`encodeRingScript`, `decodeRingBytes`) are plain functions that the interop tests also call
// in-process; `runRing` is the command.

import { readFileSync, writeFileSync } from 'node:fs';
import { RingError } from '../ring/errors.js';
import {
  MAX_RING_DATA_SIZE,
  RING_CONTROL_SIZE,
  RING_FEATURE_PENDING_SEND_SZ,
  RingMemory,
} from '../ring/memory.js';
import { RingReader } from '../ring/reader.js';
import { RING_WRITE_OK, RingWriter } from '../ring/writer.js';
import { WireError } from '../wire/errors.js';
import { toHex } from '../wire/index.js';
import {
  type DecodedPacket,
  decodePacket,
  type GpaRange,
  packetTypeName,
  VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
} from '../wire/packets.js';
import { CliError, type CliIo, fileError, parseCommandArgs } from './errors.js';
import { parseScript, parseScriptNumber } from './packet-script.js';

const PAGE = 4096;

// ---------------------------------------------------------------------------------------------
// encode

export interface RingEncodeOptions {
  /** Data area size D: a positive multiple of 4096. */
  dataSize: number;
  /** Initial read_index and write_index: a multiple of 8 below D. Default 0. */
  startIndex?: number;
}

/** What `writeRingScript` did: the numbers `dpdk-ringpeer write` prints. */
export interface RingScriptResult {
  /** Packets written. */
  sent: number;
  /** Writes after which the reader had to be signalled (DPDK's per-send `need_sig`). */
  signals: number;
  /** Script line of the packet the ring refused (nothing after it was read), or null. */
  fullAtLine: number | null;
  /** The control page's write_index and read_index afterwards. */
  writeIndex: number;
  readIndex: number;
}

export interface RingEncodeResult extends RingScriptResult {
  /** The whole ring file: control page + data area. */
  bytes: Uint8Array;
}

/**
 * Appends the packets of `script` to `ring` as `dpdk-ringpeer write` does: one commit per packet (so
 * signals count like DPDK's per-send `need_sig`), pending_send_sz never written, and it stops at the
 * first packet the ring refuses, without parsing the lines after it. A malformed line before that is
 * a ScriptError (packets before it stay written); a corrupt read_index or write_index a RingError.
 */
export function writeRingScript(ring: RingMemory, script: string): RingScriptResult {
  const writer = new RingWriter(ring, { autoPendingSendSize: false });
  let sent = 0;
  let signals = 0;
  let fullAtLine: number | null = null;
  for (const cmd of parseScript(script)) {
    const result =
      cmd.verb === 'send'
        ? writer.writePacket(cmd.type, cmd.flags, cmd.transIdLo, cmd.transIdHi, cmd.payload)
        : writer.writeGpaDirect(
            VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
            cmd.transIdLo,
            cmd.transIdHi,
            cmd.ranges,
            cmd.payload,
          );
    // RING_WRITE_FULL and RING_WRITE_TOO_LARGE both mean the ring refused it (DPDK: -EAGAIN).
    if (result !== RING_WRITE_OK) {
      fullAtLine = cmd.line;
      break;
    }
    sent++;
    if (writer.commit()) signals++;
  }
  const c = ring.controlSnapshot();
  return { sent, signals, fullAtLine, writeIndex: c.writeIndex, readIndex: c.readIndex };
}

/**
 * A new ring file holding the packets of `script`, byte for byte what `dpdk-ringpeer create FILE D
 * START` then `dpdk-ringpeer write FILE < script` make: control page zeroed but for feature_bits = 1
 * and both indices at START, then `writeRingScript`. A bad geometry is a RangeError.
 */
export function encodeRingScript(script: string, options: RingEncodeOptions): RingEncodeResult {
  const { dataSize } = options;
  if (
    !Number.isInteger(dataSize) ||
    dataSize < PAGE ||
    dataSize % PAGE !== 0 ||
    dataSize > MAX_RING_DATA_SIZE
  ) {
    throw new RangeError(
      `data size ${dataSize} is not a positive multiple of ${PAGE} up to ${MAX_RING_DATA_SIZE}`,
    );
  }
  const bytes = new Uint8Array(RING_CONTROL_SIZE + dataSize);
  const ring = RingMemory.fromBytes(bytes);
  ring.initialize({ startIndex: options.startIndex ?? 0, featureBits: RING_FEATURE_PENDING_SEND_SZ });
  return { bytes, ...writeRingScript(ring, script) };
}

/** The lines `dpdk-ringpeer write` prints for the same run. */
export function encodeSummaryLines(r: RingScriptResult): string[] {
  const lines: string[] = [];
  if (r.fullAtLine !== null) lines.push(`full at line ${r.fullAtLine}`);
  lines.push(`sent=${r.sent} signals=${r.signals} windex=${r.writeIndex} rindex=${r.readIndex}`);
  return lines;
}

// ---------------------------------------------------------------------------------------------
// decode

export interface RingControlInfo {
  dataSize: number;
  writeIndex: number;
  readIndex: number;
  interruptMask: number;
  pendingSendSize: number;
  featureBits: number;
}

export interface RingPacketInfo {
  /** 0-based position from read_index. */
  index: number;
  /** Ring offset of the descriptor. */
  offset: number;
  type: number;
  flags: number;
  /** offset8 * 8 and len8 * 8, in bytes (the peer's hlen / tlen). */
  hlen: number;
  tlen: number;
  transactionId: bigint;
  /** The packet, descriptor included, trailer excluded (tlen bytes). */
  raw: Uint8Array;
  /** The decoded packet, or null when its body is malformed (see bodyError). */
  decoded: DecodedPacket | null;
  bodyError: string | null;
}

export interface RingDecodeResult {
  control: RingControlInfo;
  packets: RingPacketInfo[];
  /** Where a reader that consumed every packet listed would leave read_index. */
  endIndex: number;
  /** The first problem found (a corrupt index or descriptor stops the walk; a bad body does not). */
  error: string | null;
}

/**
 * Reads every packet between read_index and write_index of the ring file `bytes` without changing
 * it (the reader never commits, and works on a copy when `bytes` is not 4-byte aligned). A file that
 * is not a control page plus a multiple of 4096 bytes is a RingError; everything after the control
 * words is reported in the result, up to the first corrupt index or descriptor.
 */
export function decodeRingBytes(bytes: Uint8Array): RingDecodeResult {
  const ring = RingMemory.fromBytes(bytes.byteOffset % 4 === 0 ? bytes : bytes.slice());
  const s = ring.controlSnapshot();
  const control: RingControlInfo = {
    dataSize: ring.dataSize,
    writeIndex: s.writeIndex,
    readIndex: s.readIndex,
    interruptMask: s.interruptMask,
    pendingSendSize: s.pendingSendSize,
    featureBits: s.featureBits,
  };
  const packets: RingPacketInfo[] = [];
  let error: string | null = null;
  let endIndex = s.readIndex;
  try {
    const reader = new RingReader(ring);
    const p = reader.packet;
    while (reader.next()) {
      const raw = new Uint8Array(p.packetLength);
      p.copyPacket(raw);
      let decoded: DecodedPacket | null = null;
      let bodyError: string | null = null;
      try {
        decoded = decodePacket(raw);
      } catch (e) {
        if (!(e instanceof WireError)) throw e;
        bodyError = e.message;
        error ??= `packet ${packets.length} at ring offset ${p.start}: ${e.message}`;
      }
      packets.push({
        index: packets.length,
        offset: p.start,
        type: p.type,
        flags: p.flags,
        hlen: p.headerLength,
        tlen: p.packetLength,
        transactionId: p.transactionId,
        raw,
        decoded,
        bodyError,
      });
      endIndex = reader.readIndex;
    }
  } catch (e) {
    if (!(e instanceof RingError)) throw e;
    error = e.message;
  }
  return { control, packets, endIndex, error };
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

function rangesJson(ranges: readonly GpaRange[]): unknown[] {
  return ranges.map((r) => ({ byteCount: r.byteCount, byteOffset: r.byteOffset, pfns: r.pfns.map(hex) }));
}

/** The kind-specific fields of a decoded packet, JSON-safe (u64 values and PFNs as "0x..."). */
function bodyJson(d: DecodedPacket): Record<string, unknown> {
  switch (d.kind) {
    case 'inband':
    case 'completion':
      return {};
    case 'gpa-direct':
      return { reserved: d.reserved, rangeCount: d.ranges.length, ranges: rangesJson(d.ranges) };
    case 'transfer-pages':
      return {
        transferPageSetId: d.transferPageSetId,
        senderOwnsSet: d.senderOwnsSet,
        reserved: d.reserved,
        rangeCount: d.ranges.length,
        ranges: d.ranges.map((r) => ({ byteCount: r.byteCount, byteOffset: r.byteOffset })),
      };
    case 'gpadl':
    case 'teardown-gpadl':
      return { gpadl: d.gpadl, reserved: d.reserved };
    case 'add-transfer-page-set':
    case 'remove-transfer-page-set':
      return { gpadl: d.gpadl, transferPageSetId: d.transferPageSetId, reserved: d.reserved };
    case 'establish-gpadl':
      return { gpadl: d.gpadl, rangeCount: d.ranges.length, ranges: rangesJson(d.ranges) };
    case 'additional-data':
      return {
        totalBytes: hex(d.totalBytes),
        dataOffset: d.offset,
        byteCount: d.byteCount,
        data: toHex(d.data),
      };
    case 'other':
    case 'unknown':
      return { extension: toHex(d.extension) };
  }
}

/** `vmbus ring decode --json`: `{control: {...}, packets: [...], endIndex, error?}`. */
export function ringDecodeToJson(r: RingDecodeResult): Record<string, unknown> {
  const packets = r.packets.map((p) => {
    const out: Record<string, unknown> = {
      index: p.index,
      offset: p.offset,
      type: p.type,
      typeName: packetTypeName(p.type),
      flags: p.flags,
      hlen: p.hlen,
      tlen: p.tlen,
      xactid: hex(p.transactionId),
    };
    if (p.decoded !== null) {
      out.kind = p.decoded.kind;
      Object.assign(out, bodyJson(p.decoded));
      out.payload = toHex(p.decoded.payload);
    } else {
      out.bodyError = p.bodyError;
    }
    out.raw = toHex(p.raw);
    return out;
  });
  const json: Record<string, unknown> = { control: { ...r.control }, packets, endIndex: r.endIndex };
  if (r.error !== null) json.error = r.error;
  return json;
}

function rangeLines(ranges: readonly GpaRange[]): string[] {
  return ranges.map((r, i) => {
    const pfns = r.pfns.map(hex).join(',');
    return `  range ${i}: byte_count=${r.byteCount} byte_offset=${r.byteOffset} pfns=${pfns}`;
  });
}

function bodyLines(d: DecodedPacket): string[] {
  switch (d.kind) {
    case 'inband':
    case 'completion':
      return [];
    case 'gpa-direct':
      return [`  reserved=${d.reserved} rangecount=${d.ranges.length}`, ...rangeLines(d.ranges)];
    case 'transfer-pages':
      return [
        `  xfer_pageset_id=${d.transferPageSetId} sender_owns_set=${d.senderOwnsSet} reserved=${d.reserved} range_cnt=${d.ranges.length}`,
        ...d.ranges.map((r, i) => `  range ${i}: byte_count=${r.byteCount} byte_offset=${r.byteOffset}`),
      ];
    case 'gpadl':
    case 'teardown-gpadl':
      return [`  gpadl=${hex(d.gpadl)} reserved=${d.reserved}`];
    case 'add-transfer-page-set':
    case 'remove-transfer-page-set':
      return [`  gpadl=${hex(d.gpadl)} xfer_pageset_id=${d.transferPageSetId} reserved=${d.reserved}`];
    case 'establish-gpadl':
      return [`  gpadl=${hex(d.gpadl)} range_cnt=${d.ranges.length}`, ...rangeLines(d.ranges)];
    case 'additional-data':
      return [
        `  total_bytes=${d.totalBytes} offset=${d.offset} byte_cnt=${d.byteCount}`,
        `  data: ${toHex(d.data)}`,
      ];
    case 'other':
    case 'unknown':
      return d.extension.length > 0 ? [`  extension: ${toHex(d.extension)}`] : [];
  }
}

/** The text form of `vmbus ring decode`. */
export function ringDecodeLines(r: RingDecodeResult): string[] {
  const c = r.control;
  const lines = [
    `ring: data_size=${c.dataSize} write_index=${c.writeIndex} read_index=${c.readIndex} ` +
      `interrupt_mask=${c.interruptMask} pending_send_sz=${c.pendingSendSize} feature_bits=${hex(c.featureBits)}`,
  ];
  for (const p of r.packets) {
    lines.push(
      `pkt ${p.index} at ${p.offset}: type=${hex(p.type)} ${packetTypeName(p.type)} flags=${hex(p.flags)} ` +
        `hlen=${p.hlen} tlen=${p.tlen} xactid=${hex(p.transactionId)}`,
    );
    if (p.decoded !== null) {
      lines.push(...bodyLines(p.decoded));
      const payload = p.decoded.payload;
      lines.push(`  payload (${payload.length} bytes): ${toHex(payload)}`);
    } else {
      lines.push(`  body not decoded: ${p.bodyError}`);
    }
    lines.push(`  raw: ${toHex(p.raw)}`);
  }
  lines.push(`packets=${r.packets.length} end_index=${r.endIndex}`);
  return lines;
}

// ---------------------------------------------------------------------------------------------
// the command

export const RING_USAGE = [
  'vmbus ring encode --data-size BYTES [--start INDEX] --out FILE < SCRIPT',
  'vmbus ring decode FILE [--json]',
];

function optionNumber(name: string, text: string, max: number): number {
  try {
    return Number(parseScriptNumber(text, `--${name}`, BigInt(max)));
  } catch (e) {
    throw new CliError((e as Error).message);
  }
}

async function encodeCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(args, {
    'data-size': { type: 'string' },
    start: { type: 'string' },
    out: { type: 'string' },
  });
  if (positionals.length > 0)
    throw new CliError(`ring encode: unexpected argument ${JSON.stringify(positionals[0])}`);
  const sizeText = values['data-size'];
  const out = values.out;
  if (typeof sizeText !== 'string') throw new CliError('ring encode: --data-size BYTES is required');
  if (typeof out !== 'string' || out === '') throw new CliError('ring encode: --out FILE is required');
  const dataSize = optionNumber('data-size', sizeText, MAX_RING_DATA_SIZE);
  if (dataSize < PAGE || dataSize % PAGE !== 0) {
    throw new CliError(`--data-size ${sizeText} is not a positive multiple of ${PAGE}`);
  }
  const startText = values.start;
  const startIndex = typeof startText === 'string' ? optionNumber('start', startText, dataSize - 8) : 0;
  if (startIndex % 8 !== 0) throw new CliError(`--start ${startText} is not a multiple of 8`);
  const script = await io.readStdin();
  const result = encodeRingScript(script, { dataSize, startIndex });
  try {
    writeFileSync(out, result.bytes);
  } catch (e) {
    throw fileError(out, e);
  }
  io.stdout(`${encodeSummaryLines(result).join('\n')}\n`);
  return 0;
}

function decodeCommand(args: string[], io: CliIo): number {
  const { values, positionals } = parseCommandArgs(args, { json: { type: 'boolean' } });
  if (positionals.length !== 1) throw new CliError('ring decode: expected one FILE');
  const path = positionals[0]!;
  let bytes: Uint8Array;
  try {
    const buf = readFileSync(path);
    bytes = new Uint8Array(buf.length);
    bytes.set(buf);
  } catch (e) {
    throw fileError(path, e);
  }
  let result: RingDecodeResult;
  try {
    result = decodeRingBytes(bytes);
  } catch (e) {
    if (e instanceof RingError) throw new CliError(`${path}: ${e.message}`);
    throw e;
  }
  if (values.json) io.stdout(`${JSON.stringify(ringDecodeToJson(result), null, 2)}\n`);
  else io.stdout(`${ringDecodeLines(result).join('\n')}\n`);
  if (result.error !== null) throw new CliError(`${path}: ${result.error}`);
  return 0;
}

/** `vmbus ring ...`: returns the exit status; bad input is thrown (main reports it). */
export async function runRing(args: string[], io: CliIo): Promise<number> {
  const sub = args[0];
  if (sub === 'encode') return encodeCommand(args.slice(1), io);
  if (sub === 'decode') return decodeCommand(args.slice(1), io);
  throw new CliError(
    sub === undefined
      ? 'ring: expected encode or decode'
      : `ring: unknown subcommand ${JSON.stringify(sub)} (expected encode or decode)`,
  );
}
