// Channel state machine and callback order (spec 2.3-2.6, Q1-Q6) over the loopback port.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  KmclContractViolation,
  kmclChannelInfo,
  kmclTestHooks,
  STATUS_CONNECTION_REFUSED,
  STATUS_DEVICE_REMOVED,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_PARAMETER_1,
  STATUS_SUCCESS,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import { expectStatus, makeClient, makeRig, makeServer, openPair, TYPE } from './harness.js';

function side(trace: string[], prefix: string): string[] {
  return trace.filter((t) => t.startsWith(`${prefix}:`)).map((t) => t.slice(prefix.length + 1));
}

function seqPacket(n: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
}

function seqOf(buf: Uint8Array): number {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(0, true);
}

describe('kmcl lifecycle', () => {
  test('bring-up: Opened -> Started -> PostStarted on both sides, server opened first', async () => {
    const rig = makeRig();
    await openPair(rig);
    assert.deepEqual(side(rig.trace, 'S'), ['Opened', 'Started', 'PostStarted']);
    assert.deepEqual(side(rig.trace, 'C'), ['Opened', 'Started', 'PostStarted']);
    assert.ok(rig.trace.indexOf('S:Opened') < rig.trace.indexOf('C:Opened'));
  });

  test('client Disable: Suspend -> Closed on both sides; server PeerClosed, client Disabled; reopen works', async () => {
    const rig = makeRig();
    const { server, client } = await openPair(rig);
    rig.trace.length = 0;
    await rig.C.VmbChannelDisable(client);
    await rig.idle();
    assert.deepEqual(side(rig.trace, 'C'), ['Suspend', 'Closed']);
    assert.deepEqual(side(rig.trace, 'S'), ['Suspend', 'Closed']);
    assert.equal(kmclChannelInfo(client).state, 'disabled');
    assert.equal(kmclChannelInfo(server).state, 'peerClosed');
    rig.trace.length = 0;
    expectStatus(rig.C.VmbChannelEnable(client), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(side(rig.trace, 'S'), ['Opened', 'Started', 'PostStarted']);
    assert.deepEqual(side(rig.trace, 'C'), ['Opened', 'Started', 'PostStarted']);
    assert.equal(kmclChannelInfo(server).state, 'open');
  });

  test('server Disable revokes the offer: the client sees Suspend -> Closed and falls back to Disabled', async () => {
    const rig = makeRig();
    const { server, client } = await openPair(rig);
    rig.trace.length = 0;
    await rig.S.VmbChannelDisable(server);
    await rig.idle();
    assert.deepEqual(side(rig.trace, 'S'), ['Suspend', 'Closed']);
    assert.deepEqual(side(rig.trace, 'C'), ['Suspend', 'Closed']);
    assert.equal(kmclChannelInfo(server).state, 'disabled');
    assert.equal(kmclChannelInfo(client).state, 'disabled');
    rig.S.VmbChannelCleanup(server);
    rig.C.VmbChannelCleanup(client);
  });

  test('both sides Disable at once without deadlock', async () => {
    const rig = makeRig();
    const { server, client } = await openPair(rig);
    await Promise.all([rig.S.VmbChannelDisable(server), rig.C.VmbChannelDisable(client)]);
    assert.equal(kmclChannelInfo(server).state, 'disabled');
    assert.equal(kmclChannelInfo(client).state, 'disabled');
  });

  test('sends before the channel opens are queued and flushed in order after Started', async () => {
    const rig = makeRig();
    const got: number[] = [];
    const s = makeServer(rig, {
      onPacket: (_ch, pkt, buf) => {
        got.push(seqOf(buf));
        rig.S.VmbChannelPacketComplete(pkt, null, 0);
      },
    });
    const c = makeClient(rig, {
      started: (ch) => {
        // Started may queue sends.
        const p = rig.C.VmbPacketAllocate(ch)!;
        expectStatus(rig.C.VmbPacketSend(p, seqPacket(3), 8, null, 0), STATUS_SUCCESS);
      },
    });
    for (let i = 0; i < 3; i++) {
      const p = rig.C.VmbPacketAllocate(c)!;
      expectStatus(rig.C.VmbPacketSend(p, seqPacket(i), 8, null, 0), STATUS_SUCCESS);
    }
    assert.equal(kmclChannelInfo(c).queuedOutgoing, 3);
    expectStatus(rig.S.VmbChannelEnable(s), STATUS_SUCCESS);
    rig.S.VmbChannelStart(s);
    expectStatus(rig.C.VmbChannelEnable(c), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(got, [0, 1, 2, 3]);
  });

  test('Pause stops deliveries (packets stay in the ring), Start resumes them in order', async () => {
    const rig = makeRig();
    const got: number[] = [];
    const { server, client } = await openPair(rig, {
      onPacket: (_ch, pkt, buf) => {
        got.push(seqOf(buf));
        rig.S.VmbChannelPacketComplete(pkt, null, 0);
      },
    });
    const send = (from: number, to: number) => {
      for (let i = from; i < to; i++) {
        const p = rig.C.VmbPacketAllocate(client)!;
        expectStatus(rig.C.VmbPacketSend(p, seqPacket(i), 8, null, 0), STATUS_SUCCESS);
      }
    };
    send(0, 100);
    await rig.idle();
    assert.equal(got.length, 100);
    rig.trace.length = 0;
    await rig.S.VmbChannelPause(server);
    assert.deepEqual(side(rig.trace, 'S'), ['Suspend']);
    assert.equal(kmclChannelInfo(server).flowing, false);
    send(100, 3000);
    await rig.idle();
    assert.equal(got.length, 100, 'no delivery while paused');
    assert.ok(kmclChannelInfo(client).queuedOutgoing > 0, 'the ring filled and the client queued');
    rig.S.VmbChannelStart(server);
    await rig.idle();
    assert.deepEqual(side(rig.trace, 'S'), ['Suspend', 'Started', 'PostStarted']);
    assert.equal(got.length, 3000);
    for (let i = 0; i < got.length; i++) assert.equal(got[i], i);
  });

  test('Pause waits until every delivered packet is completed', async () => {
    const rig = makeRig();
    const held: VMBPACKETCOMPLETION[] = [];
    const { server, client } = await openPair(rig, { onPacket: (_ch, pkt) => held.push(pkt) });
    for (let i = 0; i < 3; i++) {
      const p = rig.C.VmbPacketAllocate(client)!;
      expectStatus(rig.C.VmbPacketSend(p, seqPacket(i), 8, null, 0), STATUS_SUCCESS);
    }
    await rig.idle();
    assert.equal(held.length, 3);
    let paused = false;
    const pausing = rig.S.VmbChannelPause(server).then(() => {
      paused = true;
    });
    await rig.idle();
    assert.equal(paused, false);
    rig.S.VmbChannelPacketComplete(held[0]!, null, 0);
    rig.S.VmbChannelPacketComplete(held[1]!, null, 0);
    await rig.idle();
    assert.equal(paused, false);
    rig.S.VmbChannelPacketComplete(held[2]!, null, 0);
    await pausing;
    assert.equal(paused, true);
  });

  test('Disable with transactions outstanding and queued: each completes once with STATUS_DEVICE_REMOVED', async () => {
    const rig = makeRig();
    const held: VMBPACKETCOMPLETION[] = [];
    const { client } = await openPair(rig, {
      onPacket: (_ch, pkt) => held.push(pkt),
      suspend: () => {
        // The server retires what the guest left behind.
        for (const t of held.splice(0)) rig.S.VmbChannelPacketComplete(t, null, 0);
      },
    });
    const statuses = new Map<number, number[]>();
    for (let i = 0; i < 5; i++) {
      const p = rig.C.VmbPacketAllocate(client)!;
      rig.C.VmbPacketSetCompletionRoutine(p, (pk, status) => {
        const list = statuses.get(i) ?? [];
        list.push(status);
        statuses.set(i, list);
        rig.C.VmbPacketFree(pk);
      });
      expectStatus(
        rig.C.VmbPacketSend(p, seqPacket(i), 8, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION),
        STATUS_SUCCESS,
      );
    }
    await rig.idle();
    assert.equal(held.length, 5);
    assert.equal(kmclChannelInfo(client).awaitingCompletion, 5);
    // Paused: further sends are queued, not sent; in-flight transactions are kept (Q6).
    await rig.C.VmbChannelPause(client);
    for (let i = 5; i < 8; i++) {
      const p = rig.C.VmbPacketAllocate(client)!;
      rig.C.VmbPacketSetCompletionRoutine(p, (pk, status) => {
        statuses.set(i, [...(statuses.get(i) ?? []), status]);
        rig.C.VmbPacketFree(pk);
      });
      expectStatus(rig.C.VmbPacketSend(p, seqPacket(i), 8, null, 0), STATUS_SUCCESS);
    }
    await rig.idle();
    assert.equal(kmclChannelInfo(client).queuedOutgoing, 3);
    assert.equal(kmclChannelInfo(client).awaitingCompletion, 5);
    assert.equal(statuses.size, 0);
    await rig.C.VmbChannelDisable(client);
    await rig.idle();
    assert.equal(statuses.size, 8);
    for (const list of statuses.values()) assert.deepEqual(list, [STATUS_DEVICE_REMOVED]);
    assert.equal(kmclChannelInfo(client).awaitingCompletion, 0);
  });

  test('server Opened failure refuses the open: client PnpFailure with that status, server stays Enabled', async () => {
    const rig = makeRig();
    const failures: number[] = [];
    const s = makeServer(rig, { opened: () => STATUS_CONNECTION_REFUSED });
    const c = makeClient(rig, {
      configure: (ch) => {
        expectStatus(
          rig.C.VmbClientChannelInitSetTargetPnp(ch, TYPE, null, (_c, st) => {
            failures.push(st);
          }),
          STATUS_SUCCESS,
        );
      },
    });
    expectStatus(rig.S.VmbChannelEnable(s), STATUS_SUCCESS);
    rig.S.VmbChannelStart(s);
    expectStatus(rig.C.VmbChannelEnable(c), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(failures, [STATUS_CONNECTION_REFUSED]);
    assert.equal(kmclChannelInfo(s).state, 'enabled');
    assert.equal(kmclChannelInfo(c).state, 'enabled');
    assert.deepEqual(side(rig.trace, 'S'), ['Opened']);
    assert.deepEqual(side(rig.trace, 'C'), []);
  });

  test('client Opened failure closes the channel again; the server sees its peer close', async () => {
    const rig = makeRig();
    const s = makeServer(rig);
    const c = makeClient(rig, { opened: () => STATUS_CONNECTION_REFUSED });
    expectStatus(rig.S.VmbChannelEnable(s), STATUS_SUCCESS);
    rig.S.VmbChannelStart(s);
    expectStatus(rig.C.VmbChannelEnable(c), STATUS_SUCCESS);
    await rig.idle();
    assert.equal(kmclChannelInfo(c).state, 'enabled');
    assert.equal(kmclChannelInfo(s).state, 'peerClosed');
    assert.deepEqual(side(rig.trace, 'C'), ['Opened']);
  });

  test('Start while Disabled records Active; Pause while Disabled makes the next Enable paused', async () => {
    const rig = makeRig();
    const s = makeServer(rig);
    const c = makeClient(rig);
    rig.S.VmbChannelStart(s);
    await rig.C.VmbChannelPause(c);
    expectStatus(rig.S.VmbChannelEnable(s), STATUS_SUCCESS);
    expectStatus(rig.C.VmbChannelEnable(c), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(side(rig.trace, 'S'), ['Opened', 'Started', 'PostStarted']);
    assert.deepEqual(side(rig.trace, 'C'), ['Opened']);
    assert.equal(kmclChannelInfo(c).flowing, false);
    rig.C.VmbChannelStart(c);
    await rig.idle();
    assert.deepEqual(side(rig.trace, 'C'), ['Opened', 'Started', 'PostStarted']);
  });

  test('Q5: Disable of a Disabled channel is a no-op, a second Enable fails, Cleanup needs Disabled', async () => {
    const rig = makeRig();
    const { server } = await openPair(rig);
    expectStatus(rig.S.VmbChannelEnable(server), STATUS_INVALID_DEVICE_STATE);
    assert.throws(() => rig.S.VmbChannelCleanup(server), KmclContractViolation);
    await rig.S.VmbChannelDisable(server);
    await rig.S.VmbChannelDisable(server);
    rig.S.VmbChannelCleanup(server);
    assert.throws(() => rig.S.VmbChannelEnable(server), /cleaned up/);
  });

  test('Q1: Init* setters fail with _1 after the first Enable (unless allowReinit)', async () => {
    const rig = makeRig();
    const { server } = await openPair(rig);
    expectStatus(rig.S.VmbChannelInitSetMaximumPacketSize(server, 100), STATUS_INVALID_PARAMETER_1);
    await rig.S.VmbChannelDisable(server);
    expectStatus(rig.S.VmbChannelInitSetMaximumPacketSize(server, 100), STATUS_INVALID_PARAMETER_1);

    const rig2 = makeRig({ provider: { allowReinit: true } });
    const pair = await openPair(rig2);
    expectStatus(rig2.S.VmbChannelInitSetMaximumPacketSize(pair.server, 100), STATUS_INVALID_PARAMETER_1);
    await rig2.S.VmbChannelDisable(pair.server);
    expectStatus(rig2.S.VmbChannelInitSetMaximumPacketSize(pair.server, 100), STATUS_SUCCESS);
  });

  test('Start, Pause, Disable and Enable refuse to run inside the channel own state callbacks', async () => {
    const rig = makeRig();
    const errors: string[] = [];
    const attempt = (name: string, fn: () => unknown) => {
      try {
        fn();
        errors.push(`${name}:no-throw`);
      } catch (e) {
        assert.ok(e instanceof KmclContractViolation);
        errors.push(`${name}:${e.code}`);
      }
    };
    await openPair(rig, {
      postStarted: async (ch) => {
        await Promise.resolve();
        attempt('Start', () => rig.S.VmbChannelStart(ch));
        attempt('Pause', () => rig.S.VmbChannelPause(ch));
        attempt('Disable', () => rig.S.VmbChannelDisable(ch));
        attempt('Enable', () => rig.S.VmbChannelEnable(ch));
      },
    });
    assert.deepEqual(errors, [
      'Start:call-inside-state-callback',
      'Pause:call-inside-state-callback',
      'Disable:call-inside-state-callback',
      'Enable:call-inside-state-callback',
    ]);
  });

  test('blocking APIs from a non-blocking ProcessPacket throw; the test hook and at-passive switch the context', async () => {
    const rig = makeRig();
    const codes: string[] = [];
    const pair = await openPair(
      rig,
      {},
      {
        onPacket: (ch, pkt) => {
          try {
            void rig.C.VmbChannelDeleteGpadl(ch, 12345);
          } catch (e) {
            assert.ok(e instanceof KmclContractViolation);
            codes.push(e.code);
          }
          try {
            void rig.C.VmbChannelPause(ch);
            codes.push('pause-allowed');
          } catch (e) {
            codes.push((e as KmclContractViolation).code);
          }
          rig.C.VmbChannelPacketComplete(pkt, null, 0);
        },
      },
    );
    const client = pair.client;
    const sendOne = async () => {
      const p = rig.S.VmbPacketAllocate(pair.server)!;
      expectStatus(rig.S.VmbPacketSend(p, new Uint8Array(8), 8, null, 0), STATUS_SUCCESS);
      await rig.idle();
    };
    await sendOne();
    assert.deepEqual(codes, ['blocking-call-in-nonblocking-context', 'blocking-call-in-nonblocking-context']);
    codes.length = 0;
    kmclTestHooks.forceProcessPacketContext(client, 'blocking');
    await sendOne();
    // DeleteGpadl now gets past the context check and fails on the unknown handle; Pause is allowed.
    assert.deepEqual(codes, ['bad-handle', 'pause-allowed']);
    kmclTestHooks.forceProcessPacketContext(client, null);
    rig.C.VmbChannelStart(client);
    await rig.idle();
  });

  for (const who of ['server', 'client'] as const) {
    test(`the peer goes away mid-traffic (${who} disables): every transaction completes exactly once`, async () => {
      const rig = makeRig();
      const { server, client } = await openPair(
        rig,
        {
          // The server echoes and retires whatever it still holds when the guest leaves.
          onPacket: (_ch, pkt, buf, len) => rig.S.VmbChannelPacketComplete(pkt, buf, len),
        },
        { configure: (ch) => rig.C.VmbClientChannelInitSetRingBufferPageCount(ch, 3, 3) },
      );
      const counts = new Map<number, number>();
      const byStatus = new Map<number, number>();
      let sent = 0;
      let stop = false;
      const send = (p: ReturnType<typeof rig.C.VmbPacketAllocate>) => {
        const n = sent++;
        rig.C.VmbPacketSetPointer(p!, n);
        const st = rig.C.VmbPacketSend(
          p!,
          seqPacket(n),
          8,
          null,
          VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
        );
        expectStatus(st, STATUS_SUCCESS);
      };
      for (let i = 0; i < 32; i++) {
        const p = rig.C.VmbPacketAllocate(client)!;
        rig.C.VmbPacketSetCompletionRoutine(p, (pk, status) => {
          const n = rig.C.VmbPacketGetPointer(pk) as number;
          counts.set(n, (counts.get(n) ?? 0) + 1);
          byStatus.set(status, (byStatus.get(status) ?? 0) + 1);
          if (!stop && status === STATUS_SUCCESS) send(pk);
          else rig.C.VmbPacketFree(pk);
        });
        send(p);
      }
      // Let some traffic flow, then pull the plug while packets are in every stage.
      rig.lb.scheduler.runSteps(25);
      const done = who === 'server' ? rig.S.VmbChannelDisable(server) : rig.C.VmbChannelDisable(client);
      await done;
      stop = true;
      await rig.idle();
      assert.equal(counts.size, sent, 'every packet sent completed');
      for (const [n, c] of counts) assert.equal(c, 1, `packet ${n} completed ${c} times`);
      assert.ok((byStatus.get(STATUS_SUCCESS) ?? 0) > 0);
      assert.equal(byStatus.get(STATUS_DEVICE_REMOVED), 32, 'the packets in flight at the end');
      assert.equal(kmclChannelInfo(client).state, 'disabled');
      assert.equal(rig.peerErrors.length, 0);
    });
  }
});
