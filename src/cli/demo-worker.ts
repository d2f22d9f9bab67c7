// Worker entry of `vmbus demo`: runs the host half (role 'host': creates the hypervisor, the guest
// partition and the VSPs, and hands the partition's descriptor to the main thread) or the guest
// half (role 'guest': attaches the partition from that descriptor, connects its VMBus client and
// starts the VSCs) in its own thread. The main thread steps both through the same phases with
// plain commands (run, finish, stop) and gets plain results back; only the descriptor's
// SharedArrayBuffers and plain numbers and strings cross.
// With --servicing, a host instance is also told to 'save' (it saves its VSPs, detaches the
// partition and posts the saved state; the main thread then terminates it), and a 'standby' host
// worker, started beforehand, is told to 'adopt' that state and carries on as the host. The guest
// answers 'probe' (its storage requests in flight) at any time, even while its workload runs.

import { type MessagePort, parentPort, workerData } from 'node:worker_threads';
import { attachKmclGuest, createKmclSystem, type KmclGuestDescriptor } from '../kmcl/bus-port.js';
import { DemoGuest } from './demo-guest.js';
import {
  adoptHostInstance,
  closeHostInstance,
  DEMO_GUEST_MEMORY_BYTES,
  DemoErrorLog,
  DemoHost,
  type DemoHostInstance,
  type DemoHostInstanceSaved,
  offersOf,
  saveHostInstance,
} from './demo-host.js';
import {
  type DemoCommand,
  type DemoEvent,
  type DemoWorkerData,
  errorText,
  servicingPoints,
} from './demo-protocol.js';

/**
 * Commands in arrival order; `next(type)` waits for the next one (it must be of that type).
 * Commands with a handler (`on`) are answered as they arrive, whatever the worker is doing.
 */
class Inbox {
  private readonly queue: DemoCommand[] = [];
  private waiter: ((c: DemoCommand) => void) | null = null;
  private readonly handlers = new Map<DemoCommand['type'], () => void>();

  constructor(port: MessagePort) {
    port.on('message', (c: DemoCommand) => {
      const h = this.handlers.get(c.type);
      if (h !== undefined) {
        h();
        return;
      }
      const w = this.waiter;
      if (w !== null) {
        this.waiter = null;
        w(c);
      } else this.queue.push(c);
    });
  }

  on(type: DemoCommand['type'], handler: () => void): void {
    this.handlers.set(type, handler);
  }

  /** The next command, whatever its type. */
  async take(): Promise<DemoCommand> {
    return (
      this.queue.shift() ??
      (await new Promise<DemoCommand>((resolve) => {
        this.waiter = resolve;
      }))
    );
  }

  async next<T extends DemoCommand['type']>(type: T): Promise<Extract<DemoCommand, { type: T }>> {
    const c = await this.take();
    if (c.type !== type) throw new Error(`expected the command '${type}', got '${c.type}'`);
    return c as Extract<DemoCommand, { type: T }>;
  }
}

function post(event: DemoEvent): void {
  parentPort!.postMessage(event);
}

const progress = (text: string): void => post({ type: 'progress', text });

async function runHost(data: DemoWorkerData, inbox: Inbox): Promise<void> {
  const errors = new DemoErrorLog();
  let instance: DemoHostInstance;
  if (data.standby === true) {
    // A later instance: it waits, loaded, until the previous one has saved.
    post({ type: 'standby' });
    const { saved } = await inbox.next('adopt');
    const r = await adoptHostInstance(saved as DemoHostInstanceSaved, data.workload, errors);
    instance = r.instance;
    post({
      type: 'restored',
      restoreMs: r.restoreMs,
      resumedAt: r.resumedAt,
      text: `restored ${instance.host.vsps.summary().channels.length} channels`,
    });
  } else {
    const sys = await createKmclSystem({
      transport: 'cross-thread',
      memoryBytes: DEMO_GUEST_MEMORY_BYTES,
      provider: errors.options,
    });
    const host = new DemoHost(sys.host, data.workload, offersOf(sys.hostBus), errors);
    instance = {
      hv: sys.hv,
      hostBus: sys.hostBus,
      host,
      partitionId: sys.descriptors[0]!.partition.partitionId,
    };
    post({ type: 'descriptor', descriptor: sys.descriptors[0] });
    post({ type: 'ready', text: await host.ready() });
  }
  const host = instance.host;
  for (;;) {
    const c = await inbox.take();
    switch (c.type) {
      case 'run':
        await host.run(progress);
        post({ type: 'ran' });
        break;
      case 'save': {
        // This instance ends here: the main thread terminates the worker once it has the state.
        const s = await saveHostInstance(instance);
        post({ type: 'saved', saved: s.saved, saveMs: s.saveMs, pausedAt: s.pausedAt });
        return;
      }
      case 'finish':
        post({ type: 'report', report: await host.finish() });
        break;
      case 'stop': {
        let error: string | null = null;
        try {
          await closeHostInstance(instance);
        } catch (e) {
          error = errorText(e);
        }
        post({ type: 'stopped', error });
        return;
      }
      default:
        throw new Error(`the host got the command '${c.type}'`);
    }
  }
}

async function runGuest(data: DemoWorkerData, inbox: Inbox): Promise<void> {
  const errors = new DemoErrorLog();
  const attached = await attachKmclGuest(data.descriptor as KmclGuestDescriptor, {
    provider: errors.options,
  });
  const guest = new DemoGuest(attached.provider, attached.bus.allocator, data.workload, errors);
  inbox.on('probe', () => post({ type: 'probed', inFlight: guest.probe() }));
  post({ type: 'ready', text: await guest.ready() });
  await inbox.next('run');
  await guest.run(progress, servicingPoints(data.workload, data.servicing ?? 0), (index, done) =>
    post({ type: 'milestone', index, done }),
  );
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
