// A hostile or broken peer (design.md "nothing trusts the other side"): raw ports write garbage
// into the rings or into external-data descriptors, forge completions, corrupt control words, or
// never complete. The KMCL side must not crash, must touch guest memory only through grants, must
// report typed KmclPeerErrors, and only the affected channel may suffer.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  KmclPeerError,
  kmclChannelInfo,
  type PortDataPath,
  type PortOffer,
  STATUS_DEVICE_REMOVED,
  STATUS_SUCCESS,
  type VMBCHANNEL,
  type VMBPACKETCOMPLETION,
  VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION,
  VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE,
} from '../../src/kmcl/index.js';
import { CONTROL_READ_INDEX, CONTROL_WRITE_INDEX } from '../../src/ring/memory.js';
import { RING_WRITE_OK } from '../../src/ring/writer.js';
import { Guid } from '../../src/wire/guid.js';
import { encodePacketToBytes, VM_PKT_COMP, VM_PKT_DATA_INBAND } from '../../src/wire/packets.js';
import { expectStatus, makeClient, makeRig, makeServer, type Rig, TYPE } from './harness.js';

/** A raw guest: opens the test offer through a bare client port and writes whatever it likes. */
async function rawGuest(rig: Rig, pages = 4): Promise<PortDataPath> {
  const port = rig.part.guestBus(0).createClientPort();
  let offer: PortOffer | null = null;
  port.watch(
    { interfaceType: TYPE, interfaceInstance: null },
    { onOffer: (o) => (offer = o), onRescind: async () => {} },
  );
  await rig.idle();
  assert.ok(offer !== null, 'the raw guest sees the offer');
  const r = await port.open(offer, { incomingPages: pages, outgoingPages: pages });
  expectStatus(r.status, STATUS_SUCCESS);
  return r.data!;
}

function push(data: PortDataPath, bytes: Uint8Array): void {
  assert.equal(data.outgoing.writeRaw(bytes), RING_WRITE_OK);
  if (data.outgoing.commit()) data.signalPeer();
}

function inband(n: number, flags = 0, transactionId = 0): Uint8Array {
  const payload = new Uint8Array(8);
  new DataView(payload.buffer).setUint32(0, n, true);
  return encodePacketToBytes({ kind: 'inband', flags, transactionId, payload });
}

/** A server whose deliveries are recorded and completed at once. */
function recordingServer(rig: Rig, got: number[], configure?: (ch: VMBCHANNEL) => void): VMBCHANNEL {
  const s = makeServer(rig, {
    onPacket: (_ch, pkt, buf, _len, flags) => {
      got.push(buf.length >= 4 ? new DataView(buf.buffer, buf.byteOffset).getUint32(0, true) : -1);
      if (flags !== 0) {
        // Touch external data when there is some, through the grant only.
        const r = rig.S.VmbChannelPacketGetExternalData(pkt, 0);
        if (r.status === STATUS_SUCCESS) r.Mdl!.read(0, new Uint8Array(Math.min(16, r.Mdl!.byteCount)));
      }
      rig.S.VmbChannelPacketComplete(pkt, null, 0);
    },
    configure,
  });
  expectStatus(rig.S.VmbChannelEnable(s), STATUS_SUCCESS);
  rig.S.VmbChannelStart(s);
  return s;
}

describe('kmcl hostile peer', () => {
  test('well-framed garbage is dropped packet by packet with typed errors; good packets still arrive', async () => {
    const rig = makeRig();
    const got: number[] = [];
    const server = recordingServer(rig, got);
    const data = await rawGuest(rig);
    await rig.idle();
    push(data, inband(1));
    push(data, encodePacketToBytes({ kind: 'other', type: 5, payload: new Uint8Array(8) }));
    push(data, inband(2));
    // A completion for a transaction the server never started.
    push(
      data,
      encodePacketToBytes({ kind: 'completion', transactionId: 0x1234_5678, payload: new Uint8Array(8) }),
    );
    // GPA direct naming a page outside guest RAM.
    const beyond = rig.part.memory.pageCount + 10;
    push(
      data,
      encodePacketToBytes({
        kind: 'gpa-direct',
        flags: 1,
        transactionId: 9,
        ranges: [{ byteCount: 100, byteOffset: 0, pfns: [beyond] }],
        payload: new Uint8Array(8),
      }),
    );
    // GPA direct whose range count overruns its header.
    const bad = encodePacketToBytes({
      kind: 'gpa-direct',
      ranges: [{ byteCount: 100, byteOffset: 0, pfns: [100] }],
      payload: new Uint8Array(8),
    });
    new DataView(bad.buffer).setUint32(20, 7, true);
    push(data, bad);
    // GPA direct with no range at all.
    const none = encodePacketToBytes({
      kind: 'gpa-direct',
      ranges: [{ byteCount: 8, byteOffset: 0, pfns: [100] }],
    });
    new DataView(none.buffer).setUint32(20, 0, true);
    push(data, none);
    push(data, inband(3));
    // A valid GPA direct to a real page is delivered.
    push(
      data,
      encodePacketToBytes({
        kind: 'gpa-direct',
        flags: 1,
        transactionId: 10,
        ranges: [{ byteCount: 64, byteOffset: 8, pfns: [200] }],
        payload: inband(4).subarray(16),
      }),
    );
    await rig.idle();
    assert.deepEqual(got, [1, 2, 3, 4]);
    const codes = rig.peerErrors.map((e) => e.code);
    assert.deepEqual(codes, [
      'unsupported-packet',
      'unknown-transaction',
      'bad-external-data',
      'bad-external-data',
      'bad-external-data',
    ]);
    assert.ok(rig.peerErrors.every((e) => e instanceof KmclPeerError));
    assert.equal(kmclChannelInfo(server).dataPathFailed, false);
    assert.equal(kmclChannelInfo(server).outstandingIncoming, 0);
    // Only the ring grant is live: the external-data grant ended with its packet.
    assert.equal(rig.part.hostView.liveGrantCount, 1);
  });

  test('a corrupt descriptor or index fails that channel only; another channel keeps working', async () => {
    const rig = makeRig();
    const got: number[] = [];
    const victim = recordingServer(rig, got);
    // A second, well-behaved pair on another offer of the same rig.
    const OTHER = Guid.parse('aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee');
    const okGot: number[] = [];
    const s2 = makeServer(rig, {
      onPacket: (_ch, pkt, buf) => {
        okGot.push(buf[0]!);
        rig.S.VmbChannelPacketComplete(pkt, null, 0);
      },
      configure: (ch) => rig.S.VmbServerChannelInitSetTargetInterfaceId(ch, OTHER, OTHER),
      name: 'S2',
    });
    const c2 = makeClient(rig, {
      configure: (ch) => rig.C.VmbClientChannelInitSetTargetPnp(ch, OTHER, null, null),
      name: 'C2',
    });
    rig.S.VmbChannelEnable(s2);
    rig.S.VmbChannelStart(s2);
    rig.C.VmbChannelEnable(c2);
    const data = await rawGuest(rig);
    await rig.idle();
    push(data, inband(1));
    // offset8 = 1: a descriptor no reader accepts.
    const broken = inband(2);
    new DataView(broken.buffer).setUint16(2, 1, true);
    push(data, broken);
    push(data, inband(3));
    await rig.idle();
    assert.deepEqual(got, [1]);
    assert.equal(kmclChannelInfo(victim).dataPathFailed, true);
    assert.equal(rig.peerErrors.at(-1)!.code, 'ring-corrupt');
    const p = rig.C.VmbPacketAllocate(c2)!;
    expectStatus(rig.C.VmbPacketSend(p, Uint8Array.of(77), 1, null, 0), STATUS_SUCCESS);
    await rig.idle();
    assert.deepEqual(okGot, [77]);
    // The failed channel refuses new sends instead of queueing them forever.
    const sp = rig.S.VmbPacketAllocate(victim)!;
    expectStatus(rig.S.VmbPacketSend(sp, new Uint8Array(8), 8, null, 0), STATUS_DEVICE_REMOVED);
    // And it can still be disabled.
    await rig.S.VmbChannelDisable(victim);
  });

  test('a corrupted write_index or read_index is refused without reading or writing outside the ring', async () => {
    const rig = makeRig();
    const got: number[] = [];
    const server = recordingServer(rig, got);
    const data = await rawGuest(rig);
    await rig.idle();
    // The guest's TX ring: write_index beyond the data area.
    Atomics.store(data.outgoing.ring.control, CONTROL_WRITE_INDEX, 0x7ffffff8);
    data.signalPeer();
    await rig.idle();
    assert.equal(kmclChannelInfo(server).dataPathFailed, true);
    assert.equal(rig.peerErrors[0]!.code, 'ring-corrupt');

    const rig2 = makeRig();
    const server2 = recordingServer(rig2, []);
    const data2 = await rawGuest(rig2);
    await rig2.idle();
    // The host's TX ring: the guest (its reader) writes a misaligned read_index.
    Atomics.store(data2.incoming.ring.control, CONTROL_READ_INDEX, 13);
    // The writer looks at read_index again when the ring seems full: from then on sends fail.
    let sent = 0;
    let status = STATUS_SUCCESS;
    for (; sent < 2000 && status === STATUS_SUCCESS; sent++) {
      const p = rig2.S.VmbPacketAllocate(server2)!;
      status = rig2.S.VmbPacketSend(p, new Uint8Array(8), 8, null, 0);
      if (status !== STATUS_SUCCESS) rig2.S.VmbPacketFree(p);
    }
    expectStatus(status, STATUS_DEVICE_REMOVED);
    assert.ok(sent > 100 && sent < 2000);
    assert.equal(rig2.peerErrors[0]!.code, 'ring-corrupt');
    assert.equal(kmclChannelInfo(server2).dataPathFailed, true);
  });

  test('a peer that never completes: the server Disable still retires everything once', async () => {
    const rig = makeRig();
    const server = recordingServer(rig, []);
    const data = await rawGuest(rig);
    await rig.idle();
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      const p = rig.S.VmbPacketAllocate(server)!;
      rig.S.VmbPacketSetCompletionRoutine(p, (pk, st) => {
        statuses.push(st);
        rig.S.VmbPacketFree(pk);
      });
      expectStatus(
        rig.S.VmbPacketSend(p, new Uint8Array(8), 8, null, VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION),
        STATUS_SUCCESS,
      );
    }
    await rig.idle();
    // The raw guest reads them (to prove they arrived) but never completes any.
    let n = 0;
    while (data.incoming.next()) n++;
    data.incoming.commit();
    assert.equal(n, 10);
    assert.equal(kmclChannelInfo(server).awaitingCompletion, 10);
    await rig.S.VmbChannelDisable(server);
    assert.deepEqual(statuses, new Array(10).fill(STATUS_DEVICE_REMOVED));
    // A completion arriving afterwards goes nowhere (the channel is gone from the ring).
    assert.equal(kmclChannelInfo(server).state, 'disabled');
  });

  test('pipe mode: payloads without a valid DATA pipe header are dropped', async () => {
    const rig = makeRig();
    const got: number[] = [];
    recordingServer(rig, got, (ch) =>
      rig.S.VmbServerChannelInitSetFlags(ch, VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE),
    );
    const data = await rawGuest(rig);
    await rig.idle();
    const pipe = (type: number, len: number, body: number[]) => {
      const payload = new Uint8Array(8 + body.length);
      const dv = new DataView(payload.buffer);
      dv.setUint32(0, type, true);
      dv.setUint32(4, len, true);
      payload.set(body, 8);
      return encodePacketToBytes({ kind: 'inband', payload });
    };
    push(data, pipe(1, 4, [5, 0, 0, 0]));
    push(data, pipe(2, 4, [6, 0, 0, 0]));
    push(data, pipe(1, 400, [7, 0, 0, 0]));
    push(data, encodePacketToBytes({ kind: 'inband', payload: new Uint8Array(0) }));
    push(data, encodePacketToBytes({ kind: 'completion', payload: new Uint8Array(8) }));
    push(data, pipe(1, 4, [8, 0, 0, 0]));
    await rig.idle();
    assert.deepEqual(got, [5, 8]);
    assert.deepEqual(
      rig.peerErrors.map((e) => e.code),
      ['bad-pipe-header', 'bad-pipe-header', 'bad-pipe-header', 'unsupported-packet'],
    );
  });

  test('a hostile host: garbage in the guest RX ring fails the guest channel, not the guest', async () => {
    const rig = makeRig();
    const port = rig.lb.createServerPort(rig.part.id, 0)!;
    let hostData: PortDataPath | null = null;
    expectStatus(
      port.offer(
        {
          interfaceType: TYPE,
          interfaceInstance: TYPE,
          serverFlags: 0,
          pipe: false,
          mmioMegabytes: 0,
          mmioMegabytesOptional: 0,
          userDefined: new Uint8Array(0),
          friendlyName: 'raw',
        },
        {
          onOpen: async (req) => {
            hostData = req.data;
            return STATUS_SUCCESS;
          },
          onClose: async () => {},
        },
      ),
      STATUS_SUCCESS,
    );
    const got: number[] = [];
    const c = makeClient(rig, {
      onPacket: (_ch, pkt, buf) => {
        got.push(buf[0]!);
        rig.C.VmbChannelPacketComplete(pkt, null, 0);
      },
    });
    rig.C.VmbChannelEnable(c);
    await rig.idle();
    assert.ok(hostData !== null);
    const hd = hostData as PortDataPath;
    const write = (b: Uint8Array) => {
      hd.outgoing.writeRaw(b);
      if (hd.outgoing.commit()) hd.signalPeer();
    };
    write(encodePacketToBytes({ kind: 'inband', payload: Uint8Array.of(1) }));
    // A GPA-direct to the guest naming pages outside its RAM: dropped.
    write(
      encodePacketToBytes({
        kind: 'gpa-direct',
        ranges: [{ byteCount: 8, byteOffset: 0, pfns: [2 ** 40] }],
        payload: Uint8Array.of(2),
      }),
    );
    write(encodePacketToBytes({ kind: 'inband', payload: Uint8Array.of(3) }));
    const trash = new Uint8Array(32).fill(0xff);
    write(trash);
    write(encodePacketToBytes({ kind: 'inband', payload: Uint8Array.of(4) }));
    await rig.idle();
    assert.deepEqual(got, [1, 3]);
    assert.deepEqual(
      rig.peerErrors.map((e) => e.code),
      ['bad-external-data', 'ring-corrupt'],
    );
    assert.equal(kmclChannelInfo(c).dataPathFailed, true);
    await port.revoke();
    await rig.idle();
    assert.equal(kmclChannelInfo(c).state, 'disabled');
  });

  test('fuzz: random packets and random control words never crash the server or leak grants', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            fc.record({
              kind: fc.constant<'raw'>('raw'),
              type: fc.oneof(
                fc.constantFrom(VM_PKT_DATA_INBAND, VM_PKT_COMP, 9, 7, 0),
                fc.integer({ min: 0, max: 0xffff }),
              ),
              flags: fc.integer({ min: 0, max: 3 }),
              lo: fc.integer({ min: 0, max: 3 }),
              body: fc.uint8Array({ minLength: 0, maxLength: 96 }),
            }),
            fc.record({ kind: fc.constant<'valid'>('valid'), n: fc.integer({ min: 0, max: 1000 }) }),
            fc.record({ kind: fc.constant<'index'>('index'), value: fc.integer({ min: 0, max: 0xffff }) }),
          ),
          { minLength: 1, maxLength: 25 },
        ),
        async (steps) => {
          const rig = makeRig({ memoryBytes: 4 * 1024 * 1024 });
          const held: VMBPACKETCOMPLETION[] = [];
          const server = makeServer(rig, {
            onPacket: (_ch, pkt, _buf, _len, flags) => {
              if (flags !== 0) {
                const r = rig.S.VmbChannelPacketGetExternalData(pkt, 0);
                if (r.status === STATUS_SUCCESS && r.Mdl!.byteCount > 0) r.Mdl!.read(0, new Uint8Array(1));
              }
              held.push(pkt);
            },
          });
          rig.S.VmbChannelEnable(server);
          rig.S.VmbChannelStart(server);
          const data = await rawGuest(rig);
          await rig.idle();
          for (const step of steps) {
            if (step.kind === 'index') {
              Atomics.store(data.outgoing.ring.control, CONTROL_WRITE_INDEX, step.value);
              data.signalPeer();
              break;
            }
            let bytes: Uint8Array;
            if (step.kind === 'valid') bytes = inband(step.n);
            else {
              const len = (16 + step.body.length + 7) & ~7;
              bytes = new Uint8Array(len);
              bytes.set(step.body, 16);
              const dv = new DataView(bytes.buffer);
              dv.setUint16(0, step.type, true);
              // offset8 from the body (may be garbage), len8 consistent with the bytes written.
              dv.setUint16(2, step.body.length > 0 ? (step.body[0]! % 6) + 1 : 2, true);
              dv.setUint16(4, len / 8, true);
              dv.setUint16(6, step.flags, true);
              dv.setUint32(8, step.lo, true);
            }
            try {
              if (data.outgoing.writeRaw(bytes) !== RING_WRITE_OK) break;
            } catch {
              break;
            }
            if (data.outgoing.commit()) data.signalPeer();
            await rig.idle();
            for (const t of held.splice(0)) rig.S.VmbChannelPacketComplete(t, null, 0);
          }
          await rig.idle();
          for (const t of held.splice(0)) rig.S.VmbChannelPacketComplete(t, null, 0);
          await rig.idle();
          assert.ok(rig.callbackErrors.length === 0, String(rig.callbackErrors[0]?.error));
          assert.ok(rig.peerErrors.every((e) => e instanceof KmclPeerError));
          assert.equal(kmclChannelInfo(server).outstandingIncoming, 0);
          // Only the ring grant may be live.
          assert.ok(rig.part.hostView.liveGrantCount <= 1);
          await rig.S.VmbChannelDisable(server);
          assert.equal(rig.part.hostView.liveGrantCount, 0);
        },
      ),
      { numRuns: 60 },
    );
  });
});
