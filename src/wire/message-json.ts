// The plain-JSON form of channel messages (for the `vmbus msg` CLI and logs) and a human-readable
// description. JSON round-trips exactly: for every message decodeMessage accepts,
// encodeMessage(messageFromJson(JSON.parse(JSON.stringify(messageToJson(m))))) gives the same bytes.
//
// Form: { name: "CHANNELMSG_...", type: N, form?: "...", <every field> }. u8/u16/u32 are numbers;
// u64 values and PFNs are "0x..." strings; GUIDs are text; byte areas are lower-case hex strings.
// messageFromJson also accepts u8..u32 as "0x..." strings and u64/PFNs as safe-integer numbers.

import {
  channelMessageName,
  channelMessageType,
  formatVersion,
  VMBUS_CHANNEL_FLAG_NAMES,
  VMBUS_CONNECTION_STATE_FAILED_LOW_RESOURCES,
  VMBUS_CONNECTION_STATE_FAILED_UNKNOWN_FAILURE,
  VMBUS_CONNECTION_STATE_SUCCESSFUL,
  VMBUS_FEATURE_FLAG_NAMES,
  VMBUS_STATUS_CONNECTION_REFUSED,
  VMBUS_STATUS_SUCCESS,
  VMBUS_STATUS_UNSUCCESSFUL,
} from './constants.js';
import { WireError } from './errors.js';
import { parseGpadlHeaderRanges } from './gpadl.js';
import { Guid } from './guid.js';
import { fromHex, PFN_LIMIT, toHex } from './messages/bytes.js';
import { type FieldSpec, type FormSpec, LAYOUTS, type TypeSpec } from './messages/layout.js';
import { type ChannelMessage, encodeMessage, MessageEncodeError } from './messages.js';

/** A message in its JSON form (only JSON-safe values). */
export type MessageJson = Record<string, string | number | string[]>;

type AnyMessage = Record<string, unknown>;

function specOf(msg: AnyMessage): { spec: TypeSpec; fm: FormSpec } {
  const spec = LAYOUTS[msg.type as number]!;
  const fm = spec.forms.length === 1 ? spec.forms[0]! : spec.forms.find((f) => f.form === msg.form)!;
  return { spec, fm };
}

const hex64 = (v: bigint | number): string => `0x${v.toString(16)}`;

/** The JSON form of a message. Throws MessageEncodeError if the message could not be encoded. */
export function messageToJson(msg: ChannelMessage): MessageJson {
  encodeMessage(msg); // validates every field
  const m = msg as unknown as AnyMessage;
  const { spec, fm } = specOf(m);
  const out: MessageJson = { name: spec.name, type: spec.type };
  if (fm.form !== undefined) out.form = fm.form;
  for (const fd of fm.fields) {
    const v = m[fd.key];
    if (v === undefined) continue;
    switch (fd.kind) {
      case 'u8':
      case 'u16':
      case 'u32':
        out[fd.key] = v as number;
        break;
      case 'u64':
        out[fd.key] = hex64(v as bigint);
        break;
      case 'guid':
        out[fd.key] = (v as Guid).toString();
        break;
      case 'bytes':
        out[fd.key] = toHex(v as Uint8Array);
        break;
    }
  }
  if (spec.kind === 'gpadl-header') out.rangeData = toHex(m.rangeData as Uint8Array);
  if (spec.kind === 'gpadl-body') out.pfns = (m.pfns as number[]).map(hex64);
  if (m.headerPadding !== undefined) out.headerPadding = m.headerPadding as number;
  if (m.trailing !== undefined) out.trailing = toHex(m.trailing as Uint8Array);
  return out;
}

function bad(field: string, text: string): never {
  throw new WireError('out-of-range', field, text);
}

function parseUint(field: string, v: unknown, max: number): number {
  let n: number | undefined;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^(0[xX][0-9a-fA-F]+|[0-9]+)$/.test(v)) n = Number(v);
  if (n === undefined || !Number.isInteger(n) || n < 0 || n > max) {
    bad(field, `expected an integer 0..${max} (number or "0x..." string), got ${JSON.stringify(v)}`);
  }
  return n;
}

function parseU64(field: string, v: unknown): bigint {
  let n: bigint | undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) n = BigInt(v);
  else if (typeof v === 'string' && /^(0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20})$/.test(v)) n = BigInt(v);
  if (n === undefined || n > 0xffffffffffffffffn) {
    bad(field, `expected a u64 ("0x..." string or safe integer), got ${JSON.stringify(v)}`);
  }
  return n;
}

function parseHexBytes(field: string, v: unknown, size: number | undefined): Uint8Array {
  const bytes = typeof v === 'string' ? fromHex(v) : undefined;
  if (bytes === undefined) bad(field, `expected a hex string, got ${JSON.stringify(v)}`);
  if (size !== undefined && bytes.length !== size)
    bad(field, `expected ${size} bytes of hex, got ${bytes.length}`);
  return bytes;
}

function parseField(field: string, fd: FieldSpec, v: unknown): unknown {
  switch (fd.kind) {
    case 'u8':
      return parseUint(field, v, 0xff);
    case 'u16':
      return parseUint(field, v, 0xffff);
    case 'u32':
      return parseUint(field, v, 0xffffffff);
    case 'u64':
      return parseU64(field, v);
    case 'guid':
      if (typeof v !== 'string') bad(field, `expected a GUID string, got ${JSON.stringify(v)}`);
      return Guid.parse(v, field);
    case 'bytes':
      return parseHexBytes(field, v, fd.size);
  }
}

function resolveType(o: Record<string, unknown>): TypeSpec {
  let type: number | undefined;
  if (o.type !== undefined) {
    if (typeof o.type !== 'number' || !Number.isInteger(o.type))
      bad('type', `expected a number, got ${JSON.stringify(o.type)}`);
    type = o.type;
    if (LAYOUTS[type] === undefined)
      throw new WireError('unknown-type', 'type', `unknown channel message type ${type}`);
  }
  if (o.name !== undefined) {
    if (typeof o.name !== 'string') bad('name', `expected a string, got ${JSON.stringify(o.name)}`);
    const byName = channelMessageType(o.name);
    if (byName === undefined || LAYOUTS[byName] === undefined) {
      throw new WireError('unknown-type', 'name', `unknown channel message ${JSON.stringify(o.name)}`);
    }
    if (type !== undefined && type !== byName) {
      throw new WireError('inconsistent', 'name', `${o.name} is type ${byName}, but type says ${type}`);
    }
    type = byName;
  }
  if (type === undefined) throw new WireError('truncated', 'type', 'missing (give "type" or "name")');
  return LAYOUTS[type]!;
}

/**
 * A message from its JSON form. Bad input (not an object, unknown message or form, missing field,
 * wrong value type, number out of range, unknown field, a message that would not fit in 240 bytes)
 * is a WireError naming the field.
 */
export function messageFromJson(obj: unknown): ChannelMessage {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) bad('message', 'expected a JSON object');
  const o = obj as Record<string, unknown>;
  const spec = resolveType(o);
  const s = spec.short;
  let fm: FormSpec;
  const m: AnyMessage = { type: spec.type };
  if (spec.forms.length === 1) {
    fm = spec.forms[0]!;
  } else {
    if (o.form === undefined) throw new WireError('truncated', `${s}.form`, 'missing');
    const found = spec.forms.find((f) => f.form === o.form);
    if (found === undefined) {
      const names = spec.forms.map((f) => f.form).join(', ');
      throw new WireError(
        'unknown-type',
        `${s}.form`,
        `must be one of ${names}, got ${JSON.stringify(o.form)}`,
      );
    }
    fm = found;
    m.form = fm.form;
  }
  const known = new Set<string>(['name', 'type', 'headerPadding']);
  if (fm.form !== undefined) known.add('form');
  for (const fd of fm.fields) {
    known.add(fd.key);
    const field = `${s}.${fd.key}`;
    const v = o[fd.key];
    if (v === undefined) {
      if (fd.reserved || fd.view) continue;
      throw new WireError('truncated', field, 'missing');
    }
    m[fd.key] = parseField(field, fd, v);
  }
  if (spec.kind === 'gpadl-header') {
    known.add('rangeData');
    if (o.rangeData === undefined) throw new WireError('truncated', `${s}.rangeData`, 'missing');
    m.rangeData = parseHexBytes(`${s}.rangeData`, o.rangeData, undefined);
  } else {
    known.add('trailing');
  }
  if (spec.kind === 'gpadl-body') {
    known.add('pfns');
    const pfns = o.pfns;
    if (pfns === undefined) throw new WireError('truncated', `${s}.pfns`, 'missing');
    if (!Array.isArray(pfns)) bad(`${s}.pfns`, 'expected an array');
    m.pfns = pfns.map((p, i) => {
      const v = parseU64(`${s}.pfns[${i}]`, p);
      if (v >= BigInt(PFN_LIMIT)) bad(`${s}.pfns[${i}]`, 'PFN >= 2^52');
      return Number(v);
    });
  }
  for (const key of Object.keys(o)) {
    if (!known.has(key)) throw new WireError('unknown-type', `${s}.${key}`, 'not a field of this message');
  }
  if (o.headerPadding !== undefined)
    m.headerPadding = parseUint(`${s}.headerPadding`, o.headerPadding, 0xffffffff);
  if (o.trailing !== undefined && spec.kind !== 'gpadl-header') {
    m.trailing = parseHexBytes(`${s}.trailing`, o.trailing, undefined);
  }
  const msg = m as unknown as ChannelMessage;
  try {
    encodeMessage(msg);
  } catch (err) {
    if (err instanceof MessageEncodeError) throw new WireError(err.code, err.field, err.message);
    throw err;
  }
  return msg;
}

// ---------------------------------------------------------------------------------------------
// Human-readable description.

function flagNames(value: number, table: readonly (readonly [number, string])[]): string {
  const names: string[] = [];
  let rest = value;
  for (const [bit, name] of table) {
    if (value & bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  if (rest !== 0) names.push(hex64(rest >>> 0));
  return names.length === 0 ? '' : ` (${names.join('|')})`;
}

const STATUS_NAMES = new Map<number, string>([
  [VMBUS_STATUS_SUCCESS, 'success'],
  [VMBUS_STATUS_UNSUCCESSFUL, 'STATUS_UNSUCCESSFUL (OpenVMM)'],
  [VMBUS_STATUS_CONNECTION_REFUSED, 'STATUS_CONNECTION_REFUSED'],
]);

const CONNECTION_STATES = new Map<number, string>([
  [VMBUS_CONNECTION_STATE_SUCCESSFUL, 'SUCCESSFUL'],
  [VMBUS_CONNECTION_STATE_FAILED_LOW_RESOURCES, 'FAILED_LOW_RESOURCES'],
  [VMBUS_CONNECTION_STATE_FAILED_UNKNOWN_FAILURE, 'FAILED_UNKNOWN_FAILURE'],
]);

function describeNumber(key: string, v: number): string {
  const plain = v > 9 ? `${v} (${hex64(v)})` : `${v}`;
  switch (key) {
    case 'chnFlags':
      return `${hex64(v)}${flagNames(v, VMBUS_CHANNEL_FLAG_NAMES)}`;
    case 'featureFlags':
    case 'supportedFeatures':
      return `${hex64(v)}${flagNames(v, VMBUS_FEATURE_FLAG_NAMES)}`;
    case 'vmbusVersionRequested':
      return `${hex64(v)} (${formatVersion(v)})`;
    case 'status':
    case 'creationStatus': {
      const name = STATUS_NAMES.get(v);
      return name === undefined ? hex64(v) : `${hex64(v)} (${name})`;
    }
    case 'connectionState': {
      const name = CONNECTION_STATES.get(v);
      return name === undefined ? `${v}` : `${v} (${name})`;
    }
    default:
      return plain;
  }
}

function describeBytes(b: Uint8Array): string {
  return b.every((x) => x === 0) ? `(${b.length} zero bytes)` : toHex(b);
}

/** `name: value` lines describing a message, for the CLI's non-JSON output. */
export function describeMessage(msg: ChannelMessage): string[] {
  encodeMessage(msg); // validates
  const m = msg as unknown as AnyMessage;
  const { spec, fm } = specOf(m);
  const lines = [`message: ${channelMessageName(spec.type)} (${spec.type})`];
  if (fm.form !== undefined) lines.push(`form: ${fm.form}`);
  for (const fd of fm.fields) {
    const v = m[fd.key];
    if (v === undefined) continue;
    let text: string;
    if (typeof v === 'number') text = describeNumber(fd.key, v);
    else if (typeof v === 'bigint') text = hex64(v);
    else if (v instanceof Guid) text = v.toString();
    else text = describeBytes(v as Uint8Array);
    lines.push(`${fd.key}: ${text}`);
  }
  if (spec.kind === 'gpadl-header') {
    const data = m.rangeData as Uint8Array;
    lines.push(`rangeData: ${data.length === 0 ? '(none)' : toHex(data)}`);
    try {
      const ranges = parseGpadlHeaderRanges(msg as Extract<ChannelMessage, { type: 8 }>);
      ranges.forEach((r, i) => {
        const first = r.pfns[0]!;
        const last = r.pfns[r.pfns.length - 1]!;
        const span = r.pfns.length === 1 ? hex64(first) : `${hex64(first)}..${hex64(last)}`;
        lines.push(
          `range[${i}]: byteCount ${r.byteCount}, byteOffset ${r.byteOffset}, ${r.pfns.length} PFNs ${span}`,
        );
      });
    } catch (err) {
      if (!(err instanceof WireError)) throw err;
      lines.push(`ranges: not parsed (${err.message})`);
    }
  }
  if (spec.kind === 'gpadl-body') {
    const pfns = m.pfns as number[];
    lines.push(`pfns: ${pfns.length}${pfns.length > 0 ? ` [${pfns.map(hex64).join(', ')}]` : ''}`);
  }
  if (m.headerPadding !== undefined) lines.push(`headerPadding: ${hex64(m.headerPadding as number)}`);
  if (m.trailing !== undefined) lines.push(`trailing: ${toHex(m.trailing as Uint8Array)}`);
  return lines;
}
