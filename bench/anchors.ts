// The anchors the ring figures are compared with: the same packet stream sent with MessagePort
// `postMessage` between the two benchmark worker threads, and DPDK's VMBus ring code (the
// `dpdk-ringpeer` interop peer, built here with gcc) streaming between two processes over a ring
// file in /dev/shm. Both are measured in the same run as our ring.

import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel } from 'node:worker_threads';
import type { Sample } from './harness.js';
import type { WorkerPair } from './ring.js';

// ----- MessagePort -----

/** Messages in flight before the sender waits for an acknowledgement. */
export const PORT_WINDOW = 2048;
/** The receiver acknowledges every this many messages. */
export const PORT_ACK_EVERY = 256;

/**
 * One MessagePort stream of `packets` Uint8Array messages of `size` bytes from the pair's first
 * worker to its second (each message a structured-clone copy), acknowledged in batches.
 */
export async function messagePortStream(pair: WorkerPair, packets: number, size: number): Promise<Sample> {
  const { port1, port2 } = new MessageChannel();
  const { writer, reader } = await pair.stream(
    { cmd: 'port-write', port: port1, packets, size, window: PORT_WINDOW, ackEvery: PORT_ACK_EVERY },
    { cmd: 'port-read', port: port2, packets, size, window: PORT_WINDOW, ackEvery: PORT_ACK_EVERY },
  );
  const seconds = (reader.endMs - writer.startMs) / 1000;
  return {
    packets,
    seconds,
    details: {
      windowWaits: writer.sleeps,
      mismatches: reader.mismatches,
      fullChecks: reader.fullChecks,
    },
    ...(reader.mismatches > 0 ? { error: `${reader.mismatches} messages did not verify` } : {}),
  };
}

// ----- DPDK -----

/** The repository root: the nearest folder above this file whose package.json is named "vmbus". */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'vmbus') return dir;
      } catch {
        // not ours; keep looking
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the vmbus repository root above the bench files');
    dir = up;
  }
}

/** Where dpdk-ringpeer.c is: $VMBUS_INTEROP_DIR, else shared/interop next to the repository. */
export function interopDir(): string {
  return process.env['VMBUS_INTEROP_DIR'] ?? join(repoRoot(), '..', 'shared', 'interop');
}

export interface DpdkPeer {
  /** The built executable. */
  readonly path: string;
  /** Removes the temporary build folder. */
  dispose(): void;
}

/** Builds dpdk-ringpeer into a temporary folder; resolves to the reason on failure. */
export function buildDpdkPeer(): Promise<DpdkPeer | string> {
  const source = join(interopDir(), 'dpdk-ringpeer.c');
  if (!existsSync(source)) return Promise.resolve(`${source} not found (set VMBUS_INTEROP_DIR)`);
  const dir = mkdtempSync(join(tmpdir(), 'vmbus-bench-dpdk-'));
  const path = join(dir, 'dpdk-ringpeer');
  const dispose = () => rmSync(dir, { recursive: true, force: true });
  return new Promise((resolve) => {
    execFile(
      'gcc',
      ['-O2', '-o', path, source, '-l:librte_bus_vmbus.so.23', '-l:librte_eal.so.23'],
      { timeout: 120_000 },
      (error, _stdout, stderr) => {
        if (error) {
          dispose();
          const lines = stderr.trim().split('\n');
          const why = lines.find((l) => /error/i.test(l))?.trim() ?? lines.at(-1)?.trim() ?? error.message;
          resolve(`cannot build dpdk-ringpeer (gcc + librte-bus-vmbus23): ${why}`);
        } else {
          resolve({ path, dispose });
        }
      },
    );
  });
}

interface PeerRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function runPeer(peer: string, args: readonly string[], timeoutMs: number): Promise<PeerRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(peer, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Parses `n=N mismatches=M seconds=T mpps=P`. */
export function parseStreamLine(text: string): { mismatches: number; seconds: number; mpps: number } | null {
  const m = /mismatches=(\d+)\s+seconds=([\d.]+)\s+mpps=([\d.]+)/.exec(text);
  if (!m) return null;
  return { mismatches: Number(m[1]), seconds: Number(m[2]), mpps: Number(m[3]) };
}

let ringFileCounter = 0;

/**
 * One DPDK stream: `dpdk-ringpeer create` a ring file of `dataBytes` in /dev/shm, then
 * `stream-read` and `stream-write` of `packets` packets of `size` bytes as two processes. Both
 * print their own rate; the higher one is kept (the reader's clock also counts the writer's
 * start-up, the writer's stops before the reader drains the ring), which favours DPDK slightly.
 */
export async function dpdkStream(
  peer: DpdkPeer,
  packets: number,
  size: number,
  dataBytes: number,
): Promise<Sample> {
  const shm = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const file = join(shm, `vmbus-bench-${process.pid}-${ringFileCounter++}.ring`);
  const timeoutMs = 120_000;
  try {
    const created = await runPeer(peer.path, ['create', file, String(dataBytes)], timeoutMs);
    if (created.code !== 0) throw new Error(`dpdk-ringpeer create failed: ${created.stderr.trim()}`);
    const readerRun = runPeer(peer.path, ['stream-read', file, String(packets), String(size)], timeoutMs);
    const writerRun = runPeer(peer.path, ['stream-write', file, String(packets), String(size)], timeoutMs);
    const [r, w] = await Promise.all([readerRun, writerRun]);
    const rl = parseStreamLine(r.stdout);
    const wl = parseStreamLine(w.stdout);
    if (rl === null || wl === null || w.code !== 0) {
      throw new Error(
        `dpdk-ringpeer stream failed (reader exit ${r.code}: ${r.stdout.trim()} ${r.stderr.trim()}; ` +
          `writer exit ${w.code}: ${w.stdout.trim()} ${w.stderr.trim()})`,
      );
    }
    const seconds = Math.min(rl.seconds, wl.seconds);
    return {
      packets,
      seconds,
      details: {
        readerMpps: rl.mpps,
        writerMpps: wl.mpps,
        mismatches: rl.mismatches,
      },
      ...(rl.mismatches > 0 || r.code !== 0 ? { error: `DPDK reader saw ${rl.mismatches} mismatches` } : {}),
    };
  } finally {
    rmSync(file, { force: true });
  }
}
