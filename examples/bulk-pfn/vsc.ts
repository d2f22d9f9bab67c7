// The bulk VSC: a guest-side driver, written only against the KMCL client table, that moves blocks
// of data through pages of its own RAM instead of through the ring. For each transfer it takes
// pages from the guest's page allocator (scattered, as a real guest's memory is), fills them (for
// a write), and sends a 16-byte request whose external data is that PFN array
// (VmbPacketSendWithExternalPfns, which requires VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION).
// When the host completes the transaction, the pages are the guest's again: for a read it copies
// the data out and checks it against the host's checksum; then it frees the pages.

import {
  KMCL_CLIENT_INTERFACE_TYPE,
  type KMCL_CLIENT_INTERFACE_V1,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  type KmclProvider,
  NT_SUCCESS,
  type NTSTATUS,
  ntStatusName,
  queryInterface,
  STATUS_INSUFFICIENT_RESOURCES,
  STATUS_INVALID_PARAMETER,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
  type VMBPACKET,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { pfnArrayRead, pfnArrayWrite } from '../../src/memory/mdl.js';
import { PAGE_SIZE } from '../../src/wire/constants.js';
import {
  BULK_INTERFACE_TYPE,
  BULK_MAX_TRANSFER,
  BULK_MESSAGE_SIZE,
  BULK_OP_READ,
  BULK_OP_WRITE,
  fnv1a,
  putMessage,
  readMessage,
} from './protocol.js';

/** What the guest driver needs from its own kernel: its RAM and a page allocator. */
export interface GuestPages {
  readonly guestMemory: GuestMemory;
  allocatePages(count: number, mode?: 'contiguous' | 'scattered'): Uint32Array;
  freePages(pfns: ArrayLike<number>): void;
}

export interface BulkVscOptions {
  onEvent?: (line: string) => void;
}

/** The outcome of one transfer. */
export interface BulkResult {
  /** The transaction's status: the host's status, or why the transaction did not complete. */
  status: NTSTATUS;
  /** Bytes the host says it moved. */
  byteCount: number;
  /** The host's checksum of the bytes it moved. */
  hostChecksum: number;
  /** The guest's checksum of the bytes in its pages (what it sent, or what it received). */
  guestChecksum: number;
  /** The data read (BULK_OP_READ), else empty. */
  data: Uint8Array;
  /** The PFNs that carried the data (scattered guest pages). */
  pfns: readonly number[];
}

interface Transfer {
  operation: number;
  byteCount: number;
  pfns: Uint32Array;
  guestChecksum: number;
  resolve: (r: BulkResult) => void;
}

const EMPTY = new Uint8Array(0);

function check(status: NTSTATUS, what: string): void {
  if (!NT_SUCCESS(status)) throw new Error(`bulk VSC: ${what} failed with ${ntStatusName(status)}`);
}

export class BulkVsc {
  /** Resolves when the channel is open and packets flow. */
  readonly ready: Promise<void>;
  private readonly C: KMCL_CLIENT_INTERFACE_V1;
  private readonly channel: VMBCHANNEL;
  private readonly pages: GuestPages;
  private readonly onEvent: (line: string) => void;
  private readonly request = new Uint8Array(BULK_MESSAGE_SIZE);
  private resolveReady!: () => void;

  private constructor(
    C: KMCL_CLIENT_INTERFACE_V1,
    channel: VMBCHANNEL,
    pages: GuestPages,
    options: BulkVscOptions,
  ) {
    this.C = C;
    this.channel = channel;
    this.pages = pages;
    this.onEvent = options.onEvent ?? (() => {});
    this.ready = new Promise<void>((resolve) => {
      this.resolveReady = resolve;
    });
  }

  static start(provider: KmclProvider, pages: GuestPages, options: BulkVscOptions = {}): BulkVsc {
    const q = queryInterface(
      provider,
      KMCL_CLIENT_INTERFACE_TYPE,
      KMCL_CLIENT_INTERFACE_V1_SIZE,
      KMCL_CLIENT_INTERFACE_VERSION_V1,
    );
    check(q.status, 'the KMCL_CLIENT_INTERFACE_TYPE query');
    const C = q.Interface!;
    const a = C.VmbChannelAllocate(null, false);
    if (!NT_SUCCESS(a.status)) {
      C.InterfaceDereference(C.Context);
      check(a.status, 'VmbChannelAllocate');
    }
    const vsc = new BulkVsc(C, a.Channel!, pages, options);
    try {
      vsc.configure();
      check(C.VmbChannelEnable(vsc.channel), 'VmbChannelEnable');
    } catch (e) {
      C.VmbChannelCleanup(vsc.channel);
      C.InterfaceDereference(C.Context);
      throw e;
    }
    return vsc;
  }

  private configure(): void {
    const { C, channel } = this;
    check(
      C.VmbClientChannelInitSetTargetPnp(channel, BULK_INTERFACE_TYPE, null, null),
      'VmbClientChannelInitSetTargetPnp',
    );
    check(C.VmbChannelInitSetFriendlyName(channel, 'BulkVsc'), 'VmbChannelInitSetFriendlyName');
    check(
      C.VmbChannelInitSetMaximumPacketSize(channel, BULK_MESSAGE_SIZE),
      'VmbChannelInitSetMaximumPacketSize',
    );
    // Up to 1 MiB of external data per packet, described by one PFN array (chain length 1).
    check(
      C.VmbChannelInitSetMaximumExternalData(channel, BULK_MAX_TRANSFER, 1),
      'VmbChannelInitSetMaximumExternalData',
    );
    check(
      C.VmbChannelInitSetProcessPacketCallbacks(
        channel,
        (_ch, packet) => C.VmbChannelPacketComplete(packet, null, 0),
        null,
      ),
      'VmbChannelInitSetProcessPacketCallbacks',
    );
    const callbacks = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
    callbacks.EvtChannelOpened = () => {
      this.onEvent('guest EvtChannelOpened');
      return STATUS_SUCCESS;
    };
    callbacks.EvtChannelPostStarted = () => {
      this.onEvent('guest EvtChannelPostStarted');
      this.resolveReady();
    };
    callbacks.EvtChannelClosed = () => this.onEvent('guest EvtChannelClosed');
    check(
      C.VmbChannelInitSetStateChangeCallbacks(channel, callbacks),
      'VmbChannelInitSetStateChangeCallbacks',
    );
  }

  /** Stores `data` (1 byte .. 1 MiB) on the host as block `blockId`. */
  write(blockId: number, data: Uint8Array): Promise<BulkResult> {
    this.checkSize(data.length);
    const pfns = this.pages.allocatePages(Math.ceil(data.length / PAGE_SIZE), 'scattered');
    pfnArrayWrite(this.pages.guestMemory, pfns, 0, data);
    return this.transfer(BULK_OP_WRITE, blockId, data.length, pfns, fnv1a(data));
  }

  /** Reads the first `byteCount` bytes of block `blockId` back from the host. */
  read(blockId: number, byteCount: number): Promise<BulkResult> {
    this.checkSize(byteCount);
    const pages = Math.ceil(byteCount / PAGE_SIZE);
    const pfns = this.pages.allocatePages(pages, 'scattered');
    // Start from zeroes so that stale bytes cannot pass for the host's data.
    pfnArrayWrite(this.pages.guestMemory, pfns, 0, new Uint8Array(pages * PAGE_SIZE));
    return this.transfer(BULK_OP_READ, blockId, byteCount, pfns, 0);
  }

  private checkSize(byteCount: number): void {
    if (!Number.isInteger(byteCount) || byteCount <= 0 || byteCount > BULK_MAX_TRANSFER) {
      throw new RangeError(`bulk transfer of ${byteCount} bytes: must be 1 .. ${BULK_MAX_TRANSFER}`);
    }
  }

  private transfer(
    operation: number,
    blockId: number,
    byteCount: number,
    pfns: Uint32Array,
    guestChecksum: number,
  ): Promise<BulkResult> {
    const { C } = this;
    return new Promise<BulkResult>((resolve) => {
      const t: Transfer = { operation, byteCount, pfns, guestChecksum, resolve };
      const packet = C.VmbPacketAllocate(this.channel);
      if (packet === null) {
        this.finish(t, STATUS_INSUFFICIENT_RESOURCES, null, 0);
        return;
      }
      C.VmbPacketSetPointer(packet, t);
      C.VmbPacketSetCompletionRoutine(packet, this.completion);
      putMessage(this.request, operation, blockId, byteCount);
      const status = C.VmbPacketSendWithExternalPfns(
        packet,
        this.request,
        BULK_MESSAGE_SIZE,
        pfns,
        pfns.length,
        VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
      );
      if (!NT_SUCCESS(status)) {
        C.VmbPacketFree(packet);
        this.finish(t, status, null, 0);
      }
    });
  }

  /** EvtVmbPacketCompletionRoutine: the host is done with the pages. */
  private readonly completion = (
    Packet: VMBPACKET,
    Status: NTSTATUS,
    Buffer: Uint8Array | null,
    BufferLength: number,
  ): void => {
    const t = this.C.VmbPacketGetPointer(Packet) as Transfer;
    this.C.VmbPacketFree(Packet);
    this.finish(t, Status, Buffer, BufferLength);
  };

  private finish(t: Transfer, status: NTSTATUS, buffer: Uint8Array | null, length: number): void {
    let result: BulkResult = {
      status,
      byteCount: 0,
      hostChecksum: 0,
      guestChecksum: t.guestChecksum,
      data: EMPTY,
      pfns: Array.from(t.pfns),
    };
    if (NT_SUCCESS(status)) {
      const reply = readMessage(buffer, length);
      // The host's answer is checked like any input from the other partition.
      if (reply === null || reply.b > t.byteCount) {
        result = { ...result, status: STATUS_INVALID_PARAMETER };
      } else {
        result = { ...result, status: reply.a | 0, byteCount: reply.b, hostChecksum: reply.c };
        if (t.operation === BULK_OP_READ && NT_SUCCESS(result.status)) {
          const data = new Uint8Array(reply.b);
          pfnArrayRead(this.pages.guestMemory, t.pfns, 0, data);
          result = { ...result, data, guestChecksum: fnv1a(data) };
        }
      }
    }
    this.pages.freePages(t.pfns);
    t.resolve(result);
  }

  async stop(): Promise<void> {
    await this.C.VmbChannelDisable(this.channel);
    this.C.VmbChannelCleanup(this.channel);
    this.C.InterfaceDereference(this.C.Context);
  }
}
