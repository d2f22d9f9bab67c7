// Servicing of the whole host side, same thread: the host's KMCL channel is saved, the host's
// VMBus for the partition is saved and detached, and a NEW Hypervisor, BusKmclHost and KMCL
// provider take over from the saved image, while the guest keeps its channel, rings and client
// and keeps sending. Nothing is lost, duplicated or reordered either way.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Hypervisor } from '../../src/hv/hypervisor.js';
import { BusKmclHost, createKmclSystem } from '../../src/kmcl/bus-port.js';
import {
  KmclProvider,
  kmclChannelInfo,
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
  saveServerChannel,
  serverTable,
  setSequenceSaveRestore,
  until,
} from '../kmcl-bus/kit.js';

type ServerTable = ReturnType<typeof serverTable>;

/** A VSP that counts the guest's messages (each carries its sequence number) and sends transactions. */
function vsp(S: ServerTable, seen: number[], done: number[]) {
  const routine = (pk: VMBPACKET, status: number, buf: Uint8Array | null) => {
    assert.equal(status, STATUS_SUCCESS);
    const seq = S.VmbPacketGetPointer(pk) as number;
    assert.equal(buf![0], seq & 0xff);
    done.push(seq);
    S.VmbPacketFree(pk);
  };
  const ch = makeServer(S, {
    onPacket: (_c, pkt, buf, len) => {
      seen.push(new DataView(buf.buffer, buf.byteOffset, len).getUint32(0, true));
      S.VmbChannelPacketComplete(pkt, null, 0);
    },
    configure: (c: VMBCHANNEL) => setSequenceSaveRestore(S, c, routine),
  });
  return { ch, routine };
}

describe('host restart (same thread)', () => {
  test('the whole host side is saved, detached and restored into a new instance; the guest keeps sending', async () => {
    const sys = await createKmclSystem();
    try {
      const pid = sys.hv.partitions()[0]!.partitionId;
      let S = serverTable(sys.host);
      const C = clientTable(sys.guests[0]!);
      const seen: number[] = [];
      const done: number[] = [];
      let server = vsp(S, seen, done);
      const c = makeClient(C, { onPacket: (_c, pkt, buf, len) => C.VmbChannelPacketComplete(pkt, buf, len) });
      must(S.VmbChannelEnable(server.ch), 'server enable');
      S.VmbChannelStart(server.ch);
      must(C.VmbChannelEnable(c), 'client enable');
      await until(() => kmclChannelInfo(c).flowing && kmclChannelInfo(server.ch).flowing, 'both flowing');
      let guestSeq = 0;
      const guestSend = (n: number) => {
        for (let i = 0; i < n; i++) {
          const b = new Uint8Array(4);
          new DataView(b.buffer).setUint32(0, guestSeq++, true);
          const p = C.VmbPacketAllocate(c)!;
          must(C.VmbPacketSend(p, b, 4, null, 0), 'guest send');
        }
      };
      let hostSeq = 0;
      const hostSend = (n: number) => {
        for (let i = 0; i < n; i++) {
          const p = S.VmbPacketAllocate(server.ch)!;
          S.VmbPacketSetPointer(p, hostSeq);
          S.VmbPacketSetCompletionRoutine(p, server.routine);
          must(
            S.VmbPacketSend(
              p,
              Uint8Array.of(hostSeq & 0xff),
              1,
              null,
              VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
            ),
            'host send',
          );
          hostSeq++;
        }
      };
      let hostEnd = sys.hv.partitions()[0]!.host;
      let hostBus: BusKmclHost = sys.hostBus;
      for (let cycle = 0; cycle < 5; cycle++) {
        // Traffic in flight: the guest holds the host's transactions, and sends.
        await C.VmbChannelPause(c);
        hostSend(3000);
        guestSend(100);
        const chunks = await saveServerChannel(S, server.ch, 4096);
        const detached = await hostBus.detachPartition(pid);
        assert.equal(detached.hostEnd, hostEnd);
        // The host is gone: the guest keeps sending into its ring, and signals.
        guestSend(50);
        C.VmbChannelStart(c);
        await sys.idle();
        // A new host instance on the same hypervisor scheduler.
        const hv2 = new Hypervisor({ transport: 'same-thread', scheduler: sys.hv.scheduler! });
        hostBus = new BusKmclHost(hv2);
        hostBus.adoptPartition(detached.descriptor, detached.image, { replacing: detached.hostEnd });
        hostEnd = hv2.partitions()[0]!.host;
        S = serverTable(KmclProvider.forHost(hostBus));
        server = vsp(S, seen, done);
        let st = 0;
        for (const ch of chunks) st = S.VmbChannelRestoreFromBuffer(server.ch, ch, ch.length);
        must(st, 'restore');
        assert.ok(
          kmclChannelInfo(server.ch).queuedOutgoing > 0,
          'sends queued for a full ring were restored',
        );
        assert.ok(
          kmclChannelInfo(server.ch).awaitingCompletion > 0,
          'transactions awaiting completion were restored',
        );
        await hostBus.finishRestore(pid);
        must(S.VmbChannelEnable(server.ch), 'enable after restore');
        S.VmbChannelStart(server.ch);
        guestSend(50);
        await until(
          () => done.length === hostSeq && seen.length === guestSeq,
          `cycle ${cycle}: ${done.length}/${hostSeq} completions, ${seen.length}/${guestSeq} guest messages`,
        );
        assert.equal(kmclChannelInfo(c).state, 'open', 'the guest kept its channel');
      }
      assert.deepEqual(
        done,
        Array.from({ length: hostSeq }, (_, i) => i),
      );
      assert.deepEqual(
        seen,
        Array.from({ length: guestSeq }, (_, i) => i),
      );
    } finally {
      await sys.close();
    }
  });
});
