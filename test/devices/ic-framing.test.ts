import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  HB_VERSION,
  HOST_HB_VERSIONS,
  ICMSGHDRFLAG_REQUEST,
  ICMSGHDRFLAG_TRANSACTION,
  ICMSGTYPE_HEARTBEAT,
  icVersion,
  SD_VERSION_3_1,
  SD_VERSION_3_2,
  UTIL_FW_VERSION,
  UTIL_WS2K8_FW_VERSION,
} from '../../src/devices/ic/constants.js';
import {
  allocIcMessage,
  decodeIcNegotiate,
  encodeIcNegotiateRequest,
  newIcHeader,
  prepIcNegotiateResponse,
  readIcHeader,
  readUtf16z,
  writeUtf16z,
} from '../../src/devices/ic/framing.js';
import { HeartbeatGuest, HeartbeatHost } from '../../src/devices/ic/heartbeat.js';
import { KvpGuest } from '../../src/devices/ic/kvp.js';
import { ShutdownGuest } from '../../src/devices/ic/shutdown.js';
import { cat, hex, le16, le32, wireError, zeros } from './helpers.js';

// Host negotiate request for the heartbeat service, fw {1.0, 3.0}, messages {1.0, 3.0}, tid 0.
const HB_NEGOTIATE_REQUEST = hex(`
  01000000 2c000000
  00000000 0000 00000000 1800 00000000 00 03 0000
  0200 0200 00000000
  0100 0000  0300 0000
  0100 0000  0300 0000`);

// What Linux answers: icmsgsize 0x10, counts 1/1, the chosen pair in slots 0 and 1, the rest of
// the buffer as it came, icflags TRANSACTION | RESPONSE.
const HB_NEGOTIATE_RESPONSE = hex(`
  01000000 2c000000
  00000000 0000 00000000 1000 00000000 00 05 0000
  0100 0100 00000000
  0300 0000  0300 0000
  0100 0000  0300 0000`);

/** A negotiate request with the given lists (guest-side tests build their own). */
function negotiate(fw: number[], msg: number[]): Uint8Array {
  const v = (x: number) => cat(le16(x >>> 16), le16(x & 0xffff));
  const body = cat(le16(fw.length), le16(msg.length), le32(0), ...fw.map(v), ...msg.map(v));
  return cat(
    le32(1),
    le32(20 + body.length),
    hex('00000000 0000 00000000'),
    le16(body.length),
    hex('00000000 00 03 0000'),
    body,
  );
}

describe('IC header', () => {
  test('encodes the pipe header and icmsg_hdr of a heartbeat request byte for byte', () => {
    const h = newIcHeader();
    h.frameworkVersion = UTIL_FW_VERSION;
    h.messageType = ICMSGTYPE_HEARTBEAT;
    h.messageVersion = HB_VERSION;
    h.transactionId = 5;
    h.flags = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_REQUEST;
    const msg = allocIcMessage(h, 40, true);
    assert.deepEqual(
      msg,
      cat(hex('01000000 3c000000 03000000 0100 03000000 2800 00000000 05 03 0000'), zeros(40)),
    );
    const back = readIcHeader(msg, true);
    assert.deepEqual(back, {
      frameworkVersion: 0x30000,
      messageType: 1,
      messageVersion: 0x30000,
      messageSize: 40,
      status: 0,
      transactionId: 5,
      flags: 3,
    });
  });

  test('without the pipe header the icmsg_hdr starts at 0', () => {
    const h = newIcHeader();
    h.messageType = 3;
    h.status = 0x80004005;
    const msg = allocIcMessage(h, 0, false);
    assert.deepEqual(msg, hex('00000000 0300 00000000 0000 05400080 00 00 0000'));
    assert.equal(readIcHeader(msg, false).status, 0x80004005);
  });

  test('a header cut short is a truncated WireError, with or without the pipe header', () => {
    assert.throws(() => readIcHeader(new Uint8Array(27), true), wireError('truncated', 'icmsg_hdr'));
    assert.throws(() => readIcHeader(new Uint8Array(19), false), wireError('truncated', 'icmsg_hdr'));
  });
});

describe('IC negotiation codec', () => {
  test('the host request matches the hand-built vector and decodes back', () => {
    const msg = encodeIcNegotiateRequest(true, 0, [icVersion(1, 0), icVersion(3, 0)], HOST_HB_VERSIONS);
    assert.deepEqual(msg, HB_NEGOTIATE_REQUEST);
    assert.deepEqual(decodeIcNegotiate(msg, true), {
      frameworkVersions: [0x10000, 0x30000],
      messageVersions: [0x10000, 0x30000],
    });
  });

  test('a Linux guest answers the heartbeat negotiation byte for byte', () => {
    const g = new HeartbeatGuest();
    const r = g.handle(HB_NEGOTIATE_REQUEST);
    assert.deepEqual(r.response, HB_NEGOTIATE_RESPONSE);
    assert.deepEqual(r.event, { kind: 'negotiated', framework: 0x30000, message: 0x30000 });
    assert.equal(g.framework, UTIL_FW_VERSION);
    assert.equal(g.message, HB_VERSION);
    // the request buffer itself is untouched
    assert.deepEqual(HB_NEGOTIATE_REQUEST.subarray(8, 12), hex('00000000'));
  });

  test('picks the guest-preferred version the host offers, whatever the host order', () => {
    const g = new ShutdownGuest();
    const r = g.handle(negotiate([0x10000, 0x30000], [0x10000, 0x30000, 0x30001]));
    assert.deepEqual(r.event, { kind: 'negotiated', framework: 0x30000, message: SD_VERSION_3_1 });
    const r2 = g.handle(negotiate([0x30000], [0x30002, 0x10000]));
    assert.deepEqual(r2.event, { kind: 'negotiated', framework: 0x30000, message: SD_VERSION_3_2 });
    const r3 = new HeartbeatGuest().handle(negotiate([0x10000], [0x10000]));
    assert.deepEqual(r3.event, { kind: 'negotiated', framework: UTIL_WS2K8_FW_VERSION, message: 0x10000 });
  });

  test('no common framework version: counts 0/0 and the host counts as placeholders', () => {
    const req = negotiate([0x20000, 0x50000], [0x30000]);
    const r = new HeartbeatGuest().handle(req);
    const b = 28;
    assert.deepEqual(r.event, { kind: 'negotiation-failed', framework: 0x20000, message: 0x10000 });
    assert.deepEqual(
      r.response!.subarray(b, b + 20),
      hex('0000 0000 00000000 0200 0000 0100 0000 0300 0000'),
    );
    assert.equal(r.response![8 + 10], 0x10); // icmsgsize
    assert.equal(r.response![8 + 17], 0x05);
  });

  test('framework matches but no service version: the framework stays, the message count is the placeholder', () => {
    const req = negotiate([0x30000], [0x90000, 0x90001]);
    const r = new HeartbeatGuest().handle(req);
    assert.deepEqual(r.event, { kind: 'negotiation-failed', framework: 0x30000, message: 0x20000 });
    assert.deepEqual(r.response!.subarray(28, 48), hex('0000 0000 00000000 0300 0000 0200 0000 0900 0100'));
  });

  test('an empty offer fails without writing past the message', () => {
    const req = negotiate([0x30000], []);
    const out = prepIcNegotiateResponse(new Uint8Array(req), true, [0x30000], [0x30000]);
    assert.equal(out.found, false);
    assert.equal(req.length, 40);
    const r = new HeartbeatGuest().handle(req);
    assert.equal(r.response!.length, 40);
    assert.deepEqual(r.response!.subarray(28), hex('0000 0000 00000000 0300 0000'));
  });

  test('hostile negotiate messages are typed errors', () => {
    const g = new KvpGuest();
    const tooMany = negotiate([0x30000], [0x30000]);
    tooMany[28] = 101;
    assert.throws(() => g.handle(tooMany), wireError('out-of-range', 'icmsg_negotiate.icframe_vercnt'));
    const tooManyMsg = negotiate([0x30000], [0x30000]);
    tooManyMsg[30] = 200;
    assert.throws(() => g.handle(tooManyMsg), wireError('out-of-range', 'icmsg_negotiate.icmsg_vercnt'));
    const overrun = negotiate([0x30000], [0x30000]);
    overrun[30] = 3;
    assert.throws(() => g.handle(overrun), wireError('inconsistent', 'icmsg_negotiate.icversion_data'));
    assert.throws(
      () => g.handle(negotiate([], []).subarray(0, 32)),
      wireError('truncated', 'icmsg_negotiate'),
    );
  });
});

describe('IC host negotiation', () => {
  test('host and guest agree on the highest common versions', () => {
    const host = new HeartbeatHost();
    const guest = new HeartbeatGuest();
    const req = host.start();
    assert.equal(host.state, 'negotiating');
    const ev = host.handle(guest.handle(req).response!);
    assert.deepEqual(ev, { kind: 'negotiated', framework: 0x30000, message: 0x30000 });
    assert.equal(host.state, 'ready');
  });

  test('a guest with nothing in common leaves the host failed', () => {
    const host = new HeartbeatHost({ messageVersions: [icVersion(7, 0)] });
    const guest = new HeartbeatGuest();
    const ev = host.handle(guest.handle(host.start()).response!);
    assert.equal(ev.kind, 'negotiation-failed');
    assert.equal(host.state, 'failed');
    assert.throws(() => host.heartbeat(1n), /not negotiated/);
  });

  test('responses that do not answer the request are refused', () => {
    const host = new HeartbeatHost();
    const req = host.start();
    const good = new HeartbeatGuest().handle(req).response!;

    const notResponse = new Uint8Array(good);
    notResponse[8 + 17] = 0x03;
    assert.throws(() => host.handle(notResponse), wireError('inconsistent', 'icmsg_hdr.icflags'));

    const wrongTid = new Uint8Array(good);
    wrongTid[8 + 16] = 9;
    assert.throws(() => host.handle(wrongTid), wireError('inconsistent', 'icmsg_hdr.ictransaction_id'));

    const neverOffered = new Uint8Array(good);
    neverOffered[28 + 8] = 2; // framework 2.0
    assert.throws(() => host.handle(neverOffered), wireError('out-of-range'));

    const bigSize = new Uint8Array(good);
    bigSize[8 + 10] = 0xff;
    assert.throws(() => host.handle(bigSize), wireError('inconsistent', 'icmsg_hdr.icmsgsize'));

    const twoVersions = new Uint8Array(req);
    twoVersions[8 + 17] = 0x05;
    assert.throws(() => host.handle(twoVersions), wireError('inconsistent', 'icmsg_negotiate'));

    assert.equal(host.state, 'negotiating');
    assert.deepEqual(host.handle(good), { kind: 'negotiated', framework: 0x30000, message: 0x30000 });
    assert.throws(() => host.handle(good), wireError('inconsistent', 'icmsg_hdr.ictransaction_id'));
  });
});

describe('UTF-16 fields', () => {
  test('write then read, stopping at the NUL and at the field end', () => {
    const b = new Uint8Array(12).fill(0xee);
    assert.equal(writeUtf16z(b, 2, 'héllo', 4), 4);
    assert.deepEqual(b, hex('eeee 6800 e900 6c00 6c00 0000'));
    assert.equal(readUtf16z(b, 2, 10), 'héll');
    assert.equal(readUtf16z(b, 2, 4), 'hé');
    assert.throws(() => readUtf16z(b, 8, 6), wireError('truncated'));
  });
});
