import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { HV_E_FAIL, HV_S_OK, icVersion } from '../../src/devices/ic/constants.js';
import { HeartbeatGuest, HeartbeatHost } from '../../src/devices/ic/heartbeat.js';
import { KvpGuest } from '../../src/devices/ic/kvp.js';
import type { IcGuestService, IcHostService } from '../../src/devices/ic/service.js';
import { ShutdownGuest, ShutdownHost } from '../../src/devices/ic/shutdown.js';
import {
  icTimeToUnixMs,
  TimeSyncGuest,
  TimeSyncHost,
  unixMsToIcTime,
  WLTIMEDELTA,
} from '../../src/devices/ic/timesync.js';
import { cat, hex, le64, utf16Field, wireError, zeros } from './helpers.js';

function negotiate<E, F>(host: IcHostService<E>, guest: IcGuestService<F>): void {
  const ev = host.handle(guest.handle(host.start()).response!);
  assert.equal((ev as { kind: string }).kind, 'negotiated');
}

describe('heartbeat', () => {
  test('request and answer byte for byte; the host sees seq + 1', () => {
    const host = new HeartbeatHost();
    const guest = new HeartbeatGuest();
    negotiate(host, guest);
    const req = host.heartbeat(0x0102030405060708n);
    assert.deepEqual(
      req,
      cat(
        hex('01000000 3c000000 03000000 0100 03000000 2800 00000000 01 03 0000 0807060504030201'),
        zeros(32),
      ),
    );
    const r = guest.handle(req);
    assert.deepEqual(r.event, { kind: 'heartbeat', sequence: 0x0102030405060708n });
    assert.deepEqual(
      r.response,
      cat(
        hex('01000000 3c000000 03000000 0100 03000000 2800 00000000 01 05 0000 0907060504030201'),
        zeros(32),
      ),
    );
    assert.deepEqual(host.handle(r.response!), {
      kind: 'heartbeat-ack',
      sequence: 0x0102030405060709n,
      status: 0,
    });
    assert.equal(host.busy, false);
  });

  test('the sequence number wraps at 2^64', () => {
    const host = new HeartbeatHost();
    const guest = new HeartbeatGuest();
    negotiate(host, guest);
    const r = guest.handle(host.heartbeat(0xffffffffffffffffn));
    assert.deepEqual(r.response!.subarray(28, 36), zeros(8));
    assert.equal((host.handle(r.response!) as { sequence: bigint }).sequence, 0n);
  });

  test('a guest reading only seq_num accepts a short body; shorter is a typed error', () => {
    const guest = new HeartbeatGuest();
    const msg = hex('01000000 1c000000 03000000 0100 03000000 0800 00000000 00 03 0000 0500000000000000');
    assert.deepEqual(guest.handle(msg).response!.subarray(28), hex('0600000000000000'));
    assert.throws(
      () => guest.handle(msg.subarray(0, 35)),
      wireError('truncated', 'heartbeat_msg_data.seq_num'),
    );
  });

  test('a wrong sequence in the answer is refused', () => {
    const host = new HeartbeatHost();
    const guest = new HeartbeatGuest();
    negotiate(host, guest);
    const resp = guest.handle(host.heartbeat(10n)).response!;
    resp[28] = 12;
    assert.throws(() => host.handle(resp), wireError('inconsistent', 'heartbeat_msg_data.seq_num'));
  });

  test('one heartbeat at a time', () => {
    const host = new HeartbeatHost();
    negotiate(host, new HeartbeatGuest());
    host.heartbeat(1n);
    assert.equal(host.busy, true);
    assert.throws(() => host.heartbeat(2n), /already outstanding/);
  });

  test('unknown message types get HV_E_FAIL (KVP drops them)', () => {
    const msg = cat(hex('01000000 1c000000 03000000 0900 03000000 0800 00000000 00 03 0000'), zeros(8));
    const r = new HeartbeatGuest().handle(msg);
    assert.deepEqual(r.event, { kind: 'unknown-message', messageType: 9 });
    assert.deepEqual(r.response!.subarray(8 + 12, 8 + 18), hex('05400080 00 05'));
    const k = new KvpGuest().handle(msg);
    assert.equal(k.response, null);
    assert.deepEqual(k.event, { kind: 'unknown-message', messageType: 9 });
  });
});

describe('shutdown', () => {
  test('a forced restart request, byte for byte, accepted by the guest', () => {
    const host = new ShutdownHost();
    const guest = new ShutdownGuest();
    negotiate(host, guest);
    assert.equal(host.message, icVersion(3, 2));
    const req = host.shutdown({ action: 'restart', force: true, timeoutSeconds: 30, message: 'bye' });
    const expected = cat(
      hex('01000000 20080000 03000000 0300 03000200 0c08 00000000 01 03 0000'),
      hex('00000080 1e000000 03000000'),
      utf16Field('bye', 2048),
    );
    assert.deepEqual(req, expected);
    const r = guest.handle(req);
    assert.deepEqual(r.event, {
      kind: 'shutdown',
      action: 'restart',
      force: true,
      accepted: true,
      request: { reasonCode: 0x80000000, timeoutSeconds: 30, flags: 3, message: 'bye' },
    });
    const resp = new Uint8Array(expected);
    resp[8 + 17] = 0x05;
    assert.deepEqual(r.response, resp);
    assert.deepEqual(host.handle(r.response!), { kind: 'shutdown-result', status: HV_S_OK, accepted: true });
  });

  test('hibernate is refused unless supported; unknown flags are refused', () => {
    const host = new ShutdownHost();
    const guest = new ShutdownGuest();
    negotiate(host, guest);
    const r = guest.handle(host.shutdown({ action: 'hibernate' }));
    assert.equal((r.event as { accepted: boolean }).accepted, false);
    assert.deepEqual(r.response!.subarray(20, 24), hex('05400080'));
    assert.deepEqual(host.handle(r.response!), {
      kind: 'shutdown-result',
      status: HV_E_FAIL,
      accepted: false,
    });

    const yes = new ShutdownGuest({ hibernationSupported: true });
    const h2 = new ShutdownHost();
    negotiate(h2, yes);
    const ok = yes.handle(h2.shutdown({ action: 'hibernate' }));
    assert.equal((ok.event as { action: string }).action, 'hibernate');
    assert.deepEqual(ok.response!.subarray(20, 24), hex('00000000'));
    assert.deepEqual(h2.handle(ok.response!), { kind: 'shutdown-result', status: HV_S_OK, accepted: true });

    const bad = h2.shutdown();
    bad[28 + 8] = 8;
    const rb = new ShutdownGuest().handle(bad);
    assert.equal((rb.event as { action: unknown }).action, null);
    assert.deepEqual(rb.response!.subarray(20, 24), hex('05400080'));
  });

  test('restart and hibernate need service versions 3.1 and 3.2', () => {
    const host = new ShutdownHost({ messageVersions: [icVersion(1, 0), icVersion(3, 0)] });
    negotiate(host, new ShutdownGuest());
    assert.equal(host.message, icVersion(3, 0));
    assert.throws(() => host.shutdown({ action: 'restart' }), /3\.1/);
    assert.throws(() => host.shutdown({ action: 'hibernate' }), /3\.2/);
    assert.equal(host.busy, false);
    assert.equal(host.shutdown().length, 28 + 2060);
  });

  test('a shutdown body shorter than shutdown_msg_data is a typed error', () => {
    const host = new ShutdownHost();
    const guest = new ShutdownGuest();
    negotiate(host, guest);
    const req = host.shutdown();
    assert.throws(
      () => guest.handle(req.subarray(0, req.length - 1)),
      wireError('truncated', 'shutdown_msg_data'),
    );
  });
});

describe('time sync', () => {
  test('v4 sync message (ictimesync_ref_data), byte for byte, and its echo', () => {
    const host = new TimeSyncHost();
    const guest = new TimeSyncGuest();
    negotiate(host, guest);
    assert.equal(guest.message, icVersion(4, 0));
    const req = host.time({ parentTime: 0x0123456789abcdefn, referenceTime: 0x1122334455n, sync: true });
    assert.deepEqual(
      req,
      hex(`01000000 2c000000 03000000 0400 04000000 1800 00000000 00 00 0000
           efcdab8967452301 5544332211000000 01 00 00 0000000000`),
    );
    const r = guest.handle(req);
    assert.deepEqual(r.event, {
      kind: 'time',
      sample: {
        parentTime: 0x0123456789abcdefn,
        referenceTime: 0x1122334455n,
        flags: 1,
        childTime: 0n,
        roundTripTime: 0n,
        leapFlags: 0,
        stratum: 0,
      },
      sync: true,
      isSample: false,
    });
    assert.equal(r.response![8 + 17], 0x05);
    assert.deepEqual(r.response!.subarray(28), req.subarray(28));
    assert.deepEqual(host.handle(r.response!), { kind: 'time-echo', status: 0 });
    // samples are not transactions: several may be in flight
    host.time({ parentTime: 1n, sync: false });
    host.time({ parentTime: 2n, sync: false });
  });

  test('v3 sample message (ictimesync_data)', () => {
    const host = new TimeSyncHost({ messageVersions: [icVersion(1, 0), icVersion(3, 0)] });
    const guest = new TimeSyncGuest();
    negotiate(host, guest);
    const req = host.time({ parentTime: WLTIMEDELTA, sync: false });
    assert.deepEqual(
      req,
      cat(
        hex('01000000 30000000 03000000 0400 03000000 1c00 00000000 00 00 0000'),
        le64(WLTIMEDELTA),
        zeros(16),
        hex('02 000000'),
      ),
    );
    const ev = guest.handle(req).event as {
      sample: { referenceTime: unknown; parentTime: bigint };
      isSample: boolean;
    };
    assert.equal(ev.sample.referenceTime, null);
    assert.equal(ev.isSample, true);
    assert.equal(icTimeToUnixMs(ev.sample.parentTime), 0);
  });

  test('bodies shorter than the negotiated format are typed errors', () => {
    const host = new TimeSyncHost();
    const guest = new TimeSyncGuest();
    negotiate(host, guest);
    const req = host.time({ parentTime: 5n, sync: true });
    assert.doesNotThrow(() => guest.handle(req.subarray(0, 28 + 22)));
    assert.throws(
      () => guest.handle(req.subarray(0, 28 + 21)),
      wireError('truncated', 'ictimesync_ref_data'),
    );
    const old = new TimeSyncGuest();
    assert.throws(() => old.handle(req.subarray(0, 28 + 24)), wireError('truncated', 'ictimesync_data'));
  });

  test('time base conversion', () => {
    assert.equal(unixMsToIcTime(0), WLTIMEDELTA);
    assert.equal(unixMsToIcTime(1500), WLTIMEDELTA + 15000000n);
    assert.equal(icTimeToUnixMs(unixMsToIcTime(1700000000123)), 1700000000123);
  });
});
