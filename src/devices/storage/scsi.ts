// A pure SCSI target over disk backends: INQUIRY (standard data; VPD pages 0x00, 0x80, 0x83),
// TEST UNIT READY, REQUEST SENSE, READ CAPACITY(10)/(16), READ/WRITE(10)/(16), SYNCHRONIZE
// CACHE(10), REPORT LUNS. Bad requests end in CHECK CONDITION with fixed-format sense (ILLEGAL
// REQUEST: invalid opcode 0x20/00, LBA out of range 0x21/00, invalid field in CDB 0x24/00; DATA
// PROTECT 0x27/00 on read-only disks; MEDIUM ERROR when the backend fails). Data moves only through
// the request's ScsiDataBuffer callbacks (later: the external PFNs of a GPA-direct packet), so the
// target never touches guest memory, and it reaches the disk only inside the checked LBA range.
// Also the CDB builders and response parsers a guest driver uses. Big-endian, as SCSI is.

import {
  ASC_INVALID_COMMAND_OPERATION_CODE,
  ASC_INVALID_FIELD_IN_CDB,
  ASC_LBA_OUT_OF_RANGE,
  ASC_UNRECOVERED_READ_ERROR,
  ASC_WRITE_ERROR,
  ASC_WRITE_PROTECTED,
  FIXED_SENSE_LENGTH,
  READ_TYPE,
  SAM_STAT_CHECK_CONDITION,
  SAM_STAT_GOOD,
  SCSIOP_INQUIRY,
  SCSIOP_READ,
  SCSIOP_READ_CAPACITY,
  SCSIOP_READ16,
  SCSIOP_REPORT_LUNS,
  SCSIOP_REQUEST_SENSE,
  SCSIOP_SERVICE_ACTION_IN16,
  SCSIOP_SYNCHRONIZE_CACHE,
  SCSIOP_TEST_UNIT_READY,
  SCSIOP_WRITE,
  SCSIOP_WRITE16,
  SENSE_KEY_DATA_PROTECT,
  SENSE_KEY_ILLEGAL_REQUEST,
  SENSE_KEY_MEDIUM_ERROR,
  SERVICE_ACTION_READ_CAPACITY16,
  SRB_STATUS_AUTOSENSE_VALID,
  SRB_STATUS_ERROR,
  SRB_STATUS_INVALID_LUN,
  SRB_STATUS_INVALID_REQUEST,
  SRB_STATUS_SUCCESS,
  STANDARD_INQUIRY_LENGTH,
  WRITE_TYPE,
} from './constants.js';
import type { DiskBackend } from './disk.js';

// ---------------------------------------------------------------------------------------------
// Big-endian helpers.

export function readBe16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

export function readBe32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

export function writeBe16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

export function writeBe32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/** Writes a non-negative integer below 2^53 as a big-endian u64. */
export function writeBe64(b: Uint8Array, o: number, v: number): void {
  const hi = Math.floor(v / 0x100000000);
  writeBe32(b, o, hi);
  writeBe32(b, o + 4, v - hi * 0x100000000);
}

/** A big-endian u64 as a number, or -1 if it is 2^53 or more. */
export function readBe64(b: Uint8Array, o: number): number {
  const hi = readBe32(b, o);
  if (hi >= 0x200000) return -1;
  return hi * 0x100000000 + readBe32(b, o + 4);
}

// ---------------------------------------------------------------------------------------------
// The request's data buffer.

/**
 * The data buffer of one request, reached only through these callbacks. Offsets are inside
 * [0, length); a failing access (e.g. a PFN outside guest memory) throws, and the target turns
 * that into an error status.
 */
export interface ScsiDataBuffer {
  readonly length: number;
  /** Data-out: copies buffer bytes [offset, offset + n) into dest[destOffset..]. */
  read(offset: number, dest: Uint8Array, destOffset: number, n: number): void;
  /** Data-in: copies src[srcOffset, srcOffset + n) into the buffer at `offset`. */
  write(offset: number, src: Uint8Array, srcOffset: number, n: number): void;
}

/** A data buffer over a Uint8Array (tests; in-process callers). */
export class BytesDataBuffer implements ScsiDataBuffer {
  constructor(readonly bytes: Uint8Array) {}

  get length(): number {
    return this.bytes.length;
  }

  private check(offset: number, n: number): void {
    if (offset < 0 || n < 0 || offset + n > this.bytes.length)
      throw new RangeError('data buffer access out of range');
  }

  read(offset: number, dest: Uint8Array, destOffset: number, n: number): void {
    this.check(offset, n);
    dest.set(this.bytes.subarray(offset, offset + n), destOffset);
  }

  write(offset: number, src: Uint8Array, srcOffset: number, n: number): void {
    this.check(offset, n);
    this.bytes.set(src.subarray(srcOffset, srcOffset + n), offset);
  }
}

// ---------------------------------------------------------------------------------------------
// Commands and results.

/** One command as the target sees it (the VSP fills a reused instance). */
export interface ScsiCommand {
  /** Holds the CDB at [0, cdbLength). */
  readonly cdb: Uint8Array;
  cdbLength: number;
  /** The LUN, or -1 when the request names a path / target this controller does not serve. */
  lun: number;
  /** WRITE_TYPE (data-out), READ_TYPE (data-in) or UNKNOWN_TYPE (no data). */
  dataIn: number;
  /** The transfer length the initiator announced (vmscsi_request.data_transfer_length). */
  dataTransferLength: number;
}

export function newScsiCommand(): ScsiCommand {
  return { cdb: new Uint8Array(16), cdbLength: 0, lun: 0, dataIn: 0, dataTransferLength: 0 };
}

/** The outcome of one command (the target reuses one instance). */
export interface ScsiResult {
  scsiStatus: number;
  /** srb_status, with SRB_STATUS_AUTOSENSE_VALID when sense data is present. */
  srbStatus: number;
  /** Bytes moved through the data buffer. */
  transferred: number;
  /** 0 or FIXED_SENSE_LENGTH. */
  senseLength: number;
  readonly sense: Uint8Array;
  /** What made a data-buffer or backend access fail, if one did. */
  fault: unknown;
}

function newScsiResult(): ScsiResult {
  return {
    scsiStatus: SAM_STAT_GOOD,
    srbStatus: SRB_STATUS_SUCCESS,
    transferred: 0,
    senseLength: 0,
    sense: new Uint8Array(FIXED_SENSE_LENGTH),
    fault: null,
  };
}

/** Writes fixed-format sense data (response code 0x70) into `out` and returns its length. */
export function writeFixedSense(
  out: Uint8Array,
  offset: number,
  key: number,
  asc: number,
  ascq: number,
): number {
  out.fill(0, offset, offset + FIXED_SENSE_LENGTH);
  out[offset] = 0x70;
  out[offset + 2] = key & 0x0f;
  out[offset + 7] = FIXED_SENSE_LENGTH - 8;
  out[offset + 12] = asc;
  out[offset + 13] = ascq;
  return FIXED_SENSE_LENGTH;
}

export interface SenseInfo {
  key: number;
  asc: number;
  ascq: number;
}

/** Parses fixed (0x70/0x71) or descriptor (0x72/0x73) sense data; null if it is neither. */
export function parseSense(b: Uint8Array, length = b.length): SenseInfo | null {
  if (length < 1) return null;
  const code = b[0]! & 0x7f;
  if ((code === 0x70 || code === 0x71) && length >= 14) {
    return { key: b[2]! & 0x0f, asc: b[12]!, ascq: b[13]! };
  }
  if ((code === 0x72 || code === 0x73) && length >= 4) {
    return { key: b[1]! & 0x0f, asc: b[2]!, ascq: b[3]! };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// The target.

export interface ScsiTargetOptions {
  /** The disks by LUN (a single disk is LUN 0). */
  luns: ReadonlyMap<number, DiskBackend> | DiskBackend;
  /** INQUIRY vendor (8 ASCII chars, space padded). Default "Msft", as Hyper-V's disks. */
  vendor?: string;
  /** INQUIRY product (16). Default "Virtual Disk". */
  product?: string;
  /** INQUIRY revision (4). Default "1.0". */
  revision?: string;
  /** Serial number base for VPD 0x80 / 0x83 (the LUN is appended). Default "VMBUS". */
  serial?: string;
  /** Bounce buffer size for READ / WRITE, a multiple of every block size. Default 64 KiB. */
  chunkBytes?: number;
}

const VPD_SUPPORTED_PAGES = 0x00;
const VPD_SERIAL_NUMBER = 0x80;
const VPD_DEVICE_ID = 0x83;

function asciiField(out: Uint8Array, offset: number, text: string, width: number): void {
  for (let i = 0; i < width; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 0x20;
    out[offset + i] = c >= 0x20 && c < 0x7f ? c : 0x20;
  }
}

function isDiskBackend(x: ReadonlyMap<number, DiskBackend> | DiskBackend): x is DiskBackend {
  return typeof (x as DiskBackend).read === 'function' && typeof (x as DiskBackend).blockSize === 'number';
}

/** Serves SCSI commands for the LUNs of one controller path / target. */
export class ScsiTarget {
  private readonly luns: ReadonlyMap<number, DiskBackend>;
  readonly vendor: string;
  readonly product: string;
  readonly revision: string;
  readonly serial: string;
  private readonly scratch: Uint8Array;
  private readonly result: ScsiResult = newScsiResult();

  constructor(options: ScsiTargetOptions) {
    const l = options.luns;
    this.luns = isDiskBackend(l) ? new Map([[0, l]]) : l;
    for (const [lun, disk] of this.luns) {
      if (!Number.isInteger(lun) || lun < 0 || lun > 255) throw new RangeError(`LUN ${lun} out of range`);
      if ((options.chunkBytes ?? 65536) % disk.blockSize !== 0) {
        throw new RangeError('chunkBytes must be a multiple of every block size');
      }
    }
    this.vendor = options.vendor ?? 'Msft';
    this.product = options.product ?? 'Virtual Disk';
    this.revision = options.revision ?? '1.0';
    this.serial = options.serial ?? 'VMBUS';
    this.scratch = new Uint8Array(Math.max(options.chunkBytes ?? 65536, 4096));
  }

  /** The LUNs served, ascending. */
  lunList(): number[] {
    return [...this.luns.keys()].sort((a, b) => a - b);
  }

  disk(lun: number): DiskBackend | undefined {
    return this.luns.get(lun);
  }

  /**
   * Executes one command. `data` must cover dataTransferLength bytes when that is not 0. The
   * returned result object is reused by the next call.
   */
  execute(cmd: ScsiCommand, data: ScsiDataBuffer | null): ScsiResult {
    const r = this.result;
    r.scsiStatus = SAM_STAT_GOOD;
    r.srbStatus = SRB_STATUS_SUCCESS;
    r.transferred = 0;
    r.senseLength = 0;
    r.fault = null;
    const dtl = cmd.dataTransferLength;
    if (cmd.cdbLength < 1 || cmd.cdbLength > 16 || cmd.cdb.length < cmd.cdbLength) {
      return this.invalidRequest();
    }
    if (dtl > 0 && (data === null || data.length < dtl)) return this.invalidRequest();
    const op = cmd.cdb[0]!;
    if (cmd.cdbLength < cdbLengthFor(op)) return this.illegal(ASC_INVALID_FIELD_IN_CDB);
    const disk = cmd.lun < 0 ? undefined : this.luns.get(cmd.lun);
    if (disk === undefined) {
      if (op === SCSIOP_INQUIRY) return this.inquiry(cmd, data, null);
      if (op === SCSIOP_REPORT_LUNS) return this.reportLuns(cmd, data);
      r.scsiStatus = SAM_STAT_CHECK_CONDITION;
      r.srbStatus = SRB_STATUS_INVALID_LUN;
      return r;
    }
    switch (op) {
      case SCSIOP_TEST_UNIT_READY:
        return r;
      case SCSIOP_REQUEST_SENSE:
        return this.requestSense(cmd, data);
      case SCSIOP_INQUIRY:
        return this.inquiry(cmd, data, disk);
      case SCSIOP_READ_CAPACITY:
        return this.readCapacity10(cmd, data, disk);
      case SCSIOP_SERVICE_ACTION_IN16:
        if ((cmd.cdb[1]! & 0x1f) !== SERVICE_ACTION_READ_CAPACITY16)
          return this.illegal(ASC_INVALID_FIELD_IN_CDB);
        return this.readCapacity16(cmd, data, disk);
      case SCSIOP_READ:
        return this.readWrite(cmd, data, disk, readBe32(cmd.cdb, 2), readBe16(cmd.cdb, 7), false);
      case SCSIOP_WRITE:
        return this.readWrite(cmd, data, disk, readBe32(cmd.cdb, 2), readBe16(cmd.cdb, 7), true);
      case SCSIOP_READ16:
        return this.readWrite(cmd, data, disk, readBe64(cmd.cdb, 2), readBe32(cmd.cdb, 10), false);
      case SCSIOP_WRITE16:
        return this.readWrite(cmd, data, disk, readBe64(cmd.cdb, 2), readBe32(cmd.cdb, 10), true);
      case SCSIOP_SYNCHRONIZE_CACHE:
        try {
          disk.flush();
        } catch (e) {
          r.fault = e;
          return this.checkCondition(SRB_STATUS_ERROR, SENSE_KEY_MEDIUM_ERROR, ASC_WRITE_ERROR, 0);
        }
        return r;
      case SCSIOP_REPORT_LUNS:
        return this.reportLuns(cmd, data);
      default:
        return this.illegal(ASC_INVALID_COMMAND_OPERATION_CODE);
    }
  }

  // --- outcomes ------------------------------------------------------------------------------

  private checkCondition(srbStatus: number, key: number, asc: number, ascq: number): ScsiResult {
    const r = this.result;
    r.scsiStatus = SAM_STAT_CHECK_CONDITION;
    r.srbStatus = srbStatus | SRB_STATUS_AUTOSENSE_VALID;
    r.senseLength = writeFixedSense(r.sense, 0, key, asc, ascq);
    return r;
  }

  /** CHECK CONDITION, ILLEGAL REQUEST with `asc`/00. */
  private illegal(asc: number): ScsiResult {
    return this.checkCondition(SRB_STATUS_INVALID_REQUEST, SENSE_KEY_ILLEGAL_REQUEST, asc, 0);
  }

  /** A request the transport cannot carry out (bad CDB length, data buffer too small). */
  private invalidRequest(): ScsiResult {
    const r = this.result;
    r.scsiStatus = SAM_STAT_GOOD;
    r.srbStatus = SRB_STATUS_INVALID_REQUEST;
    return r;
  }

  /** The data buffer refused an access. */
  private dataFault(e: unknown): ScsiResult {
    const r = this.result;
    r.fault = e;
    r.scsiStatus = SAM_STAT_GOOD;
    r.srbStatus = SRB_STATUS_ERROR;
    r.transferred = 0;
    return r;
  }

  /** Moves `n` bytes of scratch to the start of the data buffer (data-in of a small response). */
  private deliver(cmd: ScsiCommand, data: ScsiDataBuffer | null, n: number): ScsiResult {
    if (cmd.dataTransferLength > 0 && cmd.dataIn !== READ_TYPE) return this.illegal(ASC_INVALID_FIELD_IN_CDB);
    const len = Math.min(n, cmd.dataTransferLength);
    if (len > 0) {
      try {
        data!.write(0, this.scratch, 0, len);
      } catch (e) {
        return this.dataFault(e);
      }
    }
    this.result.transferred = len;
    return this.result;
  }

  // --- commands ------------------------------------------------------------------------------

  private inquiry(cmd: ScsiCommand, data: ScsiDataBuffer | null, disk: DiskBackend | null): ScsiResult {
    const c = cmd.cdb;
    const evpd = (c[1]! & 0x01) !== 0;
    const page = c[2]!;
    const alloc = readBe16(c, 3);
    const s = this.scratch;
    let n: number;
    if (!evpd) {
      if (page !== 0) return this.illegal(ASC_INVALID_FIELD_IN_CDB);
      s.fill(0, 0, STANDARD_INQUIRY_LENGTH);
      s[0] = disk === null ? 0x7f : 0x00; // not present / direct-access block device
      s[2] = 0x05; // SPC-3
      s[3] = 0x02; // response data format 2
      s[4] = STANDARD_INQUIRY_LENGTH - 5;
      s[7] = 0x02; // CMDQUE
      if (disk !== null || cmd.lun === 0) {
        asciiField(s, 8, this.vendor, 8);
        asciiField(s, 16, this.product, 16);
        asciiField(s, 32, this.revision, 4);
      }
      n = STANDARD_INQUIRY_LENGTH;
    } else {
      if (disk === null) return this.illegal(ASC_INVALID_FIELD_IN_CDB);
      s[0] = 0x00;
      s[1] = page;
      s[2] = 0;
      const serial = `${this.serial}${cmd.lun.toString().padStart(4, '0')}`.slice(0, 200);
      switch (page) {
        case VPD_SUPPORTED_PAGES:
          s[3] = 3;
          s[4] = VPD_SUPPORTED_PAGES;
          s[5] = VPD_SERIAL_NUMBER;
          s[6] = VPD_DEVICE_ID;
          n = 7;
          break;
        case VPD_SERIAL_NUMBER:
          s[3] = serial.length;
          asciiField(s, 4, serial, serial.length);
          n = 4 + serial.length;
          break;
        case VPD_DEVICE_ID: {
          // One T10 vendor ID designator: code set ASCII, association LU, type 1.
          const idLen = 8 + serial.length;
          s[3] = 4 + idLen;
          s[4] = 0x02;
          s[5] = 0x01;
          s[6] = 0;
          s[7] = idLen;
          asciiField(s, 8, this.vendor, 8);
          asciiField(s, 16, serial, serial.length);
          n = 8 + idLen;
          break;
        }
        default:
          return this.illegal(ASC_INVALID_FIELD_IN_CDB);
      }
    }
    return this.deliver(cmd, data, Math.min(alloc, n));
  }

  private requestSense(cmd: ScsiCommand, data: ScsiDataBuffer | null): ScsiResult {
    // Every CHECK CONDITION here carries autosense, so nothing is ever pending: NO SENSE.
    if ((cmd.cdb[1]! & 0x01) !== 0) return this.illegal(ASC_INVALID_FIELD_IN_CDB); // descriptor format
    const n = writeFixedSense(this.scratch, 0, 0, 0, 0);
    return this.deliver(cmd, data, Math.min(cmd.cdb[4]!, n));
  }

  private readCapacity10(cmd: ScsiCommand, data: ScsiDataBuffer | null, disk: DiskBackend): ScsiResult {
    const last = disk.blockCount - 1;
    writeBe32(this.scratch, 0, Math.min(last, 0xffffffff));
    writeBe32(this.scratch, 4, disk.blockSize);
    return this.deliver(cmd, data, 8);
  }

  private readCapacity16(cmd: ScsiCommand, data: ScsiDataBuffer | null, disk: DiskBackend): ScsiResult {
    const alloc = readBe32(cmd.cdb, 10);
    const s = this.scratch;
    s.fill(0, 0, 32);
    writeBe64(s, 0, disk.blockCount - 1);
    writeBe32(s, 8, disk.blockSize);
    return this.deliver(cmd, data, Math.min(alloc, 32));
  }

  private reportLuns(cmd: ScsiCommand, data: ScsiDataBuffer | null): ScsiResult {
    const select = cmd.cdb[2]!;
    const alloc = readBe32(cmd.cdb, 6);
    if (select > 2 || alloc < 16) return this.illegal(ASC_INVALID_FIELD_IN_CDB);
    const luns = cmd.lun < 0 ? [] : this.lunList();
    const s = this.scratch;
    const n = Math.min(8 + 8 * luns.length, s.length);
    s.fill(0, 0, n);
    writeBe32(s, 0, 8 * luns.length);
    for (let i = 0; i < luns.length && 16 + 8 * i <= n; i++) s[8 + 8 * i + 1] = luns[i]!;
    return this.deliver(cmd, data, Math.min(alloc, n));
  }

  private readWrite(
    cmd: ScsiCommand,
    data: ScsiDataBuffer | null,
    disk: DiskBackend,
    lba: number,
    blocks: number,
    write: boolean,
  ): ScsiResult {
    const bytes = blocks * disk.blockSize;
    if (bytes !== cmd.dataTransferLength) return this.illegal(ASC_INVALID_FIELD_IN_CDB);
    if (bytes > 0 && cmd.dataIn !== (write ? WRITE_TYPE : READ_TYPE))
      return this.illegal(ASC_INVALID_FIELD_IN_CDB);
    if (lba < 0 || lba > disk.blockCount || blocks > disk.blockCount - lba)
      return this.illegal(ASC_LBA_OUT_OF_RANGE);
    if (write && disk.readOnly) {
      return this.checkCondition(SRB_STATUS_ERROR, SENSE_KEY_DATA_PROTECT, ASC_WRITE_PROTECTED, 0);
    }
    const r = this.result;
    const s = this.scratch;
    const per = Math.floor(s.length / disk.blockSize);
    let done = 0;
    while (done < blocks) {
      const n = Math.min(per, blocks - done);
      const len = n * disk.blockSize;
      const off = done * disk.blockSize;
      if (write) {
        try {
          data!.read(off, s, 0, len);
        } catch (e) {
          return this.dataFault(e);
        }
        try {
          disk.write(lba + done, n, s, 0);
        } catch (e) {
          r.fault = e;
          return this.checkCondition(SRB_STATUS_ERROR, SENSE_KEY_MEDIUM_ERROR, ASC_WRITE_ERROR, 0);
        }
      } else {
        try {
          disk.read(lba + done, n, s, 0);
        } catch (e) {
          r.fault = e;
          return this.checkCondition(SRB_STATUS_ERROR, SENSE_KEY_MEDIUM_ERROR, ASC_UNRECOVERED_READ_ERROR, 0);
        }
        try {
          data!.write(off, s, 0, len);
        } catch (e) {
          return this.dataFault(e);
        }
      }
      done += n;
      r.transferred = done * disk.blockSize;
    }
    return r;
  }
}

/** The CDB length an opcode's group needs (SPC groups 0 / 1, 2 / 4 / 5); 1 for reserved groups. */
export function cdbLengthFor(op: number): number {
  switch (op >>> 5) {
    case 0:
      return 6;
    case 1:
    case 2:
      return 10;
    case 4:
      return 16;
    case 5:
      return 12;
    default:
      return 1;
  }
}

// ---------------------------------------------------------------------------------------------
// CDB builders (write into `out` at `offset`, return the CDB length).

export function buildTestUnitReadyCdb(out: Uint8Array, offset = 0): number {
  out.fill(0, offset, offset + 6);
  return 6;
}

export function buildRequestSenseCdb(out: Uint8Array, allocationLength: number, offset = 0): number {
  out.fill(0, offset, offset + 6);
  out[offset] = SCSIOP_REQUEST_SENSE;
  out[offset + 4] = allocationLength & 0xff;
  return 6;
}

export function buildInquiryCdb(
  out: Uint8Array,
  allocationLength: number,
  vpdPage: number | null = null,
  offset = 0,
): number {
  out.fill(0, offset, offset + 6);
  out[offset] = SCSIOP_INQUIRY;
  if (vpdPage !== null) {
    out[offset + 1] = 0x01;
    out[offset + 2] = vpdPage;
  }
  writeBe16(out, offset + 3, allocationLength);
  return 6;
}

export function buildReadCapacity10Cdb(out: Uint8Array, offset = 0): number {
  out.fill(0, offset, offset + 10);
  out[offset] = SCSIOP_READ_CAPACITY;
  return 10;
}

export function buildReadCapacity16Cdb(out: Uint8Array, allocationLength = 32, offset = 0): number {
  out.fill(0, offset, offset + 16);
  out[offset] = SCSIOP_SERVICE_ACTION_IN16;
  out[offset + 1] = SERVICE_ACTION_READ_CAPACITY16;
  writeBe32(out, offset + 10, allocationLength);
  return 16;
}

function rw10(out: Uint8Array, op: number, lba: number, blocks: number, offset: number): number {
  if (lba < 0 || lba > 0xffffffff || blocks < 0 || blocks > 0xffff)
    throw new RangeError('READ/WRITE(10) field range');
  out.fill(0, offset, offset + 10);
  out[offset] = op;
  writeBe32(out, offset + 2, lba);
  writeBe16(out, offset + 7, blocks);
  return 10;
}

function rw16(out: Uint8Array, op: number, lba: number, blocks: number, offset: number): number {
  if (!Number.isSafeInteger(lba) || lba < 0 || blocks < 0 || blocks > 0xffffffff) {
    throw new RangeError('READ/WRITE(16) field range');
  }
  out.fill(0, offset, offset + 16);
  out[offset] = op;
  writeBe64(out, offset + 2, lba);
  writeBe32(out, offset + 10, blocks);
  return 16;
}

export function buildRead10Cdb(out: Uint8Array, lba: number, blocks: number, offset = 0): number {
  return rw10(out, SCSIOP_READ, lba, blocks, offset);
}

export function buildWrite10Cdb(out: Uint8Array, lba: number, blocks: number, offset = 0): number {
  return rw10(out, SCSIOP_WRITE, lba, blocks, offset);
}

export function buildRead16Cdb(out: Uint8Array, lba: number, blocks: number, offset = 0): number {
  return rw16(out, SCSIOP_READ16, lba, blocks, offset);
}

export function buildWrite16Cdb(out: Uint8Array, lba: number, blocks: number, offset = 0): number {
  return rw16(out, SCSIOP_WRITE16, lba, blocks, offset);
}

export function buildSynchronizeCache10Cdb(out: Uint8Array, offset = 0): number {
  out.fill(0, offset, offset + 10);
  out[offset] = SCSIOP_SYNCHRONIZE_CACHE;
  return 10;
}

export function buildReportLunsCdb(out: Uint8Array, allocationLength: number, offset = 0): number {
  out.fill(0, offset, offset + 12);
  out[offset] = SCSIOP_REPORT_LUNS;
  writeBe32(out, offset + 6, allocationLength);
  return 12;
}

// ---------------------------------------------------------------------------------------------
// Response parsers.

export interface DiskCapacity {
  /** The last LBA (READ CAPACITY(10) saturates at 0xffffffff). */
  lastLba: number;
  blockSize: number;
}

export function parseReadCapacity10(b: Uint8Array): DiskCapacity {
  if (b.length < 8) throw new RangeError('READ CAPACITY(10) data has 8 bytes');
  return { lastLba: readBe32(b, 0), blockSize: readBe32(b, 4) };
}

export function parseReadCapacity16(b: Uint8Array): DiskCapacity {
  if (b.length < 12) throw new RangeError('READ CAPACITY(16) data needs 12 bytes');
  return { lastLba: readBe64(b, 0), blockSize: readBe32(b, 8) };
}
