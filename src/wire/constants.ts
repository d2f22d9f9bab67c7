// Protocol constants shared by every layer: page geometry, protocol versions, connection ids,
// channel-message type numbers, offer and feature flags (spec/vmbus-wire.md sections 3.2-3.5).

/** Guest page size on the wire: always 4 KiB, whatever the guest's own page size. */
export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;

// ---------------------------------------------------------------------------------------------
// Protocol versions (spec 3.5). A version is `major << 16 | minor`.

export const VERSION_WS2008 = 0x0000000d; // 0.13
export const VERSION_WIN7 = 0x00010001; // 1.1
export const VERSION_WIN8 = 0x00020004; // 2.4
export const VERSION_WIN8_1 = 0x00030000; // 3.0
export const VERSION_WIN10 = 0x00040000; // 4.0
export const VERSION_WIN10_V4_1 = 0x00040001;
export const VERSION_WIN10_V5 = 0x00050000;
export const VERSION_WIN10_V5_1 = 0x00050001;
export const VERSION_WIN10_V5_2 = 0x00050002;
export const VERSION_WIN10_V5_3 = 0x00050003; // WS2022, OVMM "Iron"
/** 6.0, OVMM "Copper" (the Linux 6.0 patch calls it VERSION_WIN_COPPER). */
export const VERSION_WIN10_V6_0 = 0x00060000;

export interface VmbusVersionInfo {
  /** The u32 on the wire. */
  readonly value: number;
  /** Linux `VERSION_*` name. */
  readonly linuxName: string;
  /** OpenVMM `Version` variant. */
  readonly ovmmName: string;
  /** `major.minor`, e.g. "5.3". */
  readonly display: string;
}

function versionInfo(value: number, linuxName: string, ovmmName: string): VmbusVersionInfo {
  return Object.freeze({ value, linuxName, ovmmName, display: formatVersion(value) });
}

/** The 11 versions an OpenVMM server accepts, oldest first. */
export const VMBUS_VERSIONS: readonly VmbusVersionInfo[] = Object.freeze([
  versionInfo(VERSION_WS2008, 'VERSION_WS2008', 'V1'),
  versionInfo(VERSION_WIN7, 'VERSION_WIN7', 'Win7'),
  versionInfo(VERSION_WIN8, 'VERSION_WIN8', 'Win8'),
  versionInfo(VERSION_WIN8_1, 'VERSION_WIN8_1', 'Win8_1'),
  versionInfo(VERSION_WIN10, 'VERSION_WIN10', 'Win10'),
  versionInfo(VERSION_WIN10_V4_1, 'VERSION_WIN10_V4_1', 'Win10Rs3_0'),
  versionInfo(VERSION_WIN10_V5, 'VERSION_WIN10_V5', 'Win10Rs3_1'),
  versionInfo(VERSION_WIN10_V5_1, 'VERSION_WIN10_V5_1', 'Win10Rs4'),
  versionInfo(VERSION_WIN10_V5_2, 'VERSION_WIN10_V5_2', 'Win10Rs5'),
  versionInfo(VERSION_WIN10_V5_3, 'VERSION_WIN10_V5_3', 'Iron'),
  versionInfo(VERSION_WIN10_V6_0, 'VERSION_WIN10_V6_0', 'Copper'),
]);

/** `major.minor` of a version number (any u32, known or not). */
export function formatVersion(version: number): string {
  const v = version >>> 0;
  return `${v >>> 16}.${v & 0xffff}`;
}

/** The table entry for a known version, or undefined. */
export function findVersion(version: number): VmbusVersionInfo | undefined {
  return VMBUS_VERSIONS.find((v) => v.value === version >>> 0);
}

/** True if version `a` is `b` or newer (versions compare as unsigned u32: major, then minor). */
export function versionAtLeast(a: number, b: number): boolean {
  return a >>> 0 >= b >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Transport (spec 3.1, 3.2).

/** Message port for protocol < 5.0, and the port a >= 5.0 server usually hands back. */
export const VMBUS_MESSAGE_CONNECTION_ID = 1;
/** Legacy shared event (interrupt page) connection id. */
export const VMBUS_EVENT_CONNECTION_ID = 2;
/** Legacy monitor connection id. */
export const VMBUS_MONITOR_CONNECTION_ID = 3;
/** INITIATE_CONTACT port for protocol >= 5.0 ("multiclient"). */
export const VMBUS_MESSAGE_CONNECTION_ID_4 = 4;
/** SynIC SINT that carries VMBus messages. */
export const VMBUS_MESSAGE_SINT = 2;
/** Hypervisor message type of VMBus messages (OVMM `VMBUS_MESSAGE_TYPE`, QEMU `HV_MESSAGE_VMBUS`). */
export const VMBUS_MESSAGE_TYPE = 1;
export const HV_MESSAGE_VMBUS = VMBUS_MESSAGE_TYPE;
/** Largest channel message, 8-byte header included (`HV_MESSAGE_PAYLOAD_BYTE_COUNT`). */
export const MAX_SIZE_CHANNEL_MESSAGE = 240;
/** `vmbus_channel_message_header`: u32 msgtype, u32 padding. */
export const CHANNEL_MESSAGE_HEADER_SIZE = 8;

// ---------------------------------------------------------------------------------------------
// Channel message types (spec 3.3). 18-20 and 25-29 carry OpenVMM's names in Linux style.

export const CHANNELMSG_INVALID = 0;
export const CHANNELMSG_OFFERCHANNEL = 1;
export const CHANNELMSG_RESCIND_CHANNELOFFER = 2;
export const CHANNELMSG_REQUESTOFFERS = 3;
export const CHANNELMSG_ALLOFFERS_DELIVERED = 4;
export const CHANNELMSG_OPENCHANNEL = 5;
export const CHANNELMSG_OPENCHANNEL_RESULT = 6;
export const CHANNELMSG_CLOSECHANNEL = 7;
export const CHANNELMSG_GPADL_HEADER = 8;
export const CHANNELMSG_GPADL_BODY = 9;
export const CHANNELMSG_GPADL_CREATED = 10;
export const CHANNELMSG_GPADL_TEARDOWN = 11;
export const CHANNELMSG_GPADL_TORNDOWN = 12;
export const CHANNELMSG_RELID_RELEASED = 13;
export const CHANNELMSG_INITIATE_CONTACT = 14;
export const CHANNELMSG_VERSION_RESPONSE = 15;
export const CHANNELMSG_UNLOAD = 16;
export const CHANNELMSG_UNLOAD_RESPONSE = 17;
export const CHANNELMSG_OPEN_RESERVED_CHANNEL = 18;
export const CHANNELMSG_CLOSE_RESERVED_CHANNEL = 19;
export const CHANNELMSG_CLOSE_RESERVED_RESPONSE = 20;
export const CHANNELMSG_TL_CONNECT_REQUEST = 21;
export const CHANNELMSG_MODIFYCHANNEL = 22;
export const CHANNELMSG_TL_CONNECT_RESULT = 23;
export const CHANNELMSG_MODIFYCHANNEL_RESPONSE = 24;
export const CHANNELMSG_MODIFY_CONNECTION = 25;
export const CHANNELMSG_MODIFY_CONNECTION_RESPONSE = 26;
export const CHANNELMSG_PAUSE = 27;
export const CHANNELMSG_PAUSE_RESPONSE = 28;
export const CHANNELMSG_RESUME = 29;
/** One past the highest defined type. */
export const CHANNELMSG_COUNT = 30;

const CHANNEL_MESSAGE_NAMES: readonly string[] = Object.freeze([
  'CHANNELMSG_INVALID',
  'CHANNELMSG_OFFERCHANNEL',
  'CHANNELMSG_RESCIND_CHANNELOFFER',
  'CHANNELMSG_REQUESTOFFERS',
  'CHANNELMSG_ALLOFFERS_DELIVERED',
  'CHANNELMSG_OPENCHANNEL',
  'CHANNELMSG_OPENCHANNEL_RESULT',
  'CHANNELMSG_CLOSECHANNEL',
  'CHANNELMSG_GPADL_HEADER',
  'CHANNELMSG_GPADL_BODY',
  'CHANNELMSG_GPADL_CREATED',
  'CHANNELMSG_GPADL_TEARDOWN',
  'CHANNELMSG_GPADL_TORNDOWN',
  'CHANNELMSG_RELID_RELEASED',
  'CHANNELMSG_INITIATE_CONTACT',
  'CHANNELMSG_VERSION_RESPONSE',
  'CHANNELMSG_UNLOAD',
  'CHANNELMSG_UNLOAD_RESPONSE',
  'CHANNELMSG_OPEN_RESERVED_CHANNEL',
  'CHANNELMSG_CLOSE_RESERVED_CHANNEL',
  'CHANNELMSG_CLOSE_RESERVED_RESPONSE',
  'CHANNELMSG_TL_CONNECT_REQUEST',
  'CHANNELMSG_MODIFYCHANNEL',
  'CHANNELMSG_TL_CONNECT_RESULT',
  'CHANNELMSG_MODIFYCHANNEL_RESPONSE',
  'CHANNELMSG_MODIFY_CONNECTION',
  'CHANNELMSG_MODIFY_CONNECTION_RESPONSE',
  'CHANNELMSG_PAUSE',
  'CHANNELMSG_PAUSE_RESPONSE',
  'CHANNELMSG_RESUME',
]);

/** `CHANNELMSG_*` name of a message type, or undefined for numbers outside 0..29. */
export function channelMessageName(type: number): string | undefined {
  return Number.isInteger(type) && type >= 0 && type < CHANNELMSG_COUNT
    ? CHANNEL_MESSAGE_NAMES[type]
    : undefined;
}

/** Message type number of a `CHANNELMSG_*` name (the prefix may be omitted), or undefined. */
export function channelMessageType(name: string): number | undefined {
  const upper = name.toUpperCase();
  const full = upper.startsWith('CHANNELMSG_') ? upper : `CHANNELMSG_${upper}`;
  const i = CHANNEL_MESSAGE_NAMES.indexOf(full);
  return i < 0 ? undefined : i;
}

// ---------------------------------------------------------------------------------------------
// Per-type facts (spec 3.3, 3.4).

export type MessageDirection = 'host-to-guest' | 'guest-to-host' | 'none';

export interface ChannelMessageInfo {
  readonly type: number;
  readonly name: string;
  readonly direction: MessageDirection;
  /** Exact sizes (header included) of the message's forms, smallest first; for GPADL_HEADER and
   * GPADL_BODY the fixed part before the variable data. Empty for INVALID. */
  readonly sizes: readonly number[];
  /** Fewest bytes the message can have: `sizes[0]`. */
  readonly minSize: number;
  /** Linux's `min_payload_len` for messages it receives, undefined where Linux has no handler. */
  readonly linuxMinPayload: number | undefined;
  /** Lowest negotiated version for which OpenVMM parses it; undefined = any (even disconnected). */
  readonly minVersion: number | undefined;
  /** 6.0 feature flag that must also have been negotiated, 0 if none. */
  readonly featureFlag: number;
}

function info(
  type: number,
  direction: MessageDirection,
  sizes: number[],
  linuxMinPayload: number | undefined,
  minVersion: number | undefined,
  featureFlag = 0,
): ChannelMessageInfo {
  return Object.freeze({
    type,
    name: CHANNEL_MESSAGE_NAMES[type]!,
    direction,
    sizes: Object.freeze(sizes),
    minSize: sizes.length > 0 ? sizes[0]! : 0,
    linuxMinPayload,
    minVersion,
    featureFlag,
  });
}

// Feature flags (6.0), needed by the table below.

export const VMBUS_FEATURE_FLAG_GUEST_SPECIFIED_SIGNAL_PARAMETERS = 0x01;
export const VMBUS_FEATURE_FLAG_CHANNEL_INTERRUPT_REDIRECTION = 0x02;
export const VMBUS_FEATURE_FLAG_MODIFY_CONNECTION = 0x04;
export const VMBUS_FEATURE_FLAG_CLIENT_ID = 0x08;
export const VMBUS_FEATURE_FLAG_CONFIDENTIAL_CHANNELS = 0x10;
export const VMBUS_FEATURE_FLAG_PAUSE_RESUME = 0x20;
export const VMBUS_FEATURE_FLAG_SERVER_SPECIFIED_MONITOR_PAGES = 0x40;
export const VMBUS_FEATURE_FLAG_GPA_PINNING = 0x80;
/** Every feature flag defined by protocol 6.0. */
export const VMBUS_FEATURE_FLAGS_ALL = 0xff;

export const VMBUS_FEATURE_FLAG_NAMES: readonly (readonly [number, string])[] = Object.freeze([
  [VMBUS_FEATURE_FLAG_GUEST_SPECIFIED_SIGNAL_PARAMETERS, 'GUEST_SPECIFIED_SIGNAL_PARAMETERS'],
  [VMBUS_FEATURE_FLAG_CHANNEL_INTERRUPT_REDIRECTION, 'CHANNEL_INTERRUPT_REDIRECTION'],
  [VMBUS_FEATURE_FLAG_MODIFY_CONNECTION, 'MODIFY_CONNECTION'],
  [VMBUS_FEATURE_FLAG_CLIENT_ID, 'CLIENT_ID'],
  [VMBUS_FEATURE_FLAG_CONFIDENTIAL_CHANNELS, 'CONFIDENTIAL_CHANNELS'],
  [VMBUS_FEATURE_FLAG_PAUSE_RESUME, 'PAUSE_RESUME'],
  [VMBUS_FEATURE_FLAG_SERVER_SPECIFIED_MONITOR_PAGES, 'SERVER_SPECIFIED_MONITOR_PAGES'],
  [VMBUS_FEATURE_FLAG_GPA_PINNING, 'GPA_PINNING'],
] as const);

/** Facts about every message type, indexed by type number (0..29). */
export const CHANNEL_MESSAGE_INFO: readonly ChannelMessageInfo[] = Object.freeze([
  info(CHANNELMSG_INVALID, 'none', [], undefined, undefined),
  info(CHANNELMSG_OFFERCHANNEL, 'host-to-guest', [196], 196, VERSION_WS2008),
  info(CHANNELMSG_RESCIND_CHANNELOFFER, 'host-to-guest', [12], 12, VERSION_WS2008),
  info(CHANNELMSG_REQUESTOFFERS, 'guest-to-host', [8], undefined, VERSION_WS2008),
  info(CHANNELMSG_ALLOFFERS_DELIVERED, 'host-to-guest', [8], 0, VERSION_WS2008),
  info(CHANNELMSG_OPENCHANNEL, 'guest-to-host', [148, 156], undefined, VERSION_WS2008),
  info(CHANNELMSG_OPENCHANNEL_RESULT, 'host-to-guest', [20], 20, VERSION_WS2008),
  info(CHANNELMSG_CLOSECHANNEL, 'guest-to-host', [12], undefined, VERSION_WS2008),
  info(CHANNELMSG_GPADL_HEADER, 'guest-to-host', [20], undefined, VERSION_WS2008),
  info(CHANNELMSG_GPADL_BODY, 'guest-to-host', [16], undefined, VERSION_WS2008),
  info(CHANNELMSG_GPADL_CREATED, 'host-to-guest', [20], 20, VERSION_WS2008),
  info(CHANNELMSG_GPADL_TEARDOWN, 'guest-to-host', [16], undefined, VERSION_WS2008),
  info(CHANNELMSG_GPADL_TORNDOWN, 'host-to-guest', [12], 12, VERSION_WS2008),
  info(CHANNELMSG_RELID_RELEASED, 'guest-to-host', [12], undefined, VERSION_WS2008),
  info(CHANNELMSG_INITIATE_CONTACT, 'guest-to-host', [40, 56], undefined, undefined),
  info(CHANNELMSG_VERSION_RESPONSE, 'host-to-guest', [16, 20, 40], 16, undefined),
  info(CHANNELMSG_UNLOAD, 'guest-to-host', [8], undefined, VERSION_WS2008),
  info(CHANNELMSG_UNLOAD_RESPONSE, 'host-to-guest', [8], 0, VERSION_WIN7),
  info(CHANNELMSG_OPEN_RESERVED_CHANNEL, 'guest-to-host', [28], undefined, VERSION_WIN10),
  info(CHANNELMSG_CLOSE_RESERVED_CHANNEL, 'guest-to-host', [20], undefined, undefined),
  info(CHANNELMSG_CLOSE_RESERVED_RESPONSE, 'host-to-guest', [12], undefined, VERSION_WIN10),
  info(CHANNELMSG_TL_CONNECT_REQUEST, 'guest-to-host', [40, 56], undefined, VERSION_WIN10),
  info(CHANNELMSG_MODIFYCHANNEL, 'guest-to-host', [16], undefined, VERSION_WIN10_V4_1),
  info(CHANNELMSG_TL_CONNECT_RESULT, 'host-to-guest', [44], undefined, VERSION_WIN10_V4_1),
  info(CHANNELMSG_MODIFYCHANNEL_RESPONSE, 'host-to-guest', [16], 16, VERSION_WIN10_V5_3),
  info(
    CHANNELMSG_MODIFY_CONNECTION,
    'guest-to-host',
    [24],
    undefined,
    VERSION_WIN10_V6_0,
    VMBUS_FEATURE_FLAG_MODIFY_CONNECTION,
  ),
  info(
    CHANNELMSG_MODIFY_CONNECTION_RESPONSE,
    'host-to-guest',
    [9],
    undefined,
    VERSION_WIN10_V6_0,
    VMBUS_FEATURE_FLAG_MODIFY_CONNECTION,
  ),
  info(
    CHANNELMSG_PAUSE,
    'guest-to-host',
    [8],
    undefined,
    VERSION_WIN10_V6_0,
    VMBUS_FEATURE_FLAG_PAUSE_RESUME,
  ),
  info(
    CHANNELMSG_PAUSE_RESPONSE,
    'host-to-guest',
    [8],
    undefined,
    VERSION_WIN10_V6_0,
    VMBUS_FEATURE_FLAG_PAUSE_RESUME,
  ),
  info(
    CHANNELMSG_RESUME,
    'guest-to-host',
    [8],
    undefined,
    VERSION_WIN10_V6_0,
    VMBUS_FEATURE_FLAG_PAUSE_RESUME,
  ),
]);

/**
 * True if a message of `type` may be used on a connection that negotiated `version` (undefined =
 * not connected) with `featureFlags`, by OpenVMM's parse gate. Form-specific gates (OpenChannel2,
 * InitiateContact2, VersionResponse2/3, TlConnectRequest2) are the caller's business.
 */
export function messageAllowed(type: number, version: number | undefined, featureFlags = 0): boolean {
  const i = CHANNEL_MESSAGE_INFO[type];
  if (i === undefined || type === CHANNELMSG_INVALID) return false;
  if (i.minVersion === undefined) return true;
  if (version === undefined || !versionAtLeast(version, i.minVersion)) return false;
  return i.featureFlag === 0 || (featureFlags & i.featureFlag) !== 0;
}

// ---------------------------------------------------------------------------------------------
// Offer (spec 3.4).

export const VMBUS_CHANNEL_ENUMERATE_DEVICE_INTERFACE = 0x0001;
/** 0x2: was SERVER_SUPPORTS_TRANSFER_PAGES; since 6.0 the ring must be in confidential memory. */
export const VMBUS_CHANNEL_CONFIDENTIAL_RING_BUFFER = 0x0002;
/** 0x4: was SERVER_SUPPORTS_GPADLS; since 6.0 external memory must be confidential. */
export const VMBUS_CHANNEL_CONFIDENTIAL_EXTERNAL_MEMORY = 0x0004;
export const VMBUS_CHANNEL_SERVER_SUPPORTS_TRANSFER_PAGES = 0x0002;
export const VMBUS_CHANNEL_SERVER_SUPPORTS_GPADLS = 0x0004;
/** 0x8 (OpenVMM `require_pinned_external_memory`, needs feature GPA_PINNING). */
export const VMBUS_CHANNEL_REQUIRE_PINNED_EXTERNAL_MEMORY = 0x0008;
export const VMBUS_CHANNEL_NAMED_PIPE_MODE = 0x0010;
export const VMBUS_CHANNEL_LOOPBACK_OFFER = 0x0100;
export const VMBUS_CHANNEL_PARENT_OFFER = 0x0200;
export const VMBUS_CHANNEL_REQUEST_MONITORED_NOTIFICATION = 0x0400;
export const VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER = 0x2000;

export const VMBUS_CHANNEL_FLAG_NAMES: readonly (readonly [number, string])[] = Object.freeze([
  [VMBUS_CHANNEL_ENUMERATE_DEVICE_INTERFACE, 'ENUMERATE_DEVICE_INTERFACE'],
  [VMBUS_CHANNEL_CONFIDENTIAL_RING_BUFFER, 'CONFIDENTIAL_RING_BUFFER'],
  [VMBUS_CHANNEL_CONFIDENTIAL_EXTERNAL_MEMORY, 'CONFIDENTIAL_EXTERNAL_MEMORY'],
  [VMBUS_CHANNEL_REQUIRE_PINNED_EXTERNAL_MEMORY, 'REQUIRE_PINNED_EXTERNAL_MEMORY'],
  [VMBUS_CHANNEL_NAMED_PIPE_MODE, 'NAMED_PIPE_MODE'],
  [VMBUS_CHANNEL_LOOPBACK_OFFER, 'LOOPBACK_OFFER'],
  [VMBUS_CHANNEL_PARENT_OFFER, 'PARENT_OFFER'],
  [VMBUS_CHANNEL_REQUEST_MONITORED_NOTIFICATION, 'REQUEST_MONITORED_NOTIFICATION'],
  [VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER, 'TLNPI_PROVIDER_OFFER'],
] as const);

/** `pipe_mode` at the start of a pipe offer's user-defined area. */
export const VMBUS_PIPE_TYPE_BYTE = 0x00000000;
export const VMBUS_PIPE_TYPE_MESSAGE = 0x00000004;

/** Size of the offer's user-defined area and of OPENCHANNEL's user data. */
export const MAX_USER_DEFINED_BYTES = 120;
/** Bytes of a pipe offer's user-defined area after `pipe_mode` (Linux). */
export const MAX_PIPE_USER_DEFINED_BYTES = 116;
/** `monitorid` an OpenVMM host sends when the channel has no monitored notification. */
export const VMBUS_NO_MONITOR_ID = 0xff;
/** OPENCHANNEL `target_vp` meaning "interrupts disabled" (OVMM `VP_INDEX_DISABLE_INTERRUPT`). */
export const VMBUS_VP_INDEX_DISABLE_INTERRUPT = 0xffffffff;
/** OpenChannel2 `flags` bit 0. */
export const VMBUS_OPEN_FLAG_REDIRECT_INTERRUPT = 0x0001;

// ---------------------------------------------------------------------------------------------
// VERSION_RESPONSE / MODIFY_CONNECTION_RESPONSE connection_state.

export const VMBUS_CONNECTION_STATE_SUCCESSFUL = 0;
export const VMBUS_CONNECTION_STATE_FAILED_LOW_RESOURCES = 1;
export const VMBUS_CONNECTION_STATE_FAILED_UNKNOWN_FAILURE = 2;

// ---------------------------------------------------------------------------------------------
// GPADLs and status values.

/** First GPADL id Linux and FreeBSD hand out (`VMBUS_GPADL_START`). */
export const VMBUS_GPADL_START = 0xe1e10;

/** Status in OPENCHANNEL_RESULT / GPADL_CREATED / MODIFYCHANNEL_RESPONSE: success. */
export const VMBUS_STATUS_SUCCESS = 0;
/** The failure status OpenVMM sends (its `STATUS_UNSUCCESSFUL`; not NT's 0xC0000001). */
export const VMBUS_STATUS_UNSUCCESSFUL = 0x8000ffff;
/** TL_CONNECT_RESULT failure (NT `STATUS_CONNECTION_REFUSED`). */
export const VMBUS_STATUS_CONNECTION_REFUSED = 0xc0000236;
