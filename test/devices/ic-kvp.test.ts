import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { HV_E_FAIL, HV_S_CONT, HV_S_OK } from '../../src/devices/ic/constants.js';
import {
  KVP_MESSAGE_SIZE,
  KVP_OP_DELETE,
  KVP_OP_ENUMERATE,
  KVP_OP_GET,
  KVP_OP_SET,
  KVP_POOL_AUTO,
  KVP_POOL_EXTERNAL,
  KVP_POOL_GUEST,
  KvpGuest,
  type KvpGuestOptions,
  KvpHost,
  KvpPools,
  REG_QWORD,
  REG_SZ,
} from '../../src/devices/ic/kvp.js';
import { cat, hex, le32, utf16Field, wireError, zeros } from './helpers.js';

function pair(options: KvpGuestOptions = {}): { host: KvpHost; guest: KvpGuest } {
  const host = new KvpHost({ pipeHeader: options.pipeHeader });
  const guest = new KvpGuest(options);
  const ev = host.handle(guest.handle(host.start()).response!);
  assert.deepEqual(ev, { kind: 'negotiated', framework: 0x30000, message: 0x40000 });
  return { host, guest };
}

/** The 28 header bytes of a KVP message with transaction id `tid` and flags. */
function header(tid: number, flags: number, status = '00000000'): Uint8Array {
  return cat(hex(`01000000 280a0000 03000000 0200 04000000 140a ${status}`), Uint8Array.of(tid, flags, 0, 0));
}

/** hv_kvp_exchg_msg_value. */
function exchg(type: number, key: string, keySize: number, value: Uint8Array, valueSize: number): Uint8Array {
  return cat(le32(type), le32(keySize), le32(valueSize), utf16Field(key, 512), value);
}

describe('KVP messages', () => {
  test('SET of a string, byte for byte, stored by the guest', () => {
    const { host, guest } = pair();
    const req = host.set(KVP_POOL_GUEST, 'ab', 'xyz');
    const body = cat(hex('01 01 0000'), exchg(REG_SZ, 'ab', 6, utf16Field('xyz', 2048), 8), zeros(4));
    assert.equal(req.length, 28 + KVP_MESSAGE_SIZE);
    assert.deepEqual(req, cat(header(1, 3), body));
    const r = guest.handle(req);
    assert.deepEqual(r.event, {
      kind: 'kvp',
      operation: KVP_OP_SET,
      pool: 1,
      key: 'ab',
      value: 'xyz',
      status: 0,
    });
    assert.deepEqual(r.response, cat(header(1, 5), body));
    assert.equal(guest.pools.get(KVP_POOL_GUEST, 'ab'), 'xyz');
    assert.deepEqual(host.handle(r.response!), {
      kind: 'kvp-result',
      operation: KVP_OP_SET,
      pool: 1,
      status: HV_S_OK,
      key: null,
      value: null,
      valueType: null,
    });
  });

  test('GET answers the value as REG_SZ in kvp_get.data', () => {
    const { host, guest } = pair();
    guest.pools.set(KVP_POOL_GUEST, 'ab', 'xyz');
    const req = host.get(KVP_POOL_GUEST, 'ab');
    assert.deepEqual(req, cat(header(1, 3), hex('00 01 0000'), exchg(0, 'ab', 6, zeros(2048), 0), zeros(4)));
    const r = guest.handle(req);
    assert.deepEqual(
      r.response,
      cat(header(1, 5), hex('00 01 0000'), exchg(REG_SZ, 'ab', 6, utf16Field('xyz', 2048), 8), zeros(4)),
    );
    const ev = host.handle(r.response!);
    assert.equal(ev.kind, 'kvp-result');
    assert.deepEqual(ev, {
      kind: 'kvp-result',
      operation: KVP_OP_GET,
      pool: 1,
      status: 0,
      key: null,
      value: 'xyz',
      valueType: REG_SZ,
    });
  });

  test('GET of a missing key answers HV_S_CONT with the body unchanged', () => {
    const { host, guest } = pair();
    const req = host.get(KVP_POOL_EXTERNAL, 'nope');
    const r = guest.handle(req);
    assert.equal((r.event as { status: number }).status, HV_S_CONT);
    const expected = new Uint8Array(req);
    expected.set(hex('03010780 01 05'), 20);
    assert.deepEqual(r.response, expected);
    assert.equal((host.handle(r.response!) as { status: number }).status, HV_S_CONT);
  });

  test('ENUMERATE fills key and value; past the end answers HV_S_CONT', () => {
    const { host, guest } = pair();
    guest.pools.set(KVP_POOL_EXTERNAL, 'k1', 'v1');
    guest.pools.set(KVP_POOL_EXTERNAL, 'k2', 'value two');
    const req = host.enumerate(KVP_POOL_EXTERNAL, 1);
    assert.deepEqual(req, cat(header(1, 3), hex('03 00 0000'), le32(1), zeros(2572)));
    const r = guest.handle(req);
    assert.deepEqual(
      r.response,
      cat(
        header(1, 5),
        hex('03 00 0000'),
        le32(1),
        exchg(REG_SZ, 'k2', 6, utf16Field('value two', 2048), 20),
      ),
    );
    assert.deepEqual(host.handle(r.response!), {
      kind: 'kvp-result',
      operation: KVP_OP_ENUMERATE,
      pool: 0,
      status: 0,
      key: 'k2',
      value: 'value two',
      valueType: REG_SZ,
    });
    const end = guest.handle(host.enumerate(KVP_POOL_EXTERNAL, 2));
    assert.equal((end.event as { status: number }).status, HV_S_CONT);
    assert.equal((host.handle(end.response!) as { status: number }).status, HV_S_CONT);
  });

  test('DELETE, byte for byte; deleting twice answers HV_S_CONT', () => {
    const { host, guest } = pair();
    guest.pools.set(KVP_POOL_GUEST, 'ab', '1');
    const req = host.delete(KVP_POOL_GUEST, 'ab');
    assert.deepEqual(req, cat(header(1, 3), hex('02 01 0000'), le32(6), utf16Field('ab', 512), zeros(2060)));
    const r = guest.handle(req);
    assert.deepEqual(r.event, {
      kind: 'kvp',
      operation: KVP_OP_DELETE,
      pool: 1,
      key: 'ab',
      value: null,
      status: 0,
    });
    assert.equal(guest.pools.get(KVP_POOL_GUEST, 'ab'), undefined);
    host.handle(r.response!);
    const again = guest.handle(host.delete(KVP_POOL_GUEST, 'ab'));
    assert.equal((again.event as { status: number }).status, HV_S_CONT);
  });

  test('integer values are stored in decimal (REG_U32, REG_U64, REG_QWORD)', () => {
    const { host, guest } = pair();
    const roundTrip = (m: Uint8Array) => host.handle(guest.handle(m).response!);
    const u32 = host.set(KVP_POOL_EXTERNAL, 'n', { u32: 4000000000 });
    assert.deepEqual(u32.subarray(32, 44), cat(le32(4), le32(4), le32(4)));
    assert.deepEqual(u32.subarray(32 + 524, 32 + 528), le32(4000000000));
    roundTrip(u32);
    assert.equal(guest.pools.get(KVP_POOL_EXTERNAL, 'n'), '4000000000');
    const u64 = host.set(KVP_POOL_EXTERNAL, 'big', { u64: 1n << 40n });
    assert.deepEqual(u64.subarray(32, 44), cat(le32(8), le32(8), le32(8)));
    roundTrip(u64);
    assert.equal(guest.pools.get(KVP_POOL_EXTERNAL, 'big'), '1099511627776');
    const q = host.set(KVP_POOL_EXTERNAL, 'q', { u64: 7n });
    q.set(le32(REG_QWORD), 32);
    roundTrip(q);
    assert.equal(guest.pools.get(KVP_POOL_EXTERNAL, 'q'), '7');
  });

  test('the auto pool enumerates the generated entries', () => {
    const { host, guest } = pair({
      auto: [
        ['FullyQualifiedDomainName', 'vm1.example'],
        ['OSName', 'Linux'],
      ],
    });
    const ev = host.handle(guest.handle(host.enumerate(KVP_POOL_AUTO, 1)).response!);
    assert.equal((ev as { key: string }).key, 'OSName');
    assert.equal((ev as { value: string }).value, 'Linux');
    const end = host.handle(guest.handle(host.enumerate(KVP_POOL_AUTO, 2)).response!);
    assert.equal((end as { status: number }).status, HV_S_CONT);
  });

  test('long answers are cut to 254 / 1022 UTF-16 units as Linux does', () => {
    const { host, guest } = pair();
    guest.pools.set(KVP_POOL_EXTERNAL, 'k'.repeat(300), 'v'.repeat(1023));
    const r = guest.handle(host.enumerate(KVP_POOL_EXTERNAL, 0)).response!;
    const v = 28 + 4 + 4;
    assert.deepEqual(r.subarray(v + 4, v + 12), cat(le32(510), le32(2046)));
    const ev = host.handle(r) as { key: string; value: string };
    assert.equal(ev.key, 'k'.repeat(254));
    assert.equal(ev.value, 'v'.repeat(1022));
  });

  test('without the pipe header (KMCL pipe mode) the same exchange works', () => {
    const { host, guest } = pair({ pipeHeader: false });
    const req = host.set(KVP_POOL_GUEST, 'a', 'b');
    assert.equal(req.length, 20 + KVP_MESSAGE_SIZE);
    assert.deepEqual(req.subarray(20, 24), hex('01 01 0000'));
    host.handle(guest.handle(req).response!);
    assert.equal(guest.pools.get(KVP_POOL_GUEST, 'a'), 'b');
  });
});

describe('KVP pools', () => {
  test('set replaces in place, delete keeps order, full pools refuse', () => {
    const p = new KvpPools({ maxRecordsPerPool: 3 });
    assert.ok(p.set(0, 'a', '1'));
    assert.ok(p.set(0, 'b', '2'));
    assert.ok(p.set(0, 'c', '3'));
    assert.ok(p.set(0, 'b', '22'));
    assert.equal(p.set(0, 'd', '4'), false);
    assert.ok(p.delete(0, 'a'));
    assert.deepEqual(p.entries(0), [
      { key: 'b', value: '22' },
      { key: 'c', value: '3' },
    ]);
    assert.deepEqual(p.enumerate(0, 1), { key: 'c', value: '3' });
    assert.equal(p.enumerate(0, 2), undefined);
    assert.deepEqual(p.entries(1), []);
    assert.throws(() => p.get(5, 'a'), RangeError);
  });

  test('a SET into a full pool answers HV_S_CONT', () => {
    const { host, guest } = pair({ maxRecordsPerPool: 1 });
    host.handle(guest.handle(host.set(0, 'a', '1')).response!);
    const r = guest.handle(host.set(0, 'b', '2'));
    assert.equal((r.event as { status: number }).status, HV_S_CONT);
  });
});

describe('KVP hostile input', () => {
  function setMsg(): Uint8Array {
    const { host } = pair();
    return host.set(KVP_POOL_GUEST, 'ab', 'xyz');
  }

  test('key and value sizes past their fields are refused', () => {
    const g = new KvpGuest();
    const big = setMsg();
    big.set(le32(514), 32 + 4);
    assert.throws(() => g.handle(big), wireError('out-of-range', 'hv_kvp_exchg_msg_value.key_size'));
    const bigValue = setMsg();
    bigValue.set(le32(4096), 32 + 8);
    assert.throws(() => g.handle(bigValue), wireError('out-of-range', 'hv_kvp_exchg_msg_value.value_size'));
    const del = pair().host.delete(0, 'x');
    del.set(le32(0xffffffff), 32);
    assert.throws(() => g.handle(del), wireError('out-of-range', 'hv_kvp_msg_delete.key_size'));
  });

  test('bad pools, unknown operations and short bodies are refused', () => {
    const g = new KvpGuest();
    const pool = setMsg();
    pool[29] = 5;
    assert.throws(() => g.handle(pool), wireError('out-of-range', 'hv_kvp_hdr.pool'));
    const op = setMsg();
    op[28] = 6;
    assert.throws(() => g.handle(op), wireError('unknown-type', 'hv_kvp_hdr.operation'));
    assert.throws(() => g.handle(setMsg().subarray(0, 31)), wireError('truncated', 'hv_kvp_hdr'));
    assert.throws(
      () => g.handle(setMsg().subarray(0, 28 + 4 + 2571)),
      wireError('truncated', 'hv_kvp_msg.body'),
    );
    assert.deepEqual(g.pools.entries(KVP_POOL_GUEST), []);
  });

  test('IP-info operations are answered HV_E_FAIL', () => {
    const ip = setMsg().subarray(0, 40);
    ip[28] = 4;
    const r = new KvpGuest().handle(ip);
    assert.equal((r.event as { status: number }).status, HV_E_FAIL);
    assert.deepEqual(r.response!.subarray(20, 24), hex('05400080'));
  });

  test('the host refuses answers that change the operation or carry bad sizes', () => {
    const { host, guest } = pair();
    guest.pools.set(0, 'k', 'v');
    const r = guest.handle(host.enumerate(0, 0)).response!;
    const swapped = new Uint8Array(r);
    swapped[28] = KVP_OP_GET;
    assert.throws(() => host.handle(swapped), wireError('inconsistent', 'hv_kvp_hdr'));
    const bad = new Uint8Array(r);
    bad.set(le32(600), 28 + 4 + 4 + 4);
    assert.throws(() => host.handle(bad), wireError('out-of-range', 'hv_kvp_exchg_msg_value.key_size'));
    assert.equal((host.handle(r) as { key: string }).key, 'k');
  });

  test('host-side contract violations are plain Errors', () => {
    const { host } = pair();
    assert.throws(() => host.set(0, 'k'.repeat(256), 'v'), RangeError);
    assert.throws(() => host.set(0, 'k', 'v'.repeat(1024)), RangeError);
    assert.throws(() => host.get(7, 'k'), RangeError);
    host.get(0, 'k');
    assert.throws(() => host.get(0, 'k'), /outstanding/);
  });
});
