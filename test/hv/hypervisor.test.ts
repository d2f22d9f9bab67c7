// The host's partition table: ids, VMBus handles, per-partition memory and links, destroying,
// and a cross-thread partition's descriptor being plain data a guest can attach from.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { attachGuestPartition, HvError, Hypervisor } from '../../src/hv/index.js';

const KiB = 1024;

describe('Hypervisor', () => {
  test('creates partitions with their own ids, handles, memory and links, and lists them', () => {
    const hv = new Hypervisor();
    const a = hv.createPartition({ memoryBytes: 64 * KiB });
    const b = hv.createPartition({ memoryBytes: 128 * KiB, name: 'bee' });
    const c = hv.createPartition({ memoryBytes: 64 * KiB });
    assert.deepEqual(
      hv.partitions().map((p) => p.partitionId),
      [1, 2, 3],
    );
    assert.equal(new Set([a, b, c].map((p) => p.vmbusHandle)).size, 3);
    assert.equal(b.name, 'bee');
    assert.equal(a.name, 'partition-1');
    assert.equal(b.memory.size, 128 * KiB);
    assert.notEqual(a.memory.buffer, c.memory.buffer);
    assert.notEqual(a.descriptor.link.control, c.descriptor.link.control);
    assert.equal(hv.getPartition(2), b);
    assert.equal(hv.partitionByVmbusHandle(c.vmbusHandle), c);
    assert.equal(hv.partitionByVmbusHandle(12345), undefined);
    assert.ok(a.guest, 'same-thread partitions come with their guest end');
    hv.close();
  });

  test('guest RAM is per partition', () => {
    const hv = new Hypervisor();
    const a = hv.createPartition({ memoryBytes: 64 * KiB });
    const b = hv.createPartition({ memoryBytes: 64 * KiB });
    a.memory.write(0x100, new Uint8Array([1, 2, 3]));
    assert.deepEqual([...b.memory.view(0x100, 3)], [0, 0, 0]);
    hv.close();
  });

  test('destroying a partition closes its link for the guest and forgets it', async () => {
    const hv = new Hypervisor();
    const a = hv.createPartition({ memoryBytes: 64 * KiB });
    const b = hv.createPartition({ memoryBytes: 64 * KiB });
    let closed = false;
    a.guest!.onClose(() => {
      closed = true;
    });
    assert.equal(hv.destroyPartition(a.partitionId), true);
    assert.equal(hv.destroyPartition(a.partitionId), false);
    await hv.idle();
    assert.ok(closed && a.guest!.closed && a.isDestroyed);
    assert.equal(hv.getPartition(a.partitionId), undefined);
    assert.equal(hv.partitionByVmbusHandle(a.vmbusHandle), undefined);
    assert.deepEqual(
      hv.partitions().map((p) => p.partitionId),
      [b.partitionId],
    );
    await assert.rejects(a.guest!.post(1, new Uint8Array(1)), HvError);
    assert.equal(b.guest!.closed, false);
    hv.close();
  });

  test('a cross-thread partition descriptor is plain data the guest attaches from', async () => {
    const hv = new Hypervisor({ transport: 'cross-thread' });
    const p = hv.createPartition({ memoryBytes: 64 * KiB });
    assert.equal(p.guest, null);
    assert.throws(() => hv.idle(), /same-thread/);
    // What a worker would receive through postMessage.
    const guest = attachGuestPartition(structuredClone(p.descriptor));
    assert.equal(guest.partitionId, p.partitionId);
    assert.equal(guest.vmbusHandle, p.vmbusHandle);
    guest.memory.write(0x2000, new Uint8Array([9, 8]));
    assert.deepEqual([...p.memory.view(0x2000, 2)], [9, 8], 'the guest RAM is the same bytes');
    const got = new Promise<string>((resolve) =>
      p.host.onMessage(1, (m) => resolve(new TextDecoder().decode(m.payload))),
    );
    await guest.link.post(1, new TextEncoder().encode('hi'));
    assert.equal(await got, 'hi');
    hv.close();
    assert.ok(guest.link.closed);
  });

  test('attachGuestPartition refuses something that is not a partition descriptor', () => {
    assert.throws(() => attachGuestPartition({} as never), TypeError);
  });
});
