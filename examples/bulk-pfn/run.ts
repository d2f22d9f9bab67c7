// Runs the bulk-transfer example: builds the host and guest providers (examples/providers.ts),
// starts the bulk VSP and VSC, writes blocks of several sizes from scattered guest pages to the
// host (all in flight together), reads them back into fresh guest pages, checks every byte and
// both sides' checksums, shows the host refusing a read of a block that does not exist, and
// unloads both drivers.
//
//   npx tsx examples/bulk-pfn/run.ts [--loopback]

import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ntStatusName, STATUS_SUCCESS } from '../../src/kmcl/index.js';
import { type ExampleProviderOptions, makeProviders } from '../providers.js';
import { BULK_MAX_TRANSFER } from './protocol.js';
import { type BulkResult, BulkVsc } from './vsc.js';
import { BulkVsp, type BulkVspStats } from './vsp.js';

export interface BulkRunOptions extends ExampleProviderOptions {
  /** Block sizes in bytes (default 4 KiB, 10000 B, 64 KiB, 256 KiB, 1 MiB). */
  sizes?: readonly number[];
  timeoutMs?: number;
}

export interface BulkTransferReport {
  blockId: number;
  bytes: number;
  /** Guest pages that carried the data, and how many of them were not physically adjacent. */
  pages: number;
  scatteredPages: number;
  writeStatus: string;
  readStatus: string;
  /** The host's checksum of what it read equals the guest's checksum of what it wrote. */
  writeChecksumOk: boolean;
  /** The host's checksum of what it wrote equals the guest's checksum of what it read. */
  readChecksumOk: boolean;
  /** The bytes read back equal the bytes written. */
  verified: boolean;
}

export interface BulkRunReport {
  transport: string;
  transfers: BulkTransferReport[];
  /** Reading a block that was never written. */
  missingBlockStatus: string;
  events: string[];
  vsp: BulkVspStats;
  peerErrors: string[];
  callbackErrors: string[];
  /** Guest pages still allocated after the run, rings included (all must be given back). */
  leakedPages: number;
  ok: boolean;
}

/** The content of block `id`: a pattern that differs per block and per byte. */
export function blockData(id: number, size: number): Uint8Array {
  const data = new Uint8Array(size);
  let x = (id * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = x & 0xff;
  }
  return data;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function nonAdjacent(pfns: readonly number[]): number {
  let n = 0;
  for (let i = 1; i < pfns.length; i++) if (pfns[i] !== pfns[i - 1]! + 1) n++;
  return n;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export async function runBulk(options: BulkRunOptions = {}): Promise<BulkRunReport> {
  const sizes = options.sizes ?? [4096, 10_000, 64 * 1024, 256 * 1024, BULK_MAX_TRANSFER];
  const env = await makeProviders(options);
  const events: string[] = [];
  const onEvent = (line: string) => events.push(line);
  const pagesBefore = env.allocatedPageCount();

  const vsp = BulkVsp.start(env.host, env.vmUserHandle, { onEvent });
  const vsc = BulkVsc.start(env.guest, env, { onEvent });
  await withTimeout(vsc.ready, options.timeoutMs ?? 10_000, 'bulk VSC open');

  const ids = sizes.map((_, i) => 100 + i);
  const sent = sizes.map((size, i) => blockData(ids[i]!, size));
  const writes: BulkResult[] = await Promise.all(sent.map((data, i) => vsc.write(ids[i]!, data)));
  const reads: BulkResult[] = await Promise.all(sizes.map((size, i) => vsc.read(ids[i]!, size)));
  const missing = await vsc.read(7, 4096);

  await vsc.stop();
  await vsp.stop();
  await env.idle();
  const leakedPages = env.allocatedPageCount() - pagesBefore;
  await env.close();

  const success = ntStatusName(STATUS_SUCCESS);
  const transfers: BulkTransferReport[] = sizes.map((size, i) => {
    const w = writes[i]!;
    const r = reads[i]!;
    return {
      blockId: ids[i]!,
      bytes: size,
      pages: w.pfns.length,
      scatteredPages: nonAdjacent(w.pfns),
      writeStatus: ntStatusName(w.status),
      readStatus: ntStatusName(r.status),
      writeChecksumOk: w.byteCount === size && w.hostChecksum === w.guestChecksum,
      readChecksumOk: r.byteCount === size && r.hostChecksum === r.guestChecksum,
      verified: equalBytes(r.data, sent[i]!),
    };
  });
  const ok =
    transfers.every(
      (t) =>
        t.writeStatus === success &&
        t.readStatus === success &&
        t.writeChecksumOk &&
        t.readChecksumOk &&
        t.verified,
    ) &&
    env.peerErrors.length === 0 &&
    env.callbackErrors.length === 0;
  return {
    transport: env.transport,
    transfers,
    missingBlockStatus: ntStatusName(missing.status),
    events,
    vsp: { ...vsp.stats },
    peerErrors: [...env.peerErrors],
    callbackErrors: [...env.callbackErrors],
    leakedPages,
    ok,
  };
}

export function formatBulkReport(r: BulkRunReport): string[] {
  const lines = [`bulk transfer over external PFNs, ${r.transport} transport`, '', 'state changes:'];
  for (const e of r.events) lines.push(`  ${e}`);
  lines.push('', 'block   bytes     pages (not adjacent)  write              read               verified');
  for (const t of r.transfers) {
    lines.push(
      `${String(t.blockId).padEnd(6)}  ${String(t.bytes).padStart(8)}  ${`${t.pages} (${t.scatteredPages})`.padEnd(20)}  ` +
        `${`${t.writeStatus}${t.writeChecksumOk ? '' : ' BAD SUM'}`.padEnd(17)}  ` +
        `${`${t.readStatus}${t.readChecksumOk ? '' : ' BAD SUM'}`.padEnd(17)}  ${t.verified ? 'yes' : 'NO'}`,
    );
  }
  lines.push('', `read of a block never written -> ${r.missingBlockStatus}`);
  lines.push(
    `VSP: ${r.vsp.writes} writes (${r.vsp.bytesFromGuest} bytes from guest pages), ` +
      `${r.vsp.reads} reads (${r.vsp.bytesToGuest} bytes into guest pages), ${r.vsp.refused} refused`,
  );
  lines.push(`guest pages still allocated: ${r.leakedPages}`);
  lines.push(`peer errors: ${r.peerErrors.length}, callback errors: ${r.callbackErrors.length}`);
  for (const e of [...r.peerErrors, ...r.callbackErrors]) lines.push(`  ${e}`);
  lines.push(r.ok ? 'OK' : 'FAILED');
  return lines;
}

function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  // --loopback: over the loopback port (the bus's test double) instead of the real VMBus.
  runBulk({ transport: process.argv.includes('--loopback') ? 'loopback' : undefined }).then(
    (report) => {
      process.stdout.write(`${formatBulkReport(report).join('\n')}\n`);
      process.exitCode = report.ok ? 0 : 1;
    },
    (e: unknown) => {
      process.stderr.write(`bulk-pfn example failed: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
