// Host synthetic-storage VSP driver, written only against KMCL_SERVER_INTERFACE_V1: offers a SCSI
// controller channel (HV_SCSI_GUID), runs every packet from the guest through the pure protocol
// machine (StorageVsp) and its SCSI target, and completes the packet with the vstor completion.
// The data of an EXECUTE_SRB travels as the packet's external data (GPA-direct PFNs): the driver
// asks VmbChannelPacketGetExternalData for it (read-only when the guest sends data to the disk)
// and lends the returned MDL to the target as its ScsiDataBuffer, so the target reads and writes
// exactly the granted bytes and nothing else of guest memory; the grant ends when the packet is
// completed. Malformed packets, requests without (or with too little) external data, and bad SCSI
// commands are answered with the vstor / SRB / sense status the protocol machine chose; nothing
// the guest sends throws out of the driver. One StorageVsp per open of the channel (a reopened
// channel starts over with BEGIN_INITIALIZATION).
//
// Servicing. Every packet is completed before onPacket returns, so a paused channel holds no
// packet of the VSP's: `save()` returns the KMCL's saved channel (requests still in the ring and
// completions queued for ring space stay with it) and the protocol state and counters as plain
// data. A new instance given the same disk continues with `restore(saved)` instead of `start()`,
// then `resume()`. The disk is the caller's to carry over (e.g. a MemoryDisk over a
// SharedArrayBuffer).

import {
  type KMCL_SERVER_INTERFACE_V1,
  type KmclProvider,
  NT_SUCCESS,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY,
  VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA,
  type VmbusUserHandle,
} from '../../kmcl/index.js';
import type { GrantedMdl } from '../../memory/host-view.js';
import { Guid } from '../../wire/guid.js';
import { readU32 } from '../../wire/messages/bytes.js';
import {
  ChannelCounters,
  type ChannelCountersSnapshot,
  checkStart,
  Deferred,
  DeviceDriverError,
  EventHub,
  enableAndStartServerChannel,
  queryServerTable,
  STORAGE_IO_COUNTS,
  StorageIoCounters,
  type StorageIoCountersState,
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
  HV_SCSI_GUID,
  SCSIOP_READ,
  SCSIOP_READ16,
  SCSIOP_WRITE,
  SCSIOP_WRITE16,
  SRB_STATUS_SUCCESS,
  srbStatusCode,
  VSTOR_OPERATION_EXECUTE_SRB,
  WRITE_TYPE,
} from './constants.js';
import type { DiskBackend } from './disk.js';
import { type ScsiDataBuffer, ScsiTarget } from './scsi.js';
import { StorageVsp, type StorageVspOptions, type StorageVspProtocolState } from './vsp.js';
import { VSTOR_PACKET_HEADER_SIZE, VSTOR_PACKET_SIZE } from './vstor.js';

/** Default offer instance: the one OpenVMM gives its VTL0 SCSI controller. */
export const STORAGE_DEFAULT_INSTANCE_ID = Guid.parse('ba6163d9-04a1-4d29-b605-72e2ffb1dc7f');

/** Byte offsets inside an EXECUTE_SRB packet: vmscsi_request.data_in and cdb[0]. */
const SRB_DATA_IN = VSTOR_PACKET_HEADER_SIZE + 10;
const SRB_CDB0 = VSTOR_PACKET_HEADER_SIZE + 16;

export interface StorageVspDriverOptions extends Omit<StorageVspOptions, 'target'> {
  /** The SCSI target to serve; or give `disk` (or LUN -> disk) and one is made. */
  target?: ScsiTarget;
  disk?: DiskBackend | ReadonlyMap<number, DiskBackend>;
  /** Offer instance GUID (default STORAGE_DEFAULT_INSTANCE_ID). */
  instance?: Guid;
  /** The partition to offer into (its user-mode VMBus handle); default the host's first. */
  vmbusHandle?: VmbusUserHandle;
  targetVtl?: number;
  friendlyName?: string;
}

/** A storage VSP saved by `save()`: plain data (it may be posted to another thread). */
export interface StorageVspDriverSavedState {
  readonly kind: 'storage-vsp';
  readonly version: 1;
  /** The offer instance GUID. */
  readonly instance: string;
  /** The protocol of the open channel (null while no guest has it open). */
  readonly protocol: StorageVspProtocolState | null;
  readonly counters: ChannelCountersSnapshot;
  readonly io: StorageIoCountersState;
  /** The KMCL's saved state of the channel, in VmbChannelSaveContinue chunks. */
  readonly channel: Uint8Array[];
}

export type StorageVspDriverEvent =
  | { kind: 'opened' }
  | { kind: 'closed' }
  | { kind: 'initialized'; version: number }
  | { kind: 'protocol-error'; error: Error };

/**
 * The guest's data buffer of one request, over the MDL KMCL granted for the packet. Views into the
 * target's bounce buffer are cached, so steady-state I/O allocates nothing here.
 */
class MdlDataBuffer implements ScsiDataBuffer {
  private mdl: GrantedMdl | null = null;
  private viewOf: Uint8Array | null = null;
  private viewOffset = 0;
  private view: Uint8Array = new Uint8Array(0);

  attach(mdl: GrantedMdl): void {
    this.mdl = mdl;
  }

  detach(): void {
    this.mdl = null;
  }

  get length(): number {
    return this.mdl?.byteCount ?? 0;
  }

  private slice(buf: Uint8Array, offset: number, n: number): Uint8Array {
    if (buf !== this.viewOf || offset !== this.viewOffset || this.view.length !== n) {
      this.view = buf.subarray(offset, offset + n);
      this.viewOf = buf;
      this.viewOffset = offset;
    }
    return this.view;
  }

  private granted(): GrantedMdl {
    if (this.mdl === null) throw new Error('no external data attached');
    return this.mdl;
  }

  read(offset: number, dest: Uint8Array, destOffset: number, n: number): void {
    this.granted().read(offset, this.slice(dest, destOffset, n));
  }

  write(offset: number, src: Uint8Array, srcOffset: number, n: number): void {
    this.granted().write(offset, this.slice(src, srcOffset, n));
  }
}

/** The host's synthetic SCSI controller for one guest. */
export class StorageVspDriver {
  readonly target: ScsiTarget;
  readonly instance: Guid;
  /** Packets from the guest and completions written back. */
  readonly counters = new ChannelCounters('storage');
  /** SCSI commands served (bytes moved through guest memory; errors = SRBs not successful). */
  readonly io = new StorageIoCounters();
  readonly events = new EventHub<StorageVspDriverEvent>();
  private readonly S: KMCL_SERVER_INTERFACE_V1;
  private readonly options: StorageVspDriverOptions;
  private channel: VMBCHANNEL | null = null;
  private vsp: StorageVsp | null = null;
  private readonly out = new Uint8Array(VSTOR_PACKET_SIZE);
  private readonly data = new MdlDataBuffer();
  private initialized = new Deferred<number>();
  private stopped = false;
  /** Servicing: a save in progress; handed off by save(); a restored channel waiting for resume(). */
  private saving = false;
  private saved = false;
  private awaitingResume = false;

  constructor(provider: KmclProvider, options: StorageVspDriverOptions) {
    this.S = queryServerTable(provider);
    this.options = options;
    if (options.target !== undefined) this.target = options.target;
    else if (options.disk !== undefined) this.target = new ScsiTarget({ luns: options.disk });
    else throw new Error('StorageVspDriver: give a target or a disk');
    this.instance = options.instance ?? STORAGE_DEFAULT_INSTANCE_ID;
  }

  /** The protocol machine of the current open (null while closed). */
  get protocol(): StorageVsp | null {
    return this.vsp;
  }

  get vmbChannel(): VMBCHANNEL | null {
    return this.channel;
  }

  /** Resolves with the protocol version once the guest finished initialization. */
  ready(): Promise<number> {
    if (this.stopped) return Promise.reject(new DeviceDriverError('not-ready', 'storage VSP is stopped'));
    return this.initialized.promise;
  }

  start(): void {
    if (this.channel !== null || this.stopped || this.saved)
      throw new Error('StorageVspDriver: start() twice');
    const S = this.S;
    const ch = this.allocateChannel();
    enableAndStartServerChannel(S, ch);
    this.channel = ch;
  }

  /** A server channel with every Init setter done (the same for start() and restore()). */
  private allocateChannel(): VMBCHANNEL {
    const S = this.S;
    const o = this.options;
    const r = S.VmbChannelAllocate(null, true);
    checkStart(r.status, 'VmbChannelAllocate');
    const ch = r.Channel!;
    try {
      checkStart(
        S.VmbServerChannelInitSetTargetInterfaceId(ch, HV_SCSI_GUID, this.instance),
        'VmbServerChannelInitSetTargetInterfaceId',
      );
      if (o.vmbusHandle !== undefined) {
        const k = S.VmbConvertVmbusHandleToKernelHandle(o.vmbusHandle);
        checkStart(k.status, 'VmbConvertVmbusHandleToKernelHandle');
        checkStart(
          S.VmbServerChannelInitSetVmbusHandle(ch, k.KernelHandle!),
          'VmbServerChannelInitSetVmbusHandle',
        );
      }
      if (o.targetVtl !== undefined) {
        checkStart(S.VmbServerChannelInitSetTargetVtl(ch, o.targetVtl), 'VmbServerChannelInitSetTargetVtl');
      }
      checkStart(
        S.VmbChannelInitSetFriendlyName(ch, o.friendlyName ?? 'synthetic SCSI'),
        'VmbChannelInitSetFriendlyName',
      );
      checkStart(
        S.VmbChannelInitSetProcessPacketCallbacks(ch, this.onPacket, null),
        'VmbChannelInitSetProcessPacketCallbacks',
      );
      const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
      cb.EvtChannelOpened = () => this.onOpened();
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
   * Saves the controller for a new host instance and hands its channel off (the offer stays; the
   * guest sees nothing; its requests wait in the ring): pauses the channel and returns the KMCL's
   * saved channel with the protocol state and counters. The driver is done afterwards (stop() is
   * a no-op). If the KMCL refuses the save, the driver carries on and this rejects with
   * DeviceDriverError('save-failed').
   */
  async save(options: VspSaveOptions = {}): Promise<StorageVspDriverSavedState> {
    const ch = this.channel;
    if (ch === null || this.stopped || this.saving || this.awaitingResume) {
      throw new DeviceDriverError('not-ready', 'storage VSP: save() while not running');
    }
    this.saving = true;
    let saved: { chunks: Uint8Array[]; state: Omit<StorageVspDriverSavedState, 'channel'> };
    try {
      saved = await saveServerChannel(
        this.S,
        ch,
        'storage VSP',
        () => ({
          kind: 'storage-vsp' as const,
          version: 1 as const,
          instance: this.instance.toString(),
          protocol: this.vsp?.saveState() ?? null,
          counters: this.counters.snapshot(),
          io: this.io.save(),
        }),
        options,
      );
    } finally {
      this.saving = false;
    }
    this.channel = null;
    this.saved = true;
    this.stopped = true;
    this.initialized.reject(
      new DeviceDriverError('closed', 'storage VSP was saved; a restored instance carries on'),
    );
    return { ...saved.state, channel: saved.chunks };
  }

  /**
   * Instead of start(), in a new host instance: takes over from `saved` (this driver must be
   * configured as the saved one was and serve the same disk). The channel is allocated and
   * configured as start() does and restored from the saved chunks, paused; call resume() once
   * every channel of the partition is restored (after BusKmclHost.finishRestore on the real bus).
   * A saved state that does not fit, or that the KMCL refuses, throws
   * DeviceDriverError('restore-failed') and changes nothing.
   */
  restore(saved: StorageVspDriverSavedState): this {
    const name = 'storage VSP';
    if (this.channel !== null || this.stopped || this.saved)
      throw new Error(`${name}: restore() after start()`);
    checkSaved(
      saved?.kind === 'storage-vsp' && saved.version === 1,
      name,
      'is not a storage VSP state of version 1',
    );
    checkSaved(
      sameInstance(saved.instance, this.instance.toString()),
      name,
      `belongs to the offer instance ${String(saved.instance)}`,
    );
    checkSaved(savedCounts(saved.counters, CHANNEL_COUNTER_KEYS), name, 'has bad counters');
    checkSaved(savedCounts(saved.io, STORAGE_IO_COUNTS), name, 'has bad I/O counters');
    checkSaved(Array.isArray(saved.channel), name, 'has no channel chunks');
    let vsp: StorageVsp | null = null;
    const io = new StorageIoCounters();
    try {
      if (saved.protocol !== null) {
        vsp = this.newProtocol();
        vsp.restoreState(saved.protocol);
      }
      io.restore(saved.io);
    } catch (e) {
      throw new DeviceDriverError('restore-failed', `${name}: ${(e as Error).message}`, null, { cause: e });
    }
    const ch = this.allocateChannel();
    restoreServerChannel(this.S, ch, name, saved.channel);
    this.counters.restore(saved.counters);
    this.io.restore(saved.io);
    this.vsp = vsp;
    this.channel = ch;
    this.awaitingResume = true;
    return this;
  }

  /** After restore(): enables the restored channel (this only confirms the offer) and starts it. */
  resume(): void {
    const ch = this.channel;
    if (!this.awaitingResume || ch === null) throw new Error('storage VSP: resume() without restore()');
    checkStart(this.S.VmbChannelEnable(ch), 'VmbChannelEnable');
    this.awaitingResume = false;
    this.S.VmbChannelStart(ch);
    const vsp = this.vsp;
    if (vsp !== null && vsp.state === 'ready') this.initialized.resolve(vsp.version);
  }

  /** Revokes the offer (the guest closes first) and frees the channel. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.initialized.reject(new DeviceDriverError('closed', 'storage VSP stopped'));
    const ch = this.channel;
    if (ch !== null) {
      this.channel = null;
      await this.S.VmbChannelDisable(ch);
      this.S.VmbChannelCleanup(ch);
    }
  }

  /** A protocol machine for one open of the channel. */
  private newProtocol(): StorageVsp {
    const o = this.options;
    return new StorageVsp({
      target: this.target,
      pathId: o.pathId,
      targetId: o.targetId,
      maxTransferBytes: o.maxTransferBytes,
      maxSubChannels: o.maxSubChannels,
      versions: o.versions,
      onCreateSubChannels: o.onCreateSubChannels,
    });
  }

  private onOpened(): number {
    this.vsp = this.newProtocol();
    if (this.initialized.settled) this.initialized = new Deferred();
    this.events.emit({ kind: 'opened' });
    return STATUS_SUCCESS;
  }

  private onClosed(): void {
    this.vsp = null;
    if (!this.stopped && this.initialized.settled) this.initialized = new Deferred();
    this.events.emit({ kind: 'closed' });
  }

  private readonly onPacket = (
    _ch: VMBCHANNEL,
    pkt: VMBPACKETCOMPLETION,
    buffer: Uint8Array,
    length: number,
    flags: number,
  ): void => {
    this.counters.noteIn(length);
    const vsp = this.vsp;
    if (vsp === null) {
      this.S.VmbChannelPacketComplete(pkt, null, 0);
      return;
    }
    let data: ScsiDataBuffer | null = null;
    if ((flags & VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA) !== 0) {
      // Data the guest sends to the disk is only read: ask for a read-only grant.
      const dataOut =
        length > SRB_DATA_IN &&
        readU32(buffer, 0) === VSTOR_OPERATION_EXECUTE_SRB &&
        buffer[SRB_DATA_IN] === WRITE_TYPE;
      const r = this.S.VmbChannelPacketGetExternalData(
        pkt,
        dataOut ? VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY : 0,
      );
      if (NT_SUCCESS(r.status) && r.Mdl !== undefined) {
        this.data.attach(r.Mdl);
        data = this.data;
      } else {
        this.counters.errors++;
      }
    }
    const io = this.io;
    const t0 = performance.now();
    let res: ReturnType<StorageVsp['handlePacket']>;
    try {
      res = vsp.handlePacket(buffer, data, this.out, length);
    } finally {
      this.data.detach();
    }
    if (res.error !== null) {
      this.counters.errors++;
      this.events.emit({ kind: 'protocol-error', error: res.error });
    }
    const scsi = res.scsi;
    if (scsi !== null) {
      io.latency.add(performance.now() - t0);
      const op = buffer[SRB_CDB0]!;
      if (op === SCSIOP_READ || op === SCSIOP_READ16) {
        io.reads++;
        io.bytesRead += scsi.transferred;
      } else if (op === SCSIOP_WRITE || op === SCSIOP_WRITE16) {
        io.writes++;
        io.bytesWritten += scsi.transferred;
      } else {
        io.others++;
      }
      if (srbStatusCode(scsi.srbStatus) !== SRB_STATUS_SUCCESS) io.errors++;
    } else if (res.status !== 0 && length >= 4 && readU32(buffer, 0) === VSTOR_OPERATION_EXECUTE_SRB) {
      io.errors++;
    }
    this.S.VmbChannelPacketComplete(pkt, this.out, res.length);
    this.counters.noteOut(res.length);
    if (res.event === 'initialized') {
      this.initialized.resolve(vsp.version);
      this.events.emit({ kind: 'initialized', version: vsp.version });
    }
  };
}
