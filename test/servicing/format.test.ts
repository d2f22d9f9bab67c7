// The saved-state format (src/kmcl/saved-state.ts): CRC-32, chunking at every buffer size, and
// refusal of truncated, corrupted and other-version buffers with the documented status.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  ntStatusName,
  STATUS_BUFFER_OVERFLOW,
  STATUS_BUFFER_TOO_SMALL,
  STATUS_DATA_ERROR,
  STATUS_MORE_PROCESSING_REQUIRED,
  STATUS_REVISION_MISMATCH,
  STATUS_SUCCESS,
} from '../../src/kmcl/ntstatus.js';
import {
  CHUNK_HEADER_SIZE,
  type ChannelSavedState,
  ChunkAssembler,
  ChunkWriter,
  crc32,
  decodeChannelState,
  decodePacketLib,
  encodeChannelState,
  encodePacketLib,
  SavedStateError,
} from '../../src/kmcl/saved-state.js';
import { Guid } from '../../src/wire/guid.js';

/** A queued inband packet as the ring holds it: descriptor (16 bytes) + 8 payload bytes. */
function inband(seq: number, lo: number, hi: number): Uint8Array {
  const b = new Uint8Array(24);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, 6, true);
  dv.setUint16(2, 2, true);
  dv.setUint16(4, 3, true);
  dv.setUint16(6, lo === 0 ? 0 : 1, true);
  dv.setUint32(8, lo, true);
  dv.setUint32(12, hi, true);
  dv.setUint32(16, seq, true);
  return b;
}

function sample(): ChannelSavedState {
  return {
    conn: 'open',
    incomingStopped: false,
    interfaceType: Guid.parse('f8615163-df3e-46c5-913f-f2d2f965ed0e'),
    interfaceInstance: Guid.parse('00000000-1111-2222-3333-444455556666'),
    targetVtl: 0,
    serverFlags: 0,
    maximumPacketSize: 4096,
    outWriteIndex: 4096,
    inReadIndex: 512,
    mappings: [{ handle: 0xe1e10, readOnly: true }],
    queuedCompletions: [inband(1, 0, 0)],
    packets: [
      {
        lib: { state: 'queued', wait: true, transIdLo: 3, transIdHi: 1, bytes: inband(7, 3, 1) },
        vsp: Uint8Array.of(7),
      },
      {
        lib: { state: 'queued', wait: false, transIdLo: 0, transIdHi: 0, bytes: inband(8, 0, 0) },
        vsp: new Uint8Array(0),
      },
      {
        lib: { state: 'awaiting', wait: true, transIdLo: 1, transIdHi: 9, bytes: new Uint8Array(0) },
        vsp: Uint8Array.of(1, 2),
      },
    ],
  };
}

function chunkAll(body: Uint8Array, size: number): Uint8Array[] {
  const w = new ChunkWriter(body);
  const out: Uint8Array[] = [];
  for (let n = 0; n < 100_000; n++) {
    const buf = new Uint8Array(size);
    const r = w.next(buf, size);
    assert.notEqual(r.status, STATUS_BUFFER_TOO_SMALL);
    out.push(buf.slice(0, r.filled));
    if (r.status === STATUS_SUCCESS) return out;
    assert.equal(r.status, STATUS_BUFFER_OVERFLOW);
  }
  throw new Error('never finished');
}

function reassemble(chunks: Uint8Array[]): Uint8Array {
  const a = new ChunkAssembler();
  for (let i = 0; i < chunks.length; i++) {
    const s = a.accept(chunks[i]!, chunks[i]!.length);
    assert.equal(
      ntStatusName(s),
      ntStatusName(i === chunks.length - 1 ? STATUS_SUCCESS : STATUS_MORE_PROCESSING_REQUIRED),
    );
  }
  return a.result();
}

function refusal(f: () => unknown): number {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof SavedStateError, `typed refusal, got ${String(e)}`);
    return e.status;
  }
  return STATUS_SUCCESS;
}

describe('servicing: saved-state format', () => {
  test('CRC-32 matches the published check value', () => {
    assert.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
    assert.equal(crc32(new Uint8Array(0)), 0);
  });

  test('a channel state survives encode/decode exactly', () => {
    const s = sample();
    const back = decodeChannelState(encodeChannelState(s), 8192);
    assert.deepEqual(
      {
        ...back,
        interfaceType: back.interfaceType.toString(),
        interfaceInstance: back.interfaceInstance.toString(),
      },
      { ...s, interfaceType: s.interfaceType.toString(), interfaceInstance: s.interfaceInstance.toString() },
    );
    const lib = sample().packets[0]!.lib;
    assert.deepEqual(decodePacketLib(encodePacketLib(lib), 8192), lib);
  });

  test('every buffer size from too small to very large chunks and reassembles the body', () => {
    const body = encodeChannelState(sample());
    const whole = CHUNK_HEADER_SIZE + body.length;
    for (let size = 0; size <= CHUNK_HEADER_SIZE; size++) {
      const w = new ChunkWriter(body);
      const buf = new Uint8Array(Math.max(size, 1));
      const r = w.next(buf, size);
      assert.equal(ntStatusName(r.status), 'STATUS_BUFFER_TOO_SMALL', `size ${size}`);
      assert.equal(r.filled, 0);
      assert.equal(r.required, whole);
      assert.ok(
        buf.every((b) => b === 0),
        'nothing written',
      );
    }
    for (const size of [
      CHUNK_HEADER_SIZE + 1,
      CHUNK_HEADER_SIZE + 7,
      100,
      whole - 1,
      whole,
      whole + 1,
      1 << 20,
    ]) {
      const chunks = chunkAll(body, size);
      const expected = Math.ceil(body.length / (size - CHUNK_HEADER_SIZE));
      assert.equal(chunks.length, expected, `size ${size}`);
      assert.deepEqual(reassemble(chunks), body);
    }
    // Several whole chunks in one restore buffer are accepted too.
    const chunks = chunkAll(body, 64);
    const joined = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let pos = 0;
    for (const c of chunks) {
      joined.set(c, pos);
      pos += c.length;
    }
    const a = new ChunkAssembler();
    assert.equal(a.accept(joined, joined.length), STATUS_SUCCESS);
    assert.deepEqual(a.result(), body);
  });

  test('truncated, corrupted, reordered and other-version chunks are refused with their status', () => {
    const body = encodeChannelState(sample());
    const chunks = chunkAll(body, 80);
    const first = chunks[0]!;
    assert.equal(
      refusal(() => new ChunkAssembler().accept(first, first.length - 1)),
      STATUS_DATA_ERROR,
    );
    assert.equal(
      refusal(() => new ChunkAssembler().accept(first, 20)),
      STATUS_DATA_ERROR,
    );
    const flipped = first.slice();
    flipped[CHUNK_HEADER_SIZE + 3]! ^= 0x10;
    assert.equal(
      refusal(() => new ChunkAssembler().accept(flipped, flipped.length)),
      STATUS_DATA_ERROR,
    );
    assert.equal(
      refusal(() => new ChunkAssembler().accept(chunks[1]!, chunks[1]!.length)),
      STATUS_DATA_ERROR,
    );
    // A well-formed chunk of another version (checksum recomputed) is a revision mismatch.
    const v2 = first.slice();
    const dv = new DataView(v2.buffer);
    dv.setUint16(4, 2, true);
    dv.setUint32(28, crc32(v2, CHUNK_HEADER_SIZE, v2.length, crc32(v2, 0, 28)), true);
    assert.equal(
      refusal(() => new ChunkAssembler().accept(v2, v2.length)),
      STATUS_REVISION_MISMATCH,
    );
    // A body that decodes badly (here: cut short) is a data error too.
    assert.equal(
      refusal(() => decodeChannelState(body.subarray(0, body.length - 1), 8192)),
      STATUS_DATA_ERROR,
    );
  });

  test('fuzz: mutated bodies decode or are refused with STATUS_DATA_ERROR, never anything else', () => {
    const body = encodeChannelState(sample());
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat(body.length - 1), value: fc.integer({ min: 0, max: 255 }) }), {
          minLength: 1,
          maxLength: 4,
        }),
        fc.nat(body.length),
        (edits, cut) => {
          const b = body.slice(0, Math.max(cut, 1));
          for (const e of edits) if (e.at < b.length) b[e.at] = e.value;
          const status = refusal(() => decodeChannelState(b, 8192));
          assert.ok(status === STATUS_SUCCESS || status === STATUS_DATA_ERROR, ntStatusName(status));
        },
      ),
      { numRuns: 500 },
    );
  });
});
