// Shared helpers for the KMCL-over-VMBus tests: interface queries, server and client channels
// with traced callbacks, packet helpers and waiting. Usable on the main thread and in the guest's
// worker (no node:test imports here).

import {
  type EvtVmbChannelProcessPacket,
  type EvtVmbPacketCompletionRoutine,
  KMCL_CLIENT_INTERFACE_TYPE,
  type KMCL_CLIENT_INTERFACE_V1,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  type KmclProvider,
  ntStatusName,
  queryInterface,
  STATUS_BUFFER_OVERFLOW,
  STATUS_BUFFER_TOO_SMALL,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
} from '../../src/kmcl/index.js';
import { Guid } from '../../src/wire/guid.js';

export const TYPE = Guid.parse('5b1e0f2c-7a43-4d8e-b1c2-3f4a5b6c7d8e');
export const INSTANCE = Guid.parse('00000000-aaaa-bbbb-cccc-000000000001');
export const INSTANCE2 = Guid.parse('00000000-aaaa-bbbb-cccc-000000000002');

export function serverTable(p: KmclProvider): KMCL_SERVER_INTERFACE_V1 {
  const r = queryInterface<KMCL_SERVER_INTERFACE_V1>(
    p,
    KMCL_SERVER_INTERFACE_TYPE,
    KMCL_SERVER_INTERFACE_V1_SIZE,
    KMCL_SERVER_INTERFACE_VERSION_V1,
  );
  must(r.status, 'query server interface');
  return r.Interface!;
}

export function clientTable(p: KmclProvider): KMCL_CLIENT_INTERFACE_V1 {
  const r = queryInterface(
    p,
    KMCL_CLIENT_INTERFACE_TYPE,
    KMCL_CLIENT_INTERFACE_V1_SIZE,
    KMCL_CLIENT_INTERFACE_VERSION_V1,
  );
  must(r.status, 'query client interface');
  return r.Interface!;
}

/** Throws unless `status` is `expected` (default STATUS_SUCCESS). */
export function must(status: number, what: string, expected = STATUS_SUCCESS): void {
  if (status !== expected)
    throw new Error(`${what}: ${ntStatusName(status)}, expected ${ntStatusName(expected)}`);
}

export interface ChannelOptions {
  type?: Guid;
  instance?: Guid;
  onPacket?: EvtVmbChannelProcessPacket;
  configure?: (ch: VMBCHANNEL) => void;
  opened?: (ch: VMBCHANNEL) => number | Promise<number>;
  started?: (ch: VMBCHANNEL) => void | Promise<void>;
  postStarted?: (ch: VMBCHANNEL) => void | Promise<void>;
  suspend?: (ch: VMBCHANNEL) => void | Promise<void>;
  closed?: (ch: VMBCHANNEL) => void | Promise<void>;
  /** Callback names are pushed here, prefixed with `name`. */
  trace?: string[];
  name?: string;
}

function callbacks(o: ChannelOptions, dflt: string) {
  const name = o.name ?? dflt;
  const t = o.trace;
  const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
  cb.EvtChannelOpened = (ch) => {
    t?.push(`${name}:Opened`);
    return o.opened ? o.opened(ch) : STATUS_SUCCESS;
  };
  cb.EvtChannelClosed = (ch) => {
    t?.push(`${name}:Closed`);
    return o.closed?.(ch);
  };
  cb.EvtChannelSuspend = (ch) => {
    t?.push(`${name}:Suspend`);
    return o.suspend?.(ch);
  };
  cb.EvtChannelStarted = (ch) => {
    t?.push(`${name}:Started`);
    return o.started?.(ch);
  };
  cb.EvtChannelPostStarted = (ch) => {
    t?.push(`${name}:PostStarted`);
    return o.postStarted?.(ch);
  };
  return cb;
}

/** Echo: completes every packet with its own payload. */
export function echo(I: KMCL_CLIENT_INTERFACE_V1): EvtVmbChannelProcessPacket {
  return (_ch, pkt, buf, len) => I.VmbChannelPacketComplete(pkt, buf, len);
}

/** An allocated, configured server channel (not enabled). */
export function makeServer(S: KMCL_SERVER_INTERFACE_V1, o: ChannelOptions = {}): VMBCHANNEL {
  const r = S.VmbChannelAllocate(null, true);
  must(r.status, 'server allocate');
  const ch = r.Channel!;
  must(S.VmbServerChannelInitSetTargetInterfaceId(ch, o.type ?? TYPE, o.instance ?? INSTANCE), 'target id');
  must(S.VmbChannelInitSetFriendlyName(ch, 'bus-server'), 'friendly name');
  must(S.VmbChannelInitSetProcessPacketCallbacks(ch, o.onPacket ?? echo(S), null), 'packet callbacks');
  must(S.VmbChannelInitSetStateChangeCallbacks(ch, callbacks(o, 'S')), 'state callbacks');
  o.configure?.(ch);
  return ch;
}

/** An allocated, configured client channel (not enabled). */
export function makeClient(C: KMCL_CLIENT_INTERFACE_V1, o: ChannelOptions = {}): VMBCHANNEL {
  const r = C.VmbChannelAllocate(null, false);
  must(r.status, 'client allocate');
  const ch = r.Channel!;
  must(C.VmbClientChannelInitSetTargetPnp(ch, o.type ?? TYPE, o.instance ?? null, null), 'target pnp');
  must(C.VmbChannelInitSetFriendlyName(ch, 'bus-client'), 'friendly name');
  must(C.VmbChannelInitSetProcessPacketCallbacks(ch, o.onPacket ?? echo(C), null), 'packet callbacks');
  must(C.VmbChannelInitSetStateChangeCallbacks(ch, callbacks(o, 'C')), 'state callbacks');
  o.configure?.(ch);
  return ch;
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Waits (yielding to the event loop) until `cond()` holds; throws after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  let spins = 0;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    // setImmediate first (fast), then short sleeps so a cross-thread peer gets time.
    if (spins++ < 200) await new Promise<void>((r) => setImmediate(r));
    else await new Promise<void>((r) => setTimeout(r, 1));
  }
}

export function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

/**
 * Servicing: pauses a server channel and saves it (SaveBegin, SaveContinue in chunks of
 * `chunkSize` until STATUS_SUCCESS, SaveEnd), then disables and cleans it up. Returns the chunks.
 */
export async function saveServerChannel(
  S: KMCL_SERVER_INTERFACE_V1,
  ch: VMBCHANNEL,
  chunkSize = 65536,
): Promise<Uint8Array[]> {
  await S.VmbChannelPause(ch);
  must(S.VmbChannelSaveBegin(ch), 'VmbChannelSaveBegin');
  const chunks: Uint8Array[] = [];
  for (;;) {
    const b = new Uint8Array(chunkSize);
    const r = S.VmbChannelSaveContinue(ch, b, b.length);
    if (r.status !== STATUS_SUCCESS) must(r.status, 'VmbChannelSaveContinue', STATUS_BUFFER_OVERFLOW);
    chunks.push(b.slice(0, r.BytesFilled));
    if (r.status === STATUS_SUCCESS) break;
  }
  S.VmbChannelSaveEnd(ch);
  await S.VmbChannelDisable(ch);
  S.VmbChannelCleanup(ch);
  return chunks;
}

/**
 * Servicing: installs the save/restore packet callbacks of a VSP whose packet pointer is a u32
 * sequence number. The save writes the 4 bytes (two-call protocol); the restore allocates a
 * packet, calls VmbPacketRestore, and sets the pointer and `routine` again.
 */
export function setSequenceSaveRestore(
  S: KMCL_SERVER_INTERFACE_V1,
  ch: VMBCHANNEL,
  routine: EvtVmbPacketCompletionRoutine,
): void {
  must(
    S.VmbServerChannelInitSetSaveRestorePacketCallbacks(
      ch,
      (_c, pk, b, size) => {
        if (size === 0) return { status: STATUS_BUFFER_TOO_SMALL, BytesNeeded: 4 };
        new DataView(b!.buffer, b!.byteOffset).setUint32(0, S.VmbPacketGetPointer(pk) as number, true);
        return { status: STATUS_SUCCESS, BytesNeeded: 4 };
      },
      (c, lib, libSize, save) => {
        const p = S.VmbPacketAllocate(c);
        if (p === null) return STATUS_BUFFER_TOO_SMALL;
        const st = S.VmbPacketRestore(p, lib, libSize);
        S.VmbPacketSetPointer(p, new DataView(save.buffer, save.byteOffset).getUint32(0, true));
        S.VmbPacketSetCompletionRoutine(p, routine);
        return st;
      },
    ),
    'save/restore callbacks',
  );
}
