// The ring suite: throughput of one VMBus ring (RingWriter in one worker thread, RingReader in
// another, on a GuestMemory SharedArrayBuffer) for 64-byte and 4 KiB inband packets, each with
// batched publish (write many, commit once; read many, commit once) and per-packet publish; and,
// in the same run, its anchors: MessagePort between the same two threads, and DPDK's ring code
// between two processes. Ratios: ours (best variant) / theirs.

import type { Worker } from 'node:worker_threads';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { RingMemory } from '../src/ring/index.js';
import { siblingModule, startWorker } from '../src/util/worker.js';
import { buildDpdkPeer, dpdkStream, messagePortStream } from './anchors.js';
import {
  type Figure,
  fastest,
  type Measurable,
  measureInterleaved,
  type RatioEntry,
  ratioOf,
  type Sample,
  type Suite,
  type SuiteOptions,
  type SuiteResult,
} from './harness.js';
import {
  type BenchCommand,
  type BenchWorkerData,
  FULL_CHECK_EVERY,
  type RingStreamCommand,
  SPIN_MICROSECONDS,
  type StreamResult,
  SYNC_GO,
  SYNC_WORDS,
  type WorkerReply,
} from './ring-worker.js';

/** Data area of the benchmark ring: 1 MiB, as the DPDK anchor's ring file (uio_hv_generic uses 2 MiB). */
export const RING_DATA_BYTES = 1024 * 1024;
/** First PFN of the ring in guest memory (PFN 0 is never used). */
const RING_FIRST_PFN = 16;
/** Packets per commit in the batched variants. */
export const BATCH = 64;

type Omit2<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never;
type CommandBody = Omit2<BenchCommand, 'id' | 'go'>;

interface Waiter {
  ready: () => void;
  done: (r: StreamResult) => void;
  fail: (e: Error) => void;
}

/** Two benchmark workers sharing one guest memory and a sync buffer; runs writer -> reader streams. */
export class WorkerPair {
  readonly memory: GuestMemory;
  private readonly sync: Int32Array;
  private readonly workers: readonly [Worker, Worker];
  private readonly waiters = new Map<number, Waiter>();
  private nextId = 1;
  private go = 0;
  private failure: Error | null = null;

  constructor(memoryBytes: number) {
    this.memory = new GuestMemory(memoryBytes);
    const syncBuffer = new SharedArrayBuffer(SYNC_WORDS * 4);
    this.sync = new Int32Array(syncBuffer);
    const workerData: BenchWorkerData = { memory: this.memory.buffer, sync: syncBuffer };
    const url = siblingModule(import.meta.url, 'ring-worker');
    this.workers = [startWorker(url, { workerData }), startWorker(url, { workerData })];
    for (const w of this.workers) {
      w.on('message', (m: WorkerReply) => this.onReply(m));
      w.on('error', (e) => this.failAll(e));
      w.on('exit', (code) => {
        if (this.waiters.size > 0) this.failAll(new Error(`bench worker exited (code ${code})`));
      });
    }
  }

  /**
   * Runs one stream: the reader command on the second worker, the writer command on the first;
   * both start together when both are ready. Resolves to both halves' results.
   */
  async stream(
    writerCommand: CommandBody,
    readerCommand: CommandBody,
  ): Promise<{ writer: StreamResult; reader: StreamResult }> {
    if (this.failure) throw this.failure;
    const go = ++this.go;
    const reader = this.send(1, readerCommand, go);
    await reader.ready;
    const writer = this.send(0, writerCommand, go);
    await writer.ready;
    Atomics.store(this.sync, SYNC_GO, go);
    Atomics.notify(this.sync, SYNC_GO);
    const [w, r] = await Promise.all([writer.done, reader.done]);
    return { writer: w, reader: r };
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private send(
    index: 0 | 1,
    body: CommandBody,
    go: number,
  ): { ready: Promise<void>; done: Promise<StreamResult> } {
    const id = this.nextId++;
    let ready!: () => void;
    let done!: (r: StreamResult) => void;
    let fail!: (e: Error) => void;
    const readyP = new Promise<void>((res, rej) => {
      ready = res;
      fail = rej;
    });
    const doneP = new Promise<StreamResult>((res, rej) => {
      done = res;
      const prev = fail;
      fail = (e) => {
        prev(e);
        rej(e);
      };
    });
    // A failure before "ready" rejects both; avoid an unhandled rejection on the second.
    doneP.catch(() => {});
    this.waiters.set(id, { ready, done, fail });
    const command = { ...body, id, go } as BenchCommand;
    const transfer = command.cmd === 'port-write' || command.cmd === 'port-read' ? [command.port] : [];
    this.workers[index].postMessage(command, transfer);
    return { ready: readyP, done: doneP };
  }

  private onReply(m: WorkerReply): void {
    const w = this.waiters.get(m.id);
    if (!w) return;
    if (m.type === 'ready') w.ready();
    else if (m.type === 'done') {
      this.waiters.delete(m.id);
      w.done(m.result);
    } else {
      this.waiters.delete(m.id);
      w.fail(new Error(`bench worker: ${m.message}`));
    }
  }

  private failAll(e: Error): void {
    this.failure ??= e;
    for (const w of this.waiters.values()) w.fail(e);
    this.waiters.clear();
  }
}

/** The ring's PFN list: control page then RING_DATA_BYTES / 4096 data pages. */
export function ringPfns(): number[] {
  const pages = 1 + RING_DATA_BYTES / 4096;
  return Array.from({ length: pages }, (_, i) => RING_FIRST_PFN + i);
}

/** One timed ring stream of `packets` packets of `size` bytes, committing every `batch`. */
export async function ringStream(
  pair: WorkerPair,
  packets: number,
  size: number,
  batch: number,
): Promise<Sample> {
  const pfns = ringPfns();
  RingMemory.fromGuestMemory(pair.memory, pfns).initialize();
  const base = { pfns, packets, size, batch } satisfies Omit<RingStreamCommand, 'cmd' | 'id' | 'go'>;
  const { writer, reader } = await pair.stream({ cmd: 'ring-write', ...base }, { cmd: 'ring-read', ...base });
  const seconds = (reader.endMs - writer.startMs) / 1000;
  const problems: string[] = [];
  if (reader.mismatches > 0) problems.push(`${reader.mismatches} packets did not verify`);
  if (reader.timeouts + writer.timeouts > 0) {
    problems.push(`${reader.timeouts + writer.timeouts} sleeps ended by timeout (lost wake-ups)`);
  }
  return {
    packets,
    seconds,
    details: {
      signalsToReader: writer.signals,
      signalsToWriter: reader.signals,
      readerSleeps: reader.sleeps,
      writerSleeps: writer.sleeps,
      mismatches: reader.mismatches,
      fullChecks: reader.fullChecks,
    },
    ...(problems.length > 0 ? { error: problems.join('; ') } : {}),
  };
}

export const ringSuite: Suite = {
  name: 'ring',
  description:
    'one ring between two worker threads (64 B / 4 KiB, batched / per-packet publish) vs MessagePort and DPDK',
  async run(o: SuiteOptions): Promise<SuiteResult> {
    const notes: string[] = [
      `ring: ${RING_DATA_BYTES / 1024} KiB data area in guest memory; writer and reader in two worker threads; ` +
        `batched = ${BATCH} packets a commit; wait = poll ${SPIN_MICROSECONDS} us, then Atomics.wait on a bell rung only when the ring says to signal`,
      'reader copies each payload out of the ring (as DPDK recv_raw does) and checks id, type, length, ' +
        `stamped index and last word of every packet, all bytes of every ${FULL_CHECK_EVERY}th`,
      'the figures are measured in interleaved rounds (one run of each per round), best run kept',
    ];
    o.log('ring suite: building the DPDK peer');
    const peer = await buildDpdkPeer();
    if (typeof peer === 'string') notes.push(`DPDK anchor not measured: ${peer}`);
    else {
      notes.push(
        'DPDK: dpdk-ringpeer stream-write -> stream-read, two processes, same ring size, publish and signal-check every packet, ' +
          'per-byte pattern generation and full memcmp on its side',
      );
    }
    const pair = new WorkerPair(RING_FIRST_PFN * 4096 + (1 + RING_DATA_BYTES / 4096) * 4096 + 64 * 1024);
    let figures: Record<string, Figure>;
    try {
      const items: Measurable[] = [];
      for (const size of [64, 4096]) {
        const initial = size === 64 ? 400_000 : 40_000;
        items.push(
          {
            key: `ring-${size}-batch`,
            label: `ring ${size} B, commit every ${BATCH}`,
            size,
            initial,
            run: (n) => ringStream(pair, n, size, BATCH),
          },
          {
            key: `ring-${size}-per-packet`,
            label: `ring ${size} B, commit every packet`,
            size,
            initial,
            run: (n) => ringStream(pair, n, size, 1),
          },
          {
            key: `messageport-${size}`,
            label: `MessagePort ${size} B (Uint8Array copies)`,
            size,
            initial: size === 64 ? 100_000 : 20_000,
            run: (n) => messagePortStream(pair, n, size),
          },
          {
            key: `dpdk-${size}`,
            label: `DPDK ringpeer ${size} B (2 processes)`,
            size,
            initial,
            run: (n) => {
              if (typeof peer === 'string') throw new Error(peer);
              return dpdkStream(peer, n, size, RING_DATA_BYTES);
            },
          },
        );
      }
      figures = await measureInterleaved(items, o);
    } finally {
      await pair.close();
      if (typeof peer !== 'string') peer.dispose();
    }

    const best64 = fastest(figures, ['ring-64-batch', 'ring-64-per-packet']);
    const best4096 = fastest(figures, ['ring-4096-batch', 'ring-4096-per-packet']);
    const ratios: Record<string, RatioEntry> = {
      vsMessagePort64: ratioOf(figures, 'ring', best64, 'messageport-64', 10),
      vsMessagePort4096: ratioOf(figures, 'ring', best4096, 'messageport-4096'),
      vsDpdk64: ratioOf(figures, 'ring', best64, 'dpdk-64', 1.5),
      vsDpdk4096: ratioOf(figures, 'ring', best4096, 'dpdk-4096', 1.0),
      vsDpdk64PerPacket: ratioOf(
        figures,
        'ring',
        'ring-64-per-packet',
        'dpdk-64',
        undefined,
        'both publish every packet',
      ),
      vsDpdk4096PerPacket: ratioOf(
        figures,
        'ring',
        'ring-4096-per-packet',
        'dpdk-4096',
        undefined,
        'both publish every packet',
      ),
    };
    return { figures, ratios, notes };
  },
};
