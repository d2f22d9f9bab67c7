// Integration-component (IC) protocol constants: message types, header flags, status codes, the
// service class GUIDs, and the framework / service version lists Linux's hv_utils offers and
// accepts (Linux include/linux/hyperv.h, include/uapi/linux/hyperv.h, drivers/hv/hv_util.c,
// drivers/hv/hv_kvp.c; host-side lists as OpenVMM's hyperv_ic offers them).

import { Guid } from '../../wire/guid.js';

// ---------------------------------------------------------------------------------------------
// Message types (icmsg_hdr.icmsgtype).

export const ICMSGTYPE_NEGOTIATE = 0;
export const ICMSGTYPE_HEARTBEAT = 1;
export const ICMSGTYPE_KVPEXCHANGE = 2;
export const ICMSGTYPE_SHUTDOWN = 3;
export const ICMSGTYPE_TIMESYNC = 4;
export const ICMSGTYPE_VSS = 5;
export const ICMSGTYPE_FCOPY = 7;

// ---------------------------------------------------------------------------------------------
// Header flags (icmsg_hdr.icflags).

export const ICMSGHDRFLAG_TRANSACTION = 1;
export const ICMSGHDRFLAG_REQUEST = 2;
export const ICMSGHDRFLAG_RESPONSE = 4;

// ---------------------------------------------------------------------------------------------
// Status codes (icmsg_hdr.status), HRESULT-style.

export const HV_S_OK = 0x00000000;
export const HV_E_FAIL = 0x80004005;
/** HRESULT_FROM_WIN32(ERROR_NO_MORE_ITEMS): KVP "no such key" / end of an enumeration. */
export const HV_S_CONT = 0x80070103;
export const HV_ERROR_NOT_SUPPORTED = 0x80070032;
export const HV_ERROR_MACHINE_LOCKED = 0x800704f7;
export const HV_ERROR_DEVICE_NOT_CONNECTED = 0x8007048f;
export const HV_INVALIDARG = 0x80070057;
export const HV_GUID_NOTFOUND = 0x80041002;
export const HV_ERROR_ALREADY_EXISTS = 0x80070050;
export const HV_ERROR_DISK_FULL = 0x80070070;

// ---------------------------------------------------------------------------------------------
// Sizes.

/** `struct vmbuspipe_hdr {u32 flags; u32 msgsize}`. */
export const VMBUSPIPE_HDR_SIZE = 8;
/** `struct icmsg_hdr` (packed). */
export const ICMSG_HDR_SIZE = 20;
/** Linux `ICMSG_HDR`: the pipe header plus the IC header, where every service body starts. */
export const ICMSG_HDR = VMBUSPIPE_HDR_SIZE + ICMSG_HDR_SIZE;
/** `struct icmsg_negotiate` without its version array. */
export const ICMSG_NEGOTIATE_SIZE = 8;
/** `struct ic_version {u16 major; u16 minor}`. */
export const IC_VERSION_SIZE = 4;
/** Linux refuses negotiate messages with more versions than this in either list. */
export const IC_VERSION_NEGOTIATION_MAX_VER_COUNT = 100;
/** OpenVMM's largest IC message between host and guest. */
export const IC_MAX_MESSAGE_SIZE = 13312;

// ---------------------------------------------------------------------------------------------
// Versions. As in Linux, a version is the number `major << 16 | minor`; on the wire an ic_version
// is the two u16s major then minor.

export function icVersion(major: number, minor: number): number {
  return (((major & 0xffff) << 16) | (minor & 0xffff)) >>> 0;
}

/** `major.minor` of an IC version number. */
export function formatIcVersion(v: number): string {
  return `${v >>> 16}.${v & 0xffff}`;
}

export const UTIL_FW_VERSION = icVersion(3, 0);
export const UTIL_WS2K8_FW_VERSION = icVersion(1, 0);

export const HB_VERSION = icVersion(3, 0);
export const HB_VERSION_1 = icVersion(1, 0);

export const SD_VERSION_3_2 = icVersion(3, 2); // hibernate
export const SD_VERSION_3_1 = icVersion(3, 1); // restart
export const SD_VERSION = icVersion(3, 0);
export const SD_VERSION_1 = icVersion(1, 0);

export const TS_VERSION = icVersion(4, 0); // ictimesync_ref_data
export const TS_VERSION_3 = icVersion(3, 0);
export const TS_VERSION_1 = icVersion(1, 0);

export const KVP_WIN8_SRV_VERSION = icVersion(4, 0);
export const KVP_WIN7_SRV_VERSION = icVersion(3, 0);
export const KVP_WS2008_SRV_VERSION = icVersion(1, 0);

/** What a Linux guest accepts, most preferred first (hv_util.c `fw_versions`). */
export const GUEST_FW_VERSIONS: readonly number[] = Object.freeze([UTIL_FW_VERSION, UTIL_WS2K8_FW_VERSION]);
export const GUEST_HB_VERSIONS: readonly number[] = Object.freeze([HB_VERSION, HB_VERSION_1]);
export const GUEST_SD_VERSIONS: readonly number[] = Object.freeze([
  SD_VERSION_3_2,
  SD_VERSION_3_1,
  SD_VERSION,
  SD_VERSION_1,
]);
export const GUEST_TS_VERSIONS: readonly number[] = Object.freeze([TS_VERSION, TS_VERSION_3, TS_VERSION_1]);
export const GUEST_KVP_VERSIONS: readonly number[] = Object.freeze([
  KVP_WIN8_SRV_VERSION,
  KVP_WIN7_SRV_VERSION,
  KVP_WS2008_SRV_VERSION,
]);

/** What our host offers, oldest first as OpenVMM sends them: every version a Linux guest accepts. */
export const HOST_FW_VERSIONS: readonly number[] = Object.freeze([UTIL_WS2K8_FW_VERSION, UTIL_FW_VERSION]);
export const HOST_HB_VERSIONS: readonly number[] = Object.freeze([HB_VERSION_1, HB_VERSION]);
export const HOST_SD_VERSIONS: readonly number[] = Object.freeze([
  SD_VERSION_1,
  SD_VERSION,
  SD_VERSION_3_1,
  SD_VERSION_3_2,
]);
export const HOST_TS_VERSIONS: readonly number[] = Object.freeze([TS_VERSION_1, TS_VERSION_3, TS_VERSION]);
export const HOST_KVP_VERSIONS: readonly number[] = Object.freeze([
  KVP_WS2008_SRV_VERSION,
  KVP_WIN7_SRV_VERSION,
  KVP_WIN8_SRV_VERSION,
]);

// ---------------------------------------------------------------------------------------------
// Service class GUIDs (offer if_type), checked against Linux include/linux/hyperv.h.

export const HV_HEART_BEAT_GUID = Guid.parse('57164f39-9115-4e78-ab55-382f3bd5422d');
export const HV_SHUTDOWN_GUID = Guid.parse('0e0b6031-5213-4934-818b-38d90ced39db');
export const HV_TS_GUID = Guid.parse('9527e630-d0ae-497b-adce-e80ab0175caf');
export const HV_KVP_GUID = Guid.parse('a9a0f4e7-5a45-4d96-b827-8a841e8c03e6');
export const HV_VSS_GUID = Guid.parse('35fa2e29-ea23-4236-96ae-3a6ebacba440');

/** What a service is, for the generic machinery. */
export interface IcServiceInfo {
  readonly name: 'heartbeat' | 'shutdown' | 'timesync' | 'kvp';
  readonly classId: Guid;
  readonly messageType: number;
  readonly guestVersions: readonly number[];
  readonly hostVersions: readonly number[];
}

export const HEARTBEAT_SERVICE: IcServiceInfo = Object.freeze({
  name: 'heartbeat',
  classId: HV_HEART_BEAT_GUID,
  messageType: ICMSGTYPE_HEARTBEAT,
  guestVersions: GUEST_HB_VERSIONS,
  hostVersions: HOST_HB_VERSIONS,
});

export const SHUTDOWN_SERVICE: IcServiceInfo = Object.freeze({
  name: 'shutdown',
  classId: HV_SHUTDOWN_GUID,
  messageType: ICMSGTYPE_SHUTDOWN,
  guestVersions: GUEST_SD_VERSIONS,
  hostVersions: HOST_SD_VERSIONS,
});

export const TIMESYNC_SERVICE: IcServiceInfo = Object.freeze({
  name: 'timesync',
  classId: HV_TS_GUID,
  messageType: ICMSGTYPE_TIMESYNC,
  guestVersions: GUEST_TS_VERSIONS,
  hostVersions: HOST_TS_VERSIONS,
});

export const KVP_SERVICE: IcServiceInfo = Object.freeze({
  name: 'kvp',
  classId: HV_KVP_GUID,
  messageType: ICMSGTYPE_KVPEXCHANGE,
  guestVersions: GUEST_KVP_VERSIONS,
  hostVersions: HOST_KVP_VERSIONS,
});
