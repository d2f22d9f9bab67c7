// Outgoing packet objects and incoming tokens (spec 3.1-3.2): back-pressure and ordering, the
// transaction quota, deferral, failure, batches, pooling and the contract violations.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { currentExecutionContext } from '../../src/kmcl/context.js';
import {
  KmclContractViolation,
  kmclChannelInfo,
  PACKET_OBJECT_OVERHEAD,
  STATUS_INVALID_PARAMETER_2,
  STATUS_INVALID_PARAMETER_3,
  STATUS_INVALID_PARAMETER_5,
  STATUS_SUCCESS,
  type VMBPACKET,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import { expectStatus, head, makeRig, openPair } from './harness.js';

const WAIT = VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION;

function seq(n: number, size = 8): Uint8Array {
  const b = new Uint8Array(size);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
}

function seqOf(buf: Uint8Array): number {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(0, true);
}

describe('kmcl packets', () => {
  test('100k sends against a 2-page ring: back-pressure, nothing lost, order kept', async () => {
    const rig = makeRig({ ringAllocation: 'scattered' });
    const total = 100_000;
    let next = 0;
    let received = 0;
    let outOfOrder = 0;
    let maxQueued = 0;
    const { client } = await openPair(
      rig,
      {
        configure: (ch) => expectStatus(rig.S.VmbChannelInitSetMaximumPacketSize(ch, 64), STATUS_SUCCESS),
        onPacket: (_ch, pkt, buf) => {
          if (seqOf(buf) !== received) outOfOrder++;
          received++;
          rig.S.VmbChannelPacketComplete(pkt, null, 0);
        },
      },
      {
        configure: (ch) => {
          expectStatus(rig.C.VmbClientChannelInitSetRingBufferPageCount(ch, 2, 2), STATUS_SUCCESS);
          expectStatus(rig.C.VmbChannelInitSetMaximumPacketSize(ch, 64), STATUS_SUCCESS);
        },
      },
    );
    const { C } = rig;
    const payload = new Uint8Array(24);
    const view = new DataView(payload.buffer);
    const resend = (p: VMBPACKET) => {
      if (next >= total) {
        C.VmbPacketFree(p);
        return;
      }
      view.setUint32(0, next++, true);
      expectStatus(C.VmbPacketSend(p, payload, payload.length, null, 0), STATUS_SUCCESS);
      const q = kmclChannelInfo(client).queuedOutgoing;
      if (q > maxQueued) maxQueued = q;
    };
    for (let i = 0; i < 256; i++) {
      const p = C.VmbPacketAllocate(client)!;
      C.VmbPacketSetCompletionRoutine(p, (pk) => resend(pk));
      resend(p);
    }
    await rig.idle();
    assert.equal(received, total);
    assert.equal(outOfOrder, 0);
    assert.ok(maxQueued > 0, 'the ring filled and sends were queued');
    assert.equal(kmclChannelInfo(client).queuedOutgoing, 0);
    assert.equal(rig.peerErrors.length, 0);
  });

  test('20k transactions with completions through small rings in both directions', async () => {
    const rig = makeRig();
    const total = 20_000;
    let completed = 0;
    let mismatched = 0;
    const { client } = await openPair(
      rig,
      {
        onPacket: (_ch, pkt, buf, len) => {
          // Answer with the request's sequence number + 1.
          const out = seq(seqOf(buf) + 1, len);
          rig.S.VmbChannelPacketComplete(pkt, out, out.length);
        },
      },
      {
        configure: (ch) =>
          expectStatus(rig.C.VmbClientChannelInitSetRingBufferPageCount(ch, 2, 2), STATUS_SUCCESS),
      },
    );
    const { C } = rig;
    let sent = 0;
    const inflight = new Map<VMBPACKET, number>();
    const send = (p: VMBPACKET) => {
      const n = sent++;
      inflight.set(p, n);
      expectStatus(C.VmbPacketSend(p, seq(n), 8, null, WAIT), STATUS_SUCCESS);
    };
    for (let i = 0; i < 64; i++) {
      const p = C.VmbPacketAllocate(client)!;
      C.VmbPacketSetCompletionRoutine(p, (pk, status, buf) => {
        assert.equal(status, STATUS_SUCCESS);
        if (buf === null || seqOf(buf) !== inflight.get(pk)! + 1) mismatched++;
        completed++;
        if (sent < total) send(pk);
        else C.VmbPacketFree(pk);
      });
      send(p);
    }
    await rig.idle();
    assert.equal(completed, total);
    assert.equal(mismatched, 0);
    assert.equal(kmclChannelInfo(client).awaitingCompletion, 0);
  });

  test('completion sent only when the sender asked; a completion routine runs exactly once', async () => {
    const rig = makeRig();
    const { client } = await openPair(rig);
    const calls: [number, number][] = [];
    for (const flags of [0, WAIT]) {
      const p = rig.C.VmbPacketAllocate(client)!;
      rig.C.VmbPacketSetCompletionRoutine(p, (pk, status, _buf, len) => {
        calls.push([status, len]);
        rig.C.VmbPacketFree(pk);
      });
      expectStatus(rig.C.VmbPacketSend(p, seq(1), 8, null, flags), STATUS_SUCCESS);
    }
    await rig.idle();
    // The non-waiting packet completes when it is in the ring (no payload), the waiting one
    // with the echoed 8 bytes; the echo server completes both, but only one COMP goes back.
    assert.deepEqual(calls, [
      [STATUS_SUCCESS, 0],
      [STATUS_SUCCESS, 8],
    ]);
    assert.equal(rig.peerErrors.length, 0);
  });

  test('transaction quota: delivery stops at the quota and restarts only when a packet completes', async () => {
    const rig = makeRig();
    const held: VMBPACKETCOMPLETION[] = [];
    const { server, client } = await openPair(rig, { onPacket: (_ch, pkt) => held.push(pkt) });
    rig.S.VmbChannelSetTransactionQuota(server, 2);
    assert.throws(() => rig.S.VmbChannelSetTransactionQuota(server, 0), KmclContractViolation);
    for (let i = 0; i < 6; i++) {
      const p = rig.C.VmbPacketAllocate(client)!;
      expectStatus(rig.C.VmbPacketSend(p, seq(i), 8, null, 0), STATUS_SUCCESS);
    }
    await rig.idle();
    assert.equal(held.length, 2);
    rig.S.VmbChannelSetTransactionQuota(server, 4);
    await rig.idle();
    assert.equal(held.length, 2, 'raising the quota does not restart a stalled queue');
    rig.S.VmbChannelPacketComplete(held[0]!, null, 0);
    await rig.idle();
    assert.equal(held.length, 5, 'one completion restarts it, up to the new quota (4 outstanding)');
    rig.S.VmbChannelSetTransactionQuota(server, 1);
    rig.S.VmbChannelPacketComplete(held[1]!, null, 0);
    await rig.idle();
    assert.equal(held.length, 5, 'lowered below the outstanding count: nothing more is taken');
    for (const t of held.slice(2)) rig.S.VmbChannelPacketComplete(t, null, 0);
    await rig.idle();
    assert.equal(held.length, 6);
  });

  test('DeferToPassive: re-delivered in blocking context, later packets wait for it', async () => {
    const rig = makeRig();
    const log: string[] = [];
    let deferred = false;
    const { client } = await openPair(rig, {
      onPacket: (_ch, pkt, buf) => {
        const n = seqOf(buf);
        log.push(`${n}:${currentExecutionContext()}`);
        if (n === 0 && !deferred) {
          deferred = true;
          rig.S.VmbChannelPacketDeferToPassive(pkt);
          assert.throws(() => rig.S.VmbChannelPacketComplete(pkt, null, 0), KmclContractViolation);
          return;
        }
        rig.S.VmbChannelPacketComplete(pkt, null, 0);
        assert.throws(() => rig.S.VmbChannelPacketDeferToPassive(pkt), KmclContractViolation);
      },
    });
    for (let i = 0; i < 3; i++) {
      const p = rig.C.VmbPacketAllocate(client)!;
      expectStatus(rig.C.VmbPacketSend(p, seq(i), 8, null, 0), STATUS_SUCCESS);
    }
    await rig.idle();
    assert.deepEqual(log, ['0:nonblocking', '0:blocking', '1:nonblocking', '2:nonblocking']);
  });

  test('PacketFail consumes the token, stops the incoming queue until Pause/Start', async () => {
    const rig = makeRig();
    const got: number[] = [];
    const { server, client } = await openPair(rig, {
      onPacket: (_ch, pkt, buf) => {
        const n = seqOf(buf);
        got.push(n);
        if (n === 1) {
          rig.S.VmbChannelPacketFail(pkt);
          assert.throws(() => rig.S.VmbChannelPacketComplete(pkt, null, 0), /already completed/);
          return;
        }
        rig.S.VmbChannelPacketComplete(pkt, null, 0);
      },
    });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const p = rig.C.VmbPacketAllocate(client)!;
      rig.C.VmbPacketSetCompletionRoutine(p, (pk, st) => {
        statuses.push(st);
        rig.C.VmbPacketFree(pk);
      });
      expectStatus(rig.C.VmbPacketSend(p, seq(i), 8, null, WAIT), STATUS_SUCCESS);
    }
    await rig.idle();
    assert.deepEqual(got, [0, 1]);
    assert.equal(kmclChannelInfo(server).incomingStopped, true);
    assert.equal(statuses.length, 1, 'the failed packet gets no completion');
    await rig.S.VmbChannelPause(server);
    rig.S.VmbChannelStart(server);
    await rig.idle();
    assert.deepEqual(got, [0, 1, 2, 3]);
    assert.equal(statuses.length, 3);
  });

  test('ProcessingComplete runs once per drained batch with the batch size', async () => {
    const rig = makeRig();
    const batches: number[] = [];
    const { client } = await openPair(rig, { onBatch: (_ch, n) => batches.push(n) });
    for (let i = 0; i < 5; i++) {
      const p = rig.C.VmbPacketAllocate(client)!;
      expectStatus(rig.C.VmbPacketSend(p, seq(i), 8, null, 0), STATUS_SUCCESS);
    }
    await rig.idle();
    assert.deepEqual(batches, [5]);
    const p = rig.C.VmbPacketAllocate(client)!;
    expectStatus(rig.C.VmbPacketSend(p, seq(9), 8, null, 0), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(batches, [5, 1]);
  });

  test('contract violations: double completion, use after free, send in flight, free in flight', async () => {
    const rig = makeRig();
    const tokens: VMBPACKETCOMPLETION[] = [];
    const { client } = await openPair(rig, { onPacket: (_ch, pkt) => tokens.push(pkt) });
    const { C, S } = rig;
    const p = C.VmbPacketAllocate(client)!;
    C.VmbPacketSetCompletionRoutine(p, () => {});
    expectStatus(C.VmbPacketSend(p, seq(0), 8, null, WAIT), STATUS_SUCCESS);
    assert.throws(() => C.VmbPacketSend(p, seq(0), 8, null, WAIT), {
      name: 'KmclContractViolation',
      code: 'bad-state',
    });
    assert.throws(() => C.VmbPacketFree(p), { code: 'bad-state' });
    await rig.idle();
    S.VmbChannelPacketComplete(tokens[0]!, null, 0);
    assert.throws(() => S.VmbChannelPacketComplete(tokens[0]!, null, 0), { code: 'double-completion' });
    assert.throws(() => S.VmbChannelPacketGetExternalData(tokens[0]!, 0), { code: 'double-completion' });
    await rig.idle();
    C.VmbPacketFree(p);
    assert.throws(() => C.VmbPacketSend(p, seq(0), 8, null, 0), { code: 'use-after-free' });
    assert.throws(() => C.VmbPacketGetPointer(p), { code: 'use-after-free' });
    assert.throws(() => C.VmbPacketFree(p), { code: 'use-after-free' });
    // The slot is reused by the next allocation, under a new handle.
    const q = C.VmbPacketAllocate(client)!;
    assert.notEqual(q, p);
    assert.equal((q as number) % 2 ** 18, (p as number) % 2 ** 18);
    assert.throws(() => C.VmbPacketFree(p), { code: 'use-after-free' });
    assert.throws(() => S.VmbChannelPacketComplete(12345 as VMBPACKETCOMPLETION, null, 0), {
      code: 'bad-handle',
    });
  });

  test('packet accessors: pointer, channel; the default completion routine frees the packet', async () => {
    const rig = makeRig();
    const { client } = await openPair(rig);
    const { C } = rig;
    const p = C.VmbPacketAllocate(client)!;
    assert.equal(C.VmbPacketGetPointer(p), null);
    C.VmbPacketSetPointer(p, { tag: 1 });
    assert.deepEqual(C.VmbPacketGetPointer(p), { tag: 1 });
    assert.equal(C.VmbPacketGetChannel(p), client);
    expectStatus(C.VmbPacketSend(p, seq(0), 8, null, WAIT), STATUS_SUCCESS);
    await rig.idle();
    assert.throws(() => C.VmbPacketGetPointer(p), { code: 'use-after-free' });
  });

  test('VmbPacketInitialize: caller memory of SizeofPacket bytes; a completion routine is required', async () => {
    const rig = makeRig();
    const { client } = await openPair(rig);
    const { C } = rig;
    const size = C.VmbChannelSizeofPacket(client);
    assert.ok(size > PACKET_OBJECT_OVERHEAD + 4096);
    const storage = new Uint8Array(size);
    expectStatus(C.VmbPacketInitialize(client, storage, size - 1), STATUS_INVALID_PARAMETER_3);
    expectStatus(C.VmbPacketInitialize(client, new Uint8Array(8), size), STATUS_INVALID_PARAMETER_2);
    expectStatus(C.VmbPacketInitialize(client, storage, size), STATUS_SUCCESS);
    assert.throws(() => C.VmbPacketSend(storage, seq(1), 8, null, 0), /completion routine/);
    const done: number[][] = [];
    C.VmbPacketSetCompletionRoutine(storage, (pk, st, buf) => {
      assert.equal(pk, storage);
      done.push([st, ...head(buf, 1)]);
    });
    for (let i = 0; i < 3; i++) {
      expectStatus(C.VmbPacketSend(storage, seq(i), 8, null, WAIT), STATUS_SUCCESS);
      await rig.idle();
    }
    assert.deepEqual(done, [
      [STATUS_SUCCESS, 0],
      [STATUS_SUCCESS, 1],
      [STATUS_SUCCESS, 2],
    ]);
    assert.throws(() => C.VmbPacketFree(storage), /caller memory/);
  });

  test('send argument errors: flags, buffer length over the maximum packet size', async () => {
    const rig = makeRig();
    const { server } = await openPair(rig);
    const { S } = rig;
    const p = S.VmbPacketAllocate(server)!;
    expectStatus(S.VmbPacketSend(p, seq(0), 8, null, 0x80), STATUS_INVALID_PARAMETER_5);
    expectStatus(S.VmbPacketSend(p, new Uint8Array(5000), 5000, null, 0), STATUS_INVALID_PARAMETER_3);
    expectStatus(S.VmbPacketSend(p, new Uint8Array(4), 8, null, 0), STATUS_INVALID_PARAMETER_2);
    // The refused sends left the packet idle and usable.
    expectStatus(S.VmbPacketSend(p, seq(0), 8, null, 0), STATUS_SUCCESS);
    await rig.idle();
  });
});
