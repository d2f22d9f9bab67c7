// Packet scripts, the text format of the DPDK interop peer (shared/interop/README.md) that
// `vmbus ring encode` reads: one packet a line, `send TYPE FLAGS XACTID [HEX]` (a packet with no
// descriptor extension, like `rte_vmbus_chan_send`) or `sglist XACTID LEN:OFS:PFN[,...] [HEX]` (a
// GPA-direct packet with one PFN per range, like `rte_vmbus_chan_send_sglist`); numbers in decimal
// or 0x-hex; `#` starts a comment; blank lines are skipped. The parser is strict where the C peer is
// lax (it reports what the peer would silently misread: octal-looking numbers, odd or non-hex
// payloads, extra tokens, out-of-range fields), so every script it accepts means the same to both.

import { align8, type GpaRange, PFN_LIMIT } from '../wire/packets.js';

/** A script line that cannot be used; `line` is 1-based. */
export class ScriptError extends Error {
  override readonly name = 'ScriptError';
  constructor(
    readonly line: number,
    readonly reason: string,
  ) {
    super(`script line ${line}: ${reason}`);
  }
}

interface CommandBase {
  /** 1-based line number in the script. */
  line: number;
  /** Low and high u32 halves of the transaction id. */
  transIdLo: number;
  transIdHi: number;
  payload: Uint8Array;
}

/** `send TYPE FLAGS XACTID HEX`: a packet with offset8 = 2. */
export interface SendCommand extends CommandBase {
  verb: 'send';
  type: number;
  flags: number;
}

/** `sglist XACTID RANGES HEX`: a GPA-direct packet (type 9, flags 1), one PFN per range. */
export interface SglistCommand extends CommandBase {
  verb: 'sglist';
  ranges: GpaRange[];
}

export type ScriptCommand = SendCommand | SglistCommand;

const PAGE = 4096;
/** Largest packet a `vmpacket_descriptor` can frame: len8 is a u16 count of 8-byte units. */
export const MAX_SCRIPT_PACKET_LENGTH = 0xffff * 8;
const U64_MAX = (1n << 64n) - 1n;

/**
 * A number in the script's notation: decimal without leading zeros (the C peer would read `010` as
 * octal) or 0x-hex, at most `max`. Throws a plain Error naming `what`; callers add the line.
 */
export function parseScriptNumber(token: string, what: string, max: bigint): bigint {
  let v: bigint | undefined;
  if (/^0[xX][0-9a-fA-F]+$/.test(token) || /^(0|[1-9][0-9]*)$/.test(token)) v = BigInt(token);
  if (v === undefined) {
    const octal = /^0[0-9]+$/.test(token) ? ' (leading zeros are ambiguous: C reads them as octal)' : '';
    throw new Error(`${what} ${JSON.stringify(token)} is not a decimal or 0x-hex number${octal}`);
  }
  if (v > max)
    throw new Error(`${what} ${token} is above ${max === U64_MAX ? '2^64-1' : `0x${max.toString(16)}`}`);
  return v;
}

function parseHexPayload(token: string | undefined): Uint8Array {
  if (token === undefined) return new Uint8Array(0);
  if (token.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(token)) {
    throw new Error(`payload ${abbreviate(token)} is not an even number of hex digits`);
  }
  const out = new Uint8Array(token.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(token.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function abbreviate(s: string): string {
  return JSON.stringify(s.length > 40 ? `${s.slice(0, 37)}...` : s);
}

function parseRange(token: string, i: number): GpaRange {
  const parts = token.split(':');
  if (parts.length !== 3) throw new Error(`range ${i} ${abbreviate(token)} is not LEN:OFS:PFN`);
  const byteCount = Number(parseScriptNumber(parts[0]!, `range ${i} LEN`, 0xffffffffn));
  const byteOffset = Number(parseScriptNumber(parts[1]!, `range ${i} OFS`, BigInt(PAGE - 1)));
  const pfn = Number(parseScriptNumber(parts[2]!, `range ${i} PFN`, BigInt(PFN_LIMIT - 1)));
  if (byteCount === 0) throw new Error(`range ${i} has LEN 0`);
  if (byteOffset + byteCount > PAGE) {
    throw new Error(`range ${i} (OFS ${byteOffset} + LEN ${byteCount}) does not lie in its one page`);
  }
  return { byteCount, byteOffset, pfns: [pfn] };
}

/** Descriptor + extension + payload, padded to 8 (the trailer not counted). */
export function scriptPacketLength(cmd: ScriptCommand): number {
  const header = cmd.verb === 'send' ? 16 : 24 + 16 * cmd.ranges.length;
  return align8(header + cmd.payload.length);
}

/**
 * Parses one line (`lineNumber` is 1-based, for errors). Returns null for a blank or comment-only
 * line; throws ScriptError for anything else that is not a well-formed command.
 */
export function parseScriptLine(text: string, lineNumber: number): ScriptCommand | null {
  const hash = text.indexOf('#');
  const body = (hash < 0 ? text : text.slice(0, hash)).trim();
  if (body === '') return null;
  const tokens = body.split(/\s+/);
  const verb = tokens[0]!;
  try {
    let cmd: ScriptCommand;
    if (verb === 'send') {
      if (tokens.length < 4 || tokens.length > 5) {
        throw new Error(`send takes TYPE FLAGS XACTID [HEX], got ${tokens.length - 1} fields`);
      }
      const type = Number(parseScriptNumber(tokens[1]!, 'TYPE', 0xffffn));
      const flags = Number(parseScriptNumber(tokens[2]!, 'FLAGS', 0xffffn));
      const id = parseScriptNumber(tokens[3]!, 'XACTID', U64_MAX);
      cmd = {
        verb,
        line: lineNumber,
        type,
        flags,
        transIdLo: Number(id & 0xffffffffn),
        transIdHi: Number(id >> 32n),
        payload: parseHexPayload(tokens[4]),
      };
    } else if (verb === 'sglist') {
      if (tokens.length < 3 || tokens.length > 4) {
        throw new Error(`sglist takes XACTID RANGES [HEX], got ${tokens.length - 1} fields`);
      }
      const id = parseScriptNumber(tokens[1]!, 'XACTID', U64_MAX);
      const ranges = tokens[2]!.split(',').map(parseRange);
      cmd = {
        verb,
        line: lineNumber,
        transIdLo: Number(id & 0xffffffffn),
        transIdHi: Number(id >> 32n),
        ranges,
        payload: parseHexPayload(tokens[3]),
      };
    } else {
      throw new Error(`unknown verb ${abbreviate(verb)} (expected send or sglist)`);
    }
    const length = scriptPacketLength(cmd);
    if (length > MAX_SCRIPT_PACKET_LENGTH) {
      throw new Error(
        `a packet of ${length} bytes is longer than len8 can describe (${MAX_SCRIPT_PACKET_LENGTH})`,
      );
    }
    return cmd;
  } catch (e) {
    throw new ScriptError(lineNumber, (e as Error).message);
  }
}

/**
 * The commands of a script, parsed one line at a time as they are consumed (a writer that stops at
 * a full ring never parses the rest, as the C peer never reads it).
 */
export function* parseScript(text: string): Generator<ScriptCommand, void, undefined> {
  const lines = text.split('\n');
  // A final newline does not start another line.
  const count = lines.length > 0 && lines[lines.length - 1] === '' ? lines.length - 1 : lines.length;
  for (let i = 0; i < count; i++) {
    const cmd = parseScriptLine(lines[i]!, i + 1);
    if (cmd !== null) yield cmd;
  }
}

function hexOf(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

/** The script line for a command (parseScriptLine(formatScriptCommand(c)) gives c back). */
export function formatScriptCommand(cmd: ScriptCommand): string {
  const id = `0x${((BigInt(cmd.transIdHi) << 32n) | BigInt(cmd.transIdLo)).toString(16)}`;
  const payload = cmd.payload.length > 0 ? ` ${hexOf(cmd.payload)}` : '';
  if (cmd.verb === 'send') return `send ${cmd.type} ${cmd.flags} ${id}${payload}`;
  const ranges = cmd.ranges.map((r) => `${r.byteCount}:${r.byteOffset}:0x${r.pfns[0]!.toString(16)}`);
  return `sglist ${id} ${ranges.join(',')}${payload}`;
}
