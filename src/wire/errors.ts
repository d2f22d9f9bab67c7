// Typed decoding errors. Every decoder in wire/ (and every validator above it that reads bytes
// from the other partition) reports bad input as a WireError naming the offending field, never as
// an untyped exception or an out-of-bounds read.

/** Why a piece of input was refused. */
export type WireErrorCode =
  | 'truncated' // fewer bytes than the structure needs
  | 'oversized' // more bytes than the structure or transport allows
  | 'out-of-range' // a field's value is outside what the format allows
  | 'inconsistent' // fields disagree with each other (offset8 > len8, counts that overrun, ...)
  | 'unknown-type' // a type/tag number this format does not define
  | 'misaligned'; // a value that must be a multiple of something is not

export class WireError extends Error {
  override readonly name = 'WireError';
  constructor(
    readonly code: WireErrorCode,
    /** The field (or structure.field) that is wrong, as named in the wire spec. */
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

/** Throws a `truncated` WireError unless `have >= need`. */
export function needBytes(field: string, have: number, need: number): void {
  if (have < need) throw new WireError('truncated', field, `needs ${need} bytes, got ${have}`);
}
