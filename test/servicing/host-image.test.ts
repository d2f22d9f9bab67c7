// The saved host VMBus image (docs/servicing.md, 'VMBH'): a corrupt, truncated, other-version,
// inconsistent or other-memory image is refused with a BusSavedStateError and leaves nothing
// half restored (the same image, or the good one, can be adopted afterwards); fuzzed mutations
// of a real image are only ever refused or accepted whole. Also what happens between adoption and
// finishRestore: guest messages wait, and channels no VSP reclaims are rescinded.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  BusSavedStateError,
  crc32,
  decodeHostVmbusSavedState,
  encodeHostVmbusSavedState,
  type HostVmbusSavedState,
} from '../../src/bus/saved-state.js';
import type { HvHostEnd } from '../../src/hv/end.js';
import { Hypervisor } from '../../src/hv/hypervisor.js';
import type { HvPartitionDescriptor } from '../../src/hv/index.js';
import { BusKmclHost, createKmclSystem, type KmclSystem } from '../../src/kmcl/bus-port.js';
import { KmclProvider, kmclChannelInfo, type VMBCHANNEL } from '../../src/kmcl/index.js';
import {
  clientTable,
  INSTANCE,
  INSTANCE2,
  makeClient,
  makeServer,
  must,
  saveServerChannel,
  serverTable,
  until,
} from '../kmcl-bus/kit.js';

interface Detached {
  sys: KmclSystem;
  descriptor: HvPartitionDescriptor;
  image: Uint8Array;
  hostEnd: HvHostEnd;
  chunks: Uint8Array[];
  client: VMBCHANNEL;
  C: ReturnType<typeof clientTable>;
  /** Guest messages the VSPs received, by instance. */
  seen: string[];
}

/** A system with one open channel (INSTANCE) and one offered but unopened (INSTANCE2), saved and detached. */
async function detachedSystem(): Promise<Detached> {
  const sys = await createKmclSystem();
  const S = serverTable(sys.host);
  const C = clientTable(sys.guests[0]!);
  const seen: string[] = [];
  const s1 = makeServer(S, {
    onPacket: (_c, pkt) => {
      seen.push('1');
      S.VmbChannelPacketComplete(pkt, null, 0);
    },
  });
  const s2 = makeServer(S, { instance: INSTANCE2 });
  const c = makeClient(C, { instance: INSTANCE });
  must(S.VmbChannelEnable(s1), 'enable 1');
  S.VmbChannelStart(s1);
  must(S.VmbChannelEnable(s2), 'enable 2');
  S.VmbChannelStart(s2);
  must(C.VmbChannelEnable(c), 'client enable');
  await until(() => kmclChannelInfo(c).flowing && kmclChannelInfo(s1).flowing, 'flowing');
  const chunks = await saveServerChannel(S, s1);
  const d = await sys.hostBus.detachPartition(sys.hv.partitions()[0]!.partitionId);
  return { sys, descriptor: d.descriptor, image: d.image, hostEnd: d.hostEnd, chunks, client: c, C, seen };
}

/** A new host instance on the same scheduler. */
function newHost(sys: KmclSystem): { hv: Hypervisor; bus: BusKmclHost } {
  const hv = new Hypervisor({ transport: 'same-thread', scheduler: sys.hv.scheduler! });
  return { hv, bus: new BusKmclHost(hv) };
}

function reseal(image: Uint8Array, mutate: (s: HostVmbusSavedState) => void): Uint8Array {
  const s = decodeHostVmbusSavedState(image);
  mutate(s);
  return encodeHostVmbusSavedState(s);
}

/** Deterministic PRNG (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

describe('saved host VMBus image', () => {
  test('bad images are refused with a typed error, and the good one is adopted afterwards', async () => {
    const d = await detachedSystem();
    try {
      const { hv, bus } = newHost(d.sys);
      const refuse = (image: Uint8Array, code: string, what: string, descriptor = d.descriptor): void => {
        assert.throws(
          () => bus.adoptPartition(descriptor, image, { replacing: d.hostEnd }),
          (e: unknown) => e instanceof BusSavedStateError && e.code === code,
          what,
        );
        assert.equal(hv.partitions().length, 0, `${what}: nothing adopted`);
      };
      for (const n of [0, 15, 16, 100, d.image.length - 1])
        refuse(d.image.slice(0, n), 'truncated', `cut at ${n}`);
      const version = d.image.slice();
      version[4] = 2;
      refuse(version, 'version', 'another format version');
      const flipped = d.image.slice();
      flipped[d.image.length >> 1]! ^= 0x10;
      refuse(flipped, 'corrupt', 'a flipped body bit (checksum)');
      const magic = d.image.slice();
      magic[0] = 0;
      refuse(magic, 'corrupt', 'bad magic');
      refuse(
        reseal(d.image, (s) => {
          (s.server.gpadls[0]!.ranges[0]!.pfns as number[])[0] = 1 << 30;
        }),
        'memory',
        'a PFN outside guest memory',
      );
      refuse(
        reseal(d.image, (s) => {
          const open = s.server.channels.find((c) => c.phase === 'open')!;
          open.open!.ringGpadlId = 0x7777;
        }),
        'shape',
        'an open channel whose ring GPADL does not exist',
      );
      refuse(
        reseal(d.image, (s) => {
          (s.link as { toHostReadIndex: number }).toHostReadIndex = 10_000;
        }),
        'shape',
        'a queue position outside the link',
      );
      refuse(
        reseal(d.image, (s) => {
          s.server.channels[0]!.phase = 'opening';
        }),
        'shape',
        'a channel saved half-open',
      );
      refuse(
        reseal(d.image, (s) => {
          if (s.server.connection.kind === 'connected') s.server.connection.version = 0x12345;
        }),
        'shape',
        'a version this server does not speak',
      );
      // The same image over a partition with less memory: its rings are not there.
      const small: HvPartitionDescriptor = { ...d.descriptor, memory: new SharedArrayBuffer(64 * 4096) };
      refuse(d.image, 'memory', 'another partition’s memory', small);

      // Nothing was half restored: the good image is adopted and the channel comes back.
      bus.adoptPartition(d.descriptor, d.image, { replacing: d.hostEnd });
      const S = serverTable(KmclProvider.forHost(bus));
      const s1 = makeServer(S, {
        onPacket: (_c, pkt) => {
          d.seen.push('1');
          S.VmbChannelPacketComplete(pkt, null, 0);
        },
      });
      let st = 0;
      for (const c of d.chunks) st = S.VmbChannelRestoreFromBuffer(s1, c, c.length);
      must(st, 'restore');
      await bus.finishRestore(d.descriptor.partitionId);
      must(S.VmbChannelEnable(s1), 'enable');
      S.VmbChannelStart(s1);
      const p = d.C.VmbPacketAllocate(d.client)!;
      must(d.C.VmbPacketSend(p, new Uint8Array(8), 8, null, 0), 'guest send');
      await until(() => d.seen.length === 1, 'the restored VSP receives');
    } finally {
      await d.sys.close();
    }
  });

  test('fuzzed images (real ones mutated, checksums resealed) are refused or adopted whole, never half', async () => {
    const d = await detachedSystem();
    try {
      const { hv, bus } = newHost(d.sys);
      const random = rng(0x5eed);
      let replacing = d.hostEnd;
      let refused = 0;
      let accepted = 0;
      const codes = new Set<string>();
      for (let i = 0; i < 300; i++) {
        let image: Uint8Array = d.image.slice();
        const kind = i % 3;
        if (kind === 0) {
          // Random byte changes in the body, checksum recomputed so the decoder has to look.
          const s = decodeHostVmbusSavedState(d.image);
          image = encodeHostVmbusSavedState(s);
          for (let k = 0; k < 1 + Math.floor(random() * 4); k++) {
            const at = 16 + Math.floor(random() * (image.length - 16));
            image[at] = Math.floor(random() * 256);
          }
          image = resealBytes(image);
        } else if (kind === 1) {
          image = image.slice(0, Math.floor(random() * image.length));
        } else {
          image[Math.floor(random() * image.length)]! ^= 1 << Math.floor(random() * 8);
        }
        try {
          bus.adoptPartition(d.descriptor, image, { replacing });
        } catch (e) {
          assert.ok(e instanceof BusSavedStateError, `mutation ${i}: ${String(e)}`);
          codes.add(e.code);
          assert.equal(hv.partitions().length, 0, `mutation ${i}: nothing adopted`);
          refused++;
          continue;
        }
        // Accepted whole: a complete server exists; hand it back for the next try.
        accepted++;
        const part = hv.partitions()[0]!;
        assert.equal(bus.server(part.partitionId)!.restoring, true);
        replacing = part.host;
        hv.detachPartition(part.partitionId);
        (bus as unknown as { entries: Map<number, unknown> }).entries.delete(part.partitionId);
      }
      assert.ok(codes.has('shape') && codes.has('truncated') && codes.has('corrupt'), [...codes].join());
      assert.ok(refused > 250, `most mutations are refused (${refused} refused, ${accepted} accepted)`);
    } finally {
      await d.sys.close();
    }
  });

  test('guest messages wait until finishRestore; a channel no VSP reclaims is rescinded', async () => {
    const d = await detachedSystem();
    try {
      const { bus } = newHost(d.sys);
      const server = bus.adoptPartition(d.descriptor, d.image, { replacing: d.hostEnd });
      // The guest's client for the second offer opens it while the host is still restoring.
      const c2 = makeClient(d.C, { instance: INSTANCE2 });
      must(d.C.VmbChannelEnable(c2), 'client 2 enable');
      await until(() => server.state.inbox.length > 0, 'the OPENCHANNEL waits in the inbox');
      assert.equal(server.restoring, true);
      const S = serverTable(KmclProvider.forHost(bus));
      const s1 = makeServer(S);
      let st = 0;
      for (const c of d.chunks) st = S.VmbChannelRestoreFromBuffer(s1, c, c.length);
      must(st, 'restore');
      // INSTANCE2's VSP does not come back.
      assert.equal(server.unclaimedChannels().length, 0, 'the bus port claimed every channel');
      await bus.finishRestore(d.descriptor.partitionId);
      assert.equal(server.restoring, false);
      await until(
        () => server.state.channels.length === 1,
        'the unreclaimed offer was rescinded and released',
      );
      assert.equal(server.state.channels[0]!.offer.interfaceInstance, INSTANCE.toString());
      must(S.VmbChannelEnable(s1), 'enable');
      S.VmbChannelStart(s1);
      assert.equal(kmclChannelInfo(d.client).state, 'open', 'the reclaimed channel stayed open');
      assert.notEqual(kmclChannelInfo(c2).state, 'open', 'the rescinded one never opened');
    } finally {
      await d.sys.close();
    }
  });
});

/** Recomputes the header's checksum after a body edit, so the decoder has to look at the body. */
function resealBytes(image: Uint8Array): Uint8Array {
  new DataView(image.buffer, image.byteOffset, image.byteLength).setUint32(12, crc32(image, 16), true);
  return image;
}
