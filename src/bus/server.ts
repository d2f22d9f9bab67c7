// The host's VMBus server for one guest partition: the channel-management state machine on the
// host's side of the partition's hv link (spec/vmbus-wire.md sections 3, 4 and 6). It negotiates
// the protocol version, sends offers (and hot adds / rescinds them), reassembles and validates
// GPADLs, opens and closes channels with the upper layer's consent, handles unload, modify,
// pause/resume and hv_sock connect requests, and routes each open channel's signals.
//
// Upper-layer API (the KMCL server side is written against this):
//
//   const server = new VmbusServer(partition.host, partition.memory, options);
//   const handle = server.offerChannel(params, handler);   // -> { relid, connectionId, offerId }
//   await server.revokeOffer(handle);                      // RESCIND; resolves on RELID_RELEASED
//   server.signalGuest(handle);                            // sets the channel's event flag (hot path)
//   server.getGpadl(handle, gpadlId) / server.gpadls(handle)     // PFN list + ranges
//   const mdl = server.mapGpadl(handle, gpadlId, { readOnly });  // checked grant (GrantedMdl)
//   server.unmapGpadl(handle, gpadlId, mdl);               // a pending teardown waits for this
//   server.onProtocolError(e => ...); server.onConnect(...); server.onDisconnect(...);
//
// The handler (ServerChannelHandler) is asked to accept each open (`onOpen`, whose status -
// possibly later, through a promise - becomes OPENCHANNEL_RESULT), is told of closes (`onClose`,
// awaited before the channel counts as closed), receives the guest's signals (`onGuestSignal`),
// GPADL creation and teardown (`onGpadlCreated`, `onGpadlTeardown`, awaited before
// GPADL_TORNDOWN), MODIFYCHANNEL (`onModify`) and the release of a revoked relid (`onReleased`).
// After revokeOffer only `onReleased` is called: the upper layer revoked, it cleans up itself.
//
// Guest messages are handled strictly one at a time, in order: one whose handling waits for a
// hook holds the later ones (see `receive`), so replies never depend on how deliveries batch.
//
// Choices where the spec leaves room (documented per OpenVMM unless noted):
// - Versions: all 11 of spec 3.5 by default (configurable). INITIATE_CONTACT is accepted on
//   connection id 1 and on 4 (the server listens on 4 only if it supports a version >= 5.0); as
//   in OpenVMM, msg_sint/msg_vtl are honoured only for >= 5.0 / >= 5.1 requests that arrived on
//   4, a < 5.0 request on 4 is handled like one on 1 and a >= 5.0 request on 1 is answered on
//   SINT 2. A SINT other than 2 or a VTL other than 0 gets "unsupported" (on the requested
//   SINT for a bad SINT). msg_conn_id is 1 for >= 5.0 and echoes the version below 5.0.
//   An INITIATE_CONTACT while connected resets the connection (like UNLOAD, without the
//   response) and then negotiates.
// - 6.0 feature flags supported by default: 0x01 guest-specified signal parameters, 0x04 modify
//   connection, 0x08 client id, 0x20 pause/resume; the reply carries requested & supported.
// - Offers: relids from 1 (lowest free), connection id 0x2000 + relid, monitor id 0xFF / not
//   allocated (no MNF), is_dedicated_interrupt 1; offer flag bits 0x2/0x4/0x8 are cleared since
//   confidential channels and GPA pinning are not negotiated. Offers go out in relid order.
// - GPADL ids must be unique per connection (in progress or created, any channel). Any refused
//   header or body whose GPADL id is known is answered with GPADL_CREATED(0x8000FFFF); a body for
//   an id not in progress is dropped. GPADL_TEARDOWN of the ring of a channel that is opening,
//   open or closing is deferred until the channel is closed (OpenVMM keeps the GPADL while the
//   device still maps it); on a revoked channel it is answered at once.
// - OPENCHANNEL on a revoked channel is ignored (logged), as OpenVMM and Hyper-V do; on an open
//   channel it is dropped (logged); while closing it is kept and processed after the close.
// - OPEN_RESERVED_CHANNEL / CLOSE_RESERVED_CHANNEL are refused (dropped, 'unsupported').
// - Host-to-guest signalling is the per-channel event flag (= relid) for every version; the
//   < 2.4 interrupt page is not simulated.
// - UNLOAD: open channels are closed (onClose awaited), every GPADL is released (teardown hook
//   awaited, grants revoked), revoked channels are freed, offers are kept for the next connection;
//   then UNLOAD_RESPONSE (not sent for 0.13, which has no such message).

import type { HvHostEnd, HvMessage } from '../hv/end.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { type GrantedMdl, HostMemoryView, type MemoryGrant } from '../memory/host-view.js';
import { chainMdls, type Mdl } from '../memory/mdl.js';
import { RingError } from '../ring/errors.js';
import { type ChannelRings, channelRingsFromGpadl } from '../ring/memory.js';
import {
  CHANNEL_MESSAGE_INFO,
  CHANNELMSG_ALLOFFERS_DELIVERED,
  CHANNELMSG_CLOSE_RESERVED_CHANNEL,
  CHANNELMSG_CLOSECHANNEL,
  CHANNELMSG_GPADL_BODY,
  CHANNELMSG_GPADL_CREATED,
  CHANNELMSG_GPADL_HEADER,
  CHANNELMSG_GPADL_TEARDOWN,
  CHANNELMSG_GPADL_TORNDOWN,
  CHANNELMSG_INITIATE_CONTACT,
  CHANNELMSG_MODIFY_CONNECTION,
  CHANNELMSG_MODIFY_CONNECTION_RESPONSE,
  CHANNELMSG_MODIFYCHANNEL,
  CHANNELMSG_MODIFYCHANNEL_RESPONSE,
  CHANNELMSG_OFFERCHANNEL,
  CHANNELMSG_OPEN_RESERVED_CHANNEL,
  CHANNELMSG_OPENCHANNEL,
  CHANNELMSG_OPENCHANNEL_RESULT,
  CHANNELMSG_PAUSE,
  CHANNELMSG_PAUSE_RESPONSE,
  CHANNELMSG_RELID_RELEASED,
  CHANNELMSG_REQUESTOFFERS,
  CHANNELMSG_RESCIND_CHANNELOFFER,
  CHANNELMSG_RESUME,
  CHANNELMSG_TL_CONNECT_REQUEST,
  CHANNELMSG_TL_CONNECT_RESULT,
  CHANNELMSG_UNLOAD,
  CHANNELMSG_UNLOAD_RESPONSE,
  CHANNELMSG_VERSION_RESPONSE,
  channelMessageName,
  MAX_PIPE_USER_DEFINED_BYTES,
  MAX_USER_DEFINED_BYTES,
  messageAllowed,
  PAGE_SIZE,
  VERSION_WIN7,
  VERSION_WIN8,
  VERSION_WIN8_1,
  VERSION_WIN10_V4_1,
  VERSION_WIN10_V5,
  VERSION_WIN10_V5_1,
  VERSION_WIN10_V5_3,
  VERSION_WIN10_V6_0,
  VMBUS_CHANNEL_CONFIDENTIAL_EXTERNAL_MEMORY,
  VMBUS_CHANNEL_CONFIDENTIAL_RING_BUFFER,
  VMBUS_CHANNEL_NAMED_PIPE_MODE,
  VMBUS_CHANNEL_REQUIRE_PINNED_EXTERNAL_MEMORY,
  VMBUS_CONNECTION_STATE_FAILED_UNKNOWN_FAILURE,
  VMBUS_CONNECTION_STATE_SUCCESSFUL,
  VMBUS_FEATURE_FLAG_CLIENT_ID,
  VMBUS_FEATURE_FLAG_GUEST_SPECIFIED_SIGNAL_PARAMETERS,
  VMBUS_FEATURE_FLAG_MODIFY_CONNECTION,
  VMBUS_FEATURE_FLAG_PAUSE_RESUME,
  VMBUS_MESSAGE_CONNECTION_ID,
  VMBUS_MESSAGE_CONNECTION_ID_4,
  VMBUS_MESSAGE_SINT,
  VMBUS_NO_MONITOR_ID,
  VMBUS_PIPE_TYPE_BYTE,
  VMBUS_PIPE_TYPE_MESSAGE,
  VMBUS_STATUS_CONNECTION_REFUSED,
  VMBUS_STATUS_SUCCESS,
  VMBUS_STATUS_UNSUCCESSFUL,
  VMBUS_VERSIONS,
  VMBUS_VP_INDEX_DISABLE_INTERRUPT,
} from '../wire/constants.js';
import { WireError } from '../wire/errors.js';
import { decodeGpaRanges, scanGpaRanges } from '../wire/gpadl.js';
import { Guid } from '../wire/guid.js';
import {
  type ChannelMessage,
  decodeMessage,
  encodeMessage,
  type GpadlHeaderMessage,
  type InitiateContactMessage,
  type ModifyChannelMessage,
  type OpenChannelMessage,
  type TlConnectRequestMessage,
} from '../wire/messages.js';
import type { GpaRange } from '../wire/packets.js';
import { BusError, BusProtocolError, type BusProtocolErrorCode } from './errors.js';
import { Listeners, rethrowLater, type Unsubscribe } from './events.js';
import { BusSavedStateError } from './saved-state.js';
import {
  initialServerState,
  type ServerChannelPhase,
  type ServerChannelState,
  type ServerContactRequest,
  type ServerGpadlState,
  type ServerIncompleteGpadlState,
  type ServerOpenState,
  type ServerState,
} from './server-state.js';
import type { BusTracer } from './trace.js';

/** 6.0 feature flags this server implements (and offers by default). */
export const SERVER_SUPPORTED_FEATURE_FLAGS =
  VMBUS_FEATURE_FLAG_GUEST_SPECIFIED_SIGNAL_PARAMETERS |
  VMBUS_FEATURE_FLAG_MODIFY_CONNECTION |
  VMBUS_FEATURE_FLAG_CLIENT_ID |
  VMBUS_FEATURE_FLAG_PAUSE_RESUME;

/** OpenVMM's per-channel connection id for VTL0 / SINT 2: 0x2000 + relid. */
export const SERVER_CONNECTION_ID_BASE = 0x2000;
/** Relids are event flags (0..2047) and 0 is never a relid: at most 2047 channels. */
export const MAX_RELID = 2047;

/** Limits on what one guest may make the server hold for GPADLs. */
export interface ServerGpadlLimits {
  /** Most ranges in one GPADL (default 8190, what a u16 range_buflen can hold). */
  maxRanges: number;
  /** Most PFNs in one GPADL (default 262,144; the u16 range_buflen caps it at 8190 anyway). */
  maxPfns: number;
  /** Most bytes one GPADL may describe (default 1 GiB). */
  maxBytes: number;
  /** Most GPADLs in progress (header received, bodies pending) at once (default 64). */
  maxInProgress: number;
  /** Most created GPADLs per connection (default 16,384). */
  maxGpadls: number;
}

export const DEFAULT_SERVER_GPADL_LIMITS: Readonly<ServerGpadlLimits> = Object.freeze({
  maxRanges: 8190,
  maxPfns: 262_144,
  maxBytes: 1024 * 1024 * 1024,
  maxInProgress: 64,
  maxGpadls: 16_384,
});

/** What an hv_sock connect request asks for. */
export interface TlConnectRequest {
  readonly endpointId: Guid;
  readonly serviceId: Guid;
  /** The 5.2+ form's silo id, null for the 40-byte form. */
  readonly siloId: Guid | null;
}

export interface VmbusServerOptions {
  /** Protocol versions accepted (default: all 11 of spec 3.5). */
  readonly versions?: readonly number[];
  /** 6.0 feature flags offered (default SERVER_SUPPORTED_FEATURE_FLAGS; bits outside it are ignored). */
  readonly featureFlags?: number;
  readonly gpadlLimits?: Partial<ServerGpadlLimits>;
  /** Most channels offered at once (default and maximum 2047). */
  readonly maxChannels?: number;
  /** Virtual processors of the guest: OPENCHANNEL/MODIFYCHANNEL target_vp must be below (default 64). */
  readonly vpCount?: number;
  /** The host's checked view of this partition's memory (default: a new one). */
  readonly hostView?: HostMemoryView;
  /** Receives every message posted and accepted for processing. */
  readonly tracer?: BusTracer;
  /**
   * An hv_sock TL_CONNECT_REQUEST: return (or resolve to) true after offering the connection's
   * channel; otherwise the server answers STATUS_CONNECTION_REFUSED (>= 4.1).
   */
  readonly onTlConnectRequest?: (request: TlConnectRequest) => boolean | Promise<boolean>;
}

/** What the upper layer offers. */
export interface ServerOfferParams {
  readonly interfaceType: Guid;
  readonly interfaceInstance: Guid;
  /** Offer chn_flags (VMBUS_CHANNEL_*); NAMED_PIPE_MODE is added for pipe offers. Default 0. */
  readonly flags?: number;
  readonly mmioMegabytes?: number;
  readonly mmioMegabytesOptional?: number;
  /**
   * The user-defined area: up to 120 bytes, or up to 116 for pipe offers (they follow the u32
   * pipe mode). Zero-padded.
   */
  readonly userDefined?: Uint8Array;
  /** A pipe offer: NAMED_PIPE_MODE, user-defined area starting with pipe_mode (0 byte, 4 message). */
  readonly pipeMode?: 'byte' | 'message';
  /** 0 for a primary channel; 1.. for a subchannel of the offered primary with the same GUIDs. */
  readonly subChannelIndex?: number;
}

/** Names an offered channel. Plain data; stale handles (revoked and released) are refused. */
export interface ServerChannelHandle {
  readonly offerId: number;
  readonly relid: number;
  /** The connection id the guest signals the channel on (the offer's). */
  readonly connectionId: number;
}

/** An OPENCHANNEL the upper layer is asked to accept. */
export interface ServerOpenRequest {
  readonly handle: ServerChannelHandle;
  readonly openId: number;
  readonly ringGpadlId: number;
  /** VP to interrupt, or 0xFFFFFFFF (`interruptsDisabled`). */
  readonly targetVp: number;
  readonly interruptsDisabled: boolean;
  /** Page offset of the host-to-guest ring in the ring GPADL. */
  readonly downstreamPageOffset: number;
  /** OPENCHANNEL user data, 120 bytes. */
  readonly userData: Uint8Array;
  /** The ring GPADL's pages: [0, downstreamPageOffset) guest-to-host, the rest host-to-guest. */
  readonly ringPfns: readonly number[];
  /** Both rings over guest memory, geometry validated. */
  readonly rings: ChannelRings;
  /** The host's writable grant over the ring pages; revoked when the channel closes. */
  readonly ringGrant: MemoryGrant;
  /** Connection id the guest signals on; event flag the host sets. */
  readonly connectionId: number;
  readonly eventFlag: number;
  /** OpenChannel2 flags (0 for the 148-byte form). */
  readonly flags: number;
}

/** Why an open channel is being closed. */
export type ServerCloseReason = 'close' | 'unload' | 'reconnect' | 'dispose';

/** A created GPADL as the upper layer sees it. */
export interface ServerGpadlInfo {
  readonly gpadlId: number;
  readonly relid: number;
  readonly ranges: readonly GpaRange[];
  readonly pfnCount: number;
  readonly byteCount: number;
}

/** The upper layer's side of one offered channel. Hooks may return promises; the bus waits. */
export interface ServerChannelHandler {
  /** The guest opens the channel: resolve to 0 to accept, or a failure status (sent as is). */
  onOpen(request: ServerOpenRequest): number | Promise<number>;
  /** The open channel is closed (guest close, unload, reconnect, dispose). */
  onClose(reason: ServerCloseReason): void | Promise<void>;
  /** The guest signalled the channel (its HvSignalEvent on the channel's connection id). */
  onGuestSignal?(): void;
  /** The guest created a GPADL on the channel. */
  onGpadlCreated?(gpadl: ServerGpadlInfo): void;
  /**
   * A GPADL is going away: `teardown` (the guest asked; GPADL_TORNDOWN waits for this and for
   * every mapping to be released) or `release` (unload / reset; grants are revoked afterwards).
   */
  onGpadlTeardown?(gpadl: ServerGpadlInfo, reason: 'teardown' | 'release'): void | Promise<void>;
  /** MODIFYCHANNEL: resolve to a status (default: accept). */
  onModify?(targetVp: number): number | Promise<number>;
  /** The guest released the relid of the revoked channel (or the connection went away). */
  onReleased?(): void;
}

/** A successful version negotiation. */
export interface ServerConnectInfo {
  readonly version: number;
  readonly featureFlags: number;
  readonly msgConnId: number;
}

export type ServerDisconnectReason = 'unload' | 'reconnect';

interface RevokeWaiter {
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** A message whose handling continues asynchronously returns its completion (the inbox waits). */
type Pending = Promise<unknown> | undefined;

function hex64(v: bigint): string {
  return `0x${v.toString(16)}`;
}

function isSentPhase(phase: ServerChannelPhase): boolean {
  return phase === 'closed' || phase === 'opening' || phase === 'open' || phase === 'closing';
}

/** A u32 status from whatever an upper-layer hook returned (NTSTATUS as i32 works too). */
function toStatus(value: unknown): number {
  return typeof value === 'number' && Number.isInteger(value) && value >= -0x80000000 && value <= 0xffffffff
    ? value >>> 0
    : VMBUS_STATUS_UNSUCCESSFUL;
}

/** The server's limits and versions, from its options (checked). */
interface ServerConfig {
  readonly versions: readonly number[];
  readonly supportedFeatureFlags: number;
  readonly gpadlLimits: Readonly<ServerGpadlLimits>;
  readonly maxChannels: number;
  readonly vpCount: number;
}

function serverConfig(options: VmbusServerOptions): ServerConfig {
  const versions = options.versions ?? VMBUS_VERSIONS.map((v) => v.value);
  for (const v of versions) {
    if (!VMBUS_VERSIONS.some((k) => k.value === v)) {
      throw new RangeError(`VmbusServer: 0x${v.toString(16)} is not a VMBus protocol version`);
    }
  }
  const maxChannels = options.maxChannels ?? MAX_RELID;
  if (!Number.isInteger(maxChannels) || maxChannels < 1 || maxChannels > MAX_RELID) {
    throw new RangeError(`VmbusServer: maxChannels must be 1..${MAX_RELID}`);
  }
  return {
    versions: Object.freeze([...versions]),
    supportedFeatureFlags:
      (options.featureFlags ?? SERVER_SUPPORTED_FEATURE_FLAGS) & SERVER_SUPPORTED_FEATURE_FLAGS,
    gpadlLimits: Object.freeze({ ...DEFAULT_SERVER_GPADL_LIMITS, ...options.gpadlLimits }),
    maxChannels,
    vpCount: options.vpCount ?? 64,
  };
}

/**
 * Everything a restored state must satisfy beyond its shape (saved-state.ts checks that): that it
 * fits this server's options and this partition's memory. Returns the rings of each open
 * channel; throws BusSavedStateError('shape' or 'memory').
 */
function checkRestoredState(
  st: ServerState,
  memory: GuestMemory,
  cfg: ServerConfig,
): Map<number, ChannelRings> {
  const bad = (code: 'shape' | 'memory', why: string): never => {
    throw new BusSavedStateError(code, `saved server state does not fit: ${why}`);
  };
  const conn = st.connection;
  if (conn.kind === 'disconnecting') bad('shape', 'the connection was being torn down');
  if (conn.kind === 'connected') {
    if (!cfg.versions.includes(conn.version))
      bad('shape', `version 0x${conn.version.toString(16)} is not accepted`);
    if ((conn.featureFlags & ~cfg.supportedFeatureFlags) !== 0) bad('shape', 'feature flags not supported');
  }
  if (st.channels.length > cfg.maxChannels) bad('shape', 'more channels than allowed');
  if (st.gpadls.length > cfg.gpadlLimits.maxGpadls) bad('shape', 'more GPADLs than allowed');
  if (st.incompleteGpadls.length > cfg.gpadlLimits.maxInProgress) bad('shape', 'too many GPADLs in progress');
  let lastRelid = 0;
  for (const c of st.channels) {
    const where = `channel ${c.relid}`;
    if (c.relid <= lastRelid || c.relid > MAX_RELID)
      bad('shape', `${where}: relids must ascend within 1..${MAX_RELID}`);
    lastRelid = c.relid;
    if (c.connectionId !== SERVER_CONNECTION_ID_BASE + c.relid) bad('shape', `${where}: connection id`);
    if (c.phase === 'opening' || c.phase === 'closing' || c.reopen !== null || c.revoking)
      bad('shape', `${where} was ${c.phase} (only a quiescent server is saved)`);
    if (conn.kind !== 'connected' && c.phase !== 'unsent')
      bad('shape', `${where} is ${c.phase} without a connection`);
    if (conn.kind === 'connected' && !conn.offersSent && c.phase !== 'unsent')
      bad('shape', `${where} is ${c.phase} before offers were sent`);
    try {
      Guid.parse(c.offer.interfaceType);
      Guid.parse(c.offer.interfaceInstance);
    } catch {
      bad('shape', `${where}: interface GUIDs`);
    }
    if (c.offer.userDefined.length !== MAX_USER_DEFINED_BYTES) bad('shape', `${where}: user-defined area`);
    for (const [name, v] of [
      ['channelFlags', c.offer.channelFlags],
      ['mmioMegabytes', c.offer.mmioMegabytes],
      ['mmioMegabytesOptional', c.offer.mmioMegabytesOptional],
      ['subChannelIndex', c.offer.subChannelIndex],
    ] as const) {
      if (v > 0xffff) bad('shape', `${where}: ${name} is not a u16`);
    }
  }
  const pages = memory.pageCount;
  const gpadls = new Map<number, ServerGpadlState>();
  for (const g of st.gpadls) {
    const where = `GPADL ${g.gpadlId}`;
    if (g.gpadlId === 0) bad('shape', 'GPADL id 0');
    if (g.teardownHook === 'running') bad('shape', `${where}: its teardown hook was running`);
    if (g.rangeCount === 0 || g.rangeCount > cfg.gpadlLimits.maxRanges) bad('shape', `${where}: range count`);
    if (g.pfnCount > cfg.gpadlLimits.maxPfns || g.byteCount > cfg.gpadlLimits.maxBytes)
      bad('shape', `${where}: larger than allowed`);
    let bytes = 0;
    for (const r of g.ranges) {
      if (r.byteCount === 0 || r.byteOffset >= PAGE_SIZE) bad('shape', `${where}: a range's offset or size`);
      if (r.pfns.length !== Math.ceil((r.byteOffset + r.byteCount) / PAGE_SIZE))
        bad('shape', `${where}: a range's PFN count does not match its size`);
      for (const pfn of r.pfns)
        if (pfn >= pages) bad('memory', `${where}: PFN ${pfn} is outside guest memory`);
      bytes += r.byteCount;
    }
    if (bytes !== g.byteCount) bad('shape', `${where}: byte count`);
    if (g.phase === 'created' && g.mapCount > 0 && g.teardownHook !== 'none')
      bad('shape', `${where}: created but its teardown ran`);
    gpadls.set(g.gpadlId, g);
  }
  for (const inc of st.incompleteGpadls) {
    if (inc.gpadlId === 0 || inc.rangeCount === 0 || inc.rangeCount > cfg.gpadlLimits.maxRanges)
      bad('shape', `GPADL ${inc.gpadlId} in progress`);
    if (inc.buf.length > 0xffff) bad('shape', `GPADL ${inc.gpadlId} in progress: range buffer`);
  }
  const rings = new Map<number, ChannelRings>();
  const connectionIds = new Set<number>();
  for (const c of st.channels) {
    if (c.phase !== 'open') continue;
    const o = c.open!;
    const where = `open channel ${c.relid}`;
    const g = gpadls.get(o.ringGpadlId);
    if (g === undefined || g.relid !== c.relid)
      bad('shape', `${where}: ring GPADL ${o.ringGpadlId} is not its own`);
    const r = g!.ranges[0]!;
    if (g!.rangeCount !== 1 || r.byteOffset !== 0 || r.byteCount !== r.pfns.length * PAGE_SIZE)
      bad('shape', `${where}: the ring GPADL is not one range of whole pages`);
    if (o.eventFlag === 0 || o.eventFlag > MAX_RELID) bad('shape', `${where}: event flag ${o.eventFlag}`);
    if (o.connectionId <= 4 || o.connectionId > 0xffffff || connectionIds.has(o.connectionId))
      bad('shape', `${where}: connection id 0x${o.connectionId.toString(16)}`);
    connectionIds.add(o.connectionId);
    if (o.userData.length !== MAX_USER_DEFINED_BYTES) bad('shape', `${where}: user data`);
    try {
      rings.set(c.offerId, channelRingsFromGpadl(memory, r.pfns, o.downstreamPageOffset));
    } catch (error) {
      if (!(error instanceof RingError) && !(error instanceof RangeError)) throw error;
      bad('memory', `${where}: ${(error as Error).message}`);
    }
  }
  return rings;
}

export class VmbusServer {
  readonly link: HvHostEnd;
  readonly memory: GuestMemory;
  readonly hostView: HostMemoryView;
  readonly versions: readonly number[];
  readonly supportedFeatureFlags: number;
  readonly gpadlLimits: Readonly<ServerGpadlLimits>;
  readonly maxChannels: number;
  readonly vpCount: number;
  private readonly tracer: BusTracer | undefined;
  private readonly tlConnectHook: VmbusServerOptions['onTlConnectRequest'];

  private readonly st: ServerState = initialServerState();
  // Lookup tables over `st` (rebuilt from it on restore) and runtime resources.
  private readonly byRelid = new Map<number, ServerChannelState>();
  private readonly gpadlById = new Map<number, ServerGpadlState>();
  private readonly incompleteById = new Map<number, ServerIncompleteGpadlState>();
  private readonly handlers = new Map<number, ServerChannelHandler>();
  // Keyed by offerId (relids are reused once released).
  private readonly ringGrants = new Map<number, MemoryGrant>();
  private readonly openRings = new Map<number, ChannelRings>();
  private readonly pendingOpens = new Map<number, Promise<number>>();
  private readonly closing = new Map<number, Promise<void>>();
  private readonly revokeWaiters = new Map<number, RevokeWaiter[]>();
  private readonly mappings = new Map<number, Set<GrantedMdl>>();
  private readonly signalRoutes = new Map<number, number>(); // offerId -> registered connection id
  private disposed = false;
  /** A message's handling is waiting for the upper layer; later ones wait in st.inbox. */
  private busy = false;
  /**
   * Servicing: restored channels no upper layer has claimed yet (offerId -> whether the guest
   * signalled meanwhile). Non-null from VmbusServer.restore until finishRestore.
   */
  private unclaimed: Map<number, boolean> | null = null;
  /** Servicing: mappings the previous instance held on GPADLs being torn down (gpadlId -> count). */
  private readonly restoredMapCounts = new Map<number, number>();

  private readonly protocolErrors = new Listeners<BusProtocolError>((e) => this.handlerError(e));
  private readonly connectListeners = new Listeners<ServerConnectInfo>((e) => this.handlerError(e));
  private readonly disconnectListeners = new Listeners<ServerDisconnectReason>((e) => this.handlerError(e));
  private readonly handlerErrors = new Listeners<unknown>((e) => rethrowLater(e));

  private readonly onMessage1 = (m: HvMessage): void => this.receive(m, false);
  private readonly onMessage4 = (m: HvMessage): void => this.receive(m, true);

  constructor(link: HvHostEnd, memory: GuestMemory, options?: VmbusServerOptions);
  /** @internal VmbusServer.restore */
  constructor(link: HvHostEnd, memory: GuestMemory, options: VmbusServerOptions, restored: ServerState);
  constructor(
    link: HvHostEnd,
    memory: GuestMemory,
    options: VmbusServerOptions = {},
    restored: ServerState | null = null,
  ) {
    this.link = link;
    this.memory = memory;
    this.hostView = options.hostView ?? new HostMemoryView(memory);
    if (this.hostView.memory !== memory) throw new Error('VmbusServer: hostView is over another memory');
    const config = serverConfig(options);
    this.versions = config.versions;
    this.supportedFeatureFlags = config.supportedFeatureFlags;
    this.gpadlLimits = config.gpadlLimits;
    this.maxChannels = config.maxChannels;
    this.vpCount = config.vpCount;
    this.tracer = options.tracer;
    this.tlConnectHook = options.onTlConnectRequest;
    if (restored !== null) {
      // Checked completely before anything is registered on the link.
      const rings = checkRestoredState(restored, memory, config);
      this.adoptRestoredState(restored, rings);
    }
    link.onMessage(VMBUS_MESSAGE_CONNECTION_ID, this.onMessage1);
    if (this.versions.some((v) => v >= VERSION_WIN10_V5)) {
      link.onMessage(VMBUS_MESSAGE_CONNECTION_ID_4, this.onMessage4);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Public API

  /** The whole state, plain data (read-only: do not modify). */
  get state(): Readonly<ServerState> {
    return this.st;
  }

  get connected(): boolean {
    return this.st.connection.kind === 'connected';
  }

  /**
   * Servicing: a deep copy of the whole state (encode it with saved-state.ts), or the reason it
   * cannot be taken now. Only a quiescent server can be saved: no guest message waiting for the
   * upper layer, no open or close in progress, no GPADL teardown hook running, not disconnecting,
   * no message to the guest waiting for queue space. Restore with VmbusServer.restore.
   */
  saveState(): { ok: true; state: ServerState } | { ok: false; reason: string } {
    const st = this.st;
    if (this.disposed) return { ok: false, reason: 'the server was disposed' };
    if (this.unclaimed !== null) return { ok: false, reason: 'the server is still being restored' };
    if (this.busy || st.inbox.length > 0) return { ok: false, reason: 'a guest message is being handled' };
    if (this.link.pendingPosts > 0)
      return { ok: false, reason: 'messages to the guest still wait for queue space' };
    if (st.connection.kind === 'disconnecting')
      return { ok: false, reason: 'the connection is being torn down' };
    if (this.pendingOpens.size > 0 || this.closing.size > 0)
      return { ok: false, reason: 'an open or close is in progress' };
    for (const c of st.channels) {
      if (c.phase === 'opening' || c.phase === 'closing' || c.reopen !== null)
        return { ok: false, reason: `channel ${c.relid} is ${c.phase}` };
    }
    for (const g of st.gpadls) {
      if (g.teardownHook === 'running') return { ok: false, reason: `GPADL ${g.gpadlId} is being torn down` };
    }
    return { ok: true, state: structuredClone(st) };
  }

  /**
   * Servicing: a server for the same guest partition rebuilt from a saved state (from saveState,
   * typically through encode/decodeServerSavedState) in a new host instance, over a host end that
   * took over the link (`attachHvHost(descriptor, { resume })`). The state is checked against this
   * partition's memory and the limits first; a state that does not fit throws BusSavedStateError
   * and leaves the link untouched. The guest sees nothing: no message is sent.
   *
   * The restored server holds every guest message and signal until `finishRestore()`. In between,
   * the upper layer claims its channels (`claimChannel`) and re-takes its GPADL mappings; at
   * finishRestore the channels nobody claimed are rescinded (as OpenVMM does).
   */
  static restore(
    link: HvHostEnd,
    memory: GuestMemory,
    state: ServerState,
    options: VmbusServerOptions = {},
  ): VmbusServer {
    const server = new VmbusServer(link, memory, options, structuredClone(state));
    return server;
  }

  /**
   * Servicing: whether a saved state would be accepted by VmbusServer.restore over `memory` with
   * these options, without touching anything. Throws the BusSavedStateError restore would throw.
   */
  static checkRestorable(memory: GuestMemory, state: ServerState, options: VmbusServerOptions = {}): void {
    checkRestoredState(state, memory, serverConfig(options));
  }

  /** Whether the server is between VmbusServer.restore and finishRestore. */
  get restoring(): boolean {
    return this.unclaimed !== null;
  }

  /**
   * Servicing: the upper layer takes over a restored channel (by interface type, instance and
   * subchannel index) with its handler. Returns the channel's handle, or null if no unclaimed
   * restored channel matches. A signal the guest sent while the channel was unclaimed is
   * delivered to the handler's onGuestSignal right after.
   */
  claimChannel(
    match: { interfaceType: Guid; interfaceInstance: Guid; subChannelIndex?: number },
    handler: ServerChannelHandler,
  ): ServerChannelHandle | null {
    this.checkNotDisposed();
    const unclaimed = this.unclaimed;
    if (unclaimed === null) return null;
    if (handler === null || typeof handler !== 'object' || typeof handler.onOpen !== 'function') {
      throw new TypeError('claimChannel: the handler needs at least onOpen and onClose');
    }
    if (typeof handler.onClose !== 'function') throw new TypeError('claimChannel: the handler needs onClose');
    const type = match.interfaceType.toString();
    const instance = match.interfaceInstance.toString();
    const index = match.subChannelIndex ?? 0;
    const ch = this.st.channels.find(
      (c) =>
        unclaimed.has(c.offerId) &&
        c.offer.interfaceType === type &&
        c.offer.interfaceInstance === instance &&
        c.offer.subChannelIndex === index,
    );
    if (ch === undefined) return null;
    const signalled = unclaimed.get(ch.offerId)!;
    unclaimed.delete(ch.offerId);
    this.handlers.set(ch.offerId, handler);
    if (ch.phase === 'open') {
      const onSignal = handler.onGuestSignal?.bind(handler) ?? (() => {});
      this.link.onEvent(ch.open!.connectionId, onSignal);
      if (signalled) queueMicrotask(() => (this.byRelid.get(ch.relid) === ch ? onSignal() : undefined));
    }
    return this.handleOf(ch);
  }

  /** Servicing: restored channels that no upper layer has claimed yet. */
  unclaimedChannels(): ServerChannelHandle[] {
    const unclaimed = this.unclaimed;
    if (unclaimed === null) return [];
    return this.st.channels.filter((c) => unclaimed.has(c.offerId)).map((c) => this.handleOf(c));
  }

  /**
   * Servicing: ends the restore. Channels nobody claimed are rescinded (the returned promise
   * resolves when the guest has released them, or at once if nothing was rescinded), ports the
   * previous host end had and nobody uses any more are dropped, GPADL teardowns that waited for
   * the previous instance's unmaps go on, and the guest messages that arrived meanwhile are
   * handled in order.
   */
  finishRestore(): Promise<void> {
    this.checkNotDisposed();
    const unclaimed = this.unclaimed;
    if (unclaimed === null) return Promise.resolve();
    this.unclaimed = null;
    const revokes: Promise<void>[] = [];
    for (const ch of [...this.st.channels]) {
      if (!unclaimed.has(ch.offerId)) continue;
      revokes.push(this.revokeOffer(this.handleOf(ch)).catch(() => undefined));
    }
    this.link.dropUnclaimedPorts();
    this.restoredMapCounts.clear();
    for (const g of [...this.st.gpadls]) if (g.phase === 'tearing-down') this.continueTeardown(g);
    this.busy = false;
    this.drainInbox();
    return Promise.all(revokes).then(() => undefined);
  }

  /**
   * Servicing: after saveState (and after the host end was detached), this instance stops for
   * good WITHOUT telling the guest or the upper layer anything: no close, no rescind, no
   * teardown. Its own grants end (they belong to this host instance); everything the guest sees
   * stays as saved, for the restored instance to take over.
   */
  handOff(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const set of this.mappings.values()) for (const m of set) m.revoke();
    this.mappings.clear();
    for (const grant of this.ringGrants.values()) grant.revoke();
    this.ringGrants.clear();
    this.openRings.clear();
    this.signalRoutes.clear();
    this.handlers.clear();
    const error = new BusError('disposed', 'the VMBus server was handed off for servicing');
    for (const list of this.revokeWaiters.values()) for (const w of list) w.reject(error);
    this.revokeWaiters.clear();
  }

  /** The negotiated version, or null when not connected. */
  get version(): number | null {
    const c = this.st.connection;
    return c.kind === 'connected' ? c.version : null;
  }

  get featureFlags(): number {
    const c = this.st.connection;
    return c.kind === 'connected' ? c.featureFlags : 0;
  }

  onProtocolError(listener: (error: BusProtocolError) => void): Unsubscribe {
    return this.protocolErrors.add(listener);
  }

  onConnect(listener: (info: ServerConnectInfo) => void): Unsubscribe {
    return this.connectListeners.add(listener);
  }

  onDisconnect(listener: (reason: ServerDisconnectReason) => void): Unsubscribe {
    return this.disconnectListeners.add(listener);
  }

  /** Errors thrown by the upper layer's hooks and listeners (default: rethrown asynchronously). */
  onHandlerError(listener: (error: unknown) => void): Unsubscribe {
    return this.handlerErrors.add(listener);
  }

  /**
   * Offers a channel. It is sent to the guest at once if the guest has requested offers, else
   * with the next REQUESTOFFERS. Throws for malformed parameters, a duplicate (type, instance,
   * subchannel index), a subchannel without its primary, or too many channels.
   */
  offerChannel(params: ServerOfferParams, handler: ServerChannelHandler): ServerChannelHandle {
    this.checkNotDisposed();
    if (handler === null || typeof handler !== 'object' || typeof handler.onOpen !== 'function') {
      throw new TypeError('offerChannel: the handler needs at least onOpen and onClose');
    }
    if (typeof handler.onClose !== 'function') throw new TypeError('offerChannel: the handler needs onClose');
    if (!(params.interfaceType instanceof Guid) || !(params.interfaceInstance instanceof Guid)) {
      throw new TypeError('offerChannel: interfaceType and interfaceInstance must be Guids');
    }
    const u16 = (name: string, v: number | undefined): number => {
      const x = v ?? 0;
      if (!Number.isInteger(x) || x < 0 || x > 0xffff)
        throw new RangeError(`offerChannel: ${name} must be a u16`);
      return x;
    };
    let flags = u16('flags', params.flags);
    const mmioMegabytes = u16('mmioMegabytes', params.mmioMegabytes);
    const mmioMegabytesOptional = u16('mmioMegabytesOptional', params.mmioMegabytesOptional);
    const subChannelIndex = u16('subChannelIndex', params.subChannelIndex);
    const userDefined = new Uint8Array(MAX_USER_DEFINED_BYTES);
    const user = params.userDefined ?? new Uint8Array(0);
    if (!(user instanceof Uint8Array)) throw new TypeError('offerChannel: userDefined must be a Uint8Array');
    if (params.pipeMode !== undefined) {
      if (params.pipeMode !== 'byte' && params.pipeMode !== 'message') {
        throw new RangeError(`offerChannel: pipeMode must be 'byte' or 'message'`);
      }
      if (user.length > MAX_PIPE_USER_DEFINED_BYTES) {
        throw new RangeError(
          `offerChannel: a pipe offer has ${MAX_PIPE_USER_DEFINED_BYTES} user-defined bytes`,
        );
      }
      flags |= VMBUS_CHANNEL_NAMED_PIPE_MODE;
      const mode = params.pipeMode === 'message' ? VMBUS_PIPE_TYPE_MESSAGE : VMBUS_PIPE_TYPE_BYTE;
      new DataView(userDefined.buffer).setUint32(0, mode, true);
      userDefined.set(user, 4);
    } else {
      if (user.length > MAX_USER_DEFINED_BYTES) {
        throw new RangeError(`offerChannel: userDefined holds at most ${MAX_USER_DEFINED_BYTES} bytes`);
      }
      userDefined.set(user);
    }
    const interfaceType = params.interfaceType.toString();
    const interfaceInstance = params.interfaceInstance.toString();
    const live = this.st.channels.filter((c) => c.phase !== 'revoked' && !c.revoking);
    const same = live.filter(
      (c) => c.offer.interfaceType === interfaceType && c.offer.interfaceInstance === interfaceInstance,
    );
    if (same.some((c) => c.offer.subChannelIndex === subChannelIndex)) {
      throw new Error(
        `offerChannel: ${interfaceType}/${interfaceInstance} subchannel ${subChannelIndex} is already offered`,
      );
    }
    if (subChannelIndex !== 0 && !same.some((c) => c.offer.subChannelIndex === 0)) {
      throw new Error(`offerChannel: subchannel ${subChannelIndex} needs its primary offered first`);
    }
    if (this.st.channels.length >= this.maxChannels) {
      throw new Error(`offerChannel: ${this.maxChannels} channels are already offered`);
    }
    let relid = 1;
    while (this.byRelid.has(relid)) relid++;
    const ch: ServerChannelState = {
      offerId: this.st.nextOfferId++,
      relid,
      connectionId: SERVER_CONNECTION_ID_BASE + relid,
      offer: {
        interfaceType,
        interfaceInstance,
        channelFlags: flags,
        mmioMegabytes,
        mmioMegabytesOptional,
        userDefined,
        subChannelIndex,
      },
      phase: 'unsent',
      open: null,
      reopen: null,
      openSeq: 0,
      revoking: false,
    };
    const index = this.st.channels.findIndex((c) => c.relid > relid);
    if (index < 0) this.st.channels.push(ch);
    else this.st.channels.splice(index, 0, ch);
    this.byRelid.set(relid, ch);
    this.handlers.set(ch.offerId, handler);
    const conn = this.st.connection;
    if (conn.kind === 'connected' && conn.offersSent) this.sendOffer(ch);
    return this.handleOf(ch);
  }

  /**
   * Rescinds an offer. Not sent to the guest (or no connection): removed at once. Otherwise
   * RESCIND_CHANNELOFFER is sent, an open channel stops (rings and signals released, no onClose)
   * and the promise resolves when the guest sends RELID_RELEASED (or the connection goes away).
   */
  revokeOffer(handle: ServerChannelHandle): Promise<void> {
    this.checkNotDisposed();
    const ch = this.channelOf(handle);
    const waiters = this.revokeWaiters.get(ch.offerId);
    if (ch.phase === 'revoked' || ch.revoking) {
      return new Promise((resolve, reject) => waiters!.push({ resolve, reject }));
    }
    const promise = new Promise<void>((resolve, reject) => {
      this.revokeWaiters.set(ch.offerId, [{ resolve, reject }]);
    });
    const conn = this.st.connection;
    if (conn.kind === 'disconnecting' && ch.phase !== 'unsent') {
      // The reset closing it finishes first; the channel is removed then.
      ch.revoking = true;
      return promise;
    }
    if (!isSentPhase(ch.phase)) {
      this.removeChannel(ch);
      return promise;
    }
    this.stopChannel(ch);
    ch.phase = 'revoked';
    ch.reopen = null;
    this.send({ type: CHANNELMSG_RESCIND_CHANNELOFFER, childRelid: ch.relid });
    return promise;
  }

  /**
   * Signals the guest: sets the open channel's event flag. Returns false (and does nothing) when
   * the channel is not open. Allocates nothing.
   */
  signalGuest(handle: ServerChannelHandle): boolean {
    const ch = this.byRelid.get(handle.relid);
    if (ch === undefined || ch.offerId !== handle.offerId || ch.phase !== 'open') return false;
    return this.link.trySetEventFlag(ch.open!.eventFlag) === 0;
  }

  /** The channel's phase, or null if the handle is stale. */
  channelPhase(handle: ServerChannelHandle): ServerChannelPhase | null {
    const ch = this.byRelid.get(handle.relid);
    return ch !== undefined && ch.offerId === handle.offerId ? ch.phase : null;
  }

  /** Handles of every offered channel, in relid order. */
  channels(): ServerChannelHandle[] {
    return this.st.channels.map((c) => this.handleOf(c));
  }

  /** The open request in effect (opening, open, closing), or null. */
  openRequest(handle: ServerChannelHandle): Readonly<ServerOpenState> | null {
    return this.channelOf(handle).open;
  }

  /** The rings of an open (or opening/closing) channel, or null. */
  rings(handle: ServerChannelHandle): ChannelRings | null {
    const ch = this.channelOf(handle);
    return this.openRings.get(ch.offerId) ?? null;
  }

  /** A created GPADL of the channel (also while tearing down), or null. */
  getGpadl(handle: ServerChannelHandle, gpadlId: number): ServerGpadlInfo | null {
    const ch = this.channelOf(handle);
    const g = this.gpadlById.get(gpadlId);
    return g !== undefined && g.relid === ch.relid ? this.gpadlInfo(g) : null;
  }

  /** Every created GPADL of the channel. */
  gpadls(handle: ServerChannelHandle): ServerGpadlInfo[] {
    const ch = this.channelOf(handle);
    return this.st.gpadls.filter((g) => g.relid === ch.relid).map((g) => this.gpadlInfo(g));
  }

  /**
   * Maps a created GPADL: a checked grant over its ranges (offset 0 = the first range's first
   * byte). A guest's teardown waits until every mapping is released with unmapGpadl; a forced
   * release (unload, rescind) revokes them. Throws if the GPADL does not exist or is being torn down.
   */
  mapGpadl(handle: ServerChannelHandle, gpadlId: number, options: { readOnly?: boolean } = {}): GrantedMdl {
    const ch = this.channelOf(handle);
    const g = this.gpadlById.get(gpadlId);
    if (g === undefined || g.relid !== ch.relid) {
      throw new Error(`mapGpadl: channel ${ch.relid} has no GPADL ${gpadlId}`);
    }
    if (g.phase !== 'created') {
      // Servicing: the restored upper layer re-takes a mapping its previous instance held.
      const held = this.unclaimed !== null ? (this.restoredMapCounts.get(gpadlId) ?? 0) : 0;
      if (held === 0) throw new Error(`mapGpadl: GPADL ${gpadlId} is being torn down`);
      this.restoredMapCounts.set(gpadlId, held - 1);
    }
    const mdls: Mdl[] = g.ranges.map((r) => ({
      byteOffset: r.byteOffset,
      byteCount: r.byteCount,
      pfns: r.pfns,
    }));
    const mdl = this.hostView.grantMdl(chainMdls(mdls), {
      readOnly: options.readOnly === true,
      label: `GPADL ${gpadlId} of channel ${ch.relid}`,
    });
    let set = this.mappings.get(gpadlId);
    if (set === undefined) {
      set = new Set();
      this.mappings.set(gpadlId, set);
    }
    set.add(mdl);
    g.mapCount = set.size;
    return mdl;
  }

  /** Releases a mapping from mapGpadl (revokes its grant). Idempotent. */
  unmapGpadl(handle: ServerChannelHandle, gpadlId: number, mapping: GrantedMdl): void {
    this.channelOf(handle);
    const set = this.mappings.get(gpadlId);
    mapping.revoke();
    if (set === undefined || !set.delete(mapping)) return;
    const g = this.gpadlById.get(gpadlId);
    if (g === undefined) return;
    g.mapCount = set.size;
    if (g.phase === 'tearing-down') this.continueTeardown(g);
  }

  /**
   * Stops listening on the link. Open channels are closed (onClose('dispose')), grants revoked,
   * pending revokes rejected. The state stays readable.
   */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.link.onMessage(VMBUS_MESSAGE_CONNECTION_ID, null);
    if (this.versions.some((v) => v >= VERSION_WIN10_V5))
      this.link.onMessage(VMBUS_MESSAGE_CONNECTION_ID_4, null);
    const waits: Promise<void>[] = [];
    for (const ch of this.st.channels) {
      if (ch.phase === 'open') {
        const handler = this.handlers.get(ch.offerId)!;
        this.stopChannel(ch);
        ch.phase = 'closed';
        waits.push(this.callHook(() => handler.onClose('dispose'), undefined, ch.relid));
      }
    }
    await Promise.all(waits);
    for (const set of this.mappings.values()) for (const m of set) m.revoke();
    this.mappings.clear();
    for (const ch of this.st.channels) this.releaseRing(ch.offerId);
    const error = new BusError('disposed', 'the VMBus server was disposed');
    for (const list of this.revokeWaiters.values()) for (const w of list) w.reject(error);
    this.revokeWaiters.clear();
  }

  // ------------------------------------------------------------------------------------------
  // Servicing: rebuilding from a saved state

  /** Takes a checked saved state as this server's own (see restore). Registers nothing yet on the link but signals. */
  private adoptRestoredState(st: ServerState, rings: Map<number, ChannelRings>): void {
    Object.assign(this.st, st);
    this.unclaimed = new Map();
    this.busy = true; // guest messages wait in st.inbox until finishRestore
    const unclaimedHandler: ServerChannelHandler = {
      onOpen: () => VMBUS_STATUS_UNSUCCESSFUL,
      onClose: () => {},
    };
    for (const g of this.st.gpadls) {
      this.gpadlById.set(g.gpadlId, g);
      // Mappings belonged to the previous instance; the upper layer re-takes the ones it keeps.
      if (g.phase === 'tearing-down' && g.mapCount > 0) this.restoredMapCounts.set(g.gpadlId, g.mapCount);
      g.mapCount = 0;
    }
    for (const inc of this.st.incompleteGpadls) this.incompleteById.set(inc.gpadlId, inc);
    for (const ch of this.st.channels) {
      this.byRelid.set(ch.relid, ch);
      this.handlers.set(ch.offerId, unclaimedHandler);
      // A rescind sent by the previous instance: whoever revokes again waits for RELID_RELEASED.
      if (ch.phase === 'revoked') this.revokeWaiters.set(ch.offerId, []);
      this.unclaimed.set(ch.offerId, false);
      const r = rings.get(ch.offerId);
      if (r === undefined) continue;
      const g = this.gpadlById.get(ch.open!.ringGpadlId)!;
      this.ringGrants.set(
        ch.offerId,
        this.hostView.grant(g.ranges[0]!.pfns, { label: `ring of channel ${ch.relid}` }),
      );
      this.openRings.set(ch.offerId, r);
      const offerId = ch.offerId;
      const unclaimed = this.unclaimed;
      this.link.onEvent(ch.open!.connectionId, () => {
        if (unclaimed.has(offerId)) unclaimed.set(offerId, true);
      });
      this.signalRoutes.set(offerId, ch.open!.connectionId);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Receiving

  /**
   * Guest messages are handled one at a time, in arrival order. One whose handling waits for the
   * upper layer (open, close, modify, unload, reconnect, hv_sock connect) holds the ones after it
   * until it completes, so replies go out in the guest's order whatever way the transport
   * batches deliveries (and both transports give the same trace).
   */
  private receive(m: HvMessage, multiclient: boolean): void {
    if (this.disposed) return;
    if (this.busy || this.st.inbox.length > 0) {
      this.st.inbox.push({ bytes: m.data.slice(0, m.length), multiclient });
      return;
    }
    this.process(m.data, m.length, multiclient);
  }

  private process(data: Uint8Array, length: number, multiclient: boolean): void {
    let pending: Pending;
    try {
      pending = this.receiveBytes(data, length, multiclient);
    } catch (error) {
      // Every expected failure is reported where it happens; this is a bug in a hook or here.
      this.handlerError(error);
      return;
    }
    if (pending === undefined) return;
    this.busy = true;
    pending
      .catch((error: unknown) => this.handlerError(error))
      .then(() => {
        this.busy = false;
        this.drainInbox();
      });
  }

  private drainInbox(): void {
    const inbox = this.st.inbox;
    while (!this.busy && !this.disposed && inbox.length > 0) {
      const next = inbox.shift()!;
      this.process(next.bytes, next.bytes.length, next.multiclient);
    }
  }

  private receiveBytes(data: Uint8Array, length: number, multiclient: boolean): Pending {
    if (this.disposed) return;
    if (length >= 8 && data[0] === CHANNELMSG_GPADL_BODY && data[1] === 0 && data[2] === 0 && data[3] === 0) {
      // The bulk of a large GPADL: parsed in place, copied with one TypedArray.set.
      if (this.tracer !== undefined) this.traceIn(data, length);
      if (!this.gate(CHANNELMSG_GPADL_BODY)) return;
      this.handleGpadlBody(data, length);
      return;
    }
    let msg: ChannelMessage;
    try {
      msg = decodeMessage(data.slice(0, length));
    } catch (error) {
      if (!(error instanceof WireError)) throw error;
      const type = length >= 4 ? new DataView(data.buffer, data.byteOffset).getUint32(0, true) : undefined;
      this.protocolError(
        'malformed',
        type,
        `undecodable message: ${error.message}`,
        undefined,
        undefined,
        error,
      );
      return;
    }
    this.tracer?.('in', msg);
    if (!this.gate(msg.type)) return;
    return this.dispatch(msg, multiclient);
  }

  private traceIn(data: Uint8Array, length: number): void {
    try {
      this.tracer!('in', decodeMessage(data.slice(0, length)));
    } catch (error) {
      if (!(error instanceof WireError)) throw error;
      // Refused below with the same reason.
    }
  }

  /** Whether a message of `type` may be processed now; reports why not. */
  private gate(type: number): boolean {
    const info = CHANNEL_MESSAGE_INFO[type];
    if (info === undefined || info.direction !== 'guest-to-host') {
      this.protocolError(
        'unexpected',
        type,
        `${channelMessageName(type) ?? `type ${type}`} is not sent by guests`,
      );
      return false;
    }
    if (type === CHANNELMSG_INITIATE_CONTACT) return true;
    const conn = this.st.connection;
    if (conn.kind === 'disconnecting') {
      if (type === CHANNELMSG_UNLOAD) return true;
      this.protocolError('bad-state', type, `${info.name} while the connection is being torn down`);
      return false;
    }
    if (conn.kind === 'disconnected') {
      this.protocolError('unexpected', type, `${info.name} before INITIATE_CONTACT`);
      return false;
    }
    if (conn.paused && type !== CHANNELMSG_RESUME && type !== CHANNELMSG_UNLOAD) {
      this.protocolError('bad-state', type, `${info.name} while the connection is paused`);
      return false;
    }
    if (!messageAllowed(type, conn.version, conn.featureFlags)) {
      this.protocolError(
        'wrong-version',
        type,
        `${info.name} is not part of the negotiated protocol (version 0x${conn.version.toString(16)}, features 0x${conn.featureFlags.toString(16)})`,
      );
      return false;
    }
    return true;
  }

  private dispatch(msg: ChannelMessage, multiclient: boolean): Pending {
    switch (msg.type) {
      case CHANNELMSG_INITIATE_CONTACT:
        return this.handleInitiateContact(msg, multiclient);
      case CHANNELMSG_REQUESTOFFERS: {
        this.handleRequestOffers();
        return;
      }
      case CHANNELMSG_GPADL_HEADER: {
        this.handleGpadlHeader(msg);
        return;
      }
      case CHANNELMSG_GPADL_TEARDOWN: {
        this.handleGpadlTeardown(msg.childRelid, msg.gpadl);
        return;
      }
      case CHANNELMSG_OPENCHANNEL:
        return this.handleOpenChannel(msg);
      case CHANNELMSG_CLOSECHANNEL:
        return this.handleCloseChannel(msg.childRelid);
      case CHANNELMSG_RELID_RELEASED: {
        this.handleRelidReleased(msg.childRelid);
        return;
      }
      case CHANNELMSG_UNLOAD:
        return this.handleUnload();
      case CHANNELMSG_MODIFYCHANNEL:
        return this.handleModifyChannel(msg);
      case CHANNELMSG_TL_CONNECT_REQUEST:
        return this.handleTlConnect(msg);
      case CHANNELMSG_MODIFY_CONNECTION: {
        const conn = this.st.connection;
        if (conn.kind !== 'connected') return;
        conn.monitorPages =
          msg.parentToChildMonitorGpa === 0n
            ? null
            : {
                parentToChild: hex64(msg.parentToChildMonitorGpa),
                childToParent: hex64(msg.childToParentMonitorGpa),
              };
        this.send({
          type: CHANNELMSG_MODIFY_CONNECTION_RESPONSE,
          connectionState: VMBUS_CONNECTION_STATE_SUCCESSFUL,
        });
        return;
      }
      case CHANNELMSG_PAUSE: {
        this.handlePause();
        return;
      }
      case CHANNELMSG_RESUME: {
        this.handleResume();
        return;
      }
      case CHANNELMSG_OPEN_RESERVED_CHANNEL:
      case CHANNELMSG_CLOSE_RESERVED_CHANNEL:
        this.protocolError('unsupported', msg.type, 'reserved channels are not supported', msg.childRelid);
        return;
      default:
        // gate() lets only guest-to-host types through, all handled above (GPADL_BODY has its own path).
        this.protocolError('unexpected', msg.type, `${channelMessageName(msg.type)} is not handled`);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Connection

  private handleInitiateContact(msg: InitiateContactMessage, multiclient: boolean): Pending {
    const contact: ServerContactRequest = {
      versionRequested: msg.vmbusVersionRequested,
      targetVcpu: msg.targetVcpu,
      targetInfo: hex64(msg.interruptPage ?? 0n),
      msgSint: msg.msgSint ?? 0,
      msgVtl: msg.msgVtl ?? 0,
      featureFlags: msg.featureFlags ?? 0,
      parentToChildMonitorPage: hex64(msg.monitorPage1),
      childToParentMonitorPage: hex64(msg.monitorPage2),
      clientId: msg.form === 'InitiateContact2' ? msg.clientId.toString() : null,
      multiclient,
    };
    const conn = this.st.connection;
    if (conn.kind === 'disconnecting') {
      conn.next = 'reconnect';
      conn.contact = contact;
      return;
    }
    if (conn.kind === 'connected') return this.disconnect('reconnect', contact);
    this.negotiate(contact);
  }

  private negotiate(c: ServerContactRequest): void {
    const version = c.versionRequested;
    const sint = c.multiclient && version >= VERSION_WIN10_V5 ? c.msgSint : VMBUS_MESSAGE_SINT;
    const vtl = c.multiclient && version >= VERSION_WIN10_V5_1 ? c.msgVtl : 0;
    const requested = version >= VERSION_WIN10_V6_0 ? c.featureFlags : 0;
    const unsupported = (why: string, toSint = VMBUS_MESSAGE_SINT): void => {
      this.protocolError('unsupported', CHANNELMSG_INITIATE_CONTACT, why);
      this.send(
        {
          type: CHANNELMSG_VERSION_RESPONSE,
          form: 'VersionResponse',
          versionSupported: 0,
          connectionState: 0,
          msgConnId: 0,
        },
        toSint,
      );
    };
    if (sint !== VMBUS_MESSAGE_SINT) {
      if (sint < 16) unsupported(`messages on SINT ${sint} are not supported`, sint);
      else this.protocolError('invalid', CHANNELMSG_INITIATE_CONTACT, `msg_sint ${sint} is not a SINT`);
      return;
    }
    if (vtl !== 0) {
      unsupported(`VTL ${vtl} has no VMBus server here`);
      return;
    }
    if (!this.versions.includes(version)) {
      // The normal way a guest finds the version: not a protocol error, just "not supported".
      this.send({
        type: CHANNELMSG_VERSION_RESPONSE,
        form: 'VersionResponse',
        versionSupported: 0,
        connectionState: 0,
        msgConnId: 0,
      });
      return;
    }
    const featureFlags = requested & this.supportedFeatureFlags;
    if ((featureFlags & VMBUS_FEATURE_FLAG_CLIENT_ID) !== 0 && c.clientId === null) {
      this.protocolError(
        'malformed',
        CHANNELMSG_INITIATE_CONTACT,
        'feature client_id needs the 56-byte InitiateContact2',
      );
      return;
    }
    const msgConnId = version >= VERSION_WIN10_V5 ? VMBUS_MESSAGE_CONNECTION_ID : version;
    if ((c.parentToChildMonitorPage === '0x0') !== (c.childToParentMonitorPage === '0x0')) {
      this.protocolError('invalid', CHANNELMSG_INITIATE_CONTACT, 'exactly one monitor page given');
      if (version >= VERSION_WIN8) {
        this.sendVersionResponse(
          version,
          featureFlags,
          VMBUS_CONNECTION_STATE_FAILED_UNKNOWN_FAILURE,
          msgConnId,
        );
      } else {
        unsupported('exactly one monitor page given (pre-Win8 cannot report the failure)');
      }
      return;
    }
    this.st.connection = {
      kind: 'connected',
      version,
      featureFlags,
      msgConnId,
      targetVp: version >= VERSION_WIN8_1 ? c.targetVcpu : 0,
      clientId: (featureFlags & VMBUS_FEATURE_FLAG_CLIENT_ID) !== 0 ? c.clientId! : Guid.NIL.toString(),
      monitorPages:
        c.parentToChildMonitorPage === '0x0'
          ? null
          : { parentToChild: c.parentToChildMonitorPage, childToParent: c.childToParentMonitorPage },
      interruptPage: version < VERSION_WIN8 ? c.targetInfo : '0x0',
      offersSent: false,
      paused: false,
    };
    this.sendVersionResponse(version, featureFlags, VMBUS_CONNECTION_STATE_SUCCESSFUL, msgConnId);
    this.connectListeners.emit({ version, featureFlags, msgConnId });
  }

  private sendVersionResponse(version: number, features: number, state: number, msgConnId: number): void {
    if (version >= VERSION_WIN10_V6_0) {
      this.send({
        type: CHANNELMSG_VERSION_RESPONSE,
        form: 'VersionResponse2',
        versionSupported: 1,
        connectionState: state,
        msgConnId,
        supportedFeatures: features,
      });
    } else {
      this.send({
        type: CHANNELMSG_VERSION_RESPONSE,
        form: 'VersionResponse',
        versionSupported: 1,
        connectionState: state,
        msgConnId,
      });
    }
  }

  private handleRequestOffers(): void {
    const conn = this.st.connection;
    if (conn.kind !== 'connected') return;
    if (conn.offersSent) {
      this.protocolError(
        'duplicate',
        CHANNELMSG_REQUESTOFFERS,
        'offers have already been sent on this connection',
      );
      return;
    }
    conn.offersSent = true;
    for (const ch of this.st.channels) if (ch.phase === 'unsent') this.sendOffer(ch);
    this.send({ type: CHANNELMSG_ALLOFFERS_DELIVERED });
  }

  private sendOffer(ch: ServerChannelState): void {
    const o = ch.offer;
    ch.phase = 'closed';
    this.send({
      type: CHANNELMSG_OFFERCHANNEL,
      ifType: Guid.parse(o.interfaceType),
      ifInstance: Guid.parse(o.interfaceInstance),
      channelLatency: 0n,
      channelRevision: 0,
      serverContextSize: 0,
      chnFlags:
        o.channelFlags &
        ~(
          VMBUS_CHANNEL_CONFIDENTIAL_RING_BUFFER |
          VMBUS_CHANNEL_CONFIDENTIAL_EXTERNAL_MEMORY |
          VMBUS_CHANNEL_REQUIRE_PINNED_EXTERNAL_MEMORY
        ),
      mmioMegabytes: o.mmioMegabytes,
      userDefined: o.userDefined,
      subChannelIndex: o.subChannelIndex,
      mmioMegabytesOptional: o.mmioMegabytesOptional,
      childRelid: ch.relid,
      monitorId: VMBUS_NO_MONITOR_ID,
      monitorAllocated: 0,
      isDedicatedInterrupt: 1,
      connectionId: ch.connectionId,
    });
  }

  private handleUnload(): Pending {
    const conn = this.st.connection;
    if (conn.kind === 'disconnecting') {
      conn.next = 'unload-response';
      conn.contact = null;
      return;
    }
    return this.disconnect('unload-response', null);
  }

  /** Releases everything the guest owned; then answers UNLOAD or processes a new INITIATE_CONTACT. */
  private disconnect(next: 'unload-response' | 'reconnect', contact: ServerContactRequest | null): Pending {
    const conn = this.st.connection;
    if (conn.kind !== 'connected') return;
    this.st.connection = { kind: 'disconnecting', version: conn.version, next, contact };
    this.st.pendingMessages.length = 0;
    for (const inc of this.st.incompleteGpadls) this.incompleteById.delete(inc.gpadlId);
    this.st.incompleteGpadls.length = 0;
    const reason: ServerCloseReason = next === 'reconnect' ? 'reconnect' : 'unload';
    const closes: Promise<void>[] = [];
    for (const ch of [...this.st.channels]) closes.push(this.resetChannel(ch, reason));
    return Promise.all(closes)
      .then(() => Promise.all([...this.st.gpadls].map((g) => this.releaseGpadl(g, true))))
      .then(() => this.finishDisconnect(reason));
  }

  private resetChannel(ch: ServerChannelState, reason: ServerCloseReason): Promise<void> {
    switch (ch.phase) {
      case 'unsent':
      case 'closed':
        ch.phase = 'unsent';
        return Promise.resolve();
      case 'revoked':
        this.removeChannel(ch);
        return Promise.resolve();
      case 'opening':
        return this.beginClose(ch, reason, true);
      case 'open':
        return this.beginClose(ch, reason, false);
      case 'closing':
        ch.reopen = null;
        return this.closing.get(ch.offerId) ?? Promise.resolve();
    }
  }

  private finishDisconnect(reason: ServerCloseReason): void {
    const conn = this.st.connection;
    if (conn.kind !== 'disconnecting' || this.disposed) return;
    for (const ch of [...this.st.channels]) {
      if (ch.revoking) this.removeChannel(ch);
      else {
        ch.phase = 'unsent';
        ch.reopen = null;
      }
    }
    this.st.connection = { kind: 'disconnected' };
    this.disconnectListeners.emit(reason === 'reconnect' ? 'reconnect' : 'unload');
    if (conn.next === 'unload-response') {
      if (conn.version >= VERSION_WIN7) this.send({ type: CHANNELMSG_UNLOAD_RESPONSE });
    } else if (conn.next === 'reconnect' && conn.contact !== null) {
      this.negotiate(conn.contact);
    }
  }

  private handlePause(): void {
    const conn = this.st.connection;
    if (conn.kind !== 'connected') return;
    if (conn.paused) {
      this.protocolError('bad-state', CHANNELMSG_PAUSE, 'already paused');
      return;
    }
    this.send({ type: CHANNELMSG_PAUSE_RESPONSE });
    conn.paused = true;
  }

  private handleResume(): void {
    const conn = this.st.connection;
    if (conn.kind !== 'connected') return;
    if (!conn.paused) {
      this.protocolError('bad-state', CHANNELMSG_RESUME, 'RESUME while not paused');
      return;
    }
    conn.paused = false;
    const pending = this.st.pendingMessages.splice(0);
    for (const bytes of pending) this.post(bytes, VMBUS_MESSAGE_SINT);
  }

  private handleTlConnect(msg: TlConnectRequestMessage): Pending {
    const request: TlConnectRequest = {
      endpointId: msg.guestEndpointId,
      serviceId: msg.hostServiceId,
      siloId: msg.form === 'TlConnectRequest2' ? msg.siloId : null,
    };
    const hook = this.tlConnectHook;
    const answer =
      hook === undefined ? Promise.resolve(false) : this.callHook(() => hook(request), false, undefined);
    return answer.then((accepted) => {
      const conn = this.st.connection;
      if (accepted === true || conn.kind !== 'connected' || conn.version < VERSION_WIN10_V4_1) return;
      this.send({
        type: CHANNELMSG_TL_CONNECT_RESULT,
        endpointId: request.endpointId,
        serviceId: request.serviceId,
        status: VMBUS_STATUS_CONNECTION_REFUSED,
      });
    });
  }

  // ------------------------------------------------------------------------------------------
  // GPADLs

  private handleGpadlHeader(msg: GpadlHeaderMessage): void {
    const { childRelid: relid, gpadl: id, rangeBufLen, rangeCount, rangeData } = msg;
    const refuse = (code: BusProtocolErrorCode, text: string): void => {
      this.protocolError(code, CHANNELMSG_GPADL_HEADER, `GPADL ${id}: ${text}`, relid, id);
      this.sendGpadlCreated(relid, id, VMBUS_STATUS_UNSUCCESSFUL);
    };
    const ch = this.byRelid.get(relid);
    if (ch === undefined || ch.phase === 'unsent') {
      refuse('unknown-channel', `no channel ${relid}`);
      return;
    }
    if (ch.phase === 'revoked') {
      refuse('bad-state', `channel ${relid} is revoked`);
      return;
    }
    if (this.incompleteById.has(id) || this.gpadlById.has(id)) {
      refuse('duplicate', 'the id is in use');
      return;
    }
    const limits = this.gpadlLimits;
    if (this.st.incompleteGpadls.length >= limits.maxInProgress) {
      refuse('limit', `already ${limits.maxInProgress} GPADLs in progress`);
      return;
    }
    if (this.st.gpadls.length >= limits.maxGpadls) {
      refuse('limit', `already ${limits.maxGpadls} GPADLs`);
      return;
    }
    if (rangeBufLen % 8 !== 0) {
      refuse('malformed', `range_buflen ${rangeBufLen} is not a multiple of 8`);
      return;
    }
    if (rangeCount === 0) {
      refuse('malformed', 'rangecount is 0');
      return;
    }
    if (rangeCount > limits.maxRanges) {
      refuse('limit', `${rangeCount} ranges exceed ${limits.maxRanges}`);
      return;
    }
    if (rangeBufLen < 16 * rangeCount) {
      refuse('malformed', `${rangeCount} ranges cannot fit in range_buflen ${rangeBufLen}`);
      return;
    }
    const pfns = rangeBufLen / 8 - rangeCount;
    if (pfns > limits.maxPfns) {
      refuse('limit', `${pfns} PFNs exceed ${limits.maxPfns}`);
      return;
    }
    const buf = new Uint8Array(rangeBufLen);
    // Whole u64 values only: a sender that pads to 240 bytes leaves half a value at the end.
    const take = Math.min(rangeData.length - (rangeData.length % 8), rangeBufLen);
    buf.set(rangeData.subarray(0, take));
    const inc: ServerIncompleteGpadlState = { gpadlId: id, relid, rangeCount, buf, filled: take };
    if (take === rangeBufLen) {
      this.completeGpadl(inc);
      return;
    }
    this.st.incompleteGpadls.push(inc);
    this.incompleteById.set(id, inc);
  }

  private handleGpadlBody(data: Uint8Array, length: number): void {
    if (length < 16) {
      this.protocolError('malformed', CHANNELMSG_GPADL_BODY, `GPADL_BODY needs 16 bytes, got ${length}`);
      return;
    }
    const id = (data[12]! | (data[13]! << 8) | (data[14]! << 16)) + data[15]! * 0x1000000;
    const inc = this.incompleteById.get(id);
    if (inc === undefined) {
      this.protocolError('unknown-gpadl', CHANNELMSG_GPADL_BODY, `no GPADL ${id} in progress`, undefined, id);
      return;
    }
    const bytes = Math.min((length - 16) & ~7, inc.buf.length - inc.filled);
    inc.buf.set(data.subarray(16, 16 + bytes), inc.filled);
    inc.filled += bytes;
    if (inc.filled < inc.buf.length) return;
    this.incompleteById.delete(id);
    const i = this.st.incompleteGpadls.indexOf(inc);
    if (i >= 0) this.st.incompleteGpadls.splice(i, 1);
    this.completeGpadl(inc);
  }

  private completeGpadl(inc: ServerIncompleteGpadlState): void {
    const { gpadlId: id, relid, rangeCount, buf } = inc;
    const type = CHANNELMSG_GPADL_HEADER;
    const refuse = (code: BusProtocolErrorCode, text: string, cause?: unknown): void => {
      this.protocolError(code, type, `GPADL ${id}: ${text}`, relid, id, cause);
      this.sendGpadlCreated(relid, id, VMBUS_STATUS_UNSUCCESSFUL);
    };
    let ranges: GpaRange[];
    try {
      const end = scanGpaRanges(buf, 0, buf.length, rangeCount, 'GPADL.range');
      if (end !== buf.length) {
        refuse('malformed', `${buf.length - end} bytes after the last range`);
        return;
      }
      ranges = decodeGpaRanges(buf, rangeCount, 0, buf.length, 'GPADL.range');
    } catch (error) {
      if (!(error instanceof WireError)) throw error;
      refuse('malformed', error.message, error);
      return;
    }
    let byteCount = 0;
    let pfnCount = 0;
    const pages = this.memory.pageCount;
    for (const r of ranges) {
      byteCount += r.byteCount;
      pfnCount += r.pfns.length;
      const pfns = r.pfns;
      for (let j = 0; j < pfns.length; j++) {
        if (pfns[j]! >= pages) {
          refuse('invalid', `PFN 0x${pfns[j]!.toString(16)} is outside guest memory`);
          return;
        }
      }
    }
    if (byteCount > this.gpadlLimits.maxBytes) {
      refuse('limit', `${byteCount} bytes exceed ${this.gpadlLimits.maxBytes}`);
      return;
    }
    const ch = this.byRelid.get(relid);
    if (ch === undefined || !isSentPhase(ch.phase)) {
      refuse('bad-state', `channel ${relid} went away`);
      return;
    }
    const g: ServerGpadlState = {
      gpadlId: id,
      relid,
      rangeCount,
      rangeData: buf,
      ranges,
      pfnCount,
      byteCount,
      phase: 'created',
      mapCount: 0,
      teardownHook: 'none',
    };
    this.st.gpadls.push(g);
    this.gpadlById.set(id, g);
    const handler = this.handlers.get(ch.offerId)!;
    if (handler.onGpadlCreated !== undefined) {
      try {
        handler.onGpadlCreated(this.gpadlInfo(g));
      } catch (error) {
        this.handlerError(error);
      }
    }
    this.sendGpadlCreated(relid, id, VMBUS_STATUS_SUCCESS);
  }

  private sendGpadlCreated(relid: number, gpadl: number, status: number): void {
    this.send({ type: CHANNELMSG_GPADL_CREATED, childRelid: relid, gpadl, creationStatus: status });
  }

  private handleGpadlTeardown(relid: number, id: number): void {
    const type = CHANNELMSG_GPADL_TEARDOWN;
    const ch = this.byRelid.get(relid);
    if (ch === undefined || ch.phase === 'unsent') {
      this.protocolError('unknown-channel', type, `no channel ${relid}`, relid, id);
      return;
    }
    const inc = this.incompleteById.get(id);
    if (inc !== undefined && inc.relid === relid) {
      // Abandoned half-way: drop it and confirm.
      this.incompleteById.delete(id);
      this.st.incompleteGpadls.splice(this.st.incompleteGpadls.indexOf(inc), 1);
      this.send({ type: CHANNELMSG_GPADL_TORNDOWN, gpadl: id });
      return;
    }
    const g = this.gpadlById.get(id);
    if (g === undefined || g.relid !== relid) {
      this.protocolError('unknown-gpadl', type, `channel ${relid} has no GPADL ${id}`, relid, id);
      return;
    }
    if (g.phase === 'tearing-down') {
      this.protocolError('duplicate', type, `GPADL ${id} is already being torn down`, relid, id);
      return;
    }
    g.phase = 'tearing-down';
    if (ch.phase === 'revoked') {
      // OpenVMM answers teardowns on revoked channels at once.
      this.forgetGpadl(g);
      this.send({ type: CHANNELMSG_GPADL_TORNDOWN, gpadl: id });
      return;
    }
    this.continueTeardown(g);
  }

  /** Moves a tearing-down GPADL on: wait for the ring to close, the hook, the unmaps; then TORNDOWN. */
  private continueTeardown(g: ServerGpadlState): void {
    if (g.phase !== 'tearing-down' || this.gpadlById.get(g.gpadlId) !== g) return;
    const ch = this.byRelid.get(g.relid);
    if (ch !== undefined && ch.open !== null && ch.open.ringGpadlId === g.gpadlId) return; // ring in use
    if (g.teardownHook === 'none') {
      const handler = ch === undefined ? undefined : this.handlers.get(ch.offerId);
      if (handler?.onGpadlTeardown !== undefined && ch!.phase !== 'revoked') {
        g.teardownHook = 'running';
        const info = this.gpadlInfo(g);
        void this.callHook(() => handler.onGpadlTeardown!(info, 'teardown'), undefined, g.relid).then(() => {
          g.teardownHook = 'done';
          this.continueTeardown(g);
        });
        return;
      }
      g.teardownHook = 'done';
    }
    if (g.teardownHook !== 'done' || g.mapCount > 0) return;
    this.forgetGpadl(g);
    this.send({ type: CHANNELMSG_GPADL_TORNDOWN, gpadl: g.gpadlId });
  }

  /** Forced release (unload, reset, relid release): hook (unless revoked), then grants revoked. */
  private releaseGpadl(g: ServerGpadlState, callHook: boolean): Promise<void> {
    const ch = this.byRelid.get(g.relid);
    const handler = ch === undefined ? undefined : this.handlers.get(ch.offerId);
    const finish = (): void => {
      if (this.gpadlById.get(g.gpadlId) === g) this.forgetGpadl(g);
    };
    if (
      callHook &&
      handler?.onGpadlTeardown !== undefined &&
      g.teardownHook === 'none' &&
      ch!.phase !== 'revoked'
    ) {
      g.teardownHook = 'running';
      const info = this.gpadlInfo(g);
      return this.callHook(() => handler.onGpadlTeardown!(info, 'release'), undefined, g.relid).then(finish);
    }
    finish();
    return Promise.resolve();
  }

  private forgetGpadl(g: ServerGpadlState): void {
    this.gpadlById.delete(g.gpadlId);
    const i = this.st.gpadls.indexOf(g);
    if (i >= 0) this.st.gpadls.splice(i, 1);
    const set = this.mappings.get(g.gpadlId);
    if (set !== undefined) {
      for (const m of set) m.revoke();
      this.mappings.delete(g.gpadlId);
    }
    g.mapCount = 0;
  }

  private retryTeardowns(relid: number): void {
    for (const g of [...this.st.gpadls])
      if (g.relid === relid && g.phase === 'tearing-down') this.continueTeardown(g);
  }

  // ------------------------------------------------------------------------------------------
  // Open / close / modify / release

  private handleOpenChannel(msg: OpenChannelMessage): Pending {
    const relid = msg.childRelid;
    const type = CHANNELMSG_OPENCHANNEL;
    const ch = this.byRelid.get(relid);
    if (ch === undefined || ch.phase === 'unsent') {
      this.protocolError('unknown-channel', type, `no channel ${relid}`, relid);
      return;
    }
    const conn = this.st.connection;
    const guestSignals =
      msg.form === 'OpenChannel2' &&
      conn.kind === 'connected' &&
      (conn.featureFlags & VMBUS_FEATURE_FLAG_GUEST_SPECIFIED_SIGNAL_PARAMETERS) !== 0;
    const req: ServerOpenState = {
      openId: msg.openId,
      ringGpadlId: msg.ringBufferGpadlHandle,
      targetVp: msg.targetVp,
      downstreamPageOffset: msg.downstreamRingBufferPageOffset,
      userData: msg.userData,
      connectionId: guestSignals ? msg.connectionId : ch.connectionId,
      eventFlag: guestSignals ? msg.eventFlag : relid,
      flags: msg.form === 'OpenChannel2' ? msg.flags : 0,
    };
    switch (ch.phase) {
      case 'revoked':
        this.protocolError('bad-state', type, `channel ${relid} is revoked; open ignored`, relid);
        return;
      case 'opening':
      case 'open':
        this.protocolError('bad-state', type, `channel ${relid} is already open`, relid);
        return;
      case 'closing':
        if (ch.reopen !== null) {
          this.protocolError('duplicate', type, `channel ${relid} already has a reopen queued`, relid);
          return;
        }
        ch.reopen = req;
        return;
      case 'closed':
        return this.startOpen(ch, req);
    }
  }

  private startOpen(ch: ServerChannelState, req: ServerOpenState): Pending {
    const relid = ch.relid;
    const refuse = (text: string, cause?: unknown): void => {
      this.protocolError(
        'invalid',
        CHANNELMSG_OPENCHANNEL,
        `open of channel ${relid}: ${text}`,
        relid,
        undefined,
        cause,
      );
      this.send({
        type: CHANNELMSG_OPENCHANNEL_RESULT,
        childRelid: relid,
        openId: req.openId,
        status: VMBUS_STATUS_UNSUCCESSFUL,
      });
    };
    const g = this.gpadlById.get(req.ringGpadlId);
    if (g === undefined || g.relid !== relid) {
      refuse(`ring GPADL ${req.ringGpadlId} is not a GPADL of the channel`);
      return;
    }
    if (g.phase !== 'created') {
      refuse(`ring GPADL ${req.ringGpadlId} is being torn down`);
      return;
    }
    const r = g.ranges[0]!;
    if (g.rangeCount !== 1 || r.byteOffset !== 0 || r.byteCount !== r.pfns.length * PAGE_SIZE) {
      refuse('the ring GPADL must be one range of whole pages starting at offset 0');
      return;
    }
    if (req.targetVp !== VMBUS_VP_INDEX_DISABLE_INTERRUPT && req.targetVp >= this.vpCount) {
      refuse(`target_vp ${req.targetVp} is not a VP (the guest has ${this.vpCount})`);
      return;
    }
    if (req.connectionId !== ch.connectionId) {
      const c = req.connectionId;
      const clash =
        c <= 4 ||
        c > 0xffffff ||
        [...this.signalRoutes.values()].includes(c) ||
        this.st.channels.some((o) => o !== ch && o.connectionId === c);
      if (clash) {
        refuse(`connection id 0x${c.toString(16)} cannot be used`);
        return;
      }
    }
    if (req.eventFlag === 0 || req.eventFlag > MAX_RELID) {
      refuse(`event flag ${req.eventFlag} is not 1..2047`);
      return;
    }
    let rings: ChannelRings;
    try {
      rings = channelRingsFromGpadl(this.memory, r.pfns, req.downstreamPageOffset);
    } catch (error) {
      if (!(error instanceof RingError)) throw error;
      refuse(error.message, error);
      return;
    }
    const grant = this.hostView.grant(r.pfns, { label: `ring of channel ${relid}` });
    this.ringGrants.set(ch.offerId, grant);
    this.openRings.set(ch.offerId, rings);
    ch.phase = 'opening';
    ch.open = req;
    const seq = ++ch.openSeq;
    const handler = this.handlers.get(ch.offerId)!;
    const request: ServerOpenRequest = {
      handle: this.handleOf(ch),
      openId: req.openId,
      ringGpadlId: req.ringGpadlId,
      targetVp: req.targetVp,
      interruptsDisabled: req.targetVp === VMBUS_VP_INDEX_DISABLE_INTERRUPT,
      downstreamPageOffset: req.downstreamPageOffset,
      userData: req.userData,
      ringPfns: r.pfns,
      rings,
      ringGrant: grant,
      connectionId: req.connectionId,
      eventFlag: req.eventFlag,
      flags: req.flags,
    };
    const answer = this.callHook(() => handler.onOpen(request), VMBUS_STATUS_UNSUCCESSFUL, relid).then(
      toStatus,
    );
    this.pendingOpens.set(ch.offerId, answer);
    return answer.then((status) => {
      if (this.pendingOpens.get(ch.offerId) === answer) this.pendingOpens.delete(ch.offerId);
      if (this.byRelid.get(relid) !== ch || ch.openSeq !== seq || ch.phase !== 'opening') {
        // Cancelled (revoked, reset, disposed); a reset waits on `answer` itself.
        if (ch.phase === 'revoked' || this.byRelid.get(relid) !== ch) this.releaseRing(ch.offerId);
        return;
      }
      if (status === VMBUS_STATUS_SUCCESS) {
        ch.phase = 'open';
        const onSignal = handler.onGuestSignal?.bind(handler) ?? (() => {});
        this.link.onEvent(req.connectionId, onSignal);
        this.signalRoutes.set(ch.offerId, req.connectionId);
      } else {
        this.releaseRing(ch.offerId);
        ch.phase = 'closed';
        ch.open = null;
      }
      this.send({ type: CHANNELMSG_OPENCHANNEL_RESULT, childRelid: relid, openId: req.openId, status });
      if (status !== VMBUS_STATUS_SUCCESS) this.retryTeardowns(relid);
    });
  }

  private handleCloseChannel(relid: number): Pending {
    const type = CHANNELMSG_CLOSECHANNEL;
    const ch = this.byRelid.get(relid);
    if (ch === undefined || ch.phase === 'unsent') {
      this.protocolError('unknown-channel', type, `no channel ${relid}`, relid);
      return;
    }
    if (ch.phase !== 'open') {
      this.protocolError('bad-state', type, `channel ${relid} is ${ch.phase}, not open`, relid);
      return;
    }
    return this.beginClose(ch, 'close', false);
  }

  /** Closes an open (or opening) channel: stop signals, onClose (awaited), release the ring. */
  private beginClose(ch: ServerChannelState, reason: ServerCloseReason, wasOpening: boolean): Promise<void> {
    const relid = ch.relid;
    const handler = this.handlers.get(ch.offerId)!;
    ch.phase = 'closing';
    this.stopSignals(ch.offerId);
    let done: Promise<void>;
    if (wasOpening) {
      ch.openSeq++;
      const answer = this.pendingOpens.get(ch.offerId) ?? Promise.resolve(VMBUS_STATUS_UNSUCCESSFUL);
      done = answer.then((status) =>
        status === VMBUS_STATUS_SUCCESS
          ? this.callHook(() => handler.onClose(reason), undefined, relid)
          : undefined,
      );
    } else {
      done = this.callHook(() => handler.onClose(reason), undefined, relid);
    }
    const closed = done.then(() => {
      if (this.closing.get(ch.offerId) === closed) this.closing.delete(ch.offerId);
      this.finishClose(ch);
    });
    this.closing.set(ch.offerId, closed);
    return closed;
  }

  private finishClose(ch: ServerChannelState): void {
    const relid = ch.relid;
    if (this.byRelid.get(relid) !== ch) return;
    if (ch.phase !== 'closing') {
      // Revoked meanwhile: its ring goes now.
      if (ch.phase === 'revoked') this.releaseRing(ch.offerId);
      return;
    }
    this.releaseRing(ch.offerId);
    ch.open = null;
    if (this.st.connection.kind === 'disconnecting') {
      ch.phase = 'unsent';
      ch.reopen = null;
      return;
    }
    ch.phase = 'closed';
    const reopen = ch.reopen;
    ch.reopen = null;
    this.retryTeardowns(relid);
    if (reopen !== null && ch.phase === 'closed') this.startOpen(ch, reopen);
  }

  private handleModifyChannel(msg: ModifyChannelMessage): Pending {
    const relid = msg.childRelid;
    const type = CHANNELMSG_MODIFYCHANNEL;
    const ch = this.byRelid.get(relid);
    if (ch === undefined || ch.phase === 'unsent') {
      this.protocolError('unknown-channel', type, `no channel ${relid}`, relid);
      return;
    }
    const respond = (status: number): void => {
      const conn = this.st.connection;
      if (conn.kind === 'connected' && conn.version >= VERSION_WIN10_V5_3 && this.byRelid.get(relid) === ch) {
        this.send({ type: CHANNELMSG_MODIFYCHANNEL_RESPONSE, childRelid: relid, status });
      }
    };
    if (ch.phase !== 'open') {
      this.protocolError('bad-state', type, `channel ${relid} is ${ch.phase}, not open`, relid);
      respond(VMBUS_STATUS_UNSUCCESSFUL);
      return;
    }
    if (msg.targetVp === VMBUS_VP_INDEX_DISABLE_INTERRUPT || msg.targetVp >= this.vpCount) {
      this.protocolError('invalid', type, `target_vp ${msg.targetVp} is not a VP`, relid);
      respond(VMBUS_STATUS_UNSUCCESSFUL);
      return;
    }
    const handler = this.handlers.get(ch.offerId)!;
    const seq = ch.openSeq;
    const answer =
      handler.onModify === undefined
        ? Promise.resolve(VMBUS_STATUS_SUCCESS)
        : this.callHook(() => handler.onModify!(msg.targetVp), VMBUS_STATUS_UNSUCCESSFUL, relid).then(
            toStatus,
          );
    return answer.then((status) => {
      if (ch.phase !== 'open' || ch.openSeq !== seq) return;
      if (status === VMBUS_STATUS_SUCCESS) ch.open!.targetVp = msg.targetVp;
      respond(status);
    });
  }

  private handleRelidReleased(relid: number): void {
    const type = CHANNELMSG_RELID_RELEASED;
    const ch = this.byRelid.get(relid);
    if (ch === undefined || ch.phase === 'unsent') {
      this.protocolError('unknown-channel', type, `no channel ${relid}`, relid);
      return;
    }
    if (ch.phase !== 'revoked') {
      this.protocolError('bad-state', type, `channel ${relid} is ${ch.phase}, not revoked`, relid);
      return;
    }
    this.removeChannel(ch);
  }

  /** Host-side stop of a channel being revoked: signals, cancel an open, ring released. No hooks. */
  private stopChannel(ch: ServerChannelState): void {
    this.stopSignals(ch.offerId);
    if (ch.phase === 'opening') {
      ch.openSeq++;
      if (!this.pendingOpens.has(ch.offerId)) this.releaseRing(ch.offerId);
    } else if (ch.phase === 'open') {
      this.releaseRing(ch.offerId);
    }
    // 'closing': the close in progress releases the ring when it finishes.
    if (ch.phase !== 'closing') ch.open = null;
  }

  /** Frees the relid: GPADLs forgotten (grants revoked), onReleased, revoke promises resolved. */
  private removeChannel(ch: ServerChannelState): void {
    this.stopSignals(ch.offerId);
    if (!this.pendingOpens.has(ch.offerId) && !this.closing.has(ch.offerId)) this.releaseRing(ch.offerId);
    for (const g of [...this.st.gpadls]) if (g.relid === ch.relid) this.forgetGpadl(g);
    for (const inc of [...this.st.incompleteGpadls]) {
      if (inc.relid === ch.relid) {
        this.incompleteById.delete(inc.gpadlId);
        this.st.incompleteGpadls.splice(this.st.incompleteGpadls.indexOf(inc), 1);
      }
    }
    this.byRelid.delete(ch.relid);
    const i = this.st.channels.indexOf(ch);
    if (i >= 0) this.st.channels.splice(i, 1);
    const handler = this.handlers.get(ch.offerId);
    this.handlers.delete(ch.offerId);
    if (handler?.onReleased !== undefined) {
      try {
        handler.onReleased();
      } catch (error) {
        this.handlerError(error);
      }
    }
    const waiters = this.revokeWaiters.get(ch.offerId);
    this.revokeWaiters.delete(ch.offerId);
    if (waiters !== undefined) for (const w of waiters) w.resolve();
  }

  private stopSignals(offerId: number): void {
    const conn = this.signalRoutes.get(offerId);
    if (conn === undefined) return;
    this.signalRoutes.delete(offerId);
    this.link.onEvent(conn, null);
  }

  private releaseRing(offerId: number): void {
    const grant = this.ringGrants.get(offerId);
    if (grant !== undefined) {
      grant.revoke();
      this.ringGrants.delete(offerId);
    }
    this.openRings.delete(offerId);
  }

  // ------------------------------------------------------------------------------------------
  // Helpers

  private handleOf(ch: ServerChannelState): ServerChannelHandle {
    return { offerId: ch.offerId, relid: ch.relid, connectionId: ch.connectionId };
  }

  private channelOf(handle: ServerChannelHandle): ServerChannelState {
    const ch = handle === null || typeof handle !== 'object' ? undefined : this.byRelid.get(handle.relid);
    if (ch === undefined || ch.offerId !== handle.offerId) {
      throw new Error(`stale or unknown channel handle (relid ${handle?.relid}, offer ${handle?.offerId})`);
    }
    return ch;
  }

  private gpadlInfo(g: ServerGpadlState): ServerGpadlInfo {
    return {
      gpadlId: g.gpadlId,
      relid: g.relid,
      ranges: g.ranges,
      pfnCount: g.pfnCount,
      byteCount: g.byteCount,
    };
  }

  private checkNotDisposed(): void {
    if (this.disposed) throw new Error('the VMBus server has been disposed');
  }

  /** Runs an upper-layer hook; a throw or rejection is reported and turns into `fallback`. */
  private callHook<T>(hook: () => T | Promise<T>, fallback: T, relid: number | undefined): Promise<T> {
    try {
      return Promise.resolve(hook()).catch((error: unknown) => {
        this.protocolError(
          'handler-failed',
          undefined,
          `an upper-layer hook failed: ${String(error)}`,
          relid,
          undefined,
          error,
        );
        return fallback;
      });
    } catch (error) {
      this.protocolError(
        'handler-failed',
        undefined,
        `an upper-layer hook failed: ${String(error)}`,
        relid,
        undefined,
        error,
      );
      return Promise.resolve(fallback);
    }
  }

  private send(msg: ChannelMessage, sint: number = VMBUS_MESSAGE_SINT): void {
    if (this.disposed) return;
    const bytes = encodeMessage(msg);
    const conn = this.st.connection;
    if (conn.kind === 'connected' && conn.paused && msg.type !== CHANNELMSG_PAUSE_RESPONSE) {
      this.st.pendingMessages.push(bytes);
      return;
    }
    this.post(bytes, sint);
  }

  private post(bytes: Uint8Array, sint: number): void {
    // Traced as the peer will decode it (a decoded message fills views the encoder left out).
    if (this.tracer !== undefined) this.tracer('out', decodeMessage(bytes));
    this.link.post(sint, bytes).then(undefined, (error: unknown) => {
      this.protocolError(
        'send-failed',
        bytes[0],
        `posting ${channelMessageName(bytes[0]!)} to SINT ${sint} failed: ${String(error)}`,
        undefined,
        undefined,
        error,
      );
    });
  }

  private protocolError(
    code: BusProtocolErrorCode,
    type: number | undefined,
    text: string,
    relid?: number,
    gpadlId?: number,
    cause?: unknown,
  ): void {
    const name = type === undefined ? '' : `${channelMessageName(type) ?? `type ${type}`}: `;
    const error = new BusProtocolError(code, 'server', type, `${name}${text}`, relid, gpadlId, { cause });
    this.protocolErrors.emit(error);
  }

  private handlerError(error: unknown): void {
    if (this.handlerErrors.size === 0) rethrowLater(error);
    else this.handlerErrors.emit(error);
  }
}
