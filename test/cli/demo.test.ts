// Tests of `vmbus demo`: the devices demo run in a child process through tsx in both modes
// (worker threads and --same-thread, table and JSON) with a small workload, checking the exit
// code, the table and the JSON fields and their consistency; the same with --servicing (host
// restarts mid-traffic, each in a new worker thread or a new hypervisor on the same thread); the
// summary's cross checks fed with reports that lost, duplicated or corrupted something; a run over
// a disk that drops writes; and the ring-level demo (`--rings`) with the checks of its two ends.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runSameThread } from '../../src/cli/demo.js';
import { CountingDisk } from '../../src/cli/demo-host.js';
import {
  DEFAULT_WORKLOAD,
  type DemoWorkload,
  extentCount,
  fillPattern,
  type GuestReport,
  type HostReport,
  pairsOnExtent,
  type ServicingCycle,
} from '../../src/cli/demo-protocol.js';
import type { RingDemoSummary } from '../../src/cli/demo-rings.js';
import {
  type DemoChannel,
  type DemoConfig,
  DemoGuestSide,
  DemoHostSide,
  SequenceCheck,
} from '../../src/cli/demo-rings-worker.js';
import { type DemoSummary, summarize } from '../../src/cli/demo-summary.js';
import { createSameThreadLink, HvScheduler } from '../../src/hv/index.js';
import { PageAllocator } from '../../src/memory/allocator.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { channelRingsFromGpadl } from '../../src/ring/index.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** `vmbus demo ARGS` through the real entry point, in a child process. */
function demo(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'demo', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const SMALL = ['--io', '600', '--blocks', '512', '--heartbeats', '40', '--kvp', '6'];
const CHANNELS = ['heartbeat', 'shutdown', 'timesync', 'kvp', 'storage'];

/** The JSON summary's fields and their consistency, for the SMALL workload. */
function checkSummary(s: DemoSummary, mode: DemoSummary['mode']): void {
  assert.equal(s.ok, true, s.problems.join('\n'));
  assert.equal(s.mode, mode);
  assert.deepEqual(s.problems, []);
  assert.equal(s.lost, 0);
  assert.equal(s.duplicated, 0);
  assert.equal(s.errors, 0);
  const sv = s.servicing;
  assert.deepEqual(
    [sv.requested, sv.cycles, sv.inFlight, sv.lost, sv.duplicated, sv.restarts],
    [0, 0, 0, 0, 0, []],
  );
  assert.deepEqual(
    [sv.awayMs, sv.restoreMs],
    [
      { max: 0, mean: 0 },
      { max: 0, mean: 0 },
    ],
  );
  assert.ok(sv.longestRequestMs > 0);
  // Channels: every device, each with its own relid and traffic both ways.
  assert.deepEqual(s.channels.map((c) => c.name).sort(), [...CHANNELS].sort());
  const relids = s.channels.map((c) => c.relid);
  assert.equal(new Set(relids).size, 5);
  for (const c of s.channels) {
    assert.ok(c.relid > 0, `${c.name} has a relid`);
    assert.match(c.type, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.ok(c.packets.guestToHost > 0 && c.packets.hostToGuest > 0, `${c.name} carried packets`);
    assert.ok(c.bytes.guestToHost > 0 && c.bytes.hostToGuest > 0, `${c.name} carried bytes`);
  }
  const sum = (f: (c: DemoSummary['channels'][number]) => number) => s.channels.reduce((n, c) => n + f(c), 0);
  assert.equal(
    s.packets.guestToHost,
    sum((c) => c.packets.guestToHost),
  );
  assert.equal(
    s.packets.hostToGuest,
    sum((c) => c.packets.hostToGuest),
  );
  assert.equal(s.packets.total, s.packets.guestToHost + s.packets.hostToGuest);
  assert.equal(s.bytes.total, s.bytes.guestToHost + s.bytes.hostToGuest);
  // I/O: 300 writes and 300 reads of 8 x 512 B, every read verified, the host served the same.
  assert.equal(s.io.writes, 300);
  assert.equal(s.io.reads, 300);
  assert.equal(s.io.verified, s.io.reads);
  assert.equal(s.io.mismatches, 0);
  assert.equal(s.io.errors, 0);
  assert.equal(s.io.bytesWritten, 300 * 8 * 512);
  assert.equal(s.io.host.writes, 300);
  assert.equal(s.io.host.reads, 300);
  assert.ok(s.io.iops > 0 && s.io.latencyMs.p99 >= s.io.latencyMs.p50);
  // Storage: one packet per request plus the handshake; every request answered.
  const storage = s.channels.find((c) => c.name === 'storage')!;
  assert.ok(storage.packets.guestToHost >= 600);
  assert.equal(storage.packets.hostToGuest, storage.packets.guestToHost);
  // Heartbeats, KVP, time sync, shutdown.
  assert.deepEqual(
    [s.heartbeat.sent, s.heartbeat.acknowledged, s.heartbeat.guestBeats, s.heartbeat.outOfOrder],
    [40, 40, 40, 0],
  );
  assert.equal(s.channels.find((c) => c.name === 'heartbeat')!.packets.hostToGuest, 41); // + negotiation
  assert.deepEqual(
    [s.kvp.written, s.kvp.readBackEqual, s.kvp.seenByGuest, s.kvp.mismatched, s.kvp.guestRecordsEnumerated],
    [6, 6, 6, 0, DEFAULT_WORKLOAD.guestKvpKeys],
  );
  assert.equal(s.timesync.sent, DEFAULT_WORKLOAD.timeSamples + 1);
  assert.equal(s.timesync.echoed, s.timesync.sent);
  assert.equal(s.timesync.guestSyncs, 1);
  assert.equal(s.timesync.guestSamples, DEFAULT_WORKLOAD.timeSamples);
  assert.deepEqual(s.shutdown, { asked: true, accepted: true, seenByGuest: 1 });
  assert.equal(s.versions.storage, '6.2');
}

describe('vmbus demo (devices) in a child process', () => {
  test('two worker threads: progress, the summary table, exit 0', () => {
    const r = demo(SMALL);
    assert.equal(r.status, 0, r.stderr + r.stdout);
    const out = r.stdout;
    assert.match(out, /host and guest in two worker threads/);
    assert.match(out, /main {2}host worker created the hypervisor and the guest partition/);
    assert.match(
      out,
      /guest VMBus connected, drivers attached; disk "Msft Virtual Disk 1\.0": 512 blocks of 512 B/,
    );
    assert.match(out, /guest storage: 300\/300 write\+verify pairs, 300 verified, 0 mismatched, 0 errors/);
    assert.match(out, /host {2}heartbeat: 40\/40 rounds acknowledged in sequence/);
    assert.match(out, /channel\s+relid\s+interface type\s+pkts g->h\s+bytes g->h\s+pkts h->g\s+bytes h->g/);
    for (const name of CHANNELS) {
      assert.match(out, new RegExp(`^  ${name}\\s+[1-9]\\d*\\s+[0-9a-f-]{36}\\s+\\d+`, 'm'), name);
    }
    assert.match(out, /^ {2}total\s+\d+/m);
    assert.match(out, /300 writes, 300 reads, 300 verified, 0 mismatched, 0 errors/);
    assert.match(out, /I\/O per second, [\d.]+ MB\/s .*latency p50 .*, p99 /);
    assert.match(
      out,
      /servicing off \(vmbus demo --servicing restarts the host side during the block I\/O\)/,
    );
    assert.match(out, /lost 0, duplicated 0, errors 0\nOK\n$/);
  });

  test('two worker threads --json: one JSON object on stdout, progress on stderr', () => {
    const r = demo([...SMALL, '--json']);
    assert.equal(r.status, 0, r.stderr);
    checkSummary(JSON.parse(r.stdout) as DemoSummary, 'worker-threads');
    assert.match(r.stderr, /guest storage: 300\/300 write\+verify pairs/);
  });

  test('--same-thread --json: the same checks on one thread', () => {
    const r = demo([...SMALL, '--same-thread', '--json']);
    assert.equal(r.status, 0, r.stderr);
    checkSummary(JSON.parse(r.stdout) as DemoSummary, 'same-thread');
    assert.match(r.stderr, /host and guest on one thread/);
  });

  test('--help exits 0; bad options exit 2 with the usage', () => {
    const help = demo(['--help']);
    assert.equal(help.status, 0);
    assert.match(help.stdout, /usage: vmbus demo/);
    assert.match(help.stdout, /--rings/);
    assert.match(help.stdout, /--servicing \[N\]/);
    const few = demo(['--servicing', '3', '--io', '100']);
    assert.equal(few.status, 2);
    assert.match(few.stderr, /--servicing 3 needs --io 512 or more/);
    const zero = demo(['--servicing', '0']);
    assert.equal(zero.status, 2);
    assert.match(zero.stderr, /--servicing needs an integer in 1\.\.100/);
    const bad = demo(['--io', 'lots']);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--io needs an integer/);
    assert.match(bad.stderr, /usage: vmbus demo/);
    const small = demo(['--blocks', '4', '--io-blocks', '8']);
    assert.equal(small.status, 2);
    assert.match(small.stderr, /smaller than one request/);
  });
});

// ---------------------------------------------------------------------------------------------
// --servicing in a child process

/** Enough block I/O that every restart lands mid-traffic even on a slow, busy machine. */
const SERVICING = ['--io', '8000', '--blocks', '2048', '--heartbeats', '40', '--kvp', '6'];

/** The JSON summary of a --servicing run with `cycles` restarts. */
function checkServicing(s: DemoSummary, mode: DemoSummary['mode'], cycles: number): void {
  assert.equal(s.ok, true, s.problems.join('\n'));
  assert.equal(s.mode, mode);
  assert.deepEqual([s.lost, s.duplicated, s.errors], [0, 0, 0]);
  const sv = s.servicing;
  assert.deepEqual([sv.requested, sv.cycles, sv.lost, sv.duplicated], [cycles, cycles, 0, 0]);
  assert.equal(sv.restarts.length, cycles);
  sv.restarts.forEach((c, i) => {
    assert.equal(c.cycle, i + 1);
    assert.ok(c.inFlight > 0, `restart ${c.cycle}: requests were in flight`);
    assert.ok(
      c.atPair >= Math.floor(((i + 1) * 4000) / (cycles + 1)),
      `restart ${c.cycle} came after its point`,
    );
    assert.ok(c.saveMs > 0 && c.restoreMs > 0 && c.awayMs > 0);
    assert.ok(
      c.awayMs + 1 >= c.saveMs && c.awayMs + 1 >= c.restoreMs,
      'the host was away while saving and restoring',
    );
    assert.ok(c.stateBytes > 0);
  });
  assert.equal(
    sv.inFlight,
    sv.restarts.reduce((n, c) => n + c.inFlight, 0),
  );
  assert.equal(sv.awayMs.max, Math.max(...sv.restarts.map((c) => c.awayMs)));
  // Everything counted over all host instances together, as without restarts.
  assert.deepEqual(
    [s.io.writes, s.io.reads, s.io.verified, s.io.host.writes, s.io.host.reads],
    [4000, 4000, 4000, 4000, 4000],
  );
  assert.deepEqual(
    [
      s.io.host.lostWrites,
      s.io.host.duplicatedWrites,
      s.io.host.lostReads,
      s.io.host.duplicatedReads,
      s.io.host.badBlocks,
    ],
    [0, 0, 0, 0, 0],
  );
  // Each restored host checked its heartbeat channel with one round, continuing the sequence.
  assert.deepEqual(
    [s.heartbeat.sent, s.heartbeat.acknowledged, s.heartbeat.guestBeats],
    [40 + cycles, 40 + cycles, 40 + cycles],
  );
  assert.deepEqual([s.kvp.readBackEqual, s.kvp.seenByGuest], [6, 6]);
  assert.equal(s.timesync.echoed, s.timesync.sent);
  assert.deepEqual(s.shutdown, { asked: true, accepted: true, seenByGuest: 1 });
  const storage = s.channels.find((c) => c.name === 'storage')!;
  assert.equal(storage.packets.hostToGuest, storage.packets.guestToHost);
  assert.equal(storage.relid, 5, 'the guest kept its channel: the same relid throughout');
}

describe('vmbus demo --servicing in a child process', () => {
  test('two worker threads: each restart a new host worker, mid-traffic; the table; exit 0', () => {
    const r = demo([...SERVICING, '--servicing', '2']);
    assert.equal(r.status, 0, r.stderr + r.stdout);
    const out = r.stdout;
    assert.match(out, /; 2 host restarts during the block I\/O \(each in a new worker thread\)/);
    assert.match(
      out,
      /main {2}restart 1\/2 at pair \d+\/4000: [1-9]\d* requests in flight; host away [\d.]+ ms/,
    );
    assert.match(out, /main {2}restart 2\/2 at pair \d+\/4000: [1-9]\d* requests in flight/);
    assert.match(
      out,
      /servicing 2 host restarts \(each in a new worker thread\) with block I\/O in flight: \d+ requests in flight across them, 0 lost, 0 duplicated/,
    );
    assert.match(
      out,
      /host away max [\d.]+ m?s \(mean [\d.]+ m?s\); save max .*, restore max .*; the longest storage request took/,
    );
    assert.match(out, /restart\s+at pair\s+in flight\s+save\s+restore\s+host away\s+state/);
    assert.match(out, /^ +1 +\d+ +[1-9]\d* +[\d.]+ m?s +[\d.]+ m?s +[\d.]+ m?s +\d+ k?B$/m);
    assert.match(out, /4000 writes, 4000 reads, 4000 verified, 0 mismatched, 0 errors/);
    assert.match(out, /lost 0, duplicated 0, errors 0\nOK\n$/);
  });

  test('two worker threads --json: the servicing member and every check', () => {
    const r = demo([...SERVICING, '--servicing', '--json']);
    assert.equal(r.status, 0, r.stderr);
    checkServicing(JSON.parse(r.stdout) as DemoSummary, 'worker-threads', 3);
  });

  test('--same-thread --json: a new hypervisor and VMBus on the same scheduler per restart', () => {
    const r = demo([...SERVICING, '--same-thread', '--servicing', '2', '--json']);
    assert.equal(r.status, 0, r.stderr);
    checkServicing(JSON.parse(r.stdout) as DemoSummary, 'same-thread', 2);
    assert.match(
      r.stderr,
      /2 host restarts during the block I\/O \(a new hypervisor, VMBus and KMCL on this thread\)/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// In-process runs on one thread and the summary's checks

const TINY: DemoWorkload = {
  ...DEFAULT_WORKLOAD,
  blocks: 256,
  ioBlocks: 4,
  ios: 400,
  queueDepth: 16,
  heartbeats: 10,
  kvpKeys: 4,
  guestKvpKeys: 3,
  timeSamples: 3,
};

/** A disk that drops every `every`-th write without a trace (what a lost request looks like). */
class DroppingDisk extends CountingDisk {
  private n = 0;
  constructor(
    w: DemoWorkload,
    private readonly every: number,
  ) {
    super(w.blockSize, w.blocks);
  }
  override write(lba: number, blocks: number, src: Uint8Array, srcOffset: number): void {
    if (++this.n % this.every === 0) return;
    super.write(lba, blocks, src, srcOffset);
  }
}

/** A disk that applies every write twice (what a replayed request looks like). */
class ReplayingDisk extends CountingDisk {
  override write(lba: number, blocks: number, src: Uint8Array, srcOffset: number): void {
    super.write(lba, blocks, src, srcOffset);
    super.write(lba, blocks, src, srcOffset);
  }
}

const quiet = () => {};

async function tinyRun(disk?: CountingDisk) {
  const r = await runSameThread(TINY, quiet, disk);
  return { ...r, summary: summarize({ mode: 'same-thread', elapsedSeconds: 1, workload: TINY, ...r }) };
}

describe("the demo's checks", () => {
  test('the schedule: pair i writes extent i mod E, so extents are hit floor(n/E) or one more times', () => {
    const w = { ...TINY, ios: 2 * 150, blocks: 64, ioBlocks: 1 };
    assert.equal(extentCount(w), 64);
    let total = 0;
    for (let e = 0; e < 64; e++) {
      const n = pairsOnExtent(w, e);
      assert.equal(n, e < 150 % 64 ? 3 : 2);
      total += n;
    }
    assert.equal(total, 150);
  });

  test('the block pattern differs by LBA and by generation and carries both in its header', () => {
    const a = new Uint8Array(1024);
    const b = new Uint8Array(1024);
    fillPattern(a, 0, 7, 2, 512, 1);
    fillPattern(b, 0, 7, 2, 512, 1);
    assert.deepEqual(a, b);
    const view = new DataView(a.buffer);
    assert.deepEqual([view.getUint32(0, true), view.getUint32(4, true)], [7, 1]);
    assert.deepEqual([view.getUint32(512, true), view.getUint32(516, true)], [8, 1]);
    fillPattern(b, 0, 7, 2, 512, 2);
    assert.notDeepEqual(a.subarray(8, 512), b.subarray(8, 512));
    assert.notDeepEqual(a.subarray(8, 512), a.subarray(520, 1024));
  });

  test('a clean run on one thread passes every check', async () => {
    const { summary, host, guest } = await tinyRun();
    assert.deepEqual(summary.problems, []);
    assert.equal(summary.ok, true);
    assert.equal(guest.storage.completedOnce, 400);
    assert.equal(host.storage.disk.blocksChecked, 256);
    assert.equal(summary.io.verified, 200);
  });

  test('host restarts on one thread: every check holds over all instances; the servicing checks bite', async () => {
    const w: DemoWorkload = { ...TINY, ios: 2000, queueDepth: 8 };
    const r = await runSameThread(w, quiet, undefined, 60, 3);
    const input = { mode: 'same-thread' as const, elapsedSeconds: 1, workload: w, ...r };
    const s = summarize({ ...input, servicing: { requested: 3, restarts: r.restarts } });
    assert.deepEqual(s.problems, []);
    assert.equal(s.ok, true);
    assert.equal(r.restarts.length, 3);
    assert.deepEqual(
      r.guest.servicing.inFlight,
      r.restarts.map((c) => c.inFlight),
    );
    assert.ok(r.restarts.every((c) => c.inFlight > 0));
    assert.equal(r.host.heartbeat.rounds, w.heartbeats + 3);
    assert.equal(r.host.storage.io.writes, 1000, 'the host counted over all instances');
    // Without the restarts' list the heartbeat rounds of the restored hosts look duplicated.
    assert.equal(summarize(input).ok, false);
    const again = (edit: (g: GuestReport, c: ServicingCycle[]) => void, requested = 3) => {
      const guest = structuredClone(r.guest);
      const restarts = structuredClone(r.restarts);
      edit(guest, restarts);
      return summarize({ ...input, guest, servicing: { requested, restarts } });
    };
    const lost = again((g) => {
      g.servicing.lost = 1;
    });
    assert.equal(lost.ok, false);
    assert.equal(lost.servicing.lost, 1);
    assert.ok(lost.problems.some((p) => /in flight across a host restart never completed: 1/.test(p)));
    const twice = again((g) => {
      g.servicing.duplicated = 2;
    });
    assert.equal(twice.ok, false);
    assert.equal(twice.servicing.duplicated, 2);
    const idle = again((g, c) => {
      c[1]!.inFlight = 0;
      g.servicing.inFlight[1] = 0;
    });
    assert.equal(idle.ok, false);
    assert.ok(idle.problems.some((p) => /host restart 2: no storage request in flight/.test(p)));
    const missing = again(() => {}, 4);
    assert.ok(missing.problems.some((p) => /host restarts done: 3 of 4/.test(p)));
  });

  test('a disk that drops writes: lost block writes, reads that do not verify, FAILED', async () => {
    const { summary, host } = await tinyRun(new DroppingDisk(TINY, 25));
    assert.equal(summary.ok, false);
    assert.equal(host.storage.disk.lostWrites, 8 * 4); // 8 of 200 writes, 4 blocks each
    assert.ok(summary.lost >= 32);
    assert.equal(summary.io.mismatches, 8);
    assert.equal(summary.io.verified, 192);
    assert.ok(summary.problems.some((p) => /reads that did not verify: 8/.test(p)));
  });

  test('a disk that applies writes twice: duplicated block writes, FAILED', async () => {
    const { summary, host } = await tinyRun(new ReplayingDisk(TINY.blockSize, TINY.blocks));
    assert.equal(summary.ok, false);
    assert.equal(host.storage.disk.duplicatedWrites, 200 * 4);
    assert.equal(summary.duplicated, 800);
    assert.equal(summary.io.verified, 200); // the data itself is right
  });

  test('reports that lost or duplicated something are caught by the cross checks', async () => {
    const clean = await tinyRun();
    assert.equal(clean.summary.ok, true);
    const again = (edit: (h: HostReport, g: GuestReport) => void) => {
      const host = structuredClone(clean.host);
      const guest = structuredClone(clean.guest);
      edit(host, guest);
      return summarize({ mode: 'same-thread', elapsedSeconds: 1, workload: TINY, host, guest });
    };
    const cases: [string, (h: HostReport, g: GuestReport) => void, Partial<DemoSummary>][] = [
      [
        'a storage request never completed',
        (_h, g) => {
          g.storage.neverCompleted = 1;
        },
        { lost: 1 },
      ],
      [
        'a storage request completed twice',
        (_h, g) => {
          g.storage.completedTwice = 1;
        },
        { duplicated: 1 },
      ],
      ['a heartbeat the guest answered twice', (_h, g) => void g.heartbeat.beats++, { duplicated: 1 }],
      ['a KVP value missing in the guest', (_h, g) => void g.kvp.externalMatched--, { lost: 1 }],
      ['a time message echoed twice', (h) => void h.timesync.echoes++, { duplicated: 1 }],
      [
        'a storage packet the host never received',
        (h) => void h.channels.find((c) => c.name === 'storage')!.packetsIn--,
        { lost: 1 },
      ],
      [
        'a read that did not verify',
        (_h, g) => {
          g.storage.io.verified--;
          g.storage.io.mismatches++;
        },
        { errors: 1 },
      ],
      ['a read never checked', (_h, g) => void g.storage.io.verified--, { errors: 1 }],
      ['a peer error', (h) => void h.peerErrors.push('KmclPeerError: bad packet'), { errors: 1 }],
    ];
    for (const [what, edit, want] of cases) {
      const s = again(edit);
      assert.equal(s.ok, false, what);
      for (const [k, v] of Object.entries(want)) {
        assert.equal(s[k as keyof DemoSummary], v, `${what}: ${k}`);
      }
      assert.ok(s.problems.length > 0, what);
    }
    const teardown = summarize({
      ...clean,
      mode: 'same-thread',
      elapsedSeconds: 1,
      workload: TINY,
      teardownErrors: ['x'],
    });
    assert.equal(teardown.ok, false);
  });
});

// ---------------------------------------------------------------------------------------------
// The ring-level demo

describe('vmbus demo --rings in a child process', () => {
  test('two workers: a summary with lost=0 duplicated=0, exit 0', () => {
    const r = demo(['--rings', '--packets', '20000', '--ring-pages', '4']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /host and guest in two worker threads/);
    assert.match(r.stdout, /guest->host requests\s*: 20000 packets/);
    assert.match(r.stdout, /host->guest completions: 20000 packets/);
    assert.match(r.stdout, /lost=0 duplicated=0 reordered=0 corrupted=0 lostWakeups=0/);
    assert.match(r.stdout, /^OK$/m);
  });

  test('--same-thread --json: counters add up', () => {
    const r = demo(['--rings', '--same-thread', '--json', '--packets', '5000', '--ring-pages', '3']);
    assert.equal(r.status, 0, r.stderr);
    const s = JSON.parse(r.stdout) as RingDemoSummary;
    assert.equal(s.ok, true);
    assert.equal(s.mode, 'same-thread');
    for (const d of [s.guestToHost, s.hostToGuest]) {
      assert.equal(d.packets, 5000);
      assert.equal(d.received, 5000);
      assert.equal(d.lost + d.duplicated + d.reordered + d.corrupted, 0);
    }
    // 88-byte requests (16 + 64 + trailer 8) and 40-byte completions through 8 KiB rings.
    assert.equal(s.guestToHost.ringBytes, 5000 * 88);
    assert.equal(s.hostToGuest.ringBytes, 5000 * 40);
  });
});

describe('the ring-level demo checks', () => {
  test('SequenceCheck counts lost, duplicated, reordered and out-of-range ids', () => {
    const c = new SequenceCheck(6);
    for (const id of [1, 2, 2, 4, 3, 6]) c.record(id, 0);
    c.record(0, 0);
    c.record(7, 0);
    c.record(5, 1);
    assert.deepEqual(c.summary(), { received: 5, lost: 1, duplicated: 1, reordered: 3, outOfRange: 3 });
    const ok = new SequenceCheck(3);
    for (const id of [1, 2, 3]) assert.equal(ok.record(id, 0), true);
    assert.deepEqual(ok.summary(), { received: 3, lost: 0, duplicated: 0, reordered: 0, outOfRange: 0 });
  });

  function channel(config: DemoConfig) {
    const memory = new GuestMemory(1 << 20);
    const link = createSameThreadLink({ scheduler: new HvScheduler({ mode: 'manual' }) });
    const pfns = Array.from(new PageAllocator(memory).allocate(8));
    const rings = channelRingsFromGpadl(memory, pfns, 4);
    rings.guestToHost.initialize();
    rings.hostToGuest.initialize();
    const ch: DemoChannel = {
      memory: memory.buffer,
      gpadlPfns: pfns,
      downstreamOffset: 4,
      link: link.descriptor,
      connectionId: 0x2001,
      eventFlag: 1,
    };
    const host = new DemoHostSide(ch, memory, config, () => {});
    const guest = new DemoGuestSide(ch, memory, config, () => {});
    return { memory, pfns, host, guest };
  }

  test('a request corrupted in the ring is refused by the host and never counted as delivered', () => {
    const { memory, pfns, host, guest } = channel({ packets: 3, requestBytes: 16, batch: 1 });
    assert.equal(guest.step(), 1); // request 1 in the guest-to-host ring
    // Its payload starts at data offset 16 (descriptor), in the page after the control page;
    // flip a byte of word 2 (offset 16 + 8).
    memory.bytes[pfns[1]! * 4096 + 16 + 8]! ^= 0xff;
    for (let i = 0; i < 20 && !(guest.done && host.done); i++) {
      guest.step();
      host.step();
    }
    assert.equal(host.corrupted, 1);
    assert.deepEqual(host.check.summary(), {
      received: 2,
      lost: 1,
      duplicated: 0,
      reordered: 1,
      outOfRange: 0,
    });
    // The guest saw the error status in the completion: counted as corrupted, not received.
    assert.equal(guest.corrupted, 1);
    assert.equal(guest.check.received, 2);
    assert.equal(guest.check.lost, 1);
  });

  test('the ends finish with every id exactly once when nothing interferes', () => {
    const { host, guest } = channel({ packets: 500, requestBytes: 32, batch: 7 });
    for (let i = 0; i < 10_000 && !(guest.done && host.done); i++) {
      guest.step();
      host.step();
    }
    assert.ok(guest.done && host.done);
    assert.deepEqual(host.check.summary(), {
      received: 500,
      lost: 0,
      duplicated: 0,
      reordered: 0,
      outOfRange: 0,
    });
    assert.deepEqual(guest.check.summary(), {
      received: 500,
      lost: 0,
      duplicated: 0,
      reordered: 0,
      outOfRange: 0,
    });
    assert.equal(guest.sent.packets, 500);
    assert.equal(host.sent.packets, 500);
  });
});
