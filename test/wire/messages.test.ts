// Channel-management messages: a byte vector for every type and form, both directions, and round trips.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  CHANNEL_MESSAGE_INFO,
  CHANNELMSG_COUNT,
  CHANNELMSG_OPEN_RESERVED_CHANNEL,
  CHANNELMSG_RESUME,
  channelMessageName,
  channelMessageType,
  formatVersion,
  messageAllowed,
  VERSION_WIN7,
  VERSION_WIN10,
  VERSION_WIN10_V5_3,
  VERSION_WIN10_V6_0,
  VERSION_WS2008,
  VMBUS_FEATURE_FLAG_PAUSE_RESUME,
  VMBUS_VERSIONS,
  versionAtLeast,
} from '../../src/wire/constants.js';
import { WireError } from '../../src/wire/errors.js';
import { Guid } from '../../src/wire/guid.js';
import { describeMessage, messageFromJson, messageToJson } from '../../src/wire/message-json.js';
import {
  type ChannelMessage,
  decodeMessage,
  encodedMessageLength,
  encodeMessage,
  encodeMessageInto,
  MessageEncodeError,
  messageName,
} from '../../src/wire/messages.js';

// --- hex helpers, written independently of the codec ---
const hx = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const le = (n: bigint, bytes: number) => {
  let s = '';
  for (let i = 0; i < bytes; i++)
    s += Number((n >> BigInt(8 * i)) & 0xffn)
      .toString(16)
      .padStart(2, '0');
  return s;
};
const u8 = (n: number) => le(BigInt(n), 1);
const u16 = (n: number) => le(BigInt(n), 2);
const u32 = (n: number) => le(BigInt(n), 4);
const u64 = (n: bigint) => le(n, 8);
const hdr = (type: number, padding = 0) => u32(type) + u32(padding);
const pattern = (n: number, start: number) => Uint8Array.from({ length: n }, (_, i) => (start + i) & 0xff);
const patternHex = (n: number, start: number) => Buffer.from(pattern(n, start)).toString('hex');

// storvsc class id (vector from the GUID test), and two more written out by hand.
const G1 = Guid.parse('ba6163d9-04a1-4d29-b605-72e2ffb1dc7f');
const G1HEX = 'd96361baa104294db60572e2ffb1dc7f';
const G2 = Guid.parse('00112233-4455-6677-8899-aabbccddeeff');
const G2HEX = '3322110055447766' + '8899aabbccddeeff';
const G3 = Guid.parse('f8615163-df3e-46c5-913f-f2d2f965ed0e');
const G3HEX = '635161f83edfc546913ff2d2f965ed0e';

interface Vector {
  name: string;
  msg: ChannelMessage;
  hex: string;
}

const VECTORS: Vector[] = [
  {
    name: 'OFFERCHANNEL',
    msg: {
      type: 1,
      ifType: G1,
      ifInstance: G2,
      channelLatency: 0x0102030405060708n,
      channelRevision: 9,
      serverContextSize: 10,
      chnFlags: 0x2011,
      mmioMegabytes: 16,
      userDefined: pattern(120, 0x40),
      subChannelIndex: 2,
      mmioMegabytesOptional: 3,
      childRelid: 5,
      monitorId: 0xff,
      monitorAllocated: 1,
      isDedicatedInterrupt: 1,
      connectionId: 0x2005,
    },
    hex:
      hdr(1) +
      G1HEX +
      G2HEX +
      u64(0x0102030405060708n) +
      u32(9) +
      u32(10) +
      u16(0x2011) +
      u16(16) +
      patternHex(120, 0x40) +
      u16(2) +
      u16(3) +
      u32(5) +
      u8(0xff) +
      u8(1) +
      u16(1) +
      u32(0x2005),
  },
  { name: 'RESCIND_CHANNELOFFER', msg: { type: 2, childRelid: 7 }, hex: hdr(2) + u32(7) },
  { name: 'REQUESTOFFERS', msg: { type: 3 }, hex: hdr(3) },
  { name: 'ALLOFFERS_DELIVERED', msg: { type: 4 }, hex: hdr(4) },
  {
    name: 'OPENCHANNEL (148)',
    msg: {
      type: 5,
      form: 'OpenChannel',
      childRelid: 1,
      openId: 1,
      ringBufferGpadlHandle: 0xe1e10,
      targetVp: 3,
      downstreamRingBufferPageOffset: 4,
      userData: pattern(120, 0x80),
    },
    hex: hdr(5) + u32(1) + u32(1) + u32(0xe1e10) + u32(3) + u32(4) + patternHex(120, 0x80),
  },
  {
    name: 'OPENCHANNEL (OpenChannel2, 156)',
    msg: {
      type: 5,
      form: 'OpenChannel2',
      childRelid: 1,
      openId: 2,
      ringBufferGpadlHandle: 0xe1e11,
      targetVp: 0xffffffff,
      downstreamRingBufferPageOffset: 16,
      userData: new Uint8Array(120),
      connectionId: 0x2001,
      eventFlag: 1,
      flags: 1,
    },
    hex:
      hdr(5) +
      u32(1) +
      u32(2) +
      u32(0xe1e11) +
      u32(0xffffffff) +
      u32(16) +
      '00'.repeat(120) +
      u32(0x2001) +
      u16(1) +
      u16(1),
  },
  {
    name: 'OPENCHANNEL_RESULT',
    msg: { type: 6, childRelid: 1, openId: 1, status: 0x8000ffff },
    hex: hdr(6) + u32(1) + u32(1) + u32(0x8000ffff),
  },
  { name: 'CLOSECHANNEL (spec vector)', msg: { type: 7, childRelid: 5 }, hex: '07000000 00000000 05000000' },
  {
    name: 'GPADL_HEADER (spec vector, raw range bytes)',
    msg: { type: 8, childRelid: 5, gpadl: 1, rangeBufLen: 7, rangeCount: 6, rangeData: hx('0a0b0c0d') },
    hex: '08000000 00000000 05000000 01000000 0700 0600 0a0b0c0d',
  },
  {
    name: 'GPADL_HEADER (spec ring example)',
    msg: {
      type: 8,
      childRelid: 1,
      gpadl: 0xe1e10,
      rangeBufLen: 40,
      rangeCount: 1,
      rangeData: hx(u32(0x4000) + u32(0) + u64(0x1000n) + u64(0x1001n) + u64(0x1002n) + u64(0x1003n)),
    },
    hex:
      '08 00 00 00 00 00 00 00 01 00 00 00 10 1e 0e 00 28 00 01 00 00 40 00 00 00 00 00 00' +
      '0010000000000000 0110000000000000 0210000000000000 0310000000000000',
  },
  {
    name: 'GPADL_BODY',
    msg: { type: 9, msgNumber: 0, gpadl: 0xe1e10, pfns: [0x1004, 2 ** 52 - 1] },
    hex: hdr(9) + u32(0) + u32(0xe1e10) + u64(0x1004n) + u64(2n ** 52n - 1n),
  },
  {
    name: 'GPADL_CREATED',
    msg: { type: 10, childRelid: 1, gpadl: 0xe1e10, creationStatus: 0 },
    hex: hdr(10) + u32(1) + u32(0xe1e10) + u32(0),
  },
  {
    name: 'GPADL_TEARDOWN',
    msg: { type: 11, childRelid: 1, gpadl: 0xe1e10 },
    hex: hdr(11) + u32(1) + u32(0xe1e10),
  },
  { name: 'GPADL_TORNDOWN', msg: { type: 12, gpadl: 0xe1e10 }, hex: hdr(12) + u32(0xe1e10) },
  { name: 'RELID_RELEASED', msg: { type: 13, childRelid: 5 }, hex: hdr(13) + u32(5) },
  {
    name: 'INITIATE_CONTACT (< 5.0, interrupt page)',
    msg: {
      type: 14,
      form: 'InitiateContact',
      vmbusVersionRequested: VERSION_WIN10,
      targetVcpu: 0,
      interruptPage: 0x12345000n,
      msgSint: 0x00,
      msgVtl: 0x50,
      msgReserved: 0x1234,
      featureFlags: 0,
      monitorPage1: 0x3000n,
      monitorPage2: 0x4000n,
    },
    hex: hdr(14) + u32(0x40000) + u32(0) + u64(0x12345000n) + u64(0x3000n) + u64(0x4000n),
  },
  {
    name: 'INITIATE_CONTACT (>= 5.0, msg_sint)',
    msg: {
      type: 14,
      form: 'InitiateContact',
      vmbusVersionRequested: VERSION_WIN10_V5_3,
      targetVcpu: 1,
      interruptPage: 0x0102n,
      msgSint: 2,
      msgVtl: 1,
      featureFlags: 0,
      monitorPage1: 0x3000n,
      monitorPage2: 0x4000n,
    },
    hex: hdr(14) + u32(0x50003) + u32(1) + u8(2) + u8(1) + u16(0) + u32(0) + u64(0x3000n) + u64(0x4000n),
  },
  {
    name: 'INITIATE_CONTACT (InitiateContact2, 56)',
    msg: {
      type: 14,
      form: 'InitiateContact2',
      vmbusVersionRequested: VERSION_WIN10_V6_0,
      targetVcpu: 0,
      interruptPage: 0x0000002f00000002n,
      msgSint: 2,
      msgVtl: 0,
      featureFlags: 0x2f,
      monitorPage1: 0n,
      monitorPage2: 0n,
      clientId: G3,
    },
    hex: hdr(14) + u32(0x60000) + u32(0) + u8(2) + u8(0) + u16(0) + u32(0x2f) + u64(0n) + u64(0n) + G3HEX,
  },
  {
    name: 'VERSION_RESPONSE (16)',
    msg: { type: 15, form: 'VersionResponse', versionSupported: 1, connectionState: 0, msgConnId: 1 },
    hex: hdr(15) + u8(1) + u8(0) + u16(0) + u32(1),
  },
  {
    name: 'VERSION_RESPONSE (VersionResponse2, 20)',
    msg: {
      type: 15,
      form: 'VersionResponse2',
      versionSupported: 1,
      connectionState: 0,
      msgConnId: 1,
      supportedFeatures: 0x2f,
    },
    hex: hdr(15) + u8(1) + u8(0) + u16(0) + u32(1) + u32(0x2f),
  },
  {
    name: 'VERSION_RESPONSE (VersionResponse3, 40)',
    msg: {
      type: 15,
      form: 'VersionResponse3',
      versionSupported: 1,
      connectionState: 0,
      msgConnId: 1,
      supportedFeatures: 0x6f,
      parentToChildMonitorGpa: 0x7000n,
      childToParentMonitorGpa: 0x8000n,
    },
    hex: hdr(15) + u8(1) + u8(0) + u16(0) + u32(1) + u32(0x6f) + u32(0) + u64(0x7000n) + u64(0x8000n),
  },
  { name: 'UNLOAD (spec vector)', msg: { type: 16 }, hex: '10000000 00000000' },
  { name: 'UNLOAD_RESPONSE', msg: { type: 17 }, hex: hdr(17) },
  {
    name: 'OPEN_RESERVED_CHANNEL',
    msg: {
      type: 18,
      childRelid: 7,
      targetVp: 1,
      targetSint: 2,
      ringBufferGpadlHandle: 0xe1e11,
      downstreamRingBufferPageOffset: 8,
    },
    hex: hdr(18) + u32(7) + u32(1) + u32(2) + u32(0xe1e11) + u32(8),
  },
  {
    name: 'CLOSE_RESERVED_CHANNEL',
    msg: { type: 19, childRelid: 7, targetVp: 1, targetSint: 2 },
    hex: hdr(19) + u32(7) + u32(1) + u32(2),
  },
  { name: 'CLOSE_RESERVED_RESPONSE', msg: { type: 20, childRelid: 7 }, hex: hdr(20) + u32(7) },
  {
    name: 'TL_CONNECT_REQUEST (40)',
    msg: { type: 21, form: 'TlConnectRequest', guestEndpointId: G2, hostServiceId: G1 },
    hex: hdr(21) + G2HEX + G1HEX,
  },
  {
    name: 'TL_CONNECT_REQUEST (TlConnectRequest2, 56)',
    msg: { type: 21, form: 'TlConnectRequest2', guestEndpointId: G2, hostServiceId: G1, siloId: G3 },
    hex: hdr(21) + G2HEX + G1HEX + G3HEX,
  },
  { name: 'MODIFYCHANNEL', msg: { type: 22, childRelid: 5, targetVp: 3 }, hex: hdr(22) + u32(5) + u32(3) },
  {
    name: 'TL_CONNECT_RESULT',
    msg: { type: 23, endpointId: G2, serviceId: G1, status: 0xc0000236 },
    hex: hdr(23) + G2HEX + G1HEX + u32(0xc0000236),
  },
  {
    name: 'MODIFYCHANNEL_RESPONSE',
    msg: { type: 24, childRelid: 5, status: 0 },
    hex: hdr(24) + u32(5) + u32(0),
  },
  {
    name: 'MODIFY_CONNECTION',
    msg: { type: 25, parentToChildMonitorGpa: 0x10000n, childToParentMonitorGpa: 0xffffffffffff1000n },
    hex: hdr(25) + u64(0x10000n) + u64(0xffffffffffff1000n),
  },
  {
    name: 'MODIFY_CONNECTION_RESPONSE (9 bytes)',
    msg: { type: 26, connectionState: 2 },
    hex: hdr(26) + u8(2),
  },
  { name: 'PAUSE', msg: { type: 27 }, hex: hdr(27) },
  { name: 'PAUSE_RESPONSE', msg: { type: 28 }, hex: hdr(28) },
  { name: 'RESUME', msg: { type: 29 }, hex: hdr(29) },
];

/** The vector whose name starts with `prefix`. */
function vec(prefix: string): Vector {
  const found = VECTORS.find((v) => v.name.startsWith(prefix));
  if (found === undefined) throw new Error(`no vector ${prefix}`);
  return found;
}

const jsonRoundTrip = (m: ChannelMessage) => messageFromJson(JSON.parse(JSON.stringify(messageToJson(m))));

describe('channel message byte vectors', () => {
  test('cover every message type 1..29', () => {
    const types = new Set(VECTORS.map((v) => v.msg.type));
    for (let t = 1; t < CHANNELMSG_COUNT; t++) assert.ok(types.has(t as ChannelMessage['type']), `type ${t}`);
  });

  for (const v of VECTORS) {
    test(`${v.name}: encode gives the bytes, decode gives the struct`, () => {
      const bytes = hx(v.hex);
      assert.deepEqual(encodeMessage(v.msg), bytes);
      assert.equal(encodedMessageLength(v.msg), bytes.length);
      assert.deepEqual(decodeMessage(bytes), v.msg);
      assert.deepEqual(jsonRoundTrip(v.msg), v.msg);
      const lines = describeMessage(v.msg);
      assert.equal(lines[0], `message: ${messageName(v.msg)} (${v.msg.type})`);
    });
  }

  test('sizes in CHANNEL_MESSAGE_INFO match the encoder for every form', () => {
    for (let t = 1; t < CHANNELMSG_COUNT; t++) {
      const sizes = VECTORS.filter((v) => v.msg.type === t && v.msg.type !== 8 && v.msg.type !== 9)
        .map((v) => hx(v.hex).length)
        .sort((a, b) => a - b);
      const info = CHANNEL_MESSAGE_INFO[t]!;
      if (t === 8) assert.deepEqual(info.sizes, [20]);
      else if (t === 9) assert.deepEqual(info.sizes, [16]);
      else assert.deepEqual([...new Set(sizes)], [...info.sizes], `type ${t}`);
      assert.equal(info.name, channelMessageName(t));
    }
  });
});

describe('decoding edge cases', () => {
  test('QEMU-padded offer (200 bytes) keeps the 4 trailing bytes and re-encodes them', () => {
    const bytes = hx(`${vec('OFFERCHANNEL').hex}a1a2a3a4`);
    const m = decodeMessage(bytes);
    assert.deepEqual(m.trailing, hx('a1a2a3a4'));
    assert.deepEqual(encodeMessage(m), bytes);
  });

  test('non-zero header padding is kept', () => {
    const bytes = hx(hdr(7, 0xdeadbeef) + u32(5));
    const m = decodeMessage(bytes);
    assert.deepEqual(m, { type: 7, childRelid: 5, headerPadding: 0xdeadbeef });
    assert.deepEqual(encodeMessage(m), bytes);
  });

  test('variant forms are chosen by size; bytes between forms are trailing', () => {
    const open150 = hx(`${vec('OPENCHANNEL (148)').hex}eeff`);
    const m = decodeMessage(open150);
    assert.equal(m.type === 5 && m.form, 'OpenChannel');
    assert.deepEqual(m.trailing, hx('eeff'));
    assert.deepEqual(encodeMessage(m), open150);

    const vr = decodeMessage(hx(`${hdr(15)}01000000 01000000 2f000000 ffff`));
    assert.equal(vr.type === 15 && vr.form, 'VersionResponse2');
    assert.deepEqual(vr.trailing, hx('ffff'));

    const ic = decodeMessage(hx(hdr(14) + '00'.repeat(40)));
    assert.equal(ic.type === 14 && ic.form, 'InitiateContact');
    assert.equal(ic.trailing?.length, 8);
  });

  test('non-zero reserved fields are kept', () => {
    const bytes = hx(hdr(15) + u8(1) + u8(0) + u16(0xabcd) + u32(1) + u32(0) + u32(7) + u64(1n) + u64(2n));
    const m = decodeMessage(bytes);
    assert.ok(m.type === 15 && m.form === 'VersionResponse3');
    assert.equal(m.padding, 0xabcd);
    assert.equal(m.padding2, 7);
    assert.deepEqual(encodeMessage(m), bytes);
  });

  test('GPADL_BODY with a partial u64 at the end keeps it as trailing', () => {
    const bytes = hx(`${hdr(9) + u32(0) + u32(1) + u64(5n)}aabbcc`);
    const m = decodeMessage(bytes);
    assert.deepEqual(m, { type: 9, msgNumber: 0, gpadl: 1, pfns: [5], trailing: hx('aabbcc') });
    assert.deepEqual(encodeMessage(m), bytes);
  });

  test('decoded byte fields are copies, not views of the input', () => {
    const bytes = hx(vec('OFFERCHANNEL').hex);
    const m = decodeMessage(bytes);
    bytes.fill(0);
    assert.deepEqual(encodeMessage(m), hx(vec('OFFERCHANNEL').hex));
  });

  const refused = (bytes: Uint8Array, code: string, field: string) =>
    assert.throws(
      () => decodeMessage(bytes),
      (e: unknown) => e instanceof WireError && e.code === code && e.field === field,
      `${code} ${field}`,
    );

  test('more than 240 bytes is oversized', () => {
    refused(new Uint8Array(241).fill(0, 0, 8).fill(1, 0, 1), 'oversized', 'message');
    assert.equal(decodeMessage(hx(hdr(3) + '00'.repeat(232))).type, 3);
  });

  test('no complete header is truncated', () => {
    refused(new Uint8Array(0), 'truncated', 'header');
    refused(hx('0100000000'), 'truncated', 'header');
  });

  test('type 0 and types above 29 are unknown-type naming header.msgtype', () => {
    refused(hx(hdr(0)), 'unknown-type', 'header.msgtype');
    refused(hx(hdr(30)), 'unknown-type', 'header.msgtype');
    refused(hx(hdr(0xffffffff) + u32(1)), 'unknown-type', 'header.msgtype');
  });

  test('too short for the type is truncated naming message and field', () => {
    refused(hx(vec('OFFERCHANNEL').hex).subarray(0, 195), 'truncated', 'OFFERCHANNEL.connection_id');
    refused(hx(hdr(2)), 'truncated', 'RESCIND_CHANNELOFFER.child_relid');
    refused(hx(hdr(5) + u32(1) + u32(1)), 'truncated', 'OPENCHANNEL.ringbuffer_gpadlhandle');
    refused(hx(hdr(8) + u32(1) + u32(1) + u16(8)), 'truncated', 'GPADL_HEADER.rangecount');
    refused(hx(hdr(26)), 'truncated', 'MODIFY_CONNECTION_RESPONSE.connection_state');
    refused(hx(hdr(15) + u8(1)), 'truncated', 'VERSION_RESPONSE.connection_state');
  });

  test('a GPADL_BODY PFN >= 2^52 is out-of-range', () => {
    refused(hx(hdr(9) + u32(0) + u32(1) + u64(1n) + u64(2n ** 52n)), 'out-of-range', 'GPADL_BODY.pfn[1]');
  });
});

describe('encoding', () => {
  test('encodeMessageInto writes exactly the message at the offset and returns its length', () => {
    const out = new Uint8Array(30).fill(0x77);
    const n = encodeMessageInto({ type: 7, childRelid: 5 }, out, 10);
    assert.equal(n, 12);
    assert.deepEqual(out.subarray(10, 22), hx('07000000 00000000 05000000'));
    assert.ok(out.subarray(0, 10).every((b) => b === 0x77));
    assert.ok(out.subarray(22).every((b) => b === 0x77));
    assert.throws(() => encodeMessageInto({ type: 7, childRelid: 5 }, out, 20), RangeError);
  });

  test('INITIATE_CONTACT encodes from either view alone', () => {
    const base = {
      type: 14,
      form: 'InitiateContact',
      vmbusVersionRequested: 0x50003,
      targetVcpu: 0,
      monitorPage1: 0n,
      monitorPage2: 0n,
    } as const;
    const split = encodeMessage({ ...base, msgSint: 2, msgVtl: 1, featureFlags: 0x20 });
    const raw = encodeMessage({ ...base, interruptPage: 0x0000002000000102n });
    assert.deepEqual(split, raw);
    assert.deepEqual(split.subarray(16, 24), hx('0201000020000000'));
    assert.deepEqual(encodeMessage(base).subarray(16, 24), new Uint8Array(8));
  });

  const encodeRefused = (msg: unknown, code: string, field: string) =>
    assert.throws(
      () => encodeMessage(msg as ChannelMessage),
      (e: unknown) =>
        e instanceof MessageEncodeError && e instanceof RangeError && e.code === code && e.field === field,
      `${code} ${field}`,
    );

  test('a message object that cannot be encoded is a MessageEncodeError naming the field', () => {
    encodeRefused({ type: 7 }, 'truncated', 'CLOSECHANNEL.childRelid');
    encodeRefused({ type: 7, childRelid: 2 ** 32 }, 'out-of-range', 'CLOSECHANNEL.childRelid');
    encodeRefused({ type: 7, childRelid: -1 }, 'out-of-range', 'CLOSECHANNEL.childRelid');
    encodeRefused({ type: 7, childRelid: 1.5 }, 'out-of-range', 'CLOSECHANNEL.childRelid');
    encodeRefused(
      { type: 26, connectionState: 256 },
      'out-of-range',
      'MODIFY_CONNECTION_RESPONSE.connectionState',
    );
    encodeRefused(
      { type: 25, parentToChildMonitorGpa: 2n ** 64n, childToParentMonitorGpa: 0n },
      'out-of-range',
      'MODIFY_CONNECTION.parentToChildMonitorGpa',
    );
    encodeRefused({ type: 2, childRelid: 1, trailing: [1] }, 'out-of-range', 'RESCIND_CHANNELOFFER.trailing');
    encodeRefused({ type: 0 }, 'unknown-type', 'type');
    encodeRefused({ type: 30 }, 'unknown-type', 'type');
    encodeRefused(
      { ...vec('OPENCHANNEL (148)').msg, form: 'OpenChannel3' },
      'unknown-type',
      'OPENCHANNEL.form',
    );
    encodeRefused(
      { ...vec('OPENCHANNEL (148)').msg, userData: new Uint8Array(119) },
      'out-of-range',
      'OPENCHANNEL.userData',
    );
    encodeRefused({ ...vec('OFFERCHANNEL').msg, ifType: 'x' }, 'out-of-range', 'OFFERCHANNEL.ifType');
    encodeRefused(
      { type: 9, msgNumber: 0, gpadl: 1, pfns: new Array(29).fill(1) },
      'oversized',
      'GPADL_BODY',
    );
    encodeRefused({ type: 9, msgNumber: 0, gpadl: 1, pfns: [2 ** 52] }, 'out-of-range', 'GPADL_BODY.pfn[0]');
    encodeRefused({ type: 3, trailing: new Uint8Array(233) }, 'oversized', 'REQUESTOFFERS');
    encodeRefused(
      { ...vec('INITIATE_CONTACT (< 5.0').msg, interruptPage: 0x0103n },
      'inconsistent',
      'INITIATE_CONTACT.interruptPage',
    );
  });

  test('GPADL_BODY holds at most 28 PFNs in 240 bytes', () => {
    assert.equal(encodeMessage({ type: 9, msgNumber: 0, gpadl: 1, pfns: new Array(28).fill(1) }).length, 240);
  });
});

describe('constants', () => {
  test('the 11 protocol versions, oldest first, with display names', () => {
    assert.equal(VMBUS_VERSIONS.length, 11);
    assert.deepEqual(
      VMBUS_VERSIONS.map((v) => v.display),
      ['0.13', '1.1', '2.4', '3.0', '4.0', '4.1', '5.0', '5.1', '5.2', '5.3', '6.0'],
    );
    assert.equal(VMBUS_VERSIONS[0]!.value, 0x0000000d);
    assert.equal(VMBUS_VERSIONS[10]!.value, 0x00060000);
    assert.equal(VMBUS_VERSIONS[9]!.linuxName, 'VERSION_WIN10_V5_3');
    assert.equal(formatVersion(0x00050003), '5.3');
  });

  test('versionAtLeast compares major then minor', () => {
    assert.ok(versionAtLeast(VERSION_WIN10_V5_3, VERSION_WIN10));
    assert.ok(versionAtLeast(VERSION_WIN7, VERSION_WIN7));
    assert.ok(!versionAtLeast(VERSION_WS2008, VERSION_WIN7));
    assert.ok(versionAtLeast(0x00010000, VERSION_WS2008)); // 1.0 > 0.13
    assert.ok(versionAtLeast(0xffff0000, VERSION_WIN10_V6_0));
  });

  test('message names both ways', () => {
    assert.equal(channelMessageName(18), 'CHANNELMSG_OPEN_RESERVED_CHANNEL');
    assert.equal(channelMessageName(30), undefined);
    assert.equal(channelMessageType('CHANNELMSG_RESUME'), CHANNELMSG_RESUME);
    assert.equal(channelMessageType('open_reserved_channel'), CHANNELMSG_OPEN_RESERVED_CHANNEL);
    assert.equal(channelMessageType('CHANNELMSG_NOPE'), undefined);
  });

  test('messageAllowed applies the version and feature gates of table 3.3', () => {
    assert.ok(messageAllowed(14, undefined));
    assert.ok(!messageAllowed(1, undefined));
    assert.ok(messageAllowed(1, VERSION_WS2008));
    assert.ok(!messageAllowed(17, VERSION_WS2008));
    assert.ok(!messageAllowed(24, VERSION_WIN10));
    assert.ok(messageAllowed(24, VERSION_WIN10_V5_3));
    assert.ok(!messageAllowed(27, VERSION_WIN10_V6_0, 0));
    assert.ok(messageAllowed(27, VERSION_WIN10_V6_0, VMBUS_FEATURE_FLAG_PAUSE_RESUME));
    assert.ok(!messageAllowed(0, VERSION_WIN10_V6_0));
  });
});

// --- property tests over arbitrary valid messages of every type ---

const aU8 = fc.integer({ min: 0, max: 0xff });
const aU16 = fc.integer({ min: 0, max: 0xffff });
const aU32 = fc.integer({ min: 0, max: 0xffffffff });
const aU64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const aGuid = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Guid.fromBytes(b));
const a120 = fc.uint8Array({ minLength: 120, maxLength: 120 });
const nonZero = (max: number) => fc.integer({ min: 1, max });
const bytes = (min: number, max: number) => fc.uint8Array({ minLength: min, maxLength: max });

type Model = Record<string, fc.Arbitrary<unknown>>;

/** A message arbitrary: required fields, optional reserved fields, optional padding/trailing. */
function msgArb(
  type: number,
  required: Model,
  reserved: Model = {},
  maxTrailing = 16,
): fc.Arbitrary<ChannelMessage> {
  const optional: Model = { ...reserved, headerPadding: nonZero(0xffffffff) };
  if (maxTrailing > 0) optional.trailing = bytes(1, maxTrailing);
  return fc
    .record({ ...required, ...optional }, { requiredKeys: Object.keys(required) as never[] })
    .map((r) => ({ type, ...r }) as unknown as ChannelMessage);
}

function initiateArb(
  form: 'InitiateContact' | 'InitiateContact2',
  maxTrailing: number,
): fc.Arbitrary<ChannelMessage> {
  const extra: Model = form === 'InitiateContact2' ? { clientId: aGuid } : {};
  return fc
    .tuple(
      msgArb(
        14,
        {
          form: fc.constant(form),
          vmbusVersionRequested: aU32,
          targetVcpu: aU32,
          monitorPage1: aU64,
          monitorPage2: aU64,
          ...extra,
        },
        {},
        maxTrailing,
      ),
      aU64,
    )
    .map(([m, raw]) => {
      const views: Record<string, unknown> = {
        interruptPage: raw,
        msgSint: Number(raw & 0xffn),
        msgVtl: Number((raw >> 8n) & 0xffn),
        featureFlags: Number(raw >> 32n),
      };
      const rsvd = Number((raw >> 16n) & 0xffffn);
      if (rsvd !== 0) views.msgReserved = rsvd;
      return { ...m, ...views } as ChannelMessage;
    });
}

const OPEN: Model = {
  childRelid: aU32,
  openId: aU32,
  ringBufferGpadlHandle: aU32,
  targetVp: aU32,
  downstreamRingBufferPageOffset: aU32,
  userData: a120,
};
const VR: Model = { versionSupported: aU8, connectionState: aU8, msgConnId: aU32 };

const ARBITRARIES: fc.Arbitrary<ChannelMessage>[] = [
  msgArb(
    1,
    {
      ifType: aGuid,
      ifInstance: aGuid,
      channelLatency: aU64,
      channelRevision: aU32,
      serverContextSize: aU32,
      chnFlags: aU16,
      mmioMegabytes: aU16,
      userDefined: a120,
      subChannelIndex: aU16,
      mmioMegabytesOptional: aU16,
      childRelid: aU32,
      monitorId: aU8,
      monitorAllocated: aU8,
      isDedicatedInterrupt: aU16,
      connectionId: aU32,
    },
    {},
    44,
  ),
  msgArb(2, { childRelid: aU32 }),
  msgArb(3, {}),
  msgArb(4, {}),
  msgArb(5, { form: fc.constant('OpenChannel'), ...OPEN }, {}, 7),
  msgArb(
    5,
    { form: fc.constant('OpenChannel2'), ...OPEN, connectionId: aU32, eventFlag: aU16, flags: aU16 },
    {},
    84,
  ),
  msgArb(6, { childRelid: aU32, openId: aU32, status: aU32 }),
  msgArb(7, { childRelid: aU32 }),
  msgArb(
    8,
    { childRelid: aU32, gpadl: aU32, rangeBufLen: aU16, rangeCount: aU16, rangeData: bytes(0, 220) },
    {},
    0,
  ),
  fc
    .tuple(
      msgArb(
        9,
        {
          msgNumber: aU32,
          gpadl: aU32,
          pfns: fc.array(fc.integer({ min: 0, max: 2 ** 52 - 1 }), { maxLength: 28 }),
        },
        {},
        0,
      ),
      fc.option(bytes(1, 7), { nil: undefined }),
    )
    .map(([m, t]): ChannelMessage => {
      const body = m as Extract<ChannelMessage, { type: 9 }>;
      return t !== undefined && 16 + 8 * body.pfns.length + t.length <= 240 ? { ...body, trailing: t } : m;
    }),
  msgArb(10, { childRelid: aU32, gpadl: aU32, creationStatus: aU32 }),
  msgArb(11, { childRelid: aU32, gpadl: aU32 }),
  msgArb(12, { gpadl: aU32 }),
  msgArb(13, { childRelid: aU32 }),
  initiateArb('InitiateContact', 15),
  initiateArb('InitiateContact2', 184),
  msgArb(15, { form: fc.constant('VersionResponse'), ...VR }, { padding: nonZero(0xffff) }, 3),
  msgArb(
    15,
    { form: fc.constant('VersionResponse2'), ...VR, supportedFeatures: aU32 },
    { padding: nonZero(0xffff) },
    19,
  ),
  msgArb(
    15,
    {
      form: fc.constant('VersionResponse3'),
      ...VR,
      supportedFeatures: aU32,
      parentToChildMonitorGpa: aU64,
      childToParentMonitorGpa: aU64,
    },
    { padding: nonZero(0xffff), padding2: nonZero(0xffffffff) },
    200,
  ),
  msgArb(16, {}),
  msgArb(17, {}),
  msgArb(18, {
    childRelid: aU32,
    targetVp: aU32,
    targetSint: aU32,
    ringBufferGpadlHandle: aU32,
    downstreamRingBufferPageOffset: aU32,
  }),
  msgArb(19, { childRelid: aU32, targetVp: aU32, targetSint: aU32 }),
  msgArb(20, { childRelid: aU32 }),
  msgArb(21, { form: fc.constant('TlConnectRequest'), guestEndpointId: aGuid, hostServiceId: aGuid }, {}, 15),
  msgArb(21, {
    form: fc.constant('TlConnectRequest2'),
    guestEndpointId: aGuid,
    hostServiceId: aGuid,
    siloId: aGuid,
  }),
  msgArb(22, { childRelid: aU32, targetVp: aU32 }),
  msgArb(23, { endpointId: aGuid, serviceId: aGuid, status: aU32 }),
  msgArb(24, { childRelid: aU32, status: aU32 }),
  msgArb(25, { parentToChildMonitorGpa: aU64, childToParentMonitorGpa: aU64 }),
  msgArb(26, { connectionState: aU8 }),
  msgArb(27, {}),
  msgArb(28, {}),
  msgArb(29, {}),
];

describe('round-trip properties', () => {
  test('every message type has an arbitrary', () => {
    const seen = new Set<number>();
    for (const arb of ARBITRARIES) for (const m of fc.sample(arb, 3)) seen.add(m.type);
    for (let t = 1; t < CHANNELMSG_COUNT; t++) assert.ok(seen.has(t), `type ${t}`);
  });

  test('decode(encode(m)) equals m, and so does the JSON form, for arbitrary messages of every type', () => {
    fc.assert(
      fc.property(fc.oneof(...ARBITRARIES), (m) => {
        const bytes = encodeMessage(m);
        assert.ok(bytes.length <= 240);
        assert.deepEqual(decodeMessage(bytes), m);
        assert.deepEqual(jsonRoundTrip(m), m);
        assert.ok(describeMessage(m).length >= 1);
      }),
      { numRuns: 3000 },
    );
  });
});

describe('JSON form', () => {
  test('spells types, u64, GUIDs and bytes as documented', () => {
    const j = messageToJson(vec('OFFERCHANNEL').msg);
    assert.equal(j.name, 'CHANNELMSG_OFFERCHANNEL');
    assert.equal(j.type, 1);
    assert.equal(j.ifType, 'ba6163d9-04a1-4d29-b605-72e2ffb1dc7f');
    assert.equal(j.channelLatency, '0x102030405060708');
    assert.equal(j.userDefined, patternHex(120, 0x40));
    assert.equal(j.connectionId, 0x2005);
    const body = messageToJson(vec('GPADL_BODY').msg);
    assert.deepEqual(body.pfns, ['0x1004', '0xfffffffffffff']);
  });

  test('accepts the name alone and numbers as hex strings', () => {
    assert.deepEqual(messageFromJson({ name: 'CHANNELMSG_CLOSECHANNEL', childRelid: '0x5' }), {
      type: 7,
      childRelid: 5,
    });
    assert.deepEqual(messageFromJson({ type: 9, msgNumber: 0, gpadl: 1, pfns: [4096, '0x1001'] }), {
      type: 9,
      msgNumber: 0,
      gpadl: 1,
      pfns: [4096, 4097],
    });
  });

  const jsonRefused = (obj: unknown, code: string, field: string) =>
    assert.throws(
      () => messageFromJson(obj),
      (e: unknown) => e instanceof WireError && e.code === code && e.field === field,
      `${code} ${field}`,
    );

  test('bad JSON is a WireError naming the field', () => {
    jsonRefused(null, 'out-of-range', 'message');
    jsonRefused([], 'out-of-range', 'message');
    jsonRefused({}, 'truncated', 'type');
    jsonRefused({ type: 31 }, 'unknown-type', 'type');
    jsonRefused({ type: '7' }, 'out-of-range', 'type');
    jsonRefused({ name: 'CHANNELMSG_FOO' }, 'unknown-type', 'name');
    jsonRefused({ name: 'CHANNELMSG_UNLOAD', type: 7 }, 'inconsistent', 'name');
    jsonRefused({ type: 7 }, 'truncated', 'CLOSECHANNEL.childRelid');
    jsonRefused({ type: 7, childRelid: 'five' }, 'out-of-range', 'CLOSECHANNEL.childRelid');
    jsonRefused({ type: 7, childRelid: 4294967296 }, 'out-of-range', 'CLOSECHANNEL.childRelid');
    jsonRefused({ type: 7, childRelid: 1, relid: 1 }, 'unknown-type', 'CLOSECHANNEL.relid');
    jsonRefused({ type: 7, childRelid: 1, trailing: 'xyz' }, 'out-of-range', 'CLOSECHANNEL.trailing');
    jsonRefused({ type: 5, childRelid: 1 }, 'truncated', 'OPENCHANNEL.form');
    jsonRefused({ type: 5, form: 'Nope' }, 'unknown-type', 'OPENCHANNEL.form');
    jsonRefused(
      { ...messageToJson(vec('OFFERCHANNEL').msg), ifType: 'not-a-guid' },
      'out-of-range',
      'OFFERCHANNEL.ifType',
    );
    jsonRefused(
      { ...messageToJson(vec('OFFERCHANNEL').msg), userDefined: '00' },
      'out-of-range',
      'OFFERCHANNEL.userDefined',
    );
    jsonRefused(
      { type: 25, parentToChildMonitorGpa: '0x10000000000000000', childToParentMonitorGpa: 0 },
      'out-of-range',
      'MODIFY_CONNECTION.parentToChildMonitorGpa',
    );
    jsonRefused(
      { type: 9, msgNumber: 0, gpadl: 1, pfns: ['0x10000000000000'] },
      'out-of-range',
      'GPADL_BODY.pfns[0]',
    );
    jsonRefused({ type: 9, msgNumber: 0, gpadl: 1, pfns: new Array(29).fill(1) }, 'oversized', 'GPADL_BODY');
    jsonRefused({ type: 9, msgNumber: 0, gpadl: 1 }, 'truncated', 'GPADL_BODY.pfns');
    jsonRefused(
      { type: 8, childRelid: 1, gpadl: 1, rangeBufLen: 0, rangeCount: 0, rangeData: '', trailing: '00' },
      'unknown-type',
      'GPADL_HEADER.trailing',
    );
    jsonRefused(
      { ...messageToJson(vec('INITIATE_CONTACT (< 5.0').msg), interruptPage: '0x1' },
      'inconsistent',
      'INITIATE_CONTACT.interruptPage',
    );
  });

  test('describeMessage names flags, versions and statuses', () => {
    const offer = describeMessage(vec('OFFERCHANNEL').msg).join('\n');
    assert.match(
      offer,
      /chnFlags: 0x2011 \(ENUMERATE_DEVICE_INTERFACE\|NAMED_PIPE_MODE\|TLNPI_PROVIDER_OFFER\)/,
    );
    assert.match(offer, /ifType: ba6163d9-04a1-4d29-b605-72e2ffb1dc7f/);
    const ic = describeMessage(vec('INITIATE_CONTACT (InitiateContact2').msg).join('\n');
    assert.match(ic, /vmbusVersionRequested: 0x60000 \(6\.0\)/);
    assert.match(
      ic,
      /featureFlags: 0x2f \(GUEST_SPECIFIED_SIGNAL_PARAMETERS\|CHANNEL_INTERRUPT_REDIRECTION\|MODIFY_CONNECTION\|CLIENT_ID\|PAUSE_RESUME\)/,
    );
    assert.match(
      describeMessage(vec('OPENCHANNEL_RESULT').msg).join('\n'),
      /status: 0x8000ffff \(STATUS_UNSUCCESSFUL/,
    );
    const ring = describeMessage(vec('GPADL_HEADER (spec ring').msg).join('\n');
    assert.match(ring, /range\[0\]: byteCount 16384, byteOffset 0, 4 PFNs 0x1000\.\.0x1003/);
    assert.match(describeMessage(vec('GPADL_HEADER (spec vector').msg).join('\n'), /ranges: not parsed/);
  });
});
