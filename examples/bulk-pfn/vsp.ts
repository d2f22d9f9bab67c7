// The bulk VSP: a host-side driver, written only against the KMCL server table, that moves data
// to and from guest pages named by a packet's external data. For each request it calls
// VmbChannelPacketGetExternalData (read-only for a write request, writable for a read request),
// copies through the returned MDL while it holds the packet, and completes the packet with a
// status and a checksum of the bytes it moved. Completing ends its access to those pages. Nothing
// in a request is trusted: sizes are bounded, checked against the MDL, and a bad request is
// completed with an error status.

import {
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  type KmclProvider,
  NT_SUCCESS,
  type NTSTATUS,
  ntStatusName,
  queryInterface,
  STATUS_INSUFFICIENT_RESOURCES,
  STATUS_INVALID_PARAMETER,
  STATUS_NOT_FOUND,
  STATUS_PENDING,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY,
  VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA,
  type VmbusUserHandle,
} from '../../src/kmcl/index.js';
import {
  BULK_HOST_STORE_LIMIT,
  BULK_INTERFACE_INSTANCE,
  BULK_INTERFACE_TYPE,
  BULK_MAX_TRANSFER,
  BULK_MESSAGE_SIZE,
  BULK_OP_READ,
  BULK_OP_WRITE,
  fnv1a,
  putMessage,
  readMessage,
} from './protocol.js';

export interface BulkVspOptions {
  onEvent?: (line: string) => void;
}

export interface BulkVspStats {
  writes: number;
  reads: number;
  /** Bytes copied out of guest pages (writes) and into them (reads). */
  bytesFromGuest: number;
  bytesToGuest: number;
  /** Requests completed with an error status. */
  refused: number;
}

function check(status: NTSTATUS, what: string): void {
  if (!NT_SUCCESS(status)) throw new Error(`bulk VSP: ${what} failed with ${ntStatusName(status)}`);
}

export class BulkVsp {
  readonly stats: BulkVspStats = { writes: 0, reads: 0, bytesFromGuest: 0, bytesToGuest: 0, refused: 0 };
  private readonly S: KMCL_SERVER_INTERFACE_V1;
  private readonly channel: VMBCHANNEL;
  private readonly onEvent: (line: string) => void;
  /** The blocks the guest stored. */
  private readonly blocks = new Map<number, Uint8Array>();
  private storedBytes = 0;
  private readonly reply = new Uint8Array(BULK_MESSAGE_SIZE);

  private constructor(S: KMCL_SERVER_INTERFACE_V1, channel: VMBCHANNEL, options: BulkVspOptions) {
    this.S = S;
    this.channel = channel;
    this.onEvent = options.onEvent ?? (() => {});
  }

  static start(provider: KmclProvider, vmUserHandle: VmbusUserHandle, options: BulkVspOptions = {}): BulkVsp {
    const q = queryInterface<KMCL_SERVER_INTERFACE_V1>(
      provider,
      KMCL_SERVER_INTERFACE_TYPE,
      KMCL_SERVER_INTERFACE_V1_SIZE,
      KMCL_SERVER_INTERFACE_VERSION_V1,
    );
    check(q.status, 'the KMCL_SERVER_INTERFACE_TYPE query');
    const S = q.Interface!;
    const a = S.VmbChannelAllocate(null, true);
    if (!NT_SUCCESS(a.status)) {
      S.InterfaceDereference(S.Context);
      check(a.status, 'VmbChannelAllocate');
    }
    const vsp = new BulkVsp(S, a.Channel!, options);
    try {
      vsp.configure(vmUserHandle);
      check(S.VmbChannelEnable(vsp.channel), 'VmbChannelEnable');
    } catch (e) {
      S.VmbChannelCleanup(vsp.channel);
      S.InterfaceDereference(S.Context);
      throw e;
    }
    S.VmbChannelStart(vsp.channel);
    return vsp;
  }

  private configure(vmUserHandle: VmbusUserHandle): void {
    const { S, channel } = this;
    const k = S.VmbConvertVmbusHandleToKernelHandle(vmUserHandle);
    check(k.status, 'VmbConvertVmbusHandleToKernelHandle');
    check(
      S.VmbServerChannelInitSetVmbusHandle(channel, k.KernelHandle!),
      'VmbServerChannelInitSetVmbusHandle',
    );
    check(
      S.VmbServerChannelInitSetTargetInterfaceId(channel, BULK_INTERFACE_TYPE, BULK_INTERFACE_INSTANCE),
      'VmbServerChannelInitSetTargetInterfaceId',
    );
    check(S.VmbChannelInitSetFriendlyName(channel, 'BulkVsp'), 'VmbChannelInitSetFriendlyName');
    check(
      S.VmbChannelInitSetMaximumPacketSize(channel, BULK_MESSAGE_SIZE),
      'VmbChannelInitSetMaximumPacketSize',
    );
    check(
      S.VmbChannelInitSetMaximumExternalData(channel, BULK_MAX_TRANSFER, 1),
      'VmbChannelInitSetMaximumExternalData',
    );
    check(
      S.VmbChannelInitSetProcessPacketCallbacks(channel, this.processPacket, null),
      'VmbChannelInitSetProcessPacketCallbacks',
    );
    const callbacks = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
    callbacks.EvtChannelOpened = () => {
      this.onEvent('host  EvtChannelOpened');
      return STATUS_SUCCESS;
    };
    callbacks.EvtChannelClosed = () => this.onEvent('host  EvtChannelClosed');
    check(
      S.VmbChannelInitSetStateChangeCallbacks(channel, callbacks),
      'VmbChannelInitSetStateChangeCallbacks',
    );
  }

  private readonly processPacket = (
    _Channel: VMBCHANNEL,
    Packet: VMBPACKETCOMPLETION,
    Buffer: Uint8Array,
    BufferLength: number,
    Flags: number,
  ): void => {
    const request = readMessage(Buffer, BufferLength);
    if (request === null || (Flags & VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA) === 0) {
      this.refuse(Packet, STATUS_INVALID_PARAMETER);
      return;
    }
    const { a: operation, b: blockId, c: byteCount } = request;
    if (byteCount === 0 || byteCount > BULK_MAX_TRANSFER) {
      this.refuse(Packet, STATUS_INVALID_PARAMETER);
      return;
    }
    if (operation === BULK_OP_WRITE) this.write(Packet, blockId, byteCount);
    else if (operation === BULK_OP_READ) this.read(Packet, blockId, byteCount);
    else this.refuse(Packet, STATUS_INVALID_PARAMETER);
  };

  /** BULK_OP_WRITE: copy the guest's bytes out of its pages (a read-only mapping is enough). */
  private write(Packet: VMBPACKETCOMPLETION, blockId: number, byteCount: number): void {
    const previous = this.blocks.get(blockId)?.length ?? 0;
    if (this.storedBytes - previous + byteCount > BULK_HOST_STORE_LIMIT) {
      this.refuse(Packet, STATUS_INSUFFICIENT_RESOURCES);
      return;
    }
    const r = this.S.VmbChannelPacketGetExternalData(
      Packet,
      VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY,
    );
    // STATUS_PENDING: the pages are being made resident and this packet is delivered again; return.
    if (r.status === STATUS_PENDING) return;
    if (!NT_SUCCESS(r.status)) {
      this.refuse(Packet, r.status);
      return;
    }
    const mdl = r.Mdl!;
    if (mdl.byteCount < byteCount) {
      this.refuse(Packet, STATUS_INVALID_PARAMETER);
      return;
    }
    const data = new Uint8Array(byteCount);
    mdl.read(0, data);
    this.blocks.set(blockId, data);
    this.storedBytes += byteCount - previous;
    this.stats.writes++;
    this.stats.bytesFromGuest += byteCount;
    this.answer(Packet, STATUS_SUCCESS, byteCount, fnv1a(data));
  }

  /** BULK_OP_READ: copy a stored block into the guest's pages (a writable mapping). */
  private read(Packet: VMBPACKETCOMPLETION, blockId: number, byteCount: number): void {
    const block = this.blocks.get(blockId);
    if (block === undefined) {
      this.refuse(Packet, STATUS_NOT_FOUND);
      return;
    }
    if (block.length < byteCount) {
      this.refuse(Packet, STATUS_INVALID_PARAMETER);
      return;
    }
    const r = this.S.VmbChannelPacketGetExternalData(Packet, 0);
    if (r.status === STATUS_PENDING) return;
    if (!NT_SUCCESS(r.status)) {
      this.refuse(Packet, r.status);
      return;
    }
    const mdl = r.Mdl!;
    if (mdl.byteCount < byteCount) {
      this.refuse(Packet, STATUS_INVALID_PARAMETER);
      return;
    }
    const data = block.subarray(0, byteCount);
    mdl.write(0, data);
    this.stats.reads++;
    this.stats.bytesToGuest += byteCount;
    this.answer(Packet, STATUS_SUCCESS, byteCount, fnv1a(data));
  }

  private answer(Packet: VMBPACKETCOMPLETION, status: NTSTATUS, byteCount: number, checksum: number): void {
    putMessage(this.reply, status, byteCount, checksum);
    // Completing releases the external data: the MDL stops working from here on.
    this.S.VmbChannelPacketComplete(Packet, this.reply, BULK_MESSAGE_SIZE);
  }

  private refuse(Packet: VMBPACKETCOMPLETION, status: NTSTATUS): void {
    this.stats.refused++;
    this.answer(Packet, status, 0, 0);
  }

  async stop(): Promise<void> {
    await this.S.VmbChannelDisable(this.channel);
    this.S.VmbChannelCleanup(this.channel);
    this.S.InterfaceDereference(this.S.Context);
  }
}
