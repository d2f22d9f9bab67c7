// Shared pieces of the benchmark runner: the suite interface every benchmark file implements, the
// figure and ratio records they return, calibration and best-of-N timing, and the two outputs (a
// readable table, one JSON object). Suites add their own figures and ratio entries; the runner
// merges them without knowing what they measure.

import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';

/** Options every suite receives. */
export interface SuiteOptions {
  /** Short smoke run: one timed run per figure, a fraction of the normal duration. */
  readonly quick: boolean;
  /** Target duration of one timed run, in seconds. */
  readonly seconds: number;
  /** Timed runs per figure; the best one is reported. */
  readonly repeats: number;
  /** Progress lines (stderr), never part of the results. */
  readonly log: (line: string) => void;
}

/** One measured quantity: a packet stream of fixed-size payloads, best of `runs`. */
export interface Figure {
  /** What was measured, for the table ("ring 64 B batched", "MessagePort 4096 B"). */
  readonly label: string;
  /** Payload bytes per packet or message. */
  readonly payloadBytes: number;
  /** Best run: packets (or messages) per second; null when not measured. */
  readonly packetsPerSecond: number | null;
  /** Best run: payload bytes per second; null when not measured. */
  readonly bytesPerSecond: number | null;
  /** Packets per timed run. */
  readonly packets: number;
  /** Elapsed seconds of the best run. */
  readonly seconds: number | null;
  /** Packets per second of every timed run, in order. */
  readonly runs: readonly number[];
  /** Counters of the best run (signals, sleeps, mismatches, ...). */
  readonly details: Readonly<Record<string, number | string | boolean | null>>;
  /** Why the figure is missing or not trustworthy (a failed build, mismatching bytes). */
  readonly error?: string;
}

/** A ratio of two figures: ours divided by theirs. */
export interface RatioEntry {
  /** null when either side is missing. */
  readonly value: number | null;
  /** Figure keys (`suite.figure`) of the numerator and the denominator. */
  readonly ours: string;
  readonly theirs: string;
  /** The target the issue sets, if any. */
  readonly goal?: number;
  readonly note?: string;
}

export interface SuiteResult {
  readonly figures: Record<string, Figure>;
  readonly ratios: Record<string, RatioEntry>;
  readonly notes: readonly string[];
}

/** A benchmark suite: `bench/run.ts` runs a list of these and merges their results. */
export interface Suite {
  readonly name: string;
  readonly description: string;
  run(options: SuiteOptions): Promise<SuiteResult>;
}

/** One timed run as a suite's driver reports it. */
export interface Sample {
  readonly packets: number;
  readonly seconds: number;
  readonly details: Record<string, number | string | boolean | null>;
  /** Set when the run was wrong (bytes did not verify): the figure is then flagged. */
  readonly error?: string;
}

/** Milliseconds on a clock shared by all threads of the process (timeOrigin + now). */
export function clockMs(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Finds a packet count that makes one run last about `seconds`: runs `initial` packets (also
 * warming up the JIT), then scales by the measured rate. Never returns less than `minimum`.
 */
export async function calibrate(
  run: (packets: number) => Promise<Sample>,
  initial: number,
  seconds: number,
  minimum = 1000,
): Promise<number> {
  let n = initial;
  for (let attempt = 0; attempt < 4; attempt++) {
    const s = await run(n);
    if (s.error) return Math.max(minimum, n);
    const rate = s.packets / Math.max(s.seconds, 1e-6);
    const wanted = Math.max(minimum, Math.round(rate * seconds));
    // A run that was far too short gives a noisy rate: measure again at the new size.
    if (s.seconds >= seconds / 8 || wanted <= n) return wanted;
    n = Math.min(wanted, n * 16);
  }
  return n;
}

/** The figure of timed runs `samples` of `packets` packets each: the fastest run is kept. */
export function figureFromSamples(
  label: string,
  payloadBytes: number,
  packets: number,
  samples: readonly Sample[],
): Figure {
  const runs: number[] = [];
  let best: Sample | null = null;
  let error: string | undefined;
  for (const s of samples) {
    if (s.error) error ??= s.error;
    const pps = s.packets / s.seconds;
    runs.push(pps);
    if (best === null || pps > best.packets / best.seconds) best = s;
  }
  const pps = best === null ? null : best.packets / best.seconds;
  return {
    label,
    payloadBytes,
    packetsPerSecond: pps,
    bytesPerSecond: pps === null ? null : pps * payloadBytes,
    packets,
    seconds: best?.seconds ?? null,
    runs,
    details: best?.details ?? {},
    ...(error === undefined ? {} : { error }),
  };
}

/** Something `measureInterleaved` can measure: a stream of `size`-byte packets. */
export interface Measurable {
  readonly key: string;
  readonly label: string;
  /** Payload bytes per packet. */
  readonly size: number;
  /** Packets of the first calibration run. */
  readonly initial: number;
  readonly run: (packets: number) => Promise<Sample>;
}

/**
 * Calibrates each measurable, then runs `repeats` rounds of one timed run of each, in turn, and
 * keeps the best run of each. Interleaving makes the figures that are compared with each other
 * see the same machine conditions (this matters on small, shared VMs, whose speed drifts over
 * tens of seconds). A measurable that throws gets a missing figure with the reason.
 */
export async function measureInterleaved(
  items: readonly Measurable[],
  o: SuiteOptions,
): Promise<Record<string, Figure>> {
  const figures: Record<string, Figure> = {};
  const live: { m: Measurable; packets: number; samples: Sample[] }[] = [];
  for (const m of items) {
    o.log(`  ${m.key}: calibrating`);
    try {
      const packets = await calibrate(m.run, o.quick ? Math.ceil(m.initial / 10) : m.initial, o.seconds);
      live.push({ m, packets, samples: [] });
    } catch (e) {
      figures[m.key] = missingFigure(m.label, m.size, e instanceof Error ? e.message : String(e));
    }
  }
  for (let round = 0; round < o.repeats; round++) {
    o.log(`  round ${round + 1} of ${o.repeats}`);
    for (const l of live) {
      if (figures[l.m.key] !== undefined) continue;
      try {
        l.samples.push(await l.m.run(l.packets));
      } catch (e) {
        figures[l.m.key] = missingFigure(l.m.label, l.m.size, e instanceof Error ? e.message : String(e));
      }
    }
  }
  for (const l of live) {
    figures[l.m.key] ??= figureFromSamples(l.m.label, l.m.size, l.packets, l.samples);
  }
  // Keep the order of `items`.
  const ordered: Record<string, Figure> = {};
  for (const m of items) ordered[m.key] = figures[m.key]!;
  return ordered;
}

/** A figure that could not be measured (the reason goes in `error`). */
export function missingFigure(label: string, payloadBytes: number, error: string): Figure {
  return {
    label,
    payloadBytes,
    packetsPerSecond: null,
    bytesPerSecond: null,
    packets: 0,
    seconds: null,
    runs: [],
    details: {},
    error,
  };
}

/** ours / theirs of two figures' packet rates (null if either is missing or flagged). */
export function ratioOf(
  figures: Record<string, Figure>,
  suite: string,
  ours: string,
  theirs: string,
  goal?: number,
  note?: string,
): RatioEntry {
  const a = figures[ours];
  const b = figures[theirs];
  const ok = (f: Figure | undefined): f is Figure =>
    f !== undefined && f.error === undefined && f.packetsPerSecond !== null && f.packetsPerSecond > 0;
  const value = ok(a) && ok(b) ? a.packetsPerSecond! / b.packetsPerSecond! : null;
  return {
    value,
    ours: `${suite}.${ours}`,
    theirs: `${suite}.${theirs}`,
    ...(goal === undefined ? {} : { goal }),
    ...(note === undefined ? {} : { note }),
  };
}

/** The key of the fastest of several figures (by packets per second), or the first if none ran. */
export function fastest(figures: Record<string, Figure>, keys: readonly string[]): string {
  let best = keys[0]!;
  let bestRate = -1;
  for (const k of keys) {
    const f = figures[k];
    if (f && f.error === undefined && f.packetsPerSecond !== null && f.packetsPerSecond > bestRate) {
      best = k;
      bestRate = f.packetsPerSecond;
    }
  }
  return best;
}

// ----- the merged report -----

export interface SuiteReport extends SuiteResult {
  /** Wall-clock seconds the suite took. */
  readonly elapsedSeconds: number;
}

export interface BenchReport {
  readonly tool: 'vmbus-bench';
  readonly version: 1;
  readonly date: string;
  readonly environment: {
    readonly node: string;
    readonly platform: string;
    readonly arch: string;
    readonly cpus: number;
  };
  readonly options: { readonly quick: boolean; readonly seconds: number; readonly repeats: number };
  readonly suites: Record<string, SuiteReport>;
  /** Every ratio of every suite, by name: ours / theirs (null when not measured). */
  readonly ratios: Record<string, number | null>;
  /** Where each ratio comes from and its goal. */
  readonly ratioDetails: Record<string, RatioEntry & { readonly met: boolean | null }>;
}

/** Merges suite results; a ratio name used by two suites is a programming error. */
export function buildReport(
  options: { quick: boolean; seconds: number; repeats: number },
  suites: Record<string, SuiteReport>,
): BenchReport {
  const ratios: Record<string, number | null> = {};
  const ratioDetails: Record<string, RatioEntry & { met: boolean | null }> = {};
  for (const [name, result] of Object.entries(suites)) {
    for (const [key, r] of Object.entries(result.ratios)) {
      if (key in ratios) throw new Error(`ratio ${key} is reported by two suites (the second is ${name})`);
      ratios[key] = r.value;
      ratioDetails[key] = { ...r, met: r.value === null || r.goal === undefined ? null : r.value >= r.goal };
    }
  }
  return {
    tool: 'vmbus-bench',
    version: 1,
    date: new Date().toISOString(),
    environment: {
      node: process.version,
      platform: process.platform,
      arch: process.arch,
      cpus: availableParallelism(),
    },
    options,
    suites,
    ratios,
    ratioDetails,
  };
}

// ----- formatting -----

/** 12345678 -> "12.35 M". */
export function formatRate(value: number | null): string {
  if (value === null || !Number.isFinite(value)) return '-';
  const units = ['', ' k', ' M', ' G', ' T'];
  let v = value;
  let u = 0;
  while (Math.abs(v) >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${v.toFixed(v >= 100 ? 1 : 2)}${units[u]}`;
}

/** Bytes per second in binary units: "1.23 GiB/s". */
export function formatBytesRate(value: number | null): string {
  if (value === null || !Number.isFinite(value)) return '-';
  const units = ['B/s', 'KiB/s', 'MiB/s', 'GiB/s', 'TiB/s'];
  let v = value;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v >= 100 ? 1 : 2)} ${units[u]}`;
}

/** Renders rows as a left/right aligned text table (numbers right-aligned). */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => /^[-\d.]/.test(r[i] ?? '-')));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** The human-readable report: one table of figures per suite, then the ratios. */
export function renderReport(report: BenchReport): string {
  const out: string[] = [];
  const env = report.environment;
  out.push(
    `vmbus bench  ${report.date}  node ${env.node}  ${env.platform}/${env.arch}  ${env.cpus} CPUs` +
      `  ${report.options.quick ? 'QUICK (smoke run, figures not meaningful)' : `best of ${report.options.repeats}, ~${report.options.seconds} s a run`}`,
  );
  for (const [name, suite] of Object.entries(report.suites)) {
    out.push('', `suite ${name} (${suite.elapsedSeconds.toFixed(1)} s)`);
    const rows = Object.entries(suite.figures).map(([key, f]) => [
      key,
      f.label,
      String(f.payloadBytes),
      formatRate(f.packetsPerSecond),
      formatBytesRate(f.bytesPerSecond),
      f.runs.map((r) => formatRate(r)).join(' / ') || '-',
      f.error ?? describeDetails(f.details),
    ]);
    out.push(table(['figure', 'what', 'bytes', 'pkts/s', 'payload/s', 'runs (pkts/s)', 'notes'], rows));
    for (const note of suite.notes) out.push(`  note: ${note}`);
  }
  const ratioRows = Object.entries(report.ratioDetails).map(([key, r]) => [
    key,
    r.value === null ? '-' : `${r.value.toFixed(2)}x`,
    r.goal === undefined ? '' : `>= ${r.goal}x`,
    r.met === null ? '' : r.met ? 'met' : 'NOT met',
    `${r.ours} / ${r.theirs}${r.note ? ` (${r.note})` : ''}`,
  ]);
  if (ratioRows.length > 0) {
    out.push('', 'ratios (ours / theirs, packets per second)');
    out.push(table(['ratio', 'value', 'goal', '', 'from'], ratioRows));
  }
  return out.join('\n');
}

function describeDetails(details: Readonly<Record<string, number | string | boolean | null>>): string {
  return Object.entries(details)
    .map(([k, v]) => `${k}=${typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(3) : String(v)}`)
    .join(' ');
}
