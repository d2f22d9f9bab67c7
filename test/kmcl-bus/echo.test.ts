// The KMCL over the real VMBus, same thread: a request completed with the server's echo, the
// callback order on both ends, and what the bus saw (an offer, a GPADL, an open, a close).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createKmclSystem } from '../../src/kmcl/bus-port.js';
import {
  kmclChannelInfo,
  STATUS_SUCCESS,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import { clientTable, makeClient, makeServer, must, serverTable, until } from './kit.js';

describe('kmcl over the bus: echo (same thread)', () => {
  test('a client transaction is completed with the server echo, through real rings', async () => {
    const sys = await createKmclSystem();
    try {
      const S = serverTable(sys.host);
      const C = clientTable(sys.guests[0]!);
      const trace: string[] = [];
      const s = makeServer(S, { trace });
      const c = makeClient(C, { trace });
      must(S.VmbChannelEnable(s), 'server enable');
      S.VmbChannelStart(s);
      must(C.VmbChannelEnable(c), 'client enable');
      await until(() => kmclChannelInfo(c).flowing && kmclChannelInfo(s).flowing, 'both flowing');
      const server = sys.hostBus.server(1)!;
      assert.equal(server.channels().length, 1);
      assert.equal(server.channelPhase(server.channels()[0]!), 'open');
      const results: { status: number; data: number[] }[] = [];
      const p = C.VmbPacketAllocate(c)!;
      C.VmbPacketSetCompletionRoutine(p, (pk, status, buf, len) => {
        results.push({ status, data: Array.from(buf!.subarray(0, 3)) });
        assert.equal(len, 8);
        C.VmbPacketFree(pk);
      });
      must(
        C.VmbPacketSend(p, Uint8Array.of(7, 8, 9), 3, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION),
        'send',
      );
      await until(() => results.length === 1, 'completion');
      assert.deepEqual(results, [{ status: STATUS_SUCCESS, data: [7, 8, 9] }]);
      await C.VmbChannelDisable(c);
      await until(() => trace.includes('S:Closed'), 'server closed');
      await S.VmbChannelDisable(s);
      await sys.idle();
      assert.deepEqual(trace, [
        'S:Opened',
        'S:Started',
        'S:PostStarted',
        'C:Opened',
        'C:Started',
        'C:PostStarted',
        'C:Suspend',
        // The client closes the channel (the server hears of it) before its own Closed callback.
        'S:Suspend',
        'S:Closed',
        'C:Closed',
      ]);
      assert.equal(server.channels().length, 0, 'the revoked relid was released');
      assert.equal(sys.guestBuses[0]!.allocator.allocatedPageCount, 0, 'ring pages freed');
      assert.equal(sys.guestBuses[0]!.leakedPages, 0);
    } finally {
      await sys.close();
    }
  });
});
