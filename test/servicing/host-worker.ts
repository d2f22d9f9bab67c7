// One host instance for the cross-thread host-restart test, in its own worker thread. Started
// 'fresh' it creates the hypervisor, the guest partition and the VSP; started 'adopt' it takes
// over a partition a previous instance detached (descriptor + saved host VMBus image) and
// restores the VSP's channel from its saved chunks. The VSP checks that the guest's messages
// (each carrying its sequence number) and the completions of its own transactions arrive exactly
// once and in order, and carries those counters from instance to instance, as a real VSP carries
// its device state. Commands come from the test's thread: send N transactions, save and detach.

import { parentPort, workerData } from 'node:worker_threads';
import { Hypervisor } from '../../src/hv/hypervisor.js';
import type { HvPartitionDescriptor } from '../../src/hv/index.js';
import { BusKmclHost, createKmclSystem, type KmclGuestDescriptor } from '../../src/kmcl/bus-port.js';
import {
  KmclProvider,
  kmclChannelInfo,
  STATUS_SUCCESS,
  type VMBCHANNEL,
  type VMBPACKET,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import {
  makeServer,
  must,
  saveServerChannel,
  serverTable,
  setSequenceSaveRestore,
  until,
} from '../kmcl-bus/kit.js';

/** What the VSP carries from one host instance to the next. */
export interface VspCounters {
  /** Next guest message sequence number expected. */
  nextSeen: number;
  /** Next completion expected (of the host's own transactions). */
  nextDone: number;
  /** Next transaction sequence number to send. */
  nextSend: number;
  /** Order or payload violations seen. */
  errors: string[];
}

export type HostWorkerData =
  | { mode: 'fresh'; memoryBytes: number }
  | {
      mode: 'adopt';
      descriptor: HvPartitionDescriptor;
      image: Uint8Array;
      chunks: Uint8Array[];
      counters: VspCounters;
    };

export type HostCommand = { cmd: 'send'; n: number } | { cmd: 'save'; chunkSize: number };

export type HostEvent =
  | { ev: 'ready'; guest: KmclGuestDescriptor | null; restoreMs: number }
  | { ev: 'sent'; queuedOutgoing: number }
  | {
      ev: 'saved';
      descriptor: HvPartitionDescriptor;
      image: Uint8Array;
      chunks: Uint8Array[];
      counters: VspCounters;
      inFlight: number;
      queued: number;
    }
  | { ev: 'error'; text: string };

const port = parentPort!;
const data = workerData as HostWorkerData;
const post = (e: HostEvent): void => port.postMessage(e);

async function main(): Promise<void> {
  const counters: VspCounters =
    data.mode === 'adopt' ? data.counters : { nextSeen: 0, nextDone: 0, nextSend: 0, errors: [] };
  const fail = (text: string): void => {
    if (counters.errors.length < 20) counters.errors.push(text);
  };
  let hostBus: BusKmclHost;
  let provider: KmclProvider;
  let guest: KmclGuestDescriptor | null = null;
  let partitionId: number;
  const started = performance.now();
  if (data.mode === 'fresh') {
    const sys = await createKmclSystem({ transport: 'cross-thread', memoryBytes: data.memoryBytes });
    hostBus = sys.hostBus;
    provider = sys.host;
    guest = sys.descriptors[0]!;
    partitionId = guest.partition.partitionId;
  } else {
    hostBus = new BusKmclHost(new Hypervisor({ transport: 'cross-thread' }));
    hostBus.adoptPartition(data.descriptor, data.image);
    provider = KmclProvider.forHost(hostBus);
    partitionId = data.descriptor.partitionId;
  }
  const S = serverTable(provider);
  const routine = (pk: VMBPACKET, status: number, buf: Uint8Array | null): void => {
    const seq = S.VmbPacketGetPointer(pk) as number;
    if (status !== STATUS_SUCCESS) fail(`transaction ${seq} completed with 0x${(status >>> 0).toString(16)}`);
    else if (
      buf === null ||
      buf.length < 4 ||
      new DataView(buf.buffer, buf.byteOffset).getUint32(0, true) !== seq
    )
      fail(`transaction ${seq}: wrong completion payload`);
    if (seq !== counters.nextDone) fail(`completion ${seq}, expected ${counters.nextDone}`);
    counters.nextDone = seq + 1;
    S.VmbPacketFree(pk);
  };
  const ch: VMBCHANNEL = makeServer(S, {
    onPacket: (_c, pkt, buf, len) => {
      const seq = len >= 4 ? new DataView(buf.buffer, buf.byteOffset, len).getUint32(0, true) : -1;
      if (seq !== counters.nextSeen) fail(`guest message ${seq}, expected ${counters.nextSeen}`);
      counters.nextSeen = seq + 1;
      S.VmbChannelPacketComplete(pkt, null, 0);
    },
    configure: (c) => setSequenceSaveRestore(S, c, routine),
  });
  if (data.mode === 'adopt') {
    let st = STATUS_SUCCESS;
    for (const chunk of data.chunks) st = S.VmbChannelRestoreFromBuffer(ch, chunk, chunk.length);
    must(st, 'VmbChannelRestoreFromBuffer');
    await hostBus.finishRestore(partitionId);
  }
  must(S.VmbChannelEnable(ch), 'VmbChannelEnable');
  S.VmbChannelStart(ch);
  post({ ev: 'ready', guest, restoreMs: performance.now() - started });

  port.on('message', (m: HostCommand) => {
    void (async () => {
      if (m.cmd === 'send') {
        await until(() => kmclChannelInfo(ch).flowing, 'the channel flows');
        const payload = new Uint8Array(4);
        const view = new DataView(payload.buffer);
        for (let i = 0; i < m.n; i++) {
          const p = S.VmbPacketAllocate(ch);
          if (p === null) throw new Error('VmbPacketAllocate failed');
          const seq = counters.nextSend++;
          view.setUint32(0, seq, true);
          S.VmbPacketSetPointer(p, seq);
          S.VmbPacketSetCompletionRoutine(p, routine);
          must(S.VmbPacketSend(p, payload, 4, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION), 'send');
        }
        post({ ev: 'sent', queuedOutgoing: kmclChannelInfo(ch).queuedOutgoing });
        return;
      }
      const info = kmclChannelInfo(ch);
      const chunks = await saveServerChannel(S, ch, m.chunkSize);
      const detached = await hostBus.detachPartition(partitionId);
      post({
        ev: 'saved',
        descriptor: detached.descriptor,
        image: detached.image,
        chunks,
        counters,
        inFlight: info.awaitingCompletion + info.queuedOutgoing,
        queued: info.queuedOutgoing,
      });
    })().catch((e: unknown) =>
      post({ ev: 'error', text: e instanceof Error ? (e.stack ?? e.message) : String(e) }),
    );
  });
}

main().catch((e: unknown) =>
  post({ ev: 'error', text: e instanceof Error ? (e.stack ?? e.message) : String(e) }),
);
