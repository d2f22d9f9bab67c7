// A KMCL channel endpoint (spec/kmcl-api.md sections 2-3), for either role, over an endpoint port
// (port.ts) it does not otherwise know. It holds the configuration set by the Init* functions, the
// state machine of 2.2-2.4 (conn x run, plus "flowing"), the outgoing queues (packets waiting for
// ring space or for the channel to start; completions waiting for ring space), the transaction
// table, and the incoming path (tokens, quota, deferral, external data). Lifecycle work (the
// peer opening or closing, Start's callbacks, Pause, Disable) runs one operation at a time on a
// per-channel promise chain, so state-change callbacks never overlap. The packet hot path (send,
// receive, complete) allocates nothing in the steady state: packet objects, tokens and handles are
// pooled, ring access goes through the reusable RingWriter/RingReader cursors.
//
// Choices where the spec is silent (each also in the report):
// - Q1: Init* setters work only while Disabled and before the first Enable (provider option
//   `allowReinit` also allows them between Disable and the next Enable); else _1.
// - Q2: an Opened callback that fails leaves a server Enabled (or PeerClosed) with its offer up
//   and the guest's open refused with that status; a client closes the channel again and stays
//   Enabled, waiting for another matching offer (the refused one is not retried).
// - Q3: Suspend is delivered on both roles whenever flowing stops.
// - Q4: deliveries may start before PostStarted runs and overlap it.
// - Q5: Start while Disabled records Active; Disable while Disabled is a no-op; Enable when not
//   Disabled -> STATUS_INVALID_DEVICE_STATE.
// - Q6: on Disable, peer close or rescind, every queued and every awaiting outgoing packet
//   completes with STATUS_DEVICE_REMOVED (queued ones too, not CANCELLED), exactly once, as soon
//   as the shutdown begins (so a synchronous request waiting in PostStarted cannot deadlock it).
//   On Pause they are kept. Packets sent after Closed stay queued for the next open.
// - Q7: the ProcessPacket Buffer stays valid until PacketComplete; a send copies the caller's
//   buffer (or writes it to the ring) before returning.
// - Q8: VmbChannelPacketFail consumes the token (no completion is sent) and stops the incoming
//   queue until the next Start (after Pause) or the next open.
// - A packet's Buffer/BufferLength and a completion's payload are the wire payload, which is
//   padded to 8 bytes: the wire has no exact length (protocols carry their own). Pipe mode carries
//   the exact length in its pipe header.
// - GetExternalData never returns STATUS_PENDING (guest memory is always resident).
// - A deferred packet holds back later packets until it has been re-delivered (order is kept).
// - External data may only be sent by the client (guest) endpoint.
// - Leftover GPADLs after Closed: the client deletes them, the server unmaps them.

import { AsyncLocalStorage } from 'node:async_hooks';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { GrantedMdl } from '../memory/host-view.js';
import { checkMdlShape, type Mdl } from '../memory/mdl.js';
import { RingError } from '../ring/errors.js';
import type { RingPacket, RingReader } from '../ring/reader.js';
import { RING_WRITE_FULL, RING_WRITE_OK, type RingWriter } from '../ring/writer.js';
import { PAGE_SIZE } from '../wire/constants.js';
import { WireError } from '../wire/errors.js';
import { GPADL_MAX_RANGE_BUFLEN, gpaRangesByteLength } from '../wire/gpadl.js';
import { Guid } from '../wire/guid.js';
import {
  type GpaRange,
  gpaDirectRangeCount,
  gpaRangeByteCount,
  gpaRangeByteOffset,
  gpaRangeEnd,
  gpaRangePfn,
  gpaRangePfnCount,
  MAX_PIPE_DATA_PAYLOAD,
  VM_PKT_COMP,
  VM_PKT_DATA_INBAND,
  VM_PKT_DATA_USING_GPA_DIRECT,
  VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
  VMBUS_PIPE_HEADER_SIZE,
  VMBUS_PIPE_TYPE_DATA,
  VMPACKET_DESCRIPTOR_SIZE,
} from '../wire/packets.js';
import {
  DEFAULT_INCOMING_RING_PAGES,
  DEFAULT_MAXIMUM_EXTERNAL_CHAIN_LENGTH,
  DEFAULT_MAXIMUM_EXTERNAL_DATA,
  DEFAULT_MAXIMUM_PACKET_SIZE,
  DEFAULT_OUTGOING_RING_PAGES,
  DEFAULT_TRANSACTION_QUOTA,
  MAXIMUM_GPADL_PAGES,
  PACKET_OBJECT_OVERHEAD,
  VMBUS_CHANNEL_FORMAT_FLAG_FORCE_MDL_LENGTH,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAGS,
  VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY,
  VMBUS_CHANNEL_GPADL_FLAGS,
  VMBUS_CHANNEL_INIT_FLAG_IS_PIPE,
  VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY,
  VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAGS,
  VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_FORCE_NEW_CHANNEL,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE,
} from './constants.js';
import { type ExecutionContext, enterContext, leaveContext, requireBlocking } from './context.js';
import { KmclContractViolation, KmclPeerError, type KmclPeerErrorCode } from './errors.js';
import {
  NT_SUCCESS,
  type NTSTATUS,
  STATUS_ACCESS_DENIED,
  STATUS_BUFFER_OVERFLOW,
  STATUS_CANCELLED,
  STATUS_DATA_ERROR,
  STATUS_DEVICE_BUSY,
  STATUS_DEVICE_REMOVED,
  STATUS_INSUFFICIENT_RESOURCES,
  STATUS_INVALID_BUFFER_SIZE,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_PARAMETER,
  STATUS_INVALID_PARAMETER_1,
  STATUS_INVALID_PARAMETER_2,
  STATUS_INVALID_PARAMETER_3,
  STATUS_INVALID_PARAMETER_4,
  STATUS_INVALID_PARAMETER_5,
  STATUS_INVALID_PARAMETER_6,
  STATUS_NOT_SUPPORTED,
  STATUS_SUCCESS,
  STATUS_UNSUCCESSFUL,
} from './ntstatus.js';
import {
  beginGpaDirect,
  encodeInband,
  Fifo,
  finishGpaDirect,
  gpaDirectHeaderBytes,
  type HandleTable,
  KmclPacket,
  KmclToken,
  maxExternalPfns,
  putPfn,
  putRange,
  type TokenState,
  TransactionTable,
  type VMBPACKET,
  type VMBPACKETCOMPLETION,
} from './packet.js';
import type {
  ClientPort,
  ClientPortEvents,
  PortDataPath,
  PortMmio,
  PortOffer,
  PortOpenRequest,
  PortTask,
  ServerPort,
  ServerPortEvents,
} from './port.js';
import {
  type ChannelStateHeader,
  ChannelStateWriter,
  ChunkAssembler,
  ChunkWriter,
  type IndexedChannelState,
  indexChannelState,
  MAX_VSP_PACKET_STATE,
  PacketLibFields,
  type SavedConn,
  type SavedGpadlMapping,
  SavedStateError,
  scanPacketLib,
} from './saved-state.js';

// ---------------------------------------------------------------------------------------------
// Public types

declare const channelBrand: unique symbol;
declare const kernelHandleBrand: unique symbol;
declare const userHandleBrand: unique symbol;

/** VMBCHANNEL: an opaque channel handle. */
export interface VMBCHANNEL {
  readonly [channelBrand]: true;
}
/** A kernel handle to a partition's VMBus (from VmbConvertVmbusHandleToKernelHandle). */
export interface VmbusKernelHandle {
  readonly [kernelHandleBrand]: true;
}
/** The user-mode VMBus handle a VM worker process holds for a partition. */
export type VmbusUserHandle = number & { readonly [userHandleBrand]: true };

export type EvtVmbChannelOpened = (Channel: VMBCHANNEL) => NTSTATUS | Promise<NTSTATUS>;
export type EvtVmbChannelClosed = (Channel: VMBCHANNEL) => void | Promise<void>;
export type EvtVmbChannelSuspend = (Channel: VMBCHANNEL) => void | Promise<void>;
export type EvtVmbChannelStarted = (Channel: VMBCHANNEL) => void | Promise<void>;
export type EvtVmbChannelPostStarted = (Channel: VMBCHANNEL) => void | Promise<void>;
export type EvtVmbChannelProcessPacket = (
  Channel: VMBCHANNEL,
  Packet: VMBPACKETCOMPLETION,
  Buffer: Uint8Array,
  BufferLength: number,
  Flags: number,
) => void;
export type EvtVmbChannelProcessingComplete = (Channel: VMBCHANNEL, PacketsProcessed: number) => void;
export type EvtVmbChannelPnpFailure = (Channel: VMBCHANNEL, FailureStatus: NTSTATUS) => void | Promise<void>;
/** Stored by VmbServerChannelInitSetSaveRestorePacketCallbacks (save/restore is a later issue). */
export type EvtVmbChannelSavePacket = (
  Channel: VMBCHANNEL,
  Packet: VMBPACKET,
  SaveBuf: Uint8Array | null,
  SaveBufSize: number,
) => { status: NTSTATUS; BytesNeeded: number };
export type EvtVmbChannelRestorePacket = (
  Channel: VMBCHANNEL,
  LibBuf: Uint8Array,
  LibBufSize: number,
  SaveBuf: Uint8Array,
  SaveBufSize: number,
) => NTSTATUS;

/** VMB_CHANNEL_STATE_CHANGE_CALLBACKS. */
export interface VMB_CHANNEL_STATE_CHANGE_CALLBACKS {
  Version: number;
  Size: number;
  EvtChannelOpened: EvtVmbChannelOpened | null;
  EvtChannelClosed: EvtVmbChannelClosed | null;
  EvtChannelSuspend: EvtVmbChannelSuspend | null;
  EvtChannelStarted: EvtVmbChannelStarted | null;
  EvtChannelPostStarted: EvtVmbChannelPostStarted | null;
}

/** What a channel needs from the provider (the partition's KMCL instance) that made it. */
export interface ChannelProvider {
  readonly side: 'host' | 'guest';
  readonly packets: HandleTable<KmclPacket>;
  readonly tokens: HandleTable<KmclToken>;
  readonly allowReinit: boolean;
  /** The guest's RAM (guest side), else null. */
  readonly guestMemory: GuestMemory | null;
  isKernelHandle(handle: unknown): handle is VmbusKernelHandle;
  /** A server port for the partition behind `handle` (null: the default one) at `vtl`, or a failure status. */
  createServerPort(handle: VmbusKernelHandle | null, vtl: number): ServerPort | NTSTATUS;
  createClientPort(): ClientPort;
  peerError(channel: KmclChannel, error: KmclPeerError): void;
  callbackError(channel: KmclChannel, callback: string, error: unknown): void;
}

/** A snapshot of a channel's state for tools and tests (not part of the KMCL tables). */
export interface KmclChannelInfo {
  role: 'server' | 'client';
  state: ChannelConn;
  run: 'paused' | 'active';
  flowing: boolean;
  pipe: boolean;
  outstandingIncoming: number;
  queuedOutgoing: number;
  queuedCompletions: number;
  awaitingCompletion: number;
  transactionQuota: number;
  peerErrors: number;
  lastPeerError: KmclPeerError | null;
  dataPathFailed: boolean;
  incomingStopped: boolean;
  mappedGpadls: number;
  gpadls: number;
}

export type ChannelConn = 'disabled' | 'enabled' | 'open' | 'peerClosed';

type StateCallbackName =
  | 'EvtChannelOpened'
  | 'EvtChannelClosed'
  | 'EvtChannelSuspend'
  | 'EvtChannelStarted'
  | 'EvtChannelPostStarted'
  | 'EvtChannelPnpFailure';

/** Which channel's state callback the current async flow is inside (to refuse Start/Pause there). */
const stateCallbackScope = new AsyncLocalStorage<{ channel: KmclChannel; name: StateCallbackName }>();

const EMPTY = new Uint8Array(0);
/** 100 ns units between 1601-01-01 and 1970-01-01 (KeWait absolute timeouts). */
const EPOCH_1601_100NS = 116444736000000000n;

function noop(): void {}

/** The result of VmbChannelSendSynchronousRequest. */
export interface SyncRequestResult {
  status: NTSTATUS;
  /** Bytes written to CompletionBuffer. */
  CompletionBufferSize: number;
}

// ---------------------------------------------------------------------------------------------

export class KmclChannel {
  readonly role: 'server' | 'client';
  readonly provider: ChannelProvider;
  readonly parentDevice: unknown;

  // --- configuration (Init*) ---
  friendlyName = '';
  initFlags = 0;
  maximumPacketSize = DEFAULT_MAXIMUM_PACKET_SIZE;
  maximumExternalData = DEFAULT_MAXIMUM_EXTERNAL_DATA;
  maximumExternalChain = DEFAULT_MAXIMUM_EXTERNAL_CHAIN_LENGTH;
  clientContextSize = 0;
  processPacket: EvtVmbChannelProcessPacket | null = null;
  processingComplete: EvtVmbChannelProcessingComplete | null = null;
  stateCallbacks: VMB_CHANNEL_STATE_CHANGE_CALLBACKS | null = null;
  incomingPages = DEFAULT_INCOMING_RING_PAGES;
  outgoingPages = DEFAULT_OUTGOING_RING_PAGES;
  targetType: Guid | null = null;
  targetInstance: Guid | null = null;
  pnpFailure: EvtVmbChannelPnpFailure | null = null;
  serverFlags = 0;
  mmioMegabytes = 0;
  mmioMegabytesOptional = 0;
  interfaceType: Guid | null = null;
  interfaceInstance: Guid | null = null;
  targetVtl = 0;
  vmbusHandle: VmbusKernelHandle | null = null;
  savePacket: EvtVmbChannelSavePacket | null = null;
  restorePacket: EvtVmbChannelRestorePacket | null = null;
  incomingAtPassive = false;
  quota = DEFAULT_TRANSACTION_QUOTA;
  pointer: unknown = null;
  interruptLatency = 0;
  /** Test hook: the context ProcessPacket runs in, overriding the normal rule (null: normal). */
  forcedProcessPacketContext: ExecutionContext | null = null;

  // --- state ---
  private conn: ChannelConn = 'disabled';
  private run: 'paused' | 'active' = 'paused';
  private flowing = false;
  /** Set by Pause on a Disabled channel: the next Enable leaves it paused (T3). */
  private autoPause = false;
  private enabledOnce = false;
  private destroyed = false;
  /** Disable has begun (until it finished). */
  private disabling = false;
  /** The current session is being shut down (Disable, peer close, rescind). */
  private shuttingDown = false;
  /** The peer is gone: nothing more is written to the rings. */
  private peerGone = false;
  private lifecycle: Promise<void> = Promise.resolve();
  private serverPort: ServerPort | null = null;
  private clientPort: ClientPort | null = null;
  private data: PortDataPath | null = null;
  private writer: RingWriter | null = null;
  private reader: RingReader | null = null;
  private boundInstance: Guid | null = null;
  private mmio: PortMmio | null = null;
  private dataPathFailed = false;
  private readonly serverEvents: ServerPortEvents;
  private readonly clientEvents: ClientPortEvents;
  private readonly signalHandler = (): void => this.onSignal();
  readonly publicHandle: VMBCHANNEL;

  // --- outgoing ---
  private readonly packetPool: KmclPacket[] = [];
  private stagingSize = 0;
  private readonly dataQueue = new Fifo<KmclPacket>();
  private readonly completionQueue = new Fifo<KmclToken>();
  private readonly txns = new TransactionTable();
  private readonly done = new Fifo<KmclPacket>();
  private readonly doneStatus = new Fifo<NTSTATUS>();
  private runningDone = false;
  private drainingOut = false;
  private outAgain = false;
  private batchDepth = 0;

  // --- incoming ---
  private readonly tokenPool: KmclToken[] = [];
  private incomingOn = false;
  private incomingStopped = false;
  private outstanding = 0;
  private quotaStalled = false;
  private drainingIn = false;
  private inAgain = false;
  private deferred: KmclToken | null = null;
  private idleWaiters: (() => void)[] = [];
  private headerScratch = new Uint8Array(256);
  private headerView = new DataView(this.headerScratch.buffer);
  private completionScratch = new Uint8Array(256);
  private completionView: Uint8Array = this.completionScratch.subarray(0, 0);
  private readonly drainTask: PortTask = { queued: false, run: () => this.drainIncoming() };
  private readonly passiveTask: PortTask = { queued: false, run: () => this.redeliverDeferred() };

  // --- GPADLs ---
  /** Client: GPADLs this channel created. */
  private readonly gpadls = new Set<number>();
  /** Server: GPADLs this channel has mapped. */
  private readonly maps = new Map<number, GrantedMdl>();

  // --- diagnostics ---
  private peerErrorCount = 0;
  private lastPeerError: KmclPeerError | null = null;

  constructor(provider: ChannelProvider, parentDevice: unknown, isServer: boolean) {
    this.provider = provider;
    this.parentDevice = parentDevice;
    this.role = isServer ? 'server' : 'client';
    this.publicHandle = this as unknown as VMBCHANNEL;
    this.serverEvents = {
      onOpen: (request) => this.onPortOpen(request),
      onClose: () => this.onPortClose(),
    };
    this.clientEvents = {
      onOffer: (offer) => this.onOffer(offer),
      onRescind: () => this.onRescind(),
    };
  }

  /** The channel behind a VMBCHANNEL, or null. */
  static from(channel: unknown): KmclChannel | null {
    return channel instanceof KmclChannel ? channel : null;
  }

  get isDestroyed(): boolean {
    return this.destroyed;
  }

  /** True when the channel works in pipe mode. */
  get pipe(): boolean {
    if ((this.initFlags & VMBUS_CHANNEL_INIT_FLAG_IS_PIPE) !== 0) return true;
    return this.role === 'server' && (this.serverFlags & VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE) !== 0;
  }

  info(): KmclChannelInfo {
    return {
      role: this.role,
      state: this.conn,
      run: this.run,
      flowing: this.flowing,
      pipe: this.pipe,
      outstandingIncoming: this.outstanding,
      queuedOutgoing: this.dataQueue.length,
      queuedCompletions: this.completionQueue.length,
      awaitingCompletion: this.txns.size,
      transactionQuota: this.quota,
      peerErrors: this.peerErrorCount,
      lastPeerError: this.lastPeerError,
      dataPathFailed: this.dataPathFailed,
      incomingStopped: this.incomingStopped,
      mappedGpadls: this.maps.size,
      gpadls: this.gpadls.size,
    };
  }

  // ===========================================================================================
  // Configuration

  /** True when Init* setters are allowed now (else they return STATUS_INVALID_PARAMETER_1, spec Q1). */
  initAllowed(): boolean {
    if (this.destroyed || this.conn !== 'disabled' || this.disabling) return false;
    return !this.enabledOnce || this.provider.allowReinit;
  }

  /** Bytes of a packet's staging area: the largest packet this channel can ever build. */
  stagingBytes(): number {
    if (this.stagingSize === 0) {
      const pfns = maxExternalPfns(this.maximumExternalData) + this.maximumExternalChain;
      const ext = gpaDirectHeaderBytes(this.maximumExternalChain, pfns);
      const inline = VMPACKET_DESCRIPTOR_SIZE + VMBUS_PIPE_HEADER_SIZE;
      this.stagingSize = (Math.max(ext, inline) + this.maximumPacketSize + 7) & ~7;
    }
    return this.stagingSize;
  }

  /** VmbChannelSizeofPacket. */
  sizeofPacket(): number {
    return PACKET_OBJECT_OVERHEAD + this.stagingBytes();
  }

  /** Forget the cached staging size (an Init* setter changed a limit). */
  limitsChanged(): void {
    this.stagingSize = 0;
    this.packetPool.length = 0;
  }

  // ===========================================================================================
  // Lifecycle: Enable / Disable / Start / Pause / Cleanup

  private inOwnStateCallback(): StateCallbackName | null {
    const scope = stateCallbackScope.getStore();
    return scope !== undefined && scope.channel === this ? scope.name : null;
  }

  private refuseInsideStateCallback(api: string): void {
    const name = this.inOwnStateCallback();
    if (name !== null) {
      throw new KmclContractViolation(
        'call-inside-state-callback',
        api,
        `must not be called from the channel's own ${name} callback`,
      );
    }
  }

  private refuseWhileSaving(api: string): void {
    if (this.saveCtx !== null) {
      throw new KmclContractViolation(
        'bad-state',
        api,
        'a save is in progress (call VmbChannelSaveEnd first)',
      );
    }
  }

  private checkAlive(api: string): void {
    if (this.destroyed) throw new KmclContractViolation('use-after-free', api, 'the channel was cleaned up');
  }

  enable(): NTSTATUS {
    this.checkAlive('VmbChannelEnable');
    this.refuseInsideStateCallback('VmbChannelEnable');
    if (this.restoredPendingEnable) {
      // Restored (VmbChannelRestoreFromBuffer): the offer already exists; Enable confirms it.
      this.restoredPendingEnable = false;
      return STATUS_SUCCESS;
    }
    if (this.savedAway || this.restoreChunks !== null) return STATUS_INVALID_DEVICE_STATE;
    if (this.conn !== 'disabled' || this.disabling) return STATUS_INVALID_DEVICE_STATE;
    if (this.processPacket === null) return STATUS_INVALID_DEVICE_STATE;
    this.stagingBytes();
    if (this.role === 'server') {
      if (this.interfaceType === null || this.interfaceInstance === null) return STATUS_INVALID_DEVICE_STATE;
      const port = this.provider.createServerPort(this.vmbusHandle, this.targetVtl);
      if (typeof port === 'number') return port;
      const status = port.offer(
        {
          interfaceType: this.interfaceType,
          interfaceInstance: this.interfaceInstance,
          serverFlags: this.serverFlags,
          pipe: this.pipe,
          mmioMegabytes: this.mmioMegabytes,
          mmioMegabytesOptional: this.mmioMegabytesOptional,
          userDefined: EMPTY,
          friendlyName: this.friendlyName,
        },
        this.serverEvents,
      );
      if (!NT_SUCCESS(status)) return status;
      this.serverPort = port;
    } else {
      if (this.targetType === null) return STATUS_INVALID_DEVICE_STATE;
      const port = this.provider.createClientPort();
      this.clientPort = port;
      if (!this.autoPause) this.run = 'active';
      port.watch(
        { interfaceType: this.targetType, interfaceInstance: this.targetInstance },
        this.clientEvents,
      );
    }
    this.conn = 'enabled';
    this.enabledOnce = true;
    this.shuttingDown = false;
    this.peerGone = false;
    return STATUS_SUCCESS;
  }

  start(): void {
    this.checkAlive('VmbChannelStart');
    this.refuseInsideStateCallback('VmbChannelStart');
    this.refuseWhileSaving('VmbChannelStart');
    if (this.conn === 'disabled') {
      this.autoPause = false;
      this.run = 'active';
      return;
    }
    if (this.run === 'active') return;
    this.run = 'active';
    this.incomingStopped = false;
    if (this.conn === 'open') void this.enqueue(() => this.startFlow());
  }

  pause(): Promise<void> {
    this.checkAlive('VmbChannelPause');
    requireBlocking('VmbChannelPause');
    this.refuseInsideStateCallback('VmbChannelPause');
    if (this.conn === 'disabled') {
      this.autoPause = true;
      this.run = 'paused';
      return Promise.resolve();
    }
    this.run = 'paused';
    return this.enqueue(() => this.suspendFlow());
  }

  disable(): Promise<void> {
    this.checkAlive('VmbChannelDisable');
    requireBlocking('VmbChannelDisable');
    this.refuseInsideStateCallback('VmbChannelDisable');
    this.refuseWhileSaving('VmbChannelDisable');
    this.restoredPendingEnable = false;
    if (this.conn === 'disabled' && !this.disabling) return Promise.resolve();
    this.disabling = true;
    this.beginShutdown(false);
    return this.enqueue(() => this.disableOp());
  }

  cleanup(): void {
    this.checkAlive('VmbChannelCleanup');
    this.refuseInsideStateCallback('VmbChannelCleanup');
    if (this.conn !== 'disabled' || this.disabling) {
      throw new KmclContractViolation('bad-state', 'VmbChannelCleanup', 'the channel must be disabled first');
    }
    this.cancelQueued(STATUS_DEVICE_REMOVED);
    this.destroyed = true;
    this.packetPool.length = 0;
  }

  private enqueue<T>(op: () => Promise<T>): Promise<T> {
    const p = this.lifecycle.then(op);
    this.lifecycle = p.then(noop, noop);
    return p;
  }

  /** Runs one state-change callback in blocking context, inside the callback scope. */
  private async callState(name: StateCallbackName, status: NTSTATUS = 0): Promise<NTSTATUS> {
    let fn: ((c: VMBCHANNEL, s: NTSTATUS) => unknown) | null;
    if (name === 'EvtChannelPnpFailure') fn = this.pnpFailure;
    else fn = this.stateCallbacks === null ? null : this.stateCallbacks[name];
    if (fn === null) return STATUS_SUCCESS;
    const f = fn;
    try {
      const result = await stateCallbackScope.run({ channel: this, name }, () => {
        const prev = enterContext('blocking');
        try {
          return f(this.publicHandle, status);
        } finally {
          leaveContext(prev);
        }
      });
      if (name === 'EvtChannelOpened') {
        return typeof result === 'number' && Number.isInteger(result) ? result | 0 : STATUS_UNSUCCESSFUL;
      }
      return STATUS_SUCCESS;
    } catch (e) {
      this.provider.callbackError(this, name, e);
      return STATUS_UNSUCCESSFUL;
    }
  }

  private attach(data: PortDataPath): void {
    this.data = data;
    this.writer = data.outgoing;
    this.reader = data.incoming;
    this.dataPathFailed = false;
    this.incomingStopped = false;
    this.peerGone = false;
    this.shuttingDown = false;
    data.setSignalHandler(this.signalHandler);
  }

  private detach(): void {
    if (this.data !== null) this.data.setSignalHandler(null);
    this.data = null;
    this.writer = null;
    this.reader = null;
    this.flowing = false;
    this.incomingOn = false;
    this.quotaStalled = false;
    // Completions still waiting for ring space go away with the rings.
    for (let t = this.completionQueue.shift(); t !== undefined; t = this.completionQueue.shift()) {
      this.releaseToken(t);
    }
    if (this.deferred !== null) {
      const t = this.deferred;
      this.deferred = null;
      this.provider.tokens.retire(t);
      this.releaseToken(t);
    }
  }

  // --- server side ---

  private onPortOpen(request: PortOpenRequest): Promise<NTSTATUS> {
    return this.enqueue(async () => {
      if ((this.conn !== 'enabled' && this.conn !== 'peerClosed') || this.disabling) {
        return STATUS_INVALID_DEVICE_STATE;
      }
      const before = this.conn;
      this.attach(request.data);
      this.mmio = request.mmio;
      this.conn = 'open';
      const status = await this.callState('EvtChannelOpened');
      if (!NT_SUCCESS(status) || this.disabling) {
        this.detach();
        this.mmio = null;
        this.conn = before;
        return NT_SUCCESS(status) ? STATUS_INVALID_DEVICE_STATE : status;
      }
      if (this.run === 'active') void this.enqueue(() => this.startFlow());
      return STATUS_SUCCESS;
    });
  }

  private onPortClose(): Promise<void> {
    this.beginShutdown(true);
    return this.enqueue(() => this.teardownSession('peer'));
  }

  // --- client side ---

  private onOffer(offer: PortOffer): void {
    if (this.conn !== 'enabled' || this.disabling) return;
    void this.enqueue(() => this.openClient(offer));
  }

  private async openClient(offer: PortOffer): Promise<void> {
    const port = this.clientPort;
    if (this.conn !== 'enabled' || this.disabling || port === null) return;
    if (offer.pipe !== this.pipe) {
      await this.callState('EvtChannelPnpFailure', STATUS_INVALID_PARAMETER);
      return;
    }
    const result = await port.open(offer, {
      incomingPages: this.incomingPages,
      outgoingPages: this.outgoingPages,
    });
    if (!NT_SUCCESS(result.status) || result.data === undefined) {
      await this.callState(
        'EvtChannelPnpFailure',
        NT_SUCCESS(result.status) ? STATUS_UNSUCCESSFUL : result.status,
      );
      return;
    }
    if (this.disabling || this.conn !== 'enabled') {
      await port.close();
      return;
    }
    this.attach(result.data);
    this.boundInstance = offer.interfaceInstance;
    this.mmio = offer.mmio;
    this.conn = 'open';
    const status = await this.callState('EvtChannelOpened');
    if (!NT_SUCCESS(status)) {
      this.detach();
      await port.close();
      await this.releaseGpadls();
      this.mmio = null;
      this.boundInstance = null;
      if (this.conn === 'open') this.conn = 'enabled';
      return;
    }
    if (this.run === 'active') void this.enqueue(() => this.startFlow());
  }

  private onRescind(): Promise<void> {
    this.beginShutdown(true);
    return this.enqueue(() => this.teardownSession('rescind'));
  }

  // --- both ---

  /** T8: Started -> queue on -> PostStarted. */
  private async startFlow(): Promise<void> {
    if (this.conn !== 'open' || this.run !== 'active' || this.flowing || this.shuttingDown) return;
    await this.callState('EvtChannelStarted');
    if (this.conn !== 'open' || this.run !== 'active' || this.shuttingDown || this.data === null) return;
    this.flowing = true;
    this.incomingOn = true;
    this.incomingStopped = false;
    this.drainOutgoing();
    if (this.deferred !== null) this.data.schedule(this.passiveTask);
    this.data.schedule(this.drainTask);
    await this.callState('EvtChannelPostStarted');
  }

  /** T10: Suspend, then wait until every delivered packet is completed. */
  private async suspendFlow(): Promise<void> {
    if (!this.flowing) return;
    this.flowing = false;
    this.incomingOn = false;
    await this.callState('EvtChannelSuspend');
    await this.waitNoOutstanding();
  }

  private beginShutdown(peerGone: boolean): void {
    this.shuttingDown = true;
    if (peerGone) this.peerGone = true;
    this.cancelOutgoing(STATUS_DEVICE_REMOVED);
  }

  /** T11/T12: the session ends (Suspend if flowing, wait, Closed, release everything). */
  private async teardownSession(reason: 'peer' | 'rescind' | 'disable'): Promise<void> {
    if (this.conn !== 'open') return;
    await this.suspendFlow();
    if (this.role === 'server') {
      await this.callState('EvtChannelClosed');
      this.cancelOutgoing(STATUS_DEVICE_REMOVED);
      await this.releaseGpadls();
      this.detach();
      this.mmio = null;
      this.conn = reason === 'peer' ? 'peerClosed' : 'enabled';
      return;
    }
    // A client closes the channel first (the server's Closed callback unmaps its GPADLs), then
    // tells its driver, whose Closed callback deletes the remaining GPADLs without blocking on
    // the server.
    this.detach();
    const port = this.clientPort;
    if (port !== null) await port.close();
    await this.callState('EvtChannelClosed');
    this.cancelOutgoing(STATUS_DEVICE_REMOVED);
    await this.releaseGpadls();
    this.mmio = null;
    this.boundInstance = null;
    if (reason === 'rescind') {
      port?.unwatch();
      this.clientPort = null;
      this.conn = 'disabled';
      this.run = 'paused';
      this.shuttingDown = false;
    } else {
      this.conn = 'enabled';
    }
  }

  private async disableOp(): Promise<void> {
    try {
      if (this.conn === 'open') await this.teardownSession('disable');
      if (this.role === 'server') {
        const port = this.serverPort;
        this.serverPort = null;
        if (port !== null) await port.revoke();
      } else {
        const port = this.clientPort;
        this.clientPort = null;
        if (port !== null) {
          port.unwatch();
          await port.close();
        }
      }
      this.detach();
      this.conn = 'disabled';
      this.run = 'paused';
      this.autoPause = false;
      this.boundInstance = null;
    } finally {
      this.disabling = false;
      this.shuttingDown = false;
      this.peerGone = false;
    }
  }

  /** Client: delete GPADLs left after Closed; server: unmap mappings left after Closed. */
  private async releaseGpadls(): Promise<void> {
    if (this.role === 'server') {
      for (const [handle, mdl] of [...this.maps]) {
        mdl.revoke();
        this.maps.delete(handle);
        this.serverPort?.setGpadlMapped(handle, false);
      }
      return;
    }
    const port = this.clientPort;
    for (const handle of [...this.gpadls]) {
      this.gpadls.delete(handle);
      if (port !== null) await port.deleteGpadl(handle);
    }
  }

  private waitNoOutstanding(): Promise<void> {
    if (this.outstanding === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  // ===========================================================================================
  // Queries

  getInterfaceInstance(): Guid {
    if (this.role === 'server') return this.interfaceInstance ?? Guid.NIL;
    return this.boundInstance ?? this.targetInstance ?? Guid.NIL;
  }

  getMmioSpace(): { MmioAddress: bigint; MmioSize: bigint } {
    this.checkAlive('VmbChannelGetMmioSpace');
    if (this.conn !== 'open' || this.mmio === null) {
      throw new KmclContractViolation(
        'bad-state',
        'VmbChannelGetMmioSpace',
        'valid only from EvtChannelOpened until the channel closes',
      );
    }
    return { MmioAddress: this.mmio.address, MmioSize: this.mmio.size };
  }

  setInterruptLatency(latency: number): { status: NTSTATUS; OriginalLatency: number } {
    this.checkAlive('VmbChannelSetInterruptLatency');
    if (this.role !== 'client') return { status: STATUS_NOT_SUPPORTED, OriginalLatency: 0 };
    if (!Number.isInteger(latency) || latency < 0 || latency > 0xffff) {
      return { status: STATUS_INVALID_PARAMETER_2, OriginalLatency: 0 };
    }
    if (this.conn !== 'open') return { status: STATUS_INVALID_DEVICE_STATE, OriginalLatency: 0 };
    const original = this.interruptLatency;
    this.interruptLatency = latency;
    return { status: STATUS_SUCCESS, OriginalLatency: original };
  }

  setTransactionQuota(quota: number): void {
    this.checkAlive('VmbChannelSetTransactionQuota');
    if (!Number.isInteger(quota) || quota <= 0 || quota > 0xffffffff) {
      throw new KmclContractViolation(
        'bad-argument',
        'VmbChannelSetTransactionQuota',
        `quota ${quota} must be > 0`,
      );
    }
    // A lower quota takes effect at the next packet; a higher one does not restart a stalled queue.
    this.quota = quota;
  }

  // ===========================================================================================
  // Packet objects

  allocatePacket(): KmclPacket | null {
    this.checkAlive('VmbPacketAllocate');
    let p = this.packetPool.pop();
    if (p === undefined) {
      // A packet allocated while a restore runs gets its staging area when it needs one: an exact
      // copy of its bytes from VmbPacketRestore, or a full one at its next send.
      p = new KmclPacket(this, this.restoringPackets ? EMPTY : new Uint8Array(this.stagingBytes()), null);
      if (!this.provider.packets.register(p)) return null;
    }
    p.state = 'idle';
    p.pointer = null;
    p.routine = null;
    p.routineSet = false;
    return p;
  }

  /** A packet object in caller memory (VmbPacketInitialize); `storage` is at least SizeofPacket bytes. */
  initializePacket(storage: Uint8Array): KmclPacket {
    const p = new KmclPacket(
      this,
      storage.subarray(PACKET_OBJECT_OVERHEAD, PACKET_OBJECT_OVERHEAD + this.stagingBytes()),
      storage,
    );
    p.state = 'idle';
    return p;
  }

  freePacket(p: KmclPacket): void {
    this.provider.packets.retire(p);
    p.state = 'free';
    p.pointer = null;
    p.routine = null;
    // A packet whose staging area is smaller (a restored one) is pooled too: its next send grows it.
    if (!this.destroyed && p.staging.length <= this.stagingBytes()) this.packetPool.push(p);
  }

  // ===========================================================================================
  // Sending

  /** External data of the send being prepared (no allocation per send). */
  private extKind: 0 | 1 | 2 = 0;
  private extPfns: ArrayLike<number> | null = null;
  private extPfnCount = 0;
  private extMdl: Mdl | null = null;
  private extOffset = 0;
  private extLength = 0;

  setSendPfns(pfns: ArrayLike<number> | null, count: number): void {
    this.extKind = 1;
    this.extPfns = pfns;
    this.extPfnCount = count;
  }

  setSendMdl(mdl: Mdl | null, offset: number, length: number): void {
    this.extKind = mdl === null ? 0 : 2;
    this.extMdl = mdl;
    this.extOffset = offset;
    this.extLength = length;
  }

  /**
   * VmbPacketSend*: validates, then writes the packet to the ring or queues it. `flagsParam` is the
   * _n status for bad flag bits; `noQueue` (synchronous request with Timeout 0) refuses with
   * STATUS_BUFFER_OVERFLOW instead of queueing. The external data set by setSendPfns/setSendMdl
   * applies to this call only.
   */
  send(
    api: string,
    p: KmclPacket,
    buffer: Uint8Array | null,
    length: number,
    flags: number,
    flagsParam: NTSTATUS,
    noQueue = false,
  ): NTSTATUS {
    const ext = this.extKind;
    this.extKind = 0;
    if (this.destroyed) throw new KmclContractViolation('use-after-free', api, 'the channel was cleaned up');
    if (p.state !== 'idle') {
      throw new KmclContractViolation(
        'bad-state',
        api,
        `the packet is ${p.state === 'free' ? 'freed' : 'in flight'}`,
      );
    }
    if (p.staging.length < this.stagingBytes()) {
      // Allocated before an Init* setter raised a limit: give it room (Initialize'd ones cannot grow).
      if (!p.allocated) {
        throw new KmclContractViolation(
          'bad-state',
          api,
          'the packet memory is smaller than VmbChannelSizeofPacket',
        );
      }
      p.setStaging(new Uint8Array(this.stagingBytes()));
    }
    if (!p.allocated && !p.routineSet) {
      throw new KmclContractViolation(
        'bad-state',
        api,
        'a VmbPacketInitialize packet needs a completion routine before it is sent',
      );
    }
    if (!Number.isInteger(flags) || (flags & ~VMBUS_CHANNEL_FORMAT_FLAGS) !== 0) return flagsParam;
    if (!Number.isInteger(length) || length < 0 || length > this.maximumPacketSize)
      return STATUS_INVALID_PARAMETER_3;
    if (length > 0 && (buffer === null || buffer.length < length)) return STATUS_INVALID_PARAMETER_2;
    const wait = (flags & VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION) !== 0;
    const pipe = this.pipe;
    if (pipe && (wait || ext !== 0)) return STATUS_INVALID_PARAMETER;
    if (pipe && length > MAX_PIPE_DATA_PAYLOAD) return STATUS_INVALID_PARAMETER_3;
    if (ext !== 0) {
      if (!wait) return STATUS_INVALID_PARAMETER;
      if (this.role !== 'client') return STATUS_NOT_SUPPORTED;
    }
    if (this.dataPathFailed) return STATUS_DEVICE_REMOVED;
    if (this.frozen) return STATUS_INVALID_DEVICE_STATE;
    const writer = this.writer;
    const canWrite = this.flowing && writer !== null && this.dataQueue.length === 0;
    const wireFlags = wait ? VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED : 0;

    // Encode (external data and pipe packets are always built in the staging area first).
    if (ext !== 0) {
      const status = ext === 1 ? this.encodePfns(p) : this.encodeMdl(p, flags);
      if (status !== STATUS_SUCCESS) return status;
    }
    p.wait = wait;
    if (wait) this.txns.add(p);
    else {
      p.transIdLo = 0;
      p.transIdHi = 0;
    }
    try {
      if (ext === 0 && !pipe && canWrite) {
        const r = writer!.writePacket(
          VM_PKT_DATA_INBAND,
          wireFlags,
          p.transIdLo,
          p.transIdHi,
          buffer ?? EMPTY,
          0,
          length,
        );
        if (r === RING_WRITE_OK) return this.written(p);
        if (r !== RING_WRITE_FULL) return this.unsend(p, STATUS_INVALID_BUFFER_SIZE);
      }
      if (ext === 0) {
        p.length = encodeInband(
          p.staging,
          p.view,
          VM_PKT_DATA_INBAND,
          wireFlags,
          p.transIdLo,
          p.transIdHi,
          buffer,
          length,
          pipe,
        );
      } else {
        p.length = finishGpaDirect(
          p.staging,
          p.view,
          p.length,
          wireFlags,
          p.transIdLo,
          p.transIdHi,
          buffer,
          length,
        );
      }
      if (writer !== null && p.length > writer.maximumPacketSize)
        return this.unsend(p, STATUS_INVALID_BUFFER_SIZE);
      if (canWrite && (ext !== 0 || pipe)) {
        const r = writer!.writeRaw(p.staging, 0, p.length);
        if (r === RING_WRITE_OK) return this.written(p);
      }
      if (noQueue) return this.unsend(p, STATUS_BUFFER_OVERFLOW);
      p.state = 'queued';
      this.dataQueue.push(p);
      if (canWrite) this.drainOutgoing();
      return STATUS_SUCCESS;
    } catch (e) {
      if (e instanceof RingError) {
        this.unsend(p, STATUS_DEVICE_REMOVED);
        this.ringFailure(e);
        return STATUS_DEVICE_REMOVED;
      }
      throw e;
    }
  }

  /** Undoes a send that did not happen. */
  private unsend(p: KmclPacket, status: NTSTATUS): NTSTATUS {
    if (p.wait) this.txns.remove(p);
    p.state = 'idle';
    return status;
  }

  /** The packet is in the ring: publish, and complete it now unless it waits for the peer. */
  private written(p: KmclPacket): NTSTATUS {
    if (p.wait) p.state = 'awaiting';
    else p.state = 'idle';
    if (this.batchDepth === 0) this.commitOut();
    if (!p.wait) this.completeLater(p, STATUS_SUCCESS);
    return STATUS_SUCCESS;
  }

  private guestPages(): number {
    return this.data?.guestPageCount ?? this.provider.guestMemory?.pageCount ?? 0;
  }

  /** GPA-direct header for VmbPacketSendWithExternalPfns: one range over whole pages [0, count). */
  private encodePfns(p: KmclPacket): NTSTATUS {
    const pfns = this.extPfns;
    const count = this.extPfnCount;
    this.extPfns = null;
    if (!Number.isInteger(count) || count <= 0 || count > maxExternalPfns(this.maximumExternalData)) {
      return STATUS_INVALID_PARAMETER_5;
    }
    if (pfns === null || pfns.length < count) return STATUS_INVALID_PARAMETER_4;
    const limit = this.guestPages();
    const view = p.view;
    let pos = putRange(view, beginGpaDirect(view, 1), count * PAGE_SIZE, 0);
    for (let i = 0; i < count; i++) {
      const pfn = pfns[i]!;
      if (!Number.isInteger(pfn) || pfn < 0 || pfn >= limit) return STATUS_INVALID_PARAMETER_4;
      pos = putPfn(view, pos, pfn);
    }
    p.length = pos;
    return STATUS_SUCCESS;
  }

  /** GPA-direct header for an MDL chain (one range per MDL piece used). */
  private encodeMdl(p: KmclPacket, flags: number): NTSTATUS {
    const head = this.extMdl!;
    const offset = this.extOffset;
    let length = this.extLength;
    this.extMdl = null;
    const force = (flags & VMBUS_CHANNEL_FORMAT_FLAG_FORCE_MDL_LENGTH) !== 0;
    const limit = this.guestPages();
    if (!Number.isInteger(offset) || offset < 0) return STATUS_INVALID_PARAMETER_5;
    if (!Number.isInteger(length) || length < 0) return STATUS_INVALID_PARAMETER_6;
    try {
      checkMdlShape(head);
    } catch {
      return STATUS_INVALID_PARAMETER_4;
    }
    if (force) {
      // Only the first MDL, and the length may run to the end of its last page.
      const room = Math.ceil((head.byteOffset + head.byteCount) / PAGE_SIZE) * PAGE_SIZE - head.byteOffset;
      if (length === 0) length = head.byteCount - offset;
      if (offset + length > room || length <= 0) return STATUS_INVALID_PARAMETER_6;
    } else if (length === 0) {
      // Whole chain from `offset`: measure it (bounded by the chain-length cap, so loops end).
      let total = 0;
      let m: Mdl | null | undefined = head;
      for (let n = 0; m != null; n++) {
        if (n >= this.maximumExternalChain) return STATUS_INVALID_PARAMETER;
        total += m.byteCount;
        m = m.next;
      }
      length = total - offset;
      if (length <= 0) return STATUS_INVALID_PARAMETER_5;
    }
    if (length > this.maximumExternalData) return STATUS_INVALID_PARAMETER;
    const view = p.view;
    let pos = beginGpaDirect(view, 0);
    let ranges = 0;
    let skip = offset;
    let remaining = length;
    let m: Mdl | null | undefined = head;
    for (let walked = 0; remaining > 0; walked++) {
      if (m == null) return force ? STATUS_INVALID_PARAMETER_6 : STATUS_INVALID_PARAMETER_5;
      if (walked >= this.maximumExternalChain) return STATUS_INVALID_PARAMETER;
      try {
        checkMdlShape(m);
      } catch {
        return STATUS_INVALID_PARAMETER_4;
      }
      const count = force ? remaining + skip : m.byteCount;
      if (skip >= count) {
        skip -= count;
        m = m.next;
        continue;
      }
      const take = Math.min(count - skip, remaining);
      const start = m.byteOffset + skip;
      const firstPage = Math.floor(start / PAGE_SIZE);
      const byteOffset = start - firstPage * PAGE_SIZE;
      const pages = Math.ceil((byteOffset + take) / PAGE_SIZE);
      if (firstPage + pages > m.pfns.length && !force) return STATUS_INVALID_PARAMETER_4;
      pos = putRange(view, pos, take, byteOffset);
      for (let i = 0; i < pages; i++) {
        const pfn = m.pfns[firstPage + i];
        if (pfn === undefined || !Number.isInteger(pfn) || pfn < 0 || pfn >= limit)
          return STATUS_INVALID_PARAMETER_4;
        pos = putPfn(view, pos, pfn);
      }
      ranges++;
      remaining -= take;
      skip = 0;
      m = m.next;
      if (force) break;
    }
    view.setUint32(20, ranges, true);
    p.length = pos;
    return STATUS_SUCCESS;
  }

  /** Publishes what was written to the outgoing ring; signals the peer if the ring says so. */
  private commitOut(): void {
    const w = this.writer;
    if (w === null || w.uncommittedBytes === 0) return;
    try {
      if (w.commit()) this.data!.signalPeer();
    } catch (e) {
      if (e instanceof RingError) this.ringFailure(e);
      else throw e;
    }
  }

  /** Writes queued completions (always, while the peer is there) and queued packets (while flowing). */
  drainOutgoing(): void {
    if (this.drainingOut) {
      this.outAgain = true;
      return;
    }
    const writer = this.writer;
    if (writer === null || this.dataPathFailed || this.peerGone || this.frozen) return;
    this.drainingOut = true;
    this.batchDepth++;
    try {
      do {
        this.outAgain = false;
        let blocked = false;
        while (this.completionQueue.length > 0) {
          const t = this.completionQueue.peek()!;
          const r = writer.writeRaw(t.staging!, 0, t.stagingLength);
          if (r === RING_WRITE_FULL) {
            if (writer.uncommittedBytes > 0) {
              this.commitOutNow();
              continue;
            }
            blocked = true;
            break;
          }
          this.completionQueue.shift();
          this.releaseToken(t);
        }
        if (blocked) break;
        while (this.flowing && this.dataQueue.length > 0) {
          const p = this.dataQueue.peek()!;
          const r = writer.writeRaw(p.staging, 0, p.length);
          if (r === RING_WRITE_FULL) {
            if (writer.uncommittedBytes > 0) {
              this.commitOutNow();
              continue;
            }
            blocked = true;
            break;
          }
          this.dataQueue.shift();
          if (r === RING_WRITE_OK) this.written(p);
          else {
            this.unsend(p, 0);
            this.completeLater(p, STATUS_INVALID_BUFFER_SIZE);
          }
        }
        if (blocked) break;
      } while (this.outAgain);
    } catch (e) {
      if (e instanceof RingError) this.ringFailure(e);
      else throw e;
    } finally {
      this.batchDepth--;
      this.drainingOut = false;
      this.commitOut();
    }
  }

  private commitOutNow(): void {
    const depth = this.batchDepth;
    this.batchDepth = 0;
    this.commitOut();
    this.batchDepth = depth;
  }

  /** Queues a status-only completion; runs the completion routines without recursion. */
  private completeLater(p: KmclPacket, status: NTSTATUS): void {
    this.done.push(p);
    this.doneStatus.push(status);
    if (this.runningDone) return;
    this.runningDone = true;
    try {
      while (this.done.length > 0) {
        const q = this.done.shift()!;
        const s = this.doneStatus.shift()!;
        this.finishPacket(q, s, null, 0);
      }
    } finally {
      this.runningDone = false;
    }
  }

  /** Runs a packet's completion routine (default: free it) in non-blocking context. */
  private finishPacket(p: KmclPacket, status: NTSTATUS, buffer: Uint8Array | null, length: number): void {
    p.state = 'idle';
    const routine = p.routine;
    if (routine === null) {
      if (p.allocated) this.freePacket(p);
      return;
    }
    const prev = enterContext('nonblocking');
    try {
      routine(p.publicHandle, status, buffer, length);
    } catch (e) {
      this.provider.callbackError(this, 'EvtVmbPacketCompletionRoutine', e);
    } finally {
      leaveContext(prev);
    }
  }

  /** Completes every queued and awaiting packet with `status` (exactly once each). */
  private cancelOutgoing(status: NTSTATUS): void {
    this.cancelQueued(status);
    for (const p of this.txns.snapshot()) {
      if (p.state !== 'awaiting') continue;
      this.txns.remove(p);
      this.completeLater(p, status);
    }
    if (this.peerGone) {
      for (let t = this.completionQueue.shift(); t !== undefined; t = this.completionQueue.shift()) {
        this.releaseToken(t);
      }
    }
  }

  private cancelQueued(status: NTSTATUS): void {
    for (let n = this.dataQueue.length; n > 0; n--) {
      const p = this.dataQueue.shift()!;
      this.unsend(p, 0);
      this.completeLater(p, status);
    }
  }

  /** Cancels one packet of a synchronous request (timeout): out of the queue or out of the table. */
  cancelPacket(p: KmclPacket): void {
    if (p.state === 'queued') this.dataQueue.remove(p);
    if (p.wait) this.txns.remove(p);
    p.state = 'idle';
  }

  private ringFailure(e: RingError): void {
    if (this.dataPathFailed) return;
    this.dataPathFailed = true;
    this.incomingOn = false;
    this.reportPeerError('ring-corrupt', `the channel's ring is corrupt: ${e.message}`, e);
    this.cancelOutgoing(STATUS_DEVICE_REMOVED);
  }

  private reportPeerError(code: KmclPeerErrorCode, message: string, cause?: unknown): void {
    const error = new KmclPeerError(code, message, cause === undefined ? undefined : { cause });
    this.peerErrorCount++;
    this.lastPeerError = error;
    this.provider.peerError(this, error);
  }

  // ===========================================================================================
  // Receiving

  private onSignal(): void {
    this.drainIncoming();
    this.drainOutgoing();
  }

  private kickIncoming(): void {
    if (this.data !== null) this.data.schedule(this.drainTask);
  }

  private commitIn(): void {
    const r = this.reader;
    if (r === null || r.uncommittedBytes === 0) return;
    if (r.commit()) this.data!.signalPeer();
  }

  /** Takes packets off the incoming ring while flowing and under quota; one batch. */
  drainIncoming(): void {
    if (this.drainingIn) {
      this.inAgain = true;
      return;
    }
    const reader = this.reader;
    if (reader === null || !this.incomingOn || this.incomingStopped || this.dataPathFailed || this.frozen)
      return;
    this.drainingIn = true;
    this.batchDepth++;
    let delivered = 0;
    const threshold = reader.dataSize >>> 2;
    try {
      reader.beginRead();
      for (;;) {
        if (!this.incomingOn || this.incomingStopped || this.dataPathFailed || this.deferred !== null) break;
        if (this.outstanding >= this.quota) {
          this.quotaStalled = true;
          break;
        }
        if (!reader.next()) {
          this.commitIn();
          if (!reader.endRead()) break;
          reader.beginRead();
          continue;
        }
        const r = this.handlePacket(reader.packet);
        if (r < 0) {
          reader.putBack();
          this.quotaStalled = true;
          break;
        }
        delivered += r;
        if (reader.uncommittedBytes >= threshold) this.commitIn();
      }
      this.commitIn();
    } catch (e) {
      if (e instanceof RingError) this.ringFailure(e);
      else throw e;
    } finally {
      this.batchDepth--;
      this.drainingIn = false;
      this.commitOut();
    }
    if (delivered > 0 && this.processingComplete !== null) {
      const prev = enterContext(this.incomingAtPassive ? 'blocking' : 'nonblocking');
      try {
        this.processingComplete(this.publicHandle, delivered);
      } catch (e) {
        this.provider.callbackError(this, 'EvtVmbChannelProcessingComplete', e);
      } finally {
        leaveContext(prev);
      }
    }
    if (this.inAgain) {
      this.inAgain = false;
      this.kickIncoming();
    }
  }

  /** Handles one packet under the cursor: 1 if delivered, 0 if consumed otherwise, -1 to retry later. */
  private handlePacket(pkt: RingPacket): number {
    switch (pkt.type) {
      case VM_PKT_COMP:
        if (this.pipe) {
          this.reportPeerError('unsupported-packet', 'completion packet on a pipe-mode channel');
          return 0;
        }
        this.onCompletionPacket(pkt);
        return 0;
      case VM_PKT_DATA_INBAND:
        return this.deliverInband(pkt);
      case VM_PKT_DATA_USING_GPA_DIRECT:
        if (this.pipe) {
          this.reportPeerError('unsupported-packet', 'GPA-direct packet on a pipe-mode channel');
          return 0;
        }
        return this.deliverGpaDirect(pkt);
      default:
        this.reportPeerError('unsupported-packet', `packet type 0x${pkt.type.toString(16)} is not accepted`);
        return 0;
    }
  }

  private onCompletionPacket(pkt: RingPacket): void {
    const p = this.txns.find(pkt.transIdLo, pkt.transIdHi);
    if (p === null || p.state !== 'awaiting') {
      this.reportPeerError(
        'unknown-transaction',
        `completion for transaction 0x${pkt.transIdHi.toString(16)}:${pkt.transIdLo.toString(16)}, which is not outstanding`,
      );
      return;
    }
    this.txns.remove(p);
    const len = pkt.payloadLength;
    if (this.completionScratch.length < len) {
      this.completionScratch = new Uint8Array(Math.max(len, this.completionScratch.length * 2));
    }
    if (len > 0) pkt.copyPayload(this.completionScratch, 0, len);
    if (this.completionView.length !== len || this.completionView.buffer !== this.completionScratch.buffer) {
      this.completionView = this.completionScratch.subarray(0, len);
    }
    this.finishPacket(p, STATUS_SUCCESS, len > 0 ? this.completionView : null, len);
  }

  private takeToken(): KmclToken | null {
    let t = this.tokenPool.pop();
    if (t === undefined) {
      t = new KmclToken(this);
      if (!this.provider.tokens.register(t)) return null;
      if (this.clientContextSize > 0) t.context = new Uint8Array(this.clientContextSize);
    }
    return t;
  }

  private releaseToken(t: KmclToken): void {
    t.state = 'free';
    t.rangeCount = 0;
    if (t.grant !== null) {
      t.grant.revoke();
      t.grant = null;
    }
    this.tokenPool.push(t);
  }

  private deliverInband(pkt: RingPacket): number {
    let from = pkt.headerLength;
    let len = pkt.payloadLength;
    if (this.pipe) {
      if (len < VMBUS_PIPE_HEADER_SIZE) {
        this.reportPeerError('bad-pipe-header', `pipe packet of ${len} bytes has no pipe header`);
        return 0;
      }
      const type = pkt.u32(from);
      const dataLength = pkt.u32(from + 4);
      if (type !== VMBUS_PIPE_TYPE_DATA || dataLength > len - VMBUS_PIPE_HEADER_SIZE) {
        this.reportPeerError('bad-pipe-header', `pipe header type ${type}, length ${dataLength} refused`);
        return 0;
      }
      from += VMBUS_PIPE_HEADER_SIZE;
      len = dataLength;
    }
    const t = this.takeToken();
    if (t === null) return -1;
    pkt.copyRange(from, len, t.reserve(len), 0);
    t.length = len;
    t.flags = 0;
    t.rangeCount = 0;
    this.fillToken(t, pkt);
    return this.deliver(t);
  }

  private deliverGpaDirect(pkt: RingPacket): number {
    const hl = pkt.headerLength;
    if (this.headerScratch.length < hl) {
      this.headerScratch = new Uint8Array(Math.max(hl, this.headerScratch.length * 2));
      this.headerView = new DataView(this.headerScratch.buffer);
    }
    pkt.copyRange(0, hl, this.headerScratch, 0);
    const dv = this.headerView;
    let count: number;
    try {
      count = gpaDirectRangeCount(dv, 0, hl);
    } catch (e) {
      if (!(e instanceof WireError)) throw e;
      this.reportPeerError('bad-external-data', `GPA-direct descriptor refused: ${e.message}`, e);
      return 0;
    }
    if (count === 0) {
      this.reportPeerError('bad-external-data', 'GPA-direct packet with no ranges');
      return 0;
    }
    const t = this.takeToken();
    if (t === null) return -1;
    const limit = this.guestPages();
    let pos = 24;
    let k = 0;
    for (let i = 0; i < count; i++) {
      const n = gpaRangePfnCount(dv, pos);
      for (let j = 0; j < n; j++) {
        const pfn = gpaRangePfn(dv, pos, j);
        if (pfn >= limit) {
          this.releaseToken(t);
          this.reportPeerError(
            'bad-external-data',
            `GPA-direct range ${i} names PFN 0x${pfn.toString(16)}, outside guest memory (${limit} pages)`,
          );
          return 0;
        }
        t.pfns[k++] = pfn;
      }
      t.rangeByteCount[i] = gpaRangeByteCount(dv, pos);
      t.rangeByteOffset[i] = gpaRangeByteOffset(dv, pos);
      t.rangePfnCount[i] = n;
      pos = gpaRangeEnd(dv, pos);
    }
    t.rangeCount = count;
    const len = pkt.packetLength - hl;
    pkt.copyRange(hl, len, t.reserve(len), 0);
    t.length = len;
    t.flags = VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA;
    this.fillToken(t, pkt);
    return this.deliver(t);
  }

  private fillToken(t: KmclToken, pkt: RingPacket): void {
    t.completionRequested = (pkt.flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED) !== 0;
    t.transIdLo = pkt.transIdLo;
    t.transIdHi = pkt.transIdHi;
    t.grant = null;
    if (t.context !== null) t.context.fill(0);
  }

  private deliver(t: KmclToken): number {
    this.outstanding++;
    this.invoke(t, this.forcedProcessPacketContext ?? (this.incomingAtPassive ? 'blocking' : 'nonblocking'));
    return 1;
  }

  /** Calls ProcessPacket for `t` and handles what the callback did with it. */
  private invoke(t: KmclToken, ctx: ExecutionContext): void {
    t.state = 'delivering';
    const prev = enterContext(ctx);
    try {
      this.processPacket!(
        this.publicHandle,
        t.handle as VMBPACKETCOMPLETION,
        t.payloadView(),
        t.length,
        t.flags,
      );
    } catch (e) {
      this.provider.callbackError(this, 'EvtVmbChannelProcessPacket', e);
    } finally {
      leaveContext(prev);
    }
    const after = t.state as TokenState;
    if (after === 'deferred') {
      this.outstanding--;
      this.deferred = t;
      this.notifyCompletion();
      this.data?.schedule(this.passiveTask);
    } else if (after === 'delivering') {
      t.state = 'outstanding';
    }
  }

  private redeliverDeferred(): void {
    const t = this.deferred;
    if (t === null || !this.incomingOn || this.incomingStopped) return;
    this.deferred = null;
    this.outstanding++;
    this.invoke(t, this.forcedProcessPacketContext ?? 'blocking');
    if (this.deferred === null) this.kickIncoming();
  }

  // --- token operations (VmbChannelPacket*) ---

  /** VmbChannelPacketComplete on a token of this channel. */
  completeToken(t: KmclToken, buffer: Uint8Array | null, length: number): void {
    const api = 'VmbChannelPacketComplete';
    if (t.state === 'deferred') {
      throw new KmclContractViolation(
        'bad-state',
        api,
        'the packet was deferred to passive; it is re-delivered',
      );
    }
    if (
      !Number.isInteger(length) ||
      length < 0 ||
      (length > 0 && (buffer === null || buffer.length < length))
    ) {
      throw new KmclContractViolation(
        'bad-argument',
        api,
        `BufSize ${length} does not fit the completion buffer`,
      );
    }
    const writer = this.writer;
    const send = t.completionRequested && writer !== null && !this.peerGone && !this.dataPathFailed;
    if (send && ((VMPACKET_DESCRIPTOR_SIZE + length + 7) & ~7) > writer.maximumPacketSize) {
      throw new KmclContractViolation('bad-argument', api, `a ${length}-byte completion cannot fit the ring`);
    }
    if (t.grant !== null) {
      t.grant.revoke();
      t.grant = null;
    }
    this.provider.tokens.retire(t);
    if (send) this.sendCompletion(t, buffer, length);
    else this.releaseToken(t);
    this.outstanding--;
    this.notifyCompletion();
  }

  private sendCompletion(t: KmclToken, buffer: Uint8Array | null, length: number): void {
    const writer = this.writer!;
    try {
      if (this.completionQueue.length === 0) {
        const r = writer.writeCompletion(t.transIdLo, t.transIdHi, buffer ?? EMPTY, 0, length);
        if (r === RING_WRITE_OK) {
          this.releaseToken(t);
          if (this.batchDepth === 0) this.commitOut();
          return;
        }
      }
      const staging = t.reserveStaging(VMPACKET_DESCRIPTOR_SIZE + length + 8);
      t.stagingLength = encodeInband(
        staging,
        new DataView(staging.buffer, staging.byteOffset, staging.byteLength),
        VM_PKT_COMP,
        0,
        t.transIdLo,
        t.transIdHi,
        buffer,
        length,
        false,
      );
      t.state = 'queued-completion';
      this.completionQueue.push(t);
      if (this.batchDepth === 0) this.drainOutgoing();
    } catch (e) {
      if (e instanceof RingError) {
        this.releaseToken(t);
        this.ringFailure(e);
        return;
      }
      throw e;
    }
  }

  private notifyCompletion(): void {
    if (this.outstanding === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
    if (this.quotaStalled && this.outstanding < this.quota) {
      this.quotaStalled = false;
      this.kickIncoming();
    }
  }

  /** VmbChannelPacketDeferToPassive. */
  deferToken(t: KmclToken): void {
    if (t.state !== 'delivering') {
      throw new KmclContractViolation(
        'bad-state',
        'VmbChannelPacketDeferToPassive',
        'may only be called inline from EvtVmbChannelProcessPacket',
      );
    }
    t.state = 'deferred';
  }

  /** VmbChannelPacketFail: the token is consumed; the incoming queue stops (spec Q8). */
  failToken(t: KmclToken): void {
    if (t.state === 'deferred') {
      throw new KmclContractViolation(
        'bad-state',
        'VmbChannelPacketFail',
        'the packet was deferred to passive',
      );
    }
    this.provider.tokens.retire(t);
    this.releaseToken(t);
    this.incomingStopped = true;
    this.outstanding--;
    this.notifyCompletion();
  }

  /** VmbChannelPacketGetExternalData. */
  getExternalData(t: KmclToken, flags: number): { status: NTSTATUS; Mdl?: GrantedMdl } {
    if (!Number.isInteger(flags) || (flags & ~VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAGS) !== 0) {
      return { status: STATUS_INVALID_PARAMETER_2 };
    }
    if (t.rangeCount === 0) return { status: STATUS_INVALID_PARAMETER };
    if (t.grant !== null) return { status: STATUS_SUCCESS, Mdl: t.grant as GrantedMdl };
    const data = this.data;
    if (data === null) return { status: STATUS_DEVICE_REMOVED };
    const readOnly = (flags & VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY) !== 0;
    try {
      const mdl = data.externalData.grantMdl(t.externalMdl(), {
        readOnly,
        label: `external data of a packet on channel "${this.friendlyName}"`,
      });
      t.grant = mdl;
      t.grantReadOnly = readOnly;
      return { status: STATUS_SUCCESS, Mdl: mdl };
    } catch (e) {
      this.reportPeerError(
        'bad-external-data',
        `external data cannot be granted: ${(e as Error).message}`,
        e,
      );
      return { status: STATUS_INVALID_PARAMETER };
    }
  }

  // ===========================================================================================
  // Synchronous request

  sendSynchronousRequest(
    buffer: Uint8Array | null,
    bufferSize: number,
    mdl: Mdl | null,
    flags: number,
    completionBuffer: Uint8Array | null,
    completionBufferSize: number | null,
    timeout: bigint | null,
  ): Promise<SyncRequestResult> {
    const api = 'VmbChannelSendSynchronousRequest';
    this.checkAlive(api);
    const wait = (flags & VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION) !== 0;
    const mayWait = timeout === null || timeout !== 0n || wait;
    if (mayWait) {
      requireBlocking(api);
      if (this.inOwnStateCallback() === 'EvtChannelStarted') {
        throw new KmclContractViolation(
          'call-inside-state-callback',
          api,
          'a waiting synchronous request from EvtChannelStarted never returns (use EvtChannelPostStarted)',
        );
      }
    }
    const capacity = completionBufferSize ?? 0;
    if (completionBuffer !== null && completionBuffer.length < capacity) {
      throw new KmclContractViolation(
        'bad-argument',
        api,
        'CompletionBuffer is smaller than *CompletionBufferSize',
      );
    }
    const fail = (status: NTSTATUS) => Promise.resolve({ status, CompletionBufferSize: 0 });
    if (this.provider.side === 'host' && mayWait) return fail(STATUS_INVALID_PARAMETER);
    if (!Number.isInteger(capacity) || capacity < 0 || capacity % 8 !== 0)
      return fail(STATUS_INVALID_PARAMETER);
    if (this.shuttingDown || this.dataPathFailed) return fail(STATUS_DEVICE_REMOVED);
    if (this.conn !== 'open') return fail(STATUS_INVALID_DEVICE_STATE);
    const p = this.allocatePacket();
    if (p === null) return fail(STATUS_INSUFFICIENT_RESOURCES);
    return new Promise<SyncRequestResult>((resolve) => {
      let settled = false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const settle = (status: NTSTATUS, n: number) => {
        if (settled) return;
        settled = true;
        if (timer !== undefined) clearTimeout(timer);
        this.freePacket(p);
        resolve({ status, CompletionBufferSize: n });
      };
      p.routine = (_h, status, buf, len) => {
        let n = 0;
        if (NT_SUCCESS(status) && buf !== null && len > 0) {
          n = Math.min(len, capacity);
          if (n > 0) completionBuffer!.set(buf.subarray(0, n));
          if (n < len) status = STATUS_BUFFER_OVERFLOW;
        }
        settle(status, n);
      };
      p.routineSet = true;
      this.setSendMdl(mdl, 0, 0);
      const status = this.send(api, p, buffer, bufferSize, flags, STATUS_INVALID_PARAMETER_5, timeout === 0n);
      if (!NT_SUCCESS(status)) {
        settle(status, 0);
        return;
      }
      if (settled || timeout === null || timeout === 0n) return;
      const ms =
        timeout < 0n ? Number(-timeout) / 10000 : Number(timeout - EPOCH_1601_100NS) / 10000 - Date.now();
      timer = setTimeout(
        () => {
          if (settled) return;
          this.cancelPacket(p);
          settle(STATUS_CANCELLED, 0);
        },
        Math.max(0, ms),
      );
    });
  }

  // ===========================================================================================
  // GPADLs

  createGpadl(
    flags: number,
    ranges: GpaRange[] | NTSTATUS,
  ): Promise<{ status: NTSTATUS; GpadlHandle: number }> {
    const fail = (status: NTSTATUS) => Promise.resolve({ status, GpadlHandle: 0 });
    if (typeof ranges === 'number') return fail(ranges);
    if (gpaRangesByteLength(ranges) > GPADL_MAX_RANGE_BUFLEN) return fail(STATUS_INVALID_BUFFER_SIZE);
    let pages = 0;
    for (const r of ranges) pages += r.pfns.length;
    if (pages > MAXIMUM_GPADL_PAGES) return fail(STATUS_INVALID_BUFFER_SIZE);
    const port = this.clientPort;
    if (this.conn !== 'open' || port === null || this.shuttingDown) return fail(STATUS_INVALID_DEVICE_STATE);
    return port.createGpadl(ranges, (flags & VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY) !== 0).then((r) => {
      if (!NT_SUCCESS(r.status) || r.gpadlHandle === undefined) {
        return { status: NT_SUCCESS(r.status) ? STATUS_UNSUCCESSFUL : r.status, GpadlHandle: 0 };
      }
      this.gpadls.add(r.gpadlHandle);
      return { status: STATUS_SUCCESS, GpadlHandle: r.gpadlHandle };
    });
  }

  deleteGpadl(handle: number): Promise<void> {
    const api = 'VmbChannelDeleteGpadl';
    if (!this.gpadls.has(handle)) {
      throw new KmclContractViolation('bad-handle', api, `GPADL ${handle} was not created on this channel`);
    }
    this.gpadls.delete(handle);
    const port = this.clientPort;
    return port === null ? Promise.resolve() : port.deleteGpadl(handle);
  }

  mapGpadl(flags: number, handle: number): { status: NTSTATUS; Mdl?: GrantedMdl } {
    if (this.role !== 'server') return { status: STATUS_NOT_SUPPORTED };
    if (!Number.isInteger(flags) || (flags & ~VMBUS_CHANNEL_GPADL_FLAGS) !== 0) {
      return { status: STATUS_INVALID_PARAMETER_2 };
    }
    const port = this.serverPort;
    if (this.conn !== 'open' || port === null || this.frozen) return { status: STATUS_INVALID_DEVICE_STATE };
    if (!Number.isInteger(handle)) return { status: STATUS_INVALID_PARAMETER_3 };
    if (this.restoredMaps.has(handle)) {
      // Carried over by a restore: the first MapGpadl after it hands the mapping back to the VSP.
      this.restoredMaps.delete(handle);
      return { status: STATUS_SUCCESS, Mdl: this.maps.get(handle)! };
    }
    const g = port.gpadl(handle);
    if (g === null) return { status: STATUS_INVALID_PARAMETER_3 };
    if (this.maps.has(handle)) return { status: STATUS_INVALID_DEVICE_STATE };
    const readOnly = (flags & VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY) !== 0;
    if (g.readOnly && !readOnly) return { status: STATUS_ACCESS_DENIED };
    let head: Mdl | null = null;
    for (let i = g.ranges.length - 1; i >= 0; i--) {
      const r = g.ranges[i]!;
      head = { byteOffset: r.byteOffset, byteCount: r.byteCount, pfns: r.pfns, next: head };
    }
    if (head === null) return { status: STATUS_INVALID_PARAMETER_3 };
    try {
      const mdl = port.hostView.grantMdl(head, { readOnly, label: `GPADL ${handle}` });
      this.maps.set(handle, mdl);
      port.setGpadlMapped(handle, true);
      return { status: STATUS_SUCCESS, Mdl: mdl };
    } catch (e) {
      this.reportPeerError(
        'bad-external-data',
        `GPADL ${handle} cannot be mapped: ${(e as Error).message}`,
        e,
      );
      return { status: STATUS_INVALID_PARAMETER_3 };
    }
  }

  unmapGpadl(handle: number): void {
    const mdl = this.maps.get(handle);
    if (mdl === undefined) {
      throw new KmclContractViolation('bad-handle', 'VmbChannelUnmapGpadl', `GPADL ${handle} is not mapped`);
    }
    this.refuseWhileSaving('VmbChannelUnmapGpadl');
    this.restoredMaps.delete(handle);
    mdl.revoke();
    this.maps.delete(handle);
    this.serverPort?.setGpadlMapped(handle, false);
  }

  /** Checks a guest buffer (a view of guest RAM) and describes it as one GPADL range. */
  bufferRanges(buffer: unknown, byteCount: number): GpaRange[] | NTSTATUS {
    const mem = this.provider.guestMemory;
    if (mem === null || !(buffer instanceof Uint8Array) || buffer.buffer !== mem.buffer)
      return STATUS_INVALID_PARAMETER_3;
    if (!Number.isInteger(byteCount) || byteCount <= 0 || byteCount > buffer.length)
      return STATUS_INVALID_PARAMETER_4;
    const gpa = buffer.byteOffset;
    const byteOffset = gpa % PAGE_SIZE;
    const first = (gpa - byteOffset) / PAGE_SIZE;
    const n = Math.ceil((byteOffset + byteCount) / PAGE_SIZE);
    if (n > MAXIMUM_GPADL_PAGES) return STATUS_INVALID_BUFFER_SIZE;
    const pfns: number[] = new Array(n);
    for (let i = 0; i < n; i++) pfns[i] = first + i;
    return [{ byteOffset, byteCount, pfns }];
  }

  /** Describes bytes [offset, offset + length) of an MDL chain (0: to the end) as GPADL ranges. */
  mdlRanges(mdl: unknown, offset: number, length: number): GpaRange[] | NTSTATUS {
    const mem = this.provider.guestMemory;
    if (mem === null || mdl === null || typeof mdl !== 'object') return STATUS_INVALID_PARAMETER_3;
    if (!Number.isInteger(offset) || offset < 0) return STATUS_INVALID_PARAMETER_4;
    if (!Number.isInteger(length) || length < 0) return STATUS_INVALID_PARAMETER_5;
    const ranges: GpaRange[] = [];
    let skip = offset;
    let remaining = length === 0 ? Number.POSITIVE_INFINITY : length;
    let pages = 0;
    let m = mdl as Mdl | null | undefined;
    for (let walked = 0; m != null && remaining > 0; walked++) {
      if (walked > MAXIMUM_GPADL_PAGES) return STATUS_INVALID_PARAMETER_3;
      try {
        checkMdlShape(m);
      } catch {
        return STATUS_INVALID_PARAMETER_3;
      }
      if (skip >= m.byteCount) {
        skip -= m.byteCount;
        m = m.next;
        continue;
      }
      const take = Math.min(m.byteCount - skip, remaining);
      const start = m.byteOffset + skip;
      const firstPage = Math.floor(start / PAGE_SIZE);
      const byteOffset = start - firstPage * PAGE_SIZE;
      const n = Math.ceil((byteOffset + take) / PAGE_SIZE);
      pages += n;
      if (pages > MAXIMUM_GPADL_PAGES) return STATUS_INVALID_BUFFER_SIZE;
      const pfns: number[] = [];
      for (let i = 0; i < n; i++) {
        const pfn = m.pfns[firstPage + i]!;
        if (!Number.isInteger(pfn) || pfn < 0 || pfn >= mem.pageCount) return STATUS_INVALID_PARAMETER_3;
        pfns.push(pfn);
      }
      ranges.push({ byteOffset, byteCount: take, pfns });
      remaining -= take;
      skip = 0;
      m = m.next;
    }
    if (ranges.length === 0) return STATUS_INVALID_PARAMETER_4;
    if (length !== 0 && remaining > 0) return STATUS_INVALID_PARAMETER_5;
    return ranges;
  }

  // ===========================================================================================
  // Servicing: save and restore (server only; spec section 7, docs/servicing.md)

  private saveCtx: { chunks: ChunkWriter; completed: boolean; packets: KmclPacket[] } | null = null;
  /** SaveBegin .. SaveEnd: the channel is frozen (nothing moves through its rings or queues). */
  private frozen = false;
  /** The channel's state was handed off by a completed save: it is disabled and owns nothing. */
  private savedAway = false;
  private restoreChunks: ChunkAssembler | null = null;
  /** The saved packets are being restored: packet objects allocated now get no staging area yet. */
  private restoringPackets = false;
  /** Inside EvtVmbChannelRestorePacket: VmbPacketRestore may bind one packet. */
  private inRestoreCallback = false;
  /** The packet VmbPacketRestore bound in this callback, and its LibBuf's fields (reused). */
  private restoreBound: KmclPacket | null = null;
  private readonly restoreLib = new PacketLibFields();
  /** The bound packet's staging area cannot hold its restored bytes (VmbPacketInitialize memory). */
  private restoreNoRoom = false;
  /** GPADL mappings carried over by a restore that VmbChannelMapGpadl has not claimed yet. */
  private readonly restoredMaps = new Set<number>();
  /** A restore brought the channel back; the VSP's next Enable only confirms it (no new offer). */
  private restoredPendingEnable = false;

  /** VmbChannelSaveBegin. */
  saveBegin(): NTSTATUS {
    this.checkAlive('VmbChannelSaveBegin');
    if (this.role !== 'server') return STATUS_INVALID_PARAMETER_1;
    if (this.saveCtx !== null || this.savedAway || this.restoreChunks !== null)
      return STATUS_INVALID_DEVICE_STATE;
    if (this.conn === 'disabled' || this.disabling || this.shuttingDown || this.dataPathFailed)
      return STATUS_INVALID_DEVICE_STATE;
    if (this.run !== 'paused' || this.flowing) return STATUS_INVALID_DEVICE_STATE;
    // Delivered packets are completed before Pause finishes; a deferred one is not carried over.
    if (this.outstanding > 0 || this.deferred !== null) return STATUS_DEVICE_BUSY;
    const port = this.serverPort;
    if (port === null || port.release === undefined || port.reclaim === undefined)
      return STATUS_NOT_SUPPORTED;
    if (this.interfaceType === null || this.interfaceInstance === null) return STATUS_INVALID_DEVICE_STATE;
    this.commitOut();
    // Queued packets in send order, then the awaiting ones.
    const objects = this.dataQueue.toArray();
    for (const p of this.txns.snapshot()) if (p.state === 'awaiting') objects.push(p);
    // The VSP's bytes for each packet first (its callbacks), then the body in one pass.
    const vsps: Uint8Array[] = new Array(objects.length);
    let packetBytes = 0;
    for (let k = 0; k < objects.length; k++) {
      const p = objects[k]!;
      const vsp = this.savePacketState(p);
      if (typeof vsp === 'number') return vsp;
      vsps[k] = vsp;
      packetBytes += vsp.length + (p.state === 'queued' ? p.length : 0);
    }
    const completions: Uint8Array[] = [];
    for (const t of this.completionQueue.toArray()) completions.push(t.staging!.subarray(0, t.stagingLength));
    const mappings: SavedGpadlMapping[] = [];
    for (const [handle, mdl] of this.maps) mappings.push({ handle, readOnly: mdl.readOnly });
    const open = this.conn === 'open' && this.writer !== null && this.reader !== null;
    const header: ChannelStateHeader = {
      conn: this.conn as SavedConn,
      incomingStopped: this.incomingStopped,
      interfaceType: this.interfaceType,
      interfaceInstance: this.interfaceInstance,
      targetVtl: this.targetVtl,
      serverFlags: this.serverFlags,
      maximumPacketSize: this.maximumPacketSize,
      outWriteIndex: open ? this.writer!.writeIndex : 0,
      inReadIndex: open ? this.reader!.readIndex : 0,
      mappings,
      queuedCompletions: completions,
    };
    const w = new ChannelStateWriter(header, objects.length, packetBytes);
    for (let k = 0; k < objects.length; k++) {
      const p = objects[k]!;
      const queued = p.state === 'queued';
      w.packet(
        queued,
        p.wait,
        p.wait ? p.transIdLo : 0,
        p.wait ? p.transIdHi : 0,
        p.staging,
        queued ? p.length : 0,
        vsps[k]!,
      );
    }
    const body = w.finish();
    // From here on nothing may change what was captured: the guest's open/close requests wait in
    // the bus, and the rings are left alone.
    port.release();
    this.frozen = true;
    this.saveCtx = { chunks: new ChunkWriter(body), completed: false, packets: objects };
    return STATUS_SUCCESS;
  }

  /** EvtVmbChannelSavePacket's two-call protocol for one packet: the VSP's bytes, or a failure. */
  private savePacketState(p: KmclPacket): Uint8Array | NTSTATUS {
    const cb = this.savePacket;
    if (cb === null) return EMPTY;
    const first = this.callSavePacket(cb, p, null, 0);
    if (NT_SUCCESS(first.status)) return EMPTY;
    const need = first.BytesNeeded;
    if (!Number.isInteger(need) || need <= 0) return first.status;
    if (need > MAX_VSP_PACKET_STATE) return STATUS_INVALID_BUFFER_SIZE;
    const buf = new Uint8Array(need);
    const second = this.callSavePacket(cb, p, buf, need);
    if (!NT_SUCCESS(second.status)) return second.status;
    const used = second.BytesNeeded;
    const n = Number.isInteger(used) && used > 0 && used <= need ? used : need;
    return n === need ? buf : buf.slice(0, n);
  }

  /** One call of EvtVmbChannelSavePacket; a throw or a malformed result counts as a failure. */
  private callSavePacket(
    cb: EvtVmbChannelSavePacket,
    p: KmclPacket,
    buf: Uint8Array | null,
    size: number,
  ): { status: NTSTATUS; BytesNeeded: number } {
    const prev = enterContext('blocking');
    try {
      const r = cb(this.publicHandle, p.publicHandle, buf, size);
      if (r === null || typeof r !== 'object') return { status: STATUS_UNSUCCESSFUL, BytesNeeded: 0 };
      return r;
    } catch (e) {
      this.provider.callbackError(this, 'EvtVmbChannelSavePacket', e);
      return { status: STATUS_UNSUCCESSFUL, BytesNeeded: 0 };
    } finally {
      leaveContext(prev);
    }
  }

  /** VmbChannelSaveContinue. */
  saveContinue(
    buffer: Uint8Array,
    size: number,
  ): { status: NTSTATUS; BytesFilled: number; BytesRequired: number } {
    this.checkAlive('VmbChannelSaveContinue');
    const ctx = this.saveCtx;
    if (ctx === null) return { status: STATUS_INVALID_DEVICE_STATE, BytesFilled: 0, BytesRequired: 0 };
    if (!(buffer instanceof Uint8Array))
      return { status: STATUS_INVALID_PARAMETER_2, BytesFilled: 0, BytesRequired: 0 };
    if (!Number.isInteger(size) || size < 0 || size > buffer.length)
      return { status: STATUS_INVALID_PARAMETER_3, BytesFilled: 0, BytesRequired: 0 };
    const r = ctx.chunks.next(buffer, size);
    if (r.status === STATUS_SUCCESS) ctx.completed = true;
    return { status: r.status, BytesFilled: r.filled, BytesRequired: r.required };
  }

  /**
   * VmbChannelSaveEnd: releases the save context. After a completed save (SaveContinue returned
   * STATUS_SUCCESS) the channel hands its state off: it lets go of the offer without revoking
   * it, drops its in-flight packets WITHOUT running their completion routines (they now live in
   * the saved state), and is left Disabled for VmbChannelCleanup. After an unfinished save it
   * takes the offer back and carries on, still paused.
   */
  saveEnd(): void {
    this.checkAlive('VmbChannelSaveEnd');
    const ctx = this.saveCtx;
    if (ctx === null) return;
    this.saveCtx = null;
    this.frozen = false;
    const port = this.serverPort!;
    if (!ctx.completed) {
      port.reclaim!(this.interfaceType!, this.interfaceInstance!, this.serverEvents);
      this.drainOutgoing();
      return;
    }
    // Frozen since SaveBegin: the queue holds exactly the saved queued packets.
    while (this.dataQueue.length > 0) this.dataQueue.shift();
    for (const p of ctx.packets) {
      if (p.wait) this.txns.remove(p);
      p.state = 'idle';
      if (p.allocated && p.routine === null) this.freePacket(p);
    }
    for (let t = this.completionQueue.shift(); t !== undefined; t = this.completionQueue.shift()) {
      this.releaseToken(t);
    }
    // The mappings stay in the bus for the restored channel; only this process's grants end.
    for (const mdl of this.maps.values()) mdl.revoke();
    this.maps.clear();
    this.restoredMaps.clear();
    this.detach();
    this.serverPort = null;
    this.mmio = null;
    this.conn = 'disabled';
    this.run = 'paused';
    this.savedAway = true;
  }

  /** VmbChannelRestoreFromBuffer. */
  restoreFromBuffer(buffer: Uint8Array, size: number): NTSTATUS {
    this.checkAlive('VmbChannelRestoreFromBuffer');
    if (this.role !== 'server') return STATUS_INVALID_PARAMETER_1;
    if (this.conn !== 'disabled' || this.enabledOnce || this.disabling || this.saveCtx !== null)
      return STATUS_INVALID_DEVICE_STATE;
    if (this.interfaceType === null || this.interfaceInstance === null || this.processPacket === null)
      return STATUS_INVALID_DEVICE_STATE;
    if (!(buffer instanceof Uint8Array)) return STATUS_INVALID_PARAMETER_2;
    if (!Number.isInteger(size) || size <= 0 || size > buffer.length) return STATUS_INVALID_PARAMETER_3;
    const chunks = this.restoreChunks ?? new ChunkAssembler();
    let state: IndexedChannelState;
    try {
      const status = chunks.accept(buffer, size);
      if (status !== STATUS_SUCCESS) {
        this.restoreChunks = chunks;
        return status;
      }
      this.restoreChunks = null;
      state = indexChannelState(chunks.result(), this.stagingBytes());
    } catch (e) {
      this.restoreChunks = null;
      if (e instanceof SavedStateError) return e.status;
      throw e;
    }
    return this.applyRestore(state);
  }

  private applyRestore(s: IndexedChannelState): NTSTATUS {
    if (
      !s.interfaceType.equals(this.interfaceType!) ||
      !s.interfaceInstance.equals(this.interfaceInstance!) ||
      s.targetVtl !== this.targetVtl ||
      s.serverFlags !== this.serverFlags ||
      s.maximumPacketSize > this.maximumPacketSize
    ) {
      return STATUS_INVALID_PARAMETER;
    }
    const port = this.provider.createServerPort(this.vmbusHandle, this.targetVtl);
    if (typeof port === 'number') return port;
    if ((this.serverFlags & VMBUS_SERVER_CHANNEL_INIT_FLAG_FORCE_NEW_CHANNEL) !== 0) {
      // The old instance is abandoned (the guest is told to close it); nothing in flight is carried
      // over, and the VSP's Enable makes a fresh offer.
      if (port.abandon === undefined) return STATUS_NOT_SUPPORTED;
      return port.abandon(s.interfaceType, s.interfaceInstance);
    }
    if (port.reclaim === undefined || port.release === undefined) return STATUS_NOT_SUPPORTED;
    const committed: KmclPacket[] = [];
    // Packets the VSP sent before the restore go after the restored ones.
    const earlier = this.dataQueue.toArray();
    while (this.dataQueue.length > 0) this.dataQueue.shift();
    const rollback = (status: NTSTATUS): NTSTATUS => {
      while (this.dataQueue.length > 0) this.dataQueue.shift();
      for (const p of committed) {
        if (p.wait) this.txns.remove(p);
        p.state = 'idle';
        // Packets KMCL allocated itself (no VSP callbacks) go back to the pool.
        if (this.restorePacket === null) this.freePacket(p);
      }
      for (const p of earlier) this.dataQueue.push(p);
      this.txns.rebuildFree();
      return status;
    };
    this.restoringPackets = true;
    try {
      for (let k = 0; k < s.packetCount; k++) {
        const r = this.restoreOnePacket(s, k);
        if (typeof r === 'number') return rollback(r);
        committed.push(r);
      }
    } finally {
      this.restoringPackets = false;
    }
    this.txns.rebuildFree();
    const claim = port.reclaim(s.interfaceType, s.interfaceInstance, this.serverEvents);
    if (!NT_SUCCESS(claim.status)) return rollback(claim.status);
    for (const p of earlier) this.dataQueue.push(p);
    const open = claim.open;
    const grants: [number, GrantedMdl][] = [];
    const refuse = (status: NTSTATUS): NTSTATUS => {
      for (const [, mdl] of grants) mdl.revoke();
      port.release!();
      return rollback(status);
    };
    if ((s.conn === 'open') !== (open !== null)) return refuse(STATUS_INVALID_PARAMETER);
    if (open !== null) {
      if (open.data.outgoing.writeIndex !== s.outWriteIndex || open.data.incoming.readIndex !== s.inReadIndex)
        return refuse(STATUS_INVALID_PARAMETER);
      for (const c of s.queuedCompletions)
        if (c.length > open.data.outgoing.maximumPacketSize) return refuse(STATUS_INVALID_PARAMETER);
      for (const m of s.mappings) {
        const g = port.gpadl(m.handle);
        if (g === null) return refuse(STATUS_INVALID_PARAMETER);
        let head: Mdl | null = null;
        for (let i = g.ranges.length - 1; i >= 0; i--) {
          const r = g.ranges[i]!;
          head = { byteOffset: r.byteOffset, byteCount: r.byteCount, pfns: r.pfns, next: head };
        }
        if (head === null) return refuse(STATUS_INVALID_PARAMETER);
        try {
          grants.push([
            m.handle,
            port.hostView.grantMdl(head, { readOnly: m.readOnly, label: `GPADL ${m.handle}` }),
          ]);
        } catch {
          return refuse(STATUS_INVALID_PARAMETER);
        }
      }
    }
    // Nothing can fail from here on.
    this.serverPort = port;
    this.enabledOnce = true;
    this.conn = s.conn;
    this.shuttingDown = false;
    this.peerGone = false;
    this.restoredPendingEnable = true;
    if (open !== null) {
      this.attach(open.data);
      this.mmio = open.mmio;
      for (const [handle, mdl] of grants) {
        this.maps.set(handle, mdl);
        this.restoredMaps.add(handle);
        port.setGpadlMapped(handle, true);
      }
      for (const c of s.queuedCompletions) {
        const t = this.takeToken();
        if (t === null) continue;
        t.reserveStaging(c.length).set(c);
        t.stagingLength = c.length;
        t.state = 'queued-completion';
        this.completionQueue.push(t);
      }
    }
    this.incomingStopped = s.incomingStopped;
    if (open !== null) {
      this.drainOutgoing();
      if (this.run === 'active') void this.enqueue(() => this.startFlow());
    }
    return STATUS_SUCCESS;
  }

  /** Runs EvtVmbChannelRestorePacket for saved packet `k` and puts the packet where it was. */
  private restoreOnePacket(s: IndexedChannelState, k: number): KmclPacket | NTSTATUS {
    const body = s.body;
    const spans = s.packetSpans;
    const lib = this.restoreLib;
    let p: KmclPacket | null;
    const cb = this.restorePacket;
    if (cb === null) {
      // No VSP callbacks: KMCL restores the packet itself with the default completion routine.
      p = this.allocatePacket();
      if (p === null) return STATUS_INSUFFICIENT_RESOURCES;
      // Validated by indexChannelState already: this only reads the fields back.
      scanPacketLib(body, spans[4 * k]!, spans[4 * k + 1]!, this.stagingBytes(), STATUS_DATA_ERROR, lib);
      this.stageRestoredBytes(p, body);
    } else {
      const libBuf = body.subarray(spans[4 * k]!, spans[4 * k + 1]!);
      const save = body.subarray(spans[4 * k + 2]!, spans[4 * k + 3]!);
      this.inRestoreCallback = true;
      this.restoreBound = null;
      let status: NTSTATUS;
      const prev = enterContext('blocking');
      try {
        const r = cb(this.publicHandle, libBuf, libBuf.length, save, save.length);
        status = typeof r === 'number' && Number.isInteger(r) ? r | 0 : STATUS_UNSUCCESSFUL;
      } catch (e) {
        this.provider.callbackError(this, 'EvtVmbChannelRestorePacket', e);
        status = STATUS_UNSUCCESSFUL;
      } finally {
        leaveContext(prev);
        this.inRestoreCallback = false;
      }
      p = this.restoreBound;
      this.restoreBound = null;
      if (!NT_SUCCESS(status)) return status;
      if (p === null) return STATUS_INVALID_DEVICE_STATE;
    }
    if (p.state !== 'idle' || this.restoreNoRoom) {
      if (cb === null) this.freePacket(p);
      return STATUS_INVALID_PARAMETER;
    }
    p.wait = lib.wait;
    if (lib.wait && !this.txns.restoreId(p, lib.transIdLo, lib.transIdHi)) {
      if (cb === null) this.freePacket(p);
      return STATUS_INVALID_PARAMETER;
    }
    if (!lib.wait) {
      p.transIdLo = 0;
      p.transIdHi = 0;
    }
    if (lib.queued) {
      p.state = 'queued';
      this.dataQueue.push(p);
    } else {
      p.length = 0;
      p.state = 'awaiting';
    }
    return p;
  }

  /**
   * Copies the queued packet's bytes (as `restoreLib` found them in `from`) into `p`'s staging
   * area. A packet allocated during the restore gets an area of exactly that size (its next send
   * gives it a full one); caller memory that is too small sets `restoreNoRoom`.
   */
  private stageRestoredBytes(p: KmclPacket, from: Uint8Array): void {
    const lib = this.restoreLib;
    this.restoreNoRoom = false;
    if (!lib.queued) return;
    const n = lib.bytesLength;
    const at = lib.bytesOffset;
    if (p.staging.length >= n) p.staging.set(from.subarray(at, at + n));
    else if (p.allocated) p.setStaging(from.slice(at, at + n));
    else {
      this.restoreNoRoom = true;
      return;
    }
    p.length = n;
  }

  /** VmbPacketRestore: binds `p` to the packet being restored (inside EvtVmbChannelRestorePacket only). */
  restorePacketObject(p: KmclPacket, buffer: Uint8Array, size: number): NTSTATUS {
    if (!this.inRestoreCallback || this.restoreBound !== null || p.state !== 'idle')
      return STATUS_INVALID_DEVICE_STATE;
    if (!(buffer instanceof Uint8Array)) return STATUS_INVALID_PARAMETER_2;
    if (!Number.isInteger(size) || size <= 0 || size > buffer.length) return STATUS_INVALID_PARAMETER_3;
    try {
      const end = scanPacketLib(
        buffer,
        0,
        size,
        this.stagingBytes(),
        STATUS_INVALID_PARAMETER,
        this.restoreLib,
      );
      if (end !== size) return STATUS_INVALID_PARAMETER;
    } catch (e) {
      if (e instanceof SavedStateError) return e.status;
      throw e;
    }
    // The bytes are copied now: the VSP may reuse its LibBuf once this returns.
    this.stageRestoredBytes(p, buffer);
    this.restoreBound = p;
    return STATUS_SUCCESS;
  }

  /** A short description for messages. */
  toString(): string {
    return `KmclChannel(${this.role}, ${this.friendlyName || 'unnamed'}, ${this.conn})`;
  }
}
