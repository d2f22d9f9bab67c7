// The summary of `vmbus demo`: joins the host's and the guest's reports into one object (channels
// with relids and traffic each way, heartbeats, KVP, time sync, block I/O, servicing) and runs
// the cross checks that make "lost" and "duplicated" real: every heartbeat acknowledged once and
// in sequence, every KVP value read back equal on both sides, every time message echoed, every
// storage request completed exactly once and seen by the host's disk as often as it was sent,
// every block verified, and each side's packet counts matching the other's. With --servicing,
// also that every host restart was done with storage requests in flight and that each of those
// requests completed exactly once; the other checks count every host instance together. Also
// renders the table the text mode prints. Pure: no I/O, no threads.

import {
  type ChannelReport,
  type DemoWorkload,
  extentCount,
  type GuestReport,
  type HostReport,
  pairCount,
  type ServicingCycle,
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
  servicing: DemoServicingSummary;
  lost: number;
  duplicated: number;
  errors: number;
  /** One line per failed check (empty when ok). */
  problems: string[];
}

/** Host restarts (--servicing): how long the host was away, and what happened to the I/O. */
export interface DemoServicingSummary {
  /** Restarts asked for (--servicing N; 0 without) and done. */
  requested: number;
  cycles: number;
  /** Storage requests in flight while the host was away, summed over the restarts. */
  inFlight: number;
  /** Of those: never completed / completed more than once. */
  lost: number;
  duplicated: number;
  /** Over the restarts: no host served (pause to start), saving, restoring (adopt to start). */
  awayMs: { max: number; mean: number };
  saveMs: { max: number; mean: number };
  restoreMs: { max: number; mean: number };
  /** The longest any storage request took (a restart's pause shows here). */
  longestRequestMs: number;
  restarts: ServicingCycle[];
}

export interface SummaryInput {
  mode: DemoSummary['mode'];
  elapsedSeconds: number;
  workload: DemoWorkload;
  host: HostReport;
  guest: GuestReport;
  /** Teardown failures (drivers stopping, the bus closing). */
  teardownErrors?: readonly string[];
  /** Host restarts asked for and done (default none). */
  servicing?: { requested: number; restarts: readonly ServicingCycle[] };
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
  // guest answered exactly the rounds the host sent (plus one check round per restored host).
  const restarts = input.servicing?.restarts ?? [];
  const hb = host.heartbeat;
  expect('heartbeat rounds sent', hb.rounds, w.heartbeats + restarts.length);
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

  // Servicing: every restart done, mid-traffic, and the requests in flight across it completed
  // exactly once. Those requests are already in the storage counts above, so they are not added
  // to lost / duplicated a second time.
  const requested = input.servicing?.requested ?? 0;
  const sv = guest.servicing;
  if (restarts.length !== requested) error(`host restarts done: ${restarts.length} of ${requested}`, 1);
  if (sv.inFlight.length !== restarts.length) {
    error(`host restarts the guest was asked about: ${sv.inFlight.length} of ${restarts.length}`, 1);
  }
  for (const c of restarts) {
    if (c.inFlight === 0) {
      error(
        `host restart ${c.cycle}: no storage request in flight while the host was away (the I/O had ended)`,
        1,
      );
    }
  }
  if (sv.lost > 0)
    problems.push(`storage requests in flight across a host restart never completed: ${sv.lost}`);
  if (sv.duplicated > 0) {
    problems.push(
      `storage requests in flight across a host restart completed more than once: ${sv.duplicated}`,
    );
  }
  const stat = (f: (c: ServicingCycle) => number) => ({
    max: restarts.reduce((m, c) => Math.max(m, f(c)), 0),
    mean: restarts.length === 0 ? 0 : restarts.reduce((n, c) => n + f(c), 0) / restarts.length,
  });
  const servicing: DemoServicingSummary = {
    requested,
    cycles: restarts.length,
    inFlight: restarts.reduce((n, c) => n + c.inFlight, 0),
    lost: sv.lost,
    duplicated: sv.duplicated,
    awayMs: stat((c) => c.awayMs),
    saveMs: stat((c) => c.saveMs),
    restoreMs: stat((c) => c.restoreMs),
    longestRequestMs: sv.longestRequestMs,
    restarts: restarts.map((c) => ({ ...c })),
  };

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
    servicing,
    lost,
    duplicated,
    errors,
    problems,
  };
  summary.ok = lost === 0 && duplicated === 0 && errors === 0 && sv.lost === 0 && sv.duplicated === 0;
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

/** Columns `left` left-aligned (default the first and the third), the rest right-aligned. */
function table(rows: string[][], left: readonly number[] = [0, 2]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) =>
    r
      .map((cell, i) => (left.includes(i) ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
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
  const sv = s.servicing;
  if (sv.requested === 0) {
    item('servicing', 'off (vmbus demo --servicing restarts the host side during the block I/O)');
  } else {
    const where =
      s.mode === 'same-thread'
        ? 'a new hypervisor, VMBus and KMCL on this thread'
        : 'each in a new worker thread';
    item(
      'servicing',
      `${sv.cycles} host restarts (${where}) with block I/O in flight: ${sv.inFlight} requests in flight ` +
        `across them, ${sv.lost} lost, ${sv.duplicated} duplicated; the guest kept its connection and channels`,
    );
    item(
      '',
      `host away max ${ms(sv.awayMs.max)} (mean ${ms(sv.awayMs.mean)}); save max ${ms(sv.saveMs.max)}, ` +
        `restore max ${ms(sv.restoreMs.max)}; the longest storage request took ${ms(sv.longestRequestMs)}`,
    );
    const rows: string[][] = [['restart', 'at pair', 'in flight', 'save', 'restore', 'host away', 'state']];
    for (const c of sv.restarts) {
      rows.push([
        String(c.cycle),
        String(c.atPair),
        String(c.inFlight),
        ms(c.saveMs),
        ms(c.restoreMs),
        ms(c.awayMs),
        si(c.stateBytes, 'B'),
      ]);
    }
    for (const l of table(rows, [])) lines.push(`  ${' '.repeat(10)}${l}`);
  }
  lines.push('');
  lines.push(`  lost ${s.lost}, duplicated ${s.duplicated}, errors ${s.errors}`);
  for (const p of s.problems) lines.push(`  ! ${p}`);
  lines.push(s.ok ? 'OK' : 'FAILED');
  return lines.join('\n');
}
