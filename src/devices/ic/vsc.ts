// Guest VSCs of the integration components (heartbeat, shutdown, time sync, KVP), written only
// against KMCL_CLIENT_INTERFACE_V1. Each one opens a client channel on the service's class GUID
// (VmbClientChannelInitSetTargetPnp), hands every packet from the host to the pure guest state
// machine of its service (service.ts), sends the answer back as a new inband packet with no
// completion requested (what Linux hv_utils does with `vmbus_sendpacket(..., VM_PKT_DATA_INBAND, 0)`),
// completes the host's packet, and tells the guest application what happened through events
// (shutdown requested, time set, KVP pool changed, ...).
//
// Channel shape: the host offers ICs as message-mode pipes (see vsp.ts), so by default the client
// channel is in pipe mode too (VMBUS_CHANNEL_INIT_FLAG_IS_PIPE; our KMCL opens an offer only in the
// mode it was offered in) and the state machines run without the pipe header, which the KMCL
// strips and adds; `pipe: false` pairs with a packet-mode host and leaves the header in the
// message, as hv_utils sees it. Either way the bytes on the wire are the same.
//
// A message the state machine refuses (too short, bad counts: a WireError) is dropped without an
// answer, as Linux drops it; it is counted and reported as a 'protocol-error' event.

import {
  type KMCL_CLIENT_INTERFACE_V1,
  type KmclProvider,
  NT_SUCCESS,
  ntStatusName,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_INIT_FLAG_IS_PIPE,
} from '../../kmcl/index.js';
import { WireError } from '../../wire/errors.js';
import type { Guid } from '../../wire/guid.js';
import {
  ChannelCounters,
  checkStart,
  Deferred,
  DeviceDriverError,
  EventHub,
  queryClientTable,
} from '../driver-common.js';
import {
  HEARTBEAT_SERVICE,
  HV_S_OK,
  IC_MAX_MESSAGE_SIZE,
  type IcServiceInfo,
  KVP_SERVICE,
  SHUTDOWN_SERVICE,
  TIMESYNC_SERVICE,
} from './constants.js';
import { HeartbeatGuest, type HeartbeatGuestEvent } from './heartbeat.js';
import {
  KVP_OP_DELETE,
  KVP_OP_SET,
  KvpGuest,
  type KvpGuestEvent,
  KvpPools,
  type KvpPoolsOptions,
} from './kvp.js';
import type {
  IcGuestService,
  IcNegotiationEvent,
  IcServiceOptions,
  IcUnknownMessageEvent,
} from './service.js';
import { ShutdownGuest, type ShutdownGuestEvent } from './shutdown.js';
import { icTimeToUnixMs, TimeSyncGuest, type TimeSyncGuestEvent } from './timesync.js';
import type { IcVersions } from './vsp.js';

export interface IcVscOptions {
  /** Only this offer instance (default: any instance of the service's class). */
  instance?: Guid | null;
  /** Pipe-mode channel (default true, matching the default host); see the module comment. */
  pipe?: boolean;
  /** Framework versions accepted, most preferred first (default GUEST_FW_VERSIONS). */
  frameworkVersions?: readonly number[];
  /** Service versions accepted (default: Linux's list for the service). */
  messageVersions?: readonly number[];
  friendlyName?: string;
}

/** 'waiting' while no matching offer is open. */
export type IcVscState = 'idle' | 'waiting' | 'open' | 'stopped';

export type IcVscEvent<E> =
  | E
  | IcNegotiationEvent
  | IcUnknownMessageEvent
  | { kind: 'opened' }
  | { kind: 'closed' }
  | { kind: 'open-failed'; status: number }
  | { kind: 'protocol-error'; error: Error };

/**
 * One IC guest VSC: the channel and the answer loop. `E` are the service's events, `X` the
 * driver's own (time set, KVP pool changed); all arrive through `events`.
 */
export abstract class IcVsc<E extends { kind: string }, X extends { kind: string } = never> {
  readonly info: IcServiceInfo;
  readonly pipe: boolean;
  readonly counters: ChannelCounters;
  readonly events = new EventHub<IcVscEvent<E> | X>();
  protected readonly C: KMCL_CLIENT_INTERFACE_V1;
  protected readonly options: IcVscOptions;
  protected service: IcGuestService<E> | null = null;
  private channel: VMBCHANNEL | null = null;
  private current: IcVscState = 'idle';
  private versions: Deferred<IcVersions> = new Deferred();

  protected constructor(provider: KmclProvider, info: IcServiceInfo, options: IcVscOptions) {
    this.C = queryClientTable(provider);
    this.info = info;
    this.options = options;
    this.pipe = options.pipe ?? true;
    this.counters = new ChannelCounters(info.name);
  }

  /** A fresh guest state machine for a new open of the channel. */
  protected abstract createService(options: IcServiceOptions): IcGuestService<E>;

  /**
   * Called with each service event after the answer went out, before the event is emitted; may
   * return a driver event to emit right after it.
   */
  protected onServiceEvent(_event: E): X | null {
    return null;
  }

  get state(): IcVscState {
    return this.current;
  }

  /** The client channel (null before start and after stop). */
  get vmbChannel(): VMBCHANNEL | null {
    return this.channel;
  }

  /** Allocates, configures and enables the client channel; it opens when a matching offer exists. */
  start(): void {
    if (this.current !== 'idle') throw new Error(`${this.info.name} VSC: start() in state ${this.current}`);
    const C = this.C;
    const r = C.VmbChannelAllocate(null, false);
    checkStart(r.status, 'VmbChannelAllocate');
    const ch = r.Channel!;
    try {
      checkStart(
        C.VmbClientChannelInitSetTargetPnp(
          ch,
          this.info.classId,
          this.options.instance ?? null,
          (_c, status) => this.events.emit({ kind: 'open-failed', status }),
        ),
        'VmbClientChannelInitSetTargetPnp',
      );
      if (this.pipe)
        checkStart(C.VmbChannelInitSetFlags(ch, VMBUS_CHANNEL_INIT_FLAG_IS_PIPE), 'VmbChannelInitSetFlags');
      checkStart(
        C.VmbChannelInitSetFriendlyName(ch, this.options.friendlyName ?? `${this.info.name} IC`),
        'VmbChannelInitSetFriendlyName',
      );
      checkStart(
        C.VmbChannelInitSetMaximumPacketSize(ch, IC_MAX_MESSAGE_SIZE),
        'VmbChannelInitSetMaximumPacketSize',
      );
      checkStart(
        C.VmbChannelInitSetProcessPacketCallbacks(ch, this.onPacket, null),
        'VmbChannelInitSetProcessPacketCallbacks',
      );
      const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
      cb.EvtChannelOpened = () => this.onOpened();
      cb.EvtChannelClosed = () => this.onClosed();
      checkStart(C.VmbChannelInitSetStateChangeCallbacks(ch, cb), 'VmbChannelInitSetStateChangeCallbacks');
      checkStart(C.VmbChannelEnable(ch), 'VmbChannelEnable');
    } catch (e) {
      C.VmbChannelCleanup(ch);
      throw e;
    }
    this.channel = ch;
    this.current = 'waiting';
  }

  /** Closes the channel and frees it. */
  async stop(): Promise<void> {
    if (this.current === 'stopped') return;
    const ch = this.channel;
    this.current = 'stopped';
    this.versions.reject(new DeviceDriverError('closed', `${this.info.name} VSC stopped`));
    if (ch !== null) {
      this.channel = null;
      await this.C.VmbChannelDisable(ch);
      this.C.VmbChannelCleanup(ch);
    }
  }

  /** Resolves with the versions of the next (or current) successful negotiation. */
  negotiated(): Promise<IcVersions> {
    if (this.current === 'stopped') {
      return Promise.reject(new DeviceDriverError('not-ready', `${this.info.name} VSC is stopped`));
    }
    return this.versions.promise;
  }

  private onOpened(): number {
    this.service = this.createService({
      pipeHeader: !this.pipe,
      frameworkVersions: this.options.frameworkVersions,
      messageVersions: this.options.messageVersions,
    });
    if (this.versions.settled) this.versions = new Deferred();
    if (this.current !== 'stopped') this.current = 'open';
    this.events.emit({ kind: 'opened' });
    return STATUS_SUCCESS;
  }

  private onClosed(): void {
    this.service = null;
    if (this.current !== 'stopped') this.current = 'waiting';
    if (this.versions.settled) this.versions = new Deferred();
    this.events.emit({ kind: 'closed' });
  }

  private readonly onPacket = (
    _ch: VMBCHANNEL,
    pkt: VMBPACKETCOMPLETION,
    buffer: Uint8Array,
    length: number,
  ): void => {
    this.counters.noteIn(length);
    const svc = this.service;
    if (svc === null) {
      this.C.VmbChannelPacketComplete(pkt, null, 0);
      return;
    }
    let result: ReturnType<IcGuestService<E>['handle']>;
    try {
      result = svc.handle(buffer.subarray(0, length));
    } catch (e) {
      this.C.VmbChannelPacketComplete(pkt, null, 0);
      if (!(e instanceof WireError)) throw e;
      this.counters.errors++;
      this.events.emit({ kind: 'protocol-error', error: e });
      return;
    }
    this.C.VmbChannelPacketComplete(pkt, null, 0);
    if (result.response !== null) this.send(result.response);
    const event = result.event;
    let extra: X | null = null;
    if (event.kind === 'negotiated') {
      const n = event as IcNegotiationEvent;
      this.versions.resolve({ framework: n.framework, message: n.message });
    } else if (event.kind !== 'negotiation-failed' && event.kind !== 'unknown-message') {
      extra = this.onServiceEvent(event as E);
    }
    this.events.emit(event);
    if (extra !== null) this.events.emit(extra);
  };

  /** Sends the answer as an inband packet with no completion requested. */
  private send(msg: Uint8Array): void {
    const ch = this.channel;
    if (ch === null) return;
    const p = this.C.VmbPacketAllocate(ch);
    if (p === null) {
      this.counters.errors++;
      this.events.emit({
        kind: 'protocol-error',
        error: new DeviceDriverError('send-failed', `${this.info.name}: VmbPacketAllocate returned NULL`),
      });
      return;
    }
    const status = this.C.VmbPacketSend(p, msg, msg.length, null, 0);
    if (!NT_SUCCESS(status)) {
      this.C.VmbPacketFree(p);
      this.counters.errors++;
      this.events.emit({
        kind: 'protocol-error',
        error: new DeviceDriverError(
          'send-failed',
          `${this.info.name}: VmbPacketSend: ${ntStatusName(status)}`,
          status,
        ),
      });
      return;
    }
    this.counters.noteOut(msg.length);
  }
}

// ---------------------------------------------------------------------------------------------
// Heartbeat

/** Heartbeat VSC: answers each heartbeat with seq_num + 1. */
export class HeartbeatVsc extends IcVsc<HeartbeatGuestEvent> {
  /** Heartbeats answered. */
  beats = 0;
  /** The last sequence number the host sent (null before the first). */
  lastSequence: bigint | null = null;

  constructor(provider: KmclProvider, options: IcVscOptions = {}) {
    super(provider, HEARTBEAT_SERVICE, options);
  }

  protected createService(options: IcServiceOptions): HeartbeatGuest {
    return new HeartbeatGuest(options);
  }

  protected override onServiceEvent(event: HeartbeatGuestEvent): null {
    this.beats++;
    this.lastSequence = event.sequence;
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Shutdown

export interface ShutdownVscOptions extends IcVscOptions {
  /** Whether this guest can hibernate (default false: hibernate requests are refused). */
  hibernationSupported?: boolean;
}

/**
 * Shutdown VSC: accepts shutdown and restart (and hibernate if supported) and reports them as
 * 'shutdown' events; the guest application carries the action out.
 */
export class ShutdownVsc extends IcVsc<ShutdownGuestEvent> {
  /** The last request the host made (accepted or not). */
  lastRequest: ShutdownGuestEvent | null = null;
  private readonly hibernationSupported: boolean;

  constructor(provider: KmclProvider, options: ShutdownVscOptions = {}) {
    super(provider, SHUTDOWN_SERVICE, options);
    this.hibernationSupported = options.hibernationSupported ?? false;
  }

  protected createService(options: IcServiceOptions): ShutdownGuest {
    return new ShutdownGuest({ ...options, hibernationSupported: this.hibernationSupported });
  }

  protected override onServiceEvent(event: ShutdownGuestEvent): null {
    this.lastRequest = event;
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Time sync

export interface TimeSyncVscOptions extends IcVscOptions {
  /** The guest's own clock in Unix milliseconds (default Date.now). */
  clock?: () => number;
}

/** Emitted when a SYNC message sets the guest clock. */
export interface TimeSetEvent {
  kind: 'time-set';
  /** The host time carried, in Unix milliseconds. */
  hostUnixMs: number;
  /** host time - guest clock at arrival: what the guest adds to its clock. */
  offsetMs: number;
}

/**
 * Time-sync VSC: keeps the host-minus-guest clock offset. A SYNC message sets it (and emits
 * 'time-set'); SAMPLE messages update `lastSampleOffsetMs` only (a guest would slew towards it).
 */
export class TimeSyncVsc extends IcVsc<TimeSyncGuestEvent, TimeSetEvent> {
  /** Offset set by the last SYNC (null before one). */
  clockOffsetMs: number | null = null;
  lastSampleOffsetMs: number | null = null;
  samples = 0;
  syncs = 0;
  private readonly clock: () => number;

  constructor(provider: KmclProvider, options: TimeSyncVscOptions = {}) {
    super(provider, TIMESYNC_SERVICE, options);
    this.clock = options.clock ?? Date.now;
  }

  protected createService(options: IcServiceOptions): TimeSyncGuest {
    return new TimeSyncGuest(options);
  }

  /** The guest clock corrected by the last SYNC. */
  now(): number {
    return this.clock() + (this.clockOffsetMs ?? 0);
  }

  protected override onServiceEvent(event: TimeSyncGuestEvent): TimeSetEvent | null {
    const hostUnixMs = icTimeToUnixMs(event.sample.parentTime);
    const offsetMs = hostUnixMs - this.clock();
    if (event.sync) {
      this.syncs++;
      this.clockOffsetMs = offsetMs;
      return { kind: 'time-set', hostUnixMs, offsetMs };
    }
    this.samples++;
    this.lastSampleOffsetMs = offsetMs;
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// KVP

export interface KvpVscOptions extends IcVscOptions, KvpPoolsOptions {
  /** The pools to serve (kept across re-opens); default new, empty ones. */
  pools?: KvpPools;
}

/** Emitted when a host SET or DELETE changed a pool. */
export interface KvpPoolChangedEvent {
  kind: 'kvp-pool-changed';
  pool: number;
  key: string;
  /** The new value, or null when the key was deleted. */
  value: string | null;
}

/** KVP VSC: serves the host's operations from the guest's pools. */
export class KvpVsc extends IcVsc<KvpGuestEvent, KvpPoolChangedEvent> {
  readonly pools: KvpPools;

  constructor(provider: KmclProvider, options: KvpVscOptions = {}) {
    super(provider, KVP_SERVICE, options);
    this.pools = options.pools ?? new KvpPools(options);
  }

  protected createService(options: IcServiceOptions): KvpGuest {
    return new KvpGuest({ ...options, pools: this.pools });
  }

  protected override onServiceEvent(event: KvpGuestEvent): KvpPoolChangedEvent | null {
    if (event.status !== HV_S_OK || event.key === null) return null;
    if (event.operation === KVP_OP_SET) {
      return { kind: 'kvp-pool-changed', pool: event.pool, key: event.key, value: event.value };
    }
    if (event.operation === KVP_OP_DELETE) {
      return { kind: 'kvp-pool-changed', pool: event.pool, key: event.key, value: null };
    }
    return null;
  }
}
