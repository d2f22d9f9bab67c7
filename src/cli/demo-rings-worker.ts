// The two ends of the `vmbus demo --rings` channel, and the worker entry that runs one of them in its own
// thread. The guest sends inband requests (COMPLETION_REQUESTED, transaction ids 1..N) on the
// guest-to-host ring; the host answers each with a completion carrying a small payload on the
// host-to-guest ring. Each end is driven only by its rings and by channel signals: it signals the
// other side exactly when a ring says so (commit() of a writer: empty -> non-empty; commit() of a
// reader: pending_send_sz crossed), through the simulated SynIC (src/hv/): the guest with
// HvSignalEvent on the channel's connection id, the host by setting the channel's event flag.
// Everything received is checked: ids exactly once and in order, payload bytes, packet types.

import { parentPort, workerData } from 'node:worker_threads';
import { attachHvGuest, attachHvHost, type HvEnd, type HvLinkDescriptor } from '../hv/index.js';
import { GuestMemory } from '../memory/guest-memory.js';
import {
  channelRingsFromGpadl,
  RING_WRITE_FULL,
  RING_WRITE_OK,
  RingReader,
  type RingReader as RingReaderType,
  RingWriter,
  type RingWriter as RingWriterType,
} from '../ring/index.js';
import {
  VM_PKT_COMP,
  VM_PKT_DATA_INBAND,
  VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
} from '../wire/packets.js';

/** First word of every request payload ('REQ1'). */
export const DEMO_REQUEST_MAGIC = 0x31514552;
/** Bytes of a completion's payload: status, transaction id, checksum of the request, ~id. */
export const DEMO_RESPONSE_BYTES = 16;
/** NTSTATUS the host returns for a request whose bytes did not verify. */
const STATUS_INVALID_PARAMETER = 0xc000000d | 0;

/** The channel as both ends receive it: only bytes and numbers. */
export interface DemoChannel {
  /** Guest RAM. */
  readonly memory: SharedArrayBuffer;
  /** The ring GPADL's pages: [0, downstreamOffset) guest-to-host, the rest host-to-guest. */
  readonly gpadlPfns: readonly number[];
  /** `downstream_ringbuffer_pageoffset`. */
  readonly downstreamOffset: number;
  /** The SynIC link between the two partitions. */
  readonly link: HvLinkDescriptor;
  /** Host port the guest signals (the channel's connection id). */
  readonly connectionId: number;
  /** Guest event flag the host sets (the channel's relid). */
  readonly eventFlag: number;
}

export interface DemoConfig {
  /** Requests to send (transaction ids 1..packets). */
  readonly packets: number;
  /** Request payload bytes: a multiple of 4, at least 8. */
  readonly requestBytes: number;
  /** Most packets an end handles per direction before committing. */
  readonly batch: number;
}

/** Exactly-once, in-order check of transaction ids 1..expected. */
export class SequenceCheck {
  received = 0;
  duplicated = 0;
  reordered = 0;
  outOfRange = 0;
  private next = 1;
  private readonly seen: Uint8Array;

  constructor(readonly expected: number) {
    this.seen = new Uint8Array(expected + 1);
  }

  /** Records one id (lo, hi halves); false when it was out of range or seen before. */
  record(lo: number, hi: number): boolean {
    if (hi !== 0 || lo < 1 || lo > this.expected) {
      this.outOfRange++;
      return false;
    }
    if (this.seen[lo] !== 0) {
      this.duplicated++;
      return false;
    }
    this.seen[lo] = 1;
    this.received++;
    if (lo !== this.next) this.reordered++;
    this.next = lo + 1;
    return true;
  }

  /** Ids never received. */
  get lost(): number {
    return this.expected - this.received;
  }

  summary(): SequenceSummary {
    return {
      received: this.received,
      lost: this.lost,
      duplicated: this.duplicated,
      reordered: this.reordered,
      outOfRange: this.outOfRange,
    };
  }
}

export interface SequenceSummary {
  readonly received: number;
  readonly lost: number;
  readonly duplicated: number;
  readonly reordered: number;
  readonly outOfRange: number;
}

/** Counters of one direction's writer. */
export interface DirectionStats {
  packets: number;
  payloadBytes: number;
  /** Bytes the packets took in the ring (descriptor, payload, padding, trailer). */
  ringBytes: number;
  /** Times the write index wrapped past the end of the data area. */
  wraps: number;
  /** Times the ring was full when a packet was to be written. */
  fullStalls: number;
}

/** What one end reports when it is done. */
export interface SideReport {
  readonly role: 'guest' | 'host';
  readonly startMs: number;
  readonly endMs: number;
  /** Packets this end wrote. */
  readonly sent: DirectionStats;
  /** Signals this end sent because its writer's commit said so (empty -> non-empty). */
  readonly dataSignals: number;
  /** Signals this end sent because its reader's commit said so (pending_send_sz crossed). */
  readonly spaceSignals: number;
  /** The check of what this end received. */
  readonly check: SequenceSummary;
  /** Received packets with a wrong type, length or payload. */
  readonly corrupted: number;
  /** SynIC events this end received (several signals may coalesce into one). */
  readonly eventsReceived: number;
  /** Waits for a signal that timed out although there was work (a lost wake-up). */
  readonly lostWakeups: number;
}

function newStats(): DirectionStats {
  return { packets: 0, payloadBytes: 0, ringBytes: 0, wraps: 0, fullStalls: 0 };
}

/** Word j (>= 2) of request `id`'s payload. */
function requestWord(id: number, j: number): number {
  return (Math.imul(id, 0x9e3779b1) + Math.imul(j, 0x85ebca6b)) | 0;
}

function checkConfig(c: DemoConfig): void {
  if (!Number.isInteger(c.packets) || c.packets < 1 || c.packets > 0x7fffffff) {
    throw new RangeError(`packets ${c.packets} must be an integer in 1..2^31-1`);
  }
  if (!Number.isInteger(c.requestBytes) || c.requestBytes < 8 || c.requestBytes % 4 !== 0) {
    throw new RangeError(`request bytes ${c.requestBytes} must be a multiple of 4, at least 8`);
  }
  if (!Number.isInteger(c.batch) || c.batch < 1) throw new RangeError(`batch ${c.batch} must be >= 1`);
}

/** Writes one packet, counting wraps and ring bytes; commits and retries once when the ring is full. */
abstract class DemoSide {
  readonly sent = newStats();
  dataSignals = 0;
  spaceSignals = 0;
  corrupted = 0;
  readonly check: SequenceCheck;
  protected readonly config: DemoConfig;
  protected readonly tx: RingWriterType;
  protected readonly rx: RingReaderType;
  private readonly signal: () => void;

  protected constructor(tx: RingWriterType, rx: RingReaderType, config: DemoConfig, signal: () => void) {
    checkConfig(config);
    this.tx = tx;
    this.rx = rx;
    this.config = config;
    this.signal = signal;
    this.check = new SequenceCheck(config.packets);
  }

  abstract get done(): boolean;

  /** Does up to `batch` packets of work each way; returns how much it did (0: wait for a signal). */
  abstract step(): number;

  protected commitTx(): void {
    if (this.tx.commit()) {
      this.dataSignals++;
      this.signal();
    }
  }

  protected commitRx(): void {
    if (this.rx.commit()) {
      this.spaceSignals++;
      this.signal();
    }
  }

  protected countWrite(before: number, payloadBytes: number): void {
    const s = this.sent;
    const after = this.tx.writeIndex;
    s.packets++;
    s.payloadBytes += payloadBytes;
    s.ringBytes += after > before ? after - before : after + this.tx.dataSize - before;
    if (after <= before) s.wraps++;
  }
}

/** The guest end: sends requests 1..N and checks every completion. */
export class DemoGuestSide extends DemoSide {
  private nextId = 1;
  private readonly request: Uint8Array;
  private readonly request32: Int32Array;
  private readonly response = new Uint8Array(DEMO_RESPONSE_BYTES);
  private readonly response32 = new Int32Array(this.response.buffer);
  /** Expected checksum of each request, remembered when it is sent. */
  private readonly checksums: Int32Array;
  private readonly progressEvery: number;
  private readonly onProgress: (completions: number) => void;

  constructor(
    channel: DemoChannel,
    memory: GuestMemory,
    config: DemoConfig,
    signalHost: () => void,
    onProgress: (completions: number) => void = () => {},
  ) {
    const rings = channelRingsFromGpadl(memory, channel.gpadlPfns, channel.downstreamOffset);
    super(new RingWriter(rings.guestToHost), new RingReader(rings.hostToGuest), config, signalHost);
    this.request = new Uint8Array(config.requestBytes);
    this.request32 = new Int32Array(this.request.buffer);
    this.checksums = new Int32Array(config.packets + 1);
    this.progressEvery = Math.max(1, Math.ceil(config.packets / 10));
    this.onProgress = onProgress;
  }

  get done(): boolean {
    return this.nextId > this.config.packets && this.check.received + this.corrupted >= this.config.packets;
  }

  step(): number {
    const batch = this.config.batch;
    let work = 0;

    // Completions first: they free the host's ring.
    const rx = this.rx;
    const pkt = rx.packet;
    rx.beginRead();
    let got = 0;
    while (got < batch && rx.next()) {
      got++;
      this.onCompletion(pkt.type, pkt.transIdLo, pkt.transIdHi, pkt.payloadLength);
    }
    if (got > 0) this.commitRx();
    work += got;
    // Unmask and look again (no signal comes for packets that arrived while masked).
    if (got < batch && rx.endRead()) work++;

    // Then new requests, until the ring is full or the batch is done.
    const tx = this.tx;
    const n = this.config.packets;
    const bytes = this.config.requestBytes;
    const words = bytes >>> 2;
    const req = this.request32;
    let sent = 0;
    while (sent < batch && this.nextId <= n) {
      const id = this.nextId;
      req[0] = DEMO_REQUEST_MAGIC;
      req[1] = id;
      let sum = (DEMO_REQUEST_MAGIC + id) | 0;
      for (let j = 2; j < words; j++) {
        const v = requestWord(id, j);
        req[j] = v;
        sum = (sum + v) | 0;
      }
      const before = tx.writeIndex;
      const r = tx.writePacket(
        VM_PKT_DATA_INBAND,
        VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
        id,
        0,
        this.request,
        0,
        bytes,
      );
      if (r === RING_WRITE_OK) {
        this.checksums[id] = sum;
        this.countWrite(before, bytes);
        this.nextId++;
        sent++;
        continue;
      }
      if (r !== RING_WRITE_FULL) throw new Error(`a ${bytes}-byte request can never fit this ring`);
      this.sent.fullStalls++;
      // Publish what is written (so the host can drain it), then retry once: with nothing
      // uncommitted the writer sets pending_send_sz and the host will signal when space frees.
      if (tx.uncommittedBytes === 0) break;
      this.commitTx();
    }
    if (tx.uncommittedBytes > 0) this.commitTx();
    work += sent;
    return work;
  }

  private onCompletion(type: number, lo: number, hi: number, payloadLength: number): void {
    if (type !== VM_PKT_COMP || payloadLength < DEMO_RESPONSE_BYTES) {
      this.corrupted++;
      return;
    }
    this.rx.packet.copyPayload(this.response, 0, DEMO_RESPONSE_BYTES);
    const r = this.response32;
    const id = lo;
    const valid =
      hi === 0 &&
      id >= 1 &&
      id < this.nextId &&
      r[0] === 0 &&
      r[1] === id &&
      r[2] === this.checksums[id] &&
      r[3] === ~id;
    if (!valid) {
      this.corrupted++;
      return;
    }
    if (this.check.record(lo, hi) && this.check.received % this.progressEvery === 0) {
      this.onProgress(this.check.received);
    }
  }
}

/** The host end: answers every request with a completion, checking what it receives. */
export class DemoHostSide extends DemoSide {
  private readonly request: Uint8Array;
  private readonly request32: Int32Array;
  private readonly response = new Uint8Array(DEMO_RESPONSE_BYTES);
  private readonly response32 = new Int32Array(this.response.buffer);
  private handled = 0;

  constructor(channel: DemoChannel, memory: GuestMemory, config: DemoConfig, signalGuest: () => void) {
    const rings = channelRingsFromGpadl(memory, channel.gpadlPfns, channel.downstreamOffset);
    super(new RingWriter(rings.hostToGuest), new RingReader(rings.guestToHost), config, signalGuest);
    this.request = new Uint8Array(config.requestBytes);
    this.request32 = new Int32Array(this.request.buffer);
  }

  get done(): boolean {
    return this.handled >= this.config.packets && this.tx.uncommittedBytes === 0;
  }

  step(): number {
    const batch = this.config.batch;
    const rx = this.rx;
    const tx = this.tx;
    const pkt = rx.packet;
    let handled = 0;
    let blocked = false;
    rx.beginRead();
    while (handled < batch && rx.next()) {
      const status = this.inspect(pkt.type, pkt.flags, pkt.payloadLength);
      const r32 = this.response32;
      r32[0] = status;
      r32[1] = pkt.transIdLo;
      r32[2] = status === 0 ? this.checksum() : 0;
      r32[3] = ~pkt.transIdLo;
      const before = tx.writeIndex;
      const r = tx.writeCompletion(pkt.transIdLo, pkt.transIdHi, this.response, 0, DEMO_RESPONSE_BYTES);
      if (r !== RING_WRITE_OK) {
        if (r !== RING_WRITE_FULL) throw new Error('a completion can never fit this ring');
        this.sent.fullStalls++;
        rx.putBack();
        if (tx.uncommittedBytes > 0) {
          // Publish the completions written so far, then try this request again.
          this.commitTx();
          continue;
        }
        // Nothing uncommitted: pending_send_sz is set; the guest signals when it frees space.
        blocked = true;
        break;
      }
      this.countWrite(before, DEMO_RESPONSE_BYTES);
      if (status === 0) this.check.record(pkt.transIdLo, pkt.transIdHi);
      else this.corrupted++;
      this.handled++;
      handled++;
    }
    if (tx.uncommittedBytes > 0) this.commitTx();
    if (handled > 0) this.commitRx();
    let work = handled;
    // While blocked the ring stays masked: the space signal will bring us back.
    if (!blocked && handled < batch && rx.endRead()) work++;
    return work;
  }

  /** 0 when the request under the cursor is well formed (its payload is then in `request`). */
  private inspect(type: number, flags: number, payloadLength: number): number {
    const bytes = this.config.requestBytes;
    if (
      type !== VM_PKT_DATA_INBAND ||
      (flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED) === 0 ||
      payloadLength < bytes
    ) {
      return STATUS_INVALID_PARAMETER;
    }
    this.rx.packet.copyPayload(this.request, 0, bytes);
    const req = this.request32;
    const id = this.rx.packet.transIdLo;
    if (req[0] !== DEMO_REQUEST_MAGIC || req[1] !== id) return STATUS_INVALID_PARAMETER;
    const words = bytes >>> 2;
    for (let j = 2; j < words; j++) if (req[j] !== requestWord(id, j)) return STATUS_INVALID_PARAMETER;
    return 0;
  }

  private checksum(): number {
    const req = this.request32;
    let sum = 0;
    for (let j = 0; j < req.length; j++) sum = (sum + req[j]!) | 0;
    return sum;
  }
}

// ----- running one end in a worker thread -----

export interface DemoWorkerData {
  readonly kind: 'vmbus-ring-demo';
  readonly role: 'guest' | 'host';
  readonly channel: DemoChannel;
  readonly config: DemoConfig;
}

/** Messages a demo worker posts to its parent. */
export type DemoWorkerMessage =
  | { readonly type: 'ready' }
  | { readonly type: 'progress'; readonly completions: number }
  | { readonly type: 'done'; readonly report: SideReport }
  | { readonly type: 'error'; readonly message: string };

/** Longest wait for a signal before the end looks at its rings anyway (and counts a lost wake-up if there was work). */
const SIGNAL_WATCHDOG_MS = 1000;
/** Steps between turns of the event loop while busy. */
const STEPS_PER_TURN = 64;

function clockMs(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Runs `side` until done: step while there is work, else sleep until the peer signals. Resolves
 * to the number of lost wake-ups (a watchdog timeout after which there was work).
 */
async function drive(
  side: DemoSide,
  waitForSignal: (timeoutMs: number) => Promise<boolean>,
): Promise<number> {
  let lost = 0;
  let steps = 0;
  let timedOut = false;
  while (!side.done) {
    const work = side.step();
    if (work > 0) {
      if (timedOut) lost++;
      timedOut = false;
      if (++steps % STEPS_PER_TURN === 0) await new Promise<void>((r) => setImmediate(r));
      continue;
    }
    if (side.done) break;
    timedOut = !(await waitForSignal(SIGNAL_WATCHDOG_MS));
  }
  return lost;
}

async function runWorker(data: DemoWorkerData): Promise<void> {
  const port = parentPort!;
  const memory = new GuestMemory(data.channel.memory);
  const { channel, config } = data;
  let pending = false;
  let wake: ((signalled: boolean) => void) | null = null;
  const onSignal = () => {
    pending = true;
    const w = wake;
    wake = null;
    w?.(true);
  };
  const waitForSignal = (timeoutMs: number): Promise<boolean> => {
    if (pending) {
      pending = false;
      return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        wake = null;
        resolve(false);
      }, timeoutMs);
      wake = (s) => {
        clearTimeout(timer);
        pending = false;
        resolve(s);
      };
    });
  };

  let end: HvEnd;
  let side: DemoSide;
  if (data.role === 'host') {
    const host = attachHvHost(channel.link);
    host.onEvent(channel.connectionId, onSignal);
    end = host;
    side = new DemoHostSide(channel, memory, config, () => host.setEventFlag(channel.eventFlag));
  } else {
    const guest = attachHvGuest(channel.link);
    guest.onEvent(channel.eventFlag, onSignal);
    end = guest;
    side = new DemoGuestSide(
      channel,
      memory,
      config,
      () => guest.signalEvent(channel.connectionId),
      (completions) => port.postMessage({ type: 'progress', completions } satisfies DemoWorkerMessage),
    );
  }
  end.onError((e) => {
    port.postMessage({ type: 'error', message: `SynIC: ${String(e)}` } satisfies DemoWorkerMessage);
  });
  // Wait for "start" (both ends attached and listening) before touching the rings.
  await new Promise<void>((resolve) => {
    port.once('message', () => resolve());
    port.postMessage({ type: 'ready' } satisfies DemoWorkerMessage);
  });
  const startMs = clockMs();
  const lostWakeups = await drive(side, waitForSignal);
  const endMs = clockMs();
  end.unref();
  port.postMessage({
    type: 'done',
    report: sideReport(data.role, side, startMs, endMs, end.stats.eventsReceived, lostWakeups),
  } satisfies DemoWorkerMessage);
}

/** The report of one end. */
export function sideReport(
  role: 'guest' | 'host',
  side: DemoSide,
  startMs: number,
  endMs: number,
  eventsReceived: number,
  lostWakeups: number,
): SideReport {
  return {
    role,
    startMs,
    endMs,
    sent: { ...side.sent },
    dataSignals: side.dataSignals,
    spaceSignals: side.spaceSignals,
    check: side.check.summary(),
    corrupted: side.corrupted,
    eventsReceived,
    lostWakeups,
  };
}

export type { DemoSide };

if (
  parentPort !== null &&
  workerData !== null &&
  typeof workerData === 'object' &&
  (workerData as { kind?: unknown }).kind === 'vmbus-ring-demo'
) {
  runWorker(workerData as DemoWorkerData).catch((e: unknown) => {
    parentPort!.postMessage({
      type: 'error',
      message: e instanceof Error ? (e.stack ?? e.message) : String(e),
    } satisfies DemoWorkerMessage);
  });
}
