// The bus suite: the VMBus control plane (VmbusServer <-> VmbusClient over the simulated SynIC),
// on the same-thread transport (both ends in this thread, deterministic scheduler) and on the
// cross-thread one (the guest's client in a worker thread). Figures:
// - a 1 GiB GPADL set: 262,144 PFNs as 33 GPADLs (a GPADL holds at most 8,190 pages) created back
//   to back, each reassembled, validated and mapped (a checked grant) by the server before its
//   GPADL_CREATED; one "packet" = the whole 1 GiB; goal <= 100 ms (a reference figure of 10/s);
// - channel open/close cycles (OPENCHANNEL -> OPENCHANNEL_RESULT, then CLOSECHANNEL);
// - a control-message round trip host <-> guest (MODIFYCHANNEL -> MODIFYCHANNEL_RESPONSE, 5.3).
//
// This module is also the guest worker's entry: started with workerData.kind === 'bus-bench-guest'
// it attaches the guest partition and serves the guest half of each figure.

import { isMainThread, parentPort, type Worker, workerData } from 'node:worker_threads';
import { type ServerChannelHandle, VmbusClient, VmbusServer } from '../src/bus/index.js';
import {
  attachGuestPartition,
  type GuestPartition,
  type HostPartition,
  type HvPartitionDescriptor,
  Hypervisor,
} from '../src/hv/index.js';
import { PageAllocator } from '../src/memory/allocator.js';
import type { GrantedMdl } from '../src/memory/host-view.js';
import { siblingModule, startWorker } from '../src/util/worker.js';
import { VERSION_WIN10_V5_3 } from '../src/wire/constants.js';
import { Guid } from '../src/wire/guid.js';
import {
  clockMs,
  type Figure,
  figureFromSamples,
  type Measurable,
  measureInterleaved,
  type RatioEntry,
  ratioOf,
  type Sample,
  type Suite,
  type SuiteOptions,
  type SuiteResult,
} from './harness.js';

/** PFNs of the 1 GiB figure, and the most pages one GPADL can describe (u16 range_buflen). */
const GIB_PAGES = 262_144;
const GPADL_MAX_PAGES = 8190;
const GIB_GPADLS = Math.ceil(GIB_PAGES / GPADL_MAX_PAGES);
/** Guest RAM: 1 GiB for the GPADL figure, plus room for the rings. */
const MEMORY_BYTES = 1024 * 1024 * 1024 + 16 * 1024 * 1024;
/** hv message slots per direction (the GPADL figure posts ~9,400 messages back to back). */
const QUEUE_SLOTS = 256;
const RING_PAGES = 8;
const TYPE_ROUND_TRIP = Guid.parse('b7a3e9a2-1c4d-4f60-9d1e-3a5b7c9d0e11');
const TYPE_OPEN_CLOSE = Guid.parse('c8b4fab3-2d5e-4071-8e2f-4b6c8d0e1f22');
const INSTANCE = Guid.parse('00000000-0000-0000-0000-0000000000b5');

// ---------------------------------------------------------------------------------------------
// Guest half (runs in this thread for same-thread, in the worker for cross-thread)

type GuestCommand =
  | { readonly cmd: 'round-trip'; readonly id: number; readonly n: number }
  | { readonly cmd: 'open-close'; readonly id: number; readonly n: number }
  | { readonly cmd: 'gpadl-1gib'; readonly id: number };

type GuestReply =
  | { readonly id: number; readonly seconds: number }
  | { readonly id: number; readonly error: string };

/** The guest's side: connected, both channels' ring GPADLs created, the round-trip channel open. */
class BenchGuest {
  private constructor(
    private readonly client: VmbusClient,
    private readonly roundTripRelid: number,
    private readonly openCloseRelid: number,
    private readonly openCloseRing: number,
    private readonly gibPfns: Uint32Array,
  ) {}

  static async start(partition: GuestPartition): Promise<BenchGuest> {
    const client = new VmbusClient(partition.link, partition.memory);
    const alloc = new PageAllocator(partition.memory);
    await client.connect({ versions: [VERSION_WIN10_V5_3] });
    const offers = await client.requestOffers();
    const relid = (t: Guid) => offers.find((o) => o.interfaceType.equals(t))!.relid;
    const rings: number[] = [];
    for (const r of [relid(TYPE_ROUND_TRIP), relid(TYPE_OPEN_CLOSE)]) {
      const { gpadlId, status } = await client.createGpadl(r, alloc.allocate(RING_PAGES));
      if (status !== 0) throw new Error(`ring GPADL refused: 0x${status.toString(16)}`);
      rings.push(gpadlId);
    }
    const status = await client.openChannel(relid(TYPE_ROUND_TRIP), {
      ringGpadlId: rings[0]!,
      downstreamPageOffset: RING_PAGES / 2,
    });
    if (status !== 0) throw new Error(`open refused: 0x${status.toString(16)}`);
    const gib = alloc.allocate(GIB_PAGES, 'contiguous');
    return new BenchGuest(client, relid(TYPE_ROUND_TRIP), relid(TYPE_OPEN_CLOSE), rings[1]!, gib);
  }

  async run(cmd: GuestCommand): Promise<number> {
    const start = clockMs();
    switch (cmd.cmd) {
      case 'round-trip':
        for (let i = 0; i < cmd.n; i++) {
          const status = await this.client.modifyChannel(this.roundTripRelid, i & 1);
          if (status !== 0) throw new Error(`MODIFYCHANNEL failed: ${status}`);
        }
        break;
      case 'open-close':
        for (let i = 0; i < cmd.n; i++) {
          const status = await this.client.openChannel(this.openCloseRelid, {
            ringGpadlId: this.openCloseRing,
            downstreamPageOffset: RING_PAGES / 2,
          });
          if (status !== 0) throw new Error(`open ${i} refused: 0x${status.toString(16)}`);
          await this.client.closeChannel(this.openCloseRelid);
        }
        break;
      case 'gpadl-1gib': {
        const creates: Promise<{ gpadlId: number; status: number }>[] = [];
        for (let i = 0; i < GIB_PAGES; i += GPADL_MAX_PAGES) {
          const pfns = this.gibPfns.subarray(i, Math.min(i + GPADL_MAX_PAGES, GIB_PAGES));
          creates.push(this.client.createGpadl(this.roundTripRelid, pfns));
        }
        const created = await Promise.all(creates);
        const seconds = (clockMs() - start) / 1000;
        if (created.some((c) => c.status !== 0)) throw new Error('a GPADL of the 1 GiB set was refused');
        // Untimed: tear them down (the server unmaps in its teardown hook).
        await Promise.all(created.map((c) => this.client.teardownGpadl(this.roundTripRelid, c.gpadlId)));
        return seconds;
      }
    }
    return (clockMs() - start) / 1000;
  }
}

function serveGuestWorker(data: { descriptor: HvPartitionDescriptor }): void {
  const port = parentPort!;
  void (async () => {
    let guest: BenchGuest;
    try {
      guest = await BenchGuest.start(attachGuestPartition(data.descriptor));
    } catch (e) {
      port.postMessage({ id: -1, error: String(e) } satisfies GuestReply);
      return;
    }
    port.on('message', (cmd: GuestCommand) => {
      guest.run(cmd).then(
        (seconds) => port.postMessage({ id: cmd.id, seconds } satisfies GuestReply),
        (e: unknown) => port.postMessage({ id: cmd.id, error: String(e) } satisfies GuestReply),
      );
    });
    port.postMessage({ id: -1, seconds: 0 } satisfies GuestReply);
  })();
}

if (!isMainThread && (workerData as { kind?: string } | null)?.kind === 'bus-bench-guest') {
  serveGuestWorker(workerData as { descriptor: HvPartitionDescriptor });
}

// ---------------------------------------------------------------------------------------------
// Host half

/** The host's side: a server offering the two channels; it maps every GPADL of the 1 GiB set. */
function startHost(partition: HostPartition): { server: VmbusServer; mapped: () => number } {
  const server = new VmbusServer(partition.host, partition.memory);
  let mappedPages = 0;
  const maps = new Map<number, GrantedMdl>();
  let roundTrip: ServerChannelHandle | null = null;
  roundTrip = server.offerChannel(
    { interfaceType: TYPE_ROUND_TRIP, interfaceInstance: INSTANCE },
    {
      onOpen: () => 0,
      onClose: () => {},
      onGpadlCreated: (g) => {
        if (g.pfnCount < 1000) return; // a ring
        maps.set(g.gpadlId, server.mapGpadl(roundTrip!, g.gpadlId));
        mappedPages += g.pfnCount;
      },
      onGpadlTeardown: (g) => {
        const m = maps.get(g.gpadlId);
        if (m === undefined) return;
        maps.delete(g.gpadlId);
        server.unmapGpadl(roundTrip!, g.gpadlId, m);
      },
    },
  );
  server.offerChannel(
    { interfaceType: TYPE_OPEN_CLOSE, interfaceInstance: INSTANCE },
    { onOpen: () => 0, onClose: () => {} },
  );
  return { server, mapped: () => mappedPages };
}

interface Transport {
  readonly name: 'same-thread' | 'cross-thread';
  run(cmd: GuestCommand): Promise<number>;
  close(): Promise<void>;
}

async function sameThread(): Promise<Transport> {
  const hv = new Hypervisor({ transport: 'same-thread' });
  const p = hv.createPartition({ memoryBytes: MEMORY_BYTES, queueSlots: QUEUE_SLOTS });
  const host = startHost(p);
  const guest = await BenchGuest.start({
    partitionId: p.partitionId,
    vmbusHandle: p.vmbusHandle,
    name: p.name,
    memory: p.memory,
    link: p.guest!,
  });
  return {
    name: 'same-thread',
    run: (cmd) => guest.run(cmd),
    close: async () => {
      await host.server.dispose();
      hv.close();
    },
  };
}

async function crossThread(): Promise<Transport> {
  const hv = new Hypervisor({ transport: 'cross-thread' });
  const p = hv.createPartition({ memoryBytes: MEMORY_BYTES, queueSlots: QUEUE_SLOTS });
  const host = startHost(p);
  const worker: Worker = startWorker(siblingModule(import.meta.url, 'bus'), {
    workerData: { kind: 'bus-bench-guest', descriptor: p.descriptor },
  });
  const waiting = new Map<number, { resolve: (s: number) => void; reject: (e: Error) => void }>();
  let failure: Error | null = null;
  const fail = (e: Error): void => {
    failure ??= e;
    for (const w of waiting.values()) w.reject(e);
    waiting.clear();
  };
  worker.on('error', (e) => fail(e instanceof Error ? e : new Error(String(e))));
  worker.on('exit', (code) => fail(new Error(`the bus bench worker exited (${code})`)));
  worker.on('message', (r: GuestReply) => {
    const w = waiting.get(r.id);
    waiting.delete(r.id);
    if ('error' in r) w?.reject(new Error(r.error));
    else w?.resolve(r.seconds);
  });
  let nextId = 0;
  const call = (cmd: GuestCommand): Promise<number> =>
    failure !== null
      ? Promise.reject(failure)
      : new Promise((resolve, reject) => {
          waiting.set(cmd.id, { resolve, reject });
          if (cmd.id >= 0) worker.postMessage(cmd);
        });
  await call({ cmd: 'round-trip', id: -1, n: 0 }); // waits for 'ready' (id -1)
  return {
    name: 'cross-thread',
    run: (cmd) => call({ ...cmd, id: nextId++ }),
    close: async () => {
      waiting.clear();
      worker.removeAllListeners('exit');
      await worker.terminate();
      await host.server.dispose();
      hv.close();
    },
  };
}

async function gibFigure(t: Transport, o: SuiteOptions): Promise<Figure> {
  const samples: Sample[] = [];
  const warmups = o.quick ? 1 : 3;
  const runs = o.quick ? 2 : Math.max(5, o.repeats * 2);
  for (let i = 0; i < warmups; i++) await t.run({ cmd: 'gpadl-1gib', id: 0 });
  for (let i = 0; i < runs; i++) {
    const seconds = await t.run({ cmd: 'gpadl-1gib', id: 0 });
    samples.push({
      packets: 1,
      seconds,
      details: { ms: seconds * 1000, gpadls: GIB_GPADLS, pfns: GIB_PAGES },
    });
  }
  return figureFromSamples(
    `1 GiB GPADL set (${GIB_PAGES} PFNs in ${GIB_GPADLS} GPADLs), create + server map, ${t.name}`,
    GIB_PAGES * 4096,
    1,
    samples,
  );
}

function measurables(t: Transport): Measurable[] {
  const timed =
    (cmd: 'round-trip' | 'open-close') =>
    async (n: number): Promise<Sample> => {
      const seconds = await t.run({ cmd, id: 0, n });
      return { packets: n, seconds, details: {} };
    };
  return [
    {
      key: `round-trip-${t.name}`,
      label: `control message round trip (MODIFYCHANNEL -> RESPONSE), ${t.name}`,
      size: 16,
      initial: 2000,
      run: timed('round-trip'),
    },
    {
      key: `open-close-${t.name}`,
      label: `channel open + close cycles, ${t.name}`,
      size: 148,
      initial: 1000,
      run: timed('open-close'),
    },
  ];
}

export const busSuite: Suite = {
  name: 'bus',
  description:
    'VMBus control plane: 1 GiB GPADL create + map, open/close cycles, control round trips, both transports',
  async run(o: SuiteOptions): Promise<SuiteResult> {
    const notes = [
      'server and client are the real VmbusServer / VmbusClient over the simulated SynIC (hv), ' +
        `${QUEUE_SLOTS} message slots per direction; cross-thread = the client in a worker thread`,
      `1 GiB GPADL set: ${GIB_GPADLS} GPADLs created back to back (one GPADL holds at most ${GPADL_MAX_PAGES} pages: ` +
        'u16 range_buflen); each reassembled, PFN-checked and mapped (checked grant) by the server before GPADL_CREATED',
      'open/close cycle: OPENCHANNEL -> OPENCHANNEL_RESULT then CLOSECHANNEL; the ring GPADL is reused',
    ];
    const figures: Record<string, Figure> = {};
    for (const make of [sameThread, crossThread]) {
      o.log(`bus suite: ${make.name}`);
      let t: Transport | null = null;
      try {
        t = await make();
        const f = await gibFigure(t, o);
        figures[`gpadl-1gib-${t.name}`] = f;
        Object.assign(figures, await measureInterleaved(measurables(t), o));
      } catch (e) {
        notes.push(`${make.name} failed: ${e instanceof Error ? e.message : String(e)}`);
      } finally {
        await t?.close();
      }
    }
    figures['gpadl-1gib-goal'] = {
      label: 'goal: a 1 GiB GPADL set in 100 ms (reference rate, not a measurement)',
      payloadBytes: GIB_PAGES * 4096,
      packetsPerSecond: 10,
      bytesPerSecond: 10 * GIB_PAGES * 4096,
      packets: 1,
      seconds: 0.1,
      runs: [],
      details: { reference: true },
    };
    const ratios: Record<string, RatioEntry> = {
      busGpadl1GiBSameThreadVsGoal: ratioOf(figures, 'bus', 'gpadl-1gib-same-thread', 'gpadl-1gib-goal', 1),
      busGpadl1GiBCrossThreadVsGoal: ratioOf(figures, 'bus', 'gpadl-1gib-cross-thread', 'gpadl-1gib-goal', 1),
      busRoundTripCrossVsSame: ratioOf(figures, 'bus', 'round-trip-cross-thread', 'round-trip-same-thread'),
      busOpenCloseCrossVsSame: ratioOf(figures, 'bus', 'open-close-cross-thread', 'open-close-same-thread'),
    };
    return { figures, ratios, notes };
  },
};
