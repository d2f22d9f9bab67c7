// Host side of synthetic storage as a pure state machine (after OpenVMM's storvsp): BEGIN_INIT ->
// QUERY_PROTOCOL_VERSION (until one is accepted; REVISION_MISMATCH otherwise) -> QUERY_PROPERTIES
// -> [CREATE_SUB_CHANNELS] -> END_INITIALIZATION -> EXECUTE_SRB / RESET_* / CREATE_SUB_CHANNELS.
// Every incoming packet gets one COMPLETE_IO completion written into the caller's buffer, sized
// like the request (12 + min(its union bytes, 0x34), as Hyper-V does: Windows guests insist on it);
// out-of-order packets answer STATUS_INVALID_DEVICE_STATE, malformed ones STATUS_INVALID_PARAMETER or
// STATUS_INVALID_DEVICE_REQUEST with the WireError reported beside. SRBs run on the ScsiTarget with
// the request's data buffer (later: the GPA-direct packet's external data through the KMCL), so
// several requests may be in flight at the channel level; each is answered when handled. Nothing
// is allocated per packet on the success path.

import { WireError } from '../../wire/errors.js';
import {
  SRB_STATUS_INVALID_REQUEST,
  STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL,
  srbStatusToNtStatus,
  UNKNOWN_TYPE,
  VMSTOR_PROTO_VERSION_WIN8,
  VSTOR_HOST_VERSIONS,
  VSTOR_OPERATION_BEGIN_INITIALIZATION,
  VSTOR_OPERATION_COMPLETE_IO,
  VSTOR_OPERATION_CREATE_SUB_CHANNELS,
  VSTOR_OPERATION_END_INITIALIZATION,
  VSTOR_OPERATION_EVENT_NOTIFICATION,
  VSTOR_OPERATION_EXECUTE_SRB,
  VSTOR_OPERATION_QUERY_PROPERTIES,
  VSTOR_OPERATION_QUERY_PROTOCOL_VERSION,
  VSTOR_OPERATION_RESET_ADAPTER,
  VSTOR_OPERATION_RESET_BUS,
  VSTOR_OPERATION_RESET_LUN,
  VstorNtStatus,
} from './constants.js';
import { newScsiCommand, type ScsiDataBuffer, type ScsiResult, type ScsiTarget } from './scsi.js';
import {
  copySmall,
  decodeVstorPacket,
  encodeVstorPacket,
  newVmscsiRequest,
  readProtocolVersion,
  readSubChannelCount,
  readVmscsiRequest,
  STORVSC_MAX_CMD_LEN,
  STORVSC_SENSE_BUFFER_SIZE,
  VMSCSI_REQUEST_SIZE,
  VMSCSI_REQUEST_SIZE_PRE_WIN8,
  VSTOR_PACKET_HEADER_SIZE,
  VSTOR_PACKET_SIZE,
  VstorPacket,
  writeChannelProperties,
  writeProtocolVersion,
  writeVmscsiRequest,
} from './vstor.js';

export type StorageVspState = 'begin' | 'query-version' | 'query-properties' | 'end-init' | 'ready';

const STORAGE_VSP_STATES: readonly StorageVspState[] = [
  'begin',
  'query-version',
  'query-properties',
  'end-init',
  'ready',
];

/** Where a StorageVsp stands in the protocol, as plain data (servicing). */
export interface StorageVspProtocolState {
  state: StorageVspState;
  version: number;
  subChannelCount: number;
}

export interface StorageVspOptions {
  target: ScsiTarget;
  /** The SCSI path / target this controller serves; other addresses see no LUNs. Default 0 / 0. */
  pathId?: number;
  targetId?: number;
  /** Reported in QUERY_PROPERTIES. Default 0x40000 (256 KiB, OpenVMM's value). */
  maxTransferBytes?: number;
  /** Sub-channels the guest may ask for (Win8+ only). Default 0: no multi-channel. */
  maxSubChannels?: number;
  /** Protocol versions accepted. Default VSTOR_HOST_VERSIONS. */
  versions?: readonly number[];
  /** Asked before agreeing to create sub-channels; false refuses. */
  onCreateSubChannels?: (count: number) => boolean;
}

export interface StorageVspResult {
  /** Length of the completion written to `out` (every packet is answered). */
  length: number;
  /** vstor_packet.status of the completion. */
  status: number;
  /** The packet was malformed in this way (it was still answered). */
  error: WireError | null;
  /** For EXECUTE_SRB that reached the target: its result (reused by the next SRB). */
  scsi: ScsiResult | null;
  /** What this packet changed: initialization finished, or sub-channels were granted. */
  event: 'none' | 'initialized' | 'sub-channels';
}

export class StorageVsp {
  state: StorageVspState = 'begin';
  /** The negotiated protocol version (0 before). */
  version = 0;
  /** Sub-channels granted. */
  subChannelCount = 0;
  readonly target: ScsiTarget;
  readonly pathId: number;
  readonly targetId: number;
  readonly maxTransferBytes: number;
  readonly maxSubChannels: number;
  readonly versions: readonly number[];
  private readonly onCreateSubChannels: ((count: number) => boolean) | undefined;
  private readonly inPkt = new VstorPacket();
  private readonly outPkt = new VstorPacket();
  private readonly srb = newVmscsiRequest();
  private readonly cmd = newScsiCommand();
  private readonly res: StorageVspResult = { length: 0, status: 0, error: null, scsi: null, event: 'none' };

  constructor(options: StorageVspOptions) {
    this.target = options.target;
    this.pathId = options.pathId ?? 0;
    this.targetId = options.targetId ?? 0;
    this.maxTransferBytes = options.maxTransferBytes ?? 0x40000;
    this.maxSubChannels = options.maxSubChannels ?? 0;
    this.versions = options.versions ?? VSTOR_HOST_VERSIONS;
    this.onCreateSubChannels = options.onCreateSubChannels;
  }

  /** Where the protocol stands (the configuration and the target are not part of it). */
  saveState(): StorageVspProtocolState {
    return { state: this.state, version: this.version, subChannelCount: this.subChannelCount };
  }

  /** Continues from saveState()'s data (a RangeError if it cannot be this controller's). */
  restoreState(s: StorageVspProtocolState): void {
    const negotiated = s.state !== 'begin' && s.state !== 'query-version';
    if (
      !STORAGE_VSP_STATES.includes(s.state) ||
      !Number.isInteger(s.version) ||
      (negotiated ? !this.versions.includes(s.version) : s.version !== 0) ||
      !Number.isInteger(s.subChannelCount) ||
      s.subChannelCount < 0 ||
      s.subChannelCount > this.maxSubChannels
    ) {
      throw new RangeError('storage VSP: not a saved protocol state of this controller');
    }
    this.state = s.state;
    this.version = s.version;
    this.subChannelCount = s.subChannelCount;
  }

  private get multiChannel(): boolean {
    return this.maxSubChannels > 0 && this.version >= VMSTOR_PROTO_VERSION_WIN8;
  }

  /**
   * Handles one packet from the guest (`packet[0, length)`; for EXECUTE_SRB, `data` is its data
   * buffer) and writes the completion into `out` (at least 64 bytes). The result object is reused.
   */
  handlePacket(
    packet: Uint8Array,
    data: ScsiDataBuffer | null,
    out: Uint8Array,
    length = packet.length,
  ): StorageVspResult {
    if (out.length < VSTOR_PACKET_SIZE) throw new RangeError('completion buffer shorter than 64 bytes');
    const res = this.res;
    res.error = null;
    res.scsi = null;
    res.event = 'none';
    const r = this.outPkt.clear();
    r.operation = VSTOR_OPERATION_COMPLETE_IO;
    if (Math.min(length, packet.length) < VSTOR_PACKET_HEADER_SIZE) {
      return this.finish(
        out,
        VstorNtStatus.STATUS_INVALID_PARAMETER,
        0,
        new WireError('truncated', 'vstor_packet', `needs 12 bytes, got ${Math.min(length, packet.length)}`),
      );
    }
    const p = decodeVstorPacket(packet, this.inPkt, length);
    const size = p.payloadLength;
    const op = p.operation;
    if (op === 0 || op === VSTOR_OPERATION_COMPLETE_IO || op > VSTOR_OPERATION_EVENT_NOTIFICATION) {
      return this.finish(
        out,
        VstorNtStatus.STATUS_INVALID_DEVICE_REQUEST,
        size,
        new WireError('unknown-type', 'vstor_packet.operation', `operation ${op} is not a request`),
      );
    }
    switch (this.state) {
      case 'begin':
        if (op !== VSTOR_OPERATION_BEGIN_INITIALIZATION) break;
        this.state = 'query-version';
        return this.finish(out, VstorNtStatus.STATUS_SUCCESS, size);
      case 'query-version': {
        if (op !== VSTOR_OPERATION_QUERY_PROTOCOL_VERSION) break;
        if (size < 2) return this.truncated(out, size, 'vmstorage_protocol_version');
        const v = readProtocolVersion(p.payload);
        writeProtocolVersion(v, r.payload);
        if (!this.versions.includes(v)) return this.finish(out, VstorNtStatus.STATUS_REVISION_MISMATCH, size);
        this.version = v;
        this.state = 'query-properties';
        return this.finish(out, VstorNtStatus.STATUS_SUCCESS, size);
      }
      case 'query-properties':
        if (op !== VSTOR_OPERATION_QUERY_PROPERTIES) break;
        writeChannelProperties(
          {
            maxChannelCount: this.multiChannel ? this.maxSubChannels : 0,
            flags: this.multiChannel ? STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL : 0,
            maxTransferBytes: this.maxTransferBytes,
          },
          r.payload,
        );
        this.state = 'end-init';
        return this.finish(out, VstorNtStatus.STATUS_SUCCESS, size);
      case 'end-init':
        if (op === VSTOR_OPERATION_CREATE_SUB_CHANNELS && this.subChannelCount === 0) {
          return this.createSubChannels(out, size);
        }
        if (op !== VSTOR_OPERATION_END_INITIALIZATION) break;
        this.state = 'ready';
        res.event = 'initialized';
        return this.finish(out, VstorNtStatus.STATUS_SUCCESS, size);
      case 'ready':
        switch (op) {
          case VSTOR_OPERATION_EXECUTE_SRB:
            return this.executeSrb(out, size, data);
          case VSTOR_OPERATION_RESET_LUN:
          case VSTOR_OPERATION_RESET_ADAPTER:
          case VSTOR_OPERATION_RESET_BUS:
            return this.finish(out, VstorNtStatus.STATUS_SUCCESS, size);
          case VSTOR_OPERATION_CREATE_SUB_CHANNELS:
            return this.createSubChannels(out, size);
        }
        break;
    }
    return this.finish(out, VstorNtStatus.STATUS_INVALID_DEVICE_STATE, size);
  }

  private finish(
    out: Uint8Array,
    status: number,
    payloadSize: number,
    error: WireError | null = null,
  ): StorageVspResult {
    const res = this.res;
    this.outPkt.status = status;
    res.status = status;
    res.error = error;
    res.length = encodeVstorPacket(this.outPkt, out, VSTOR_PACKET_HEADER_SIZE + payloadSize);
    return res;
  }

  private truncated(out: Uint8Array, size: number, field: string): StorageVspResult {
    this.outPkt.payload.fill(0);
    return this.finish(
      out,
      VstorNtStatus.STATUS_INVALID_PARAMETER,
      size,
      new WireError('truncated', field, `the packet carries ${size} union bytes`),
    );
  }

  private createSubChannels(out: Uint8Array, size: number): StorageVspResult {
    if (size < 2) return this.truncated(out, size, 'vstor_packet.sub_channel_count');
    const count = readSubChannelCount(this.inPkt.payload);
    const ok =
      this.multiChannel &&
      count >= 1 &&
      count <= this.maxSubChannels &&
      (this.onCreateSubChannels === undefined || this.onCreateSubChannels(count));
    if (!ok) return this.finish(out, VstorNtStatus.STATUS_INVALID_PARAMETER, size);
    this.subChannelCount = count;
    this.res.event = 'sub-channels';
    return this.finish(out, VstorNtStatus.STATUS_SUCCESS, size);
  }

  private executeSrb(out: Uint8Array, size: number, data: ScsiDataBuffer | null): StorageVspResult {
    if (size < VMSCSI_REQUEST_SIZE_PRE_WIN8) return this.truncated(out, size, 'vmscsi_request');
    const srb = readVmscsiRequest(this.inPkt.payload, this.srb);
    const dtl = srb.dataTransferLength;
    const transportOk =
      srb.cdbLength >= 1 &&
      srb.cdbLength <= STORVSC_MAX_CMD_LEN &&
      srb.dataIn <= UNKNOWN_TYPE &&
      (dtl === 0 || (data !== null && data.length >= dtl));
    const resp = this.srb;
    if (!transportOk) {
      resp.cdb.fill(0);
      this.fillCompletion(SRB_STATUS_INVALID_REQUEST, 0, 0);
      return this.finish(out, VstorNtStatus.STATUS_INVALID_PARAMETER, size);
    }
    const cmd = this.cmd;
    copySmall(srb.cdb, 0, cmd.cdb, 0, STORVSC_MAX_CMD_LEN);
    cmd.cdbLength = srb.cdbLength;
    cmd.dataIn = srb.dataIn;
    cmd.dataTransferLength = dtl;
    cmd.lun = srb.pathId === this.pathId && srb.targetId === this.targetId ? srb.lun : -1;
    const result = this.target.execute(cmd, data);
    resp.cdb.fill(0);
    copySmall(result.sense, 0, resp.cdb, 0, result.senseLength);
    this.fillCompletion(result.srbStatus, result.scsiStatus, result.transferred);
    this.res.scsi = result;
    return this.finish(out, srbStatusToNtStatus(result.srbStatus), size);
  }

  /** The completion's vmscsi_request (OpenVMM's shape): sizes, statuses, sense in the cdb union. */
  private fillCompletion(srbStatus: number, scsiStatus: number, transferred: number): void {
    const s = this.srb;
    s.length = VMSCSI_REQUEST_SIZE;
    s.srbStatus = srbStatus;
    s.scsiStatus = scsiStatus;
    s.portNumber = 0;
    s.pathId = 0;
    s.targetId = 0;
    s.lun = 0;
    s.cdbLength = STORVSC_MAX_CMD_LEN;
    s.senseInfoLength = STORVSC_SENSE_BUFFER_SIZE;
    s.dataIn = 0;
    s.reserved = 0;
    s.dataTransferLength = transferred;
    s.reserve = 0;
    s.queueTag = 0;
    s.queueAction = 0;
    s.srbFlags = 0;
    s.timeOutValue = 0;
    s.queueSortKey = 0;
    writeVmscsiRequest(s, this.outPkt.payload);
  }
}
