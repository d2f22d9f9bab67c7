// The benchmark entry (`npm run bench`, which compiles src/ and bench/ into .bench-build/ first):
// runs every registered suite, or those named with --suite, merges their figures and ratios, and
// prints a table, or with --json one JSON object. Later suites (bus, KMCL, servicing) register
// in SUITES below.
//
//   npm run bench [-- --json] [--quick] [--suite NAME ...] [--seconds S] [--repeats N]

import { busSuite } from './bus.js';
import { buildReport, renderReport, type Suite, type SuiteReport } from './harness.js';
import { kmclSuite } from './kmcl.js';
import { kmclRoundTripSuite } from './kmcl-roundtrip.js';
import { ringSuite } from './ring.js';
import { servicingSuite } from './servicing.js';

/** Every suite, in the order they run. */
export const SUITES: readonly Suite[] = [ringSuite, busSuite, kmclSuite, kmclRoundTripSuite, servicingSuite];

interface Args {
  json: boolean;
  quick: boolean;
  suites: string[];
  seconds: number | null;
  repeats: number | null;
  help: boolean;
}

const USAGE = `usage: npm run bench -- [--json] [--quick] [--suite NAME]... [--seconds S] [--repeats N]
  --json        print one JSON object (progress still goes to stderr)
  --quick       smoke run: short runs, one repeat (figures not meaningful)
  --suite NAME  run only this suite (repeatable); suites: ${SUITES.map((s) => s.name).join(', ')}
  --seconds S   target duration of one timed run (default 1.5, quick 0.1)
  --repeats N   timed runs per figure, best kept (default 3, quick 1)`;

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { json: false, quick: false, suites: [], seconds: null, repeats: null, help: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    if (arg === '--json') a.json = true;
    else if (arg === '--quick') a.quick = true;
    else if (arg === '--suite') a.suites.push(...value().split(','));
    else if (arg === '--seconds') a.seconds = Number(value());
    else if (arg === '--repeats') a.repeats = Number(value());
    else if (arg === '--help' || arg === '-h') a.help = true;
    else throw new Error(`unknown option ${arg}`);
  }
  if (a.seconds !== null && !(a.seconds > 0)) throw new Error('--seconds needs a positive number');
  if (a.repeats !== null && !(Number.isInteger(a.repeats) && a.repeats >= 1)) {
    throw new Error('--repeats needs a positive integer');
  }
  return a;
}

async function main(argv: readonly string[]): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const unknown = args.suites.filter((n) => !SUITES.some((s) => s.name === n));
  if (unknown.length > 0) {
    process.stderr.write(`unknown suite ${unknown.join(', ')}\n${USAGE}\n`);
    return 2;
  }
  const selected = args.suites.length === 0 ? SUITES : SUITES.filter((s) => args.suites.includes(s.name));
  const options = {
    quick: args.quick,
    seconds: args.seconds ?? (args.quick ? 0.1 : 1.5),
    repeats: args.repeats ?? (args.quick ? 1 : 3),
  };
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const results: Record<string, SuiteReport> = {};
  for (const suite of selected) {
    log(`suite ${suite.name}: ${suite.description}`);
    const t0 = performance.now();
    const r = await suite.run({ ...options, log });
    results[suite.name] = { ...r, elapsedSeconds: (performance.now() - t0) / 1000 };
  }
  const report = buildReport(options, results);
  process.stdout.write(args.json ? `${JSON.stringify(report, null, 2)}\n` : `${renderReport(report)}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  },
);
