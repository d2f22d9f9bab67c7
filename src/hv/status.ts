// Hypervisor status codes (HV_STATUS, a 16-bit value returned by every hypercall) and the typed
// error the simulated SynIC throws or rejects with. Values are the TLFS / Linux hyperv-tlfs.h ones.

export const HV_STATUS_SUCCESS = 0x0000;
export const HV_STATUS_INVALID_HYPERCALL_CODE = 0x0002;
export const HV_STATUS_INVALID_HYPERCALL_INPUT = 0x0003;
export const HV_STATUS_INVALID_ALIGNMENT = 0x0004;
export const HV_STATUS_INVALID_PARAMETER = 0x0005;
export const HV_STATUS_ACCESS_DENIED = 0x0006;
export const HV_STATUS_INVALID_PARTITION_STATE = 0x0007;
export const HV_STATUS_OPERATION_DENIED = 0x0008;
export const HV_STATUS_INSUFFICIENT_MEMORY = 0x000b;
export const HV_STATUS_INVALID_PARTITION_ID = 0x000d;
export const HV_STATUS_INVALID_PORT_ID = 0x0011;
export const HV_STATUS_INVALID_CONNECTION_ID = 0x0012;
export const HV_STATUS_INSUFFICIENT_BUFFERS = 0x0013;
export const HV_STATUS_INVALID_SYNIC_STATE = 0x0018;

/** A numeric HV_STATUS value. */
export type HvStatus = number;

const STATUS_NAMES: ReadonlyMap<number, string> = new Map([
  [HV_STATUS_SUCCESS, 'HV_STATUS_SUCCESS'],
  [HV_STATUS_INVALID_HYPERCALL_CODE, 'HV_STATUS_INVALID_HYPERCALL_CODE'],
  [HV_STATUS_INVALID_HYPERCALL_INPUT, 'HV_STATUS_INVALID_HYPERCALL_INPUT'],
  [HV_STATUS_INVALID_ALIGNMENT, 'HV_STATUS_INVALID_ALIGNMENT'],
  [HV_STATUS_INVALID_PARAMETER, 'HV_STATUS_INVALID_PARAMETER'],
  [HV_STATUS_ACCESS_DENIED, 'HV_STATUS_ACCESS_DENIED'],
  [HV_STATUS_INVALID_PARTITION_STATE, 'HV_STATUS_INVALID_PARTITION_STATE'],
  [HV_STATUS_OPERATION_DENIED, 'HV_STATUS_OPERATION_DENIED'],
  [HV_STATUS_INSUFFICIENT_MEMORY, 'HV_STATUS_INSUFFICIENT_MEMORY'],
  [HV_STATUS_INVALID_PARTITION_ID, 'HV_STATUS_INVALID_PARTITION_ID'],
  [HV_STATUS_INVALID_PORT_ID, 'HV_STATUS_INVALID_PORT_ID'],
  [HV_STATUS_INVALID_CONNECTION_ID, 'HV_STATUS_INVALID_CONNECTION_ID'],
  [HV_STATUS_INSUFFICIENT_BUFFERS, 'HV_STATUS_INSUFFICIENT_BUFFERS'],
  [HV_STATUS_INVALID_SYNIC_STATE, 'HV_STATUS_INVALID_SYNIC_STATE'],
]);

/** The documented name of a status value (`HV_STATUS_0x00xx` for one this module does not name). */
export function hvStatusName(status: HvStatus): string {
  return STATUS_NAMES.get(status) ?? `HV_STATUS_0x${status.toString(16).padStart(4, '0')}`;
}

/**
 * A refused hypercall-like operation: `status` is the HV_STATUS value, `code` its name
 * (`'HV_STATUS_INVALID_CONNECTION_ID'`, ...). A closed partition link reports
 * HV_STATUS_INVALID_PARTITION_STATE.
 */
export class HvError extends Error {
  override readonly name = 'HvError';
  readonly code: string;
  constructor(
    readonly status: HvStatus,
    message: string,
  ) {
    super(`${hvStatusName(status)}: ${message}`);
    this.code = hvStatusName(status);
  }
}
