// The guest's VMBus client: the channel-management state machine on the guest's side of the
// partition's hv link (spec/vmbus-wire.md sections 3, 4 and 6). It negotiates the version
// (highest first, falling back), requests and caches offers, creates and tears down GPADLs,
// opens, modifies and closes channels, releases rescinded relids, unloads, and gives the upper
// layer each channel's signals. It trusts nothing the host sends: every malformed, unexpected or
// contradictory message is refused with a BusProtocolError event and changes no state.
//
// Upper-layer API (the KMCL client side is written against this):
//
//   const client = new VmbusClient(partition.link, partition.memory, options);
//   const info = await client.connect();            // { version, featureFlags, msgConnId }
//   const offers = await client.requestOffers();    // every offer, then ALLOFFERS_DELIVERED
//   client.onOffer(o => ...); client.onRescind(o => ...); client.onProtocolError(e => ...);
//   const { gpadlId, status } = await client.createGpadl(relid, pfnsOrRanges);
//   const status = await client.openChannel(relid, { ringGpadlId, downstreamPageOffset, targetVp });
//   client.onHostSignal(relid, () => ...); client.signalHost(relid);      // hot path
//   await client.closeChannel(relid); await client.teardownGpadl(relid, gpadlId);
//   await client.unload();
//
// Rescind: the channel is marked revoked, waiting opens/modifies reject with BusError
// 'rescinded', the onRescind listeners run (promises they return are awaited), then - unless
// `autoRelease: false` - releaseChannel() tears down the channel's GPADLs and sends
// RELID_RELEASED. A revoked channel is not sent CLOSECHANNEL (the host ignores it).
//
// Refused from the host (BusProtocolError, message dropped): undecodable bytes; host-bound types;
// messages the negotiated version/features do not allow; VERSION_RESPONSE when not connecting;
// offers with relid 0 or > 2047, a relid in use, a connection id above 24 bits, a monitor id
// >= 128 when allocated, a duplicate primary (type, instance), a subchannel without its primary or
// with a duplicate index; rescinds of unknown or revoked relids; results, GPADL_CREATED /
// TORNDOWN, responses nobody waits for, or naming the wrong channel; granted feature flags that
// were not requested (masked off).

import type { HvGuestEnd, HvMessage } from '../hv/end.js';
import { HV_STATUS_INVALID_CONNECTION_ID, HvError } from '../hv/status.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import {
  CHANNEL_MESSAGE_INFO,
  CHANNELMSG_ALLOFFERS_DELIVERED,
  CHANNELMSG_CLOSECHANNEL,
  CHANNELMSG_GPADL_CREATED,
  CHANNELMSG_GPADL_TEARDOWN,
  CHANNELMSG_GPADL_TORNDOWN,
  CHANNELMSG_INITIATE_CONTACT,
  CHANNELMSG_MODIFYCHANNEL,
  CHANNELMSG_MODIFYCHANNEL_RESPONSE,
  CHANNELMSG_OFFERCHANNEL,
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
  formatVersion,
  MAX_USER_DEFINED_BYTES,
  messageAllowed,
  PAGE_SIZE,
  VERSION_WIN7,
  VERSION_WIN8,
  VERSION_WIN8_1,
  VERSION_WIN10,
  VERSION_WIN10_V4_1,
  VERSION_WIN10_V5,
  VERSION_WIN10_V5_1,
  VERSION_WIN10_V5_2,
  VERSION_WIN10_V5_3,
  VERSION_WIN10_V6_0,
  VERSION_WS2008,
  VMBUS_CHANNEL_NAMED_PIPE_MODE,
  VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER,
  VMBUS_CONNECTION_STATE_SUCCESSFUL,
  VMBUS_FEATURE_FLAG_CHANNEL_INTERRUPT_REDIRECTION,
  VMBUS_FEATURE_FLAG_CLIENT_ID,
  VMBUS_FEATURE_FLAG_GUEST_SPECIFIED_SIGNAL_PARAMETERS,
  VMBUS_FEATURE_FLAG_PAUSE_RESUME,
  VMBUS_GPADL_START,
  VMBUS_MESSAGE_CONNECTION_ID,
  VMBUS_MESSAGE_CONNECTION_ID_4,
  VMBUS_MESSAGE_SINT,
  VMBUS_VERSIONS,
  VMBUS_VP_INDEX_DISABLE_INTERRUPT,
} from '../wire/constants.js';
import { WireError } from '../wire/errors.js';
import { splitGpadl } from '../wire/gpadl.js';
import type { Guid } from '../wire/guid.js';
import {
  type ChannelMessage,
  decodeMessage,
  encodeMessage,
  type OfferChannelMessage,
  type VersionResponseMessage,
} from '../wire/messages.js';
import type { GpaRange } from '../wire/packets.js';
import { BusError, BusProtocolError, type BusProtocolErrorCode } from './errors.js';
import { Listeners, rethrowLater, type Unsubscribe } from './events.js';
import type { BusTracer } from './trace.js';

/** Versions a client tries by default, highest first (spec 3.5). */
export const DEFAULT_CLIENT_VERSIONS: readonly number[] = Object.freeze([
  VERSION_WIN10_V6_0,
  VERSION_WIN10_V5_3,
  VERSION_WIN10_V5_2,
  VERSION_WIN10_V5_1,
  VERSION_WIN10_V5,
  VERSION_WIN10_V4_1,
  VERSION_WIN10,
  VERSION_WIN8_1,
  VERSION_WIN8,
  VERSION_WIN7,
  VERSION_WS2008,
]);

/** 6.0 features this client implements (client_id is requested only when a client id is given). */
export const CLIENT_SUPPORTED_FEATURE_FLAGS =
  VMBUS_FEATURE_FLAG_GUEST_SPECIFIED_SIGNAL_PARAMETERS |
  VMBUS_FEATURE_FLAG_CLIENT_ID |
  VMBUS_FEATURE_FLAG_PAUSE_RESUME;

const MAX_RELID = 2047;
const HV_CONNECTION_ID_MAX = 0xffffff;
const MONITOR_IDS = 128;

export interface VmbusClientOptions {
  /** Receives every message posted and accepted for processing. */
  readonly tracer?: BusTracer;
  /** After a rescind (and its listeners), tear down and release the relid (default true). */
  readonly autoRelease?: boolean;
}

export interface ClientConnectOptions {
  /** Versions to try, in order (default DEFAULT_CLIENT_VERSIONS). */
  readonly versions?: readonly number[];
  /** 6.0 feature flags to request (default: what this client implements). */
  readonly featureFlags?: number;
  /** VP that receives VMBus messages (default 0). */
  readonly targetVcpu?: number;
  /** Monitor page GPAs (both or neither; default neither). */
  readonly monitorPages?: { readonly parentToChild: bigint; readonly childToParent: bigint };
  /** < 5.0 interrupt page GPA (default 0). */
  readonly interruptPage?: bigint;
  /** 6.0 client id: sends InitiateContact2 and requests feature client_id. */
  readonly clientId?: Guid;
}

export interface ClientConnectionInfo {
  readonly version: number;
  readonly featureFlags: number;
  /** The connection id this client posts to after connecting. */
  readonly msgConnId: number;
}

/** An offer as received and validated. */
export interface ClientOffer {
  readonly relid: number;
  /** What the guest signals the host on (HvSignalEvent). */
  readonly connectionId: number;
  readonly interfaceType: Guid;
  readonly interfaceInstance: Guid;
  readonly flags: number;
  readonly mmioMegabytes: number;
  readonly mmioMegabytesOptional: number;
  /** 120 bytes. */
  readonly userDefined: Uint8Array;
  readonly subChannelIndex: number;
  readonly monitorId: number;
  readonly monitorAllocated: boolean;
  readonly isDedicatedInterrupt: boolean;
  /** For NAMED_PIPE_MODE offers: the u32 pipe mode at the start of the user-defined area. */
  readonly pipeMode: number | null;
  /** The raw message, as decoded. */
  readonly message: OfferChannelMessage;
}

export type ClientChannelPhase = 'offered' | 'opening' | 'open' | 'revoked';

export interface ClientOpenParams {
  readonly ringGpadlId: number;
  /** Page offset of the host-to-guest ring in the ring GPADL (the guest-to-host ring comes first). */
  readonly downstreamPageOffset: number;
  /** Default 0; 0xFFFFFFFF disables interrupts. */
  readonly targetVp?: number;
  /** Up to 120 bytes (zero-padded). */
  readonly userData?: Uint8Array;
  /** Default: the relid (as Linux). */
  readonly openId?: number;
  /** 6.0 + feature 0x1: the connection id this guest will signal, and the event flag the host sets. */
  readonly connectionId?: number;
  readonly eventFlag?: number;
  /** 6.0 + feature 0x1/0x2: OpenChannel2 flags (bit 0 redirect_interrupt). */
  readonly flags?: number;
}

export type ClientTlConnectResult =
  | { readonly accepted: true; readonly offer: ClientOffer }
  | { readonly accepted: false; readonly status: number };

interface Waiter<T> {
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

interface GpadlCreateWaiter extends Waiter<{ gpadlId: number; status: number }> {
  relid: number;
  promise: Promise<unknown>;
}

interface ClientChannel {
  offer: ClientOffer;
  phase: ClientChannelPhase;
  openId: number;
  /** Flag the host sets for this channel / connection id this guest signals. */
  eventFlag: number;
  signalConnectionId: number;
  gpadls: Set<number>;
  hostSignal: (() => void) | null;
  releasing: Promise<void> | null;
}

type ConnectionPhase = 'disconnected' | 'connecting' | 'connected' | 'unloading';

function deferred<T>(): { promise: Promise<T>; waiter: Waiter<T> } {
  let waiter!: Waiter<T>;
  const promise = new Promise<T>((resolve, reject) => {
    waiter = { resolve, reject };
  });
  return { promise, waiter };
}

export class VmbusClient {
  readonly link: HvGuestEnd;
  readonly memory: GuestMemory;
  private readonly tracer: BusTracer | undefined;
  private readonly autoRelease: boolean;

  private phase: ConnectionPhase = 'disconnected';
  private version = 0;
  private features = 0;
  private requestedFeatures = 0;
  private msgConnId = VMBUS_MESSAGE_CONNECTION_ID;
  private readonly channelsByRelid = new Map<number, ClientChannel>();
  private nextGpadlId = VMBUS_GPADL_START;
  private disposed = false;

  private contactWaiter: Waiter<VersionResponseMessage> | null = null;
  private offersWaiter: Waiter<ClientOffer[]> | null = null;
  private unloadWaiter: Waiter<void> | null = null;
  private pauseWaiter: Waiter<void> | null = null;
  private readonly gpadlCreates = new Map<number, GpadlCreateWaiter>();
  private readonly teardowns = new Map<number, Waiter<void> & { relid: number }>();
  private readonly opens = new Map<number, Waiter<number>>();
  private readonly modifies = new Map<number, Waiter<number>>();
  private readonly tlConnects = new Map<string, Waiter<ClientTlConnectResult>>();
  private readonly offerWatchers = new Set<{
    match: (o: ClientOffer) => boolean;
    waiter: Waiter<ClientOffer>;
  }>();

  private readonly offerListeners = new Listeners<ClientOffer>((e) => this.handlerError(e));
  private readonly rescindListeners = new Listeners<ClientOffer, void | Promise<void>>((e) =>
    this.handlerError(e),
  );
  private readonly allOffersListeners = new Listeners<readonly ClientOffer[]>((e) => this.handlerError(e));
  private readonly protocolErrors = new Listeners<BusProtocolError>((e) => this.handlerError(e));
  private readonly disconnectListeners = new Listeners<void>((e) => this.handlerError(e));
  private readonly handlerErrors = new Listeners<unknown>((e) => rethrowLater(e));

  constructor(link: HvGuestEnd, memory: GuestMemory, options: VmbusClientOptions = {}) {
    this.link = link;
    this.memory = memory;
    this.tracer = options.tracer;
    this.autoRelease = options.autoRelease ?? true;
    link.onMessage(VMBUS_MESSAGE_SINT, (m) => this.receive(m));
    link.onClose(() =>
      this.failAll(new BusError('link-closed', 'the partition link was closed'), 'disconnected'),
    );
  }

  // ------------------------------------------------------------------------------------------
  // Connection

  get connected(): boolean {
    return this.phase === 'connected';
  }

  /** The negotiated connection, or null. */
  get connection(): ClientConnectionInfo | null {
    return this.phase === 'connected' || this.phase === 'unloading'
      ? { version: this.version, featureFlags: this.features, msgConnId: this.msgConnId }
      : null;
  }

  /**
   * Negotiates a version, trying `versions` in order: an "unsupported" answer, or a >= 5.0
   * INITIATE_CONTACT the hypervisor refuses with HV_STATUS_INVALID_CONNECTION_ID (nobody listens
   * on connection id 4: a pre-5.0 host), moves on to the next. Rejects with BusError 'no-version'
   * when none is accepted, 'connection-failed' when the host reports a failed connection.
   */
  async connect(options: ClientConnectOptions = {}): Promise<ClientConnectionInfo> {
    this.checkNotDisposed();
    if (this.phase !== 'disconnected') throw new Error(`connect: the client is ${this.phase}`);
    const versions = options.versions ?? DEFAULT_CLIENT_VERSIONS;
    if (versions.length === 0) throw new RangeError('connect: no versions to try');
    for (const v of versions) {
      if (!VMBUS_VERSIONS.some((k) => k.value === v))
        throw new RangeError(`connect: unknown version 0x${v.toString(16)}`);
    }
    const clientId = options.clientId;
    const wanted =
      options.featureFlags ?? CLIENT_SUPPORTED_FEATURE_FLAGS & ~(clientId ? 0 : VMBUS_FEATURE_FLAG_CLIENT_ID);
    if ((wanted & VMBUS_FEATURE_FLAG_CLIENT_ID) !== 0 && clientId === undefined) {
      throw new Error('connect: feature client_id needs a clientId');
    }
    const monitor = options.monitorPages ?? { parentToChild: 0n, childToParent: 0n };
    this.phase = 'connecting';
    try {
      for (const version of versions) {
        const features = version >= VERSION_WIN10_V6_0 ? wanted : 0;
        const common = {
          type: CHANNELMSG_INITIATE_CONTACT,
          vmbusVersionRequested: version,
          monitorPage1: monitor.parentToChild,
          monitorPage2: monitor.childToParent,
        } as const;
        let msg: ChannelMessage;
        if (version < VERSION_WIN10_V5) {
          msg = {
            ...common,
            form: 'InitiateContact',
            targetVcpu: version >= VERSION_WIN8_1 ? (options.targetVcpu ?? 0) : 0,
            interruptPage: options.interruptPage ?? 0n,
          };
        } else {
          const split = {
            ...common,
            targetVcpu: options.targetVcpu ?? 0,
            msgSint: VMBUS_MESSAGE_SINT,
            msgVtl: 0,
            featureFlags: features,
          };
          msg =
            (features & VMBUS_FEATURE_FLAG_CLIENT_ID) !== 0
              ? { ...split, form: 'InitiateContact2', clientId: clientId! }
              : { ...split, form: 'InitiateContact' };
        }
        const port =
          version >= VERSION_WIN10_V5 ? VMBUS_MESSAGE_CONNECTION_ID_4 : VMBUS_MESSAGE_CONNECTION_ID;
        const { promise, waiter } = deferred<VersionResponseMessage>();
        this.contactWaiter = waiter;
        try {
          await this.post(msg, port);
        } catch (error) {
          this.contactWaiter = null;
          if (error instanceof HvError && error.status === HV_STATUS_INVALID_CONNECTION_ID) continue;
          throw new BusError(
            'send-failed',
            `INITIATE_CONTACT ${formatVersion(version)} failed: ${String(error)}`,
            {
              cause: error,
            },
          );
        }
        const response = await promise;
        if (response.versionSupported === 0) continue;
        if (response.connectionState !== VMBUS_CONNECTION_STATE_SUCCESSFUL) {
          throw new BusError(
            'connection-failed',
            `the host accepted ${formatVersion(version)} but reported connection state ${response.connectionState}`,
          );
        }
        let granted = response.form === 'VersionResponse' ? 0 : response.supportedFeatures;
        if ((granted & ~features) !== 0) {
          this.protocolError(
            'invalid',
            CHANNELMSG_VERSION_RESPONSE,
            `the host granted feature flags 0x${(granted & ~features).toString(16)} that were not requested`,
          );
          granted &= features;
        }
        let msgConnId = VMBUS_MESSAGE_CONNECTION_ID;
        if (version >= VERSION_WIN10_V5) {
          msgConnId = response.msgConnId;
          if (msgConnId === 0 || msgConnId > HV_CONNECTION_ID_MAX) {
            throw new BusError('connection-failed', `the host gave msg_conn_id 0x${msgConnId.toString(16)}`);
          }
        }
        this.version = version;
        this.features = granted;
        this.requestedFeatures = features;
        this.msgConnId = msgConnId;
        this.phase = 'connected';
        return { version, featureFlags: granted, msgConnId };
      }
      throw new BusError('no-version', `the host accepted none of ${versions.map(formatVersion).join(', ')}`);
    } finally {
      this.contactWaiter = null;
      if (this.phase === 'connecting') this.phase = 'disconnected';
    }
  }

  /** Sends REQUESTOFFERS; resolves with every offer received up to ALLOFFERS_DELIVERED. */
  requestOffers(): Promise<readonly ClientOffer[]> {
    this.requireConnected('requestOffers');
    if (this.offersWaiter !== null) throw new Error('requestOffers: already waiting for offers');
    const { promise, waiter } = deferred<ClientOffer[]>();
    this.offersWaiter = waiter;
    this.postOrReject({ type: CHANNELMSG_REQUESTOFFERS }, waiter);
    return promise;
  }

  /**
   * Sends UNLOAD; resolves on UNLOAD_RESPONSE (at once for 0.13, which has none). Every channel is
   * forgotten and waiting operations reject with BusError 'disconnected'.
   */
  unload(): Promise<void> {
    this.requireConnected('unload');
    const { promise, waiter } = deferred<void>();
    this.phase = 'unloading';
    this.unloadWaiter = waiter;
    const noResponse = this.version < VERSION_WIN7;
    this.post({ type: CHANNELMSG_UNLOAD }).then(
      () => {
        if (noResponse) this.finishUnload();
      },
      (e: unknown) => this.finishUnload(e),
    );
    return promise;
  }

  /** PAUSE (6.0 + pause_resume): resolves on PAUSE_RESPONSE; the host sends nothing until resume(). */
  pause(): Promise<void> {
    this.requireConnected('pause');
    this.requireFeature('pause', VMBUS_FEATURE_FLAG_PAUSE_RESUME);
    if (this.pauseWaiter !== null) throw new Error('pause: already pausing');
    const { promise, waiter } = deferred<void>();
    this.pauseWaiter = waiter;
    this.postOrReject({ type: CHANNELMSG_PAUSE }, waiter);
    return promise;
  }

  /** RESUME: the host sends what it held back. */
  resume(): Promise<void> {
    this.requireConnected('resume');
    this.requireFeature('resume', VMBUS_FEATURE_FLAG_PAUSE_RESUME);
    return this.post({ type: CHANNELMSG_RESUME });
  }

  // ------------------------------------------------------------------------------------------
  // Offers

  onOffer(listener: (offer: ClientOffer) => void): Unsubscribe {
    return this.offerListeners.add(listener);
  }

  /** The host rescinded an offer; a returned promise delays the automatic release until it settles. */
  onRescind(listener: (offer: ClientOffer) => void | Promise<void>): Unsubscribe {
    return this.rescindListeners.add(listener);
  }

  onAllOffersDelivered(listener: (offers: readonly ClientOffer[]) => void): Unsubscribe {
    return this.allOffersListeners.add(listener);
  }

  onProtocolError(listener: (error: BusProtocolError) => void): Unsubscribe {
    return this.protocolErrors.add(listener);
  }

  /** The connection ended (UNLOAD_RESPONSE received, or the link closed). */
  onDisconnect(listener: () => void): Unsubscribe {
    return this.disconnectListeners.add(listener);
  }

  /** Errors thrown by listeners and signal handlers (default: rethrown asynchronously). */
  onHandlerError(listener: (error: unknown) => void): Unsubscribe {
    return this.handlerErrors.add(listener);
  }

  /** Offers not yet released (revoked ones included until released), in relid order. */
  offers(): ClientOffer[] {
    return [...this.channelsByRelid.values()].map((c) => c.offer).sort((a, b) => a.relid - b.relid);
  }

  offer(relid: number): ClientOffer | undefined {
    return this.channelsByRelid.get(relid)?.offer;
  }

  channelPhase(relid: number): ClientChannelPhase | null {
    return this.channelsByRelid.get(relid)?.phase ?? null;
  }

  /** GPADLs created (and not torn down) on a channel. */
  channelGpadls(relid: number): number[] {
    return [...(this.channelsByRelid.get(relid)?.gpadls ?? [])];
  }

  /** Resolves with the first live offer (present or future) `match` accepts. */
  waitForOffer(match: (offer: ClientOffer) => boolean): Promise<ClientOffer> {
    for (const c of this.channelsByRelid.values())
      if (c.phase !== 'revoked' && match(c.offer)) return Promise.resolve(c.offer);
    const { promise, waiter } = deferred<ClientOffer>();
    this.offerWatchers.add({ match, waiter });
    return promise;
  }

  // ------------------------------------------------------------------------------------------
  // GPADLs

  /**
   * Creates a GPADL on a channel from whole pages (a PFN list: one range) or from ranges; resolves
   * with its id and GPADL_CREATED's status (0 = created). Throws (synchronously) for an unknown
   * channel, malformed ranges, PFNs outside guest memory, or more than one GPADL can describe
   * (8190 pages in one range: the u16 range_buflen).
   */
  createGpadl(
    relid: number,
    pagesOrRanges: readonly number[] | Uint32Array | readonly GpaRange[],
  ): Promise<{ gpadlId: number; status: number }> {
    const ch = this.channelOrThrow('createGpadl', relid);
    let ranges: GpaRange[];
    if (pagesOrRanges.length > 0 && typeof pagesOrRanges[0] === 'object') {
      ranges = (pagesOrRanges as readonly GpaRange[]).map((r) => ({
        byteCount: r.byteCount,
        byteOffset: r.byteOffset,
        pfns: Array.from(r.pfns),
      }));
    } else {
      const pfns = Array.from(pagesOrRanges as ArrayLike<number>);
      ranges = [{ byteCount: pfns.length * PAGE_SIZE, byteOffset: 0, pfns }];
    }
    const pages = this.memory.pageCount;
    for (const r of ranges) {
      const pfns = r.pfns;
      for (let i = 0; i < pfns.length; i++) {
        const pfn = pfns[i]!;
        if (!(pfn >= 0 && pfn < pages && Math.floor(pfn) === pfn)) {
          throw new RangeError(`createGpadl: PFN ${pfn} is not a page of guest memory (${pages} pages)`);
        }
      }
    }
    const id = this.allocateGpadlId();
    const messages = splitGpadl(relid, id, ranges); // RangeError for shapes the wire cannot carry
    if (this.phase !== 'connected')
      return Promise.reject(new BusError('not-connected', 'createGpadl: not connected'));
    if (ch.phase === 'revoked')
      return Promise.reject(new BusError('rescinded', `channel ${relid} was rescinded`));
    const { promise, waiter } = deferred<{ gpadlId: number; status: number }>();
    this.gpadlCreates.set(id, { ...waiter, relid, promise });
    for (const bytes of messages) {
      this.postBytes(bytes, this.msgConnId).then(undefined, (error: unknown) => {
        if (this.gpadlCreates.get(id)?.reject === waiter.reject) {
          this.gpadlCreates.delete(id);
          waiter.reject(new BusError('send-failed', `GPADL ${id}: ${String(error)}`, { cause: error }));
        }
      });
    }
    return promise;
  }

  /** GPADL_TEARDOWN; resolves on GPADL_TORNDOWN (the host may defer it while it still uses the GPADL). */
  teardownGpadl(relid: number, gpadlId: number): Promise<void> {
    const ch = this.channelOrThrow('teardownGpadl', relid);
    if (!ch.gpadls.has(gpadlId)) throw new Error(`teardownGpadl: channel ${relid} has no GPADL ${gpadlId}`);
    if (this.teardowns.has(gpadlId))
      throw new Error(`teardownGpadl: GPADL ${gpadlId} is already being torn down`);
    if (this.phase !== 'connected')
      return Promise.reject(new BusError('not-connected', 'teardownGpadl: not connected'));
    const { promise, waiter } = deferred<void>();
    this.teardowns.set(gpadlId, { ...waiter, relid });
    this.postOrReject({ type: CHANNELMSG_GPADL_TEARDOWN, childRelid: relid, gpadl: gpadlId }, waiter, () =>
      this.teardowns.delete(gpadlId),
    );
    return promise;
  }

  // ------------------------------------------------------------------------------------------
  // Channels

  /**
   * OPENCHANNEL; resolves with OPENCHANNEL_RESULT's status (0 = open). Rejects with BusError
   * 'rescinded' if the channel is rescinded first (the host never answers then).
   */
  openChannel(relid: number, params: ClientOpenParams): Promise<number> {
    const ch = this.channelOrThrow('openChannel', relid);
    if (ch.phase === 'opening' || ch.phase === 'open')
      throw new Error(`openChannel: channel ${relid} is ${ch.phase}`);
    const u32 = (name: string, v: number | undefined, dflt: number): number => {
      const x = v ?? dflt;
      if (!Number.isInteger(x) || x < 0 || x > 0xffffffff)
        throw new RangeError(`openChannel: ${name} must be a u32`);
      return x;
    };
    const openId = u32('openId', params.openId, relid);
    const ringGpadlId = u32('ringGpadlId', params.ringGpadlId, 0);
    const downstream = u32('downstreamPageOffset', params.downstreamPageOffset, 0);
    const targetVp = u32('targetVp', params.targetVp, 0);
    const userData = new Uint8Array(MAX_USER_DEFINED_BYTES);
    if (params.userData !== undefined) {
      if (!(params.userData instanceof Uint8Array) || params.userData.length > MAX_USER_DEFINED_BYTES) {
        throw new RangeError(`openChannel: userData is at most ${MAX_USER_DEFINED_BYTES} bytes`);
      }
      userData.set(params.userData);
    }
    const wantsForm2 =
      params.connectionId !== undefined || params.eventFlag !== undefined || params.flags !== undefined;
    const form2Features =
      VMBUS_FEATURE_FLAG_GUEST_SPECIFIED_SIGNAL_PARAMETERS | VMBUS_FEATURE_FLAG_CHANNEL_INTERRUPT_REDIRECTION;
    if (wantsForm2 && (this.features & form2Features) === 0) {
      throw new Error('openChannel: connectionId/eventFlag/flags need feature 0x1 or 0x2 (6.0)');
    }
    const eventFlag = params.eventFlag ?? relid;
    const connectionId = params.connectionId ?? ch.offer.connectionId;
    if (!Number.isInteger(eventFlag) || eventFlag < 1 || eventFlag > MAX_RELID) {
      throw new RangeError('openChannel: eventFlag must be 1..2047');
    }
    if (!Number.isInteger(connectionId) || connectionId < 0 || connectionId > HV_CONNECTION_ID_MAX) {
      throw new RangeError('openChannel: connectionId must be a 24-bit connection id');
    }
    const flags = params.flags ?? 0;
    if (!Number.isInteger(flags) || flags < 0 || flags > 0xffff)
      throw new RangeError('openChannel: flags must be a u16');
    if (this.phase !== 'connected')
      return Promise.reject(new BusError('not-connected', 'openChannel: not connected'));
    if (ch.phase === 'revoked')
      return Promise.reject(new BusError('rescinded', `channel ${relid} was rescinded`));
    const base = {
      type: CHANNELMSG_OPENCHANNEL,
      childRelid: relid,
      openId,
      ringBufferGpadlHandle: ringGpadlId,
      targetVp,
      downstreamRingBufferPageOffset: downstream,
      userData,
    } as const;
    const msg: ChannelMessage = wantsForm2
      ? { ...base, form: 'OpenChannel2', connectionId, eventFlag, flags }
      : { ...base, form: 'OpenChannel' };
    ch.phase = 'opening';
    ch.openId = openId;
    this.moveHostSignal(ch, eventFlag);
    ch.signalConnectionId = connectionId;
    const { promise, waiter } = deferred<number>();
    this.opens.set(relid, waiter);
    this.postOrReject(msg, waiter, () => {
      this.opens.delete(relid);
      if (ch.phase === 'opening') ch.phase = 'offered';
    });
    return promise;
  }

  /** CLOSECHANNEL (no reply exists); resolves once posted. Not sent for a rescinded channel. */
  closeChannel(relid: number): Promise<void> {
    const ch = this.channelOrThrow('closeChannel', relid);
    if (ch.phase === 'revoked') return Promise.resolve();
    if (ch.phase !== 'open') throw new Error(`closeChannel: channel ${relid} is ${ch.phase}, not open`);
    ch.phase = 'offered';
    if (this.phase !== 'connected') return Promise.resolve();
    return this.post({ type: CHANNELMSG_CLOSECHANNEL, childRelid: relid });
  }

  /**
   * MODIFYCHANNEL (>= 4.1): resolves with MODIFYCHANNEL_RESPONSE's status (>= 5.3), or null once
   * posted (4.1 .. 5.2 have no response).
   */
  modifyChannel(relid: number, targetVp: number): Promise<number | null> {
    const ch = this.channelOrThrow('modifyChannel', relid);
    this.requireConnected('modifyChannel');
    if (this.version < VERSION_WIN10_V4_1) throw new Error('modifyChannel: needs protocol 4.1');
    if (ch.phase !== 'open') throw new Error(`modifyChannel: channel ${relid} is ${ch.phase}, not open`);
    if (!Number.isInteger(targetVp) || targetVp < 0 || targetVp >= VMBUS_VP_INDEX_DISABLE_INTERRUPT) {
      throw new RangeError('modifyChannel: targetVp must be a VP index');
    }
    if (this.modifies.has(relid))
      throw new Error(`modifyChannel: channel ${relid} already has a modify pending`);
    const msg: ChannelMessage = { type: CHANNELMSG_MODIFYCHANNEL, childRelid: relid, targetVp };
    if (this.version < VERSION_WIN10_V5_3) return this.post(msg).then(() => null);
    const { promise, waiter } = deferred<number>();
    this.modifies.set(relid, waiter);
    this.postOrReject(msg, waiter, () => this.modifies.delete(relid));
    return promise;
  }

  /**
   * Releases a rescinded channel: waits for its GPADL creations in flight, tears down its GPADLs,
   * then sends RELID_RELEASED and forgets the offer. Idempotent. (Done automatically after a
   * rescind unless `autoRelease: false`.)
   */
  releaseChannel(relid: number): Promise<void> {
    const ch = this.channelOrThrow('releaseChannel', relid);
    if (ch.phase !== 'revoked') throw new Error(`releaseChannel: channel ${relid} has not been rescinded`);
    ch.releasing ??= this.release(ch);
    return ch.releasing;
  }

  private async release(ch: ClientChannel): Promise<void> {
    const relid = ch.offer.relid;
    const creating = [...this.gpadlCreates.values()].filter((w) => w.relid === relid).map((w) => w.promise);
    await Promise.allSettled(creating);
    const teardowns: Promise<void>[] = [];
    for (const id of ch.gpadls) {
      const pending = this.teardowns.get(id);
      teardowns.push(
        pending ? new Promise((resolve) => this.whenTornDown(id, resolve)) : this.teardownGpadl(relid, id),
      );
    }
    await Promise.allSettled(teardowns);
    if (this.channelsByRelid.get(relid) !== ch) return;
    this.forgetChannel(ch);
    if (this.phase === 'connected') await this.post({ type: CHANNELMSG_RELID_RELEASED, childRelid: relid });
  }

  private readonly tornDownWatchers = new Map<number, (() => void)[]>();
  private whenTornDown(id: number, done: () => void): void {
    const list = this.tornDownWatchers.get(id) ?? [];
    list.push(done);
    this.tornDownWatchers.set(id, list);
  }

  /**
   * hv_sock connect (TL_CONNECT_REQUEST, >= 4.0): resolves with the offer the host makes for the
   * connection (type = service id, instance = endpoint id), or with TL_CONNECT_RESULT's failure.
   */
  tlConnect(endpointId: Guid, serviceId: Guid, siloId?: Guid): Promise<ClientTlConnectResult> {
    this.requireConnected('tlConnect');
    if (this.version < VERSION_WIN10) throw new Error('tlConnect: needs protocol 4.0');
    const key = `${endpointId}/${serviceId}`;
    if (this.tlConnects.has(key)) throw new Error('tlConnect: this connection is already being requested');
    const msg: ChannelMessage =
      siloId !== undefined && this.version >= VERSION_WIN10_V5_2
        ? {
            type: CHANNELMSG_TL_CONNECT_REQUEST,
            form: 'TlConnectRequest2',
            guestEndpointId: endpointId,
            hostServiceId: serviceId,
            siloId,
          }
        : {
            type: CHANNELMSG_TL_CONNECT_REQUEST,
            form: 'TlConnectRequest',
            guestEndpointId: endpointId,
            hostServiceId: serviceId,
          };
    const { promise, waiter } = deferred<ClientTlConnectResult>();
    this.tlConnects.set(key, waiter);
    this.postOrReject(msg, waiter, () => this.tlConnects.delete(key));
    return promise;
  }

  // ------------------------------------------------------------------------------------------
  // Signals (hot path)

  /** HvSignalEvent on the open channel's connection id; false if not open or refused. No allocation. */
  signalHost(relid: number): boolean {
    const ch = this.channelsByRelid.get(relid);
    if (ch === undefined || ch.phase !== 'open') return false;
    return this.link.trySignalEvent(ch.signalConnectionId) === 0;
  }

  /** Runs `handler` when the host sets the channel's event flag; null stops. */
  onHostSignal(relid: number, handler: (() => void) | null): void {
    const ch = this.channelOrThrow('onHostSignal', relid);
    ch.hostSignal = handler;
    this.link.onEvent(ch.eventFlag, handler === null ? null : () => handler());
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.link.onMessage(VMBUS_MESSAGE_SINT, null);
    this.failAll(new BusError('disposed', 'the VMBus client was disposed'), 'disconnected');
  }

  // ------------------------------------------------------------------------------------------
  // Receiving

  private receive(m: HvMessage): void {
    try {
      this.receiveBytes(m.data.slice(0, m.length));
    } catch (error) {
      this.handlerError(error);
    }
  }

  private receiveBytes(bytes: Uint8Array): void {
    if (this.disposed) return;
    let msg: ChannelMessage;
    try {
      msg = decodeMessage(bytes);
    } catch (error) {
      if (!(error instanceof WireError)) throw error;
      const type =
        bytes.length >= 4 ? new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true) : undefined;
      this.protocolError('malformed', type, `undecodable message: ${error.message}`, undefined, error);
      return;
    }
    this.tracer?.('in', msg);
    const info = CHANNEL_MESSAGE_INFO[msg.type]!;
    if (info.direction !== 'host-to-guest') {
      this.protocolError('unexpected', msg.type, `${info.name} is not sent by hosts`);
      return;
    }
    if (msg.type === CHANNELMSG_VERSION_RESPONSE) {
      if (this.contactWaiter === null) {
        this.protocolError('unexpected', msg.type, 'VERSION_RESPONSE without an INITIATE_CONTACT in flight');
        return;
      }
      const w = this.contactWaiter;
      this.contactWaiter = null;
      w.resolve(msg);
      return;
    }
    if (this.phase !== 'connected' && this.phase !== 'unloading') {
      this.protocolError('unexpected', msg.type, `${info.name} while ${this.phase}`);
      return;
    }
    if (!messageAllowed(msg.type, this.version, this.requestedFeatures & this.features)) {
      this.protocolError('wrong-version', msg.type, `${info.name} is not part of the negotiated protocol`);
      return;
    }
    this.dispatch(msg);
  }

  private dispatch(msg: ChannelMessage): void {
    switch (msg.type) {
      case CHANNELMSG_OFFERCHANNEL: {
        this.handleOffer(msg);
        return;
      }
      case CHANNELMSG_RESCIND_CHANNELOFFER: {
        this.handleRescind(msg.childRelid);
        return;
      }
      case CHANNELMSG_ALLOFFERS_DELIVERED: {
        const w = this.offersWaiter;
        if (w === null) {
          this.protocolError('unexpected', msg.type, 'ALLOFFERS_DELIVERED without REQUESTOFFERS');
          return;
        }
        this.offersWaiter = null;
        const offers = this.offers();
        this.allOffersListeners.emit(offers);
        w.resolve(offers);
        return;
      }
      case CHANNELMSG_OPENCHANNEL_RESULT: {
        const { childRelid: relid, openId, status } = msg;
        const ch = this.channelsByRelid.get(relid);
        if (ch === undefined) {
          this.protocolError('unknown-channel', msg.type, `no channel ${relid}`, relid);
          return;
        }
        const w = this.opens.get(relid);
        if (w === undefined || ch.phase !== 'opening' || ch.openId !== openId) {
          this.protocolError(
            'unexpected',
            msg.type,
            `no open ${openId} of channel ${relid} in flight`,
            relid,
          );
          return;
        }
        this.opens.delete(relid);
        ch.phase = status === 0 ? 'open' : 'offered';
        w.resolve(status);
        return;
      }
      case CHANNELMSG_GPADL_CREATED: {
        const { childRelid: relid, gpadl, creationStatus } = msg;
        const w = this.gpadlCreates.get(gpadl);
        if (w === undefined) {
          this.protocolError(
            'unexpected',
            msg.type,
            `no GPADL ${gpadl} being created`,
            relid,
            undefined,
            gpadl,
          );
          return;
        }
        if (w.relid !== relid) {
          this.protocolError(
            'invalid',
            msg.type,
            `GPADL ${gpadl} belongs to channel ${w.relid}, not ${relid}`,
            relid,
            undefined,
            gpadl,
          );
          return;
        }
        this.gpadlCreates.delete(gpadl);
        const ch = this.channelsByRelid.get(relid);
        if (creationStatus === 0 && ch !== undefined) ch.gpadls.add(gpadl);
        w.resolve({ gpadlId: gpadl, status: creationStatus });
        return;
      }
      case CHANNELMSG_GPADL_TORNDOWN: {
        const w = this.teardowns.get(msg.gpadl);
        if (w === undefined) {
          this.protocolError(
            'unexpected',
            msg.type,
            `no GPADL ${msg.gpadl} being torn down`,
            undefined,
            undefined,
            msg.gpadl,
          );
          return;
        }
        this.teardowns.delete(msg.gpadl);
        this.channelsByRelid.get(w.relid)?.gpadls.delete(msg.gpadl);
        w.resolve();
        for (const done of this.tornDownWatchers.get(msg.gpadl) ?? []) done();
        this.tornDownWatchers.delete(msg.gpadl);
        return;
      }
      case CHANNELMSG_UNLOAD_RESPONSE:
        if (this.unloadWaiter === null) {
          this.protocolError('unexpected', msg.type, 'UNLOAD_RESPONSE without UNLOAD');
          return;
        }
        this.finishUnload();
        return;
      case CHANNELMSG_MODIFYCHANNEL_RESPONSE: {
        const w = this.modifies.get(msg.childRelid);
        if (w === undefined) {
          this.protocolError(
            'unexpected',
            msg.type,
            `no modify of channel ${msg.childRelid} in flight`,
            msg.childRelid,
          );
          return;
        }
        this.modifies.delete(msg.childRelid);
        w.resolve(msg.status);
        return;
      }
      case CHANNELMSG_TL_CONNECT_RESULT: {
        const key = `${msg.endpointId}/${msg.serviceId}`;
        const w = this.tlConnects.get(key);
        if (w === undefined) {
          this.protocolError('unexpected', msg.type, 'no hv_sock connect for this endpoint in flight');
          return;
        }
        this.tlConnects.delete(key);
        w.resolve({ accepted: false, status: msg.status });
        return;
      }
      case CHANNELMSG_PAUSE_RESPONSE: {
        const w = this.pauseWaiter;
        if (w === null) {
          this.protocolError('unexpected', msg.type, 'PAUSE_RESPONSE without PAUSE');
          return;
        }
        this.pauseWaiter = null;
        w.resolve();
        return;
      }
      default:
        this.protocolError('unexpected', msg.type, `${channelMessageName(msg.type)} was not asked for`);
    }
  }

  private handleOffer(msg: OfferChannelMessage): void {
    const relid = msg.childRelid;
    const refuse = (code: BusProtocolErrorCode, text: string): void =>
      this.protocolError(code, CHANNELMSG_OFFERCHANNEL, `offer of relid ${relid}: ${text}`, relid);
    if (relid === 0 || relid > MAX_RELID) {
      refuse('invalid', 'relid must be 1..2047');
      return;
    }
    if (this.channelsByRelid.has(relid)) {
      refuse('duplicate', 'the relid is in use');
      return;
    }
    if (msg.connectionId > HV_CONNECTION_ID_MAX) {
      refuse('invalid', `connection id 0x${msg.connectionId.toString(16)} is above 24 bits`);
      return;
    }
    const monitorAllocated = (msg.monitorAllocated & 1) !== 0;
    if (monitorAllocated && msg.monitorId >= MONITOR_IDS) {
      refuse('invalid', `monitor id ${msg.monitorId} >= 128`);
      return;
    }
    const same = [...this.channelsByRelid.values()].filter(
      (c) =>
        c.phase !== 'revoked' &&
        c.offer.interfaceType.equals(msg.ifType) &&
        c.offer.interfaceInstance.equals(msg.ifInstance),
    );
    if (same.some((c) => c.offer.subChannelIndex === msg.subChannelIndex)) {
      refuse(
        'duplicate',
        `${msg.ifType}/${msg.ifInstance} subchannel ${msg.subChannelIndex} is already offered`,
      );
      return;
    }
    if (msg.subChannelIndex !== 0 && !same.some((c) => c.offer.subChannelIndex === 0)) {
      refuse('invalid', `subchannel ${msg.subChannelIndex} without its primary`);
      return;
    }
    const pipe = (msg.chnFlags & VMBUS_CHANNEL_NAMED_PIPE_MODE) !== 0;
    const u = msg.userDefined;
    const offer: ClientOffer = Object.freeze({
      relid,
      connectionId: this.version >= VERSION_WIN7 ? msg.connectionId : 2,
      interfaceType: msg.ifType,
      interfaceInstance: msg.ifInstance,
      flags: msg.chnFlags,
      mmioMegabytes: msg.mmioMegabytes,
      mmioMegabytesOptional: msg.mmioMegabytesOptional,
      userDefined: u,
      subChannelIndex: msg.subChannelIndex,
      monitorId: msg.monitorId,
      monitorAllocated,
      isDedicatedInterrupt: (msg.isDedicatedInterrupt & 1) !== 0,
      pipeMode: pipe ? (u[0]! | (u[1]! << 8) | (u[2]! << 16)) + u[3]! * 0x1000000 : null,
      message: msg,
    });
    const ch: ClientChannel = {
      offer,
      phase: 'offered',
      openId: 0,
      eventFlag: relid,
      signalConnectionId: offer.connectionId,
      gpadls: new Set(),
      hostSignal: null,
      releasing: null,
    };
    this.channelsByRelid.set(relid, ch);
    this.offerListeners.emit(offer);
    for (const w of [...this.offerWatchers]) {
      if (w.match(offer)) {
        this.offerWatchers.delete(w);
        w.waiter.resolve(offer);
      }
    }
    if ((msg.chnFlags & VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER) !== 0) {
      const key = `${msg.ifInstance}/${msg.ifType}`;
      const w = this.tlConnects.get(key);
      if (w !== undefined) {
        this.tlConnects.delete(key);
        w.resolve({ accepted: true, offer });
      }
    }
  }

  private handleRescind(relid: number): void {
    const ch = this.channelsByRelid.get(relid);
    if (ch === undefined) {
      this.protocolError('unknown-channel', CHANNELMSG_RESCIND_CHANNELOFFER, `no channel ${relid}`, relid);
      return;
    }
    if (ch.phase === 'revoked') {
      this.protocolError(
        'duplicate',
        CHANNELMSG_RESCIND_CHANNELOFFER,
        `channel ${relid} is already rescinded`,
        relid,
      );
      return;
    }
    ch.phase = 'revoked';
    const rescinded = new BusError('rescinded', `channel ${relid} was rescinded`);
    const open = this.opens.get(relid);
    if (open !== undefined) {
      this.opens.delete(relid);
      open.reject(rescinded);
    }
    const modify = this.modifies.get(relid);
    if (modify !== undefined) {
      this.modifies.delete(relid);
      modify.reject(rescinded);
    }
    const results = this.rescindListeners.emit(ch.offer);
    if (!this.autoRelease) return;
    void Promise.allSettled(results).then(() => {
      if (this.channelsByRelid.get(relid) === ch && this.phase === 'connected') {
        this.releaseChannel(relid).catch((error: unknown) => this.handlerError(error));
      }
    });
  }

  // ------------------------------------------------------------------------------------------
  // Helpers

  private finishUnload(error?: unknown): void {
    const w = this.unloadWaiter;
    this.unloadWaiter = null;
    this.failAll(new BusError('disconnected', 'the connection was unloaded'), 'disconnected');
    if (error !== undefined)
      w?.reject(new BusError('send-failed', `UNLOAD failed: ${String(error)}`, { cause: error }));
    else w?.resolve();
  }

  /** Forgets every channel and rejects everything in flight (unload done, link closed, dispose). */
  private failAll(error: BusError, phase: ConnectionPhase): void {
    const wasConnected = this.phase === 'connected' || this.phase === 'unloading';
    this.phase = phase;
    for (const ch of [...this.channelsByRelid.values()]) this.forgetChannel(ch);
    const rejectAll = <T>(map: Map<unknown, Waiter<T>>): void => {
      const list = [...map.values()];
      map.clear();
      for (const w of list) w.reject(error);
    };
    rejectAll(this.gpadlCreates);
    rejectAll(this.teardowns);
    rejectAll(this.opens);
    rejectAll(this.modifies);
    rejectAll(this.tlConnects);
    for (const list of this.tornDownWatchers.values()) for (const done of list) done();
    this.tornDownWatchers.clear();
    for (const w of [this.contactWaiter, this.offersWaiter, this.pauseWaiter]) w?.reject(error);
    this.contactWaiter = this.offersWaiter = this.pauseWaiter = null;
    if (error.code !== 'disconnected' && this.unloadWaiter !== null) {
      this.unloadWaiter.reject(error);
      this.unloadWaiter = null;
    }
    for (const w of this.offerWatchers) w.waiter.reject(error);
    this.offerWatchers.clear();
    if (wasConnected) this.disconnectListeners.emit();
  }

  private forgetChannel(ch: ClientChannel): void {
    if (ch.hostSignal !== null) this.link.onEvent(ch.eventFlag, null);
    ch.hostSignal = null;
    this.channelsByRelid.delete(ch.offer.relid);
  }

  private moveHostSignal(ch: ClientChannel, eventFlag: number): void {
    if (ch.eventFlag === eventFlag) return;
    const handler = ch.hostSignal;
    if (handler !== null) this.link.onEvent(ch.eventFlag, null);
    ch.eventFlag = eventFlag;
    if (handler !== null) this.link.onEvent(eventFlag, () => handler());
  }

  private allocateGpadlId(): number {
    for (;;) {
      const id = this.nextGpadlId;
      this.nextGpadlId = id >= 0xffffffff ? 1 : id + 1;
      let used = this.gpadlCreates.has(id);
      if (!used) for (const c of this.channelsByRelid.values()) if (c.gpadls.has(id)) used = true;
      if (!used && id !== 0) return id;
    }
  }

  private channelOrThrow(what: string, relid: number): ClientChannel {
    const ch = this.channelsByRelid.get(relid);
    if (ch === undefined) throw new Error(`${what}: no offer with relid ${relid}`);
    return ch;
  }

  private requireConnected(what: string): void {
    this.checkNotDisposed();
    if (this.phase !== 'connected') throw new Error(`${what}: the client is ${this.phase}, not connected`);
  }

  private requireFeature(what: string, flag: number): void {
    if ((this.features & flag) === 0)
      throw new Error(`${what}: feature 0x${flag.toString(16)} was not negotiated`);
  }

  private checkNotDisposed(): void {
    if (this.disposed) throw new Error('the VMBus client has been disposed');
  }

  /** Posts and, on failure, rejects `waiter` (after `cleanup`) with BusError 'send-failed'. */
  private postOrReject(
    msg: ChannelMessage,
    waiter: { reject: (e: unknown) => void },
    cleanup?: () => void,
  ): void {
    this.post(msg).then(undefined, (error: unknown) => {
      cleanup?.();
      waiter.reject(
        new BusError('send-failed', `${channelMessageName(msg.type)}: ${String(error)}`, { cause: error }),
      );
    });
  }

  private post(msg: ChannelMessage, port: number = this.msgConnId): Promise<void> {
    const bytes = encodeMessage(msg);
    // Traced only if the hypervisor will take it (a post to a port nobody listens on fails).
    if (this.tracer !== undefined && this.link.hostListens(port)) this.tracer('out', decodeMessage(bytes));
    return this.link.post(port, bytes);
  }

  private postBytes(bytes: Uint8Array, port: number): Promise<void> {
    if (this.tracer !== undefined) this.tracer('out', decodeMessage(bytes));
    return this.link.post(port, bytes);
  }

  private protocolError(
    code: BusProtocolErrorCode,
    type: number | undefined,
    text: string,
    relid?: number,
    cause?: unknown,
    gpadlId?: number,
  ): void {
    const name = type === undefined ? '' : `${channelMessageName(type) ?? `type ${type}`}: `;
    this.protocolErrors.emit(
      new BusProtocolError(code, 'client', type, `${name}${text}`, relid, gpadlId, { cause }),
    );
  }

  private handlerError(error: unknown): void {
    if (this.handlerErrors.size === 0) rethrowLater(error);
    else this.handlerErrors.emit(error);
  }
}
