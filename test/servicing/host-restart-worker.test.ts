// Servicing of the whole host side across threads: each host instance lives in its own worker
// thread (host-worker.ts). The guest, on this thread, keeps its VMBus client, channel and rings
// and keeps sending while, cycle after cycle, the host saves its VSP channel and its VMBus with
// thousands of transactions in flight and a full ring, detaches, and a NEW worker takes over
// from the saved image. Every message and every completion is counted exactly once, in order.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { build } from 'esbuild';
import { attachKmclGuest, type KmclGuest } from '../../src/kmcl/bus-port.js';
import { kmclChannelInfo, STATUS_SUCCESS, type VMBCHANNEL } from '../../src/kmcl/index.js';
import { clientTable, makeClient, must, until } from '../kmcl-bus/kit.js';
import type { HostCommand, HostEvent, HostWorkerData, VspCounters } from './host-worker.js';

// A new worker starts per cycle. Loading TypeScript through tsx in every one would spend most of
// the test in the compiler, so host-worker.ts is bundled to one JavaScript file once.
let bundleDir = '';
let hostWorkerJs = '';

/** A host instance in a worker, with its events as a queue to await. */
class HostInstance {
  private readonly events: HostEvent[] = [];
  private waiter: (() => void) | null = null;
  private exitError: Error | null = null;

  constructor(readonly worker: Worker) {
    worker.on('message', (e: HostEvent) => {
      this.events.push(e);
      this.waiter?.();
    });
    worker.on('error', (e) => {
      this.exitError = e;
      this.waiter?.();
    });
  }

  static start(data: HostWorkerData): HostInstance {
    return new HostInstance(new Worker(hostWorkerJs, { workerData: data }));
  }

  /** A new host instance (a new worker) that takes over from what the previous one saved. */
  static async takeOver(saved: Extract<HostEvent, { ev: 'saved' }>): Promise<HostInstance> {
    const next = HostInstance.start({
      mode: 'adopt',
      descriptor: saved.descriptor,
      image: saved.image,
      chunks: saved.chunks,
      counters: saved.counters,
    });
    await next.next('ready');
    return next;
  }

  send(c: HostCommand): void {
    this.worker.postMessage(c);
  }

  async next<K extends HostEvent['ev']>(ev: K, ms = 30_000): Promise<Extract<HostEvent, { ev: K }>> {
    const end = Date.now() + ms;
    for (;;) {
      if (this.exitError !== null) throw this.exitError;
      const e = this.events.shift();
      if (e !== undefined) {
        if (e.ev === 'error') throw new Error(`host worker: ${e.text}`);
        if (e.ev !== ev) throw new Error(`host worker sent ${e.ev}, expected ${ev}`);
        return e as Extract<HostEvent, { ev: K }>;
      }
      if (Date.now() > end) throw new Error(`timed out waiting for ${ev} from the host worker`);
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 50);
      });
      this.waiter = null;
    }
  }
}

describe('host restart in a new worker thread', () => {
  before(async () => {
    bundleDir = mkdtempSync(join(tmpdir(), 'vmbus-host-worker-'));
    hostWorkerJs = join(bundleDir, 'host-worker.mjs');
    await build({
      entryPoints: [fileURLToPath(new URL('./host-worker.ts', import.meta.url))],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      outfile: hostWorkerJs,
      logLevel: 'error',
    });
  });
  after(() => rmSync(bundleDir, { recursive: true, force: true }));

  test('100 host restarts under load: every packet exactly once and in order', async () => {
    const CYCLES = Number(process.env.VMBUS_SERVICING_CYCLES ?? 100);
    let host = HostInstance.start({ mode: 'fresh', memoryBytes: 16 * 1024 * 1024 });
    let guest: KmclGuest | null = null;
    try {
      const ready = await host.next('ready');
      guest = await attachKmclGuest(ready.guest!);
      const C = clientTable(guest.provider);
      // The guest completes the host's transactions with their sequence number.
      const c: VMBCHANNEL = makeClient(C, {
        onPacket: (_ch, pkt, buf, len) => C.VmbChannelPacketComplete(pkt, buf, len),
      });
      must(C.VmbChannelEnable(c), 'client enable');
      await until(() => kmclChannelInfo(c).flowing, 'the guest channel flows');

      // The guest keeps sending, host up or down, keeping its own queue bounded.
      let guestSeq = 0;
      let sending = true;
      const payload = new Uint8Array(4);
      const pump = (): void => {
        if (!sending) return;
        if (kmclChannelInfo(c).queuedOutgoing < 256) {
          for (let i = 0; i < 32; i++) {
            new DataView(payload.buffer).setUint32(0, guestSeq++, true);
            const p = C.VmbPacketAllocate(c);
            if (p === null) throw new Error('guest VmbPacketAllocate failed');
            must(C.VmbPacketSend(p, payload, 4, null, 0), 'guest send');
          }
        }
        setTimeout(pump, 1);
      };
      pump();

      let counters: VspCounters | null = null;
      let maxInFlight = 0;
      let maxQueued = 0;
      let hostSent = 0;
      for (let cycle = 0; cycle < CYCLES; cycle++) {
        // Load: the guest holds back its completions while the host sends; the host's ring fills
        // and its sends queue. Every 10th cycle is heavy (thousands in flight).
        await C.VmbChannelPause(c);
        const n = cycle % 10 === 0 ? 4000 : 300;
        host.send({ cmd: 'send', n });
        await host.next('sent');
        hostSent += n;
        host.send({ cmd: 'save', chunkSize: cycle % 2 === 0 ? 65536 : 1024 + cycle * 37 });
        const saved = await host.next('saved');
        await host.worker.terminate();
        maxInFlight = Math.max(maxInFlight, saved.inFlight);
        maxQueued = Math.max(maxQueued, saved.queued);
        assert.deepEqual(saved.counters.errors, [], `cycle ${cycle}: the VSP saw no violation`);
        // The host is gone: the guest completes what it holds and keeps sending.
        C.VmbChannelStart(c);
        await new Promise((r) => setTimeout(r, 2));
        host = await HostInstance.takeOver(saved);
        counters = saved.counters;
      }
      assert.ok(maxInFlight >= 4000, `thousands of transactions were in flight at a save (${maxInFlight})`);
      assert.ok(maxQueued > 0, 'a save found sends queued for a full ring');
      sending = false;
      const lastGuest = guestSeq;
      // One more save to read the final counters once everything has drained.
      await until(() => kmclChannelInfo(c).queuedOutgoing === 0, 'the guest queue drains', 30_000);
      let final: VspCounters = counters!;
      for (let i = 0; i < 200; i++) {
        host.send({ cmd: 'save', chunkSize: 65536 });
        const saved = await host.next('saved');
        await host.worker.terminate();
        final = saved.counters;
        host = await HostInstance.takeOver(saved);
        if (final.nextSeen === lastGuest && final.nextDone === hostSent) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual(final.errors, []);
      assert.equal(final.nextSeen, lastGuest, 'every guest message arrived once, in order');
      assert.equal(final.nextDone, hostSent, 'every host transaction completed once, in order');
      assert.equal(kmclChannelInfo(c).state, 'open', 'the guest never lost its channel');
      assert.equal(STATUS_SUCCESS, 0);
    } finally {
      guest?.close();
      await host.worker.terminate();
    }
  });
});
