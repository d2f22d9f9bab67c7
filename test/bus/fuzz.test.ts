// Seeded, bounded fuzzing of both state machines with random and mutated control messages: a
// connected server and client, junk injected from the guest side into the server and from the
// host side into the client. Every refusal must be a typed BusProtocolError, nothing may throw
// out of a handler or hang, the server's state stays plain data, and afterwards another channel
// still opens, signals both ways and closes.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  assertPlainData,
  BusProtocolError,
  type ServerChannelHandle,
  VmbusClient,
  VmbusServer,
} from '../../src/bus/index.js';
import { Hypervisor } from '../../src/hv/index.js';
import { PageAllocator } from '../../src/memory/allocator.js';
import { VERSION_WIN10_V6_0 } from '../../src/wire/constants.js';
import { pageRange, splitGpadl } from '../../src/wire/gpadl.js';
import { type ChannelMessage, encodeMessage } from '../../src/wire/messages.js';
import { INST_1, INST_2, OFFER_X, OFFER_Y, recorder, TYPE_X } from './helpers.js';

const SEED = 0x5eed_b05;
const RUNS = 120;
const VICTIM = 2;
const PROTOCOL_CODES = new Set([
  'malformed',
  'unexpected',
  'wrong-version',
  'unknown-channel',
  'unknown-gpadl',
  'duplicate',
  'limit',
  'invalid',
  'bad-state',
  'unsupported',
  'send-failed',
  'handler-failed',
]);

/** A connected pair: X (relid 1, the fuzz target, echoing signals) and Y (relid 2, the victim). */
async function connectedPair() {
  const hv = new Hypervisor({ transport: 'same-thread' });
  const p = hv.createPartition({ memoryBytes: 4 * 1024 * 1024 });
  const server = new VmbusServer(p.host, p.memory);
  const client = new VmbusClient(p.guest!, p.memory);
  const bugs: unknown[] = [];
  server.onHandlerError((e) => bugs.push(e));
  client.onHandlerError((e) => bugs.push(e));
  const serverErrors: BusProtocolError[] = [];
  const clientErrors: BusProtocolError[] = [];
  server.onProtocolError((e) => serverErrors.push(e));
  client.onProtocolError((e) => clientErrors.push(e));
  const handles: ServerChannelHandle[] = [];
  for (const params of [OFFER_X, OFFER_Y]) {
    const h = recorder([]);
    h.onGuestSignal = () => {
      server.signalGuest(handles[params === OFFER_X ? 0 : 1]!);
    };
    handles.push(server.offerChannel(params, h));
  }
  const connecting = client.connect({ versions: [VERSION_WIN10_V6_0], featureFlags: 0x1 });
  await hv.idle();
  await connecting;
  const offers = client.requestOffers();
  await hv.idle();
  await offers;
  const alloc = new PageAllocator(p.memory, { seed: 3 });
  return { hv, p, server, client, bugs, serverErrors, clientErrors, alloc };
}

type Pair = Awaited<ReturnType<typeof connectedPair>>;

/** The victim channel still works: GPADL, open, signal round trip, close, teardown. */
async function victimWorks(env: Pair): Promise<void> {
  const { hv, client, alloc } = env;
  const pfns = Array.from(alloc.allocate(6));
  const created = client.createGpadl(VICTIM, pfns);
  await hv.idle();
  const { gpadlId, status } = await created;
  assert.equal(status, 0, 'victim GPADL created');
  const opened = client.openChannel(VICTIM, { ringGpadlId: gpadlId, downstreamPageOffset: 3 });
  await hv.idle();
  assert.equal(await opened, 0, 'victim channel opened');
  let signalled = false;
  client.onHostSignal(VICTIM, () => {
    signalled = true;
  });
  assert.equal(client.signalHost(VICTIM), true);
  await hv.idle();
  assert.equal(signalled, true, 'the host answered the signal');
  void client.closeChannel(VICTIM);
  const torn = client.teardownGpadl(VICTIM, gpadlId);
  await hv.idle();
  await torn;
}

function checkErrors(env: Pair): void {
  assert.deepEqual(env.bugs, [], 'no exception escaped a handler or hook');
  for (const e of [...env.serverErrors, ...env.clientErrors]) {
    assert.ok(e instanceof BusProtocolError, 'typed error');
    assert.ok(PROTOCOL_CODES.has(e.code), `known code ${e.code}`);
  }
  assertPlainData(env.server.state);
}

// ---------------------------------------------------------------------------------------------
// Message generators

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; len: number }
  | { kind: 'extend'; extra: Uint8Array }
  | { kind: 'word'; at: number; value: number };

const arbMutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(239), bit: fc.nat(7) }),
  fc.record({ kind: fc.constant('truncate' as const), len: fc.nat(240) }),
  fc.record({ kind: fc.constant('extend' as const), extra: fc.uint8Array({ maxLength: 64 }) }),
  fc.record({
    kind: fc.constant('word' as const),
    at: fc.nat(58),
    value: fc.constantFrom(
      0,
      1,
      2,
      3,
      4,
      7,
      0xffff,
      0x10000,
      2047,
      2048,
      8190,
      8191,
      0x7fffffff,
      0x80000000,
      0xffffffff,
    ),
  }),
);

function mutate(template: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let b: Uint8Array = template.slice();
  for (const m of mutations) {
    if (m.kind === 'flip') {
      if (m.at < b.length) b[m.at]! ^= 1 << m.bit;
    } else if (m.kind === 'truncate') {
      b = b.slice(0, Math.min(m.len, b.length));
    } else if (m.kind === 'extend') {
      const n = new Uint8Array(Math.min(240, b.length + m.extra.length));
      n.set(b.subarray(0, n.length));
      n.set(m.extra.subarray(0, n.length - b.length), b.length);
      b = n;
    } else if (4 * m.at + 4 <= b.length) {
      new DataView(b.buffer, b.byteOffset).setUint32(4 * m.at, m.value >>> 0, true);
    }
  }
  return b;
}

/**
 * Sequences of messages: either a "story" (valid messages in an order that drives the state
 * machine deep, each kept, mutated or dropped, with noise in between) or plain noise (valid,
 * mutated, random and raw messages in any order).
 */
function arbMessages(
  templates: readonly Uint8Array[],
  story: readonly Uint8Array[],
): fc.Arbitrary<Uint8Array[]> {
  const random = fc.tuple(fc.nat(31), fc.uint8Array({ maxLength: 232 })).map(([type, rest]) => {
    const b = new Uint8Array(8 + rest.length);
    b[0] = type;
    b.set(rest, 8);
    return b;
  });
  const raw = fc.uint8Array({ maxLength: 240 });
  const valid = fc.constantFrom(...templates);
  const mutated = fc
    .tuple(fc.constantFrom(...templates), fc.array(arbMutation, { minLength: 1, maxLength: 4 }))
    .map(([t, ms]) => mutate(t, ms));
  const noise = fc.oneof(valid, mutated, random, raw);
  const step = fc.record({
    how: fc.integer({ min: 0, max: 9 }),
    mutations: fc.array(arbMutation, { minLength: 1, maxLength: 3 }),
    noise: fc.array(noise, { maxLength: 2 }),
  });
  const stories = fc.array(step, { minLength: story.length, maxLength: story.length }).map((steps) => {
    const out: Uint8Array[] = [];
    steps.forEach((st, i) => {
      if (st.how <= 6) out.push(story[i]!);
      else if (st.how <= 8) out.push(mutate(story[i]!, st.mutations));
      out.push(...st.noise);
    });
    return out;
  });
  return fc.oneof(stories, fc.array(noise, { minLength: 1, maxLength: 24 }));
}

const u32At = (b: Uint8Array, o: number): number =>
  b.length >= o + 4 ? new DataView(b.buffer, b.byteOffset).getUint32(o, true) : -1;

// Guest-to-host templates aimed at channel 1 (GPADL ids 0x300.., far from the client's 0xE1E10..).
const ZERO_120 = new Uint8Array(120);
const big = splitGpadl(1, 0x301, [pageRange(Array.from({ length: 60 }, (_, i) => 100 + i))]);
const GPADL_300 = splitGpadl(1, 0x300, [pageRange([200, 201, 202, 203])]);
const OPEN_1 = encodeMessage({
  type: 5,
  form: 'OpenChannel',
  childRelid: 1,
  openId: 1,
  ringBufferGpadlHandle: 0x300,
  targetVp: 0,
  downstreamRingBufferPageOffset: 2,
  userData: ZERO_120,
});
const GUEST_TEMPLATES: Uint8Array[] = [
  encodeMessage({ type: 3 }),
  ...GPADL_300,
  ...big,
  OPEN_1,
  encodeMessage({
    type: 5,
    form: 'OpenChannel2',
    childRelid: 1,
    openId: 1,
    ringBufferGpadlHandle: 0x300,
    targetVp: 0,
    downstreamRingBufferPageOffset: 2,
    userData: ZERO_120,
    connectionId: 0x7000,
    eventFlag: 77,
    flags: 0,
  }),
  encodeMessage({ type: 7, childRelid: 1 }),
  encodeMessage({ type: 11, childRelid: 1, gpadl: 0x300 }),
  encodeMessage({ type: 11, childRelid: 1, gpadl: 0x301 }),
  encodeMessage({ type: 13, childRelid: 1 }),
  encodeMessage({ type: 22, childRelid: 1, targetVp: 1 }),
  encodeMessage({
    type: 21,
    form: 'TlConnectRequest2',
    guestEndpointId: INST_1,
    hostServiceId: TYPE_X,
    siloId: INST_2,
  }),
  encodeMessage({
    type: 18,
    childRelid: 1,
    targetVp: 0,
    targetSint: 2,
    ringBufferGpadlHandle: 0x300,
    downstreamRingBufferPageOffset: 2,
  }),
  encodeMessage({ type: 25, parentToChildMonitorGpa: 0x1000n, childToParentMonitorGpa: 0x2000n }),
  encodeMessage({ type: 29 }),
];

const GUEST_STORY: Uint8Array[] = [
  ...GPADL_300,
  OPEN_1,
  encodeMessage({ type: 22, childRelid: 1, targetVp: 2 }),
  ...big,
  encodeMessage({ type: 11, childRelid: 1, gpadl: 0x300 }),
  encodeMessage({ type: 7, childRelid: 1 }),
  OPEN_1,
  encodeMessage({ type: 11, childRelid: 1, gpadl: 0x301 }),
  encodeMessage({ type: 7, childRelid: 1 }),
  encodeMessage({ type: 13, childRelid: 1 }),
];

/** Messages that would legitimately break the victim (reset the connection or name its channel). */
function spareVictimFromGuest(b: Uint8Array): boolean {
  const type = u32At(b, 0);
  if (type === 14 || type === 16 || type === 27) return false; // contact, unload, pause
  if (u32At(b, 8) === VICTIM) return false;
  const id = u32At(b, 12);
  if ((type === 8 || type === 9 || type === 11) && id >= 0xe0000 && id < 0xf0000) return false;
  return true;
}

const OFFER_TEMPLATE: ChannelMessage = {
  type: 1,
  ifType: TYPE_X,
  ifInstance: INST_2,
  channelLatency: 0n,
  channelRevision: 0,
  serverContextSize: 0,
  chnFlags: 0,
  mmioMegabytes: 0,
  userDefined: ZERO_120,
  subChannelIndex: 0,
  mmioMegabytesOptional: 0,
  childRelid: 9,
  monitorId: 0xff,
  monitorAllocated: 0,
  isDedicatedInterrupt: 1,
  connectionId: 0x2009,
};

const HOST_TEMPLATES: Uint8Array[] = [
  encodeMessage(OFFER_TEMPLATE),
  encodeMessage({ ...OFFER_TEMPLATE, childRelid: 10, subChannelIndex: 1 } as ChannelMessage),
  encodeMessage({ type: 2, childRelid: 1 }),
  encodeMessage({ type: 2, childRelid: 9 }),
  encodeMessage({ type: 4 }),
  encodeMessage({ type: 6, childRelid: 1, openId: 1, status: 0 }),
  encodeMessage({ type: 10, childRelid: 1, gpadl: 0xe1e10, creationStatus: 0 }),
  encodeMessage({ type: 12, gpadl: 0xe1e10 }),
  encodeMessage({
    type: 15,
    form: 'VersionResponse2',
    versionSupported: 1,
    connectionState: 0,
    msgConnId: 1,
    supportedFeatures: 0xff,
  }),
  encodeMessage({ type: 17 }),
  encodeMessage({ type: 24, childRelid: 1, status: 0 }),
  encodeMessage({ type: 23, endpointId: INST_1, serviceId: TYPE_X, status: 0xc0000236 }),
  encodeMessage({ type: 28 }),
  encodeMessage({ type: 26, connectionState: 0 }),
];

const HOST_STORY: Uint8Array[] = [
  encodeMessage({ type: 10, childRelid: 1, gpadl: 0xe1e10, creationStatus: 0x8000ffff }),
  encodeMessage({ type: 10, childRelid: 1, gpadl: 0xe1e10, creationStatus: 0 }),
  encodeMessage({ type: 6, childRelid: 1, openId: 1, status: 0xc0000001 }),
  encodeMessage({ type: 6, childRelid: 1, openId: 1, status: 0 }),
  encodeMessage(OFFER_TEMPLATE),
  encodeMessage({ ...OFFER_TEMPLATE, childRelid: 10, subChannelIndex: 1 } as ChannelMessage),
  encodeMessage({ type: 2, childRelid: 9 }),
  encodeMessage({ type: 2, childRelid: 1 }),
  encodeMessage({ type: 12, gpadl: 0xe1e10 }),
  encodeMessage({ type: 2, childRelid: 10 }),
];

function spareVictimFromHost(b: Uint8Array): boolean {
  return !(u32At(b, 0) === 2 && u32At(b, 8) === VICTIM);
}

describe('bus fuzz', () => {
  test('random and mutated guest messages into the server', async () => {
    await fc.assert(
      fc.asyncProperty(arbMessages(GUEST_TEMPLATES, GUEST_STORY), fc.boolean(), async (msgs, port4) => {
        const env = await connectedPair();
        for (const m of msgs) {
          if (!spareVictimFromGuest(m)) continue;
          env.p.guest!.post(port4 ? 4 : 1, m).catch(() => {});
        }
        await env.hv.idle();
        checkErrors(env);
        await victimWorks(env);
        checkErrors(env);
        env.hv.close();
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  test('random and mutated host messages into the client', async () => {
    await fc.assert(
      fc.asyncProperty(arbMessages(HOST_TEMPLATES, HOST_STORY), async (msgs) => {
        const env = await connectedPair();
        // Requests in flight on channel 1, so that junk answers meet real waiters.
        const inFlight = [
          env.client.createGpadl(1, Array.from(env.alloc.allocate(4))),
          env.client.openChannel(1, { ringGpadlId: 0xe1e10, downstreamPageOffset: 2 }),
        ];
        for (const p of inFlight) p.catch(() => {});
        for (const m of msgs) {
          if (!spareVictimFromHost(m)) continue;
          env.p.host.post(2, m).catch(() => {});
        }
        await env.hv.idle();
        checkErrors(env);
        await victimWorks(env);
        checkErrors(env);
        env.hv.close();
      }),
      { seed: SEED + 1, numRuns: RUNS },
    );
  });

  test('the fuzzers do reach deep states (not only refusals)', async () => {
    // A fixed sequence from the templates: header, open, close, teardown on channel 1.
    const env = await connectedPair();
    for (const m of [...GPADL_300, OPEN_1]) {
      await env.p.guest!.post(1, m);
    }
    await env.hv.idle();
    assert.equal(env.server.state.channels[0]!.phase, 'open', 'template messages open channel 1');
    assert.deepEqual(env.serverErrors, []);
    env.hv.close();
  });
});
