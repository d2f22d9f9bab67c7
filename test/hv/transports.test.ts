// The hv scenarios on both transports: same-thread (deterministic scheduler) and cross-thread
// (each guest partition in its own worker, SharedArrayBuffers + Atomics). Each run must give the
// scenario's expected trace, so the two transports behave identically.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { type HvTransport, Hypervisor } from '../../src/hv/index.js';
import { siblingModule, startWorker } from '../../src/util/worker.js';
import type { GuestReply, GuestRequest } from './guest-worker.js';
import { SCENARIOS, type Scenario, type Trace } from './scenarios.js';
import { createLocalSide, createSharedSide, type HostSide } from './side-channel.js';

const MEMORY = 64 * 1024;
const SCENARIO_TIMEOUT_MS = 15_000;
const workers: Worker[] = [];
const replies = new Map<number, (r: GuestReply) => void>();
let nextRequest = 0;

/**
 * Waits for both halves, but gives up after SCENARIO_TIMEOUT_MS: a hang must fail the test, and
 * closing the partitions (in the callers' `finally`) then releases whatever still waits.
 */
async function allHalves(host: Promise<string[]>, guests: Promise<string[]>[]): Promise<Trace> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('scenario timed out')), SCENARIO_TIMEOUT_MS);
  });
  try {
    const [hostTrace, ...guestTraces] = await Promise.race([Promise.all([host, ...guests]), timeout]);
    return { host: hostTrace!, guests: guestTraces };
  } finally {
    clearTimeout(timer);
  }
}

async function runSameThread(s: Scenario): Promise<Trace> {
  const hv = new Hypervisor({ transport: 'same-thread' });
  try {
    const partitions = Array.from({ length: s.partitions }, () =>
      hv.createPartition({ memoryBytes: MEMORY, ...s.options }),
    );
    const sides = partitions.map(() => createLocalSide());
    const host = s.host({ transport: 'same-thread', partitions, sides: sides.map((x) => x.host) });
    const guests = partitions.map((p, index) =>
      s.guest({
        transport: 'same-thread',
        index,
        partition: {
          partitionId: p.partitionId,
          vmbusHandle: p.vmbusHandle,
          name: p.name,
          memory: p.memory,
          link: p.guest!,
        },
        side: sides[index]!.guest,
      }),
    );
    return await allHalves(host, guests);
  } finally {
    hv.close();
  }
}

function askWorker(worker: Worker, req: Omit<GuestRequest, 'id'>): Promise<string[]> {
  const id = nextRequest++;
  return new Promise((resolve, reject) => {
    replies.set(id, (r) => ('error' in r ? reject(new Error(`guest worker: ${r.error}`)) : resolve(r.trace)));
    worker.postMessage({ ...req, id } satisfies GuestRequest);
  });
}

async function runCrossThread(s: Scenario): Promise<Trace> {
  const hv = new Hypervisor({ transport: 'cross-thread' });
  const sides: HostSide[] = [];
  try {
    const partitions = Array.from({ length: s.partitions }, () =>
      hv.createPartition({ memoryBytes: MEMORY, ...s.options }),
    );
    const shared = partitions.map(() => createSharedSide());
    sides.push(...shared.map((x) => x.host));
    const host = s.host({ transport: 'cross-thread', partitions, sides });
    const guests = partitions.map((p, index) =>
      askWorker(workers[index]!, {
        scenario: s.name,
        index,
        partition: p.descriptor,
        side: shared[index]!.buffer,
      }),
    );
    return await allHalves(host, guests);
  } finally {
    hv.close();
    for (const side of sides) side.dispose();
  }
}

const results = new Map<string, Partial<Record<HvTransport, Trace>>>();

describe('hv scenarios on both transports', () => {
  before(async () => {
    const count = Math.max(...SCENARIOS.map((s) => s.partitions));
    for (let i = 0; i < count; i++) {
      const worker = startWorker(siblingModule(import.meta.url, 'guest-worker'));
      worker.on('message', (r: GuestReply) => replies.get(r.id)?.(r));
      worker.on('error', (e) => {
        for (const settle of replies.values()) settle({ id: -1, error: String(e) });
      });
      workers.push(worker);
    }
    // Each worker says 'ready' once its module graph is loaded.
    await Promise.all(workers.map((w) => once(w, 'message')));
  });

  after(async () => {
    await Promise.all(workers.map((w) => w.terminate()));
  });

  for (const s of SCENARIOS) {
    for (const transport of ['same-thread', 'cross-thread'] as const) {
      test(`${s.name} (${transport})`, async () => {
        const trace = transport === 'same-thread' ? await runSameThread(s) : await runCrossThread(s);
        assert.deepEqual(trace, s.expected);
        results.set(s.name, { ...results.get(s.name), [transport]: trace });
      });
    }
  }

  test('both transports produced the same traces for every scenario', () => {
    for (const s of SCENARIOS) {
      const r = results.get(s.name);
      assert.ok(r?.['same-thread'] && r['cross-thread'], `${s.name} ran on both transports`);
      assert.deepEqual(r['same-thread'], r['cross-thread']);
    }
  });
});
