// The endpoint port: everything a KMCL channel needs from the bus below it, for either role. A
// channel never talks to the bus directly; it holds a ServerPort (host) or a ClientPort (guest),
// obtained from its provider's KmclHostBus / KmclGuestBus, and, once the channel is open, a
// PortDataPath with the two rings. Two implementations exist or are planned: the loopback port
// (loopback-port.ts, a same-thread test double of the bus) and the bus-backed port (bus-port.ts,
// written once src/bus exists). Keep this interface small.
//
// Rules every implementation follows:
// - Calls that wait for the other partition (revoke, open, close, GPADL create/delete) return
//   promises; the rest are synchronous.
// - Events are delivered from the port's own scheduler (never re-entrantly from inside a call the
//   channel made), in a deterministic order for same-thread runs.
// - An event handler that returns a promise is waited for: the bus does not finish the peer's
//   request (OPENCHANNEL_RESULT, the close of a channel, RELID_RELEASED) before it settles.
// - Nothing from the peer is trusted: the host reads rings and external data only over grants of
//   its HostMemoryView; ring geometry and PFNs have already been validated by the port.

import type { GuestMemory } from '../memory/guest-memory.js';
import type { HostMemoryView } from '../memory/host-view.js';
import type { RingReader } from '../ring/reader.js';
import type { RingWriter } from '../ring/writer.js';
import type { Guid } from '../wire/guid.js';
import type { GpaRange } from '../wire/packets.js';
import type { NTSTATUS } from './ntstatus.js';

/** A unit of deferred work the port's scheduler runs (queued at most once until it has run). */
export interface PortTask {
  /** True while queued; maintained by the scheduler. */
  queued: boolean;
  run(): void;
}

/** The data plane of an open channel, as seen from one end. */
export interface PortDataPath {
  /** This end's outgoing ring (guest: guest-to-host; host: host-to-guest). */
  readonly outgoing: RingWriter;
  /** This end's incoming ring. */
  readonly incoming: RingReader;
  /** Signals the other end (the channel's event / connection id). */
  signalPeer(): void;
  /**
   * Installs the function the port calls, from its scheduler, when the other end signals this
   * one; null detaches it. Signals that arrive while none is installed are dropped.
   */
  setSignalHandler(handler: (() => void) | null): void;
  /** Runs `task.run()` later from the port's scheduler, in FIFO order with signals. */
  schedule(task: PortTask): void;
  /**
   * The view through which this end touches external data of incoming packets (GPA-direct
   * ranges). On the host it is the host's checked view of the guest; every access needs a grant.
   */
  readonly externalData: HostMemoryView;
  /** Pages of guest RAM: a PFN at or above this is outside guest memory. */
  readonly guestPageCount: number;
}

/** MMIO space assigned to an offer (spec Q10: opaque address and size in bytes). */
export interface PortMmio {
  readonly address: bigint;
  readonly size: bigint;
}

/** What a server publishes (VmbChannelEnable on a server channel). */
export interface PortOfferParams {
  readonly interfaceType: Guid;
  readonly interfaceInstance: Guid;
  /** VMBUS_SERVER_CHANNEL_INIT_FLAG_* bits. */
  readonly serverFlags: number;
  /** Offer in pipe mode (wire NAMED_PIPE_MODE). */
  readonly pipe: boolean;
  readonly mmioMegabytes: number;
  readonly mmioMegabytesOptional: number;
  /** Offer user data, at most 120 bytes. */
  readonly userDefined: Uint8Array;
  readonly friendlyName: string;
}

/** The guest opened a server's offer; its rings are mapped (over a grant) and ready. */
export interface PortOpenRequest {
  readonly data: PortDataPath;
  readonly mmio: PortMmio;
}

export interface ServerPortEvents {
  /** The guest opens the offer. The bus answers the open with the status this resolves to. */
  onOpen(request: PortOpenRequest): Promise<NTSTATUS>;
  /**
   * The open channel was closed by the guest (close, unload or reset). The bus tears down the
   * rings and lets the guest free them only after this settles.
   */
  onClose(): Promise<void>;
}

/** A GPADL the guest created on a channel, as the server sees it. */
export interface PortGpadl {
  readonly ranges: readonly GpaRange[];
  /** Created with VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY (false when the bus cannot know). */
  readonly readOnly: boolean;
}

export interface ServerPort {
  /** The host's checked view of the target partition's memory. */
  readonly hostView: HostMemoryView;
  /** Publishes the offer to the partition and VTL the port was made for; events follow. */
  offer(params: PortOfferParams, events: ServerPortEvents): NTSTATUS;
  /**
   * Rescinds the offer. If the guest has it open, the guest is told and closes it first (no
   * onClose is delivered then). Resolves when the guest has released the channel.
   */
  revoke(): Promise<void>;
  /** A GPADL the guest created on this channel, or null. */
  gpadl(gpadlHandle: number): PortGpadl | null;
  /** Records that the server maps (true) or unmapped (false) a GPADL: a guest's teardown waits. */
  setGpadlMapped(gpadlHandle: number, mapped: boolean): void;
  /**
   * Servicing (optional; absent: save/restore is not supported over this port). Lets go of the
   * offer WITHOUT revoking it: the offer, its open channel, its rings and GPADLs (and the server's
   * GPADL mappings) stay in the bus; the guest's open or close requests wait until another port
   * reclaims the offer. This port is then empty.
   */
  release?(): void;
  /**
   * Servicing: takes over the released offer of this port's partition and VTL with this interface
   * type and instance. Returns the open channel's data path (the same rings) when the offer is open,
   * else null. STATUS_NOT_FOUND when no such released offer exists.
   */
  reclaim?(
    interfaceType: Guid,
    interfaceInstance: Guid,
    events: ServerPortEvents,
  ): { status: NTSTATUS; open: PortOpenRequest | null };
  /**
   * Servicing (VMBUS_SERVER_CHANNEL_INIT_FLAG_FORCE_NEW_CHANNEL): rescinds the released offer with
   * this type and instance (the guest closes it); a new offer with the same ids may be made at once.
   */
  abandon?(interfaceType: Guid, interfaceInstance: Guid): NTSTATUS;
}

/** An offer a client may open. */
export interface PortOffer {
  readonly interfaceType: Guid;
  readonly interfaceInstance: Guid;
  readonly serverFlags: number;
  readonly pipe: boolean;
  readonly mmio: PortMmio;
  readonly userDefined: Uint8Array;
}

/** Which offers a client wants: a type, and optionally one instance. */
export interface PortOfferMatch {
  readonly interfaceType: Guid;
  readonly interfaceInstance: Guid | null;
}

export interface ClientPortEvents {
  /** A matching offer exists (delivered for each unopened matching offer, now and later). */
  onOffer(offer: PortOffer): void;
  /** The host rescinded the offer this port has open. The bus waits for the returned promise. */
  onRescind(): Promise<void>;
}

/** Ring sizes in pages, each including its control page. */
export interface PortRingPages {
  readonly incomingPages: number;
  readonly outgoingPages: number;
}

export interface ClientPort {
  /** Starts watching for matching offers (one watch per port). */
  watch(match: PortOfferMatch, events: ClientPortEvents): void;
  /** Stops watching; no more onOffer events. */
  unwatch(): void;
  /**
   * Opens `offer`: allocates the ring pages, creates the ring GPADL (outgoing ring first, as the
   * wire requires), sends the open and waits for the host's answer.
   */
  open(offer: PortOffer, rings: PortRingPages): Promise<{ status: NTSTATUS; data?: PortDataPath }>;
  /** Closes the open channel, tears down the ring GPADL and frees the ring pages. Idempotent. */
  close(): Promise<void>;
  /** Creates a GPADL on the open channel; resolves when the host acknowledged it. */
  createGpadl(
    ranges: readonly GpaRange[],
    readOnly: boolean,
  ): Promise<{ status: NTSTATUS; gpadlHandle?: number }>;
  /** Tears a GPADL down; resolves when the host released it (after the server unmapped it). */
  deleteGpadl(gpadlHandle: number): Promise<void>;
}

/** A guest partition known to the host. */
export interface PortPartition {
  readonly id: number;
  readonly name: string;
  /** The user-mode VMBus handle the VM worker process holds for this partition. */
  readonly userHandle: number;
}

/** What the host's KMCL provider needs from the host's VMBus. */
export interface KmclHostBus {
  partitions(): readonly PortPartition[];
  /** A port offering into `partitionId` at `vtl`, or null if there is no such partition/VTL. */
  createServerPort(partitionId: number, vtl: number): ServerPort | null;
}

/** What a guest's KMCL provider needs from the guest's VMBus. */
export interface KmclGuestBus {
  readonly partitionId: number;
  readonly vtl: number;
  /** This partition's RAM (for buffers given to CreateGpadlFromBuffer, PFN checks). */
  readonly memory: GuestMemory;
  createClientPort(): ClientPort;
}
