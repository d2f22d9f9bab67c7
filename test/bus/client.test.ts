// The VMBus client against a raw (and often hostile) host: version fallback, connection ids,
// offer validation, refusal of unexpected or contradictory messages, rescind handling and
// release, and the API's contract checks.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BusError } from '../../src/bus/index.js';
import {
  CHANNELMSG_GPADL_CREATED,
  CHANNELMSG_GPADL_TORNDOWN,
  CHANNELMSG_OFFERCHANNEL,
  CHANNELMSG_OPENCHANNEL_RESULT,
  CHANNELMSG_RESCIND_CHANNELOFFER,
  CHANNELMSG_VERSION_RESPONSE,
  VERSION_WIN10,
  VERSION_WIN10_V4_1,
  VERSION_WIN10_V5_2,
  VERSION_WIN10_V5_3,
  VERSION_WIN10_V6_0,
  VERSION_WS2008,
} from '../../src/wire/constants.js';
import type { Guid } from '../../src/wire/guid.js';
import { type ChannelMessage, encodeMessage } from '../../src/wire/messages.js';
import { clientWithRawHost, INST_1, INST_2, TYPE_X, TYPE_Y } from './helpers.js';

type Env = ReturnType<typeof clientWithRawHost>;

function versionResponse(
  supported: number,
  msgConnId = 1,
  extra: Record<string, unknown> = {},
): ChannelMessage {
  return {
    type: CHANNELMSG_VERSION_RESPONSE,
    form: 'VersionResponse',
    versionSupported: supported,
    connectionState: 0,
    msgConnId,
    ...extra,
  } as ChannelMessage;
}

function offerMsg(relid: number, extra: Record<string, unknown> = {}): ChannelMessage {
  return {
    type: CHANNELMSG_OFFERCHANNEL,
    ifType: TYPE_X,
    ifInstance: INST_1,
    channelLatency: 0n,
    channelRevision: 0,
    serverContextSize: 0,
    chnFlags: 0,
    mmioMegabytes: 0,
    userDefined: new Uint8Array(120),
    subChannelIndex: 0,
    mmioMegabytesOptional: 0,
    childRelid: relid,
    monitorId: 0xff,
    monitorAllocated: 0,
    isDedicatedInterrupt: 1,
    connectionId: 0x2000 + relid,
    ...extra,
  } as ChannelMessage;
}

/** Connects at `version`, the raw host answering supported. */
async function connect(env: Env, version = VERSION_WIN10_V5_3, response?: ChannelMessage) {
  const p = env.client.connect({ versions: [version] });
  p.catch(() => {}); // the caller checks the outcome
  await env.hv.idle();
  assert.equal(env.take()[0]!.type, 14);
  await env.hostSend(response ?? versionResponse(1));
  return p;
}

async function withOffers(env: Env, ...offers: ChannelMessage[]): Promise<void> {
  await connect(env);
  const p = env.client.requestOffers();
  await env.hv.idle();
  env.take();
  for (const o of offers) await env.hostSend(o);
  await env.hostSend({ type: 4 });
  await p;
}

function codes(env: Env): [string, number | undefined][] {
  return env.errors.splice(0).map((e) => [e.code, e.messageType]);
}

describe('VmbusClient: connecting', () => {
  test('falls back version by version; >= 5.0 goes to connection id 4, then msg_conn_id is used', async () => {
    const env = clientWithRawHost({}, [1, 4, 7]);
    const p = env.client.connect();
    const tried: number[] = [];
    for (;;) {
      await env.hv.idle();
      const got = env.hostReceived.splice(0);
      if (got.length === 0) break;
      const m = got[0]!.msg;
      assert.equal(m.type, 14);
      if (m.type !== 14) break;
      tried.push(m.vmbusVersionRequested);
      assert.equal(got[0]!.port, 4);
      const ok = m.vmbusVersionRequested === VERSION_WIN10_V5_2;
      await env.hostSend(versionResponse(ok ? 1 : 0, ok ? 7 : 0));
      if (ok) break;
    }
    const info = await p;
    assert.deepEqual(tried, [VERSION_WIN10_V6_0, VERSION_WIN10_V5_3, VERSION_WIN10_V5_2]);
    assert.deepEqual(info, { version: VERSION_WIN10_V5_2, featureFlags: 0, msgConnId: 7 });
    void env.client.requestOffers();
    await env.hv.idle();
    assert.deepEqual(
      env.hostReceived.map((r) => [r.port, r.msg.type]),
      [[7, 3]],
    );
  });

  test('a host without connection id 4: >= 5.0 skipped (post refused), < 5.0 sent on 1', async () => {
    const env = clientWithRawHost({}, [1]);
    const p = env.client.connect();
    await env.hv.idle();
    const [first] = env.hostReceived.splice(0);
    assert.equal(first!.port, 1);
    assert.equal(first!.msg.type === 14 && first!.msg.vmbusVersionRequested, VERSION_WIN10_V4_1);
    await env.hostSend(versionResponse(1, 0x40001));
    assert.deepEqual(await p, { version: VERSION_WIN10_V4_1, featureFlags: 0, msgConnId: 1 });
  });

  test('no version accepted: BusError no-version; a failed connection state: connection-failed', async () => {
    const env = clientWithRawHost();
    const p = env.client.connect({ versions: [VERSION_WIN10_V5_3, VERSION_WIN10] });
    const refused = assert.rejects(p, (e: unknown) => e instanceof BusError && e.code === 'no-version');
    for (let i = 0; i < 2; i++) {
      await env.hv.idle();
      env.take();
      await env.hostSend(versionResponse(0, 0));
    }
    await refused;
    const q = connect(env, VERSION_WIN10_V5_3, versionResponse(1, 1, { connectionState: 2 }));
    await assert.rejects(q, (e: unknown) => e instanceof BusError && e.code === 'connection-failed');
    assert.equal(env.client.connected, false);
    await connect(env);
    assert.equal(env.client.connected, true);
  });

  test('feature flags the host grants without being asked are refused and masked', async () => {
    const env = clientWithRawHost();
    const info = await connect(
      env,
      VERSION_WIN10_V6_0,
      versionResponse(1, 1, { form: 'VersionResponse2', supportedFeatures: 0xff }),
    );
    assert.equal(info.featureFlags, 0x21);
    assert.deepEqual(codes(env), [['invalid', 15]]);
  });

  test('a 6.0 client id is sent in InitiateContact2', async () => {
    const env = clientWithRawHost();
    const p = env.client.connect({ versions: [VERSION_WIN10_V6_0], clientId: INST_2 });
    await env.hv.idle();
    const [m] = env.take();
    assert.equal(m!.type === 14 && m!.form, 'InitiateContact2');
    assert.equal(m!.type === 14 && m!.featureFlags, 0x29);
    await env.hostSend(versionResponse(1, 1, { form: 'VersionResponse2', supportedFeatures: 0x29 }));
    assert.equal((await p).featureFlags, 0x29);
  });

  test('contract: connect twice, unknown versions, client_id without an id', async () => {
    const env = clientWithRawHost();
    await connect(env);
    await assert.rejects(env.client.connect(), /connected/);
    const env2 = clientWithRawHost();
    await assert.rejects(env2.client.connect({ versions: [0x00090009] }), RangeError);
    await assert.rejects(env2.client.connect({ featureFlags: 0x08 }), /clientId/);
  });
});

describe('VmbusClient: a hostile host', () => {
  test('bad offers are refused; good ones cached', async () => {
    const env = clientWithRawHost();
    const offers: number[] = [];
    env.client.onOffer((o) => offers.push(o.relid));
    const bad = encodeMessage(offerMsg(9)).subarray(0, 100);
    await withOffers(
      env,
      offerMsg(1),
      offerMsg(0),
      offerMsg(2048),
      offerMsg(1, { ifType: TYPE_Y }),
      offerMsg(2, { ifType: TYPE_X }),
      offerMsg(3, { subChannelIndex: 1, ifType: TYPE_Y }),
      offerMsg(4, { monitorAllocated: 1, monitorId: 200 }),
      offerMsg(5, { ifType: TYPE_Y, connectionId: 0x1000000 }),
      offerMsg(6, { subChannelIndex: 1 }),
      offerMsg(7, { subChannelIndex: 1 }),
    );
    await env.hostSend(bad);
    assert.deepEqual(offers, [1, 6]);
    assert.deepEqual(codes(env), [
      ['invalid', 1],
      ['invalid', 1],
      ['duplicate', 1],
      ['duplicate', 1],
      ['invalid', 1],
      ['invalid', 1],
      ['invalid', 1],
      ['duplicate', 1],
      ['malformed', 1],
    ]);
  });

  test('answers nobody asked for, wrong-channel answers and host-bound messages are refused', async () => {
    const env = clientWithRawHost();
    await withOffers(env, offerMsg(1));
    const creating = env.client.createGpadl(1, [5, 6]);
    await env.hv.idle();
    const id = (env.take()[0] as { gpadl: number }).gpadl;
    await env.hostSend({ type: CHANNELMSG_OPENCHANNEL_RESULT, childRelid: 9, openId: 9, status: 0 });
    await env.hostSend({ type: CHANNELMSG_OPENCHANNEL_RESULT, childRelid: 1, openId: 1, status: 0 });
    await env.hostSend({ type: CHANNELMSG_GPADL_CREATED, childRelid: 2, gpadl: id, creationStatus: 0 });
    await env.hostSend({ type: CHANNELMSG_GPADL_CREATED, childRelid: 1, gpadl: 0x1234, creationStatus: 0 });
    await env.hostSend({ type: CHANNELMSG_GPADL_TORNDOWN, gpadl: id });
    await env.hostSend({ type: 17 });
    await env.hostSend({ type: 24, childRelid: 1, status: 0 });
    await env.hostSend(versionResponse(1));
    await env.hostSend({ type: 3 });
    await env.hostSend(Uint8Array.of(200, 0, 0, 0, 0, 0, 0, 0));
    await env.hostSend({ type: CHANNELMSG_RESCIND_CHANNELOFFER, childRelid: 5 });
    await env.hostSend({ type: 4 });
    assert.deepEqual(codes(env), [
      ['unknown-channel', 6],
      ['unexpected', 6],
      ['invalid', 10],
      ['unexpected', 10],
      ['unexpected', 12],
      ['unexpected', 17],
      ['unexpected', 24],
      ['unexpected', 15],
      ['unexpected', 3],
      ['malformed', 200],
      ['unknown-channel', 2],
      ['unexpected', 4],
    ]);
    await env.hostSend({ type: CHANNELMSG_GPADL_CREATED, childRelid: 1, gpadl: id, creationStatus: 0 });
    assert.deepEqual(await creating, { gpadlId: id, status: 0 });
    assert.deepEqual(env.client.channelGpadls(1), [id]);
  });

  test('messages of a newer protocol than negotiated are refused', async () => {
    const env = clientWithRawHost();
    await connect(env, VERSION_WIN10);
    await env.hostSend({ type: 24, childRelid: 1, status: 0 });
    await env.hostSend({ type: 28 });
    assert.deepEqual(codes(env), [
      ['wrong-version', 24],
      ['wrong-version', 28],
    ]);
  });

  test('rescind: a pending open rejects, GPADLs are torn down, then RELID_RELEASED', async () => {
    const env = clientWithRawHost();
    await withOffers(env, offerMsg(1), offerMsg(2, { ifType: TYPE_Y }));
    const created = env.client.createGpadl(1, [10, 11, 12, 13]);
    await env.hv.idle();
    const id = (env.take()[0] as { gpadl: number }).gpadl;
    await env.hostSend({ type: CHANNELMSG_GPADL_CREATED, childRelid: 1, gpadl: id, creationStatus: 0 });
    await created;
    const opening = env.client.openChannel(1, { ringGpadlId: id, downstreamPageOffset: 2 });
    const rejected = assert.rejects(opening, (e: unknown) => e instanceof BusError && e.code === 'rescinded');
    let listenerDone = false;
    env.client.onRescind(
      (o) =>
        new Promise<void>((resolve) =>
          setImmediate(() => {
            listenerDone = o.relid === 1;
            resolve();
          }),
        ),
    );
    await env.hv.idle();
    env.take();
    await env.hostSend({ type: CHANNELMSG_RESCIND_CHANNELOFFER, childRelid: 1 });
    await rejected;
    await env.hv.idle();
    assert.equal(listenerDone, true);
    assert.deepEqual(
      env.take(),
      [{ type: 11, childRelid: 1, gpadl: id }],
      'teardown first, after the listener',
    );
    await env.hostSend({ type: CHANNELMSG_GPADL_TORNDOWN, gpadl: id });
    await env.hv.idle();
    assert.deepEqual(env.take(), [{ type: 13, childRelid: 1 }]);
    assert.equal(env.client.offer(1), undefined);
    assert.deepEqual(
      env.client.offers().map((o) => o.relid),
      [2],
    );
    // Two rescinds in one delivery: the second finds the channel still revoked; one after the
    // automatic release finds no channel.
    const rescind2 = encodeMessage({ type: CHANNELMSG_RESCIND_CHANNELOFFER, childRelid: 2 });
    void env.host.post(2, rescind2);
    void env.host.post(2, rescind2);
    await env.hv.idle();
    await env.hostSend(rescind2);
    assert.deepEqual(codes(env), [
      ['duplicate', 2],
      ['unknown-channel', 2],
    ]);
  });

  test('autoRelease false: nothing is sent until releaseChannel', async () => {
    const env = clientWithRawHost({ autoRelease: false });
    await withOffers(env, offerMsg(1));
    await env.hostSend({ type: CHANNELMSG_RESCIND_CHANNELOFFER, childRelid: 1 });
    assert.deepEqual(env.take(), []);
    assert.equal(env.client.channelPhase(1), 'revoked');
    await assert.rejects(
      env.client.createGpadl(1, [3]),
      (e: unknown) => e instanceof BusError && e.code === 'rescinded',
    );
    const released = env.client.releaseChannel(1);
    assert.equal(env.client.releaseChannel(1), released, 'idempotent');
    await released;
    await env.hv.idle();
    assert.deepEqual(env.take(), [{ type: 13, childRelid: 1 }]);
  });
});

describe('VmbusClient: API contract and lifecycle', () => {
  test('createGpadl refuses PFNs outside memory, more than 8190 pages and unknown channels', async () => {
    const env = clientWithRawHost();
    await withOffers(env, offerMsg(1));
    const pages = env.partition.memory.pageCount;
    assert.throws(() => env.client.createGpadl(1, [pages]), RangeError);
    assert.throws(
      () =>
        env.client.createGpadl(
          1,
          Array.from({ length: 8191 }, (_, i) => i + 1),
        ),
      RangeError,
    );
    assert.throws(() => env.client.createGpadl(3, [1]), /relid 3/);
    assert.throws(() => env.client.createGpadl(1, []), RangeError);
    assert.throws(() => env.client.teardownGpadl(1, 0x999), /no GPADL/);
    assert.throws(() => env.client.closeChannel(1), /not open/);
    assert.throws(
      () => env.client.openChannel(1, { ringGpadlId: 1, downstreamPageOffset: 1, eventFlag: 5 }),
      /feature/,
    );
    assert.throws(
      () =>
        env.client.openChannel(1, { ringGpadlId: 1, downstreamPageOffset: 1, userData: new Uint8Array(121) }),
      RangeError,
    );
    assert.throws(() => env.client.modifyChannel(1, 0), /not open/);
    assert.equal(env.client.signalHost(1), false);
    assert.equal(env.client.signalHost(99), false);
    await env.hv.idle();
    assert.deepEqual(env.take(), [], 'nothing was sent');
  });

  test('unload forgets offers and rejects what is in flight; 0.13 unloads without a response', async () => {
    const env = clientWithRawHost();
    await withOffers(env, offerMsg(1));
    const pending = env.client.createGpadl(1, [1]);
    const rejected = assert.rejects(
      pending,
      (e: unknown) => e instanceof BusError && e.code === 'disconnected',
    );
    const unloaded = env.client.unload();
    await env.hv.idle();
    assert.deepEqual(
      env.take().map((m) => m.type),
      [8, 16],
    );
    await env.hostSend({ type: 17 });
    await unloaded;
    await rejected;
    assert.deepEqual(env.client.offers(), []);
    const env2 = clientWithRawHost();
    await connect(env2, VERSION_WS2008, versionResponse(1, VERSION_WS2008));
    await env2.client.unload();
    assert.equal(env2.client.connected, false);
  });

  test('a closed link rejects everything in flight with link-closed', async () => {
    const env = clientWithRawHost();
    await withOffers(env, offerMsg(1));
    const pending = env.client.createGpadl(1, [1]);
    let disconnected = false;
    env.client.onDisconnect(() => {
      disconnected = true;
    });
    env.partition.host.close();
    await assert.rejects(pending, (e: unknown) => e instanceof BusError && e.code === 'link-closed');
    assert.equal(disconnected, true);
  });

  test('host signals reach the handler on the channel event flag, which moves with a guest-chosen one', async () => {
    const env = clientWithRawHost();
    await connect(
      env,
      VERSION_WIN10_V6_0,
      versionResponse(1, 1, { form: 'VersionResponse2', supportedFeatures: 0x1 }),
    );
    const p = env.client.requestOffers();
    await env.hv.idle();
    await env.hostSend(offerMsg(1));
    await env.hostSend({ type: 4 });
    await p;
    env.take();
    const hits: string[] = [];
    env.client.onHostSignal(1, () => hits.push('signal'));
    env.host.setEventFlag(1);
    await env.hv.idle();
    const opening = env.client.openChannel(1, {
      ringGpadlId: 5,
      downstreamPageOffset: 2,
      eventFlag: 40,
      connectionId: 0x3000,
    });
    await env.hv.idle();
    const [open] = env.take();
    assert.equal(open!.type === 5 && open!.form, 'OpenChannel2');
    env.host.setEventFlag(1);
    env.host.setEventFlag(40);
    await env.hv.idle();
    await env.hostSend({ type: CHANNELMSG_OPENCHANNEL_RESULT, childRelid: 1, openId: 1, status: 0 });
    assert.equal(await opening, 0);
    const seen: number[] = [];
    env.host.onEvent(0x3000, (c) => seen.push(c));
    assert.equal(env.client.signalHost(1), true);
    await env.hv.idle();
    assert.deepEqual(hits, ['signal', 'signal']);
    assert.deepEqual(seen, [0x3000]);
  });

  test('hv_sock connect resolves with the offer the host makes for it', async () => {
    const env = clientWithRawHost();
    await withOffers(env);
    const endpoint: Guid = INST_2;
    const p = env.client.tlConnect(endpoint, TYPE_Y);
    await env.hv.idle();
    assert.equal(env.take()[0]!.type, 21);
    await env.hostSend(offerMsg(3, { ifType: TYPE_Y, ifInstance: endpoint, chnFlags: 0x2011 }));
    const r = await p;
    assert.equal(r.accepted && r.offer.relid, 3);
  });
});
