// Interop with an independent implementation: DPDK 22.11's VMBus ring code (through the
// shared/interop/dpdk-ringpeer.c peer). (a) The same packet scripts through DPDK's writer and this
// project's (`vmbus ring encode` / encodeRingScript) give byte-identical ring files and the same
// summary lines; (b) each side's reader reads the other's files to the same packets and ends at the
// same indices; (c) both sides make the same signal decisions, as writer (empty -> non-empty) and as
// reader (pending_send_sz). Skipped when the peer cannot be built, except on CI, where that fails.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, type TestContext, test } from 'node:test';
import fc from 'fast-check';
import {
  decodeRingBytes,
  encodeRingScript,
  encodeSummaryLines,
  type ringDecodeToJson,
  writeRingScript,
} from '../../src/cli/ring-commands.js';
import {
  CONTROL_FEATURE_BITS,
  CONTROL_INTERRUPT_MASK,
  CONTROL_PENDING_SEND_SZ,
  RingMemory,
  RingReader,
} from '../../src/ring/index.js';
import {
  buildDpdkPeer,
  type DpdkPeer,
  interopRequired,
  type PeerBuild,
  type PeerReadResult,
  patchSignalCounter,
  REPO_ROOT,
} from './dpdk-peer.js';

let build: PeerBuild | null = null;
let buildFailure: unknown = null;

before(() => {
  try {
    build = buildDpdkPeer();
  } catch (e) {
    buildFailure = e;
  }
});

after(() => build?.peer?.dispose());

/** The peer, or null after marking the test skipped (not on CI: there a missing peer fails). */
function peerFor(t: TestContext): DpdkPeer | null {
  if (buildFailure !== null) throw buildFailure;
  if (build?.peer) return build.peer;
  const reason = build?.reason ?? 'the DPDK peer was not built';
  if (interopRequired()) assert.fail(`CI=true but ${reason}`);
  t.skip(reason);
  return null;
}

// --- helpers ---

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** n bytes of a pattern as hex (never all zero, so padding mistakes show). */
function payloadHex(n: number, seed: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += ((seed * 31 + i * 7 + 1) & 0xff).toString(16).padStart(2, '0');
  return s;
}

function assertSameBytes(ours: Uint8Array, theirs: Uint8Array, what: string): void {
  assert.equal(ours.length, theirs.length, `${what}: file sizes differ`);
  for (let i = 0; i < ours.length; i++) {
    if (ours[i] !== theirs[i]) {
      const at = i < 4096 ? `control page byte 0x${i.toString(16)}` : `data byte ${i - 4096}`;
      assert.fail(
        `${what}: first difference at ${at}: ours ${hex(ours.subarray(i, i + 16))}, DPDK ${hex(theirs.subarray(i, i + 16))}`,
      );
    }
  }
}

/** Both writers on one script: identical files and summary lines. Returns the file. */
function sameWrites(peer: DpdkPeer, script: string, dataSize: number, start = 0) {
  const ours = encodeRingScript(script, { dataSize, startIndex: start });
  const theirs = peer.writeRing(script, dataSize, start);
  assert.deepEqual(encodeSummaryLines(ours), theirs.lines, 'summary lines');
  assertSameBytes(ours.bytes, theirs.bytes, 'ring file');
  return ours;
}

/** This project's library reader, consuming (commit per packet): end indices and signal count. */
function consumeWithRingReader(bytes: Uint8Array): {
  rindex: number;
  windex: number;
  read: number;
  signals: number;
} {
  const copy = bytes.slice();
  const ring = RingMemory.fromBytes(copy);
  const reader = new RingReader(ring);
  let read = 0;
  let signals = 0;
  while (reader.next()) {
    read++;
    if (reader.commit()) signals++;
  }
  const c = ring.controlSnapshot();
  return { rindex: c.readIndex, windex: c.writeIndex, read, signals };
}

/** Both readers on one file: the same packets, the same end indices. */
function sameReads(peer: DpdkPeer, bytes: Uint8Array): PeerReadResult {
  const theirs = peer.readRing(bytes);
  const ours = decodeRingBytes(bytes);
  assert.equal(ours.error, null);
  assert.equal(ours.packets.length, theirs.packets.length, 'packet count');
  ours.packets.forEach((p, i) => {
    const q = theirs.packets[i]!;
    assert.deepEqual(
      { type: p.type, flags: p.flags, hlen: p.hlen, tlen: p.tlen, xactid: p.transactionId, raw: hex(p.raw) },
      { type: q.type, flags: q.flags, hlen: q.hlen, tlen: q.tlen, xactid: q.xactid, raw: q.raw },
      `packet ${i}`,
    );
  });
  assert.equal(ours.control.writeIndex, theirs.windex, 'write_index');
  assert.equal(ours.endIndex, theirs.rindex, 'read_index after the last packet');
  const consumed = consumeWithRingReader(bytes);
  assert.deepEqual(
    { read: consumed.read, windex: consumed.windex, rindex: consumed.rindex },
    { read: theirs.read, windex: theirs.windex, rindex: theirs.rindex },
    'RingReader totals',
  );
  assert.deepEqual(consumed.rindex, readU32(theirs.after!, 4), 'read_index in the file DPDK read');
  return theirs;
}

function readU32(bytes: Uint8Array, off: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(off, true);
}

function writeU32(bytes: Uint8Array, off: number, v: number): void {
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint32(off, v, true);
}

/** Runs `vmbus ...` through tsx from the repository root. */
function cli(args: string[], input = '') {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    cwd: REPO_ROOT,
    input,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const README_SCRIPT = [
  '# the example of shared/interop/README.md',
  'send 6 1 0x1000 68656c6c6f',
  'send 11 0 0x1001 0102030405060708090a',
  '',
  'sglist 0x42 4096:0:0x1234,100:8:0x99 deadbeef',
].join('\n');

// --- the patch itself ---

describe('the peer signal-counter patch', () => {
  test('moves take_signals() to trigs[0].pending (monitor[2]) and refuses unexpected source', () => {
    const src = [
      'static unsigned take_signals(void)\n{\n',
      '\tunsigned n = (monitor[0] >> MONITOR_ID) & 1; /* trigs[0].pending is the first word */\n',
      '\tmonitor[0] = 0;\n',
      '\treturn n;\n}\n',
    ].join('');
    const out = patchSignalCounter(src);
    assert.match(out, /unsigned n = \(monitor\[2\] >> MONITOR_ID\) & 1;/);
    assert.match(out, /\tmonitor\[2\] = 0;/);
    assert.doesNotMatch(out, /monitor\[0\]/);
    assert.throws(() => patchSignalCounter(out), /re-checked/);
  });
});

// --- (a) writers: byte-identical files ---

describe('(a) the same script through both writers gives the same ring file', () => {
  test('the README example in a one-page ring', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const r = sameWrites(peer, README_SCRIPT, 4096);
    assert.deepEqual(encodeSummaryLines(r), ['sent=3 signals=1 windex=144 rindex=0']);
    sameReads(peer, r.bytes);
  });

  test('payload sizes 0..300 with inband, completion and other packet types', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const types = [
      [6, 1],
      [11, 0],
      [6, 0],
      [11, 1],
      [1, 0],
      [0xa, 1],
      [0x20, 0],
    ] as const;
    const lines: string[] = [];
    for (let n = 0; n <= 300; n++) {
      const [type, flags] = types[n % types.length]!;
      lines.push(
        `send ${type} ${flags} ${n === 0 ? 0 : `0x${(n * 0x10001).toString(16)}`} ${payloadHex(n, n)}`,
      );
    }
    const r = sameWrites(peer, lines.join('\n'), 64 * 1024);
    assert.equal(r.sent, 301);
    sameReads(peer, r.bytes);
  });

  test('transaction ids across the u64 range DPDK parses, and types 0 and 0xffff', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const ids = ['0', '1', '0xffffffff', '0x100000000', '0x123456789abcdef0', '0x7fffffffffffffff'];
    const script = ids
      .map((id, i) => `send ${i % 2 === 0 ? 0 : 0xffff} 0xffff ${id} ${payloadHex(i, i)}`)
      .join('\n');
    const r = sameWrites(peer, script, 4096);
    sameReads(peer, r.bytes);
  });

  test('a packet that wraps around the end of the data area', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const D = 4096;
    const start = D - 24; // a 56-byte packet: 24 bytes before the end, 32 after
    const r = sameWrites(peer, `send 6 1 7 ${payloadHex(40, 1)}\nsend 11 0 8 ${payloadHex(3, 2)}`, D, start);
    const p = decodeRingBytes(r.bytes).packets[0]!;
    assert.ok(p.offset === start && p.offset + p.tlen > D, 'the first packet crosses the end');
    sameReads(peer, r.bytes);
  });

  test('a GPA-direct header that wraps in the middle of its ranges', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const D = 4096;
    const start = D - 40;
    const r = sameWrites(
      peer,
      `sglist 0x99 4096:0:0x10,1:4095:0x11,200:100:0x12 ${payloadHex(13, 3)}`,
      D,
      start,
    );
    assert.ok(decodeRingBytes(r.bytes).packets[0]!.hlen > 40, 'the header crosses the end');
    sameReads(peer, r.bytes);
  });

  test('a packet that ends exactly at the end, so its trailer wraps to offset 0', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const D = 8192;
    const start = D - 32; // a 32-byte packet fills the tail; its trailer lands at 0
    const r = sameWrites(
      peer,
      `send 6 1 0x55 ${payloadHex(16, 4)}\nsend 6 0 0x56 ${payloadHex(9, 5)}`,
      D,
      start,
    );
    const first = decodeRingBytes(r.bytes).packets[1]!;
    assert.equal(first.offset, 8, 'the second packet starts right after the wrapped trailer');
    sameReads(peer, r.bytes);
  });

  test('a packet whose trailer ends exactly at the end (write_index wraps to 0)', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const D = 4096;
    const r = sameWrites(peer, `send 6 1 1 ${payloadHex(16, 6)}`, D, D - 40);
    assert.equal(r.writeIndex, 0);
    sameReads(peer, r.bytes);
  });

  test('every start index in the last 256 bytes, with mixed packets', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const D = 4096;
    const script = [
      'send 6 1 1',
      `send 6 1 2 ${payloadHex(5, 1)}`,
      `sglist 3 8:0:0x1,16:8:0x2 ${payloadHex(24, 2)}`,
      `send 11 0 4 ${payloadHex(40, 3)}`,
      `send 6 0 5 ${payloadHex(300, 4)}`,
    ].join('\n');
    for (let start = D - 256; start < D; start += 8) {
      const r = sameWrites(peer, script, D, start);
      sameReads(peer, r.bytes);
    }
  });

  test('GPA-direct packets with 1 to 32 ranges', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const lines: string[] = [];
    for (const count of [1, 2, 3, 5, 16, 32]) {
      const ranges = Array.from({ length: count }, (_, i) => {
        const ofs = (i * 409) % 4096;
        const len = Math.max(1, 4096 - ofs - i);
        return `${len}:${ofs}:0x${(0xfffff00000000 + i * 0x1001).toString(16)}`;
      });
      lines.push(
        `sglist 0x${(count * 0x1111).toString(16)} ${ranges.join(',')} ${payloadHex(count * 3, count)}`,
      );
    }
    lines.push('sglist 0 1:0:0');
    const r = sameWrites(peer, lines.join('\n'), 16 * 1024);
    assert.equal(r.sent, 7);
    sameReads(peer, r.bytes);
  });
});

describe('(a) rings that fill up: same refusal line and summary', () => {
  test('refused when the free space equals the packet plus trailer, accepted with 8 more', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    // Packet 1 (4048 bytes + trailer) leaves 40 free bytes.
    const first = `send 6 1 1 ${payloadHex(4032, 1)}`;
    const refused = sameWrites(peer, `${first}\nsend 6 1 2 ${payloadHex(16, 2)}`, 4096);
    assert.deepEqual(encodeSummaryLines(refused), [
      'full at line 2',
      'sent=1 signals=1 windex=4056 rindex=0',
    ]);
    const accepted = sameWrites(peer, `${first}\nsend 6 1 2 ${payloadHex(8, 2)}\nsend 6 1 3`, 4096);
    assert.deepEqual(encodeSummaryLines(accepted), [
      'full at line 3',
      'sent=2 signals=1 windex=4088 rindex=0',
    ]);
    sameReads(peer, accepted.bytes);
  });

  test('filling a wrapped ring; lines after the refused one are never read', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const lines: string[] = [];
    for (let i = 0; i < 100; i++) lines.push(`send 6 1 ${i} ${payloadHex(i * 3, i)}`);
    lines.push('this line is never parsed by either writer');
    const r = sameWrites(peer, lines.join('\n'), 8192, 8192 - 1000);
    assert.ok(r.fullAtLine !== null && r.fullAtLine < 100, 'the ring filled before the script ended');
    sameReads(peer, r.bytes);
  });

  test('a packet larger than the whole ring is refused the same way', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const r = sameWrites(peer, `send 6 1 1 ${payloadHex(10, 1)}\nsend 6 1 2 ${payloadHex(5000, 2)}`, 4096);
    assert.deepEqual(encodeSummaryLines(r), ['full at line 2', 'sent=1 signals=1 windex=40 rindex=0']);
  });
});

describe('(a) random scripts (fast-check)', () => {
  const aLine = fc.oneof(
    {
      weight: 6,
      arbitrary: fc
        .record({
          type: fc.constantFrom(0, 1, 6, 6, 6, 0xa, 0xb, 0xb, 0xc, 0x30),
          flags: fc.integer({ min: 0, max: 0xffff }),
          id: fc.bigInt({ min: 0n, max: 2n ** 63n - 1n }),
          n: fc.integer({ min: 0, max: 300 }),
          seed: fc.nat(255),
        })
        .map((l) => `send ${l.type} ${l.flags} 0x${l.id.toString(16)} ${payloadHex(l.n, l.seed)}`.trimEnd()),
    },
    {
      weight: 2,
      arbitrary: fc
        .record({
          id: fc.bigInt({ min: 0n, max: 2n ** 63n - 1n }),
          ranges: fc.array(
            fc
              .record({
                ofs: fc.integer({ min: 0, max: 4095 }),
                len: fc.integer({ min: 1, max: 4096 }),
                pfn: fc.nat(),
              })
              .map((r) => `${Math.min(r.len, 4096 - r.ofs)}:${r.ofs}:${r.pfn}`),
            { minLength: 1, maxLength: 6 },
          ),
          n: fc.integer({ min: 0, max: 100 }),
        })
        .map((l) => `sglist ${l.id} ${l.ranges.join(',')} ${payloadHex(l.n, 9)}`.trimEnd()),
    },
    { weight: 1, arbitrary: fc.constantFrom('', '# a comment', '   ', 'send 6 1 1 # trailing comment') },
  );

  test('identical files, summaries and reads for 30 random scripts', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    fc.assert(
      fc.property(
        fc.constantFrom(4096, 8192, 12288),
        fc.nat(),
        fc.array(aLine, { minLength: 0, maxLength: 60 }),
        (D, startSeed, lines) => {
          const start = (startSeed % (D / 8)) * 8;
          const r = sameWrites(peer, lines.join('\n'), D, start);
          sameReads(peer, r.bytes);
        },
      ),
      { seed: 0x5eed, numRuns: 30 },
    );
  });
});

// --- (b) readers: each reads the other's files ---

describe('(b) `vmbus ring decode --json` reads DPDK-written files', () => {
  test('same packets and indices as DPDK read, file untouched', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const script = [README_SCRIPT, `send 6 1 0x77 ${payloadHex(101, 7)}`, 'send 11 0 0x78'].join('\n');
    const written = peer.writeRing(script, 4096, 4096 - 64);
    const file = peer.path('decode');
    peer.ok(['create', file, '4096', String(4096 - 64)]);
    peer.ok(['write', file], script);
    const r = cli(['ring', 'decode', file, '--json']);
    assert.equal(r.status, 0, r.stderr);
    assertSameBytes(new Uint8Array(readFileSync(file)), written.bytes, 'file after decode');
    const json = JSON.parse(r.stdout) as ReturnType<typeof ringDecodeToJson> & {
      packets: { type: number; flags: number; hlen: number; tlen: number; xactid: string; raw: string }[];
      endIndex: number;
      control: { writeIndex: number };
    };
    const theirs = peer.readRing(written.bytes);
    assert.deepEqual(
      json.packets.map((p) => [p.type, p.flags, p.hlen, p.tlen, BigInt(p.xactid), p.raw]),
      theirs.packets.map((p) => [p.type, p.flags, p.hlen, p.tlen, p.xactid, p.raw]),
    );
    assert.equal(json.control.writeIndex, theirs.windex);
    assert.equal(json.endIndex, theirs.rindex);
    assert.equal(json.packets.length, 5);
  });

  test('`vmbus ring encode` writes what DPDK writes, and DPDK reads it back', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const file = peer.path('ours');
    const script = `${README_SCRIPT}\nsend 6 1 0x10 ${payloadHex(77, 3)}`;
    const r = cli(['ring', 'encode', '--data-size', '4096', '--start', '0xfc0', '--out', file], script);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'sent=4 signals=1 windex=184 rindex=4032\n');
    const bytes = new Uint8Array(readFileSync(file));
    const dpdk = peer.writeRing(script, 4096, 0xfc0);
    assert.deepEqual(dpdk.lines, [r.stdout.trimEnd()]);
    assertSameBytes(bytes, dpdk.bytes, 'vmbus ring encode vs DPDK write');
    const theirs = sameReads(peer, bytes);
    assert.equal(theirs.read, 4);
    assert.equal(theirs.packets[2]!.raw, hex(decodeRingBytes(bytes).packets[2]!.raw));
  });
});

// --- (c) signalling ---

describe('(c) writer signals (empty -> non-empty, interrupt_mask)', () => {
  /** DPDK `write` onto an existing file's bytes. */
  function peerWriteOnto(peer: DpdkPeer, bytes: Uint8Array, script: string) {
    const file = peer.path('onto');
    writeFileSync(file, bytes);
    const out = peer.ok(['write', file], script);
    return { bytes: new Uint8Array(readFileSync(file)), lines: out.trimEnd().split('\n') };
  }
  function ourWriteOnto(bytes: Uint8Array, script: string) {
    const copy = bytes.slice();
    const result = writeRingScript(RingMemory.fromBytes(copy), script);
    return { bytes: copy, lines: encodeSummaryLines(result) };
  }
  function sameAppend(peer: DpdkPeer, bytes: Uint8Array, script: string) {
    const ours = ourWriteOnto(bytes, script);
    const theirs = peerWriteOnto(peer, bytes, script);
    assert.deepEqual(ours.lines, theirs.lines);
    assertSameBytes(ours.bytes, theirs.bytes, 'ring file after append');
    return ours;
  }

  test('appending to a ring the reader has not emptied does not signal; after a drain it does', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const first = peer.writeRing('send 6 1 1 aabb\nsend 6 1 2 ccdd', 4096, 4000);
    const more = `send 6 1 3 ${payloadHex(50, 1)}\nsend 11 0 4`;
    const appended = sameAppend(peer, first.bytes, more);
    assert.match(appended.lines.at(-1)!, /^sent=2 signals=0 /);
    const drained = peer.readRing(appended.bytes).after!;
    const again = sameAppend(peer, drained, more);
    assert.match(again.lines.at(-1)!, /^sent=2 signals=1 /);
  });

  test('interrupt_mask = 1 suppresses the signal on both sides', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const empty = peer.writeRing('', 4096, 64).bytes;
    writeU32(empty, 4 * CONTROL_INTERRUPT_MASK, 1);
    const r = sameAppend(peer, empty, 'send 6 1 1 01\nsend 6 1 2 02');
    assert.deepEqual(r.lines, ['sent=2 signals=0 windex=128 rindex=64']);
  });
});

describe('(c) reader signals (pending_send_sz rule)', () => {
  test('DPDK read --signal and RingReader (linux rule) agree on every pending_send_sz and feature_bits', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    const D = 4096;
    const sizes = [0, 5, 40, 100, 300, 17, 1000, 8];
    const script = sizes.map((n, i) => `send 6 1 ${i} ${payloadHex(n, i)}`).join('\n');
    const base = peer.writeRing(script, D, 2048).bytes;
    // Free space before any read, and after each packet (read one at a time).
    const packets = decodeRingBytes(base).packets;
    const used = packets.reduce((n, p) => n + p.tlen + 8, 0);
    const free0 = D - used;
    const freeAfter: number[] = [];
    let f = free0;
    for (const p of packets) {
      f += p.tlen + 8;
      freeAfter.push(f);
    }
    const crossed = [free0, free0 + 1, freeAfter[2]! - 8, freeAfter[4]!, freeAfter[5]! - 1, D - 8];
    const pendings = [0, 1, 8, free0 - 8, ...crossed, D, D + 8, 0x7fffffff, 0xffffffff];
    let nonZero = 0;
    for (const featureBits of [0, 1]) {
      for (const pending of pendings) {
        const bytes = base.slice();
        writeU32(bytes, 4 * CONTROL_FEATURE_BITS, featureBits);
        writeU32(bytes, 4 * CONTROL_PENDING_SEND_SZ, pending);
        const theirs = peer.readRing(bytes, true);
        const ours = consumeWithRingReader(bytes);
        assert.equal(ours.signals, theirs.signals, `feature_bits=${featureBits} pending_send_sz=${pending}`);
        assert.equal(theirs.read, packets.length);
        const expected = featureBits === 1 && crossed.includes(pending) ? 1 : 0;
        assert.equal(
          theirs.signals,
          expected,
          `feature_bits=${featureBits} pending_send_sz=${pending}: rule`,
        );
        nonZero += theirs.signals;
      }
    }
    assert.equal(nonZero, 6, 'the patched peer reports signals where the rule says so');
  });

  test('agreement holds for random rings and pending sizes (fast-check)', (t) => {
    const peer = peerFor(t);
    if (!peer) return;
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 200 }), { minLength: 1, maxLength: 12 }),
        fc.nat(4096 / 8 - 1),
        fc.integer({ min: 0, max: 4200 }),
        fc.constantFrom(0, 1, 3),
        (sizes, startSlot, pending, featureBits) => {
          const script = sizes.map((n, i) => `send 6 1 ${i} ${payloadHex(n, i)}`).join('\n');
          const bytes = encodeRingScript(script, { dataSize: 4096, startIndex: startSlot * 8 }).bytes;
          writeU32(bytes, 4 * CONTROL_FEATURE_BITS, featureBits);
          writeU32(bytes, 4 * CONTROL_PENDING_SEND_SZ, pending);
          assert.equal(consumeWithRingReader(bytes).signals, peer.readRing(bytes, true).signals);
        },
      ),
      { seed: 0xc0ffee, numRuns: 40 },
    );
  });
});
