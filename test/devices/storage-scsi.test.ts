import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import {
  READ_TYPE,
  SAM_STAT_CHECK_CONDITION,
  SAM_STAT_GOOD,
  SRB_STATUS_ERROR,
  SRB_STATUS_INVALID_LUN,
  SRB_STATUS_INVALID_REQUEST,
  SRB_STATUS_SUCCESS,
  UNKNOWN_TYPE,
  VstorNtStatus,
  WRITE_TYPE,
} from '../../src/devices/storage/constants.js';
import { type DiskBackend, FileDisk, MemoryDisk } from '../../src/devices/storage/disk.js';
import {
  BytesDataBuffer,
  buildInquiryCdb,
  buildRead10Cdb,
  buildRead16Cdb,
  buildReadCapacity10Cdb,
  buildReadCapacity16Cdb,
  buildReportLunsCdb,
  buildRequestSenseCdb,
  buildSynchronizeCache10Cdb,
  buildTestUnitReadyCdb,
  buildWrite10Cdb,
  buildWrite16Cdb,
  parseReadCapacity10,
  parseReadCapacity16,
  parseSense,
  type ScsiDataBuffer,
  ScsiTarget,
} from '../../src/devices/storage/scsi.js';
import {
  buildExecuteSrb,
  newScsiCompletion,
  parseScsiCompletion,
  type ScsiCompletion,
  StorageVscInit,
} from '../../src/devices/storage/vsc.js';
import { StorageVsp } from '../../src/devices/storage/vsp.js';
import { cat, hex, wireError, zeros } from './helpers.js';

const BS = 512;

function readyVsp(luns: ReadonlyMap<number, DiskBackend> | DiskBackend): StorageVsp {
  const vsp = new StorageVsp({ target: new ScsiTarget({ luns }) });
  const vsc = new StorageVscInit();
  const buf = new Uint8Array(64);
  const out = new Uint8Array(64);
  let n = vsc.start(buf);
  while (n > 0) n = vsc.handleCompletion(out, buf, vsp.handlePacket(buf, null, out, n).length).length;
  assert.equal(vsp.state, 'ready');
  return vsp;
}

interface SrbOptions {
  lun?: number;
  targetId?: number;
  /** data_transfer_length (default: the buffer's length). */
  dtl?: number;
  /** The data buffer handed to the host (default: over `buf`). */
  data?: ScsiDataBuffer | null;
}

interface SrbOutcome {
  status: number;
  c: ScsiCompletion;
  raw: Uint8Array;
}

function srb(
  vsp: StorageVsp,
  cdb: Uint8Array,
  cdbLength: number,
  dataIn: number,
  buf: Uint8Array | null,
  o: SrbOptions = {},
): SrbOutcome {
  const dtl = o.dtl ?? buf?.length ?? 0;
  const pkt = new Uint8Array(64);
  buildExecuteSrb(pkt, { cdb, cdbLength, dataIn, dataTransferLength: dtl, lun: o.lun, targetId: o.targetId });
  const data = o.data !== undefined ? o.data : buf === null ? null : new BytesDataBuffer(buf);
  const out = new Uint8Array(64);
  const r = vsp.handlePacket(pkt, data, out);
  assert.equal(r.length, 64);
  const raw = out.slice();
  return { status: r.status, c: parseScsiCompletion(raw, dtl, newScsiCompletion()), raw };
}

function cdbOf(build: (b: Uint8Array) => number): [Uint8Array, number] {
  const b = new Uint8Array(16);
  return [b, build(b)];
}

function expectSense(o: SrbOutcome, key: number, asc: number, srbStatus = SRB_STATUS_INVALID_REQUEST): void {
  assert.equal(o.c.scsiStatus, SAM_STAT_CHECK_CONDITION);
  assert.equal(o.c.srbStatus, 0x80 | srbStatus);
  assert.equal(o.status, VstorNtStatus.STATUS_IO_DEVICE_ERROR);
  assert.equal(o.c.senseLength, 20);
  assert.deepEqual(parseSense(o.c.sense), { key, asc, ascq: 0 });
  assert.equal(o.c.dataTransferLength, 0);
}

function patterned(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >>> 9)) & 0xff;
  return b;
}

describe('SCSI commands against a memory disk', () => {
  test('INQUIRY standard data, byte for byte', () => {
    const vsp = readyVsp(new MemoryDisk({ blockCount: 2048 }));
    const buf = new Uint8Array(96).fill(0xee);
    const o = srb(vsp, ...cdbOf((b) => buildInquiryCdb(b, 96)), READ_TYPE, buf);
    assert.equal(o.status, 0);
    assert.equal(o.c.srbStatus, SRB_STATUS_SUCCESS);
    assert.equal(o.c.dataTransferLength, 36);
    assert.deepEqual(
      buf.subarray(0, 36),
      cat(hex('00 00 05 02 1f 00 00 02'), new TextEncoder().encode('Msft    Virtual Disk    1.0 ')),
    );
    assert.equal(buf[36], 0xee);
    // the completion itself
    assert.deepEqual(
      o.raw,
      cat(hex('01000000 00000000 00000000 3400 01 00 00 00 00 00 10 14 00 00 24000000'), zeros(36)),
    );
  });

  test('INQUIRY honours the allocation length; VPD pages 0x00, 0x80, 0x83', () => {
    const vsp = readyVsp(new MemoryDisk({ blockCount: 8 }));
    const small = new Uint8Array(5);
    assert.equal(srb(vsp, ...cdbOf((b) => buildInquiryCdb(b, 5)), READ_TYPE, small).c.dataTransferLength, 5);
    assert.deepEqual(small, hex('00 00 05 02 1f'));
    const buf = new Uint8Array(64);
    srb(vsp, ...cdbOf((b) => buildInquiryCdb(b, 64, 0x00)), READ_TYPE, buf);
    assert.deepEqual(buf.subarray(0, 7), hex('00 00 00 03 00 80 83'));
    const sn = srb(vsp, ...cdbOf((b) => buildInquiryCdb(b, 64, 0x80)), READ_TYPE, buf.fill(0));
    assert.equal(sn.c.dataTransferLength, 13);
    assert.deepEqual(buf.subarray(0, 13), cat(hex('00 80 00 09'), new TextEncoder().encode('VMBUS0000')));
    const id = srb(vsp, ...cdbOf((b) => buildInquiryCdb(b, 64, 0x83)), READ_TYPE, buf.fill(0));
    assert.equal(id.c.dataTransferLength, 25);
    assert.deepEqual(
      buf.subarray(0, 25),
      cat(hex('00 83 00 15 02 01 00 11'), new TextEncoder().encode('Msft    VMBUS0000')),
    );
    expectSense(srb(vsp, ...cdbOf((b) => buildInquiryCdb(b, 64, 0xb0)), READ_TYPE, buf), 5, 0x24);
    const bad = cdbOf((b) => buildInquiryCdb(b, 64));
    bad[0][2] = 0x80; // page code without EVPD
    expectSense(srb(vsp, ...bad, READ_TYPE, buf), 5, 0x24);
  });

  test('absent LUNs and other targets: INQUIRY says not present, the rest SRB_STATUS_INVALID_LUN', () => {
    const vsp = readyVsp(new MemoryDisk({ blockCount: 8 }));
    const buf = new Uint8Array(36);
    srb(vsp, ...cdbOf((b) => buildInquiryCdb(b, 36)), READ_TYPE, buf, { lun: 3 });
    assert.equal(buf[0], 0x7f);
    assert.deepEqual(buf.subarray(8, 16), zeros(8));
    const tur = srb(vsp, ...cdbOf(buildTestUnitReadyCdb), UNKNOWN_TYPE, null, { lun: 3 });
    assert.equal(tur.c.srbStatus, SRB_STATUS_INVALID_LUN);
    assert.equal(tur.status, VstorNtStatus.STATUS_DEVICE_DOES_NOT_EXIST);
    const other = srb(vsp, ...cdbOf(buildTestUnitReadyCdb), UNKNOWN_TYPE, null, { targetId: 1 });
    assert.equal(other.c.srbStatus, SRB_STATUS_INVALID_LUN);
    const luns = new Uint8Array(64);
    srb(vsp, ...cdbOf((b) => buildReportLunsCdb(b, 64)), READ_TYPE, luns, { targetId: 1 });
    assert.deepEqual(luns.subarray(0, 8), zeros(8));
  });

  test('TEST UNIT READY, REQUEST SENSE, SYNCHRONIZE CACHE', () => {
    const vsp = readyVsp(new MemoryDisk({ blockCount: 8 }));
    const tur = srb(vsp, ...cdbOf(buildTestUnitReadyCdb), UNKNOWN_TYPE, null);
    assert.equal(tur.status, 0);
    assert.equal(tur.c.scsiStatus, SAM_STAT_GOOD);
    const buf = new Uint8Array(32);
    const rs = srb(vsp, ...cdbOf((b) => buildRequestSenseCdb(b, 32)), READ_TYPE, buf);
    assert.equal(rs.c.dataTransferLength, 18);
    assert.deepEqual(buf.subarray(0, 18), hex('70 00 00 00 00 00 00 0a 00 00 00 00 00 00 00 00 00 00'));
    const desc = cdbOf((b) => buildRequestSenseCdb(b, 32));
    desc[0][1] = 1;
    expectSense(srb(vsp, ...desc, READ_TYPE, buf), 5, 0x24);
    assert.equal(srb(vsp, ...cdbOf(buildSynchronizeCache10Cdb), UNKNOWN_TYPE, null).status, 0);
  });

  test('READ CAPACITY (10) and (16)', () => {
    const vsp = readyVsp(new MemoryDisk({ blockCount: 2048, blockSize: 4096 }));
    const b10 = new Uint8Array(8);
    srb(vsp, ...cdbOf(buildReadCapacity10Cdb), READ_TYPE, b10);
    assert.deepEqual(b10, hex('000007ff 00001000'));
    assert.deepEqual(parseReadCapacity10(b10), { lastLba: 2047, blockSize: 4096 });
    const b16 = new Uint8Array(32).fill(0xee);
    const o = srb(vsp, ...cdbOf((b) => buildReadCapacity16Cdb(b, 32)), READ_TYPE, b16);
    assert.equal(o.c.dataTransferLength, 32);
    assert.deepEqual(b16, cat(hex('00000000000007ff 00001000'), zeros(20)));
    assert.deepEqual(parseReadCapacity16(b16), { lastLba: 2047, blockSize: 4096 });
    const sa = cdbOf((b) => buildReadCapacity16Cdb(b, 32));
    sa[0][1] = 0x11;
    expectSense(srb(vsp, ...sa, READ_TYPE, b16), 5, 0x24);
  });

  test('WRITE then READ (10) and (16) move exactly the blocks named', () => {
    const disk = new MemoryDisk({ blockCount: 64 });
    const vsp = readyVsp(disk);
    const data = patterned(3 * BS, 1);
    const w = srb(vsp, ...cdbOf((b) => buildWrite10Cdb(b, 5, 3)), WRITE_TYPE, data);
    assert.equal(w.status, 0);
    assert.equal(w.c.dataTransferLength, 3 * BS);
    assert.deepEqual(disk.bytes.subarray(5 * BS, 8 * BS), data);
    assert.deepEqual(disk.bytes.subarray(0, 5 * BS), zeros(5 * BS));
    assert.deepEqual(disk.bytes.subarray(8 * BS), zeros(56 * BS));
    const back = new Uint8Array(3 * BS);
    srb(vsp, ...cdbOf((b) => buildRead16Cdb(b, 5, 3)), READ_TYPE, back);
    assert.deepEqual(back, data);
    const d16 = patterned(BS, 2);
    srb(vsp, ...cdbOf((b) => buildWrite16Cdb(b, 63, 1)), WRITE_TYPE, d16);
    const one = new Uint8Array(BS);
    srb(vsp, ...cdbOf((b) => buildRead10Cdb(b, 63, 1)), READ_TYPE, one);
    assert.deepEqual(one, d16);
    const none = srb(vsp, ...cdbOf((b) => buildRead10Cdb(b, 64, 0)), READ_TYPE, null);
    assert.equal(none.status, 0);
  });

  test('transfers larger than the bounce buffer are chunked', () => {
    const disk = new MemoryDisk({ blockCount: 1024 });
    const vsp = new StorageVsp({ target: new ScsiTarget({ luns: disk, chunkBytes: 4096 }) });
    const vsc = new StorageVscInit();
    const b = new Uint8Array(64);
    const out = new Uint8Array(64);
    let n = vsc.start(b);
    while (n > 0) n = vsc.handleCompletion(out, b, vsp.handlePacket(b, null, out, n).length).length;
    const data = patterned(300 * BS, 3);
    srb(vsp, ...cdbOf((c) => buildWrite10Cdb(c, 100, 300)), WRITE_TYPE, data);
    const back = new Uint8Array(300 * BS);
    assert.equal(
      srb(vsp, ...cdbOf((c) => buildRead10Cdb(c, 100, 300)), READ_TYPE, back).c.dataTransferLength,
      300 * BS,
    );
    assert.deepEqual(back, data);
  });

  test('REPORT LUNS lists the LUNs; an allocation length under 16 is refused', () => {
    const vsp = readyVsp(
      new Map<number, DiskBackend>([
        [0, new MemoryDisk({ blockCount: 8 })],
        [2, new MemoryDisk({ blockCount: 8 })],
      ]),
    );
    const buf = new Uint8Array(64);
    const o = srb(vsp, ...cdbOf((b) => buildReportLunsCdb(b, 64)), READ_TYPE, buf);
    assert.equal(o.c.dataTransferLength, 24);
    assert.deepEqual(buf.subarray(0, 24), hex('00000010 00000000 0000000000000000 0002000000000000'));
    expectSense(srb(vsp, ...cdbOf((b) => buildReportLunsCdb(b, 8)), READ_TYPE, buf), 5, 0x24);
  });
});

describe('bad requests end in error status, never a crash, never a stray write', () => {
  const disk = new MemoryDisk({ blockCount: 64 });
  const vsp = readyVsp(disk);
  const snapshot = () => disk.bytes.slice();

  test('invalid opcode: ILLEGAL REQUEST 0x20/00, sense bytes as sent', () => {
    const cdb = new Uint8Array(16);
    cdb[0] = 0x1a; // MODE SENSE(6), not implemented
    const o = srb(vsp, cdb, 6, READ_TYPE, new Uint8Array(16));
    expectSense(o, 5, 0x20);
    assert.deepEqual(
      o.raw.subarray(12),
      cat(
        hex('3400 86 02 00 00 00 00 10 14 00 00 00000000'),
        hex('70 00 05 00 00 00 00 0a 00 00 00 00 20 00 00 00 00 00 00 00'),
        zeros(16),
      ),
    );
    expectSense(srb(vsp, hex('c0000000000000000000000000000000'), 16, UNKNOWN_TYPE, null), 5, 0x20);
  });

  test('LBA out of range: 0x21/00 and nothing written', () => {
    const before = snapshot();
    expectSense(
      srb(vsp, ...cdbOf((b) => buildWrite10Cdb(b, 62, 3)), WRITE_TYPE, patterned(3 * BS, 4)),
      5,
      0x21,
    );
    expectSense(
      srb(vsp, ...cdbOf((b) => buildRead16Cdb(b, 2 ** 40, 1)), READ_TYPE, new Uint8Array(BS)),
      5,
      0x21,
    );
    const huge = cdbOf((b) => buildRead16Cdb(b, 0, 1));
    huge[0].set(hex('ffffffffffffffff'), 2);
    expectSense(srb(vsp, ...huge, READ_TYPE, new Uint8Array(BS)), 5, 0x21);
    expectSense(srb(vsp, ...cdbOf((b) => buildRead10Cdb(b, 65, 0)), READ_TYPE, null), 5, 0x21);
    assert.deepEqual(disk.bytes, before);
  });

  test('a transfer length that disagrees with data_transfer_length: 0x24/00', () => {
    const before = snapshot();
    expectSense(srb(vsp, ...cdbOf((b) => buildWrite10Cdb(b, 0, 2)), WRITE_TYPE, patterned(BS, 5)), 5, 0x24);
    expectSense(
      srb(vsp, ...cdbOf((b) => buildRead10Cdb(b, 0, 1)), READ_TYPE, new Uint8Array(2 * BS)),
      5,
      0x24,
    );
    assert.deepEqual(disk.bytes, before);
  });

  test('the wrong data direction: 0x24/00', () => {
    const before = snapshot();
    expectSense(srb(vsp, ...cdbOf((b) => buildWrite10Cdb(b, 0, 1)), READ_TYPE, patterned(BS, 6)), 5, 0x24);
    expectSense(srb(vsp, ...cdbOf((b) => buildInquiryCdb(b, 36)), WRITE_TYPE, new Uint8Array(36)), 5, 0x24);
    assert.deepEqual(disk.bytes, before);
  });

  test('a data buffer smaller than data_transfer_length: STATUS_INVALID_PARAMETER, SRB_STATUS_INVALID_REQUEST', () => {
    const before = snapshot();
    const buf = patterned(BS, 7);
    const o = srb(vsp, ...cdbOf((b) => buildWrite10Cdb(b, 0, 2)), WRITE_TYPE, buf, { dtl: 2 * BS });
    assert.equal(o.status, VstorNtStatus.STATUS_INVALID_PARAMETER);
    assert.equal(o.c.srbStatus, SRB_STATUS_INVALID_REQUEST);
    assert.equal(o.c.dataTransferLength, 0);
    const none = srb(vsp, ...cdbOf((b) => buildRead10Cdb(b, 0, 1)), READ_TYPE, null, { dtl: BS });
    assert.equal(none.status, VstorNtStatus.STATUS_INVALID_PARAMETER);
    assert.deepEqual(disk.bytes, before);
  });

  test('CDB lengths outside 1..16 and CDBs shorter than their opcode group', () => {
    const pkt = new Uint8Array(64);
    const out = new Uint8Array(64);
    const cdb = new Uint8Array(16);
    buildExecuteSrb(pkt, { cdb, cdbLength: 6, dataIn: UNKNOWN_TYPE, dataTransferLength: 0 });
    pkt[12 + 8] = 0;
    assert.equal(vsp.handlePacket(pkt, null, out).status, VstorNtStatus.STATUS_INVALID_PARAMETER);
    pkt[12 + 8] = 17;
    assert.equal(vsp.handlePacket(pkt, null, out).status, VstorNtStatus.STATUS_INVALID_PARAMETER);
    const [read10] = cdbOf((b) => buildRead10Cdb(b, 0, 1));
    expectSense(srb(vsp, read10, 6, READ_TYPE, new Uint8Array(BS)), 5, 0x24);
    const short = cat(hex('03000000 01000000 00000000'), zeros(20));
    const r = vsp.handlePacket(short, null, out);
    assert.equal(r.status, VstorNtStatus.STATUS_INVALID_PARAMETER);
    assert.ok(wireError('truncated', 'vmscsi_request')(r.error));
    assert.equal(r.length, 32);
  });

  test('read-only disks refuse writes with DATA PROTECT 0x27/00', () => {
    const ro = new MemoryDisk({ blockCount: 8, readOnly: true, data: patterned(8 * BS, 8) });
    const v = readyVsp(ro);
    expectSense(
      srb(v, ...cdbOf((b) => buildWrite10Cdb(b, 0, 1)), WRITE_TYPE, new Uint8Array(BS)),
      7,
      0x27,
      SRB_STATUS_ERROR,
    );
    assert.deepEqual(ro.bytes, patterned(8 * BS, 8));
  });

  test('a failing backend gives MEDIUM ERROR; a failing data buffer SRB_STATUS_ERROR', () => {
    const broken: DiskBackend = {
      blockSize: BS,
      blockCount: 8,
      readOnly: false,
      read() {
        throw new Error('EIO');
      },
      write() {
        throw new Error('EIO');
      },
      flush() {},
    };
    const v = readyVsp(broken);
    expectSense(
      srb(v, ...cdbOf((b) => buildRead10Cdb(b, 0, 1)), READ_TYPE, new Uint8Array(BS)),
      3,
      0x11,
      SRB_STATUS_ERROR,
    );
    expectSense(
      srb(v, ...cdbOf((b) => buildWrite10Cdb(b, 0, 1)), WRITE_TYPE, new Uint8Array(BS)),
      3,
      0x0c,
      SRB_STATUS_ERROR,
    );
    const failing: ScsiDataBuffer = {
      length: BS,
      read() {
        throw new RangeError('PFN outside guest memory');
      },
      write() {
        throw new RangeError('PFN outside guest memory');
      },
    };
    const before = snapshot();
    const o = srb(vsp, ...cdbOf((b) => buildWrite10Cdb(b, 0, 1)), WRITE_TYPE, null, {
      dtl: BS,
      data: failing,
    });
    assert.equal(o.c.srbStatus, SRB_STATUS_ERROR);
    assert.equal(o.status, VstorNtStatus.STATUS_IO_DEVICE_ERROR);
    assert.equal(o.c.senseLength, 0);
    assert.deepEqual(disk.bytes, before);
    const rd = srb(vsp, ...cdbOf((b) => buildRead10Cdb(b, 0, 1)), READ_TYPE, null, {
      dtl: BS,
      data: failing,
    });
    assert.equal(rd.c.srbStatus, SRB_STATUS_ERROR);
  });

  test('several requests in flight complete independently, in any order', () => {
    const pkts = [0, 1, 2].map((i) => {
      const cdb = new Uint8Array(16);
      buildWrite10Cdb(cdb, 10 + i, 1);
      const p = new Uint8Array(64);
      buildExecuteSrb(p, { cdb, cdbLength: 10, dataIn: WRITE_TYPE, dataTransferLength: BS });
      return p;
    });
    const out = new Uint8Array(64);
    for (const i of [2, 0, 1]) {
      const r = vsp.handlePacket(pkts[i]!, new BytesDataBuffer(patterned(BS, 20 + i)), out);
      assert.equal(r.status, 0);
    }
    for (const i of [0, 1, 2])
      assert.deepEqual(disk.bytes.subarray((10 + i) * BS, (11 + i) * BS), patterned(BS, 20 + i));
  });
});

describe('guest completion parsing', () => {
  test('sense length is clamped to 20 and the transfer length to the buffer; errors zero it', () => {
    const c = newScsiCompletion();
    const good = cat(
      hex('01000000 00000000 00000000 3400 01 00 00 00 00 00 10 ff 00 00 00100000'),
      zeros(36),
    );
    assert.equal(parseScsiCompletion(good, 512, c).dataTransferLength, 512);
    assert.equal(c.senseLength, 0);
    const cc = cat(
      hex('01000000 00000000 850100c0 3400 84 02 00 00 00 00 10 ff 00 00 00100000'),
      hex('70000300'),
      zeros(32),
    );
    parseScsiCompletion(cc, 4096, c);
    assert.equal(c.senseLength, 20);
    assert.equal(c.dataTransferLength, 0);
    assert.equal(c.status, 0xc0000185);
    assert.deepEqual(c.sense.subarray(0, 4), hex('70000300'));
    assert.throws(
      () => parseScsiCompletion(good.subarray(0, 63), 512, c),
      wireError('truncated', 'vstor_packet'),
    );
    const notDone = new Uint8Array(good);
    notDone[0] = 11;
    assert.throws(
      () => parseScsiCompletion(notDone, 512, c),
      wireError('inconsistent', 'vstor_packet.operation'),
    );
  });
});

describe('FileDisk', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmbus-disk-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('serves a file image through the SCSI target; writes land only in the request range', () => {
    const path = join(dir, 'a.img');
    const disk = FileDisk.open(path, { blockCount: 16, create: true });
    try {
      assert.equal(readFileSync(path).length, 16 * BS);
      const vsp = readyVsp(disk);
      const data = patterned(2 * BS, 9);
      assert.equal(srb(vsp, ...cdbOf((b) => buildWrite10Cdb(b, 3, 2)), WRITE_TYPE, data).status, 0);
      assert.equal(srb(vsp, ...cdbOf(buildSynchronizeCache10Cdb), UNKNOWN_TYPE, null).status, 0);
      const file = readFileSync(path);
      assert.deepEqual(new Uint8Array(file.subarray(3 * BS, 5 * BS)), data);
      assert.deepEqual(new Uint8Array(file.subarray(0, 3 * BS)), zeros(3 * BS));
      assert.deepEqual(new Uint8Array(file.subarray(5 * BS)), zeros(11 * BS));
      const back = new Uint8Array(2 * BS);
      srb(vsp, ...cdbOf((b) => buildRead16Cdb(b, 3, 2)), READ_TYPE, back);
      assert.deepEqual(back, data);
      expectSense(
        srb(vsp, ...cdbOf((b) => buildRead10Cdb(b, 15, 2)), READ_TYPE, new Uint8Array(2 * BS)),
        5,
        0x21,
      );
    } finally {
      disk.close();
    }
  });

  test('explicit size: a short file is refused unless created; read-only opens refuse writes', () => {
    const path = join(dir, 'b.img');
    writeFileSync(path, patterned(4 * BS, 10));
    assert.throws(() => FileDisk.open(path, { blockCount: 8 }), /needs 4096/);
    const ro = FileDisk.open(path, { blockCount: 4, readOnly: true });
    try {
      const vsp = readyVsp(ro);
      expectSense(
        srb(vsp, ...cdbOf((b) => buildWrite10Cdb(b, 0, 1)), WRITE_TYPE, new Uint8Array(BS)),
        7,
        0x27,
        SRB_STATUS_ERROR,
      );
      const back = new Uint8Array(BS);
      srb(vsp, ...cdbOf((b) => buildRead10Cdb(b, 1, 1)), READ_TYPE, back);
      assert.deepEqual(back, patterned(4 * BS, 10).subarray(BS, 2 * BS));
    } finally {
      ro.close();
    }
    assert.deepEqual(new Uint8Array(readFileSync(path)), patterned(4 * BS, 10));
    assert.throws(() => ro.read(0, 1, new Uint8Array(BS), 0), /closed/);
  });
});
