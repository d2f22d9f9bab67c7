import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  READ_TYPE,
  UNKNOWN_TYPE,
  VMSTOR_PROTO_VERSION_WIN7,
  VMSTOR_PROTO_VERSION_WIN8,
  VMSTOR_PROTO_VERSION_WIN8_1,
  VMSTOR_PROTO_VERSION_WIN10,
  VstorNtStatus,
} from '../../src/devices/storage/constants.js';
import { MemoryDisk } from '../../src/devices/storage/disk.js';
import { buildRead10Cdb, ScsiTarget } from '../../src/devices/storage/scsi.js';
import { buildCreateSubChannels, buildExecuteSrb, StorageVscInit } from '../../src/devices/storage/vsc.js';
import { StorageVsp } from '../../src/devices/storage/vsp.js';
import {
  decodeVstorPacket,
  encodeVstorPacket,
  newVmscsiRequest,
  readVmscsiRequest,
  VMSCSI_REQUEST_SIZE,
  VMSCSI_REQUEST_SIZE_PRE_WIN8,
  VSTOR_PACKET_SIZE,
  VSTOR_PACKET_SIZE_PRE_WIN8,
  VstorPacket,
  vstorPacketSize,
} from '../../src/devices/storage/vstor.js';
import { cat, hex, wireError, zeros } from './helpers.js';

function newVsp(options: Partial<ConstructorParameters<typeof StorageVsp>[0]> = {}): StorageVsp {
  return new StorageVsp({ target: new ScsiTarget({ luns: new MemoryDisk({ blockCount: 64 }) }), ...options });
}

/** Runs the guest's handshake against `vsp`; returns the packets each side sent. */
function handshake(vsp: StorageVsp, vsc: StorageVscInit): { sent: Uint8Array[]; answers: Uint8Array[] } {
  const sent: Uint8Array[] = [];
  const answers: Uint8Array[] = [];
  const buf = new Uint8Array(64);
  const out = new Uint8Array(64);
  let n = vsc.start(buf);
  while (n > 0) {
    sent.push(buf.slice(0, n));
    const r = vsp.handlePacket(buf, null, out, n);
    answers.push(out.slice(0, r.length));
    n = vsc.handleCompletion(out, buf, r.length).length;
  }
  return { sent, answers };
}

describe('vstor packet sizes', () => {
  test('64 bytes from Win8, 48 before; vmscsi_request 0x34 / 0x24', () => {
    assert.equal(VSTOR_PACKET_SIZE, 64);
    assert.equal(VSTOR_PACKET_SIZE_PRE_WIN8, 48);
    assert.equal(VMSCSI_REQUEST_SIZE, 0x34);
    assert.equal(VMSCSI_REQUEST_SIZE_PRE_WIN8, 0x24);
    assert.equal(vstorPacketSize(VMSTOR_PROTO_VERSION_WIN8), 64);
    assert.equal(vstorPacketSize(VMSTOR_PROTO_VERSION_WIN7), 48);
    assert.equal(VMSTOR_PROTO_VERSION_WIN8_1, 0x600);
  });
});

describe('vstor initialization, byte for byte', () => {
  test('Linux handshake against our host', () => {
    const vsp = newVsp();
    const vsc = new StorageVscInit();
    const { sent, answers } = handshake(vsp, vsc);
    assert.deepEqual(sent, [
      cat(hex('07000000 01000000 00000000'), zeros(52)),
      cat(hex('09000000 01000000 00000000 0206 0000'), zeros(48)),
      cat(hex('0a000000 01000000 00000000'), zeros(52)),
      cat(hex('08000000 01000000 00000000'), zeros(52)),
    ]);
    assert.deepEqual(answers, [
      cat(hex('01000000 00000000 00000000'), zeros(52)),
      cat(hex('01000000 00000000 00000000 0206 0000'), zeros(48)),
      cat(hex('01000000 00000000 00000000 00000000 0000 0000 00000000 00000400 0000000000000000'), zeros(28)),
      cat(hex('01000000 00000000 00000000'), zeros(52)),
    ]);
    assert.equal(vsc.state, 'ready');
    assert.equal(vsc.version, VMSTOR_PROTO_VERSION_WIN10);
    assert.deepEqual(vsc.properties, { maxChannelCount: 0, flags: 0, maxTransferBytes: 0x40000 });
    assert.equal(vsp.state, 'ready');
  });

  test('versions the host refuses get STATUS_REVISION_MISMATCH and the guest tries the next', () => {
    const vsp = newVsp({ versions: [VMSTOR_PROTO_VERSION_WIN8] });
    const vsc = new StorageVscInit();
    const { sent, answers } = handshake(vsp, vsc);
    assert.deepEqual(answers[1], cat(hex('01000000 00000000 590000c0 0206 0000'), zeros(48)));
    assert.deepEqual(answers[2], cat(hex('01000000 00000000 590000c0 0006 0000'), zeros(48)));
    assert.deepEqual(sent[3], cat(hex('09000000 01000000 00000000 0105 0000'), zeros(48)));
    assert.equal(vsc.version, VMSTOR_PROTO_VERSION_WIN8);
    assert.equal(vsc.state, 'ready');
  });

  test('no common version fails the guest', () => {
    const vsp = newVsp({ versions: [VMSTOR_PROTO_VERSION_WIN7] });
    const vsc = new StorageVscInit();
    handshake(vsp, vsc);
    assert.equal(vsc.state, 'failed');
    assert.equal(vsp.state, 'query-version');
  });

  test('a pre-Win8 guest gets completions sized like its 48-byte packets', () => {
    const vsp = newVsp();
    const vsc = new StorageVscInit({ versions: [VMSTOR_PROTO_VERSION_WIN7] });
    handshake(vsp, vsc);
    assert.equal(vsp.version, VMSTOR_PROTO_VERSION_WIN7);
    const pkt = new Uint8Array(64);
    const cdb = new Uint8Array(16);
    buildRead10Cdb(cdb, 0, 1);
    const n = buildExecuteSrb(pkt, { cdb, cdbLength: 10, dataIn: READ_TYPE, dataTransferLength: 0 }, 48);
    assert.equal(n, 48);
    const out = new Uint8Array(64);
    const r = vsp.handlePacket(pkt, null, out, n);
    assert.equal(r.length, 48);
  });

  test('multi-channel properties and CREATE_SUB_CHANNELS', () => {
    const granted: number[] = [];
    const vsp = newVsp({
      maxSubChannels: 4,
      onCreateSubChannels: (n) => {
        granted.push(n);
        return n !== 3;
      },
    });
    const vsc = new StorageVscInit();
    const { answers } = handshake(vsp, vsc);
    assert.deepEqual(
      answers[2]!.subarray(12, 36),
      hex('00000000 0400 0000 01000000 00000400 0000000000000000'),
    );
    assert.deepEqual(vsc.properties, { maxChannelCount: 4, flags: 1, maxTransferBytes: 0x40000 });
    const pkt = new Uint8Array(64);
    const out = new Uint8Array(64);
    buildCreateSubChannels(pkt, 2);
    assert.deepEqual(pkt, cat(hex('0d000000 01000000 00000000 0200'), zeros(50)));
    let r = vsp.handlePacket(pkt, null, out);
    assert.equal(r.status, 0);
    assert.equal(r.event, 'sub-channels');
    assert.equal(vsp.subChannelCount, 2);
    buildCreateSubChannels(pkt, 5);
    assert.equal(vsp.handlePacket(pkt, null, out).status, VstorNtStatus.STATUS_INVALID_PARAMETER);
    buildCreateSubChannels(pkt, 3);
    assert.equal(vsp.handlePacket(pkt, null, out).status, VstorNtStatus.STATUS_INVALID_PARAMETER);
    assert.deepEqual(granted, [2, 3]);
    r = vsp.handlePacket(cat(hex('06000000 01000000 00000000'), zeros(52)), null, out);
    assert.equal(r.status, 0);
  });
});

describe('vstor packets', () => {
  test('EXECUTE_SRB for READ(10), field for field as Linux builds it', () => {
    const cdb = new Uint8Array(16);
    buildRead10Cdb(cdb, 0x12345678, 8);
    const pkt = new Uint8Array(64);
    buildExecuteSrb(pkt, { cdb, cdbLength: 10, lun: 1, dataIn: READ_TYPE, dataTransferLength: 4096 });
    assert.deepEqual(
      pkt,
      hex(`03000000 01000000 00000000
           3400 00 00 00 00 00 01 0a 14 01 00 00100000
           28001234567800000800 00000000000000000000
           0000 ff 20 4a010000 3c000000 00000000`),
    );
    const p = decodeVstorPacket(pkt, new VstorPacket());
    const s = readVmscsiRequest(p.payload, newVmscsiRequest());
    assert.equal(s.lun, 1);
    assert.equal(s.dataTransferLength, 4096);
    assert.equal(s.srbFlags, 0x14a);
    assert.deepEqual(s.cdb.subarray(0, 10), cdb.subarray(0, 10));
  });

  test('untagged, no-data requests', () => {
    const pkt = new Uint8Array(64);
    buildExecuteSrb(pkt, {
      cdb: new Uint8Array(6),
      dataIn: UNKNOWN_TYPE,
      dataTransferLength: 0,
      tagged: false,
    });
    assert.deepEqual(pkt.subarray(12 + 36, 12 + 48), hex('0000 00 00 08000000 3c000000'));
    assert.throws(
      () => buildExecuteSrb(pkt, { cdb: new Uint8Array(17), dataIn: 1, dataTransferLength: 0 }),
      RangeError,
    );
  });

  test('decode keeps what came, zero-fills the rest, and re-encodes at either size', () => {
    const short = cat(hex('03000000 01000000 00000000'), zeros(36).fill(7));
    const p = decodeVstorPacket(short, new VstorPacket());
    assert.equal(p.payloadLength, 36);
    assert.deepEqual(p.payload.subarray(36), zeros(16));
    const out = new Uint8Array(64).fill(0xee);
    assert.equal(encodeVstorPacket(p, out, 48), 48);
    assert.deepEqual(out.subarray(0, 48), short);
    assert.equal(out[48], 0xee);
    assert.equal(decodeVstorPacket(cat(short, zeros(40)), p).payloadLength, 52);
    assert.throws(() => decodeVstorPacket(zeros(11), p), wireError('truncated', 'vstor_packet'));
  });
});

describe('vstor host refuses what it cannot do', () => {
  test('SRBs before initialization: STATUS_INVALID_DEVICE_STATE', () => {
    const vsp = newVsp();
    const pkt = new Uint8Array(64);
    buildExecuteSrb(pkt, { cdb: new Uint8Array(6), dataIn: UNKNOWN_TYPE, dataTransferLength: 0 });
    const out = new Uint8Array(64);
    const r = vsp.handlePacket(pkt, null, out);
    assert.equal(r.length, 64);
    assert.deepEqual(out, cat(hex('01000000 00000000 840100c0'), zeros(52)));
    assert.equal(vsp.state, 'begin');
  });

  test('unknown operations and packets without a header are answered with a typed error', () => {
    const vsp = newVsp();
    const out = new Uint8Array(64);
    let r = vsp.handlePacket(cat(hex('63000000 01000000 00000000'), zeros(52)), null, out);
    assert.equal(r.status, VstorNtStatus.STATUS_INVALID_DEVICE_REQUEST);
    assert.ok(wireError('unknown-type', 'vstor_packet.operation')(r.error));
    r = vsp.handlePacket(cat(hex('01000000 01000000 00000000'), zeros(52)), null, out);
    assert.equal(r.status, VstorNtStatus.STATUS_INVALID_DEVICE_REQUEST);
    r = vsp.handlePacket(hex('0700'), null, out);
    assert.equal(r.length, 12);
    assert.deepEqual(out.subarray(0, 12), hex('01000000 00000000 0d0000c0'));
    assert.ok(wireError('truncated', 'vstor_packet')(r.error));
    r = vsp.handlePacket(hex('07000000 01000000 00000000'), null, out);
    assert.equal(r.status, 0);
    assert.equal(r.length, 12);
    r = vsp.handlePacket(hex('09000000 01000000 00000000 02'), null, out);
    assert.equal(r.status, VstorNtStatus.STATUS_INVALID_PARAMETER);
    assert.ok(wireError('truncated', 'vmstorage_protocol_version')(r.error));
  });

  test('guest side: short or foreign completions', () => {
    const vsc = new StorageVscInit();
    const buf = new Uint8Array(64);
    vsc.start(buf);
    assert.throws(() => vsc.handleCompletion(zeros(63), buf), wireError('truncated', 'vstor_packet'));
    const step = vsc.handleCompletion(cat(hex('01000000 00000000 840100c0'), zeros(52)), buf);
    assert.equal(step.state, 'failed');
    assert.match(step.reason!, /BEGIN_INITIALIZATION/);
  });
});
