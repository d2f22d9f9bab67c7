// The interface query and tables (spec 1.4, 4.1) and, table-driven, the documented behaviour and
// errors of each of the 55 functions not already exercised by the scenario tests.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { currentExecutionContext } from '../../src/kmcl/context.js';
import {
  KMCL_CLIENT_FUNCTION_COUNT,
  KMCL_CLIENT_FUNCTION_NAMES,
  KMCL_CLIENT_INTERFACE_TYPE,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  KMCL_SERVER_INTERFACE_TYPE,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  KMCL_SERVER_ONLY_FUNCTION_COUNT,
  KMCL_SERVER_ONLY_FUNCTION_NAMES,
  KmclContractViolation,
  KmclProvider,
  kmclChannelInfo,
  LoopbackHost,
  NT_SUCCESS,
  ntStatusName,
  queryInterface,
  runInContext,
  STATUS_BUFFER_OVERFLOW,
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_HANDLE,
  STATUS_INVALID_PARAMETER,
  STATUS_INVALID_PARAMETER_1,
  STATUS_INVALID_PARAMETER_2,
  STATUS_INVALID_PARAMETER_3,
  STATUS_INVALID_PARAMETER_4,
  STATUS_MORE_PROCESSING_REQUIRED,
  STATUS_NOT_SUPPORTED,
  STATUS_PENDING,
  STATUS_SUCCESS,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_SIZE,
  type VMBCHANNEL,
  type VmbusUserHandle,
} from '../../src/kmcl/index.js';
import { Guid } from '../../src/wire/guid.js';
import { expectStatus, INSTANCE, makeClient, makeRig, makeServer, openPair, TYPE } from './harness.js';

describe('kmcl interface query', () => {
  test('NTSTATUS helpers: severity and names', () => {
    assert.equal(NT_SUCCESS(STATUS_SUCCESS), true);
    assert.equal(NT_SUCCESS(STATUS_PENDING), true);
    assert.equal(NT_SUCCESS(STATUS_BUFFER_OVERFLOW), false);
    assert.equal(NT_SUCCESS(STATUS_MORE_PROCESSING_REQUIRED), false);
    assert.equal(STATUS_INVALID_PARAMETER, 0xc000000d | 0);
    assert.equal(ntStatusName(STATUS_INVALID_PARAMETER_2), 'STATUS_INVALID_PARAMETER_2');
    assert.equal(ntStatusName(0xc0000055), '0xC0000055');
  });

  test('client and server tables: documented members, header, frozen', () => {
    const rig = makeRig();
    assert.equal(KMCL_CLIENT_FUNCTION_NAMES.length, KMCL_CLIENT_FUNCTION_COUNT);
    assert.equal(KMCL_SERVER_ONLY_FUNCTION_NAMES.length, KMCL_SERVER_ONLY_FUNCTION_COUNT);
    const header = ['Size', 'Version', 'Context', 'InterfaceReference', 'InterfaceDereference'];
    assert.deepEqual(Object.keys(rig.C).sort(), [...header, ...KMCL_CLIENT_FUNCTION_NAMES].sort());
    assert.deepEqual(
      Object.keys(rig.S).sort(),
      [...header, ...KMCL_CLIENT_FUNCTION_NAMES, ...KMCL_SERVER_ONLY_FUNCTION_NAMES].sort(),
    );
    for (const name of [...KMCL_CLIENT_FUNCTION_NAMES, ...KMCL_SERVER_ONLY_FUNCTION_NAMES]) {
      assert.equal(typeof (rig.S as unknown as Record<string, unknown>)[name], 'function', name);
    }
    assert.equal(rig.C.Size, KMCL_CLIENT_INTERFACE_V1_SIZE);
    assert.equal(rig.S.Size, KMCL_SERVER_INTERFACE_V1_SIZE);
    assert.equal(rig.C.Version, KMCL_CLIENT_INTERFACE_VERSION_V1);
    assert.equal(rig.C.Context, rig.guest);
    assert.ok(Object.isFrozen(rig.C) && Object.isFrozen(rig.S));
    assert.throws(() => {
      (rig.C as unknown as Record<string, unknown>).VmbChannelEnable = null;
    }, TypeError);
  });

  test('query errors: unknown type or version, small size, server table on a guest', () => {
    const rig = makeRig();
    const q = (p: KmclProvider, t: Guid, size: number, v: number) => queryInterface(p, t, size, v).status;
    expectStatus(
      q(rig.guest, Guid.parse('11111111-2222-3333-4444-555555555555'), 9999, 1),
      STATUS_NOT_SUPPORTED,
    );
    expectStatus(
      q(rig.guest, KMCL_CLIENT_INTERFACE_TYPE, KMCL_CLIENT_INTERFACE_V1_SIZE, 2),
      STATUS_NOT_SUPPORTED,
    );
    expectStatus(
      q(rig.guest, KMCL_CLIENT_INTERFACE_TYPE, KMCL_CLIENT_INTERFACE_V1_SIZE - 8, 1),
      STATUS_INVALID_PARAMETER,
    );
    expectStatus(
      q(rig.guest, KMCL_SERVER_INTERFACE_TYPE, KMCL_SERVER_INTERFACE_V1_SIZE, 1),
      STATUS_NOT_SUPPORTED,
    );
    expectStatus(
      q(rig.host, KMCL_SERVER_INTERFACE_TYPE, KMCL_CLIENT_INTERFACE_V1_SIZE, 1),
      STATUS_INVALID_PARAMETER,
    );
    expectStatus(q(rig.host, KMCL_CLIENT_INTERFACE_TYPE, KMCL_SERVER_INTERFACE_V1_SIZE, 1), STATUS_SUCCESS);
    const larger = queryInterface(
      rig.host,
      KMCL_CLIENT_INTERFACE_TYPE,
      4096,
      KMCL_CLIENT_INTERFACE_VERSION_V1,
    );
    expectStatus(larger.status, STATUS_SUCCESS);
    assert.equal(larger.Interface!.Size, KMCL_CLIENT_INTERFACE_V1_SIZE);
  });

  test('reference counting: calls after the last InterfaceDereference throw', () => {
    const rig = makeRig();
    const r = queryInterface<KMCL_SERVER_INTERFACE_V1>(
      rig.host,
      KMCL_SERVER_INTERFACE_TYPE,
      KMCL_SERVER_INTERFACE_V1_SIZE,
      KMCL_SERVER_INTERFACE_VERSION_V1,
    );
    const I = r.Interface!;
    I.InterfaceReference(I.Context);
    I.InterfaceDereference(I.Context);
    expectStatus(I.VmbChannelAllocate(null, true).status, STATUS_SUCCESS);
    I.InterfaceDereference(I.Context);
    assert.throws(() => I.VmbChannelAllocate(null, true), {
      name: 'KmclContractViolation',
      code: 'interface-dereferenced',
    });
    assert.throws(() => I.VmbServerChannelInitSetFlags(null as unknown as VMBCHANNEL, 0), {
      code: 'interface-dereferenced',
    });
    // Another table from the same provider is unaffected.
    expectStatus(rig.S.VmbChannelAllocate(null, true).status, STATUS_SUCCESS);
  });
});

describe('kmcl functions', () => {
  test('VmbChannelAllocate: role must match the partition; blocking context only', () => {
    const rig = makeRig();
    expectStatus(rig.S.VmbChannelAllocate(null, false).status, STATUS_NOT_SUPPORTED);
    expectStatus(rig.C.VmbChannelAllocate(null, true).status, STATUS_NOT_SUPPORTED);
    assert.throws(() => runInContext('nonblocking', () => rig.C.VmbChannelAllocate(null, false)), {
      code: 'blocking-call-in-nonblocking-context',
    });
    assert.throws(() => rig.C.VmbChannelEnable({} as VMBCHANNEL), { code: 'bad-handle' });
    const s = rig.S.VmbChannelAllocate(null, true).Channel!;
    assert.throws(() => rig.C.VmbChannelEnable(s), { code: 'bad-handle' }, 'a channel of another provider');
  });

  test('Init* setters: success, argument errors, role errors (_1), after Enable and after Cleanup (_1)', () => {
    const rig = makeRig();
    const { S, C } = rig;
    const s = S.VmbChannelAllocate(null, true).Channel!;
    const c = C.VmbChannelAllocate(null, false).Channel!;
    const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT();
    const fn = () => {};
    type Row = [string, () => number, number];
    const rows: Row[] = [
      ['ClientContextSize ok', () => C.VmbChannelInitSetClientContextSize(c, 16), STATUS_SUCCESS],
      [
        'ClientContextSize bad',
        () => C.VmbChannelInitSetClientContextSize(c, -1),
        STATUS_INVALID_PARAMETER_2,
      ],
      ['Flags ok', () => C.VmbChannelInitSetFlags(c, 0), STATUS_SUCCESS],
      ['Flags bad bits', () => C.VmbChannelInitSetFlags(c, 2), STATUS_INVALID_PARAMETER_2],
      ['FriendlyName ok', () => C.VmbChannelInitSetFriendlyName(c, 'SynthVideo'), STATUS_SUCCESS],
      [
        'FriendlyName bad',
        () => C.VmbChannelInitSetFriendlyName(c, 7 as unknown as string),
        STATUS_INVALID_PARAMETER_2,
      ],
      ['MaxExternal ok', () => C.VmbChannelInitSetMaximumExternalData(c, 65536, 4), STATUS_SUCCESS],
      [
        'MaxExternal size 0',
        () => C.VmbChannelInitSetMaximumExternalData(c, 0, 4),
        STATUS_INVALID_PARAMETER_2,
      ],
      [
        'MaxExternal chain 0',
        () => C.VmbChannelInitSetMaximumExternalData(c, 10, 0),
        STATUS_INVALID_PARAMETER_3,
      ],
      ['MaxPacket ok', () => C.VmbChannelInitSetMaximumPacketSize(c, 1024), STATUS_SUCCESS],
      ['MaxPacket 0', () => C.VmbChannelInitSetMaximumPacketSize(c, 0), STATUS_INVALID_PARAMETER_2],
      ['ProcessPacket ok', () => C.VmbChannelInitSetProcessPacketCallbacks(c, fn, null), STATUS_SUCCESS],
      [
        'ProcessPacket missing',
        () => C.VmbChannelInitSetProcessPacketCallbacks(c, null as never, null),
        STATUS_INVALID_PARAMETER_2,
      ],
      [
        'ProcessingComplete bad',
        () => C.VmbChannelInitSetProcessPacketCallbacks(c, fn, 5 as never),
        STATUS_INVALID_PARAMETER_3,
      ],
      ['StateChange ok', () => C.VmbChannelInitSetStateChangeCallbacks(c, cb), STATUS_SUCCESS],
      [
        'StateChange version',
        () => C.VmbChannelInitSetStateChangeCallbacks(c, { ...cb, Version: 2 }),
        STATUS_INVALID_PARAMETER_2,
      ],
      [
        'StateChange size',
        () => C.VmbChannelInitSetStateChangeCallbacks(c, { ...cb, Size: 8 }),
        STATUS_INVALID_PARAMETER_2,
      ],
      [
        'StateChange member',
        () => C.VmbChannelInitSetStateChangeCallbacks(c, { ...cb, EvtChannelOpened: 1 as never }),
        STATUS_INVALID_PARAMETER_2,
      ],
      ['RingPages ok', () => C.VmbClientChannelInitSetRingBufferPageCount(c, 8, 4), STATUS_SUCCESS],
      [
        'RingPages in < 2',
        () => C.VmbClientChannelInitSetRingBufferPageCount(c, 1, 4),
        STATUS_INVALID_PARAMETER_2,
      ],
      [
        'RingPages out < 2',
        () => C.VmbClientChannelInitSetRingBufferPageCount(c, 4, 1),
        STATUS_INVALID_PARAMETER_3,
      ],
      [
        'RingPages on server',
        () => S.VmbClientChannelInitSetRingBufferPageCount(s, 4, 4),
        STATUS_INVALID_PARAMETER_1,
      ],
      ['TargetPnp ok', () => C.VmbClientChannelInitSetTargetPnp(c, TYPE, INSTANCE, null), STATUS_SUCCESS],
      [
        'TargetPnp type',
        () => C.VmbClientChannelInitSetTargetPnp(c, 'x' as never, null, null),
        STATUS_INVALID_PARAMETER_2,
      ],
      [
        'TargetPnp instance',
        () => C.VmbClientChannelInitSetTargetPnp(c, TYPE, 'x' as never, null),
        STATUS_INVALID_PARAMETER_3,
      ],
      [
        'TargetPnp callback',
        () => C.VmbClientChannelInitSetTargetPnp(c, TYPE, null, 1 as never),
        STATUS_INVALID_PARAMETER_4,
      ],
      [
        'TargetPnp on server',
        () => S.VmbClientChannelInitSetTargetPnp(s, TYPE, null, null),
        STATUS_INVALID_PARAMETER_1,
      ],
      ['ServerFlags ok', () => S.VmbServerChannelInitSetFlags(s, 0x1f), STATUS_SUCCESS],
      ['ServerFlags bad', () => S.VmbServerChannelInitSetFlags(s, 0x20), STATUS_INVALID_PARAMETER_2],
      ['ServerFlags on client', () => S.VmbServerChannelInitSetFlags(c, 0), STATUS_INVALID_PARAMETER_1],
      ['Mmio ok', () => S.VmbServerChannelInitSetMmioMegabytes(s, 0, 8), STATUS_SUCCESS],
      ['Mmio both 0', () => S.VmbServerChannelInitSetMmioMegabytes(s, 0, 0), STATUS_INVALID_PARAMETER],
      ['Mmio > u16', () => S.VmbServerChannelInitSetMmioMegabytes(s, 70000, 0), STATUS_INVALID_PARAMETER_2],
      [
        'Mmio optional > u16',
        () => S.VmbServerChannelInitSetMmioMegabytes(s, 1, -1),
        STATUS_INVALID_PARAMETER_3,
      ],
      [
        'SaveRestore ok',
        () => S.VmbServerChannelInitSetSaveRestorePacketCallbacks(s, fn as never, fn as never),
        STATUS_SUCCESS,
      ],
      [
        'SaveRestore bad save',
        () => S.VmbServerChannelInitSetSaveRestorePacketCallbacks(s, null as never, fn as never),
        STATUS_INVALID_PARAMETER_2,
      ],
      [
        'SaveRestore bad restore',
        () => S.VmbServerChannelInitSetSaveRestorePacketCallbacks(s, fn as never, null as never),
        STATUS_INVALID_PARAMETER_3,
      ],
      ['InterfaceId ok', () => S.VmbServerChannelInitSetTargetInterfaceId(s, TYPE, INSTANCE), STATUS_SUCCESS],
      [
        'InterfaceId type',
        () => S.VmbServerChannelInitSetTargetInterfaceId(s, null as never, INSTANCE),
        STATUS_INVALID_PARAMETER_2,
      ],
      [
        'InterfaceId instance',
        () => S.VmbServerChannelInitSetTargetInterfaceId(s, TYPE, null as never),
        STATUS_INVALID_PARAMETER_3,
      ],
      ['Vtl ok', () => S.VmbServerChannelInitSetTargetVtl(s, 2), STATUS_SUCCESS],
      ['Vtl bad', () => S.VmbServerChannelInitSetTargetVtl(s, 3), STATUS_INVALID_PARAMETER_2],
      ['VmbusHandle bad', () => S.VmbServerChannelInitSetVmbusHandle(s, {} as never), STATUS_INVALID_HANDLE],
      ['bad channel', () => C.VmbChannelInitSetFlags({} as VMBCHANNEL, 0), STATUS_INVALID_PARAMETER_1],
    ];
    for (const [name, call, want] of rows) expectStatus(call(), want, name);
    assert.equal(S.VmbChannelSizeofPacket(s) > 0, true);
    const before = C.VmbChannelSizeofPacket(c);
    expectStatus(C.VmbChannelInitSetMaximumPacketSize(c, 2048), STATUS_SUCCESS);
    assert.equal(C.VmbChannelSizeofPacket(c), before + 1024);
    expectStatus(C.VmbChannelEnable(c), STATUS_SUCCESS);
    expectStatus(C.VmbChannelInitSetFlags(c, 0), STATUS_INVALID_PARAMETER_1);
    const d = C.VmbChannelAllocate(null, false).Channel!;
    C.VmbChannelCleanup(d);
    expectStatus(C.VmbChannelInitSetFlags(d, 0), STATUS_INVALID_PARAMETER_1);
  });

  test('VmbChannelEnable needs the required configuration', () => {
    const rig = makeRig();
    const s = rig.S.VmbChannelAllocate(null, true).Channel!;
    expectStatus(rig.S.VmbChannelEnable(s), STATUS_INVALID_DEVICE_STATE, 'no callbacks');
    rig.S.VmbChannelInitSetProcessPacketCallbacks(s, () => {}, null);
    expectStatus(rig.S.VmbChannelEnable(s), STATUS_INVALID_DEVICE_STATE, 'no interface id');
    const c = rig.C.VmbChannelAllocate(null, false).Channel!;
    rig.C.VmbChannelInitSetProcessPacketCallbacks(c, () => {}, null);
    expectStatus(rig.C.VmbChannelEnable(c), STATUS_INVALID_DEVICE_STATE, 'no target');
  });

  test('Get/SetPointer, GetInterfaceInstance, GetMmioSpace, SetInterruptLatency', async () => {
    const rig = makeRig();
    const s = makeServer(rig, {
      configure: (ch) => expectStatus(rig.S.VmbServerChannelInitSetMmioMegabytes(ch, 4, 2), STATUS_SUCCESS),
    });
    const c = makeClient(rig);
    assert.equal(rig.C.VmbChannelGetPointer(c), null);
    rig.C.VmbChannelSetPointer(c, 'ctx');
    assert.equal(rig.C.VmbChannelGetPointer(c), 'ctx');
    assert.ok(rig.S.VmbChannelGetInterfaceInstance(s).equals(INSTANCE));
    assert.ok(rig.C.VmbChannelGetInterfaceInstance(c).isNil(), 'type-only target, not bound yet');
    assert.throws(() => rig.C.VmbChannelGetMmioSpace(c), { code: 'bad-state' });
    expectStatus(rig.C.VmbChannelSetInterruptLatency(c, 10).status, STATUS_INVALID_DEVICE_STATE);
    rig.S.VmbChannelEnable(s);
    rig.S.VmbChannelStart(s);
    rig.C.VmbChannelEnable(c);
    await rig.idle();
    assert.ok(rig.C.VmbChannelGetInterfaceInstance(c).equals(INSTANCE), 'the instance it bound to');
    const cm = rig.C.VmbChannelGetMmioSpace(c);
    const sm = rig.S.VmbChannelGetMmioSpace(s);
    assert.equal(cm.MmioSize, 6n * 1024n * 1024n);
    assert.ok(cm.MmioAddress > 0n);
    assert.deepEqual(sm, cm);
    assert.deepEqual(rig.C.VmbChannelSetInterruptLatency(c, 100), {
      status: STATUS_SUCCESS,
      OriginalLatency: 0,
    });
    assert.deepEqual(rig.C.VmbChannelSetInterruptLatency(c, 5), {
      status: STATUS_SUCCESS,
      OriginalLatency: 100,
    });
    expectStatus(rig.C.VmbChannelSetInterruptLatency(c, 70000).status, STATUS_INVALID_PARAMETER_2);
    expectStatus(rig.S.VmbChannelSetInterruptLatency(s, 5).status, STATUS_NOT_SUPPORTED);
  });

  test('SetIncomingProcessingAtPassive(TRUE) delivers in blocking context; client context areas', async () => {
    const rig = makeRig();
    const contexts: string[] = [];
    const areas: number[] = [];
    const { server, client } = await openPair(
      rig,
      {
        configure: (ch) => expectStatus(rig.S.VmbChannelInitSetClientContextSize(ch, 24), STATUS_SUCCESS),
        onPacket: (_ch, pkt) => {
          contexts.push(currentExecutionContext());
          const area = rig.host.packetClientContext(pkt)!;
          areas.push(area.length, area[0]!);
          area[0] = 0xff;
          rig.S.VmbChannelPacketComplete(pkt, null, 0);
        },
      },
      {},
    );
    const send = async () => {
      const p = rig.C.VmbPacketAllocate(client)!;
      expectStatus(rig.C.VmbPacketSend(p, new Uint8Array(8), 8, null, 0), STATUS_SUCCESS);
      await rig.idle();
    };
    await send();
    rig.S.VmbChannelSetIncomingProcessingAtPassive(server, true);
    await send();
    assert.deepEqual(contexts, ['nonblocking', 'blocking']);
    assert.deepEqual(areas, [24, 0, 24, 0], 'a zeroed area of the configured size for each packet');
  });

  test('VmbConvertVmbusHandleToKernelHandle and offer targeting by partition and VTL', async () => {
    const lb = new LoopbackHost();
    const a = lb.addPartition({ name: 'A', memoryBytes: 4 * 1024 * 1024 });
    const b = lb.addPartition({ name: 'B', memoryBytes: 4 * 1024 * 1024 });
    const host = KmclProvider.forHost(lb);
    const S = queryInterface<KMCL_SERVER_INTERFACE_V1>(
      host,
      KMCL_SERVER_INTERFACE_TYPE,
      KMCL_SERVER_INTERFACE_V1_SIZE,
      KMCL_SERVER_INTERFACE_VERSION_V1,
    ).Interface!;
    expectStatus(S.VmbConvertVmbusHandleToKernelHandle(999 as VmbusUserHandle).status, STATUS_INVALID_HANDLE);
    const conv = S.VmbConvertVmbusHandleToKernelHandle(b.userHandle);
    expectStatus(conv.status, STATUS_SUCCESS);
    assert.equal(S.VmbConvertVmbusHandleToKernelHandle(b.userHandle).KernelHandle, conv.KernelHandle);
    const s = S.VmbChannelAllocate(null, true).Channel!;
    S.VmbServerChannelInitSetTargetInterfaceId(s, TYPE, INSTANCE);
    S.VmbChannelInitSetProcessPacketCallbacks(s, () => {}, null);
    expectStatus(S.VmbServerChannelInitSetVmbusHandle(s, conv.KernelHandle!), STATUS_SUCCESS);
    expectStatus(S.VmbServerChannelInitSetTargetVtl(s, 0), STATUS_SUCCESS);
    expectStatus(S.VmbChannelEnable(s), STATUS_SUCCESS);
    S.VmbChannelStart(s);
    const clientOn = (bus: ReturnType<typeof a.guestBus>) => {
      const provider = KmclProvider.forGuest(bus);
      const C = queryInterface(provider, KMCL_CLIENT_INTERFACE_TYPE, KMCL_CLIENT_INTERFACE_V1_SIZE, 1)
        .Interface!;
      const c = C.VmbChannelAllocate(null, false).Channel!;
      C.VmbClientChannelInitSetTargetPnp(c, TYPE, null, null);
      C.VmbChannelInitSetProcessPacketCallbacks(c, () => {}, null);
      expectStatus(C.VmbChannelEnable(c), STATUS_SUCCESS);
      return c;
    };
    const inA = clientOn(a.guestBus(0));
    const inBvtl2 = clientOn(b.guestBus(2));
    const inB = clientOn(b.guestBus(0));
    await lb.idle();
    assert.equal(kmclChannelInfo(inA).state, 'enabled', 'another partition never sees the offer');
    assert.equal(kmclChannelInfo(inBvtl2).state, 'enabled', 'another VTL never sees the offer');
    assert.equal(kmclChannelInfo(inB).state, 'open');
    assert.equal(kmclChannelInfo(s).state, 'open');
    // The user handle of a guest is not available to a guest provider.
    const guestOnly = KmclProvider.forGuest(a.guestBus(0));
    assert.deepEqual(guestOnly.convertUserHandle(a.userHandle), { status: STATUS_NOT_SUPPORTED });
  });

  test('save/restore functions refuse the wrong state (details in test/servicing)', async () => {
    const rig = makeRig();
    const { server } = await openPair(rig);
    const p = rig.S.VmbPacketAllocate(server)!;
    // A flowing channel cannot be saved; nothing was begun, so Continue has no context.
    expectStatus(rig.S.VmbChannelSaveBegin(server), STATUS_INVALID_DEVICE_STATE);
    expectStatus(
      rig.S.VmbChannelSaveContinue(server, new Uint8Array(64), 64).status,
      STATUS_INVALID_DEVICE_STATE,
    );
    rig.S.VmbChannelSaveEnd(server);
    // Restore only before the first Enable; VmbPacketRestore only inside EvtVmbChannelRestorePacket.
    expectStatus(
      rig.S.VmbChannelRestoreFromBuffer(server, new Uint8Array(8), 8),
      STATUS_INVALID_DEVICE_STATE,
    );
    expectStatus(rig.S.VmbPacketRestore(p, new Uint8Array(8), 8), STATUS_INVALID_DEVICE_STATE);
    assert.throws(() => rig.S.VmbChannelSaveBegin({} as VMBCHANNEL), KmclContractViolation);
  });

  test('VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT zeroes an existing structure', () => {
    const cb = VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT({ Version: 9, EvtChannelOpened: () => 0 });
    assert.equal(cb.Version, 1);
    assert.equal(cb.Size, VMB_CHANNEL_STATE_CHANGE_CALLBACKS_SIZE);
    assert.equal(cb.EvtChannelOpened, null);
    assert.equal(cb.EvtChannelPostStarted, null);
  });
});
