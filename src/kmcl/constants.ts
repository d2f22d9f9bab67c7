// The documented KMCL flags and constants (spec/kmcl-api.md 6.1-6.5) with their header values, the
// interface-query identities, and the limits and defaults this implementation had to choose.
//
// INVENTED VALUES. Microsoft does not publish the GUIDs of KMCL_CLIENT_INTERFACE_TYPE and
// KMCL_SERVER_INTERFACE_TYPE nor the numbers of the *_VERSION_* constants (spec 1.4, Q13). The
// values below were made up for this project, are stable, and mean nothing outside it. Likewise
// every DEFAULT_* below (spec Q11) is our own choice, as are the table sizes, which model the x64
// layout (a 32-byte WDM INTERFACE header followed by 8-byte function pointers).

import { Guid } from '../wire/guid.js';

// --- 6.1 Send / format flags (VmbPacketSend*, VmbChannelSendSynchronousRequest) ---
export const VMBUS_CHANNEL_FORMAT_FLAG_WAIT_FOR_COMPLETION = 0x1;
export const VMBUS_CHANNEL_FORMAT_FLAG_FORCE_MDL_LENGTH = 0x2;
export const VMBUS_CHANNEL_FORMAT_FLAG_PAGED_BUFFER = 0x4;
export const VMBUS_CHANNEL_FORMAT_FLAGS = 0x7;

// --- 6.2 GPADL flags ---
export const VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY = 0x1;
/** The name the create pages use for the same flag (spec 6.2: treated as one value). */
export const VMBUS_CHANNEL_GPADL_READ_ONLY = VMBUS_CHANNEL_GPADL_FLAG_READ_ONLY;
export const VMBUS_CHANNEL_GPADL_FLAGS = 0x1;

// --- 6.3 Channel init flags ---
export const VMBUS_CHANNEL_INIT_FLAG_IS_PIPE = 0x1;
export const VMBUS_CHANNEL_INIT_FLAGS = 0x1;
export const VMBUS_SERVER_CHANNEL_INIT_FLAG_LOOPBACK_OFFER = 0x1;
export const VMBUS_SERVER_CHANNEL_INIT_FLAG_ENUMERATE_DEVICE_INTERFACE = 0x2;
export const VMBUS_SERVER_CHANNEL_INIT_FLAG_OFFER_AS_PIPE = 0x4;
export const VMBUS_SERVER_CHANNEL_INIT_FLAG_FORCE_NEW_CHANNEL = 0x8;
export const VMBUS_SERVER_CHANNEL_INIT_FLAG_TLNPI_PROVIDER_OFFER = 0x10;
export const VMBUS_SERVER_CHANNEL_INIT_FLAGS = 0x1f;

// --- 6.4 Receive-side flags ---
export const VMBUS_CHANNEL_PROCESS_PACKET_FLAG_EXTERNAL_DATA = 0x1;
export const VMBUS_CHANNEL_PROCESS_PACKET_FLAGS = 0x1;
export const VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAG_READ_ONLY = 0x1;
export const VMBUS_CHANNEL_PACKET_EXTERNAL_DATA_FLAGS = 0x1;

// --- 6.5 Other constants ---
/** Most bytes of "extra data" an offer can carry. */
export const VMBUS_SERVER_CHANNEL_INIT_MAXIMUM_OFFER_DATA = 120;
/** VMB_CHANNEL_STATE_CHANGE_CALLBACKS.Version, as VMB_CHANNEL_STATE_CHANGE_CALLBACKS_INIT sets it. */
export const VMB_CHANNEL_STATE_CHANGE_CALLBACKS_VERSION = 1;
/** sizeof(VMB_CHANNEL_STATE_CHANGE_CALLBACKS) on x64: two ULONGs and five function pointers. */
export const VMB_CHANNEL_STATE_CHANGE_CALLBACKS_SIZE = 4 + 4 + 5 * 8;

// --- Interface query (spec 1.4). INVENTED values, see the module comment. ---
export const KMCL_CLIENT_INTERFACE_TYPE: Guid = Guid.parse('6b1f7e3a-2c4d-4f0e-9a51-4b4d434c0001');
export const KMCL_SERVER_INTERFACE_TYPE: Guid = Guid.parse('6b1f7e3a-2c4d-4f0e-9a51-4b4d434c0002');
export const KMCL_CLIENT_INTERFACE_VERSION_V1 = 1;
/** Only V1 is implemented, so "latest" is V1. */
export const KMCL_CLIENT_INTERFACE_VERSION_LATEST = KMCL_CLIENT_INTERFACE_VERSION_V1;
export const KMCL_SERVER_INTERFACE_VERSION_V1 = 1;
/** Bytes of the WDM INTERFACE header on x64 (USHORT Size, USHORT Version, pad, Context, 2 pointers). */
export const WDM_INTERFACE_HEADER_SIZE = 32;
/** Number of functions in KMCL_CLIENT_INTERFACE_V1 (spec 4.1, table C). */
export const KMCL_CLIENT_FUNCTION_COUNT = 41;
/** Number of functions in KMCL_SERVER_ONLY_METHODS (spec 4.1, table S). */
export const KMCL_SERVER_ONLY_FUNCTION_COUNT = 14;
/** sizeof(KMCL_CLIENT_INTERFACE_V1) as modelled here. */
export const KMCL_CLIENT_INTERFACE_V1_SIZE = WDM_INTERFACE_HEADER_SIZE + KMCL_CLIENT_FUNCTION_COUNT * 8;
/** sizeof(KMCL_SERVER_INTERFACE_V1): the client table followed by the server-only table. */
export const KMCL_SERVER_INTERFACE_V1_SIZE =
  KMCL_CLIENT_INTERFACE_V1_SIZE + KMCL_SERVER_ONLY_FUNCTION_COUNT * 8;

// --- Limits and defaults of this implementation (spec Q11, Q12). INVENTED. ---
/** Default VmbChannelInitSetMaximumPacketSize (largest inline payload). */
export const DEFAULT_MAXIMUM_PACKET_SIZE = 4096;
/** Default VmbChannelInitSetMaximumExternalData: total bytes ... */
export const DEFAULT_MAXIMUM_EXTERNAL_DATA = 256 * 1024;
/** ... and MDLs in one chain. */
export const DEFAULT_MAXIMUM_EXTERNAL_CHAIN_LENGTH = 8;
/** Default client ring sizes in pages (each includes its 4 KiB control page). */
export const DEFAULT_INCOMING_RING_PAGES = 16;
export const DEFAULT_OUTGOING_RING_PAGES = 16;
/** Smallest ring: a control page and one data page. */
export const MINIMUM_RING_PAGES = 2;
/**
 * Most pages one GPADL can describe: GPADL_HEADER.range_buflen is a u16, so 8 bytes of range
 * header plus 8 bytes per PFN must stay within 65535. The client's two rings share one GPADL.
 */
export const MAXIMUM_GPADL_PAGES = 8190;
/** Default incoming transaction quota (outstanding delivered, not yet completed packets). */
export const DEFAULT_TRANSACTION_QUOTA = 1024;
/** Highest VmbServerChannelInitSetTargetVtl value accepted (VTL 0, 1 and 2, spec Q12). */
export const MAXIMUM_TARGET_VTL = 2;
/** Longest friendly name (a UNICODE_STRING's byte length is a u16). */
export const MAXIMUM_FRIENDLY_NAME_LENGTH = 32767;
/** Bytes a packet object needs besides its staging area (reported by VmbChannelSizeofPacket). */
export const PACKET_OBJECT_OVERHEAD = 64;
