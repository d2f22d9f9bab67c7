// The shared state of one host<->guest partition link, as bytes in SharedArrayBuffers: the two
// SynIC message queues (rings of 256-byte slots), the guest's SINT 2 event-flags page, the host's
// port table (connection ids it listens on) with its pending-signal bitmap, and the wake words.
// Both transports (same-thread and cross-thread) use exactly this layout; only waking differs.

/** Bytes in one SynIC message slot: a 16-byte header and 240 payload bytes. */
export const HV_MESSAGE_SIZE = 256;
/** Largest SynIC message payload (HV_MESSAGE_PAYLOAD_BYTE_COUNT); a VMBus message, header included, fits in it. */
export const HV_MESSAGE_PAYLOAD_BYTE_COUNT = 240;
/** Offset of the payload inside a message slot. */
export const HV_MESSAGE_HEADER_SIZE = HV_MESSAGE_SIZE - HV_MESSAGE_PAYLOAD_BYTE_COUNT;
/** Synthetic interrupt sources per virtual processor. */
export const HV_SYNIC_SINT_COUNT = 16;
/** Event flags per SINT in the SynIC event-flags page (2048 bits = 256 bytes). */
export const HV_EVENT_FLAGS_COUNT = 2048;
/** Connection ids are 24-bit (the upper 8 bits of HV_CONNECTION_ID are reserved). */
export const HV_CONNECTION_ID_MAX = 0xffffff;

/** Message slots per direction unless configured. */
export const HV_DEFAULT_QUEUE_SLOTS = 16;
/** Host port-table entries (connection ids a host can listen on) unless configured. */
export const HV_DEFAULT_PORT_CAPACITY = 4096;

// Message slot header, in 32-bit words: message_type (0 = slot free), payload_size, port, reserved.
export const SLOT_WORDS = HV_MESSAGE_SIZE / 4;
export const SLOT_TYPE = 0;
export const SLOT_SIZE = 1;
export const SLOT_PORT = 2;

// Control block, in 32-bit words.
const LINK_MAGIC = 0x48564c31; // 'HVL1'
const LINK_VERSION = 1;
export const C_MAGIC = 0;
export const C_VERSION = 1;
export const C_CLOSED = 2;
export const C_QUEUE_SLOTS = 3;
export const C_PORT_CAPACITY = 4;
/** Bit n set = the guest has enabled SINT n (has a message handler on it). */
export const C_GUEST_SINT_MASK = 5;
// One wake block per side, each on its own 64-byte line: doorbell counter, sleeping flag,
// want-space flag (the side has posts waiting for a free slot in its outgoing queue).
export const C_HOST_WAKE = 16;
export const C_GUEST_WAKE = 32;
export const W_DOORBELL = 0;
export const W_SLEEPING = 1;
export const W_WANT_SPACE = 2;
/** The guest's SINT 2 event flags: 2048 bits. */
export const C_GUEST_FLAGS = 48;
const GUEST_FLAG_WORDS = HV_EVENT_FLAGS_COUNT / 32;
/** One bit per word of C_GUEST_FLAGS that may be non-zero. */
export const C_GUEST_FLAG_SUMMARY = C_GUEST_FLAGS + GUEST_FLAG_WORDS;
export const GUEST_FLAG_SUMMARY_WORDS = GUEST_FLAG_WORDS / 32;
/** The host port table starts here: keys[cap] (connection id + 1; 0 empty, -1 deleted), kinds[cap], pending bits, summary bits. */
export const C_PORTS = 128;

/** Port-table kind bits. */
export const PORT_MESSAGE = 1;
export const PORT_EVENT = 2;
export const PORT_KEY_EMPTY = 0;
export const PORT_KEY_DELETED = -1;

/**
 * Everything one side needs to attach to a partition link: plain data (SharedArrayBuffers and
 * numbers), safe to hand to another thread with postMessage once, when the partition is created.
 */
export interface HvLinkDescriptor {
  readonly kind: 'hv-link';
  readonly version: 1;
  readonly control: SharedArrayBuffer;
  /** Guest -> host messages (HvPostMessage). */
  readonly toHost: SharedArrayBuffer;
  /** Host -> guest messages (the guest's SINT message slots). */
  readonly toGuest: SharedArrayBuffer;
  readonly queueSlots: number;
  readonly portCapacity: number;
}

export interface HvLinkOptions {
  /** Message slots per direction (1..4096, default 16). A full queue makes the sender wait. */
  readonly queueSlots?: number;
  /** Host port-table entries, a power of two (32..65536, default 4096). */
  readonly portCapacity?: number;
}

/** Word offsets of the port table inside the control block, for a given capacity. */
export interface PortTableLayout {
  readonly capacity: number;
  readonly keys: number;
  readonly kinds: number;
  readonly pending: number;
  readonly summary: number;
  readonly summaryWords: number;
  readonly hashShift: number;
}

export function portTableLayout(capacity: number): PortTableLayout {
  const pendingWords = capacity / 32;
  const summaryWords = Math.ceil(pendingWords / 32);
  const keys = C_PORTS;
  const kinds = keys + capacity;
  const pending = kinds + capacity;
  const summary = pending + pendingWords;
  return { capacity, keys, kinds, pending, summary, summaryWords, hashShift: 32 - Math.log2(capacity) };
}

function controlWords(capacity: number): number {
  const t = portTableLayout(capacity);
  return t.summary + t.summaryWords;
}

function checkOptions(queueSlots: number, portCapacity: number): void {
  if (!Number.isInteger(queueSlots) || queueSlots < 1 || queueSlots > 4096) {
    throw new RangeError(`queueSlots must be an integer in 1..4096, got ${queueSlots}`);
  }
  if (
    !Number.isInteger(portCapacity) ||
    portCapacity < 32 ||
    portCapacity > 65536 ||
    (portCapacity & (portCapacity - 1)) !== 0
  ) {
    throw new RangeError(`portCapacity must be a power of two in 32..65536, got ${portCapacity}`);
  }
}

/** Creates the zeroed shared state of a new partition link ("the partition being created"). */
export function createHvLinkDescriptor(options: HvLinkOptions = {}): HvLinkDescriptor {
  const queueSlots = options.queueSlots ?? HV_DEFAULT_QUEUE_SLOTS;
  const portCapacity = options.portCapacity ?? HV_DEFAULT_PORT_CAPACITY;
  checkOptions(queueSlots, portCapacity);
  const control = new SharedArrayBuffer(controlWords(portCapacity) * 4);
  const ctrl = new Int32Array(control);
  ctrl[C_QUEUE_SLOTS] = queueSlots;
  ctrl[C_PORT_CAPACITY] = portCapacity;
  ctrl[C_VERSION] = LINK_VERSION;
  Atomics.store(ctrl, C_MAGIC, LINK_MAGIC);
  return {
    kind: 'hv-link',
    version: 1,
    control,
    toHost: new SharedArrayBuffer(queueSlots * HV_MESSAGE_SIZE),
    toGuest: new SharedArrayBuffer(queueSlots * HV_MESSAGE_SIZE),
    queueSlots,
    portCapacity,
  };
}

/** Throws unless `d` is a well-formed link descriptor whose buffers agree with its numbers. */
export function checkHvLinkDescriptor(d: HvLinkDescriptor): void {
  const fail = (why: string): never => {
    throw new TypeError(`not a valid HvLinkDescriptor: ${why}`);
  };
  if (d === null || typeof d !== 'object' || d.kind !== 'hv-link' || d.version !== 1) fail('kind/version');
  if (!(d.control instanceof SharedArrayBuffer)) fail('control is not a SharedArrayBuffer');
  if (!(d.toHost instanceof SharedArrayBuffer) || !(d.toGuest instanceof SharedArrayBuffer)) {
    fail('queues are not SharedArrayBuffers');
  }
  checkOptions(d.queueSlots, d.portCapacity);
  if (d.control.byteLength !== controlWords(d.portCapacity) * 4) fail('control size');
  if (d.toHost.byteLength !== d.queueSlots * HV_MESSAGE_SIZE) fail('toHost size');
  if (d.toGuest.byteLength !== d.queueSlots * HV_MESSAGE_SIZE) fail('toGuest size');
  const ctrl = new Int32Array(d.control);
  if (Atomics.load(ctrl, C_MAGIC) !== LINK_MAGIC || ctrl[C_VERSION] !== LINK_VERSION) fail('magic/version');
  if (ctrl[C_QUEUE_SLOTS] !== d.queueSlots || ctrl[C_PORT_CAPACITY] !== d.portCapacity) {
    fail('numbers disagree with the control block');
  }
}
