// VmbChannelSendSynchronousRequest (spec 3.3) and pipe mode (spec 1.6, wire 2.4).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type KmclContractViolation,
  kmclChannelInfo,
  STATUS_BUFFER_OVERFLOW,
  STATUS_CANCELLED,
  STATUS_DEVICE_REMOVED,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_PARAMETER,
  STATUS_INVALID_PARAMETER_3,
  STATUS_SUCCESS,
  type SyncRequestResult,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
  VMBUS_CHANNEL_INIT_FLAG_IS_PIPE,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE,
} from '../../src/kmcl/index.js';
import { expectStatus, head, makeClient, makeRig, makeServer, openPair, TYPE } from './harness.js';

const WAIT = VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION;
/** A relative KeWait timeout of `ms` milliseconds (negative, 100 ns units). */
const ms = (n: number) => BigInt(-n * 10_000);

describe('kmcl synchronous requests', () => {
  test('from PostStarted: the response lands in the completion buffer', async () => {
    const rig = makeRig();
    let result: SyncRequestResult | null = null;
    const reply = new Uint8Array(16);
    await openPair(
      rig,
      {
        onPacket: (_ch, pkt, buf) => rig.S.VmbChannelPacketComplete(pkt, Uint8Array.of(buf[0]! * 2, 1, 2), 3),
      },
      {
        postStarted: async (ch) => {
          result = await rig.C.VmbChannelSendSynchronousRequest(
            ch,
            Uint8Array.of(21),
            1,
            null,
            WAIT,
            reply,
            16,
            null,
          );
        },
      },
    );
    assert.deepEqual(result, { status: STATUS_SUCCESS, CompletionBufferSize: 8 });
    assert.deepEqual(head(reply, 3), [42, 1, 2]);
  });

  test('timeout cancels the request; a late completion is dropped as a peer error, never delivered twice', async () => {
    const rig = makeRig();
    const held: VMBPACKETCOMPLETION[] = [];
    const { client } = await openPair(rig, { onPacket: (_ch, pkt) => held.push(pkt) });
    const t0 = Date.now();
    const r = await rig.C.VmbChannelSendSynchronousRequest(
      client,
      Uint8Array.of(1),
      1,
      null,
      WAIT,
      new Uint8Array(8),
      8,
      ms(20),
    );
    assert.equal(r.status, STATUS_CANCELLED);
    assert.ok(Date.now() - t0 >= 15);
    assert.equal(kmclChannelInfo(client).awaitingCompletion, 0);
    rig.S.VmbChannelPacketComplete(held[0]!, Uint8Array.of(7), 1);
    await rig.idle();
    assert.equal(rig.peerErrors.length, 1);
    assert.equal(rig.peerErrors[0]!.code, 'unknown-transaction');
    // An absolute timeout (100 ns units since 1601) works the same.
    const abs = BigInt(Date.now() + 15) * 10_000n + 116444736000000000n;
    const r2 = await rig.C.VmbChannelSendSynchronousRequest(
      client,
      Uint8Array.of(2),
      1,
      null,
      WAIT,
      null,
      0,
      abs,
    );
    assert.equal(r2.status, STATUS_CANCELLED);
  });

  test('Timeout 0: sent at once if it fits; STATUS_BUFFER_OVERFLOW and not queued if it does not', async () => {
    const rig = makeRig();
    const { server, client } = await openPair(
      rig,
      {},
      {
        configure: (ch) =>
          expectStatus(rig.C.VmbClientChannelInitSetRingBufferPageCount(ch, 2, 2), STATUS_SUCCESS),
      },
    );
    const r = await rig.C.VmbChannelSendSynchronousRequest(
      client,
      new Uint8Array(8),
      8,
      null,
      0,
      null,
      0,
      0n,
    );
    assert.equal(r.status, STATUS_SUCCESS);
    await rig.idle();
    await rig.S.VmbChannelPause(server);
    let overflow: SyncRequestResult | null = null;
    for (let i = 0; i < 200 && overflow === null; i++) {
      const x = await rig.C.VmbChannelSendSynchronousRequest(
        client,
        new Uint8Array(64),
        64,
        null,
        0,
        null,
        0,
        0n,
      );
      if (x.status !== STATUS_SUCCESS) overflow = x;
    }
    assert.deepEqual(overflow, { status: STATUS_BUFFER_OVERFLOW, CompletionBufferSize: 0 });
    assert.equal(kmclChannelInfo(client).queuedOutgoing, 0);
    rig.S.VmbChannelStart(server);
    await rig.idle();
  });

  test('argument and context rules', async () => {
    const rig = makeRig();
    const codes: string[] = [];
    const { server, client } = await openPair(
      rig,
      {},
      {
        started: (ch) => {
          try {
            void rig.C.VmbChannelSendSynchronousRequest(ch, null, 0, null, WAIT, null, 0, null);
          } catch (e) {
            codes.push((e as KmclContractViolation).code);
          }
        },
        onPacket: (ch, pkt) => {
          try {
            void rig.C.VmbChannelSendSynchronousRequest(ch, null, 0, null, 0, null, 0, null);
          } catch (e) {
            codes.push((e as KmclContractViolation).code);
          }
          // Timeout 0 without the wait flag may be used from any context.
          void rig.C.VmbChannelSendSynchronousRequest(ch, null, 0, null, 0, null, 0, 0n);
          rig.C.VmbChannelPacketComplete(pkt, null, 0);
        },
      },
    );
    const sp = rig.S.VmbPacketAllocate(server)!;
    expectStatus(rig.S.VmbPacketSend(sp, new Uint8Array(8), 8, null, 0), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(codes, ['call-inside-state-callback', 'blocking-call-in-nonblocking-context']);
    const cap = await rig.C.VmbChannelSendSynchronousRequest(
      client,
      null,
      0,
      null,
      WAIT,
      new Uint8Array(12),
      12,
      null,
    );
    assert.equal(cap.status, STATUS_INVALID_PARAMETER);
    // The root may only fire and forget.
    assert.equal(
      (await rig.S.VmbChannelSendSynchronousRequest(server, null, 0, null, WAIT, null, 0, 0n)).status,
      STATUS_INVALID_PARAMETER,
    );
    assert.equal(
      (await rig.S.VmbChannelSendSynchronousRequest(server, null, 0, null, 0, null, 0, null)).status,
      STATUS_INVALID_PARAMETER,
    );
    assert.equal(
      (await rig.S.VmbChannelSendSynchronousRequest(server, new Uint8Array(8), 8, null, 0, null, 0, 0n))
        .status,
      STATUS_SUCCESS,
    );
    const unopened = makeClient(rig);
    assert.equal(
      (await rig.C.VmbChannelSendSynchronousRequest(unopened, null, 0, null, WAIT, null, 0, null)).status,
      STATUS_INVALID_DEVICE_STATE,
    );
    await rig.idle();
  });

  test('a truncated response: STATUS_BUFFER_OVERFLOW with what fits', async () => {
    const rig = makeRig();
    const { client } = await openPair(rig, {
      onPacket: (_ch, pkt) => rig.S.VmbChannelPacketComplete(pkt, new Uint8Array(16).fill(3), 16),
    });
    const out = new Uint8Array(8);
    const r = await rig.C.VmbChannelSendSynchronousRequest(client, null, 0, null, WAIT, out, 8, null);
    assert.deepEqual(r, { status: STATUS_BUFFER_OVERFLOW, CompletionBufferSize: 8 });
    assert.deepEqual(Array.from(out), new Array(8).fill(3));
  });

  test('a request waiting in PostStarted gets STATUS_DEVICE_REMOVED when the channel shuts down; no deadlock', async () => {
    const rig = makeRig();
    let result: SyncRequestResult | null = null;
    const held: VMBPACKETCOMPLETION[] = [];
    const s = makeServer(rig, {
      // The server never answers; it retires what it holds when the guest goes away.
      onPacket: (_ch, pkt) => held.push(pkt),
      suspend: () => {
        for (const t of held.splice(0)) rig.S.VmbChannelPacketComplete(t, null, 0);
      },
    });
    const c = makeClient(rig, {
      postStarted: async (ch) => {
        result = await rig.C.VmbChannelSendSynchronousRequest(
          ch,
          Uint8Array.of(1),
          1,
          null,
          WAIT,
          null,
          0,
          null,
        );
      },
    });
    expectStatus(rig.S.VmbChannelEnable(s), STATUS_SUCCESS);
    rig.S.VmbChannelStart(s);
    expectStatus(rig.C.VmbChannelEnable(c), STATUS_SUCCESS);
    await rig.idle();
    assert.equal(result, null);
    assert.equal(held.length, 1);
    // Disable is queued behind the PostStarted that waits; it fails the request first, so the
    // callback returns and the teardown proceeds.
    await rig.C.VmbChannelDisable(c);
    assert.deepEqual(result, { status: STATUS_DEVICE_REMOVED, CompletionBufferSize: 0 });
    assert.equal(kmclChannelInfo(s).state, 'peerClosed');
    const late = await rig.C.VmbChannelSendSynchronousRequest(c, null, 0, null, WAIT, null, 0, null);
    assert.equal(late.status, STATUS_INVALID_DEVICE_STATE);
  });
});

describe('kmcl pipe mode', () => {
  function pipeRig() {
    const rig = makeRig();
    return {
      rig,
      server: {
        configure: (ch: Parameters<typeof rig.S.VmbServerChannelInitSetFlags>[0]) =>
          expectStatus(
            rig.S.VmbServerChannelInitSetFlags(ch, VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE),
            STATUS_SUCCESS,
          ),
      },
      client: {
        configure: (ch: Parameters<typeof rig.C.VmbChannelInitSetFlags>[0]) =>
          expectStatus(rig.C.VmbChannelInitSetFlags(ch, VMBUS_CHANNEL_INIT_FLAG_IS_PIPE), STATUS_SUCCESS),
      },
    };
  }

  test('datagrams keep their exact length both ways', async () => {
    const { rig, server: so, client: co } = pipeRig();
    const toServer: number[][] = [];
    const toClient: number[][] = [];
    const { server, client } = await openPair(
      rig,
      {
        ...so,
        onPacket: (_ch, pkt, buf, len) => {
          toServer.push(Array.from(buf.subarray(0, len)));
          assert.equal(buf.length, len);
          rig.S.VmbChannelPacketComplete(pkt, null, 0);
        },
      },
      {
        ...co,
        onPacket: (_ch, pkt, buf, len) => {
          toClient.push(Array.from(buf.subarray(0, len)));
          rig.C.VmbChannelPacketComplete(pkt, null, 0);
        },
      },
    );
    assert.equal(kmclChannelInfo(server).pipe, true);
    assert.equal(kmclChannelInfo(client).pipe, true);
    const cp = rig.C.VmbPacketAllocate(client)!;
    expectStatus(rig.C.VmbPacketSend(cp, Uint8Array.of(1, 2, 3, 4, 5), 5, null, 0), STATUS_SUCCESS);
    const sp = rig.S.VmbPacketAllocate(server)!;
    expectStatus(rig.S.VmbPacketSend(sp, Uint8Array.of(9, 8, 7), 3, null, 0), STATUS_SUCCESS);
    const empty = rig.S.VmbPacketAllocate(server)!;
    expectStatus(rig.S.VmbPacketSend(empty, null, 0, null, 0), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(toServer, [[1, 2, 3, 4, 5]]);
    assert.deepEqual(toClient, [[9, 8, 7], []]);
  });

  test('no transactions, no external data, at most 16 KiB per datagram', async () => {
    const { rig, server: so, client: co } = pipeRig();
    const { client } = await openPair(
      rig,
      {
        ...so,
        configure: (ch) => {
          so.configure(ch);
          rig.S.VmbChannelInitSetMaximumPacketSize(ch, 32768);
        },
      },
      {
        ...co,
        configure: (ch) => {
          co.configure(ch);
          rig.C.VmbChannelInitSetMaximumPacketSize(ch, 32768);
        },
      },
    );
    const p = rig.C.VmbPacketAllocate(client)!;
    expectStatus(rig.C.VmbPacketSend(p, new Uint8Array(8), 8, null, WAIT), STATUS_INVALID_PARAMETER);
    expectStatus(rig.C.VmbPacketSendWithExternalPfns(p, null, 0, [100], 1, WAIT), STATUS_INVALID_PARAMETER);
    expectStatus(rig.C.VmbPacketSend(p, new Uint8Array(16385), 16385, null, 0), STATUS_INVALID_PARAMETER_3);
    expectStatus(rig.C.VmbPacketSend(p, new Uint8Array(16384), 16384, null, 0), STATUS_SUCCESS);
    await rig.idle();
  });

  test('a pipe client does not open a packet-mode offer: PnpFailure(STATUS_INVALID_PARAMETER)', async () => {
    const rig = makeRig();
    const failures: number[] = [];
    const s = makeServer(rig);
    const c = makeClient(rig, {
      configure: (ch) => {
        expectStatus(rig.C.VmbChannelInitSetFlags(ch, VMBUS_CHANNEL_INIT_FLAG_IS_PIPE), STATUS_SUCCESS);
        expectStatus(
          rig.C.VmbClientChannelInitSetTargetPnp(ch, TYPE, null, (_c, st) => {
            failures.push(st);
          }),
          STATUS_SUCCESS,
        );
      },
    });
    rig.S.VmbChannelEnable(s);
    rig.S.VmbChannelStart(s);
    rig.C.VmbChannelEnable(c);
    await rig.idle();
    assert.deepEqual(failures, [STATUS_INVALID_PARAMETER]);
    assert.equal(kmclChannelInfo(c).state, 'enabled');
    assert.equal(kmclChannelInfo(s).state, 'enabled');
  });
});
