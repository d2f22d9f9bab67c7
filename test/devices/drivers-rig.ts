// The partitions the driver tests run on, behind one small interface: a host KMCL provider, a guest
// KMCL provider, the guest's page allocator and RAM, and a way to let everything queued run. The
// tests loop over RIGS: the loopback port (the bus's test double) and the real VMBus of src/bus
// through the bus-backed port, host and guest on one thread.

import { createKmclSystem } from '../../src/kmcl/bus-port.js';
import {
  type KmclPeerError,
  KmclProvider,
  type KmclProviderOptions,
  LoopbackHost,
} from '../../src/kmcl/index.js';
import type { PageAllocator } from '../../src/memory/allocator.js';
import type { GuestMemory } from '../../src/memory/guest-memory.js';

export interface DriverRig {
  readonly host: KmclProvider;
  readonly guest: KmclProvider;
  /** The guest partition's page allocator (the one its bus allocates rings from). */
  readonly allocator: PageAllocator;
  readonly memory: GuestMemory;
  /** Everything the KMCL refused from a peer (a well-behaved run has none). */
  readonly peerErrors: KmclPeerError[];
  /** Driver callbacks that threw (always a bug). */
  readonly callbackErrors: { callback: string; error: unknown }[];
  /** Resolves when nothing is left to run. */
  idle(): Promise<void>;
  /** Grants the host holds on guest memory now (rings, mapped GPADLs, external data), if known. */
  hostGrants(): number | null;
  /** Tears the partitions down. */
  close(): Promise<void>;
}

export interface DriverRigOptions {
  memoryBytes?: number;
}

export type DriverRigFactory = (options?: DriverRigOptions) => Promise<DriverRig>;

function recorders() {
  const peerErrors: KmclPeerError[] = [];
  const callbackErrors: { callback: string; error: unknown }[] = [];
  const provider: KmclProviderOptions = {
    onPeerError: (_ch, e) => peerErrors.push(e),
    onCallbackError: (_ch, callback, error) => callbackErrors.push({ callback, error }),
  };
  return { peerErrors, callbackErrors, provider };
}

export const loopbackRig: DriverRigFactory = async (options = {}) => {
  const lb = new LoopbackHost();
  const part = lb.addPartition({ memoryBytes: options.memoryBytes ?? 16 * 1024 * 1024 });
  const { peerErrors, callbackErrors, provider } = recorders();
  return {
    host: KmclProvider.forHost(lb, provider),
    guest: KmclProvider.forGuest(part.guestBus(0), provider),
    allocator: part.allocator,
    memory: part.memory,
    peerErrors,
    callbackErrors,
    idle: () => lb.idle(),
    hostGrants: () => part.hostView.liveGrantCount,
    close: async () => {},
  };
};

export const busRig: DriverRigFactory = async (options = {}) => {
  const { peerErrors, callbackErrors, provider } = recorders();
  const sys = await createKmclSystem({ memoryBytes: options.memoryBytes ?? 16 * 1024 * 1024, provider });
  const guestBus = sys.guestBuses[0]!;
  return {
    host: sys.host,
    guest: sys.guests[0]!,
    allocator: guestBus.allocator,
    memory: guestBus.memory,
    peerErrors,
    callbackErrors,
    idle: () => sys.idle(),
    hostGrants: () => sys.hostBus.server(guestBus.partitionId)?.hostView.liveGrantCount ?? null,
    close: () => sys.close(),
  };
};

/** Every port the driver tests run over. */
export const RIGS: readonly (readonly [string, DriverRigFactory])[] = [
  ['loopback', loopbackRig],
  ['bus', busRig],
];
