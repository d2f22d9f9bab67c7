// The byte layout of every channel message (spec/vmbus-wire.md 3.4) as data: one table drives the
// binary codec, the JSON form and the human-readable description, so offsets live in one place.

import { CHANNELMSG_COUNT, channelMessageName } from '../constants.js';

export type FieldKind = 'u8' | 'u16' | 'u32' | 'u64' | 'guid' | 'bytes';

export interface FieldSpec {
  /** Property name in the TypeScript message object (camelCase, close to Linux's name). */
  readonly key: string;
  /** Name in the wire spec (Linux or OpenVMM spelling), used in WireError fields. */
  readonly wire: string;
  /** Offset in the message, 8-byte header included. */
  readonly offset: number;
  readonly kind: FieldKind;
  /** Width in bytes. */
  readonly size: number;
  /** Reserved/padding: optional in the object, omitted on decode when zero, written as 0 when absent. */
  readonly reserved: boolean;
  /** One view of an overlaid area (INITIATE_CONTACT bytes 16-23); encoded by a special rule. */
  readonly view: boolean;
}

export interface FormSpec {
  /** Variant name (OpenVMM struct name) for types with several sizes, else undefined. */
  readonly form: string | undefined;
  /** Exact encoded size of the fixed part, header included. */
  readonly size: number;
  readonly fields: readonly FieldSpec[];
}

export type TypeKind = 'fixed' | 'gpadl-header' | 'gpadl-body';

export interface TypeSpec {
  readonly type: number;
  /** `CHANNELMSG_*` name. */
  readonly name: string;
  /** Name without the `CHANNELMSG_` prefix, used in error fields. */
  readonly short: string;
  readonly kind: TypeKind;
  /** Forms in increasing size; a larger form starts with all fields of the smaller ones. */
  readonly forms: readonly FormSpec[];
}

const SIZES: Record<FieldKind, number> = { u8: 1, u16: 2, u32: 4, u64: 8, guid: 16, bytes: 120 };

function f(
  key: string,
  wire: string,
  offset: number,
  kind: FieldKind,
  opts: { reserved?: boolean; view?: boolean } = {},
): FieldSpec {
  return Object.freeze({
    key,
    wire,
    offset,
    kind,
    size: SIZES[kind],
    reserved: opts.reserved ?? false,
    view: opts.view ?? false,
  });
}

function form(name: string | undefined, size: number, fields: FieldSpec[]): FormSpec {
  return Object.freeze({ form: name, size, fields: Object.freeze(fields) });
}

const RELID = f('childRelid', 'child_relid', 8, 'u32');

const OPEN_FIELDS = [
  RELID,
  f('openId', 'openid', 12, 'u32'),
  f('ringBufferGpadlHandle', 'ringbuffer_gpadlhandle', 16, 'u32'),
  f('targetVp', 'target_vp', 20, 'u32'),
  f('downstreamRingBufferPageOffset', 'downstream_ringbuffer_pageoffset', 24, 'u32'),
  f('userData', 'userdata', 28, 'bytes'),
];

const INITIATE_FIELDS = [
  f('vmbusVersionRequested', 'vmbus_version_requested', 8, 'u32'),
  f('targetVcpu', 'target_vcpu', 12, 'u32'),
  f('interruptPage', 'interrupt_page', 16, 'u64', { view: true }),
  f('msgSint', 'msg_sint', 16, 'u8', { view: true }),
  f('msgVtl', 'msg_vtl', 17, 'u8', { view: true }),
  f('msgReserved', 'reserved', 18, 'u16', { view: true, reserved: true }),
  f('featureFlags', 'feature_flags', 20, 'u32', { view: true }),
  f('monitorPage1', 'monitor_page1', 24, 'u64'),
  f('monitorPage2', 'monitor_page2', 32, 'u64'),
];

const VERSION_RESPONSE_FIELDS = [
  f('versionSupported', 'version_supported', 8, 'u8'),
  f('connectionState', 'connection_state', 9, 'u8'),
  f('padding', 'padding', 10, 'u16', { reserved: true }),
  f('msgConnId', 'msg_conn_id', 12, 'u32'),
];

const TL_REQUEST_FIELDS = [
  f('guestEndpointId', 'guest_endpoint_id', 8, 'guid'),
  f('hostServiceId', 'host_service_id', 24, 'guid'),
];

type Entry = [kind: TypeKind, forms: FormSpec[]];

const fixed = (size: number, fields: FieldSpec[]): Entry => ['fixed', [form(undefined, size, fields)]];

const ENTRIES: Record<number, Entry> = {
  1: fixed(196, [
    f('ifType', 'if_type', 8, 'guid'),
    f('ifInstance', 'if_instance', 24, 'guid'),
    f('channelLatency', 'chlat', 40, 'u64'),
    f('channelRevision', 'chrev', 48, 'u32'),
    f('serverContextSize', 'svrctx_sz', 52, 'u32'),
    f('chnFlags', 'chn_flags', 56, 'u16'),
    f('mmioMegabytes', 'mmio_megabytes', 58, 'u16'),
    f('userDefined', 'user_def', 60, 'bytes'),
    f('subChannelIndex', 'sub_channel_index', 180, 'u16'),
    f('mmioMegabytesOptional', 'mmio_megabytes_optional', 182, 'u16'),
    f('childRelid', 'child_relid', 184, 'u32'),
    f('monitorId', 'monitorid', 188, 'u8'),
    f('monitorAllocated', 'monitor_allocated', 189, 'u8'),
    f('isDedicatedInterrupt', 'is_dedicated_interrupt', 190, 'u16'),
    f('connectionId', 'connection_id', 192, 'u32'),
  ]),
  2: fixed(12, [RELID]),
  3: fixed(8, []),
  4: fixed(8, []),
  5: [
    'fixed',
    [
      form('OpenChannel', 148, OPEN_FIELDS),
      form('OpenChannel2', 156, [
        ...OPEN_FIELDS,
        f('connectionId', 'connection_id', 148, 'u32'),
        f('eventFlag', 'event_flag', 152, 'u16'),
        f('flags', 'flags', 154, 'u16'),
      ]),
    ],
  ],
  6: fixed(20, [RELID, f('openId', 'openid', 12, 'u32'), f('status', 'status', 16, 'u32')]),
  7: fixed(12, [RELID]),
  8: [
    'gpadl-header',
    [
      form(undefined, 20, [
        RELID,
        f('gpadl', 'gpadl', 12, 'u32'),
        f('rangeBufLen', 'range_buflen', 16, 'u16'),
        f('rangeCount', 'rangecount', 18, 'u16'),
      ]),
    ],
  ],
  9: [
    'gpadl-body',
    [form(undefined, 16, [f('msgNumber', 'msgnumber', 8, 'u32'), f('gpadl', 'gpadl', 12, 'u32')])],
  ],
  10: fixed(20, [RELID, f('gpadl', 'gpadl', 12, 'u32'), f('creationStatus', 'creation_status', 16, 'u32')]),
  11: fixed(16, [RELID, f('gpadl', 'gpadl', 12, 'u32')]),
  12: fixed(12, [f('gpadl', 'gpadl', 8, 'u32')]),
  13: fixed(12, [RELID]),
  14: [
    'fixed',
    [
      form('InitiateContact', 40, INITIATE_FIELDS),
      form('InitiateContact2', 56, [...INITIATE_FIELDS, f('clientId', 'client_id', 40, 'guid')]),
    ],
  ],
  15: [
    'fixed',
    [
      form('VersionResponse', 16, VERSION_RESPONSE_FIELDS),
      form('VersionResponse2', 20, [
        ...VERSION_RESPONSE_FIELDS,
        f('supportedFeatures', 'supported_features', 16, 'u32'),
      ]),
      form('VersionResponse3', 40, [
        ...VERSION_RESPONSE_FIELDS,
        f('supportedFeatures', 'supported_features', 16, 'u32'),
        f('padding2', 'pad', 20, 'u32', { reserved: true }),
        f('parentToChildMonitorGpa', 'parent_to_child_monitor_gpa', 24, 'u64'),
        f('childToParentMonitorGpa', 'child_to_parent_monitor_gpa', 32, 'u64'),
      ]),
    ],
  ],
  16: fixed(8, []),
  17: fixed(8, []),
  18: fixed(28, [
    f('childRelid', 'channel_id', 8, 'u32'),
    f('targetVp', 'target_vp', 12, 'u32'),
    f('targetSint', 'target_sint', 16, 'u32'),
    f('ringBufferGpadlHandle', 'ring_buffer_gpadl', 20, 'u32'),
    f('downstreamRingBufferPageOffset', 'downstream_page_offset', 24, 'u32'),
  ]),
  19: fixed(20, [
    f('childRelid', 'channel_id', 8, 'u32'),
    f('targetVp', 'target_vp', 12, 'u32'),
    f('targetSint', 'target_sint', 16, 'u32'),
  ]),
  20: fixed(12, [f('childRelid', 'channel_id', 8, 'u32')]),
  21: [
    'fixed',
    [
      form('TlConnectRequest', 40, TL_REQUEST_FIELDS),
      form('TlConnectRequest2', 56, [...TL_REQUEST_FIELDS, f('siloId', 'silo_id', 40, 'guid')]),
    ],
  ],
  22: fixed(16, [RELID, f('targetVp', 'target_vp', 12, 'u32')]),
  23: fixed(44, [
    f('endpointId', 'endpoint_id', 8, 'guid'),
    f('serviceId', 'service_id', 24, 'guid'),
    f('status', 'status', 40, 'u32'),
  ]),
  24: fixed(16, [RELID, f('status', 'status', 12, 'u32')]),
  25: fixed(24, [
    f('parentToChildMonitorGpa', 'parent_to_child_monitor_gpa', 8, 'u64'),
    f('childToParentMonitorGpa', 'child_to_parent_monitor_gpa', 16, 'u64'),
  ]),
  26: fixed(9, [f('connectionState', 'connection_state', 8, 'u8')]),
  27: fixed(8, []),
  28: fixed(8, []),
  29: fixed(8, []),
};

function build(): readonly (TypeSpec | undefined)[] {
  const out: (TypeSpec | undefined)[] = [undefined];
  for (let type = 1; type < CHANNELMSG_COUNT; type++) {
    const [kind, forms] = ENTRIES[type]!;
    const name = channelMessageName(type)!;
    out.push(
      Object.freeze({
        type,
        name,
        short: name.slice('CHANNELMSG_'.length),
        kind,
        forms: Object.freeze(forms),
      }),
    );
  }
  return Object.freeze(out);
}

/** Layout of each message type, indexed by type number; index 0 (INVALID) is undefined. */
export const LAYOUTS: readonly (TypeSpec | undefined)[] = build();

/** Fixed size of GPADL_HEADER before its range data, and of GPADL_BODY before its PFNs. */
export const GPADL_HEADER_SIZE = 20;
export const GPADL_BODY_SIZE = 16;
