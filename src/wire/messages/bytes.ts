// Little-endian field access on plain byte arrays for the channel-message codec: explicit offsets,
// no DataView or other per-call allocation (callers check bounds before reading).

/** A PFN must name a page a 64-bit GPA can address: PFN < 2^52. */
export const PFN_LIMIT = 2 ** 52;

export function readU16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

export function readU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16)) + b[o + 3]! * 0x1000000;
}

export function readU64(b: Uint8Array, o: number): bigint {
  return (BigInt(readU32(b, o + 4)) << 32n) | BigInt(readU32(b, o));
}

/** The u64 at `o` as a number if it is below 2^52, else -1. */
export function readPfnOrMinus1(b: Uint8Array, o: number): number {
  const hi = readU32(b, o + 4);
  if (hi >= 0x100000) return -1;
  return hi * 0x100000000 + readU32(b, o);
}

export function writeU8(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
}

export function writeU16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}

export function writeU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

export function writeU64(b: Uint8Array, o: number, v: bigint): void {
  writeU32(b, o, Number(v & 0xffffffffn));
  writeU32(b, o + 4, Number((v >> 32n) & 0xffffffffn));
}

/** Writes a non-negative integer below 2^53 as a u64. */
export function writeU64Number(b: Uint8Array, o: number, v: number): void {
  const hi = Math.floor(v / 0x100000000);
  writeU32(b, o, v - hi * 0x100000000);
  writeU32(b, o + 4, hi);
}

const HEX = '0123456789abcdef';

export function toHex(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += HEX[bytes[i]! >>> 4]! + HEX[bytes[i]! & 15]!;
  return s;
}

/** Parses an even-length hex string (either case, optional spaces); undefined if malformed. */
export function fromHex(text: string): Uint8Array | undefined {
  const s = text.replace(/\s+/g, '');
  if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) return undefined;
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** A copy of `b[start, end)` as a plain Uint8Array (never a view, never a Node Buffer). */
export function copyBytes(b: Uint8Array, start: number, end: number): Uint8Array {
  const out = new Uint8Array(end - start);
  out.set(b.subarray(start, end));
  return out;
}
