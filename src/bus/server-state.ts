// The VMBus server's state as plain data: numbers, strings, booleans, arrays, Uint8Arrays and
// plain objects only (no class instances, no functions), so it can be structured-cloned, saved and
// later restored. The server (server.ts) keeps exactly one ServerState and derives its lookup
// tables and runtime resources (handlers, grants, hv registrations) from it.

/** Format version of ServerState. */
export const SERVER_STATE_VERSION = 1;

/**
 * Where a channel is, from the bus's point of view:
 * - `unsent`: offered by the upper layer, not (yet) sent to the guest in this connection;
 * - `closed`: the guest has the offer; not open;
 * - `opening`: the guest sent OPENCHANNEL, the upper layer has not answered yet;
 * - `open`: OPENCHANNEL_RESULT(success) sent; rings granted, guest signals routed;
 * - `closing`: the guest closed (or the connection is being reset); the upper layer's onClose runs;
 * - `revoked`: RESCIND_CHANNELOFFER sent; the relid stays taken until RELID_RELEASED.
 */
export type ServerChannelPhase = 'unsent' | 'closed' | 'opening' | 'open' | 'closing' | 'revoked';

/** The offer as sent (OFFERCHANNEL fields the server chooses per channel). */
export interface ServerOfferState {
  /** GUID text. */
  interfaceType: string;
  interfaceInstance: string;
  /** chn_flags as the upper layer asked (bits the negotiated features do not allow are cleared when sent). */
  channelFlags: number;
  mmioMegabytes: number;
  mmioMegabytesOptional: number;
  /** The 120-byte user-defined area, pipe mode included for pipe offers. */
  userDefined: Uint8Array;
  subChannelIndex: number;
}

/** An OPENCHANNEL request as accepted for processing. */
export interface ServerOpenState {
  openId: number;
  ringGpadlId: number;
  targetVp: number;
  downstreamPageOffset: number;
  /** 120 bytes. */
  userData: Uint8Array;
  /** Connection id the guest signals the host on (the offer's, or guest-specified with feature 0x1). */
  connectionId: number;
  /** Event flag the host sets to signal the guest (the relid, or guest-specified with feature 0x1). */
  eventFlag: number;
  /** OpenChannel2 flags (bit 0 redirect_interrupt), 0 for the 148-byte form. */
  flags: number;
}

export interface ServerChannelState {
  /** Unique per server, never reused (handles carry it, so a stale handle cannot hit a new channel). */
  offerId: number;
  relid: number;
  /** The offer's connection id: 0x2000 + relid (OpenVMM's VTL0/SINT2 scheme). */
  connectionId: number;
  offer: ServerOfferState;
  phase: ServerChannelPhase;
  /** The request of the open in progress or in effect (opening, open, closing), else null. */
  open: ServerOpenState | null;
  /** An OPENCHANNEL received while closing: processed once the close completes (OVMM ClosingReopen). */
  reopen: ServerOpenState | null;
  /** Bumped whenever an open in progress is cancelled; an answer for an older value is dropped. */
  openSeq: number;
  /** The upper layer revoked the offer while a connection reset was closing it. */
  revoking: boolean;
}

/**
 * A created GPADL. `tearing-down`: the guest sent GPADL_TEARDOWN; GPADL_TORNDOWN follows once the
 * GPADL is no longer the ring of an open channel, the upper layer's teardown hook has settled and
 * every mapping has been released.
 */
export interface ServerGpadlState {
  gpadlId: number;
  relid: number;
  rangeCount: number;
  /** The raw range list, exactly range_buflen bytes. */
  rangeData: Uint8Array;
  /** The ranges, decoded and validated (PFNs inside guest memory). */
  ranges: { byteCount: number; byteOffset: number; pfns: number[] }[];
  pfnCount: number;
  byteCount: number;
  phase: 'created' | 'tearing-down';
  /** Live mappings (checked grants) taken by the upper layer. */
  mapCount: number;
  /** The upper layer's teardown hook: not called yet, running, or settled. */
  teardownHook: 'none' | 'running' | 'done';
}

/** A GPADL whose header arrived and whose bodies are still coming. */
export interface ServerIncompleteGpadlState {
  gpadlId: number;
  relid: number;
  rangeCount: number;
  /** range_buflen bytes, filled up to `filled`. */
  buf: Uint8Array;
  filled: number;
}

/** An INITIATE_CONTACT as received (kept while an earlier connection is being torn down). */
export interface ServerContactRequest {
  versionRequested: number;
  targetVcpu: number;
  /** Bytes 16-23 as a hex string: interrupt page (< 5.0) or target info (>= 5.0). */
  targetInfo: string;
  msgSint: number;
  msgVtl: number;
  featureFlags: number;
  /** Monitor page GPAs as hex strings. */
  parentToChildMonitorPage: string;
  childToParentMonitorPage: string;
  /** GUID text, or null when the 40-byte form was sent. */
  clientId: string | null;
  /** Arrived on connection id 4 (the >= 5.0 "multiclient" port). */
  multiclient: boolean;
}

export type ServerConnectionState =
  | { kind: 'disconnected' }
  | {
      kind: 'connected';
      version: number;
      /** Negotiated 6.0 feature flags (requested & supported). */
      featureFlags: number;
      /** msg_conn_id sent in VERSION_RESPONSE. */
      msgConnId: number;
      targetVp: number;
      clientId: string;
      /** Hex strings, or null when the guest gave none. */
      monitorPages: { parentToChild: string; childToParent: string } | null;
      interruptPage: string;
      offersSent: boolean;
      paused: boolean;
    }
  | {
      kind: 'disconnecting';
      /** The version of the connection being torn down. */
      version: number;
      /** What to do once everything is released. */
      next: 'unload-response' | 'reconnect' | 'none';
      /** For `reconnect`: the INITIATE_CONTACT to process then. */
      contact: ServerContactRequest | null;
    };

export interface ServerState {
  stateVersion: typeof SERVER_STATE_VERSION;
  nextOfferId: number;
  connection: ServerConnectionState;
  /** Every offered channel, ordered by relid. */
  channels: ServerChannelState[];
  gpadls: ServerGpadlState[];
  incompleteGpadls: ServerIncompleteGpadlState[];
  /** Encoded messages held back while the guest has paused the connection. */
  pendingMessages: Uint8Array[];
  /** Guest messages received while an earlier one waits for the upper layer, in arrival order. */
  inbox: { bytes: Uint8Array; multiclient: boolean }[];
}

export function initialServerState(): ServerState {
  return {
    stateVersion: SERVER_STATE_VERSION,
    nextOfferId: 1,
    connection: { kind: 'disconnected' },
    channels: [],
    gpadls: [],
    incompleteGpadls: [],
    pendingMessages: [],
    inbox: [],
  };
}

/**
 * Throws unless `value` is plain data: primitives, arrays, Uint8Arrays and plain objects all the
 * way down (what ServerState promises). Used by tests and by save paths.
 */
export function assertPlainData(value: unknown, path = 'state'): void {
  if (value === null) return;
  switch (typeof value) {
    case 'number':
    case 'string':
    case 'boolean':
      return;
    case 'object':
      break;
    default:
      throw new TypeError(`${path} is a ${typeof value}, not plain data`);
  }
  if (value instanceof Uint8Array) {
    if (value.constructor !== Uint8Array) throw new TypeError(`${path} is a ${value.constructor.name}`);
    return;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) assertPlainData(value[i], `${path}[${i}]`);
    return;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    throw new TypeError(`${path} is an instance of ${proto?.constructor?.name ?? 'a class'}, not plain data`);
  }
  for (const [k, v] of Object.entries(value)) assertPlainData(v, `${path}.${k}`);
}
