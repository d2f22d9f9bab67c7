// Public API of the KMCL layer: the Windows VMBus Kernel Mode Client Library for both endpoint
// roles. Get a provider for a partition (KmclProvider.forHost / forGuest over a KmclHostBus /
// KmclGuestBus), query it for KMCL_CLIENT_INTERFACE_V1 or KMCL_SERVER_INTERFACE_V1, and drive
// channels and packets through the table's documented functions. The loopback port is the
// same-thread test double of the bus; port.ts documents what any bus must provide.

export type {
  EvtVmbChannelClosed,
  EvtVmbChannelOpened,
  EvtVmbChannelPnpFailure,
  EvtVmbChannelPostStarted,
  EvtVmbChannelProcessingComplete,
  EvtVmbChannelProcessPacket,
  EvtVmbChannelRestorePacket,
  EvtVmbChannelSavePacket,
  EvtVmbChannelStarted,
  EvtVmbChannelSuspend,
  KmclChannelInfo,
  SyncRequestResult,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS,
  VMBCHANNEL,
  VmbusKernelHandle,
  VmbusUserHandle,
} from './channel.js';
export * from './constants.js';
export {
  currentExecutionContext,
  type ExecutionContext,
  runInContext,
} from './context.js';
export {
  type KmclContractCode,
  KmclContractViolation,
  KmclPeerError,
  type KmclPeerErrorCode,
} from './errors.js';
export {
  type INTERFACE,
  KMCL_CLIENT_FUNCTION_NAMES,
  type KMCL_CLIENT_INTERFACE_V1,
  type KMCL_SERVER_INTERFACE_V1,
  KMCL_SERVER_ONLY_FUNCTION_NAMES,
  type KMCL_SERVER_ONLY_METHODS,
  KmclProvider,
  type KmclProviderOptions,
  kmclChannelInfo,
  kmclTestHooks,
  type QueryInterfaceResult,
  queryInterface,
  VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT,
} from './interface.js';
export {
  LoopbackHost,
  type LoopbackHostOptions,
  LoopbackPartition,
  type LoopbackPartitionOptions,
  LoopbackScheduler,
  type LoopbackSchedulerOptions,
} from './loopback-port.js';
export * from './ntstatus.js';
export type {
  EvtVmbPacketCompletionRoutine,
  VMBPACKET,
  VMBPACKETCOMPLETION,
  VmbPacketHandle,
} from './packet.js';
export type * from './port.js';
export {
  CHUNK_HEADER_SIZE,
  type ChannelSavedState,
  SAVED_STATE_VERSION,
  SavedStateError,
} from './saved-state.js';
