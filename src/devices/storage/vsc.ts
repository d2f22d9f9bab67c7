// Guest side of synthetic storage, as Linux storvsc speaks it: the initialization sequence as a
// pure state machine (BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION for each version in preference
// order until the host says 0, QUERY_PROPERTIES, END_INITIALIZATION; every completion must be
// COMPLETE_IO with status 0 and at least a whole packet long), the EXECUTE_SRB request builder
// (Linux storvsc_queuecommand / storvsc_do_io field for field), and the completion parser
// (storvsc_on_io_completion's clamping of sense length and transfer length).

import { WireError } from '../../wire/errors.js';
import {
  READ_TYPE,
  REQUEST_COMPLETION_FLAG,
  SAM_STAT_CHECK_CONDITION,
  SP_UNTAGGED,
  SRB_FLAGS_DATA_IN,
  SRB_FLAGS_DATA_OUT,
  SRB_FLAGS_DISABLE_SYNCH_TRANSFER,
  SRB_FLAGS_NO_DATA_TRANSFER,
  SRB_FLAGS_NO_QUEUE_FREEZE,
  SRB_FLAGS_QUEUE_ACTION_ENABLE,
  SRB_SIMPLE_TAG_REQUEST,
  SRB_STATUS_AUTOSENSE_VALID,
  SRB_STATUS_DATA_OVERRUN,
  SRB_STATUS_SUCCESS,
  UNKNOWN_TYPE,
  VSTOR_GUEST_VERSIONS,
  VSTOR_OPERATION_BEGIN_INITIALIZATION,
  VSTOR_OPERATION_COMPLETE_IO,
  VSTOR_OPERATION_CREATE_SUB_CHANNELS,
  VSTOR_OPERATION_END_INITIALIZATION,
  VSTOR_OPERATION_EXECUTE_SRB,
  VSTOR_OPERATION_QUERY_PROPERTIES,
  VSTOR_OPERATION_QUERY_PROTOCOL_VERSION,
  WRITE_TYPE,
} from './constants.js';
import {
  copySmall,
  decodeVstorPacket,
  encodeVstorPacket,
  newVmscsiRequest,
  readChannelProperties,
  readVmscsiRequest,
  STORVSC_MAX_CMD_LEN,
  STORVSC_SENSE_BUFFER_SIZE,
  VMSCSI_REQUEST_SIZE,
  VSTOR_PACKET_SIZE,
  type VstorChannelProperties,
  VstorPacket,
  writeProtocolVersion,
  writeSubChannelCount,
  writeVmscsiRequest,
} from './vstor.js';

export type StorageVscState =
  | 'idle'
  | 'begin'
  | 'query-version'
  | 'query-properties'
  | 'end-init'
  | 'ready'
  | 'failed';

export interface StorageVscStep {
  /** Length of the next packet written to `out`; 0 when nothing is to be sent. */
  length: number;
  state: StorageVscState;
  /** Why initialization failed (state 'failed'). */
  reason: string | null;
}

export interface StorageVscOptions {
  /** Versions to ask for, most preferred first. Default: Linux's (Win10, Win8.1, Win8). */
  versions?: readonly number[];
}

/** The guest's initialization handshake. Send `start()`'s packet, then feed each completion. */
export class StorageVscInit {
  state: StorageVscState = 'idle';
  /** The version the host accepted (0 until then). */
  version = 0;
  properties: VstorChannelProperties | null = null;
  readonly versions: readonly number[];
  private next = 0;
  private readonly pkt = new VstorPacket();
  private readonly step: StorageVscStep = { length: 0, state: 'idle', reason: null };

  constructor(options: StorageVscOptions = {}) {
    this.versions = options.versions ?? VSTOR_GUEST_VERSIONS;
    if (this.versions.length === 0) throw new Error('StorageVscInit: no versions to ask for');
  }

  /** The BEGIN_INITIALIZATION packet (64 bytes into `out`). */
  start(out: Uint8Array): number {
    if (this.state !== 'idle') throw new Error(`StorageVscInit: start() in state ${this.state}`);
    this.state = 'begin';
    return this.send(out, VSTOR_OPERATION_BEGIN_INITIALIZATION);
  }

  private send(out: Uint8Array, operation: number, version = -1): number {
    const p = this.pkt.clear();
    p.operation = operation;
    p.flags = REQUEST_COMPLETION_FLAG;
    if (version >= 0) writeProtocolVersion(version, p.payload);
    return encodeVstorPacket(p, out, VSTOR_PACKET_SIZE);
  }

  private result(length: number, reason: string | null = null): StorageVscStep {
    const s = this.step;
    s.length = length;
    s.state = this.state;
    s.reason = reason;
    return s;
  }

  private fail(reason: string): StorageVscStep {
    this.state = 'failed';
    return this.result(0, reason);
  }

  /**
   * Handles the completion of the packet last sent; writes the next packet (if any) into `out`.
   * A completion shorter than a packet is a WireError (Linux drops it).
   */
  handleCompletion(packet: Uint8Array, out: Uint8Array, length = packet.length): StorageVscStep {
    const n = Math.min(length, packet.length);
    if (n < VSTOR_PACKET_SIZE) {
      throw new WireError(
        'truncated',
        'vstor_packet',
        `completion of ${n} bytes, needs ${VSTOR_PACKET_SIZE}`,
      );
    }
    const p = decodeVstorPacket(packet, this.pkt, n);
    const done = p.operation === VSTOR_OPERATION_COMPLETE_IO;
    switch (this.state) {
      case 'begin':
        if (!done || p.status !== 0)
          return this.fail(`BEGIN_INITIALIZATION failed (status 0x${p.status.toString(16)})`);
        this.state = 'query-version';
        this.next = 0;
        return this.result(this.send(out, VSTOR_OPERATION_QUERY_PROTOCOL_VERSION, this.versions[0]!));
      case 'query-version':
        if (!done) return this.fail('QUERY_PROTOCOL_VERSION answered with another operation');
        if (p.status === 0) {
          this.version = this.versions[this.next]!;
          this.state = 'query-properties';
          return this.result(this.send(out, VSTOR_OPERATION_QUERY_PROPERTIES));
        }
        this.next++;
        if (this.next >= this.versions.length)
          return this.fail('the host accepts none of our protocol versions');
        return this.result(this.send(out, VSTOR_OPERATION_QUERY_PROTOCOL_VERSION, this.versions[this.next]!));
      case 'query-properties':
        if (!done || p.status !== 0)
          return this.fail(`QUERY_PROPERTIES failed (status 0x${p.status.toString(16)})`);
        this.properties = readChannelProperties(p.payload);
        this.state = 'end-init';
        return this.result(this.send(out, VSTOR_OPERATION_END_INITIALIZATION));
      case 'end-init':
        if (!done || p.status !== 0)
          return this.fail(`END_INITIALIZATION failed (status 0x${p.status.toString(16)})`);
        this.state = 'ready';
        return this.result(0);
      default:
        throw new Error(`StorageVscInit: no packet outstanding in state ${this.state}`);
    }
  }
}

/** A CREATE_SUB_CHANNELS request (64 bytes into `out`). */
export function buildCreateSubChannels(out: Uint8Array, count: number): number {
  const p = scratchPacket.clear();
  p.operation = VSTOR_OPERATION_CREATE_SUB_CHANNELS;
  p.flags = REQUEST_COMPLETION_FLAG;
  writeSubChannelCount(count, p.payload);
  return encodeVstorPacket(p, out, VSTOR_PACKET_SIZE);
}

// ---------------------------------------------------------------------------------------------
// SCSI requests.

export interface ScsiRequestSpec {
  /** The CDB (its first cdbLength bytes are sent). */
  cdb: Uint8Array;
  cdbLength?: number;
  lun?: number;
  targetId?: number;
  pathId?: number;
  portNumber?: number;
  /** WRITE_TYPE (data to the device), READ_TYPE (data from it) or UNKNOWN_TYPE (none). */
  dataIn: number;
  /** The data buffer's length (the GPA-direct range's byte count). */
  dataTransferLength: number;
  /** Tagged queueing, as Linux sets for devices that support it. Default true. */
  tagged?: boolean;
}

const scratchPacket = new VstorPacket();
const scratchSrb = newVmscsiRequest();

/** An EXECUTE_SRB packet, field for field as Linux builds it. Returns its length (`packetSize`). */
export function buildExecuteSrb(
  out: Uint8Array,
  spec: ScsiRequestSpec,
  packetSize = VSTOR_PACKET_SIZE,
): number {
  const cdbLength = spec.cdbLength ?? spec.cdb.length;
  if (cdbLength < 1 || cdbLength > STORVSC_MAX_CMD_LEN || cdbLength > spec.cdb.length) {
    throw new RangeError(`CDB length ${cdbLength} not in [1, 16]`);
  }
  if (spec.dataIn !== WRITE_TYPE && spec.dataIn !== READ_TYPE && spec.dataIn !== UNKNOWN_TYPE) {
    throw new RangeError(`bad data direction ${spec.dataIn}`);
  }
  const s = scratchSrb;
  s.length = VMSCSI_REQUEST_SIZE;
  s.srbStatus = 0;
  s.scsiStatus = 0;
  s.portNumber = spec.portNumber ?? 0;
  s.pathId = spec.pathId ?? 0;
  s.targetId = spec.targetId ?? 0;
  s.lun = spec.lun ?? 0;
  s.cdbLength = cdbLength;
  s.senseInfoLength = STORVSC_SENSE_BUFFER_SIZE;
  s.dataIn = spec.dataIn;
  s.reserved = 0;
  s.dataTransferLength = spec.dataTransferLength;
  s.cdb.fill(0);
  copySmall(spec.cdb, 0, s.cdb, 0, cdbLength);
  s.reserve = 0;
  s.timeOutValue = 60;
  s.queueSortKey = 0;
  let flags = SRB_FLAGS_DISABLE_SYNCH_TRANSFER;
  if (spec.tagged ?? true) {
    flags |= SRB_FLAGS_QUEUE_ACTION_ENABLE | SRB_FLAGS_NO_QUEUE_FREEZE;
    s.queueTag = SP_UNTAGGED;
    s.queueAction = SRB_SIMPLE_TAG_REQUEST;
  } else {
    s.queueTag = 0;
    s.queueAction = 0;
  }
  flags |=
    spec.dataIn === WRITE_TYPE
      ? SRB_FLAGS_DATA_OUT
      : spec.dataIn === READ_TYPE
        ? SRB_FLAGS_DATA_IN
        : SRB_FLAGS_NO_DATA_TRANSFER;
  s.srbFlags = flags;
  const p = scratchPacket.clear();
  p.operation = VSTOR_OPERATION_EXECUTE_SRB;
  p.flags = REQUEST_COMPLETION_FLAG;
  writeVmscsiRequest(s, p.payload);
  return encodeVstorPacket(p, out, packetSize);
}

export interface ScsiCompletion {
  /** vstor_packet.status. */
  status: number;
  srbStatus: number;
  scsiStatus: number;
  /** Bytes the host moved, clamped to the request's buffer; 0 after an error (not DATA_OVERRUN). */
  dataTransferLength: number;
  /** Sense bytes valid in `sense` (CHECK CONDITION with autosense only), at most 20. */
  senseLength: number;
  readonly sense: Uint8Array;
}

export function newScsiCompletion(): ScsiCompletion {
  return {
    status: 0,
    srbStatus: 0,
    scsiStatus: 0,
    dataTransferLength: 0,
    senseLength: 0,
    sense: new Uint8Array(STORVSC_SENSE_BUFFER_SIZE),
  };
}

/**
 * Parses the completion of an EXECUTE_SRB whose buffer was `requestedLength` bytes. Shorter than
 * `minSize` (a whole packet, as Linux requires) or not COMPLETE_IO is a WireError.
 */
export function parseScsiCompletion(
  packet: Uint8Array,
  requestedLength: number,
  out: ScsiCompletion,
  length = packet.length,
  minSize = VSTOR_PACKET_SIZE,
): ScsiCompletion {
  const n = Math.min(length, packet.length);
  if (n < minSize)
    throw new WireError('truncated', 'vstor_packet', `completion of ${n} bytes, needs ${minSize}`);
  const p = decodeVstorPacket(packet, scratchPacket, n);
  if (p.operation !== VSTOR_OPERATION_COMPLETE_IO) {
    throw new WireError(
      'inconsistent',
      'vstor_packet.operation',
      `operation ${p.operation} is not COMPLETE_IO`,
    );
  }
  const s = readVmscsiRequest(p.payload, scratchSrb);
  out.status = p.status;
  out.srbStatus = s.srbStatus;
  out.scsiStatus = s.scsiStatus;
  let dtl = s.dataTransferLength;
  if (s.srbStatus !== SRB_STATUS_SUCCESS && s.srbStatus !== SRB_STATUS_DATA_OVERRUN) dtl = 0;
  out.dataTransferLength = Math.min(dtl, requestedLength);
  out.sense.fill(0);
  if (s.scsiStatus === SAM_STAT_CHECK_CONDITION && (s.srbStatus & SRB_STATUS_AUTOSENSE_VALID) !== 0) {
    out.senseLength = Math.min(s.senseInfoLength, STORVSC_SENSE_BUFFER_SIZE);
    copySmall(s.cdb, 0, out.sense, 0, out.senseLength);
  } else {
    out.senseLength = 0;
  }
  return out;
}
