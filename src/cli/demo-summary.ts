// The summary of `vmbus demo`: joins the host's and the guest's reports into one object (channels
// with relids and traffic each way, heartbeats, KVP, time sync, block I/O, servicing) and runs
// the cross checks that make "lost" and "duplicated" real: every heartbeat acknowledged once and
// in sequence, every KVP value read back equal on both sides, every time message echoed, every
// storage request completed exactly once and seen by the host's disk as often as it was sent,
// every block verified, and each side's packet counts matching the other's. Also renders the
// table the text mode prints. Pure: no I/O, no threads.

import {
  type ChannelReport,
  type DemoWorkload,
  extentCount,
  type GuestReport,
  type HostReport,
  pairCount,
} from './demo-protocol.js';

export interface DemoChannelSummary {
  name: string;
  type: string;
  instance: string;
  relid: number;
  packets: { guestToHost: number; hostToGuest: number };
  bytes: { guestToHost: number; hostToGuest: number };
  errors: number;
}

export interface DemoSummary {
  ok: boolean;
  mode: 'worker-threads' | 'same-thread';
  elapsedSeconds: number;
  workload: DemoWorkload;
  versions: Record<string, string>;
  channels: DemoChannelSummary[];
  packets: { guestToHost: number; hostToGuest: number; total: number };
  bytes: { guestToHost: number; hostToGuest: number; total: number };
  heartbeat: {
    sent: number;
    acknowledged: number;
    guestBeats: number;
    outOfOrder: number;
    latencyMs: { p50: number; p99: number };
  };
  kvp: {
    written: number;
    readBackEqual: number;
    mismatched: number;
    seenByGuest: number;
    guestRecordsEnumerated: number;
  };
  timesync: {
    sent: number;
    echoed: number;
    guestSyncs: number;
    guestSamples: number;
    offsetMs: number | null;
  };
  shutdown: { asked: boolean; accepted: boolean; seenByGuest: number };
  io: {
    disk: string;
    requests: number;
    reads: number;
    writes: number;
    verified: number;
    mismatches: number;
    errors: number;
    bytesRead: number;
    bytesWritten: number;
    seconds: number;
    iops: number;
    mbPerSecond: number;
    latencyMs: { p50: number; p99: number };
    maxInFlight: number;
    host: {
      reads: number;
      writes: number;
      lostWrites: number;
      duplicatedWrites: number;
      lostReads: number;
      duplicatedReads: number;
      badBlocks: number;
    };
  };
  servicing: { available: boolean; cycles: number; lost: number; duplicated: number; note: string };
  lost: number;
  duplicated: number;
  errors: number;
  /** One line per failed check (empty when ok). */
  problems: string[];
}

export interface SummaryInput {
  mode: DemoSummary['mode'];
  elapsedSeconds: number;
  workload: DemoWorkload;
  host: HostReport;
  guest: GuestReport;
  /** Teardown failures (drivers stopping, the bus closing). */
  teardownErrors?: readonly string[];
}

/** Joins both reports and runs every cross check. */
export function summarize(input: SummaryInput): DemoSummary {
  const { host, guest, workload: w } = input;
  const problems: string[] = [];
  let lost = 0;
  let duplicated = 0;
  let errors = 0;
  /** A count that should be `want`: fewer is lost, more is duplicated. */
  const expect = (what: string, got: number, want: number): void => {
    if (got < want) {
      lost += want - got;
      problems.push(`${what}: ${got}, expected ${want} (${want - got} lost)`);
    } else if (got > want) {
      duplicated += got - want;
      problems.push(`${what}: ${got}, expected ${want} (${got - want} duplicated)`);
    }
  };
  const error = (what: string, n: number): void => {
    if (n <= 0) return;
    errors += n;
    problems.push(`${what}: ${n}`);
  };

  // Channels: the host's view names the offer (relid, GUIDs); each direction is checked by
  // comparing what one driver sent with what the other received.
  const channels: DemoChannelSummary[] = [];
  const byName = new Map<string, ChannelReport>(guest.channels.map((c) => [c.name, c]));
  for (const h of host.channels) {
    const g = byName.get(h.name);
    if (g === undefined) {
      problems.push(`channel ${h.name}: the guest has no driver for it`);
      errors++;
      continue;
    }
    if (h.relid === 0) error(`channel ${h.name}: no offer found on the bus`, 1);
    expect(`channel ${h.name} guest->host packets received by the host`, h.packetsIn, g.packetsOut);
    expect(`channel ${h.name} host->guest packets received by the guest`, g.packetsIn, h.packetsOut);
    error(`channel ${h.name} errors (host)`, h.errors);
    error(`channel ${h.name} errors (guest)`, g.errors);
    channels.push({
      name: h.name,
      type: h.type,
      instance: h.instance,
      relid: h.relid,
      packets: { guestToHost: g.packetsOut, hostToGuest: h.packetsOut },
      bytes: { guestToHost: g.bytesOut, hostToGuest: h.bytesOut },
      errors: h.errors + g.errors,
    });
  }
  channels.sort((a, b) => a.relid - b.relid);
  const sum = (f: (c: DemoChannelSummary) => number) => channels.reduce((n, c) => n + f(c), 0);
  const packets = {
    guestToHost: sum((c) => c.packets.guestToHost),
    hostToGuest: sum((c) => c.packets.hostToGuest),
    total: 0,
  };
  packets.total = packets.guestToHost + packets.hostToGuest;
  const bytes = {
    guestToHost: sum((c) => c.bytes.guestToHost),
    hostToGuest: sum((c) => c.bytes.hostToGuest),
    total: 0,
  };
  bytes.total = bytes.guestToHost + bytes.hostToGuest;

  // Heartbeat: every round acknowledged once, each answer continuing the sequence, and the
  // guest answered exactly the rounds the host sent.
  const hb = host.heartbeat;
  expect('heartbeat rounds sent', hb.rounds, w.heartbeats);
  expect('heartbeat rounds acknowledged in sequence', hb.acknowledged + hb.outOfOrder, hb.rounds);
  error('heartbeat answers out of sequence', hb.outOfOrder);
  expect('heartbeats the guest answered', guest.heartbeat.beats, hb.rounds);
  if (hb.rounds > 0) {
    const next = guest.heartbeat.lastSequence === null ? null : BigInt(guest.heartbeat.lastSequence) + 1n;
    if (next === null || next.toString() !== hb.nextSequence) {
      error('heartbeat sequence: guest and host disagree on the last number', 1);
    }
  }

  // KVP: every record written, read back equal by the host, present and equal in the guest's pool.
  const kvp = host.kvp;
  expect('kvp records written', kvp.written, w.kvpKeys);
  expect('kvp records read back', kvp.readBack, kvp.written);
  error('kvp values read back different', kvp.mismatched);
  expect('kvp records equal in the guest pool', guest.kvp.externalMatched, w.kvpKeys);
  expect('kvp records in the guest pool', guest.kvp.externalPresent, w.kvpKeys);
  if (!kvp.enumerationMatched) error('kvp enumeration of the external pool differs from what was written', 1);
  expect('guest kvp records enumerated by the host', kvp.guestPoolRead, w.guestKvpKeys);
  error('guest kvp records enumerated different', kvp.guestPoolRead - kvp.guestPoolMatched);

  // Time sync: one SYNC and the samples, each echoed once and seen once by the guest.
  const ts = host.timesync;
  expect('time messages sent', ts.sent, w.timeSamples + 1);
  expect('time messages echoed', ts.echoes, ts.sent);
  expect('time messages the guest took', guest.timesync.syncs + guest.timesync.samples, ts.sent);
  expect('time SYNCs the guest applied', guest.timesync.syncs, 1);

  // Shutdown: asked once at the end, accepted, seen once.
  if (!host.shutdown.accepted) error('shutdown request not accepted', 1);
  expect('shutdown requests the guest saw', guest.shutdown.requests, 1);

  // Storage: each request completed exactly once; the host's disk saw each block written and read
  // as often as the workload sent it, and holds the last generation; every read verified.
  const gs = guest.storage;
  const pairs = pairCount(w);
  expect('storage requests issued', gs.requests, 2 * pairs);
  if (gs.neverCompleted > 0) {
    lost += gs.neverCompleted;
    problems.push(`storage requests never completed: ${gs.neverCompleted}`);
  }
  if (gs.completedTwice > 0) {
    duplicated += gs.completedTwice;
    problems.push(`storage requests completed more than once: ${gs.completedTwice}`);
  }
  error(`storage requests failed${gs.firstError === null ? '' : ` (first: ${gs.firstError})`}`, gs.failed);
  expect('storage writes sent', gs.io.writes, pairs);
  expect('storage reads sent', gs.io.reads, pairs);
  expect('storage writes the host served', host.storage.io.writes, gs.io.writes);
  expect('storage reads the host served', host.storage.io.reads, gs.io.reads);
  error('storage reads that did not verify', gs.io.mismatches);
  error('storage reads never checked', gs.io.reads - gs.io.verified - gs.io.mismatches);
  error('storage I/O errors (guest)', gs.io.errors);
  error('storage I/O errors (host)', host.storage.io.errors);
  const disk = host.storage.disk;
  if (disk.lostWrites + disk.lostReads > 0) {
    lost += disk.lostWrites + disk.lostReads;
    problems.push(`host disk: ${disk.lostWrites} block writes and ${disk.lostReads} block reads missing`);
  }
  if (disk.duplicatedWrites + disk.duplicatedReads > 0) {
    duplicated += disk.duplicatedWrites + disk.duplicatedReads;
    problems.push(
      `host disk: ${disk.duplicatedWrites} block writes and ${disk.duplicatedReads} block reads too many`,
    );
  }
  error('host disk blocks not holding the last pattern written', disk.badBlocks);
  if (disk.blocksChecked !== extentCount(w) * w.ioBlocks) error('host disk blocks left unchecked', 1);

  error('messages the KMCL refused from the peer', host.peerErrors.length + guest.peerErrors.length);
  error('driver callbacks that threw', host.callbackErrors.length + guest.callbackErrors.length);
  for (const e of [
    ...host.peerErrors,
    ...guest.peerErrors,
    ...host.callbackErrors,
    ...guest.callbackErrors,
  ]) {
    problems.push(`  ${e}`);
  }
  for (const e of input.teardownErrors ?? []) error(`teardown: ${e}`, 1);

  const seconds = gs.elapsedMs / 1000;
  const ioCount = gs.io.reads + gs.io.writes;
  const summary: DemoSummary = {
    ok: false,
    mode: input.mode,
    elapsedSeconds: input.elapsedSeconds,
    workload: { ...w },
    versions: { ...host.versions },
    channels,
    packets,
    bytes,
    heartbeat: {
      sent: hb.rounds,
      acknowledged: hb.acknowledged,
      guestBeats: guest.heartbeat.beats,
      outOfOrder: hb.outOfOrder,
      latencyMs: { p50: hb.latency.p50Ms, p99: hb.latency.p99Ms },
    },
    kvp: {
      written: kvp.written,
      readBackEqual: kvp.matched,
      mismatched: kvp.mismatched,
      seenByGuest: guest.kvp.externalMatched,
      guestRecordsEnumerated: kvp.guestPoolMatched,
    },
    timesync: {
      sent: ts.sent,
      echoed: ts.echoes,
      guestSyncs: guest.timesync.syncs,
      guestSamples: guest.timesync.samples,
      offsetMs: guest.timesync.offsetMs,
    },
    shutdown: {
      asked: host.shutdown.asked,
      accepted: host.shutdown.accepted,
      seenByGuest: guest.shutdown.requests,
    },
    io: {
      disk: `${gs.inquiry}, ${gs.blockCount} x ${gs.blockSize} B, vstor ${gs.version}`,
      requests: gs.requests,
      reads: gs.io.reads,
      writes: gs.io.writes,
      verified: gs.io.verified,
      mismatches: gs.io.mismatches,
      errors: gs.io.errors + gs.failed,
      bytesRead: gs.io.bytesRead,
      bytesWritten: gs.io.bytesWritten,
      seconds,
      iops: seconds > 0 ? ioCount / seconds : 0,
      mbPerSecond: seconds > 0 ? (gs.io.bytesRead + gs.io.bytesWritten) / 1e6 / seconds : 0,
      latencyMs: { p50: gs.io.latency.p50Ms, p99: gs.io.latency.p99Ms },
      maxInFlight: gs.io.maxInFlight,
      host: {
        reads: host.storage.io.reads,
        writes: host.storage.io.writes,
        lostWrites: disk.lostWrites,
        duplicatedWrites: disk.duplicatedWrites,
        lostReads: disk.lostReads,
        duplicatedReads: disk.duplicatedReads,
        badBlocks: disk.badBlocks,
      },
    },
    servicing: {
      available: false,
      cycles: 0,
      lost: 0,
      duplicated: 0,
      note: 'servicing: not available yet (issue 5)',
    },
    lost,
    duplicated,
    errors,
    problems,
  };
  summary.ok = lost === 0 && duplicated === 0 && errors === 0;
  return summary;
}

// ---------------------------------------------------------------------------------------------
// Rendering

function si(n: number, unit: string): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} G${unit}`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M${unit}`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)} k${unit}`;
  return `${Math.round(n)} ${unit}`;
}

function ms(n: number): string {
  return n < 1 ? `${(n * 1000).toFixed(0)} us` : `${n.toFixed(2)} ms`;
}

/** Left-aligned first column, the rest right-aligned. */
function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) =>
    r
      .map((cell, i) => (i === 0 || i === 2 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
      .join('  ')
      .trimEnd(),
  );
}

/** The summary as the text mode prints it. */
export function renderSummary(s: DemoSummary): string {
  const where =
    s.mode === 'same-thread' ? 'host and guest on one thread' : 'host and guest in two worker threads';
  const lines: string[] = [];
  lines.push(`summary (${where}, ${s.elapsedSeconds.toFixed(2)} s)`);
  lines.push('');
  const rows: string[][] = [
    ['channel', 'relid', 'interface type', 'pkts g->h', 'bytes g->h', 'pkts h->g', 'bytes h->g'],
  ];
  for (const c of s.channels) {
    rows.push([
      c.name,
      String(c.relid),
      c.type,
      String(c.packets.guestToHost),
      si(c.bytes.guestToHost, 'B'),
      String(c.packets.hostToGuest),
      si(c.bytes.hostToGuest, 'B'),
    ]);
  }
  rows.push([
    'total',
    '',
    '',
    String(s.packets.guestToHost),
    si(s.bytes.guestToHost, 'B'),
    String(s.packets.hostToGuest),
    si(s.bytes.hostToGuest, 'B'),
  ]);
  for (const l of table(rows)) lines.push(`  ${l}`);
  lines.push('');
  const io = s.io;
  const hb = s.heartbeat;
  const kv = s.kvp;
  const ts = s.timesync;
  const item = (name: string, text: string) => lines.push(`  ${name.padEnd(10)}${text}`);
  item(
    'heartbeat',
    `${hb.sent} rounds, ${hb.acknowledged} acknowledged in sequence, ${hb.guestBeats} answered by the guest; ` +
      `round trip p50 ${ms(hb.latencyMs.p50)}, p99 ${ms(hb.latencyMs.p99)}`,
  );
  item(
    'kvp',
    `${kv.written} records written, ${kv.readBackEqual} read back equal, ${kv.seenByGuest} equal in the guest's pool; ` +
      `${kv.guestRecordsEnumerated} guest records enumerated`,
  );
  item(
    'timesync',
    `${ts.sent} messages (1 SYNC + ${ts.sent - 1} samples), ${ts.echoed} echoed; guest applied ${ts.guestSyncs} SYNC, ` +
      `${ts.guestSamples} samples${ts.offsetMs === null ? '' : `, clock offset ${ts.offsetMs} ms`}`,
  );
  item('storage', io.disk);
  item(
    '',
    `${io.writes} writes, ${io.reads} reads, ${io.verified} verified, ${io.mismatches} mismatched, ${io.errors} errors; ` +
      `${si(io.bytesWritten + io.bytesRead, 'B')} moved`,
  );
  item(
    '',
    `${si(io.iops, '').trim()} I/O per second, ${io.mbPerSecond.toFixed(1)} MB/s over ${io.seconds.toFixed(2)} s; ` +
      `latency p50 ${ms(io.latencyMs.p50)}, p99 ${ms(io.latencyMs.p99)}; up to ${io.maxInFlight} in flight`,
  );
  item(
    '',
    `host disk: ${io.host.writes} writes, ${io.host.reads} reads served; ` +
      `block writes lost ${io.host.lostWrites}, duplicated ${io.host.duplicatedWrites}; ` +
      `block reads lost ${io.host.lostReads}, duplicated ${io.host.duplicatedReads}; ${io.host.badBlocks} bad blocks`,
  );
  item(
    'shutdown',
    s.shutdown.asked
      ? `asked at the end, ${s.shutdown.accepted ? 'accepted' : 'NOT accepted'} by the guest`
      : 'not asked',
  );
  lines.push(
    `  ${s.servicing.note}; cycles ${s.servicing.cycles}, lost ${s.servicing.lost}, duplicated ${s.servicing.duplicated}`,
  );
  lines.push('');
  lines.push(`  lost ${s.lost}, duplicated ${s.duplicated}, errors ${s.errors}`);
  for (const p of s.problems) lines.push(`  ! ${p}`);
  lines.push(s.ok ? 'OK' : 'FAILED');
  return lines.join('\n');
}
