// Heartbeat IC: the host sends `heartbeat_msg_data {u64 seq_num; u32 reserved[8]}` (40 bytes) and
// a live guest answers with seq_num + 1 (Linux hv_util.c heartbeat_onchannelcallback, which needs
// only the 8 bytes of seq_num).

import { WireError } from '../../wire/errors.js';
import { readU64, writeU64 } from '../../wire/messages/bytes.js';
import { HEARTBEAT_SERVICE, ICMSGTYPE_HEARTBEAT } from './constants.js';
import type { IcHeader } from './framing.js';
import { IcGuestService, IcHostService, type IcServiceOptions } from './service.js';

/** sizeof(struct heartbeat_msg_data). */
export const HEARTBEAT_MSG_SIZE = 40;
/** What a guest needs of it: the sequence number. */
export const HEARTBEAT_MIN_SIZE = 8;

const U64_MASK = (1n << 64n) - 1n;

/** Reads heartbeat_msg_data.seq_num at `bodyOffset`. */
export function readHeartbeatSeq(msg: Uint8Array, bodyOffset: number): bigint {
  return readU64(msg, bodyOffset);
}

/** Writes heartbeat_msg_data.seq_num at `bodyOffset` (modulo 2^64). */
export function writeHeartbeatSeq(msg: Uint8Array, bodyOffset: number, seq: bigint): void {
  writeU64(msg, bodyOffset, seq & U64_MASK);
}

export interface HeartbeatGuestEvent {
  kind: 'heartbeat';
  /** The host's sequence number (the answer carries it + 1). */
  sequence: bigint;
}

/** Guest side: answers each heartbeat with seq_num + 1. */
export class HeartbeatGuest extends IcGuestService<HeartbeatGuestEvent> {
  constructor(options: IcServiceOptions = {}) {
    super(HEARTBEAT_SERVICE, options);
  }

  protected handleService(resp: Uint8Array): HeartbeatGuestEvent {
    const b = this.needBody(resp, 'heartbeat_msg_data.seq_num', HEARTBEAT_MIN_SIZE);
    const seq = readHeartbeatSeq(resp, b);
    writeHeartbeatSeq(resp, b, seq + 1n);
    return { kind: 'heartbeat', sequence: seq };
  }
}

export interface HeartbeatHostEvent {
  kind: 'heartbeat-ack';
  /** The sequence number the guest returned (the one sent + 1). */
  sequence: bigint;
  status: number;
}

/** Host side: sends heartbeats and checks that the guest returned seq_num + 1. */
export class HeartbeatHost extends IcHostService<HeartbeatHostEvent> {
  private sent = 0n;

  constructor(options: IcServiceOptions = {}) {
    super(HEARTBEAT_SERVICE, options);
  }

  /** A heartbeat request carrying `sequence`. */
  heartbeat(sequence: bigint): Uint8Array {
    const msg = this.newRequest(ICMSGTYPE_HEARTBEAT, HEARTBEAT_MSG_SIZE);
    this.sent = sequence & U64_MASK;
    writeHeartbeatSeq(msg, this.bodyOffset, this.sent);
    return msg;
  }

  protected override saveRequest(): Record<string, number | string> {
    return { sent: this.sent.toString() };
  }

  protected override restoreRequest(saved: Record<string, number | string>): void {
    const sent = saved.sent;
    if (typeof sent !== 'string' || !/^\d{1,20}$/.test(sent) || BigInt(sent) > U64_MASK) {
      throw new RangeError('heartbeat host: bad saved sequence number');
    }
    this.sent = BigInt(sent);
  }

  protected handleResponse(msg: Uint8Array, header: IcHeader): HeartbeatHostEvent {
    const b = this.needBody(msg, 'heartbeat_msg_data.seq_num', HEARTBEAT_MIN_SIZE);
    const seq = readHeartbeatSeq(msg, b);
    const expected = (this.sent + 1n) & U64_MASK;
    if (seq !== expected) {
      throw new WireError(
        'inconsistent',
        'heartbeat_msg_data.seq_num',
        `answered ${seq}, expected ${expected}`,
      );
    }
    return { kind: 'heartbeat-ack', sequence: seq, status: header.status };
  }
}
