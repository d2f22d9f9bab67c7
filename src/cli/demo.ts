// `vmbus demo` (what `npm start` runs): a host and a guest partition on the real VMBus, each in its
// own worker thread (or both on this thread with --same-thread). The host worker creates the
// hypervisor, the guest partition and the VSPs (heartbeat, shutdown, time sync, KVP, synthetic
// SCSI); the guest worker attaches the partition from its descriptor, connects, negotiates, and its
// VSCs attach. Then a workload: heartbeats, a KVP exchange, a time sync and verified block I/O, and
// at the end a shutdown request. This thread only orchestrates: it starts the workers, steps them
// through the phases and joins their plain-data reports into the summary (demo-summary.ts), which
// it prints as a table or as one JSON object. Exit status 0 only if every check passed.
// `vmbus demo --rings` runs the older ring-level demo (demo-rings.ts).

import type { Worker } from 'node:worker_threads';
import { createKmclSystem } from '../kmcl/bus-port.js';
import { siblingModule, startWorker } from '../util/worker.js';
import { DemoGuest } from './demo-guest.js';
import { type CountingDisk, DEMO_GUEST_MEMORY_BYTES, DemoErrorLog, DemoHost, offersOf } from './demo-host.js';
import {
  DEFAULT_WORKLOAD,
  type DemoCommand,
  type DemoEvent,
  type DemoWorkerData,
  type DemoWorkload,
  errorText,
  extentCount,
  type GuestReport,
  type HostReport,
  pairCount,
} from './demo-protocol.js';
import { type DemoSummary, renderSummary, summarize } from './demo-summary.js';

export type { DemoSummary } from './demo-summary.js';

export interface DemoOptions {
  json: boolean;
  sameThread: boolean;
  workload: DemoWorkload;
  timeoutSeconds: number;
}

export const DEMO_USAGE = `usage: vmbus demo [options]
  Host and guest partitions on a simulated VMBus: the host offers heartbeat, shutdown, time sync,
  KVP and a synthetic SCSI disk; the guest's drivers attach; then heartbeats, a KVP exchange, a
  time sync and verified block I/O run, and a summary table is printed.

  --json            print the summary as one JSON object on stdout (progress goes to stderr)
  --same-thread     host and guest on this thread (default: two worker threads)
  --io N            storage requests: N/2 writes, each read back and verified (default ${DEFAULT_WORKLOAD.ios})
  --blocks N        blocks on the disk, ${DEFAULT_WORKLOAD.blockSize} B each (default ${DEFAULT_WORKLOAD.blocks})
  --io-blocks N     blocks per request (default ${DEFAULT_WORKLOAD.ioBlocks})
  --queue-depth N   storage requests in flight at most, 1..32 (default ${DEFAULT_WORKLOAD.queueDepth})
  --heartbeats N    heartbeat rounds (default ${DEFAULT_WORKLOAD.heartbeats})
  --kvp N           KVP records the host writes and reads back (default ${DEFAULT_WORKLOAD.kvpKeys})
  --timeout S       give up after S seconds (default 120)
  --rings           the ring-level demo instead (one channel's rings and signals; see --rings --help)
  --help            this text`;

class UsageError extends Error {}

export function parseDemoArgs(args: readonly string[]): DemoOptions {
  const w = { ...DEFAULT_WORKLOAD };
  const o: DemoOptions = { json: false, sameThread: false, workload: w, timeoutSeconds: 120 };
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
      case '--json':
        o.json = true;
        break;
      case '--same-thread':
        o.sameThread = true;
        break;
      case '--io':
        w.ios = int(a, args[++i], 2, 10_000_000);
        break;
      case '--blocks':
        w.blocks = int(a, args[++i], 1, 1 << 22);
        break;
      case '--io-blocks':
        w.ioBlocks = int(a, args[++i], 1, 128);
        break;
      case '--queue-depth':
        w.queueDepth = int(a, args[++i], 1, 32);
        break;
      case '--heartbeats':
        w.heartbeats = int(a, args[++i], 0, 1_000_000);
        break;
      case '--kvp':
        w.kvpKeys = int(a, args[++i], 0, 1000);
        break;
      case '--timeout':
        o.timeoutSeconds = int(a, args[++i], 1, 86_400);
        break;
      default:
        throw new UsageError(`unknown option ${a}`);
    }
  }
  if (extentCount(w) < 1) {
    throw new UsageError(`--blocks ${w.blocks} is smaller than one request of ${w.ioBlocks} blocks`);
  }
  return o;
}

export interface Reports {
  host: HostReport;
  guest: GuestReport;
  teardownErrors: string[];
}

export type Log = (who: string, text: string) => void;

/** Host and guest on this thread, on one deterministic scheduler (`disk`: the host's, for tests). */
export async function runSameThread(
  w: DemoWorkload,
  log: Log,
  disk?: CountingDisk,
  timeoutSeconds = 120,
): Promise<Reports> {
  const hostLog = new DemoErrorLog();
  const sys = await createKmclSystem({
    transport: 'same-thread',
    memoryBytes: DEMO_GUEST_MEMORY_BYTES,
    provider: hostLog.options,
  });
  const host = new DemoHost(sys.host, w, offersOf(sys), hostLog, disk);
  const guest = new DemoGuest(sys.guests[0]!, sys.guestBuses[0]!.allocator, w, new DemoErrorLog());
  const teardownErrors: string[] = [];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    for (const side of [guest, host]) {
      try {
        await side.stop();
      } catch (e) {
        teardownErrors.push(errorText(e));
      }
    }
  };
  const steps = async (): Promise<Reports> => {
    const [h, g] = await Promise.all([host.ready(), guest.ready()]);
    log('host', `VSPs offered; the guest negotiated ${h}`);
    log('guest', `VMBus connected, drivers attached; ${g}`);
    await Promise.all([host.run((t) => log('host', t)), guest.run((t) => log('guest', t))]);
    const hostReport = await host.finish();
    const guestReport = guest.report();
    await stop();
    return { host: hostReport, guest: guestReport, teardownErrors };
  };
  try {
    return await withTimeout(steps(), timeoutSeconds);
  } finally {
    await stop();
    await sys.close();
  }
}

/** One worker as the main thread sees it: its events in order, progress logged as it comes. */
class WorkerSide {
  private readonly events: DemoEvent[] = [];
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;

  constructor(
    readonly role: 'host' | 'guest',
    readonly worker: Worker,
    log: Log,
  ) {
    worker.on('message', (e: DemoEvent) => {
      if (e.type === 'progress') log(role, e.text);
      else if (e.type === 'error') this.fail(new Error(`${role} worker: ${e.message}`));
      else this.push(e);
    });
    worker.on('error', (e) => this.fail(new Error(`${role} worker: ${errorText(e)}`)));
    worker.on('exit', (code) => this.fail(new Error(`${role} worker exited (code ${code})`)));
  }

  private push(e: DemoEvent): void {
    this.events.push(e);
    this.wake();
  }

  private fail(e: Error): void {
    this.failure ??= e;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  send(command: DemoCommand): void {
    this.worker.postMessage(command);
  }

  /** The next event, which must be of `type`. */
  async next<T extends DemoEvent['type']>(type: T): Promise<Extract<DemoEvent, { type: T }>> {
    for (;;) {
      const e = this.events.shift();
      if (e !== undefined) {
        if (e.type !== type) throw new Error(`${this.role} worker: expected '${type}', got '${e.type}'`);
        return e as Extract<DemoEvent, { type: T }>;
      }
      if (this.failure !== null) throw this.failure;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
  }
}

/** Host and guest in two worker threads; this thread only steps them and collects their reports. */
export async function runWorkers(w: DemoWorkload, log: Log, timeoutSeconds = 120): Promise<Reports> {
  const url = siblingModule(import.meta.url, 'demo-worker');
  const workers: Worker[] = [];
  const start = (data: DemoWorkerData): WorkerSide => {
    const worker = startWorker(url, { workerData: data });
    workers.push(worker);
    return new WorkerSide(data.role, worker, log);
  };
  const steps = async (): Promise<Reports> => {
    const host = start({ kind: 'vmbus-demo', role: 'host', workload: w });
    const { descriptor } = await host.next('descriptor');
    log('main', 'host worker created the hypervisor and the guest partition; starting the guest worker');
    const guest = start({ kind: 'vmbus-demo', role: 'guest', workload: w, descriptor });
    const [h, g] = await Promise.all([host.next('ready'), guest.next('ready')]);
    log('host', `VSPs offered; the guest negotiated ${h.text}`);
    log('guest', `VMBus connected, drivers attached; ${g.text}`);
    host.send({ type: 'run' });
    guest.send({ type: 'run' });
    await Promise.all([host.next('ran'), guest.next('ran')]);
    host.send({ type: 'finish' });
    const hostReport = (await host.next('report')).report as HostReport;
    guest.send({ type: 'finish' });
    const guestReport = (await guest.next('report')).report as GuestReport;
    // The guest's drivers close first; then the host revokes its offers (the guest's VMBus client
    // is still there to release them) and closes the bus.
    const teardownErrors: string[] = [];
    guest.send({ type: 'stop' });
    const gs = await guest.next('stopped');
    if (gs.error !== null) teardownErrors.push(`guest: ${gs.error}`);
    host.send({ type: 'stop' });
    const hs = await host.next('stopped');
    if (hs.error !== null) teardownErrors.push(`host: ${hs.error}`);
    return { host: hostReport, guest: guestReport, teardownErrors };
  };
  try {
    return await withTimeout(steps(), timeoutSeconds);
  } finally {
    // Also after a failure or a timeout: nothing may keep the process alive.
    await Promise.all(workers.map((wk) => wk.terminate()));
  }
}

function withTimeout<T>(p: Promise<T>, seconds: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${seconds} s`)), seconds * 1000);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Runs `vmbus demo ARGS`; resolves to the exit status (0 only if every check passed). */
export async function runDemo(args: string[]): Promise<number> {
  if (args.includes('--rings')) {
    const { runRingDemo, RING_DEMO_USAGE } = await import('./demo-rings.js');
    if (args.includes('--help') || args.includes('-h')) {
      process.stdout.write(`${RING_DEMO_USAGE}\n`);
      return 0;
    }
    return runRingDemo(args.filter((a) => a !== '--rings'));
  }
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${DEMO_USAGE}\n`);
    return 0;
  }
  let o: DemoOptions;
  try {
    o = parseDemoArgs(args);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`vmbus demo: ${e.message}\n${DEMO_USAGE}\n`);
      return 2;
    }
    throw e;
  }
  const w = o.workload;
  const stream = o.json ? process.stderr : process.stdout;
  const t0 = performance.now();
  const log: Log = (who, text) => {
    const t = ((performance.now() - t0) / 1000).toFixed(2).padStart(6);
    stream.write(`[${t} s] ${who.padEnd(5)} ${text}\n`);
  };
  stream.write(
    `vmbus demo: ${o.sameThread ? 'host and guest on one thread' : 'host and guest in two worker threads'}; ` +
      `${pairCount(w)} block writes + ${pairCount(w)} verifying reads (${w.ioBlocks} x ${w.blockSize} B, ` +
      `up to ${w.queueDepth} in flight) on a ${w.blocks}-block disk, ${w.heartbeats} heartbeats, ` +
      `${w.kvpKeys} KVP records, 1 time SYNC + ${w.timeSamples} samples\n`,
  );
  let reports: Reports;
  try {
    reports = o.sameThread
      ? await runSameThread(w, log, undefined, o.timeoutSeconds)
      : await runWorkers(w, log, o.timeoutSeconds);
  } catch (e) {
    const message = errorText(e);
    if (o.json) process.stdout.write(`${JSON.stringify({ ok: false, error: message })}\n`);
    process.stderr.write(`vmbus demo failed: ${message}\n`);
    return 1;
  }
  const summary: DemoSummary = summarize({
    mode: o.sameThread ? 'same-thread' : 'worker-threads',
    elapsedSeconds: (performance.now() - t0) / 1000,
    workload: w,
    host: reports.host,
    guest: reports.guest,
    teardownErrors: reports.teardownErrors,
  });
  if (o.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else process.stdout.write(`\n${renderSummary(summary)}\n`);
  return summary.ok ? 0 : 1;
}
