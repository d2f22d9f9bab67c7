// `vmbus demo --rings`: a small end-to-end run of one VMBus channel's data path. It creates guest memory,
// lays out both rings of a channel in one ring-GPADL region (pages [0, N) host-incoming,
// [N, end) host-outgoing), and runs a "guest" that sends requests and a "host" that completes
// them, on two worker threads (default) or interleaved on this thread (--same-thread,
// deterministic). Signals go through the simulated SynIC (src/hv/). It prints progress and a
// summary, checking that every transaction id came back exactly once and in order.

import type { Worker } from 'node:worker_threads';
import { createHvLinkDescriptor, createSameThreadLink, HvScheduler } from '../hv/index.js';
import { PageAllocator } from '../memory/allocator.js';
import { GuestMemory, PAGE_SIZE } from '../memory/guest-memory.js';
import { channelRingsFromGpadl } from '../ring/index.js';
import { siblingModule, startWorker } from '../util/worker.js';
import {
  DEMO_RESPONSE_BYTES,
  type DemoChannel,
  type DemoConfig,
  DemoGuestSide,
  DemoHostSide,
  type DemoWorkerData,
  type DemoWorkerMessage,
  type DirectionStats,
  type SideReport,
  sideReport,
} from './demo-rings-worker.js';

/** The demo channel's relid, which is also the guest event flag the host sets. */
const DEMO_CHILD_RELID = 1;
/** The host connection id the guest signals (any free id; a real host hands it out in the offer). */
const DEMO_CONNECTION_ID = 0x2001;

export interface DemoOptions {
  packets: number;
  sameThread: boolean;
  json: boolean;
  /** Pages per ring, control page included (>= 2). */
  ringPages: number;
  requestBytes: number;
  batch: number;
  scattered: boolean;
  /** Give up after this many seconds. */
  timeoutSeconds: number;
}

export const RING_DEMO_USAGE = `usage: vmbus demo --rings [options]
  (the raw data path of one channel: rings and SynIC signals, no bus, no drivers)
  --packets N       requests to send, each answered by a completion (default 200000)
  --same-thread     run host and guest interleaved on one thread (deterministic)
  --json            print the summary as one JSON object
  --ring-pages N    pages per ring, control page included (default 32: 124 KiB of data)
  --request-bytes N request payload size, a multiple of 4 (default 64)
  --batch N         most packets handled per direction before a commit (default 64)
  --scattered       place the ring GPADL on scattered guest pages
  --timeout S       give up after S seconds (default 60)`;

class UsageError extends Error {}

export function parseRingDemoArgs(args: readonly string[]): DemoOptions {
  const o: DemoOptions = {
    packets: 200_000,
    sameThread: false,
    json: false,
    ringPages: 32,
    requestBytes: 64,
    batch: 64,
    scattered: false,
    timeoutSeconds: 60,
  };
  const int = (name: string, v: string | undefined, min: number, max: number): number => {
    const n = v === undefined || !/^\d+$/.test(v) ? Number.NaN : Number(v);
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new UsageError(`${name} needs an integer in ${min}..${max}, got ${v ?? 'nothing'}`);
    }
    return n;
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    switch (a) {
      case '--packets':
        o.packets = int(a, args[++i], 1, 100_000_000);
        break;
      case '--same-thread':
        o.sameThread = true;
        break;
      case '--json':
        o.json = true;
        break;
      case '--ring-pages':
        o.ringPages = int(a, args[++i], 2, 65_536);
        break;
      case '--request-bytes':
        o.requestBytes = int(a, args[++i], 8, 1 << 20);
        if (o.requestBytes % 4 !== 0) throw new UsageError('--request-bytes must be a multiple of 4');
        break;
      case '--batch':
        o.batch = int(a, args[++i], 1, 1 << 20);
        break;
      case '--scattered':
        o.scattered = true;
        break;
      case '--timeout':
        o.timeoutSeconds = int(a, args[++i], 1, 86_400);
        break;
      default:
        throw new UsageError(`unknown option ${a}`);
    }
  }
  const dataBytes = (o.ringPages - 1) * PAGE_SIZE;
  const largest = Math.max(16 + o.requestBytes, 16 + DEMO_RESPONSE_BYTES) + 8;
  if (largest >= dataBytes) {
    throw new UsageError(`a ${o.requestBytes}-byte request does not fit a ring of ${o.ringPages} pages`);
  }
  return o;
}

/** The summary the demo prints. */
export interface RingDemoSummary {
  readonly ok: boolean;
  readonly mode: 'two-workers' | 'same-thread';
  readonly packets: number;
  readonly ring: {
    readonly pagesPerRing: number;
    readonly dataBytesPerRing: number;
    readonly downstreamPageOffset: number;
    readonly scattered: boolean;
  };
  readonly guestToHost: DirectionSummary;
  readonly hostToGuest: DirectionSummary;
  /** Signals each way through the SynIC, and the events the receiving side took (signals coalesce). */
  readonly signals: { readonly guestToHost: SignalSummary; readonly hostToGuest: SignalSummary };
  readonly elapsedSeconds: number;
  /** Packets moved (both directions) per second. */
  readonly packetsPerSecond: number;
  /** Request/completion pairs per second. */
  readonly roundTripsPerSecond: number;
  readonly lost: number;
  readonly duplicated: number;
  readonly reordered: number;
  readonly corrupted: number;
  readonly lostWakeups: number;
}

export interface DirectionSummary extends DirectionStats {
  /** Signals the writer sent because the ring went from empty to non-empty. */
  readonly dataSignals: number;
  /** Signals the reader sent back because it freed the space the writer was waiting for. */
  readonly spaceSignals: number;
  /** What the receiving side's check found. */
  readonly received: number;
  readonly lost: number;
  readonly duplicated: number;
  readonly reordered: number;
  readonly corrupted: number;
}

export interface SignalSummary {
  /** Signals sent: data (a ring went non-empty) + space (pending_send_sz was crossed). */
  readonly sent: number;
  readonly data: number;
  readonly space: number;
  /** Event-handler runs on the receiving side. */
  readonly eventsTaken: number;
}

interface Setup {
  readonly channel: DemoChannel;
  readonly memory: GuestMemory;
  readonly config: DemoConfig;
}

/** Guest RAM with the channel's ring GPADL in it, both rings initialized (as the guest does before OPENCHANNEL). */
function setUp(o: DemoOptions, link: DemoChannel['link']): Setup {
  const gpadlPages = 2 * o.ringPages;
  const memory = new GuestMemory(Math.max(4 << 20, (gpadlPages * 2 + 64) * PAGE_SIZE));
  const allocator = new PageAllocator(memory, { seed: 7 });
  const gpadlPfns = Array.from(allocator.allocate(gpadlPages, o.scattered ? 'scattered' : 'contiguous'));
  const rings = channelRingsFromGpadl(memory, gpadlPfns, o.ringPages);
  rings.guestToHost.initialize();
  rings.hostToGuest.initialize();
  const channel: DemoChannel = {
    memory: memory.buffer,
    gpadlPfns,
    downstreamOffset: o.ringPages,
    link,
    connectionId: DEMO_CONNECTION_ID,
    eventFlag: DEMO_CHILD_RELID,
  };
  return { channel, memory, config: { packets: o.packets, requestBytes: o.requestBytes, batch: o.batch } };
}

function clockMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Host and guest interleaved on this thread, woken only by their signals (deterministic). */
function runSameThread(o: DemoOptions, progress: (completions: number) => void): SideReport[] {
  const scheduler = new HvScheduler({ mode: 'manual' });
  const link = createSameThreadLink({ scheduler });
  const { channel, memory, config } = setUp(o, link.descriptor);
  let hostSignalled = false;
  let guestSignalled = false;
  link.host.onEvent(channel.connectionId, () => {
    hostSignalled = true;
  });
  link.guest.onEvent(channel.eventFlag, () => {
    guestSignalled = true;
  });
  const host = new DemoHostSide(channel, memory, config, () => link.host.setEventFlag(channel.eventFlag));
  const guest = new DemoGuestSide(
    channel,
    memory,
    config,
    () => link.guest.signalEvent(channel.connectionId),
    progress,
  );
  const start = clockMs();
  const deadline = start + o.timeoutSeconds * 1000;
  // A side runs when it was signalled or its last step did something (it has its own work).
  let guestActive = true;
  let hostActive = true;
  let iterations = 0;
  while (!(guest.done && host.done)) {
    if (guestActive || guestSignalled) {
      guestSignalled = false;
      guestActive = guest.step() > 0;
    }
    link.runUntilIdle();
    if (hostActive || hostSignalled) {
      hostSignalled = false;
      hostActive = host.step() > 0;
    }
    link.runUntilIdle();
    if (!guestActive && !hostActive && !guestSignalled && !hostSignalled && !(guest.done && host.done)) {
      throw new Error('stalled: both ends wait for a signal that never comes (lost wake-up)');
    }
    if ((++iterations & 1023) === 0 && clockMs() > deadline) {
      throw new Error(`timed out after ${o.timeoutSeconds} s`);
    }
  }
  const end = clockMs();
  link.close();
  return [
    sideReport('guest', guest, start, end, link.guest.stats.eventsReceived, 0),
    sideReport('host', host, start, end, link.host.stats.eventsReceived, 0),
  ];
}

/** Host and guest in two worker threads, sharing only guest RAM and the SynIC link. */
async function runWorkers(o: DemoOptions, progress: (completions: number) => void): Promise<SideReport[]> {
  const { channel, config } = setUp(o, createHvLinkDescriptor());
  const url = siblingModule(import.meta.url, 'demo-rings-worker');
  const workers: Worker[] = [];
  try {
    const start = (role: 'guest' | 'host') => {
      const workerData: DemoWorkerData = { kind: 'vmbus-ring-demo', role, channel, config };
      const w = startWorker(url, { workerData });
      workers.push(w);
      let onReady!: () => void;
      let onReadyFail!: (e: Error) => void;
      const ready = new Promise<void>((resolve, reject) => {
        onReady = resolve;
        onReadyFail = reject;
      });
      const done = new Promise<SideReport>((resolve, reject) => {
        const fail = (e: Error) => {
          onReadyFail(e);
          reject(e);
        };
        w.on('message', (m: DemoWorkerMessage) => {
          if (m.type === 'ready') onReady();
          else if (m.type === 'progress') progress(m.completions);
          else if (m.type === 'done') resolve(m.report);
          else fail(new Error(`${role}: ${m.message}`));
        });
        w.on('error', (e) => fail(new Error(`${role} worker: ${e.message}`)));
        w.on('exit', (code) => fail(new Error(`${role} worker exited (code ${code}) before finishing`)));
      });
      return { worker: w, ready, done };
    };
    // The host listens on the connection id before the guest may signal it.
    const host = start('host');
    const guest = start('guest');
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`timed out after ${o.timeoutSeconds} s`)),
        o.timeoutSeconds * 1000,
      );
    });
    try {
      await Promise.race([Promise.all([host.ready, guest.ready]), timeout]);
      host.worker.postMessage('start');
      guest.worker.postMessage('start');
      return await Promise.race([Promise.all([guest.done, host.done]), timeout]);
    } finally {
      clearTimeout(timer);
    }
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

function direction(writer: SideReport, reader: SideReport): DirectionSummary {
  return {
    ...writer.sent,
    dataSignals: writer.dataSignals,
    spaceSignals: reader.spaceSignals,
    received: reader.check.received,
    lost: reader.check.lost,
    duplicated: reader.check.duplicated,
    reordered: reader.check.reordered + reader.check.outOfRange,
    corrupted: reader.corrupted,
  };
}

function signals(sender: SideReport, receiver: SideReport): SignalSummary {
  return {
    sent: sender.dataSignals + sender.spaceSignals,
    data: sender.dataSignals,
    space: sender.spaceSignals,
    eventsTaken: receiver.eventsReceived,
  };
}

function summarize(o: DemoOptions, guest: SideReport, host: SideReport): RingDemoSummary {
  const g2h = direction(guest, host);
  const h2g = direction(host, guest);
  const elapsedSeconds =
    (Math.max(guest.endMs, host.endMs) - Math.min(guest.startMs, host.startMs)) / 1000 || 1e-9;
  const lost = g2h.lost + h2g.lost;
  const duplicated = g2h.duplicated + h2g.duplicated;
  const reordered = g2h.reordered + h2g.reordered;
  const corrupted = g2h.corrupted + h2g.corrupted;
  const lostWakeups = guest.lostWakeups + host.lostWakeups;
  return {
    ok: lost === 0 && duplicated === 0 && reordered === 0 && corrupted === 0 && lostWakeups === 0,
    mode: o.sameThread ? 'same-thread' : 'two-workers',
    packets: o.packets,
    ring: {
      pagesPerRing: o.ringPages,
      dataBytesPerRing: (o.ringPages - 1) * PAGE_SIZE,
      downstreamPageOffset: o.ringPages,
      scattered: o.scattered,
    },
    guestToHost: g2h,
    hostToGuest: h2g,
    signals: { guestToHost: signals(guest, host), hostToGuest: signals(host, guest) },
    elapsedSeconds,
    packetsPerSecond: (g2h.packets + h2g.packets) / elapsedSeconds,
    roundTripsPerSecond: h2g.received / elapsedSeconds,
    lost,
    duplicated,
    reordered,
    corrupted,
    lostWakeups,
  };
}

function si(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return `${Math.round(n)} `;
}

function renderSummary(s: RingDemoSummary): string {
  const dir = (name: string, d: DirectionSummary) =>
    `  ${name}: ${d.packets} packets, ${si(d.payloadBytes)}B payload, ${si(d.ringBytes)}B in the ring, ` +
    `${d.wraps} wraps, ${d.fullStalls} full-ring stalls; received ${d.received}`;
  const sig = (name: string, g: SignalSummary) =>
    `  signals ${name}: ${g.sent} (${g.data} data, ${g.space} space), ${g.eventsTaken} events taken`;
  return [
    `summary (${s.mode}):`,
    dir('guest->host requests   ', s.guestToHost),
    dir('host->guest completions', s.hostToGuest),
    sig('guest->host', s.signals.guestToHost),
    sig('host->guest', s.signals.hostToGuest),
    `  elapsed ${s.elapsedSeconds.toFixed(3)} s, ${si(s.packetsPerSecond)}packets/s, ${si(s.roundTripsPerSecond)}round trips/s`,
    `  lost=${s.lost} duplicated=${s.duplicated} reordered=${s.reordered} corrupted=${s.corrupted} lostWakeups=${s.lostWakeups}`,
    s.ok ? 'OK' : 'FAILED',
  ].join('\n');
}

/** Runs the demo with command-line `args`; resolves to the process exit code (0 only if every check passed). */
export async function runRingDemo(args: string[]): Promise<number> {
  let o: DemoOptions;
  try {
    o = parseRingDemoArgs(args);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`vmbus demo --rings: ${e.message}\n${RING_DEMO_USAGE}\n`);
      return 2;
    }
    throw e;
  }
  const out = (line: string) => {
    if (!o.json) process.stdout.write(`${line}\n`);
  };
  out(
    `vmbus demo --rings: ${o.packets} requests (${o.requestBytes} B, COMPLETION_REQUESTED) from guest to host, ` +
      `each answered by a ${DEMO_RESPONSE_BYTES}-byte completion; ${o.sameThread ? 'one thread, interleaved' : 'host and guest in two worker threads'}`,
  );
  out(
    `  ring GPADL: ${2 * o.ringPages} ${o.scattered ? 'scattered' : 'contiguous'} pages; ` +
      `[0, ${o.ringPages}) guest->host, [${o.ringPages}, ${2 * o.ringPages}) host->guest; ` +
      `${((o.ringPages - 1) * PAGE_SIZE) / 1024} KiB of data per ring; signals through the simulated SynIC`,
  );
  const progress = (completions: number) =>
    out(`  ${completions} / ${o.packets} completions (${Math.round((100 * completions) / o.packets)}%)`);
  let reports: SideReport[];
  try {
    reports = o.sameThread ? runSameThread(o, progress) : await runWorkers(o, progress);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    if (o.json) process.stdout.write(`${JSON.stringify({ ok: false, error: message })}\n`);
    else process.stderr.write(`vmbus demo failed: ${message}\n`);
    return 1;
  }
  const guest = reports.find((r) => r.role === 'guest')!;
  const host = reports.find((r) => r.role === 'host')!;
  const summary = summarize(o, guest, host);
  if (o.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else out(renderSummary(summary));
  return summary.ok ? 0 : 1;
}
