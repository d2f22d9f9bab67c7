// Servicing over the bus-backed port (src/kmcl/bus-port.ts, the real VMBus, same thread): the
// host's server channel is saved with transactions in the ring and queued sends, restored into a
// new KmclProvider on the same host VMBus, and every transaction completes once, in order.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createKmclSystem } from '../../src/kmcl/bus-port.js';
import {
  KmclProvider,
  kmclChannelInfo,
  STATUS_BUFFER_OVERFLOW,
  STATUS_SUCCESS,
  type VMBCHANNEL,
  type VMBPACKET,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import {
  clientTable,
  makeClient,
  makeServer,
  must,
  serverTable,
  setSequenceSaveRestore,
  until,
} from '../kmcl-bus/kit.js';

describe('servicing over the bus', () => {
  test('a saved server channel is restored into a new provider; the guest never notices', async () => {
    const sys = await createKmclSystem();
    try {
      const S = serverTable(sys.host);
      const C = clientTable(sys.guests[0]!);
      const done: number[] = [];
      const routine = (S0: typeof S) => (pk: VMBPACKET, status: number, buf: Uint8Array | null) => {
        assert.equal(status, STATUS_SUCCESS);
        const seq = S0.VmbPacketGetPointer(pk) as number;
        assert.equal(buf![0], seq & 0xff);
        done.push(seq);
        S0.VmbPacketFree(pk);
      };
      // The VSP saves each packet's sequence number and restores pointer + completion routine.
      const configure = (SX: typeof S) => (ch: VMBCHANNEL) => setSequenceSaveRestore(SX, ch, routine(SX));
      const s = makeServer(S, { configure: configure(S) });
      const c = makeClient(C);
      must(S.VmbChannelEnable(s), 'server enable');
      S.VmbChannelStart(s);
      must(C.VmbChannelEnable(c), 'client enable');
      await until(() => kmclChannelInfo(c).flowing && kmclChannelInfo(s).flowing, 'both flowing');
      await C.VmbChannelPause(c);
      const N = 3000;
      for (let i = 0; i < N; i++) {
        const p = S.VmbPacketAllocate(s)!;
        S.VmbPacketSetPointer(p, i);
        S.VmbPacketSetCompletionRoutine(p, routine(S));
        must(
          S.VmbPacketSend(p, Uint8Array.of(i & 0xff), 1, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION),
          'send',
        );
      }
      await sys.idle();
      await S.VmbChannelPause(s);
      assert.ok(kmclChannelInfo(s).queuedOutgoing > 0, 'the ring is full');
      must(S.VmbChannelSaveBegin(s), 'SaveBegin');
      const chunks: Uint8Array[] = [];
      for (;;) {
        const b = new Uint8Array(8192);
        const r = S.VmbChannelSaveContinue(s, b, b.length);
        chunks.push(b.slice(0, r.BytesFilled));
        if (r.status === STATUS_SUCCESS) break;
        must(r.status, 'SaveContinue', STATUS_BUFFER_OVERFLOW);
      }
      S.VmbChannelSaveEnd(s);
      await S.VmbChannelDisable(s);
      S.VmbChannelCleanup(s);

      const S2 = serverTable(KmclProvider.forHost(sys.hostBus));
      const s2 = makeServer(S2, { configure: configure(S2) });
      let st = 0;
      for (const ch of chunks) st = S2.VmbChannelRestoreFromBuffer(s2, ch, ch.length);
      must(st, 'restore');
      must(S2.VmbChannelEnable(s2), 'enable after restore');
      S2.VmbChannelStart(s2);
      C.VmbChannelStart(c);
      await until(() => kmclChannelInfo(s2).awaitingCompletion === 0, 'all completed');
      assert.equal(kmclChannelInfo(c).state, 'open', 'the guest kept its channel');
      assert.deepEqual(
        done,
        Array.from({ length: N }, (_, i) => i),
      );
    } finally {
      await sys.close();
    }
  });
});
