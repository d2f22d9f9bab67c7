// Packet objects that a restore (VmbChannelRestoreFromBuffer) brought back: KMCL restoring them
// itself when the VSP has no save/restore callbacks, VmbPacketInitialize memory as a restored
// packet, and restored objects used again afterwards. A packet allocated during a restore only
// gets room for its saved bytes, so these check that its next send, with a packet of the largest
// size, gets a full staging area, and that such packets go back to the pool and work from there.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  KmclProvider,
  kmclChannelInfo,
  NT_SUCCESS,
  queryInterface,
  STATUS_BUFFER_TOO_SMALL,
  STATUS_SUCCESS,
  type VMBCHANNEL,
  type VMBPACKET,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import { expectStatus, makeClient, makeRig, makeServer, type Rig, type SideOptions } from './harness.js';

const WAIT = VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION;
/** The default maximum packet size: the largest payload a send may carry. */
const LARGEST = 4096;

function stamped(seq: number, size: number): Uint8Array {
  const b = new Uint8Array(size);
  new DataView(b.buffer).setUint32(0, seq, true);
  b[size - 1] = seq & 0xff;
  return b;
}

function seqOf(buf: Uint8Array): number {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(0, true);
}

function newServerTable(rig: Rig): KMCL_SERVER_INTERFACE_V1 {
  return queryInterface<KMCL_SERVER_INTERFACE_V1>(
    KmclProvider.forHost(rig.lb),
    KMCL_SERVER_INTERFACE_TYPE,
    KMCL_SERVER_INTERFACE_V1_SIZE,
    KMCL_SERVER_INTERFACE_VERSION_V1,
  ).Interface!;
}

/** The guest: a small host-to-guest ring; records what arrives and echoes it as the completion. */
function guest(rig: Rig) {
  const got: { seq: number; length: number; last: number }[] = [];
  const client = makeClient(rig, {
    configure: (c) =>
      expectStatus(rig.C.VmbClientChannelInitSetRingBufferPageCount(c, 4, 16), STATUS_SUCCESS),
    onPacket: (_c, pkt, buf, len) => {
      got.push({ seq: seqOf(buf!), length: len, last: buf![len - 1]! });
      rig.C.VmbChannelPacketComplete(pkt, buf, len);
    },
  });
  return { client, got };
}

/**
 * Opens `server` (built by the caller) with the guest, pauses the guest and sends `n` 8-byte
 * transactions with `send`: the ring fills and the rest queue. Then pauses the server.
 */
async function fill(
  rig: Rig,
  S: KMCL_SERVER_INTERFACE_V1,
  server: VMBCHANNEL,
  client: VMBCHANNEL,
  n: number,
  send: (i: number) => void,
): Promise<{ queued: number; transactions: number }> {
  expectStatus(S.VmbChannelEnable(server), STATUS_SUCCESS);
  S.VmbChannelStart(server);
  expectStatus(rig.C.VmbChannelEnable(client), STATUS_SUCCESS);
  await rig.idle();
  await rig.C.VmbChannelPause(client);
  for (let i = 0; i < n; i++) send(i);
  await rig.idle();
  await S.VmbChannelPause(server);
  const info = kmclChannelInfo(server);
  assert.ok(info.queuedOutgoing > 0, 'some sends are queued');
  assert.ok(info.awaitingCompletion > info.queuedOutgoing, 'some transactions are in the ring');
  return { queued: info.queuedOutgoing, transactions: info.awaitingCompletion };
}

/** Saves `server` into one buffer, hands it off and cleans it up. */
async function saveAway(S: KMCL_SERVER_INTERFACE_V1, server: VMBCHANNEL): Promise<Uint8Array> {
  expectStatus(S.VmbChannelSaveBegin(server), STATUS_SUCCESS);
  const buf = new Uint8Array(1 << 20);
  const r = S.VmbChannelSaveContinue(server, buf, buf.length);
  expectStatus(r.status, STATUS_SUCCESS);
  S.VmbChannelSaveEnd(server);
  await S.VmbChannelDisable(server);
  S.VmbChannelCleanup(server);
  return buf.subarray(0, r.BytesFilled);
}

describe('kmcl: packet objects brought back by a restore', () => {
  test('without save/restore callbacks KMCL restores the packets; pooled, they carry the largest packets', async () => {
    const rig = makeRig();
    const g = guest(rig);
    const a = makeServer(rig, { noStart: true });
    const N = 600;
    const sent = await fill(rig, rig.S, a, g.client, N, (i) => {
      const p = rig.S.VmbPacketAllocate(a)!;
      expectStatus(rig.S.VmbPacketSend(p, stamped(i, 8), 8, null, WAIT), STATUS_SUCCESS);
    });
    const saved = await saveAway(rig.S, a);

    const S2 = newServerTable(rig);
    const b = makeServer({ ...rig, S: S2 }, { noStart: true });
    expectStatus(S2.VmbChannelRestoreFromBuffer(b, saved, saved.length), STATUS_SUCCESS);
    assert.equal(kmclChannelInfo(b).queuedOutgoing, sent.queued);
    assert.equal(kmclChannelInfo(b).awaitingCompletion, sent.transactions);
    expectStatus(S2.VmbChannelEnable(b), STATUS_SUCCESS);
    S2.VmbChannelStart(b);
    rig.C.VmbChannelStart(g.client);
    await rig.idle();
    assert.deepEqual(
      g.got.map((x) => x.seq),
      Array.from({ length: N }, (_, i) => i),
    );
    assert.equal(kmclChannelInfo(b).awaitingCompletion, 0, 'the default routine freed every restored packet');

    // The freed restored packets are in the pool; allocated again, they send the largest packets.
    for (let i = 0; i < 50; i++) {
      const p = S2.VmbPacketAllocate(b)!;
      expectStatus(S2.VmbPacketSend(p, stamped(N + i, LARGEST), LARGEST, null, WAIT), STATUS_SUCCESS);
    }
    await rig.idle();
    const big = g.got.slice(N);
    assert.equal(big.length, 50);
    for (let i = 0; i < 50; i++) {
      assert.deepEqual(big[i], { seq: N + i, length: LARGEST, last: (N + i) & 0xff });
    }
    assert.equal(kmclChannelInfo(b).awaitingCompletion, 0);
    assert.equal(rig.peerErrors.length, 0);
  });

  test('VmbPacketInitialize memory and allocated packets, restored, are sent again with the largest packets', async () => {
    const rig = makeRig();
    const g = guest(rig);
    const N = 600;
    /** Sequence numbers of completed transactions, and each completion's length. */
    const completed: { seq: number; length: number }[] = [];
    const initialized = new Set<VMBPACKET>();

    /** A VSP whose completion routine sends each restored packet object once more, full size. */
    const vsp = (S: KMCL_SERVER_INTERFACE_V1) => {
      const routine = (p: VMBPACKET, status: number, buf: Uint8Array | null, len: number) => {
        expectStatus(status, STATUS_SUCCESS);
        const seq = S.VmbPacketGetPointer(p) as number;
        assert.equal(seqOf(buf!), seq);
        completed.push({ seq, length: len });
        if (seq < N) {
          S.VmbPacketSetPointer(p, seq + N);
          expectStatus(S.VmbPacketSend(p, stamped(seq + N, LARGEST), LARGEST, null, WAIT), STATUS_SUCCESS);
        } else if (!initialized.has(p)) S.VmbPacketFree(p);
      };
      const options: SideOptions = {
        noStart: true,
        configure: (ch) =>
          expectStatus(
            S.VmbServerChannelInitSetSaveRestorePacketCallbacks(
              ch,
              (_c, p, buf, size) => {
                if (buf === null || size < 4) return { status: STATUS_BUFFER_TOO_SMALL, BytesNeeded: 4 };
                new DataView(buf.buffer, buf.byteOffset).setUint32(
                  0,
                  S.VmbPacketGetPointer(p) as number,
                  true,
                );
                return { status: STATUS_SUCCESS, BytesNeeded: 4 };
              },
              (c, lib, libSize, save) => {
                const seq = new DataView(save.buffer, save.byteOffset).getUint32(0, true);
                let p: VMBPACKET;
                if (seq % 2 === 0) {
                  const storage = new Uint8Array(S.VmbChannelSizeofPacket(c));
                  expectStatus(S.VmbPacketInitialize(c, storage, storage.length), STATUS_SUCCESS);
                  initialized.add(storage);
                  p = storage;
                } else p = S.VmbPacketAllocate(c)!;
                const st = S.VmbPacketRestore(p, lib, libSize);
                if (!NT_SUCCESS(st)) return st;
                S.VmbPacketSetPointer(p, seq);
                S.VmbPacketSetCompletionRoutine(p, routine);
                return STATUS_SUCCESS;
              },
            ),
            STATUS_SUCCESS,
          ),
      };
      return { options, routine };
    };

    const first = vsp(rig.S);
    const a = makeServer(rig, first.options);
    const sent = await fill(rig, rig.S, a, g.client, N, (i) => {
      const p = rig.S.VmbPacketAllocate(a)!;
      rig.S.VmbPacketSetPointer(p, i);
      rig.S.VmbPacketSetCompletionRoutine(p, first.routine);
      expectStatus(rig.S.VmbPacketSend(p, stamped(i, 8), 8, null, WAIT), STATUS_SUCCESS);
    });
    const saved = await saveAway(rig.S, a);

    const S2 = newServerTable(rig);
    const b = makeServer({ ...rig, S: S2 }, vsp(S2).options);
    expectStatus(S2.VmbChannelRestoreFromBuffer(b, saved, saved.length), STATUS_SUCCESS);
    assert.equal(kmclChannelInfo(b).queuedOutgoing, sent.queued);
    assert.equal(initialized.size, N / 2);
    expectStatus(S2.VmbChannelEnable(b), STATUS_SUCCESS);
    S2.VmbChannelStart(b);
    rig.C.VmbChannelStart(g.client);
    await rig.idle();

    // Every transaction completes once, in order; then every packet object's second send does.
    assert.deepEqual(
      completed.map((c) => c.seq),
      Array.from({ length: 2 * N }, (_, i) => i),
    );
    for (const c of completed) assert.equal(c.length, c.seq < N ? 8 : LARGEST);
    for (const x of g.got.slice(N)) assert.deepEqual(x, { seq: x.seq, length: LARGEST, last: x.seq & 0xff });
    assert.equal(kmclChannelInfo(b).awaitingCompletion, 0);
    assert.equal(rig.peerErrors.length, 0);
  });
});
