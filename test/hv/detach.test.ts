// Servicing at the SynIC level: a host end is detached without closing the link, and a new host
// end resumes where it stood, in the same thread (re-paired on the scheduler) or in another
// (attachHvHost with `resume`). What the guest posts and signals meanwhile waits and arrives in
// order at the new end; the guest never sees the link closed or a port disappear.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  attachHvGuest,
  attachHvHost,
  createHvLinkDescriptor,
  createSameThreadLink,
  HV_STATUS_INSUFFICIENT_BUFFERS,
  HV_STATUS_INVALID_PARTITION_STATE,
  HV_STATUS_SUCCESS,
  HvEnd,
  HvError,
  HvHostEnd,
  type HvHostEndSavedState,
  HvScheduler,
} from '../../src/hv/index.js';

const bytes = (...v: number[]): Uint8Array => new Uint8Array(v);

describe('host end detach and resume', () => {
  test('same thread: posts and signals made while no host is attached arrive at the new end, in order', () => {
    const scheduler = new HvScheduler({ mode: 'manual' });
    const link = createSameThreadLink({ queueSlots: 4, scheduler });
    const before: number[] = [];
    link.host.onMessage(1, (m) => before.push(m.data[0]!));
    link.host.onEvent(0x2001, () => before.push(-1));
    link.guest.onMessage(2, () => {});
    assert.equal(link.guest.tryPost(1, bytes(1)), HV_STATUS_SUCCESS);
    link.runUntilIdle();
    assert.deepEqual(before, [1]);
    // The host's queue position moved: the new end must continue from it, not from slot 0.
    const saved = link.host.detach();
    assert.equal(saved.toHostReadIndex, 1);
    assert.equal(link.guest.closed, false, 'the guest does not see the link closed');
    assert.equal(link.guest.hostListens(1), true, 'the ports stay registered');
    assert.equal(link.guest.hostListens(0x2001, true), true);
    for (let i = 2; i <= 5; i++) assert.equal(link.guest.tryPost(1, bytes(i)), HV_STATUS_SUCCESS);
    assert.equal(link.guest.tryPost(1, bytes(6)), HV_STATUS_INSUFFICIENT_BUFFERS, 'the queue holds them');
    assert.equal(link.guest.trySignalEvent(0x2001), HV_STATUS_SUCCESS);
    link.runUntilIdle();
    assert.deepEqual(before, [1], 'the detached end handles nothing');
    assert.equal(link.host.tryPost(2, bytes(0)), HV_STATUS_INVALID_PARTITION_STATE);

    const next = new HvHostEnd(link.descriptor, { resume: saved }, 'none');
    const after: number[] = [];
    next.onMessage(1, (m) => after.push(m.data[0]!));
    next.onEvent(0x2001, () => after.push(-1));
    HvEnd.replaceSameThread(link.host, next);
    link.runUntilIdle();
    assert.deepEqual(after, [2, 3, 4, 5, -1]);
    assert.equal(next.tryPost(2, bytes(7)), HV_STATUS_SUCCESS, 'the new end posts to the guest');
    assert.deepEqual(next.unclaimedPorts(), []);
    next.close();
    assert.equal(link.guest.closed, true);
  });

  test('ports nobody claims after a resume can be dropped; claimed ones stay', () => {
    const scheduler = new HvScheduler({ mode: 'manual' });
    const link = createSameThreadLink({ scheduler });
    link.host.onMessage(1, () => {});
    link.host.onEvent(0x2001, () => {});
    link.host.onEvent(0x2002, () => {});
    link.host.onEvent(0x2003, () => {});
    link.host.onEvent(0x2002, null); // leaves a deleted slot behind
    const saved = link.host.detach();
    assert.equal(saved.ports.length, 3);
    const next = new HvHostEnd(link.descriptor, { resume: saved }, 'none');
    HvEnd.replaceSameThread(link.host, next);
    next.onMessage(1, () => {});
    next.onEvent(0x2003, () => {});
    assert.deepEqual(next.unclaimedPorts(), [0x2001]);
    next.dropUnclaimedPorts();
    assert.equal(link.guest.hostListens(0x2001, true), false);
    assert.equal(link.guest.hostListens(0x2003, true), true);
    assert.equal(link.guest.hostListens(1), true);
    next.close();
  });

  test('detach is refused while posts of the host still wait for queue space', async () => {
    const link = createSameThreadLink({ queueSlots: 1, scheduler: new HvScheduler({ mode: 'manual' }) });
    link.guest.onMessage(2, () => {});
    void link.host.post(2, bytes(1));
    const waiting = link.host.post(2, bytes(2));
    assert.throws(
      () => link.host.detach(),
      (e: unknown) => e instanceof HvError && e.status === HV_STATUS_INSUFFICIENT_BUFFERS,
    );
    link.runUntilIdle();
    await waiting;
    assert.ok(link.host.detach().toGuestWriteIndex >= 0, 'possible once they are queued');
  });

  test('a resume state that does not fit the link is refused before anything changes', () => {
    const d = createHvLinkDescriptor({ queueSlots: 4, portCapacity: 32 });
    // A real state: where a host end puts connection id 1 in this table.
    const model = attachHvHost(createHvLinkDescriptor({ queueSlots: 4, portCapacity: 32 }), {
      polling: true,
    });
    model.onMessage(1, () => {});
    const good: HvHostEndSavedState = model.detach();
    const slot = good.ports[0]!.slot;
    const other = (slot + 1) % 32;
    const bad: unknown[] = [
      { ...good, version: 2 },
      { ...good, toHostReadIndex: 4 },
      { ...good, toGuestWriteIndex: -1 },
      { ...good, ports: [{ slot: 32, connectionId: 1, kinds: 1 }] },
      { ...good, ports: [{ slot: 1, connectionId: 1, kinds: 4 }] },
      { ...good, ports: [{ slot: 1, connectionId: 0x1000000, kinds: 1 }] },
      { ...good, ports: [good.ports[0], { slot, connectionId: 2, kinds: 1 }] },
      { ...good, ports: [good.ports[0], { slot: other, connectionId: 1, kinds: 2 }] },
      { ...good, deletedSlots: [slot] },
      { ...good, ports: 'x' },
      null,
    ];
    const ctrl = new Int32Array(d.control).slice();
    for (const resume of bad) {
      assert.throws(
        () => attachHvHost(d, { resume: resume as HvHostEndSavedState, polling: true }),
        HvError,
        JSON.stringify(resume),
      );
    }
    assert.deepEqual(new Int32Array(d.control), ctrl, 'the shared state is untouched');
    const host = attachHvHost(d, { resume: good, polling: true });
    const guest = attachHvGuest(d, { polling: true });
    try {
      assert.equal(guest.hostListens(1), true, 'the resumed port table is published');
    } finally {
      host.close();
      guest.close();
    }
  });

  test('cross-thread style: a new end attached with `resume` takes over the queues', async () => {
    const d = createHvLinkDescriptor({ queueSlots: 8 });
    const guest = attachHvGuest(d, { polling: true });
    guest.onMessage(2, () => {});
    let host = attachHvHost(d, { polling: true });
    try {
      const got: number[] = [];
      host.onMessage(1, (m) => got.push(m.data[0]!));
      for (let i = 0; i < 3; i++) assert.equal(guest.tryPost(1, bytes(i)), HV_STATUS_SUCCESS);
      host.poll();
      const saved = host.detach();
      for (let i = 3; i < 8; i++) assert.equal(guest.tryPost(1, bytes(i)), HV_STATUS_SUCCESS);
      host = attachHvHost(d, { resume: saved });
      host.onMessage(1, (m) => got.push(m.data[0]!));
      const end = Date.now() + 5000;
      while (got.length < 8 && Date.now() < end) await new Promise((r) => setTimeout(r, 1));
      assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6, 7]);
    } finally {
      // A failed assertion must not leave a cross-thread end keeping the test process alive.
      host.close();
      guest.close();
    }
  });
});
