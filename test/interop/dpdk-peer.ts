// Builds and drives the DPDK interop peer (shared/interop/dpdk-ringpeer.c, linked against Debian's
// DPDK 22.11 librte_bus_vmbus) in a temporary directory, for test/interop/*.test.ts. The source is
// found at $VMBUS_INTEROP_DIR or ../shared/interop beside the repository (as CI checks it out).
// Before building, the peer's signal counter is patched (see patchSignalCounter). When the peer
// cannot be built the tests are skipped, except on CI (CI=true), where they fail with the reason.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is test/interop/dpdk-peer.ts). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Where dpdk-ringpeer.c lives. */
export function interopDir(): string {
  return process.env.VMBUS_INTEROP_DIR ?? resolve(REPO_ROOT, '..', 'shared', 'interop');
}

/**
 * The shared peer counts reader signals wrongly: DPDK 22.11's `vmbus_set_monitor` sets the channel's
 * bit in `trigs[0].pending` of the monitor page, and `struct vmbus_mon_page` starts with the u32s
 * `state` and `rsvd1`, so that word is monitor[2] (byte 8); `take_signals()` reads and clears
 * monitor[0], so `read --signal` always reported 0. This replaces the two statements exactly and
 * throws if the expected text is not there (the source changed: re-check the fix).
 */
export function patchSignalCounter(source: string): string {
  const expected = [
    '\tunsigned n = (monitor[0] >> MONITOR_ID) & 1; /* trigs[0].pending is the first word */\n',
    '\tmonitor[0] = 0;\n',
  ].join('');
  const replacement = [
    '\tunsigned n = (monitor[2] >> MONITOR_ID) & 1; /* trigs[0].pending: after state and rsvd1 */\n',
    '\tmonitor[2] = 0;\n',
  ].join('');
  const at = source.indexOf(expected);
  if (at < 0 || source.indexOf(expected, at + 1) >= 0) {
    throw new Error(
      'dpdk-ringpeer.c: take_signals() no longer reads monitor[0] as expected; the signal-counter ' +
        'patch in test/interop/dpdk-peer.ts must be re-checked against the new source',
    );
  }
  return source.slice(0, at) + replacement + source.slice(at + expected.length);
}

export interface PeerRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

export interface PeerBuild {
  /** The built peer, or null. */
  peer: DpdkPeer | null;
  /** Why there is no peer (compiler output included). */
  reason: string;
}

export class DpdkPeer {
  constructor(
    /** Scratch directory (the peer and the tests' ring files). */
    readonly dir: string,
    readonly binary: string,
  ) {}

  private fileCount = 0;

  /** A fresh path in the scratch directory. */
  path(name = 'ring'): string {
    return join(this.dir, `${name}-${this.fileCount++}.bin`);
  }

  run(args: string[], input = ''): PeerRun {
    const r = spawnSync(this.binary, args, { input, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    if (r.error) throw r.error;
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  /** Runs the peer and fails unless it exits 0. */
  ok(args: string[], input = ''): string {
    const r = this.run(args, input);
    if (r.status !== 0) {
      throw new Error(`dpdk-ringpeer ${args.join(' ')} exited ${r.status}: ${r.stderr}${r.stdout}`);
    }
    return r.stdout;
  }

  /** `create` + `write`: the ring file's bytes and the lines `write` printed. */
  writeRing(script: string, dataSize: number, start = 0): { bytes: Uint8Array; lines: string[] } {
    const file = this.path('dpdk');
    this.ok(['create', file, String(dataSize), String(start)]);
    const out = this.ok(['write', file], script);
    return { bytes: new Uint8Array(readFileSync(file)), lines: out.trimEnd().split('\n') };
  }

  /** `read [--signal]` of a copy of `bytes` (the peer moves read_index): its packets and totals. */
  readRing(bytes: Uint8Array, signal = false): PeerReadResult {
    const file = this.path('read');
    writeFileSync(file, bytes);
    const out = this.ok(signal ? ['read', file, '--signal'] : ['read', file]);
    return { ...parsePeerRead(out), after: new Uint8Array(readFileSync(file)) };
  }

  dispose(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface PeerPacket {
  index: number;
  type: number;
  flags: number;
  hlen: number;
  tlen: number;
  xactid: bigint;
  raw: string;
}

export interface PeerReadResult {
  packets: PeerPacket[];
  read: number;
  windex: number;
  rindex: number;
  signals: number;
  /** The file after the peer read it. */
  after?: Uint8Array;
}

const PKT =
  /^pkt (\d+) type=0x([0-9a-f]+) flags=0x([0-9a-f]+) hlen=(\d+) tlen=(\d+) xactid=0x([0-9a-f]+) raw=([0-9a-f]*)$/;
const END = /^read=(\d+) windex=(\d+) rindex=(\d+) signals=(\d+)$/;

/** Parses the output of `dpdk-ringpeer read`; throws on any line it does not recognise. */
export function parsePeerRead(out: string): PeerReadResult {
  const packets: PeerPacket[] = [];
  let end: RegExpExecArray | null = null;
  for (const line of out.trimEnd().split('\n')) {
    const p = PKT.exec(line);
    if (p) {
      packets.push({
        index: Number(p[1]),
        type: Number.parseInt(p[2]!, 16),
        flags: Number.parseInt(p[3]!, 16),
        hlen: Number(p[4]),
        tlen: Number(p[5]),
        xactid: BigInt(`0x${p[6]}`),
        raw: p[7]!,
      });
      continue;
    }
    const e = END.exec(line);
    if (e && end === null) {
      end = e;
      continue;
    }
    throw new Error(`unexpected dpdk-ringpeer read output: ${JSON.stringify(line)}`);
  }
  if (end === null) throw new Error('dpdk-ringpeer read printed no totals line');
  return {
    packets,
    read: Number(end[1]),
    windex: Number(end[2]),
    rindex: Number(end[3]),
    signals: Number(end[4]),
  };
}

/**
 * Copies the peer's source to a new temporary directory, patches its signal counter and compiles
 * it. A missing source or compiler gives `{peer: null, reason}`; a source the patch no longer fits
 * throws (that needs a human, on CI or not).
 */
export function buildDpdkPeer(): PeerBuild {
  const source = join(interopDir(), 'dpdk-ringpeer.c');
  let text: string;
  try {
    text = readFileSync(source, 'utf8');
  } catch (e) {
    return { peer: null, reason: `cannot read ${source}: ${(e as Error).message}` };
  }
  const patched = patchSignalCounter(text);
  const dir = mkdtempSync(join(tmpdir(), 'vmbus-dpdk-'));
  const c = join(dir, 'dpdk-ringpeer.c');
  writeFileSync(c, patched);
  const binary = join(dir, 'dpdk-ringpeer');
  const r = spawnSync('gcc', ['-O2', '-o', binary, c, '-l:librte_bus_vmbus.so.23', '-l:librte_eal.so.23'], {
    encoding: 'utf8',
  });
  if (r.error || r.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    const why = r.error ? r.error.message : `gcc exited ${r.status}: ${r.stderr.trim()}`;
    return { peer: null, reason: `cannot build the DPDK peer (${why})` };
  }
  return { peer: new DpdkPeer(dir, binary), reason: '' };
}

/** True when the interop tests must run (CI): a peer that cannot be built is then a failure. */
export function interopRequired(): boolean {
  return process.env.CI === 'true';
}
