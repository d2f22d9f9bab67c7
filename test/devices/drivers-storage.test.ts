// The synthetic-storage drivers end to end over a KMCL port: the vstor handshake, INQUIRY, READ
// CAPACITY, a pattern written over many LBAs with 32 requests in flight and read back, and bad
// requests (LBA out of range, wrong lengths, data not in the packet, read-only disk, garbage
// packets) answered with the right status while the disk stays unchanged outside the request.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DeviceDriverError } from '../../src/devices/driver-common.js';
import { startGuestVscs, startHostVsps } from '../../src/devices/drivers.js';
import {
  ASC_INVALID_FIELD_IN_CDB,
  ASC_LBA_OUT_OF_RANGE,
  ASC_WRITE_PROTECTED,
  HV_SCSI_GUID,
  READ_TYPE,
  SAM_STAT_CHECK_CONDITION,
  SENSE_KEY_DATA_PROTECT,
  SENSE_KEY_ILLEGAL_REQUEST,
  SRB_STATUS_INVALID_REQUEST,
  srbStatusCode,
  VMSTOR_PROTO_VERSION_WIN10,
  VSTOR_OPERATION_COMPLETE_IO,
  VstorNtStatus,
  WRITE_TYPE,
} from '../../src/devices/storage/constants.js';
import { MemoryDisk } from '../../src/devices/storage/disk.js';
import { buildRead10Cdb, buildWrite10Cdb } from '../../src/devices/storage/scsi.js';
import { StorageIoError, StorageVscDriver } from '../../src/devices/storage/vsc-driver.js';
import { StorageVspDriver } from '../../src/devices/storage/vsp-driver.js';
import {
  KMCL_CLIENT_INTERFACE_TYPE,
  type KMCL_CLIENT_INTERFACE_V1,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  queryInterface,
  STATUS_SUCCESS,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
} from '../../src/kmcl/index.js';
import { readU32 } from '../../src/wire/messages/bytes.js';
import { type DriverRig, RIGS } from './drivers-rig.js';

const BLOCKS = 4096;
const BS = 512;

/** Block `lba`'s bytes in the test pattern (distinct for every block and byte position). */
function pattern(lba: number, blocks: number): Uint8Array {
  const out = new Uint8Array(blocks * BS);
  for (let b = 0; b < blocks; b++) {
    const l = lba + b;
    for (let i = 0; i < BS; i++) out[b * BS + i] = (l * 7 + i * 13 + (l >>> 8)) & 0xff;
  }
  return out;
}

async function pair(rig: DriverRig, disk: MemoryDisk, queueDepth = 32) {
  const host = new StorageVspDriver(rig.host, { disk });
  host.start();
  const guest = new StorageVscDriver(rig.guest, { allocator: rig.allocator, queueDepth });
  guest.start();
  const info = await guest.ready();
  return { host, guest, info };
}

function sense(e: unknown): [number, number] {
  assert.ok(e instanceof StorageIoError, `expected a StorageIoError, got ${String(e)}`);
  assert.ok(e.result.sense !== null);
  return [e.result.sense.key, e.result.sense.asc];
}

for (const [rigName, makeRig] of RIGS) {
  describe(`storage drivers over the ${rigName} port`, () => {
    /** A test on a fresh rig, torn down afterwards whatever happens. */
    const rigTest = (name: string, body: (rig: DriverRig) => Promise<void>): void => {
      test(name, async () => {
        const rig = await makeRig();
        try {
          await body(rig);
        } finally {
          await rig.close();
        }
      });
    };

    rigTest('handshake, INQUIRY and READ CAPACITY', async (rig) => {
      const disk = new MemoryDisk({ blockCount: BLOCKS, blockSize: BS });
      const { host, guest, info } = await pair(rig, disk);
      assert.equal(info.version, VMSTOR_PROTO_VERSION_WIN10);
      assert.equal(info.properties.maxTransferBytes, 0x40000);
      assert.equal(await host.ready(), VMSTOR_PROTO_VERSION_WIN10);
      assert.equal(guest.state, 'ready');
      const inq = await guest.inquiry();
      assert.deepEqual(inq, {
        peripheralQualifier: 0,
        peripheralDeviceType: 0,
        vendor: 'Msft',
        product: 'Virtual Disk',
        revision: '1.0',
      });
      assert.deepEqual(await guest.readCapacity(), { blockSize: BS, blockCount: BLOCKS });
      assert.equal(guest.io.others, 2);
      assert.equal(host.io.others, 2);
      await guest.stop();
      await host.stop();
      assert.deepEqual(rig.peerErrors, []);
      assert.deepEqual(rig.callbackErrors, []);
    });

    rigTest('a pattern over 2048 LBAs with 32 requests in flight reads back intact', async (rig) => {
      const disk = new MemoryDisk({ blockCount: BLOCKS, blockSize: BS });
      const { host, guest } = await pair(rig, disk);
      await guest.readCapacity();
      const writes: Promise<void>[] = [];
      for (let i = 0; i < 256; i++) writes.push(guest.write(i * 8, pattern(i * 8, 8)));
      assert.equal(guest.queued, 256 - 32, 'everything past the queue depth waits for a slot');
      await Promise.all(writes);
      assert.equal(guest.io.maxInFlight, 32);
      assert.equal(guest.io.writes, 256);
      assert.equal(guest.io.bytesWritten, 2048 * BS);
      assert.equal(host.io.writes, 256);
      // The disk holds the pattern, and nothing past it was touched.
      assert.deepEqual(disk.bytes.subarray(0, 2048 * BS), pattern(0, 2048));
      assert.ok(disk.bytes.subarray(2048 * BS).every((b) => b === 0));

      const checks: Promise<boolean>[] = [];
      for (let i = 0; i < 256; i++) checks.push(guest.readVerify(i * 8, pattern(i * 8, 8)));
      assert.deepEqual(new Set(await Promise.all(checks)), new Set([true]));
      assert.equal(guest.io.verified, 256);
      assert.equal(guest.io.mismatches, 0);
      // One big read: split into 64 KiB requests, all in flight together.
      const all = await guest.read(0, 2048);
      assert.deepEqual(all, pattern(0, 2048));
      assert.equal(guest.io.reads, 256 + 16);
      assert.equal(host.io.bytesRead, 2 * 2048 * BS);
      assert.equal(guest.io.errors + host.io.errors, 0);
      assert.ok(guest.io.latency.count >= 256 + 256 + 16);
      // The host holds no grant on guest memory but the ring's once every request completed.
      const grants = rig.hostGrants();
      if (grants !== null) assert.equal(grants, 1);
      await guest.stop();
      await host.stop();
      assert.deepEqual(rig.peerErrors, []);
    });

    rigTest(
      'bad requests get the right status and never change the disk outside the request',
      async (rig) => {
        const disk = new MemoryDisk({ blockCount: BLOCKS, blockSize: BS });
        disk.bytes.set(pattern(0, BLOCKS));
        const before = disk.bytes.slice();
        const { host, guest } = await pair(rig, disk);

        // LBA out of range, reading and writing (partly past the end).
        await assert.rejects(guest.read(BLOCKS - 4, 8), (e) => {
          assert.deepEqual(sense(e), [SENSE_KEY_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE]);
          return true;
        });
        await assert.rejects(guest.write(BLOCKS - 1, new Uint8Array(2 * BS).fill(0xee)), (e) => {
          assert.deepEqual(sense(e), [SENSE_KEY_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE]);
          return true;
        });

        // A CDB for two blocks with a transfer length of one.
        const cdb = new Uint8Array(10);
        buildWrite10Cdb(cdb, 100, 2);
        const short = await guest.execute({
          cdb,
          dataIn: WRITE_TYPE,
          dataTransferLength: BS,
          data: new Uint8Array(BS).fill(0xab),
        });
        assert.equal(short.ok, false);
        assert.equal(short.scsiStatus, SAM_STAT_CHECK_CONDITION);
        assert.equal(short.sense?.key, SENSE_KEY_ILLEGAL_REQUEST);
        assert.equal(short.sense?.asc, ASC_INVALID_FIELD_IN_CDB);

        // Sixteen blocks announced, but only one page named in the packet.
        buildWrite10Cdb(cdb, 200, 16);
        const notInPacket = await guest.execute({
          cdb,
          dataIn: WRITE_TYPE,
          dataTransferLength: 16 * BS,
          data: new Uint8Array(16 * BS).fill(0xcd),
          externalPages: 1,
        });
        assert.equal(notInPacket.ok, false);
        assert.equal(srbStatusCode(notInPacket.srbStatus), SRB_STATUS_INVALID_REQUEST);
        assert.equal(notInPacket.status, VstorNtStatus.STATUS_INVALID_PARAMETER);
        assert.equal(notInPacket.dataTransferLength, 0);

        // Data announced, but no external data at all.
        buildRead10Cdb(cdb, 300, 1);
        const inline = await guest.execute({
          cdb,
          dataIn: READ_TYPE,
          dataTransferLength: BS,
          data: new Uint8Array(BS),
          externalPages: 0,
        });
        assert.equal(srbStatusCode(inline.srbStatus), SRB_STATUS_INVALID_REQUEST);
        assert.equal(inline.status, VstorNtStatus.STATUS_INVALID_PARAMETER);

        // An opcode the target does not know.
        const unknown = await guest.execute({
          cdb: Uint8Array.of(0xc7, 0, 0, 0, 0, 0),
          dataIn: 2,
          dataTransferLength: 0,
        });
        assert.equal(unknown.sense?.key, SENSE_KEY_ILLEGAL_REQUEST);

        assert.deepEqual(disk.bytes, before, 'the disk image is unchanged');
        assert.equal(host.io.errors, 6);
        assert.equal(guest.io.errors, 6);
        // Good I/O still works afterwards.
        await guest.write(10, pattern(5000, 2));
        assert.deepEqual(await guest.read(10, 2), pattern(5000, 2));
        assert.deepEqual(disk.bytes.subarray(0, 10 * BS), before.subarray(0, 10 * BS));
        assert.deepEqual(disk.bytes.subarray(12 * BS), before.subarray(12 * BS));
        await guest.stop();
        await host.stop();
        assert.deepEqual(rig.peerErrors, []);
      },
    );

    rigTest('a read-only disk answers writes with DATA PROTECT', async (rig) => {
      const disk = new MemoryDisk({ blockCount: 64, blockSize: BS, readOnly: true });
      const { host, guest } = await pair(rig, disk, 4);
      await assert.rejects(guest.write(0, new Uint8Array(BS).fill(1)), (e) => {
        assert.deepEqual(sense(e), [SENSE_KEY_DATA_PROTECT, ASC_WRITE_PROTECTED]);
        return true;
      });
      assert.ok(disk.bytes.every((b) => b === 0));
      assert.deepEqual(await guest.read(0, 1), new Uint8Array(BS));
      await guest.stop();
      await host.stop();
    });

    rigTest('garbage packets from a guest are answered with an error completion', async (rig) => {
      const disk = new MemoryDisk({ blockCount: 64, blockSize: BS });
      const host = new StorageVspDriver(rig.host, { disk });
      host.start();
      const errors: Error[] = [];
      host.events.on((e) => {
        if (e.kind === 'protocol-error') errors.push(e.error);
      });
      const q = queryInterface(
        rig.guest,
        KMCL_CLIENT_INTERFACE_TYPE,
        KMCL_CLIENT_INTERFACE_V1_SIZE,
        KMCL_CLIENT_INTERFACE_VERSION_V1,
      );
      const C: KMCL_CLIENT_INTERFACE_V1 = q.Interface!;
      const ch = C.VmbChannelAllocate(null, false).Channel!;
      assert.equal(C.VmbClientChannelInitSetTargetPnp(ch, HV_SCSI_GUID, null, null), STATUS_SUCCESS);
      assert.equal(
        C.VmbChannelInitSetProcessPacketCallbacks(ch, (_c, pkt) => C.VmbChannelPacketComplete(pkt, null, 0)),
        0,
      );
      assert.equal(C.VmbChannelEnable(ch), STATUS_SUCCESS);
      await host.events.next('opened');
      await rig.idle();
      const completions: number[][] = [];
      const send = (bytes: Uint8Array): void => {
        const p = C.VmbPacketAllocate(ch)!;
        C.VmbPacketSetCompletionRoutine(p, (pk, status, buf, len) => {
          assert.equal(status, STATUS_SUCCESS);
          completions.push([readU32(buf!, 0), readU32(buf!, 8), len]);
          C.VmbPacketFree(pk);
        });
        assert.equal(
          C.VmbPacketSend(p, bytes, bytes.length, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION),
          STATUS_SUCCESS,
        );
      };
      send(Uint8Array.of(1, 2, 3, 4)); // shorter than the vstor header
      send(Uint8Array.of(0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)); // unknown operation
      const exec = new Uint8Array(64);
      exec[0] = 3; // EXECUTE_SRB before initialization
      send(exec);
      await rig.idle();
      assert.deepEqual(completions, [
        [VSTOR_OPERATION_COMPLETE_IO, VstorNtStatus.STATUS_INVALID_PARAMETER, 16],
        [VSTOR_OPERATION_COMPLETE_IO, VstorNtStatus.STATUS_INVALID_DEVICE_REQUEST, 16],
        [VSTOR_OPERATION_COMPLETE_IO, VstorNtStatus.STATUS_INVALID_DEVICE_STATE, 64],
      ]);
      assert.equal(errors.length, 2);
      assert.ok(disk.bytes.every((b) => b === 0));
      await C.VmbChannelDisable(ch);
      C.VmbChannelCleanup(ch);
      await host.stop();
      assert.deepEqual(rig.callbackErrors, []);
    });

    rigTest('stopping the guest rejects queued work and gives every page back', async (rig) => {
      const disk = new MemoryDisk({ blockCount: BLOCKS, blockSize: BS });
      const baseline = rig.allocator.allocatedPageCount;
      const host = new StorageVspDriver(rig.host, { disk });
      host.start();
      const guest = new StorageVscDriver(rig.guest, { allocator: rig.allocator, queueDepth: 4 });
      guest.start();
      assert.ok(rig.allocator.allocatedPageCount >= baseline + 4 * 16, 'the slots own their pages');
      await guest.ready();
      await guest.readCapacity();
      const work = [];
      for (let i = 0; i < 12; i++)
        work.push(
          guest.write(i, pattern(i, 1)).then(
            () => 'done',
            (e: unknown) => e,
          ),
        );
      const stopped = guest.stop();
      const outcomes = await Promise.all(work);
      await stopped;
      for (const o of outcomes) {
        if (o === 'done') continue;
        assert.ok(o instanceof DeviceDriverError && o.code === 'closed', String(o));
      }
      assert.ok(
        outcomes.some((o) => o !== 'done'),
        'the queued requests were rejected',
      );
      assert.equal(rig.allocator.allocatedPageCount, baseline);
      await assert.rejects(guest.read(0, 1), (e: unknown) => e instanceof DeviceDriverError);
      await host.stop();
    });

    rigTest(
      'startHostVsps / startGuestVscs bring storage up beside the ICs and summarize it',
      async (rig) => {
        const disk = new MemoryDisk({ blockCount: BLOCKS, blockSize: BS });
        const host = startHostVsps(rig.host, { storage: { disk } });
        const guest = startGuestVscs(rig.guest, { storage: { allocator: rig.allocator } });
        const g = await guest.ready();
        assert.equal(g.storage?.version, VMSTOR_PROTO_VERSION_WIN10);
        assert.equal((await host.ready()).storage, VMSTOR_PROTO_VERSION_WIN10);
        const vsc = guest.storage!;
        await vsc.write(0, pattern(0, 64));
        assert.equal(await vsc.readVerify(0, pattern(0, 64)), true);
        const s = guest.summary();
        assert.deepEqual(
          s.channels.map((c) => c.name),
          ['heartbeat', 'shutdown', 'timesync', 'kvp', 'storage'],
        );
        assert.equal(s.io?.verified, 1);
        assert.equal(s.io?.bytesWritten, 64 * BS);
        const h = host.summary();
        assert.equal(h.io?.bytesWritten, 64 * BS);
        assert.equal(h.io?.bytesRead, 64 * BS);
        assert.equal(h.channels[4]!.packetsIn, s.channels[4]!.packetsOut);
        await guest.stop();
        await host.stop();
      },
    );
  });
}
