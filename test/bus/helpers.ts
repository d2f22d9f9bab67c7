// Test helpers: a VmbusServer facing a raw guest (messages posted and received as bytes, for
// exact-protocol checks), and a VmbusClient facing a raw host (for hostile-host checks). Both on
// the same-thread transport, drained with hv.idle() so every step is deterministic.
import {
  type BusProtocolError,
  type ServerChannelHandle,
  type ServerChannelHandler,
  type ServerOfferParams,
  VmbusClient,
  type VmbusClientOptions,
  VmbusServer,
  type VmbusServerOptions,
} from '../../src/bus/index.js';
import { type HostPartition, Hypervisor } from '../../src/hv/index.js';
import { PageAllocator } from '../../src/memory/allocator.js';
import { CHANNELMSG_INITIATE_CONTACT, VERSION_WIN10_V5 } from '../../src/wire/constants.js';
import { Guid } from '../../src/wire/guid.js';
import { type ChannelMessage, decodeMessage, encodeMessage } from '../../src/wire/messages.js';

export const TYPE_X = Guid.parse('5f6c6a9f-8b6d-4b6a-9e8a-2d1f0c3b4a59');
export const TYPE_Y = Guid.parse('9e1f2a3b-4c5d-4e6f-8a7b-0c1d2e3f4a5b');
export const INST_1 = Guid.parse('00000000-0000-0000-0000-0000000000a1');
export const INST_2 = Guid.parse('00000000-0000-0000-0000-0000000000a2');

export const OFFER_X: ServerOfferParams = { interfaceType: TYPE_X, interfaceInstance: INST_1 };
export const OFFER_Y: ServerOfferParams = { interfaceType: TYPE_Y, interfaceInstance: INST_1 };

/** A server with a raw guest: `send` posts a message (or bytes) and drains; `received` collects replies. */
export function serverWithRawGuest(options: VmbusServerOptions = {}, memoryBytes = 16 * 1024 * 1024) {
  const hv = new Hypervisor({ transport: 'same-thread' });
  const partition: HostPartition = hv.createPartition({ memoryBytes });
  const guest = partition.guest!;
  const server = new VmbusServer(partition.host, partition.memory, options);
  const errors: BusProtocolError[] = [];
  server.onProtocolError((e) => errors.push(e));
  const received: ChannelMessage[] = [];
  guest.onMessage(2, (m) => received.push(decodeMessage(m.data.slice(0, m.length))));
  const alloc = new PageAllocator(partition.memory);
  async function send(msg: ChannelMessage | Uint8Array, port?: number): Promise<void> {
    const bytes = msg instanceof Uint8Array ? msg : encodeMessage(msg);
    const p =
      port ??
      (!(msg instanceof Uint8Array) &&
      msg.type === CHANNELMSG_INITIATE_CONTACT &&
      msg.vmbusVersionRequested >= VERSION_WIN10_V5
        ? 4
        : 1);
    await guest.post(p, bytes);
    await hv.idle();
  }
  /** Takes and returns what arrived since the last call. */
  function take(): ChannelMessage[] {
    return received.splice(0);
  }
  async function contact(version: number, extra: Record<string, unknown> = {}): Promise<ChannelMessage[]> {
    await send({
      type: CHANNELMSG_INITIATE_CONTACT,
      form: 'InitiateContact',
      vmbusVersionRequested: version,
      targetVcpu: 0,
      ...(version >= VERSION_WIN10_V5 ? { msgSint: 2, msgVtl: 0, featureFlags: 0 } : { interruptPage: 0n }),
      monitorPage1: 0n,
      monitorPage2: 0n,
      ...extra,
    } as ChannelMessage);
    return take();
  }
  return { hv, partition, guest, server, errors, received, alloc, send, take, contact };
}

/** A handler that records what happened; `open` answers onOpen (default accept). */
export function recorder(events: string[], name = 'ch', open: (() => number | Promise<number>) | number = 0) {
  const h: ServerChannelHandler & { handle?: ServerChannelHandle } = {
    onOpen: (req) => {
      events.push(`${name} open ${req.openId}`);
      return typeof open === 'function' ? open() : open;
    },
    onClose: (reason) => {
      events.push(`${name} close ${reason}`);
    },
    onGuestSignal: () => {
      events.push(`${name} signal`);
    },
    onGpadlCreated: (g) => {
      events.push(`${name} gpadl ${g.gpadlId}`);
    },
    onGpadlTeardown: (g, reason) => {
      events.push(`${name} teardown ${g.gpadlId} ${reason}`);
    },
    onReleased: () => {
      events.push(`${name} released`);
    },
  };
  return h;
}

/** A client with a raw host: `hostSend` posts host-to-guest messages; `hostReceived` collects the guest's. */
export function clientWithRawHost(options: VmbusClientOptions = {}, ports: readonly number[] = [1, 4]) {
  const memoryBytes = 16 * 1024 * 1024;
  const hv = new Hypervisor({ transport: 'same-thread' });
  const partition = hv.createPartition({ memoryBytes });
  const host = partition.host;
  const client = new VmbusClient(partition.guest!, partition.memory, options);
  const errors: BusProtocolError[] = [];
  client.onProtocolError((e) => errors.push(e));
  const hostReceived: { port: number; msg: ChannelMessage }[] = [];
  const listen = (port: number) =>
    host.onMessage(port, (m) => hostReceived.push({ port, msg: decodeMessage(m.data.slice(0, m.length)) }));
  for (const port of ports) listen(port);
  async function hostSend(msg: ChannelMessage | Uint8Array): Promise<void> {
    await host.post(2, msg instanceof Uint8Array ? msg : encodeMessage(msg));
    await hv.idle();
  }
  function take(): ChannelMessage[] {
    return hostReceived.splice(0).map((r) => r.msg);
  }
  return { hv, partition, host, client, errors, hostReceived, hostSend, take, listen };
}
