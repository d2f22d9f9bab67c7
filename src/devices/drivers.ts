// Starting the device drivers of one partition in one call: every host VSP (heartbeat, shutdown,
// time sync, KVP, and a synthetic SCSI controller when a disk is given) on a host provider, or
// every guest VSC on a guest provider; and the summary the demo prints (per-channel traffic, I/O,
// verification, errors, latency). The providers are parameters, so the same drivers run over the
// loopback port and over the real bus. Servicing: the host's set saves every VSP at once
// (`HostVsps.save`), and `restoreHostVsps` brings the set back in a new host instance.

import type { KmclProvider, VmbusUserHandle } from '../kmcl/index.js';
import { type ChannelCountersSnapshot, DeviceDriverError, type StorageIoSnapshot } from './driver-common.js';
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
  type IcVspSavedState,
  KvpVsp,
  ShutdownVsp,
  TimeSyncVsp,
  type TimeSyncVspOptions,
} from './ic/vsp.js';
import type { VspSaveOptions } from './servicing.js';
import { StorageVscDriver, type StorageVscDriverOptions, type StorageVscInfo } from './storage/vsc-driver.js';
import {
  StorageVspDriver,
  type StorageVspDriverOptions,
  type StorageVspDriverSavedState,
} from './storage/vsp-driver.js';

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
  /**
   * Servicing: saves every VSP at once (each pauses its channel, saves it with its device state
   * and hands it off) for restoreHostVsps in a new host instance. If one VSP's save fails, this
   * rejects; the VSPs whose save succeeded are handed off, so that host instance cannot go on.
   */
  save(options?: VspSaveOptions): Promise<HostVspsSavedState>;
}

/** Every VSP of a host set, saved (plain data: it may be posted to another thread). */
export interface HostVspsSavedState {
  heartbeat: IcVspSavedState;
  shutdown: IcVspSavedState;
  timesync: IcVspSavedState;
  kvp: IcVspSavedState;
  storage: StorageVspDriverSavedState | null;
}

/** A restored host set: the channels are reclaimed and paused until resume(). */
export interface RestoredHostVsps extends HostVsps {
  /** Enables and starts every restored channel (after BusKmclHost.finishRestore on the real bus). */
  resume(): void;
}

/** The drivers of a host set, configured from the options (nothing started yet). */
function hostDrivers(provider: KmclProvider, options: HostVspsOptions) {
  const base: IcVspOptions = { ...options.ic };
  if (options.vmbusHandle !== undefined) base.vmbusHandle = options.vmbusHandle;
  const ic = {
    heartbeat: new HeartbeatVsp(provider, { ...base, ...options.heartbeat }),
    shutdown: new ShutdownVsp(provider, { ...base, ...options.shutdown }),
    timesync: new TimeSyncVsp(provider, { ...base, ...options.timesync }),
    kvp: new KvpVsp(provider, { ...base, ...options.kvp }),
  };
  const storage =
    options.storage === undefined
      ? null
      : new StorageVspDriver(provider, {
          ...(options.vmbusHandle !== undefined ? { vmbusHandle: options.vmbusHandle } : {}),
          ...options.storage,
        });
  return { ic, storage };
}

/** Adds save() to a host driver set. */
function withSave(set: Omit<HostVsps, 'save'>): HostVsps {
  return Object.assign(set, {
    async save(options?: VspSaveOptions): Promise<HostVspsSavedState> {
      const [heartbeat, shutdown, timesync, kvp, storage] = await Promise.all([
        set.heartbeat.save(options),
        set.shutdown.save(options),
        set.timesync.save(options),
        set.kvp.save(options),
        set.storage === null ? Promise.resolve(null) : set.storage.save(options),
      ]);
      return { heartbeat, shutdown, timesync, kvp, storage };
    },
  });
}

/** Starts every host VSP for one partition (their offers go out now). */
export function startHostVsps(provider: KmclProvider, options: HostVspsOptions = {}): HostVsps {
  const { ic, storage } = hostDrivers(provider, options);
  return withSave(driverSet(ic, storage, (d) => d.ready(), true));
}

/**
 * Servicing, in a new host instance: the host set `saved` came from, configured with the same
 * options (and serving the same disk), restored from it. Each VSP reclaims its channel; call
 * resume() once the partition's VSPs are all back (after BusKmclHost.finishRestore on the real
 * bus). A VSP whose saved state does not fit throws DeviceDriverError('restore-failed'); the
 * channels restored before it stay reclaimed, so the host instance should then be abandoned.
 */
export function restoreHostVsps(
  provider: KmclProvider,
  options: HostVspsOptions,
  saved: HostVspsSavedState,
): RestoredHostVsps {
  const { ic, storage } = hostDrivers(provider, options);
  if ((storage === null) !== (saved.storage === null)) {
    throw new DeviceDriverError(
      'restore-failed',
      'host VSPs: the saved set and the options disagree on storage',
    );
  }
  ic.heartbeat.restore(saved.heartbeat);
  ic.shutdown.restore(saved.shutdown);
  ic.timesync.restore(saved.timesync);
  ic.kvp.restore(saved.kvp);
  if (storage !== null) storage.restore(saved.storage!);
  const set = withSave(driverSet(ic, storage, (d) => d.ready(), false));
  return Object.assign(set, {
    resume(): void {
      for (const d of [ic.heartbeat, ic.shutdown, ic.timesync, ic.kvp]) d.resume();
      storage?.resume();
    },
  });
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
  const ic = { heartbeat, shutdown, timesync, kvp };
  return driverSet(ic, storage, (d) => d.negotiated(), true);
}

// ---------------------------------------------------------------------------------------------
// Shared by both sides

/** What both sides' drivers have in common, for starting, stopping and summing them up. */
interface StartableDriver {
  start(): void;
  stop(): Promise<void>;
  readonly counters: { snapshot(): ChannelCountersSnapshot };
}

interface StorageDriver<Ready> extends StartableDriver {
  ready(): Promise<Ready>;
  readonly io: { snapshot(): StorageIoSnapshot };
}

type IcName = 'heartbeat' | 'shutdown' | 'timesync' | 'kvp';

/**
 * The set with ready/stop/summary. With `start`, the four IC drivers and the storage driver (if
 * any) are started in order (stopping those already started if one throws); without, they were
 * restored and are resumed by the caller. `icReady` is how one side's IC driver says it negotiated.
 */
function driverSet<I extends Record<IcName, StartableDriver>, S extends StorageDriver<R>, R>(
  ic: I,
  storage: S | null,
  icReady: (driver: I[IcName]) => Promise<IcVersions>,
  start: boolean,
): I & {
  readonly storage: S | null;
  ready(): Promise<{ ic: Record<IcName, IcVersions>; storage: R | null }>;
  stop(): Promise<void>;
  summary(): DriverSummary;
} {
  const all = [ic.heartbeat, ic.shutdown, ic.timesync, ic.kvp, ...(storage === null ? [] : [storage])];
  const started: StartableDriver[] = start ? [] : [...all];
  if (start) {
    try {
      for (const d of all) {
        d.start();
        started.push(d);
      }
    } catch (e) {
      for (const d of started) void d.stop();
      throw e;
    }
  }
  return {
    ...ic,
    storage,
    async ready() {
      const [heartbeat, shutdown, timesync, kvp, st] = await Promise.all([
        icReady(ic.heartbeat),
        icReady(ic.shutdown),
        icReady(ic.timesync),
        icReady(ic.kvp),
        storage === null ? Promise.resolve(null) : storage.ready(),
      ]);
      return { ic: { heartbeat, shutdown, timesync, kvp }, storage: st };
    },
    async stop() {
      await Promise.all(started.map((d) => d.stop()));
    },
    summary() {
      return {
        channels: all.map((d) => d.counters.snapshot()),
        io: storage === null ? null : storage.io.snapshot(),
      };
    },
  };
}
