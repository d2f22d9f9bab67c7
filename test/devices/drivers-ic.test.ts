// The integration-component drivers end to end over a KMCL port: negotiation, heartbeat rounds,
// a shutdown request, time sync, KVP get/set/delete/enumerate against the guest's pools, the wire
// shape of IC packets in both channel modes, and hostile peers on either side.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DeviceDriverError } from '../../src/devices/driver-common.js';
import { startGuestVscs, startHostVsps } from '../../src/devices/drivers.js';
import {
  HB_VERSION,
  HEARTBEAT_SERVICE,
  HV_E_FAIL,
  HV_S_CONT,
  HV_S_OK,
  KVP_WIN8_SRV_VERSION,
  SD_VERSION_3_2,
  SHUTDOWN_SERVICE,
  TS_VERSION,
  UTIL_FW_VERSION,
} from '../../src/devices/ic/constants.js';
import { encodeIcNegotiateRequest, readIcHeader } from '../../src/devices/ic/framing.js';
import { KVP_POOL_EXTERNAL, KVP_POOL_GUEST, REG_SZ } from '../../src/devices/ic/kvp.js';
import { HeartbeatVsc, ShutdownVsc } from '../../src/devices/ic/vsc.js';
import { HeartbeatVsp, IC_INSTANCE_IDS, ShutdownVsp } from '../../src/devices/ic/vsp.js';
import {
  KMCL_CLIENT_INTERFACE_TYPE,
  type KMCL_CLIENT_INTERFACE_V1,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  type KmclProvider,
  queryInterface,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  type VMBCHANNEL,
  VMBUS_CHANNEL_INIT_FLAG_IS_PIPE,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE,
} from '../../src/kmcl/index.js';
import { readU32 } from '../../src/wire/messages/bytes.js';
import { type DriverRig, RIGS } from './drivers-rig.js';

function clientTable(p: KmclProvider): KMCL_CLIENT_INTERFACE_V1 {
  const r = queryInterface(
    p,
    KMCL_CLIENT_INTERFACE_TYPE,
    KMCL_CLIENT_INTERFACE_V1_SIZE,
    KMCL_CLIENT_INTERFACE_VERSION_V1,
  );
  assert.equal(r.status, STATUS_SUCCESS);
  return r.Interface!;
}

function serverTable(p: KmclProvider): KMCL_SERVER_INTERFACE_V1 {
  const r = queryInterface<KMCL_SERVER_INTERFACE_V1>(
    p,
    KMCL_SERVER_INTERFACE_TYPE,
    KMCL_SERVER_INTERFACE_V1_SIZE,
    KMCL_SERVER_INTERFACE_VERSION_V1,
  );
  assert.equal(r.status, STATUS_SUCCESS);
  return r.Interface!;
}

/** A bare client channel that records every payload and hands packets to `onPacket`. */
function rawClient(
  rig: DriverRig,
  type: typeof HEARTBEAT_SERVICE.classId,
  pipe: boolean,
  onPacket: (C: KMCL_CLIENT_INTERFACE_V1, ch: VMBCHANNEL, payload: Uint8Array) => void,
): { C: KMCL_CLIENT_INTERFACE_V1; ch: VMBCHANNEL } {
  const C = clientTable(rig.guest);
  const r = C.VmbChannelAllocate(null, false);
  const ch = r.Channel!;
  assert.equal(C.VmbClientChannelInitSetTargetPnp(ch, type, null, null), STATUS_SUCCESS);
  if (pipe) assert.equal(C.VmbChannelInitSetFlags(ch, VMBUS_CHANNEL_INIT_FLAG_IS_PIPE), STATUS_SUCCESS);
  assert.equal(
    C.VmbChannelInitSetProcessPacketCallbacks(ch, (c, pkt, buf, len) => {
      const copy = buf.slice(0, len);
      C.VmbChannelPacketComplete(pkt, null, 0);
      onPacket(C, c, copy);
    }),
    STATUS_SUCCESS,
  );
  assert.equal(C.VmbChannelEnable(ch), STATUS_SUCCESS);
  return { C, ch };
}

function sendRaw(I: KMCL_CLIENT_INTERFACE_V1, ch: VMBCHANNEL, bytes: Uint8Array): void {
  const p = I.VmbPacketAllocate(ch)!;
  assert.equal(I.VmbPacketSend(p, bytes, bytes.length, null, 0), STATUS_SUCCESS);
}

for (const [rigName, makeRig] of RIGS) {
  describe(`IC drivers over the ${rigName} port`, () => {
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

    rigTest('all four ICs negotiate the newest versions a Linux guest accepts', async (rig) => {
      const host = startHostVsps(rig.host);
      const guest = startGuestVscs(rig.guest);
      const h = await host.ready();
      const g = await guest.ready();
      assert.deepEqual(h.ic.heartbeat, { framework: UTIL_FW_VERSION, message: HB_VERSION });
      assert.deepEqual(h.ic.shutdown, { framework: UTIL_FW_VERSION, message: SD_VERSION_3_2 });
      assert.deepEqual(h.ic.timesync, { framework: UTIL_FW_VERSION, message: TS_VERSION });
      assert.deepEqual(h.ic.kvp, { framework: UTIL_FW_VERSION, message: KVP_WIN8_SRV_VERSION });
      assert.deepEqual(g.ic, h.ic);
      for (const d of [host.heartbeat, host.shutdown, host.timesync, host.kvp])
        assert.equal(d.state, 'ready');
      for (const d of [guest.heartbeat, guest.shutdown, guest.timesync, guest.kvp]) {
        assert.equal(d.state, 'open');
        assert.equal(d.pipe, true);
      }
      await guest.stop();
      await host.stop();
      assert.deepEqual(rig.peerErrors, []);
      assert.deepEqual(rig.callbackErrors, []);
    });

    rigTest('heartbeat rounds: the guest returns each sequence number + 1', async (rig) => {
      const host = startHostVsps(rig.host);
      const guest = startGuestVscs(rig.guest);
      await host.ready();
      const seen: bigint[] = [];
      guest.heartbeat.events.on((e) => {
        if (e.kind === 'heartbeat') seen.push(e.sequence);
      });
      for (let i = 0; i < 5; i++) {
        const r = await host.heartbeat.heartbeat();
        assert.equal(r.sent, BigInt(i));
        assert.equal(r.acked, BigInt(i + 1));
        assert.equal(r.status, HV_S_OK);
      }
      assert.deepEqual(seen, [0n, 1n, 2n, 3n, 4n]);
      assert.equal(host.heartbeat.rounds, 5);
      assert.equal(guest.heartbeat.beats, 5);
      // Negotiation plus five rounds, each way, as both drivers counted them.
      const hc = host.heartbeat.counters;
      const gc = guest.heartbeat.counters;
      assert.equal(hc.packetsOut, 6);
      assert.equal(hc.packetsIn, 6);
      assert.equal(gc.packetsIn, 6);
      assert.equal(gc.packetsOut, 6);
      assert.equal(hc.bytesOut, gc.bytesIn);
      assert.equal(gc.bytesOut, hc.bytesIn);
      assert.equal(hc.errors + gc.errors, 0);
      await guest.stop();
      await host.stop();
    });

    rigTest(
      'a shutdown request reaches the guest application; hibernate is refused when unsupported',
      async (rig) => {
        const host = startHostVsps(rig.host);
        const guest = startGuestVscs(rig.guest);
        await host.ready();
        const delivered = guest.shutdown.events.next('shutdown');
        const r = await host.shutdown.shutdown({ action: 'restart', force: true, message: 'patch Tuesday' });
        assert.deepEqual(r, { kind: 'shutdown-result', status: HV_S_OK, accepted: true });
        const e = await delivered;
        assert.equal(e.action, 'restart');
        assert.equal(e.force, true);
        assert.equal(e.accepted, true);
        assert.equal(e.request.message, 'patch Tuesday');
        assert.equal(guest.shutdown.lastRequest, e);
        const h = await host.shutdown.shutdown({ action: 'hibernate' });
        assert.equal(h.accepted, false);
        assert.equal(h.status, HV_E_FAIL);
        assert.equal(guest.shutdown.lastRequest?.action, 'hibernate');
        assert.equal(guest.shutdown.lastRequest?.accepted, false);
        await guest.stop();
        await host.stop();
      },
    );

    rigTest(
      'time sync: a SYNC sets the guest clock offset, samples are counted, echoes come back',
      async (rig) => {
        const host = startHostVsps(rig.host);
        let guestNow = 1_000_000;
        const guest = startGuestVscs(rig.guest, { timesync: { clock: () => guestNow } });
        await host.ready();
        const set = guest.timesync.events.next('time-set');
        const hostTime = Date.UTC(2024, 0, 2, 3, 4, 5, 678);
        await host.timesync.syncNow(hostTime);
        const e = await set;
        assert.equal(e.hostUnixMs, hostTime);
        assert.equal(e.offsetMs, hostTime - 1_000_000);
        assert.equal(guest.timesync.clockOffsetMs, hostTime - 1_000_000);
        guestNow = 2_000_000;
        assert.equal(guest.timesync.now(), hostTime + 1_000_000);
        await host.timesync.sample(hostTime + 5000);
        await host.timesync.sample(hostTime + 10000);
        await rig.idle();
        assert.equal(guest.timesync.syncs, 1);
        assert.equal(guest.timesync.samples, 2);
        assert.equal(guest.timesync.lastSampleOffsetMs, hostTime + 10000 - 2_000_000);
        assert.equal(host.timesync.sent, 3);
        assert.equal(host.timesync.echoes, 3);
        await guest.stop();
        await host.stop();
      },
    );

    rigTest(
      'KVP set / get / delete / enumerate round trips, checked against the guest pools',
      async (rig) => {
        const host = startHostVsps(rig.host);
        const guest = startGuestVscs(rig.guest, {
          kvp: { auto: [['OSName', 'TypeScript Linux']] },
        });
        await host.ready();
        const changes: string[] = [];
        guest.kvp.events.on((e) => {
          if (e.kind === 'kvp-pool-changed') changes.push(`${e.pool}:${e.key}=${e.value}`);
        });
        const kvp = host.kvp;
        assert.equal((await kvp.set(KVP_POOL_EXTERNAL, 'VirtualMachineName', 'vm-7')).status, HV_S_OK);
        assert.equal((await kvp.set(KVP_POOL_EXTERNAL, 'Cores', { u32: 8 })).status, HV_S_OK);
        assert.equal((await kvp.set(KVP_POOL_GUEST, 'Role', 'db')).status, HV_S_OK);
        assert.equal((await kvp.set(KVP_POOL_EXTERNAL, 'VirtualMachineName', 'vm-8')).status, HV_S_OK);
        assert.deepEqual(guest.kvp.pools.entries(KVP_POOL_EXTERNAL), [
          { key: 'VirtualMachineName', value: 'vm-8' },
          { key: 'Cores', value: '8' },
        ]);
        assert.deepEqual(guest.kvp.pools.entries(KVP_POOL_GUEST), [{ key: 'Role', value: 'db' }]);

        const got = await kvp.get(KVP_POOL_EXTERNAL, 'Cores');
        assert.equal(got.status, HV_S_OK);
        assert.equal(got.value, '8');
        assert.equal(got.valueType, REG_SZ);
        const missing = await kvp.get(KVP_POOL_EXTERNAL, 'Nope');
        assert.equal(missing.status, HV_S_CONT);
        assert.equal(missing.value, null);

        const first = await kvp.enumerate(KVP_POOL_EXTERNAL, 0);
        assert.equal(first.key, 'VirtualMachineName');
        assert.equal(first.value, 'vm-8');
        assert.equal((await kvp.enumerate(KVP_POOL_EXTERNAL, 2)).status, HV_S_CONT);
        assert.deepEqual(await kvp.entries(2), [{ key: 'OSName', value: 'TypeScript Linux' }]);

        assert.equal((await kvp.delete(KVP_POOL_EXTERNAL, 'VirtualMachineName')).status, HV_S_OK);
        assert.equal((await kvp.delete(KVP_POOL_EXTERNAL, 'VirtualMachineName')).status, HV_S_CONT);
        assert.deepEqual(guest.kvp.pools.entries(KVP_POOL_EXTERNAL), [{ key: 'Cores', value: '8' }]);
        assert.deepEqual(await kvp.entries(KVP_POOL_EXTERNAL), [{ key: 'Cores', value: '8' }]);
        assert.deepEqual(changes, [
          '0:VirtualMachineName=vm-7',
          `0:Cores=8`,
          '1:Role=db',
          '0:VirtualMachineName=vm-8',
          '0:VirtualMachineName=null',
        ]);
        await guest.stop();
        await host.stop();
        assert.deepEqual(rig.peerErrors, []);
      },
    );

    rigTest('several operations queued at once run one at a time, in order', async (rig) => {
      const host = startHostVsps(rig.host);
      const guest = startGuestVscs(rig.guest);
      const ops = [
        host.kvp.set(KVP_POOL_EXTERNAL, 'a', '1'),
        host.kvp.set(KVP_POOL_EXTERNAL, 'b', '2'),
        host.kvp.get(KVP_POOL_EXTERNAL, 'a'),
        host.kvp.delete(KVP_POOL_EXTERNAL, 'a'),
        host.kvp.get(KVP_POOL_EXTERNAL, 'a'),
      ];
      const r = await Promise.all(ops);
      assert.deepEqual(
        r.map((x) => [x.operation, x.status, x.value]),
        [
          [1, HV_S_OK, null],
          [1, HV_S_OK, null],
          [0, HV_S_OK, '1'],
          [2, HV_S_OK, null],
          [0, HV_S_CONT, null],
        ],
      );
      await guest.stop();
      await host.stop();
    });

    test('pipe and packet mode put the same bytes on the wire: vmbuspipe_hdr + icmsg_hdr + body', async () => {
      const payloads: Record<string, Uint8Array> = {};
      for (const pipe of [true, false]) {
        const rig = await makeRig();
        const vsp = new HeartbeatVsp(rig.host, { pipe });
        vsp.start();
        const got = new Promise<Uint8Array>((resolve) =>
          rawClient(rig, HEARTBEAT_SERVICE.classId, pipe, (_C, _ch, p) => resolve(p)),
        );
        payloads[String(pipe)] = await got;
        await vsp.stop();
        await rig.close();
      }
      const inPipe = payloads.true!; // the KMCL stripped the pipe header
      const raw = payloads.false!; // what Linux hv_utils reads
      assert.equal(readU32(raw, 0), 1, 'vmbuspipe_hdr.flags = VMBUS_PIPE_TYPE_DATA');
      assert.equal(readU32(raw, 4), inPipe.length, 'vmbuspipe_hdr.msgsize');
      assert.deepEqual(raw.subarray(8, 8 + inPipe.length), inPipe);
      const h = readIcHeader(raw, true);
      assert.equal(h.messageType, 0, 'a negotiate request');
      assert.equal(h.flags, 3, 'TRANSACTION | REQUEST');
      assert.equal(inPipe.length, 20 + 8 + 4 * (2 + 2));
    });

    rigTest('packet-mode drivers interoperate too', async (rig) => {
      const host = startHostVsps(rig.host, { ic: { pipe: false } });
      const guest = startGuestVscs(rig.guest, { ic: { pipe: false } });
      await host.ready();
      const r = await host.heartbeat.heartbeat();
      assert.equal(r.acked, 1n);
      assert.equal((await host.kvp.set(KVP_POOL_GUEST, 'k', 'v')).status, HV_S_OK);
      assert.equal(guest.kvp.pools.get(KVP_POOL_GUEST, 'k'), 'v');
      await guest.stop();
      await host.stop();
    });

    rigTest(
      'a guest answering garbage fails the negotiation; a well-behaved guest then renegotiates',
      async (rig) => {
        const vsp = new HeartbeatVsp(rig.host);
        vsp.start();
        const errors: Error[] = [];
        vsp.events.on((e) => {
          if (e.kind === 'protocol-error') errors.push(e.error);
        });
        const ready = vsp.ready();
        const raw = rawClient(rig, HEARTBEAT_SERVICE.classId, true, (C, ch) => {
          sendRaw(C, ch, Uint8Array.of(1, 2, 3)); // not even an icmsg_hdr
        });
        await assert.rejects(ready, (e: unknown) => e instanceof DeviceDriverError && e.code === 'protocol');
        assert.equal(vsp.state, 'failed');
        assert.equal(errors.length, 1);
        assert.equal(vsp.counters.errors, 1);
        await assert.rejects(vsp.heartbeat(), (e: unknown) => e instanceof DeviceDriverError);
        await raw.C.VmbChannelDisable(raw.ch);
        raw.C.VmbChannelCleanup(raw.ch);
        await rig.idle();
        assert.equal(vsp.state, 'offered');
        const vsc = new HeartbeatVsc(rig.guest);
        vsc.start();
        assert.deepEqual(await vsp.ready(), { framework: UTIL_FW_VERSION, message: HB_VERSION });
        assert.equal((await vsp.heartbeat()).acked, 1n);
        await vsc.stop();
        await vsp.stop();
        assert.deepEqual(rig.callbackErrors, []);
      },
    );

    rigTest('a guest that never answers times out instead of hanging', async (rig) => {
      const vsp = new ShutdownVsp(rig.host, { requestTimeoutMs: 40 });
      vsp.start();
      const keepAlive = setTimeout(() => {}, 5000); // the driver's timers do not hold the process
      rawClient(rig, SHUTDOWN_SERVICE.classId, true, () => {});
      await assert.rejects(
        vsp.ready(),
        (e: unknown) => e instanceof DeviceDriverError && e.code === 'timeout',
      );
      assert.equal(vsp.state, 'failed');
      await assert.rejects(vsp.shutdown(), (e: unknown) => e instanceof DeviceDriverError);
      await vsp.stop();
      clearTimeout(keepAlive);
      assert.equal(vsp.state, 'stopped');
    });

    rigTest(
      'a host sending malformed messages: the guest drops them and keeps answering good ones',
      async (rig) => {
        const S = serverTable(rig.host);
        const ch = S.VmbChannelAllocate(null, true).Channel!;
        assert.equal(
          S.VmbServerChannelInitSetTargetInterfaceId(ch, SHUTDOWN_SERVICE.classId, IC_INSTANCE_IDS.shutdown),
          0,
        );
        assert.equal(S.VmbServerChannelInitSetFlags(ch, VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE), 0);
        const answers: Uint8Array[] = [];
        assert.equal(
          S.VmbChannelInitSetProcessPacketCallbacks(ch, (_c, pkt, buf, len) => {
            answers.push(buf.slice(0, len));
            S.VmbChannelPacketComplete(pkt, null, 0);
          }),
          0,
        );
        const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
        let started!: () => void;
        const up = new Promise<void>((r) => {
          started = r;
        });
        cb.EvtChannelPostStarted = () => started();
        assert.equal(S.VmbChannelInitSetStateChangeCallbacks(ch, cb), 0);
        assert.equal(S.VmbChannelEnable(ch), 0);
        S.VmbChannelStart(ch);
        const vsc = new ShutdownVsc(rig.guest);
        vsc.start();
        await up;
        const send = (b: Uint8Array): void => {
          const p = S.VmbPacketAllocate(ch)!;
          assert.equal(S.VmbPacketSend(p, b, b.length, null, 0), 0);
        };
        const errors: Error[] = [];
        vsc.events.on((e) => {
          if (e.kind === 'protocol-error') errors.push(e.error);
        });
        send(Uint8Array.of(9, 9)); // shorter than an icmsg_hdr
        const badCounts = encodeIcNegotiateRequest(false, 0, [UTIL_FW_VERSION], [SD_VERSION_3_2]);
        badCounts[20] = 200; // icframe_vercnt over 100
        send(badCounts);
        send(encodeIcNegotiateRequest(false, 7, [UTIL_FW_VERSION], [SD_VERSION_3_2]));
        await vsc.negotiated();
        await rig.idle();
        assert.equal(errors.length, 2);
        assert.equal(vsc.counters.errors, 2);
        assert.equal(answers.length, 1, 'only the good message was answered');
        const h = readIcHeader(answers[0]!, false);
        assert.equal(h.transactionId, 7);
        assert.equal(h.flags, 5, 'TRANSACTION | RESPONSE');
        await vsc.stop();
        await S.VmbChannelDisable(ch);
        S.VmbChannelCleanup(ch);
        assert.deepEqual(rig.callbackErrors, []);
      },
    );

    rigTest('periodic heartbeats and time samples run until stopped', async (rig) => {
      const host = startHostVsps(rig.host);
      const guest = startGuestVscs(rig.guest);
      await host.ready();
      const keepAlive = setInterval(() => {}, 1000); // the drivers' timers do not hold the process
      try {
        const rounds: bigint[] = [];
        await new Promise<void>((resolve, reject) => {
          host.heartbeat.startPeriodic(2, (r) => {
            if (r instanceof Error) return reject(r);
            rounds.push(r.acked);
            if (rounds.length === 3) resolve();
          });
        });
        host.heartbeat.stopPeriodic();
        assert.deepEqual(rounds.slice(0, 3), [1n, 2n, 3n]);
        const set = guest.timesync.events.next('time-set');
        host.timesync.startPeriodic(2);
        await set;
        await guest.timesync.events.next('time', (e) => !e.sync);
        host.timesync.stopPeriodic();
        await rig.idle();
        const beats = guest.heartbeat.beats;
        const samples = guest.timesync.samples;
        assert.ok(samples >= 1);
        await new Promise((r) => setTimeout(r, 20));
        await rig.idle();
        assert.equal(guest.heartbeat.beats, beats, 'no heartbeat after stopPeriodic');
        assert.equal(guest.timesync.samples, samples, 'no sample after stopPeriodic');
        assert.equal(host.heartbeat.missed, 0);
      } finally {
        clearInterval(keepAlive);
      }
      await guest.stop();
      await host.stop();
    });

    rigTest('the summary lists every channel with its traffic', async (rig) => {
      const host = startHostVsps(rig.host);
      const guest = startGuestVscs(rig.guest);
      await host.ready();
      await host.heartbeat.heartbeat();
      const s = host.summary();
      assert.deepEqual(
        s.channels.map((c) => c.name),
        ['heartbeat', 'shutdown', 'timesync', 'kvp'],
      );
      assert.equal(s.io, null);
      assert.equal(s.channels[0]!.packetsOut, 2);
      assert.ok(s.channels.every((c) => c.packetsIn >= 1 && c.errors === 0));
      const g = guest.summary();
      assert.equal(g.channels[0]!.packetsIn, 2);
      await guest.stop();
      await host.stop();
    });
  });
}
