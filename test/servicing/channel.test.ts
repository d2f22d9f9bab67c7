// Servicing of a server channel over the loopback port: the host's KMCL provider and its channel
// are saved (a full ring, queued sends, transactions awaiting the guest), torn down, and restored
// into a NEW provider and channel while the guest keeps running; every packet is accounted for
// exactly once and in order. Also: the chunked SaveContinue protocol through the table, refusal
// of mutated saved states without a half-restored channel, and rollback when a VSP callback fails.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  KmclProvider,
  kmclChannelInfo,
  NT_SUCCESS,
  ntStatusName,
  queryInterface,
  STATUS_BUFFER_OVERFLOW,
  STATUS_BUFFER_TOO_SMALL,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_MORE_PROCESSING_REQUIRED,
  STATUS_SUCCESS,
  STATUS_UNSUCCESSFUL,
  type VMBCHANNEL,
  type VMBPACKET,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import { CHUNK_HEADER_SIZE } from '../../src/kmcl/saved-state.js';
import { expectStatus, makeClient, makeRig, makeServer, type Rig } from '../kmcl/harness.js';

const WAIT = VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION;

function u32(n: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
}
function readU32(b: Uint8Array | null): number {
  assert.ok(b !== null && b.length >= 4);
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);
}

/** What the VSP under test records. */
interface Log {
  /** Sequence numbers of host transactions completed by the guest (in completion order). */
  completed: number[];
  /** Sequence numbers of guest messages the host received (in order). */
  received: number[];
  /** Statuses other than success seen by completion routines. */
  failures: string[];
}

/** A host-side VSP: sends numbered transactions, records completions and guest messages. */
function vsp(rig: Rig, S: KMCL_SERVER_INTERFACE_V1, log: Log, restoreFails?: number) {
  let restored = 0;
  const routine = (pk: VMBPACKET, status: number, buf: Uint8Array | null) => {
    if (status !== STATUS_SUCCESS) log.failures.push(ntStatusName(status));
    else {
      const seq = S.VmbPacketGetPointer(pk) as number;
      assert.equal(readU32(buf), seq, 'the completion belongs to this transaction');
      log.completed.push(seq);
    }
    S.VmbPacketFree(pk);
  };
  const ch = makeServer(
    { ...rig, S },
    {
      noStart: true,
      onPacket: (_c, pkt, buf, len) => {
        assert.equal(len, 8);
        log.received.push(readU32(buf));
        S.VmbChannelPacketComplete(pkt, null, 0);
      },
      configure: (c) => {
        expectStatus(
          S.VmbServerChannelInitSetSaveRestorePacketCallbacks(
            c,
            (_c, pk, buf, size) => {
              if (size === 0) return { status: STATUS_BUFFER_TOO_SMALL, BytesNeeded: 4 };
              new DataView(buf!.buffer, buf!.byteOffset).setUint32(
                0,
                S.VmbPacketGetPointer(pk) as number,
                true,
              );
              return { status: STATUS_SUCCESS, BytesNeeded: 4 };
            },
            (c2, lib, libSize, save, saveSize) => {
              assert.equal(saveSize, 4);
              if (restoreFails !== undefined && restored++ === restoreFails) return STATUS_UNSUCCESSFUL;
              const p = S.VmbPacketAllocate(c2)!;
              const st = S.VmbPacketRestore(p, lib, libSize);
              if (!NT_SUCCESS(st)) return st;
              S.VmbPacketSetPointer(p, new DataView(save.buffer, save.byteOffset).getUint32(0, true));
              S.VmbPacketSetCompletionRoutine(p, routine);
              return STATUS_SUCCESS;
            },
          ),
          STATUS_SUCCESS,
        );
      },
    },
  );
  const send = (seq: number) => {
    const p = S.VmbPacketAllocate(ch)!;
    S.VmbPacketSetPointer(p, seq);
    S.VmbPacketSetCompletionRoutine(p, routine);
    expectStatus(S.VmbPacketSend(p, u32(seq), 8, null, WAIT), STATUS_SUCCESS, `send ${seq}`);
  };
  return { ch, send };
}

function serverTable(host: KmclProvider): KMCL_SERVER_INTERFACE_V1 {
  const q = queryInterface<KMCL_SERVER_INTERFACE_V1>(
    host,
    KMCL_SERVER_INTERFACE_TYPE,
    KMCL_SERVER_INTERFACE_V1_SIZE,
    KMCL_SERVER_INTERFACE_VERSION_V1,
  );
  return q.Interface!;
}

/** Saves through the table with `size`-byte buffers; returns the chunks. */
function saveAll(S: KMCL_SERVER_INTERFACE_V1, ch: VMBCHANNEL, size: number): Uint8Array[] {
  expectStatus(S.VmbChannelSaveBegin(ch), STATUS_SUCCESS, 'SaveBegin');
  const chunks: Uint8Array[] = [];
  try {
    for (;;) {
      const buf = new Uint8Array(size);
      const r = S.VmbChannelSaveContinue(ch, buf, size);
      if (r.status === STATUS_BUFFER_TOO_SMALL) {
        assert.equal(r.BytesFilled, 0);
        return saveAllRetry(S, ch, r.BytesRequired, chunks);
      }
      chunks.push(buf.slice(0, r.BytesFilled));
      if (r.status === STATUS_SUCCESS) return chunks;
      expectStatus(r.status, STATUS_BUFFER_OVERFLOW);
    }
  } finally {
    S.VmbChannelSaveEnd(ch);
  }
}
function saveAllRetry(S: KMCL_SERVER_INTERFACE_V1, ch: VMBCHANNEL, size: number, chunks: Uint8Array[]) {
  const buf = new Uint8Array(size);
  const r = S.VmbChannelSaveContinue(ch, buf, size);
  expectStatus(r.status, STATUS_SUCCESS, 'BytesRequired is enough to finish');
  chunks.push(buf.slice(0, r.BytesFilled));
  return chunks;
}

/** The guest: a client that echoes host transactions and sends its own numbered messages. */
function guest(rig: Rig) {
  const c = makeClient(rig);
  let next = 0;
  const send = (n: number) => {
    for (let i = 0; i < n; i++) {
      const p = rig.C.VmbPacketAllocate(c)!;
      expectStatus(rig.C.VmbPacketSend(p, u32(next++), 8, null, 0), STATUS_SUCCESS);
    }
  };
  return { c, send, sent: () => next };
}

describe('servicing: a server channel saved and restored into a new host provider', () => {
  test('full ring + queued sends + awaiting transactions: all complete once, in order, guest keeps sending', async () => {
    const rig = makeRig();
    const log: Log = { completed: [], received: [], failures: [] };
    const a = vsp(rig, rig.S, log);
    const g = guest(rig);
    expectStatus(rig.S.VmbChannelEnable(a.ch), STATUS_SUCCESS);
    rig.S.VmbChannelStart(a.ch);
    expectStatus(rig.C.VmbChannelEnable(g.c), STATUS_SUCCESS);
    await rig.idle();
    assert.equal(kmclChannelInfo(a.ch).flowing, true);
    // The guest stops reading: the host's transactions fill the ring, then queue.
    await rig.C.VmbChannelPause(g.c);
    const TOTAL = 4000;
    for (let i = 0; i < TOTAL; i++) a.send(i);
    g.send(50);
    await rig.idle();
    await rig.S.VmbChannelPause(a.ch);
    const before = kmclChannelInfo(a.ch);
    assert.ok(before.queuedOutgoing > 0, 'some sends are queued (ring full)');
    assert.ok(before.awaitingCompletion > before.queuedOutgoing, 'some transactions are in the ring');
    const receivedBefore = log.received.length;

    const chunks = saveAll(rig.S, a.ch, 4096);
    assert.ok(chunks.length > 1, 'several chunks');
    assert.equal(kmclChannelInfo(a.ch).state, 'disabled', 'the saved channel handed its state off');
    assert.equal(log.failures.length, 0, 'no completion routine ran for saved packets');
    await rig.S.VmbChannelDisable(a.ch);
    rig.S.VmbChannelCleanup(a.ch);

    // The guest keeps running and sending while no host serves the channel.
    g.send(50);
    rig.C.VmbChannelStart(g.c);
    await rig.idle();
    assert.equal(kmclChannelInfo(g.c).state, 'open', 'the guest never saw a rescind');

    // A new host provider (a new host process) restores the channel.
    const host2 = KmclProvider.forHost(rig.lb);
    const S2 = serverTable(host2);
    const b = vsp(rig, S2, log);
    for (let i = 0; i < chunks.length; i++) {
      const st = S2.VmbChannelRestoreFromBuffer(b.ch, chunks[i]!, chunks[i]!.length);
      expectStatus(
        st,
        i === chunks.length - 1 ? STATUS_SUCCESS : STATUS_MORE_PROCESSING_REQUIRED,
        `chunk ${i}`,
      );
    }
    const after = kmclChannelInfo(b.ch);
    assert.equal(after.state, 'open');
    assert.equal(after.queuedOutgoing, before.queuedOutgoing);
    assert.equal(after.awaitingCompletion, before.awaitingCompletion);
    expectStatus(S2.VmbChannelEnable(b.ch), STATUS_SUCCESS, 'Enable confirms the restored offer');
    S2.VmbChannelStart(b.ch);
    await rig.idle();
    for (let i = TOTAL; i < TOTAL + 100; i++) b.send(i);
    g.send(50);
    await rig.idle();

    assert.deepEqual(log.failures, []);
    assert.deepEqual(
      log.completed,
      Array.from({ length: TOTAL + 100 }, (_, i) => i),
    );
    assert.deepEqual(
      log.received,
      Array.from({ length: g.sent() }, (_, i) => i),
    );
    assert.ok(receivedBefore < g.sent());
    assert.equal(kmclChannelInfo(b.ch).awaitingCompletion, 0);
    assert.equal(rig.peerErrors.length, 0);
  });

  test('100 save/restore cycles into new providers while both sides keep sending', async () => {
    const rig = makeRig();
    const log: Log = { completed: [], received: [], failures: [] };
    let cur = vsp(rig, rig.S, log);
    let S = rig.S;
    const g = guest(rig);
    expectStatus(S.VmbChannelEnable(cur.ch), STATUS_SUCCESS);
    S.VmbChannelStart(cur.ch);
    expectStatus(rig.C.VmbChannelEnable(g.c), STATUS_SUCCESS);
    await rig.idle();
    let seq = 0;
    for (let cycle = 0; cycle < 100; cycle++) {
      for (let i = 0; i < 20; i++) cur.send(seq++);
      g.send(20);
      // Stop half-way through delivery so some work is still in flight at the save.
      rig.lb.scheduler.runSteps(cycle % 7);
      await S.VmbChannelPause(cur.ch);
      const chunks = saveAll(S, cur.ch, 256 + cycle * 8);
      await S.VmbChannelDisable(cur.ch);
      S.VmbChannelCleanup(cur.ch);
      S = serverTable(KmclProvider.forHost(rig.lb));
      cur = vsp(rig, S, log);
      let st = 0;
      for (const c of chunks) st = S.VmbChannelRestoreFromBuffer(cur.ch, c, c.length);
      expectStatus(st, STATUS_SUCCESS, `restore in cycle ${cycle}`);
      expectStatus(S.VmbChannelEnable(cur.ch), STATUS_SUCCESS, `cycle ${cycle}`);
      S.VmbChannelStart(cur.ch);
    }
    await rig.idle();
    assert.deepEqual(log.failures, []);
    assert.deepEqual(
      log.completed,
      Array.from({ length: seq }, (_, i) => i),
    );
    assert.deepEqual(
      log.received,
      Array.from({ length: g.sent() }, (_, i) => i),
    );
    assert.equal(rig.peerErrors.length, 0);
  });

  test('a failing EvtVmbChannelRestorePacket leaves nothing restored; a later restore succeeds', async () => {
    const rig = makeRig();
    const log: Log = { completed: [], received: [], failures: [] };
    const a = vsp(rig, rig.S, log);
    const g = guest(rig);
    expectStatus(rig.S.VmbChannelEnable(a.ch), STATUS_SUCCESS);
    rig.S.VmbChannelStart(a.ch);
    expectStatus(rig.C.VmbChannelEnable(g.c), STATUS_SUCCESS);
    await rig.idle();
    await rig.C.VmbChannelPause(g.c);
    for (let i = 0; i < 20; i++) a.send(i);
    await rig.idle();
    await rig.S.VmbChannelPause(a.ch);
    const chunks = saveAll(rig.S, a.ch, 1 << 20);
    assert.equal(chunks.length, 1);
    const host2 = KmclProvider.forHost(rig.lb);
    const S2 = serverTable(host2);
    const bad = vsp(rig, S2, log, 5);
    expectStatus(S2.VmbChannelRestoreFromBuffer(bad.ch, chunks[0]!, chunks[0]!.length), STATUS_UNSUCCESSFUL);
    const info = kmclChannelInfo(bad.ch);
    assert.equal(info.state, 'disabled');
    assert.equal(info.awaitingCompletion, 0);
    assert.equal(info.queuedOutgoing, 0);
    const good = vsp(rig, S2, log);
    expectStatus(S2.VmbChannelRestoreFromBuffer(good.ch, chunks[0]!, chunks[0]!.length), STATUS_SUCCESS);
    expectStatus(S2.VmbChannelEnable(good.ch), STATUS_SUCCESS);
    S2.VmbChannelStart(good.ch);
    rig.C.VmbChannelStart(g.c);
    await rig.idle();
    assert.deepEqual(
      log.completed,
      Array.from({ length: 20 }, (_, i) => i),
    );
  });

  test('save refuses a flowing channel; an unfinished save lets the channel carry on', async () => {
    const rig = makeRig();
    const log: Log = { completed: [], received: [], failures: [] };
    const a = vsp(rig, rig.S, log);
    const g = guest(rig);
    expectStatus(rig.S.VmbChannelEnable(a.ch), STATUS_SUCCESS);
    rig.S.VmbChannelStart(a.ch);
    expectStatus(rig.C.VmbChannelEnable(g.c), STATUS_SUCCESS);
    await rig.idle();
    expectStatus(rig.S.VmbChannelSaveBegin(a.ch), STATUS_INVALID_DEVICE_STATE);
    await rig.S.VmbChannelPause(a.ch);
    a.send(0);
    expectStatus(rig.S.VmbChannelSaveBegin(a.ch), STATUS_SUCCESS);
    expectStatus(rig.S.VmbChannelSaveBegin(a.ch), STATUS_INVALID_DEVICE_STATE, 'one save at a time');
    const small = rig.S.VmbChannelSaveContinue(a.ch, new Uint8Array(CHUNK_HEADER_SIZE), CHUNK_HEADER_SIZE);
    expectStatus(small.status, STATUS_BUFFER_TOO_SMALL);
    assert.ok(small.BytesRequired > CHUNK_HEADER_SIZE);
    const part = rig.S.VmbChannelSaveContinue(a.ch, new Uint8Array(64), 64);
    expectStatus(part.status, STATUS_BUFFER_OVERFLOW);
    assert.equal(part.BytesFilled, 64);
    rig.S.VmbChannelSaveEnd(a.ch);
    assert.equal(kmclChannelInfo(a.ch).state, 'open', 'an unfinished save changes nothing');
    rig.S.VmbChannelStart(a.ch);
    await rig.idle();
    assert.deepEqual(log.completed, [0]);
  });

  test('fuzz: mutated saved states are refused and never leave a half-restored channel', async () => {
    const rig = makeRig();
    const log: Log = { completed: [], received: [], failures: [] };
    const a = vsp(rig, rig.S, log);
    const g = guest(rig);
    expectStatus(rig.S.VmbChannelEnable(a.ch), STATUS_SUCCESS);
    rig.S.VmbChannelStart(a.ch);
    expectStatus(rig.C.VmbChannelEnable(g.c), STATUS_SUCCESS);
    await rig.idle();
    await rig.C.VmbChannelPause(g.c);
    for (let i = 0; i < 30; i++) a.send(i);
    await rig.idle();
    await rig.S.VmbChannelPause(a.ch);
    const real = saveAll(rig.S, a.ch, 1 << 20)[0]!;
    const host2 = KmclProvider.forHost(rig.lb);
    const S2 = serverTable(host2);
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat(real.length - 1), value: fc.integer({ min: 0, max: 255 }) }), {
          minLength: 1,
          maxLength: 3,
        }),
        fc.nat(real.length),
        (edits, cut) => {
          const buf = real.slice(0, Math.max(1, cut));
          let changed = buf.length !== real.length;
          for (const e of edits) {
            if (e.at < buf.length && buf[e.at] !== e.value) {
              buf[e.at] = e.value;
              changed = true;
            }
          }
          if (!changed) return;
          const ch = vsp(rig, S2, log).ch;
          const st = S2.VmbChannelRestoreFromBuffer(ch, buf, buf.length);
          assert.ok(!NT_SUCCESS(st), `refused (${ntStatusName(st)})`);
          const info = kmclChannelInfo(ch);
          assert.equal(info.state, 'disabled');
          assert.equal(info.awaitingCompletion + info.queuedOutgoing, 0);
          S2.VmbChannelCleanup(ch);
        },
      ),
      { numRuns: 300 },
    );
    // The real saved state still restores: no refusal claimed the offer.
    const b = vsp(rig, S2, log);
    expectStatus(S2.VmbChannelRestoreFromBuffer(b.ch, real, real.length), STATUS_SUCCESS);
    expectStatus(S2.VmbChannelEnable(b.ch), STATUS_SUCCESS);
    S2.VmbChannelStart(b.ch);
    rig.C.VmbChannelStart(g.c);
    await rig.idle();
    assert.deepEqual(
      log.completed,
      Array.from({ length: 30 }, (_, i) => i),
    );
  });
});
