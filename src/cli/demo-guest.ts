// The guest half of `vmbus demo`: the child partition's VSCs (heartbeat, shutdown, time sync, KVP
// and the synthetic SCSI disk driver) on a guest KMCL provider, and the guest's part of the
// workload: block I/O with verification. `queueDepth` lanes each take the next write/verify pair
// (pair i: extent i mod E, generation floor(i / E) + 1), write the pattern and read it back with
// readVerify, so up to queueDepth requests are in flight at once while the host's heartbeats, KVP
// and time messages share the bus. Every request is given an id and its completions are counted.
// With --servicing the guest announces the points of its I/O at which the host is restarted, and
// records which requests were in flight while no host ran, to check their fate at the end; its
// drivers, channels and VMBus connection stay as they are throughout.
// It runs in the guest's worker thread (default) or on the main thread (--same-thread).

import {
  type GuestVscs,
  KVP_POOL_EXTERNAL,
  KVP_POOL_GUEST,
  KvpPools,
  startGuestVscs,
} from '../devices/index.js';
import type { KmclProvider } from '../kmcl/index.js';
import type { PageAllocator } from '../memory/allocator.js';
import type { DemoErrorLog } from './demo-host.js';
import { guestKvpRecord, hostKvpValue, ioReport } from './demo-host.js';
import {
  type ChannelReport,
  type DemoWorkload,
  errorText,
  extentCount,
  fillPattern,
  type GuestReport,
  pairCount,
} from './demo-protocol.js';

export class DemoGuest {
  readonly vscs: GuestVscs;
  readonly pools = new KvpPools();
  private version = '';
  private inquiry = '';
  private blockSize = 0;
  private blockCount = 0;
  private shutdownRequests = 0;
  /** Completions seen per request id (2i: the write of pair i, 2i + 1: its verifying read). */
  private completions = new Uint8Array(0);
  private failed = 0;
  private firstError: string | null = null;
  private elapsedMs = 0;
  private stopping = false;
  /** Request ids issued and not yet settled. */
  private readonly inFlight = new Set<number>();
  /** Servicing: the requests in flight at each probe (taken while the host was away). */
  private readonly probes: number[][] = [];
  private longestRequestMs = 0;

  constructor(
    provider: KmclProvider,
    allocator: PageAllocator,
    readonly workload: DemoWorkload,
    private readonly errors: DemoErrorLog,
  ) {
    for (let i = 0; i < workload.guestKvpKeys; i++) {
      const r = guestKvpRecord(i);
      this.pools.set(KVP_POOL_GUEST, r.key, r.value);
    }
    this.vscs = startGuestVscs(provider, {
      kvp: { pools: this.pools },
      storage: { allocator, queueDepth: workload.queueDepth },
    });
    this.vscs.shutdown.events.on((e) => {
      if (e.kind === 'shutdown') this.shutdownRequests++;
    });
  }

  /** Waits until every driver attached and negotiated; asks the disk who it is and how big. */
  async ready(): Promise<string> {
    const r = await this.vscs.ready();
    const storage = this.vscs.storage!;
    if (r.storage !== null) this.version = `${r.storage.version >>> 8}.${r.storage.version & 0xff}`;
    const inq = await storage.inquiry();
    const geo = await storage.readCapacity();
    this.inquiry = `${inq.vendor} ${inq.product} ${inq.revision}`.trim();
    this.blockSize = geo.blockSize;
    this.blockCount = geo.blockCount;
    return `disk "${this.inquiry}": ${geo.blockCount} blocks of ${geo.blockSize} B, vstor ${this.version}`;
  }

  /**
   * Servicing: the storage requests in flight now (asked while no host runs); remembered, so the
   * report can tell whether each of them completed exactly once.
   */
  probe(): number {
    this.probes.push([...this.inFlight]);
    return this.inFlight.size;
  }

  /**
   * The block workload: ios / 2 write + verify pairs with up to queueDepth requests in flight.
   * `milestones` (pairs finished, ascending): `onMilestone(index, done)` is called as the
   * workload passes each (the host restarts of --servicing); the workload itself goes on.
   */
  async run(
    progress: (text: string) => void,
    milestones: readonly number[] = [],
    onMilestone: (index: number, done: number) => void = () => {},
  ): Promise<void> {
    const w = this.workload;
    const storage = this.vscs.storage!;
    if (this.blockSize !== w.blockSize || this.blockCount !== w.blocks) {
      throw new Error(
        `the disk is ${this.blockCount} x ${this.blockSize} B, the workload expects ${w.blocks} x ${w.blockSize} B`,
      );
    }
    const pairs = pairCount(w);
    const extents = extentCount(w);
    this.completions = new Uint8Array(pairs * 2);
    // Pairs on one extent run in order (a pair waits for the previous one on its extent), so a
    // verifying read always sees its own generation even when lanes overtake one another.
    const busy: (Promise<void> | undefined)[] = new Array(extents);
    const step = Math.max(1, Math.ceil(pairs / 5));
    let next = 0;
    let done = 0;
    let milestone = 0;
    const t0 = performance.now();
    const lane = async (): Promise<void> => {
      const buf = new Uint8Array(w.ioBlocks * w.blockSize);
      for (;;) {
        const i = next++;
        if (i >= pairs || this.stopping) return;
        const e = i % extents;
        const before = busy[e];
        let release!: () => void;
        busy[e] = new Promise<void>((r) => {
          release = r;
        });
        if (before !== undefined) await before;
        try {
          await this.pair(i, e * w.ioBlocks, Math.floor(i / extents) + 1, buf);
        } finally {
          release();
        }
        done++;
        while (milestone < milestones.length && done >= milestones[milestone]!)
          onMilestone(milestone++, done);
        if (done % step === 0 || done === pairs) {
          const s = storage.io;
          progress(
            `storage: ${done}/${pairs} write+verify pairs, ${s.verified} verified, ${s.mismatches} mismatched, ${s.errors} errors`,
          );
        }
      }
    };
    // One request per lane in flight: queueDepth lanes, fewer when the disk has fewer extents.
    const lanes = Math.max(1, Math.min(w.queueDepth, extents));
    await Promise.all(Array.from({ length: lanes }, lane));
    this.elapsedMs = performance.now() - t0;
  }

  /** Writes pair i's pattern at `lba` and reads it back; counts each request's completions. */
  private async pair(i: number, lba: number, generation: number, buf: Uint8Array): Promise<void> {
    const w = this.workload;
    const storage = this.vscs.storage!;
    fillPattern(buf, 0, lba, w.ioBlocks, w.blockSize, generation);
    if (!(await this.request(2 * i, () => storage.write(lba, buf)))) return;
    await this.request(2 * i + 1, () => storage.readVerify(lba, buf));
  }

  /** One request with id `id`: counted in flight until it settles, then counted as completed. */
  private async request(id: number, issue: () => Promise<unknown>): Promise<boolean> {
    this.inFlight.add(id);
    const t0 = performance.now();
    try {
      await issue();
      return true;
    } catch (e) {
      this.fail(e);
      return false;
    } finally {
      this.inFlight.delete(id);
      const c = this.completions[id]!;
      if (c < 255) this.completions[id] = c + 1;
      const ms = performance.now() - t0;
      if (ms > this.longestRequestMs) this.longestRequestMs = ms;
    }
  }

  private fail(e: unknown): void {
    this.failed++;
    this.firstError ??= errorText(e);
  }

  report(): GuestReport {
    const s = this.vscs.summary();
    const channels: ChannelReport[] = s.channels.map((c) => ({
      name: c.name,
      type: '',
      instance: '',
      relid: 0,
      packetsIn: c.packetsIn,
      bytesIn: c.bytesIn,
      packetsOut: c.packetsOut,
      bytesOut: c.bytesOut,
      errors: c.errors,
    }));
    let once = 0;
    let never = 0;
    let twice = 0;
    for (const c of this.completions) {
      if (c === 1) once++;
      else if (c === 0) never++;
      else twice++;
    }
    const w = this.workload;
    let externalMatched = 0;
    for (let i = 0; i < w.kvpKeys; i++) {
      if (this.pools.get(KVP_POOL_EXTERNAL, `DemoKey${i}`) === hostKvpValue(i)) externalMatched++;
    }
    const ts = this.vscs.timesync;
    const last = this.vscs.shutdown.lastRequest;
    let servicingLost = 0;
    let servicingDuplicated = 0;
    for (const probe of this.probes) {
      for (const id of probe) {
        const c = this.completions[id]!;
        if (c === 0) servicingLost++;
        else if (c > 1) servicingDuplicated++;
      }
    }
    return {
      channels,
      heartbeat: {
        beats: this.vscs.heartbeat.beats,
        lastSequence: this.vscs.heartbeat.lastSequence?.toString() ?? null,
      },
      timesync: { syncs: ts.syncs, samples: ts.samples, offsetMs: ts.clockOffsetMs },
      kvp: {
        externalExpected: w.kvpKeys,
        externalMatched,
        externalPresent: this.pools.entries(KVP_POOL_EXTERNAL).length,
      },
      shutdown: {
        requests: this.shutdownRequests,
        action: last?.action ?? null,
        accepted: last?.accepted ?? false,
      },
      storage: {
        version: this.version,
        inquiry: this.inquiry,
        blockSize: this.blockSize,
        blockCount: this.blockCount,
        requests: this.completions.length,
        completedOnce: once,
        neverCompleted: never,
        completedTwice: twice,
        failed: this.failed,
        firstError: this.firstError,
        elapsedMs: this.elapsedMs,
        io: ioReport(s.io ?? this.vscs.storage!.io.snapshot()),
      },
      servicing: {
        inFlight: this.probes.map((p) => p.length),
        lost: servicingLost,
        duplicated: servicingDuplicated,
        longestRequestMs: this.longestRequestMs,
      },
      peerErrors: [...this.errors.peer],
      callbackErrors: [...this.errors.callback],
    };
  }

  /** Stops the drivers (a workload still running ends after its requests in flight). */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.vscs.stop();
  }
}
