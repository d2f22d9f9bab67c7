// The bus-backed endpoint port: the KMCL layer on the real VMBus. `BusKmclHost` implements
// KmclHostBus over a Hypervisor's partitions (one VmbusServer per partition) and `BusKmclGuest`
// implements KmclGuestBus over a guest's VmbusClient; the server and client ports they make turn
// the port operations of port.ts into channel-management messages, and the data paths they hand
// out are the channel's real rings in guest memory, signalled through the SynIC. Only bytes cross
// the partition boundary: nothing here holds an object of the other side.
//
// Choices where port.ts, the KMCL spec or the wire leave room:
// - VTL: the simulated guests are VTL 0 (the bus server refuses other VTLs), so a server port for
//   any other VTL is null (VmbChannelEnable then fails with STATUS_INVALID_HANDLE).
// - Offer flags: ENUMERATE_DEVICE_INTERFACE, TLNPI_PROVIDER_OFFER and LOOPBACK_OFFER map to the
//   wire offer flags of the same names; OFFER_AS_PIPE offers a message-mode pipe
//   (NAMED_PIPE_MODE, VMBUS_PIPE_TYPE_MESSAGE), since KMCL pipes keep packet boundaries.
//   FORCE_NEW_CHANNEL has no wire form. A client sees the flags mapped back.
// - MMIO: the wire carries only the sizes; both ends derive the same address from the relid
//   (relid << 37, a 128 GiB window each, enough for the two u16 megabyte counts), so no extra
//   message is needed.
// - GPADL read-only: the wire has no such flag, so the host sees every GPADL as writable
//   (PortGpadl.readOnly false). A server mapping is recorded with the bus through a read-only
//   mapGpadl held for as long as the KMCL channel keeps the GPADL mapped, so the guest's teardown
//   waits for the unmap as the KMCL documents.
// - Open status: a server's NTSTATUS crosses as the u32 OPENCHANNEL_RESULT status; the guest maps
//   0 to STATUS_SUCCESS and anything else to a failure NTSTATUS.
// - Deadlocks: the server handles guest control messages one at a time and holds later ones
//   while a hook (onOpen, onClose) waits. The KMCL channel runs its lifecycle operations in order,
//   so a host VmbChannelDisable (which revokes and waits for the guest's RELID_RELEASED) queued
//   before a guest open or close would wait for a message held behind that hook. revoke() therefore
//   first settles the port's pending onOpen (as refused) and onClose hooks without waiting for the
//   channel; the channel runs them later and finds itself disabled.
// - Time limits: revoke() waits for the guest's RELID_RELEASED at most `revokeTimeoutMs` (a
//   hostile or dead guest must not hang the host's Disable; the relid then stays reserved until
//   the guest releases it). A guest's close waits for the host's GPADL_TORNDOWN of the ring at
//   most `peerTimeoutMs`; after that the ring pages are leaked, never freed while the host may
//   still write them. deleteGpadl has no limit: the KMCL documents that it blocks until the
//   server unmaps. The port's onClose hook is the host driver's own work and is not limited.
// - Scheduling: same-thread systems run port tasks on the hv link's deterministic scheduler;
//   cross-thread ones on a setImmediate pump; polled ones only in poll().

import type { ClientOffer, VmbusClientOptions } from '../bus/client.js';
import { VmbusClient } from '../bus/client.js';
import { BusError } from '../bus/errors.js';
import {
  BusSavedStateError,
  decodeHostVmbusSavedState,
  encodeHostVmbusSavedState,
} from '../bus/saved-state.js';
import {
  type ServerChannelHandle,
  type ServerChannelHandler,
  type ServerOpenRequest,
  VmbusServer,
  type VmbusServerOptions,
} from '../bus/server.js';
import type { ServerChannelState } from '../bus/server-state.js';
import type { HvGuestEnd, HvHostEnd } from '../hv/end.js';
import { attachGuestPartition, type HvPartitionDescriptor, type HvTransport } from '../hv/hypervisor.js';
import {
  type HostPartition,
  HvError,
  type HvSchedulable,
  type HvScheduler,
  Hypervisor,
} from '../hv/index.js';
import { PageAllocator } from '../memory/allocator.js';
import { GuestMemory, MemoryAccessError } from '../memory/guest-memory.js';
import { type GrantedMdl, HostMemoryView } from '../memory/host-view.js';
import { RingError } from '../ring/errors.js';
import { type ChannelRings, channelRingsFromGpadl, RingMemory } from '../ring/memory.js';
import { RingReader } from '../ring/reader.js';
import { RingWriter } from '../ring/writer.js';
import {
  MAX_PIPE_USER_DEFINED_BYTES,
  MAX_USER_DEFINED_BYTES,
  VMBUS_CHANNEL_ENUMERATE_DEVICE_INTERFACE,
  VMBUS_CHANNEL_LOOPBACK_OFFER,
  VMBUS_CHANNEL_NAMED_PIPE_MODE,
  VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER,
} from '../wire/constants.js';
import { Guid } from '../wire/guid.js';
import type { GpaRange } from '../wire/packets.js';
import {
  MAXIMUM_GPADL_PAGES,
  MINIMUM_RING_PAGES,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_ENUMERATE_DEVICE_INTERFACE,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_LOOPBACK_OFFER,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_TLNPI_PROVIDER_OFFER,
} from './constants.js';
import { KmclProvider, type KmclProviderOptions } from './interface.js';
import {
  NT_SUCCESS,
  type NTSTATUS,
  STATUS_DEVICE_BUSY,
  STATUS_DEVICE_NOT_CONNECTED,
  STATUS_INSUFFICIENT_RESOURCES,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_PARAMETER,
  STATUS_NOT_FOUND,
  STATUS_OBJECT_NAME_COLLISION,
  STATUS_SUCCESS,
  STATUS_UNSUCCESSFUL,
} from './ntstatus.js';
import { Fifo } from './packet.js';
import type {
  ClientPort,
  ClientPortEvents,
  KmclGuestBus,
  KmclHostBus,
  PortDataPath,
  PortGpadl,
  PortMmio,
  PortOffer,
  PortOfferMatch,
  PortOfferParams,
  PortOpenRequest,
  PortPartition,
  PortRingPages,
  PortTask,
  ServerPort,
  ServerPortEvents,
} from './port.js';

/** Default limit on waiting for the guest's RELID_RELEASED in revoke(). */
export const DEFAULT_REVOKE_TIMEOUT_MS = 10_000;
/** Default limit on a guest close waiting for the host to release the ring GPADL. */
export const DEFAULT_PEER_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------------------------
// Scheduling

/**
 * The port tasks of one side, in FIFO order. With an HvScheduler (same-thread) the queue is one
 * schedulable on it, so tasks interleave deterministically with signal deliveries; without one it
 * pumps itself from setImmediate, or only from runPending() while polling.
 */
export class BusTaskQueue implements HvSchedulable {
  hvScheduled = false;
  private readonly queue = new Fifo<PortTask>();
  private pumpQueued = false;
  private polling = false;
  private readonly pump = (): void => {
    this.pumpQueued = false;
    if (this.polling) return;
    this.runBatch();
    if (this.queue.length > 0) this.kick();
  };

  constructor(readonly scheduler: HvScheduler | null) {}

  get pending(): number {
    return this.queue.length;
  }

  schedule(task: PortTask): void {
    if (task.queued) return;
    task.queued = true;
    this.queue.push(task);
    this.kick();
  }

  /** Polled mode: tasks run only from runPending(). */
  setPolling(polling: boolean): void {
    this.polling = polling;
    if (!polling && this.queue.length > 0) this.kick();
  }

  /** Runs the tasks queued now (not the ones they queue); returns how many ran. */
  runPending(): number {
    return this.runBatch();
  }

  /** @internal HvSchedulable */
  runScheduled(): void {
    this.runBatch();
    if (this.queue.length > 0) this.kick();
  }

  private runBatch(): number {
    let n = this.queue.length;
    const ran = n;
    while (n-- > 0) {
      const task = this.queue.shift();
      if (task === undefined) break;
      task.queued = false;
      task.run();
    }
    return ran;
  }

  private kick(): void {
    if (this.polling) return;
    if (this.scheduler !== null) {
      this.scheduler.schedule(this);
      return;
    }
    if (this.pumpQueued) return;
    this.pumpQueued = true;
    setImmediate(this.pump);
  }
}

// ---------------------------------------------------------------------------------------------
// Data paths

class BusDataPath implements PortDataPath {
  alive = true;
  private handler: (() => void) | null = null;
  /** Installed as the bus's signal callback (one closure per open channel). */
  readonly deliver = (): void => {
    if (this.alive && this.handler !== null) this.handler();
  };

  constructor(
    private readonly queue: BusTaskQueue,
    readonly outgoing: RingWriter,
    readonly incoming: RingReader,
    readonly externalData: HostMemoryView,
    readonly guestPageCount: number,
    private readonly signal: () => boolean,
  ) {}

  signalPeer(): void {
    if (this.alive) this.signal();
  }

  setSignalHandler(handler: (() => void) | null): void {
    this.handler = handler;
  }

  schedule(task: PortTask): void {
    if (this.alive) this.queue.schedule(task);
  }
}

/** Resolves to the value, or to `onTimeout` after `ms`. */
function withTimeout<T, U>(p: Promise<T>, ms: number, onTimeout: U): Promise<T | U> {
  if (!Number.isFinite(ms)) return p;
  return new Promise<T | U>((resolve, reject) => {
    const timer = setTimeout(() => resolve(onTimeout), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** MMIO space of an offer: both ends derive it from the relid (see the module comment). */
function mmioFor(relid: number, megabytes: number, optional: number): PortMmio {
  const mb = BigInt(megabytes + optional);
  if (mb === 0n) return Object.freeze({ address: 0n, size: 0n });
  return Object.freeze({ address: BigInt(relid) << 37n, size: mb << 20n });
}

/** KMCL server init flags -> wire offer flags (pipe mode is given separately). */
export function offerFlagsFromServerFlags(serverFlags: number): number {
  let flags = 0;
  if (serverFlags & VMBUS_SERVER_CHANNEL_INIT_FLAG_ENUMERATE_DEVICE_INTERFACE)
    flags |= VMBUS_CHANNEL_ENUMERATE_DEVICE_INTERFACE;
  if (serverFlags & VMBUS_SERVER_CHANNEL_INIT_FLAG_TLNPI_PROVIDER_OFFER)
    flags |= VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER;
  if (serverFlags & VMBUS_SERVER_CHANNEL_INIT_FLAG_LOOPBACK_OFFER) flags |= VMBUS_CHANNEL_LOOPBACK_OFFER;
  return flags;
}

/** Wire offer flags -> the KMCL server init flags a client sees. */
export function serverFlagsFromOfferFlags(offerFlags: number): number {
  let flags = 0;
  if (offerFlags & VMBUS_CHANNEL_ENUMERATE_DEVICE_INTERFACE)
    flags |= VMBUS_SERVER_CHANNEL_INIT_FLAG_ENUMERATE_DEVICE_INTERFACE;
  if (offerFlags & VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER)
    flags |= VMBUS_SERVER_CHANNEL_INIT_FLAG_TLNPI_PROVIDER_OFFER;
  if (offerFlags & VMBUS_CHANNEL_LOOPBACK_OFFER) flags |= VMBUS_SERVER_CHANNEL_INIT_FLAG_LOOPBACK_OFFER;
  if (offerFlags & VMBUS_CHANNEL_NAMED_PIPE_MODE) flags |= VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE;
  return flags;
}

// ---------------------------------------------------------------------------------------------
// Host

export interface BusKmclHostOptions {
  /** Options of the VmbusServer made for each partition (its hostView is made here). */
  server?: Omit<VmbusServerOptions, 'hostView'>;
  /** Limit on revoke() waiting for the guest (default DEFAULT_REVOKE_TIMEOUT_MS; Infinity: none). */
  revokeTimeoutMs?: number;
}

interface HostEntry {
  readonly partition: HostPartition;
  readonly server: VmbusServer;
}

/** The host's VMBus as the host's KMCL sees it: every partition of a Hypervisor, one server each. */
export class BusKmclHost implements KmclHostBus {
  readonly hv: Hypervisor;
  readonly queue: BusTaskQueue;
  readonly revokeTimeoutMs: number;
  private readonly options: BusKmclHostOptions;
  private readonly entries = new Map<number, HostEntry>();
  /** @internal Servicing: offers whose server released them, by partition, type and instance. */
  readonly releasedPorts = new Map<string, BusServerPort>();
  /** Servicing: ports made for restored channels, by partition, until finishRestore. */
  private readonly restoredPorts = new Map<number, BusServerPort[]>();

  constructor(hv: Hypervisor, options: BusKmclHostOptions = {}) {
    this.hv = hv;
    this.options = options;
    this.queue = new BusTaskQueue(hv.scheduler);
    this.revokeTimeoutMs = options.revokeTimeoutMs ?? DEFAULT_REVOKE_TIMEOUT_MS;
    for (const p of hv.partitions()) this.attachPartition(p);
  }

  /**
   * The VMBus server of a partition, created now if needed (do it before the guest connects:
   * partitions that exist when this object is made get theirs at once).
   */
  attachPartition(partition: HostPartition, server?: VmbusServer): VmbusServer {
    const have = this.entries.get(partition.partitionId);
    if (have !== undefined) return have.server;
    const s =
      server ??
      new VmbusServer(partition.host, partition.memory, {
        ...this.options.server,
        hostView: new HostMemoryView(partition.memory),
      });
    this.entries.set(partition.partitionId, { partition, server: s });
    return s;
  }

  server(partitionId: number): VmbusServer | undefined {
    return this.entries.get(partitionId)?.server;
  }

  partitions(): readonly PortPartition[] {
    const out: PortPartition[] = [];
    for (const e of this.entries.values()) {
      if (e.partition.isDestroyed) continue;
      out.push({ id: e.partition.partitionId, name: e.partition.name, userHandle: e.partition.vmbusHandle });
    }
    return out;
  }

  createServerPort(partitionId: number, vtl: number): ServerPort | null {
    const e = this.entries.get(partitionId);
    if (e === undefined || e.partition.isDestroyed || vtl !== 0) return null;
    return new BusServerPort(this, e);
  }

  /** Polled mode for every partition's host end and this side's tasks. */
  setPolling(polling: boolean): void {
    for (const e of this.entries.values()) if (!e.partition.isDestroyed) e.partition.host.setPolling(polling);
    this.queue.setPolling(polling);
  }

  /** One polling step: messages and signals of every partition, then queued tasks. */
  poll(): number {
    let n = 0;
    for (const e of this.entries.values()) if (!e.partition.isDestroyed) n += e.partition.host.poll();
    return n + this.queue.runPending();
  }

  /**
   * Servicing, the host side going away: saves the partition's host VMBus (the server's state and
   * where the host's SynIC end stood) and detaches it without the guest noticing: no message is
   * sent, the link stays open, the guest's rings, GPADLs and open channels stay as they are, and
   * what the guest sends meanwhile waits. Save the KMCL channels first (VmbChannelSaveBegin ..
   * SaveEnd): a channel that was not saved is rescinded when the host comes back.
   *
   * Waits (up to `timeoutMs`, default 10 s) until the server is quiescent (no guest message being
   * handled, no open or close in progress, nothing waiting to be posted). Resolves to the
   * partition's descriptor and the saved image for `adoptPartition` in the new host instance.
   */
  async detachPartition(
    partitionId: number,
    options: { timeoutMs?: number } = {},
  ): Promise<{ descriptor: HvPartitionDescriptor; image: Uint8Array; hostEnd: HvHostEnd }> {
    const e = this.entries.get(partitionId);
    if (e === undefined || e.partition.isDestroyed)
      throw new Error(`detachPartition: no partition ${partitionId}`);
    const deadline = Date.now() + (options.timeoutMs ?? 10_000);
    for (;;) {
      const saved = e.server.saveState();
      if (saved.ok) {
        const hostEnd = e.partition.host;
        const { descriptor, link } = this.hv.detachPartition(partitionId);
        e.server.handOff();
        this.entries.delete(partitionId);
        for (const [key, port] of this.releasedPorts) {
          if (!key.startsWith(`${partitionId}|`)) continue;
          this.releasedPorts.delete(key);
          port.handedOff();
        }
        this.restoredPorts.delete(partitionId);
        return { descriptor, image: encodeHostVmbusSavedState({ server: saved.state, link }), hostEnd };
      }
      if (Date.now() > deadline)
        throw new Error(`detachPartition: the server cannot be saved: ${saved.reason}`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  /**
   * Servicing, the host side coming back (typically in a new host instance, possibly a new
   * thread): takes over a partition detached with detachPartition, from its descriptor and saved
   * image. The image is checked completely (BusSavedStateError, and nothing changes, if it is
   * corrupt, of another version, or does not match the partition's memory). The VMBus server is
   * restored with every channel released, for the KMCL channels to reclaim with
   * VmbChannelRestoreFromBuffer; call finishRestore once the VSPs are back. Same-thread transport:
   * `replacing` is the detached host end.
   */
  adoptPartition(
    descriptor: HvPartitionDescriptor,
    image: Uint8Array,
    options: { replacing?: HvHostEnd } = {},
  ): VmbusServer {
    if (this.entries.has(descriptor?.partitionId))
      throw new Error(`adoptPartition: partition ${descriptor.partitionId} is already here`);
    // Everything is checked before the link is touched: a refusal leaves it as it was.
    const saved = decodeHostVmbusSavedState(image);
    if (!(descriptor?.memory instanceof SharedArrayBuffer))
      throw new TypeError('not an HvPartitionDescriptor');
    VmbusServer.checkRestorable(new GuestMemory(descriptor.memory), saved.server, this.options.server);
    let partition: HostPartition;
    try {
      partition = this.hv.adoptPartition(descriptor, saved.link, options);
    } catch (error) {
      if (!(error instanceof HvError)) throw error;
      throw new BusSavedStateError('shape', `saved host VMBus state: ${error.message}`);
    }
    const server = VmbusServer.restore(partition.host, partition.memory, saved.server, {
      ...this.options.server,
      hostView: new HostMemoryView(partition.memory),
    });
    const entry: HostEntry = { partition, server };
    this.entries.set(partition.partitionId, entry);
    const ports: BusServerPort[] = [];
    for (const c of saved.server.channels) {
      const port = new BusServerPort(this, entry);
      port.adoptRestored(c);
      ports.push(port);
    }
    this.restoredPorts.set(partition.partitionId, ports);
    return server;
  }

  /**
   * Servicing: the VSPs of an adopted partition are back. Restored channels that no KMCL channel
   * reclaimed are rescinded (the guest closes them), and the server handles what the guest sent
   * meanwhile. Resolves when the guest has released the rescinded channels.
   */
  async finishRestore(partitionId: number): Promise<void> {
    const e = this.entries.get(partitionId);
    if (e === undefined) throw new Error(`finishRestore: no partition ${partitionId}`);
    const ports = this.restoredPorts.get(partitionId) ?? [];
    this.restoredPorts.delete(partitionId);
    const revokes: Promise<void>[] = [];
    for (const port of ports) if (port.isUnreclaimed) revokes.push(port.revokeReleased());
    await Promise.all([e.server.finishRestore(), ...revokes]);
  }

  /** Disposes every server (open channels are closed with onClose('dispose')). */
  async dispose(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => e.server.dispose()));
  }
}

function releaseKey(partitionId: number, interfaceType: string, interfaceInstance: string): string {
  return `${partitionId}|${interfaceType}|${interfaceInstance}`;
}

class BusServerPort implements ServerPort {
  readonly hostView: HostMemoryView;
  private readonly server: VmbusServer;
  private handle: ServerChannelHandle | null = null;
  private events: ServerPortEvents | null = null;
  private data: BusDataPath | null = null;
  // Servicing (release / reclaim / abandon): a released port keeps its offer, channel and GPADL
  // holds; the guest's open/close wait until a new port reclaims it. The new port then forwards
  // everything to this one (`inner`).
  private key = '';
  private released = false;
  private heldWaiters: (() => void)[] = [];
  private inner: BusServerPort | null = null;
  private openData: PortOpenRequest | null = null;
  private revoked = false;
  private mmioMb = 0;
  private mmioOptMb = 0;
  /** Settles the port's pending bus hooks (revoke does, see the module comment). */
  private readonly cuts = new Set<() => void>();
  /** GPADLs the channel has mapped: the bus mapping that makes a teardown wait. */
  private readonly holds = new Map<number, GrantedMdl>();
  private readonly handler: ServerChannelHandler = {
    onOpen: (req) => this.opened(req),
    onClose: () => this.closed(),
    onGuestSignal: () => {
      const d = this.data;
      if (d !== null) d.deliver();
    },
  };

  constructor(
    private readonly host: BusKmclHost,
    private readonly entry: HostEntry,
  ) {
    this.server = entry.server;
    this.hostView = entry.server.hostView;
  }

  /**
   * Servicing: this port stands for a channel of a restored server, released (as if its KMCL
   * channel had just saved it) until a KMCL channel reclaims it.
   */
  adoptRestored(ch: Readonly<ServerChannelState>): void {
    const o = ch.offer;
    const handle = this.server.claimChannel(
      {
        interfaceType: Guid.parse(o.interfaceType),
        interfaceInstance: Guid.parse(o.interfaceInstance),
        subChannelIndex: o.subChannelIndex,
      },
      this.handler,
    );
    if (handle === null)
      throw new Error(`adoptRestored: no restored channel ${o.interfaceType}/${o.interfaceInstance}`);
    this.handle = handle;
    this.mmioMb = o.mmioMegabytes;
    this.mmioOptMb = o.mmioMegabytesOptional;
    this.key = releaseKey(this.entry.partition.partitionId, o.interfaceType, o.interfaceInstance);
    const rings = this.server.rings(handle);
    // A null data path (the guest scribbled on its ring indices) makes the KMCL channel's restore fail.
    const data = ch.phase === 'open' && rings !== null ? this.dataPath(rings, handle) : null;
    if (data !== null) {
      this.data = data;
      this.openData = { data, mmio: mmioFor(handle.relid, this.mmioMb, this.mmioOptMb) };
    }
    this.released = true;
    if (o.subChannelIndex === 0) this.host.releasedPorts.set(this.key, this);
  }

  /** The host's data path over an open channel's rings, or null if the ring indices are corrupt. */
  private dataPath(rings: ChannelRings, handle: ServerChannelHandle): BusDataPath | null {
    const server = this.server;
    try {
      return new BusDataPath(
        this.host.queue,
        new RingWriter(rings.hostToGuest),
        new RingReader(rings.guestToHost),
        server.hostView,
        server.memory.pageCount,
        () => server.signalGuest(handle),
      );
    } catch (e) {
      if (e instanceof RingError) return null;
      throw e;
    }
  }

  /** Servicing: restored and not reclaimed by any KMCL channel. */
  get isUnreclaimed(): boolean {
    return this.released && !this.revoked;
  }

  /** Servicing: rescinds a released offer nobody reclaimed. */
  revokeReleased(): Promise<void> {
    this.host.releasedPorts.delete(this.key);
    this.released = false;
    const waiters = this.heldWaiters;
    this.heldWaiters = [];
    for (const w of waiters) w();
    return this.revoke();
  }

  /** Servicing: the host instance this port belongs to was detached; it never acts again. */
  handedOff(): void {
    this.revoked = true;
    if (this.data !== null) this.data.alive = false;
    this.data = null;
    this.holds.clear();
  }

  offer(params: PortOfferParams, events: ServerPortEvents): NTSTATUS {
    if (this.handle !== null || this.revoked || this.inner !== null) return STATUS_INVALID_DEVICE_STATE;
    if (this.entry.partition.isDestroyed) return STATUS_DEVICE_NOT_CONNECTED;
    const type = params.interfaceType.toString();
    const instance = params.interfaceInstance.toString();
    for (const c of this.server.state.channels) {
      if (
        c.phase !== 'revoked' &&
        !c.revoking &&
        c.offer.interfaceType === type &&
        c.offer.interfaceInstance === instance
      ) {
        return STATUS_OBJECT_NAME_COLLISION;
      }
    }
    const limit = params.pipe ? MAX_PIPE_USER_DEFINED_BYTES : MAX_USER_DEFINED_BYTES;
    if (params.userDefined.length > limit) return STATUS_INVALID_PARAMETER;
    try {
      this.handle = this.server.offerChannel(
        {
          interfaceType: params.interfaceType,
          interfaceInstance: params.interfaceInstance,
          flags: offerFlagsFromServerFlags(params.serverFlags),
          mmioMegabytes: params.mmioMegabytes,
          mmioMegabytesOptional: params.mmioMegabytesOptional,
          userDefined: params.userDefined,
          pipeMode: params.pipe ? 'message' : undefined,
        },
        this.handler,
      );
    } catch (e) {
      if (e instanceof RangeError || e instanceof TypeError) return STATUS_INVALID_PARAMETER;
      return STATUS_INSUFFICIENT_RESOURCES;
    }
    this.events = events;
    this.mmioMb = params.mmioMegabytes;
    this.mmioOptMb = params.mmioMegabytesOptional;
    this.key = releaseKey(this.entry.partition.partitionId, type, instance);
    return STATUS_SUCCESS;
  }

  private async held(): Promise<void> {
    while (this.released) await new Promise<void>((resolve) => this.heldWaiters.push(resolve));
  }

  private hold(events: ServerPortEvents): void {
    this.events = events;
    this.released = false;
    const waiters = this.heldWaiters;
    this.heldWaiters = [];
    for (const w of waiters) w();
  }

  release(): void {
    if (this.inner !== null) {
      const inner = this.inner;
      this.inner = null;
      inner.release();
      return;
    }
    if (this.handle === null || this.revoked || this.released) return;
    this.released = true;
    this.host.releasedPorts.set(this.key, this);
  }

  reclaim(
    interfaceType: Guid,
    interfaceInstance: Guid,
    events: ServerPortEvents,
  ): { status: NTSTATUS; open: PortOpenRequest | null } {
    if (this.handle !== null || this.inner !== null || this.revoked)
      return { status: STATUS_INVALID_DEVICE_STATE, open: null };
    const key = releaseKey(
      this.entry.partition.partitionId,
      interfaceType.toString(),
      interfaceInstance.toString(),
    );
    const old = this.host.releasedPorts.get(key);
    if (old === undefined || old.revoked || !old.released) return { status: STATUS_NOT_FOUND, open: null };
    this.host.releasedPorts.delete(key);
    old.hold(events);
    this.inner = old;
    const open = old.openData !== null && old.data?.alive ? old.openData : null;
    return { status: STATUS_SUCCESS, open };
  }

  abandon(interfaceType: Guid, interfaceInstance: Guid): NTSTATUS {
    const r = this.reclaim(interfaceType, interfaceInstance, {
      onOpen: () => Promise.resolve(STATUS_DEVICE_NOT_CONNECTED),
      onClose: () => Promise.resolve(),
    });
    if (r.status !== STATUS_SUCCESS) return r.status;
    void this.revoke();
    return STATUS_SUCCESS;
  }

  /** Waits for `p`, unless revoke() settles it first with `fallback`. */
  private cuttable<T>(p: Promise<T>, fallback: T): Promise<T> {
    return new Promise<T>((resolve) => {
      const cut = (): void => resolve(fallback);
      this.cuts.add(cut);
      p.then(
        (v) => {
          this.cuts.delete(cut);
          resolve(v);
        },
        () => {
          this.cuts.delete(cut);
          resolve(fallback);
        },
      );
    });
  }

  private async opened(req: ServerOpenRequest): Promise<number> {
    if (this.released) await this.held();
    const events = this.events;
    const handle = this.handle;
    if (this.revoked || events === null || handle === null) return STATUS_DEVICE_NOT_CONNECTED;
    const data = this.dataPath(req.rings, handle);
    if (data === null) return STATUS_INVALID_PARAMETER;
    this.data = data;
    const mmio = mmioFor(handle.relid, this.mmioMb, this.mmioOptMb);
    const status = await this.cuttable(events.onOpen({ data, mmio }), STATUS_DEVICE_NOT_CONNECTED);
    if (status !== STATUS_SUCCESS || this.revoked) {
      data.alive = false;
      if (this.data === data) this.data = null;
      return status === STATUS_SUCCESS ? STATUS_DEVICE_NOT_CONNECTED : status;
    }
    this.openData = { data, mmio };
    return STATUS_SUCCESS;
  }

  private async closed(): Promise<void> {
    if (this.released) await this.held();
    this.openData = null;
    const events = this.events;
    const data = this.data;
    if (events === null || this.revoked) return;
    await this.cuttable(events.onClose(), undefined);
    if (data !== null) data.alive = false;
    if (this.data === data) this.data = null;
  }

  async revoke(): Promise<void> {
    if (this.inner !== null) return this.inner.revoke();
    const handle = this.handle;
    if (handle === null || this.revoked) return;
    this.revoked = true;
    for (const cut of [...this.cuts]) cut();
    this.cuts.clear();
    if (this.data !== null) {
      this.data.alive = false;
      this.data = null;
    }
    for (const [id, hold] of this.holds) {
      try {
        this.server.unmapGpadl(handle, id, hold);
      } catch {
        hold.revoke();
      }
    }
    this.holds.clear();
    let released: Promise<void>;
    try {
      released = this.server.revokeOffer(handle);
    } catch {
      return; // the server was disposed or the partition destroyed: nothing is left to release
    }
    await withTimeout(
      released.catch((e: unknown) => {
        if (!(e instanceof BusError)) throw e;
      }),
      this.host.revokeTimeoutMs,
      undefined,
    );
  }

  gpadl(gpadlHandle: number): PortGpadl | null {
    if (this.inner !== null) return this.inner.gpadl(gpadlHandle);
    const handle = this.handle;
    if (handle === null || this.revoked) return null;
    let info: ReturnType<VmbusServer['getGpadl']>;
    try {
      info = this.server.getGpadl(handle, gpadlHandle);
    } catch {
      return null;
    }
    if (info === null) return null;
    const st = this.server.state.gpadls.find((g) => g.gpadlId === gpadlHandle);
    if (st === undefined || st.phase !== 'created') return null;
    return { ranges: info.ranges, readOnly: false };
  }

  setGpadlMapped(gpadlHandle: number, mapped: boolean): void {
    if (this.inner !== null) {
      this.inner.setGpadlMapped(gpadlHandle, mapped);
      return;
    }
    const handle = this.handle;
    if (handle === null) return;
    const hold = this.holds.get(gpadlHandle);
    if (mapped) {
      if (hold !== undefined || this.revoked) return;
      try {
        this.holds.set(gpadlHandle, this.server.mapGpadl(handle, gpadlHandle, { readOnly: true }));
      } catch {
        // Gone or being torn down: nothing for a teardown to wait for.
      }
      return;
    }
    if (hold === undefined) return;
    this.holds.delete(gpadlHandle);
    try {
      this.server.unmapGpadl(handle, gpadlHandle, hold);
    } catch {
      hold.revoke();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Guest

export interface BusKmclGuestOptions {
  readonly partitionId: number;
  /** The guest's page allocator (default: a new scattered one over `memory`). */
  readonly allocator?: PageAllocator;
  /** Same-thread systems: the hv scheduler to run port tasks on. */
  readonly scheduler?: HvScheduler | null;
  /** Limit on a close waiting for the host (default DEFAULT_PEER_TIMEOUT_MS; Infinity: none). */
  readonly peerTimeoutMs?: number;
  /** How ring pages are allocated (default 'scattered', as real guests look). */
  readonly ringAllocation?: 'contiguous' | 'scattered';
}

interface OfferEntry {
  readonly offer: ClientOffer;
  readonly port: PortOffer;
  owner: BusClientPort | null;
  revoked: boolean;
}

/** A guest's VMBus as the guest's KMCL sees it: a connected VmbusClient with its offers. */
export class BusKmclGuest implements KmclGuestBus {
  readonly partitionId: number;
  readonly vtl = 0;
  readonly memory: GuestMemory;
  readonly allocator: PageAllocator;
  readonly client: VmbusClient;
  readonly queue: BusTaskQueue;
  /** The guest's own checked view for external data it receives. */
  readonly guestView: HostMemoryView;
  readonly peerTimeoutMs: number;
  readonly ringAllocation: 'contiguous' | 'scattered';
  /** Ring pages leaked because the host did not release a ring in time. */
  leakedPages = 0;
  readonly watchers = new Set<BusClientPort>();
  private readonly entries = new Map<number, OfferEntry>();

  /** Wraps a VmbusClient that is connected (offers may be requested before or after). */
  constructor(client: VmbusClient, memory: GuestMemory, options: BusKmclGuestOptions) {
    this.client = client;
    this.memory = memory;
    this.partitionId = options.partitionId;
    this.allocator = options.allocator ?? new PageAllocator(memory, { seed: options.partitionId });
    this.queue = new BusTaskQueue(options.scheduler ?? null);
    this.guestView = new HostMemoryView(memory);
    this.peerTimeoutMs = options.peerTimeoutMs ?? DEFAULT_PEER_TIMEOUT_MS;
    this.ringAllocation = options.ringAllocation ?? 'scattered';
    client.onOffer((o) => this.added(o));
    client.onRescind((o) => this.rescinded(o));
    for (const o of client.offers()) this.added(o);
  }

  /** Connects a VmbusClient on `link`, requests the offers and wraps it. */
  static async connect(
    link: HvGuestEnd,
    memory: GuestMemory,
    options: BusKmclGuestOptions & { client?: VmbusClientOptions },
  ): Promise<BusKmclGuest> {
    const client = new VmbusClient(link, memory, options.client);
    await client.connect();
    const bus = new BusKmclGuest(client, memory, options);
    await client.requestOffers();
    return bus;
  }

  createClientPort(): ClientPort {
    return new BusClientPort(this);
  }

  /** Polled mode for this guest's link end and tasks. */
  setPolling(polling: boolean): void {
    this.client.link.setPolling(polling);
    this.queue.setPolling(polling);
  }

  /** One polling step: messages and signals, then queued tasks. */
  poll(): number {
    return this.client.link.poll() + this.queue.runPending();
  }

  /** @internal */
  entryOf(offer: PortOffer): OfferEntry | undefined {
    for (const e of this.entries.values()) if (e.port === offer) return e;
    return undefined;
  }

  /** Tells watchers (all, or `only`; never `except`) about an available offer, from the queue. */
  announce(entry: OfferEntry, only: BusClientPort | null, except?: BusClientPort): void {
    this.queue.schedule({
      queued: false,
      run: () => {
        if (entry.revoked || entry.owner !== null || this.entries.get(entry.offer.relid) !== entry) return;
        const targets = only !== null ? [only] : [...this.watchers];
        for (const w of targets) {
          if (w === except || !w.wants(entry) || w.told.has(entry) || w.events === null) continue;
          w.told.add(entry);
          w.events.onOffer(entry.port);
        }
      },
    });
  }

  /** Offers available to a new watcher. */
  available(): OfferEntry[] {
    return [...this.entries.values()].filter((e) => !e.revoked && e.owner === null);
  }

  private added(o: ClientOffer): void {
    const have = this.entries.get(o.relid);
    if (have !== undefined && have.offer === o) return;
    const pipe = (o.flags & VMBUS_CHANNEL_NAMED_PIPE_MODE) !== 0;
    const port: PortOffer = Object.freeze({
      interfaceType: o.interfaceType,
      interfaceInstance: o.interfaceInstance,
      serverFlags: serverFlagsFromOfferFlags(o.flags),
      pipe,
      mmio: mmioFor(o.relid, o.mmioMegabytes, o.mmioMegabytesOptional),
      userDefined: pipe ? o.userDefined.slice(4) : o.userDefined.slice(),
    });
    const entry: OfferEntry = { offer: o, port, owner: null, revoked: false };
    this.entries.set(o.relid, entry);
    this.announce(entry, null);
  }

  private rescinded(o: ClientOffer): Promise<void> | undefined {
    const entry = this.entries.get(o.relid);
    if (entry === undefined || entry.offer !== o) return undefined;
    entry.revoked = true;
    const owner = entry.owner;
    const done = owner === null ? undefined : owner.rescinded(entry);
    const forget = (): void => {
      if (this.entries.get(o.relid) === entry) this.entries.delete(o.relid);
    };
    if (done === undefined) {
      forget();
      return undefined;
    }
    return done.then(forget, forget);
  }
}

interface OpenRing {
  readonly pfns: Uint32Array;
  readonly gpadlId: number;
  readonly data: BusDataPath;
}

class BusClientPort implements ClientPort {
  private match: PortOfferMatch | null = null;
  events: ClientPortEvents | null = null;
  readonly told = new Set<OfferEntry>();
  private opened: OfferEntry | null = null;
  private ring: OpenRing | null = null;
  /** An open() in progress (a rescind waits for its clean-up). */
  private opening: Promise<unknown> | null = null;
  private closing: Promise<void> | null = null;
  /** GPADLs created through this port and not deleted: handle -> relid. */
  private readonly owned = new Map<number, number>();

  constructor(private readonly bus: BusKmclGuest) {}

  wants(entry: OfferEntry): boolean {
    const m = this.match;
    return (
      m !== null &&
      entry.port.interfaceType.equals(m.interfaceType) &&
      (m.interfaceInstance === null || entry.port.interfaceInstance.equals(m.interfaceInstance))
    );
  }

  watch(match: PortOfferMatch, events: ClientPortEvents): void {
    if (this.match !== null) throw new Error('BusClientPort: already watching');
    this.match = match;
    this.events = events;
    this.bus.watchers.add(this);
    for (const e of this.bus.available()) this.bus.announce(e, this);
  }

  unwatch(): void {
    this.match = null;
    this.bus.watchers.delete(this);
  }

  open(offer: PortOffer, rings: PortRingPages): Promise<{ status: NTSTATUS; data?: PortDataPath }> {
    const p = this.doOpen(offer, rings);
    const tracked = p.then(
      () => undefined,
      () => undefined,
    );
    this.opening = tracked;
    void tracked.then(() => {
      if (this.opening === tracked) this.opening = null;
    });
    return p;
  }

  private async doOpen(
    offer: PortOffer,
    rings: PortRingPages,
  ): Promise<{ status: NTSTATUS; data?: PortDataPath }> {
    const bus = this.bus;
    const client = bus.client;
    const entry = bus.entryOf(offer);
    if (entry === undefined || entry.revoked) return { status: STATUS_DEVICE_NOT_CONNECTED };
    const relid = entry.offer.relid;
    if (entry.owner !== null || this.opened !== null || client.channelPhase(relid) !== 'offered') {
      return { status: STATUS_DEVICE_BUSY };
    }
    const { incomingPages, outgoingPages } = rings;
    if (
      !Number.isInteger(incomingPages) ||
      !Number.isInteger(outgoingPages) ||
      incomingPages < MINIMUM_RING_PAGES ||
      outgoingPages < MINIMUM_RING_PAGES ||
      incomingPages + outgoingPages > MAXIMUM_GPADL_PAGES
    ) {
      return { status: STATUS_INVALID_PARAMETER };
    }
    let pfns: Uint32Array;
    try {
      pfns = bus.allocator.allocate(incomingPages + outgoingPages, bus.ringAllocation);
    } catch (e) {
      if (e instanceof MemoryAccessError) return { status: STATUS_INSUFFICIENT_RESOURCES };
      throw e;
    }
    entry.owner = this;
    this.opened = entry;
    this.told.delete(entry);
    // The guest lays out its ring GPADL: [0, N) its outgoing (guest-to-host) ring, [N, end) the
    // host-to-guest ring; both control pages zeroed, feature_bits = 1 (pending_send_sz).
    const list = Array.from(pfns);
    const n = outgoingPages;
    RingMemory.fromGuestMemory(bus.memory, list.slice(0, n)).initialize();
    RingMemory.fromGuestMemory(bus.memory, list.slice(n)).initialize();
    const fail = async (status: NTSTATUS, gpadlId: number | null): Promise<{ status: NTSTATUS }> => {
      if (gpadlId !== null) await this.teardownRing(relid, gpadlId, pfns);
      else bus.allocator.free(pfns);
      if (this.opened === entry) this.opened = null;
      if (entry.owner === this) entry.owner = null;
      return { status };
    };
    let gpadlId: number;
    try {
      const r = await client.createGpadl(relid, list);
      if (r.status !== 0) {
        // Refused: the host holds nothing of it.
        return fail(STATUS_INSUFFICIENT_RESOURCES, null);
      }
      gpadlId = r.gpadlId;
    } catch {
      return fail(STATUS_DEVICE_NOT_CONNECTED, null);
    }
    if (entry.revoked) return fail(STATUS_DEVICE_NOT_CONNECTED, gpadlId);
    const mine = channelRingsFromGpadl(bus.memory, list, n);
    const data = new BusDataPath(
      bus.queue,
      new RingWriter(mine.guestToHost),
      new RingReader(mine.hostToGuest),
      bus.guestView,
      bus.memory.pageCount,
      () => client.signalHost(relid),
    );
    client.onHostSignal(relid, data.deliver);
    let wire: number;
    try {
      wire = await client.openChannel(relid, { ringGpadlId: gpadlId, downstreamPageOffset: n });
    } catch {
      wire = STATUS_DEVICE_NOT_CONNECTED >>> 0;
    }
    if (wire !== 0 || entry.revoked) {
      data.alive = false;
      try {
        client.onHostSignal(relid, null);
      } catch {
        // The relid is already released.
      }
      const status = wire === 0 ? STATUS_DEVICE_NOT_CONNECTED : wire | 0;
      return fail(NT_SUCCESS(status) ? STATUS_UNSUCCESSFUL : status, gpadlId);
    }
    this.ring = { pfns, gpadlId, data };
    return { status: STATUS_SUCCESS, data };
  }

  /** Tears the ring GPADL down and frees its pages, or leaks them if the host does not let go. */
  private async teardownRing(relid: number, gpadlId: number, pfns: Uint32Array): Promise<void> {
    const client = this.bus.client;
    let done: Promise<void> | null = null;
    try {
      done = client.teardownGpadl(relid, gpadlId);
    } catch {
      // Unknown relid or GPADL: the channel was released and its GPADLs with it.
    }
    let released = true;
    if (done !== null) {
      const r = await withTimeout(
        done.then(
          () => true,
          (e: unknown) => e instanceof BusError && e.code !== 'send-failed',
        ),
        this.bus.peerTimeoutMs,
        false,
      );
      released = r;
    }
    if (released) this.bus.allocator.free(pfns);
    else this.bus.leakedPages += pfns.length;
  }

  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    const entry = this.opened;
    const ring = this.ring;
    if (entry === null || ring === null) return Promise.resolve();
    const p = this.doClose(entry, ring);
    this.closing = p;
    void p.finally(() => {
      if (this.closing === p) this.closing = null;
    });
    return p;
  }

  private async doClose(entry: OfferEntry, ring: OpenRing): Promise<void> {
    const client = this.bus.client;
    const relid = entry.offer.relid;
    ring.data.alive = false;
    try {
      client.onHostSignal(relid, null);
    } catch {
      // Released already.
    }
    if (client.channelPhase(relid) === 'open') {
      try {
        await client.closeChannel(relid);
      } catch {
        // Disconnected: nothing to tell the host.
      }
    }
    await this.teardownRing(relid, ring.gpadlId, ring.pfns);
    this.ring = null;
    this.opened = null;
    if (entry.owner === this) entry.owner = null;
    if (!entry.revoked) {
      for (const w of this.bus.watchers) if (w !== this) w.told.delete(entry);
      this.bus.announce(entry, null, this);
    }
  }

  /** The host rescinded `entry`, which this port has open or is opening. */
  async rescinded(entry: OfferEntry): Promise<void> {
    if (this.opening !== null && this.ring === null) {
      await this.opening;
      return;
    }
    if (this.opened !== entry || this.events === null) return;
    try {
      await this.events.onRescind();
    } finally {
      // A channel that ignored the rescind is closed by the bus.
      if (this.opened === entry) await this.close();
    }
  }

  async createGpadl(
    ranges: readonly GpaRange[],
    _readOnly: boolean,
  ): Promise<{ status: NTSTATUS; gpadlHandle?: number }> {
    const entry = this.opened;
    const client = this.bus.client;
    if (entry === null || this.ring === null || client.channelPhase(entry.offer.relid) !== 'open') {
      return { status: STATUS_DEVICE_NOT_CONNECTED };
    }
    let count = 0;
    for (const r of ranges) count += r.pfns.length;
    if (count === 0 || count > MAXIMUM_GPADL_PAGES) return { status: STATUS_INVALID_PARAMETER };
    const relid = entry.offer.relid;
    let pending: Promise<{ gpadlId: number; status: number }>;
    try {
      pending = client.createGpadl(relid, ranges);
    } catch {
      return { status: STATUS_INVALID_PARAMETER };
    }
    try {
      const r = await pending;
      if (r.status !== 0) return { status: STATUS_INSUFFICIENT_RESOURCES };
      this.owned.set(r.gpadlId, relid);
      return { status: STATUS_SUCCESS, gpadlHandle: r.gpadlId };
    } catch {
      return { status: STATUS_DEVICE_NOT_CONNECTED };
    }
  }

  async deleteGpadl(gpadlHandle: number): Promise<void> {
    const relid = this.owned.get(gpadlHandle);
    if (relid === undefined) return;
    this.owned.delete(gpadlHandle);
    try {
      await this.bus.client.teardownGpadl(relid, gpadlHandle);
    } catch {
      // Released with its channel, or the connection is gone.
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Whole systems

export interface KmclSystemOptions {
  /** Default 'same-thread'. */
  transport?: HvTransport;
  /** Guest partitions (default 1). */
  partitions?: number;
  /** Guest RAM per partition (default 32 MiB). */
  memoryBytes?: number;
  /** SynIC message queue slots per direction. */
  queueSlots?: number;
  /** Same-thread: the scheduler to share (default a new auto one). */
  scheduler?: HvScheduler;
  host?: BusKmclHostOptions;
  /** Guest options (same-thread guests here; cross-thread guests get them through the descriptor). */
  peerTimeoutMs?: number;
  provider?: KmclProviderOptions;
}

/** What a guest's thread needs to bring up its KMCL: plain data, postMessage it once. */
export interface KmclGuestDescriptor {
  readonly kind: 'kmcl-guest';
  readonly version: 1;
  readonly partition: HvPartitionDescriptor;
  readonly peerTimeoutMs?: number;
}

export interface KmclSystem {
  readonly hv: Hypervisor;
  readonly hostBus: BusKmclHost;
  /** The host's KMCL (query it for KMCL_SERVER_INTERFACE_TYPE). */
  readonly host: KmclProvider;
  /** Same-thread: each partition's guest KMCL and bus, in partition order; empty cross-thread. */
  readonly guests: readonly KmclProvider[];
  readonly guestBuses: readonly BusKmclGuest[];
  /** Cross-thread: one descriptor per partition for attachKmclGuest in the guest's thread. */
  readonly descriptors: readonly KmclGuestDescriptor[];
  /** Same-thread: resolves when nothing is left to run. */
  idle(): Promise<void>;
  /** Disposes the buses and destroys the partitions. */
  close(): Promise<void>;
}

/** Builds a host and its guest partitions on the real bus. */
export async function createKmclSystem(options: KmclSystemOptions = {}): Promise<KmclSystem> {
  const transport = options.transport ?? 'same-thread';
  const hv = new Hypervisor({ transport, scheduler: options.scheduler });
  const count = options.partitions ?? 1;
  const parts: HostPartition[] = [];
  for (let i = 0; i < count; i++) {
    parts.push(
      hv.createPartition({
        memoryBytes: options.memoryBytes ?? 32 * 1024 * 1024,
        queueSlots: options.queueSlots,
      }),
    );
  }
  const hostBus = new BusKmclHost(hv, options.host);
  const host = KmclProvider.forHost(hostBus, options.provider);
  const guests: KmclProvider[] = [];
  const guestBuses: BusKmclGuest[] = [];
  const descriptors: KmclGuestDescriptor[] = [];
  if (transport === 'same-thread') {
    for (const p of parts) {
      const bus = await BusKmclGuest.connect(p.guest!, p.memory, {
        partitionId: p.partitionId,
        scheduler: hv.scheduler,
        peerTimeoutMs: options.peerTimeoutMs,
      });
      guestBuses.push(bus);
      guests.push(KmclProvider.forGuest(bus, options.provider));
    }
  } else {
    for (const p of parts) {
      descriptors.push({
        kind: 'kmcl-guest',
        version: 1,
        partition: p.descriptor,
        peerTimeoutMs: options.peerTimeoutMs,
      });
    }
  }
  return {
    hv,
    hostBus,
    host,
    guests,
    guestBuses,
    descriptors,
    idle: () => hv.idle(),
    close: async () => {
      for (const g of guestBuses) g.client.dispose();
      await hostBus.dispose();
      hv.close();
    },
  };
}

export interface KmclGuest {
  readonly provider: KmclProvider;
  readonly bus: BusKmclGuest;
  /** Disposes the client (the link stays until the host destroys the partition). */
  close(): void;
}

/** In the guest's thread: attaches the partition, connects its VMBus client, returns its KMCL. */
export async function attachKmclGuest(
  descriptor: KmclGuestDescriptor,
  options: { provider?: KmclProviderOptions; unref?: boolean } = {},
): Promise<KmclGuest> {
  if (descriptor === null || typeof descriptor !== 'object' || descriptor.kind !== 'kmcl-guest') {
    throw new TypeError('not a KmclGuestDescriptor');
  }
  const partition = attachGuestPartition(descriptor.partition);
  if (options.unref !== false) partition.link.unref();
  const bus = await BusKmclGuest.connect(partition.link, partition.memory, {
    partitionId: partition.partitionId,
    peerTimeoutMs: descriptor.peerTimeoutMs,
  });
  return {
    provider: KmclProvider.forGuest(bus, options.provider),
    bus,
    close: () => bus.client.dispose(),
  };
}
