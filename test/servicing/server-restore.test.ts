// VmbusServer.restore against a raw guest: a server saved with an open channel, a rescinded
// channel the guest has not released, a GPADL whose teardown waits for a mapping, and a paused
// connection's held messages is rebuilt in a new host instance. Guest messages and signals that
// arrive before finishRestore wait; everything then continues as if the host had never left.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { VmbusServer } from '../../src/bus/index.js';
import { HvHostEnd } from '../../src/hv/end.js';
import { Hypervisor } from '../../src/hv/hypervisor.js';
import {
  CHANNELMSG_GPADL_TEARDOWN,
  CHANNELMSG_GPADL_TORNDOWN,
  CHANNELMSG_MODIFYCHANNEL,
  CHANNELMSG_MODIFYCHANNEL_RESPONSE,
  CHANNELMSG_OPENCHANNEL,
  CHANNELMSG_RELID_RELEASED,
  CHANNELMSG_REQUESTOFFERS,
  CHANNELMSG_RESCIND_CHANNELOFFER,
  VERSION_WIN10_V5_3,
} from '../../src/wire/constants.js';
import { pageRange, splitGpadl } from '../../src/wire/gpadl.js';
import { type ChannelMessage, encodeMessage as encode } from '../../src/wire/messages.js';
import { OFFER_X, OFFER_Y, recorder, serverWithRawGuest } from '../bus/helpers.js';

describe('VmbusServer.restore', () => {
  test('a restored server continues every pending exchange with the guest', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    const x = env.server.offerChannel(OFFER_X, recorder(events, 'x'));
    const y = env.server.offerChannel(OFFER_Y, recorder(events, 'y'));
    await env.contact(VERSION_WIN10_V5_3);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    env.take();
    const gpadl = async (id: number, pages: number) => {
      const pfns = Array.from(env.alloc.allocate(pages));
      for (const bytes of splitGpadl(x.relid, id, [pageRange(pfns)])) await env.guest.post(1, bytes);
      await env.hv.idle();
    };
    await gpadl(0x100, 4);
    await env.send({
      type: CHANNELMSG_OPENCHANNEL,
      form: 'OpenChannel',
      childRelid: x.relid,
      openId: 7,
      ringBufferGpadlHandle: 0x100,
      targetVp: 0,
      downstreamRingBufferPageOffset: 2,
      userData: new Uint8Array(120),
    } as ChannelMessage);
    await gpadl(0x200, 3);
    const mapping = env.server.mapGpadl(x, 0x200);
    await env.send({ type: CHANNELMSG_GPADL_TEARDOWN, childRelid: x.relid, gpadl: 0x200 });
    const revoked = env.server.revokeOffer(y).then(
      () => 'released',
      (e: unknown) => String(e),
    );
    await env.hv.idle();
    const before = env.take().map((m) => m.type);
    assert.ok(before.includes(CHANNELMSG_RESCIND_CHANNELOFFER));
    assert.ok(!before.includes(CHANNELMSG_GPADL_TORNDOWN), 'the teardown waits for the mapping');

    // Save and detach: the old instance goes without a word to the guest.
    const saved = env.server.saveState();
    assert.ok(saved.ok);
    const { descriptor, link } = env.hv.detachPartition(env.partition.partitionId);
    env.server.handOff();
    assert.match(await revoked, /handed off/, 'the old instance’s waiters learn it went away');
    mapping.revoke();

    // The guest acts while no host is there, and while the new one restores.
    await env.guest.post(1, encode({ type: CHANNELMSG_RELID_RELEASED, childRelid: y.relid }));
    await env.guest.post(1, encode({ type: CHANNELMSG_MODIFYCHANNEL, childRelid: x.relid, targetVp: 1 }));
    env.guest.signalEvent(x.connectionId);
    await env.hv.idle();
    assert.deepEqual(env.take(), []);

    const hv2 = new Hypervisor({ transport: 'same-thread', scheduler: env.hv.scheduler! });
    const part = hv2.adoptPartition(descriptor, link, { replacing: env.partition.host });
    const server = VmbusServer.restore(part.host, part.memory, saved.state);
    await env.hv.idle();
    assert.equal(server.restoring, true);
    assert.equal(server.state.inbox.length, 2, 'guest messages wait for finishRestore');
    assert.equal(server.unclaimedChannels().length, 2);
    const events2: string[] = [];
    const x2 = server.claimChannel(
      { interfaceType: OFFER_X.interfaceType, interfaceInstance: OFFER_X.interfaceInstance },
      recorder(events2, 'x'),
    );
    assert.ok(x2 !== null);
    assert.deepEqual(x2, x, 'the same relid, offer id and connection id');
    assert.equal(server.channelPhase(x2), 'open');
    assert.ok(server.rings(x2) !== null, 'the rings are there again');
    const y2 = server.claimChannel(
      { interfaceType: OFFER_Y.interfaceType, interfaceInstance: OFFER_Y.interfaceInstance },
      recorder(events2, 'y'),
    );
    assert.equal(server.channelPhase(y2!), 'revoked');
    // The restored upper layer takes its mapping of the GPADL being torn down again.
    const mapping2 = server.mapGpadl(x2, 0x200);
    assert.throws(() => server.mapGpadl(x2, 0x200), /being torn down/, 'only the mappings that were held');
    await env.hv.idle();
    assert.deepEqual(events2, ['x signal'], 'the signal sent while unclaimed is delivered at the claim');

    await server.finishRestore();
    await env.hv.idle();
    assert.equal(server.restoring, false);
    const after = env.take();
    assert.deepEqual(
      after.map((m) => m.type),
      [CHANNELMSG_MODIFYCHANNEL_RESPONSE],
      'the modify is answered; the teardown still waits',
    );
    assert.equal(server.channelPhase(y2!), null, 'the guest’s RELID_RELEASED freed the rescinded channel');
    assert.ok(events2.includes('y released'));
    server.unmapGpadl(x2, 0x200, mapping2);
    await env.hv.idle();
    assert.deepEqual(
      env.take().map((m) => m.type),
      [CHANNELMSG_GPADL_TORNDOWN],
    );
    assert.ok(server.signalGuest(x2), 'the host signals the guest on the restored channel');
    assert.ok(part.host instanceof HvHostEnd);
  });
});
