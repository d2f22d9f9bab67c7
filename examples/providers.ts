// Where the examples get their two KMCL providers: the host's (the root partition's Vmbkmcl, which
// VSPs query) and one guest partition's (which VSCs query), plus what a guest driver needs from its
// own partition (pages of its RAM for buffers) and the VM worker's handle to the guest. The drivers
// in examples/*/ only ever see a KmclProvider and the interface tables they query from it, so the
// transport below them is chosen in ONE place: `makeProviders`. By default that is the real VMBus
// (`busProviders`: a simulated hypervisor, src/bus through src/kmcl/bus-port.ts, same thread);
// `loopbackProviders` joins the same pair with the loopback port (src/kmcl/loopback-port.ts, the
// bus's test double).

import { createKmclSystem } from '../src/kmcl/bus-port.js';
import {
  KmclProvider,
  type KmclProviderOptions,
  LoopbackHost,
  type VmbusUserHandle,
} from '../src/kmcl/index.js';
import type { AllocationMode } from '../src/memory/allocator.js';
import type { GuestMemory } from '../src/memory/guest-memory.js';

/** The two providers and the guest-side resources an example runs on. */
export interface ExampleProviders {
  /** Which transport joins them ('vmbus' or 'loopback'). */
  readonly transport: string;
  /** The host's KMCL: answers KMCL_SERVER_INTERFACE_TYPE and KMCL_CLIENT_INTERFACE_TYPE. */
  readonly host: KmclProvider;
  /** The guest partition's KMCL: answers KMCL_CLIENT_INTERFACE_TYPE only. */
  readonly guest: KmclProvider;
  /** The user-mode VMBus handle the VM worker process holds for the guest (VmbConvertVmbusHandleToKernelHandle). */
  readonly vmUserHandle: VmbusUserHandle;
  /** The guest's RAM (a guest driver reads and writes its own buffers here). */
  readonly guestMemory: GuestMemory;
  /** Pages of guest RAM for a guest driver's buffers (as a guest kernel's page allocator). */
  allocatePages(count: number, mode?: AllocationMode): Uint32Array;
  /** Gives pages back. */
  freePages(pfns: ArrayLike<number>): void;
  /** Guest pages handed out now (driver buffers and channel rings). */
  allocatedPageCount(): number;
  /** Everything refused from the other partition so far (should stay empty in the examples). */
  readonly peerErrors: string[];
  /** Every exception a driver callback threw (should stay empty). */
  readonly callbackErrors: string[];
  /** Resolves once nothing is in flight on the transport. */
  idle(): Promise<void>;
  /** Tears the transport down (after the drivers have stopped). */
  close(): Promise<void>;
}

export interface ExampleProviderOptions {
  /** Guest RAM in bytes (default 16 MiB). */
  memoryBytes?: number;
  /** Overrides the transport `makeProviders` picks (tests run the examples over both). */
  transport?: 'loopback' | 'vmbus';
}

function providerOptions(peerErrors: string[], callbackErrors: string[]): KmclProviderOptions {
  return {
    onPeerError: (_channel, error) => peerErrors.push(`${error.code}: ${error.message}`),
    onCallbackError: (_channel, callback, error) =>
      callbackErrors.push(`${callback}: ${error instanceof Error ? error.message : String(error)}`),
  };
}

/** Host and one guest joined by the loopback port (the same-thread test double of the bus). */
export function loopbackProviders(options: ExampleProviderOptions = {}): ExampleProviders {
  const bus = new LoopbackHost();
  const partition = bus.addPartition({ name: 'example-guest', memoryBytes: options.memoryBytes });
  const peerErrors: string[] = [];
  const callbackErrors: string[] = [];
  const opts = providerOptions(peerErrors, callbackErrors);
  return {
    transport: 'loopback',
    host: KmclProvider.forHost(bus, opts),
    guest: KmclProvider.forGuest(partition.guestBus(0), opts),
    vmUserHandle: partition.userHandle,
    guestMemory: partition.memory,
    allocatePages: (count, mode = 'scattered') => partition.allocator.allocate(count, mode),
    freePages: (pfns) => partition.allocator.free(pfns),
    allocatedPageCount: () => partition.allocator.allocatedPageCount,
    peerErrors,
    callbackErrors,
    idle: () => bus.idle(),
    close: async () => {},
  };
}

/** Host and one guest on the real VMBus: a simulated hypervisor, VmbusServer and VmbusClient. */
export async function busProviders(options: ExampleProviderOptions = {}): Promise<ExampleProviders> {
  const peerErrors: string[] = [];
  const callbackErrors: string[] = [];
  const system = await createKmclSystem({
    memoryBytes: options.memoryBytes ?? 16 * 1024 * 1024,
    provider: providerOptions(peerErrors, callbackErrors),
  });
  const guestBus = system.guestBuses[0]!;
  const partition = system.hostBus.partitions()[0]!;
  return {
    transport: 'vmbus',
    host: system.host,
    guest: system.guests[0]!,
    vmUserHandle: partition.userHandle as VmbusUserHandle,
    guestMemory: guestBus.memory,
    allocatePages: (count, mode = 'scattered') => guestBus.allocator.allocate(count, mode),
    freePages: (pfns) => guestBus.allocator.free(pfns),
    allocatedPageCount: () => guestBus.allocator.allocatedPageCount,
    peerErrors,
    callbackErrors,
    idle: () => system.idle(),
    close: () => system.close(),
  };
}

/** The providers every example runs on: the transport asked for, else the real VMBus. */
export async function makeProviders(options: ExampleProviderOptions = {}): Promise<ExampleProviders> {
  if (options.transport === 'loopback') return loopbackProviders(options);
  return busProviders(options);
}
