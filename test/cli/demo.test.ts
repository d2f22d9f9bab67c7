// Tests of `vmbus demo`: runs it in a child process through tsx (both modes, text and JSON) and
// checks its output and exit code; checks that the same-thread mode is deterministic; and drives
// the two demo ends directly to see that the checks really catch lost, duplicated, reordered and
// corrupted packets.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { DemoSummary } from '../../src/cli/demo.js';
import {
  type DemoChannel,
  type DemoConfig,
  DemoGuestSide,
  DemoHostSide,
  SequenceCheck,
} from '../../src/cli/demo-worker.js';
import { createSameThreadLink, HvScheduler } from '../../src/hv/index.js';
import { PageAllocator } from '../../src/memory/allocator.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { channelRingsFromGpadl } from '../../src/ring/index.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function demo(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const script =
    "import { runDemo } from './src/cli/demo.ts'; process.exitCode = await runDemo(process.argv.slice(1));";
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', script, '--', ...args],
    {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('vmbus demo in a child process', () => {
  test('two workers: prints progress and a summary with lost=0 duplicated=0, exit 0', () => {
    const r = demo(['--packets', '20000', '--ring-pages', '4']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /host and guest in two worker threads/);
    assert.match(r.stdout, /10000 \/ 20000 completions \(50%\)/);
    assert.match(r.stdout, /guest->host requests\s*: 20000 packets/);
    assert.match(r.stdout, /host->guest completions: 20000 packets/);
    assert.match(r.stdout, /lost=0 duplicated=0 reordered=0 corrupted=0 lostWakeups=0/);
    assert.match(r.stdout, /\d+ wraps/);
    assert.match(r.stdout, /^OK$/m);
  });

  test('--json prints one JSON object whose counters add up', () => {
    const r = demo(['--packets', '5000', '--ring-pages', '3', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const s = JSON.parse(r.stdout) as DemoSummary;
    assert.equal(s.ok, true);
    assert.equal(s.mode, 'two-workers');
    assert.equal(s.packets, 5000);
    for (const d of [s.guestToHost, s.hostToGuest]) {
      assert.equal(d.packets, 5000);
      assert.equal(d.received, 5000);
      assert.equal(d.lost + d.duplicated + d.reordered + d.corrupted, 0);
    }
    // 88-byte requests (16 + 64 + trailer 8) and 40-byte completions through 8 KiB rings.
    assert.equal(s.guestToHost.ringBytes, 5000 * 88);
    assert.equal(s.hostToGuest.ringBytes, 5000 * 40);
    assert.equal(s.guestToHost.wraps, Math.floor((5000 * 88) / 8192));
    assert.equal(s.hostToGuest.wraps, Math.floor((5000 * 40) / 8192));
    assert.ok(s.signals.guestToHost.sent >= 1 && s.signals.hostToGuest.sent >= 1);
    assert.ok(s.packetsPerSecond > 0);
  });

  test('--same-thread is deterministic: two runs give the same counters', () => {
    const args = ['--same-thread', '--json', '--packets', '20000', '--ring-pages', '2', '--batch', '200'];
    const a = demo(args);
    const b = demo(args);
    assert.equal(a.status, 0, a.stderr);
    assert.equal(b.status, 0, b.stderr);
    const sa = JSON.parse(a.stdout) as DemoSummary;
    const sb = JSON.parse(b.stdout) as DemoSummary;
    assert.equal(sa.mode, 'same-thread');
    assert.equal(sa.ok, true);
    // The ring is smaller than a batch: the guest stalls on a full ring and is woken by space signals.
    assert.ok(sa.guestToHost.fullStalls > 0);
    assert.ok(sa.signals.hostToGuest.space > 0);
    const counters = (s: DemoSummary) => ({ g2h: s.guestToHost, h2g: s.hostToGuest, signals: s.signals });
    assert.deepEqual(counters(sa), counters(sb));
  });

  test('--scattered ring pages work too', () => {
    const r = demo(['--same-thread', '--scattered', '--packets', '3000', '--ring-pages', '3']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /6 scattered pages/);
    assert.match(r.stdout, /lost=0 duplicated=0/);
  });

  test('bad options exit 2 with the usage', () => {
    const r = demo(['--packets', 'many']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--packets needs an integer/);
    assert.match(r.stderr, /usage: vmbus demo/);
    const big = demo(['--ring-pages', '2', '--request-bytes', '8192']);
    assert.equal(big.status, 2);
    assert.match(big.stderr, /does not fit/);
  });
});

describe('the demo checks', () => {
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
