// Servicing of the host VSP drivers: the whole driver set (four ICs and the SCSI controller) is
// saved with block I/O in flight and restored into a new host instance while the guest's drivers
// keep running: over the loopback port (a new host KMCL provider) and over the real VMBus (a new
// Hypervisor, BusKmclHost and provider adopting the detached partition). Every request completes
// once with the right data, the heartbeat sequence, negotiated versions and counters carry over,
// and the restored ICs answer requests. Also: an IC transaction outstanding at the save is
// answered in the new instance; saved states that do not fit are refused without touching the
// channel; and the plain-data state of the pure pieces (IC host service, StorageVsp, latency
// samples, a MemoryDisk over a SharedArrayBuffer).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DeviceDriverError, LatencySamples } from '../../src/devices/driver-common.js';
import {
  type HostVsps,
  type HostVspsOptions,
  type RestoredHostVsps,
  restoreHostVsps,
  startGuestVscs,
  startHostVsps,
} from '../../src/devices/drivers.js';
import { HeartbeatGuest, HeartbeatHost } from '../../src/devices/ic/heartbeat.js';
import { KVP_POOL_EXTERNAL, KvpHost } from '../../src/devices/ic/kvp.js';
import { HeartbeatVsp, ShutdownVsp } from '../../src/devices/ic/vsp.js';
import { MemoryDisk } from '../../src/devices/storage/disk.js';
import { ScsiTarget } from '../../src/devices/storage/scsi.js';
import { StorageVsp } from '../../src/devices/storage/vsp.js';
import { StorageVspDriver } from '../../src/devices/storage/vsp-driver.js';
import { Hypervisor } from '../../src/hv/hypervisor.js';
import { BusKmclHost, createKmclSystem } from '../../src/kmcl/bus-port.js';
import {
  KMCL_CLIENT_INTERFACE_TYPE,
  type KMCL_CLIENT_INTERFACE_V1,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  KmclProvider,
  type KmclProviderOptions,
  LoopbackHost,
  queryInterface,
} from '../../src/kmcl/index.js';
import type { PageAllocator } from '../../src/memory/allocator.js';

/** Host and guest partitions whose host side can be restarted. */
interface ServicingRig {
  /** The current host instance's provider (a new one after each restart). */
  host: KmclProvider;
  readonly guest: KmclProvider;
  readonly allocator: PageAllocator;
  /**
   * After the old host's VSPs were saved: a new host instance (a new provider; on the real bus
   * also a new hypervisor and VMBus adopting the detached partition) restores them with `restore`
   * and resumes them once every channel is back.
   */
  restart<T extends { resume(): void }>(restore: (provider: KmclProvider) => T): Promise<T>;
  readonly errors: string[];
  close(): Promise<void>;
}

function recorder(errors: string[]): KmclProviderOptions {
  return {
    onPeerError: (_ch, e) => errors.push(`peer: ${e.message}`),
    onCallbackError: (_ch, name, e) => errors.push(`callback ${name}: ${String(e)}`),
  };
}

async function loopbackRig(): Promise<ServicingRig> {
  const errors: string[] = [];
  const lb = new LoopbackHost();
  const part = lb.addPartition({ memoryBytes: 16 * 1024 * 1024 });
  const rig: ServicingRig = {
    host: KmclProvider.forHost(lb, recorder(errors)),
    guest: KmclProvider.forGuest(part.guestBus(0), recorder(errors)),
    allocator: part.allocator,
    errors,
    async restart(restore) {
      rig.host = KmclProvider.forHost(lb, recorder(errors));
      const restored = restore(rig.host);
      restored.resume();
      return restored;
    },
    close: async () => {},
  };
  return rig;
}

async function busRig(): Promise<ServicingRig> {
  const errors: string[] = [];
  const sys = await createKmclSystem({ memoryBytes: 16 * 1024 * 1024, provider: recorder(errors) });
  const pid = sys.hv.partitions()[0]!.partitionId;
  let hostBus = sys.hostBus;
  let hv = sys.hv;
  const rig: ServicingRig = {
    host: sys.host,
    guest: sys.guests[0]!,
    allocator: sys.guestBuses[0]!.allocator,
    errors,
    async restart(restore) {
      const detached = await hostBus.detachPartition(pid);
      hv = new Hypervisor({ transport: 'same-thread', scheduler: sys.hv.scheduler! });
      hostBus = new BusKmclHost(hv);
      hostBus.adoptPartition(detached.descriptor, detached.image, { replacing: detached.hostEnd });
      rig.host = KmclProvider.forHost(hostBus, recorder(errors));
      const restored = restore(rig.host);
      await hostBus.finishRestore(pid);
      restored.resume();
      return restored;
    },
    close: async () => {
      await sys.close();
      if (hostBus !== sys.hostBus) {
        await hostBus.dispose();
        hv.close();
      }
    },
  };
  return rig;
}

const RIGS: [string, () => Promise<ServicingRig>][] = [
  ['loopback', loopbackRig],
  ['bus', busRig],
];

function clientTable(p: KmclProvider): KMCL_CLIENT_INTERFACE_V1 {
  const r = queryInterface<KMCL_CLIENT_INTERFACE_V1>(
    p,
    KMCL_CLIENT_INTERFACE_TYPE,
    KMCL_CLIENT_INTERFACE_V1_SIZE,
    KMCL_CLIENT_INTERFACE_VERSION_V1,
  );
  assert.equal(r.status, 0);
  return r.Interface!;
}

const BLOCKS = 2048;
const BS = 512;

/** Distinct bytes for block `lba` written in round `round`. */
function pattern(lba: number, blocks: number, round: number): Uint8Array {
  const out = new Uint8Array(blocks * BS);
  for (let i = 0; i < out.length; i++) out[i] = (lba * 31 + i * 7 + round * 101 + (i >>> 9)) & 0xff;
  return out;
}

/** Sums of the host's and the guest's packet counts per channel (they must agree). */
function trafficAgrees(host: HostVsps, guest: ReturnType<typeof startGuestVscs>): void {
  const g = new Map(guest.summary().channels.map((c) => [c.name, c]));
  for (const h of host.summary().channels) {
    const c = g.get(h.name)!;
    assert.equal(h.packetsIn, c.packetsOut, `${h.name}: guest->host packets`);
    assert.equal(c.packetsIn, h.packetsOut, `${h.name}: host->guest packets`);
    assert.equal(h.errors + c.errors, 0, `${h.name}: errors`);
  }
}

for (const [rigName, makeRig] of RIGS) {
  describe(`VSP servicing over the ${rigName} port`, () => {
    const rigTest = (name: string, body: (rig: ServicingRig) => Promise<void>): void => {
      test(name, async () => {
        const rig = await makeRig();
        try {
          await body(rig);
          assert.deepEqual(rig.errors, []);
        } finally {
          await rig.close();
        }
      });
    };

    rigTest(
      'the driver set is saved with I/O in flight and restored into a new host, three times',
      async (rig) => {
        const backing = new SharedArrayBuffer(BLOCKS * BS);
        const options = (): HostVspsOptions => ({
          storage: { disk: new MemoryDisk({ blockCount: BLOCKS, blockSize: BS, backing }) },
        });
        let host: HostVsps = startHostVsps(rig.host, options());
        const guest = startGuestVscs(rig.guest, { storage: { allocator: rig.allocator, queueDepth: 32 } });
        const versions = await host.ready();
        await guest.ready();
        const storage = guest.storage!;
        await storage.readCapacity();
        let lastAck = (await host.heartbeat.heartbeat()).acked;
        assert.equal((await host.kvp.set(KVP_POOL_EXTERNAL, 'Before', 'saved')).status, 0);

        const written = new Map<number, Uint8Array>();
        let writes = 0;
        for (let round = 1; round <= 3; round++) {
          // 64 writes of 4 blocks each go out; the host is saved while they are in flight.
          const io: Promise<void>[] = [];
          for (let i = 0; i < 64; i++) {
            const lba = ((round * 64 + i) * 4) % BLOCKS;
            const data = pattern(lba, 4, round);
            written.set(lba, data);
            io.push(storage.write(lba, data));
          }
          writes += 64;
          const saved = await host.save({ chunkSize: round === 2 ? 64 : undefined });
          assert.ok(storage.io.inFlight > 0, 'requests were in flight while the host was away');
          assert.equal(saved.heartbeat.state, 'ready');
          assert.equal(saved.storage!.protocol!.state, 'ready');
          if (round === 2) assert.ok(saved.kvp.channel.length > 1, 'small chunks: the state spans several');
          host = await rig.restart<RestoredHostVsps>((p) => restoreHostVsps(p, options(), saved));
          await Promise.all(io);
          // The restored ICs: negotiated as before, the heartbeat sequence continues.
          const again = await host.ready();
          assert.deepEqual(again, versions);
          const hb = await host.heartbeat.heartbeat();
          assert.equal(hb.sent, lastAck, 'the round continues from the answer the old instance got');
          assert.equal(hb.acked, hb.sent + 1n);
          lastAck = hb.acked;
        }
        for (const [lba, data] of written) {
          assert.deepEqual(await storage.read(lba, 4), data, `LBA ${lba}`);
        }
        assert.equal(
          host.storage!.io.writes,
          writes,
          'the host counted every write once, over all instances',
        );
        assert.equal((await host.kvp.get(KVP_POOL_EXTERNAL, 'Before')).value, 'saved');
        await host.timesync.syncNow();
        assert.equal((await host.shutdown.shutdown({ action: 'shutdown' })).accepted, true);
        assert.equal(host.heartbeat.rounds, 4);
        trafficAgrees(host, guest);
        await guest.stop();
        await host.stop();
      },
    );

    rigTest('an IC transaction outstanding at the save is answered in the new instance', async (rig) => {
      let host: HostVsps = startHostVsps(rig.host);
      const guest = startGuestVscs(rig.guest);
      await host.ready();
      await guest.ready();
      const before = await host.heartbeat.heartbeat();
      // The guest holds the next heartbeat: its channel is paused, the request waits in the ring.
      const C = clientTable(rig.guest);
      const gch = guest.heartbeat.vmbChannel!;
      await C.VmbChannelPause(gch);
      const sentBefore = host.heartbeat.counters.packetsOut;
      const round = host.heartbeat.heartbeat();
      const refused = assert.rejects(round, (e) => e instanceof DeviceDriverError && e.code === 'closed');
      await until(() => host.heartbeat.counters.packetsOut > sentBefore);
      const saved = await host.save();
      await refused;
      assert.equal(host.heartbeat.state, 'saved');
      assert.notEqual(saved.heartbeat.protocol!.pending, null, 'the outstanding round is part of the state');
      await assert.rejects(host.heartbeat.heartbeat(), (e) => e instanceof DeviceDriverError);
      await host.stop(); // a no-op: the channel belongs to the next instance
      host = await rig.restart((p) => restoreHostVsps(p, {}, saved));
      const carried = host.heartbeat.carriedTransaction;
      assert.notEqual(carried, null);
      assert.equal(host.shutdown.carriedTransaction, null);
      C.VmbChannelStart(gch);
      const answer = await carried!;
      assert.equal(answer.sequence, before.acked + 1n, "the guest's answer to the old instance's round");
      assert.equal(host.heartbeat.sequence, answer.sequence);
      assert.equal(host.heartbeat.rounds, 2);
      const next = await host.heartbeat.heartbeat();
      assert.equal(next.sent, answer.sequence);
      assert.equal(guest.heartbeat.beats, 3);
      trafficAgrees(host, guest);
      await guest.stop();
      await host.stop();
    });

    rigTest(
      'saved states that do not fit are refused and leave the channel to a correct restore',
      async (rig) => {
        const disk = new MemoryDisk({ blockCount: 64 });
        const host = startHostVsps(rig.host, { storage: { disk } });
        const guest = startGuestVscs(rig.guest, { storage: { allocator: rig.allocator } });
        await host.ready();
        await guest.ready();
        await host.heartbeat.heartbeat();
        await assert.rejects(
          new HeartbeatVsp(rig.host).save(),
          (e) => e instanceof DeviceDriverError && e.code === 'not-ready',
        );
        const saved = await host.save();
        const refused = (e: unknown) => e instanceof DeviceDriverError && e.code === 'restore-failed';
        const hb = saved.heartbeat;
        const restored = await rig.restart((p) => {
          assert.throws(() => new ShutdownVsp(p).restore(hb), refused, "another service's state");
          const chunk = hb.channel[0]!.slice();
          chunk[chunk.length - 1]! ^= 0xff;
          assert.throws(
            () => new HeartbeatVsp(p).restore({ ...hb, channel: [chunk] }),
            refused,
            'a corrupted chunk',
          );
          assert.throws(
            () => new HeartbeatVsp(p).restore({ ...hb, protocol: { ...hb.protocol!, framework: 0x70007 } }),
            refused,
            'versions never offered',
          );
          assert.throws(
            () => new HeartbeatVsp(p).restore({ ...hb, driver: { ...hb.driver, sequence: 'many' } }),
            refused,
            'a bad heartbeat sequence',
          );
          assert.throws(
            () => new HeartbeatVsp(p).restore({ ...hb, state: 'offered' }),
            refused,
            'a state without a guest, with a protocol',
          );
          assert.throws(() => new HeartbeatVsp(p).restore({ ...hb, instance: 42 as never }), refused);
          const st = saved.storage!;
          assert.throws(
            () => new StorageVspDriver(p, { disk }).restore({ ...st, io: { ...st.io, reads: -1 } }),
            refused,
            'bad I/O counters',
          );
          assert.throws(
            () =>
              new StorageVspDriver(p, { disk }).restore({
                ...st,
                protocol: { ...st.protocol!, version: 0x0101 },
              }),
            refused,
            'a vstor version never offered',
          );
          assert.throws(() => restoreHostVsps(p, {}, saved), refused, 'a set without the saved storage');
          return restoreHostVsps(p, { storage: { disk } }, saved);
        });
        assert.equal((await restored.heartbeat.heartbeat()).sent, 1n);
        assert.equal((await restored.shutdown.shutdown()).accepted, true);
        trafficAgrees(restored, guest);
        await guest.stop();
        await restored.stop();
      },
    );
  });
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 1));
  }
}

describe('servicing state of the pure pieces', () => {
  test('an IC host conversation continues from its saved state, mid-transaction', () => {
    const host = new HeartbeatHost();
    const guest = new HeartbeatGuest();
    host.handle(guest.handle(host.start()).response!);
    assert.equal(host.state, 'ready');
    const request = host.heartbeat(41n);
    const saved = structuredClone(host.saveState());
    assert.deepEqual(saved.request, { sent: '41' });
    const next = new HeartbeatHost();
    next.restoreState(saved);
    assert.equal(next.busy, true);
    assert.deepEqual(next.handle(guest.handle(request).response!), {
      kind: 'heartbeat-ack',
      sequence: 42n,
      status: 0,
    });
    assert.equal(next.busy, false);
    const again = next.heartbeat(42n);
    assert.equal(again[0], request[0]); // same framing; the transaction id moved on
    for (const bad of [
      { ...saved, state: 'busy' as never },
      { ...saved, framework: 0x70007 },
      { ...saved, nextTransactionId: 256 },
      { ...saved, pending: { type: 1, transactionId: -1 } },
      { ...saved, request: { sent: 'x' } },
      { ...saved, request: { sent: (1n << 64n).toString() } },
    ]) {
      assert.throws(() => new HeartbeatHost().restoreState(bad), RangeError);
    }
    const kvpIdle = { ...saved, state: 'idle' as const, pending: null, request: { operation: 1, pool: 2 } };
    const kvp = new KvpHost();
    kvp.restoreState(kvpIdle);
    assert.deepEqual(kvp.saveState().request, { operation: 1, pool: 2 });
    assert.throws(
      () => new KvpHost().restoreState({ ...kvpIdle, request: { operation: 9, pool: 0 } }),
      RangeError,
    );
  });

  test('a StorageVsp continues from its protocol state; states it cannot have are refused', () => {
    const target = new ScsiTarget({ luns: new MemoryDisk({ blockCount: 8 }) });
    const vsp = new StorageVsp({ target });
    const ready = { state: 'ready' as const, version: vsp.versions[0]!, subChannelCount: 0 };
    vsp.restoreState(ready);
    assert.deepEqual(vsp.saveState(), ready);
    for (const bad of [
      { ...ready, version: 0x0101 },
      { ...ready, state: 'begin' as const },
      { ...ready, subChannelCount: 1 },
      { ...ready, state: 'later' as never },
    ]) {
      assert.throws(() => new StorageVsp({ target }).restoreState(bad), RangeError);
    }
  });

  test('latency samples carry over, keeping the newest that fit', () => {
    const a = new LatencySamples(4);
    for (let i = 1; i <= 6; i++) a.add(i);
    const saved = a.save();
    assert.deepEqual(saved, { total: 6, samples: [3, 4, 5, 6] });
    const b = new LatencySamples(4);
    b.restore(saved);
    assert.deepEqual(b.summary(), a.summary());
    b.add(7);
    assert.deepEqual(b.save(), { total: 7, samples: [4, 5, 6, 7] });
    const c = new LatencySamples(2);
    c.restore(saved);
    assert.deepEqual(c.save(), { total: 6, samples: [5, 6] });
  });

  test('MemoryDisks over one SharedArrayBuffer serve the same blocks', () => {
    const backing = new SharedArrayBuffer(4 * 512);
    const a = new MemoryDisk({ blockCount: 4, backing });
    const b = new MemoryDisk({ blockCount: 4, backing });
    a.write(2, 1, new Uint8Array(512).fill(7), 0);
    const got = new Uint8Array(512);
    b.read(2, 1, got, 0);
    assert.deepEqual(got, new Uint8Array(512).fill(7));
    assert.throws(() => new MemoryDisk({ blockCount: 5, backing }), RangeError);
  });
});
