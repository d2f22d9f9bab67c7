// The host's table of guest partitions: each partition has an id, a VMBus handle (what KMCL's
// VmbConvertVmbusHandleToKernelHandle will map to the partition), its own guest RAM and its own
// SynIC link. For the cross-thread transport a partition's descriptor (SharedArrayBuffers and
// numbers only) is what is handed to the guest's thread, which attaches with attachGuestPartition.

import { DEFAULT_GUEST_MEMORY_BYTES, GuestMemory } from '../memory/guest-memory.js';
import { type HvEndOptions, type HvGuestEnd, HvHostEnd, type HvHostEndSavedState } from './end.js';
import { createHvLinkDescriptor, type HvLinkDescriptor, type HvLinkOptions } from './layout.js';
import { attachHvGuest, attachHvHost, pairSameThread } from './link.js';
import { HvScheduler } from './scheduler.js';

export type HvTransport = 'same-thread' | 'cross-thread';

/** A partition as handed to its guest: plain data, safe to postMessage once at creation. */
export interface HvPartitionDescriptor {
  readonly kind: 'hv-partition';
  readonly version: 1;
  readonly partitionId: number;
  readonly vmbusHandle: number;
  readonly name: string;
  /** Guest RAM. */
  readonly memory: SharedArrayBuffer;
  readonly link: HvLinkDescriptor;
}

export interface CreatePartitionOptions extends HvLinkOptions {
  /** Guest RAM size in bytes, a positive multiple of 4096 (default 64 MiB). */
  readonly memoryBytes?: number;
  readonly name?: string;
}

export interface HypervisorOptions {
  /** Default `'same-thread'`. */
  readonly transport?: HvTransport;
  /** Same-thread transport: the scheduler all partitions share (default: a new auto one). */
  readonly scheduler?: HvScheduler;
}

/** One guest partition as the host sees it. */
export class HostPartition {
  /** The guest end, for the same-thread transport (null when the guest attaches from another thread). */
  readonly guest: HvGuestEnd | null;
  private destroyed = false;

  constructor(
    readonly partitionId: number,
    readonly vmbusHandle: number,
    readonly name: string,
    readonly memory: GuestMemory,
    readonly host: HvHostEnd,
    guest: HvGuestEnd | null,
    readonly descriptor: HvPartitionDescriptor,
  ) {
    this.guest = guest;
  }

  get isDestroyed(): boolean {
    return this.destroyed;
  }

  /** @internal by Hypervisor.detachPartition: the link stays open for the next host. */
  markDetached(): void {
    this.destroyed = true;
  }

  /** @internal by Hypervisor.destroyPartition */
  markDestroyed(): void {
    this.destroyed = true;
    this.host.close();
  }
}

/** The host side of the simulated hypervisor: creates, lists and destroys guest partitions. */
export class Hypervisor {
  readonly transport: HvTransport;
  /** The shared deterministic scheduler (same-thread transport only). */
  readonly scheduler: HvScheduler | null;
  private readonly byId = new Map<number, HostPartition>();
  private readonly byHandle = new Map<number, HostPartition>();
  private nextPartitionId = 1;
  private nextHandle = 0x1000;

  constructor(options: HypervisorOptions = {}) {
    this.transport = options.transport ?? 'same-thread';
    if (this.transport !== 'same-thread' && this.transport !== 'cross-thread') {
      throw new Error(`unknown transport ${String(this.transport)}`);
    }
    this.scheduler = this.transport === 'same-thread' ? (options.scheduler ?? new HvScheduler()) : null;
  }

  /** Creates a partition with its own guest RAM and SynIC link. */
  createPartition(options: CreatePartitionOptions = {}): HostPartition {
    const memory = new GuestMemory(options.memoryBytes ?? DEFAULT_GUEST_MEMORY_BYTES);
    const link = createHvLinkDescriptor(options);
    const partitionId = this.nextPartitionId++;
    const vmbusHandle = this.nextHandle;
    this.nextHandle += 4;
    const name = options.name ?? `partition-${partitionId}`;
    const descriptor: HvPartitionDescriptor = {
      kind: 'hv-partition',
      version: 1,
      partitionId,
      vmbusHandle,
      name,
      memory: memory.buffer,
      link,
    };
    let host: HvHostEnd;
    let guest: HvGuestEnd | null = null;
    if (this.scheduler) {
      const pair = pairSameThread(link, this.scheduler);
      host = pair.host;
      guest = pair.guest;
    } else {
      host = attachHvHost(link);
    }
    const partition = new HostPartition(partitionId, vmbusHandle, name, memory, host, guest, descriptor);
    this.byId.set(partitionId, partition);
    this.byHandle.set(vmbusHandle, partition);
    return partition;
  }

  /** Live partitions, in creation order. */
  partitions(): HostPartition[] {
    return [...this.byId.values()];
  }

  getPartition(partitionId: number): HostPartition | undefined {
    return this.byId.get(partitionId);
  }

  /** The partition a VMBus handle names (for VmbConvertVmbusHandleToKernelHandle). */
  partitionByVmbusHandle(vmbusHandle: number): HostPartition | undefined {
    return this.byHandle.get(vmbusHandle);
  }

  /**
   * Servicing: the host side of the partition goes away WITHOUT the guest noticing. The host end
   * is detached (the link stays open; what the guest posts or signals meanwhile waits), and this
   * Hypervisor forgets the partition. Returns what a new host instance needs to take over with
   * `adoptPartition`: the descriptor and where the host end stood. Throws (and changes nothing)
   * if host posts still wait for queue space.
   */
  detachPartition(partitionId: number): { descriptor: HvPartitionDescriptor; link: HvHostEndSavedState } {
    const partition = this.byId.get(partitionId);
    if (!partition) throw new Error(`detachPartition: no partition ${partitionId}`);
    const link = partition.host.detach();
    this.byId.delete(partitionId);
    this.byHandle.delete(partition.vmbusHandle);
    partition.markDetached();
    return { descriptor: partition.descriptor, link };
  }

  /**
   * Servicing: takes over a partition a previous host instance detached (possibly in another
   * thread: the descriptor holds only SharedArrayBuffers and numbers). The host end resumes where
   * the detached one stood; register its handlers synchronously (VmbusServer.restore does).
   * Same-thread transport: `replacing` is the detached host end, whose guest peer is re-paired.
   */
  adoptPartition(
    descriptor: HvPartitionDescriptor,
    resume: HvHostEndSavedState,
    options: { replacing?: HvHostEnd } = {},
  ): HostPartition {
    if (descriptor === null || typeof descriptor !== 'object' || descriptor.kind !== 'hv-partition') {
      throw new TypeError('not an HvPartitionDescriptor');
    }
    if (this.byId.has(descriptor.partitionId) || this.byHandle.has(descriptor.vmbusHandle)) {
      throw new Error(`adoptPartition: partition ${descriptor.partitionId} is already here`);
    }
    const memory = new GuestMemory(descriptor.memory);
    let host: HvHostEnd;
    if (this.scheduler) {
      if (options.replacing === undefined) throw new Error('adoptPartition: same-thread needs `replacing`');
      host = new HvHostEnd(descriptor.link, { resume }, 'none');
      HvHostEnd.replaceSameThread(options.replacing, host);
    } else {
      host = attachHvHost(descriptor.link, { resume });
    }
    const partition = new HostPartition(
      descriptor.partitionId,
      descriptor.vmbusHandle,
      descriptor.name,
      memory,
      host,
      null,
      descriptor,
    );
    this.byId.set(descriptor.partitionId, partition);
    this.byHandle.set(descriptor.vmbusHandle, partition);
    this.nextPartitionId = Math.max(this.nextPartitionId, descriptor.partitionId + 1);
    this.nextHandle = Math.max(this.nextHandle, descriptor.vmbusHandle + 4);
    return partition;
  }

  /** Closes the partition's link (its guest sees the link closed) and forgets it. */
  destroyPartition(partitionId: number): boolean {
    const partition = this.byId.get(partitionId);
    if (!partition) return false;
    this.byId.delete(partitionId);
    this.byHandle.delete(partition.vmbusHandle);
    partition.markDestroyed();
    return true;
  }

  /** Destroys every partition. */
  close(): void {
    for (const id of [...this.byId.keys()]) this.destroyPartition(id);
  }

  /** Same-thread transport: resolves when every partition's delivery is quiet. */
  idle(): Promise<void> {
    if (!this.scheduler) throw new Error('idle() needs the same-thread transport');
    return this.scheduler.idle();
  }
}

/** A partition as its guest sees it. */
export interface GuestPartition {
  readonly partitionId: number;
  readonly vmbusHandle: number;
  readonly name: string;
  readonly memory: GuestMemory;
  readonly link: HvGuestEnd;
}

/** The guest's side of a cross-thread partition: attach its RAM and link from the descriptor. */
export function attachGuestPartition(
  descriptor: HvPartitionDescriptor,
  options: HvEndOptions = {},
): GuestPartition {
  if (descriptor === null || typeof descriptor !== 'object' || descriptor.kind !== 'hv-partition') {
    throw new TypeError('not an HvPartitionDescriptor');
  }
  if (!(descriptor.memory instanceof SharedArrayBuffer))
    throw new TypeError('partition memory is not a SharedArrayBuffer');
  return {
    partitionId: descriptor.partitionId,
    vmbusHandle: descriptor.vmbusHandle,
    name: descriptor.name,
    memory: new GuestMemory(descriptor.memory),
    link: attachHvGuest(descriptor.link, options),
  };
}
