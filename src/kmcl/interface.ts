// The KMCL interface query and its function tables (spec/kmcl-api.md 1.4, 4.1). A partition's
// KmclProvider (one bound to the host, one per guest partition) answers `queryInterface` with
// KMCL_CLIENT_INTERFACE_V1 (41 functions) or, on the host only, KMCL_SERVER_INTERFACE_V1 (the same
// 41 plus the 14 of KMCL_SERVER_ONLY_METHODS). Each table starts with the WDM INTERFACE header
// (Size, Version, Context, InterfaceReference, InterfaceDereference) and is frozen. Member names
// are exactly the documented ones; results are NTSTATUS numbers, out-parameters come back in a
// result object, and what blocks in the kernel returns a promise.
//
// Choices (spec silent): the query answers STATUS_NOT_SUPPORTED for an unknown interface type, an
// unknown version, and a server query on a guest provider; STATUS_INVALID_PARAMETER for a Size
// below the table's size (a larger Size is accepted; the header's Size reports the real one).
// After the last InterfaceDereference every call through the table throws a KmclContractViolation
// ('interface-dereferenced'). Documented VOID functions report caller errors by throwing
// KmclContractViolation; functions with an NTSTATUS report them as statuses (see each one).
// The save/restore functions (VmbChannelSaveBegin/Continue/End, VmbChannelRestoreFromBuffer,
// VmbPacketRestore) are implemented by the channel (channel.ts, "Servicing"; docs/servicing.md).

import type { GrantedMdl } from '../memory/host-view.js';
import type { Mdl } from '../memory/mdl.js';
import { Guid } from '../wire/guid.js';
import {
  type ChannelProvider,
  type EvtVmbChannelPnpFailure,
  type EvtVmbChannelProcessingComplete,
  type EvtVmbChannelProcessPacket,
  type EvtVmbChannelRestorePacket,
  type EvtVmbChannelSavePacket,
  KmclChannel,
  type KmclChannelInfo,
  type SyncRequestResult,
  type VMB_CHANNEL_STATE_CHANGE_CALLBACKS,
  type VMBCHANNEL,
  type VmbusKernelHandle,
  type VmbusUserHandle,
} from './channel.js';
import {
  KMCL_CLIENT_INTERFACE_TYPE,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  KMCL_SERVER_INTERFACE_TYPE,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  MAXIMUM_FRIENDLY_NAME_LENGTH,
  MAXIMUM_GPADL_PAGES,
  MAXIMUM_TARGET_VTL,
  MINIMUM_RING_PAGES,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_SIZE,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_VERSION,
  VMBUS_CHANNEL_GPADL_FLAGS,
  VMBUS_CHANNEL_INIT_FLAGS,
  VMBUS_SERVER_CHANNEL_INIT_FLAGS,
} from './constants.js';
import { type ExecutionContext, requireBlocking } from './context.js';
import { KmclContractViolation, type KmclPeerError } from './errors.js';
import {
  type NTSTATUS,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_HANDLE,
  STATUS_INVALID_PARAMETER,
  STATUS_INVALID_PARAMETER_1,
  STATUS_INVALID_PARAMETER_2,
  STATUS_INVALID_PARAMETER_3,
  STATUS_INVALID_PARAMETER_4,
  STATUS_INVALID_PARAMETER_5,
  STATUS_INVALID_PARAMETER_6,
  STATUS_INVALID_PARAMETER_7,
  STATUS_NOT_SUPPORTED,
  STATUS_SUCCESS,
} from './ntstatus.js';
import {
  type EvtVmbPacketCompletionRoutine,
  HandleTable,
  type KmclPacket,
  type KmclToken,
  type VMBPACKET,
  type VMBPACKETCOMPLETION,
} from './packet.js';
import type { ClientPort, KmclGuestBus, KmclHostBus, ServerPort } from './port.js';

// ---------------------------------------------------------------------------------------------
// Table types

/** The WDM INTERFACE header that begins every table. */
export interface INTERFACE {
  readonly Size: number;
  readonly Version: number;
  readonly Context: unknown;
  readonly InterfaceReference: (Context: unknown) => void;
  readonly InterfaceDereference: (Context: unknown) => void;
}

/** KMCL_CLIENT_INTERFACE_V1: the functions every consumer receives (spec 4.1, table C). */
export interface KMCL_CLIENT_INTERFACE_V1 extends INTERFACE {
  readonly VmbChannelAllocate: (
    ParentDeviceObject: unknown,
    IsServer: boolean,
  ) => { status: NTSTATUS; Channel?: VMBCHANNEL };
  readonly VmbChannelCleanup: (Channel: VMBCHANNEL) => void;
  readonly VmbChannelCreateGpadlFromBuffer: (
    Channel: VMBCHANNEL,
    Flags: number,
    Buffer: Uint8Array,
    ByteCount: number,
  ) => Promise<{ status: NTSTATUS; GpadlHandle: number }>;
  readonly VmbChannelCreateGpadlFromMdl: (
    Channel: VMBCHANNEL,
    Flags: number,
    Mdl: Mdl,
    StartOffsetWithinMdl: number,
    DataLengthWithinMdl: number,
  ) => Promise<{ status: NTSTATUS; GpadlHandle: number }>;
  readonly VmbChannelDeleteGpadl: (Channel: VMBCHANNEL, GpadlHandle: number) => Promise<void>;
  readonly VmbChannelDisable: (Channel: VMBCHANNEL) => Promise<void>;
  readonly VmbChannelEnable: (Channel: VMBCHANNEL) => NTSTATUS;
  readonly VmbChannelGetInterfaceInstance: (Channel: VMBCHANNEL) => Guid;
  readonly VmbChannelGetMmioSpace: (Channel: VMBCHANNEL) => { MmioAddress: bigint; MmioSize: bigint };
  readonly VmbChannelGetPointer: (Channel: VMBCHANNEL) => unknown;
  readonly VmbChannelInitSetClientContextSize: (Channel: VMBCHANNEL, ContextSize: number) => NTSTATUS;
  readonly VmbChannelInitSetFlags: (Channel: VMBCHANNEL, Flags: number) => NTSTATUS;
  readonly VmbChannelInitSetFriendlyName: (Channel: VMBCHANNEL, Name: string) => NTSTATUS;
  readonly VmbChannelInitSetMaximumExternalData: (
    Channel: VMBCHANNEL,
    DataSize: number,
    ChainLength: number,
  ) => NTSTATUS;
  readonly VmbChannelInitSetMaximumPacketSize: (Channel: VMBCHANNEL, PacketSize: number) => NTSTATUS;
  readonly VmbChannelInitSetProcessPacketCallbacks: (
    Channel: VMBCHANNEL,
    ProcessPacketCallback: EvtVmbChannelProcessPacket,
    ProcessingCompleteCallback?: EvtVmbChannelProcessingComplete | null,
  ) => NTSTATUS;
  readonly VmbChannelInitSetStateChangeCallbacks: (
    Channel: VMBCHANNEL,
    StateChangeCallbacks: VMB_CHANNEL_STATE_CHANGE_CALLBACKS,
  ) => NTSTATUS;
  readonly VmbChannelPacketComplete: (
    PacketCompletionContext: VMBPACKETCOMPLETION,
    PacketCompletionBuffer: Uint8Array | null,
    BufSize: number,
  ) => void;
  readonly VmbChannelPacketDeferToPassive: (PacketCompletionContext: VMBPACKETCOMPLETION) => void;
  readonly VmbChannelPacketFail: (PacketCompletionContext: VMBPACKETCOMPLETION) => void;
  readonly VmbChannelPacketGetExternalData: (
    PacketCompletionContext: VMBPACKETCOMPLETION,
    Flags: number,
  ) => { status: NTSTATUS; Mdl?: GrantedMdl };
  readonly VmbChannelPause: (Channel: VMBCHANNEL) => Promise<void>;
  readonly VmbChannelSendSynchronousRequest: (
    Channel: VMBCHANNEL,
    Buffer: Uint8Array | null,
    BufferSize: number,
    ExternalDataMdl: Mdl | null,
    Flags: number,
    CompletionBuffer: Uint8Array | null,
    CompletionBufferSize: number | null,
    Timeout: bigint | null,
  ) => Promise<SyncRequestResult>;
  readonly VmbChannelSetIncomingProcessingAtPassive: (Channel: VMBCHANNEL, RequirePassive: boolean) => void;
  readonly VmbChannelSetInterruptLatency: (
    Channel: VMBCHANNEL,
    Latency: number,
  ) => { status: NTSTATUS; OriginalLatency: number };
  readonly VmbChannelSetPointer: (Channel: VMBCHANNEL, Pointer: unknown) => void;
  readonly VmbChannelSetTransactionQuota: (Channel: VMBCHANNEL, Quota: number) => void;
  readonly VmbChannelSizeofPacket: (Channel: VMBCHANNEL) => number;
  readonly VmbChannelStart: (Channel: VMBCHANNEL) => void;
  readonly VmbClientChannelInitSetRingBufferPageCount: (
    Channel: VMBCHANNEL,
    IncomingPageCount: number,
    OutgoingPageCount: number,
  ) => NTSTATUS;
  readonly VmbClientChannelInitSetTargetPnp: (
    Channel: VMBCHANNEL,
    InterfaceType: Guid,
    InterfaceInstance: Guid | null,
    PnpFailureCallback: EvtVmbChannelPnpFailure | null,
  ) => NTSTATUS;
  readonly VmbPacketAllocate: (Channel: VMBCHANNEL) => VMBPACKET | null;
  readonly VmbPacketFree: (VmbPacket: VMBPACKET) => void;
  readonly VmbPacketGetChannel: (PacketObject: VMBPACKET) => VMBCHANNEL;
  readonly VmbPacketGetPointer: (PacketObject: VMBPACKET) => unknown;
  readonly VmbPacketInitialize: (Channel: VMBCHANNEL, VmbPacket: Uint8Array, ByteCount: number) => NTSTATUS;
  readonly VmbPacketSend: (
    PacketObject: VMBPACKET,
    Buffer: Uint8Array | null,
    BufferLength: number,
    ExternalDataMdl: Mdl | null,
    Flags: number,
  ) => NTSTATUS;
  readonly VmbPacketSendWithExternalMdl: (
    PacketObject: VMBPACKET,
    Buffer: Uint8Array | null,
    BufferLength: number,
    ExternalDataMdl: Mdl,
    MdlOffset: number,
    MdlLength: number,
    Flags: number,
  ) => NTSTATUS;
  readonly VmbPacketSendWithExternalPfns: (
    PacketObject: VMBPACKET,
    Buffer: Uint8Array | null,
    BufferLength: number,
    ExternalDataPfns: ArrayLike<number>,
    PfnLength: number,
    Flags: number,
  ) => NTSTATUS;
  readonly VmbPacketSetCompletionRoutine: (
    PacketObject: VMBPACKET,
    CompletionRoutine: EvtVmbPacketCompletionRoutine,
  ) => void;
  readonly VmbPacketSetPointer: (PacketObject: VMBPACKET, Pointer: unknown) => void;
}

/** KMCL_SERVER_ONLY_METHODS (spec 4.1, table S). */
export interface KMCL_SERVER_ONLY_METHODS {
  readonly VmbChannelMapGpadl: (
    Channel: VMBCHANNEL,
    Flags: number,
    GpadlHandle: number,
  ) => { status: NTSTATUS; Mdl?: GrantedMdl };
  readonly VmbChannelRestoreFromBuffer: (
    Channel: VMBCHANNEL,
    Buffer: Uint8Array,
    BufferSize: number,
  ) => NTSTATUS;
  readonly VmbChannelSaveBegin: (Channel: VMBCHANNEL) => NTSTATUS;
  readonly VmbChannelSaveContinue: (
    Channel: VMBCHANNEL,
    SaveBuffer: Uint8Array,
    SaveBufferSize: number,
  ) => { status: NTSTATUS; BytesFilled: number; BytesRequired: number };
  readonly VmbChannelSaveEnd: (Channel: VMBCHANNEL) => void;
  readonly VmbChannelUnmapGpadl: (Channel: VMBCHANNEL, GpadlHandle: number) => void;
  readonly VmbConvertVmbusHandleToKernelHandle: (VmbusHandle: VmbusUserHandle) => {
    status: NTSTATUS;
    KernelHandle?: VmbusKernelHandle;
  };
  readonly VmbPacketRestore: (PacketObject: VMBPACKET, Buffer: Uint8Array, BufferSize: number) => NTSTATUS;
  readonly VmbServerChannelInitSetFlags: (Channel: VMBCHANNEL, Flags: number) => NTSTATUS;
  readonly VmbServerChannelInitSetMmioMegabytes: (
    Channel: VMBCHANNEL,
    MmioMegabytes: number,
    MmioMegabytesOptional: number,
  ) => NTSTATUS;
  readonly VmbServerChannelInitSetSaveRestorePacketCallbacks: (
    Channel: VMBCHANNEL,
    SavePacketCallback: EvtVmbChannelSavePacket,
    RestorePacketCallback: EvtVmbChannelRestorePacket,
  ) => NTSTATUS;
  readonly VmbServerChannelInitSetTargetInterfaceId: (
    Channel: VMBCHANNEL,
    InterfaceType: Guid,
    InterfaceInstance: Guid,
  ) => NTSTATUS;
  readonly VmbServerChannelInitSetTargetVtl: (Channel: VMBCHANNEL, TargetVtl: number) => NTSTATUS;
  readonly VmbServerChannelInitSetVmbusHandle: (
    Channel: VMBCHANNEL,
    VmbusHandle: VmbusKernelHandle,
  ) => NTSTATUS;
}

/** KMCL_SERVER_INTERFACE_V1 = KMCL_CLIENT_INTERFACE_V1 followed by KMCL_SERVER_ONLY_METHODS. */
export interface KMCL_SERVER_INTERFACE_V1 extends KMCL_CLIENT_INTERFACE_V1, KMCL_SERVER_ONLY_METHODS {}

/** Member names of KMCL_CLIENT_INTERFACE_V1, in the spec's table order. */
export const KMCL_CLIENT_FUNCTION_NAMES = Object.freeze([
  'VmbChannelAllocate',
  'VmbChannelCleanup',
  'VmbChannelCreateGpadlFromBuffer',
  'VmbChannelCreateGpadlFromMdl',
  'VmbChannelDeleteGpadl',
  'VmbChannelDisable',
  'VmbChannelEnable',
  'VmbChannelGetInterfaceInstance',
  'VmbChannelGetMmioSpace',
  'VmbChannelGetPointer',
  'VmbChannelInitSetClientContextSize',
  'VmbChannelInitSetFlags',
  'VmbChannelInitSetFriendlyName',
  'VmbChannelInitSetMaximumExternalData',
  'VmbChannelInitSetMaximumPacketSize',
  'VmbChannelInitSetProcessPacketCallbacks',
  'VmbChannelInitSetStateChangeCallbacks',
  'VmbChannelPacketComplete',
  'VmbChannelPacketDeferToPassive',
  'VmbChannelPacketFail',
  'VmbChannelPacketGetExternalData',
  'VmbChannelPause',
  'VmbChannelSendSynchronousRequest',
  'VmbChannelSetIncomingProcessingAtPassive',
  'VmbChannelSetInterruptLatency',
  'VmbChannelSetPointer',
  'VmbChannelSetTransactionQuota',
  'VmbChannelSizeofPacket',
  'VmbChannelStart',
  'VmbClientChannelInitSetRingBufferPageCount',
  'VmbClientChannelInitSetTargetPnp',
  'VmbPacketAllocate',
  'VmbPacketFree',
  'VmbPacketGetChannel',
  'VmbPacketGetPointer',
  'VmbPacketInitialize',
  'VmbPacketSend',
  'VmbPacketSendWithExternalMdl',
  'VmbPacketSendWithExternalPfns',
  'VmbPacketSetCompletionRoutine',
  'VmbPacketSetPointer',
] as const satisfies readonly (keyof KMCL_CLIENT_INTERFACE_V1)[]);

/** Member names of KMCL_SERVER_ONLY_METHODS, in the structure's order. */
export const KMCL_SERVER_ONLY_FUNCTION_NAMES = Object.freeze([
  'VmbChannelMapGpadl',
  'VmbChannelRestoreFromBuffer',
  'VmbChannelSaveBegin',
  'VmbChannelSaveContinue',
  'VmbChannelSaveEnd',
  'VmbChannelUnmapGpadl',
  'VmbConvertVmbusHandleToKernelHandle',
  'VmbPacketRestore',
  'VmbServerChannelInitSetFlags',
  'VmbServerChannelInitSetMmioMegabytes',
  'VmbServerChannelInitSetSaveRestorePacketCallbacks',
  'VmbServerChannelInitSetTargetInterfaceId',
  'VmbServerChannelInitSetTargetVtl',
  'VmbServerChannelInitSetVmbusHandle',
] as const satisfies readonly (keyof KMCL_SERVER_ONLY_METHODS)[]);

/**
 * VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT: zeroes the structure (every callback null) and sets
 * Version = 1 and Size = sizeof. With no argument it returns a new, initialized structure.
 */
export function VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT(
  Callbacks?: Partial<VMB_CHANNEL_STATE_CHANGE_CALLBACKS>,
): VMB_CHANNEL_STATE_CHANGE_CALLBACKS {
  const cb = (Callbacks ?? {}) as VMB_CHANNEL_STATE_CHANGE_CALLBACKS;
  cb.Version = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_VERSION;
  cb.Size = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_SIZE;
  cb.EvtChannelOpened = null;
  cb.EvtChannelClosed = null;
  cb.EvtChannelSuspend = null;
  cb.EvtChannelStarted = null;
  cb.EvtChannelPostStarted = null;
  return cb;
}

// ---------------------------------------------------------------------------------------------
// The provider

export interface KmclProviderOptions {
  /** Allow Init* setters between Disable and the next Enable (spec Q1 switch). Default false. */
  allowReinit?: boolean;
  /** Told about everything refused from the peer (the channel keeps going or stops, see the code). */
  onPeerError?: (channel: VMBCHANNEL, error: KmclPeerError) => void;
  /**
   * Told when a driver callback throws. Default: the error is rethrown from a microtask (a driver
   * bug must be loud); KMCL itself carries on as if the callback had returned.
   */
  onCallbackError?: (channel: VMBCHANNEL, callback: string, error: unknown) => void;
}

class KernelHandle {
  constructor(readonly partitionId: number) {}
}

/**
 * One partition's KMCL (the Vmbkmcl.sys instance the driver's device stack talks to): bound to
 * the host's bus (server and host-side features) or to one guest partition's bus.
 */
export class KmclProvider implements ChannelProvider {
  readonly side: 'host' | 'guest';
  readonly packets = new HandleTable<KmclPacket>();
  readonly tokens = new HandleTable<KmclToken>();
  readonly allowReinit: boolean;
  readonly guestMemory;
  private readonly hostBus: KmclHostBus | null;
  private readonly guestBus: KmclGuestBus | null;
  private readonly options: KmclProviderOptions;
  private readonly kernelHandles = new Map<number, KernelHandle>();
  /** VmbPacketInitialize packets, keyed by the caller's memory. */
  readonly initialized = new WeakMap<Uint8Array, KmclPacket>();

  private constructor(
    hostBus: KmclHostBus | null,
    guestBus: KmclGuestBus | null,
    options: KmclProviderOptions,
  ) {
    this.hostBus = hostBus;
    this.guestBus = guestBus;
    this.side = hostBus !== null ? 'host' : 'guest';
    this.guestMemory = guestBus?.memory ?? null;
    this.allowReinit = options.allowReinit === true;
    this.options = options;
  }

  /** The host's KMCL over the host's VMBus. */
  static forHost(bus: KmclHostBus, options: KmclProviderOptions = {}): KmclProvider {
    return new KmclProvider(bus, null, options);
  }

  /** A guest partition's KMCL over that partition's VMBus client. */
  static forGuest(bus: KmclGuestBus, options: KmclProviderOptions = {}): KmclProvider {
    return new KmclProvider(null, bus, options);
  }

  isKernelHandle(handle: unknown): handle is VmbusKernelHandle {
    return handle instanceof KernelHandle && this.kernelHandles.get(handle.partitionId) === handle;
  }

  /** VmbConvertVmbusHandleToKernelHandle (host only). */
  convertUserHandle(userHandle: unknown): { status: NTSTATUS; KernelHandle?: VmbusKernelHandle } {
    if (this.hostBus === null) return { status: STATUS_NOT_SUPPORTED };
    const partition = this.hostBus.partitions().find((p) => p.userHandle === userHandle);
    if (partition === undefined) return { status: STATUS_INVALID_HANDLE };
    let handle = this.kernelHandles.get(partition.id);
    if (handle === undefined) {
      handle = new KernelHandle(partition.id);
      this.kernelHandles.set(partition.id, handle);
    }
    return { status: STATUS_SUCCESS, KernelHandle: handle as unknown as VmbusKernelHandle };
  }

  createServerPort(handle: VmbusKernelHandle | null, vtl: number): ServerPort | NTSTATUS {
    const bus = this.hostBus;
    if (bus === null) return STATUS_NOT_SUPPORTED;
    let partitionId: number;
    if (handle === null) {
      // No VmbServerChannelInitSetVmbusHandle: the host's first partition (documented choice).
      const first = bus.partitions()[0];
      if (first === undefined) return STATUS_INVALID_DEVICE_STATE;
      partitionId = first.id;
    } else {
      partitionId = (handle as unknown as KernelHandle).partitionId;
    }
    return bus.createServerPort(partitionId, vtl) ?? STATUS_INVALID_HANDLE;
  }

  createClientPort(): ClientPort {
    if (this.guestBus === null) throw new Error('a host provider has no client ports');
    return this.guestBus.createClientPort();
  }

  peerError(channel: KmclChannel, error: KmclPeerError): void {
    this.options.onPeerError?.(channel.publicHandle, error);
  }

  callbackError(channel: KmclChannel, callback: string, error: unknown): void {
    const hook = this.options.onCallbackError;
    if (hook !== undefined) {
      hook(channel.publicHandle, callback, error);
      return;
    }
    queueMicrotask(() => {
      throw error;
    });
  }

  /**
   * Undocumented extension (the V2 name is VmbChannelPacketGetClientContext): the per-packet
   * client context area of a delivered packet (VmbChannelInitSetClientContextSize), or null.
   */
  packetClientContext(packet: VMBPACKETCOMPLETION): Uint8Array | null {
    return this.token(packet, 'VmbChannelPacketGetClientContext').context;
  }

  /** The token behind a VMBPACKETCOMPLETION, or a KmclContractViolation. */
  token(handle: unknown, api: string): KmclToken {
    const t = this.tokens.resolve(handle);
    if (t !== null && t.state !== 'free') return t;
    if (this.tokens.isStale(handle)) {
      throw new KmclContractViolation(
        'double-completion',
        api,
        'the packet was already completed (or failed); its VMBPACKETCOMPLETION is no longer valid',
      );
    }
    throw new KmclContractViolation('bad-handle', api, 'not a VMBPACKETCOMPLETION of this provider');
  }

  /** The packet behind a VMBPACKET, or a KmclContractViolation. */
  packet(handle: unknown, api: string): KmclPacket {
    let p: KmclPacket | null | undefined;
    if (handle instanceof Uint8Array) p = this.initialized.get(handle);
    else p = this.packets.resolve(handle);
    if (p != null && p.state !== 'free') return p;
    if (p != null || this.packets.isStale(handle)) {
      throw new KmclContractViolation('use-after-free', api, 'the packet object was freed');
    }
    throw new KmclContractViolation('bad-handle', api, 'not a VMBPACKET of this provider');
  }

  /** The channel behind a VMBCHANNEL (of this provider, not cleaned up), or a KmclContractViolation. */
  channel(handle: unknown, api: string): KmclChannel {
    const ch = KmclChannel.from(handle);
    if (ch === null || ch.provider !== this) {
      throw new KmclContractViolation('bad-handle', api, 'not a VMBCHANNEL of this provider');
    }
    if (ch.isDestroyed) throw new KmclContractViolation('use-after-free', api, 'the channel was cleaned up');
    return ch;
  }

  /** The channel for an Init* setter, or null (-> STATUS_INVALID_PARAMETER_1). */
  initChannel(handle: unknown, role?: 'server' | 'client'): KmclChannel | null {
    const ch = KmclChannel.from(handle);
    if (ch === null || ch.provider !== this || !ch.initAllowed()) return null;
    if (role !== undefined && ch.role !== role) return null;
    return ch;
  }
}

// ---------------------------------------------------------------------------------------------
// The query

export interface QueryInterfaceResult<T> {
  status: NTSTATUS;
  Interface?: T;
}

/**
 * The interface query (WdfFdoQueryForInterface with KMCL's InterfaceType, Size and Version).
 * `T` is the table type the caller asked for (KMCL_CLIENT_INTERFACE_V1 or KMCL_SERVER_INTERFACE_V1).
 */
export function queryInterface<T extends KMCL_CLIENT_INTERFACE_V1 = KMCL_CLIENT_INTERFACE_V1>(
  provider: KmclProvider,
  InterfaceType: Guid,
  Size: number,
  Version: number,
): QueryInterfaceResult<T> {
  if (!(provider instanceof KmclProvider) || !(InterfaceType instanceof Guid)) {
    return { status: STATUS_INVALID_PARAMETER };
  }
  let server: boolean;
  if (InterfaceType.equals(KMCL_CLIENT_INTERFACE_TYPE)) {
    if (Version !== KMCL_CLIENT_INTERFACE_VERSION_V1) return { status: STATUS_NOT_SUPPORTED };
    if (!Number.isInteger(Size) || Size < KMCL_CLIENT_INTERFACE_V1_SIZE)
      return { status: STATUS_INVALID_PARAMETER };
    server = false;
  } else if (InterfaceType.equals(KMCL_SERVER_INTERFACE_TYPE)) {
    if (Version !== KMCL_SERVER_INTERFACE_VERSION_V1) return { status: STATUS_NOT_SUPPORTED };
    if (!Number.isInteger(Size) || Size < KMCL_SERVER_INTERFACE_V1_SIZE)
      return { status: STATUS_INVALID_PARAMETER };
    if (provider.side !== 'host') return { status: STATUS_NOT_SUPPORTED };
    server = true;
  } else {
    return { status: STATUS_NOT_SUPPORTED };
  }
  return { status: STATUS_SUCCESS, Interface: buildTable(provider, server) as T };
}

// ---------------------------------------------------------------------------------------------
// The tables

function isGuid(g: unknown): g is Guid {
  return g instanceof Guid;
}

function isU16(n: unknown): n is number {
  return Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffff;
}

function isU32(n: unknown): n is number {
  return Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;
}

function isFn(f: unknown): boolean {
  return typeof f === 'function';
}

function buildTable(
  provider: KmclProvider,
  server: boolean,
): KMCL_CLIENT_INTERFACE_V1 | KMCL_SERVER_INTERFACE_V1 {
  const ref = { count: 1 };
  const live = (api: string): void => {
    if (ref.count <= 0) {
      throw new KmclContractViolation(
        'interface-dereferenced',
        api,
        'called through an interface table after its last InterfaceDereference',
      );
    }
  };
  const P = provider;
  /** The channel behind a handle, for a call through a table that is still referenced. */
  const liveChannel = (Channel: unknown, api: string): KmclChannel => {
    live(api);
    return P.channel(Channel, api);
  };

  const client: KMCL_CLIENT_INTERFACE_V1 = {
    Size: server ? KMCL_SERVER_INTERFACE_V1_SIZE : KMCL_CLIENT_INTERFACE_V1_SIZE,
    Version: server ? KMCL_SERVER_INTERFACE_VERSION_V1 : KMCL_CLIENT_INTERFACE_VERSION_V1,
    Context: provider,
    InterfaceReference: (_Context) => {
      live('InterfaceReference');
      ref.count++;
    },
    InterfaceDereference: (_Context) => {
      live('InterfaceDereference');
      ref.count--;
    },

    VmbChannelAllocate: (ParentDeviceObject, IsServer) => {
      live('VmbChannelAllocate');
      requireBlocking('VmbChannelAllocate');
      // A guest cannot host server endpoints; the host's KMCL offers, it does not open (choice).
      if ((IsServer === true) !== (P.side === 'host')) return { status: STATUS_NOT_SUPPORTED };
      const ch = new KmclChannel(P, ParentDeviceObject, IsServer === true);
      return { status: STATUS_SUCCESS, Channel: ch.publicHandle };
    },
    VmbChannelCleanup: (Channel) => {
      liveChannel(Channel, 'VmbChannelCleanup').cleanup();
    },
    VmbChannelCreateGpadlFromBuffer: (Channel, Flags, Buffer, ByteCount) => {
      const api = 'VmbChannelCreateGpadlFromBuffer';
      const ch = liveChannel(Channel, api);
      requireBlocking(api);
      if (ch.role !== 'client') return Promise.resolve({ status: STATUS_NOT_SUPPORTED, GpadlHandle: 0 });
      if (!isU32(Flags) || (Flags & ~VMBUS_CHANNEL_GPADL_FLAGS) !== 0) {
        return Promise.resolve({ status: STATUS_INVALID_PARAMETER_2, GpadlHandle: 0 });
      }
      return ch.createGpadl(Flags, ch.bufferRanges(Buffer, ByteCount));
    },
    VmbChannelCreateGpadlFromMdl: (Channel, Flags, Mdl, StartOffsetWithinMdl, DataLengthWithinMdl) => {
      const api = 'VmbChannelCreateGpadlFromMdl';
      const ch = liveChannel(Channel, api);
      requireBlocking(api);
      if (ch.role !== 'client') return Promise.resolve({ status: STATUS_NOT_SUPPORTED, GpadlHandle: 0 });
      if (!isU32(Flags) || (Flags & ~VMBUS_CHANNEL_GPADL_FLAGS) !== 0) {
        return Promise.resolve({ status: STATUS_INVALID_PARAMETER_2, GpadlHandle: 0 });
      }
      return ch.createGpadl(Flags, ch.mdlRanges(Mdl, StartOffsetWithinMdl, DataLengthWithinMdl));
    },
    VmbChannelDeleteGpadl: (Channel, GpadlHandle) => {
      const api = 'VmbChannelDeleteGpadl';
      const ch = liveChannel(Channel, api);
      requireBlocking(api);
      if (ch.role !== 'client')
        throw new KmclContractViolation('bad-state', api, 'only a client creates GPADLs');
      return ch.deleteGpadl(GpadlHandle);
    },
    VmbChannelDisable: (Channel) => {
      return liveChannel(Channel, 'VmbChannelDisable').disable();
    },
    VmbChannelEnable: (Channel) => {
      return liveChannel(Channel, 'VmbChannelEnable').enable();
    },
    VmbChannelGetInterfaceInstance: (Channel) => {
      return liveChannel(Channel, 'VmbChannelGetInterfaceInstance').getInterfaceInstance();
    },
    VmbChannelGetMmioSpace: (Channel) => {
      return liveChannel(Channel, 'VmbChannelGetMmioSpace').getMmioSpace();
    },
    VmbChannelGetPointer: (Channel) => {
      return liveChannel(Channel, 'VmbChannelGetPointer').pointer;
    },
    VmbChannelInitSetClientContextSize: (Channel, ContextSize) => {
      live('VmbChannelInitSetClientContextSize');
      const ch = P.initChannel(Channel);
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!Number.isInteger(ContextSize) || ContextSize < 0 || ContextSize > 0x10000)
        return STATUS_INVALID_PARAMETER_2;
      ch.clientContextSize = ContextSize;
      return STATUS_SUCCESS;
    },
    VmbChannelInitSetFlags: (Channel, Flags) => {
      live('VmbChannelInitSetFlags');
      const ch = P.initChannel(Channel);
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isU32(Flags) || (Flags & ~VMBUS_CHANNEL_INIT_FLAGS) !== 0) return STATUS_INVALID_PARAMETER_2;
      ch.initFlags = Flags;
      ch.limitsChanged();
      return STATUS_SUCCESS;
    },
    VmbChannelInitSetFriendlyName: (Channel, Name) => {
      live('VmbChannelInitSetFriendlyName');
      const ch = P.initChannel(Channel);
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (typeof Name !== 'string' || Name.length > MAXIMUM_FRIENDLY_NAME_LENGTH)
        return STATUS_INVALID_PARAMETER_2;
      ch.friendlyName = Name;
      return STATUS_SUCCESS;
    },
    VmbChannelInitSetMaximumExternalData: (Channel, DataSize, ChainLength) => {
      live('VmbChannelInitSetMaximumExternalData');
      const ch = P.initChannel(Channel);
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isU32(DataSize) || DataSize === 0 || DataSize > 0x7fffffff) return STATUS_INVALID_PARAMETER_2;
      if (!isU32(ChainLength) || ChainLength === 0 || ChainLength > MAXIMUM_GPADL_PAGES) {
        return STATUS_INVALID_PARAMETER_3;
      }
      ch.maximumExternalData = DataSize;
      ch.maximumExternalChain = ChainLength;
      ch.limitsChanged();
      return STATUS_SUCCESS;
    },
    VmbChannelInitSetMaximumPacketSize: (Channel, PacketSize) => {
      live('VmbChannelInitSetMaximumPacketSize');
      const ch = P.initChannel(Channel);
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isU32(PacketSize) || PacketSize === 0 || PacketSize > 0x7fffffff)
        return STATUS_INVALID_PARAMETER_2;
      ch.maximumPacketSize = PacketSize;
      ch.limitsChanged();
      return STATUS_SUCCESS;
    },
    VmbChannelInitSetProcessPacketCallbacks: (Channel, ProcessPacketCallback, ProcessingCompleteCallback) => {
      live('VmbChannelInitSetProcessPacketCallbacks');
      const ch = P.initChannel(Channel);
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isFn(ProcessPacketCallback)) return STATUS_INVALID_PARAMETER_2;
      if (ProcessingCompleteCallback != null && !isFn(ProcessingCompleteCallback))
        return STATUS_INVALID_PARAMETER_3;
      ch.processPacket = ProcessPacketCallback;
      ch.processingComplete = ProcessingCompleteCallback ?? null;
      return STATUS_SUCCESS;
    },
    VmbChannelInitSetStateChangeCallbacks: (Channel, StateChangeCallbacks) => {
      live('VmbChannelInitSetStateChangeCallbacks');
      const ch = P.initChannel(Channel);
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      const cb = StateChangeCallbacks;
      if (
        cb === null ||
        typeof cb !== 'object' ||
        cb.Version !== VMB_CHANNEL_STATE_CHANGE_CALLBACKS_VERSION ||
        cb.Size !== VMB_CHANNEL_STATE_CHANGE_CALLBACKS_SIZE
      ) {
        return STATUS_INVALID_PARAMETER_2;
      }
      const members = [
        cb.EvtChannelOpened,
        cb.EvtChannelClosed,
        cb.EvtChannelSuspend,
        cb.EvtChannelStarted,
        cb.EvtChannelPostStarted,
      ];
      if (members.some((m) => m != null && !isFn(m))) return STATUS_INVALID_PARAMETER_2;
      // C passes the structure by pointer and KMCL copies it; so does this.
      ch.stateCallbacks = {
        Version: cb.Version,
        Size: cb.Size,
        EvtChannelOpened: cb.EvtChannelOpened ?? null,
        EvtChannelClosed: cb.EvtChannelClosed ?? null,
        EvtChannelSuspend: cb.EvtChannelSuspend ?? null,
        EvtChannelStarted: cb.EvtChannelStarted ?? null,
        EvtChannelPostStarted: cb.EvtChannelPostStarted ?? null,
      };
      return STATUS_SUCCESS;
    },
    VmbChannelPacketComplete: (PacketCompletionContext, PacketCompletionBuffer, BufSize) => {
      const api = 'VmbChannelPacketComplete';
      live(api);
      const t = P.token(PacketCompletionContext, api);
      (t.owner as KmclChannel).completeToken(t, PacketCompletionBuffer ?? null, BufSize ?? 0);
    },
    VmbChannelPacketDeferToPassive: (PacketCompletionContext) => {
      const api = 'VmbChannelPacketDeferToPassive';
      live(api);
      const t = P.token(PacketCompletionContext, api);
      (t.owner as KmclChannel).deferToken(t);
    },
    VmbChannelPacketFail: (PacketCompletionContext) => {
      const api = 'VmbChannelPacketFail';
      live(api);
      const t = P.token(PacketCompletionContext, api);
      (t.owner as KmclChannel).failToken(t);
    },
    VmbChannelPacketGetExternalData: (PacketCompletionContext, Flags) => {
      const api = 'VmbChannelPacketGetExternalData';
      live(api);
      const t = P.token(PacketCompletionContext, api);
      return (t.owner as KmclChannel).getExternalData(t, Flags);
    },
    VmbChannelPause: (Channel) => {
      return liveChannel(Channel, 'VmbChannelPause').pause();
    },
    VmbChannelSendSynchronousRequest: (
      Channel,
      Buffer,
      BufferSize,
      ExternalDataMdl,
      Flags,
      CompletionBuffer,
      CompletionBufferSize,
      Timeout,
    ) => {
      const api = 'VmbChannelSendSynchronousRequest';
      return liveChannel(Channel, api).sendSynchronousRequest(
        Buffer,
        BufferSize,
        ExternalDataMdl,
        Flags,
        CompletionBuffer,
        CompletionBufferSize,
        Timeout,
      );
    },
    VmbChannelSetIncomingProcessingAtPassive: (Channel, RequirePassive) => {
      liveChannel(Channel, 'VmbChannelSetIncomingProcessingAtPassive').incomingAtPassive =
        RequirePassive === true;
    },
    VmbChannelSetInterruptLatency: (Channel, Latency) => {
      return liveChannel(Channel, 'VmbChannelSetInterruptLatency').setInterruptLatency(Latency);
    },
    VmbChannelSetPointer: (Channel, Pointer) => {
      liveChannel(Channel, 'VmbChannelSetPointer').pointer = Pointer ?? null;
    },
    VmbChannelSetTransactionQuota: (Channel, Quota) => {
      liveChannel(Channel, 'VmbChannelSetTransactionQuota').setTransactionQuota(Quota);
    },
    VmbChannelSizeofPacket: (Channel) => {
      return liveChannel(Channel, 'VmbChannelSizeofPacket').sizeofPacket();
    },
    VmbChannelStart: (Channel) => {
      liveChannel(Channel, 'VmbChannelStart').start();
    },
    VmbClientChannelInitSetRingBufferPageCount: (Channel, IncomingPageCount, OutgoingPageCount) => {
      live('VmbClientChannelInitSetRingBufferPageCount');
      const ch = P.initChannel(Channel, 'client');
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isU32(IncomingPageCount) || IncomingPageCount < MINIMUM_RING_PAGES)
        return STATUS_INVALID_PARAMETER_2;
      if (!isU32(OutgoingPageCount) || OutgoingPageCount < MINIMUM_RING_PAGES)
        return STATUS_INVALID_PARAMETER_3;
      // Both rings are described by one GPADL, which holds at most 8190 pages.
      if (IncomingPageCount + OutgoingPageCount > MAXIMUM_GPADL_PAGES) return STATUS_INVALID_PARAMETER;
      ch.incomingPages = IncomingPageCount;
      ch.outgoingPages = OutgoingPageCount;
      return STATUS_SUCCESS;
    },
    VmbClientChannelInitSetTargetPnp: (Channel, InterfaceType, InterfaceInstance, PnpFailureCallback) => {
      live('VmbClientChannelInitSetTargetPnp');
      const ch = P.initChannel(Channel, 'client');
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isGuid(InterfaceType)) return STATUS_INVALID_PARAMETER_2;
      if (InterfaceInstance != null && !isGuid(InterfaceInstance)) return STATUS_INVALID_PARAMETER_3;
      if (PnpFailureCallback != null && !isFn(PnpFailureCallback)) return STATUS_INVALID_PARAMETER_4;
      ch.targetType = InterfaceType;
      ch.targetInstance = InterfaceInstance ?? null;
      ch.pnpFailure = PnpFailureCallback ?? null;
      return STATUS_SUCCESS;
    },
    VmbPacketAllocate: (Channel) => {
      live('VmbPacketAllocate');
      const p = P.channel(Channel, 'VmbPacketAllocate').allocatePacket();
      return p === null ? null : p.publicHandle;
    },
    VmbPacketFree: (VmbPacket) => {
      const api = 'VmbPacketFree';
      live(api);
      const p = P.packet(VmbPacket, api);
      if (!p.allocated) {
        throw new KmclContractViolation(
          'bad-handle',
          api,
          'a VmbPacketInitialize packet lives in caller memory',
        );
      }
      if (p.state !== 'idle') throw new KmclContractViolation('bad-state', api, 'the packet is in flight');
      (p.owner as KmclChannel).freePacket(p);
    },
    VmbPacketGetChannel: (PacketObject) => {
      live('VmbPacketGetChannel');
      return (P.packet(PacketObject, 'VmbPacketGetChannel').owner as KmclChannel).publicHandle;
    },
    VmbPacketGetPointer: (PacketObject) => {
      live('VmbPacketGetPointer');
      return P.packet(PacketObject, 'VmbPacketGetPointer').pointer;
    },
    VmbPacketInitialize: (Channel, VmbPacket, ByteCount) => {
      const api = 'VmbPacketInitialize';
      live(api);
      const ch = KmclChannel.from(Channel);
      if (ch === null || ch.provider !== P || ch.isDestroyed) return STATUS_INVALID_PARAMETER_1;
      if (!(VmbPacket instanceof Uint8Array)) return STATUS_INVALID_PARAMETER_2;
      if (!Number.isInteger(ByteCount) || ByteCount < ch.sizeofPacket()) return STATUS_INVALID_PARAMETER_3;
      if (VmbPacket.length < ByteCount) return STATUS_INVALID_PARAMETER_2;
      const old = P.initialized.get(VmbPacket);
      if (old !== undefined && old.state !== 'idle') {
        throw new KmclContractViolation('bad-state', api, 'the packet object is in flight');
      }
      P.initialized.set(VmbPacket, ch.initializePacket(VmbPacket));
      return STATUS_SUCCESS;
    },
    VmbPacketSend: (PacketObject, Buffer, BufferLength, ExternalDataMdl, Flags) => {
      const api = 'VmbPacketSend';
      live(api);
      const p = P.packet(PacketObject, api);
      const ch = p.owner as KmclChannel;
      ch.setSendMdl(ExternalDataMdl ?? null, 0, 0);
      return ch.send(api, p, Buffer, BufferLength, Flags, STATUS_INVALID_PARAMETER_5);
    },
    VmbPacketSendWithExternalMdl: (
      PacketObject,
      Buffer,
      BufferLength,
      ExternalDataMdl,
      MdlOffset,
      MdlLength,
      Flags,
    ) => {
      const api = 'VmbPacketSendWithExternalMdl';
      live(api);
      const p = P.packet(PacketObject, api);
      const ch = p.owner as KmclChannel;
      if (ExternalDataMdl == null || typeof ExternalDataMdl !== 'object') return STATUS_INVALID_PARAMETER_4;
      ch.setSendMdl(ExternalDataMdl, MdlOffset, MdlLength);
      return ch.send(api, p, Buffer, BufferLength, Flags, STATUS_INVALID_PARAMETER_7);
    },
    VmbPacketSendWithExternalPfns: (
      PacketObject,
      Buffer,
      BufferLength,
      ExternalDataPfns,
      PfnLength,
      Flags,
    ) => {
      const api = 'VmbPacketSendWithExternalPfns';
      live(api);
      const p = P.packet(PacketObject, api);
      const ch = p.owner as KmclChannel;
      ch.setSendPfns(ExternalDataPfns ?? null, PfnLength);
      return ch.send(api, p, Buffer, BufferLength, Flags, STATUS_INVALID_PARAMETER_6);
    },
    VmbPacketSetCompletionRoutine: (PacketObject, CompletionRoutine) => {
      const api = 'VmbPacketSetCompletionRoutine';
      live(api);
      const p = P.packet(PacketObject, api);
      if (!isFn(CompletionRoutine)) throw new KmclContractViolation('bad-argument', api, 'not a function');
      if (p.state !== 'idle') throw new KmclContractViolation('bad-state', api, 'the packet is in flight');
      p.routine = CompletionRoutine;
      p.routineSet = true;
    },
    VmbPacketSetPointer: (PacketObject, Pointer) => {
      live('VmbPacketSetPointer');
      P.packet(PacketObject, 'VmbPacketSetPointer').pointer = Pointer ?? null;
    },
  };

  if (!server) return Object.freeze(client);

  const serverOnly: KMCL_SERVER_ONLY_METHODS = {
    VmbChannelMapGpadl: (Channel, Flags, GpadlHandle) => {
      return liveChannel(Channel, 'VmbChannelMapGpadl').mapGpadl(Flags, GpadlHandle);
    },
    VmbChannelRestoreFromBuffer: (Channel, Buffer, BufferSize) => {
      return liveChannel(Channel, 'VmbChannelRestoreFromBuffer').restoreFromBuffer(Buffer, BufferSize);
    },
    VmbChannelSaveBegin: (Channel) => {
      return liveChannel(Channel, 'VmbChannelSaveBegin').saveBegin();
    },
    VmbChannelSaveContinue: (Channel, SaveBuffer, SaveBufferSize) => {
      return liveChannel(Channel, 'VmbChannelSaveContinue').saveContinue(SaveBuffer, SaveBufferSize);
    },
    VmbChannelSaveEnd: (Channel) => {
      liveChannel(Channel, 'VmbChannelSaveEnd').saveEnd();
    },
    VmbChannelUnmapGpadl: (Channel, GpadlHandle) => {
      liveChannel(Channel, 'VmbChannelUnmapGpadl').unmapGpadl(GpadlHandle);
    },
    VmbConvertVmbusHandleToKernelHandle: (VmbusHandle) => {
      live('VmbConvertVmbusHandleToKernelHandle');
      return P.convertUserHandle(VmbusHandle);
    },
    VmbPacketRestore: (PacketObject, Buffer, BufferSize) => {
      live('VmbPacketRestore');
      const p = P.packet(PacketObject, 'VmbPacketRestore');
      return (p.owner as KmclChannel).restorePacketObject(p, Buffer, BufferSize);
    },
    VmbServerChannelInitSetFlags: (Channel, Flags) => {
      live('VmbServerChannelInitSetFlags');
      const ch = P.initChannel(Channel, 'server');
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isU32(Flags) || (Flags & ~VMBUS_SERVER_CHANNEL_INIT_FLAGS) !== 0)
        return STATUS_INVALID_PARAMETER_2;
      ch.serverFlags = Flags;
      ch.limitsChanged();
      return STATUS_SUCCESS;
    },
    VmbServerChannelInitSetMmioMegabytes: (Channel, MmioMegabytes, MmioMegabytesOptional) => {
      live('VmbServerChannelInitSetMmioMegabytes');
      const ch = P.initChannel(Channel, 'server');
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isU16(MmioMegabytes)) return STATUS_INVALID_PARAMETER_2;
      if (!isU16(MmioMegabytesOptional)) return STATUS_INVALID_PARAMETER_3;
      if (MmioMegabytes === 0 && MmioMegabytesOptional === 0) return STATUS_INVALID_PARAMETER;
      ch.mmioMegabytes = MmioMegabytes;
      ch.mmioMegabytesOptional = MmioMegabytesOptional;
      return STATUS_SUCCESS;
    },
    VmbServerChannelInitSetSaveRestorePacketCallbacks: (
      Channel,
      SavePacketCallback,
      RestorePacketCallback,
    ) => {
      live('VmbServerChannelInitSetSaveRestorePacketCallbacks');
      const ch = P.initChannel(Channel, 'server');
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isFn(SavePacketCallback)) return STATUS_INVALID_PARAMETER_2;
      if (!isFn(RestorePacketCallback)) return STATUS_INVALID_PARAMETER_3;
      ch.savePacket = SavePacketCallback;
      ch.restorePacket = RestorePacketCallback;
      return STATUS_SUCCESS;
    },
    VmbServerChannelInitSetTargetInterfaceId: (Channel, InterfaceType, InterfaceInstance) => {
      live('VmbServerChannelInitSetTargetInterfaceId');
      const ch = P.initChannel(Channel, 'server');
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!isGuid(InterfaceType)) return STATUS_INVALID_PARAMETER_2;
      if (!isGuid(InterfaceInstance)) return STATUS_INVALID_PARAMETER_3;
      ch.interfaceType = InterfaceType;
      ch.interfaceInstance = InterfaceInstance;
      return STATUS_SUCCESS;
    },
    VmbServerChannelInitSetTargetVtl: (Channel, TargetVtl) => {
      live('VmbServerChannelInitSetTargetVtl');
      const ch = P.initChannel(Channel, 'server');
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!Number.isInteger(TargetVtl) || TargetVtl < 0 || TargetVtl > MAXIMUM_TARGET_VTL) {
        return STATUS_INVALID_PARAMETER_2;
      }
      ch.targetVtl = TargetVtl;
      return STATUS_SUCCESS;
    },
    VmbServerChannelInitSetVmbusHandle: (Channel, VmbusHandle) => {
      live('VmbServerChannelInitSetVmbusHandle');
      const ch = P.initChannel(Channel, 'server');
      if (ch === null) return STATUS_INVALID_PARAMETER_1;
      if (!P.isKernelHandle(VmbusHandle)) return STATUS_INVALID_HANDLE;
      ch.vmbusHandle = VmbusHandle;
      return STATUS_SUCCESS;
    },
  };
  return Object.freeze({ ...client, ...serverOnly });
}

// ---------------------------------------------------------------------------------------------
// Outside the tables: diagnostics and test hooks

/** A snapshot of a channel's state (not part of the KMCL API). */
export function kmclChannelInfo(channel: VMBCHANNEL): KmclChannelInfo {
  const ch = KmclChannel.from(channel);
  if (ch === null) throw new KmclContractViolation('bad-handle', 'kmclChannelInfo', 'not a VMBCHANNEL');
  return ch.info();
}

/** Test hooks (not part of the KMCL API). */
export const kmclTestHooks = Object.freeze({
  /** Forces EvtVmbChannelProcessPacket of `channel` into one context; null restores the normal rule. */
  forceProcessPacketContext(channel: VMBCHANNEL, context: ExecutionContext | null): void {
    const ch = KmclChannel.from(channel);
    if (ch === null)
      throw new KmclContractViolation('bad-handle', 'forceProcessPacketContext', 'not a VMBCHANNEL');
    ch.forcedProcessPacketContext = context;
  },
});
