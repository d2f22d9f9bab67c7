import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { HeartbeatGuest, HeartbeatHost } from '../../src/devices/ic/heartbeat.js';
import { KvpGuest, KvpHost } from '../../src/devices/ic/kvp.js';
import type { IcGuestService } from '../../src/devices/ic/service.js';
import { ShutdownGuest } from '../../src/devices/ic/shutdown.js';
import { TimeSyncGuest } from '../../src/devices/ic/timesync.js';
import { READ_TYPE, WRITE_TYPE } from '../../src/devices/storage/constants.js';
import { MemoryDisk } from '../../src/devices/storage/disk.js';
import {
  BytesDataBuffer,
  buildRead10Cdb,
  buildRead16Cdb,
  buildWrite10Cdb,
  buildWrite16Cdb,
  parseSense,
  ScsiTarget,
} from '../../src/devices/storage/scsi.js';
import {
  buildExecuteSrb,
  newScsiCompletion,
  parseScsiCompletion,
  StorageVscInit,
} from '../../src/devices/storage/vsc.js';
import { StorageVsp } from '../../src/devices/storage/vsp.js';
import { WireError } from '../../src/wire/errors.js';

const BS = 512;
const BLOCKS = 64;

function readyVsp(disk: MemoryDisk): StorageVsp {
  const vsp = new StorageVsp({ target: new ScsiTarget({ luns: disk, chunkBytes: 2048 }) });
  const vsc = new StorageVscInit();
  const buf = new Uint8Array(64);
  const out = new Uint8Array(64);
  let n = vsc.start(buf);
  while (n > 0) n = vsc.handleCompletion(out, buf, vsp.handlePacket(buf, null, out, n).length).length;
  return vsp;
}

const ioArb = fc.record({
  write: fc.boolean(),
  wide: fc.boolean(),
  lba: fc.integer({ min: 0, max: BLOCKS + 4 }),
  blocks: fc.integer({ min: 0, max: 9 }),
  seed: fc.integer({ min: 0, max: 255 }),
});

describe('storage properties', () => {
  test('random writes then reads return the data written and touch nothing outside the range', () => {
    fc.assert(
      fc.property(fc.array(ioArb, { minLength: 1, maxLength: 16 }), (ios) => {
        const disk = new MemoryDisk({ blockCount: BLOCKS });
        const model = new Uint8Array(BLOCKS * BS);
        const vsp = readyVsp(disk);
        const pkt = new Uint8Array(64);
        const out = new Uint8Array(64);
        const cdb = new Uint8Array(16);
        const c = newScsiCompletion();
        for (const io of ios) {
          const len = io.blocks * BS;
          const buf = new Uint8Array(len);
          if (io.write) for (let i = 0; i < len; i++) buf[i] = (i * 13 + io.seed) & 0xff;
          const n = io.wide
            ? (io.write ? buildWrite16Cdb : buildRead16Cdb)(cdb, io.lba, io.blocks)
            : (io.write ? buildWrite10Cdb : buildRead10Cdb)(cdb, io.lba, io.blocks);
          buildExecuteSrb(pkt, {
            cdb,
            cdbLength: n,
            dataIn: io.write ? WRITE_TYPE : READ_TYPE,
            dataTransferLength: len,
          });
          vsp.handlePacket(pkt, new BytesDataBuffer(buf), out);
          parseScsiCompletion(out, len, c);
          const inRange = io.lba + io.blocks <= BLOCKS;
          if (inRange) {
            assert.equal(c.srbStatus, 1);
            assert.equal(c.dataTransferLength, len);
            if (io.write) model.set(buf, io.lba * BS);
            else assert.deepEqual(buf, model.subarray(io.lba * BS, io.lba * BS + len));
          } else {
            assert.deepEqual(parseSense(c.sense, c.senseLength), { key: 5, asc: 0x21, ascq: 0 });
          }
          assert.equal(Buffer.compare(disk.bytes, model), 0);
        }
      }),
      { numRuns: 150 },
    );
  });

  test('arbitrary packets to a ready host are always answered and never change the disk', () => {
    const disk = new MemoryDisk({ blockCount: 8, data: new Uint8Array(8 * BS).fill(0x5a) });
    const vsp = readyVsp(disk);
    const out = new Uint8Array(64);
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 80 }),
        fc.integer({ min: 0, max: 15 }),
        (bytes, op) => {
          if (bytes.length >= 4) bytes[0] = op;
          const r = vsp.handlePacket(bytes, null, out);
          assert.ok(r.length >= 12 && r.length <= 64);
          assert.ok(r.error === null || r.error instanceof WireError);
          assert.ok(disk.bytes.every((b) => b === 0x5a));
        },
      ),
      { numRuns: 400 },
    );
    assert.equal(vsp.state, 'ready');
  });
});

describe('IC properties', () => {
  const guests: [string, () => IcGuestService<unknown>][] = [
    ['heartbeat', () => new HeartbeatGuest()],
    ['shutdown', () => new ShutdownGuest()],
    ['timesync', () => new TimeSyncGuest()],
    ['kvp', () => new KvpGuest()],
  ];

  test('arbitrary bytes to any guest service: a response, or a WireError, nothing else', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...guests),
        fc.uint8Array({ minLength: 0, maxLength: 3000 }),
        fc.integer({ min: 0, max: 5 }),
        ([, make], bytes, type) => {
          if (bytes.length > 12) bytes[12] = type;
          if (bytes.length > 13) bytes[13] = 0;
          try {
            const r = make().handle(bytes);
            if (r.response !== null) assert.equal(r.response.length, bytes.length);
          } catch (e) {
            assert.ok(e instanceof WireError, String(e));
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  test('heartbeats round-trip for any sequence number', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (seq) => {
        const host = new HeartbeatHost();
        const guest = new HeartbeatGuest();
        host.handle(guest.handle(host.start()).response!);
        const ev = host.handle(guest.handle(host.heartbeat(seq)).response!) as { sequence: bigint };
        assert.equal(ev.sequence, (seq + 1n) & ((1n << 64n) - 1n));
      }),
      { numRuns: 100 },
    );
  });

  test('KVP set then enumerate returns what was set, for any key and value that fit', () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 0, maxLength: 254 }).filter((s) => !s.includes('\0')),
        fc.string({ minLength: 0, maxLength: 1022 }).filter((s) => !s.includes('\0')),
        fc.integer({ min: 0, max: 4 }).filter((p) => p !== 2),
        (key, value, pool) => {
          const host = new KvpHost();
          const guest = new KvpGuest();
          host.handle(guest.handle(host.start()).response!);
          host.handle(guest.handle(host.set(pool, key, value)).response!);
          const ev = host.handle(guest.handle(host.enumerate(pool, 0)).response!) as {
            key: string;
            value: string;
          };
          assert.equal(ev.key, key);
          assert.equal(ev.value, value);
        },
      ),
      { numRuns: 100 },
    );
  });
});
