// Typed errors of the KMCL layer. KmclContractViolation: the API caller broke a documented rule
// that the C API reports with no status (use after free, double completion, a blocking call from a
// non-blocking callback, Cleanup of an enabled channel, ...); it is thrown at the call. KmclPeerError:
// the other partition sent something this side refuses (garbage in the ring, a bad external-data
// descriptor, a completion for a transaction that does not exist); it is never thrown at the API
// caller, only logged through the provider's `onPeerError` hook and counted on the channel.

/** Which rule the caller broke. */
export type KmclContractCode =
  | 'blocking-call-in-nonblocking-context'
  | 'call-inside-state-callback'
  | 'use-after-free'
  | 'double-completion'
  | 'bad-handle'
  | 'bad-state'
  | 'bad-argument'
  | 'interface-dereferenced';

export class KmclContractViolation extends Error {
  override readonly name = 'KmclContractViolation';
  constructor(
    readonly code: KmclContractCode,
    /** The API function that detected the violation, e.g. `VmbChannelPacketComplete`. */
    readonly api: string,
    message: string,
  ) {
    super(`${api}: ${message}`);
  }
}

/** Why something from the peer was refused. */
export type KmclPeerErrorCode =
  | 'ring-corrupt' // RingError from the incoming or outgoing ring: the channel's data path stops
  | 'unsupported-packet' // a packet type this endpoint does not accept: packet dropped
  | 'bad-external-data' // a GPA-direct descriptor that is malformed or outside guest RAM: packet dropped
  | 'bad-pipe-header' // pipe mode: a payload without a valid DATA pipe header: packet dropped
  | 'unknown-transaction' // a completion for no outstanding transaction: completion dropped
  | 'oversized'; // a packet or completion larger than this endpoint accepts: dropped

export class KmclPeerError extends Error {
  override readonly name = 'KmclPeerError';
  constructor(
    readonly code: KmclPeerErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
