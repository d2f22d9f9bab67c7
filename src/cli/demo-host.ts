// The host half of `vmbus demo`: the root partition's VSPs (heartbeat, shutdown, time sync, KVP and
// a synthetic SCSI controller over an in-memory disk) on a host KMCL provider, and the host's part
// of the workload: heartbeat rounds, a KVP exchange checked value by value, a time SYNC and
// samples, and at the end a shutdown request. The disk counts, per block, how often the guest's
// requests reached it, so the host can tell lost and duplicated requests from the workload alone.
// It runs in the host's worker thread (default) or on the main thread (--same-thread).
//
// Servicing (--servicing): a host instance (its hypervisor, VMBus, KMCL provider and the DemoHost)
// is saved as plain data (saveHostInstance) and a new instance takes over from it
// (adoptHostInstance), in a new worker thread or on the same thread. The VSPs save their own
// state; the DemoHost adds its workload counters; the disk's image and per-block counts live in
// SharedArrayBuffers every instance serves, so the final report counts every instance.

import {
  type DiskBackend,
  type HostVsps,
  type HostVspsSavedState,
  HV_S_OK,
  IC_INSTANCE_IDS,
  KVP_POOL_EXTERNAL,
  KVP_POOL_GUEST,
  LatencySamples,
  type LatencySamplesState,
  MemoryDisk,
  type RestoredHostVsps,
  restoreHostVsps,
  type StorageIoSnapshot,
  startHostVsps,
} from '../devices/index.js';
import { type HvHostEnd, type HvPartitionDescriptor, type HvScheduler, Hypervisor } from '../hv/index.js';
import { BusKmclHost } from '../kmcl/bus-port.js';
import { KmclProvider, type KmclProviderOptions } from '../kmcl/index.js';
import {
  type ChannelReport,
  type DemoWorkload,
  errorText,
  extentCount,
  fillPattern,
  type HostReport,
  type IoReport,
  pairsOnExtent,
  wallMs,
} from './demo-protocol.js';

/** An offer as the host's bus recorded it. */
export interface OfferInfo {
  relid: number;
  type: string;
  instance: string;
}

/** The offers of a host bus's first guest partition, from its VMBus server's state. */
export function offersOf(hostBus: BusKmclHost): () => OfferInfo[] {
  return () => {
    const partition = hostBus.partitions()[0];
    const server = partition === undefined ? undefined : hostBus.server(partition.id);
    if (server === undefined) return [];
    return server.state.channels.map((c) => ({
      relid: c.relid,
      type: c.offer.interfaceType,
      instance: c.offer.interfaceInstance,
    }));
  };
}

/** Guest RAM of the demo partition: rings, storage request buffers and GPADLs live here. */
export const DEMO_GUEST_MEMORY_BYTES = 32 * 1024 * 1024;

/** Everything the KMCL refused from the peer, and driver callbacks that threw (both should stay empty). */
export class DemoErrorLog {
  readonly peer: string[] = [];
  readonly callback: string[] = [];
  readonly options: KmclProviderOptions = {
    onPeerError: (_ch, e) => {
      if (this.peer.length < 20) this.peer.push(errorText(e));
    },
    onCallbackError: (_ch, name, e) => {
      if (this.callback.length < 20) this.callback.push(`${name}: ${errorText(e)}`);
    },
  };

  /** Continues from what an earlier host instance logged (replacing what this log holds). */
  restore(saved: { peer: readonly string[]; callback: readonly string[] }): void {
    this.peer.splice(0, this.peer.length, ...saved.peer);
    this.callback.splice(0, this.callback.length, ...saved.callback);
  }
}

/** A CountingDisk's buffers: every host instance given them serves the same disk and counts. */
export interface CountingDiskState {
  blockSize: number;
  blockCount: number;
  image: SharedArrayBuffer;
  reads: SharedArrayBuffer;
  writes: SharedArrayBuffer;
}

/** A disk that counts, per block, the reads and writes that reached it (all in SharedArrayBuffers). */
export class CountingDisk implements DiskBackend {
  readonly image: MemoryDisk;
  readonly reads: Uint32Array;
  readonly writes: Uint32Array;
  private readonly buffers: CountingDiskState;

  /** A new zeroed disk, or (`shared`) the disk an earlier host instance served. */
  constructor(blockSize: number, blockCount: number, shared?: CountingDiskState) {
    if (shared !== undefined && (shared.blockSize !== blockSize || shared.blockCount !== blockCount)) {
      throw new RangeError('CountingDisk: the shared disk has another geometry');
    }
    this.buffers = shared ?? {
      blockSize,
      blockCount,
      image: new SharedArrayBuffer(blockSize * blockCount),
      reads: new SharedArrayBuffer(4 * blockCount),
      writes: new SharedArrayBuffer(4 * blockCount),
    };
    this.image = new MemoryDisk({ blockSize, blockCount, backing: this.buffers.image });
    this.reads = new Uint32Array(this.buffers.reads);
    this.writes = new Uint32Array(this.buffers.writes);
  }

  /** The buffers to hand to the next host instance. */
  get shared(): CountingDiskState {
    return { ...this.buffers };
  }

  get blockSize(): number {
    return this.image.blockSize;
  }
  get blockCount(): number {
    return this.image.blockCount;
  }
  get readOnly(): boolean {
    return false;
  }

  read(lba: number, blocks: number, dest: Uint8Array, destOffset: number): void {
    this.image.read(lba, blocks, dest, destOffset);
    for (let i = 0; i < blocks; i++) this.reads[lba + i]!++;
  }

  write(lba: number, blocks: number, src: Uint8Array, srcOffset: number): void {
    this.image.write(lba, blocks, src, srcOffset);
    for (let i = 0; i < blocks; i++) this.writes[lba + i]!++;
  }

  flush(): void {}
}

/** The value the host stores under its i-th KVP key. */
export function hostKvpValue(i: number): string {
  return `value-${i}-${(Math.imul(i + 1, 0x9e3779b1) >>> 0).toString(16)}`;
}

/** The i-th record the guest keeps in its own pool. */
export function guestKvpRecord(i: number): { key: string; value: string } {
  return { key: `GuestKey${i}`, value: `guest-value-${i}` };
}

export function latencyReport(s: { count: number; p50Ms: number; p99Ms: number; maxMs: number }) {
  return { count: s.count, p50Ms: s.p50Ms, p99Ms: s.p99Ms, maxMs: s.maxMs };
}

export function ioReport(s: StorageIoSnapshot): IoReport {
  return {
    reads: s.reads,
    writes: s.writes,
    others: s.others,
    bytesRead: s.bytesRead,
    bytesWritten: s.bytesWritten,
    verified: s.verified,
    mismatches: s.mismatches,
    errors: s.errors,
    maxInFlight: s.maxInFlight,
    latency: latencyReport(s.latency),
  };
}

function versionText(v: { framework: number; message: number }): string {
  const t = (x: number) => `${x >>> 16}.${x & 0xffff}`;
  return `${t(v.framework)}/${t(v.message)}`;
}

/** What a DemoHost carries to the next host instance (plain data and SharedArrayBuffers). */
export interface DemoHostSavedState {
  vsps: HostVspsSavedState;
  disk: CountingDiskState;
  versions: Record<string, string>;
  heartbeat: {
    rounds: number;
    acknowledged: number;
    outOfOrder: number;
    failed: number;
    latency: LatencySamplesState;
    /** The sequence number the next round must send (decimal). */
    expectedSent: string;
  };
  kvp: HostReport['kvp'];
  shutdown: HostReport['shutdown'];
  errors: { peer: string[]; callback: string[] };
}

export interface DemoHostOptions {
  /** The disk to serve (default a new CountingDisk of the workload's size; tests pass a faulty one). */
  disk?: CountingDisk;
  /** Servicing: continue from an earlier instance (the VSPs restore their channels; call resume()). */
  saved?: DemoHostSavedState;
}

/** The host's drivers and its side of the workload. */
export class DemoHost {
  readonly vsps: HostVsps;
  readonly disk: CountingDisk;
  private readonly restored: RestoredHostVsps | null = null;
  private readonly versions: Record<string, string> = {};
  private readonly heartbeat = {
    rounds: 0,
    acknowledged: 0,
    outOfOrder: 0,
    failed: 0,
    latency: new LatencySamples(),
  };
  /** The sequence number the next heartbeat round must send (each continues from the last answer). */
  private expectedSent: bigint;
  private readonly kvp: HostReport['kvp'] = {
    written: 0,
    readBack: 0,
    matched: 0,
    mismatched: 0,
    enumerationMatched: false,
    guestPoolRead: 0,
    guestPoolMatched: 0,
  };
  private readonly shutdown = { asked: false, accepted: false };

  constructor(
    provider: KmclProvider,
    readonly workload: DemoWorkload,
    private readonly offers: () => OfferInfo[],
    private readonly errors: DemoErrorLog,
    options: DemoHostOptions = {},
  ) {
    const saved = options.saved;
    this.disk =
      options.disk ??
      new CountingDisk(workload.blockSize, workload.blocks, saved === undefined ? undefined : saved.disk);
    if (saved === undefined) {
      this.vsps = startHostVsps(provider, { storage: { disk: this.disk } });
      this.expectedSent = this.vsps.heartbeat.sequence;
      return;
    }
    this.restored = restoreHostVsps(provider, { storage: { disk: this.disk } }, saved.vsps);
    this.vsps = this.restored;
    Object.assign(this.versions, saved.versions);
    const hb = saved.heartbeat;
    Object.assign(this.heartbeat, {
      rounds: hb.rounds,
      acknowledged: hb.acknowledged,
      outOfOrder: hb.outOfOrder,
      failed: hb.failed,
    });
    this.heartbeat.latency.restore(hb.latency);
    this.expectedSent = BigInt(hb.expectedSent);
    Object.assign(this.kvp, saved.kvp);
    Object.assign(this.shutdown, saved.shutdown);
    this.errors.restore(saved.errors);
  }

  /** Servicing: saves the VSPs (handing their channels off) and this host's counters. */
  async save(): Promise<DemoHostSavedState> {
    const vsps = await this.vsps.save();
    const hb = this.heartbeat;
    return {
      vsps,
      disk: this.disk.shared,
      versions: { ...this.versions },
      heartbeat: {
        rounds: hb.rounds,
        acknowledged: hb.acknowledged,
        outOfOrder: hb.outOfOrder,
        failed: hb.failed,
        latency: hb.latency.save(),
        expectedSent: this.expectedSent.toString(),
      },
      kvp: { ...this.kvp },
      shutdown: { ...this.shutdown },
      errors: { peer: [...this.errors.peer], callback: [...this.errors.callback] },
    };
  }

  /** Servicing: after every channel is restored (and the bus's restore finished), serve again. */
  resume(): void {
    if (this.restored === null) throw new Error('DemoHost: resume() without a saved state');
    this.restored.resume();
  }

  /**
   * Servicing: a restored host checks its heartbeat channel with one round, which must continue
   * the sequence where the previous instance left it.
   */
  async checkRestored(): Promise<void> {
    await this.heartbeatRound();
  }

  /** Waits until every guest driver negotiated; returns a line describing the versions. */
  async ready(): Promise<string> {
    const r = await this.vsps.ready();
    for (const [name, v] of Object.entries(r.ic)) this.versions[name] = versionText(v);
    if (r.storage !== null) this.versions.storage = `${r.storage >>> 8}.${r.storage & 0xff}`;
    return Object.entries(this.versions)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
  }

  /** The host's workload: heartbeats, alongside a KVP exchange and a time sync. */
  async run(progress: (text: string) => void): Promise<void> {
    await Promise.all([this.runHeartbeats(progress), this.runKvpAndTime(progress)]);
  }

  private async runHeartbeats(progress: (text: string) => void): Promise<void> {
    const n = this.workload.heartbeats;
    const step = Math.max(1, Math.ceil(n / 4));
    for (let i = 0; i < n; i++) {
      await this.heartbeatRound();
      if ((i + 1) % step === 0 || i + 1 === n) {
        progress(`heartbeat: ${this.heartbeat.acknowledged}/${n} rounds acknowledged in sequence`);
      }
    }
  }

  /** One heartbeat round, counted: it must send the number the last answer gave and get it + 1. */
  private async heartbeatRound(): Promise<void> {
    this.heartbeat.rounds++;
    try {
      const r = await this.vsps.heartbeat.heartbeat();
      this.heartbeat.latency.add(r.latencyMs);
      if (r.sent !== this.expectedSent || r.acked !== r.sent + 1n || r.status !== HV_S_OK) {
        this.heartbeat.outOfOrder++;
      } else {
        this.heartbeat.acknowledged++;
      }
      this.expectedSent = r.acked;
    } catch {
      this.heartbeat.failed++;
    }
  }

  private async runKvpAndTime(progress: (text: string) => void): Promise<void> {
    const kvp = this.vsps.kvp;
    const w = this.workload;
    const k = this.kvp;
    for (let i = 0; i < w.kvpKeys; i++) {
      const r = await kvp.set(KVP_POOL_EXTERNAL, `DemoKey${i}`, hostKvpValue(i));
      if (r.status === HV_S_OK) k.written++;
    }
    for (let i = 0; i < w.kvpKeys; i++) {
      const r = await kvp.get(KVP_POOL_EXTERNAL, `DemoKey${i}`);
      if (r.status !== HV_S_OK) continue;
      k.readBack++;
      if (r.value === hostKvpValue(i)) k.matched++;
      else k.mismatched++;
    }
    const listed = await kvp.entries(KVP_POOL_EXTERNAL);
    k.enumerationMatched =
      listed.length === w.kvpKeys &&
      listed.every((e, i) => e.key === `DemoKey${i}` && e.value === hostKvpValue(i));
    const guestPool = await kvp.entries(KVP_POOL_GUEST);
    k.guestPoolRead = guestPool.length;
    for (let i = 0; i < guestPool.length; i++) {
      const want = guestKvpRecord(i);
      if (guestPool[i]!.key === want.key && guestPool[i]!.value === want.value) k.guestPoolMatched++;
    }
    progress(
      `kvp: ${k.matched}/${w.kvpKeys} values read back equal, ${k.guestPoolMatched}/${w.guestKvpKeys} guest records enumerated`,
    );

    const ts = this.vsps.timesync;
    await ts.syncNow();
    for (let i = 0; i < w.timeSamples; i++) await ts.sample();
    const deadline = Date.now() + 5000;
    while (ts.echoes < ts.sent && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
    progress(`timesync: 1 SYNC + ${w.timeSamples} samples sent, ${ts.echoes}/${ts.sent} echoed`);
  }

  /** Asks the guest to shut down (it accepts and reports it), then checks the disk and reports. */
  async finish(): Promise<HostReport> {
    this.shutdown.asked = true;
    try {
      const r = await this.vsps.shutdown.shutdown({ action: 'shutdown', message: 'vmbus demo finished' });
      this.shutdown.accepted = r.accepted;
    } catch {
      this.shutdown.accepted = false;
    }
    const summary = this.vsps.summary();
    const offers = this.offers();
    const instances: Record<string, string> = {
      heartbeat: IC_INSTANCE_IDS.heartbeat.toString(),
      shutdown: IC_INSTANCE_IDS.shutdown.toString(),
      timesync: IC_INSTANCE_IDS.timesync.toString(),
      kvp: IC_INSTANCE_IDS.kvp.toString(),
      storage: this.vsps.storage?.instance.toString() ?? '',
    };
    const channels: ChannelReport[] = summary.channels.map((c) => {
      const instance = (instances[c.name] ?? '').toLowerCase();
      const offer = offers.find((o) => o.instance.toLowerCase() === instance);
      return {
        name: c.name,
        type: offer?.type ?? '',
        instance,
        relid: offer?.relid ?? 0,
        packetsIn: c.packetsIn,
        bytesIn: c.bytesIn,
        packetsOut: c.packetsOut,
        bytesOut: c.bytesOut,
        errors: c.errors,
      };
    });
    const hb = this.heartbeat;
    const ts = this.vsps.timesync;
    return {
      channels,
      versions: { ...this.versions },
      heartbeat: {
        rounds: hb.rounds,
        acknowledged: hb.acknowledged,
        outOfOrder: hb.outOfOrder,
        failed: hb.failed,
        nextSequence: this.vsps.heartbeat.sequence.toString(),
        latency: latencyReport(hb.latency.summary()),
      },
      kvp: { ...this.kvp },
      timesync: { sent: ts.sent, echoes: ts.echoes },
      shutdown: { ...this.shutdown },
      storage: {
        io: ioReport(summary.io ?? this.vsps.storage!.io.snapshot()),
        disk: this.checkDisk(),
      },
      peerErrors: [...this.errors.peer],
      callbackErrors: [...this.errors.callback],
    };
  }

  /**
   * Compares what reached the disk with what the workload implies: pair i wrote and then read
   * extent i mod E once, with generation floor(i / E) + 1; so every block of extent e was written
   * and read pairsOnExtent(e) times and holds that generation's pattern (untouched blocks: zeros).
   */
  private checkDisk(): HostReport['storage']['disk'] {
    const w = this.workload;
    const d = this.disk;
    const out = {
      blocksChecked: 0,
      lostWrites: 0,
      duplicatedWrites: 0,
      lostReads: 0,
      duplicatedReads: 0,
      badBlocks: 0,
    };
    const extents = extentCount(w);
    const got = new Uint8Array(w.ioBlocks * w.blockSize);
    const want = new Uint8Array(w.ioBlocks * w.blockSize);
    for (let e = 0; e < extents; e++) {
      const times = pairsOnExtent(w, e);
      const lba = e * w.ioBlocks;
      d.image.read(lba, w.ioBlocks, got, 0);
      if (times > 0) fillPattern(want, 0, lba, w.ioBlocks, w.blockSize, times);
      else want.fill(0);
      for (let b = 0; b < w.ioBlocks; b++) {
        const l = lba + b;
        out.blocksChecked++;
        const wr = d.writes[l]!;
        const rd = d.reads[l]!;
        if (wr < times) out.lostWrites += times - wr;
        else out.duplicatedWrites += wr - times;
        if (rd < times) out.lostReads += times - rd;
        else out.duplicatedReads += rd - times;
        const from = b * w.blockSize;
        for (let i = from; i < from + w.blockSize; i++) {
          if (got[i] !== want[i]) {
            out.badBlocks++;
            break;
          }
        }
      }
    }
    // Blocks past the last whole extent are never addressed.
    for (let l = extents * w.ioBlocks; l < w.blocks; l++) {
      out.duplicatedWrites += d.writes[l]!;
      out.duplicatedReads += d.reads[l]!;
    }
    return out;
  }

  async stop(): Promise<void> {
    await this.vsps.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Host instances (servicing)

/** One host instance: its hypervisor, its VMBus (with the KMCL over it) and the demo's VSPs. */
export interface DemoHostInstance {
  readonly hv: Hypervisor;
  readonly hostBus: BusKmclHost;
  readonly host: DemoHost;
  readonly partitionId: number;
}

/** A host instance saved for the next one: plain data and SharedArrayBuffers only. */
export interface DemoHostInstanceSaved {
  /** The partition (guest RAM and the SynIC link) and the host VMBus image of detachPartition. */
  descriptor: HvPartitionDescriptor;
  image: Uint8Array;
  host: DemoHostSavedState;
}

/** Bytes a saved instance hands over: the VMBus image and the channels' KMCL chunks. */
export function savedStateBytes(saved: DemoHostInstanceSaved): number {
  const v = saved.host.vsps;
  let n = saved.image.length;
  for (const d of [v.heartbeat, v.shutdown, v.timesync, v.kvp, v.storage]) {
    for (const c of d?.channel ?? []) n += c.length;
  }
  return n;
}

/**
 * Saves a host instance: its VSPs (each pauses its channel; requests the guest sends meanwhile
 * wait in the rings) and then the host VMBus, detaching the partition. `pausedAt` (wallMs) is
 * when the instance stopped serving; `hostEnd` is for a same-thread successor.
 */
export async function saveHostInstance(
  instance: DemoHostInstance,
): Promise<{ saved: DemoHostInstanceSaved; hostEnd: HvHostEnd; pausedAt: number; saveMs: number }> {
  const pausedAt = wallMs();
  const t0 = performance.now();
  const host = await instance.host.save();
  const detached = await instance.hostBus.detachPartition(instance.partitionId);
  return {
    saved: { descriptor: detached.descriptor, image: detached.image, host },
    hostEnd: detached.hostEnd,
    pausedAt,
    saveMs: performance.now() - t0,
  };
}

export interface AdoptOptions {
  /** Same thread: the scheduler the partition runs on and the detached host end it replaces. */
  sameThread?: { scheduler: HvScheduler; replacing: HvHostEnd };
  /** The disk to serve instead of one over the saved buffers (tests pass a faulty one). */
  disk?: CountingDisk;
}

/**
 * A new host instance takes over from a saved one: a new Hypervisor and BusKmclHost adopt the
 * partition (synchronously, before anything is awaited), a new KMCL provider, the VSPs restored
 * from their saved state, the bus's restore finished, and the channels started again. Then one
 * heartbeat round checks the restored ICs. `resumedAt` (wallMs) is when it served again.
 */
export async function adoptHostInstance(
  saved: DemoHostInstanceSaved,
  workload: DemoWorkload,
  errors: DemoErrorLog,
  options: AdoptOptions = {},
): Promise<{ instance: DemoHostInstance; restoreMs: number; resumedAt: number }> {
  const t0 = performance.now();
  const same = options.sameThread;
  const hv =
    same === undefined
      ? new Hypervisor({ transport: 'cross-thread' })
      : new Hypervisor({ transport: 'same-thread', scheduler: same.scheduler });
  const hostBus = new BusKmclHost(hv);
  hostBus.adoptPartition(
    saved.descriptor,
    saved.image,
    same === undefined ? {} : { replacing: same.replacing },
  );
  const partitionId = saved.descriptor.partitionId;
  const provider = KmclProvider.forHost(hostBus, errors.options);
  const host = new DemoHost(provider, workload, offersOf(hostBus), errors, {
    saved: saved.host,
    ...(options.disk === undefined ? {} : { disk: options.disk }),
  });
  await hostBus.finishRestore(partitionId);
  host.resume();
  const resumedAt = wallMs();
  const restoreMs = performance.now() - t0;
  await host.checkRestored();
  return { instance: { hv, hostBus, host, partitionId }, restoreMs, resumedAt };
}

/** Stops a host instance's VSPs (revoking their offers) and closes its bus and partitions. */
export async function closeHostInstance(instance: DemoHostInstance): Promise<void> {
  await instance.host.stop();
  await instance.hostBus.dispose();
  instance.hv.close();
}
