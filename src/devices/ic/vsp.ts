// Host VSPs of the integration components (heartbeat, shutdown, time sync, KVP), written only
// against KMCL_SERVER_INTERFACE_V1, as a Windows VSP is. Each one offers a server channel with the
// service's class GUID and an instance GUID, negotiates on EvtChannelPostStarted with the pure host
// state machine of its service (service.ts), and then runs the host application's requests one at
// a time (the IC protocol allows one outstanding transaction) as promises.
//
// Channel shape. Hyper-V and OpenVMM offer ICs as message-mode pipes; Linux hv_utils opens them as
// ordinary channels and finds the 8-byte `vmbuspipe_hdr {u32 flags = 1 (DATA); u32 msgsize}` at the
// start of every inband payload, followed by the icmsg_hdr (its ICMSG_HDR offset). By default we
// do the same: the server channel is offered with VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE, the
// KMCL's pipe mode writes that pipe header (type DATA, exact length) in front of each message, and
// the state machines run with `pipeHeader: false`. On the wire every IC packet is therefore a
// VM_PKT_DATA_INBAND packet without the completion-requested flag whose payload is pipe header +
// icmsg_hdr + body, byte for byte what hv_utils reads. With `pipe: false` the channel is a plain
// packet-mode channel and the state machines write the pipe header themselves: the same bytes.
//
// Robustness. A response the state machine refuses (a WireError) is counted and reported as a
// 'protocol-error' event; if a transaction was waiting for it, that transaction fails with a
// DeviceDriverError('protocol') and the VSP is 'failed' until the guest reopens the channel (the
// transaction can never complete, as OpenVMM's IC also stops there). Unanswered negotiations and
// requests time out (`requestTimeoutMs`) the same way. Nothing the guest sends throws out of the
// driver.
//
// Servicing. `save()` pauses the channel, takes the KMCL's saved state and the VSP's own state
// (negotiated versions, the outstanding transaction if any, counters, the heartbeat sequence) as
// plain data, and hands the channel off. A new instance of the same VSP class, configured as the
// old one was, continues from it: `restore(saved)` instead of `start()` reclaims the channel, and
// `resume()` (after BusKmclHost.finishRestore on the real bus) enables and starts it. A
// transaction outstanding at the save is completed by the guest's answer in the new instance,
// which hands it to `carriedTransaction` (the old instance's promise rejects 'closed'). The IC
// sends need no EvtVmbChannelSavePacket: the KMCL carries queued sends itself.

import {
  type KMCL_SERVER_INTERFACE_V1,
  type KmclProvider,
  NT_SUCCESS,
  ntStatusName,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
  type VMBPACKETCOMPLETION,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE,
  type VmbusUserHandle,
} from '../../kmcl/index.js';
import { WireError } from '../../wire/errors.js';
import { Guid } from '../../wire/guid.js';
import {
  ChannelCounters,
  type ChannelCountersSnapshot,
  checkStart,
  Deferred,
  DeviceDriverError,
  EventHub,
  enableAndStartServerChannel,
  queryServerTable,
} from '../driver-common.js';
import {
  CHANNEL_COUNTER_KEYS,
  checkSaved,
  restoreServerChannel,
  sameInstance,
  savedCounts,
  saveServerChannel,
  type VspSaveOptions,
} from '../servicing.js';
import {
  HEARTBEAT_SERVICE,
  IC_MAX_MESSAGE_SIZE,
  type IcServiceInfo,
  KVP_SERVICE,
  SHUTDOWN_SERVICE,
  TIMESYNC_SERVICE,
} from './constants.js';
import { HeartbeatHost, type HeartbeatHostEvent } from './heartbeat.js';
import { KVP_POOL_COUNT, KvpHost, type KvpHostEvent, type KvpValue } from './kvp.js';
import type { IcHostService, IcHostServiceState, IcNegotiationEvent, IcServiceOptions } from './service.js';
import { ShutdownHost, type ShutdownHostEvent, type ShutdownRequest } from './shutdown.js';
import { TimeSyncHost, type TimeSyncHostEvent, unixMsToIcTime } from './timesync.js';

/**
 * Default offer instance GUIDs. Shutdown and KVP are the fixed ones OpenVMM offers; heartbeat and
 * time sync are this project's own constant values (no public source gives Hyper-V's).
 */
export const IC_INSTANCE_IDS = Object.freeze({
  heartbeat: Guid.parse('6b1f7e3a-2c4d-4f0e-9a51-494300000001'),
  shutdown: Guid.parse('b6650ff7-33bc-4840-8048-e0676786f393'),
  timesync: Guid.parse('6b1f7e3a-2c4d-4f0e-9a51-494300000004'),
  kvp: Guid.parse('242ff919-07db-4180-9c2e-b86cb68c8c55'),
});

/** Default time a negotiation or request may wait for the guest's answer. */
export const IC_DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

export interface IcVspOptions {
  /** Offer instance GUID (default: IC_INSTANCE_IDS of the service). */
  instance?: Guid;
  /** Offer as a message-mode pipe (default true, as Hyper-V does); see the module comment. */
  pipe?: boolean;
  /** Framework versions offered (default HOST_FW_VERSIONS). */
  frameworkVersions?: readonly number[];
  /** Service versions offered (default the service's host list). */
  messageVersions?: readonly number[];
  friendlyName?: string;
  /** The partition to offer into (its user-mode VMBus handle); default the host's first. */
  vmbusHandle?: VmbusUserHandle;
  /** VmbServerChannelInitSetTargetVtl (default 0). */
  targetVtl?: number;
  /** How long a negotiation or a request waits for the guest; 0 waits forever. Default 30 s. */
  requestTimeoutMs?: number;
}

/**
 * 'idle' before start() / restore(); 'offered' while no guest has the channel open; 'saved' once
 * save() handed the channel to a new instance.
 */
export type IcVspState = 'idle' | 'offered' | 'negotiating' | 'ready' | 'failed' | 'stopped' | 'saved';

/** An IC VSP saved by `save()`: plain data (it may be posted to another thread). */
export interface IcVspSavedState {
  readonly kind: 'ic-vsp';
  readonly version: 1;
  /** The service (heartbeat, shutdown, timesync, kvp) and the offer instance GUID. */
  readonly service: string;
  readonly instance: string;
  readonly state: 'offered' | 'negotiating' | 'ready' | 'failed';
  /** The host state machine of the open channel (null while no guest has it open). */
  readonly protocol: IcHostServiceState | null;
  readonly counters: ChannelCountersSnapshot;
  /** The VSP class's own state (heartbeat: the sequence; time sync: messages sent, echoes). */
  readonly driver: Record<string, number | string>;
  /** The KMCL's saved state of the channel, in VmbChannelSaveContinue chunks. */
  readonly channel: Uint8Array[];
}

const SAVED_IC_STATES: readonly IcVspSavedState['state'][] = ['offered', 'negotiating', 'ready', 'failed'];

export interface IcVersions {
  framework: number;
  message: number;
}

export type IcVspEvent<E> =
  | E
  | IcNegotiationEvent
  | { kind: 'opened' }
  | { kind: 'closed' }
  | { kind: 'protocol-error'; error: Error };

/** A non-negative integer count in saved state. */
function isCount(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/** One IC host VSP: the channel, negotiation, and one transaction at a time. */
export abstract class IcVsp<E extends { kind: string }, S extends IcHostService<E>> {
  readonly info: IcServiceInfo;
  readonly instance: Guid;
  readonly pipe: boolean;
  readonly requestTimeoutMs: number;
  readonly counters: ChannelCounters;
  readonly events = new EventHub<IcVspEvent<E>>();
  protected readonly S: KMCL_SERVER_INTERFACE_V1;
  protected readonly options: IcVspOptions;
  protected service: S | null = null;
  private channel: VMBCHANNEL | null = null;
  private current: IcVspState = 'idle';
  private versions: Deferred<IcVersions> = new Deferred();
  private pending: Deferred<E> | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  /** Servicing: a save in progress; a restored channel waiting for resume(). */
  private saving = false;
  private awaitingResume = false;
  /** Servicing: the transaction the previous instance left outstanding, while it is. */
  private carried: Deferred<E> | null = null;
  private carriedPromise: Promise<E> | null = null;

  protected constructor(provider: KmclProvider, info: IcServiceInfo, instance: Guid, options: IcVspOptions) {
    this.S = queryServerTable(provider);
    this.info = info;
    this.options = options;
    this.instance = options.instance ?? instance;
    this.pipe = options.pipe ?? true;
    this.requestTimeoutMs = options.requestTimeoutMs ?? IC_DEFAULT_REQUEST_TIMEOUT_MS;
    this.counters = new ChannelCounters(info.name);
  }

  /** A fresh host state machine for a new open of the channel. */
  protected abstract createService(options: IcServiceOptions): S;

  get state(): IcVspState {
    return this.current;
  }

  /** The negotiated versions, or null. */
  get negotiated(): IcVersions | null {
    const s = this.service;
    return this.current === 'ready' && s !== null ? { framework: s.framework, message: s.message } : null;
  }

  /** The server channel (null before start and after stop). */
  get vmbChannel(): VMBCHANNEL | null {
    return this.channel;
  }

  /** Allocates, configures and enables the server channel, and starts it (the offer goes out). */
  start(): void {
    if (this.current !== 'idle') throw new Error(`${this.info.name} VSP: start() in state ${this.current}`);
    const S = this.S;
    const ch = this.allocateChannel();
    enableAndStartServerChannel(S, ch);
    this.channel = ch;
    this.current = 'offered';
  }

  /** A server channel with every Init setter done (the same for start() and restore()). */
  private allocateChannel(): VMBCHANNEL {
    const S = this.S;
    const r = S.VmbChannelAllocate(null, true);
    checkStart(r.status, 'VmbChannelAllocate');
    const ch = r.Channel!;
    try {
      checkStart(
        S.VmbServerChannelInitSetTargetInterfaceId(ch, this.info.classId, this.instance),
        'VmbServerChannelInitSetTargetInterfaceId',
      );
      if (this.pipe) {
        checkStart(
          S.VmbServerChannelInitSetFlags(ch, VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE),
          'VmbServerChannelInitSetFlags',
        );
      }
      if (this.options.vmbusHandle !== undefined) {
        const k = S.VmbConvertVmbusHandleToKernelHandle(this.options.vmbusHandle);
        checkStart(k.status, 'VmbConvertVmbusHandleToKernelHandle');
        checkStart(
          S.VmbServerChannelInitSetVmbusHandle(ch, k.KernelHandle!),
          'VmbServerChannelInitSetVmbusHandle',
        );
      }
      if (this.options.targetVtl !== undefined) {
        checkStart(
          S.VmbServerChannelInitSetTargetVtl(ch, this.options.targetVtl),
          'VmbServerChannelInitSetTargetVtl',
        );
      }
      checkStart(
        S.VmbChannelInitSetFriendlyName(ch, this.options.friendlyName ?? `${this.info.name} IC`),
        'VmbChannelInitSetFriendlyName',
      );
      checkStart(
        S.VmbChannelInitSetMaximumPacketSize(ch, IC_MAX_MESSAGE_SIZE),
        'VmbChannelInitSetMaximumPacketSize',
      );
      checkStart(
        S.VmbChannelInitSetProcessPacketCallbacks(ch, this.onPacket, null),
        'VmbChannelInitSetProcessPacketCallbacks',
      );
      const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
      cb.EvtChannelOpened = () => this.onOpened();
      cb.EvtChannelPostStarted = () => this.onPostStarted();
      cb.EvtChannelClosed = () => this.onClosed();
      checkStart(S.VmbChannelInitSetStateChangeCallbacks(ch, cb), 'VmbChannelInitSetStateChangeCallbacks');
    } catch (e) {
      S.VmbChannelCleanup(ch);
      throw e;
    }
    return ch;
  }

  // --- servicing ---

  /**
   * Saves the VSP for a new host instance and hands its channel off (the offer stays; the guest
   * sees nothing): pauses the channel, waiting until the packets delivered to the VSP are done,
   * and returns the KMCL's saved channel with the VSP's state. The VSP is 'saved' afterwards: its
   * timers stop, an outstanding transaction's promise rejects 'closed' (the restored instance
   * gets the answer), and every later request fails. If the KMCL refuses the save, the VSP carries
   * on and this rejects with DeviceDriverError('save-failed').
   */
  async save(options: VspSaveOptions = {}): Promise<IcVspSavedState> {
    const ch = this.channel;
    const state = this.current;
    if (ch === null || this.saving || this.awaitingResume || !SAVED_IC_STATES.includes(state as never)) {
      throw new DeviceDriverError('not-ready', `${this.info.name} VSP: save() in state ${state}`);
    }
    this.saving = true;
    let saved: { chunks: Uint8Array[]; state: Omit<IcVspSavedState, 'channel'> };
    try {
      saved = await saveServerChannel(this.S, ch, `${this.info.name} VSP`, () => this.capture(), options);
    } finally {
      this.saving = false;
    }
    this.channel = null;
    this.current = 'saved';
    this.onStop();
    const err = new DeviceDriverError(
      'closed',
      `${this.info.name} VSP was saved; a restored instance carries on`,
    );
    this.failOutstanding(err);
    this.versions.reject(err);
    return { ...saved.state, channel: saved.chunks };
  }

  /** The VSP's state while its channel is paused (taken inside save()). */
  private capture(): Omit<IcVspSavedState, 'channel'> {
    return {
      kind: 'ic-vsp',
      version: 1,
      service: this.info.name,
      instance: this.instance.toString(),
      state: this.current as IcVspSavedState['state'],
      protocol: this.service?.saveState() ?? null,
      counters: this.counters.snapshot(),
      driver: this.saveDriver(),
    };
  }

  /**
   * Instead of start(), in a new host instance: takes over from `saved` (this VSP must be
   * configured as the saved one was). The channel is allocated and configured as start() does
   * and restored from the saved chunks: it is back in its saved connection state, paused. Call
   * resume() once every channel of the partition is restored (after BusKmclHost.finishRestore on
   * the real bus). A saved state that does not fit, or that the KMCL refuses, throws
   * DeviceDriverError('restore-failed') and changes nothing.
   */
  restore(saved: IcVspSavedState): this {
    const name = `${this.info.name} VSP`;
    if (this.current !== 'idle') throw new Error(`${name}: restore() in state ${this.current}`);
    checkSaved(saved?.kind === 'ic-vsp' && saved.version === 1, name, 'is not an IC VSP state of version 1');
    checkSaved(saved.service === this.info.name, name, `belongs to the ${saved.service} service`);
    checkSaved(
      sameInstance(saved.instance, this.instance.toString()),
      name,
      `belongs to the offer instance ${String(saved.instance)}`,
    );
    checkSaved(savedCounts(saved.counters, CHANNEL_COUNTER_KEYS), name, 'has bad counters');
    checkSaved(
      SAVED_IC_STATES.includes(saved.state) && (saved.protocol === null) === (saved.state === 'offered'),
      name,
      `has a bad state (${String(saved.state)})`,
    );
    checkSaved(Array.isArray(saved.channel), name, 'has no channel chunks');
    let service: S | null = null;
    let applyDriver: () => void;
    try {
      if (saved.protocol !== null) {
        service = this.createService(this.serviceOptions());
        service.restoreState(saved.protocol);
      }
      applyDriver = this.parseDriver(saved.driver ?? {});
    } catch (e) {
      throw new DeviceDriverError('restore-failed', `${name}: ${(e as Error).message}`, null, { cause: e });
    }
    const ch = this.allocateChannel();
    restoreServerChannel(this.S, ch, name, saved.channel);
    applyDriver();
    this.counters.restore(saved.counters);
    this.channel = ch;
    this.service = service;
    this.current = saved.state;
    this.awaitingResume = true;
    if (service?.busy && saved.state === 'ready') {
      // The guest's answer to the previous instance's request comes here; later requests wait.
      const d = new Deferred<E>();
      this.pending = d;
      this.carried = d;
      this.carriedPromise = d.promise;
      this.chain = d.promise.catch(() => {});
    }
    return this;
  }

  /**
   * After restore(): enables the restored channel (this only confirms the offer) and starts it;
   * the VSP is ready again if it was, and a carried transaction's timeout runs from now.
   */
  resume(): void {
    const ch = this.channel;
    if (!this.awaitingResume || ch === null) {
      throw new Error(`${this.info.name} VSP: resume() without restore()`);
    }
    checkStart(this.S.VmbChannelEnable(ch), 'VmbChannelEnable');
    this.awaitingResume = false;
    this.S.VmbChannelStart(ch);
    const svc = this.service;
    if (this.current === 'ready' && svc !== null) {
      this.versions.resolve({ framework: svc.framework, message: svc.message });
    } else if (this.current === 'failed') {
      this.versions.reject(
        new DeviceDriverError('protocol', `${this.info.name}: the conversation had failed before the save`),
      );
    }
    if (svc?.busy) this.arm();
  }

  /**
   * The transaction the previous instance left outstanding at its save, settled by the guest's
   * answer here (null if there was none).
   */
  get carriedTransaction(): Promise<E> | null {
    return this.carriedPromise;
  }

  /** The VSP class's own state for save() (plain data). */
  protected saveDriver(): Record<string, number | string> {
    return {};
  }

  /** Checks saveDriver()'s data and returns what applies it (a RangeError if it is bad). */
  protected parseDriver(_saved: Record<string, number | string>): () => void {
    return () => {};
  }

  /** A carried transaction was answered in this instance. */
  protected onCarried(_event: E): void {}

  private serviceOptions(): IcServiceOptions {
    const o = this.options;
    return {
      pipeHeader: !this.pipe,
      frameworkVersions: o.frameworkVersions,
      messageVersions: o.messageVersions,
    };
  }

  /** Revokes the offer (the guest closes first) and frees the channel. Pending work rejects 'closed'. */
  async stop(): Promise<void> {
    if (this.current === 'stopped' || this.current === 'saved') return;
    const ch = this.channel;
    this.current = 'stopped';
    this.onStop();
    const err = new DeviceDriverError('closed', `${this.info.name} VSP stopped`);
    this.failOutstanding(err);
    this.versions.reject(err);
    if (ch !== null) {
      this.channel = null;
      await this.S.VmbChannelDisable(ch);
      this.S.VmbChannelCleanup(ch);
    }
  }

  /** Hook for subclasses (periodic timers). */
  protected onStop(): void {}

  /**
   * Resolves with the negotiated versions once the guest has negotiated (waiting for the guest
   * to open the channel if needed); rejects if negotiation fails, times out, or the VSP stops.
   */
  ready(): Promise<IcVersions> {
    if (this.current === 'stopped') {
      return Promise.reject(new DeviceDriverError('not-ready', `${this.info.name} VSP is stopped`));
    }
    return this.versions.promise;
  }

  // --- channel callbacks ---

  private onOpened(): number {
    this.service = this.createService(this.serviceOptions());
    if (this.versions.settled) this.versions = new Deferred();
    this.current = 'negotiating';
    this.events.emit({ kind: 'opened' });
    return STATUS_SUCCESS;
  }

  private onPostStarted(): void {
    const svc = this.service;
    if (svc === null || svc.state !== 'idle') return; // resumed after a pause: already negotiated
    try {
      this.send(svc.start());
      this.arm();
    } catch (e) {
      this.fail(e as Error);
    }
  }

  private onClosed(): void {
    const err = new DeviceDriverError('closed', `${this.info.name} IC channel closed`);
    this.failOutstanding(err);
    this.service = null;
    if (this.current !== 'stopped' && this.current !== 'saved') {
      this.current = 'offered';
      if (this.versions.settled) this.versions = new Deferred();
    }
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
      this.S.VmbChannelPacketComplete(pkt, null, 0);
      return;
    }
    const wasBusy = svc.busy;
    let event: E | IcNegotiationEvent;
    try {
      event = svc.handle(buffer.subarray(0, length));
    } catch (e) {
      this.S.VmbChannelPacketComplete(pkt, null, 0);
      if (!(e instanceof WireError)) throw e;
      this.refused(e, svc);
      return;
    }
    this.S.VmbChannelPacketComplete(pkt, null, 0);
    if (event.kind === 'negotiated') {
      const n = event as IcNegotiationEvent;
      this.disarm();
      this.current = 'ready';
      this.versions.resolve({ framework: n.framework, message: n.message });
    } else if (event.kind === 'negotiation-failed') {
      this.disarm();
      this.fail(
        new DeviceDriverError(
          'negotiation-failed',
          `${this.info.name}: the guest accepts none of the offered versions`,
        ),
      );
    } else if (wasBusy && !svc.busy && this.pending !== null) {
      this.disarm();
      const p = this.pending;
      this.pending = null;
      if (p === this.carried) {
        this.carried = null;
        this.onCarried(event as E);
      }
      p.resolve(event as E);
    } else {
      this.onUntracked(event as E);
    }
    this.events.emit(event);
  };

  /** A message nothing was waiting for (time-sync echoes). */
  protected onUntracked(_event: E): void {}

  /** The state machine refused a message. */
  private refused(e: WireError, svc: S): void {
    this.counters.errors++;
    this.events.emit({ kind: 'protocol-error', error: e });
    // Still busy: the outstanding transaction (or the negotiation) can never complete now.
    if (svc.busy && this.service === svc) {
      this.fail(
        new DeviceDriverError(
          'protocol',
          `${this.info.name}: refused the guest's answer: ${e.message}`,
          null,
          {
            cause: e,
          },
        ),
      );
    }
  }

  /** The conversation cannot go on until the guest reopens the channel. */
  private fail(err: Error): void {
    if (this.current === 'stopped') return;
    this.current = 'failed';
    this.versions.reject(err);
    this.failOutstanding(err);
  }

  private failOutstanding(err: Error): void {
    this.disarm();
    const p = this.pending;
    this.pending = null;
    if (p === this.carried) this.carried = null;
    p?.reject(err);
  }

  private arm(): void {
    this.disarm();
    if (this.requestTimeoutMs <= 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.counters.errors++;
      this.fail(
        new DeviceDriverError(
          'timeout',
          `${this.info.name}: the guest did not answer within ${this.requestTimeoutMs} ms`,
        ),
      );
    }, this.requestTimeoutMs);
    this.timer.unref?.();
  }

  private disarm(): void {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  // --- requests ---

  private requireReady(): S {
    const s = this.service;
    if (this.current !== 'ready' || s === null) {
      throw new DeviceDriverError('not-ready', `${this.info.name} VSP is ${this.current}`);
    }
    return s;
  }

  /** Sends one message (a pipe datagram, or an inband packet without completion). */
  protected send(msg: Uint8Array): void {
    const ch = this.channel;
    if (ch === null) throw new DeviceDriverError('not-ready', `${this.info.name} VSP has no channel`);
    const p = this.S.VmbPacketAllocate(ch);
    if (p === null) {
      this.counters.errors++;
      throw new DeviceDriverError('send-failed', `${this.info.name}: VmbPacketAllocate returned NULL`);
    }
    const status = this.S.VmbPacketSend(p, msg, msg.length, null, 0);
    if (!NT_SUCCESS(status)) {
      this.S.VmbPacketFree(p);
      this.counters.errors++;
      throw new DeviceDriverError(
        'send-failed',
        `${this.info.name}: VmbPacketSend: ${ntStatusName(status)}`,
        status,
      );
    }
    this.counters.noteOut(msg.length);
  }

  /**
   * Runs one transaction after the ones before it: waits until negotiated, builds the request
   * with the state machine, sends it and resolves with the guest's answer.
   */
  protected transact(build: (svc: S) => Uint8Array): Promise<E> {
    const run = async (): Promise<E> => {
      await this.ready();
      const svc = this.requireReady();
      const msg = build(svc);
      const d = new Deferred<E>();
      this.pending = d;
      try {
        this.send(msg);
      } catch (e) {
        this.fail(e as Error);
        throw e;
      }
      this.arm();
      return d.promise;
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => {});
    return p;
  }

  /** Sends a message no answer is awaited for (after negotiation). */
  protected async sendUntracked(build: (svc: S) => Uint8Array): Promise<void> {
    await this.ready();
    this.send(build(this.requireReady()));
  }
}

// ---------------------------------------------------------------------------------------------
// Heartbeat

export interface HeartbeatRound {
  /** The sequence number sent, and the one the guest returned (sent + 1). */
  sent: bigint;
  acked: bigint;
  status: number;
  latencyMs: number;
}

/** Heartbeat VSP: one round per heartbeat(), or periodic rounds. */
export class HeartbeatVsp extends IcVsp<HeartbeatHostEvent, HeartbeatHost> {
  /** The next sequence number to send (each round continues from the guest's answer). */
  sequence = 0n;
  rounds = 0;
  /** Periodic rounds that failed. */
  missed = 0;
  private periodic: ReturnType<typeof setInterval> | null = null;
  private inRound = false;

  constructor(provider: KmclProvider, options: IcVspOptions = {}) {
    super(provider, HEARTBEAT_SERVICE, IC_INSTANCE_IDS.heartbeat, options);
  }

  protected createService(options: IcServiceOptions): HeartbeatHost {
    return new HeartbeatHost(options);
  }

  protected override saveDriver(): Record<string, number | string> {
    return { sequence: this.sequence.toString(), rounds: this.rounds, missed: this.missed };
  }

  protected override parseDriver(saved: Record<string, number | string>): () => void {
    const { sequence, rounds, missed } = saved;
    if (
      typeof sequence !== 'string' ||
      !/^\d{1,20}$/.test(sequence) ||
      !isCount(rounds) ||
      !isCount(missed)
    ) {
      throw new RangeError('bad saved heartbeat state');
    }
    return () => {
      this.sequence = BigInt(sequence);
      this.rounds = rounds;
      this.missed = missed;
    };
  }

  /** The round the previous instance left outstanding: the sequence continues from its answer. */
  protected override onCarried(event: HeartbeatHostEvent): void {
    this.sequence = event.sequence;
    this.rounds++;
  }

  /** One heartbeat round. */
  async heartbeat(): Promise<HeartbeatRound> {
    const t0 = performance.now();
    let sent = 0n;
    const ev = await this.transact((s) => {
      sent = this.sequence;
      return s.heartbeat(sent);
    });
    this.sequence = ev.sequence;
    this.rounds++;
    return { sent, acked: ev.sequence, status: ev.status, latencyMs: performance.now() - t0 };
  }

  /** A round every `intervalMs` (skipped while the previous one runs); results go to `onRound`. */
  startPeriodic(intervalMs: number, onRound?: (result: HeartbeatRound | Error) => void): void {
    if (!(intervalMs > 0)) throw new RangeError('intervalMs must be positive');
    this.stopPeriodic();
    this.periodic = setInterval(() => {
      if (this.inRound) return;
      this.inRound = true;
      this.heartbeat().then(
        (r) => {
          this.inRound = false;
          onRound?.(r);
        },
        (e: Error) => {
          this.inRound = false;
          this.missed++;
          onRound?.(e);
        },
      );
    }, intervalMs);
    this.periodic.unref?.();
  }

  stopPeriodic(): void {
    if (this.periodic !== null) clearInterval(this.periodic);
    this.periodic = null;
  }

  protected override onStop(): void {
    this.stopPeriodic();
  }
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/** Shutdown VSP: asks the guest to shut down, restart or hibernate. */
export class ShutdownVsp extends IcVsp<ShutdownHostEvent, ShutdownHost> {
  constructor(provider: KmclProvider, options: IcVspOptions = {}) {
    super(provider, SHUTDOWN_SERVICE, IC_INSTANCE_IDS.shutdown, options);
  }

  protected createService(options: IcServiceOptions): ShutdownHost {
    return new ShutdownHost(options);
  }

  /**
   * Sends the request and resolves with the guest's answer (accepted = HV_S_OK). Restart needs
   * shutdown IC version 3.1 and hibernate 3.2: asking for them otherwise rejects with an Error.
   */
  shutdown(request: ShutdownRequest = {}): Promise<ShutdownHostEvent> {
    return this.transact((s) => s.shutdown(request));
  }
}

// ---------------------------------------------------------------------------------------------
// Time sync

export interface TimeSyncVspOptions extends IcVspOptions {
  /** The host's wall clock in Unix milliseconds (default Date.now). */
  clock?: () => number;
  /** The guest reference time (100 ns units) v4 samples carry (default: time since start()). */
  referenceClock?: () => bigint;
}

/** Time-sync VSP: sends SYNC and SAMPLE messages (no answer is awaited; the guest echoes them). */
export class TimeSyncVsp extends IcVsp<TimeSyncHostEvent, TimeSyncHost> {
  /** Echoes received from the guest. */
  echoes = 0;
  /** Time messages sent. */
  sent = 0;
  private readonly clock: () => number;
  private readonly referenceClock: () => bigint;
  /** process.hrtime.bigint() when the default reference clock started (a restore continues it). */
  private referenceStart = process.hrtime.bigint();
  private periodic: ReturnType<typeof setInterval> | null = null;

  constructor(provider: KmclProvider, options: TimeSyncVspOptions = {}) {
    super(provider, TIMESYNC_SERVICE, IC_INSTANCE_IDS.timesync, options);
    this.clock = options.clock ?? Date.now;
    this.referenceClock =
      options.referenceClock ?? (() => (process.hrtime.bigint() - this.referenceStart) / 100n);
  }

  protected createService(options: IcServiceOptions): TimeSyncHost {
    return new TimeSyncHost(options);
  }

  protected override saveDriver(): Record<string, number | string> {
    return { sent: this.sent, echoes: this.echoes, referenceStart: this.referenceStart.toString() };
  }

  protected override parseDriver(saved: Record<string, number | string>): () => void {
    const { sent, echoes, referenceStart } = saved;
    if (
      !isCount(sent) ||
      !isCount(echoes) ||
      typeof referenceStart !== 'string' ||
      !/^\d{1,30}$/.test(referenceStart)
    ) {
      throw new RangeError('bad saved time sync state');
    }
    return () => {
      this.sent = sent;
      this.echoes = echoes;
      this.referenceStart = BigInt(referenceStart);
    };
  }

  /** Sends the host time (`unixMs`, default the clock) as a SYNC (set now) or a SAMPLE. */
  sendTime(sync: boolean, unixMs = this.clock()): Promise<void> {
    return this.sendUntracked((s) => {
      const msg = s.time({ parentTime: unixMsToIcTime(unixMs), referenceTime: this.referenceClock(), sync });
      this.sent++;
      return msg;
    });
  }

  /** ICTIMESYNCFLAG_SYNC: the guest sets its clock. */
  syncNow(unixMs?: number): Promise<void> {
    return this.sendTime(true, unixMs);
  }

  /** ICTIMESYNCFLAG_SAMPLE. */
  sample(unixMs?: number): Promise<void> {
    return this.sendTime(false, unixMs);
  }

  /** A SYNC now, then a SAMPLE every `intervalMs`; failures go to `onError`. */
  startPeriodic(intervalMs: number, onError?: (e: Error) => void): void {
    if (!(intervalMs > 0)) throw new RangeError('intervalMs must be positive');
    this.stopPeriodic();
    const report = (e: Error): void => {
      onError?.(e);
    };
    this.syncNow().catch(report);
    this.periodic = setInterval(() => {
      this.sample().catch(report);
    }, intervalMs);
    this.periodic.unref?.();
  }

  stopPeriodic(): void {
    if (this.periodic !== null) clearInterval(this.periodic);
    this.periodic = null;
  }

  protected override onStop(): void {
    this.stopPeriodic();
  }

  protected override onUntracked(event: TimeSyncHostEvent): void {
    if (event.kind === 'time-echo') this.echoes++;
  }
}

// ---------------------------------------------------------------------------------------------
// KVP

/** KVP VSP: get / set / delete / enumerate in the guest's pools, one operation at a time. */
export class KvpVsp extends IcVsp<KvpHostEvent, KvpHost> {
  constructor(provider: KmclProvider, options: IcVspOptions = {}) {
    super(provider, KVP_SERVICE, IC_INSTANCE_IDS.kvp, options);
  }

  protected createService(options: IcServiceOptions): KvpHost {
    return new KvpHost(options);
  }

  /** Adds or replaces a record; status HV_S_OK, or HV_S_CONT when the pool is full. */
  set(pool: number, key: string, value: KvpValue): Promise<KvpHostEvent> {
    return this.transact((s) => s.set(pool, key, value));
  }

  /** Reads a record: status HV_S_OK with `value`, or HV_S_CONT when there is no such key. */
  get(pool: number, key: string): Promise<KvpHostEvent> {
    return this.transact((s) => s.get(pool, key));
  }

  /** Removes a record: HV_S_OK, or HV_S_CONT when there was none. */
  delete(pool: number, key: string): Promise<KvpHostEvent> {
    return this.transact((s) => s.delete(pool, key));
  }

  /** The index-th record of a pool (HV_S_CONT past the end). */
  enumerate(pool: number, index: number): Promise<KvpHostEvent> {
    return this.transact((s) => s.enumerate(pool, index));
  }

  /** Every record of a pool, enumerating until the guest says there are no more (at most `limit`). */
  async entries(pool: number, limit = 4096): Promise<{ key: string; value: string }[]> {
    if (!Number.isInteger(pool) || pool < 0 || pool >= KVP_POOL_COUNT)
      throw new RangeError(`bad KVP pool ${pool}`);
    const out: { key: string; value: string }[] = [];
    for (let i = 0; i < limit; i++) {
      const r = await this.enumerate(pool, i);
      if (r.status !== 0 || r.key === null) break;
      out.push({ key: r.key, value: r.value ?? '' });
    }
    return out;
  }
}
