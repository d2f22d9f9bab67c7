// A hostile guest against the host's KMCL on the real bus (same thread): a raw VMBus client that
// opens one offer with rings it writes by hand (garbage external-data descriptors, a corrupt
// write index), never completes the host's transactions and never releases a rescinded relid.
// The host must not crash, must not touch pages the guest did not share, and only that channel
// is affected: a second channel, opened through the guest's KMCL, keeps working.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { VmbusClient } from '../../src/bus/client.js';
import { Hypervisor } from '../../src/hv/index.js';
import { BusKmclGuest, BusKmclHost } from '../../src/kmcl/bus-port.js';
import {
  type KmclPeerError,
  KmclProvider,
  kmclChannelInfo,
  STATUS_DEVICE_REMOVED,
  STATUS_SUCCESS,
  type VMBCHANNEL,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import { CONTROL_WRITE_INDEX, channelRingsFromGpadl, RingMemory } from '../../src/ring/memory.js';
import { RingWriter } from '../../src/ring/writer.js';
import {
  clientTable,
  deferred,
  INSTANCE,
  INSTANCE2,
  makeClient,
  makeServer,
  must,
  serverTable,
  until,
} from './kit.js';

const WAIT = VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION;

/** A GPA-direct packet (type 9) with one range, built by hand. */
function gpaDirect(transId: number, byteCount: number, byteOffset: number, pfns: number[]): Uint8Array {
  const header = 16 + 8 + 8 + 8 * pfns.length;
  const total = header + 8; // 8 bytes of inline payload
  const b = new Uint8Array(total);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, 9, true);
  dv.setUint16(2, header / 8, true);
  dv.setUint16(4, total / 8, true);
  dv.setUint16(6, 1, true); // completion requested
  dv.setUint32(8, transId, true);
  dv.setUint32(20, 1, true); // range count
  dv.setUint32(24, byteCount, true);
  dv.setUint32(28, byteOffset, true);
  for (let i = 0; i < pfns.length; i++) dv.setBigUint64(32 + 8 * i, BigInt(pfns[i]!), true);
  return b;
}

describe('kmcl over the bus: hostile guest', () => {
  test('garbage descriptors, a corrupt ring, no completions, no release: only that channel suffers', async () => {
    const hv = new Hypervisor({ transport: 'same-thread' });
    const p = hv.createPartition({ memoryBytes: 16 * 1024 * 1024 });
    const hostBus = new BusKmclHost(hv, { revokeTimeoutMs: 200 });
    const peerErrors: { ch: VMBCHANNEL; e: KmclPeerError }[] = [];
    const host = KmclProvider.forHost(hostBus, { onPeerError: (ch, e) => peerErrors.push({ ch, e }) });
    const S = serverTable(host);
    const raw = new VmbusClient(p.guest!, p.memory, { autoRelease: false });
    try {
      await raw.connect();
      const guestBus = new BusKmclGuest(raw, p.memory, {
        partitionId: p.partitionId,
        scheduler: hv.scheduler,
      });
      await raw.requestOffers();
      const C = clientTable(KmclProvider.forGuest(guestBus));

      // Host: A (attacked) holds on to what arrives and sends one transaction; B echoes.
      let aPackets = 0;
      const a = makeServer(S, {
        instance: INSTANCE,
        onPacket: (_c, pkt) => {
          aPackets++;
          S.VmbChannelPacketComplete(pkt, null, 0);
        },
      });
      const b = makeServer(S, { instance: INSTANCE2 });
      must(S.VmbChannelEnable(a), 'enable A');
      S.VmbChannelStart(a);
      must(S.VmbChannelEnable(b), 'enable B');
      S.VmbChannelStart(b);

      // Guest KMCL opens B normally.
      const cb = makeClient(C, { instance: INSTANCE2 });
      must(C.VmbChannelEnable(cb), 'client B');
      await until(() => kmclChannelInfo(cb).flowing && kmclChannelInfo(b).flowing, 'B flowing');
      const echoB = async (tag: number): Promise<number> => {
        const r = deferred<number>();
        const pk = C.VmbPacketAllocate(cb)!;
        C.VmbPacketSetCompletionRoutine(pk, (x, st, buf) => {
          C.VmbPacketFree(x);
          r.resolve(st === STATUS_SUCCESS ? buf![0]! : -1);
        });
        must(C.VmbPacketSend(pk, Uint8Array.of(tag), 1, null, WAIT), 'send B');
        return r.promise;
      };
      assert.equal(await echoB(1), 1);

      // The hostile guest opens A with rings of its own.
      await until(() => raw.offers().some((o) => o.interfaceInstance.equals(INSTANCE)), 'offer A');
      const offerA = raw.offers().find((o) => o.interfaceInstance.equals(INSTANCE))!;
      const pfns = Array.from(guestBus.allocator.allocate(8, 'scattered'));
      RingMemory.fromGuestMemory(p.memory, pfns.slice(0, 4)).initialize();
      RingMemory.fromGuestMemory(p.memory, pfns.slice(4)).initialize();
      const g = await raw.createGpadl(offerA.relid, pfns);
      assert.equal(g.status, 0);
      assert.equal(
        await raw.openChannel(offerA.relid, { ringGpadlId: g.gpadlId, downstreamPageOffset: 4 }),
        0,
      );
      await until(() => kmclChannelInfo(a).flowing, 'A flowing');
      const rings = channelRingsFromGpadl(p.memory, pfns, 4);
      const w = new RingWriter(rings.guestToHost);

      // A canary page the guest never shares with the host.
      const canaryPfn = guestBus.allocator.allocate(1, 'contiguous')[0]!;
      p.memory.page(canaryPfn).fill(0x5a);
      const grantsBefore = hostBus.server(p.partitionId)!.hostView.liveGrantCount;

      // 1. External data outside guest RAM; 2. a range longer than its pages; 3. a huge count.
      const pages = p.memory.pageCount;
      w.writeRaw(gpaDirect(1, 4096, 0, [pages + 10]));
      w.writeRaw(gpaDirect(2, 3 * 4096, 4000, [canaryPfn]));
      w.writeRaw(gpaDirect(3, 0xffffffff, 0, [canaryPfn]));
      if (w.commit()) raw.signalHost(offerA.relid);
      await until(() => peerErrors.length >= 3, 'three refusals');
      assert.deepEqual(
        peerErrors.map((x) => [x.ch === a, x.e.code]),
        [
          [true, 'bad-external-data'],
          [true, 'bad-external-data'],
          [true, 'bad-external-data'],
        ],
      );
      assert.equal(aPackets, 0, 'nothing malformed reached the driver');
      assert.equal(await echoB(2), 2, 'B unaffected');

      // 4. The host asks A for something; the guest never answers.
      const hostTxn = deferred<number>();
      const hp = S.VmbPacketAllocate(a)!;
      S.VmbPacketSetCompletionRoutine(hp, (x, st) => {
        S.VmbPacketFree(x);
        hostTxn.resolve(st);
      });
      must(S.VmbPacketSend(hp, Uint8Array.of(1), 1, null, WAIT), 'host send A');

      // 5. A corrupt write index on A's incoming ring.
      Atomics.store(rings.guestToHost.control, CONTROL_WRITE_INDEX, 0x7ffffff3);
      raw.signalHost(offerA.relid);
      await until(() => kmclChannelInfo(a).dataPathFailed, 'A data path stopped');
      assert.equal(peerErrors.at(-1)!.e.code, 'ring-corrupt');
      assert.equal(await echoB(3), 3, 'B unaffected');

      // 6. The host gives up on A: its transaction ends with STATUS_DEVICE_REMOVED and Disable
      // returns although the guest never releases the relid.
      const t0 = Date.now();
      await S.VmbChannelDisable(a);
      const took = Date.now() - t0;
      assert.equal(await hostTxn.promise, STATUS_DEVICE_REMOVED);
      assert.ok(took >= 150 && took < 5000, `Disable took ${took} ms`);
      S.VmbChannelCleanup(a);
      assert.equal(await echoB(4), 4, 'B unaffected');

      // The host never wrote outside what it was given, and holds no grant from the attack.
      assert.ok(
        p.memory.page(canaryPfn).every((x) => x === 0x5a),
        'canary page untouched',
      );
      assert.ok(hostBus.server(p.partitionId)!.hostView.liveGrantCount <= grantsBefore);

      await C.VmbChannelDisable(cb);
      await S.VmbChannelDisable(b);
    } finally {
      raw.dispose();
      await hostBus.dispose();
      hv.close();
    }
  });
});
