// Typed errors of the ring layer: a ring whose control words or packet descriptors (written by the
// other partition) break the format, or a ring geometry that cannot be used. A reader or writer
// that has seen one stays failed (sticky) until it is re-created.

/** Why a ring was refused. */
export type RingErrorCode =
  | 'bad-index' // read_index / write_index >= data size or not a multiple of 8
  | 'bad-descriptor' // offset8 < 2 or offset8 > len8
  | 'bad-length' // a packet (len8 * 8 + trailer) longer than the readable bytes
  | 'bad-layout' // ring or ring-GPADL geometry (page counts, split offset, sizes)
  | 'bad-memory'; // a page of the ring is not in guest memory

export class RingError extends Error {
  override readonly name = 'RingError';
  constructor(
    readonly code: RingErrorCode,
    /** The field at fault, as named in the wire spec (`write_index`, `vmpacket_descriptor.len8`, ...). */
    readonly field: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${field}: ${message}`, options);
  }
}
