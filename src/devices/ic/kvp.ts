// Key-value pair (KVP) exchange IC. The body is `hv_kvp_msg` (Linux include/uapi/linux/hyperv.h):
// `hv_kvp_hdr {u8 operation; u8 pool; u16 pad}` then, by operation,
//   SET / GET:  hv_kvp_exchg_msg_value {u32 value_type; u32 key_size; u32 value_size;
//               u8 key[512] (UTF-16LE); u8 value[2048]}                       = 2572 bytes
//   DELETE:     {u32 key_size; u8 key[512]}                                    =  516 bytes
//   ENUMERATE:  {u32 index; hv_kvp_exchg_msg_value}                            = 2576 bytes
// Sizes count bytes including the UTF-16 NUL. The host sends the body padded to 2576 bytes (OpenVMM
// KvpMessage, 2580 with the header). The guest keeps five pools of key/value records (0 external,
// 1 guest, 2 auto, 3 auto-external, 4 auto-internal) with Linux's hv_kvp_daemon semantics: SET adds
// or replaces, GET / DELETE of a missing key and ENUMERATE past the end answer HV_S_CONT, ENUMERATE
// of the auto pool lists the guest's generated keys; answers carry REG_SZ UTF-16 strings with
// sizes 2 * (units + 1), keys cut to 254 units and values to 1022 (Linux kvp_respond_to_host).

import { WireError } from '../../wire/errors.js';
import { readU32, readU64, writeU32, writeU64 } from '../../wire/messages/bytes.js';
import { HV_E_FAIL, HV_S_CONT, HV_S_OK, ICMSGTYPE_KVPEXCHANGE, KVP_SERVICE } from './constants.js';
import { type IcHeader, readUtf16z, writeUtf16z } from './framing.js';
import { IcGuestService, IcHostService, type IcServiceOptions } from './service.js';

export const KVP_OP_GET = 0;
export const KVP_OP_SET = 1;
export const KVP_OP_DELETE = 2;
export const KVP_OP_ENUMERATE = 3;
export const KVP_OP_GET_IP_INFO = 4;
export const KVP_OP_SET_IP_INFO = 5;
export const KVP_OP_COUNT = 6;

export const KVP_POOL_EXTERNAL = 0;
export const KVP_POOL_GUEST = 1;
export const KVP_POOL_AUTO = 2;
export const KVP_POOL_AUTO_EXTERNAL = 3;
export const KVP_POOL_AUTO_INTERNAL = 4;
export const KVP_POOL_COUNT = 5;

/** Value types (Linux uapi; REG_EXPAND_SZ and REG_QWORD as Windows / OpenVMM define them). */
export const REG_SZ = 1;
export const REG_EXPAND_SZ = 2;
export const REG_U32 = 4;
export const REG_U64 = 8;
export const REG_QWORD = 11;

export const HV_KVP_EXCHANGE_MAX_KEY_SIZE = 512;
export const HV_KVP_EXCHANGE_MAX_VALUE_SIZE = 2048;

export const KVP_HDR_SIZE = 4;
export const KVP_EXCHG_VALUE_SIZE = 12 + HV_KVP_EXCHANGE_MAX_KEY_SIZE + HV_KVP_EXCHANGE_MAX_VALUE_SIZE;
export const KVP_DELETE_SIZE = 4 + HV_KVP_EXCHANGE_MAX_KEY_SIZE;
export const KVP_ENUMERATE_SIZE = 4 + KVP_EXCHG_VALUE_SIZE;
/** What a host sends for get / set / delete / enumerate: header + the largest of those bodies. */
export const KVP_MESSAGE_SIZE = KVP_HDR_SIZE + KVP_ENUMERATE_SIZE;

/** Longest key / value a guest answers with, in UTF-16 units (Linux: size / 2 - 2). */
export const KVP_MAX_KEY_UNITS_OUT = HV_KVP_EXCHANGE_MAX_KEY_SIZE / 2 - 2;
export const KVP_MAX_VALUE_UNITS_OUT = HV_KVP_EXCHANGE_MAX_VALUE_SIZE / 2 - 2;
/** Longest key / value a host sends, in UTF-16 units (the field minus the NUL). */
export const KVP_MAX_KEY_UNITS_IN = HV_KVP_EXCHANGE_MAX_KEY_SIZE / 2 - 1;
export const KVP_MAX_VALUE_UNITS_IN = HV_KVP_EXCHANGE_MAX_VALUE_SIZE / 2 - 1;

/** A value as the host sends it. */
export type KvpValue = string | { u32: number } | { u64: bigint };

// Offsets inside hv_kvp_exchg_msg_value.
const V_TYPE = 0;
const V_KEY_SIZE = 4;
const V_VALUE_SIZE = 8;
const V_KEY = 12;
const V_VALUE = 12 + HV_KVP_EXCHANGE_MAX_KEY_SIZE;

/** Body bytes (after the KVP header) an operation needs. */
export function kvpBodySize(operation: number): number {
  switch (operation) {
    case KVP_OP_GET:
    case KVP_OP_SET:
      return KVP_EXCHG_VALUE_SIZE;
    case KVP_OP_DELETE:
      return KVP_DELETE_SIZE;
    case KVP_OP_ENUMERATE:
      return KVP_ENUMERATE_SIZE;
    default:
      return 0;
  }
}

function checkedKeySize(msg: Uint8Array, o: number, field: string): number {
  const n = readU32(msg, o);
  if (n > HV_KVP_EXCHANGE_MAX_KEY_SIZE) {
    throw new WireError('out-of-range', field, `${n} bytes (at most ${HV_KVP_EXCHANGE_MAX_KEY_SIZE})`);
  }
  return n;
}

function checkedValueSize(msg: Uint8Array, o: number, field: string): number {
  const n = readU32(msg, o);
  if (n > HV_KVP_EXCHANGE_MAX_VALUE_SIZE) {
    throw new WireError('out-of-range', field, `${n} bytes (at most ${HV_KVP_EXCHANGE_MAX_VALUE_SIZE})`);
  }
  return n;
}

/** The key of an hv_kvp_exchg_msg_value at `v`. */
export function readKvpKey(msg: Uint8Array, v: number): string {
  const size = checkedKeySize(msg, v + V_KEY_SIZE, 'hv_kvp_exchg_msg_value.key_size');
  return readUtf16z(msg, v + V_KEY, size);
}

/**
 * The value of an hv_kvp_exchg_msg_value at `v`, as the guest stores it: strings as they are,
 * integers in decimal (Linux kvp_send_key), unknown types as ''.
 */
export function readKvpValueText(msg: Uint8Array, v: number): { valueType: number; value: string } {
  const valueType = readU32(msg, v + V_TYPE);
  const size = checkedValueSize(msg, v + V_VALUE_SIZE, 'hv_kvp_exchg_msg_value.value_size');
  switch (valueType) {
    case REG_SZ:
    case REG_EXPAND_SZ:
      return { valueType, value: readUtf16z(msg, v + V_VALUE, size) };
    case REG_U32:
      return { valueType, value: String(readU32(msg, v + V_VALUE)) };
    case REG_U64:
    case REG_QWORD:
      return { valueType, value: readU64(msg, v + V_VALUE).toString() };
    default:
      return { valueType, value: '' };
  }
}

/** Writes a key: UTF-16 with its NUL, key_size = 2 * (units + 1). */
function writeKvpKey(msg: Uint8Array, sizeAt: number, keyAt: number, key: string, maxUnits: number): void {
  const n = writeUtf16z(msg, keyAt, key, maxUnits);
  writeU32(msg, sizeAt, 2 * (n + 1));
}

/** Writes value_type, value_size and value of the hv_kvp_exchg_msg_value at `v`. */
function writeKvpValue(msg: Uint8Array, v: number, value: KvpValue, maxUnits: number): void {
  if (typeof value === 'string') {
    const n = writeUtf16z(msg, v + V_VALUE, value, maxUnits);
    writeU32(msg, v + V_TYPE, REG_SZ);
    writeU32(msg, v + V_VALUE_SIZE, 2 * (n + 1));
  } else if ('u32' in value) {
    writeU32(msg, v + V_TYPE, REG_U32);
    writeU32(msg, v + V_VALUE_SIZE, 4);
    writeU32(msg, v + V_VALUE, value.u32 >>> 0);
  } else {
    writeU32(msg, v + V_TYPE, REG_U64);
    writeU32(msg, v + V_VALUE_SIZE, 8);
    writeU64(msg, v + V_VALUE, value.u64);
  }
}

// ---------------------------------------------------------------------------------------------
// The guest's pools.

export interface KvpRecord {
  key: string;
  value: string;
}

export interface KvpPoolsOptions {
  /**
   * The auto pool's generated entries (index -> key, value), e.g. FullyQualifiedDomainName,
   * IntegrationServicesVersion, OSName... as the Linux daemon reports them.
   */
  auto?: readonly (readonly [string, string])[] | (() => readonly (readonly [string, string])[]);
  /** Records per pool before SET fails with HV_S_CONT (default 4096). */
  maxRecordsPerPool?: number;
}

/** Five ordered key/value pools, with Linux hv_kvp_daemon's add / replace / delete / enumerate rules. */
export class KvpPools {
  private readonly pools: KvpRecord[][] = [[], [], [], [], []];
  private readonly auto: KvpPoolsOptions['auto'];
  readonly maxRecordsPerPool: number;

  constructor(options: KvpPoolsOptions = {}) {
    this.auto = options.auto;
    this.maxRecordsPerPool = options.maxRecordsPerPool ?? 4096;
  }

  private pool(pool: number): KvpRecord[] {
    const p = this.pools[pool];
    if (p === undefined) throw new RangeError(`KVP pool ${pool} does not exist`);
    return p;
  }

  /** Adds or replaces; false when the pool is full. */
  set(pool: number, key: string, value: string): boolean {
    const p = this.pool(pool);
    const r = p.find((x) => x.key === key);
    if (r !== undefined) {
      r.value = value;
      return true;
    }
    if (p.length >= this.maxRecordsPerPool) return false;
    p.push({ key, value });
    return true;
  }

  get(pool: number, key: string): string | undefined {
    return this.pool(pool).find((x) => x.key === key)?.value;
  }

  /** Removes a key, keeping the order of the rest; false if it was not there. */
  delete(pool: number, key: string): boolean {
    const p = this.pool(pool);
    const i = p.findIndex((x) => x.key === key);
    if (i < 0) return false;
    p.splice(i, 1);
    return true;
  }

  /** The index-th entry (the auto pool lists the generated entries), or undefined past the end. */
  enumerate(pool: number, index: number): KvpRecord | undefined {
    if (pool === KVP_POOL_AUTO) {
      const list = typeof this.auto === 'function' ? this.auto() : (this.auto ?? []);
      const e = list[index];
      return e === undefined ? undefined : { key: e[0], value: e[1] };
    }
    const r = this.pool(pool)[index];
    return r === undefined ? undefined : { key: r.key, value: r.value };
  }

  /** A copy of a pool's records in order. */
  entries(pool: number): KvpRecord[] {
    return this.pool(pool).map((r) => ({ key: r.key, value: r.value }));
  }
}

// ---------------------------------------------------------------------------------------------
// Guest side.

export interface KvpGuestEvent {
  kind: 'kvp';
  operation: number;
  pool: number;
  /** The key the host named (set / get / delete) or the one enumerated; null otherwise. */
  key: string | null;
  /** The value stored (set) or returned (get / enumerate); null otherwise. */
  value: string | null;
  /** The status answered: HV_S_OK, HV_S_CONT (no such key / end) or HV_E_FAIL. */
  status: number;
}

export interface KvpGuestOptions extends IcServiceOptions, KvpPoolsOptions {
  /** The pools to serve (default: new, empty ones). */
  pools?: KvpPools;
}

/** Guest side: serves the host's operations from its pools and answers in place. */
export class KvpGuest extends IcGuestService<KvpGuestEvent> {
  readonly pools: KvpPools;

  constructor(options: KvpGuestOptions = {}) {
    super(KVP_SERVICE, options);
    this.pools = options.pools ?? new KvpPools(options);
    this.answersUnknownTypes = false;
  }

  protected handleService(resp: Uint8Array): KvpGuestEvent {
    const b = this.needBody(resp, 'hv_kvp_hdr', KVP_HDR_SIZE);
    const operation = resp[b]!;
    const pool = resp[b + 1]!;
    if (operation >= KVP_OP_COUNT) {
      throw new WireError('unknown-type', 'hv_kvp_hdr.operation', `operation ${operation}`);
    }
    if (pool >= KVP_POOL_COUNT) throw new WireError('out-of-range', 'hv_kvp_hdr.pool', `pool ${pool}`);
    const event: KvpGuestEvent = { kind: 'kvp', operation, pool, key: null, value: null, status: HV_S_OK };
    if (operation === KVP_OP_GET_IP_INFO || operation === KVP_OP_SET_IP_INFO) {
      event.status = HV_E_FAIL; // no network adapters to report on or configure
      this.setStatus(resp, event.status);
      return event;
    }
    this.needBody(resp, 'hv_kvp_msg.body', KVP_HDR_SIZE + kvpBodySize(operation));
    const k = b + KVP_HDR_SIZE;
    switch (operation) {
      case KVP_OP_SET: {
        const key = readKvpKey(resp, k);
        const { value } = readKvpValueText(resp, k);
        event.key = key;
        event.value = value;
        if (!this.pools.set(pool, key, value)) event.status = HV_S_CONT;
        break;
      }
      case KVP_OP_GET: {
        // Linux's daemon path copies the value from the enumerate layout; we answer the intent:
        // the stored value in kvp_get.data as REG_SZ.
        const key = readKvpKey(resp, k);
        event.key = key;
        const value = this.pools.get(pool, key);
        if (value === undefined) {
          event.status = HV_S_CONT;
        } else {
          event.value = value;
          writeKvpValue(resp, k, value, KVP_MAX_VALUE_UNITS_OUT);
        }
        break;
      }
      case KVP_OP_DELETE: {
        const size = checkedKeySize(resp, k, 'hv_kvp_msg_delete.key_size');
        const key = readUtf16z(resp, k + 4, size);
        event.key = key;
        if (!this.pools.delete(pool, key)) event.status = HV_S_CONT;
        break;
      }
      default: {
        const index = readU32(resp, k);
        const r = this.pools.enumerate(pool, index);
        if (r === undefined) {
          event.status = HV_S_CONT;
        } else {
          const v = k + 4;
          event.key = r.key;
          event.value = r.value;
          writeKvpKey(resp, v + V_KEY_SIZE, v + V_KEY, r.key, KVP_MAX_KEY_UNITS_OUT);
          writeKvpValue(resp, v, r.value, KVP_MAX_VALUE_UNITS_OUT);
        }
      }
    }
    this.setStatus(resp, event.status);
    return event;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

export interface KvpHostEvent {
  kind: 'kvp-result';
  operation: number;
  pool: number;
  status: number;
  /** Enumerate: the key found. */
  key: string | null;
  /** Get / enumerate: the value found, as text. */
  value: string | null;
  /** Get / enumerate: its value_type. */
  valueType: number | null;
}

/** Host side: one KVP operation at a time, as the host guarantees. */
export class KvpHost extends IcHostService<KvpHostEvent> {
  private op = 0;
  private opPool = 0;

  constructor(options: IcServiceOptions = {}) {
    super(KVP_SERVICE, options);
  }

  private begin(operation: number, pool: number): Uint8Array {
    if (!Number.isInteger(pool) || pool < 0 || pool >= KVP_POOL_COUNT)
      throw new RangeError(`bad KVP pool ${pool}`);
    const msg = this.newRequest(ICMSGTYPE_KVPEXCHANGE, KVP_MESSAGE_SIZE);
    const b = this.bodyOffset;
    msg[b] = operation;
    msg[b + 1] = pool;
    this.op = operation;
    this.opPool = pool;
    return msg;
  }

  protected override saveRequest(): Record<string, number | string> {
    return { operation: this.op, pool: this.opPool };
  }

  protected override restoreRequest(saved: Record<string, number | string>): void {
    const { operation, pool } = saved;
    if (
      typeof operation !== 'number' ||
      typeof pool !== 'number' ||
      !Number.isInteger(operation) ||
      operation < 0 ||
      operation >= KVP_OP_COUNT ||
      !Number.isInteger(pool) ||
      pool < 0 ||
      pool >= KVP_POOL_COUNT
    ) {
      throw new RangeError('kvp host: bad saved operation');
    }
    this.op = operation;
    this.opPool = pool;
  }

  private static checkKey(key: string): void {
    if (key.length > KVP_MAX_KEY_UNITS_IN)
      throw new RangeError(`KVP key longer than ${KVP_MAX_KEY_UNITS_IN} units`);
  }

  set(pool: number, key: string, value: KvpValue): Uint8Array {
    KvpHost.checkKey(key);
    if (typeof value === 'string' && value.length > KVP_MAX_VALUE_UNITS_IN) {
      throw new RangeError(`KVP value longer than ${KVP_MAX_VALUE_UNITS_IN} units`);
    }
    const msg = this.begin(KVP_OP_SET, pool);
    const k = this.bodyOffset + KVP_HDR_SIZE;
    writeKvpKey(msg, k + V_KEY_SIZE, k + V_KEY, key, KVP_MAX_KEY_UNITS_IN);
    writeKvpValue(msg, k, value, KVP_MAX_VALUE_UNITS_IN);
    return msg;
  }

  get(pool: number, key: string): Uint8Array {
    KvpHost.checkKey(key);
    const msg = this.begin(KVP_OP_GET, pool);
    const k = this.bodyOffset + KVP_HDR_SIZE;
    writeKvpKey(msg, k + V_KEY_SIZE, k + V_KEY, key, KVP_MAX_KEY_UNITS_IN);
    return msg;
  }

  delete(pool: number, key: string): Uint8Array {
    KvpHost.checkKey(key);
    const msg = this.begin(KVP_OP_DELETE, pool);
    const k = this.bodyOffset + KVP_HDR_SIZE;
    writeKvpKey(msg, k, k + 4, key, KVP_MAX_KEY_UNITS_IN);
    return msg;
  }

  enumerate(pool: number, index: number): Uint8Array {
    const msg = this.begin(KVP_OP_ENUMERATE, pool);
    writeU32(msg, this.bodyOffset + KVP_HDR_SIZE, index >>> 0);
    return msg;
  }

  protected handleResponse(msg: Uint8Array, header: IcHeader): KvpHostEvent {
    const b = this.needBody(msg, 'hv_kvp_msg', KVP_HDR_SIZE + kvpBodySize(this.op));
    if (msg[b] !== this.op || msg[b + 1] !== this.opPool) {
      throw new WireError('inconsistent', 'hv_kvp_hdr', 'response names another operation or pool');
    }
    const event: KvpHostEvent = {
      kind: 'kvp-result',
      operation: this.op,
      pool: this.opPool,
      status: header.status,
      key: null,
      value: null,
      valueType: null,
    };
    if (header.status !== HV_S_OK) return event;
    const k = b + KVP_HDR_SIZE;
    if (this.op === KVP_OP_GET) {
      const v = readKvpValueText(msg, k);
      event.value = v.value;
      event.valueType = v.valueType;
    } else if (this.op === KVP_OP_ENUMERATE) {
      event.key = readKvpKey(msg, k + 4);
      const v = readKvpValueText(msg, k + 4);
      event.value = v.value;
      event.valueType = v.valueType;
    }
    return event;
  }
}
