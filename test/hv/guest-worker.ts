// Worker entry for the cross-thread transport tests: attaches one guest partition from its
// descriptor (SharedArrayBuffers and numbers only) and runs the guest half of a scenario on it.
import { parentPort } from 'node:worker_threads';
import { attachGuestPartition, type HvPartitionDescriptor } from '../../src/hv/index.js';
import { scenarioByName } from './scenarios.js';
import { attachSharedGuestSide } from './side-channel.js';

export interface GuestRequest {
  readonly id: number;
  readonly scenario: string;
  readonly index: number;
  readonly partition: HvPartitionDescriptor;
  readonly side: SharedArrayBuffer;
}

export type GuestReply =
  | { readonly id: number; readonly trace: string[] }
  | { readonly id: number; readonly error: string };

const port = parentPort!;
port.on('message', async (req: GuestRequest) => {
  let reply: GuestReply;
  try {
    const partition = attachGuestPartition(req.partition);
    // The link ends when the host destroys the partition; it must not hold this worker open.
    partition.link.unref();
    const trace = await scenarioByName(req.scenario).guest({
      transport: 'cross-thread',
      index: req.index,
      partition,
      side: attachSharedGuestSide(req.side),
    });
    reply = { id: req.id, trace };
  } catch (e) {
    reply = { id: req.id, error: e instanceof Error ? (e.stack ?? e.message) : String(e) };
  }
  port.postMessage(reply);
});
port.postMessage({ id: -1, trace: ['ready'] } satisfies GuestReply);
