// Time-synchronization IC: the host sends its wall-clock time in 100 ns units since 1601-01-01
// UTC. Before service version 4.0 the body is `ictimesync_data {u64 parenttime; u64 childtime;
// u64 roundtriptime; u8 flags}` (25 bytes packed; OpenVMM pads it to 28); from 4.0 it is
// `ictimesync_ref_data {u64 parenttime; u64 vmreferencetime; u8 flags; char leapflags; char
// stratum; u8 reserved[3]}` (22 bytes; OpenVMM pads to 24). Flags: ICTIMESYNCFLAG_SYNC (set the
// clock now) and ICTIMESYNCFLAG_SAMPLE (a hint). Linux echoes every time message back unchanged but
// for icflags (hv_util.c timesync_onchannelcallback); OpenVMM sends samples without the transaction
// flag and never waits for that echo, and so does our host.

import { readU64, writeU64 } from '../../wire/messages/bytes.js';
import { ICMSGTYPE_TIMESYNC, TIMESYNC_SERVICE, TS_VERSION_3 } from './constants.js';
import type { IcHeader } from './framing.js';
import { IcGuestService, IcHostService, type IcServiceOptions } from './service.js';

export const ICTIMESYNCFLAG_PROBE = 0;
export const ICTIMESYNCFLAG_SYNC = 1;
export const ICTIMESYNCFLAG_SAMPLE = 2;

/** 100 ns intervals from 1601-01-01 to 1970-01-01 (Linux WLTIMEDELTA). */
export const WLTIMEDELTA = 116444736000000000n;

/** sizeof(struct ictimesync_data), packed. */
export const ICTIMESYNC_DATA_SIZE = 25;
/** sizeof(struct ictimesync_ref_data), packed. */
export const ICTIMESYNC_REF_DATA_SIZE = 22;
/** What our host sends (OpenVMM's padded TimesyncMessage / TimesyncMessageV4). */
export const ICTIMESYNC_DATA_WIRE_SIZE = 28;
export const ICTIMESYNC_REF_DATA_WIRE_SIZE = 24;

/** Unix milliseconds to the IC time base. */
export function unixMsToIcTime(ms: number): bigint {
  const whole = Math.floor(ms);
  return BigInt(whole) * 10000n + BigInt(Math.round((ms - whole) * 10000)) + WLTIMEDELTA;
}

/** IC time to Unix milliseconds. */
export function icTimeToUnixMs(t: bigint): number {
  const d = t - WLTIMEDELTA;
  return Number(d / 10000n) + Number(d % 10000n) / 10000;
}

/** Whether a service version uses ictimesync_ref_data (Linux: ts_srv_version > TS_VERSION_3). */
export function usesRefData(messageVersion: number): boolean {
  return messageVersion >>> 0 > TS_VERSION_3;
}

export interface TimeSample {
  /** Host time, 100 ns since 1601. */
  parentTime: bigint;
  /** v4: the guest's reference counter when the host read its clock; null before v4. */
  referenceTime: bigint | null;
  flags: number;
  /** Before v4 only (0 otherwise). */
  childTime: bigint;
  roundTripTime: bigint;
  /** v4 only (0 otherwise). */
  leapFlags: number;
  stratum: number;
}

/** Decodes the body at `bodyOffset` in the format of `messageVersion` (the caller checked the length). */
export function readTimeSample(msg: Uint8Array, bodyOffset: number, messageVersion: number): TimeSample {
  const b = bodyOffset;
  if (usesRefData(messageVersion)) {
    return {
      parentTime: readU64(msg, b),
      referenceTime: readU64(msg, b + 8),
      flags: msg[b + 16]!,
      childTime: 0n,
      roundTripTime: 0n,
      leapFlags: msg[b + 17]!,
      stratum: msg[b + 18]!,
    };
  }
  return {
    parentTime: readU64(msg, b),
    referenceTime: null,
    flags: msg[b + 24]!,
    childTime: readU64(msg, b + 8),
    roundTripTime: readU64(msg, b + 16),
    leapFlags: 0,
    stratum: 0,
  };
}

export interface TimeSyncGuestEvent {
  kind: 'time';
  sample: TimeSample;
  /** ICTIMESYNCFLAG_SYNC: set the clock now. */
  sync: boolean;
  /** ICTIMESYNCFLAG_SAMPLE: a sample the guest may use. */
  isSample: boolean;
}

/** Guest side: reports each time message (format by the negotiated version) and echoes it. */
export class TimeSyncGuest extends IcGuestService<TimeSyncGuestEvent> {
  constructor(options: IcServiceOptions = {}) {
    super(TIMESYNC_SERVICE, options);
  }

  protected handleService(resp: Uint8Array): TimeSyncGuestEvent {
    const ref = usesRefData(this.message);
    const b = ref
      ? this.needBody(resp, 'ictimesync_ref_data', ICTIMESYNC_REF_DATA_SIZE)
      : this.needBody(resp, 'ictimesync_data', ICTIMESYNC_DATA_SIZE);
    const sample = readTimeSample(resp, b, this.message);
    return {
      kind: 'time',
      sample,
      sync: (sample.flags & ICTIMESYNCFLAG_SYNC) !== 0,
      isSample: (sample.flags & ICTIMESYNCFLAG_SAMPLE) !== 0,
    };
  }
}

export interface TimeSyncHostEvent {
  kind: 'time-echo';
  status: number;
}

export interface TimeSyncRequest {
  /** Host time, 100 ns since 1601 (see unixMsToIcTime). */
  parentTime: bigint;
  /** v4: the guest reference counter at that moment. Default 0. */
  referenceTime?: bigint;
  /** True: ICTIMESYNCFLAG_SYNC; false: ICTIMESYNCFLAG_SAMPLE. */
  sync: boolean;
}

/** Host side: sends time sync / sample messages in the negotiated format. */
export class TimeSyncHost extends IcHostService<TimeSyncHostEvent> {
  constructor(options: IcServiceOptions = {}) {
    super(TIMESYNC_SERVICE, options);
  }

  /** A time message; it is not a tracked transaction, so several may be in flight. */
  time(req: TimeSyncRequest): Uint8Array {
    const ref = usesRefData(this.message);
    const msg = this.newRequest(
      ICMSGTYPE_TIMESYNC,
      ref ? ICTIMESYNC_REF_DATA_WIRE_SIZE : ICTIMESYNC_DATA_WIRE_SIZE,
      false,
    );
    const b = this.bodyOffset;
    const flags = req.sync ? ICTIMESYNCFLAG_SYNC : ICTIMESYNCFLAG_SAMPLE;
    writeU64(msg, b, req.parentTime);
    if (ref) {
      writeU64(msg, b + 8, req.referenceTime ?? 0n);
      msg[b + 16] = flags;
    } else {
      msg[b + 24] = flags;
    }
    return msg;
  }

  protected handleResponse(_msg: Uint8Array, header: IcHeader): TimeSyncHostEvent {
    return { kind: 'time-echo', status: header.status };
  }

  /** The guest's echo of an untracked time message. */
  protected override handleUntracked(_msg: Uint8Array, header: IcHeader): TimeSyncHostEvent | null {
    if (header.messageType !== ICMSGTYPE_TIMESYNC || header.transactionId !== 0) return null;
    return { kind: 'time-echo', status: header.status };
  }
}
