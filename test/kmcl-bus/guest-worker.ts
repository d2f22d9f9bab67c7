// Worker entry for the cross-thread KMCL scenarios: brings up the guest's KMCL from its
// descriptor (SharedArrayBuffers and numbers only: the partition's RAM and SynIC link) and runs
// the guest half of a scenario, the VSC, in this thread. Results go back as plain data.
import { parentPort } from 'node:worker_threads';
import { attachKmclGuest, type KmclGuestDescriptor } from '../../src/kmcl/bus-port.js';
import { attachSharedGuestSide } from '../hv/side-channel.js';
import { clientTable } from './kit.js';
import { type Result, scenarioByName } from './scenarios.js';

export type GuestRequest =
  | {
      readonly id: number;
      readonly scenario: string;
      readonly guest: KmclGuestDescriptor;
      readonly side: SharedArrayBuffer;
    }
  /** The host half is done too: the guest's VMBus client may go. */
  | { readonly id: number; readonly release: true };

export type GuestReply =
  | { readonly id: number; readonly result: Result }
  | { readonly id: number; readonly error: string };

const port = parentPort!;
const live = new Map<number, () => void>();
port.on('message', async (req: GuestRequest) => {
  if ('release' in req) {
    live.get(req.id)?.();
    live.delete(req.id);
    return;
  }
  let reply: GuestReply;
  try {
    const guest = await attachKmclGuest(req.guest);
    // The client stays until the host half is done (it still answers the host's rescind).
    live.set(req.id, () => guest.close());
    const result = await scenarioByName(req.scenario).guest({
      C: clientTable(guest.provider),
      bus: guest.bus,
      side: attachSharedGuestSide(req.side),
    });
    reply = { id: req.id, result };
  } catch (e) {
    reply = { id: req.id, error: e instanceof Error ? (e.stack ?? e.message) : String(e) };
  }
  port.postMessage(reply);
});
port.postMessage({ id: -1, error: 'ready' } satisfies GuestReply);
