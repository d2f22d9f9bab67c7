// The KMCL scenarios over the real VMBus, each split into a host half (the VSP, on the main
// thread) and a guest half (the VSC, on the main thread or in the guest's worker). The halves talk
// only through the KMCL (packets, GPADLs, channel state); the side channel carries test
// coordination ("I am done", "now unmap"), and each half returns plain results that `check`
// judges. The same code runs in both hv transports.

import assert from 'node:assert/strict';
import type { BusKmclGuest, BusKmclHost } from '../../src/kmcl/bus-port.js';
import {
  type KMCL_CLIENT_INTERFACE_V1,
  type KMCL_SERVER_INTERFACE_V1,
  kmclChannelInfo,
  STATUS_CANCELLED,
  STATUS_DEVICE_REMOVED,
  STATUS_INVALID_PARAMETER_3,
  STATUS_SUCCESS,
  type VMBCHANNEL,
  type VMBPACKET,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
  VMBUS_CHANNEL_INIT_FLAG_IS_PIPE,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE,
} from '../../src/kmcl/index.js';
import { pfnArrayRead } from '../../src/memory/mdl.js';
import type { GuestSide, HostSide } from '../hv/side-channel.js';
import { type ChannelOptions, deferred, makeClient, makeServer, must, pattern, until } from './kit.js';

const WAIT = VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION;
const MiB = 1024 * 1024;
/** Side-channel codes (2.. are per scenario). */
const DONE = 1;

export type Result = Record<string, unknown>;

export interface HostCtx {
  readonly S: KMCL_SERVER_INTERFACE_V1;
  readonly hostBus: BusKmclHost;
  readonly side: HostSide;
}

export interface GuestCtx {
  readonly C: KMCL_CLIENT_INTERFACE_V1;
  readonly bus: BusKmclGuest;
  readonly side: GuestSide;
}

export interface KmclScenario {
  readonly name: string;
  host(ctx: HostCtx): Promise<Result>;
  guest(ctx: GuestCtx): Promise<Result>;
  /** Throws (assert) if the results are wrong. */
  check(host: Result, guest: Result): void;
}

// ---------------------------------------------------------------------------------------------
// Building blocks

/** Host: offers and starts a server channel. */
function serve(ctx: HostCtx, o: ChannelOptions = {}): VMBCHANNEL {
  const ch = makeServer(ctx.S, o);
  must(ctx.S.VmbChannelEnable(ch), 'server enable');
  ctx.S.VmbChannelStart(ch);
  return ch;
}

/** Host: waits for the guest to be done, then revokes and cleans up. */
async function hostFinish(ctx: HostCtx, ch: VMBCHANNEL): Promise<void> {
  await ctx.side.waitFor(DONE);
  await ctx.S.VmbChannelDisable(ch);
  ctx.S.VmbChannelCleanup(ch);
}

/** Guest: enables a client and resolves once it is flowing (PostStarted ran). */
async function connect(ctx: GuestCtx, o: ChannelOptions = {}): Promise<VMBCHANNEL> {
  const up = deferred();
  const ch = makeClient(ctx.C, {
    ...o,
    postStarted: async (c) => {
      await o.postStarted?.(c);
      up.resolve();
    },
  });
  must(ctx.C.VmbChannelEnable(ch), 'client enable');
  await up.promise;
  return ch;
}

/** Guest: disables (if still enabled), cleans up and tells the host it is done. */
async function guestFinish(ctx: GuestCtx, ch: VMBCHANNEL): Promise<void> {
  await ctx.C.VmbChannelDisable(ch);
  ctx.C.VmbChannelCleanup(ch);
  ctx.side.notify(DONE);
}

function u32(buf: Uint8Array, off = 0): number {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(off, true);
}

function seqPacket(seq: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  new DataView(b.buffer).setUint32(0, seq, true);
  for (let i = 4; i < len; i++) b[i] = (seq + i) & 0xff;
  return b;
}

/**
 * Guest: keeps `window` transactions in flight until `total` were sent (or `stop()` says so);
 * records each packet's completion status by sequence number.
 */
function stream(
  C: KMCL_CLIENT_INTERFACE_V1,
  ch: VMBCHANNEL,
  opts: { total: number; window: number; flags: number; len?: (seq: number) => number; stop?: () => boolean },
): { statuses: number[]; calls: number[]; done: Promise<void>; sent: () => number } {
  const statuses: number[] = [];
  const calls: number[] = [];
  let next = 0;
  const all = deferred();
  const lenOf = opts.len ?? ((s: number) => 8 + (s % 7) * 8);
  const send = (p: VMBPACKET): boolean => {
    if (next >= opts.total || opts.stop?.() === true) return false;
    const seq = next++;
    C.VmbPacketSetPointer(p, seq);
    const buf = seqPacket(seq, lenOf(seq));
    const st = C.VmbPacketSend(p, buf, buf.length, null, opts.flags);
    if (st !== STATUS_SUCCESS) {
      statuses[seq] = st;
      calls[seq] = (calls[seq] ?? 0) + 1;
      return false;
    }
    return true;
  };
  let live = 0;
  const onComplete = (p: VMBPACKET, status: number): void => {
    const seq = C.VmbPacketGetPointer(p) as number;
    statuses[seq] = status;
    calls[seq] = (calls[seq] ?? 0) + 1;
    // Reuse the packet once its completion routine has returned.
    queueMicrotask(() => {
      if (status !== STATUS_SUCCESS || !send(p)) {
        C.VmbPacketFree(p);
        if (--live === 0) all.resolve();
      }
    });
  };
  for (let i = 0; i < opts.window; i++) {
    const p = C.VmbPacketAllocate(ch)!;
    C.VmbPacketSetCompletionRoutine(p, onComplete);
    live++;
    if (!send(p)) {
      C.VmbPacketFree(p);
      live--;
    }
  }
  if (live === 0) all.resolve();
  return { statuses, calls, done: all.promise, sent: () => next };
}

/** Every sequence number 0..n-1 has exactly one completion; counts of each status. */
function tally(statuses: number[], calls: number[], n: number): Record<string, number> {
  const out: Record<string, number> = { missing: 0, twice: 0 };
  for (let i = 0; i < n; i++) {
    if (calls[i] === undefined) out.missing!++;
    else if (calls[i] !== 1) out.twice!++;
    const s = statuses[i];
    if (s !== undefined) out[String(s)] = (out[String(s)] ?? 0) + 1;
  }
  return out;
}

/** Host: a packet handler that checks sequence order and completes (optionally with payload). */
function inOrder(S: KMCL_SERVER_INTERFACE_V1, o: { echo?: boolean; onSeq?: (seq: number) => void } = {}) {
  const st = { count: 0, bad: -1 };
  const onPacket = (_ch: VMBCHANNEL, pkt: VMBPACKETCOMPLETION, buf: Uint8Array, len: number): void => {
    const seq = u32(buf);
    if (seq !== st.count && st.bad < 0) st.bad = st.count;
    st.count++;
    if (o.echo) S.VmbChannelPacketComplete(pkt, buf, len);
    else S.VmbChannelPacketComplete(pkt, null, 0);
    o.onSeq?.(seq);
  };
  return { st, onPacket };
}

// ---------------------------------------------------------------------------------------------
// Scenarios

const echoScenario: KmclScenario = {
  name: 'echo',
  async host(ctx) {
    let packets = 0;
    const ch = serve(ctx, {
      onPacket: (_c, pkt, buf, len) => {
        packets++;
        ctx.S.VmbChannelPacketComplete(pkt, buf, len);
      },
    });
    await hostFinish(ctx, ch);
    return { packets };
  },
  async guest(ctx) {
    const { C } = ctx;
    const ch = await connect(ctx);
    const got: { status: number; ok: boolean }[] = [];
    for (let i = 1; i <= 16; i++) {
      const data = pattern(i * 13, i);
      const r = deferred<{ status: number; ok: boolean }>();
      const p = C.VmbPacketAllocate(ch)!;
      C.VmbPacketSetCompletionRoutine(p, (pk, status, buf, len) => {
        const ok =
          buf !== null && len >= data.length && buf.subarray(0, data.length).every((b, j) => b === data[j]);
        C.VmbPacketFree(pk);
        r.resolve({ status, ok });
      });
      must(C.VmbPacketSend(p, data, data.length, null, WAIT), 'send');
      got.push(await r.promise);
    }
    await guestFinish(ctx, ch);
    return { got, leaked: ctx.bus.leakedPages, ringPages: ctx.bus.allocator.allocatedPageCount };
  },
  check(h, g) {
    assert.equal(h.packets, 16);
    assert.deepEqual(
      g.got,
      Array.from({ length: 16 }, () => ({ status: STATUS_SUCCESS, ok: true })),
    );
    assert.equal(g.leaked, 0);
    assert.equal(g.ringPages, 0);
  },
};

const requestResponse: KmclScenario = {
  name: 'request/response with completion payloads',
  async host(ctx) {
    const { S } = ctx;
    const opened = deferred<VMBCHANNEL>();
    const ch = serve(ctx, {
      postStarted: (c) => opened.resolve(c),
      onPacket: (_c, pkt, buf, len) => {
        // Response: 3 x the request, reversed, then the byte sum as a u32.
        const out = new Uint8Array(len * 3 + 4);
        for (let i = 0; i < len * 3; i++) out[i] = buf[len - 1 - (i % len)]!;
        let sum = 0;
        for (let i = 0; i < len; i++) sum += buf[i]!;
        new DataView(out.buffer).setUint32(len * 3, sum, true);
        S.VmbChannelPacketComplete(pkt, out, out.length);
      },
    });
    await opened.promise;
    // The host asks the guest too (host -> guest transaction with a completion payload).
    await ctx.side.waitFor(2);
    const back = deferred<number[]>();
    const p = S.VmbPacketAllocate(ch)!;
    S.VmbPacketSetCompletionRoutine(p, (pk, status, buf, len) => {
      back.resolve([status, len, ...(buf === null ? [] : Array.from(buf.subarray(0, 4)))]);
      S.VmbPacketFree(pk);
    });
    must(S.VmbPacketSend(p, Uint8Array.of(10, 20, 30, 40), 4, null, WAIT), 'host send');
    const hostGot = await back.promise;
    ctx.side.notify(3);
    await hostFinish(ctx, ch);
    return { hostGot };
  },
  async guest(ctx) {
    const { C } = ctx;
    const ch = await connect(ctx, {
      onPacket: (_c, pkt, buf, len) => {
        const out = new Uint8Array(len);
        for (let i = 0; i < len; i++) out[i] = buf[i]! * 2;
        C.VmbChannelPacketComplete(pkt, out, len);
      },
    });
    ctx.side.notify(2);
    const answers: boolean[] = [];
    for (const len of [8, 16, 64, 504]) {
      const req = pattern(len, len);
      const r = deferred<boolean>();
      const p = C.VmbPacketAllocate(ch)!;
      C.VmbPacketSetCompletionRoutine(p, (pk, status, buf, blen) => {
        let ok = status === STATUS_SUCCESS && buf !== null && blen >= len * 3 + 4;
        let sum = 0;
        for (let i = 0; i < len; i++) sum += req[i]!;
        for (let i = 0; ok && i < len * 3; i++) ok = buf![i] === req[len - 1 - (i % len)];
        ok = ok && u32(buf!, len * 3) === sum;
        C.VmbPacketFree(pk);
        r.resolve(ok);
      });
      must(C.VmbPacketSend(p, req, len, null, WAIT), 'send');
      answers.push(await r.promise);
    }
    await ctx.side.waitFor(3);
    await guestFinish(ctx, ch);
    return { answers };
  },
  check(h, g) {
    assert.deepEqual(g.answers, [true, true, true, true]);
    // Completion payloads are padded to 8 bytes on the wire.
    assert.deepEqual(h.hostGot, [STATUS_SUCCESS, 8, 20, 40, 60, 80]);
  },
};

const externalMiB: KmclScenario = {
  name: '1 MiB through external PFNs, host access refused after completion',
  async host(ctx) {
    const { S } = ctx;
    let granted: ReturnType<typeof S.VmbChannelPacketGetExternalData>['Mdl'] | null = null;
    let byteCount = 0;
    let flags = -1;
    const completed = deferred();
    const ch = serve(ctx, {
      onPacket: (_c, pkt, _buf, _len, f) => {
        flags = f;
        const r = S.VmbChannelPacketGetExternalData(pkt, 0);
        must(r.status, 'external data');
        granted = r.Mdl!;
        byteCount = granted.byteCount;
        const chunk = new Uint8Array(64 * 1024);
        for (let off = 0; off < MiB; off += chunk.length) {
          for (let i = 0; i < chunk.length; i++) chunk[i] = (off / 1024 + i) & 0xff;
          granted.write(off, chunk);
        }
        S.VmbChannelPacketComplete(pkt, Uint8Array.of(1), 1);
        completed.resolve();
      },
    });
    await completed.promise;
    let after = 'allowed';
    try {
      granted!.write(0, Uint8Array.of(0xee));
    } catch (e) {
      after = `${(e as Error).name}:${(e as { code?: string }).code}`;
    }
    let afterRead = 'allowed';
    try {
      granted!.read(4096, new Uint8Array(1));
    } catch (e) {
      afterRead = `${(e as Error).name}:${(e as { code?: string }).code}`;
    }
    await hostFinish(ctx, ch);
    return { byteCount, flags, after, afterRead };
  },
  async guest(ctx) {
    const { C, bus } = ctx;
    const ch = await connect(ctx, {
      configure: (c) => must(C.VmbChannelInitSetMaximumExternalData(c, MiB, 1), 'max external'),
    });
    const pfns = bus.allocator.allocate(256, 'scattered');
    const done = deferred<number[]>();
    const p = C.VmbPacketAllocate(ch)!;
    C.VmbPacketSetCompletionRoutine(p, (pk, st, buf) => {
      done.resolve([st, buf?.[0] ?? -1]);
      C.VmbPacketFree(pk);
    });
    must(C.VmbPacketSendWithExternalPfns(p, Uint8Array.of(9, 8, 7, 6), 4, pfns, 256, WAIT), 'send pfns');
    const completion = await done.promise;
    const all = new Uint8Array(MiB);
    pfnArrayRead(bus.memory, pfns, 0, all);
    let bad = 0;
    for (let i = 0; i < MiB; i++) if (all[i] !== ((Math.floor(i / 65536) * 64 + (i % 65536)) & 0xff)) bad++;
    bus.allocator.free(pfns);
    await guestFinish(ctx, ch);
    return { completion, bad };
  },
  check(h, g) {
    assert.equal(h.byteCount, MiB);
    assert.equal(h.flags, 1);
    assert.deepEqual(g.completion, [STATUS_SUCCESS, 1]);
    assert.equal(g.bad, 0, 'the guest sees every byte the host wrote');
    assert.match(String(h.after), /^MemoryAccessError:/);
    assert.match(String(h.afterRead), /^MemoryAccessError:/);
  },
};

const TOTAL_100K = 100_000;

const backPressure: KmclScenario = {
  name: '100k sends against a small ring keep their order',
  async host(ctx) {
    const all = deferred();
    const { st, onPacket } = inOrder(ctx.S, {
      onSeq: () => {
        if (st.count === TOTAL_100K) all.resolve();
      },
    });
    const ch = serve(ctx, { onPacket });
    await all.promise;
    ctx.side.notify(2);
    await hostFinish(ctx, ch);
    return { count: st.count, bad: st.bad };
  },
  async guest(ctx) {
    const { C } = ctx;
    const ch = await connect(ctx, {
      configure: (c) => must(C.VmbClientChannelInitSetRingBufferPageCount(c, 2, 2), 'ring pages'),
    });
    const s = stream(C, ch, { total: TOTAL_100K, window: 64, flags: 0 });
    await s.done;
    await ctx.side.waitFor(2);
    await guestFinish(ctx, ch);
    return { tally: tally(s.statuses, s.calls, TOTAL_100K) };
  },
  check(h, g) {
    assert.equal(h.count, TOTAL_100K);
    assert.equal(h.bad, -1, 'in order');
    assert.deepEqual(g.tally, { missing: 0, twice: 0, [String(STATUS_SUCCESS)]: TOTAL_100K });
  },
};

const pauseStart: KmclScenario = {
  name: 'pause and start during traffic',
  async host(ctx) {
    const { S } = ctx;
    const trace: string[] = [];
    const atThousand = deferred();
    const { st, onPacket } = inOrder(S, {
      echo: true,
      onSeq: (seq) => {
        if (seq === 999) atThousand.resolve();
      },
    });
    const ch = serve(ctx, { onPacket, trace });
    await atThousand.promise;
    await S.VmbChannelPause(ch);
    const paused = st.count;
    await new Promise((r) => setTimeout(r, 30));
    const stillPaused = st.count;
    S.VmbChannelStart(ch);
    await ctx.side.waitFor(2);
    await hostFinish(ctx, ch);
    return { paused, stillPaused, count: st.count, bad: st.bad, trace };
  },
  async guest(ctx) {
    const { C } = ctx;
    const ch = await connect(ctx);
    const s = stream(C, ch, { total: 3000, window: 16, flags: WAIT });
    await s.done;
    ctx.side.notify(2);
    await guestFinish(ctx, ch);
    return { tally: tally(s.statuses, s.calls, 3000) };
  },
  check(h, g) {
    assert.equal(h.paused, h.stillPaused, 'nothing is delivered while paused');
    assert.ok((h.paused as number) >= 1000 && (h.paused as number) < 3000);
    assert.equal(h.count, 3000);
    assert.equal(h.bad, -1);
    assert.deepEqual((h.trace as string[]).slice(0, 6), [
      'S:Opened',
      'S:Started',
      'S:PostStarted',
      'S:Suspend',
      'S:Started',
      'S:PostStarted',
    ]);
    assert.deepEqual(g.tally, { missing: 0, twice: 0, [String(STATUS_SUCCESS)]: 3000 });
  },
};

const disableOutstanding: KmclScenario = {
  name: 'Disable with packets outstanding',
  async host(ctx) {
    const { S } = ctx;
    const held: VMBPACKETCOMPLETION[] = [];
    let retired = 0;
    const ch = serve(ctx, {
      onPacket: (_c, pkt) => {
        held.push(pkt);
        if (held.length === 10) ctx.side.notify(2);
      },
      // The guest went away with its transactions outstanding: the server retires them.
      suspend: () => {
        for (const p of held.splice(0)) {
          S.VmbChannelPacketComplete(p, Uint8Array.of(1), 1);
          retired++;
        }
      },
    });
    await hostFinish(ctx, ch);
    return { retired };
  },
  async guest(ctx) {
    const { C } = ctx;
    const ch = await connect(ctx);
    const s = stream(C, ch, { total: 10, window: 10, flags: WAIT });
    await ctx.side.waitFor(2);
    const disabled = C.VmbChannelDisable(ch);
    await s.done;
    await disabled;
    C.VmbChannelCleanup(ch);
    ctx.side.notify(DONE);
    return { tally: tally(s.statuses, s.calls, 10) };
  },
  check(h, g) {
    assert.equal(h.retired, 10);
    assert.deepEqual(g.tally, { missing: 0, twice: 0, [String(STATUS_DEVICE_REMOVED)]: 10 });
  },
};

const peerClose: KmclScenario = {
  name: 'the guest closes mid-traffic, then reopens',
  async host(ctx) {
    const trace: string[] = [];
    const { st, onPacket } = inOrder(ctx.S, { echo: true });
    const ch = serve(ctx, { onPacket, trace });
    await hostFinish(ctx, ch);
    return { trace, count: st.count };
  },
  async guest(ctx) {
    const { C } = ctx;
    const ch = await connect(ctx);
    const s = stream(C, ch, { total: 1_000_000, window: 16, flags: WAIT });
    await until(() => s.statuses.filter((x) => x === STATUS_SUCCESS).length >= 300, '300 completions');
    await C.VmbChannelDisable(ch);
    await s.done;
    const sent = s.sent();
    const first = tally(s.statuses, s.calls, sent);
    // The host kept its offer: the same channel opens again and works.
    const again = deferred();
    must(C.VmbChannelEnable(ch), 're-enable');
    await until(() => kmclChannelInfo(ch).flowing, 'reopened');
    const p = C.VmbPacketAllocate(ch)!;
    C.VmbPacketSetCompletionRoutine(p, (pk, status) => {
      C.VmbPacketFree(pk);
      if (status === STATUS_SUCCESS) again.resolve();
    });
    must(C.VmbPacketSend(p, seqPacket(0, 8), 8, null, WAIT), 'send after reopen');
    await again.promise;
    await guestFinish(ctx, ch);
    return { first, sent };
  },
  check(h, g) {
    const t = g.first as Record<string, number>;
    assert.equal(t.missing, 0);
    assert.equal(t.twice, 0);
    const ok = t[String(STATUS_SUCCESS)] ?? 0;
    const removed = t[String(STATUS_DEVICE_REMOVED)] ?? 0;
    assert.ok(ok >= 300);
    assert.equal(ok + removed, g.sent, 'every transaction completed once, as success or device removed');
    assert.deepEqual(h.trace, [
      'S:Opened',
      'S:Started',
      'S:PostStarted',
      'S:Suspend',
      'S:Closed',
      'S:Opened',
      'S:Started',
      'S:PostStarted',
      'S:Suspend',
      'S:Closed',
    ]);
  },
};

const rescindMidTraffic: KmclScenario = {
  name: 'the host rescinds mid-traffic',
  async host(ctx) {
    const trace: string[] = [];
    const at300 = deferred();
    const { st, onPacket } = inOrder(ctx.S, {
      echo: true,
      onSeq: (seq) => {
        if (seq === 299) at300.resolve();
      },
    });
    const ch = serve(ctx, { onPacket, trace });
    await at300.promise;
    await ctx.S.VmbChannelDisable(ch);
    ctx.S.VmbChannelCleanup(ch);
    const offers = ctx.hostBus.server(1)!.channels().length;
    await ctx.side.waitFor(DONE);
    return { trace, bad: st.bad, offers };
  },
  async guest(ctx) {
    const { C } = ctx;
    const trace: string[] = [];
    const closed = deferred();
    const ch = await connect(ctx, { trace, closed: () => closed.resolve() });
    const s = stream(C, ch, { total: 1_000_000, window: 16, flags: WAIT });
    await closed.promise;
    await s.done;
    const sent = s.sent();
    await until(() => kmclChannelInfo(ch).state === 'disabled', 'the rescind disabled the channel');
    const ringPages = ctx.bus.allocator.allocatedPageCount;
    C.VmbChannelCleanup(ch);
    ctx.side.notify(DONE);
    return { trace, tally: tally(s.statuses, s.calls, sent), sent, ringPages };
  },
  check(h, g) {
    assert.equal(h.bad, -1);
    assert.equal(h.offers, 0, 'the guest released the relid');
    assert.equal(g.ringPages, 0, 'ring pages freed');
    assert.deepEqual(h.trace, ['S:Opened', 'S:Started', 'S:PostStarted', 'S:Suspend', 'S:Closed']);
    assert.deepEqual(g.trace, ['C:Opened', 'C:Started', 'C:PostStarted', 'C:Suspend', 'C:Closed']);
    const t = g.tally as Record<string, number>;
    assert.equal(t.missing, 0);
    assert.equal(t.twice, 0);
    assert.ok((t[String(STATUS_SUCCESS)] ?? 0) >= 300 - 16, `only ${t[String(STATUS_SUCCESS)]} succeeded`); // 16 in flight at most
    assert.equal((t[String(STATUS_SUCCESS)] ?? 0) + (t[String(STATUS_DEVICE_REMOVED)] ?? 0), g.sent);
  },
};

const gpadlOrdering: KmclScenario = {
  name: 'GPADL map, unmap, delete ordering',
  async host(ctx) {
    const { S } = ctx;
    let handle = 0;
    let mapStatus = -1;
    const mapped = deferred();
    const ch = serve(ctx, {
      onPacket: (c, pkt, buf) => {
        handle = u32(buf);
        const r = S.VmbChannelMapGpadl(c, 0, handle);
        mapStatus = r.status;
        if (r.Mdl !== undefined) r.Mdl.write(100, pattern(8000, 5));
        S.VmbChannelPacketComplete(pkt, null, 0);
        mapped.resolve();
      },
    });
    await mapped.promise;
    await ctx.side.waitFor(2); // the guest started deleting
    await new Promise((r) => setTimeout(r, 30));
    ctx.side.notify(3);
    S.VmbChannelUnmapGpadl(ch, handle);
    await ctx.side.waitFor(4); // deleted
    const remap = S.VmbChannelMapGpadl(ch, 0, handle).status;
    await hostFinish(ctx, ch);
    return { mapStatus, remap };
  },
  async guest(ctx) {
    const { C, bus } = ctx;
    const ch = await connect(ctx);
    const pfns = bus.allocator.allocate(4, 'contiguous');
    const buffer = bus.memory.view(pfns[0]! * 4096, 4 * 4096);
    buffer.fill(0);
    const g = await C.VmbChannelCreateGpadlFromBuffer(ch, 0, buffer, buffer.length);
    must(g.status, 'create GPADL');
    const sent = deferred();
    const p = C.VmbPacketAllocate(ch)!;
    C.VmbPacketSetCompletionRoutine(p, (pk) => {
      C.VmbPacketFree(pk);
      sent.resolve();
    });
    const msg = new Uint8Array(4);
    new DataView(msg.buffer).setUint32(0, g.GpadlHandle, true);
    must(C.VmbPacketSend(p, msg, 4, null, WAIT), 'send handle');
    await sent.promise;
    const expect = pattern(8000, 5);
    const seen = buffer.subarray(100, 8100).every((b, i) => b === expect[i]);
    const order: string[] = [];
    ctx.side.notify(2);
    const unmapping = ctx.side.waitFor(3).then(() => order.push('host-unmapping'));
    await C.VmbChannelDeleteGpadl(ch, g.GpadlHandle);
    order.push('deleted');
    await unmapping;
    ctx.side.notify(4);
    bus.allocator.free(pfns);
    await guestFinish(ctx, ch);
    return { seen, order };
  },
  check(h, g) {
    assert.equal(h.mapStatus, STATUS_SUCCESS);
    assert.equal(g.seen, true, 'the guest sees what the host wrote through the mapping');
    assert.deepEqual(g.order, ['host-unmapping', 'deleted'], 'DeleteGpadl waits for the unmap');
    assert.equal(h.remap, STATUS_INVALID_PARAMETER_3, 'a deleted GPADL cannot be mapped');
  },
};

const syncTimeout: KmclScenario = {
  name: 'synchronous request timeout, then a synchronous request answered',
  async host(ctx) {
    const { S } = ctx;
    const held: VMBPACKETCOMPLETION[] = [];
    const ch = serve(ctx, {
      onPacket: (_c, pkt, buf) => {
        if (buf[0] === 1) held.push(pkt);
        else S.VmbChannelPacketComplete(pkt, Uint8Array.of(buf[0]! * 2, 7), 2);
      },
      suspend: () => {
        for (const p of held.splice(0)) S.VmbChannelPacketComplete(p, null, 0);
      },
    });
    await hostFinish(ctx, ch);
    return {};
  },
  async guest(ctx) {
    const { C } = ctx;
    const results: unknown[] = [];
    const ch = await connect(ctx, {
      postStarted: async (c) => {
        const t0 = Date.now();
        const r1 = await C.VmbChannelSendSynchronousRequest(
          c,
          Uint8Array.of(1),
          1,
          null,
          WAIT,
          new Uint8Array(8),
          8,
          -300_000n,
        );
        results.push(r1.status, Date.now() - t0 >= 25);
        const reply = new Uint8Array(16);
        const r2 = await C.VmbChannelSendSynchronousRequest(
          c,
          Uint8Array.of(21),
          1,
          null,
          WAIT,
          reply,
          16,
          null,
        );
        results.push(r2.status, r2.CompletionBufferSize, reply[0], reply[1]);
      },
    });
    await guestFinish(ctx, ch);
    return { results };
  },
  check(_h, g) {
    assert.deepEqual(g.results, [STATUS_CANCELLED, true, STATUS_SUCCESS, 8, 42, 7]);
  },
};

const pipeMode: KmclScenario = {
  name: 'pipe mode',
  async host(ctx) {
    const { S } = ctx;
    const got: number[][] = [];
    const opened = deferred<VMBCHANNEL>();
    const ch = serve(ctx, {
      configure: (c) =>
        must(S.VmbServerChannelInitSetFlags(c, VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE), 'pipe'),
      postStarted: (c) => opened.resolve(c),
      onPacket: (_c, pkt, buf, len) => {
        got.push([len, buf.length, buf[0] ?? -1, buf[len - 1] ?? -1]);
        S.VmbChannelPacketComplete(pkt, null, 0);
        if (got.length === 4) {
          for (const n of [3, 0, 1000]) {
            const p = S.VmbPacketAllocate(ch)!;
            must(S.VmbPacketSend(p, pattern(n, n), n, null, 0), 'host pipe send');
          }
        }
      },
    });
    await opened.promise;
    const wire = ctx.hostBus.server(1)!.state.channels[0]!.offer.channelFlags;
    const pipeInfo = kmclChannelInfo(ch).pipe;
    await hostFinish(ctx, ch);
    return { got, wire, pipeInfo };
  },
  async guest(ctx) {
    const { C } = ctx;
    const got: number[][] = [];
    const three = deferred();
    const ch = await connect(ctx, {
      configure: (c) => must(C.VmbChannelInitSetFlags(c, VMBUS_CHANNEL_INIT_FLAG_IS_PIPE), 'pipe'),
      onPacket: (_c, pkt, buf, len) => {
        const want = pattern(len, len);
        got.push([len, buf.subarray(0, len).every((b, i) => b === want[i]) ? 1 : 0]);
        C.VmbChannelPacketComplete(pkt, null, 0);
        if (got.length === 3) three.resolve();
      },
    });
    for (const n of [1, 5, 100, 4000]) {
      const p = C.VmbPacketAllocate(ch)!;
      const b = pattern(n, 9);
      b[0] = n & 0xff;
      b[n - 1] = 0xab;
      must(C.VmbPacketSend(p, b, n, null, 0), 'pipe send');
    }
    const waitRefused = C.VmbPacketSend(C.VmbPacketAllocate(ch)!, new Uint8Array(8), 8, null, WAIT);
    await three.promise;
    await guestFinish(ctx, ch);
    return { got, waitRefused };
  },
  check(h, g) {
    assert.deepEqual(h.got, [
      [1, 1, 0xab, 0xab],
      [5, 5, 5, 0xab],
      [100, 100, 100, 0xab],
      [4000, 4000, 4000 & 0xff, 0xab],
    ]);
    assert.equal(((h.wire as number) & 0x10) !== 0, true, 'offered with NAMED_PIPE_MODE');
    assert.equal(h.pipeInfo, true);
    assert.deepEqual(g.got, [
      [3, 1],
      [0, 1],
      [1000, 1],
    ]);
    assert.notEqual(g.waitRefused, STATUS_SUCCESS, 'no transactions on a pipe');
  },
};

export const SCENARIOS: readonly KmclScenario[] = [
  echoScenario,
  requestResponse,
  externalMiB,
  backPressure,
  pauseStart,
  disableOutstanding,
  peerClose,
  rescindMidTraffic,
  gpadlOrdering,
  syncTimeout,
  pipeMode,
];

export function scenarioByName(name: string): KmclScenario {
  const s = SCENARIOS.find((x) => x.name === name);
  if (s === undefined) throw new Error(`no scenario ${name}`);
  return s;
}
