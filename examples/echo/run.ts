// Runs the echo example: builds the host and guest providers (examples/providers.ts), starts the
// echo VSP on the host and the echo VSC in the guest, sends echoes of several sizes (some of them
// in flight together), shows what the VSP does with two malformed messages, then unloads the guest
// driver and the host driver and prints what happened.
//
//   npx tsx examples/echo/run.ts [--loopback]

import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ntStatusName, STATUS_SUCCESS } from '../../src/kmcl/index.js';
import { type ExampleProviderOptions, makeProviders } from '../providers.js';
import { ECHO_HEADER_SIZE, ECHO_MAX_DATA, ECHO_MSG_ECHO, putHeader } from './protocol.js';
import { EchoVsc } from './vsc.js';
import { EchoVsp, type EchoVspStats } from './vsp.js';

export interface EchoRunOptions extends ExampleProviderOptions {
  /** Echo messages to send (default 32). */
  messages?: number;
  /** Give up if the channel has not opened after this many milliseconds (default 10000). */
  timeoutMs?: number;
}

export interface EchoResult {
  /** Bytes sent. */
  length: number;
  /** Status name of the reply. */
  status: string;
  /** Whether the reply's bytes equal the bytes sent. */
  equal: boolean;
}

export interface EchoRunReport {
  transport: string;
  /** The protocol version the host accepted. */
  version: number;
  echoes: EchoResult[];
  /** Status names the host answered the malformed messages with. */
  malformed: { what: string; status: string }[];
  /** State changes of both drivers, in order. */
  events: string[];
  vsp: EchoVspStats;
  peerErrors: string[];
  callbackErrors: string[];
  /** Every echo came back equal with STATUS_SUCCESS, and nothing went wrong on either side. */
  ok: boolean;
}

/** The payload of echo `i`: sizes from 0 to ECHO_MAX_DATA, a different pattern each. */
export function echoPayload(i: number): Uint8Array {
  const sizes = [0, 1, 7, 8, 9, 64, 100, 1000, 1500, ECHO_MAX_DATA];
  const size = sizes[i % sizes.length]!;
  const data = new Uint8Array(size);
  for (let j = 0; j < size; j++) data[j] = (i * 31 + j * 7 + 1) & 0xff;
  return data;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Runs the whole example and reports what happened (nothing is printed). */
export async function runEcho(options: EchoRunOptions = {}): Promise<EchoRunReport> {
  const messages = options.messages ?? 32;
  const env = await makeProviders(options);
  const events: string[] = [];
  const onEvent = (line: string) => events.push(line);

  const vsp = EchoVsp.start(env.host, env.vmUserHandle, { onEvent });
  const vsc = EchoVsc.start(env.guest, { onEvent });
  const version = await withTimeout(vsc.ready, options.timeoutMs ?? 10_000, 'echo VSC open');

  // Eight transactions in flight at a time.
  const echoes: EchoResult[] = [];
  for (let first = 0; first < messages; first += 8) {
    const batch: Promise<EchoResult>[] = [];
    for (let i = first; i < Math.min(first + 8, messages); i++) {
      const sent = echoPayload(i);
      batch.push(
        vsc.echo(sent).then((r) => ({
          length: sent.length,
          status: ntStatusName(r.status),
          equal: equalBytes(r.data, sent),
        })),
      );
    }
    echoes.push(...(await Promise.all(batch)));
  }

  // Two messages that break the protocol: the VSP refuses them with a status, nothing else happens.
  const lying = new Uint8Array(ECHO_HEADER_SIZE + 8);
  putHeader(lying, ECHO_MSG_ECHO, 4000);
  const unknown = new Uint8Array(ECHO_HEADER_SIZE);
  putHeader(unknown, 99, 0);
  const malformed = [
    {
      what: 'ECHO whose DataLength (4000) exceeds the packet',
      status: ntStatusName((await vsc.sendRaw(lying)).status),
    },
    { what: 'unknown MessageType 99', status: ntStatusName((await vsc.sendRaw(unknown)).status) },
  ];

  // Unload: the guest driver first (it closes the channel), then the host driver (revokes the offer).
  await vsc.stop();
  await vsp.stop();
  await env.idle();
  await env.close();

  const ok =
    echoes.length === messages &&
    echoes.every((e) => e.equal && e.status === ntStatusName(STATUS_SUCCESS)) &&
    env.peerErrors.length === 0 &&
    env.callbackErrors.length === 0;
  return {
    transport: env.transport,
    version,
    echoes,
    malformed,
    events,
    vsp: { ...vsp.stats },
    peerErrors: [...env.peerErrors],
    callbackErrors: [...env.callbackErrors],
    ok,
  };
}

/** The report as text lines. */
export function formatEchoReport(r: EchoRunReport): string[] {
  const lines = [`echo example over the ${r.transport} transport`, '', 'state changes:'];
  for (const e of r.events) lines.push(`  ${e}`);
  lines.push('', `negotiated protocol version 0x${r.version.toString(16).padStart(8, '0')}`);
  const equal = r.echoes.filter((e) => e.equal).length;
  const bytes = r.echoes.reduce((n, e) => n + e.length, 0);
  const statuses = [...new Set(r.echoes.map((e) => e.status))].join(', ');
  lines.push(
    `echoes: ${r.echoes.length} sent, ${equal} came back equal (${bytes} bytes), status ${statuses}`,
  );
  for (const m of r.malformed) lines.push(`malformed: ${m.what} -> ${m.status}`);
  lines.push(
    `VSP: ${r.vsp.opened} open(s), ${r.vsp.echoed} echoed (${r.vsp.bytes} bytes), ${r.vsp.rejected} refused`,
  );
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
  runEcho({ transport: process.argv.includes('--loopback') ? 'loopback' : undefined }).then(
    (report) => {
      process.stdout.write(`${formatEchoReport(report).join('\n')}\n`);
      process.exitCode = report.ok ? 0 : 1;
    },
    (e: unknown) => {
      process.stderr.write(`echo example failed: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
