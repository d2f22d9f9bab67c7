// GUIDs as VMBus carries them: 16 bytes in Windows mixed-endian order (Data1 u32 LE, Data2 u16 LE,
// Data3 u16 LE, Data4 8 bytes as-is), with parsing from and formatting to the usual text form.

import { needBytes, WireError } from './errors.js';
import { copyBytes } from './messages/bytes.js';

const TEXT_FORM = /^\{?([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})\}?$/i;
const HEX = '0123456789abcdef';

/** An immutable GUID: `bytes` are the 16 wire bytes (do not modify them). */
export class Guid {
  readonly bytes: Uint8Array;

  private constructor(bytes: Uint8Array) {
    this.bytes = bytes;
  }

  /** The all-zero GUID. */
  static readonly NIL: Guid = new Guid(new Uint8Array(16));

  /** A GUID from 16 wire-order bytes (copied). */
  static fromBytes(bytes: Uint8Array): Guid {
    if (bytes.length !== 16) throw new RangeError(`a GUID has 16 bytes, got ${bytes.length}`);
    return new Guid(copyBytes(bytes, 0, 16));
  }

  /**
   * Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case, optional braces).
   * Bad text is a WireError('out-of-range') naming `field`.
   */
  static parse(text: string, field = 'guid'): Guid {
    const m = typeof text === 'string' ? TEXT_FORM.exec(text) : null;
    if (m === null || text.startsWith('{') !== text.endsWith('}')) {
      throw new WireError('out-of-range', field, `not a GUID: ${JSON.stringify(text)}`);
    }
    const b = new Uint8Array(16);
    const d1 = Number.parseInt(m[1]!, 16);
    const d2 = Number.parseInt(m[2]!, 16);
    const d3 = Number.parseInt(m[3]!, 16);
    b[0] = d1 & 0xff;
    b[1] = (d1 >>> 8) & 0xff;
    b[2] = (d1 >>> 16) & 0xff;
    b[3] = d1 >>> 24;
    b[4] = d2 & 0xff;
    b[5] = d2 >>> 8;
    b[6] = d3 & 0xff;
    b[7] = d3 >>> 8;
    const tail = m[4]! + m[5]!;
    for (let i = 0; i < 8; i++) b[8 + i] = Number.parseInt(tail.slice(2 * i, 2 * i + 2), 16);
    return new Guid(b);
  }

  /** Reads 16 bytes at `offset`; a WireError('truncated') naming `field` if they are not there. */
  static read(bytes: Uint8Array, offset: number, field = 'guid'): Guid {
    if (!Number.isInteger(offset) || offset < 0) throw new RangeError(`Guid.read: bad offset ${offset}`);
    needBytes(field, bytes.length - offset, 16);
    return new Guid(copyBytes(bytes, offset, offset + 16));
  }

  /** Writes the 16 wire bytes at `offset`. */
  write(out: Uint8Array, offset: number): void {
    if (offset < 0 || offset + 16 > out.length) throw new RangeError('GUID does not fit in the output');
    out.set(this.bytes, offset);
  }

  equals(other: Guid): boolean {
    const a = this.bytes;
    const b = other.bytes;
    for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  isNil(): boolean {
    return this.equals(Guid.NIL);
  }

  /** Lower-case `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, no braces. */
  toString(): string {
    const b = this.bytes;
    const h = (i: number) => HEX[b[i]! >>> 4]! + HEX[b[i]! & 15]!;
    return (
      h(3) +
      h(2) +
      h(1) +
      h(0) +
      '-' +
      h(5) +
      h(4) +
      '-' +
      h(7) +
      h(6) +
      '-' +
      h(8) +
      h(9) +
      '-' +
      h(10) +
      h(11) +
      h(12) +
      h(13) +
      h(14) +
      h(15)
    );
  }

  toJSON(): string {
    return this.toString();
  }
}

/** The all-zero GUID. */
export const NIL_GUID = Guid.NIL;

export function parseGuid(text: string, field?: string): Guid {
  return Guid.parse(text, field);
}

export function formatGuid(guid: Guid): string {
  return guid.toString();
}

export function guidEquals(a: Guid, b: Guid): boolean {
  return a.equals(b);
}

export function readGuid(bytes: Uint8Array, offset: number, field?: string): Guid {
  return Guid.read(bytes, offset, field);
}

export function writeGuid(guid: Guid, out: Uint8Array, offset: number): void {
  guid.write(out, offset);
}
