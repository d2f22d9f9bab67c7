// Echo and request/response over the loopback port: the basic send, receive and complete paths.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  STATUS_SUCCESS,
  type VMBPACKET,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import { bytes, expectStatus, head, makeRig, openPair } from './harness.js';

describe('kmcl echo', () => {
  test('client sends a transaction, server completes it with a payload', async () => {
    const rig = makeRig();
    const seen: number[][] = [];
    const { server, client } = await openPair(rig, {
      onPacket: (_ch, pkt, buf, len) => {
        seen.push(head(buf, 3));
        assert.equal(len % 8, 0);
        rig.S.VmbChannelPacketComplete(pkt, bytes(buf[0]! + 1, 42), 2);
      },
    });
    const { C } = rig;
    const p = C.VmbPacketAllocate(client)!;
    const results: { status: number; data: number[] }[] = [];
    C.VmbPacketSetCompletionRoutine(p, (pk: VMBPACKET, status, buf, len) => {
      results.push({ status, data: head(buf, 2) });
      assert.equal(len, 8);
      C.VmbPacketFree(pk);
    });
    expectStatus(
      C.VmbPacketSend(p, bytes(7, 8, 9), 3, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION),
      STATUS_SUCCESS,
    );
    await rig.idle();
    assert.deepEqual(seen, [[7, 8, 9]]);
    assert.deepEqual(results, [{ status: STATUS_SUCCESS, data: [8, 42] }]);
    assert.equal(rig.peerErrors.length, 0);
    void server;
  });

  test('server sends to the client (no completion requested)', async () => {
    const rig = makeRig();
    const got: number[][] = [];
    const { server } = await openPair(
      rig,
      {},
      {
        onPacket: (_ch, pkt, buf) => {
          got.push(head(buf, 4));
          rig.C.VmbChannelPacketComplete(pkt, null, 0);
        },
      },
    );
    const p = rig.S.VmbPacketAllocate(server)!;
    expectStatus(rig.S.VmbPacketSend(p, bytes(1, 2, 3, 4), 4, null, 0), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(got, [[1, 2, 3, 4]]);
  });
});
