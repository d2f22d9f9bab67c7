// The VMBus server against a raw guest: exact replies for every protocol version, the feature-flag
// and connection-id rules, offers, GPADL reassembly limits, the open/close/reopen state machine,
// teardown deferral, revoke, unload and reconnect, upper-layer hook failures, and plain-data state.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertPlainData,
  BusError,
  MAX_RELID,
  type ServerChannelHandler,
  VmbusServer,
} from '../../src/bus/index.js';
import { MemoryAccessError } from '../../src/memory/guest-memory.js';
import {
  CHANNELMSG_CLOSECHANNEL,
  CHANNELMSG_GPADL_TEARDOWN,
  CHANNELMSG_INITIATE_CONTACT,
  CHANNELMSG_MODIFY_CONNECTION,
  CHANNELMSG_OPENCHANNEL,
  CHANNELMSG_RELID_RELEASED,
  CHANNELMSG_REQUESTOFFERS,
  CHANNELMSG_UNLOAD,
  VERSION_WIN7,
  VERSION_WIN8,
  VERSION_WIN10,
  VERSION_WIN10_V5,
  VERSION_WIN10_V5_3,
  VERSION_WIN10_V6_0,
  VERSION_WS2008,
  VMBUS_CHANNEL_CONFIDENTIAL_RING_BUFFER,
  VMBUS_STATUS_UNSUCCESSFUL,
  VMBUS_VERSIONS,
} from '../../src/wire/constants.js';
import { pageRange, splitGpadl } from '../../src/wire/gpadl.js';
import { type ChannelMessage, encodeMessage } from '../../src/wire/messages.js';
import { INST_1, INST_2, OFFER_X, OFFER_Y, recorder, serverWithRawGuest, TYPE_X } from './helpers.js';

type Env = ReturnType<typeof serverWithRawGuest>;

const ZERO_USER = new Uint8Array(120);

function openMsg(
  relid: number,
  gpadl: number,
  down: number,
  extra: Record<string, unknown> = {},
): ChannelMessage {
  return {
    type: CHANNELMSG_OPENCHANNEL,
    form: 'OpenChannel',
    childRelid: relid,
    openId: relid,
    ringBufferGpadlHandle: gpadl,
    targetVp: 0,
    downstreamRingBufferPageOffset: down,
    userData: ZERO_USER,
    ...extra,
  } as ChannelMessage;
}

async function createGpadl(env: Env, relid: number, id: number, pages: number): Promise<number[]> {
  const pfns = Array.from(env.alloc.allocate(pages));
  for (const bytes of splitGpadl(relid, id, [pageRange(pfns)])) await env.guest.post(1, bytes);
  await env.hv.idle();
  return pfns;
}

/** Connected at `version` with offers requested; returns the handles of X and Y. */
async function connected(env: Env, version = VERSION_WIN10_V5_3, events: string[] = []) {
  const x = env.server.offerChannel(OFFER_X, recorder(events, 'x'));
  const y = env.server.offerChannel(OFFER_Y, recorder(events, 'y'));
  await env.contact(version);
  await env.send({ type: CHANNELMSG_REQUESTOFFERS });
  env.take();
  return { x, y };
}

async function openX(env: Env, relid = 1, id = 0x100, pages = 4): Promise<void> {
  await createGpadl(env, relid, id, pages);
  await env.send(openMsg(relid, id, pages / 2));
}

describe('VmbusServer: version negotiation', () => {
  for (const v of VMBUS_VERSIONS) {
    test(`accepts ${v.display} with the response form and msg_conn_id of that version`, async () => {
      const env = serverWithRawGuest();
      const [r] = await env.contact(v.value);
      assert.equal(r!.type, 15);
      if (r!.type !== 15) return;
      assert.equal(r.versionSupported, 1);
      assert.equal(r.connectionState, 0);
      assert.equal(r.msgConnId, v.value >= VERSION_WIN10_V5 ? 1 : v.value);
      assert.equal(r.form, v.value >= VERSION_WIN10_V6_0 ? 'VersionResponse2' : 'VersionResponse');
      assert.equal(env.server.version, v.value);
    });
  }

  test('refuses an unknown version with version_supported = 0 and stays disconnected', async () => {
    const env = serverWithRawGuest();
    const [r] = await env.contact(0x00070000);
    assert.deepEqual(r, {
      type: 15,
      form: 'VersionResponse',
      versionSupported: 0,
      connectionState: 0,
      msgConnId: 0,
    });
    assert.equal(env.server.connected, false);
    assert.deepEqual(env.errors, [], 'an unsupported version is not a protocol error');
  });

  test('a server limited to some versions refuses the others, and does not listen on 4 below 5.0', async () => {
    const env = serverWithRawGuest({ versions: [VERSION_WIN7, VERSION_WIN8] });
    assert.equal(env.guest.hostListens(4), false);
    assert.equal(env.guest.hostListens(1), true);
    const [r] = await env.contact(VERSION_WIN10);
    assert.equal(r!.type === 15 && r.versionSupported, 0);
    const [r2] = await env.contact(VERSION_WIN8);
    assert.equal(r2!.type === 15 && r2.versionSupported, 1);
  });

  test('>= 5.0 on connection id 1 and < 5.0 on connection id 4 are both accepted (as OpenVMM)', async () => {
    const env = serverWithRawGuest();
    await env.send(
      {
        type: CHANNELMSG_INITIATE_CONTACT,
        form: 'InitiateContact',
        vmbusVersionRequested: VERSION_WIN10_V5_3,
        targetVcpu: 0,
        msgSint: 7, // not honoured on connection id 1
        msgVtl: 0,
        featureFlags: 0,
        monitorPage1: 0n,
        monitorPage2: 0n,
      },
      1,
    );
    assert.equal(env.take()[0]!.type === 15 && env.server.version, VERSION_WIN10_V5_3);
    const env2 = serverWithRawGuest();
    await env2.send(
      {
        type: CHANNELMSG_INITIATE_CONTACT,
        form: 'InitiateContact',
        vmbusVersionRequested: VERSION_WIN10,
        targetVcpu: 0,
        interruptPage: 0x7n,
        monitorPage1: 0n,
        monitorPage2: 0n,
      },
      4,
    );
    assert.equal(env2.server.version, VERSION_WIN10);
  });

  test('a SINT other than 2 on connection id 4 gets "unsupported" on that SINT; a VTL other than 0 too', async () => {
    const env = serverWithRawGuest();
    const onSint5: number[] = [];
    env.guest.onMessage(5, (m) => onSint5.push(m.data[8]!));
    const replies = await env.contact(VERSION_WIN10_V5_3, { msgSint: 5 });
    assert.deepEqual(replies, [], 'nothing on SINT 2');
    assert.deepEqual(onSint5, [0], 'version_supported = 0 on SINT 5');
    const [r] = await env.contact(VERSION_WIN10_V5_3, { msgVtl: 1 });
    assert.equal(r!.type === 15 && r.versionSupported, 0);
    assert.equal(env.server.connected, false);
    assert.deepEqual(
      env.errors.map((e) => e.code),
      ['unsupported', 'unsupported'],
    );
  });

  test('6.0 feature flags: the reply carries requested & supported', async () => {
    const env = serverWithRawGuest();
    const [r] = await env.contact(VERSION_WIN10_V6_0, { featureFlags: 0xff & ~0x08 });
    assert.equal(r!.type === 15 && r.form === 'VersionResponse2' && r.supportedFeatures, 0x25);
    assert.equal(env.server.featureFlags, 0x25);
    const env2 = serverWithRawGuest({ featureFlags: 0x20 });
    const [r2] = await env2.contact(VERSION_WIN10_V6_0, { featureFlags: 0x21 });
    assert.equal(r2!.type === 15 && r2.form === 'VersionResponse2' && r2.supportedFeatures, 0x20);
  });

  test('client_id needs the 56-byte InitiateContact2 (dropped otherwise), which is accepted', async () => {
    const env = serverWithRawGuest();
    assert.deepEqual(await env.contact(VERSION_WIN10_V6_0, { featureFlags: 0x08 }), []);
    assert.equal(env.errors[0]!.code, 'malformed');
    const [r] = await env.contact(VERSION_WIN10_V6_0, {
      form: 'InitiateContact2',
      featureFlags: 0x08,
      clientId: INST_2,
    });
    assert.equal(r!.type === 15 && r.form === 'VersionResponse2' && r.supportedFeatures, 0x08);
    const conn = env.server.state.connection;
    assert.equal(conn.kind === 'connected' && conn.clientId, INST_2.toString());
  });

  test('one monitor page: FAILED_UNKNOWN_FAILURE from Win8 on, "unsupported" before', async () => {
    const env = serverWithRawGuest();
    const [r] = await env.contact(VERSION_WIN8, { monitorPage1: 0x5000n });
    assert.equal(r!.type === 15 && r.versionSupported, 1);
    assert.equal(r!.type === 15 && r.connectionState, 2);
    assert.equal(env.server.connected, false);
    const [r2] = await env.contact(VERSION_WIN7, { monitorPage2: 0x5000n });
    assert.equal(r2!.type === 15 && r2.versionSupported, 0);
  });

  test('messages before INITIATE_CONTACT and messages of a newer version are refused', async () => {
    const env = serverWithRawGuest();
    env.server.offerChannel(OFFER_X, recorder([]));
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    assert.deepEqual(env.take(), []);
    await env.contact(VERSION_WIN10); // 4.0: no MODIFYCHANNEL (4.1), no MODIFY_CONNECTION (6.0)
    await env.send({ type: 22, childRelid: 1, targetVp: 0 });
    await env.send({
      type: CHANNELMSG_MODIFY_CONNECTION,
      parentToChildMonitorGpa: 0n,
      childToParentMonitorGpa: 0n,
    });
    assert.deepEqual(
      env.errors.map((e) => [e.code, e.messageType]),
      [
        ['unexpected', 3],
        ['wrong-version', 22],
        ['wrong-version', 25],
      ],
    );
  });
});

describe('VmbusServer: offers', () => {
  test('offer fields: relids from 1, connection id 0x2000 + relid, no monitor, dedicated interrupt', async () => {
    const env = serverWithRawGuest();
    env.server.offerChannel(
      {
        interfaceType: TYPE_X,
        interfaceInstance: INST_1,
        flags: 0x1 | VMBUS_CHANNEL_CONFIDENTIAL_RING_BUFFER,
        mmioMegabytes: 16,
        mmioMegabytesOptional: 8,
        userDefined: Uint8Array.of(0xaa, 0xbb),
      },
      recorder([]),
    );
    env.server.offerChannel({ ...OFFER_X, subChannelIndex: 1 }, recorder([]));
    env.server.offerChannel({ ...OFFER_Y, pipeMode: 'byte', userDefined: Uint8Array.of(7) }, recorder([]));
    await env.contact(VERSION_WIN10_V5_3);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    const msgs = env.take();
    assert.deepEqual(
      msgs.map((m) => m.type),
      [1, 1, 1, 4],
    );
    const [a, sub, pipe] = msgs as Extract<ChannelMessage, { type: 1 }>[];
    assert.equal(a!.childRelid, 1);
    assert.equal(a!.connectionId, 0x2001);
    assert.equal(a!.monitorId, 0xff);
    assert.equal(a!.monitorAllocated, 0);
    assert.equal(a!.isDedicatedInterrupt, 1);
    assert.equal(a!.chnFlags, 0x1, 'confidential bit cleared: not negotiated');
    assert.equal(a!.mmioMegabytes, 16);
    assert.equal(a!.mmioMegabytesOptional, 8);
    assert.deepEqual([...a!.userDefined.subarray(0, 3)], [0xaa, 0xbb, 0]);
    assert.equal(sub!.subChannelIndex, 1);
    assert.equal(sub!.childRelid, 2);
    assert.equal(pipe!.chnFlags, 0x10);
    assert.deepEqual(
      [...pipe!.userDefined.subarray(0, 6)],
      [0, 0, 0, 0, 7, 0],
      'byte pipe mode, then user data',
    );
  });

  test('a second REQUESTOFFERS is refused; offers added later are sent at once', async () => {
    const env = serverWithRawGuest();
    await connected(env);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    assert.deepEqual(env.take(), []);
    assert.equal(env.errors[0]!.code, 'duplicate');
    env.server.offerChannel({ interfaceType: TYPE_X, interfaceInstance: INST_2 }, recorder([]));
    await env.hv.idle();
    const [m] = env.take();
    assert.equal(m!.type === 1 && m.childRelid, 3);
  });

  test('contract violations of offerChannel throw', () => {
    const { server } = serverWithRawGuest();
    server.offerChannel(OFFER_X, recorder([]));
    assert.throws(() => server.offerChannel(OFFER_X, recorder([])), /already offered/);
    assert.throws(() => server.offerChannel({ ...OFFER_Y, subChannelIndex: 2 }, recorder([])), /primary/);
    assert.throws(
      () => server.offerChannel({ ...OFFER_Y, userDefined: new Uint8Array(121) }, recorder([])),
      RangeError,
    );
    assert.throws(
      () =>
        server.offerChannel(
          { ...OFFER_Y, pipeMode: 'message', userDefined: new Uint8Array(117) },
          recorder([]),
        ),
      RangeError,
    );
    assert.throws(() => server.offerChannel(OFFER_Y, {} as ServerChannelHandler), TypeError);
    const small = serverWithRawGuest({ maxChannels: 1 }).server;
    small.offerChannel(OFFER_X, recorder([]));
    assert.throws(() => small.offerChannel(OFFER_Y, recorder([])), /channels/);
    const other = serverWithRawGuest();
    assert.throws(
      () => new VmbusServer(other.partition.host, other.partition.memory, { maxChannels: MAX_RELID + 1 }),
      RangeError,
    );
    assert.throws(
      () => new VmbusServer(other.partition.host, other.partition.memory, { versions: [0x00070000] }),
      RangeError,
    );
  });

  test('revoking an offer not yet sent resolves at once and frees the relid', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    const x = env.server.offerChannel(OFFER_X, recorder(events));
    await env.server.revokeOffer(x);
    assert.deepEqual(events, ['ch released']);
    assert.equal(env.server.channelPhase(x), null);
    assert.equal(env.server.signalGuest(x), false);
    assert.throws(() => env.server.gpadls(x), /stale/);
    const again = env.server.offerChannel(OFFER_X, recorder([]));
    assert.equal(again.relid, 1);
    assert.notEqual(again.offerId, x.offerId);
  });
});

describe('VmbusServer: GPADLs', () => {
  test('header + bodies reassembled; info, mapping and PFNs available to the upper layer', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    const { x } = await connected(env, VERSION_WIN10_V5_3, events);
    const pfns = await createGpadl(env, 1, 0x55, 100);
    assert.deepEqual(env.take(), [{ type: 10, childRelid: 1, gpadl: 0x55, creationStatus: 0 }]);
    const info = env.server.getGpadl(x, 0x55)!;
    assert.equal(info.pfnCount, 100);
    assert.deepEqual(info.ranges[0]!.pfns, pfns);
    env.partition.memory.bytes[pfns[99]! * 4096 + 5] = 0x42;
    const mdl = env.server.mapGpadl(x, 0x55);
    const b = new Uint8Array(1);
    mdl.read(99 * 4096 + 5, b);
    assert.equal(b[0], 0x42);
    env.server.unmapGpadl(x, 0x55, mdl);
    assert.throws(
      () => mdl.read(0, b),
      (e: unknown) => e instanceof MemoryAccessError && e.code === 'revoked',
    );
    assert.deepEqual(events, ['x gpadl 85']);
  });

  test('refusals answer GPADL_CREATED with 0x8000FFFF: unknown channel, duplicate id, PFN outside memory, limits', async () => {
    const env = serverWithRawGuest({ gpadlLimits: { maxPfns: 50, maxInProgress: 1 } });
    await connected(env);
    const status = () => env.take().map((m) => (m.type === 10 ? m.creationStatus : -1));
    await createGpadl(env, 9, 0x1, 1);
    assert.deepEqual(status(), [VMBUS_STATUS_UNSUCCESSFUL]);
    await createGpadl(env, 1, 0x2, 1);
    await createGpadl(env, 1, 0x2, 1);
    assert.deepEqual(status(), [0, VMBUS_STATUS_UNSUCCESSFUL]);
    for (const bytes of splitGpadl(1, 0x3, [pageRange([env.partition.memory.pageCount])]))
      await env.send(bytes);
    assert.deepEqual(status(), [VMBUS_STATUS_UNSUCCESSFUL]);
    await createGpadl(env, 1, 0x4, 51);
    assert.deepEqual(status(), [VMBUS_STATUS_UNSUCCESSFUL]);
    // Two GPADLs in progress at once exceed maxInProgress 1.
    const a = splitGpadl(1, 0x5, [pageRange(Array.from(env.alloc.allocate(40)))]);
    const b = splitGpadl(1, 0x6, [pageRange(Array.from(env.alloc.allocate(40)))]);
    await env.send(a[0]!);
    await env.send(b[0]!);
    for (const m of a.slice(1)) await env.send(m);
    for (const m of b.slice(1)) await env.send(m);
    assert.deepEqual(status(), [VMBUS_STATUS_UNSUCCESSFUL, 0]);
    assert.deepEqual(
      env.errors.map((e) => e.code),
      ['unknown-channel', 'duplicate', 'invalid', 'limit', 'unknown-gpadl', 'limit', 'unknown-gpadl'],
    );
  });

  test('multi-range GPADLs and UEFI-style padded headers are accepted; a body after completion is refused', async () => {
    const env = serverWithRawGuest();
    const { x } = await connected(env);
    const [p1, p2] = [Array.from(env.alloc.allocate(2)), Array.from(env.alloc.allocate(1))];
    const msgs = splitGpadl(1, 0x9, [
      { byteOffset: 100, byteCount: 5000, pfns: p1 },
      { byteOffset: 0, byteCount: 10, pfns: p2 },
    ]);
    const padded = new Uint8Array(240);
    padded.set(msgs[0]!);
    await env.send(padded);
    assert.deepEqual(env.take(), [{ type: 10, childRelid: 1, gpadl: 0x9, creationStatus: 0 }]);
    assert.equal(env.server.getGpadl(x, 9)!.byteCount, 5010);
    await env.send(Uint8Array.from([9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]));
    assert.equal(env.errors.at(-1)!.code, 'unknown-gpadl');
    // Not usable as a ring: two ranges.
    await env.send(openMsg(1, 0x9, 1));
    assert.deepEqual(env.take(), [{ type: 6, childRelid: 1, openId: 1, status: VMBUS_STATUS_UNSUCCESSFUL }]);
  });

  test('teardown of a GPADL in progress drops it and confirms', async () => {
    const env = serverWithRawGuest();
    await connected(env);
    const msgs = splitGpadl(1, 0x77, [pageRange(Array.from(env.alloc.allocate(60)))]);
    await env.send(msgs[0]!);
    await env.send({ type: CHANNELMSG_GPADL_TEARDOWN, childRelid: 1, gpadl: 0x77 });
    assert.deepEqual(env.take(), [{ type: 12, gpadl: 0x77 }]);
    assert.equal(env.server.state.incompleteGpadls.length, 0);
  });

  test('teardown waits for the upper layer to unmap, and for the ring GPADL to stop being used', async () => {
    const env = serverWithRawGuest();
    const { x } = await connected(env);
    await openX(env, 1, 0x100, 4);
    await createGpadl(env, 1, 0x200, 3);
    env.take();
    const mdl = env.server.mapGpadl(x, 0x200);
    await env.send({ type: CHANNELMSG_GPADL_TEARDOWN, childRelid: 1, gpadl: 0x200 });
    await env.send({ type: CHANNELMSG_GPADL_TEARDOWN, childRelid: 1, gpadl: 0x100 });
    assert.deepEqual(env.take(), [], 'both deferred');
    assert.throws(() => env.server.mapGpadl(x, 0x200), /torn down/);
    env.server.unmapGpadl(x, 0x200, mdl);
    await env.hv.idle();
    assert.deepEqual(env.take(), [{ type: 12, gpadl: 0x200 }]);
    await env.send({ type: CHANNELMSG_CLOSECHANNEL, childRelid: 1 });
    assert.deepEqual(env.take(), [{ type: 12, gpadl: 0x100 }]);
    await env.send({ type: CHANNELMSG_GPADL_TEARDOWN, childRelid: 1, gpadl: 0x100 });
    assert.equal(env.errors.at(-1)!.code, 'unknown-gpadl');
  });
});

describe('VmbusServer: channels', () => {
  test('open validates the ring: rings and grant handed to the upper layer, revoked on close', async () => {
    const env = serverWithRawGuest({ vpCount: 4 });
    let request: Parameters<ServerChannelHandler['onOpen']>[0] | null = null;
    const events: string[] = [];
    const handler = recorder(events);
    handler.onOpen = (req) => {
      request = req;
      return 0;
    };
    const x = env.server.offerChannel(OFFER_X, handler);
    await env.contact(VERSION_WIN10_V5_3);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    const pfns = await createGpadl(env, 1, 0x100, 6);
    env.take();
    await env.send(openMsg(1, 0x100, 2, { targetVp: 4 }));
    assert.deepEqual(
      env.take(),
      [{ type: 6, childRelid: 1, openId: 1, status: VMBUS_STATUS_UNSUCCESSFUL }],
      'VP 4 of 4',
    );
    await env.send(openMsg(1, 0x100, 2, { targetVp: 0xffffffff, userData: new Uint8Array(120).fill(3) }));
    assert.deepEqual(env.take(), [{ type: 6, childRelid: 1, openId: 1, status: 0 }]);
    const req = request!;
    assert.equal(req.interruptsDisabled, true);
    assert.deepEqual([...req.ringPfns], pfns);
    assert.equal(req.rings.guestToHost.dataSize, 4096);
    assert.equal(req.rings.hostToGuest.dataSize, 3 * 4096);
    assert.equal(req.userData[119], 3);
    assert.equal(env.server.channelPhase(x), 'open');
    assert.ok(env.server.rings(x));
    env.server.hostView.check(pfns[5]! * 4096, 4096, 'write');
    assert.equal(env.guest.trySignalEvent(0x2001), 0);
    await env.hv.idle();
    assert.deepEqual(events, ['ch gpadl 256', 'ch signal']);
    assert.equal(env.server.signalGuest(x), true);
    await env.send({ type: CHANNELMSG_CLOSECHANNEL, childRelid: 1 });
    assert.equal(env.server.channelPhase(x), 'closed');
    assert.equal(env.server.signalGuest(x), false);
    assert.equal(env.server.rings(x), null);
    assert.throws(() => env.server.hostView.check(pfns[5]! * 4096, 1, 'read'), MemoryAccessError);
    assert.notEqual(env.guest.trySignalEvent(0x2001), 0, 'nobody listens after close');
  });

  test('OPEN while closing is kept and processed once the close completes (ClosingReopen)', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    let release!: () => void;
    const handler = recorder(events);
    handler.onClose = (reason) => {
      events.push(`close ${reason}`);
      return new Promise<void>((resolve) => {
        release = resolve;
      });
    };
    env.server.offerChannel(OFFER_X, handler);
    await env.contact(VERSION_WIN10_V5_3);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    await openX(env);
    env.take();
    await env.send({ type: CHANNELMSG_CLOSECHANNEL, childRelid: 1 });
    await env.send(openMsg(1, 0x100, 2));
    assert.deepEqual(env.take(), []);
    release();
    await env.hv.idle();
    assert.deepEqual(env.take(), [{ type: 6, childRelid: 1, openId: 1, status: 0 }]);
    assert.deepEqual(events, ['ch gpadl 256', 'ch open 1', 'close close', 'ch open 1']);
  });

  test('messages after one that waits for the upper layer are held: replies keep the guest order', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    // The open is answered only when the test says so (a timer would race a slow machine).
    let release = (): void => {};
    const slowOpen = () =>
      new Promise<number>((resolve) => {
        release = () => resolve(0);
      });
    env.server.offerChannel(OFFER_X, recorder(events, 'x', slowOpen));
    await env.contact(VERSION_WIN10_V5_3);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    await createGpadl(env, 1, 0x100, 4);
    env.take();
    // OPEN, then at once a GPADL and a CLOSE, without waiting for the result.
    const pfns = Array.from(env.alloc.allocate(2));
    void env.guest.post(1, encodeMessage(openMsg(1, 0x100, 2)));
    for (const bytes of splitGpadl(1, 0x200, [pageRange(pfns)])) void env.guest.post(1, bytes);
    void env.guest.post(1, encodeMessage({ type: CHANNELMSG_CLOSECHANNEL, childRelid: 1 }));
    await env.hv.idle();
    assert.equal(env.server.state.inbox.length, 2, 'held while onOpen runs');
    release();
    await env.hv.idle();
    assert.deepEqual(
      env.take().map((m) => m.type),
      [6, 10],
    );
    assert.deepEqual(events, ['x gpadl 256', 'x open 1', 'x gpadl 512', 'x close close']);
    assert.deepEqual(env.errors, []);
  });

  test('open/close protocol errors: already open, close of a closed channel, unknown relid', async () => {
    const env = serverWithRawGuest();
    await connected(env);
    await openX(env);
    await env.send(openMsg(1, 0x100, 2));
    await env.send({ type: CHANNELMSG_CLOSECHANNEL, childRelid: 2 });
    await env.send({ type: CHANNELMSG_CLOSECHANNEL, childRelid: 42 });
    assert.deepEqual(
      env.errors.map((e) => [e.code, e.messageType, e.relid]),
      [
        ['bad-state', 5, 1],
        ['bad-state', 7, 2],
        ['unknown-channel', 7, 42],
      ],
    );
  });

  test('an upper layer that throws or rejects in onOpen: failure status and a handler-failed error', async () => {
    const env = serverWithRawGuest();
    const h = recorder([]);
    let n = 0;
    h.onOpen = () => {
      if (n++ === 0) throw new Error('boom');
      return Promise.reject(new Error('later boom'));
    };
    env.server.offerChannel(OFFER_X, h);
    await env.contact(VERSION_WIN10_V5_3);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    await openX(env);
    await env.send(openMsg(1, 0x100, 2));
    const results = env.take().filter((m) => m.type === 6);
    assert.deepEqual(
      results.map((m) => m.type === 6 && m.status),
      [VMBUS_STATUS_UNSUCCESSFUL, VMBUS_STATUS_UNSUCCESSFUL],
    );
    assert.deepEqual(
      env.errors.map((e) => e.code),
      ['handler-failed', 'handler-failed'],
    );
  });

  test('guest-specified signal parameters (6.0, feature 0x1) with OpenChannel2', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    const x = env.server.offerChannel(OFFER_X, recorder(events));
    await env.contact(VERSION_WIN10_V6_0, { featureFlags: 0x1 });
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    await createGpadl(env, 1, 0x100, 4);
    env.take();
    await env.send(openMsg(1, 0x100, 2, { form: 'OpenChannel2', connectionId: 3, eventFlag: 9, flags: 0 }));
    assert.equal(
      (env.take()[0] as { status: number }).status,
      VMBUS_STATUS_UNSUCCESSFUL,
      'connection id 3 is reserved',
    );
    await env.send(
      openMsg(1, 0x100, 2, { form: 'OpenChannel2', connectionId: 0x9000, eventFlag: 9, flags: 0 }),
    );
    assert.equal((env.take()[0] as { status: number }).status, 0);
    const seen: number[] = [];
    env.guest.onEvent(9, (f) => seen.push(f));
    env.server.signalGuest(x);
    assert.equal(env.guest.trySignalEvent(0x9000), 0);
    await env.hv.idle();
    assert.deepEqual(seen, [9]);
    assert.ok(events.includes('ch signal'));
  });

  test('revoke of an open channel: RESCIND, no onClose, teardowns answered at once, released on RELID_RELEASED', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    const { x } = await connected(env, VERSION_WIN10_V5_3, events);
    await openX(env);
    env.take();
    let resolved = false;
    const revoked = env.server.revokeOffer(x).then(() => {
      resolved = true;
    });
    await env.hv.idle();
    assert.deepEqual(env.take(), [{ type: 2, childRelid: 1 }]);
    assert.equal(env.server.signalGuest(x), false);
    await env.send(openMsg(1, 0x100, 2));
    assert.deepEqual(env.take(), [], 'OPEN on a revoked channel is ignored');
    await env.send({ type: CHANNELMSG_GPADL_TEARDOWN, childRelid: 1, gpadl: 0x100 });
    assert.deepEqual(env.take(), [{ type: 12, gpadl: 0x100 }]);
    assert.equal(resolved, false);
    await env.send({ type: CHANNELMSG_RELID_RELEASED, childRelid: 1 });
    await revoked;
    assert.deepEqual(events, ['x gpadl 256', 'x open 1', 'x released']);
    assert.equal(env.server.state.channels.length, 1);
  });

  test('UNLOAD closes channels, releases GPADLs (revoking mappings) and revoked relids; offers survive', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    const { x, y } = await connected(env, VERSION_WIN10_V5_3, events);
    await openX(env);
    await createGpadl(env, 2, 0x300, 2);
    const mdl = env.server.mapGpadl(y, 0x300);
    const revokeY = env.server.revokeOffer(y);
    await env.hv.idle();
    env.take();
    await env.send({ type: CHANNELMSG_UNLOAD });
    await revokeY;
    assert.deepEqual(env.take(), [{ type: 17 }]);
    assert.deepEqual(events.slice(-3), ['x close unload', 'y released', 'x teardown 256 release']);
    assert.throws(() => mdl.read(0, new Uint8Array(1)), MemoryAccessError);
    assert.equal(env.server.connected, false);
    assert.equal(env.server.channelPhase(x), 'unsent');
    assert.equal(env.server.state.gpadls.length, 0);
    await env.contact(VERSION_WIN10_V5_3);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    assert.deepEqual(
      env.take().map((m) => m.type === 1 && m.childRelid),
      [1, false],
    );
  });

  test('INITIATE_CONTACT while connected resets the connection (onClose "reconnect") and renegotiates', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    const disconnects: string[] = [];
    env.server.onDisconnect((r) => disconnects.push(r));
    await connected(env, VERSION_WIN10_V5_3, events);
    await openX(env);
    env.take();
    const replies = await env.contact(VERSION_WIN10_V6_0);
    assert.deepEqual(
      replies.map((m) => m.type),
      [15],
    );
    assert.deepEqual(disconnects, ['reconnect']);
    assert.ok(events.includes('x close reconnect'));
    assert.equal(env.server.version, VERSION_WIN10_V6_0);
    await env.send({ type: CHANNELMSG_REQUESTOFFERS });
    assert.equal(env.take().length, 3, 'offers can be requested again');
  });

  test('0.13 has no UNLOAD_RESPONSE; MODIFYCHANNEL answers only from 5.3', async () => {
    const env = serverWithRawGuest();
    await connected(env, VERSION_WS2008);
    await env.send({ type: CHANNELMSG_UNLOAD });
    assert.deepEqual(env.take(), []);
    assert.equal(env.server.connected, false);
    const env2 = serverWithRawGuest();
    await connected(env2, 0x00050002);
    await openX(env2);
    env2.take();
    await env2.send({ type: 22, childRelid: 1, targetVp: 1 });
    assert.deepEqual(env2.take(), []);
    assert.equal(env2.server.openRequest(env2.server.channels()[0]!)!.targetVp, 1);
  });

  test('dispose closes open channels and rejects pending revokes', async () => {
    const env = serverWithRawGuest();
    const events: string[] = [];
    const { x, y } = await connected(env, VERSION_WIN10_V5_3, events);
    await openX(env);
    const pending = env.server.revokeOffer(y);
    await env.server.dispose();
    await assert.rejects(pending, (e: unknown) => e instanceof BusError && e.code === 'disposed');
    assert.ok(events.includes('x close dispose'));
    assert.throws(() => env.server.offerChannel(OFFER_X, recorder([])), /disposed/);
    assert.equal(env.guest.hostListens(1), false);
    assert.equal(env.server.signalGuest(x), false);
  });
});

describe('VmbusServer: state', () => {
  test('the state is plain data at every stage and survives structuredClone', async () => {
    const env = serverWithRawGuest();
    const check = () => {
      assertPlainData(env.server.state);
      assert.deepEqual(structuredClone(env.server.state), env.server.state);
    };
    check();
    await connected(env);
    check();
    await openX(env);
    await env.send(splitGpadl(1, 0x500, [pageRange(Array.from(env.alloc.allocate(100)))])[0]!);
    assert.equal(env.server.state.incompleteGpadls.length, 1);
    check();
    const state = env.server.state;
    assert.equal(state.channels[0]!.phase, 'open');
    assert.equal(state.channels[0]!.open!.ringGpadlId, 0x100);
    assert.equal(state.gpadls[0]!.pfnCount, 4);
    assert.throws(() => assertPlainData({ a: new Map() }), TypeError);
    assert.throws(() => assertPlainData({ f: () => 1 }), TypeError);
  });
});
