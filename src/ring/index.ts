// Public API of the ring layer: one Hyper-V ring buffer in guest memory (memory backing, writer,
// reader, typed errors).

export { RingError, type RingErrorCode } from './errors.js';
export {
  type ChannelRings,
  CONTROL_FEATURE_BITS,
  CONTROL_INTERRUPT_MASK,
  CONTROL_PENDING_SEND_SZ,
  CONTROL_READ_INDEX,
  CONTROL_WRITE_INDEX,
  channelRingsFromGpadl,
  MAX_RING_DATA_SIZE,
  RING_CONTROL_SIZE,
  RING_FEATURE_PENDING_SEND_SZ,
  type RingControlSnapshot,
  type RingInitOptions,
  RingMemory,
} from './memory.js';
export { RingPacket, RingReader, type RingReaderOptions, type WakeupRule } from './reader.js';
export {
  type PendingSendSizing,
  RING_WRITE_FULL,
  RING_WRITE_OK,
  RING_WRITE_TOO_LARGE,
  type RingWriteResult,
  RingWriter,
  type RingWriterOptions,
} from './writer.js';
