// Shared set-up for the KMCL tests: a loopback host with one guest partition, a host and a guest
// provider, their interface tables, and helpers that bring a server/client channel pair up with
// traced callbacks.

import assert from 'node:assert/strict';
import {
  type EvtVmbChannelProcessPacket,
  KMCL_CLIENT_INTERFACE_TYPE,
  type KMCL_CLIENT_INTERFACE_V1,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  type KmclPeerError,
  KmclProvider,
  type KmclProviderOptions,
  kmclChannelInfo,
  LoopbackHost,
  type LoopbackHostOptions,
  type LoopbackPartition,
  NT_SUCCESS,
  ntStatusName,
  queryInterface,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
} from '../../src/kmcl/index.js';
import { Guid } from '../../src/wire/guid.js';

export const TYPE = Guid.parse('f8615163-df3e-46c5-913f-f2d2f965ed0e');
export const INSTANCE = Guid.parse('00000000-1111-2222-3333-444455556666');

export interface Rig {
  lb: LoopbackHost;
  part: LoopbackPartition;
  host: KmclProvider;
  guest: KmclProvider;
  S: KMCL_SERVER_INTERFACE_V1;
  C: KMCL_CLIENT_INTERFACE_V1;
  trace: string[];
  peerErrors: KmclPeerError[];
  callbackErrors: { callback: string; error: unknown }[];
  idle(): Promise<void>;
}

export interface RigOptions extends LoopbackHostOptions {
  memoryBytes?: number;
  provider?: KmclProviderOptions;
}

export function makeRig(options: RigOptions = {}): Rig {
  const lb = new LoopbackHost(options);
  const part = lb.addPartition({ memoryBytes: options.memoryBytes ?? 16 * 1024 * 1024 });
  const peerErrors: KmclPeerError[] = [];
  const callbackErrors: { callback: string; error: unknown }[] = [];
  const providerOptions: KmclProviderOptions = {
    onPeerError: (_ch, e) => peerErrors.push(e),
    onCallbackError: (_ch, callback, error) => callbackErrors.push({ callback, error }),
    ...options.provider,
  };
  const host = KmclProvider.forHost(lb, providerOptions);
  const guest = KmclProvider.forGuest(part.guestBus(0), providerOptions);
  const s = queryInterface<KMCL_SERVER_INTERFACE_V1>(
    host,
    KMCL_SERVER_INTERFACE_TYPE,
    KMCL_SERVER_INTERFACE_V1_SIZE,
    KMCL_SERVER_INTERFACE_VERSION_V1,
  );
  const c = queryInterface(
    guest,
    KMCL_CLIENT_INTERFACE_TYPE,
    KMCL_CLIENT_INTERFACE_V1_SIZE,
    KMCL_CLIENT_INTERFACE_VERSION_V1,
  );
  assert.equal(s.status, STATUS_SUCCESS);
  assert.equal(c.status, STATUS_SUCCESS);
  return {
    lb,
    part,
    host,
    guest,
    S: s.Interface!,
    C: c.Interface!,
    trace: [],
    peerErrors,
    callbackErrors,
    idle: () => lb.idle(),
  };
}

export function expectStatus(actual: number, expected: number, what = 'status'): void {
  assert.equal(ntStatusName(actual), ntStatusName(expected), what);
}

export interface SideOptions {
  onPacket?: EvtVmbChannelProcessPacket;
  onBatch?: (ch: VMBCHANNEL, n: number) => void;
  /** Extra Init* calls before Enable. */
  configure?: (ch: VMBCHANNEL) => void;
  /** Status EvtChannelOpened returns (default success). */
  opened?: (ch: VMBCHANNEL) => number | Promise<number>;
  postStarted?: (ch: VMBCHANNEL) => void | Promise<void>;
  started?: (ch: VMBCHANNEL) => void | Promise<void>;
  suspend?: (ch: VMBCHANNEL) => void | Promise<void>;
  closed?: (ch: VMBCHANNEL) => void | Promise<void>;
  /** Trace prefix ('S' / 'C'). */
  name?: string;
  /** Server: do not call VmbChannelStart after Enable. */
  noStart?: boolean;
}

function callbacks(rig: Rig, name: string, o: SideOptions) {
  const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
  cb.EvtChannelOpened = (ch) => {
    rig.trace.push(`${name}:Opened`);
    return o.opened ? o.opened(ch) : STATUS_SUCCESS;
  };
  cb.EvtChannelClosed = (ch) => {
    rig.trace.push(`${name}:Closed`);
    return o.closed?.(ch);
  };
  cb.EvtChannelSuspend = (ch) => {
    rig.trace.push(`${name}:Suspend`);
    return o.suspend?.(ch);
  };
  cb.EvtChannelStarted = (ch) => {
    rig.trace.push(`${name}:Started`);
    return o.started?.(ch);
  };
  cb.EvtChannelPostStarted = (ch) => {
    rig.trace.push(`${name}:PostStarted`);
    return o.postStarted?.(ch);
  };
  return cb;
}

/** Echo server default: completes every packet with its own payload. */
export function echo(I: KMCL_CLIENT_INTERFACE_V1): EvtVmbChannelProcessPacket {
  return (_ch, pkt, buf, len) => I.VmbChannelPacketComplete(pkt, buf, len);
}

export function makeServer(rig: Rig, o: SideOptions = {}): VMBCHANNEL {
  const { S } = rig;
  const r = S.VmbChannelAllocate(null, true);
  expectStatus(r.status, STATUS_SUCCESS, 'server allocate');
  const ch = r.Channel!;
  expectStatus(S.VmbServerChannelInitSetTargetInterfaceId(ch, TYPE, INSTANCE), STATUS_SUCCESS);
  expectStatus(S.VmbChannelInitSetFriendlyName(ch, 'test-server'), STATUS_SUCCESS);
  expectStatus(
    S.VmbChannelInitSetProcessPacketCallbacks(ch, o.onPacket ?? echo(S), o.onBatch ?? null),
    STATUS_SUCCESS,
  );
  expectStatus(S.VmbChannelInitSetStateChangeCallbacks(ch, callbacks(rig, o.name ?? 'S', o)), STATUS_SUCCESS);
  o.configure?.(ch);
  return ch;
}

export function makeClient(rig: Rig, o: SideOptions = {}): VMBCHANNEL {
  const { C } = rig;
  const r = C.VmbChannelAllocate(null, false);
  expectStatus(r.status, STATUS_SUCCESS, 'client allocate');
  const ch = r.Channel!;
  expectStatus(C.VmbClientChannelInitSetTargetPnp(ch, TYPE, null, null), STATUS_SUCCESS);
  expectStatus(C.VmbChannelInitSetFriendlyName(ch, 'test-client'), STATUS_SUCCESS);
  expectStatus(
    C.VmbChannelInitSetProcessPacketCallbacks(ch, o.onPacket ?? echo(C), o.onBatch ?? null),
    STATUS_SUCCESS,
  );
  expectStatus(C.VmbChannelInitSetStateChangeCallbacks(ch, callbacks(rig, o.name ?? 'C', o)), STATUS_SUCCESS);
  o.configure?.(ch);
  return ch;
}

/** Brings a pair up: server enabled + started, client enabled, both flowing. */
export async function openPair(
  rig: Rig,
  server: SideOptions = {},
  client: SideOptions = {},
): Promise<{ server: VMBCHANNEL; client: VMBCHANNEL }> {
  const s = makeServer(rig, server);
  const c = makeClient(rig, client);
  expectStatus(rig.S.VmbChannelEnable(s), STATUS_SUCCESS, 'server enable');
  if (!server.noStart) rig.S.VmbChannelStart(s);
  expectStatus(rig.C.VmbChannelEnable(c), STATUS_SUCCESS, 'client enable');
  await rig.idle();
  if (!server.noStart) {
    assert.equal(kmclChannelInfo(s).flowing, true, 'server flowing');
    assert.equal(kmclChannelInfo(c).flowing, true, 'client flowing');
  }
  return { server: s, client: c };
}

export function ok(status: number, what = 'status'): void {
  assert.ok(NT_SUCCESS(status), `${what}: ${ntStatusName(status)}`);
}

export function bytes(...values: number[]): Uint8Array {
  return Uint8Array.from(values);
}

/** The first `n` bytes as a plain array (payloads are padded to 8 on the wire). */
export function head(buf: Uint8Array | null, n: number): number[] {
  return buf === null ? [] : Array.from(buf.subarray(0, n));
}
