// GUIDs: the Windows mixed-endian wire form and the standard text form, both directions.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { WireError } from '../../src/wire/errors.js';
import {
  formatGuid,
  Guid,
  guidEquals,
  NIL_GUID,
  parseGuid,
  readGuid,
  writeGuid,
} from '../../src/wire/guid.js';

const STORVSC_TEXT = 'ba6163d9-04a1-4d29-b605-72e2ffb1dc7f';
const STORVSC_BYTES = Uint8Array.from([
  0xd9, 0x63, 0x61, 0xba, 0xa1, 0x04, 0x29, 0x4d, 0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f,
]);

describe('Guid', () => {
  test('parses the storvsc class id into Windows mixed-endian bytes', () => {
    assert.deepEqual(parseGuid(`{${STORVSC_TEXT}}`).bytes, STORVSC_BYTES);
    assert.deepEqual(parseGuid(STORVSC_TEXT.toUpperCase()).bytes, STORVSC_BYTES);
  });

  test('formats lower-case without braces', () => {
    assert.equal(formatGuid(Guid.fromBytes(STORVSC_BYTES)), STORVSC_TEXT);
    assert.equal(String(parseGuid(`{${STORVSC_TEXT.toUpperCase()}}`)), STORVSC_TEXT);
    assert.equal(JSON.stringify({ g: parseGuid(STORVSC_TEXT) }), `{"g":"${STORVSC_TEXT}"}`);
  });

  test('reads and writes at an offset', () => {
    const buf = new Uint8Array(20).fill(0xee);
    writeGuid(parseGuid(STORVSC_TEXT), buf, 3);
    assert.deepEqual(buf.subarray(3, 19), STORVSC_BYTES);
    assert.equal(buf[2], 0xee);
    assert.equal(buf[19], 0xee);
    const g = readGuid(buf, 3);
    assert.equal(g.toString(), STORVSC_TEXT);
    buf[3] = 0; // the read GUID is a copy
    assert.equal(g.toString(), STORVSC_TEXT);
  });

  test('read past the end is a truncated WireError', () => {
    assert.throws(
      () => readGuid(new Uint8Array(20), 5, 'OFFERCHANNEL.if_type'),
      (e: unknown) => e instanceof WireError && e.code === 'truncated' && e.field === 'OFFERCHANNEL.if_type',
    );
  });

  test('equality and NIL', () => {
    assert.ok(guidEquals(parseGuid(STORVSC_TEXT), Guid.fromBytes(STORVSC_BYTES)));
    assert.ok(!guidEquals(parseGuid(STORVSC_TEXT), NIL_GUID));
    assert.ok(NIL_GUID.isNil());
    assert.equal(NIL_GUID.toString(), '00000000-0000-0000-0000-000000000000');
  });

  test('bad text is an out-of-range WireError naming the field', () => {
    for (const bad of [
      '',
      'xyz',
      `{${STORVSC_TEXT}`,
      `${STORVSC_TEXT}}`,
      `${STORVSC_TEXT}0`,
      STORVSC_TEXT.replace(/-/g, ''),
    ]) {
      assert.throws(
        () => parseGuid(bad, 'clientId'),
        (e: unknown) => e instanceof WireError && e.code === 'out-of-range' && e.field === 'clientId',
        bad,
      );
    }
  });

  test('fromBytes needs exactly 16 bytes', () => {
    assert.throws(() => Guid.fromBytes(new Uint8Array(15)), RangeError);
  });

  test('text <-> bytes round-trips for any 16 bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (bytes) => {
        const g = Guid.fromBytes(bytes);
        assert.deepEqual(parseGuid(g.toString()).bytes, bytes);
      }),
      { numRuns: 200 },
    );
  });
});
