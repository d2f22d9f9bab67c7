// What every device driver here shares: getting the KMCL table from a partition's provider (the
// interface query a Windows driver makes), the drivers' typed error, a small typed event hub, and
// the counters the demo prints (packets and bytes each way per channel, I/O operations, verified
// reads, errors, latency samples). Nothing here touches a channel; the drivers do.

import {
  KMCL_CLIENT_INTERFACE_TYPE,
  type KMCL_CLIENT_INTERFACE_V1,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  type KmclProvider,
  NT_SUCCESS,
  type NTSTATUS,
  ntStatusName,
  queryInterface,
  type VMBCHANNEL,
} from '../kmcl/index.js';

// ---------------------------------------------------------------------------------------------
// Errors

export type DeviceDriverErrorCode =
  /** A KMCL call made while starting the driver failed (the status is in the message). */
  | 'start-failed'
  /** The driver is not started, was stopped, or its channel is not (yet) open and ready. */
  | 'not-ready'
  /** The channel closed (or the driver stopped) while the operation was outstanding. */
  | 'closed'
  /** The peer did not answer in time. */
  | 'timeout'
  /** The peer answered with bytes the protocol refuses (the WireError is the cause). */
  | 'protocol'
  /** The two ends share no protocol version. */
  | 'negotiation-failed'
  /** A KMCL send failed (the status is in `status`). */
  | 'send-failed'
  /** The device answered an I/O with an error status (see StorageIoError). */
  | 'io-error'
  /** Servicing: the KMCL refused to save the channel (the driver carries on with it). */
  | 'save-failed'
  /** Servicing: a saved state that does not fit this driver, or the KMCL refused to restore it. */
  | 'restore-failed';

/** The error every driver operation rejects with. */
export class DeviceDriverError extends Error {
  override readonly name: string = 'DeviceDriverError';
  constructor(
    readonly code: DeviceDriverErrorCode,
    message: string,
    /** The NTSTATUS behind the failure, when there is one. */
    readonly status: NTSTATUS | null = null,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Throws DeviceDriverError('start-failed') unless `status` is a success. */
export function checkStart(status: NTSTATUS, what: string): void {
  if (!NT_SUCCESS(status)) {
    throw new DeviceDriverError('start-failed', `${what} failed: ${ntStatusName(status)}`, status);
  }
}

/**
 * VmbChannelEnable + VmbChannelStart of a configured server channel (the offer goes out); on a
 * failed Enable the channel is cleaned up and a DeviceDriverError thrown.
 */
export function enableAndStartServerChannel(S: KMCL_SERVER_INTERFACE_V1, ch: VMBCHANNEL): void {
  try {
    checkStart(S.VmbChannelEnable(ch), 'VmbChannelEnable');
  } catch (e) {
    S.VmbChannelCleanup(ch);
    throw e;
  }
  S.VmbChannelStart(ch);
}

// ---------------------------------------------------------------------------------------------
// The interface query

/** KMCL_SERVER_INTERFACE_V1 of a host provider (a DeviceDriverError if the query fails). */
export function queryServerTable(provider: KmclProvider): KMCL_SERVER_INTERFACE_V1 {
  const r = queryInterface<KMCL_SERVER_INTERFACE_V1>(
    provider,
    KMCL_SERVER_INTERFACE_TYPE,
    KMCL_SERVER_INTERFACE_V1_SIZE,
    KMCL_SERVER_INTERFACE_VERSION_V1,
  );
  checkStart(r.status, 'query for KMCL_SERVER_INTERFACE_V1');
  return r.Interface!;
}

/** KMCL_CLIENT_INTERFACE_V1 of a (guest) provider. */
export function queryClientTable(provider: KmclProvider): KMCL_CLIENT_INTERFACE_V1 {
  const r = queryInterface<KMCL_CLIENT_INTERFACE_V1>(
    provider,
    KMCL_CLIENT_INTERFACE_TYPE,
    KMCL_CLIENT_INTERFACE_V1_SIZE,
    KMCL_CLIENT_INTERFACE_VERSION_V1,
  );
  checkStart(r.status, 'query for KMCL_CLIENT_INTERFACE_V1');
  return r.Interface!;
}

// ---------------------------------------------------------------------------------------------
// Events

/** A typed event hub: listeners, and a promise for the next event of a kind. */
export class EventHub<T extends { kind: string }> {
  private readonly listeners = new Set<(event: T) => void>();

  /** Adds a listener; returns the function that removes it. */
  on(listener: (event: T) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /**
   * Delivers an event. A listener that throws does not stop the driver: its error is rethrown
   * from a microtask (a bug in the application must be loud, not swallowed).
   */
  emit(event: T): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  /** The next event of `kind` (and matching `filter`); with `timeoutMs`, a 'timeout' rejection. */
  next<K extends T['kind']>(
    kind: K,
    filter?: (event: Extract<T, { kind: K }>) => boolean,
    timeoutMs = 0,
  ): Promise<Extract<T, { kind: K }>> {
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | null = null;
      const off = this.on((e) => {
        if (e.kind !== kind) return;
        const m = e as Extract<T, { kind: K }>;
        if (filter !== undefined && !filter(m)) return;
        off();
        if (timer !== null) clearTimeout(timer);
        resolve(m);
      });
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          off();
          reject(new DeviceDriverError('timeout', `no '${kind}' event within ${timeoutMs} ms`));
        }, timeoutMs);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Deferred

/** A promise with its settle functions (and whether it settled). */
export class Deferred<T> {
  readonly promise: Promise<T>;
  settled = false;
  private res!: (value: T) => void;
  private rej!: (reason: unknown) => void;

  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.res = resolve;
      this.rej = reject;
    });
    // Nobody may be waiting yet; a rejection is still reported to whoever awaits later.
    this.promise.catch(() => {});
  }

  resolve(value: T): void {
    if (this.settled) return;
    this.settled = true;
    this.res(value);
  }

  reject(reason: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.rej(reason);
  }
}

// ---------------------------------------------------------------------------------------------
// Counters

/** Traffic of one channel as its driver sees it: payload packets and bytes each way, refusals. */
export class ChannelCounters {
  packetsIn = 0;
  bytesIn = 0;
  packetsOut = 0;
  bytesOut = 0;
  /** Messages refused (bad bytes from the peer), failed sends, timeouts. */
  errors = 0;

  constructor(
    /** The channel's name in summaries, e.g. "heartbeat". */
    readonly name: string,
  ) {}

  noteIn(bytes: number): void {
    this.packetsIn++;
    this.bytesIn += bytes;
  }

  noteOut(bytes: number): void {
    this.packetsOut++;
    this.bytesOut += bytes;
  }

  /** Servicing: continues from counts a previous instance of the driver saved (its snapshot). */
  restore(saved: ChannelCountersSnapshot): void {
    this.packetsIn = saved.packetsIn;
    this.bytesIn = saved.bytesIn;
    this.packetsOut = saved.packetsOut;
    this.bytesOut = saved.bytesOut;
    this.errors = saved.errors;
  }

  snapshot(): ChannelCountersSnapshot {
    return {
      name: this.name,
      packetsIn: this.packetsIn,
      bytesIn: this.bytesIn,
      packetsOut: this.packetsOut,
      bytesOut: this.bytesOut,
      errors: this.errors,
    };
  }
}

export interface ChannelCountersSnapshot {
  name: string;
  packetsIn: number;
  bytesIn: number;
  packetsOut: number;
  bytesOut: number;
  errors: number;
}

export interface LatencySummary {
  /** Samples recorded in total (the statistics cover the last `capacity` of them). */
  count: number;
  minMs: number;
  maxMs: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
}

/** The last `capacity` latency samples in a fixed ring (recording allocates nothing). */
export class LatencySamples {
  private readonly ring: Float64Array;
  private total = 0;

  constructor(readonly capacity = 4096) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError('capacity must be a positive integer');
    this.ring = new Float64Array(capacity);
  }

  get count(): number {
    return this.total;
  }

  add(ms: number): void {
    this.ring[this.total % this.capacity] = ms;
    this.total++;
  }

  /** The samples as plain data (oldest first), to carry them to another instance. */
  save(): LatencySamplesState {
    const n = Math.min(this.total, this.capacity);
    const samples: number[] = [];
    for (let i = this.total - n; i < this.total; i++) samples.push(this.ring[i % this.capacity]!);
    return { total: this.total, samples };
  }

  /** Continues from saved samples (the newest `capacity` of them are kept). */
  restore(saved: LatencySamplesState): void {
    const keep = saved.samples.slice(-this.capacity);
    const first = saved.total - keep.length;
    if (!Number.isSafeInteger(first) || first < 0) throw new RangeError('bad saved latency samples');
    this.total = saved.total;
    for (let i = 0; i < keep.length; i++) this.ring[(first + i) % this.capacity] = keep[i]!;
  }

  summary(): LatencySummary {
    const n = Math.min(this.total, this.capacity);
    if (n === 0) return { count: 0, minMs: 0, maxMs: 0, meanMs: 0, p50Ms: 0, p99Ms: 0 };
    const s = this.ring.slice(0, n).sort();
    let sum = 0;
    for (let i = 0; i < n; i++) sum += s[i]!;
    const at = (q: number): number => s[Math.min(n - 1, Math.floor(q * n))]!;
    return {
      count: this.total,
      minMs: s[0]!,
      maxMs: s[n - 1]!,
      meanMs: sum / n,
      p50Ms: at(0.5),
      p99Ms: at(0.99),
    };
  }
}

/** LatencySamples as plain data. */
export interface LatencySamplesState {
  /** Samples recorded in total. */
  total: number;
  /** The last ones, oldest first (at most the capacity). */
  samples: number[];
}

/** Block I/O as one end of a storage channel sees it. */
export class StorageIoCounters {
  reads = 0;
  writes = 0;
  /** Other SCSI commands (INQUIRY, READ CAPACITY, ...). */
  others = 0;
  bytesRead = 0;
  bytesWritten = 0;
  /** Reads checked against what was written, and how many of them differed. */
  verified = 0;
  mismatches = 0;
  /** Requests that ended in an error status. */
  errors = 0;
  inFlight = 0;
  maxInFlight = 0;
  readonly latency = new LatencySamples();

  /** The counters as plain data, to carry them to another instance of the driver. */
  save(): StorageIoCountersState {
    return { ...this.counts(), latencySamples: this.latency.save() };
  }

  /** Continues from counters a previous instance saved. */
  restore(saved: StorageIoCountersState): void {
    for (const k of STORAGE_IO_COUNTS) this[k] = saved[k];
    this.latency.restore(saved.latencySamples);
  }

  snapshot(): StorageIoSnapshot {
    return { ...this.counts(), latency: this.latency.summary() };
  }

  private counts(): Omit<StorageIoSnapshot, 'latency'> {
    const out = {} as Omit<StorageIoSnapshot, 'latency'>;
    for (const k of STORAGE_IO_COUNTS) out[k] = this[k];
    return out;
  }
}

/** The plain counters of StorageIoCounters (everything but the latency samples). */
export const STORAGE_IO_COUNTS = [
  'reads',
  'writes',
  'others',
  'bytesRead',
  'bytesWritten',
  'verified',
  'mismatches',
  'errors',
  'inFlight',
  'maxInFlight',
] as const satisfies readonly (keyof Omit<StorageIoSnapshot, 'latency'>)[];

/** StorageIoCounters as plain data. */
export interface StorageIoCountersState extends Omit<StorageIoSnapshot, 'latency'> {
  latencySamples: LatencySamplesState;
}

export interface StorageIoSnapshot {
  reads: number;
  writes: number;
  others: number;
  bytesRead: number;
  bytesWritten: number;
  verified: number;
  mismatches: number;
  errors: number;
  inFlight: number;
  maxInFlight: number;
  latency: LatencySummary;
}
