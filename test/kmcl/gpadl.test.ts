// GPADLs (spec 3.4): client create (buffer, MDL) and delete, server map and unmap, the ordering
// "delete waits for unmap", read-only GPADLs, limits, and cleanup at close.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  KmclContractViolation,
  kmclChannelInfo,
  STATUS_ACCESS_DENIED,
  STATUS_INVALID_BUFFER_SIZE,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_PARAMETER,
  STATUS_INVALID_PARAMETER_2,
  STATUS_INVALID_PARAMETER_3,
  STATUS_NOT_SUPPORTED,
  STATUS_SUCCESS,
  VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY,
} from '../../src/kmcl/index.js';
import { MemoryAccessError } from '../../src/memory/guest-memory.js';
import type { GrantedMdl } from '../../src/memory/host-view.js';
import { chainMdls, mdlFromPfns, pfnArrayWrite } from '../../src/memory/mdl.js';
import { expectStatus, makeClient, makeRig, openPair } from './harness.js';

describe('kmcl GPADLs', () => {
  test('create in Opened, map on the server, delete waits for the unmap', async () => {
    const rig = makeRig();
    const mem = rig.part.memory;
    const pfns = rig.part.allocator.allocate(4, 'contiguous');
    const buffer = mem.view(pfns[0]! * 4096, 4 * 4096);
    let handle = 0;
    const { server, client } = await openPair(
      rig,
      {},
      {
        opened: async (ch) => {
          const r = await rig.C.VmbChannelCreateGpadlFromBuffer(ch, 0, buffer, buffer.length);
          expectStatus(r.status, STATUS_SUCCESS);
          handle = r.GpadlHandle;
          return STATUS_SUCCESS;
        },
      },
    );
    assert.ok(handle !== 0);
    assert.equal(kmclChannelInfo(client).gpadls, 1);
    const m = rig.S.VmbChannelMapGpadl(server, 0, handle);
    expectStatus(m.status, STATUS_SUCCESS);
    const mdl = m.Mdl!;
    assert.equal(mdl.byteCount, 4 * 4096);
    mdl.write(100, Uint8Array.of(1, 2, 3));
    assert.deepEqual(Array.from(buffer.subarray(100, 103)), [1, 2, 3]);
    expectStatus(rig.S.VmbChannelMapGpadl(server, 0, handle).status, STATUS_INVALID_DEVICE_STATE);

    const order: string[] = [];
    const deleting = rig.C.VmbChannelDeleteGpadl(client, handle).then(() => order.push('deleted'));
    await rig.idle();
    assert.equal(order.length, 0, 'the delete waits while the server has it mapped');
    order.push('unmap');
    rig.S.VmbChannelUnmapGpadl(server, handle);
    await deleting;
    assert.deepEqual(order, ['unmap', 'deleted']);
    assert.throws(
      () => mdl.read(0, new Uint8Array(1)),
      (e: unknown) => e instanceof MemoryAccessError && e.code === 'revoked',
    );
    assert.throws(() => rig.S.VmbChannelUnmapGpadl(server, handle), KmclContractViolation);
    expectStatus(rig.S.VmbChannelMapGpadl(server, 0, handle).status, STATUS_INVALID_PARAMETER_3);
    assert.throws(() => rig.C.VmbChannelDeleteGpadl(client, handle), KmclContractViolation);
  });

  test('read-only GPADL: a writable map is refused, a read-only map cannot write', async () => {
    const rig = makeRig();
    const { server, client } = await openPair(rig);
    const pfns = rig.part.allocator.allocate(1);
    pfnArrayWrite(rig.part.memory, pfns, 0, Uint8Array.of(9, 9));
    const r = await rig.C.VmbChannelCreateGpadlFromMdl(
      client,
      VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY,
      mdlFromPfns(pfns),
      0,
      0,
    );
    expectStatus(r.status, STATUS_SUCCESS);
    expectStatus(rig.S.VmbChannelMapGpadl(server, 0, r.GpadlHandle).status, STATUS_ACCESS_DENIED);
    const m = rig.S.VmbChannelMapGpadl(server, VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY, r.GpadlHandle);
    expectStatus(m.status, STATUS_SUCCESS);
    const b = new Uint8Array(2);
    m.Mdl!.read(0, b);
    assert.deepEqual(Array.from(b), [9, 9]);
    assert.throws(
      () => m.Mdl!.write(0, b),
      (e: unknown) => e instanceof MemoryAccessError && e.code === 'read-only',
    );
    expectStatus(rig.S.VmbChannelMapGpadl(server, 0x10, r.GpadlHandle).status, STATUS_INVALID_PARAMETER_2);
    rig.S.VmbChannelUnmapGpadl(server, r.GpadlHandle);
    await rig.C.VmbChannelDeleteGpadl(client, r.GpadlHandle);
  });

  test('from an MDL chain: one range per MDL, with the requested sub-range', async () => {
    const rig = makeRig();
    const { server, client } = await openPair(rig);
    const a = rig.part.allocator.allocate(2, 'scattered');
    const b = rig.part.allocator.allocate(1, 'scattered');
    pfnArrayWrite(rig.part.memory, a, 0, new Uint8Array(8192).fill(0xaa));
    pfnArrayWrite(rig.part.memory, b, 0, new Uint8Array(4096).fill(0xbb));
    const chain = chainMdls([mdlFromPfns(a, 100, 5000), mdlFromPfns(b, 0, 4096)]);
    const r = await rig.C.VmbChannelCreateGpadlFromMdl(client, 0, chain, 4990, 20);
    expectStatus(r.status, STATUS_SUCCESS);
    const m = rig.S.VmbChannelMapGpadl(server, 0, r.GpadlHandle);
    expectStatus(m.status, STATUS_SUCCESS);
    assert.equal(m.Mdl!.byteCount, 20);
    const got = new Uint8Array(20);
    m.Mdl!.read(0, got);
    assert.deepEqual(Array.from(got), [...new Array(10).fill(0xaa), ...new Array(10).fill(0xbb)]);
    let ranges = 0;
    for (let x = m.Mdl!.mdl as { next?: unknown } | null | undefined; x != null; x = x.next as typeof x)
      ranges++;
    assert.equal(ranges, 2);
    expectStatus(
      (await rig.C.VmbChannelCreateGpadlFromMdl(client, 0, chain, 9000, 200)).status,
      0xc00000f3 | 0,
    );
  });

  test('limits and states: 8190 pages per GPADL, client only, open only, blocking only', async () => {
    const rig = makeRig({ memoryBytes: 40 * 1024 * 1024 });
    const mem = rig.part.memory;
    const pfns = rig.part.allocator.allocate(8191, 'contiguous');
    const { server, client } = await openPair(rig);
    const view = mem.view(pfns[0]! * 4096, 8191 * 4096);
    expectStatus(
      (await rig.C.VmbChannelCreateGpadlFromBuffer(client, 0, view, view.length)).status,
      STATUS_INVALID_BUFFER_SIZE,
    );
    const okr = await rig.C.VmbChannelCreateGpadlFromBuffer(client, 0, view, 8190 * 4096);
    expectStatus(okr.status, STATUS_SUCCESS);
    expectStatus(
      (await rig.C.VmbChannelCreateGpadlFromBuffer(client, 0, new Uint8Array(4096), 4096)).status,
      STATUS_INVALID_PARAMETER_3,
    );
    expectStatus(
      (await rig.C.VmbChannelCreateGpadlFromBuffer(client, 2, view, 4096)).status,
      STATUS_INVALID_PARAMETER_2,
    );
    expectStatus((await rig.C.VmbChannelCreateGpadlFromBuffer(client, 0, view, 0)).status, 0xc00000f2 | 0);
    expectStatus(
      (await rig.S.VmbChannelCreateGpadlFromBuffer(server, 0, view, 4096)).status,
      STATUS_NOT_SUPPORTED,
    );
    expectStatus(
      rig.C.VmbClientChannelInitSetRingBufferPageCount(makeClient(rig), 4096, 4095),
      STATUS_INVALID_PARAMETER,
    );
    const unopened = makeClient(rig);
    expectStatus(
      (await rig.C.VmbChannelCreateGpadlFromBuffer(unopened, 0, view, 4096)).status,
      STATUS_INVALID_DEVICE_STATE,
    );
    assert.equal('VmbChannelMapGpadl' in rig.C, false, 'the client table has no server-only functions');
    expectStatus(rig.S.VmbChannelMapGpadl(server, 0, okr.GpadlHandle).status, STATUS_SUCCESS);
    rig.S.VmbChannelUnmapGpadl(server, okr.GpadlHandle);
    await rig.C.VmbChannelDeleteGpadl(client, okr.GpadlHandle);
  });

  test('leftovers at close: the client deletes its GPADLs, the server mapping is revoked', async () => {
    const rig = makeRig();
    let mapped: GrantedMdl | null = null;
    let handle = 0;
    const { server, client } = await openPair(rig, {
      closed: () => {
        // A well-behaved server would unmap here; this one forgets.
      },
    });
    const pfns = rig.part.allocator.allocate(1);
    const r = await rig.C.VmbChannelCreateGpadlFromMdl(client, 0, mdlFromPfns(pfns), 0, 0);
    handle = r.GpadlHandle;
    mapped = rig.S.VmbChannelMapGpadl(server, 0, handle).Mdl!;
    await rig.C.VmbChannelDisable(client);
    await rig.idle();
    assert.equal(kmclChannelInfo(client).gpadls, 0);
    assert.equal(kmclChannelInfo(server).mappedGpadls, 0);
    const m = mapped as GrantedMdl;
    assert.throws(
      () => m.read(0, new Uint8Array(1)),
      (e: unknown) => e instanceof MemoryAccessError && e.code === 'revoked',
    );
    assert.equal(rig.part.hostView.liveGrantCount, 0, 'no grant survives the close (ring included)');
  });

  test('CreateGpadl from a non-blocking callback is a contract violation', async () => {
    const rig = makeRig();
    const errors: string[] = [];
    const { server } = await openPair(
      rig,
      {},
      {
        onPacket: (ch, pkt) => {
          try {
            void rig.C.VmbChannelCreateGpadlFromBuffer(ch, 0, new Uint8Array(1), 1);
            errors.push('no-throw');
          } catch (e) {
            errors.push((e as KmclContractViolation).code);
          }
          rig.C.VmbChannelPacketComplete(pkt, null, 0);
        },
      },
    );
    const p = rig.S.VmbPacketAllocate(server)!;
    expectStatus(rig.S.VmbPacketSend(p, new Uint8Array(8), 8, null, 0), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(errors, ['blocking-call-in-nonblocking-context']);
  });
});
