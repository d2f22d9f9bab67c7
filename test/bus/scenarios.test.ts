// The bus scenarios on both hv transports: same-thread (deterministic scheduler) and
// cross-thread (the guest half in a worker). Each scenario's checks run on each transport's
// results, and the two transports must give identical traces and notes; on each transport the
// host's received messages must be exactly what the guest sent, and the other way round.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { Hypervisor } from '../../src/hv/index.js';
import { siblingModule, startWorker } from '../../src/util/worker.js';
import { createLocalSide, createSharedSide } from '../hv/side-channel.js';
import type { GuestReply, GuestRequest } from './guest-worker.js';
import { type BusScenario, ONE_GIB_SCENARIO, SCENARIOS, type SideResult } from './scenarios.js';

const TIMEOUT_MS = 20_000;

interface RunResult {
  host: SideResult;
  guest: SideResult;
}

let worker: Worker;
const replies = new Map<number, (r: GuestReply) => void>();
let nextId = 0;

async function withTimeout<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out`)), TIMEOUT_MS);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function runSameThread(s: BusScenario): Promise<RunResult> {
  const hv = new Hypervisor({ transport: 'same-thread' });
  try {
    const p = hv.createPartition({
      memoryBytes: s.memoryBytes ?? 64 * 1024 * 1024,
      queueSlots: s.queueSlots,
    });
    const side = createLocalSide();
    const host = s.host({ transport: 'same-thread', partition: p, side: side.host });
    const guest = s.guest({
      transport: 'same-thread',
      partition: {
        partitionId: p.partitionId,
        vmbusHandle: p.vmbusHandle,
        name: p.name,
        memory: p.memory,
        link: p.guest!,
      },
      side: side.guest,
    });
    const [h, g] = await withTimeout(s.name, Promise.all([host, guest]));
    return { host: h, guest: g };
  } finally {
    hv.close();
  }
}

async function runCrossThread(s: BusScenario): Promise<RunResult> {
  const hv = new Hypervisor({ transport: 'cross-thread' });
  const shared = createSharedSide();
  try {
    const p = hv.createPartition({
      memoryBytes: s.memoryBytes ?? 64 * 1024 * 1024,
      queueSlots: s.queueSlots,
    });
    const host = s.host({ transport: 'cross-thread', partition: p, side: shared.host });
    const id = nextId++;
    const guest = new Promise<SideResult>((resolve, reject) => {
      replies.set(id, (r) =>
        'error' in r ? reject(new Error(`guest worker: ${r.error}`)) : resolve(r.result),
      );
      worker.postMessage({
        id,
        scenario: s.name,
        partition: p.descriptor,
        side: shared.buffer,
      } satisfies GuestRequest);
    });
    const [h, g] = await withTimeout(s.name, Promise.all([host, guest]));
    return { host: h, guest: g };
  } finally {
    hv.close();
    shared.host.dispose();
  }
}

function checkRun(s: BusScenario, r: RunResult): void {
  assert.deepEqual(r.host.trace.in, r.guest.trace.out, 'the host received exactly what the guest sent');
  assert.deepEqual(r.guest.trace.in, r.host.trace.out, 'the guest received exactly what the host sent');
  s.check?.(r.host, r.guest);
}

describe('bus scenarios on both transports', () => {
  before(async () => {
    worker = startWorker(siblingModule(import.meta.url, 'guest-worker'));
    worker.on('message', (r: GuestReply) => replies.get(r.id)?.(r));
    worker.on('error', (e) => {
      for (const settle of replies.values()) settle({ id: -1, error: String(e) });
    });
    await once(worker, 'message'); // 'ready'
  });

  after(async () => {
    await worker.terminate();
  });

  for (const s of [...SCENARIOS, ONE_GIB_SCENARIO]) {
    test(s.name, async () => {
      const same = await runSameThread(s);
      checkRun(s, same);
      const cross = await runCrossThread(s);
      checkRun(s, cross);
      assert.deepEqual(cross, same, 'both transports give the same traces and notes');
    });
  }
});
