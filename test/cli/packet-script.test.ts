// The packet-script parser of `vmbus ring encode` (src/cli/packet-script.ts): the README's format,
// the strictness where the C peer would misread a line, line numbers in errors, lazy parsing, and
// format -> parse round trips.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  formatScriptCommand,
  MAX_SCRIPT_PACKET_LENGTH,
  parseScript,
  parseScriptLine,
  parseScriptNumber,
  type ScriptCommand,
  ScriptError,
  scriptPacketLength,
} from '../../src/cli/packet-script.js';

describe('parseScriptLine', () => {
  test('send with type, flags, 64-bit transaction id and payload', () => {
    const c = parseScriptLine('send 6 1 0x1122334455667788 0102ff', 1);
    assert.deepEqual(c, {
      verb: 'send',
      line: 1,
      type: 6,
      flags: 1,
      transIdLo: 0x55667788,
      transIdHi: 0x11223344,
      payload: Uint8Array.of(1, 2, 0xff),
    });
  });

  test('send without payload; decimal numbers; upper-case hex', () => {
    const c = parseScriptLine('  send\t11 0 4096  ', 3);
    assert.equal(c?.verb, 'send');
    assert.deepEqual([c!.transIdLo, c!.transIdHi, c!.payload.length], [4096, 0, 0]);
    const d = parseScriptLine('send 0XB 0x0 0XFFFFFFFFFFFFFFFF ABcd', 1)!;
    assert.deepEqual([d.transIdLo, d.transIdHi, [...d.payload]], [0xffffffff, 0xffffffff, [0xab, 0xcd]]);
  });

  test('sglist: ranges LEN:OFS:PFN, one page each', () => {
    const c = parseScriptLine('sglist 0x42 4096:0:0x1234,100:8:0x99 deadbeef', 7);
    assert.deepEqual(c, {
      verb: 'sglist',
      line: 7,
      transIdLo: 0x42,
      transIdHi: 0,
      ranges: [
        { byteCount: 4096, byteOffset: 0, pfns: [0x1234] },
        { byteCount: 100, byteOffset: 8, pfns: [0x99] },
      ],
      payload: Uint8Array.of(0xde, 0xad, 0xbe, 0xef),
    });
    assert.equal(parseScriptLine('sglist 1 1:4095:0xfffffffffffff', 1)?.verb, 'sglist');
  });

  test('blank and comment lines are null; a comment may end a command', () => {
    assert.equal(parseScriptLine('', 1), null);
    assert.equal(parseScriptLine('   \t', 1), null);
    assert.equal(parseScriptLine('# send 6 1 1', 1), null);
    assert.equal(parseScriptLine('send 6 1 1 aa # note', 1)?.payload.length, 1);
    assert.equal(parseScriptLine('send 6 1 1\r', 1)?.verb, 'send');
  });

  const bad: [string, RegExp][] = [
    ['sned 6 1 1', /unknown verb "sned"/],
    ['send 6 1', /send takes TYPE FLAGS XACTID \[HEX\], got 2 fields/],
    ['send 6 1 1 aa bb', /got 5 fields/],
    ['send 0x10000 1 1', /TYPE 0x10000 is above 0xffff/],
    ['send 6 65536 1', /FLAGS 65536 is above 0xffff/],
    ['send 6 1 0x10000000000000000', /XACTID .* is above 2\^64-1/],
    ['send 6 1 010', /leading zeros are ambiguous/],
    ['send -1 1 1', /TYPE "-1" is not a decimal or 0x-hex number/],
    ['send 6 1 1 abc', /not an even number of hex digits/],
    ['send 6 1 1 0xab', /not an even number of hex digits|is not an even/],
    ['send 6 1 1 zz', /not an even number of hex digits/],
    ['sglist 1', /sglist takes XACTID RANGES \[HEX\], got 1 fields/],
    ['sglist 1 4096:0', /range 0 "4096:0" is not LEN:OFS:PFN/],
    ['sglist 1 8:0:1,0:0:2', /range 1 has LEN 0/],
    ['sglist 1 100:4000:1', /range 0 \(OFS 4000 \+ LEN 100\) does not lie in its one page/],
    ['sglist 1 1:4096:1', /range 0 OFS 4096 is above 0xfff/],
    ['sglist 1 1:0:0x10000000000000', /range 0 PFN .* is above 0xfffffffffffff/],
    ['sglist 1 1:0:1,', /range 1 "" is not LEN:OFS:PFN/],
  ];
  for (const [line, why] of bad) {
    test(`refuses ${JSON.stringify(line)}`, () => {
      assert.throws(
        () => parseScriptLine(line, 12),
        (e: unknown) =>
          e instanceof ScriptError &&
          e.line === 12 &&
          /^script line 12: /.test(e.message) &&
          why.test(e.message),
      );
    });
  }

  test('refuses a packet longer than len8 can describe, accepts the longest one', () => {
    const longest = MAX_SCRIPT_PACKET_LENGTH - 16;
    const ok = parseScriptLine(`send 6 1 1 ${'ab'.repeat(longest)}`, 1)!;
    assert.equal(scriptPacketLength(ok), MAX_SCRIPT_PACKET_LENGTH);
    assert.throws(() => parseScriptLine(`send 6 1 1 ${'ab'.repeat(longest + 1)}`, 1), /longer than len8/);
  });
});

describe('parseScriptNumber', () => {
  test('decimal, 0x-hex, bounds', () => {
    assert.equal(parseScriptNumber('0', 'N', 10n), 0n);
    assert.equal(parseScriptNumber('10', 'N', 10n), 10n);
    assert.equal(parseScriptNumber('0xA', 'N', 10n), 10n);
    assert.throws(() => parseScriptNumber('11', 'N', 10n), /N 11 is above 0xa/);
    for (const t of ['', '0x', '1e3', '1.0', '+1', '00', ' 1']) {
      assert.throws(() => parseScriptNumber(t, 'N', 10n), /is not a decimal or 0x-hex number/, t);
    }
  });
});

describe('parseScript', () => {
  test('numbers lines from 1, skipping blanks and comments', () => {
    const cmds = [...parseScript('# header\n\nsend 6 1 1\r\n  \nsglist 2 8:0:1\n')];
    assert.deepEqual(
      cmds.map((c) => [c.verb, c.line]),
      [
        ['send', 3],
        ['sglist', 5],
      ],
    );
    assert.deepEqual([...parseScript('')], []);
  });

  test('is lazy: a bad line is only reported when reached', () => {
    const it = parseScript('send 6 1 1\nbogus line\n');
    assert.equal(it.next().value?.line, 1);
    assert.throws(() => it.next(), /script line 2: unknown verb "bogus"/);
  });
});

describe('formatScriptCommand', () => {
  const aCommand: fc.Arbitrary<ScriptCommand> = fc.oneof(
    fc.record({
      verb: fc.constant('send' as const),
      line: fc.constant(1),
      type: fc.integer({ min: 0, max: 0xffff }),
      flags: fc.integer({ min: 0, max: 0xffff }),
      transIdLo: fc.integer({ min: 0, max: 0xffffffff }),
      transIdHi: fc.integer({ min: 0, max: 0xffffffff }),
      payload: fc.uint8Array({ maxLength: 64 }),
    }),
    fc.record({
      verb: fc.constant('sglist' as const),
      line: fc.constant(1),
      transIdLo: fc.integer({ min: 0, max: 0xffffffff }),
      transIdHi: fc.integer({ min: 0, max: 0xffffffff }),
      ranges: fc.array(
        fc
          .record({
            byteOffset: fc.integer({ min: 0, max: 4095 }),
            len: fc.integer({ min: 1, max: 4096 }),
            pfn: fc.integer({ min: 0, max: 2 ** 52 - 1 }),
          })
          .map((r) => ({
            byteCount: Math.min(r.len, 4096 - r.byteOffset),
            byteOffset: r.byteOffset,
            pfns: [r.pfn],
          })),
        { minLength: 1, maxLength: 5 },
      ),
      payload: fc.uint8Array({ maxLength: 64 }),
    }),
  );

  test('parseScriptLine(formatScriptCommand(c)) gives c back', () => {
    fc.assert(
      fc.property(aCommand, (c) => {
        assert.deepEqual(parseScriptLine(formatScriptCommand(c), 1), { ...c });
      }),
      { numRuns: 200 },
    );
  });
});
