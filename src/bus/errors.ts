// Typed errors of the bus layer. BusProtocolError: a control message from the other partition was
// refused (reported through `onProtocolError`, never thrown out of a message handler). BusError:
// a promise of the bus API could not be kept (the peer refused, the channel was rescinded, the
// connection went away). Contract violations by the API caller are plain Errors / RangeErrors.

/** Why a control message from the other partition was refused. */
export type BusProtocolErrorCode =
  | 'malformed' // the bytes do not decode (cause: a WireError), or fields contradict each other
  | 'unexpected' // a message this side never receives, or one not valid in the current connection state
  | 'wrong-version' // not allowed by the negotiated protocol version or feature flags
  | 'unknown-channel' // names a relid that does not exist (or was released)
  | 'unknown-gpadl' // names a GPADL id that does not exist (or is not in progress)
  | 'duplicate' // a relid, GPADL id, offer or request that already exists
  | 'limit' // exceeds a configured limit (GPADL size, GPADLs in progress, channels)
  | 'invalid' // a field value the protocol does not allow (bad ring GPADL, bad target VP, ...)
  | 'bad-state' // the channel or connection is not in a state where the message is allowed
  | 'unsupported' // a valid message this implementation refuses (reserved channels, VTL != 0)
  | 'send-failed' // posting a reply failed (the hypervisor refused it)
  | 'handler-failed'; // an upper-layer hook threw or rejected while handling the message

export class BusProtocolError extends Error {
  override readonly name = 'BusProtocolError';
  constructor(
    readonly code: BusProtocolErrorCode,
    /** Which side refused the message. */
    readonly side: 'server' | 'client',
    /** The CHANNELMSG type of the refused message, when known. */
    readonly messageType: number | undefined,
    message: string,
    /** The channel the message named, when known. */
    readonly relid?: number,
    /** The GPADL the message named, when known. */
    readonly gpadlId?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Why a bus operation (a promise of the client or server API) failed. */
export type BusErrorCode =
  | 'no-version' // no protocol version was accepted by the host
  | 'connection-failed' // the host accepted the version but reported a connection failure
  | 'not-connected' // the operation needs a connection
  | 'rescinded' // the channel was rescinded while the operation was in flight
  | 'disconnected' // the connection was unloaded or reset while the operation was in flight
  | 'link-closed' // the partition link was closed
  | 'send-failed' // the hypervisor refused to post the request
  | 'disposed'; // the server or client was disposed

export class BusError extends Error {
  override readonly name = 'BusError';
  constructor(
    readonly code: BusErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
