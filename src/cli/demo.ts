// `vmbus demo` (what `npm start` runs): a host and a guest partition on the real VMBus, each in its
// own worker thread (or both on this thread with --same-thread). The host worker creates the
// hypervisor, the guest partition and the VSPs (heartbeat, shutdown, time sync, KVP, synthetic
// SCSI); the guest worker attaches the partition from its descriptor, connects, negotiates, and its
// VSCs attach. Then a workload: heartbeats, a KVP exchange, a time sync and verified block I/O, and
// at the end a shutdown request. This thread only orchestrates: it starts the workers, steps them
// through the phases and joins their plain-data reports into the summary (demo-summary.ts), which
// it prints as a table or as one JSON object. Exit status 0 only if every check passed.
// With --servicing N the whole host side is restarted N times while the guest's block I/O runs:
// the host instance saves its VSPs and its VMBus and detaches the partition, and a new instance
// (in a new worker thread, or a new hypervisor and bus on this thread with --same-thread) takes
// over from the saved state; the guest keeps its VMBus connection, channels and rings.
// `vmbus demo --rings` runs the older ring-level demo (demo-rings.ts).

import type { Worker } from 'node:worker_threads';
import { Deferred } from '../devices/index.js';
import { createKmclSystem } from '../kmcl/bus-port.js';
import { siblingModule, startWorker } from '../util/worker.js';
import { DemoGuest } from './demo-guest.js';
import {
  adoptHostInstance,
  type CountingDisk,
  closeHostInstance,
  DEMO_GUEST_MEMORY_BYTES,
  DemoErrorLog,
  DemoHost,
  type DemoHostInstance,
  type DemoHostInstanceSaved,
  offersOf,
  savedStateBytes,
  saveHostInstance,
} from './demo-host.js';
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
  type ServicingCycle,
  servicingPoints,
} from './demo-protocol.js';
import { type DemoSummary, renderSummary, summarize } from './demo-summary.js';

export type { DemoSummary } from './demo-summary.js';

/** Host restarts `--servicing` without a number asks for. */
export const DEFAULT_SERVICING_CYCLES = 3;

/** Host worker threads kept loaded ahead of the restarts that will need them. */
const STANDBY_POOL = 4;

export interface DemoOptions {
  json: boolean;
  sameThread: boolean;
  workload: DemoWorkload;
  timeoutSeconds: number;
  /** Host restarts during the block I/O (--servicing N); 0: none. */
  servicing: number;
}

export const DEMO_USAGE = `usage: vmbus demo [options]
  Host and guest partitions on a simulated VMBus: the host offers heartbeat, shutdown, time sync,
  KVP and a synthetic SCSI disk; the guest's drivers attach; then heartbeats, a KVP exchange, a
  time sync and verified block I/O run, and a summary table is printed.

  --json            print the summary as one JSON object on stdout (progress goes to stderr)
  --same-thread     host and guest on this thread (default: two worker threads)
  --servicing [N]   restart the whole host side N times (1..100, default ${DEFAULT_SERVICING_CYCLES}) during the
                    block I/O, with requests in flight: the host saves its VSPs and its VMBus and
                    a new host instance (a new worker thread; with --same-thread a new hypervisor
                    and VMBus) restores them, while the guest keeps its connection, channels and
                    rings; the summary adds the restarts (host away, save and restore times) and
                    checks that nothing was lost or duplicated. Heartbeats, KVP and time sync run
                    before the block I/O, and each new host checks its heartbeat with one round.
                    Needs --io of at least 4 x queue depth x (N + 1)
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
  const o: DemoOptions = { json: false, sameThread: false, workload: w, timeoutSeconds: 120, servicing: 0 };
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
      case '--servicing':
        o.servicing = /^\d+$/.test(args[i + 1] ?? '') ? int(a, args[++i], 1, 100) : DEFAULT_SERVICING_CYCLES;
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
  const minIos = 4 * w.queueDepth * (o.servicing + 1);
  if (o.servicing > 0 && w.ios < minIos) {
    throw new UsageError(
      `--servicing ${o.servicing} needs --io ${minIos} or more (with --queue-depth ${w.queueDepth}), so that requests are in flight at every restart`,
    );
  }
  return o;
}

export interface Reports {
  host: HostReport;
  guest: GuestReport;
  teardownErrors: string[];
  /** The host restarts of --servicing, in order (empty without). */
  restarts: ServicingCycle[];
}

export type Log = (who: string, text: string) => void;

/** The log line of one finished restart. */
function restartLine(c: ServicingCycle, cycles: number, pairs: number): string {
  return (
    `restart ${c.cycle}/${cycles} at pair ${c.atPair}/${pairs}: ${c.inFlight} requests in flight; ` +
    `host away ${c.awayMs.toFixed(1)} ms (save ${c.saveMs.toFixed(1)} ms, restore ${c.restoreMs.toFixed(1)} ms), ` +
    `${(c.stateBytes / 1024).toFixed(1)} KiB handed over`
  );
}

/**
 * Host and guest on this thread, on one deterministic scheduler (`disk`: the host's, for tests).
 * With `servicing` > 0 the host side is restarted that many times during the block I/O: a new
 * Hypervisor, BusKmclHost and KMCL provider on the same scheduler adopt the detached partition.
 */
export async function runSameThread(
  w: DemoWorkload,
  log: Log,
  disk?: CountingDisk,
  timeoutSeconds = 120,
  servicing = 0,
): Promise<Reports> {
  const hostLog = new DemoErrorLog();
  const sys = await createKmclSystem({
    transport: 'same-thread',
    memoryBytes: DEMO_GUEST_MEMORY_BYTES,
    provider: hostLog.options,
  });
  let instance: DemoHostInstance = {
    hv: sys.hv,
    hostBus: sys.hostBus,
    host: new DemoHost(sys.host, w, offersOf(sys.hostBus), hostLog, disk === undefined ? {} : { disk }),
    partitionId: sys.hv.partitions()[0]!.partitionId,
  };
  const guest = new DemoGuest(sys.guests[0]!, sys.guestBuses[0]!.allocator, w, new DemoErrorLog());
  const teardownErrors: string[] = [];
  const restarts: ServicingCycle[] = [];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    for (const side of [guest, instance.host]) {
      try {
        await side.stop();
      } catch (e) {
        teardownErrors.push(errorText(e));
      }
    }
  };
  /** One host restart: save and detach, probe the guest, a new instance adopts and resumes. */
  const restart = async (cycle: number, atPair: number): Promise<void> => {
    const s = await saveHostInstance(instance);
    const inFlight = guest.probe();
    // The saved state crosses no thread here; cloning the VSPs' part proves it is plain data all
    // the same (the same-thread partition descriptor must stay the very object it was).
    const saved: DemoHostInstanceSaved = { ...s.saved, host: structuredClone(s.saved.host) };
    const r = await adoptHostInstance(saved, w, hostLog, {
      sameThread: { scheduler: sys.hv.scheduler!, replacing: s.hostEnd },
      ...(disk === undefined ? {} : { disk }),
    });
    instance = r.instance;
    const c: ServicingCycle = {
      cycle,
      atPair,
      inFlight,
      saveMs: s.saveMs,
      restoreMs: r.restoreMs,
      awayMs: r.resumedAt - s.pausedAt,
      stateBytes: savedStateBytes(saved),
    };
    restarts.push(c);
    log('main', restartLine(c, servicing, pairCount(w)));
  };
  const steps = async (): Promise<Reports> => {
    const [h, g] = await Promise.all([instance.host.ready(), guest.ready()]);
    log('host', `VSPs offered; the guest negotiated ${h}`);
    log('guest', `VMBus connected, drivers attached; ${g}`);
    if (servicing === 0) {
      await Promise.all([instance.host.run((t) => log('host', t)), guest.run((t) => log('guest', t))]);
    } else {
      // The ICs first (a restart is taken while they are idle), then the block I/O with restarts.
      await instance.host.run((t) => log('host', t));
      const points = servicingPoints(w, servicing);
      const reached = points.map(() => new Deferred<number>());
      const restarting = (async () => {
        for (let k = 0; k < points.length; k++) await restart(k + 1, await reached[k]!.promise);
      })();
      await Promise.all([
        guest.run(
          (t) => log('guest', t),
          points,
          (k, done) => reached[k]!.resolve(done),
        ),
        restarting,
      ]);
    }
    const hostReport = await instance.host.finish();
    const guestReport = guest.report();
    await stop();
    return { host: hostReport, guest: guestReport, teardownErrors, restarts };
  };
  try {
    return await withTimeout(steps(), timeoutSeconds);
  } finally {
    await stop();
    await sys.close();
    if (instance.hostBus !== sys.hostBus) await closeHostInstance(instance);
  }
}

/** One worker as the main thread sees it: its events in order, progress logged as it comes. */
class WorkerSide {
  private readonly events: DemoEvent[] = [];
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;
  private retired = false;
  private readonly seen = new Set<DemoEvent['type']>();

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
    worker.on('exit', (code) => {
      if (!this.retired) this.fail(new Error(`${role} worker exited (code ${code})`));
    });
  }

  /** Waits for an event of `type` once (later calls return at once): a standby's 'standby'. */
  async ready(type: DemoEvent['type']): Promise<void> {
    if (this.seen.has(type)) return;
    await this.next(type);
    this.seen.add(type);
  }

  /** Servicing: this host instance has handed over; its worker is terminated, as expected. */
  async retire(): Promise<void> {
    this.retired = true;
    await this.worker.terminate();
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

  /**
   * The next event of `type`. Events of other types stay queued for their own next() (a guest's
   * milestones and probe answers interleave); a worker that fails or exits rejects.
   */
  async next<T extends DemoEvent['type']>(type: T): Promise<Extract<DemoEvent, { type: T }>> {
    for (;;) {
      const i = this.events.findIndex((e) => e.type === type);
      if (i >= 0) return this.events.splice(i, 1)[0] as Extract<DemoEvent, { type: T }>;
      if (this.failure !== null) throw this.failure;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
  }
}

/**
 * Host and guest in two worker threads; this thread only steps them and collects their reports.
 * With `servicing` > 0, each host restart is a new host worker: started ahead as a standby (so its
 * modules are loaded), it adopts the state the previous host worker saved, which is terminated.
 */
export async function runWorkers(
  w: DemoWorkload,
  log: Log,
  timeoutSeconds = 120,
  servicing = 0,
): Promise<Reports> {
  const url = siblingModule(import.meta.url, 'demo-worker');
  const workers: Worker[] = [];
  const start = (data: DemoWorkerData): WorkerSide => {
    const worker = startWorker(url, { workerData: data });
    workers.push(worker);
    return new WorkerSide(data.role, worker, log);
  };
  const restarts: ServicingCycle[] = [];
  const steps = async (): Promise<Reports> => {
    let host = start({ kind: 'vmbus-demo', role: 'host', workload: w });
    const { descriptor } = await host.next('descriptor');
    log('main', 'host worker created the hypervisor and the guest partition; starting the guest worker');
    const guest = start({ kind: 'vmbus-demo', role: 'guest', workload: w, descriptor, servicing });
    const [h, g] = await Promise.all([host.next('ready'), guest.next('ready')]);
    log('host', `VSPs offered; the guest negotiated ${h.text}`);
    log('guest', `VMBus connected, drivers attached; ${g.text}`);
    if (servicing === 0) {
      host.send({ type: 'run' });
      guest.send({ type: 'run' });
      await Promise.all([host.next('ran'), guest.next('ran')]);
    } else {
      // The ICs first (a restart is taken while they are idle), then the block I/O with restarts.
      // The next host instances are started ahead and loaded before the I/O begins (a worker
      // takes longer to load than a stretch of I/O may last); the pool is topped up as they go.
      const standbyData: DemoWorkerData = { kind: 'vmbus-demo', role: 'host', workload: w, standby: true };
      const pool: WorkerSide[] = [];
      let started = 0;
      const topUp = (): void => {
        while (pool.length < STANDBY_POOL && started < servicing) {
          pool.push(start(standbyData));
          started++;
        }
      };
      topUp();
      host.send({ type: 'run' });
      await host.next('ran');
      await Promise.all(pool.map((p) => p.ready('standby')));
      guest.send({ type: 'run' });
      const retiring: Promise<void>[] = [];
      for (let cycle = 1; cycle <= servicing; cycle++) {
        const m = await guest.next('milestone');
        const standby = pool.shift()!;
        await standby.ready('standby');
        host.send({ type: 'save' });
        const s = await host.next('saved');
        // The old instance is done; its worker goes while the new instance takes over.
        retiring.push(host.retire());
        guest.send({ type: 'probe' });
        const { inFlight } = await guest.next('probed');
        standby.send({ type: 'adopt', saved: s.saved });
        const r = await standby.next('restored');
        host = standby;
        const c: ServicingCycle = {
          cycle,
          atPair: m.done,
          inFlight,
          saveMs: s.saveMs,
          restoreMs: r.restoreMs,
          awayMs: r.resumedAt - s.pausedAt,
          stateBytes: savedStateBytes(s.saved as DemoHostInstanceSaved),
        };
        restarts.push(c);
        log('main', restartLine(c, servicing, pairCount(w)));
        topUp();
      }
      await Promise.all(retiring);
      await guest.next('ran');
    }
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
    return { host: hostReport, guest: guestReport, teardownErrors, restarts };
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
  const restartsText =
    o.servicing === 0
      ? ''
      : `; ${o.servicing} host restart${o.servicing === 1 ? '' : 's'} during the block I/O ` +
        `(${o.sameThread ? 'a new hypervisor, VMBus and KMCL on this thread' : 'each in a new worker thread'})`;
  stream.write(
    `vmbus demo: ${o.sameThread ? 'host and guest on one thread' : 'host and guest in two worker threads'}; ` +
      `${pairCount(w)} block writes + ${pairCount(w)} verifying reads (${w.ioBlocks} x ${w.blockSize} B, ` +
      `up to ${w.queueDepth} in flight) on a ${w.blocks}-block disk, ${w.heartbeats} heartbeats, ` +
      `${w.kvpKeys} KVP records, 1 time SYNC + ${w.timeSamples} samples${restartsText}\n`,
  );
  let reports: Reports;
  try {
    reports = o.sameThread
      ? await runSameThread(w, log, undefined, o.timeoutSeconds, o.servicing)
      : await runWorkers(w, log, o.timeoutSeconds, o.servicing);
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
    servicing: { requested: o.servicing, restarts: reports.restarts },
  });
  if (o.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else process.stdout.write(`\n${renderSummary(summary)}\n`);
  return summary.ok ? 0 : 1;
}
