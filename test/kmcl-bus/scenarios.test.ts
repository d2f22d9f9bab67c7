// The KMCL scenarios over the real VMBus in both hv transports: same thread (host and guest KMCL
// on one deterministic scheduler) and worker threads (the guest's VSC in a worker, the host's VSP
// here; only guest RAM and SynIC messages/signals cross). Each run's plain results are checked
// by the scenario.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { createKmclSystem } from '../../src/kmcl/bus-port.js';
import { siblingModule, startWorker } from '../../src/util/worker.js';
import { createLocalSide, createSharedSide } from '../hv/side-channel.js';
import type { GuestReply, GuestRequest } from './guest-worker.js';
import { clientTable, serverTable } from './kit.js';
import { type KmclScenario, type Result, SCENARIOS } from './scenarios.js';

const TIMEOUT_MS = 30_000;

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

async function runSameThread(s: KmclScenario): Promise<[Result, Result]> {
  const sys = await createKmclSystem({ transport: 'same-thread' });
  try {
    const side = createLocalSide();
    const host = s.host({ S: serverTable(sys.host), hostBus: sys.hostBus, side: side.host });
    const guest = s.guest({ C: clientTable(sys.guests[0]!), bus: sys.guestBuses[0]!, side: side.guest });
    return await withTimeout(s.name, Promise.all([host, guest]));
  } finally {
    await sys.close();
  }
}

let worker: Worker;
const replies = new Map<number, (r: GuestReply) => void>();
let nextId = 0;

async function runCrossThread(s: KmclScenario): Promise<[Result, Result]> {
  const sys = await createKmclSystem({ transport: 'cross-thread' });
  const shared = createSharedSide();
  try {
    const host = s.host({ S: serverTable(sys.host), hostBus: sys.hostBus, side: shared.host });
    const id = nextId++;
    const guest = new Promise<Result>((resolve, reject) => {
      replies.set(id, (r) =>
        'error' in r ? reject(new Error(`guest worker: ${r.error}`)) : resolve(r.result),
      );
      worker.postMessage({
        id,
        scenario: s.name,
        guest: sys.descriptors[0]!,
        side: shared.buffer,
      } satisfies GuestRequest);
    });
    try {
      return await withTimeout(s.name, Promise.all([host, guest]));
    } finally {
      worker.postMessage({ id, release: true } satisfies GuestRequest);
    }
  } finally {
    shared.host.dispose();
    await sys.close();
  }
}

describe('kmcl over the bus: scenarios', () => {
  before(async () => {
    worker = startWorker(siblingModule(import.meta.url, 'guest-worker'));
    worker.on('message', (r: GuestReply) => replies.get(r.id)?.(r));
    const [ready] = (await once(worker, 'message')) as [GuestReply];
    assert.equal(ready.id, -1);
  });
  after(async () => {
    await worker.terminate();
  });

  for (const s of SCENARIOS) {
    test(`${s.name} (same thread)`, async () => {
      const [h, g] = await runSameThread(s);
      s.check(h, g);
    });
    test(`${s.name} (worker threads)`, async () => {
      const [h, g] = await runCrossThread(s);
      s.check(h, g);
    });
  }
});
