// What the two halves of `vmbus demo` agree on without talking: the workload (plain numbers both
// sides receive), the block pattern the guest writes and both sides check, the order in which the
// guest's write/verify pairs walk the disk (so the host can work out how often each block must have
// been written and read), where in the block I/O the host restarts happen with --servicing, and
// the plain-data reports and worker messages that cross to the main thread. Nothing here holds a
// channel or a provider.

/** The workload of one demo run (numbers only: it is postMessage'd to both workers). */
export interface DemoWorkload {
  /** Blocks on the host's disk. */
  readonly blocks: number;
  /** Bytes per block. */
  readonly blockSize: number;
  /** Blocks one request transfers. */
  readonly ioBlocks: number;
  /** Storage requests: ios / 2 writes, each followed by a verifying read of the same blocks. */
  readonly ios: number;
  /** Storage requests the guest keeps in flight at most. */
  readonly queueDepth: number;
  /** Heartbeat rounds the host runs (during the block I/O). */
  readonly heartbeats: number;
  /** KVP records the host writes into the guest's external pool and reads back. */
  readonly kvpKeys: number;
  /** KVP records the guest keeps in its own pool for the host to enumerate. */
  readonly guestKvpKeys: number;
  /** Time samples the host sends after its first SYNC. */
  readonly timeSamples: number;
}

export const DEFAULT_WORKLOAD: DemoWorkload = Object.freeze({
  blocks: 16_384,
  blockSize: 512,
  ioBlocks: 8,
  ios: 200_000,
  queueDepth: 32,
  heartbeats: 2000,
  kvpKeys: 64,
  guestKvpKeys: 8,
  timeSamples: 20,
});

/** Write/verify pairs in the workload. */
export function pairCount(w: DemoWorkload): number {
  return Math.floor(w.ios / 2);
}

/** Extents (runs of ioBlocks blocks) the pairs cycle through. */
export function extentCount(w: DemoWorkload): number {
  return Math.floor(w.blocks / w.ioBlocks);
}

/** How many pairs touch extent `e` (pair i touches extent i mod extentCount). */
export function pairsOnExtent(w: DemoWorkload, e: number): number {
  const n = pairCount(w);
  const extents = extentCount(w);
  return Math.floor(n / extents) + (e < n % extents ? 1 : 0);
}

/**
 * With --servicing N: the number of write/verify pairs the guest has finished when it asks for
 * the k-th host restart (k = 1..N), spread evenly so that every restart lands mid-traffic.
 */
export function servicingPoints(w: DemoWorkload, cycles: number): number[] {
  const pairs = pairCount(w);
  return Array.from({ length: cycles }, (_, k) => Math.max(1, Math.floor(((k + 1) * pairs) / (cycles + 1))));
}

/** Milliseconds since the epoch with sub-millisecond resolution, comparable across threads. */
export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Fills `blocks` blocks of `blockSize` bytes at `buf[offset]` with the pattern of (lba, generation):
 * each block starts with its LBA and the generation (u32 LE each) and continues with a xorshift
 * stream seeded from both, so a block written to the wrong place, a stale generation or a torn
 * transfer all show. Allocates nothing.
 */
export function fillPattern(
  buf: Uint8Array,
  offset: number,
  lba: number,
  blocks: number,
  blockSize: number,
  generation: number,
): void {
  for (let b = 0; b < blocks; b++) {
    const base = offset + b * blockSize;
    const l = lba + b;
    let x = (Math.imul(l + 1, 0x9e3779b1) ^ Math.imul(generation + 1, 0x85ebca77)) | 1;
    for (let i = 0; i < blockSize; i += 4) {
      let word: number;
      if (i === 0) word = l;
      else if (i === 4) word = generation;
      else {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        word = x;
      }
      buf[base + i] = word & 0xff;
      buf[base + i + 1] = (word >>> 8) & 0xff;
      buf[base + i + 2] = (word >>> 16) & 0xff;
      buf[base + i + 3] = (word >>> 24) & 0xff;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reports (plain data)

export interface ChannelReport {
  /** Driver name: heartbeat, shutdown, timesync, kvp, storage. */
  name: string;
  /** Offer interface type and instance GUIDs. */
  type: string;
  instance: string;
  /** The channel's relid (0 when the offer was not found). */
  relid: number;
  /** Payload packets and bytes as this side's driver counted them. */
  packetsIn: number;
  bytesIn: number;
  packetsOut: number;
  bytesOut: number;
  errors: number;
}

export interface LatencyReport {
  count: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface IoReport {
  reads: number;
  writes: number;
  others: number;
  bytesRead: number;
  bytesWritten: number;
  verified: number;
  mismatches: number;
  errors: number;
  maxInFlight: number;
  latency: LatencyReport;
}

export interface HostReport {
  channels: ChannelReport[];
  /** Negotiated versions, e.g. heartbeat "3.0/3.0" (framework/message), storage "6.2". */
  versions: Record<string, string>;
  heartbeat: {
    rounds: number;
    acknowledged: number;
    /** Rounds whose answer did not continue the sequence (sent != previous ack, ack != sent + 1). */
    outOfOrder: number;
    failed: number;
    /** The sequence number the host will send next (decimal). */
    nextSequence: string;
    latency: LatencyReport;
  };
  kvp: {
    written: number;
    readBack: number;
    matched: number;
    mismatched: number;
    /** The host's enumeration of its external pool listed exactly what it wrote, in order. */
    enumerationMatched: boolean;
    /** Records of the guest's own pool the host enumerated, and how many were as expected. */
    guestPoolRead: number;
    guestPoolMatched: number;
  };
  timesync: { sent: number; echoes: number };
  shutdown: { asked: boolean; accepted: boolean };
  storage: {
    io: IoReport;
    /** Per-block counts of what reached the host's disk, against what the workload implies. */
    disk: {
      blocksChecked: number;
      lostWrites: number;
      duplicatedWrites: number;
      lostReads: number;
      duplicatedReads: number;
      /** Blocks whose final contents were not the last generation written. */
      badBlocks: number;
    };
  };
  peerErrors: string[];
  callbackErrors: string[];
}

export interface GuestReport {
  channels: ChannelReport[];
  heartbeat: { beats: number; lastSequence: string | null };
  timesync: { syncs: number; samples: number; offsetMs: number | null };
  kvp: { externalExpected: number; externalMatched: number; externalPresent: number };
  shutdown: { requests: number; action: string | null; accepted: boolean };
  storage: {
    version: string;
    inquiry: string;
    blockSize: number;
    blockCount: number;
    requests: number;
    /** Requests whose promise settled exactly once / never / more than once. */
    completedOnce: number;
    neverCompleted: number;
    completedTwice: number;
    failed: number;
    firstError: string | null;
    elapsedMs: number;
    io: IoReport;
  };
  /** With --servicing: the storage requests in flight while the host was away, and their fate. */
  servicing: {
    /** Requests in flight at each probe (one probe per host restart, taken while no host ran). */
    inFlight: number[];
    /** Of those requests: never completed, completed more than once. */
    lost: number;
    duplicated: number;
    /** The longest any storage request took (the pause a host restart caused shows here). */
    longestRequestMs: number;
  };
  peerErrors: string[];
  callbackErrors: string[];
}

/** One host restart of --servicing, as the main thread measured it. */
export interface ServicingCycle {
  /** 1-based. */
  cycle: number;
  /** Write/verify pairs the guest had finished when it asked for the restart. */
  atPair: number;
  /** Storage requests the guest had in flight while the host was away. */
  inFlight: number;
  /** The old host instance: from pausing its channels to the partition detached. */
  saveMs: number;
  /** The new host instance: from adopting the partition to its channels started again. */
  restoreMs: number;
  /** No host served the partition: from the old instance's pause to the new one's start. */
  awayMs: number;
  /** Bytes handed over: the saved host VMBus image and every channel's KMCL chunks. */
  stateBytes: number;
}

// ---------------------------------------------------------------------------------------------
// Worker messages

export interface DemoWorkerData {
  readonly kind: 'vmbus-demo';
  readonly role: 'host' | 'guest';
  readonly workload: DemoWorkload;
  /** Guest only: the KmclGuestDescriptor from the host (SharedArrayBuffers and numbers). */
  readonly descriptor?: unknown;
  /** Host restarts (--servicing N; 0 without). The guest asks for them at servicingPoints. */
  readonly servicing?: number;
  /** Host only: a later host instance, which waits for an 'adopt' command instead of starting one. */
  readonly standby?: boolean;
}

/** Main thread -> worker. */
export type DemoCommand =
  | { readonly type: 'run' }
  | { readonly type: 'finish' }
  | { readonly type: 'stop' }
  /** Host: save the VSPs and detach the partition; the worker is terminated afterwards. */
  | { readonly type: 'save' }
  /** Standby host: take over from the saved instance (a DemoHostInstanceSaved, plain data). */
  | { readonly type: 'adopt'; readonly saved: unknown }
  /** Guest: how many storage requests are in flight now (asked while no host runs). */
  | { readonly type: 'probe' };

/** Worker -> main thread. */
export type DemoEvent =
  | { readonly type: 'descriptor'; readonly descriptor: unknown }
  | { readonly type: 'ready'; readonly text: string }
  | { readonly type: 'progress'; readonly text: string }
  | { readonly type: 'ran' }
  | { readonly type: 'report'; readonly report: HostReport | GuestReport }
  | { readonly type: 'stopped'; readonly error: string | null }
  | { readonly type: 'error'; readonly message: string }
  /** Guest: its block I/O reached servicing point `index` (0-based) with `done` pairs finished. */
  | { readonly type: 'milestone'; readonly index: number; readonly done: number }
  | { readonly type: 'probed'; readonly inFlight: number }
  /** Standby host: loaded, waiting for 'adopt'. */
  | { readonly type: 'standby' }
  /** Host: saved and detached; `pausedAt` (wallMs) is when it stopped serving. */
  | { readonly type: 'saved'; readonly saved: unknown; readonly saveMs: number; readonly pausedAt: number }
  /** New host: serving again since `resumedAt` (wallMs); its heartbeat check is done. */
  | {
      readonly type: 'restored';
      readonly restoreMs: number;
      readonly resumedAt: number;
      readonly text: string;
    };

/** One line for an error of any kind. */
export function errorText(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}
