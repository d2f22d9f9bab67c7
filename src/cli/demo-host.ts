// The host half of `vmbus demo`: the root partition's VSPs (heartbeat, shutdown, time sync, KVP and
// a synthetic SCSI controller over an in-memory disk) on a host KMCL provider, and the host's part
// of the workload: heartbeat rounds, a KVP exchange checked value by value, a time SYNC and
// samples, and at the end a shutdown request. The disk counts, per block, how often the guest's
// requests reached it, so the host can tell lost and duplicated requests from the workload alone.
// It runs in the host's worker thread (default) or on the main thread (--same-thread).

import {
  type DiskBackend,
  type HostVsps,
  HV_S_OK,
  IC_INSTANCE_IDS,
  KVP_POOL_EXTERNAL,
  KVP_POOL_GUEST,
  LatencySamples,
  MemoryDisk,
  type StorageIoSnapshot,
  startHostVsps,
} from '../devices/index.js';
import type { KmclSystem } from '../kmcl/bus-port.js';
import type { KmclProvider, KmclProviderOptions } from '../kmcl/index.js';
import {
  type ChannelReport,
  type DemoWorkload,
  errorText,
  extentCount,
  fillPattern,
  type HostReport,
  type IoReport,
  pairsOnExtent,
} from './demo-protocol.js';

/** An offer as the host's bus recorded it. */
export interface OfferInfo {
  relid: number;
  type: string;
  instance: string;
}

/** The offers of a system's first guest partition, from its VMBus server's state. */
export function offersOf(sys: KmclSystem): () => OfferInfo[] {
  return () => {
    const partition = sys.hostBus.partitions()[0];
    const server = partition === undefined ? undefined : sys.hostBus.server(partition.id);
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
}

/** A disk that counts, per block, the reads and writes that reached it. */
export class CountingDisk implements DiskBackend {
  readonly image: MemoryDisk;
  readonly reads: Uint32Array;
  readonly writes: Uint32Array;

  constructor(blockSize: number, blockCount: number) {
    this.image = new MemoryDisk({ blockSize, blockCount });
    this.reads = new Uint32Array(blockCount);
    this.writes = new Uint32Array(blockCount);
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

/** The host's drivers and its side of the workload. */
export class DemoHost {
  readonly vsps: HostVsps;
  readonly disk: CountingDisk;
  private readonly versions: Record<string, string> = {};
  private readonly heartbeat = {
    rounds: 0,
    acknowledged: 0,
    outOfOrder: 0,
    failed: 0,
    latency: new LatencySamples(),
  };
  private readonly kvp = {
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
    /** The disk to serve (default a new CountingDisk of the workload's size; tests pass a faulty one). */
    disk?: CountingDisk,
  ) {
    this.disk = disk ?? new CountingDisk(workload.blockSize, workload.blocks);
    this.vsps = startHostVsps(provider, { storage: { disk: this.disk } });
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
    const hb = this.vsps.heartbeat;
    const n = this.workload.heartbeats;
    const step = Math.max(1, Math.ceil(n / 4));
    let expectedSent = hb.sequence;
    for (let i = 0; i < n; i++) {
      this.heartbeat.rounds++;
      try {
        const r = await hb.heartbeat();
        this.heartbeat.latency.add(r.latencyMs);
        if (r.sent !== expectedSent || r.acked !== r.sent + 1n || r.status !== HV_S_OK) {
          this.heartbeat.outOfOrder++;
        } else {
          this.heartbeat.acknowledged++;
        }
        expectedSent = r.acked;
      } catch {
        this.heartbeat.failed++;
      }
      if ((i + 1) % step === 0 || i + 1 === n) {
        progress(`heartbeat: ${this.heartbeat.acknowledged}/${n} rounds acknowledged in sequence`);
      }
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
