// The loopback port: a TEST DOUBLE OF THE BUS. It joins the host's KMCL to one or more guest
// partitions' KMCLs inside one thread, with a tiny control plane of its own instead of VMBus
// messages: offers are matched by GUID (and reach only the partition and VTL they target), GPADLs
// are recorded as PFN lists, and opening a channel lays out a real ring GPADL in guest memory
// (pages [0, N) the guest-to-host ring, [N, end) the host-to-guest ring, N = the client's outgoing
// page count) with real rings from src/ring on both ends. The host end reaches the ring pages, the
// GPADLs it maps and external data only through grants of its HostMemoryView. Signals, the "host
// acknowledged" steps and offer notifications run from a deterministic FIFO scheduler, so a
// same-thread run replays exactly. The bus-backed port (bus-port.ts, over src/bus) replaces this
// once the bus exists; channels cannot tell the two apart.

import { PageAllocator } from '../memory/allocator.js';
import { GuestMemory, MemoryAccessError } from '../memory/guest-memory.js';
import { HostMemoryView, type MemoryGrant } from '../memory/host-view.js';
import { channelRingsFromGpadl, RingMemory } from '../ring/memory.js';
import { RingReader } from '../ring/reader.js';
import { RingWriter } from '../ring/writer.js';
import { VMBUS_GPADL_START } from '../wire/constants.js';
import type { Guid } from '../wire/guid.js';
import type { GpaRange } from '../wire/packets.js';
import type { VmbusUserHandle } from './channel.js';
import { MAXIMUM_GPADL_PAGES, MAXIMUM_TARGET_VTL, MINIMUM_RING_PAGES } from './constants.js';
import {
  type NTSTATUS,
  STATUS_DEVICE_BUSY,
  STATUS_DEVICE_NOT_CONNECTED,
  STATUS_INSUFFICIENT_RESOURCES,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_PARAMETER,
  STATUS_NOT_FOUND,
  STATUS_OBJECT_NAME_COLLISION,
  STATUS_SUCCESS,
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

// ---------------------------------------------------------------------------------------------
// Scheduler

export interface LoopbackSchedulerOptions {
  /** 'auto' (default): queued tasks run from a setImmediate pump. 'manual': only runUntilIdle/idle. */
  mode?: 'auto' | 'manual';
}

/** A deterministic FIFO of tasks (each queued at most once until it runs). */
export class LoopbackScheduler {
  readonly mode: 'auto' | 'manual';
  private readonly queue = new Fifo<PortTask>();
  private pumpQueued = false;
  private readonly pump = (): void => {
    this.pumpQueued = false;
    let batch = this.queue.length;
    while (batch-- > 0 && this.queue.length > 0) this.runOne();
    if (this.queue.length > 0 && this.mode === 'auto') this.queuePump();
  };

  constructor(options: LoopbackSchedulerOptions = {}) {
    this.mode = options.mode ?? 'auto';
  }

  get pending(): number {
    return this.queue.length;
  }

  schedule(task: PortTask): void {
    if (task.queued) return;
    task.queued = true;
    this.queue.push(task);
    if (this.mode === 'auto') this.queuePump();
  }

  /** Runs tasks until none is queued; returns how many ran. Throws after `maxSteps` (a livelock). */
  runUntilIdle(maxSteps = 10_000_000): number {
    let steps = 0;
    while (this.queue.length > 0) {
      if (steps++ >= maxSteps) throw new Error(`LoopbackScheduler: still busy after ${maxSteps} tasks`);
      this.runOne();
    }
    return steps;
  }

  /** Runs at most `count` queued tasks (to stop a run half-way); returns how many ran. */
  runSteps(count: number): number {
    let n = 0;
    while (n < count && this.queue.length > 0) {
      this.runOne();
      n++;
    }
    return n;
  }

  /** Resolves when no task is queued even after pending promise continuations have run. */
  async idle(): Promise<void> {
    for (;;) {
      this.runUntilIdle();
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.queue.length === 0) return;
    }
  }

  /** A promise resolved from a scheduler task (one simulated message round trip). */
  tick(): Promise<void> {
    return new Promise<void>((resolve) => this.schedule({ queued: false, run: resolve }));
  }

  private runOne(): void {
    const task = this.queue.shift()!;
    task.queued = false;
    task.run();
  }

  private queuePump(): void {
    if (this.pumpQueued) return;
    this.pumpQueued = true;
    setImmediate(this.pump);
  }
}

// ---------------------------------------------------------------------------------------------
// Data paths

class LoopbackDataPath implements PortDataPath {
  readonly outgoing: RingWriter;
  readonly incoming: RingReader;
  readonly externalData: HostMemoryView;
  readonly guestPageCount: number;
  peer: LoopbackDataPath | null = null;
  alive = true;
  signalsSent = 0;
  private handler: (() => void) | null = null;
  private readonly scheduler: LoopbackScheduler;
  readonly signalTask: PortTask = {
    queued: false,
    run: () => {
      if (this.alive && this.handler !== null) this.handler();
    },
  };

  constructor(
    scheduler: LoopbackScheduler,
    outgoing: RingWriter,
    incoming: RingReader,
    externalData: HostMemoryView,
    guestPageCount: number,
  ) {
    this.scheduler = scheduler;
    this.outgoing = outgoing;
    this.incoming = incoming;
    this.externalData = externalData;
    this.guestPageCount = guestPageCount;
  }

  signalPeer(): void {
    const peer = this.peer;
    this.signalsSent++;
    if (peer?.alive) this.scheduler.schedule(peer.signalTask);
  }

  setSignalHandler(handler: (() => void) | null): void {
    this.handler = handler;
  }

  schedule(task: PortTask): void {
    if (this.alive) this.scheduler.schedule(task);
  }
}

// ---------------------------------------------------------------------------------------------
// Offers, GPADLs, open channels

interface GpadlRecord {
  readonly ranges: readonly GpaRange[];
  readonly readOnly: boolean;
  mapped: boolean;
  unmapWaiters: (() => void)[];
}

interface OpenRing {
  readonly pfns: Uint32Array;
  readonly grant: MemoryGrant;
  readonly host: LoopbackDataPath;
  readonly guest: LoopbackDataPath;
}

type OfferState = 'offered' | 'open' | 'revoking' | 'revoked';

class LoopbackOffer {
  state: OfferState = 'offered';
  /** Servicing: no server holds the offer; the guest's requests wait for a reclaim. */
  released = false;
  private heldWaiters: (() => void)[] = [];
  /** The client's open is in progress (the server has not answered yet). */
  opening = false;
  client: LoopbackClientPort | null = null;
  ring: OpenRing | null = null;
  readonly gpadls = new Map<number, GpadlRecord>();
  readonly portOffer: PortOffer;

  constructor(
    readonly partition: LoopbackPartition,
    readonly vtl: number,
    readonly params: PortOfferParams,
    public events: ServerPortEvents,
    mmio: PortMmio,
  ) {
    this.portOffer = Object.freeze({
      interfaceType: params.interfaceType,
      interfaceInstance: params.interfaceInstance,
      serverFlags: params.serverFlags,
      pipe: params.pipe,
      mmio,
      userDefined: params.userDefined,
    });
  }

  /** Resolves once a server holds the offer (at once unless it was released for servicing). */
  async held(): Promise<void> {
    while (this.released) await new Promise<void>((resolve) => this.heldWaiters.push(resolve));
  }

  /** A server (re)takes the offer: wake the guest requests that waited. */
  hold(events: ServerPortEvents): void {
    this.events = events;
    this.released = false;
    const waiters = this.heldWaiters;
    this.heldWaiters = [];
    for (const w of waiters) w();
  }

  sameIds(vtl: number, interfaceType: Guid, interfaceInstance: Guid): boolean {
    return (
      this.vtl === vtl &&
      this.params.interfaceType.equals(interfaceType) &&
      this.params.interfaceInstance.equals(interfaceInstance)
    );
  }

  matches(match: PortOfferMatch): boolean {
    return (
      this.params.interfaceType.equals(match.interfaceType) &&
      (match.interfaceInstance === null || this.params.interfaceInstance.equals(match.interfaceInstance))
    );
  }
}

class LoopbackServerPort implements ServerPort {
  readonly hostView: HostMemoryView;
  private record: LoopbackOffer | null = null;

  constructor(
    private readonly partition: LoopbackPartition,
    private readonly vtl: number,
  ) {
    this.hostView = partition.hostView;
  }

  offer(params: PortOfferParams, events: ServerPortEvents): NTSTATUS {
    if (this.record !== null) return STATUS_INVALID_DEVICE_STATE;
    const p = this.partition;
    for (const o of p.offers) {
      if (o.state === 'revoking' || o.state === 'revoked') continue;
      if (o.sameIds(this.vtl, params.interfaceType, params.interfaceInstance)) {
        return STATUS_OBJECT_NAME_COLLISION;
      }
    }
    const record = new LoopbackOffer(p, this.vtl, params, events, p.assignMmio(params));
    this.record = record;
    p.offers.push(record);
    p.announce(record, null);
    return STATUS_SUCCESS;
  }

  async revoke(): Promise<void> {
    const record = this.record;
    if (record === null) return;
    this.record = null;
    // The guest is told only about a channel it has fully open and is not already closing (an
    // open in flight fails instead); waiting for a guest that is itself waiting for this server
    // would deadlock.
    const client = record.client;
    const tell = record.state === 'open' && !record.opening && client !== null && !client.closing;
    record.state = 'revoking';
    if (tell) {
      await this.partition.host.scheduler.tick();
      await client.rescinded(record);
    }
    record.state = 'revoked';
    const i = this.partition.offers.indexOf(record);
    if (i >= 0) this.partition.offers.splice(i, 1);
    await this.partition.host.scheduler.tick();
  }

  release(): void {
    const record = this.record;
    if (record === null) return;
    this.record = null;
    record.released = true;
  }

  private findReleased(interfaceType: Guid, interfaceInstance: Guid): LoopbackOffer | undefined {
    return this.partition.offers.find(
      (o) =>
        o.released &&
        o.state !== 'revoking' &&
        o.state !== 'revoked' &&
        o.sameIds(this.vtl, interfaceType, interfaceInstance),
    );
  }

  reclaim(
    interfaceType: Guid,
    interfaceInstance: Guid,
    events: ServerPortEvents,
  ): { status: NTSTATUS; open: PortOpenRequest | null } {
    if (this.record !== null) return { status: STATUS_INVALID_DEVICE_STATE, open: null };
    const record = this.findReleased(interfaceType, interfaceInstance);
    if (record === undefined) return { status: STATUS_NOT_FOUND, open: null };
    this.record = record;
    record.hold(events);
    const ring = record.ring;
    const open =
      record.state === 'open' && !record.opening && ring !== null
        ? { data: ring.host, mmio: record.portOffer.mmio }
        : null;
    return { status: STATUS_SUCCESS, open };
  }

  abandon(interfaceType: Guid, interfaceInstance: Guid): NTSTATUS {
    if (this.record !== null) return STATUS_INVALID_DEVICE_STATE;
    const record = this.findReleased(interfaceType, interfaceInstance);
    if (record === undefined) return STATUS_NOT_FOUND;
    // Nobody serves the old instance any more: a guest's pending open is refused, its close is
    // acknowledged, and the guest is told to let it go.
    record.hold({
      onOpen: () => Promise.resolve(STATUS_DEVICE_NOT_CONNECTED),
      onClose: () => Promise.resolve(),
    });
    this.record = record;
    void this.revoke();
    return STATUS_SUCCESS;
  }

  gpadl(gpadlHandle: number): PortGpadl | null {
    return this.record?.gpadls.get(gpadlHandle) ?? null;
  }

  setGpadlMapped(gpadlHandle: number, mapped: boolean): void {
    const g = this.record?.gpadls.get(gpadlHandle);
    if (g === undefined) return;
    g.mapped = mapped;
    if (!mapped) {
      const waiters = g.unmapWaiters;
      g.unmapWaiters = [];
      for (const w of waiters) w();
    }
  }
}

class LoopbackClientPort implements ClientPort {
  private match: PortOfferMatch | null = null;
  events: ClientPortEvents | null = null;
  private opened: LoopbackOffer | null = null;
  /** close() is in progress. */
  closing = false;
  /** Offers already announced to this port (each once per availability). */
  readonly told = new Set<LoopbackOffer>();

  constructor(
    private readonly partition: LoopbackPartition,
    readonly vtl: number,
  ) {}

  wants(offer: LoopbackOffer): boolean {
    return this.match !== null && offer.vtl === this.vtl && offer.matches(this.match);
  }

  watch(match: PortOfferMatch, events: ClientPortEvents): void {
    if (this.match !== null) throw new Error('LoopbackClientPort: already watching');
    this.match = match;
    this.events = events;
    this.partition.watchers.add(this);
    for (const o of this.partition.offers) if (o.state === 'offered') this.partition.announce(o, this);
  }

  unwatch(): void {
    this.match = null;
    this.partition.watchers.delete(this);
    if (this.opened === null && !this.closing) this.dropGpadls();
  }

  async open(offer: PortOffer, rings: PortRingPages): Promise<{ status: NTSTATUS; data?: PortDataPath }> {
    const p = this.partition;
    const record = p.offers.find((o) => o.portOffer === offer);
    if (record === undefined || record.state === 'revoking' || record.state === 'revoked') {
      return { status: STATUS_DEVICE_NOT_CONNECTED };
    }
    if (record.state !== 'offered' || this.opened !== null) return { status: STATUS_DEVICE_BUSY };
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
      pfns = p.allocator.allocate(incomingPages + outgoingPages, p.host.ringAllocation);
    } catch (e) {
      if (e instanceof MemoryAccessError) return { status: STATUS_INSUFFICIENT_RESOURCES };
      throw e;
    }
    record.state = 'open';
    record.client = this;
    this.opened = record;
    this.told.delete(record);
    // The guest lays out and initializes both rings of its ring GPADL.
    const list = Array.from(pfns);
    const n = outgoingPages;
    RingMemory.fromGuestMemory(p.memory, list.slice(0, n)).initialize();
    RingMemory.fromGuestMemory(p.memory, list.slice(n)).initialize();
    const guestRings = channelRingsFromGpadl(p.memory, list, n);
    // The host reaches the rings only over a grant of the ring GPADL's pages.
    const grant = p.hostView.grant(pfns, { label: `ring GPADL of "${record.params.friendlyName}"` });
    for (const pfn of list) p.hostView.check(pfn * 4096, 4096, 'write');
    const hostRings = channelRingsFromGpadl(p.memory, list, n);
    const sched = p.host.scheduler;
    const guest = new LoopbackDataPath(
      sched,
      new RingWriter(guestRings.guestToHost),
      new RingReader(guestRings.hostToGuest),
      p.guestView,
      p.memory.pageCount,
    );
    const host = new LoopbackDataPath(
      sched,
      new RingWriter(hostRings.hostToGuest),
      new RingReader(hostRings.guestToHost),
      p.hostView,
      p.memory.pageCount,
    );
    guest.peer = host;
    host.peer = guest;
    record.ring = { pfns, grant, host, guest };
    record.opening = true;
    let status: NTSTATUS;
    try {
      await sched.tick();
      if (record.state !== 'open') status = STATUS_DEVICE_NOT_CONNECTED;
      else {
        await record.held();
        if (record.state !== 'open') status = STATUS_DEVICE_NOT_CONNECTED;
        else status = await record.events.onOpen({ data: host, mmio: record.portOffer.mmio });
      }
    } finally {
      record.opening = false;
    }
    if (status !== STATUS_SUCCESS || record.state !== 'open') {
      this.release(record);
      if (record.state === 'open') record.state = 'offered';
      return { status: status === STATUS_SUCCESS ? STATUS_DEVICE_NOT_CONNECTED : status };
    }
    return { status: STATUS_SUCCESS, data: guest };
  }

  async close(): Promise<void> {
    const record = this.opened;
    if (record === null || this.closing) return;
    this.closing = true;
    try {
      const ring = record.ring;
      if (ring !== null) ring.guest.alive = false;
      await this.partition.host.scheduler.tick();
      // The server hears of the close only if it did not start it by revoking the offer.
      if (record.state === 'open') {
        await record.held();
        if (record.state === 'open') await record.events.onClose();
      }
      this.release(record);
      if (record.state === 'open') {
        record.state = 'offered';
        for (const w of this.partition.watchers) if (w !== this) w.told.delete(record);
        this.partition.announce(record, null, this);
      }
    } finally {
      this.closing = false;
    }
  }

  /** The host rescinded `record` while this port had it open. */
  async rescinded(record: LoopbackOffer): Promise<void> {
    if (this.opened !== record || this.events === null) return;
    await this.events.onRescind();
    // A client that ignored the rescind is closed by the bus.
    if (this.opened === record) await this.close();
  }

  /** Drops the ring and every GPADL of `record` (the guest closed or the open failed). */
  private release(record: LoopbackOffer): void {
    const p = this.partition;
    const ring = record.ring;
    record.ring = null;
    if (this.opened === record) this.opened = null;
    record.client = null;
    if (ring !== null) {
      ring.guest.alive = false;
      ring.host.alive = false;
      ring.grant.revoke();
      p.allocator.free(ring.pfns);
    }
  }

  /** GPADLs this port created and has not deleted (they outlive a close until deleted). */
  private readonly owned = new Map<number, LoopbackOffer>();

  /** Forgets every GPADL this port still owns (the port is done: unwatched after its close). */
  private dropGpadls(): void {
    for (const [handle, record] of this.owned) {
      const g = record.gpadls.get(handle);
      if (g !== undefined) {
        g.mapped = false;
        for (const w of g.unmapWaiters.splice(0)) w();
      }
      record.gpadls.delete(handle);
    }
    this.owned.clear();
  }

  async createGpadl(
    ranges: readonly GpaRange[],
    readOnly: boolean,
  ): Promise<{ status: NTSTATUS; gpadlHandle?: number }> {
    const record = this.opened;
    if (record === null || record.state !== 'open') return { status: STATUS_DEVICE_NOT_CONNECTED };
    const pages = this.partition.memory.pageCount;
    let count = 0;
    for (const r of ranges) {
      for (const pfn of r.pfns)
        if (!(Number.isInteger(pfn) && pfn >= 0 && pfn < pages)) return { status: STATUS_INVALID_PARAMETER };
      count += r.pfns.length;
    }
    if (count === 0 || count > MAXIMUM_GPADL_PAGES) return { status: STATUS_INVALID_PARAMETER };
    const handle = this.partition.nextGpadlHandle++;
    const copy = ranges.map((r) =>
      Object.freeze({ byteCount: r.byteCount, byteOffset: r.byteOffset, pfns: [...r.pfns] }),
    );
    // GPADL_HEADER/BODY out, GPADL_CREATED back.
    await this.partition.host.scheduler.tick();
    if (this.opened !== record) return { status: STATUS_DEVICE_NOT_CONNECTED };
    record.gpadls.set(handle, { ranges: Object.freeze(copy), readOnly, mapped: false, unmapWaiters: [] });
    this.owned.set(handle, record);
    return { status: STATUS_SUCCESS, gpadlHandle: handle };
  }

  async deleteGpadl(gpadlHandle: number): Promise<void> {
    const record = this.owned.get(gpadlHandle);
    const g = record?.gpadls.get(gpadlHandle);
    if (record === undefined || g === undefined) return;
    // GPADL_TEARDOWN out; the host answers GPADL_TORNDOWN only once the server unmapped it.
    await this.partition.host.scheduler.tick();
    if (g.mapped) await new Promise<void>((resolve) => g.unmapWaiters.push(resolve));
    record.gpadls.delete(gpadlHandle);
    this.owned.delete(gpadlHandle);
    await this.partition.host.scheduler.tick();
  }
}

// ---------------------------------------------------------------------------------------------
// Partitions and the host

export interface LoopbackHostOptions extends LoopbackSchedulerOptions {
  /** How ring pages are allocated: 'scattered' (default, as real guests look) or 'contiguous'. */
  ringAllocation?: 'contiguous' | 'scattered';
}

export interface LoopbackPartitionOptions {
  name?: string;
  /** Guest RAM size (default 16 MiB). */
  memoryBytes?: number;
  /** Seed of the guest page allocator's scattering. */
  seed?: number;
}

/** One guest partition: its RAM, its page allocator, the host's view of it, its offers. */
export class LoopbackPartition {
  readonly id: number;
  readonly name: string;
  readonly userHandle: VmbusUserHandle;
  readonly memory: GuestMemory;
  readonly allocator: PageAllocator;
  /** The host's checked view of this partition's RAM. */
  readonly hostView: HostMemoryView;
  /** The guest's own view for external data it receives (grants revoked at completion, like the host). */
  readonly guestView: HostMemoryView;
  readonly offers: LoopbackOffer[] = [];
  readonly watchers = new Set<LoopbackClientPort>();
  nextGpadlHandle = VMBUS_GPADL_START;
  private nextMmio = 0xf000_0000n;

  constructor(
    readonly host: LoopbackHost,
    id: number,
    options: LoopbackPartitionOptions,
  ) {
    this.id = id;
    this.name = options.name ?? `guest${id}`;
    this.userHandle = (0x1000 + id) as VmbusUserHandle;
    this.memory = new GuestMemory(options.memoryBytes ?? 16 * 1024 * 1024);
    this.allocator = new PageAllocator(this.memory, { seed: options.seed ?? id + 1 });
    this.hostView = new HostMemoryView(this.memory);
    this.guestView = new HostMemoryView(this.memory);
  }

  /** The guest VMBus of this partition at `vtl` (what a guest KMCL provider is built on). */
  guestBus(vtl = 0): KmclGuestBus {
    if (!Number.isInteger(vtl) || vtl < 0 || vtl > MAXIMUM_TARGET_VTL) throw new RangeError(`bad VTL ${vtl}`);
    return Object.freeze({
      partitionId: this.id,
      vtl,
      memory: this.memory,
      createClientPort: (): ClientPort => new LoopbackClientPort(this, vtl),
    });
  }

  /** Tells watchers (all, or `only`; never `except`) about an available offer, from the scheduler. */
  announce(offer: LoopbackOffer, only: LoopbackClientPort | null, except?: LoopbackClientPort): void {
    const sched = this.host.scheduler;
    sched.schedule({
      queued: false,
      run: () => {
        if (offer.state !== 'offered') return;
        const targets = only !== null ? [only] : [...this.watchers];
        for (const w of targets) {
          if (w === except || !w.wants(offer) || w.told.has(offer) || w.events === null) continue;
          w.told.add(offer);
          w.events.onOffer(offer.portOffer);
        }
      },
    });
  }

  assignMmio(params: PortOfferParams): PortMmio {
    const mb = BigInt(params.mmioMegabytes + params.mmioMegabytesOptional);
    if (mb === 0n) return Object.freeze({ address: 0n, size: 0n });
    const address = this.nextMmio;
    this.nextMmio += mb << 20n;
    return Object.freeze({ address, size: mb << 20n });
  }
}

/** The host end of the loopback bus: implements KmclHostBus over any number of partitions. */
export class LoopbackHost implements KmclHostBus {
  readonly scheduler: LoopbackScheduler;
  readonly ringAllocation: 'contiguous' | 'scattered';
  private readonly parts: LoopbackPartition[] = [];

  constructor(options: LoopbackHostOptions = {}) {
    this.scheduler = new LoopbackScheduler(options);
    this.ringAllocation = options.ringAllocation ?? 'scattered';
  }

  addPartition(options: LoopbackPartitionOptions = {}): LoopbackPartition {
    const p = new LoopbackPartition(this, this.parts.length + 1, options);
    this.parts.push(p);
    return p;
  }

  partitions(): readonly PortPartition[] {
    return this.parts.map((p) => ({ id: p.id, name: p.name, userHandle: p.userHandle }));
  }

  partition(id: number): LoopbackPartition | undefined {
    return this.parts.find((p) => p.id === id);
  }

  createServerPort(partitionId: number, vtl: number): ServerPort | null {
    const p = this.partition(partitionId);
    if (p === undefined || !Number.isInteger(vtl) || vtl < 0 || vtl > MAXIMUM_TARGET_VTL) return null;
    return new LoopbackServerPort(p, vtl);
  }

  /** Resolves once nothing is left to run (see LoopbackScheduler.idle). */
  idle(): Promise<void> {
    return this.scheduler.idle();
  }
}
