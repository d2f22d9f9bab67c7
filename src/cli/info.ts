// `vmbus info [--json]`: what this build speaks. The VMBus protocol versions come from the wire
// layer's version table; the KMCL tables are not listed from constants but read from real tables:
// a host KMCL provider (over a bus with no partitions; the query needs none) is asked for
// KMCL_CLIENT_INTERFACE_TYPE and KMCL_SERVER_INTERFACE_TYPE as a driver would ask, the function
// members of each table are listed in table order, and each table is released with
// InterfaceDereference.

import {
  type INTERFACE,
  KMCL_CLIENT_INTERFACE_TYPE,
  KMCL_CLIENT_INTERFACE_V1_SIZE,
  KMCL_CLIENT_INTERFACE_VERSION_V1,
  KMCL_SERVER_INTERFACE_TYPE,
  KMCL_SERVER_INTERFACE_V1_SIZE,
  KMCL_SERVER_INTERFACE_VERSION_V1,
  type KmclHostBus,
  KmclProvider,
  NT_SUCCESS,
  ntStatusName,
  queryInterface,
} from '../kmcl/index.js';
import { VMBUS_VERSIONS } from '../wire/constants.js';
import type { Guid } from '../wire/guid.js';
import { CliError, type CliIo, parseCommandArgs } from './errors.js';

export const INFO_USAGE = [
  'vmbus info [--json]               VMBus protocol versions and the KMCL tables of this build',
];

export interface InfoVersion {
  /** Linux `VERSION_*` name. */
  name: string;
  /** The u32 on the wire (major << 16 | minor). */
  value: number;
  /** `major.minor`. */
  display: string;
}

export interface InfoTable {
  /** The structure's name, e.g. KMCL_CLIENT_INTERFACE_V1. */
  name: string;
  /** The InterfaceType GUID the table was queried with. */
  interfaceType: string;
  /** INTERFACE.Version of the table. */
  version: number;
  /** INTERFACE.Size of the table in bytes (x64 layout). */
  size: number;
  /** The function members, in table order (the WDM INTERFACE header's functions excluded). */
  members: string[];
}

export interface InfoReport {
  versions: InfoVersion[];
  kmcl: { client: InfoTable; server: InfoTable };
}

/** The INTERFACE header's own function members, which are not KMCL functions. */
const HEADER_FUNCTIONS: ReadonlySet<string> = new Set(['InterfaceReference', 'InterfaceDereference']);

/** A host bus with no partitions: enough for a provider that is only queried. */
const EMPTY_HOST_BUS: KmclHostBus = {
  partitions: () => [],
  createServerPort: () => null,
};

function readTable(
  provider: KmclProvider,
  name: string,
  type: Guid,
  size: number,
  version: number,
): InfoTable {
  const q = queryInterface(provider, type, size, version);
  if (!NT_SUCCESS(q.status) || q.Interface === undefined) {
    throw new CliError(`info: the ${name} query failed with ${ntStatusName(q.status)}`);
  }
  const table: INTERFACE = q.Interface;
  try {
    const members = Object.keys(table).filter(
      (key) =>
        typeof (table as unknown as Record<string, unknown>)[key] === 'function' &&
        !HEADER_FUNCTIONS.has(key),
    );
    return { name, interfaceType: type.toString(), version: table.Version, size: table.Size, members };
  } finally {
    table.InterfaceDereference(table.Context);
  }
}

/** Everything `vmbus info` shows, read at run time. */
export function collectInfo(): InfoReport {
  const provider = KmclProvider.forHost(EMPTY_HOST_BUS);
  return {
    versions: VMBUS_VERSIONS.map((v) => ({ name: v.linuxName, value: v.value, display: v.display })),
    kmcl: {
      client: readTable(
        provider,
        'KMCL_CLIENT_INTERFACE_V1',
        KMCL_CLIENT_INTERFACE_TYPE,
        KMCL_CLIENT_INTERFACE_V1_SIZE,
        KMCL_CLIENT_INTERFACE_VERSION_V1,
      ),
      server: readTable(
        provider,
        'KMCL_SERVER_INTERFACE_V1',
        KMCL_SERVER_INTERFACE_TYPE,
        KMCL_SERVER_INTERFACE_V1_SIZE,
        KMCL_SERVER_INTERFACE_VERSION_V1,
      ),
    },
  };
}

function hex32(value: number): string {
  return `0x${(value >>> 0).toString(16).padStart(8, '0')}`;
}

function tableLines(t: InfoTable, from: number, count: number): string[] {
  const lines: string[] = [];
  for (let i = from; i < from + count; i++) lines.push(`  ${String(i + 1).padStart(2)}  ${t.members[i]}`);
  return lines;
}

/** The report as text lines. */
export function formatInfo(r: InfoReport): string[] {
  const lines = [`VMBus protocol versions (${r.versions.length}, oldest first):`];
  for (const v of r.versions) lines.push(`  ${v.display.padEnd(5)}  ${hex32(v.value)}  ${v.name}`);
  const { client, server } = r.kmcl;
  const header = (t: InfoTable) =>
    `${t.name}: InterfaceType {${t.interfaceType}}, Version ${t.version}, Size ${t.size}, ${t.members.length} functions`;
  lines.push('', `${header(client)}:`, ...tableLines(client, 0, client.members.length));
  // The server table is the client table followed by KMCL_SERVER_ONLY_METHODS: show it that way
  // when the table read back really has that shape, else list it whole.
  const extendsClient =
    server.members.length >= client.members.length && client.members.every((m, i) => server.members[i] === m);
  lines.push('');
  if (extendsClient) {
    const extra = server.members.length - client.members.length;
    lines.push(
      `${header(server)}: the ${client.members.length} above, then KMCL_SERVER_ONLY_METHODS (${extra}):`,
      ...tableLines(server, client.members.length, extra),
    );
  } else {
    lines.push(`${header(server)}:`, ...tableLines(server, 0, server.members.length));
  }
  lines.push(
    '',
    "The InterfaceType GUIDs and Version numbers are this implementation's own: Microsoft does not publish them.",
  );
  return lines;
}

/** `vmbus info [--json]`: returns the exit status; bad usage is thrown (main reports it). */
export async function runInfo(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(args, { json: { type: 'boolean' } });
  if (positionals.length > 0) {
    throw new CliError(
      `info: unexpected argument ${JSON.stringify(positionals[0])} (usage: vmbus info [--json])`,
    );
  }
  const report = collectInfo();
  if (values.json) io.stdout(`${JSON.stringify(report, null, 2)}\n`);
  else io.stdout(`${formatInfo(report).join('\n')}\n`);
  return 0;
}
