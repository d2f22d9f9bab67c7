// Disk backends for the SCSI target: a block device of `blockCount` blocks of `blockSize` bytes,
// read and written synchronously (same-thread runs stay deterministic). `MemoryDisk` keeps the
// image in a Uint8Array (optionally over a SharedArrayBuffer that another thread or a later host
// instance serves too); `FileDisk` serves a file through node:fs with an explicit size. Both check
// every access against the image and never touch a byte outside the blocks asked for.

import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  openSync,
  readSync,
  writeSync,
} from 'node:fs';

export interface DiskBackend {
  readonly blockSize: number;
  readonly blockCount: number;
  readonly readOnly: boolean;
  /** Copies `blocks` blocks from `lba` into `dest[destOffset..]`. */
  read(lba: number, blocks: number, dest: Uint8Array, destOffset: number): void;
  /** Copies `blocks` blocks from `src[srcOffset..]` to `lba`. */
  write(lba: number, blocks: number, src: Uint8Array, srcOffset: number): void;
  /** Makes earlier writes durable. */
  flush(): void;
}

/** Throws a RangeError unless the access lies inside the disk and the buffer. */
export function checkDiskAccess(
  disk: DiskBackend,
  lba: number,
  blocks: number,
  buf: Uint8Array,
  offset: number,
): number {
  if (!Number.isSafeInteger(lba) || !Number.isSafeInteger(blocks) || lba < 0 || blocks < 0) {
    throw new RangeError(`bad disk access lba=${lba} blocks=${blocks}`);
  }
  if (lba > disk.blockCount || blocks > disk.blockCount - lba) {
    throw new RangeError(`disk access [${lba}, +${blocks}) past ${disk.blockCount} blocks`);
  }
  const bytes = blocks * disk.blockSize;
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + bytes > buf.length) {
    throw new RangeError('disk access buffer too small');
  }
  return bytes;
}

function checkGeometry(blockSize: number, blockCount: number): void {
  if (
    !Number.isInteger(blockSize) ||
    blockSize < 512 ||
    blockSize > 65536 ||
    (blockSize & (blockSize - 1)) !== 0
  ) {
    throw new RangeError(`block size must be a power of two in [512, 65536], got ${blockSize}`);
  }
  if (
    !Number.isSafeInteger(blockCount) ||
    blockCount < 1 ||
    blockCount * blockSize > Number.MAX_SAFE_INTEGER
  ) {
    throw new RangeError(`bad block count ${blockCount}`);
  }
}

export interface MemoryDiskOptions {
  blockSize?: number;
  blockCount: number;
  readOnly?: boolean;
  /** Initial image (copied; must be blockSize * blockCount bytes). */
  data?: Uint8Array;
  /**
   * Keep the image in this buffer instead of a new one (not copied; exactly blockSize *
   * blockCount bytes): every MemoryDisk over it, in any thread, serves the same blocks.
   */
  backing?: SharedArrayBuffer;
}

/** A disk image in memory. */
export class MemoryDisk implements DiskBackend {
  readonly blockSize: number;
  readonly blockCount: number;
  readonly readOnly: boolean;
  /** The image itself (tests inspect it). */
  readonly bytes: Uint8Array;

  constructor(options: MemoryDiskOptions) {
    this.blockSize = options.blockSize ?? 512;
    this.blockCount = options.blockCount;
    checkGeometry(this.blockSize, this.blockCount);
    this.readOnly = options.readOnly ?? false;
    const size = this.blockSize * this.blockCount;
    if (options.backing !== undefined && options.backing.byteLength !== size) {
      throw new RangeError(`backing buffer has ${options.backing.byteLength} bytes, the disk needs ${size}`);
    }
    this.bytes = options.backing === undefined ? new Uint8Array(size) : new Uint8Array(options.backing);
    if (options.data !== undefined) {
      if (options.data.length !== this.bytes.length) throw new RangeError('initial image has the wrong size');
      this.bytes.set(options.data);
    }
  }

  read(lba: number, blocks: number, dest: Uint8Array, destOffset: number): void {
    const n = checkDiskAccess(this, lba, blocks, dest, destOffset);
    const from = lba * this.blockSize;
    dest.set(this.bytes.subarray(from, from + n), destOffset);
  }

  write(lba: number, blocks: number, src: Uint8Array, srcOffset: number): void {
    if (this.readOnly) throw new Error('MemoryDisk: write to a read-only disk');
    const n = checkDiskAccess(this, lba, blocks, src, srcOffset);
    this.bytes.set(src.subarray(srcOffset, srcOffset + n), lba * this.blockSize);
  }

  flush(): void {}
}

export interface FileDiskOptions {
  blockSize?: number;
  /** The disk size in blocks (the file may be longer; the rest is not served). */
  blockCount: number;
  readOnly?: boolean;
  /** Create the file if missing and extend it with zeros to the disk size. Default false. */
  create?: boolean;
}

/** A disk image in a file, through node:fs. */
export class FileDisk implements DiskBackend {
  readonly blockSize: number;
  readonly blockCount: number;
  readonly readOnly: boolean;
  private fd: number;

  private constructor(fd: number, blockSize: number, blockCount: number, readOnly: boolean) {
    this.fd = fd;
    this.blockSize = blockSize;
    this.blockCount = blockCount;
    this.readOnly = readOnly;
  }

  /** Opens (or with `create`, creates) `path` as a disk of `blockCount` blocks. */
  static open(path: string, options: FileDiskOptions): FileDisk {
    const blockSize = options.blockSize ?? 512;
    checkGeometry(blockSize, options.blockCount);
    const readOnly = options.readOnly ?? false;
    const create = options.create ?? false;
    if (readOnly && create) throw new Error('FileDisk: cannot create a read-only disk');
    const flags = readOnly ? constants.O_RDONLY : constants.O_RDWR | (create ? constants.O_CREAT : 0);
    const fd = openSync(path, flags, 0o644);
    try {
      const size = blockSize * options.blockCount;
      const have = fstatSync(fd).size;
      if (have < size) {
        if (!create) throw new Error(`FileDisk: ${path} has ${have} bytes, the disk needs ${size}`);
        ftruncateSync(fd, size);
      }
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    return new FileDisk(fd, blockSize, options.blockCount, readOnly);
  }

  private get handle(): number {
    if (this.fd < 0) throw new Error('FileDisk: closed');
    return this.fd;
  }

  read(lba: number, blocks: number, dest: Uint8Array, destOffset: number): void {
    const n = checkDiskAccess(this, lba, blocks, dest, destOffset);
    const fd = this.handle;
    let done = 0;
    while (done < n) {
      const got = readSync(fd, dest, destOffset + done, n - done, lba * this.blockSize + done);
      if (got <= 0) throw new Error('FileDisk: unexpected end of file');
      done += got;
    }
  }

  write(lba: number, blocks: number, src: Uint8Array, srcOffset: number): void {
    if (this.readOnly) throw new Error('FileDisk: write to a read-only disk');
    const n = checkDiskAccess(this, lba, blocks, src, srcOffset);
    const fd = this.handle;
    let done = 0;
    while (done < n) {
      done += writeSync(fd, src, srcOffset + done, n - done, lba * this.blockSize + done);
    }
  }

  flush(): void {
    if (!this.readOnly) fsyncSync(this.handle);
  }

  close(): void {
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
  }
}
