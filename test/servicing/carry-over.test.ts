// Servicing details over the loopback port: host completions queued for lack of ring space,
// the server's GPADL mappings, and VMBUS_SERVER_CHANNEL_INIT_FLAG_FORCE_NEW_CHANNEL.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  KmclProvider,
  kmclChannelInfo,
  queryInterface,
  STATUS_BUFFER_OVERFLOW,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_SUCCESS,
  type VMBCHANNEL,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_FORCE_NEW_CHANNEL,
} from '../../src/kmcl/index.js';
import { MemoryAccessError } from '../../src/memory/guest-memory.js';
import { expectStatus, makeClient, makeRig, makeServer, openPair, type Rig } from '../kmcl/harness.js';

function table(rig: Rig): KMCL_SERVER_INTERFACE_V1 {
  return queryInterface<KMCL_SERVER_INTERFACE_V1>(
    KmclProvider.forHost(rig.lb),
    KMCL_SERVER_INTERFACE_TYPE,
    KMCL_SERVER_INTERFACE_V1_SIZE,
    KMCL_SERVER_INTERFACE_VERSION_V1,
  ).Interface!;
}

/** Saves `ch` with 1 KiB buffers and hands it off (SaveEnd + Cleanup). */
async function saveAndDrop(S: KMCL_SERVER_INTERFACE_V1, ch: VMBCHANNEL): Promise<Uint8Array[]> {
  await S.VmbChannelPause(ch);
  expectStatus(S.VmbChannelSaveBegin(ch), STATUS_SUCCESS);
  const out: Uint8Array[] = [];
  for (;;) {
    const buf = new Uint8Array(1024);
    const r = S.VmbChannelSaveContinue(ch, buf, buf.length);
    out.push(buf.slice(0, r.BytesFilled));
    if (r.status === STATUS_SUCCESS) break;
    expectStatus(r.status, STATUS_BUFFER_OVERFLOW);
  }
  S.VmbChannelSaveEnd(ch);
  await S.VmbChannelDisable(ch);
  S.VmbChannelCleanup(ch);
  return out;
}

function restore(S: KMCL_SERVER_INTERFACE_V1, ch: VMBCHANNEL, chunks: Uint8Array[]): number {
  let st = 0;
  for (const c of chunks) st = S.VmbChannelRestoreFromBuffer(ch, c, c.length);
  return st;
}

describe('servicing: what is carried over', () => {
  test('host completions waiting for ring space reach the guest after the restore, in order', async () => {
    const rig = makeRig();
    const held: VMBPACKETCOMPLETION[] = [];
    const got: number[] = [];
    const { server, client } = await openPair(rig, { onPacket: (_c, pkt) => held.push(pkt) });
    const N = 200;
    for (let i = 0; i < N; i++) {
      const p = rig.C.VmbPacketAllocate(client)!;
      rig.C.VmbPacketSetCompletionRoutine(p, (pk, status, buf, len) => {
        expectStatus(status, STATUS_SUCCESS);
        assert.equal(len, 1024);
        got.push(buf![0]! | (buf![1]! << 8));
        rig.C.VmbPacketFree(pk);
      });
      const b = Uint8Array.of(i & 0xff, i >> 8);
      expectStatus(
        rig.C.VmbPacketSend(p, b, 2, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION),
        STATUS_SUCCESS,
      );
    }
    await rig.idle();
    assert.equal(held.length, N);
    await rig.C.VmbChannelPause(client);
    // 1 KiB completions: the host-to-guest ring (64 KiB) takes about 60 of them.
    for (let i = 0; i < N; i++) {
      const c = new Uint8Array(1024);
      c[0] = i & 0xff;
      c[1] = i >> 8;
      rig.S.VmbChannelPacketComplete(held[i]!, c, c.length);
    }
    const queued = kmclChannelInfo(server).queuedCompletions;
    assert.ok(queued > 0 && queued < N, `${queued} completions queued`);
    const chunks = await saveAndDrop(rig.S, server);
    const S2 = table(rig);
    const s2 = makeServer({ ...rig, S: S2 }, { noStart: true });
    expectStatus(restore(S2, s2, chunks), STATUS_SUCCESS);
    assert.equal(kmclChannelInfo(s2).queuedCompletions, queued);
    expectStatus(S2.VmbChannelEnable(s2), STATUS_SUCCESS);
    S2.VmbChannelStart(s2);
    rig.C.VmbChannelStart(client);
    await rig.idle();
    assert.deepEqual(
      got,
      Array.from({ length: N }, (_, i) => i),
    );
    assert.equal(kmclChannelInfo(s2).queuedCompletions, 0);
  });

  test("the server's GPADL mapping survives; the guest's delete still waits for the unmap", async () => {
    const rig = makeRig();
    const mem = rig.part.memory;
    const pfns = rig.part.allocator.allocate(2, 'contiguous');
    const buffer = mem.view(pfns[0]! * 4096, 2 * 4096);
    let handle = 0;
    const { server, client } = await openPair(
      rig,
      {},
      {
        opened: async (ch) => {
          const r = await rig.C.VmbChannelCreateGpadlFromBuffer(ch, 0, buffer, buffer.length);
          handle = r.GpadlHandle;
          return r.status;
        },
      },
    );
    const m = rig.S.VmbChannelMapGpadl(server, 0, handle);
    expectStatus(m.status, STATUS_SUCCESS);
    const old = m.Mdl!;
    old.write(10, Uint8Array.of(9));
    const chunks = await saveAndDrop(rig.S, server);
    assert.throws(() => old.write(10, Uint8Array.of(8)), MemoryAccessError, 'the old process lost its grant');
    const S2 = table(rig);
    const s2 = makeServer({ ...rig, S: S2 }, { noStart: true });
    expectStatus(restore(S2, s2, chunks), STATUS_SUCCESS);
    assert.equal(kmclChannelInfo(s2).mappedGpadls, 1);
    const again = S2.VmbChannelMapGpadl(s2, 0, handle);
    expectStatus(again.status, STATUS_SUCCESS, 'the first map after restore returns the mapping');
    again.Mdl!.write(11, Uint8Array.of(7));
    assert.deepEqual(Array.from(buffer.subarray(10, 12)), [9, 7]);
    expectStatus(S2.VmbChannelMapGpadl(s2, 0, handle).status, STATUS_INVALID_DEVICE_STATE);
    const order: string[] = [];
    const deleting = rig.C.VmbChannelDeleteGpadl(client, handle).then(() => order.push('deleted'));
    await rig.idle();
    assert.equal(order.length, 0, 'the delete waits while the restored server has it mapped');
    order.push('unmap');
    S2.VmbChannelUnmapGpadl(s2, handle);
    await deleting;
    assert.deepEqual(order, ['unmap', 'deleted']);
  });

  test('FORCE_NEW_CHANNEL: the old instance is rescinded and Enable makes a new offer', async () => {
    const rig = makeRig();
    const configure = (S: KMCL_SERVER_INTERFACE_V1) => (ch: VMBCHANNEL) =>
      expectStatus(
        S.VmbServerChannelInitSetFlags(ch, VMBUS_SERVER_CHANNEL_INIT_FLAG_FORCE_NEW_CHANNEL),
        STATUS_SUCCESS,
      );
    const { server, client } = await openPair(rig, { configure: configure(rig.S) });
    const p = rig.S.VmbPacketAllocate(server)!;
    await rig.C.VmbChannelPause(client);
    expectStatus(rig.S.VmbPacketSend(p, Uint8Array.of(1), 1, null, 0), STATUS_SUCCESS);
    const chunks = await saveAndDrop(rig.S, server);
    const S2 = table(rig);
    const s2 = makeServer({ ...rig, S: S2 }, { configure: configure(S2) });
    expectStatus(restore(S2, s2, chunks), STATUS_SUCCESS);
    assert.equal(kmclChannelInfo(s2).state, 'disabled', 'nothing carried over');
    await rig.idle();
    assert.equal(kmclChannelInfo(client).state, 'disabled', 'the guest saw the old instance rescinded');
    expectStatus(S2.VmbChannelEnable(s2), STATUS_SUCCESS);
    S2.VmbChannelStart(s2);
    const c2 = makeClient(rig);
    expectStatus(rig.C.VmbChannelEnable(c2), STATUS_SUCCESS);
    await rig.idle();
    assert.equal(kmclChannelInfo(s2).state, 'open');
    assert.equal(kmclChannelInfo(c2).flowing, true);
  });
});
