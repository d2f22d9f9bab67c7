// The echo VSP: a host-side driver written only against the KMCL server table, the way a Windows
// VSP is. It queries KMCL_SERVER_INTERFACE_V1, allocates a server channel, configures it with the
// Init setters (target VM, offer GUIDs, friendly name, packet size, callbacks), enables and starts
// it, and then answers each guest transaction from EvtVmbChannelProcessPacket by completing it
// with VmbChannelPacketComplete and a completion payload. It trusts nothing in a guest message:
// every length is checked against the packet, and a bad message is completed with an error status
// instead of being processed.

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
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_PARAMETER,
  STATUS_NOT_SUPPORTED,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA,
  type VmbusUserHandle,
} from '../../src/kmcl/index.js';
import {
  ECHO_HEADER_SIZE,
  ECHO_INTERFACE_INSTANCE,
  ECHO_INTERFACE_TYPE,
  ECHO_MAX_DATA,
  ECHO_MAX_PACKET,
  ECHO_MSG_ECHO,
  ECHO_MSG_VERSION,
  ECHO_PROTOCOL_VERSION,
  putHeader,
  readHeader,
} from './protocol.js';

export interface EchoVspOptions {
  /** Told about each state change (for printing). */
  onEvent?: (line: string) => void;
}

export interface EchoVspStats {
  /** Times a guest opened the channel. */
  opened: number;
  /** Echo requests answered with success. */
  echoed: number;
  /** Payload bytes echoed. */
  bytes: number;
  /** Messages refused with an error status. */
  rejected: number;
}

/** Throws (fails the driver's start) unless `status` is a success code. */
function check(status: NTSTATUS, what: string): void {
  if (!NT_SUCCESS(status)) throw new Error(`echo VSP: ${what} failed with ${ntStatusName(status)}`);
}

export class EchoVsp {
  readonly stats: EchoVspStats = { opened: 0, echoed: 0, bytes: 0, rejected: 0 };
  private readonly S: KMCL_SERVER_INTERFACE_V1;
  private readonly channel: VMBCHANNEL;
  private readonly onEvent: (line: string) => void;
  /** The completion payload, reused for every answer (VmbChannelPacketComplete copies it). */
  private readonly reply = new Uint8Array(ECHO_MAX_PACKET);
  private readonly replyView = new DataView(this.reply.buffer);
  /** Whether the guest has negotiated a version on the current open. */
  private negotiated = false;

  private constructor(S: KMCL_SERVER_INTERFACE_V1, channel: VMBCHANNEL, options: EchoVspOptions) {
    this.S = S;
    this.channel = channel;
    this.onEvent = options.onEvent ?? (() => {});
  }

  /**
   * What a VSP does in its EvtDriverDeviceAdd: query the server table, then allocate, configure,
   * enable and start the channel that offers the echo service to the VM behind `vmUserHandle`.
   */
  static start(provider: KmclProvider, vmUserHandle: VmbusUserHandle, options: EchoVspOptions = {}): EchoVsp {
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
    const channel = a.Channel!;
    const vsp = new EchoVsp(S, channel, options);
    try {
      vsp.configure(vmUserHandle);
      check(S.VmbChannelEnable(channel), 'VmbChannelEnable');
    } catch (e) {
      S.VmbChannelCleanup(channel);
      S.InterfaceDereference(S.Context);
      throw e;
    }
    // A server starts explicitly; the offer is up from Enable, packets flow once a guest opens it.
    S.VmbChannelStart(channel);
    return vsp;
  }

  /** The Init* calls, all while the channel is still Disabled. */
  private configure(vmUserHandle: VmbusUserHandle): void {
    const { S, channel } = this;
    const k = S.VmbConvertVmbusHandleToKernelHandle(vmUserHandle);
    check(k.status, 'VmbConvertVmbusHandleToKernelHandle');
    check(
      S.VmbServerChannelInitSetVmbusHandle(channel, k.KernelHandle!),
      'VmbServerChannelInitSetVmbusHandle',
    );
    check(
      S.VmbServerChannelInitSetTargetInterfaceId(channel, ECHO_INTERFACE_TYPE, ECHO_INTERFACE_INSTANCE),
      'VmbServerChannelInitSetTargetInterfaceId',
    );
    check(S.VmbChannelInitSetFriendlyName(channel, 'EchoVsp'), 'VmbChannelInitSetFriendlyName');
    check(
      S.VmbChannelInitSetMaximumPacketSize(channel, ECHO_MAX_PACKET),
      'VmbChannelInitSetMaximumPacketSize',
    );
    check(
      S.VmbChannelInitSetProcessPacketCallbacks(channel, this.processPacket, null),
      'VmbChannelInitSetProcessPacketCallbacks',
    );
    const callbacks = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
    callbacks.EvtChannelOpened = (ch) => {
      this.negotiated = false;
      this.stats.opened++;
      this.event('EvtChannelOpened', ch);
      return STATUS_SUCCESS;
    };
    callbacks.EvtChannelStarted = (ch) => this.event('EvtChannelStarted', ch);
    callbacks.EvtChannelPostStarted = (ch) => this.event('EvtChannelPostStarted', ch);
    // Every packet is completed inside processPacket, so nothing is outstanding at Suspend.
    callbacks.EvtChannelSuspend = (ch) => this.event('EvtChannelSuspend', ch);
    callbacks.EvtChannelClosed = (ch) => this.event('EvtChannelClosed', ch);
    check(
      S.VmbChannelInitSetStateChangeCallbacks(channel, callbacks),
      'VmbChannelInitSetStateChangeCallbacks',
    );
    // The per-channel context slot holds the driver object, as a C driver stores its extension.
    S.VmbChannelSetPointer(channel, this);
  }

  private event(name: string, ch: VMBCHANNEL): void {
    const self = this.S.VmbChannelGetPointer(ch) as EchoVsp;
    self.onEvent(`host  ${name}`);
  }

  /** EvtVmbChannelProcessPacket: may run in a non-blocking context, so it never waits. */
  private readonly processPacket = (
    _Channel: VMBCHANNEL,
    Packet: VMBPACKETCOMPLETION,
    Buffer: Uint8Array,
    BufferLength: number,
    Flags: number,
  ): void => {
    const header = readHeader(Buffer, BufferLength);
    // This protocol carries no external data, and a header must describe bytes that are there.
    if (
      header === null ||
      (Flags & VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA) !== 0 ||
      header.dataLength > BufferLength - ECHO_HEADER_SIZE
    ) {
      this.refuse(Packet, STATUS_INVALID_PARAMETER);
      return;
    }
    switch (header.first) {
      case ECHO_MSG_VERSION: {
        if (header.dataLength !== 4) {
          this.refuse(Packet, STATUS_INVALID_PARAMETER);
          return;
        }
        const asked = new DataView(Buffer.buffer, Buffer.byteOffset, BufferLength).getUint32(8, true);
        // Same major version: accepted, answered with ours.
        const ok = asked >>> 16 === ECHO_PROTOCOL_VERSION >>> 16;
        this.negotiated = ok;
        this.replyView.setUint32(ECHO_HEADER_SIZE, ECHO_PROTOCOL_VERSION, true);
        this.answer(Packet, ok ? STATUS_SUCCESS : STATUS_NOT_SUPPORTED, 4);
        if (!ok) this.stats.rejected++;
        return;
      }
      case ECHO_MSG_ECHO: {
        if (!this.negotiated) {
          this.refuse(Packet, STATUS_INVALID_DEVICE_STATE);
          return;
        }
        const n = header.dataLength;
        if (n > ECHO_MAX_DATA) {
          this.refuse(Packet, STATUS_INVALID_PARAMETER);
          return;
        }
        this.reply.set(Buffer.subarray(ECHO_HEADER_SIZE, ECHO_HEADER_SIZE + n), ECHO_HEADER_SIZE);
        this.answer(Packet, STATUS_SUCCESS, n);
        this.stats.echoed++;
        this.stats.bytes += n;
        return;
      }
      default:
        this.refuse(Packet, STATUS_INVALID_PARAMETER);
    }
  };

  /** Completes `packet` with {status, dataLength} and the data already in reply[8, 8 + n). */
  private answer(packet: VMBPACKETCOMPLETION, status: NTSTATUS, dataLength: number): void {
    putHeader(this.reply, status, dataLength);
    this.S.VmbChannelPacketComplete(packet, this.reply, ECHO_HEADER_SIZE + dataLength);
  }

  private refuse(packet: VMBPACKETCOMPLETION, status: NTSTATUS): void {
    this.stats.rejected++;
    this.answer(packet, status, 0);
  }

  /**
   * What the VSP does when its device goes away: revoke the offer (Disable waits until the guest
   * has closed the channel and the callbacks have run), free the channel, release the table.
   */
  async stop(): Promise<void> {
    await this.S.VmbChannelDisable(this.channel);
    this.S.VmbChannelCleanup(this.channel);
    this.S.InterfaceDereference(this.S.Context);
  }
}
