// Synthetic storage (Hyper-V synthetic SCSI, "vstor") protocol constants and the SCSI constants the
// target uses: operations, protocol versions, packet flags, SRB flags and statuses, the NTSTATUS
// values the host puts in completions (Linux drivers/scsi/storvsc_drv.c; OpenVMM
// storvsp_protocol), SCSI opcodes, status bytes, sense keys and additional sense codes (SPC / SBC).

import { Guid } from '../../wire/guid.js';

/** Synthetic SCSI controller class id (offer if_type). */
export const HV_SCSI_GUID = Guid.parse('ba6163d9-04a1-4d29-b605-72e2ffb1dc7f');
/** IDE accelerator class id. */
export const HV_IDE_GUID = Guid.parse('32412632-86cb-44a2-9b5c-50d1417354f5');

// ---------------------------------------------------------------------------------------------
// Protocol versions: u16 `major << 8 | minor`.

export function vmstorProtoVersion(major: number, minor: number): number {
  return ((major & 0xff) << 8) | (minor & 0xff);
}

export const VMSTOR_PROTO_VERSION_WIN6 = vmstorProtoVersion(2, 0);
export const VMSTOR_PROTO_VERSION_WIN7 = vmstorProtoVersion(4, 2);
export const VMSTOR_PROTO_VERSION_WIN8 = vmstorProtoVersion(5, 1);
export const VMSTOR_PROTO_VERSION_WIN8_1 = vmstorProtoVersion(6, 0);
export const VMSTOR_PROTO_VERSION_WIN10 = vmstorProtoVersion(6, 2);

/** Versions our host accepts (as Hyper-V / OpenVMM do). */
export const VSTOR_HOST_VERSIONS: readonly number[] = Object.freeze([
  VMSTOR_PROTO_VERSION_WIN6,
  VMSTOR_PROTO_VERSION_WIN7,
  VMSTOR_PROTO_VERSION_WIN8,
  VMSTOR_PROTO_VERSION_WIN8_1,
  VMSTOR_PROTO_VERSION_WIN10,
]);
/** What a Linux guest asks for, most preferred first. */
export const VSTOR_GUEST_VERSIONS: readonly number[] = Object.freeze([
  VMSTOR_PROTO_VERSION_WIN10,
  VMSTOR_PROTO_VERSION_WIN8_1,
  VMSTOR_PROTO_VERSION_WIN8,
]);

// ---------------------------------------------------------------------------------------------
// vstor_packet.operation.

export const VSTOR_OPERATION_COMPLETE_IO = 1;
export const VSTOR_OPERATION_REMOVE_DEVICE = 2;
export const VSTOR_OPERATION_EXECUTE_SRB = 3;
export const VSTOR_OPERATION_RESET_LUN = 4;
export const VSTOR_OPERATION_RESET_ADAPTER = 5;
export const VSTOR_OPERATION_RESET_BUS = 6;
export const VSTOR_OPERATION_BEGIN_INITIALIZATION = 7;
export const VSTOR_OPERATION_END_INITIALIZATION = 8;
export const VSTOR_OPERATION_QUERY_PROTOCOL_VERSION = 9;
export const VSTOR_OPERATION_QUERY_PROPERTIES = 10;
export const VSTOR_OPERATION_ENUMERATE_BUS = 11;
export const VSTOR_OPERATION_FCHBA_DATA = 12;
export const VSTOR_OPERATION_CREATE_SUB_CHANNELS = 13;
export const VSTOR_OPERATION_EVENT_NOTIFICATION = 14;

/** vstor_packet.flags: the sender wants a completion. */
export const REQUEST_COMPLETION_FLAG = 0x1;

/** vmstorage_channel_properties.flags. */
export const STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL = 0x1;
/** Offer-time channel property flags. */
export const STORAGE_CHANNEL_REMOVABLE_FLAG = 0x1;
export const STORAGE_CHANNEL_EMULATED_IDE_FLAG = 0x2;

// ---------------------------------------------------------------------------------------------
// vmscsi_request fields.

/** data_in (Linux enum storvsc_request_type). */
export const WRITE_TYPE = 0;
export const READ_TYPE = 1;
export const UNKNOWN_TYPE = 2;

export const SRB_FLAGS_QUEUE_ACTION_ENABLE = 0x00000002;
export const SRB_FLAGS_DISABLE_DISCONNECT = 0x00000004;
export const SRB_FLAGS_DISABLE_SYNCH_TRANSFER = 0x00000008;
export const SRB_FLAGS_BYPASS_FROZEN_QUEUE = 0x00000010;
export const SRB_FLAGS_DISABLE_AUTOSENSE = 0x00000020;
export const SRB_FLAGS_DATA_IN = 0x00000040;
export const SRB_FLAGS_DATA_OUT = 0x00000080;
export const SRB_FLAGS_NO_DATA_TRANSFER = 0x00000000;
export const SRB_FLAGS_NO_QUEUE_FREEZE = 0x00000100;

export const SP_UNTAGGED = 0xff;
export const SRB_SIMPLE_TAG_REQUEST = 0x20;

/** srb_status flag bits and codes. */
export const SRB_STATUS_AUTOSENSE_VALID = 0x80;
export const SRB_STATUS_QUEUE_FROZEN = 0x40;
export const SRB_STATUS_PENDING = 0x00;
export const SRB_STATUS_SUCCESS = 0x01;
export const SRB_STATUS_ABORTED = 0x02;
export const SRB_STATUS_ERROR = 0x04;
export const SRB_STATUS_BUSY = 0x05;
export const SRB_STATUS_INVALID_REQUEST = 0x06;
export const SRB_STATUS_NO_DEVICE = 0x08;
export const SRB_STATUS_TIMEOUT = 0x09;
export const SRB_STATUS_SELECTION_TIMEOUT = 0x0a;
export const SRB_STATUS_BUS_RESET = 0x0e;
export const SRB_STATUS_DATA_OVERRUN = 0x12;
export const SRB_STATUS_INVALID_LUN = 0x20;
export const SRB_STATUS_INVALID_TARGET_ID = 0x21;
export const SRB_STATUS_INTERNAL_ERROR = 0x30;

/** The integer code of an srb_status byte (flags masked off). */
export function srbStatusCode(srbStatus: number): number {
  return srbStatus & ~(SRB_STATUS_AUTOSENSE_VALID | SRB_STATUS_QUEUE_FROZEN) & 0xff;
}

/**
 * NTSTATUS values in vstor_packet.status, as unsigned u32s. Kept in one object so they cannot clash
 * with the KMCL's own NTSTATUS exports.
 */
export const VstorNtStatus = Object.freeze({
  STATUS_SUCCESS: 0x00000000,
  STATUS_BUFFER_OVERFLOW: 0x80000005,
  STATUS_DEVICE_BUSY: 0x80000011,
  STATUS_UNSUCCESSFUL: 0xc0000001,
  STATUS_INVALID_PARAMETER: 0xc000000d,
  STATUS_INVALID_DEVICE_REQUEST: 0xc0000010,
  STATUS_REVISION_MISMATCH: 0xc0000059,
  STATUS_DEVICE_NOT_CONNECTED: 0xc000009d,
  STATUS_IO_TIMEOUT: 0xc00000b5,
  STATUS_DEVICE_DOES_NOT_EXIST: 0xc00000c0,
  STATUS_CANCELLED: 0xc0000120,
  STATUS_INVALID_DEVICE_STATE: 0xc0000184,
  STATUS_IO_DEVICE_ERROR: 0xc0000185,
});

/** The completion status for an SRB outcome (OpenVMM storvsp's mapping). */
export function srbStatusToNtStatus(srbStatus: number): number {
  switch (srbStatusCode(srbStatus)) {
    case SRB_STATUS_SUCCESS:
      return VstorNtStatus.STATUS_SUCCESS;
    case SRB_STATUS_BUSY:
      return VstorNtStatus.STATUS_DEVICE_BUSY;
    case SRB_STATUS_INVALID_LUN:
    case SRB_STATUS_INVALID_TARGET_ID:
    case SRB_STATUS_NO_DEVICE:
      return VstorNtStatus.STATUS_DEVICE_DOES_NOT_EXIST;
    case SRB_STATUS_TIMEOUT:
      return VstorNtStatus.STATUS_IO_TIMEOUT;
    case SRB_STATUS_SELECTION_TIMEOUT:
      return VstorNtStatus.STATUS_DEVICE_NOT_CONNECTED;
    case SRB_STATUS_DATA_OVERRUN:
      return VstorNtStatus.STATUS_BUFFER_OVERFLOW;
    case SRB_STATUS_ABORTED:
      return VstorNtStatus.STATUS_CANCELLED;
    default:
      return VstorNtStatus.STATUS_IO_DEVICE_ERROR;
  }
}

// ---------------------------------------------------------------------------------------------
// SCSI.

export const SCSIOP_TEST_UNIT_READY = 0x00;
export const SCSIOP_REQUEST_SENSE = 0x03;
export const SCSIOP_INQUIRY = 0x12;
export const SCSIOP_MODE_SENSE = 0x1a;
export const SCSIOP_READ_CAPACITY = 0x25;
export const SCSIOP_READ = 0x28;
export const SCSIOP_WRITE = 0x2a;
export const SCSIOP_SYNCHRONIZE_CACHE = 0x35;
export const SCSIOP_READ16 = 0x88;
export const SCSIOP_WRITE16 = 0x8a;
export const SCSIOP_SERVICE_ACTION_IN16 = 0x9e;
export const SCSIOP_REPORT_LUNS = 0xa0;
/** SERVICE ACTION IN(16) service action for READ CAPACITY(16). */
export const SERVICE_ACTION_READ_CAPACITY16 = 0x10;

/** SCSI status byte. */
export const SAM_STAT_GOOD = 0x00;
export const SAM_STAT_CHECK_CONDITION = 0x02;
export const SAM_STAT_BUSY = 0x08;

export const SENSE_KEY_NO_SENSE = 0x00;
export const SENSE_KEY_NOT_READY = 0x02;
export const SENSE_KEY_MEDIUM_ERROR = 0x03;
export const SENSE_KEY_HARDWARE_ERROR = 0x04;
export const SENSE_KEY_ILLEGAL_REQUEST = 0x05;
export const SENSE_KEY_UNIT_ATTENTION = 0x06;
export const SENSE_KEY_DATA_PROTECT = 0x07;

export const ASC_WRITE_ERROR = 0x0c;
export const ASC_UNRECOVERED_READ_ERROR = 0x11;
export const ASC_INVALID_COMMAND_OPERATION_CODE = 0x20;
export const ASC_LBA_OUT_OF_RANGE = 0x21;
export const ASC_INVALID_FIELD_IN_CDB = 0x24;
export const ASC_LOGICAL_UNIT_NOT_SUPPORTED = 0x25;
export const ASC_WRITE_PROTECTED = 0x27;

/** Fixed-format sense data length (response code 0x70, additional length 10). */
export const FIXED_SENSE_LENGTH = 18;
/** Standard INQUIRY data length. */
export const STANDARD_INQUIRY_LENGTH = 36;
