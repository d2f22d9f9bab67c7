// External data (spec 3.1-3.2, seed 003): GPA-direct packets from PFN arrays and MDL chains, the
// host's access through grants that end at completion, read-only access, and the argument rules.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  STATUS_INVALID_PARAMETER,
  STATUS_INVALID_PARAMETER_4,
  STATUS_INVALID_PARAMETER_5,
  STATUS_INVALID_PARAMETER_6,
  STATUS_NOT_SUPPORTED,
  STATUS_SUCCESS,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_FORCE_MDL_LENGTH,
  VMBUS_CHANNEL_FORMAT_FLAG_PAGED_BUFFER,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
  VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY,
  VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA,
} from '../../src/kmcl/index.js';
import { MemoryAccessError } from '../../src/memory/guest-memory.js';
import type { GrantedMdl } from '../../src/memory/host-view.js';
import {
  chainMdls,
  type Mdl,
  mdlFromPfns,
  mdlRead,
  pfnArrayRead,
  pfnArrayWrite,
} from '../../src/memory/mdl.js';
import { expectStatus, head, makeRig, openPair } from './harness.js';

const WAIT = VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION;
const MiB = 1024 * 1024;

describe('kmcl external data', () => {
  test('1 MiB through external PFNs: the host writes guest pages, then loses access at completion', async () => {
    const rig = makeRig();
    let granted: GrantedMdl | null = null;
    let flagsSeen = -1;
    let command: number[] = [];
    const { client } = await openPair(
      rig,
      {
        onPacket: (_ch, pkt, buf, _len, flags) => {
          flagsSeen = flags;
          command = head(buf, 4);
          const r = rig.S.VmbChannelPacketGetExternalData(pkt, 0);
          expectStatus(r.status, STATUS_SUCCESS);
          granted = r.Mdl!;
          assert.equal(granted.byteCount, MiB);
          const chunk = new Uint8Array(64 * 1024);
          for (let off = 0; off < MiB; off += chunk.length) {
            for (let i = 0; i < chunk.length; i++) chunk[i] = (off / 1024 + i) & 0xff;
            granted.write(off, chunk);
          }
          rig.S.VmbChannelPacketComplete(pkt, Uint8Array.of(1), 1);
        },
      },
      {
        configure: (ch) =>
          expectStatus(rig.C.VmbChannelInitSetMaximumExternalData(ch, MiB, 1), STATUS_SUCCESS),
      },
    );
    const pfns = rig.part.allocator.allocate(256, 'scattered');
    const p = rig.C.VmbPacketAllocate(client)!;
    const done: number[] = [];
    rig.C.VmbPacketSetCompletionRoutine(p, (_pk, st, buf) => done.push(st, ...head(buf, 1)));
    expectStatus(
      rig.C.VmbPacketSendWithExternalPfns(p, Uint8Array.of(9, 8, 7, 6), 4, pfns, 256, WAIT),
      STATUS_SUCCESS,
    );
    await rig.idle();
    assert.deepEqual(done, [STATUS_SUCCESS, 1]);
    assert.equal(flagsSeen, VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA);
    assert.deepEqual(command, [9, 8, 7, 6]);
    // The guest sees what the host wrote.
    const all = new Uint8Array(MiB);
    pfnArrayRead(rig.part.memory, pfns, 0, all);
    let bad = 0;
    for (let off = 0; off < MiB; off += 64 * 1024) {
      for (let i = 0; i < 64 * 1024; i++) if (all[off + i] !== ((off / 1024 + i) & 0xff)) bad++;
    }
    assert.equal(bad, 0);
    // After completion the grant is revoked: no more reads or writes, through the MDL or by GPA.
    const g = granted as GrantedMdl | null;
    assert.ok(g !== null);
    assert.throws(
      () => g.read(0, new Uint8Array(1)),
      (e: unknown) => e instanceof MemoryAccessError && e.code === 'revoked',
    );
    assert.throws(
      () => g.write(0, new Uint8Array(1)),
      (e: unknown) => e instanceof MemoryAccessError && e.code === 'revoked',
    );
    assert.throws(
      () => rig.part.hostView.read(pfns[0]! * 4096, new Uint8Array(16)),
      (e: unknown) => e instanceof MemoryAccessError && e.code === 'revoked',
    );
    assert.equal(rig.part.hostView.liveGrantCount, 1, 'only the ring grant is left');
  });

  test('READ_ONLY external data: reads work, writes are refused', async () => {
    const rig = makeRig();
    const results: string[] = [];
    const { client } = await openPair(rig, {
      onPacket: (_ch, pkt) => {
        const r = rig.S.VmbChannelPacketGetExternalData(
          pkt,
          VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY,
        );
        expectStatus(r.status, STATUS_SUCCESS);
        const b = new Uint8Array(4);
        r.Mdl!.read(0, b);
        results.push(Array.from(b).join(','));
        try {
          r.Mdl!.write(0, b);
          results.push('written');
        } catch (e) {
          results.push((e as MemoryAccessError).code);
        }
        expectStatus(rig.S.VmbChannelPacketGetExternalData(pkt, 0x2).status, 0xc00000f0 | 0);
        rig.S.VmbChannelPacketComplete(pkt, null, 0);
      },
    });
    const pfns = rig.part.allocator.allocate(1);
    pfnArrayWrite(rig.part.memory, pfns, 0, Uint8Array.of(5, 6, 7, 8));
    const p = rig.C.VmbPacketAllocate(client)!;
    expectStatus(rig.C.VmbPacketSendWithExternalPfns(p, null, 0, pfns, 1, WAIT), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(results, ['5,6,7,8', 'read-only']);
  });

  test('MDL chains: offset/length select bytes across MDLs, one GPA range each; FORCE_MDL_LENGTH', async () => {
    const rig = makeRig();
    const seen: { ranges: number; bytes: number[] }[] = [];
    let lastMdl: GrantedMdl | null = null;
    const { client } = await openPair(rig, {
      onPacket: (_ch, pkt) => {
        const r = rig.S.VmbChannelPacketGetExternalData(pkt, 0);
        expectStatus(r.status, STATUS_SUCCESS);
        lastMdl = r.Mdl!;
        const b = new Uint8Array(r.Mdl!.byteCount);
        r.Mdl!.read(0, b);
        let ranges = 0;
        for (let m: Mdl | null | undefined = r.Mdl!.mdl; m != null; m = m.next) ranges++;
        seen.push({ ranges, bytes: Array.from(b) });
        rig.S.VmbChannelPacketComplete(pkt, null, 0);
      },
    });
    const mem = rig.part.memory;
    const a = rig.part.allocator.allocate(2, 'scattered');
    const b = rig.part.allocator.allocate(1, 'scattered');
    const bytesA = new Uint8Array(8192).map((_, i) => i & 0xff);
    pfnArrayWrite(mem, a, 0, bytesA);
    pfnArrayWrite(mem, b, 0, new Uint8Array(4096).fill(0xee));
    // MDL 1: 100 bytes at offset 4090 of page a[0] (spans into a[1]); MDL 2: 50 bytes of b.
    const chain = chainMdls([mdlFromPfns(a, 4090, 100), mdlFromPfns(b, 0, 50)]);
    const p = rig.C.VmbPacketAllocate(client)!;
    rig.C.VmbPacketSetCompletionRoutine(p, () => {});
    expectStatus(rig.C.VmbPacketSendWithExternalMdl(p, null, 0, chain, 90, 20, WAIT), STATUS_SUCCESS);
    await rig.idle();
    const expected = [...Array.from(bytesA.subarray(4090 + 90, 4090 + 100)), ...new Array(10).fill(0xee)];
    assert.deepEqual(seen[0], { ranges: 2, bytes: expected });
    // MdlLength 0 means "the whole chain from the offset".
    expectStatus(rig.C.VmbPacketSendWithExternalMdl(p, null, 0, chain, 0, 0, WAIT), STATUS_SUCCESS);
    await rig.idle();
    assert.equal(seen[1]!.bytes.length, 150);
    const direct = new Uint8Array(150);
    mdlRead(mem, chain, 0, direct);
    assert.deepEqual(seen[1]!.bytes, Array.from(direct));
    // FORCE_MDL_LENGTH: only the first MDL, and its length may run to the end of its last page.
    const force = WAIT | VMBUS_CHANNEL_FORMAT_FLAG_FORCE_MDL_LENGTH;
    expectStatus(rig.C.VmbPacketSendWithExternalMdl(p, null, 0, chain, 0, 4102, force), STATUS_SUCCESS);
    await rig.idle();
    assert.equal(seen[2]!.ranges, 1);
    assert.deepEqual(seen[2]!.bytes, Array.from(bytesA.subarray(4090, 4090 + 4102)));
    expectStatus(
      rig.C.VmbPacketSendWithExternalMdl(p, null, 0, chain, 0, 4103, force),
      STATUS_INVALID_PARAMETER_6,
    );
    expectStatus(
      rig.C.VmbPacketSendWithExternalMdl(p, null, 0, chain, 151, 0, WAIT),
      STATUS_INVALID_PARAMETER_5,
    );
    expectStatus(
      rig.C.VmbPacketSendWithExternalMdl(p, null, 0, chain, 100, 100, WAIT),
      STATUS_INVALID_PARAMETER_5,
    );
    // VmbPacketSend with an MDL is the whole-MDL form.
    expectStatus(rig.C.VmbPacketSend(p, null, 0, chain, WAIT), STATUS_SUCCESS);
    await rig.idle();
    assert.equal(seen[3]!.bytes.length, 150);
    assert.ok(lastMdl !== null);
  });

  test('external data rules: WAIT_FOR_COMPLETION required, caps, PFNs inside guest RAM, client only', async () => {
    const rig = makeRig();
    const { client, server } = await openPair(
      rig,
      {},
      {
        configure: (ch) =>
          expectStatus(rig.C.VmbChannelInitSetMaximumExternalData(ch, 8192, 2), STATUS_SUCCESS),
      },
    );
    const { C, S } = rig;
    const p = C.VmbPacketAllocate(client)!;
    const pfns = rig.part.allocator.allocate(3);
    expectStatus(C.VmbPacketSendWithExternalPfns(p, null, 0, pfns, 1, 0), STATUS_INVALID_PARAMETER);
    expectStatus(C.VmbPacketSendWithExternalPfns(p, null, 0, pfns, 3, WAIT), STATUS_INVALID_PARAMETER_5);
    expectStatus(C.VmbPacketSendWithExternalPfns(p, null, 0, pfns, 0, WAIT), STATUS_INVALID_PARAMETER_5);
    expectStatus(
      C.VmbPacketSendWithExternalPfns(p, null, 0, [rig.part.memory.pageCount], 1, WAIT),
      STATUS_INVALID_PARAMETER_4,
    );
    expectStatus(C.VmbPacketSendWithExternalPfns(p, null, 0, [1.5], 1, WAIT), STATUS_INVALID_PARAMETER_4);
    const big = chainMdls([mdlFromPfns(pfns, 0, 3 * 4096)]);
    expectStatus(C.VmbPacketSendWithExternalMdl(p, null, 0, big, 0, 0, WAIT), STATUS_INVALID_PARAMETER);
    const three = chainMdls([
      mdlFromPfns([pfns[0]!], 0, 10),
      mdlFromPfns([pfns[1]!], 0, 10),
      mdlFromPfns([pfns[2]!], 0, 10),
    ]);
    expectStatus(C.VmbPacketSendWithExternalMdl(p, null, 0, three, 0, 0, WAIT), STATUS_INVALID_PARAMETER);
    const loop = mdlFromPfns([pfns[0]!], 0, 10);
    loop.next = loop;
    expectStatus(C.VmbPacketSendWithExternalMdl(p, null, 0, loop, 0, 0, WAIT), STATUS_INVALID_PARAMETER);
    expectStatus(
      C.VmbPacketSendWithExternalMdl(p, null, 0, { byteOffset: 0, byteCount: 10, pfns: [] }, 0, 0, WAIT),
      STATUS_INVALID_PARAMETER_4,
    );
    const sp = S.VmbPacketAllocate(server)!;
    expectStatus(S.VmbPacketSendWithExternalPfns(sp, null, 0, pfns, 1, WAIT), STATUS_NOT_SUPPORTED);
    // PAGED_BUFFER: the inline buffer is copied; the send works the same.
    C.VmbPacketSetCompletionRoutine(p, () => {});
    expectStatus(
      C.VmbPacketSendWithExternalPfns(
        p,
        Uint8Array.of(1, 2),
        2,
        pfns,
        1,
        WAIT | VMBUS_CHANNEL_FORMAT_FLAG_PAGED_BUFFER,
      ),
      STATUS_SUCCESS,
    );
    await rig.idle();
  });

  test('GetExternalData on a packet without external data fails; the MDL is the same on a second call', async () => {
    const rig = makeRig();
    const out: number[] = [];
    let same = false;
    const { client } = await openPair(rig, {
      onPacket: (_ch, pkt: VMBPACKETCOMPLETION, _buf, _len, flags) => {
        const r = rig.S.VmbChannelPacketGetExternalData(pkt, 0);
        out.push(r.status);
        if (flags !== 0) same = rig.S.VmbChannelPacketGetExternalData(pkt, 0).Mdl === r.Mdl;
        rig.S.VmbChannelPacketComplete(pkt, null, 0);
      },
    });
    const p = rig.C.VmbPacketAllocate(client)!;
    rig.C.VmbPacketSetCompletionRoutine(p, () => {});
    expectStatus(rig.C.VmbPacketSend(p, Uint8Array.of(1), 1, null, WAIT), STATUS_SUCCESS);
    await rig.idle();
    expectStatus(
      rig.C.VmbPacketSendWithExternalPfns(p, null, 0, rig.part.allocator.allocate(1), 1, WAIT),
      STATUS_SUCCESS,
    );
    await rig.idle();
    assert.deepEqual(out, [STATUS_INVALID_PARAMETER, STATUS_SUCCESS]);
    assert.equal(same, true);
  });
});
