// The two ends of an integration-component service as pure state machines: bytes in, bytes and
// events out, nothing else. `IcGuestService` is the guest's VSC (Linux hv_utils): it answers every
// host message by echoing it with status / body changes and icflags = TRANSACTION | RESPONSE, and
// negotiates with Linux's vmbus_prep_negotiate_resp. `IcHostService` is the host's VSP (as OpenVMM's
// hyperv_ic): it sends the negotiate request, then one request at a time, and checks every response
// against what it asked. The KMCL drivers only move these buffers.

import { needBytes, WireError } from '../../wire/errors.js';
import {
  GUEST_FW_VERSIONS,
  HOST_FW_VERSIONS,
  HV_E_FAIL,
  ICMSGHDRFLAG_REQUEST,
  ICMSGHDRFLAG_RESPONSE,
  ICMSGHDRFLAG_TRANSACTION,
  ICMSGTYPE_NEGOTIATE,
  type IcServiceInfo,
} from './constants.js';
import {
  allocIcMessage,
  decodeIcNegotiate,
  encodeIcNegotiateRequest,
  type IcHeader,
  icBodyOffset,
  newIcHeader,
  prepIcNegotiateResponse,
  readIcHeader,
  setIcFlags,
  setIcStatus,
} from './framing.js';

export interface IcServiceOptions {
  /**
   * Messages start with the 8-byte vmbuspipe_hdr, as Linux hv_utils sees them on its packet-mode
   * channel (default). False when the channel is in KMCL pipe mode, which adds and strips it.
   */
  pipeHeader?: boolean;
  /** Framework versions: the guest's preference order, or the list the host offers. */
  frameworkVersions?: readonly number[];
  /** Service (message) versions, likewise. */
  messageVersions?: readonly number[];
}

export type IcNegotiationEvent =
  | { kind: 'negotiated'; framework: number; message: number }
  | { kind: 'negotiation-failed'; framework: number; message: number };

/** A well-formed message of a type this service does not handle. */
export interface IcUnknownMessageEvent {
  kind: 'unknown-message';
  messageType: number;
}

export interface IcGuestResult<E> {
  /** The bytes to send back (a new buffer), or null when the guest does not answer. */
  response: Uint8Array | null;
  event: E | IcNegotiationEvent | IcUnknownMessageEvent;
}

/** Guest (VSC) side of one IC service. */
export abstract class IcGuestService<E> {
  readonly pipeHeader: boolean;
  readonly frameworkVersions: readonly number[];
  readonly messageVersions: readonly number[];
  /** Versions chosen by the last successful negotiation (0 before any). */
  framework = 0;
  message = 0;
  protected readonly header: IcHeader = newIcHeader();
  /** Linux answers unknown message types with HV_E_FAIL, except KVP, which drops them. */
  protected answersUnknownTypes = true;

  constructor(
    readonly info: IcServiceInfo,
    options: IcServiceOptions = {},
  ) {
    this.pipeHeader = options.pipeHeader ?? true;
    this.frameworkVersions = options.frameworkVersions ?? GUEST_FW_VERSIONS;
    this.messageVersions = options.messageVersions ?? info.guestVersions;
  }

  /** Offset of the service body in a message. */
  get bodyOffset(): number {
    return icBodyOffset(this.pipeHeader);
  }

  /**
   * Handles one message from the host. Throws a WireError for bytes that cannot be a valid message
   * (too short for what its type needs, bad counts or sizes); the caller drops such a message.
   */
  handle(msg: Uint8Array): IcGuestResult<E> {
    const h = readIcHeader(msg, this.pipeHeader, this.header);
    const resp = new Uint8Array(msg);
    let event: E | IcNegotiationEvent | IcUnknownMessageEvent;
    if (h.messageType === ICMSGTYPE_NEGOTIATE) {
      const r = prepIcNegotiateResponse(resp, this.pipeHeader, this.frameworkVersions, this.messageVersions);
      if (r.found) {
        this.framework = r.framework;
        this.message = r.message;
        event = { kind: 'negotiated', framework: r.framework, message: r.message };
      } else {
        event = { kind: 'negotiation-failed', framework: r.framework, message: r.message };
      }
    } else if (h.messageType === this.info.messageType) {
      event = this.handleService(resp, h);
    } else {
      event = { kind: 'unknown-message', messageType: h.messageType };
      if (!this.answersUnknownTypes) return { response: null, event };
      setIcStatus(resp, this.pipeHeader, HV_E_FAIL);
    }
    setIcFlags(resp, this.pipeHeader, ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE);
    return { response: resp, event };
  }

  /** Needs `n` body bytes in `msg` (a WireError naming `field` otherwise). */
  protected needBody(msg: Uint8Array, field: string, n: number): number {
    const b = this.bodyOffset;
    needBytes(field, msg.length - b, n);
    return b;
  }

  /** Handles a message of the service's own type; `resp` is the copy that goes back. */
  protected abstract handleService(resp: Uint8Array, header: IcHeader): E;

  /** Sets the status of the response. */
  protected setStatus(resp: Uint8Array, status: number): void {
    setIcStatus(resp, this.pipeHeader, status);
  }
}

export type IcHostState = 'idle' | 'negotiating' | 'ready' | 'failed';

/**
 * An IcHostService as plain data (servicing: a new host instance continues the conversation).
 * The configuration (pipe header, offered versions) is not part of it: the new instance is
 * configured as the old one was.
 */
export interface IcHostServiceState {
  state: IcHostState;
  framework: number;
  message: number;
  /** The request awaiting its response (the guest's answer goes to the restored service). */
  pending: { type: number; transactionId: number } | null;
  nextTransactionId: number;
  /** What the service keeps about its outstanding request (heartbeat: the number sent; KVP: operation, pool). */
  request: Record<string, number | string>;
}

const IC_HOST_STATES: readonly IcHostState[] = ['idle', 'negotiating', 'ready', 'failed'];

/** Host (VSP) side of one IC service. */
export abstract class IcHostService<E> {
  readonly pipeHeader: boolean;
  readonly frameworkVersions: readonly number[];
  readonly messageVersions: readonly number[];
  state: IcHostState = 'idle';
  /** Negotiated versions (0 until negotiated). */
  framework = 0;
  message = 0;
  /** The request awaiting its response, if any. */
  protected pending: { type: number; transactionId: number } | null = null;
  private nextTransactionId = 0;
  protected readonly header: IcHeader = newIcHeader();

  constructor(
    readonly info: IcServiceInfo,
    options: IcServiceOptions = {},
  ) {
    this.pipeHeader = options.pipeHeader ?? true;
    this.frameworkVersions = options.frameworkVersions ?? HOST_FW_VERSIONS;
    this.messageVersions = options.messageVersions ?? info.hostVersions;
  }

  get bodyOffset(): number {
    return icBodyOffset(this.pipeHeader);
  }

  /** True while a request waits for its response. */
  get busy(): boolean {
    return this.pending !== null;
  }

  /** The conversation as plain data (see IcHostServiceState). */
  saveState(): IcHostServiceState {
    return {
      state: this.state,
      framework: this.framework,
      message: this.message,
      pending: this.pending === null ? null : { ...this.pending },
      nextTransactionId: this.nextTransactionId,
      request: this.saveRequest(),
    };
  }

  /** Continues a conversation saved by saveState (a RangeError if the state is not one). */
  restoreState(s: IcHostServiceState): void {
    const byte = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xff;
    const u32 = (n: unknown): boolean =>
      Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;
    if (
      !IC_HOST_STATES.includes(s.state) ||
      !u32(s.framework) ||
      !u32(s.message) ||
      !byte(s.nextTransactionId) ||
      (s.pending !== null && (!u32(s.pending.type) || !byte(s.pending.transactionId))) ||
      (s.state === 'ready' &&
        !(this.frameworkVersions.includes(s.framework) && this.messageVersions.includes(s.message)))
    ) {
      throw new RangeError(`${this.info.name} host: not a saved conversation of this service`);
    }
    this.state = s.state;
    this.framework = s.framework;
    this.message = s.message;
    this.pending =
      s.pending === null ? null : { type: s.pending.type, transactionId: s.pending.transactionId };
    this.nextTransactionId = s.nextTransactionId;
    this.restoreRequest(s.request);
  }

  /** Service-specific state of the outstanding request, as plain data. */
  protected saveRequest(): Record<string, number | string> {
    return {};
  }

  protected restoreRequest(_saved: Record<string, number | string>): void {}

  /** The negotiate request that opens the conversation (call once, after the channel opens). */
  start(): Uint8Array {
    if (this.state !== 'idle') throw new Error(`${this.info.name} host: start() in state ${this.state}`);
    const tid = this.takeTransactionId();
    this.pending = { type: ICMSGTYPE_NEGOTIATE, transactionId: tid };
    this.state = 'negotiating';
    return encodeIcNegotiateRequest(this.pipeHeader, tid, this.frameworkVersions, this.messageVersions);
  }

  /**
   * Handles one message from the guest. A response that does not answer the outstanding request
   * (wrong type, transaction id or flags, or a body shorter than icmsgsize) is a WireError.
   */
  handle(msg: Uint8Array): E | IcNegotiationEvent {
    const h = readIcHeader(msg, this.pipeHeader, this.header);
    const need = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE;
    if ((h.flags & need) !== need) {
      throw new WireError('inconsistent', 'icmsg_hdr.icflags', `0x${h.flags.toString(16)} is not a response`);
    }
    if (h.messageSize > msg.length - this.bodyOffset) {
      throw new WireError(
        'inconsistent',
        'icmsg_hdr.icmsgsize',
        `claims ${h.messageSize} body bytes, the message has ${msg.length - this.bodyOffset}`,
      );
    }
    const p = this.pending;
    if (p === null) {
      const untracked = this.handleUntracked(msg, h);
      if (untracked !== null) return untracked;
      throw new WireError(
        'inconsistent',
        'icmsg_hdr.ictransaction_id',
        'response with no request outstanding',
      );
    }
    if (h.messageType !== p.type) {
      throw new WireError(
        'inconsistent',
        'icmsg_hdr.icmsgtype',
        `response of type ${h.messageType} to a request of type ${p.type}`,
      );
    }
    if (h.transactionId !== p.transactionId) {
      throw new WireError(
        'inconsistent',
        'icmsg_hdr.ictransaction_id',
        `response to transaction ${h.transactionId}, expected ${p.transactionId}`,
      );
    }
    if (p.type === ICMSGTYPE_NEGOTIATE) {
      const event = this.handleNegotiateResponse(msg);
      this.pending = null;
      return event;
    }
    const event = this.handleResponse(msg, h);
    this.pending = null;
    return event;
  }

  private handleNegotiateResponse(msg: Uint8Array): IcNegotiationEvent {
    const n = decodeIcNegotiate(msg, this.pipeHeader);
    const f = n.frameworkVersions.length;
    const m = n.messageVersions.length;
    if (f === 0 && m === 0) {
      this.state = 'failed';
      // Linux leaves its placeholders in icversion_data[0..1] when it finds nothing in common.
      return { kind: 'negotiation-failed', framework: 0, message: 0 };
    }
    if (f !== 1 || m !== 1) {
      throw new WireError(
        'inconsistent',
        'icmsg_negotiate',
        `response carries ${f} + ${m} versions, not 1 + 1`,
      );
    }
    const fw = n.frameworkVersions[0]!;
    const mv = n.messageVersions[0]!;
    if (!this.frameworkVersions.includes(fw)) {
      throw new WireError(
        'out-of-range',
        'icmsg_negotiate.icversion_data[0]',
        'framework version never offered',
      );
    }
    if (!this.messageVersions.includes(mv)) {
      throw new WireError(
        'out-of-range',
        'icmsg_negotiate.icversion_data[1]',
        'message version never offered',
      );
    }
    this.framework = fw;
    this.message = mv;
    this.state = 'ready';
    return { kind: 'negotiated', framework: fw, message: mv };
  }

  /**
   * A new request message of `bodyLength` zeroed body bytes with its headers written. With
   * `track`, it becomes the outstanding transaction (TRANSACTION | REQUEST); otherwise it is sent
   * with no flags and no response is awaited (OpenVMM's time samples).
   */
  protected newRequest(messageType: number, bodyLength: number, track = true): Uint8Array {
    if (this.state !== 'ready')
      throw new Error(`${this.info.name} host: not negotiated (state ${this.state})`);
    if (track && this.pending !== null) {
      throw new Error(`${this.info.name} host: a request is already outstanding`);
    }
    const h = this.header;
    h.frameworkVersion = this.framework;
    h.messageType = messageType;
    h.messageVersion = this.message;
    h.status = 0;
    h.transactionId = track ? this.takeTransactionId() : 0;
    h.flags = track ? ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_REQUEST : 0;
    const msg = allocIcMessage(h, bodyLength, this.pipeHeader);
    if (track) this.pending = { type: messageType, transactionId: h.transactionId };
    return msg;
  }

  /** Needs `n` body bytes in `msg`. */
  protected needBody(msg: Uint8Array, field: string, n: number): number {
    const b = this.bodyOffset;
    needBytes(field, msg.length - b, n);
    return b;
  }

  /** Handles the response to the outstanding service request. */
  protected abstract handleResponse(msg: Uint8Array, header: IcHeader): E;

  /** A response nothing is waiting for: the service may accept it (return an event) or not (null). */
  protected handleUntracked(_msg: Uint8Array, _header: IcHeader): E | null {
    return null;
  }

  private takeTransactionId(): number {
    const t = this.nextTransactionId;
    this.nextTransactionId = (t + 1) & 0xff;
    return t;
  }
}
