// Worker entry of `vmbus demo`: runs the host half (role 'host': creates the hypervisor, the guest
// partition and the VSPs, and hands the partition's descriptor to the main thread) or the guest
// half (role 'guest': attaches the partition from that descriptor, connects its VMBus client and
// starts the VSCs) in its own thread. The main thread steps both through the same phases with
// plain commands (run, finish, stop) and gets plain results back; only the descriptor's
// SharedArrayBuffers and plain numbers and strings cross.

import { type MessagePort, parentPort, workerData } from 'node:worker_threads';
import { attachKmclGuest, createKmclSystem, type KmclGuestDescriptor } from '../kmcl/bus-port.js';
import { DemoGuest } from './demo-guest.js';
import { DEMO_GUEST_MEMORY_BYTES, DemoErrorLog, DemoHost, offersOf } from './demo-host.js';
import { type DemoCommand, type DemoEvent, type DemoWorkerData, errorText } from './demo-protocol.js';

/** Commands in arrival order; `next(type)` waits for the next one (it must be of that type). */
class Inbox {
  private readonly queue: DemoCommand[] = [];
  private waiter: ((c: DemoCommand) => void) | null = null;

  constructor(port: MessagePort) {
    port.on('message', (c: DemoCommand) => {
      const w = this.waiter;
      if (w !== null) {
        this.waiter = null;
        w(c);
      } else this.queue.push(c);
    });
  }

  async next(type: DemoCommand['type']): Promise<void> {
    const c =
      this.queue.shift() ??
      (await new Promise<DemoCommand>((resolve) => {
        this.waiter = resolve;
      }));
    if (c.type !== type) throw new Error(`expected the command '${type}', got '${c.type}'`);
  }
}

function post(event: DemoEvent): void {
  parentPort!.postMessage(event);
}

const progress = (text: string): void => post({ type: 'progress', text });

async function runHost(data: DemoWorkerData, inbox: Inbox): Promise<void> {
  const errors = new DemoErrorLog();
  const sys = await createKmclSystem({
    transport: 'cross-thread',
    memoryBytes: DEMO_GUEST_MEMORY_BYTES,
    provider: errors.options,
  });
  const host = new DemoHost(sys.host, data.workload, offersOf(sys), errors);
  post({ type: 'descriptor', descriptor: sys.descriptors[0] });
  post({ type: 'ready', text: await host.ready() });
  await inbox.next('run');
  await host.run(progress);
  post({ type: 'ran' });
  await inbox.next('finish');
  post({ type: 'report', report: await host.finish() });
  await inbox.next('stop');
  let error: string | null = null;
  try {
    await host.stop();
    await sys.close();
  } catch (e) {
    error = errorText(e);
  }
  post({ type: 'stopped', error });
}

async function runGuest(data: DemoWorkerData, inbox: Inbox): Promise<void> {
  const errors = new DemoErrorLog();
  const attached = await attachKmclGuest(data.descriptor as KmclGuestDescriptor, {
    provider: errors.options,
  });
  const guest = new DemoGuest(attached.provider, attached.bus.allocator, data.workload, errors);
  post({ type: 'ready', text: await guest.ready() });
  await inbox.next('run');
  await guest.run(progress);
  post({ type: 'ran' });
  await inbox.next('finish');
  post({ type: 'report', report: guest.report() });
  await inbox.next('stop');
  // The drivers close their channels; the VMBus client stays to answer the host's rescinds and
  // goes with the thread.
  let error: string | null = null;
  try {
    await guest.stop();
  } catch (e) {
    error = errorText(e);
  }
  post({ type: 'stopped', error });
}

if (
  parentPort !== null &&
  workerData !== null &&
  typeof workerData === 'object' &&
  (workerData as { kind?: unknown }).kind === 'vmbus-demo'
) {
  const data = workerData as DemoWorkerData;
  const inbox = new Inbox(parentPort);
  (data.role === 'host' ? runHost(data, inbox) : runGuest(data, inbox)).catch((e: unknown) => {
    post({ type: 'error', message: e instanceof Error ? (e.stack ?? e.message) : String(e) });
  });
}
