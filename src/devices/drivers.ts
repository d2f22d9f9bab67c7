// Starting the device drivers of one partition in one call: every host VSP (heartbeat, shutdown,
// time sync, KVP, and a synthetic SCSI controller when a disk is given) on a host provider, or
// every guest VSC on a guest provider; and the summary the demo prints (per-channel traffic, I/O,
// verification, errors, latency). The providers are parameters, so the same drivers run over the
// loopback port and over the real bus.

import type { KmclProvider, VmbusUserHandle } from '../kmcl/index.js';
import type { ChannelCountersSnapshot, StorageIoSnapshot } from './driver-common.js';
import {
  HeartbeatVsc,
  type IcVscOptions,
  KvpVsc,
  type KvpVscOptions,
  ShutdownVsc,
  type ShutdownVscOptions,
  TimeSyncVsc,
  type TimeSyncVscOptions,
} from './ic/vsc.js';
import {
  HeartbeatVsp,
  type IcVersions,
  type IcVspOptions,
  KvpVsp,
  ShutdownVsp,
  TimeSyncVsp,
  type TimeSyncVspOptions,
} from './ic/vsp.js';
import { StorageVscDriver, type StorageVscDriverOptions, type StorageVscInfo } from './storage/vsc-driver.js';
import { StorageVspDriver, type StorageVspDriverOptions } from './storage/vsp-driver.js';

export interface DriverSummary {
  /** Per channel, as this side's driver counted it. */
  channels: ChannelCountersSnapshot[];
  /** Storage I/O (null without a storage driver). */
  io: StorageIoSnapshot | null;
}

// ---------------------------------------------------------------------------------------------
// Host

export interface HostVspsOptions {
  /** The partition to offer into (its user-mode VMBus handle); default the host's first. */
  vmbusHandle?: VmbusUserHandle;
  /** Defaults for every IC VSP (pipe mode, timeouts, ...). */
  ic?: IcVspOptions;
  heartbeat?: IcVspOptions;
  shutdown?: IcVspOptions;
  timesync?: TimeSyncVspOptions;
  kvp?: IcVspOptions;
  /** A SCSI controller serving this disk / target; omitted: no storage channel. */
  storage?: StorageVspDriverOptions;
}

export interface HostVsps {
  readonly heartbeat: HeartbeatVsp;
  readonly shutdown: ShutdownVsp;
  readonly timesync: TimeSyncVsp;
  readonly kvp: KvpVsp;
  readonly storage: StorageVspDriver | null;
  /** Resolves when every IC negotiated and the storage channel (if any) finished initialization. */
  ready(): Promise<{
    ic: Record<'heartbeat' | 'shutdown' | 'timesync' | 'kvp', IcVersions>;
    storage: number | null;
  }>;
  stop(): Promise<void>;
  summary(): DriverSummary;
}

/** Starts every host VSP for one partition (their offers go out now). */
export function startHostVsps(provider: KmclProvider, options: HostVspsOptions = {}): HostVsps {
  const base: IcVspOptions = { ...options.ic };
  if (options.vmbusHandle !== undefined) base.vmbusHandle = options.vmbusHandle;
  const heartbeat = new HeartbeatVsp(provider, { ...base, ...options.heartbeat });
  const shutdown = new ShutdownVsp(provider, { ...base, ...options.shutdown });
  const timesync = new TimeSyncVsp(provider, { ...base, ...options.timesync });
  const kvp = new KvpVsp(provider, { ...base, ...options.kvp });
  const storage =
    options.storage === undefined
      ? null
      : new StorageVspDriver(provider, {
          ...(options.vmbusHandle !== undefined ? { vmbusHandle: options.vmbusHandle } : {}),
          ...options.storage,
        });
  const started: { stop(): Promise<void> }[] = [];
  try {
    for (const d of [heartbeat, shutdown, timesync, kvp, storage]) {
      if (d === null) continue;
      d.start();
      started.push(d);
    }
  } catch (e) {
    for (const d of started) void d.stop();
    throw e;
  }
  return {
    heartbeat,
    shutdown,
    timesync,
    kvp,
    storage,
    async ready() {
      const [h, s, t, k, st] = await Promise.all([
        heartbeat.ready(),
        shutdown.ready(),
        timesync.ready(),
        kvp.ready(),
        storage === null ? Promise.resolve(null) : storage.ready(),
      ]);
      return { ic: { heartbeat: h, shutdown: s, timesync: t, kvp: k }, storage: st };
    },
    async stop() {
      await Promise.all(started.map((d) => d.stop()));
    },
    summary() {
      const channels = [heartbeat, shutdown, timesync, kvp].map((d) => d.counters.snapshot());
      if (storage !== null) channels.push(storage.counters.snapshot());
      return { channels, io: storage === null ? null : storage.io.snapshot() };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Guest

export interface GuestVscsOptions {
  /** Defaults for every IC VSC. */
  ic?: IcVscOptions;
  heartbeat?: IcVscOptions;
  shutdown?: ShutdownVscOptions;
  timesync?: TimeSyncVscOptions;
  kvp?: KvpVscOptions;
  /** The storage VSC (it needs the guest's page allocator); omitted: no storage driver. */
  storage?: StorageVscDriverOptions;
}

export interface GuestVscs {
  readonly heartbeat: HeartbeatVsc;
  readonly shutdown: ShutdownVsc;
  readonly timesync: TimeSyncVsc;
  readonly kvp: KvpVsc;
  readonly storage: StorageVscDriver | null;
  /** Resolves when every IC negotiated and the storage handshake (if any) is done. */
  ready(): Promise<{
    ic: Record<'heartbeat' | 'shutdown' | 'timesync' | 'kvp', IcVersions>;
    storage: StorageVscInfo | null;
  }>;
  stop(): Promise<void>;
  summary(): DriverSummary;
}

/** Starts every guest VSC on a guest provider (each opens when its offer appears). */
export function startGuestVscs(provider: KmclProvider, options: GuestVscsOptions = {}): GuestVscs {
  const base: IcVscOptions = { ...options.ic };
  const heartbeat = new HeartbeatVsc(provider, { ...base, ...options.heartbeat });
  const shutdown = new ShutdownVsc(provider, { ...base, ...options.shutdown });
  const timesync = new TimeSyncVsc(provider, { ...base, ...options.timesync });
  const kvp = new KvpVsc(provider, { ...base, ...options.kvp });
  const storage = options.storage === undefined ? null : new StorageVscDriver(provider, options.storage);
  const started: { stop(): Promise<void> }[] = [];
  try {
    for (const d of [heartbeat, shutdown, timesync, kvp, storage]) {
      if (d === null) continue;
      d.start();
      started.push(d);
    }
  } catch (e) {
    for (const d of started) void d.stop();
    throw e;
  }
  return {
    heartbeat,
    shutdown,
    timesync,
    kvp,
    storage,
    async ready() {
      const [h, s, t, k, st] = await Promise.all([
        heartbeat.negotiated(),
        shutdown.negotiated(),
        timesync.negotiated(),
        kvp.negotiated(),
        storage === null ? Promise.resolve(null) : storage.ready(),
      ]);
      return { ic: { heartbeat: h, shutdown: s, timesync: t, kvp: k }, storage: st };
    },
    async stop() {
      await Promise.all(started.map((d) => d.stop()));
    },
    summary() {
      const channels = [heartbeat, shutdown, timesync, kvp].map((d) => d.counters.snapshot());
      if (storage !== null) channels.push(storage.counters.snapshot());
      return { channels, io: storage === null ? null : storage.io.snapshot() };
    },
  };
}
