// The `vmbus` program as a process (`node --import tsx src/cli/main.ts ...`, no build needed): exit
// statuses, standard streams, stdin scripts, and that failures print exactly one `vmbus: ...` line
// and never a stack trace. The runs start together in `before` (each is a fresh Node process).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { encodeRingScript } from '../../src/cli/ring-commands.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function vmbus(args: string[], input = ''): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: ROOT });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    child.on('error', fail);
    child.on('close', (status) => done({ status, stdout, stderr }));
    child.stdin.end(input);
  });
}

function assertBadInput(r: Run, why: RegExp): void {
  assert.equal(r.status, 1, `exit status (stderr: ${r.stderr})`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.equal(lines.length, 1, `one stderr line, got ${JSON.stringify(r.stderr)}`);
  assert.match(lines[0]!, /^vmbus: /);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
  assert.match(lines[0]!, why);
}

const dir = mkdtempSync(join(tmpdir(), 'vmbus-proc-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const SCRIPT =
  'send 6 1 0x1000 68656c6c6f\nsend 11 0 0x1001 0102030405060708090a\nsglist 0x42 4096:0:0x1234,100:8:0x99 deadbeef\n';
const ringPath = join(dir, 'ring.bin');
const corruptPath = join(dir, 'corrupt.bin');
const encodedPath = join(dir, 'encoded.bin');
const ringBytes = encodeRingScript(SCRIPT, { dataSize: 8192 }).bytes;

const cases = {
  help: { args: ['--help'] },
  encode: { args: ['ring', 'encode', '--data-size', '8192', '--out', encodedPath], input: SCRIPT },
  decode: { args: ['ring', 'decode', ringPath] },
  decodeJson: { args: ['ring', 'decode', ringPath, '--json'] },
  msgDecode: {
    args: [
      'msg',
      'decode',
      '0e000000 00000000 00000500 00000000 00000000 00000000 00100000 00000000 00200000 00000000',
    ],
  },
  msgEncode: { args: ['msg', 'encode'], input: '{"name":"CHANNELMSG_GPADL_TORNDOWN","gpadl":"0xe1e10"}' },
  unknownCommand: { args: ['launch'] },
  noCommand: { args: [] },
  missingFile: { args: ['ring', 'decode', join(dir, 'nope.bin')] },
  corruptRing: { args: ['ring', 'decode', corruptPath] },
  truncatedMessage: { args: ['msg', 'decode', '0b000000 00000000 01000000'] },
  unknownMessage: { args: ['msg', 'decode', '63000000 00000000'] },
  badScript: {
    args: ['ring', 'encode', '--data-size', '4096', '--out', join(dir, 'x.bin')],
    input: 'send 6 1\n',
  },
  badOption: { args: ['ring', 'encode', '--data-size', '100', '--out', join(dir, 'y.bin')] },
  unknownOption: { args: ['ring', 'decode', ringPath, '--verbose'] },
  badJson: { args: ['msg', 'encode'], input: 'not json' },
} satisfies Record<string, { args: string[]; input?: string }>;

const results = {} as Record<keyof typeof cases, Run>;
let ringMtime = 0;

before(async () => {
  writeFileSync(ringPath, ringBytes);
  ringMtime = statSync(ringPath).mtimeMs;
  const corrupt = ringBytes.slice();
  new DataView(corrupt.buffer).setUint32(0, 8193, true); // write_index beyond the data area
  writeFileSync(corruptPath, corrupt);
  const names = Object.keys(cases) as (keyof typeof cases)[];
  // A few at a time: each run is a Node process with a TypeScript loader.
  for (let i = 0; i < names.length; i += 4) {
    const batch = names.slice(i, i + 4);
    const runs = await Promise.all(
      batch.map((n) => {
        const c = cases[n] as { args: string[]; input?: string };
        return vmbus(c.args, c.input);
      }),
    );
    batch.forEach((n, j) => {
      results[n] = runs[j]!;
    });
  }
});

describe('vmbus as a process: happy paths', () => {
  test('--help prints the commands and exits 0', () => {
    const r = results.help;
    assert.equal(r.status, 0);
    assert.equal(r.stderr, '');
    assert.match(r.stdout, /^usage: vmbus COMMAND/);
    assert.match(r.stdout, /vmbus ring encode --data-size BYTES/);
    assert.match(r.stdout, /vmbus msg decode/);
  });

  test('ring encode reads the script on stdin, writes the file, prints the summary', () => {
    const r = results.encode;
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'sent=3 signals=1 windex=144 rindex=0\n');
    assert.equal(r.stderr, '');
    assert.deepEqual(new Uint8Array(readFileSync(encodedPath)), ringBytes);
  });

  test('ring decode prints the packets and leaves the file untouched', () => {
    const r = results.decode;
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^ring: data_size=8192 write_index=144 read_index=0 /);
    assert.match(
      r.stdout,
      /\npkt 2 at 72: type=0x9 VM_PKT_DATA_USING_GPA_DIRECT flags=0x1 hlen=56 tlen=64 xactid=0x42\n/,
    );
    assert.match(r.stdout, /\npackets=3 end_index=144\n$/);
    assert.deepEqual(new Uint8Array(readFileSync(ringPath)), ringBytes);
    assert.equal(statSync(ringPath).mtimeMs, ringMtime);
  });

  test('ring decode --json prints one JSON object', () => {
    const r = results.decodeJson;
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.deepEqual(
      j.packets.map((p: { xactid: string; kind: string }) => [p.xactid, p.kind]),
      [
        ['0x1000', 'inband'],
        ['0x1001', 'completion'],
        ['0x42', 'gpa-direct'],
      ],
    );
  });

  test('msg decode and msg encode', () => {
    assert.equal(results.msgDecode.status, 0, results.msgDecode.stderr);
    assert.match(
      results.msgDecode.stdout,
      /^message: CHANNELMSG_INITIATE_CONTACT \(14\)\nform: InitiateContact\n/,
    );
    assert.match(results.msgDecode.stdout, /\nmonitorPage1: 0x1000\n/);
    assert.equal(results.msgEncode.status, 0, results.msgEncode.stderr);
    assert.equal(results.msgEncode.stdout, '0c00000000000000101e0e00\n');
  });
});

describe('vmbus as a process: bad input is exit 1 and one stderr line', () => {
  const expectations: [keyof typeof cases, RegExp][] = [
    ['unknownCommand', /unknown command "launch"/],
    ['noCommand', /no command given/],
    ['missingFile', /nope\.bin: no such file or directory$/],
    ['corruptRing', /corrupt\.bin: write_index: 8193 is not a multiple of 8 below 8192$/],
    [
      'truncatedMessage',
      /msg decode: GPADL_TEARDOWN\.gpadl: CHANNELMSG_GPADL_TEARDOWN needs 16 bytes, got 12$/,
    ],
    ['unknownMessage', /msg decode: header\.msgtype: unknown channel message type 99$/],
    ['badScript', /script line 1: send takes TYPE FLAGS XACTID \[HEX\], got 2 fields$/],
    ['badOption', /--data-size 100 is not a positive multiple of 4096$/],
    ['unknownOption', /Unknown option '--verbose'/],
    ['badJson', /msg encode: standard input is not JSON/],
  ];
  for (const [name, why] of expectations) {
    test(name, () => assertBadInput(results[name], why));
  }

  test('a refused script writes no file', () => {
    assert.throws(() => statSync(join(dir, 'x.bin')), /ENOENT/);
  });
});
