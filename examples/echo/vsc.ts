// The echo VSC: a guest-side driver written only against the KMCL client table, the way a Windows
// VSC is. It queries KMCL_CLIENT_INTERFACE_V1, allocates a client channel that targets the echo
// offer by GUID, enables it (the open happens when the offer is there), negotiates the protocol
// version with a synchronous request from EvtChannelPostStarted, and then sends each echo as a
// transaction: VmbPacketAllocate, a per-packet context pointer and completion routine, and
// VmbPacketSend with VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION. The completion routine reads
// the host's completion payload, which it checks like any input from the other partition.

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
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import {
  ECHO_HEADER_SIZE,
  ECHO_INTERFACE_TYPE,
  ECHO_MAX_DATA,
  ECHO_MAX_PACKET,
  ECHO_MSG_ECHO,
  ECHO_MSG_VERSION,
  ECHO_PROTOCOL_VERSION,
  putHeader,
  readHeader,
} from './protocol.js';

export interface EchoVscOptions {
  /** Told about each state change (for printing). */
  onEvent?: (line: string) => void;
}

/** What one echo (or raw message) came back with. */
export interface EchoReply {
  /**
   * The transaction's status: the host's status from the completion header when the transaction
   * completed (STATUS_SUCCESS for an echo), else why it did not (STATUS_DEVICE_REMOVED when the
   * channel went away, STATUS_INVALID_PARAMETER for a completion that does not parse).
   */
  status: NTSTATUS;
  /** The bytes the host sent back. */
  data: Uint8Array;
}

type Waiter = (reply: EchoReply) => void;

const EMPTY = new Uint8Array(0);
/** Relative timeout of the version request: 5 s in 100 ns units, negative = relative (KeWait). */
const VERSION_TIMEOUT = -50_000_000n;

function check(status: NTSTATUS, what: string): void {
  if (!NT_SUCCESS(status)) throw new Error(`echo VSC: ${what} failed with ${ntStatusName(status)}`);
}

export class EchoVsc {
  /**
   * Resolves to the protocol version the host accepted, after the first open's negotiation;
   * rejects if the host refuses the version.
   */
  readonly ready: Promise<number>;
  private readonly C: KMCL_CLIENT_INTERFACE_V1;
  private readonly channel: VMBCHANNEL;
  private readonly onEvent: (line: string) => void;
  /** Staging for outgoing messages (VmbPacketSend copies the bytes before it returns). */
  private readonly request = new Uint8Array(ECHO_MAX_PACKET);
  private resolveReady!: (version: number) => void;
  private rejectReady!: (e: Error) => void;

  private constructor(C: KMCL_CLIENT_INTERFACE_V1, channel: VMBCHANNEL, options: EchoVscOptions) {
    this.C = C;
    this.channel = channel;
    this.onEvent = options.onEvent ?? (() => {});
    this.ready = new Promise<number>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    // Nobody may be waiting yet; a refusal is still reported to whoever awaits `ready` later.
    this.ready.catch(() => {});
  }

  /** What a VSC does in its EvtDriverDeviceAdd: query the client table, allocate, configure, enable. */
  static start(provider: KmclProvider, options: EchoVscOptions = {}): EchoVsc {
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
    const vsc = new EchoVsc(C, a.Channel!, options);
    try {
      vsc.configure();
      // Returns at once: the channel opens when the host's offer is (or becomes) available.
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
    // Any instance of the echo type; a NIC driver would name its instance (two NICs share a type).
    check(
      C.VmbClientChannelInitSetTargetPnp(channel, ECHO_INTERFACE_TYPE, null, null),
      'VmbClientChannelInitSetTargetPnp',
    );
    check(C.VmbChannelInitSetFriendlyName(channel, 'EchoVsc'), 'VmbChannelInitSetFriendlyName');
    check(
      C.VmbChannelInitSetMaximumPacketSize(channel, ECHO_MAX_PACKET),
      'VmbChannelInitSetMaximumPacketSize',
    );
    // The guest donates both rings: 4 pages each (a control page and 12 KiB of data).
    check(
      C.VmbClientChannelInitSetRingBufferPageCount(channel, 4, 4),
      'VmbClientChannelInitSetRingBufferPageCount',
    );
    check(
      C.VmbChannelInitSetProcessPacketCallbacks(channel, this.processPacket, null),
      'VmbChannelInitSetProcessPacketCallbacks',
    );
    const callbacks = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
    callbacks.EvtChannelOpened = () => {
      this.onEvent('guest EvtChannelOpened');
      return STATUS_SUCCESS;
    };
    callbacks.EvtChannelStarted = () => this.onEvent('guest EvtChannelStarted');
    // Packets flow by now: the place for synchronous protocol negotiation.
    callbacks.EvtChannelPostStarted = (ch) => this.negotiate(ch);
    callbacks.EvtChannelSuspend = () => this.onEvent('guest EvtChannelSuspend');
    callbacks.EvtChannelClosed = () => this.onEvent('guest EvtChannelClosed');
    check(
      C.VmbChannelInitSetStateChangeCallbacks(channel, callbacks),
      'VmbChannelInitSetStateChangeCallbacks',
    );
  }

  /** EvtChannelPostStarted: a blocking context, so it may wait for the host's answer. */
  private async negotiate(ch: VMBCHANNEL): Promise<void> {
    this.onEvent('guest EvtChannelPostStarted: sending ECHO_MSG_VERSION');
    const message = new Uint8Array(ECHO_HEADER_SIZE + 4);
    putHeader(message, ECHO_MSG_VERSION, 4);
    new DataView(message.buffer).setUint32(ECHO_HEADER_SIZE, ECHO_PROTOCOL_VERSION, true);
    // The completion buffer's capacity must be a multiple of 8.
    const answer = new Uint8Array(16);
    const r = await this.C.VmbChannelSendSynchronousRequest(
      ch,
      message,
      message.length,
      null,
      VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
      answer,
      answer.length,
      VERSION_TIMEOUT,
    );
    const header = readHeader(answer, r.CompletionBufferSize);
    if (!NT_SUCCESS(r.status) || header === null || header.dataLength !== 4) {
      this.rejectReady(new Error(`echo VSC: version request failed (${ntStatusName(r.status)})`));
      return;
    }
    const version = new DataView(answer.buffer).getUint32(ECHO_HEADER_SIZE, true);
    const status = header.first | 0;
    if (!NT_SUCCESS(status)) {
      this.rejectReady(new Error(`echo VSC: the host refused the version (${ntStatusName(status)})`));
      return;
    }
    this.onEvent(`guest version 0x${version.toString(16).padStart(8, '0')} accepted`);
    this.resolveReady(version);
  }

  /** The host sends nothing unsolicited in this protocol: complete anything that arrives, unread. */
  private readonly processPacket = (_Channel: VMBCHANNEL, Packet: VMBPACKETCOMPLETION): void => {
    this.C.VmbChannelPacketComplete(Packet, null, 0);
  };

  /** Sends `data` as one ECHO_MSG_ECHO transaction; resolves when the host has completed it. */
  echo(data: Uint8Array): Promise<EchoReply> {
    if (data.length > ECHO_MAX_DATA) throw new RangeError(`echo: at most ${ECHO_MAX_DATA} bytes`);
    putHeader(this.request, ECHO_MSG_ECHO, data.length);
    this.request.set(data, ECHO_HEADER_SIZE);
    return this.transact(this.request, ECHO_HEADER_SIZE + data.length);
  }

  /**
   * Sends `message[0, length)` as it is, header included: a way to show what the host does with a
   * message that breaks the protocol.
   */
  sendRaw(message: Uint8Array, length = message.length): Promise<EchoReply> {
    return this.transact(message, length);
  }

  private transact(message: Uint8Array, length: number): Promise<EchoReply> {
    const { C } = this;
    const packet = C.VmbPacketAllocate(this.channel);
    if (packet === null) return Promise.resolve({ status: STATUS_INSUFFICIENT_RESOURCES, data: EMPTY });
    return new Promise<EchoReply>((resolve) => {
      // Per-packet context: who waits for this transaction. A custom completion routine also
      // makes the driver responsible for freeing the packet object.
      C.VmbPacketSetPointer(packet, resolve);
      C.VmbPacketSetCompletionRoutine(packet, this.completion);
      const status = C.VmbPacketSend(
        packet,
        message,
        length,
        null,
        VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
      );
      if (!NT_SUCCESS(status)) {
        C.VmbPacketFree(packet);
        resolve({ status, data: EMPTY });
      }
    });
  }

  /** EvtVmbPacketCompletionRoutine: either context, so it only copies and hands the result on. */
  private readonly completion = (
    Packet: VMBPACKET,
    Status: NTSTATUS,
    Buffer: Uint8Array | null,
    BufferLength: number,
  ): void => {
    const { C } = this;
    const resolve = C.VmbPacketGetPointer(Packet) as Waiter;
    let reply: EchoReply;
    if (!NT_SUCCESS(Status)) {
      reply = { status: Status, data: EMPTY };
    } else {
      const header = Buffer === null ? null : readHeader(Buffer, BufferLength);
      if (header === null || header.dataLength > BufferLength - ECHO_HEADER_SIZE) {
        reply = { status: STATUS_INVALID_PARAMETER, data: EMPTY };
      } else {
        // Copy out: Buffer is only valid during this call.
        const data = Buffer!.slice(ECHO_HEADER_SIZE, ECHO_HEADER_SIZE + header.dataLength);
        reply = { status: header.first | 0, data };
      }
    }
    C.VmbPacketFree(Packet);
    resolve(reply);
  };

  /** Driver unload: close the channel (Disable waits for Suspend and Closed), free it, release the table. */
  async stop(): Promise<void> {
    await this.C.VmbChannelDisable(this.channel);
    this.C.VmbChannelCleanup(this.channel);
    this.C.InterfaceDereference(this.C.Context);
  }
}
