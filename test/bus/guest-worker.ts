// Worker entry for the cross-thread bus scenarios: attaches the guest partition from its
// descriptor (SharedArrayBuffers and numbers only) and runs the guest half of a scenario there.
import { parentPort } from 'node:worker_threads';
import { attachGuestPartition, type HvPartitionDescriptor } from '../../src/hv/index.js';
import { attachSharedGuestSide } from '../hv/side-channel.js';
import { type SideResult, scenarioByName } from './scenarios.js';

export interface GuestRequest {
  readonly id: number;
  readonly scenario: string;
  readonly partition: HvPartitionDescriptor;
  readonly side: SharedArrayBuffer;
}

export type GuestReply =
  | { readonly id: number; readonly result: SideResult }
  | { readonly id: number; readonly error: string };

const port = parentPort!;
port.on('message', async (req: GuestRequest) => {
  let reply: GuestReply;
  try {
    const partition = attachGuestPartition(req.partition);
    // The link ends when the host destroys the partition; it must not hold this worker open.
    partition.link.unref();
    const result = await scenarioByName(req.scenario).guest({
      transport: 'cross-thread',
      partition,
      side: attachSharedGuestSide(req.side),
    });
    reply = { id: req.id, result };
  } catch (e) {
    reply = { id: req.id, error: e instanceof Error ? (e.stack ?? e.message) : String(e) };
  }
  port.postMessage(reply);
});
port.postMessage({ id: -1, error: 'ready' } satisfies GuestReply);
