// Fuzzing the channel-message decoders: random and mutated bytes give only WireErrors, and what decodes round-trips.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { CHANNEL_MESSAGE_INFO, CHANNELMSG_COUNT } from '../../src/wire/constants.js';
import { WireError } from '../../src/wire/errors.js';
import {
  encodeGpaRanges,
  GpadlReassembler,
  type GpaRange,
  pageRange,
  splitGpadl,
} from '../../src/wire/gpadl.js';
import { describeMessage, messageFromJson, messageToJson } from '../../src/wire/message-json.js';
import { type ChannelMessage, decodeMessage, encodeMessage } from '../../src/wire/messages.js';

/** Runs `fn`; passes if it returns, or throws a WireError; anything else fails the test. */
function onlyWireError<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (err) {
    if (err instanceof WireError) return undefined;
    throw err;
  }
}

const stats = { decoded: 0, refused: 0 };

/** Everything decodeMessage accepts must re-encode, and JSON round-trip, to the same bytes. */
function checkDecoded(bytes: Uint8Array): void {
  const m = onlyWireError(() => decodeMessage(bytes));
  if (m === undefined) {
    stats.refused++;
    return;
  }
  stats.decoded++;
  assert.deepEqual(encodeMessage(m), bytes);
  const back = messageFromJson(JSON.parse(JSON.stringify(messageToJson(m))));
  assert.deepEqual(encodeMessage(back), bytes);
  assert.ok(describeMessage(m).length > 0);
}

const withType = (type: number, body: Uint8Array) => {
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, type >>> 0, true);
  out.set(body, 4);
  return out;
};

/** Valid-looking messages: a known type and a length around one of its forms' sizes. */
const plausible = fc.integer({ min: 1, max: CHANNELMSG_COUNT - 1 }).chain((type) => {
  const sizes = CHANNEL_MESSAGE_INFO[type]!.sizes;
  return fc.tuple(fc.constantFrom(...sizes), fc.integer({ min: -3, max: 40 })).chain(([size, delta]) => {
    const len = Math.max(4, Math.min(240, size + delta));
    return fc.uint8Array({ minLength: len - 4, maxLength: len - 4 }).map((b) => withType(type, b));
  });
});

const mutate = (bytes: Uint8Array) =>
  fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }).chain((edits) =>
    fc.integer({ min: -8, max: 8 }).map((resize) => {
      const len = Math.max(0, bytes.length + resize);
      const out = new Uint8Array(len);
      out.set(bytes.subarray(0, Math.min(len, bytes.length)));
      for (const [at, v] of edits) if (len > 0) out[at % len] = v;
      return out;
    }),
  );

describe('decodeMessage fuzz', () => {
  test('random bytes: only WireError, and whatever decodes round-trips (bytes and JSON)', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 260 }),
          fc
            .tuple(fc.integer({ min: -2, max: 33 }), fc.uint8Array({ maxLength: 250 }))
            .map(([t, b]) => withType(t, b)),
        ),
        checkDecoded,
      ),
      { numRuns: 4000 },
    );
  });

  test('plausible and mutated messages of every type: only WireError, exact round-trip', () => {
    fc.assert(
      fc.property(
        plausible.chain((b) => fc.oneof(fc.constant(b), mutate(b))),
        checkDecoded,
      ),
      { numRuns: 4000 },
    );
  });

  test('the fuzzers above exercised both outcomes', () => {
    assert.ok(stats.decoded > 1000, `decoded ${stats.decoded}`);
    assert.ok(stats.refused > 1000, `refused ${stats.refused}`);
  });

  test('mutated GPADL messages', () => {
    const ranges: GpaRange[] = [pageRange([1, 2, 3]), { byteCount: 50, byteOffset: 4090, pfns: [9, 10] }];
    const msgs = [
      ...splitGpadl(1, 2, ranges),
      ...splitGpadl(3, 4, [pageRange(Array.from({ length: 40 }, (_, i) => i))]),
    ];
    fc.assert(fc.property(fc.constantFrom(...msgs).chain(mutate), checkDecoded), { numRuns: 1500 });
  });
});

describe('messageFromJson fuzz', () => {
  test('arbitrary JSON values: only WireError', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const m = onlyWireError(() => messageFromJson(v));
        if (m !== undefined) assert.ok(encodeMessage(m).length <= 240);
      }),
      { numRuns: 1500 },
    );
  });

  test('valid JSON with one field replaced or removed: only WireError', () => {
    const source = plausible
      .map((b) => onlyWireError(() => decodeMessage(b)))
      .filter((m): m is ChannelMessage => m !== undefined)
      .map((m) => messageToJson(m) as Record<string, unknown>);
    fc.assert(
      fc.property(source, fc.nat(), fc.oneof(fc.jsonValue(), fc.constant(undefined)), (json, pick, value) => {
        const keys = Object.keys(json);
        const key = keys[pick % keys.length]!;
        const edited: Record<string, unknown> = { ...json };
        if (value === undefined) delete edited[key];
        else edited[key] = value;
        const m = onlyWireError(() => messageFromJson(edited));
        if (m !== undefined) {
          const bytes = encodeMessage(m);
          assert.deepEqual(encodeMessage(decodeMessage(bytes)), bytes);
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('GpadlReassembler fuzz', () => {
  test('random and mutated header/body sequences: only WireError; completed GPADLs are well-formed', () => {
    const good = [
      ...splitGpadl(1, 7, [pageRange(Array.from({ length: 60 }, (_, i) => 100 + i))]),
      ...splitGpadl(2, 8, [pageRange([5]), { byteCount: 9000, byteOffset: 100, pfns: [1, 2, 3] }]),
    ];
    const message = fc.oneof(
      fc.constantFrom(...good),
      fc.constantFrom(...good).chain(mutate),
      plausible.filter((b) => b[0] === 8 || b[0] === 9),
    );
    let completed = 0;
    fc.assert(
      fc.property(fc.array(message, { maxLength: 12 }), (seq) => {
        const r = new GpadlReassembler({ maxRanges: 4, maxPfns: 100, maxBytes: 100 * 4096, maxPending: 3 });
        for (const bytes of seq) {
          const m = onlyWireError(() => decodeMessage(bytes));
          if (m === undefined || (m.type !== 8 && m.type !== 9)) continue;
          const done = onlyWireError(() => (m.type === 8 ? r.header(m) : r.body(m)));
          if (done === undefined) continue;
          completed++;
          assert.ok(done.ranges.length >= 1 && done.ranges.length <= 4);
          assert.ok(done.pfnCount <= 100 && done.byteCount <= 100 * 4096);
          for (const g of done.ranges) {
            assert.ok(g.byteCount > 0 && g.byteOffset < 4096);
            assert.equal(g.pfns.length, Math.ceil((g.byteOffset + g.byteCount) / 4096));
          }
          assert.deepEqual(encodeGpaRanges(done.ranges), done.rangeData);
          assert.ok(r.pendingCount <= 3);
        }
      }),
      { numRuns: 2000 },
    );
    assert.ok(completed > 50, `only ${completed} GPADLs completed`);
  });
});
