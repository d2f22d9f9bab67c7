// The memory layer's public surface: guest RAM, the guest's page allocator, MDLs and PFN arrays,
// and the host's checked view of guest memory.

export { type AllocationMode, PageAllocator, type PageAllocatorOptions } from './allocator.js';
export {
  DEFAULT_GUEST_MEMORY_BYTES,
  GuestMemory,
  gpaToPfn,
  MemoryAccessError,
  type MemoryErrorCode,
  PAGE_MASK,
  PAGE_SHIFT,
  PAGE_SIZE,
  pfnToGpa,
  spanPages,
} from './guest-memory.js';
export {
  type AccessKind,
  GrantedMdl,
  type GrantOptions,
  HostMemoryView,
  MemoryGrant,
} from './host-view.js';
export {
  chainMdls,
  checkMdlShape,
  copyPageRuns,
  forEachMdl,
  type Mdl,
  mdlChainByteCount,
  mdlChainLength,
  mdlChainPfns,
  mdlFromGpaRange,
  mdlFromPfns,
  mdlRead,
  mdlSlice,
  mdlWrite,
  pfnArrayRead,
  pfnArrayWrite,
  validateMdl,
} from './mdl.js';
