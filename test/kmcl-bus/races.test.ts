// Lifecycle races over the real bus (same thread): the server holds later guest control messages
// while a hook (open, close) waits, so a host Disable that waits for the guest's RELID_RELEASED
// must not wait behind such a hook. None of these may deadlock (the revoke time limit is set far
// above the test's own limit, so finishing is not the timeout's doing).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createKmclSystem, type KmclSystem } from '../../src/kmcl/bus-port.js';
import { kmclChannelInfo, STATUS_SUCCESS, type VMBCHANNEL } from '../../src/kmcl/index.js';
import { type ChannelOptions, clientTable, makeClient, makeServer, must, serverTable, until } from './kit.js';

async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function pair(sys: KmclSystem, server: ChannelOptions = {}, wait = true) {
  const S = serverTable(sys.host);
  const C = clientTable(sys.guests[0]!);
  const s = makeServer(S, server);
  const c = makeClient(C);
  must(S.VmbChannelEnable(s), 'server enable');
  S.VmbChannelStart(s);
  must(C.VmbChannelEnable(c), 'client enable');
  if (wait) await until(() => kmclChannelInfo(c).flowing && kmclChannelInfo(s).flowing, 'flowing');
  return { S, C, s, c };
}

async function settled(sys: KmclSystem, s: VMBCHANNEL, c: VMBCHANNEL): Promise<void> {
  await sys.idle();
  assert.equal(kmclChannelInfo(s).state, 'disabled');
  assert.equal(kmclChannelInfo(c).state, 'disabled');
  assert.equal(sys.hostBus.server(1)!.channels().length, 0, 'relid released');
  assert.equal(sys.guestBuses[0]!.allocator.allocatedPageCount, 0, 'ring pages freed');
}

describe('kmcl over the bus: lifecycle races', () => {
  for (const first of ['host', 'guest'] as const) {
    test(`host Disable and guest Disable at once (${first} first)`, async () => {
      const sys = await createKmclSystem({ host: { revokeTimeoutMs: 60_000 } });
      try {
        const { S, C, s, c } = await pair(sys);
        const both =
          first === 'host'
            ? [S.VmbChannelDisable(s), C.VmbChannelDisable(c)]
            : [C.VmbChannelDisable(c), S.VmbChannelDisable(s)];
        await within(5000, 'both disables', Promise.all(both));
        await settled(sys, s, c);
      } finally {
        await sys.close();
      }
    });
  }

  test('a guest close arrives while a host Disable is still in its Suspend callback', async () => {
    const sys = await createKmclSystem({ host: { revokeTimeoutMs: 60_000 } });
    try {
      const trace: string[] = [];
      const { S, C, s, c } = await pair(sys, {
        trace,
        // While this runs, the guest's CLOSECHANNEL reaches the server, whose close hook then waits
        // for the channel (behind the Disable); the Disable's revoke must not wait behind it.
        suspend: () => new Promise<void>((r) => setTimeout(r, 30)),
      });
      const hostGone = S.VmbChannelDisable(s);
      const guestGone = C.VmbChannelDisable(c);
      await within(5000, 'both disables', Promise.all([hostGone, guestGone]));
      await settled(sys, s, c);
      assert.deepEqual(trace.slice(-2), ['S:Suspend', 'S:Closed']);
    } finally {
      await sys.close();
    }
  });

  test('host Disable while its Opened callback is still running for the guest', async () => {
    const sys = await createKmclSystem({ host: { revokeTimeoutMs: 60_000 } });
    try {
      let openedCalls = 0;
      const { S, C, s, c } = await pair(
        sys,
        {
          opened: () => {
            openedCalls++;
            return new Promise<number>((r) => setTimeout(() => r(STATUS_SUCCESS), 50));
          },
        },
        false,
      );
      await until(() => openedCalls === 1, 'Opened running');
      await within(5000, 'host disable', S.VmbChannelDisable(s));
      await within(5000, 'client disable', C.VmbChannelDisable(c));
      await settled(sys, s, c);
    } finally {
      await sys.close();
    }
  });

  test('host Disable while the server still has delivered packets to retire after a guest close', async () => {
    const sys = await createKmclSystem({ host: { revokeTimeoutMs: 60_000 } });
    try {
      const held: unknown[] = [];
      const { S, C, s, c } = await pair(sys, { onPacket: (_ch, pkt) => held.push(pkt) });
      const p = C.VmbPacketAllocate(c)!;
      must(C.VmbPacketSend(p, Uint8Array.of(1), 1, null, 1), 'send');
      await until(() => held.length === 1, 'delivered');
      // The guest closes; the server's close hook waits for the held packet. Then the host disables.
      const guestGone = C.VmbChannelDisable(c);
      await sys.idle();
      const hostGone = S.VmbChannelDisable(s);
      S.VmbChannelPacketComplete(held[0] as Parameters<typeof S.VmbChannelPacketComplete>[0], null, 0);
      await within(5000, 'both disables', Promise.all([guestGone, hostGone]));
      await settled(sys, s, c);
    } finally {
      await sys.close();
    }
  });
});
