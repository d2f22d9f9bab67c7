// Protocol constants shared by every layer: page geometry, protocol versions, connection ids,
// channel-message type numbers, offer and feature flags (spec/vmbus-wire.md sections 3.2-3.5).

/** Guest page size on the wire: always 4 KiB, whatever the guest's own page size. */
export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;
