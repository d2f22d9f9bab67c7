// The `vmbus` commands run in-process through `main(argv, io)`: ring encode / decode (the spec's
// worked example bytes, hostile ring files, files left untouched), msg decode / encode (a vector of
// every message type and form round-trips byte for byte), help, and every bad-input path (exit 1,
// exactly one `vmbus: ...` line on stderr naming the problem, no stack).

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { main, USAGE } from '../../src/cli/main.js';
import { decodeRingBytes, encodeRingScript } from '../../src/cli/ring-commands.js';
import { Guid } from '../../src/wire/guid.js';
import { type FormSpec, LAYOUTS, type TypeSpec } from '../../src/wire/messages/layout.js';
import { type ChannelMessage, decodeMessage, encodeMessage } from '../../src/wire/messages.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(argv: string[], stdin = ''): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const code = await main(argv, {
    stdout: (t) => {
      stdout += t;
    },
    stderr: (t) => {
      stderr += t;
    },
    readStdin: async () => stdin,
  });
  return { code, stdout, stderr };
}

/** Exit 1 and exactly one non-empty stderr line, `vmbus: ...` matching `why`, with no stack frame. */
function assertBadInput(r: Run, why: RegExp): void {
  assert.equal(r.code, 1, `exit status (stderr: ${r.stderr})`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `one stderr line, got ${JSON.stringify(r.stderr)}`);
  assert.match(lines[0]!, /^vmbus: /);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
  assert.doesNotMatch(r.stderr, /internal error/);
  assert.match(lines[0]!, why);
}

const dir = mkdtempSync(join(tmpdir(), 'vmbus-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
const tmp = (name: string) => join(dir, `${fileNo++}-${name}`);

const hexOf = (b: Uint8Array) => Buffer.from(b).toString('hex');

// ---------------------------------------------------------------------------------------------

describe('vmbus help', () => {
  for (const arg of ['help', '--help', '-h']) {
    test(`${arg} lists every command on stdout`, async () => {
      const r = await run([arg]);
      assert.equal(r.code, 0);
      assert.equal(r.stderr, '');
      assert.equal(r.stdout, `${USAGE}\n`);
      for (const c of ['ring encode', 'ring decode', 'msg decode', 'msg encode', 'demo', 'help']) {
        assert.ok(r.stdout.includes(`vmbus ${c}`), c);
      }
    });
  }

  test('no command and unknown commands are one-line errors listing the commands', async () => {
    assertBadInput(await run([]), /no command given \(commands: ring, msg, info, demo, help/);
    assertBadInput(
      await run(['frobnicate']),
      /unknown command "frobnicate" \(commands: ring, msg, info, demo, help/,
    );
    assertBadInput(await run(['ring']), /ring: expected encode or decode/);
    assertBadInput(await run(['ring', 'mangle']), /ring: unknown subcommand "mangle"/);
    assertBadInput(await run(['msg']), /msg: expected decode or encode/);
    assertBadInput(await run(['msg', 'x']), /msg: unknown subcommand "x"/);
  });
});

// ---------------------------------------------------------------------------------------------

describe('vmbus ring encode', () => {
  test('writes the spec 1.10 worked example byte for byte', async () => {
    const out = tmp('example.bin');
    const r = await run(
      ['ring', 'encode', '--data-size', '4096', '--out', out],
      'send 6 1 0x1122334455667788 010203\nsend 0xb 0 5 0102030405060708\n',
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'sent=2 signals=1 windex=64 rindex=0\n');
    const file = new Uint8Array(readFileSync(out));
    assert.equal(file.length, 8192);
    const control = new DataView(file.buffer, file.byteOffset, 4096);
    assert.deepEqual(
      [0, 4, 8, 12, 0x40].map((o) => control.getUint32(o, true)),
      [64, 0, 0, 0, 1],
    );
    assert.ok(
      file.subarray(0x44, 4096).every((b) => b === 0) && file.subarray(16, 0x40).every((b) => b === 0),
    );
    const expected =
      '0600020003000100 8877665544332211 0102030000000000 0000000000000000' +
      '0b00020003000000 0500000000000000 0102030405060708 0000000020000000';
    assert.equal(hexOf(file.subarray(4096, 4096 + 64)), expected.replace(/ /g, ''));
    assert.ok(file.subarray(4096 + 64).every((b) => b === 0));
  });

  test('--start places both indices; full at line L stops reading the script', async () => {
    const out = tmp('full.bin');
    const payload = 'ab'.repeat(4000);
    const r = await run(
      ['ring', 'encode', '--data-size=4096', '--start', '0x800', '--out', out],
      `send 6 1 1 ${payload}\nsend 6 1 2 ${payload}\nnot a command\n`,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'full at line 2\nsent=1 signals=1 windex=1976 rindex=2048\n');
    assert.deepEqual(
      new Uint8Array(readFileSync(out)),
      encodeRingScript(`send 6 1 1 ${payload}`, { dataSize: 4096, startIndex: 2048 }).bytes,
    );
  });

  test('an empty script gives an empty ring', async () => {
    const out = tmp('empty.bin');
    const r = await run(
      ['ring', 'encode', '--data-size', '8192', '--start', '8184', '--out', out],
      '# nothing\n',
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'sent=0 signals=0 windex=8184 rindex=8184\n');
    assert.equal(statSync(out).size, 4096 + 8192);
  });

  const badOptions: [string[], RegExp][] = [
    [['--out', 'x'], /--data-size BYTES is required/],
    [['--data-size', '4096'], /--out FILE is required/],
    [['--data-size', '4000', '--out', 'x'], /--data-size 4000 is not a positive multiple of 4096/],
    [['--data-size', '0', '--out', 'x'], /--data-size 0 is not a positive multiple of 4096/],
    [['--data-size', 'big', '--out', 'x'], /--data-size "big" is not a decimal or 0x-hex number/],
    [['--data-size', '0x100000000', '--out', 'x'], /--data-size 0x100000000 is above/],
    [['--data-size', '4096', '--start', '4', '--out', 'x'], /--start 4 is not a multiple of 8/],
    [['--data-size', '4096', '--start', '4096', '--out', 'x'], /--start 4096 is above 0xff8/],
    [['--data-size', '4096', '--out', 'x', 'extra'], /unexpected argument "extra"/],
    [['--data-size', '4096', '--out', 'x', '--bogus'], /Unknown option '--bogus'/],
    [['--data-size', '--out', 'x'], /--data-size/],
  ];
  for (const [args, why] of badOptions) {
    test(`refuses ${args.join(' ')}`, async () => {
      assertBadInput(await run(['ring', 'encode', ...args], 'send 6 1 1\n'), why);
    });
  }

  test('a bad script line names its line, and no file is written', async () => {
    const out = tmp('never.bin');
    const r = await run(
      ['ring', 'encode', '--data-size', '4096', '--out', out],
      'send 6 1 1\n\nsend 6 1 2 xyz\n',
    );
    assertBadInput(r, /^vmbus: script line 3: payload "xyz" is not an even number of hex digits$/);
    assert.equal(r.stdout, '');
    assert.throws(() => statSync(out), /ENOENT/);
  });

  test('an output file that cannot be written', async () => {
    const r = await run(
      ['ring', 'encode', '--data-size', '4096', '--out', join(dir, 'no', 'such', 'dir.bin')],
      '',
    );
    assertBadInput(r, /no[/\\]such[/\\]dir\.bin: no such file or directory$/);
    const d = tmp('a-directory');
    mkdirSync(d);
    assertBadInput(await run(['ring', 'encode', '--data-size', '4096', '--out', d], ''), /: is a directory$/);
  });
});

// ---------------------------------------------------------------------------------------------

describe('vmbus ring decode', () => {
  const script = [
    'send 6 1 0x1000 68656c6c6f',
    'send 11 0 0x1001 0102030405060708090a',
    'sglist 0x42 4096:0:0x1234,100:8:0x99 deadbeef',
    'send 1 0 7',
  ].join('\n');

  function ringFile(
    text = script,
    dataSize = 4096,
    startIndex = 4096 - 48,
  ): { path: string; bytes: Uint8Array } {
    const bytes = encodeRingScript(text, { dataSize, startIndex }).bytes;
    const path = tmp('ring.bin');
    writeFileSync(path, bytes);
    return { path, bytes };
  }

  test('text: control fields, then every packet with its body and raw bytes', async () => {
    const { path, bytes } = ringFile();
    const before = statSync(path).mtimeMs;
    const r = await run(['ring', 'decode', path]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.equal(
      lines[0],
      'ring: data_size=4096 write_index=120 read_index=4048 interrupt_mask=0 pending_send_sz=0 feature_bits=0x1',
    );
    assert.equal(
      lines[1],
      'pkt 0 at 4048: type=0x6 VM_PKT_DATA_INBAND flags=0x1 hlen=16 tlen=24 xactid=0x1000',
    );
    assert.equal(lines[2], '  payload (8 bytes): 68656c6c6f000000');
    assert.equal(lines[3], '  raw: 0600020003000100001000000000000068656c6c6f000000');
    assert.ok(
      lines.includes(
        'pkt 2 at 24: type=0x9 VM_PKT_DATA_USING_GPA_DIRECT flags=0x1 hlen=56 tlen=64 xactid=0x42',
      ),
    );
    assert.ok(lines.includes('  reserved=0 rangecount=2'));
    assert.ok(lines.includes('  range 0: byte_count=4096 byte_offset=0 pfns=0x1234'));
    assert.ok(lines.includes('  range 1: byte_count=100 byte_offset=8 pfns=0x99'));
    assert.ok(lines.includes('pkt 3 at 96: type=0x1 VM_PKT_SYNCH flags=0x0 hlen=16 tlen=16 xactid=0x7'));
    assert.equal(lines.at(-1), 'packets=4 end_index=120');
    assert.deepEqual(new Uint8Array(readFileSync(path)), bytes, 'file unchanged');
    assert.equal(statSync(path).mtimeMs, before);
  });

  test('--json: one object with control and packets (the second packet wraps)', async () => {
    const { path } = ringFile();
    const r = await run(['ring', 'decode', '--json', path]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.deepEqual(j.control, {
      dataSize: 4096,
      writeIndex: 120,
      readIndex: 4048,
      interruptMask: 0,
      pendingSendSize: 0,
      featureBits: 1,
    });
    assert.equal(j.packets.length, 4);
    assert.equal(j.endIndex, 120);
    assert.equal(j.error, undefined);
    assert.deepEqual(j.packets[1], {
      index: 1,
      offset: 4080,
      type: 11,
      typeName: 'VM_PKT_COMP',
      flags: 0,
      hlen: 16,
      tlen: 32,
      xactid: '0x1001',
      kind: 'completion',
      payload: '0102030405060708090a000000000000',
      raw: '0b0002000400000001100000000000000102030405060708090a000000000000',
    });
    assert.deepEqual(j.packets[2].ranges, [
      { byteCount: 4096, byteOffset: 0, pfns: ['0x1234'] },
      { byteCount: 100, byteOffset: 8, pfns: ['0x99'] },
    ]);
    assert.equal(j.packets[2].kind, 'gpa-direct');
    assert.equal(j.packets[2].rangeCount, 2);
  });

  test('an empty ring and a ring with no packets past read_index', async () => {
    const { path } = ringFile('', 4096, 0);
    const r = await run(['ring', 'decode', path, '--json']);
    assert.equal(r.code, 0);
    assert.deepEqual(JSON.parse(r.stdout).packets, []);
  });

  /** A ring file whose bytes `mutate` changes after encoding the script. */
  function corrupt(mutate: (b: Uint8Array, dv: DataView) => void, text = script): string {
    const bytes = encodeRingScript(text, { dataSize: 4096, startIndex: 0 }).bytes;
    mutate(bytes, new DataView(bytes.buffer));
    const path = tmp('corrupt.bin');
    writeFileSync(path, bytes);
    return path;
  }

  const hostile: [string, (b: Uint8Array, dv: DataView) => void, RegExp][] = [
    [
      'write_index not a multiple of 8',
      (_b, dv) => dv.setUint32(0, 12, true),
      /write_index: 12 is not a multiple of 8 below 4096/,
    ],
    [
      'write_index beyond the data',
      (_b, dv) => dv.setUint32(0, 8192, true),
      /write_index: 8192 is not a multiple of 8/,
    ],
    [
      'read_index beyond the data',
      (_b, dv) => dv.setUint32(4, 0xfffffff8, true),
      /read_index: 4294967288 is not a multiple of 8/,
    ],
    [
      'offset8 below 2',
      (_b, dv) => dv.setUint16(4096 + 2, 1, true),
      /vmpacket_descriptor\.offset8: 1 is below 2 at ring offset 0/,
    ],
    ['offset8 above len8', (_b, dv) => dv.setUint16(4096 + 2, 9, true), /offset8: 9 exceeds len8 3/],
    [
      'len8 past write_index',
      (_b, dv) => dv.setUint16(4096 + 4, 400, true),
      /vmpacket_descriptor\.len8: packet of 3208 bytes/,
    ],
  ];
  for (const [name, mutate, why] of hostile) {
    test(`a corrupt ring (${name}) is a one-line error`, async () => {
      const path = corrupt(mutate);
      const before = new Uint8Array(readFileSync(path));
      for (const args of [[path], [path, '--json']]) {
        const r = await run(['ring', 'decode', ...args]);
        assertBadInput(r, why);
        assert.ok(r.stderr.startsWith(`vmbus: ${path}: `));
      }
      assert.deepEqual(new Uint8Array(readFileSync(path)), before, 'file unchanged');
    });
  }

  test('packets before a corrupt descriptor are still shown; the JSON carries the error', async () => {
    // Break the third packet (the GPA-direct one at offset 72): offset8 = 1.
    const path = corrupt((_b, dv) => dv.setUint16(4096 + 72 + 2, 1, true));
    const r = await run(['ring', 'decode', path, '--json']);
    assertBadInput(r, /offset8: 1 is below 2 at ring offset 72/);
    const j = JSON.parse(r.stdout);
    assert.equal(j.packets.length, 2);
    assert.match(j.error, /offset8: 1 is below 2/);
    const t = await run(['ring', 'decode', path]);
    assert.ok(t.stdout.includes('pkt 1 at 32:'));
  });

  test('a packet whose body does not decode is listed with the reason, and the exit status is 1', async () => {
    // A GPA-direct packet claiming 3 ranges in a header that holds 2.
    const path = corrupt((_b, dv) => dv.setUint32(4096 + 72 + 20, 3, true));
    const r = await run(['ring', 'decode', path, '--json']);
    assertBadInput(r, /packet 2 at ring offset 72: gpa_direct\.rangecount: range 2 of 3 overruns the header/);
    const j = JSON.parse(r.stdout);
    assert.equal(j.packets.length, 4, 'the walk went on past the bad body');
    assert.match(j.packets[2].bodyError, /overruns the header/);
    assert.equal(j.packets[2].raw.length, 128);
    const t = await run(['ring', 'decode', path]);
    assert.ok(
      t.stdout.includes('  body not decoded: gpa_direct.rangecount: range 2 of 3 overruns the header'),
    );
  });

  test('files that are not rings', async () => {
    assertBadInput(
      await run(['ring', 'decode', join(dir, 'missing.bin')]),
      /missing\.bin: no such file or directory$/,
    );
    assertBadInput(await run(['ring', 'decode', dir]), /: is a directory$/);
    const small = tmp('small.bin');
    writeFileSync(small, new Uint8Array(4096 + 100));
    assertBadInput(
      await run(['ring', 'decode', small]),
      /small\.bin: ring: a ring of 4196 bytes is not a control page plus a multiple of 4096 bytes of data/,
    );
    const empty = tmp('zero.bin');
    writeFileSync(empty, new Uint8Array(0));
    assertBadInput(await run(['ring', 'decode', empty]), /a ring of 0 bytes/);
  });

  test('usage errors', async () => {
    assertBadInput(await run(['ring', 'decode']), /ring decode: expected one FILE/);
    assertBadInput(await run(['ring', 'decode', 'a', 'b']), /ring decode: expected one FILE/);
    assertBadInput(await run(['ring', 'decode', 'a', '--jsn']), /Unknown option '--jsn'/);
  });

  test('decodeRingBytes reads an unaligned view without copying back into it', () => {
    const bytes = encodeRingScript(script, { dataSize: 4096, startIndex: 0 }).bytes;
    const shifted = new Uint8Array(bytes.length + 1);
    shifted.set(bytes, 1);
    const view = shifted.subarray(1);
    const r = decodeRingBytes(view);
    assert.equal(r.packets.length, 4);
    assert.deepEqual(view, bytes);
  });
});

// ---------------------------------------------------------------------------------------------

/** A message of this type and form with every field set to distinct non-zero values. */
function sampleMessage(spec: TypeSpec, fm: FormSpec, variant: number): ChannelMessage {
  const m: Record<string, unknown> = { type: spec.type };
  if (fm.form !== undefined) m.form = fm.form;
  let k = spec.type * 17 + variant * 101;
  const next = () => ++k;
  for (const fd of fm.fields) {
    // INITIATE_CONTACT bytes 16-23: variant 0 gives the interrupt_page view, variant 1 the other.
    if (fd.view && (fd.key === 'interruptPage') !== (variant === 0)) continue;
    switch (fd.kind) {
      case 'u8':
        m[fd.key] = next() & 0xff || 1;
        break;
      case 'u16':
        m[fd.key] = (next() * 0x101) & 0xffff;
        break;
      case 'u32':
        m[fd.key] = (next() * 0x01010101) >>> 0;
        break;
      case 'u64':
        m[fd.key] = BigInt.asUintN(64, BigInt(next()) * 0x0101010101010101n);
        break;
      case 'guid':
        m[fd.key] = Guid.fromBytes(Uint8Array.from({ length: 16 }, (_, i) => (next() + i) & 0xff));
        break;
      case 'bytes':
        m[fd.key] = Uint8Array.from({ length: fd.size }, (_, i) => (k + i * 3) & 0xff);
        break;
    }
  }
  if (spec.kind === 'gpadl-header') {
    m.rangeData = Uint8Array.from({ length: 8 + 8 * 3 }, (_, i) => (i * 5 + variant) & 0xff);
  }
  if (spec.kind === 'gpadl-body') m.pfns = [0x1000 + variant, 2 ** 52 - 1, 0];
  if (variant === 1) {
    m.headerPadding = 0xdeadbeef;
    if (spec.kind !== 'gpadl-header') m.trailing = Uint8Array.of(1, 2, 3);
  }
  return m as unknown as ChannelMessage;
}

const MESSAGE_VECTORS: { name: string; bytes: Uint8Array }[] = [];
for (const spec of LAYOUTS) {
  if (spec === undefined) continue;
  for (const fm of spec.forms) {
    for (const variant of [0, 1]) {
      const bytes = encodeMessage(sampleMessage(spec, fm, variant));
      MESSAGE_VECTORS.push({ name: `${spec.name}${fm.form ? ` (${fm.form})` : ''} #${variant}`, bytes });
    }
  }
}

describe('vmbus msg decode / encode', () => {
  test('the vectors cover every message type 1..29', () => {
    const types = new Set(MESSAGE_VECTORS.map((v) => v.bytes[0]));
    for (let t = 1; t <= 29; t++) assert.ok(types.has(t), `type ${t}`);
  });

  for (const v of MESSAGE_VECTORS) {
    test(`${v.name}: decode --json -> encode gives the same bytes; text names the message`, async () => {
      const hex = hexOf(v.bytes);
      const spaced = hex.replace(/(.{8})/g, '$1 ').trim();
      const d = await run(['msg', 'decode', spaced, '--json']);
      assert.equal(d.code, 0, d.stderr);
      const json = JSON.parse(d.stdout);
      assert.equal(json.type, v.bytes[0]);
      const e = await run(['msg', 'encode'], d.stdout);
      assert.equal(e.code, 0, e.stderr);
      assert.equal(e.stdout, `${hex}\n`);
      const t = await run(['msg', 'decode', ...spaced.split(' ')]);
      assert.equal(t.code, 0, t.stderr);
      const msg = decodeMessage(v.bytes);
      assert.equal(t.stdout.split('\n')[0], `message: ${json.name} (${msg.type})`);
    });
  }

  test('decode reads standard input when no hex is given; encode takes the JSON as an argument', async () => {
    const d = await run(['msg', 'decode', '--json'], '07000000 00000000\n05000000\n');
    assert.equal(d.code, 0, d.stderr);
    assert.deepEqual(JSON.parse(d.stdout), { name: 'CHANNELMSG_CLOSECHANNEL', type: 7, childRelid: 5 });
    const e = await run(['msg', 'encode', '{"name":"CHANNELMSG_CLOSECHANNEL","childRelid":"0x10"}']);
    assert.equal(e.stdout, '070000000000000010000000\n');
    const t = await run(['msg', 'decode', '0x070000000000000005000000']);
    assert.equal(t.stdout, 'message: CHANNELMSG_CLOSECHANNEL (7)\nchildRelid: 5\n');
  });

  const badDecode: [string, RegExp][] = [
    ['', /msg decode: no hex bytes given/],
    ['0700000', /msg decode: odd number of hex digits \(7\)/],
    ['07zz', /msg decode: the message is not hex/],
    ['0700', /msg decode: header: needs 8 bytes, got 2/],
    [
      '07000000 00000000',
      /msg decode: CLOSECHANNEL\.child_relid: CHANNELMSG_CLOSECHANNEL needs 12 bytes, got 8/,
    ],
    ['1e000000 00000000', /msg decode: header\.msgtype: unknown channel message type 30/],
    ['00000000 00000000', /unknown channel message type 0/],
    [
      `03000000 00000000 ${'00'.repeat(233)}`,
      /msg decode: message: 241 bytes; a channel message has at most 240/,
    ],
  ];
  for (const [hex, why] of badDecode) {
    test(`decode refuses ${JSON.stringify(hex.length > 30 ? `${hex.slice(0, 30)}...` : hex)}`, async () => {
      assertBadInput(await run(['msg', 'decode', hex], ''), why);
    });
  }

  const badEncode: [string, RegExp][] = [
    ['', /msg encode: standard input is not JSON/],
    ['{"name":', /msg encode: standard input is not JSON/],
    ['[1]', /msg encode: message: expected a JSON object/],
    ['{"name":"CHANNELMSG_NOPE"}', /msg encode: name: unknown channel message "CHANNELMSG_NOPE"/],
    ['{"type":7}', /msg encode: CLOSECHANNEL\.childRelid: missing/],
    ['{"type":7,"childRelid":-1}', /CLOSECHANNEL\.childRelid: expected an integer 0\.\.4294967295/],
    ['{"type":7,"childRelid":1,"color":"red"}', /CLOSECHANNEL\.color: not a field of this message/],
    ['{"type":5,"childRelid":1}', /OPENCHANNEL\.form: missing/],
  ];
  for (const [json, why] of badEncode) {
    test(`encode refuses ${JSON.stringify(json)}`, async () => {
      assertBadInput(await run(['msg', 'encode'], json), why);
    });
  }

  test('encode: a bad JSON argument and too many arguments', async () => {
    assertBadInput(await run(['msg', 'encode', '{']), /msg encode: the argument is not JSON/);
    assertBadInput(await run(['msg', 'encode', '{}', '{}']), /expected at most one JSON argument/);
    assertBadInput(await run(['msg', 'decode', '00', '--hex']), /Unknown option '--hex'/);
  });
});

test('a file argument with a stray newline in its name still gives one stderr line', async () => {
  const r = await run(['ring', 'decode', join(dir, 'two\nlines.bin')]);
  assertBadInput(r, /two lines\.bin: no such file or directory$/);
});
