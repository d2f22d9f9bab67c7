// Guest synthetic-storage VSC driver, written only against KMCL_CLIENT_INTERFACE_V1: opens the SCSI
// controller channel (HV_SCSI_GUID), runs the initialization handshake of the pure StorageVscInit
// machine on EvtChannelPostStarted, and then offers an async block API (inquiry, readCapacity,
// read, write, readVerify) and the raw SRB path under it (execute), with up to `queueDepth`
// requests in flight (default 32, as a storvsc queue).
//
// Data never travels inline: each in-flight slot owns `maxTransferBytes` of guest pages taken from
// the guest's PageAllocator when the driver starts (scattered pages by default), and a request
// sends its vstor EXECUTE_SRB packet with VmbPacketSendWithExternalPfns naming the pages its
// transfer spans. Writes copy the caller's bytes into the slot's pages before sending; reads copy
// out of them when the completion arrives. A slot and its pages are reused only after the host
// completed the packet, so the host never sees a page change under a request it still holds.
// The hot path allocates only the request's promise and its small result object: slots, packets,
// SRB buffers and completion parsers are reused.
//
// Completions are checked by parseScsiCompletion (a bad one rejects its request with a
// DeviceDriverError('protocol')); a request the host does not complete within `requestTimeoutMs`
// rejects with 'timeout' while its slot stays held until the completion arrives; a closing channel
// rejects whatever is outstanding with 'closed'.

import {
  type KMCL_CLIENT_INTERFACE_V1,
  type KmclProvider,
  NT_SUCCESS,
  type NTSTATUS,
  ntStatusName,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
  type VMBPACKET,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../kmcl/index.js';
import type { AllocationMode, PageAllocator } from '../../memory/allocator.js';
import { PAGE_SIZE } from '../../memory/guest-memory.js';
import { pfnArrayRead, pfnArrayWrite } from '../../memory/mdl.js';
import { WireError } from '../../wire/errors.js';
import type { Guid } from '../../wire/guid.js';
import {
  ChannelCounters,
  checkStart,
  Deferred,
  DeviceDriverError,
  EventHub,
  queryClientTable,
  StorageIoCounters,
} from '../driver-common.js';
import {
  HV_SCSI_GUID,
  READ_TYPE,
  SAM_STAT_GOOD,
  SCSIOP_READ,
  SCSIOP_READ16,
  SCSIOP_WRITE,
  SCSIOP_WRITE16,
  SRB_STATUS_SUCCESS,
  STANDARD_INQUIRY_LENGTH,
  srbStatusCode,
  UNKNOWN_TYPE,
  WRITE_TYPE,
} from './constants.js';
import {
  buildInquiryCdb,
  buildRead10Cdb,
  buildRead16Cdb,
  buildReadCapacity10Cdb,
  buildReadCapacity16Cdb,
  buildWrite10Cdb,
  buildWrite16Cdb,
  parseReadCapacity10,
  parseReadCapacity16,
  parseSense,
  type SenseInfo,
} from './scsi.js';
import {
  buildExecuteSrb,
  newScsiCompletion,
  parseScsiCompletion,
  type ScsiCompletion,
  StorageVscInit,
} from './vsc.js';
import { VSTOR_PACKET_SIZE, type VstorChannelProperties, vstorPacketSize } from './vstor.js';

const WAIT = VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION;
/** Checks for requests past their deadline at most this often. */
const SWEEP_MS = 250;

export interface StorageVscDriverOptions {
  /** The guest partition's page allocator (request buffers come from it). */
  allocator: PageAllocator;
  /** Only this controller instance (default: any SCSI controller offer). */
  instance?: Guid | null;
  /** Requests in flight at most (default 32). */
  queueDepth?: number;
  /** Bytes of one request's buffer, a multiple of 4096 (default 64 KiB); larger I/O is split. */
  maxTransferBytes?: number;
  /** How slot pages are allocated (default 'scattered'). */
  pageAllocation?: AllocationMode;
  /** Protocol versions to ask for, most preferred first (default Linux's). */
  versions?: readonly number[];
  /** The disk's address (default LUN 0 on path 0, target 0). */
  lun?: number;
  targetId?: number;
  pathId?: number;
  friendlyName?: string;
  /** How long a request (or the handshake) may wait for the host; 0 waits forever. Default 30 s. */
  requestTimeoutMs?: number;
}

export type StorageVscDriverState = 'idle' | 'waiting' | 'initializing' | 'ready' | 'failed' | 'stopped';

export interface StorageVscInfo {
  /** The negotiated vstor protocol version (major << 8 | minor). */
  version: number;
  properties: VstorChannelProperties;
}

export type StorageVscDriverEvent =
  | { kind: 'opened' }
  | { kind: 'closed' }
  | { kind: 'ready'; info: StorageVscInfo }
  | { kind: 'open-failed'; status: number }
  | { kind: 'protocol-error'; error: Error };

/** A raw SCSI request (the EXECUTE_SRB path). */
export interface ScsiRequest {
  /** The CDB; its first `cdbLength` bytes are sent. */
  cdb: Uint8Array;
  cdbLength?: number;
  /** WRITE_TYPE (data to the device), READ_TYPE (data from it) or UNKNOWN_TYPE. */
  dataIn: number;
  /** vmscsi_request.data_transfer_length (at most maxTransferBytes). */
  dataTransferLength: number;
  /** WRITE_TYPE: the bytes sent; READ_TYPE: where received bytes go. From `dataOffset`. */
  data?: Uint8Array;
  dataOffset?: number;
  /** Default: the driver's LUN. */
  lun?: number;
  /**
   * Pages named in the packet's external data. Default: the pages the transfer spans (none for a
   * transfer of 0 bytes, which then goes inline). Other values exist to test hosts.
   */
  externalPages?: number;
}

export interface ScsiRequestResult {
  /** vstor_packet.status of the completion (an NTSTATUS as u32). */
  status: number;
  srbStatus: number;
  scsiStatus: number;
  /** Bytes moved. */
  dataTransferLength: number;
  /** Parsed sense data (CHECK CONDITION with autosense), else null. */
  sense: SenseInfo | null;
  /** Status 0, SRB success, SCSI GOOD. */
  ok: boolean;
}

/** A SCSI request the device answered with an error. */
export class StorageIoError extends DeviceDriverError {
  override readonly name = 'StorageIoError';
  constructor(
    readonly result: ScsiRequestResult,
    what: string,
  ) {
    const s = result.sense;
    super(
      'io-error',
      `${what}: vstor status 0x${result.status.toString(16)}, srb 0x${result.srbStatus.toString(16)}, ` +
        `scsi 0x${result.scsiStatus.toString(16)}` +
        (s === null ? '' : `, sense ${s.key}/${s.asc.toString(16)}/${s.ascq.toString(16)}`),
      result.status | 0,
    );
  }
}

export interface InquiryData {
  peripheralQualifier: number;
  peripheralDeviceType: number;
  vendor: string;
  product: string;
  revision: string;
}

export interface DiskGeometry {
  blockSize: number;
  blockCount: number;
}

interface Job {
  /** Raw request CDB, or null for block I/O (the CDB is built into the slot). */
  cdb: Uint8Array | null;
  cdbLength: number;
  /** Block I/O. */
  write: boolean;
  lba: number;
  blocks: number;
  dataIn: number;
  dtl: number;
  data: Uint8Array | null;
  dataOffset: number;
  externalPages: number;
  lun: number;
  resolve: (r: ScsiRequestResult) => void;
  reject: (e: unknown) => void;
}

class Slot {
  job: Job | null = null;
  /** Held until the host completes the packet (also after its request timed out). */
  busy = false;
  op = 0;
  dataIn = 0;
  dtl = 0;
  started = 0;
  packet: VMBPACKET | null = null;
  readonly request = new Uint8Array(VSTOR_PACKET_SIZE);
  readonly cdb = new Uint8Array(16);
  readonly completion: ScsiCompletion = newScsiCompletion();

  constructor(readonly pfns: Uint32Array) {}
}

/** The guest's synthetic SCSI disk driver. */
export class StorageVscDriver {
  readonly queueDepth: number;
  readonly maxTransferBytes: number;
  /** Packets each way (requests out, completions in). */
  readonly counters = new ChannelCounters('storage');
  readonly io = new StorageIoCounters();
  readonly events = new EventHub<StorageVscDriverEvent>();
  /** Filled by readCapacity(). */
  geometry: DiskGeometry | null = null;
  private geometryLoad: Promise<DiskGeometry> | null = null;
  private readonly C: KMCL_CLIENT_INTERFACE_V1;
  private readonly options: StorageVscDriverOptions;
  private readonly allocator: PageAllocator;
  private readonly timeoutMs: number;
  private readonly lun: number;
  private channel: VMBCHANNEL | null = null;
  private current: StorageVscDriverState = 'idle';
  private info: StorageVscInfo | null = null;
  private readyDeferred = new Deferred<StorageVscInfo>();
  private init: StorageVscInit | null = null;
  private ctrl: VMBPACKET | null = null;
  private readonly ctrlOut = new Uint8Array(VSTOR_PACKET_SIZE);
  private handshakeTimer: ReturnType<typeof setTimeout> | null = null;
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private slots: Slot[] = [];
  private readonly free: Slot[] = [];
  private readonly waiting: Job[] = [];
  private waitingHead = 0;
  private packetSize = VSTOR_PACKET_SIZE;

  constructor(provider: KmclProvider, options: StorageVscDriverOptions) {
    this.C = queryClientTable(provider);
    this.options = options;
    this.allocator = options.allocator;
    this.queueDepth = options.queueDepth ?? 32;
    this.maxTransferBytes = options.maxTransferBytes ?? 65536;
    this.timeoutMs = options.requestTimeoutMs ?? 30_000;
    this.lun = options.lun ?? 0;
    if (!Number.isInteger(this.queueDepth) || this.queueDepth < 1 || this.queueDepth > 1024) {
      throw new RangeError(`queueDepth ${this.queueDepth} not in [1, 1024]`);
    }
    const t = this.maxTransferBytes;
    if (!Number.isInteger(t) || t < PAGE_SIZE || t % PAGE_SIZE !== 0 || t > 0x7fffffff) {
      throw new RangeError(`maxTransferBytes ${t} is not a positive multiple of ${PAGE_SIZE}`);
    }
  }

  get state(): StorageVscDriverState {
    return this.current;
  }

  get vmbChannel(): VMBCHANNEL | null {
    return this.channel;
  }

  /** Requests waiting for a free slot. */
  get queued(): number {
    return this.waiting.length - this.waitingHead;
  }

  /** Allocates the slots' pages and packets, configures and enables the client channel. */
  start(): void {
    if (this.current !== 'idle') throw new Error(`StorageVscDriver: start() in state ${this.current}`);
    const C = this.C;
    const pages = this.maxTransferBytes / PAGE_SIZE;
    const mode = this.options.pageAllocation ?? 'scattered';
    const r = C.VmbChannelAllocate(null, false);
    checkStart(r.status, 'VmbChannelAllocate');
    const ch = r.Channel!;
    try {
      checkStart(
        C.VmbClientChannelInitSetTargetPnp(ch, HV_SCSI_GUID, this.options.instance ?? null, (_c, status) =>
          this.events.emit({ kind: 'open-failed', status }),
        ),
        'VmbClientChannelInitSetTargetPnp',
      );
      checkStart(
        C.VmbChannelInitSetFriendlyName(ch, this.options.friendlyName ?? 'storvsc'),
        'VmbChannelInitSetFriendlyName',
      );
      checkStart(
        C.VmbChannelInitSetMaximumExternalData(ch, this.maxTransferBytes, 1),
        'VmbChannelInitSetMaximumExternalData',
      );
      checkStart(
        C.VmbChannelInitSetProcessPacketCallbacks(ch, this.onPacket, null),
        'VmbChannelInitSetProcessPacketCallbacks',
      );
      const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
      cb.EvtChannelOpened = () => this.onOpened();
      cb.EvtChannelPostStarted = () => this.onPostStarted();
      cb.EvtChannelClosed = () => this.onClosed();
      checkStart(C.VmbChannelInitSetStateChangeCallbacks(ch, cb), 'VmbChannelInitSetStateChangeCallbacks');
      for (let i = 0; i < this.queueDepth; i++) {
        const slot = new Slot(this.allocator.allocate(pages, mode));
        this.slots.push(slot);
        const p = C.VmbPacketAllocate(ch);
        if (p === null) throw new DeviceDriverError('start-failed', 'VmbPacketAllocate returned NULL');
        slot.packet = p;
        C.VmbPacketSetCompletionRoutine(p, (_p, status, buf, len) =>
          this.onCompletion(slot, status, buf, len),
        );
      }
      const ctrl = C.VmbPacketAllocate(ch);
      if (ctrl === null) throw new DeviceDriverError('start-failed', 'VmbPacketAllocate returned NULL');
      C.VmbPacketSetCompletionRoutine(ctrl, (_p, status, buf, len) =>
        this.onControlCompletion(status, buf, len),
      );
      this.ctrl = ctrl;
      checkStart(C.VmbChannelEnable(ch), 'VmbChannelEnable');
    } catch (e) {
      this.releaseResources();
      C.VmbChannelCleanup(ch);
      throw e;
    }
    for (let i = this.slots.length - 1; i >= 0; i--) this.free.push(this.slots[i]!);
    this.channel = ch;
    this.current = 'waiting';
  }

  /** Closes the channel, rejects what is outstanding, and gives the pages back. */
  async stop(): Promise<void> {
    if (this.current === 'stopped') return;
    const ch = this.channel;
    this.current = 'stopped';
    this.stopSweeper();
    this.clearHandshakeTimer();
    const err = new DeviceDriverError('closed', 'storage VSC stopped');
    this.readyDeferred.reject(err);
    this.rejectWaiting(err);
    if (ch !== null) {
      this.channel = null;
      await this.C.VmbChannelDisable(ch);
      this.releaseResources();
      this.C.VmbChannelCleanup(ch);
    }
  }

  private releaseResources(): void {
    for (const s of this.slots) {
      if (s.packet !== null) this.C.VmbPacketFree(s.packet);
      s.packet = null;
      this.allocator.free(s.pfns);
    }
    this.slots = [];
    this.free.length = 0;
    if (this.ctrl !== null) this.C.VmbPacketFree(this.ctrl);
    this.ctrl = null;
  }

  /** Resolves once the handshake is done (waiting for the host's offer if needed). */
  ready(): Promise<StorageVscInfo> {
    if (this.current === 'stopped')
      return Promise.reject(new DeviceDriverError('not-ready', 'storage VSC is stopped'));
    return this.readyDeferred.promise;
  }

  /** The negotiated version and channel properties (null before the handshake). */
  get negotiated(): StorageVscInfo | null {
    return this.info;
  }

  // --- channel callbacks ---

  private onOpened(): number {
    this.init = new StorageVscInit(
      this.options.versions !== undefined ? { versions: this.options.versions } : {},
    );
    if (this.readyDeferred.settled) this.readyDeferred = new Deferred();
    if (this.current !== 'stopped') this.current = 'initializing';
    this.events.emit({ kind: 'opened' });
    return STATUS_SUCCESS;
  }

  private onPostStarted(): void {
    const init = this.init;
    if (init === null || init.state !== 'idle') return;
    const n = init.start(this.ctrlOut);
    this.sendControl(n);
    if (this.timeoutMs > 0) {
      this.handshakeTimer = setTimeout(() => {
        this.handshakeTimer = null;
        this.counters.errors++;
        this.fail(
          new DeviceDriverError('timeout', `the host did not finish the handshake in ${this.timeoutMs} ms`),
        );
      }, this.timeoutMs);
      this.handshakeTimer.unref?.();
    }
  }

  private onClosed(): void {
    this.clearHandshakeTimer();
    this.stopSweeper();
    this.init = null;
    this.info = null;
    if (this.current !== 'stopped') {
      this.current = 'waiting';
      if (this.readyDeferred.settled) this.readyDeferred = new Deferred();
    }
    this.rejectWaiting(new DeviceDriverError('closed', 'the storage channel closed'));
    this.events.emit({ kind: 'closed' });
  }

  /** Packets the host sends on its own (e.g. ENUMERATE_BUS notifications): counted and completed. */
  private readonly onPacket = (
    _ch: VMBCHANNEL,
    pkt: VMBPACKETCOMPLETION,
    _buffer: Uint8Array,
    length: number,
  ): void => {
    this.counters.noteIn(length);
    this.C.VmbChannelPacketComplete(pkt, null, 0);
  };

  private sendControl(length: number): void {
    const status = this.C.VmbPacketSend(this.ctrl!, this.ctrlOut, length, null, WAIT);
    if (!NT_SUCCESS(status)) {
      this.counters.errors++;
      this.fail(new DeviceDriverError('send-failed', `handshake send: ${ntStatusName(status)}`, status));
      return;
    }
    this.counters.noteOut(length);
  }

  private onControlCompletion(status: NTSTATUS, buf: Uint8Array | null, len: number): void {
    const init = this.init;
    if (!NT_SUCCESS(status) || init === null) return; // the channel is going away
    this.counters.noteIn(len);
    let step: ReturnType<StorageVscInit['handleCompletion']>;
    try {
      step = init.handleCompletion(buf ?? new Uint8Array(0), this.ctrlOut, len);
    } catch (e) {
      if (!(e instanceof WireError)) throw e;
      this.counters.errors++;
      this.events.emit({ kind: 'protocol-error', error: e });
      this.fail(new DeviceDriverError('protocol', `handshake: ${e.message}`, null, { cause: e }));
      return;
    }
    if (step.length > 0) {
      this.sendControl(step.length);
    } else if (step.state === 'ready') {
      this.clearHandshakeTimer();
      this.packetSize = vstorPacketSize(init.version);
      this.info = { version: init.version, properties: init.properties! };
      this.current = 'ready';
      this.startSweeper();
      this.readyDeferred.resolve(this.info);
      this.events.emit({ kind: 'ready', info: this.info });
    } else if (step.state === 'failed') {
      this.fail(new DeviceDriverError('negotiation-failed', step.reason ?? 'handshake failed'));
    }
  }

  private fail(err: Error): void {
    this.clearHandshakeTimer();
    if (this.current === 'stopped') return;
    this.current = 'failed';
    this.readyDeferred.reject(err);
    this.rejectWaiting(err);
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer !== null) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
  }

  // --- requests ---

  /** The largest transfer one request can carry (the host's limit and ours). */
  get transferLimit(): number {
    const host = this.info?.properties.maxTransferBytes ?? 0;
    return host > 0 ? Math.min(host, this.maxTransferBytes) : this.maxTransferBytes;
  }

  /** Sends one raw SCSI request; resolves with its outcome (errors included, see `ok`). */
  execute(request: ScsiRequest): Promise<ScsiRequestResult> {
    const dtl = request.dataTransferLength;
    if (!Number.isInteger(dtl) || dtl < 0 || dtl > this.maxTransferBytes) {
      throw new RangeError(`dataTransferLength ${dtl} not in [0, ${this.maxTransferBytes}]`);
    }
    const cdbLength = request.cdbLength ?? request.cdb.length;
    if (!Number.isInteger(cdbLength) || cdbLength < 1 || cdbLength > 16 || cdbLength > request.cdb.length) {
      throw new RangeError(`cdbLength ${cdbLength} not in [1, 16]`);
    }
    if (request.dataIn !== READ_TYPE && request.dataIn !== WRITE_TYPE && request.dataIn !== UNKNOWN_TYPE) {
      throw new RangeError(`bad dataIn ${request.dataIn}`);
    }
    const offset = request.dataOffset ?? 0;
    const data = request.data ?? null;
    if (
      request.dataIn !== UNKNOWN_TYPE &&
      dtl > 0 &&
      (data === null || offset < 0 || offset + dtl > data.length)
    ) {
      throw new RangeError('the data buffer does not hold dataTransferLength bytes at dataOffset');
    }
    const pages = request.externalPages ?? Math.ceil(dtl / PAGE_SIZE);
    if (!Number.isInteger(pages) || pages < 0 || pages > this.maxTransferBytes / PAGE_SIZE) {
      throw new RangeError(`externalPages ${pages} not in [0, ${this.maxTransferBytes / PAGE_SIZE}]`);
    }
    return this.submit({
      cdb: request.cdb,
      cdbLength,
      write: false,
      lba: 0,
      blocks: 0,
      dataIn: request.dataIn,
      dtl,
      data,
      dataOffset: offset,
      externalPages: pages,
      lun: request.lun ?? this.lun,
      resolve: noop,
      reject: noop,
    });
  }

  private submit(job: Job): Promise<ScsiRequestResult> {
    if (this.current !== 'ready') {
      return Promise.reject(new DeviceDriverError('not-ready', `storage VSC is ${this.current}`));
    }
    return new Promise<ScsiRequestResult>((resolve, reject) => {
      job.resolve = resolve;
      job.reject = reject;
      const slot = this.free.pop();
      if (slot !== undefined) this.issue(slot, job);
      else this.waiting.push(job);
    });
  }

  private issue(slot: Slot, job: Job): void {
    const bs = this.geometry?.blockSize ?? 0;
    let cdb = job.cdb;
    let cdbLength = job.cdbLength;
    if (cdb === null) {
      cdb = slot.cdb;
      const big = job.lba + job.blocks > 0x100000000 || job.blocks > 0xffff;
      if (job.write) {
        cdbLength = big
          ? buildWrite16Cdb(cdb, job.lba, job.blocks)
          : buildWrite10Cdb(cdb, job.lba, job.blocks);
      } else {
        cdbLength = big ? buildRead16Cdb(cdb, job.lba, job.blocks) : buildRead10Cdb(cdb, job.lba, job.blocks);
      }
      job.dtl = job.blocks * bs;
      job.externalPages = Math.ceil(job.dtl / PAGE_SIZE);
    }
    const size = buildExecuteSrb(
      slot.request,
      {
        cdb,
        cdbLength,
        lun: job.lun,
        targetId: this.options.targetId ?? 0,
        pathId: this.options.pathId ?? 0,
        dataIn: job.dataIn,
        dataTransferLength: job.dtl,
      },
      this.packetSize,
    );
    if (job.dataIn === WRITE_TYPE && job.dtl > 0 && job.data !== null) {
      pfnArrayWrite(
        this.allocator.memory,
        slot.pfns,
        0,
        job.data.subarray(job.dataOffset, job.dataOffset + job.dtl),
      );
    }
    const p = slot.packet!;
    const status =
      job.externalPages > 0
        ? this.C.VmbPacketSendWithExternalPfns(p, slot.request, size, slot.pfns, job.externalPages, WAIT)
        : this.C.VmbPacketSend(p, slot.request, size, null, WAIT);
    if (!NT_SUCCESS(status)) {
      this.counters.errors++;
      this.io.errors++;
      this.release(slot, true);
      job.reject(new DeviceDriverError('send-failed', `EXECUTE_SRB send: ${ntStatusName(status)}`, status));
      return;
    }
    slot.job = job;
    slot.busy = true;
    slot.op = cdb[0]!;
    slot.dataIn = job.dataIn;
    slot.dtl = job.dtl;
    slot.started = performance.now();
    this.counters.noteOut(size);
    const io = this.io;
    io.inFlight++;
    if (io.inFlight > io.maxInFlight) io.maxInFlight = io.inFlight;
  }

  private onCompletion(slot: Slot, status: NTSTATUS, buf: Uint8Array | null, len: number): void {
    const job = slot.job;
    slot.job = null;
    slot.busy = false;
    const io = this.io;
    io.inFlight--;
    if (!NT_SUCCESS(status)) {
      // The channel is closing: nothing more goes out on it.
      job?.reject(new DeviceDriverError('closed', `request cancelled: ${ntStatusName(status)}`, status));
      this.rejectWaiting(new DeviceDriverError('closed', 'the storage channel closed'));
      this.free.push(slot);
      return;
    }
    this.counters.noteIn(len);
    let c: ScsiCompletion;
    try {
      c = parseScsiCompletion(buf ?? new Uint8Array(0), slot.dtl, slot.completion, len, this.packetSize);
    } catch (e) {
      if (!(e instanceof WireError)) throw e;
      this.counters.errors++;
      io.errors++;
      this.events.emit({ kind: 'protocol-error', error: e });
      job?.reject(new DeviceDriverError('protocol', `bad completion: ${e.message}`, null, { cause: e }));
      this.release(slot, false);
      return;
    }
    if (job !== null) {
      if (slot.dataIn === READ_TYPE && c.dataTransferLength > 0 && job.data !== null) {
        const n = c.dataTransferLength;
        pfnArrayRead(
          this.allocator.memory,
          slot.pfns,
          0,
          job.data.subarray(job.dataOffset, job.dataOffset + n),
        );
      }
      const ok =
        c.status === 0 && srbStatusCode(c.srbStatus) === SRB_STATUS_SUCCESS && c.scsiStatus === SAM_STAT_GOOD;
      const op = slot.op;
      if (op === SCSIOP_READ || op === SCSIOP_READ16) {
        io.reads++;
        io.bytesRead += c.dataTransferLength;
      } else if (op === SCSIOP_WRITE || op === SCSIOP_WRITE16) {
        io.writes++;
        io.bytesWritten += c.dataTransferLength;
      } else {
        io.others++;
      }
      if (!ok) io.errors++;
      io.latency.add(performance.now() - slot.started);
      job.resolve({
        status: c.status,
        srbStatus: c.srbStatus,
        scsiStatus: c.scsiStatus,
        dataTransferLength: c.dataTransferLength,
        sense: c.senseLength > 0 ? parseSense(c.sense, c.senseLength) : null,
        ok,
      });
    }
    this.release(slot, false);
  }

  /** The slot is free again: the next waiting request takes it. */
  private release(slot: Slot, fromIssue: boolean): void {
    if (this.current === 'ready' && !fromIssue && this.waitingHead < this.waiting.length) {
      const next = this.waiting[this.waitingHead]!;
      this.waiting[this.waitingHead++] = undefined as unknown as Job;
      if (this.waitingHead === this.waiting.length) {
        this.waiting.length = 0;
        this.waitingHead = 0;
      }
      this.issue(slot, next);
      return;
    }
    this.free.push(slot);
  }

  private rejectWaiting(err: Error): void {
    const jobs = this.waiting.slice(this.waitingHead);
    this.waiting.length = 0;
    this.waitingHead = 0;
    for (const j of jobs) j.reject(err);
  }

  private startSweeper(): void {
    if (this.timeoutMs <= 0 || this.sweeper !== null) return;
    this.sweeper = setInterval(() => this.sweep(), Math.min(SWEEP_MS, this.timeoutMs));
    this.sweeper.unref?.();
  }

  private stopSweeper(): void {
    if (this.sweeper !== null) clearInterval(this.sweeper);
    this.sweeper = null;
  }

  /** Requests past their deadline reject; their slots stay held until the host completes them. */
  private sweep(): void {
    const now = performance.now();
    for (const s of this.slots) {
      const job = s.job;
      if (job !== null && now - s.started > this.timeoutMs) {
        s.job = null;
        this.counters.errors++;
        this.io.errors++;
        job.reject(
          new DeviceDriverError('timeout', `the host did not complete a request in ${this.timeoutMs} ms`),
        );
      }
    }
  }

  // --- the block API ---

  private async checked(request: ScsiRequest, what: string): Promise<ScsiRequestResult> {
    const r = await this.execute(request);
    if (!r.ok) throw new StorageIoError(r, what);
    return r;
  }

  /** Standard INQUIRY data of the LUN. */
  async inquiry(): Promise<InquiryData> {
    const cdb = new Uint8Array(6);
    buildInquiryCdb(cdb, STANDARD_INQUIRY_LENGTH);
    const data = new Uint8Array(STANDARD_INQUIRY_LENGTH);
    const r = await this.checked(
      { cdb, dataIn: READ_TYPE, dataTransferLength: STANDARD_INQUIRY_LENGTH, data },
      'INQUIRY',
    );
    if (r.dataTransferLength < STANDARD_INQUIRY_LENGTH) {
      throw new DeviceDriverError('protocol', `INQUIRY returned ${r.dataTransferLength} bytes`);
    }
    const text = (from: number, to: number): string =>
      String.fromCharCode(...data.subarray(from, to)).replace(/[\0 ]+$/, '');
    return {
      peripheralQualifier: data[0]! >>> 5,
      peripheralDeviceType: data[0]! & 0x1f,
      vendor: text(8, 16),
      product: text(16, 32),
      revision: text(32, 36),
    };
  }

  /** READ CAPACITY(10), or (16) for disks past 2^32 blocks; remembers the geometry for I/O. */
  async readCapacity(): Promise<DiskGeometry> {
    const cdb = new Uint8Array(16);
    const data = new Uint8Array(32);
    let n = buildReadCapacity10Cdb(cdb);
    let r = await this.checked(
      { cdb, cdbLength: n, dataIn: READ_TYPE, dataTransferLength: 8, data },
      'READ CAPACITY',
    );
    if (r.dataTransferLength < 8)
      throw new DeviceDriverError('protocol', 'READ CAPACITY(10) returned too little');
    let cap = parseReadCapacity10(data);
    if (cap.lastLba === 0xffffffff) {
      n = buildReadCapacity16Cdb(cdb, 32);
      r = await this.checked(
        { cdb, cdbLength: n, dataIn: READ_TYPE, dataTransferLength: 32, data },
        'READ CAPACITY(16)',
      );
      if (r.dataTransferLength < 12)
        throw new DeviceDriverError('protocol', 'READ CAPACITY(16) returned too little');
      cap = parseReadCapacity16(data);
    }
    if (cap.lastLba < 0 || cap.blockSize < 1 || cap.blockSize > this.maxTransferBytes) {
      throw new DeviceDriverError(
        'protocol',
        `unusable capacity: last LBA ${cap.lastLba}, block ${cap.blockSize}`,
      );
    }
    this.geometry = { blockSize: cap.blockSize, blockCount: cap.lastLba + 1 };
    return this.geometry;
  }

  /** One READ CAPACITY for however many callers need the geometry first. */
  private loadGeometry(): Promise<DiskGeometry> {
    if (this.geometryLoad === null) {
      const p = this.readCapacity();
      this.geometryLoad = p;
      const clear = (): void => {
        if (this.geometryLoad === p) this.geometryLoad = null;
      };
      p.then(clear, clear);
    }
    return this.geometryLoad;
  }

  private blockIo(
    write: boolean,
    lba: number,
    blocks: number,
    data: Uint8Array,
    offset: number,
  ): Promise<ScsiRequestResult> {
    return this.submit({
      cdb: null,
      cdbLength: 0,
      write,
      lba,
      blocks,
      dataIn: write ? WRITE_TYPE : READ_TYPE,
      dtl: 0,
      data,
      dataOffset: offset,
      externalPages: 0,
      lun: this.lun,
      resolve: noop,
      reject: noop,
    });
  }

  /**
   * Splits [lba, lba + blocks) into requests of at most transferLimit bytes and submits them all
   * before returning (once the geometry is known), so they are in flight together. Argument errors
   * reject with a RangeError; a request the device refuses rejects with a StorageIoError.
   */
  private blocksIo(
    write: boolean,
    lba: number,
    blocks: number,
    data: Uint8Array,
    offset: number,
  ): Promise<void> {
    const g = this.geometry;
    if (g === null) return this.loadGeometry().then(() => this.blocksIo(write, lba, blocks, data, offset));
    const bs = g.blockSize;
    if (!Number.isSafeInteger(lba) || lba < 0) return Promise.reject(new RangeError(`bad LBA ${lba}`));
    if (!Number.isSafeInteger(blocks) || blocks < 0) {
      return Promise.reject(new RangeError(`bad block count ${blocks}`));
    }
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + blocks * bs > data.length) {
      return Promise.reject(new RangeError('the buffer does not hold the blocks'));
    }
    const per = Math.max(1, Math.floor(this.transferLimit / bs));
    const parts: Promise<ScsiRequestResult>[] = [];
    for (let done = 0; done < blocks; ) {
      const n = Math.min(per, blocks - done);
      parts.push(this.blockIo(write, lba + done, n, data, offset + done * bs));
      done += n;
    }
    return Promise.all(parts).then((results) => {
      for (const r of results) if (!r.ok) throw new StorageIoError(r, write ? 'WRITE' : 'READ');
    });
  }

  /** Reads `blocks` blocks at `lba` into `dest` at `destOffset`. */
  readInto(lba: number, blocks: number, dest: Uint8Array, destOffset = 0): Promise<void> {
    return this.blocksIo(false, lba, blocks, dest, destOffset);
  }

  /** Reads `blocks` blocks at `lba`. */
  read(lba: number, blocks: number): Promise<Uint8Array> {
    const g = this.geometry;
    if (g === null) return this.loadGeometry().then(() => this.read(lba, blocks));
    if (!Number.isSafeInteger(blocks) || blocks < 0) {
      return Promise.reject(new RangeError(`bad block count ${blocks}`));
    }
    const out = new Uint8Array(blocks * g.blockSize);
    return this.blocksIo(false, lba, blocks, out, 0).then(() => out);
  }

  /** Writes `data` (whole blocks) at `lba`. */
  write(lba: number, data: Uint8Array): Promise<void> {
    const g = this.geometry;
    if (g === null) return this.loadGeometry().then(() => this.write(lba, data));
    if (data.length % g.blockSize !== 0) {
      return Promise.reject(
        new RangeError(`${data.length} bytes is not a whole number of ${g.blockSize}-byte blocks`),
      );
    }
    return this.blocksIo(true, lba, data.length / g.blockSize, data, 0);
  }

  /** Reads the blocks `expected` covers at `lba` and compares; counts verified / mismatches. */
  readVerify(lba: number, expected: Uint8Array): Promise<boolean> {
    const g = this.geometry;
    if (g === null) return this.loadGeometry().then(() => this.readVerify(lba, expected));
    if (expected.length % g.blockSize !== 0) {
      return Promise.reject(
        new RangeError(`${expected.length} bytes is not a whole number of ${g.blockSize}-byte blocks`),
      );
    }
    return this.read(lba, expected.length / g.blockSize).then((got) => {
      let same = true;
      for (let i = 0; i < got.length; i++) {
        if (got[i] !== expected[i]) {
          same = false;
          break;
        }
      }
      if (same) this.io.verified++;
      else this.io.mismatches++;
      return same;
    });
  }
}

function noop(): void {}
