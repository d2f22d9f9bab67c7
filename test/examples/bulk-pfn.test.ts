// The bulk-transfer example (examples/bulk-pfn): blocks written from scattered guest pages and
// read back into fresh ones verify byte for byte; the VSP refuses requests that lie about their
// size or carry no external data; every guest page is given back. The whole run is checked over
// the loopback port and over the real VMBus.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  BULK_INTERFACE_TYPE,
  BULK_MESSAGE_SIZE,
  BULK_OP_READ,
  BULK_OP_WRITE,
  putMessage,
  readMessage,
} from '../../examples/bulk-pfn/protocol.js';
import { blockData, runBulk } from '../../examples/bulk-pfn/run.js';
import { BulkVsc } from '../../examples/bulk-pfn/vsc.js';
import { BulkVsp } from '../../examples/bulk-pfn/vsp.js';
import { makeProviders } from '../../examples/providers.js';
import {
  KMCL_CLIENT_INTERFACE_TYPE,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  type NTSTATUS,
  queryInterface,
  STATUS_INVALID_PARAMETER,
  STATUS_NOT_FOUND,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';

describe('examples/bulk-pfn', () => {
  for (const transport of ['loopback', 'vmbus'] as const) {
    test(`runBulk over ${transport}: every block written and read back verifies; checksums agree; no page leaks`, async () => {
      const sizes = [1, 4096, 4097, 10_000, 64 * 1024, 1024 * 1024];
      const r = await runBulk({ sizes, transport });
      assert.equal(r.transport, transport);
      assert.equal(r.transfers.length, sizes.length);
      for (const t of r.transfers) {
        assert.equal(t.writeStatus, 'STATUS_SUCCESS', `write ${t.bytes}`);
        assert.equal(t.readStatus, 'STATUS_SUCCESS', `read ${t.bytes}`);
        assert.equal(t.writeChecksumOk, true);
        assert.equal(t.readChecksumOk, true);
        assert.equal(t.verified, true, `block of ${t.bytes} bytes`);
        assert.equal(t.pages, Math.ceil(t.bytes / 4096));
        // Scattered guest pages: no two successive PFNs adjacent.
        assert.equal(t.scatteredPages, t.pages - 1);
      }
      assert.equal(r.missingBlockStatus, 'STATUS_NOT_FOUND');
      const total = sizes.reduce((a, b) => a + b, 0);
      assert.equal(r.vsp.bytesFromGuest, total);
      assert.equal(r.vsp.bytesToGuest, total);
      assert.equal(r.leakedPages, 0);
      assert.deepEqual(r.peerErrors, []);
      assert.deepEqual(r.callbackErrors, []);
      assert.equal(r.ok, true);
    });
  }

  test('a partial read returns the first bytes; reading past the block or a missing block is refused', async () => {
    const env = await makeProviders();
    const vsp = BulkVsp.start(env.host, env.vmUserHandle);
    const vsc = BulkVsc.start(env.guest, env);
    await vsc.ready;
    const data = blockData(5, 9000);
    assert.equal((await vsc.write(5, data)).status, STATUS_SUCCESS);
    const part = await vsc.read(5, 5000);
    assert.equal(part.status, STATUS_SUCCESS);
    assert.deepEqual(part.data, data.subarray(0, 5000));
    assert.equal(part.hostChecksum, part.guestChecksum);
    assert.equal((await vsc.read(5, 9001)).status, STATUS_INVALID_PARAMETER);
    assert.equal((await vsc.read(6, 10)).status, STATUS_NOT_FOUND);
    assert.throws(() => vsc.write(1, new Uint8Array(0)), RangeError);
    await vsc.stop();
    await vsp.stop();
    assert.equal(vsp.stats.refused, 2);
  });

  test('the VSP refuses a ByteCount beyond the PFNs and a request without external data', async () => {
    const env = await makeProviders();
    const vsp = BulkVsp.start(env.host, env.vmUserHandle);
    // A hand-written client on the raw table, sending what the example VSC never would.
    const C = queryInterface(
      env.guest,
      KMCL_CLIENT_INTERFACE_TYPE,
      KMCL_CLIENT_INTERFACE_V1_SIZE,
      KMCL_CLIENT_INTERFACE_VERSION_V1,
    ).Interface!;
    const ch = C.VmbChannelAllocate(null, false).Channel!;
    C.VmbClientChannelInitSetTargetPnp(ch, BULK_INTERFACE_TYPE, null, null);
    C.VmbChannelInitSetProcessPacketCallbacks(ch, (_c, p) => C.VmbChannelPacketComplete(p, null, 0), null);
    let started!: () => void;
    const flowing = new Promise<void>((resolve) => {
      started = resolve;
    });
    const cbs = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
    cbs.EvtChannelPostStarted = () => started();
    C.VmbChannelInitSetStateChangeCallbacks(ch, cbs);
    assert.equal(C.VmbChannelEnable(ch), STATUS_SUCCESS);
    await flowing;

    const send = (op: number, byteCount: number, pfns: Uint32Array | null): Promise<NTSTATUS> =>
      new Promise((resolve) => {
        const p = C.VmbPacketAllocate(ch)!;
        C.VmbPacketSetCompletionRoutine(p, (pk, status, buf, len) => {
          C.VmbPacketFree(pk);
          resolve(status === STATUS_SUCCESS ? (readMessage(buf, len)?.a ?? -1) | 0 : status);
        });
        const req = new Uint8Array(BULK_MESSAGE_SIZE);
        putMessage(req, op, 1, byteCount);
        const st =
          pfns === null
            ? C.VmbPacketSend(p, req, req.length, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION)
            : C.VmbPacketSendWithExternalPfns(
                p,
                req,
                req.length,
                pfns,
                pfns.length,
                VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
              );
        assert.equal(st, STATUS_SUCCESS);
      });

    const page = env.allocatePages(1);
    assert.equal(
      await send(BULK_OP_WRITE, 8192, page),
      STATUS_INVALID_PARAMETER,
      'ByteCount beyond one page',
    );
    assert.equal(await send(BULK_OP_READ, 4096, page), STATUS_NOT_FOUND);
    assert.equal(await send(BULK_OP_WRITE, 100, null), STATUS_INVALID_PARAMETER, 'no external data');
    assert.equal(await send(77, 100, page), STATUS_INVALID_PARAMETER, 'unknown operation');
    assert.equal(await send(BULK_OP_WRITE, 0, page), STATUS_INVALID_PARAMETER, 'zero bytes');
    assert.equal(await send(BULK_OP_WRITE, 4096, page), STATUS_SUCCESS);
    assert.equal(vsp.stats.refused, 5);
    assert.equal(vsp.stats.writes, 1);
    await C.VmbChannelDisable(ch);
    C.VmbChannelCleanup(ch);
    await vsp.stop();
    assert.deepEqual(env.peerErrors, []);
  });
});
