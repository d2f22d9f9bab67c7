// The host VMBus server's saved state (src/bus/saved-state.ts + VmbusServer.saveState): a real
// server's state with an open channel and a GPADL survives encode/decode exactly, and damaged
// buffers (including well-checksummed ones with a broken structure) are refused with a typed error.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  BUS_SAVED_STATE_HEADER_SIZE,
  BusSavedStateError,
  crc32,
  decodeServerSavedState,
  encodeServerSavedState,
} from '../../src/bus/saved-state.js';
import type { ServerState } from '../../src/bus/server-state.js';
import { createKmclSystem } from '../../src/kmcl/bus-port.js';
import { kmclChannelInfo } from '../../src/kmcl/index.js';
import { clientTable, makeClient, makeServer, must, serverTable, until } from '../kmcl-bus/kit.js';

async function realState(): Promise<ServerState> {
  const sys = await createKmclSystem();
  try {
    const S = serverTable(sys.host);
    const C = clientTable(sys.guests[0]!);
    const s = makeServer(S);
    const c = makeClient(C);
    must(S.VmbChannelEnable(s), 'server enable');
    S.VmbChannelStart(s);
    must(C.VmbChannelEnable(c), 'client enable');
    await until(() => kmclChannelInfo(c).flowing && kmclChannelInfo(s).flowing, 'both flowing');
    await sys.idle();
    const r = sys.hostBus.server(1)!.saveState();
    assert.ok(r.ok, r.ok ? '' : r.reason);
    const state = r.state;
    assert.equal(state.channels.length, 1);
    assert.equal(state.channels[0]!.phase, 'open');
    assert.ok(state.gpadls.length >= 1, 'the ring GPADL');
    // A copy: changing it does not touch the server.
    state.nextOfferId += 100;
    assert.notEqual(sys.hostBus.server(1)!.state.nextOfferId, state.nextOfferId);
    state.nextOfferId -= 100;
    return state;
  } finally {
    await sys.close();
  }
}

function reseal(b: Uint8Array): void {
  new DataView(b.buffer, b.byteOffset).setUint32(12, crc32(b, BUS_SAVED_STATE_HEADER_SIZE), true);
}

function codeOf(f: () => unknown): string {
  try {
    f();
    return 'ok';
  } catch (e) {
    assert.ok(e instanceof BusSavedStateError, `typed refusal, got ${String(e)}`);
    return e.code;
  }
}

describe('servicing: the host VMBus server state', () => {
  test('a real server state survives encode/decode exactly; damage is refused by kind', async () => {
    const state = await realState();
    const bytes = encodeServerSavedState(state);
    assert.deepEqual(decodeServerSavedState(bytes), state);
    assert.equal(
      codeOf(() => decodeServerSavedState(bytes.subarray(0, 10))),
      'truncated',
    );
    assert.equal(
      codeOf(() => decodeServerSavedState(bytes.subarray(0, bytes.length - 1))),
      'truncated',
    );
    const flipped = bytes.slice();
    flipped[bytes.length - 3]! ^= 1;
    assert.equal(
      codeOf(() => decodeServerSavedState(flipped)),
      'corrupt',
    );
    const v2 = bytes.slice();
    v2[4] = 2;
    assert.equal(
      codeOf(() => decodeServerSavedState(v2)),
      'version',
    );
    // Well-sealed but wrong: a channel whose phase says open without an open request.
    const broken = structuredClone(state);
    broken.channels[0]!.open = null;
    assert.equal(
      codeOf(() => decodeServerSavedState(encodeServerSavedState(broken))),
      'shape',
    );
  });

  test('fuzz: re-sealed mutations decode or are refused with a BusSavedStateError', async () => {
    const bytes = encodeServerSavedState(await realState());
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            at: fc.integer({ min: BUS_SAVED_STATE_HEADER_SIZE, max: bytes.length - 1 }),
            value: fc.integer({ min: 0, max: 255 }),
          }),
          { minLength: 1, maxLength: 4 },
        ),
        (edits) => {
          const b = bytes.slice();
          for (const e of edits) b[e.at] = e.value;
          reseal(b);
          codeOf(() => decodeServerSavedState(b));
        },
      ),
      { numRuns: 400 },
    );
  });
});
