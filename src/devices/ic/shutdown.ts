// Shutdown IC: the host sends `shutdown_msg_data {u32 reason_code; u32 timeout_seconds; u32 flags;
// u8 display_message[2048]}` (2060 bytes); the guest answers HV_S_OK and then shuts down, restarts
// or hibernates, or answers HV_E_FAIL (Linux hv_util.c shutdown_onchannelcallback: flags 0/1 shut
// down, 2/3 restart, 4/5 hibernate when supported, bit 0 = force; anything else fails). Restart
// needs service version 3.1, hibernate 3.2.

import { readU32, writeU32 } from '../../wire/messages/bytes.js';
import {
  HV_E_FAIL,
  HV_S_OK,
  ICMSGTYPE_SHUTDOWN,
  SD_VERSION_3_1,
  SD_VERSION_3_2,
  SHUTDOWN_SERVICE,
} from './constants.js';
import { type IcHeader, readUtf16z, writeUtf16z } from './framing.js';
import { IcGuestService, IcHostService, type IcServiceOptions } from './service.js';

/** sizeof(struct shutdown_msg_data); Linux refuses anything shorter. */
export const SHUTDOWN_MSG_SIZE = 2060;
export const SHUTDOWN_DISPLAY_MESSAGE_SIZE = 2048;

export const SHUTDOWN_FLAG_FORCE = 0x1;
export const SHUTDOWN_FLAG_RESTART = 0x2;
export const SHUTDOWN_FLAG_HIBERNATE = 0x4;

/** Windows SDK reason flag OpenVMM puts in reason_code. */
export const SHTDN_REASON_FLAG_PLANNED = 0x80000000;

export type ShutdownAction = 'shutdown' | 'restart' | 'hibernate';

export interface ShutdownMessage {
  reasonCode: number;
  timeoutSeconds: number;
  flags: number;
  /** display_message read as a NUL-terminated UTF-16LE string (the Windows convention). */
  message: string;
}

/** Decodes shutdown_msg_data at `bodyOffset` (the caller checked the length). */
export function readShutdownMessage(msg: Uint8Array, bodyOffset: number): ShutdownMessage {
  return {
    reasonCode: readU32(msg, bodyOffset),
    timeoutSeconds: readU32(msg, bodyOffset + 4),
    flags: readU32(msg, bodyOffset + 8),
    message: readUtf16z(msg, bodyOffset + 12, SHUTDOWN_DISPLAY_MESSAGE_SIZE),
  };
}

/** Encodes shutdown_msg_data at `bodyOffset` (the display message is cut to 1023 UTF-16 units). */
export function writeShutdownMessage(msg: Uint8Array, bodyOffset: number, m: ShutdownMessage): void {
  writeU32(msg, bodyOffset, m.reasonCode >>> 0);
  writeU32(msg, bodyOffset + 4, m.timeoutSeconds >>> 0);
  writeU32(msg, bodyOffset + 8, m.flags >>> 0);
  writeUtf16z(msg, bodyOffset + 12, m.message, SHUTDOWN_DISPLAY_MESSAGE_SIZE / 2 - 1);
}

export interface ShutdownGuestEvent {
  kind: 'shutdown';
  /** What the host asked for; null when the flags name no known request. */
  action: ShutdownAction | null;
  force: boolean;
  /** True when the guest answered HV_S_OK and should now carry the action out. */
  accepted: boolean;
  request: ShutdownMessage;
}

export interface ShutdownGuestOptions extends IcServiceOptions {
  /** Whether the guest can hibernate (Linux: hv_is_hibernation_supported). Default false. */
  hibernationSupported?: boolean;
}

/** Guest side: accepts shutdown / restart (and hibernate if supported), refuses the rest. */
export class ShutdownGuest extends IcGuestService<ShutdownGuestEvent> {
  readonly hibernationSupported: boolean;

  constructor(options: ShutdownGuestOptions = {}) {
    super(SHUTDOWN_SERVICE, options);
    this.hibernationSupported = options.hibernationSupported ?? false;
  }

  protected handleService(resp: Uint8Array): ShutdownGuestEvent {
    const b = this.needBody(resp, 'shutdown_msg_data', SHUTDOWN_MSG_SIZE);
    const request = readShutdownMessage(resp, b);
    let action: ShutdownAction | null;
    let accepted: boolean;
    switch (request.flags) {
      case 0:
      case 1:
        action = 'shutdown';
        accepted = true;
        break;
      case 2:
      case 3:
        action = 'restart';
        accepted = true;
        break;
      case 4:
      case 5:
        action = 'hibernate';
        accepted = this.hibernationSupported;
        break;
      default:
        action = null;
        accepted = false;
    }
    this.setStatus(resp, accepted ? HV_S_OK : HV_E_FAIL);
    return {
      kind: 'shutdown',
      action,
      force: (request.flags & SHUTDOWN_FLAG_FORCE) !== 0,
      accepted,
      request,
    };
  }
}

export interface ShutdownRequest {
  action?: ShutdownAction;
  force?: boolean;
  /** Default SHTDN_REASON_FLAG_PLANNED. */
  reasonCode?: number;
  /** Default 0. */
  timeoutSeconds?: number;
  message?: string;
}

export interface ShutdownHostEvent {
  kind: 'shutdown-result';
  status: number;
  accepted: boolean;
}

/** Host side: asks the guest to shut down, restart or hibernate. */
export class ShutdownHost extends IcHostService<ShutdownHostEvent> {
  constructor(options: IcServiceOptions = {}) {
    super(SHUTDOWN_SERVICE, options);
  }

  /** The request message; restart needs service version 3.1 and hibernate 3.2 (else an Error). */
  shutdown(req: ShutdownRequest = {}): Uint8Array {
    const action = req.action ?? 'shutdown';
    let flags = req.force ? SHUTDOWN_FLAG_FORCE : 0;
    if (action === 'restart') {
      if (this.state === 'ready' && this.message < SD_VERSION_3_1) {
        throw new Error('shutdown host: restart needs shutdown IC version 3.1');
      }
      flags |= SHUTDOWN_FLAG_RESTART;
    } else if (action === 'hibernate') {
      if (this.state === 'ready' && this.message < SD_VERSION_3_2) {
        throw new Error('shutdown host: hibernate needs shutdown IC version 3.2');
      }
      flags |= SHUTDOWN_FLAG_HIBERNATE;
    }
    const msg = this.newRequest(ICMSGTYPE_SHUTDOWN, SHUTDOWN_MSG_SIZE);
    writeShutdownMessage(msg, this.bodyOffset, {
      reasonCode: req.reasonCode ?? SHTDN_REASON_FLAG_PLANNED,
      timeoutSeconds: req.timeoutSeconds ?? 0,
      flags,
      message: req.message ?? '',
    });
    return msg;
  }

  protected handleResponse(_msg: Uint8Array, header: IcHeader): ShutdownHostEvent {
    return { kind: 'shutdown-result', status: header.status, accepted: header.status === HV_S_OK };
  }
}
