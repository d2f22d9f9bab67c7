// The two ends of a partition link, as the SynIC presents them. The guest end posts messages to
// host connection ids (HvPostMessage) and signals host event ports (HvSignalEvent); the host end
// posts messages to a guest SINT and sets the guest's SINT 2 event flags. Both ends drain their
// incoming queue and flags in the same order whatever the transport; the transport only decides
// how a sleeping end is woken (a deterministic scheduler, or Atomics.waitAsync across threads).

import { VMBUS_MESSAGE_SINT, VMBUS_MESSAGE_TYPE } from '../wire/constants.js';
import { WireError } from '../wire/errors.js';
import {
  C_CLOSED,
  C_GUEST_FLAG_SUMMARY,
  C_GUEST_FLAGS,
  C_GUEST_SINT_MASK,
  C_GUEST_WAKE,
  C_HOST_WAKE,
  checkHvLinkDescriptor,
  GUEST_FLAG_SUMMARY_WORDS,
  HV_CONNECTION_ID_MAX,
  HV_EVENT_FLAGS_COUNT,
  HV_MESSAGE_HEADER_SIZE,
  HV_MESSAGE_PAYLOAD_BYTE_COUNT,
  HV_MESSAGE_SIZE,
  HV_SYNIC_SINT_COUNT,
  type HvLinkDescriptor,
  PORT_EVENT,
  PORT_KEY_DELETED,
  PORT_KEY_EMPTY,
  PORT_MESSAGE,
  type PortTableLayout,
  portTableLayout,
  SLOT_PORT,
  SLOT_SIZE,
  SLOT_TYPE,
  SLOT_WORDS,
  W_DOORBELL,
  W_SLEEPING,
  W_WANT_SPACE,
} from './layout.js';
import type { HvSchedulable, HvScheduler } from './scheduler.js';
import {
  HV_STATUS_INSUFFICIENT_BUFFERS,
  HV_STATUS_INVALID_CONNECTION_ID,
  HV_STATUS_INVALID_PARAMETER,
  HV_STATUS_INVALID_PARTITION_STATE,
  HV_STATUS_INVALID_SYNIC_STATE,
  HV_STATUS_SUCCESS,
  HvError,
  type HvStatus,
} from './status.js';

/**
 * One received SynIC message. The object (and its `data`) is reused for every message of an end:
 * it is valid only during the handler call; copy what you keep.
 */
export class HvMessage {
  /** Host end: the connection id it was posted to. Guest end: the SINT it arrived on. */
  port = 0;
  /** HV message type (1 = VMBus). */
  messageType = 0;
  /** Payload bytes in `data` (0..240). */
  length = 0;
  /** 240 bytes; only the first `length` are this message's. */
  readonly data = new Uint8Array(HV_MESSAGE_PAYLOAD_BYTE_COUNT);
  /** A view of the payload (allocates a view; `data` + `length` do not). */
  get payload(): Uint8Array {
    return this.data.subarray(0, this.length);
  }
}

export type HvMessageHandler = (message: HvMessage) => void;
/** Called with the connection id (host end) or event flag (guest end) that was signalled. */
export type HvEventHandler = (port: number) => void;
export type HvErrorHandler = (error: unknown) => void;

/** Counters of one end (plain numbers, cheap to read). */
export interface HvEndStats {
  messagesSent: number;
  messagesReceived: number;
  /** Signal / set-flag calls that succeeded (coalesced ones included). */
  signalsSent: number;
  /** Event handler invocations (and signals nobody had a handler for). */
  eventsReceived: number;
  /** Times the end was woken (scheduler run or Atomics wake). */
  wakeups: number;
  /** Incoming slots refused as malformed (bad payload_size). */
  malformed: number;
  /** Messages or signals that arrived for a port nobody listens on any more. */
  unrouted: number;
}

export interface HvEndOptions {
  /** Start in polled mode: nothing is processed until `poll()` (or `setPolling(false)`). */
  readonly polling?: boolean;
}

/**
 * Where a host end stood when it was detached for servicing (plain data): the positions in both
 * message queues and the host's private copy of the port table. A new host end attached with it
 * takes over the link as if it had been there all along.
 */
export interface HvHostEndSavedState {
  readonly kind: 'hv-host-end';
  readonly version: 1;
  /** Next slot the host reads in the guest-to-host queue. */
  readonly toHostReadIndex: number;
  /** Next slot the host writes in the host-to-guest queue. */
  readonly toGuestWriteIndex: number;
  /** Every registered port: its table slot, connection id and kind bits (1 message, 2 event). */
  readonly ports: readonly { readonly slot: number; readonly connectionId: number; readonly kinds: number }[];
  /** Table slots holding a deleted key (they keep the guest's probe chains intact). */
  readonly deletedSlots: readonly number[];
}

export interface HvHostEndOptions extends HvEndOptions {
  /**
   * Servicing: take over a link whose previous host end was detached with `detach()`. Nothing is
   * processed before the attaching code returns to the event loop (cross-thread) or the scheduler
   * runs (same-thread), so register the handlers synchronously after attaching.
   */
  readonly resume?: HvHostEndSavedState;
}

interface PendingPost {
  readonly port: number;
  readonly messageType: number;
  readonly length: number;
  readonly bytes: Uint8Array;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

/** Most messages + events one service pass handles before yielding. */
const SERVICE_BUDGET = 4096;
const RESOLVED: Promise<void> = Promise.resolve();
const KEEP_ALIVE_MS = 0x3fffffff;
const noop = (): void => {};

type WaitAsyncResult =
  | { async: false; value: 'not-equal' | 'timed-out' }
  | { async: true; value: Promise<string> };
const waitAsync = (
  Atomics as unknown as { waitAsync: (a: Int32Array, i: number, v: number) => WaitAsyncResult }
).waitAsync;

function yieldMacrotask(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** What the two ends share: queues, wake words, closing, polling, error and close hooks. */
export abstract class HvEnd implements HvSchedulable {
  abstract readonly side: 'host' | 'guest';
  readonly stats: HvEndStats = {
    messagesSent: 0,
    messagesReceived: 0,
    signalsSent: 0,
    eventsReceived: 0,
    wakeups: 0,
    malformed: 0,
    unrouted: 0,
  };
  /** @internal scheduler bookkeeping */
  hvScheduled = false;

  protected readonly ctrl: Int32Array;
  private readonly slots: number;
  private readonly outI32: Int32Array;
  private readonly outU8: Uint8Array;
  private readonly inI32: Int32Array;
  private readonly inPayload: Uint8Array[] = [];
  private readonly myWake: number;
  private readonly peerWake: number;
  private writeIndex = 0;
  private readIndex = 0;
  private pending: (PendingPost | undefined)[] = [];
  private pendingHead = 0;
  private readonly bufferPool: Uint8Array[] = [];
  private readonly message = new HvMessage();

  private scheduler: HvScheduler | null = null;
  private peerLocal: HvEnd | null = null;
  private polling: boolean;
  private closedLocally = false;
  private inService = false;
  private loopRunning = false;
  private keepAlive: ReturnType<typeof setInterval> | null = null;
  private refed = true;
  private errorHandler: HvErrorHandler | null = null;
  private readonly closeHandlers: (() => void)[] = [];

  protected constructor(descriptor: HvLinkDescriptor, side: 'host' | 'guest', options: HvEndOptions) {
    checkHvLinkDescriptor(descriptor);
    this.ctrl = new Int32Array(descriptor.control);
    this.slots = descriptor.queueSlots;
    const out = side === 'host' ? descriptor.toGuest : descriptor.toHost;
    const inc = side === 'host' ? descriptor.toHost : descriptor.toGuest;
    this.outI32 = new Int32Array(out);
    this.outU8 = new Uint8Array(out);
    this.inI32 = new Int32Array(inc);
    for (let i = 0; i < this.slots; i++) {
      this.inPayload.push(
        new Uint8Array(inc, i * HV_MESSAGE_SIZE + HV_MESSAGE_HEADER_SIZE, HV_MESSAGE_PAYLOAD_BYTE_COUNT),
      );
    }
    this.myWake = side === 'host' ? C_HOST_WAKE : C_GUEST_WAKE;
    this.peerWake = side === 'host' ? C_GUEST_WAKE : C_HOST_WAKE;
    this.polling = options.polling ?? false;
  }

  /**
   * Wires two ends of one link created in this thread to a deterministic scheduler (the
   * same-thread transport). Used by `createSameThreadLink`.
   */
  static pairSameThread(host: HvEnd, guest: HvEnd, scheduler: HvScheduler): void {
    if (host.side !== 'host' || guest.side !== 'guest' || host.ctrl.buffer !== guest.ctrl.buffer) {
      throw new Error('pairSameThread: needs the host and guest ends of one link');
    }
    if (host.loopRunning || guest.loopRunning || host.scheduler || guest.scheduler) {
      throw new Error('pairSameThread: an end is already attached to a transport');
    }
    host.scheduler = guest.scheduler = scheduler;
    host.peerLocal = guest;
    guest.peerLocal = host;
    scheduler.schedule(host);
    scheduler.schedule(guest);
  }

  /** Starts the cross-thread transport: wait for the peer's wake-ups with Atomics.waitAsync. */
  protected startAtomics(): void {
    this.ensureLoop();
  }

  /** True once either side closed the link. */
  get closed(): boolean {
    return this.isClosed();
  }

  /** Whether the end is in polled mode (processes only in `poll()`). */
  get isPolling(): boolean {
    return this.polling;
  }

  /** Posts a message; resolves once it is queued for the peer (waits while the peer's queue is full). */
  post(port: number, payload: Uint8Array, messageType: number = VMBUS_MESSAGE_TYPE): Promise<void> {
    const status = this.validatePost(port, payload, messageType);
    if (status !== HV_STATUS_SUCCESS) return Promise.reject(this.postError(status, port, payload));
    if (
      this.pendingHead === this.pending.length &&
      this.writeSlot(port, messageType, payload, payload.length)
    ) {
      this.ringPeer();
      return RESOLVED;
    }
    return new Promise<void>((resolve, reject) => {
      const bytes = this.bufferPool.pop() ?? new Uint8Array(HV_MESSAGE_PAYLOAD_BYTE_COUNT);
      bytes.set(payload);
      this.pending.push({ port, messageType, length: payload.length, bytes, resolve, reject });
      // Ask the reader to wake us when it frees a slot, then look again (it may just have).
      Atomics.store(this.ctrl, this.myWake + W_WANT_SPACE, 1);
      this.flushPending();
    });
  }

  /**
   * The hypercall itself: queues the message now or returns why not, without waiting.
   * HV_STATUS_INSUFFICIENT_BUFFERS when the peer's queue is full (or earlier posts still wait).
   */
  tryPost(port: number, payload: Uint8Array, messageType: number = VMBUS_MESSAGE_TYPE): HvStatus {
    const status = this.validatePost(port, payload, messageType);
    if (status !== HV_STATUS_SUCCESS) return status;
    if (this.pendingHead !== this.pending.length) return HV_STATUS_INSUFFICIENT_BUFFERS;
    if (!this.writeSlot(port, messageType, payload, payload.length)) return HV_STATUS_INSUFFICIENT_BUFFERS;
    this.ringPeer();
    return HV_STATUS_SUCCESS;
  }

  /** Posts still waiting for a free slot. */
  get pendingPosts(): number {
    return this.pending.length - this.pendingHead;
  }

  /**
   * Processes, now, whatever is pending: queued posts that now fit, incoming messages, set
   * flags. Returns how many items it handled. Works in both modes; in polled mode it is the only
   * way anything is processed. Does nothing when called from inside a handler of this end.
   */
  poll(): number {
    return this.service();
  }

  /**
   * Polled mode: the end is not woken any more (the peer skips the wake-up), and processes only
   * in `poll()`. Closing still wakes it, so waiting posts are released.
   */
  setPolling(polling: boolean): void {
    if (this.polling === polling || this.closedLocally) return;
    this.polling = polling;
    if (polling) {
      Atomics.store(this.ctrl, this.myWake + W_SLEEPING, 0);
      return;
    }
    if (this.scheduler) this.scheduler.schedule(this);
    else {
      Atomics.add(this.ctrl, this.myWake + W_DOORBELL, 1);
      Atomics.notify(this.ctrl, this.myWake + W_DOORBELL);
      this.ensureLoop();
    }
  }

  /** Errors thrown by this end's handlers, and malformed input from the peer, go here. */
  onError(handler: HvErrorHandler | null): void {
    this.errorHandler = handler;
  }

  /** Called once when the link closes (from either side). */
  onClose(handler: () => void): void {
    if (this.closedLocally) handler();
    else this.closeHandlers.push(handler);
  }

  /**
   * Closes the partition link for both sides: waiting posts on both ends reject with HvError
   * (HV_STATUS_INVALID_PARTITION_STATE), later calls fail the same way, nothing more is delivered.
   */
  close(): void {
    if (this.closedLocally) return;
    Atomics.store(this.ctrl, C_CLOSED, 1);
    Atomics.add(this.ctrl, this.peerWake + W_DOORBELL, 1);
    Atomics.notify(this.ctrl, this.peerWake + W_DOORBELL);
    const peer = this.peerLocal;
    if (peer !== null && !peer.closedLocally) this.scheduler!.schedule(peer);
    this.handleClosed();
  }

  /**
   * Servicing: this end stops (its handlers are never called again, its calls fail as on a
   * closed link) WITHOUT closing the link: the peer notices nothing, and what it posts or signals
   * meanwhile waits in the shared queues for the next end. Throws if posts of this end still wait
   * for queue space (let them drain first) or the link is closed.
   */
  protected detachQueues(): { readIndex: number; writeIndex: number } {
    if (this.isClosed()) throw new HvError(HV_STATUS_INVALID_PARTITION_STATE, 'the partition link is closed');
    if (this.inService) throw new Error('detach: not from inside a handler of this end');
    if (this.pendingHead !== this.pending.length) {
      throw new HvError(
        HV_STATUS_INSUFFICIENT_BUFFERS,
        `detach: ${this.pending.length - this.pendingHead} posts still wait for queue space`,
      );
    }
    this.closedLocally = true;
    Atomics.store(this.ctrl, this.myWake + W_WANT_SPACE, 0);
    Atomics.store(this.ctrl, this.myWake + W_SLEEPING, 0);
    if (this.keepAlive !== null) {
      clearInterval(this.keepAlive);
      this.keepAlive = null;
    }
    // Release our own wait loop; the doorbell only ever grows, so the next end loses nothing.
    Atomics.add(this.ctrl, this.myWake + W_DOORBELL, 1);
    Atomics.notify(this.ctrl, this.myWake + W_DOORBELL);
    this.closeHandlers.length = 0;
    return { readIndex: this.readIndex, writeIndex: this.writeIndex };
  }

  /** Servicing: continue the queues where a detached end of this side left them. */
  protected resumeQueues(readIndex: number, writeIndex: number): void {
    for (const [name, v] of [
      ['read index', readIndex],
      ['write index', writeIndex],
    ] as const) {
      if (!Number.isInteger(v) || v < 0 || v >= this.slots) {
        throw new HvError(HV_STATUS_INVALID_PARAMETER, `resume: ${name} ${v} is not a slot of the queue`);
      }
    }
    this.readIndex = readIndex;
    this.writeIndex = writeIndex;
  }

  /**
   * Same-thread servicing: wires a new end in place of a detached one, to the peer and the
   * scheduler the detached end had.
   */
  static replaceSameThread(detached: HvEnd, replacement: HvEnd): void {
    const peer = detached.peerLocal;
    if (
      !detached.closedLocally ||
      peer === null ||
      peer.peerLocal !== detached ||
      detached.scheduler === null
    ) {
      throw new Error('replaceSameThread: needs a detached end of a same-thread pair');
    }
    if (replacement.side !== detached.side || replacement.ctrl.buffer !== detached.ctrl.buffer) {
      throw new Error('replaceSameThread: the replacement must be the same side of the same link');
    }
    if (replacement.loopRunning || replacement.scheduler) {
      throw new Error('replaceSameThread: the replacement is already attached to a transport');
    }
    const scheduler = detached.scheduler;
    replacement.scheduler = scheduler;
    replacement.peerLocal = peer;
    peer.peerLocal = replacement;
    detached.peerLocal = null;
    scheduler.schedule(replacement);
    scheduler.schedule(peer);
  }

  /** Cross-thread ends keep their thread alive while open (like a socket); `unref()` stops that. */
  unref(): void {
    this.refed = false;
    this.keepAlive?.unref();
  }

  ref(): void {
    this.refed = true;
    this.keepAlive?.ref();
  }

  /** @internal run by the scheduler */
  runScheduled(): void {
    if (this.polling) {
      this.isClosed();
      return;
    }
    this.stats.wakeups++;
    this.service();
  }

  // ----- side-specific parts -----

  /** HV_STATUS_SUCCESS if a message may be posted to `port` now. */
  protected abstract checkPostTarget(port: number): HvStatus;
  protected abstract dispatchMessage(message: HvMessage): void;
  protected abstract drainEvents(): number;

  // ----- shared machinery -----

  protected isClosed(): boolean {
    if (this.closedLocally) return true;
    if (Atomics.load(this.ctrl, C_CLOSED) !== 0) {
      this.handleClosed();
      return true;
    }
    return false;
  }

  /** Wakes the peer: bump its doorbell, then schedule it (same thread) or notify it if it sleeps. */
  protected ringPeer(): void {
    Atomics.add(this.ctrl, this.peerWake + W_DOORBELL, 1);
    const peer = this.peerLocal;
    if (peer !== null) {
      if (!peer.polling) this.scheduler!.schedule(peer);
    } else if (Atomics.load(this.ctrl, this.peerWake + W_SLEEPING) !== 0) {
      Atomics.notify(this.ctrl, this.peerWake + W_DOORBELL);
    }
  }

  protected callHandler(handler: HvEventHandler, port: number): void {
    try {
      handler(port);
    } catch (error) {
      this.reportHandlerError(error);
    }
  }

  protected reportHandlerError(error: unknown): void {
    const handler = this.errorHandler;
    if (handler) {
      try {
        handler(error);
        return;
      } catch (inner) {
        error = inner;
      }
    }
    // Nobody listens: surface it like an EventEmitter 'error' without a listener would.
    queueMicrotask(() => {
      throw error;
    });
  }

  /** Malformed input from the other partition: counted, reported if someone listens, never thrown. */
  protected reportPeerError(error: Error): void {
    const handler = this.errorHandler;
    if (!handler) return;
    try {
      handler(error);
    } catch (inner) {
      this.reportHandlerError(inner);
    }
  }

  protected describeStatus(status: HvStatus, port: number): string {
    switch (status) {
      case HV_STATUS_INVALID_CONNECTION_ID:
        return `nobody listens on connection id ${port}`;
      case HV_STATUS_INVALID_SYNIC_STATE:
        return `the guest has not enabled SINT ${port}`;
      case HV_STATUS_INVALID_PARTITION_STATE:
        return 'the partition link is closed';
      case HV_STATUS_INSUFFICIENT_BUFFERS:
        return 'the message queue is full';
      default:
        return 'invalid parameter';
    }
  }

  private postError(status: HvStatus, port: number, payload: Uint8Array): HvError {
    if (status === HV_STATUS_INVALID_PARAMETER) {
      const size = payload instanceof Uint8Array ? payload.length : 'not a Uint8Array';
      return new HvError(
        status,
        `message payload must be a Uint8Array of at most ${HV_MESSAGE_PAYLOAD_BYTE_COUNT} bytes and the message type 1..0x7fffffff (payload: ${size})`,
      );
    }
    return new HvError(status, this.describeStatus(status, port));
  }

  private validatePost(port: number, payload: Uint8Array, messageType: number): HvStatus {
    if (this.isClosed()) return HV_STATUS_INVALID_PARTITION_STATE;
    if (!(payload instanceof Uint8Array) || payload.length > HV_MESSAGE_PAYLOAD_BYTE_COUNT) {
      return HV_STATUS_INVALID_PARAMETER;
    }
    if (!Number.isInteger(messageType) || messageType < 1 || messageType > 0x7fffffff) {
      return HV_STATUS_INVALID_PARAMETER;
    }
    return this.checkPostTarget(port);
  }

  /** Fills the next outgoing slot if it is free (message_type == 0), publishing the type last. */
  private writeSlot(port: number, messageType: number, src: Uint8Array, length: number): boolean {
    const index = this.writeIndex;
    const base = index * SLOT_WORDS;
    if (Atomics.load(this.outI32, base + SLOT_TYPE) !== 0) return false;
    this.outU8.set(src, base * 4 + HV_MESSAGE_HEADER_SIZE);
    this.outI32[base + SLOT_SIZE] = length;
    this.outI32[base + SLOT_PORT] = port;
    Atomics.store(this.outI32, base + SLOT_TYPE, messageType);
    this.writeIndex = index + 1 === this.slots ? 0 : index + 1;
    this.stats.messagesSent++;
    return true;
  }

  /** Moves waiting posts into free slots, in order; resolves each one queued. */
  private flushPending(): number {
    let moved = 0;
    while (this.pendingHead < this.pending.length) {
      const post = this.pending[this.pendingHead]!;
      // The hypercall is retried, so the target is checked again (a port may have gone away).
      const status = this.checkPostTarget(post.port);
      if (status === HV_STATUS_SUCCESS) {
        if (!this.writeSlot(post.port, post.messageType, post.bytes, post.length)) break;
        moved++;
      }
      this.pending[this.pendingHead++] = undefined;
      this.bufferPool.push(post.bytes);
      if (status === HV_STATUS_SUCCESS) post.resolve();
      else post.reject(new HvError(status, this.describeStatus(status, post.port)));
    }
    if (this.pendingHead === this.pending.length) {
      this.pending.length = 0;
      this.pendingHead = 0;
      Atomics.store(this.ctrl, this.myWake + W_WANT_SPACE, 0);
    } else if (this.pendingHead > 1024 && this.pendingHead * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
    if (moved > 0) this.ringPeer();
    return moved;
  }

  /** Copies each incoming message out, frees its slot (waking a waiting writer), dispatches it. */
  private drainMessages(budget: number): number {
    const message = this.message;
    let count = 0;
    while (count < budget) {
      const index = this.readIndex;
      const base = index * SLOT_WORDS;
      const type = Atomics.load(this.inI32, base + SLOT_TYPE);
      if (type === 0) break;
      const size = this.inI32[base + SLOT_SIZE]!;
      const port = this.inI32[base + SLOT_PORT]!;
      const valid = size >= 0 && size <= HV_MESSAGE_PAYLOAD_BYTE_COUNT;
      if (valid) {
        message.data.set(this.inPayload[index]!);
        message.port = port >>> 0;
        message.messageType = type >>> 0;
        message.length = size;
      }
      Atomics.store(this.inI32, base + SLOT_TYPE, 0);
      this.readIndex = index + 1 === this.slots ? 0 : index + 1;
      if (Atomics.load(this.ctrl, this.peerWake + W_WANT_SPACE) !== 0) this.ringPeer();
      count++;
      if (!valid) {
        this.stats.malformed++;
        this.reportPeerError(
          new WireError(
            'oversized',
            'hv_message.payload_size',
            `${size >>> 0} exceeds ${HV_MESSAGE_PAYLOAD_BYTE_COUNT}; message dropped`,
          ),
        );
        continue;
      }
      this.stats.messagesReceived++;
      this.dispatchMessage(message);
      if (this.closedLocally) break;
    }
    return count;
  }

  private service(): number {
    if (this.inService || this.isClosed()) return 0;
    this.inService = true;
    let work = 0;
    try {
      for (;;) {
        let progress = 0;
        if (this.pendingHead < this.pending.length) progress += this.flushPending();
        progress += this.drainMessages(SERVICE_BUDGET - work);
        if (this.isClosed()) break;
        progress += this.drainEvents();
        if (this.isClosed()) break;
        work += progress;
        if (progress === 0) break;
        if (work >= SERVICE_BUDGET) {
          this.serviceAgainSoon();
          break;
        }
      }
    } finally {
      this.inService = false;
    }
    return work;
  }

  private serviceAgainSoon(): void {
    if (this.polling) return;
    if (this.scheduler) this.scheduler.schedule(this);
    else Atomics.add(this.ctrl, this.myWake + W_DOORBELL, 1);
  }

  private ensureLoop(): void {
    if (this.loopRunning || this.closedLocally || this.scheduler) return;
    this.loopRunning = true;
    if (this.keepAlive === null) {
      this.keepAlive = setInterval(noop, KEEP_ALIVE_MS);
      if (!this.refed) this.keepAlive.unref();
    }
    void this.waitLoop();
  }

  /**
   * Cross-thread wake loop. Read the doorbell, do the work, then sleep until the doorbell moves:
   * a peer that rang after the read makes the wait return at once, so no wake-up is lost; the
   * sleeping flag lets peers skip Atomics.notify while this end is busy or polled.
   */
  private async waitLoop(): Promise<void> {
    const bell = this.myWake + W_DOORBELL;
    const sleeping = this.myWake + W_SLEEPING;
    try {
      // First pass after the attaching code has registered its handlers.
      await RESOLVED;
      while (!this.closedLocally) {
        const seen = Atomics.load(this.ctrl, bell);
        if (this.polling) this.isClosed();
        else this.service();
        if (this.closedLocally) break;
        if (!this.polling) Atomics.store(this.ctrl, sleeping, 1);
        const result = waitAsync(this.ctrl, bell, seen);
        if (result.async) await result.value;
        else await yieldMacrotask();
        Atomics.store(this.ctrl, sleeping, 0);
        this.stats.wakeups++;
      }
    } finally {
      this.loopRunning = false;
    }
  }

  private handleClosed(): void {
    if (this.closedLocally) return;
    this.closedLocally = true;
    Atomics.store(this.ctrl, C_CLOSED, 1);
    const error = new HvError(HV_STATUS_INVALID_PARTITION_STATE, 'the partition link was closed');
    const waiting = this.pending;
    const head = this.pendingHead;
    this.pending = [];
    this.pendingHead = 0;
    Atomics.store(this.ctrl, this.myWake + W_WANT_SPACE, 0);
    for (let i = head; i < waiting.length; i++) waiting[i]!.reject(error);
    if (this.keepAlive !== null) {
      clearInterval(this.keepAlive);
      this.keepAlive = null;
    }
    // Release our own wait loop.
    Atomics.add(this.ctrl, this.myWake + W_DOORBELL, 1);
    Atomics.notify(this.ctrl, this.myWake + W_DOORBELL);
    for (const handler of this.closeHandlers.splice(0)) {
      try {
        handler();
      } catch (e) {
        this.reportHandlerError(e);
      }
    }
  }
}

/**
 * The host (root partition) end: listens on connection ids for the guest's messages and
 * signals, posts messages to a guest SINT, sets flags in the guest's SINT 2 event-flags page.
 */
export class HvHostEnd extends HvEnd {
  readonly side = 'host' as const;
  private readonly table: PortTableLayout;
  private readonly tableMask: number;
  // Host-private mirror of the port table: the guest can scribble on the shared copy, which only
  // misleads its own lookups; the host decides from this one.
  private readonly localKeys: Int32Array;
  private readonly localKinds: Int32Array;
  private readonly slotByConnection = new Map<number, number>();
  private readonly messageHandlers = new Map<number, HvMessageHandler>();
  private readonly eventHandlers: (HvEventHandler | undefined)[];

  /** Attaches the host side; prefer `attachHvHost` / `createSameThreadLink`. */
  constructor(
    descriptor: HvLinkDescriptor,
    options: HvHostEndOptions = {},
    transport: 'atomics' | 'none' = 'atomics',
  ) {
    super(descriptor, 'host', options);
    this.table = portTableLayout(descriptor.portCapacity);
    this.tableMask = descriptor.portCapacity - 1;
    this.localKeys = new Int32Array(descriptor.portCapacity);
    this.localKinds = new Int32Array(descriptor.portCapacity);
    this.eventHandlers = new Array(descriptor.portCapacity);
    if (options.resume !== undefined) this.resume(options.resume);
    if (transport === 'atomics') this.startAtomics();
  }

  /**
   * Servicing: stops this end without closing the link (see HvEnd.detachQueues) and returns what
   * a new host end needs to take over (`attachHvHost(descriptor, { resume })`). The ports stay
   * registered meanwhile: the guest's posts and signals are accepted and wait for the new end.
   */
  detach(): HvHostEndSavedState {
    const q = this.detachQueues();
    const ports: { slot: number; connectionId: number; kinds: number }[] = [];
    const deletedSlots: number[] = [];
    for (let slot = 0; slot < this.table.capacity; slot++) {
      const key = this.localKeys[slot]!;
      if (key === PORT_KEY_DELETED) deletedSlots.push(slot);
      else if (key !== PORT_KEY_EMPTY)
        ports.push({ slot, connectionId: key - 1, kinds: this.localKinds[slot]! });
    }
    this.messageHandlers.clear();
    this.eventHandlers.fill(undefined);
    return {
      kind: 'hv-host-end',
      version: 1,
      toHostReadIndex: q.readIndex,
      toGuestWriteIndex: q.writeIndex,
      ports,
      deletedSlots,
    };
  }

  /** Connection ids registered in the port table that no handler listens on (after a resume). */
  unclaimedPorts(): number[] {
    const out: number[] = [];
    for (const [connectionId, slot] of this.slotByConnection) {
      const kinds = this.localKinds[slot]!;
      const msg = (kinds & PORT_MESSAGE) !== 0 && !this.messageHandlers.has(connectionId);
      const ev = (kinds & PORT_EVENT) !== 0 && this.eventHandlers[slot] === undefined;
      if (msg || ev) out.push(connectionId);
    }
    return out;
  }

  /** Servicing: unregisters every port kind (message, event) that has no handler after a resume. */
  dropUnclaimedPorts(): void {
    for (const [connectionId, slot] of [...this.slotByConnection]) {
      if (!this.messageHandlers.has(connectionId)) this.setPortKind(connectionId, PORT_MESSAGE, false);
      if (this.eventHandlers[slot] === undefined) this.setPortKind(connectionId, PORT_EVENT, false);
    }
  }

  private resume(saved: HvHostEndSavedState): void {
    const fail = (why: string): never => {
      throw new HvError(HV_STATUS_INVALID_PARAMETER, `resume: ${why}`);
    };
    if (saved === null || typeof saved !== 'object' || saved.kind !== 'hv-host-end' || saved.version !== 1)
      fail('not an HvHostEndSavedState of version 1');
    if (!Array.isArray(saved.ports) || !Array.isArray(saved.deletedSlots)) fail('ports are not arrays');
    const capacity = this.table.capacity;
    const slotOk = (slot: unknown): slot is number =>
      Number.isInteger(slot) && (slot as number) >= 0 && (slot as number) < capacity;
    const keys = new Int32Array(capacity);
    const kinds = new Int32Array(capacity);
    const byConnection = new Map<number, number>();
    for (const p of saved.ports) {
      if (p === null || typeof p !== 'object' || !slotOk(p.slot)) fail('a port slot is outside the table');
      const id = p.connectionId;
      if (!Number.isInteger(id) || id < 0 || id > HV_CONNECTION_ID_MAX) fail(`connection id ${id}`);
      if (p.kinds !== PORT_MESSAGE && p.kinds !== PORT_EVENT && p.kinds !== (PORT_MESSAGE | PORT_EVENT))
        fail(`port kinds ${p.kinds}`);
      if (keys[p.slot] !== PORT_KEY_EMPTY || byConnection.has(id))
        fail(`port ${id} or slot ${p.slot} repeats`);
      keys[p.slot] = id + 1;
      kinds[p.slot] = p.kinds;
      byConnection.set(id, p.slot);
    }
    for (const slot of saved.deletedSlots) {
      if (!slotOk(slot) || keys[slot] !== PORT_KEY_EMPTY)
        fail('a deleted slot is outside the table or taken');
      keys[slot] = PORT_KEY_DELETED;
    }
    this.resumeQueues(saved.toHostReadIndex, saved.toGuestWriteIndex);
    this.localKeys.set(keys);
    this.localKinds.set(kinds);
    for (const [id, slot] of byConnection) this.slotByConnection.set(id, slot);
    // The host's copy is the authority: the shared table is rewritten from it (kind before key).
    for (let slot = 0; slot < capacity; slot++) {
      Atomics.store(this.ctrl, this.table.kinds + slot, kinds[slot]!);
      Atomics.store(this.ctrl, this.table.keys + slot, keys[slot]!);
    }
  }

  /**
   * Listens for guest messages posted to `connectionId` (e.g. 1 and 4 for the VMBus control
   * plane); `null` stops listening, after which the guest's posts there fail with
   * HV_STATUS_INVALID_CONNECTION_ID.
   */
  onMessage(connectionId: number, handler: HvMessageHandler | null): void {
    checkConnectionId(connectionId);
    if (handler) {
      this.messageHandlers.set(connectionId, handler);
      this.setPortKind(connectionId, PORT_MESSAGE, true);
    } else {
      this.messageHandlers.delete(connectionId);
      this.setPortKind(connectionId, PORT_MESSAGE, false);
    }
  }

  /** Listens for the guest's HvSignalEvent on `connectionId` (a channel's connection id); `null` stops. */
  onEvent(connectionId: number, handler: HvEventHandler | null): void {
    checkConnectionId(connectionId);
    const slot = this.setPortKind(connectionId, PORT_EVENT, handler !== null);
    if (slot >= 0) this.eventHandlers[slot] = handler ?? undefined;
  }

  /** Sets bit `flag` (0..2047) of the guest's SINT 2 event flags and interrupts the guest. */
  setEventFlag(flag: number): void {
    const status = this.trySetEventFlag(flag);
    if (status !== HV_STATUS_SUCCESS) {
      throw new HvError(
        status,
        status === HV_STATUS_INVALID_PARAMETER
          ? `event flag ${flag} is not in 0..${HV_EVENT_FLAGS_COUNT - 1}`
          : this.describeStatus(status, flag),
      );
    }
  }

  /** `setEventFlag` returning the status instead of throwing (allocates nothing). */
  trySetEventFlag(flag: number): HvStatus {
    if (!Number.isInteger(flag) || flag < 0 || flag >= HV_EVENT_FLAGS_COUNT)
      return HV_STATUS_INVALID_PARAMETER;
    if (this.isClosed()) return HV_STATUS_INVALID_PARTITION_STATE;
    this.stats.signalsSent++;
    const word = flag >>> 5;
    const bit = 1 << (flag & 31);
    // Already set: the guest has not taken it yet, and whoever set it has already woken the guest.
    if ((Atomics.or(this.ctrl, C_GUEST_FLAGS + word, bit) & bit) !== 0) return HV_STATUS_SUCCESS;
    Atomics.or(this.ctrl, C_GUEST_FLAG_SUMMARY + (word >>> 5), 1 << (word & 31));
    this.ringPeer();
    return HV_STATUS_SUCCESS;
  }

  /** Whether the guest has enabled `sint` (has a message handler on it). */
  guestSintEnabled(sint: number = VMBUS_MESSAGE_SINT): boolean {
    return (Atomics.load(this.ctrl, C_GUEST_SINT_MASK) & (1 << sint)) !== 0;
  }

  protected checkPostTarget(sint: number): HvStatus {
    if (!Number.isInteger(sint) || sint < 0 || sint >= HV_SYNIC_SINT_COUNT)
      return HV_STATUS_INVALID_PARAMETER;
    return this.guestSintEnabled(sint) ? HV_STATUS_SUCCESS : HV_STATUS_INVALID_SYNIC_STATE;
  }

  protected dispatchMessage(message: HvMessage): void {
    const handler = this.messageHandlers.get(message.port);
    if (handler === undefined) {
      this.stats.unrouted++;
      this.reportPeerError(
        new HvError(
          HV_STATUS_INVALID_CONNECTION_ID,
          `message for connection id ${message.port}, which nobody listens on any more; dropped`,
        ),
      );
      return;
    }
    try {
      handler(message);
    } catch (error) {
      this.reportHandlerError(error);
    }
  }

  protected drainEvents(): number {
    const { pending, summary, summaryWords } = this.table;
    const ctrl = this.ctrl;
    let count = 0;
    for (let s = 0; s < summaryWords; s++) {
      let words = Atomics.exchange(ctrl, summary + s, 0);
      while (words !== 0) {
        const low = words & -words;
        words ^= low;
        const word = s * 32 + (31 - Math.clz32(low));
        if (word >= this.table.capacity / 32) continue;
        let bits = Atomics.exchange(ctrl, pending + word, 0);
        while (bits !== 0) {
          const lowBit = bits & -bits;
          bits ^= lowBit;
          const slot = word * 32 + (31 - Math.clz32(lowBit));
          count++;
          this.stats.eventsReceived++;
          const handler = this.eventHandlers[slot];
          if (handler === undefined) {
            this.stats.unrouted++;
            continue;
          }
          this.callHandler(handler, this.localKeys[slot]! - 1);
          if (this.closed) return count;
        }
      }
    }
    return count;
  }

  /** Adds or removes a kind bit for `connectionId` in both copies of the port table; returns the slot (-1: none). */
  private setPortKind(connectionId: number, kind: number, on: boolean): number {
    const { keys, kinds } = this.table;
    let slot = this.slotByConnection.get(connectionId);
    if (slot === undefined) {
      if (!on) return -1;
      slot = this.freeSlotFor(connectionId);
      this.localKeys[slot] = connectionId + 1;
      this.localKinds[slot] = kind;
      this.slotByConnection.set(connectionId, slot);
      // Kind first, key last: a guest that finds the key also finds its kind.
      Atomics.store(this.ctrl, kinds + slot, kind);
      Atomics.store(this.ctrl, keys + slot, connectionId + 1);
      return slot;
    }
    const now = on ? this.localKinds[slot]! | kind : this.localKinds[slot]! & ~kind;
    this.localKinds[slot] = now;
    Atomics.store(this.ctrl, kinds + slot, now);
    if (now === 0) {
      this.localKeys[slot] = PORT_KEY_DELETED;
      this.eventHandlers[slot] = undefined;
      this.slotByConnection.delete(connectionId);
      Atomics.store(this.ctrl, keys + slot, PORT_KEY_DELETED);
    }
    return slot;
  }

  private freeSlotFor(connectionId: number): number {
    let i = Math.imul(connectionId, 0x9e3779b1) >>> this.table.hashShift;
    let firstDeleted = -1;
    for (let probes = 0; probes <= this.tableMask; probes++) {
      const key = this.localKeys[i]!;
      if (key === PORT_KEY_EMPTY) return firstDeleted >= 0 ? firstDeleted : i;
      if (key === PORT_KEY_DELETED && firstDeleted < 0) firstDeleted = i;
      i = (i + 1) & this.tableMask;
    }
    if (firstDeleted >= 0) return firstDeleted;
    throw new Error(`the host port table is full (${this.table.capacity} connection ids)`);
  }
}

/**
 * The guest (child partition) end: posts messages to host connection ids, signals host event
 * ports, receives messages on its SINTs and event flags on SINT 2.
 */
export class HvGuestEnd extends HvEnd {
  readonly side = 'guest' as const;
  private readonly table: PortTableLayout;
  private readonly tableMask: number;
  private readonly sintHandlers: (HvMessageHandler | undefined)[] = new Array(HV_SYNIC_SINT_COUNT);
  private readonly flagHandlers: (HvEventHandler | undefined)[] = new Array(HV_EVENT_FLAGS_COUNT);

  /** Attaches the guest side; prefer `attachHvGuest` / `createSameThreadLink`. */
  constructor(
    descriptor: HvLinkDescriptor,
    options: HvEndOptions = {},
    transport: 'atomics' | 'none' = 'atomics',
  ) {
    super(descriptor, 'guest', options);
    this.table = portTableLayout(descriptor.portCapacity);
    this.tableMask = descriptor.portCapacity - 1;
    if (transport === 'atomics') this.startAtomics();
  }

  /** Enables `sint` (VMBus uses 2) and handles the host's messages on it; `null` disables it. */
  onMessage(sint: number, handler: HvMessageHandler | null): void {
    if (!Number.isInteger(sint) || sint < 0 || sint >= HV_SYNIC_SINT_COUNT) {
      throw new RangeError(`SINT ${sint} is not in 0..${HV_SYNIC_SINT_COUNT - 1}`);
    }
    this.sintHandlers[sint] = handler ?? undefined;
    if (handler) Atomics.or(this.ctrl, C_GUEST_SINT_MASK, 1 << sint);
    else Atomics.and(this.ctrl, C_GUEST_SINT_MASK, ~(1 << sint));
  }

  /** Handles the host setting event flag `flag` (a channel's relid / event_flag, 0..2047); `null` stops. */
  onEvent(flag: number, handler: HvEventHandler | null): void {
    if (!Number.isInteger(flag) || flag < 0 || flag >= HV_EVENT_FLAGS_COUNT) {
      throw new RangeError(`event flag ${flag} is not in 0..${HV_EVENT_FLAGS_COUNT - 1}`);
    }
    this.flagHandlers[flag] = handler ?? undefined;
  }

  /** HvSignalEvent: signals the host port `connectionId`; throws HvError if nobody listens there. */
  signalEvent(connectionId: number): void {
    const status = this.trySignalEvent(connectionId);
    if (status !== HV_STATUS_SUCCESS) throw new HvError(status, this.describeStatus(status, connectionId));
  }

  /** `signalEvent` returning the HV_STATUS instead of throwing (allocates nothing). */
  trySignalEvent(connectionId: number): HvStatus {
    if (this.isClosed()) return HV_STATUS_INVALID_PARTITION_STATE;
    const slot = this.findPort(connectionId, PORT_EVENT);
    if (slot < 0) return HV_STATUS_INVALID_CONNECTION_ID;
    this.stats.signalsSent++;
    const { pending, summary } = this.table;
    const word = slot >>> 5;
    const bit = 1 << (slot & 31);
    if ((Atomics.or(this.ctrl, pending + word, bit) & bit) !== 0) return HV_STATUS_SUCCESS;
    Atomics.or(this.ctrl, summary + (word >>> 5), 1 << (word & 31));
    this.ringPeer();
    return HV_STATUS_SUCCESS;
  }

  /** Whether the host listens for messages (or, with `events`, signals) on `connectionId`. */
  hostListens(connectionId: number, events = false): boolean {
    return this.findPort(connectionId, events ? PORT_EVENT : PORT_MESSAGE) >= 0;
  }

  protected checkPostTarget(connectionId: number): HvStatus {
    return this.findPort(connectionId, PORT_MESSAGE) >= 0
      ? HV_STATUS_SUCCESS
      : HV_STATUS_INVALID_CONNECTION_ID;
  }

  protected dispatchMessage(message: HvMessage): void {
    const handler = message.port < HV_SYNIC_SINT_COUNT ? this.sintHandlers[message.port] : undefined;
    if (handler === undefined) {
      this.stats.unrouted++;
      return;
    }
    try {
      handler(message);
    } catch (error) {
      this.reportHandlerError(error);
    }
  }

  /** Scans the SINT 2 event flags like vmbus_chan_sched: test-and-clear each word, then run each set flag's handler. */
  protected drainEvents(): number {
    const ctrl = this.ctrl;
    let count = 0;
    for (let s = 0; s < GUEST_FLAG_SUMMARY_WORDS; s++) {
      let words = Atomics.exchange(ctrl, C_GUEST_FLAG_SUMMARY + s, 0);
      while (words !== 0) {
        const low = words & -words;
        words ^= low;
        const word = s * 32 + (31 - Math.clz32(low));
        let bits = Atomics.exchange(ctrl, C_GUEST_FLAGS + word, 0);
        while (bits !== 0) {
          const lowBit = bits & -bits;
          bits ^= lowBit;
          const flag = word * 32 + (31 - Math.clz32(lowBit));
          count++;
          this.stats.eventsReceived++;
          const handler = this.flagHandlers[flag];
          if (handler === undefined) {
            this.stats.unrouted++;
            continue;
          }
          this.callHandler(handler, flag);
          if (this.closed) return count;
        }
      }
    }
    return count;
  }

  /** Looks `connectionId` up in the (shared, host-written) port table; -1 if absent or not of `kind`. */
  private findPort(connectionId: number, kind: number): number {
    if (!Number.isInteger(connectionId) || connectionId < 0 || connectionId > HV_CONNECTION_ID_MAX) return -1;
    const { keys, kinds } = this.table;
    const key = connectionId + 1;
    let i = Math.imul(connectionId, 0x9e3779b1) >>> this.table.hashShift;
    for (let probes = 0; probes <= this.tableMask; probes++) {
      const k = Atomics.load(this.ctrl, keys + i);
      if (k === key) return (Atomics.load(this.ctrl, kinds + i) & kind) !== 0 ? i : -1;
      if (k === PORT_KEY_EMPTY) return -1;
      i = (i + 1) & this.tableMask;
    }
    return -1;
  }
}

function checkConnectionId(connectionId: number): void {
  if (!Number.isInteger(connectionId) || connectionId < 0 || connectionId > HV_CONNECTION_ID_MAX) {
    throw new RangeError(`connection id ${connectionId} is not in 0..0x${HV_CONNECTION_ID_MAX.toString(16)}`);
  }
}
