// Byte-building helpers for the device tests: hex literals, little-endian fields, concatenation,
// UTF-16LE strings, and a predicate for typed WireErrors.

import { WireError, type WireErrorCode } from '../../src/wire/errors.js';
import { fromHex } from '../../src/wire/index.js';

/** Bytes from hex text (spaces and newlines ignored). */
export function hex(text: string): Uint8Array {
  const b = fromHex(text);
  if (b === undefined) throw new Error(`bad hex in test: ${text}`);
  return b;
}

export function le16(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, (v >>> 8) & 0xff);
}

export function le32(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
}

export function le64(v: bigint): Uint8Array {
  const out = new Uint8Array(8);
  for (let i = 0; i < 8; i++) out[i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return out;
}

export function zeros(n: number): Uint8Array {
  return new Uint8Array(n);
}

export function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** `text` as UTF-16LE in a zero-padded field of `size` bytes. */
export function utf16Field(text: string, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < text.length; i++) {
    out[2 * i] = text.charCodeAt(i) & 0xff;
    out[2 * i + 1] = text.charCodeAt(i) >>> 8;
  }
  return out;
}

/** assert.throws predicate: a WireError with this code (and field, if given). */
export function wireError(code: WireErrorCode, field?: string): (e: unknown) => boolean {
  return (e: unknown) =>
    e instanceof WireError && e.code === code && (field === undefined || e.field === field);
}
