// The simulated hypervisor pieces VMBus stands on: SynIC message delivery and event signalling
// between a host and its guest partitions, with a same-thread and a cross-thread transport.

export {
  HvEnd,
  type HvEndOptions,
  type HvEndStats,
  type HvErrorHandler,
  type HvEventHandler,
  HvGuestEnd,
  HvHostEnd,
  type HvHostEndOptions,
  type HvHostEndSavedState,
  HvMessage,
  type HvMessageHandler,
} from './end.js';
export {
  attachGuestPartition,
  type CreatePartitionOptions,
  type GuestPartition,
  HostPartition,
  type HvPartitionDescriptor,
  type HvTransport,
  Hypervisor,
  type HypervisorOptions,
} from './hypervisor.js';
export {
  checkHvLinkDescriptor,
  createHvLinkDescriptor,
  HV_CONNECTION_ID_MAX,
  HV_DEFAULT_PORT_CAPACITY,
  HV_DEFAULT_QUEUE_SLOTS,
  HV_EVENT_FLAGS_COUNT,
  HV_MESSAGE_PAYLOAD_BYTE_COUNT,
  HV_MESSAGE_SIZE,
  HV_SYNIC_SINT_COUNT,
  type HvLinkDescriptor,
  type HvLinkOptions,
} from './layout.js';
export {
  attachHvGuest,
  attachHvHost,
  createSameThreadLink,
  type HvPartitionLink,
  pairSameThread,
  type SameThreadLinkOptions,
} from './link.js';
export { type HvSchedulable, HvScheduler, type HvSchedulerOptions } from './scheduler.js';
export * from './status.js';
