// The echo example (examples/echo): the whole run (negotiation, echoes of every size, malformed
// messages refused, both drivers unloaded) over the loopback port and over the real VMBus, and the
// driver pair on its own with random payloads and hostile messages.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ECHO_HEADER_SIZE, ECHO_MAX_DATA, ECHO_MSG_ECHO, putHeader } from '../../examples/echo/protocol.js';
import { echoPayload, runEcho } from '../../examples/echo/run.js';
import { EchoVsc } from '../../examples/echo/vsc.js';
import { EchoVsp } from '../../examples/echo/vsp.js';
import { makeProviders } from '../../examples/providers.js';
import {
  STATUS_INVALID_DEVICE_STATE,
  STATUS_INVALID_PARAMETER,
  STATUS_INVALID_PARAMETER_3,
  STATUS_NOT_SUPPORTED,
  STATUS_SUCCESS,
} from '../../src/kmcl/index.js';

/** The loopback port and the real VMBus (src/bus through src/kmcl/bus-port.ts). */
const TRANSPORTS = ['loopback', 'vmbus'] as const;

describe('examples/echo', () => {
  for (const transport of TRANSPORTS) {
    test(`runEcho over ${transport}: every echo comes back equal with STATUS_SUCCESS; malformed messages are refused`, async () => {
      const r = await runEcho({ messages: 24, transport });
      assert.equal(r.transport, transport);
      assert.equal(r.version, 0x0001_0000);
      assert.equal(r.echoes.length, 24);
      for (const [i, e] of r.echoes.entries()) {
        assert.equal(e.status, 'STATUS_SUCCESS', `echo ${i}`);
        assert.equal(e.equal, true, `echo ${i} bytes`);
        assert.equal(e.length, echoPayload(i).length);
      }
      // Sizes include the empty payload and the largest one.
      assert.ok(r.echoes.some((e) => e.length === 0));
      assert.ok(r.echoes.some((e) => e.length === ECHO_MAX_DATA));
      assert.deepEqual(
        r.malformed.map((m) => m.status),
        ['STATUS_INVALID_PARAMETER', 'STATUS_INVALID_PARAMETER'],
      );
      assert.equal(r.vsp.echoed, 24);
      assert.equal(r.vsp.rejected, 2);
      assert.equal(
        r.vsp.bytes,
        r.echoes.reduce((n, e) => n + e.length, 0),
      );
      assert.deepEqual(r.peerErrors, []);
      assert.deepEqual(r.callbackErrors, []);
      assert.equal(r.ok, true);
    });

    test(`runEcho over ${transport}: the state callbacks run in the documented order on both sides`, async () => {
      const r = await runEcho({ messages: 1, transport });
      const host = r.events.filter((e) => e.startsWith('host')).map((e) => e.split(/\s+/)[1]);
      const guest = r.events
        .filter((e) => e.startsWith('guest') && /Evt/.test(e))
        .map((e) => e.split(/\s+/)[1]);
      assert.deepEqual(host, [
        'EvtChannelOpened',
        'EvtChannelStarted',
        'EvtChannelPostStarted',
        'EvtChannelSuspend',
        'EvtChannelClosed',
      ]);
      assert.deepEqual(guest, [
        'EvtChannelOpened',
        'EvtChannelStarted',
        'EvtChannelPostStarted:',
        'EvtChannelSuspend',
        'EvtChannelClosed',
      ]);
      // The version is negotiated after PostStarted and before the guest's channel goes down.
      const accepted = r.events.findIndex((e) => e.includes('accepted'));
      assert.ok(accepted > r.events.indexOf('guest EvtChannelPostStarted: sending ECHO_MSG_VERSION'));
      assert.ok(accepted < r.events.indexOf('guest EvtChannelSuspend'));
    });
  }

  test('random payloads come back byte for byte (property)', async () => {
    const env = await makeProviders();
    const vsp = EchoVsp.start(env.host, env.vmUserHandle);
    const vsc = EchoVsc.start(env.guest);
    await vsc.ready;
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: ECHO_MAX_DATA }), async (data) => {
        const reply = await vsc.echo(data);
        assert.equal(reply.status, STATUS_SUCCESS);
        assert.deepEqual(reply.data, data);
      }),
      { numRuns: 60 },
    );
    await vsc.stop();
    await vsp.stop();
    assert.deepEqual(env.peerErrors, []);
    assert.deepEqual(env.callbackErrors, []);
  });

  test('the VSP checks lengths and versions; the VSC refuses oversized echoes', async () => {
    const env = await makeProviders();
    const vsp = EchoVsp.start(env.host, env.vmUserHandle);
    const vsc = EchoVsc.start(env.guest);
    await vsc.ready;
    // A header whose DataLength (1) is more than the packet holds after it (0: the wire pads to 8).
    const short = new Uint8Array(ECHO_HEADER_SIZE);
    putHeader(short, ECHO_MSG_ECHO, 1);
    assert.equal((await vsc.sendRaw(short)).status, STATUS_INVALID_PARAMETER);
    // A message beyond the channel's maximum packet size never leaves the guest: its own KMCL
    // refuses the send (BufferLength is parameter 3 of VmbPacketSend).
    const big = new Uint8Array(ECHO_HEADER_SIZE + ECHO_MAX_DATA + 8);
    putHeader(big, ECHO_MSG_ECHO, ECHO_MAX_DATA + 8);
    assert.equal((await vsc.sendRaw(big)).status, STATUS_INVALID_PARAMETER_3);
    // A version with another major.
    const version = new Uint8Array(ECHO_HEADER_SIZE + 4);
    putHeader(version, 1, 4);
    new DataView(version.buffer).setUint32(8, 0x0002_0000, true);
    assert.equal((await vsc.sendRaw(version)).status, STATUS_NOT_SUPPORTED);
    // ... after which echoes are refused until a version is agreed again.
    assert.equal((await vsc.echo(Uint8Array.of(1))).status, STATUS_INVALID_DEVICE_STATE);
    assert.throws(() => vsc.echo(new Uint8Array(ECHO_MAX_DATA + 1)), RangeError);
    await vsc.stop();
    await vsp.stop();
    assert.equal(vsp.stats.rejected, 3);
    assert.deepEqual(env.peerErrors, []);
  });
});
