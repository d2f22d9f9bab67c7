// `vmbus info`: the protocol versions and the member names of both KMCL tables, read from tables
// obtained by a real interface query, as text and as JSON; bad usage is a CliError.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CliError } from '../../src/cli/errors.js';
import { type InfoReport, runInfo } from '../../src/cli/info.js';
import { KMCL_CLIENT_INTERFACE_TYPE, KMCL_SERVER_INTERFACE_TYPE } from '../../src/kmcl/index.js';

/** KMCL_CLIENT_INTERFACE_V1's functions in the documented table order (spec 4.1, rows 1-41). */
const CLIENT = [
  'VmbChannelAllocate',
  'VmbChannelCleanup',
  'VmbChannelCreateGpadlFromBuffer',
  'VmbChannelCreateGpadlFromMdl',
  'VmbChannelDeleteGpadl',
  'VmbChannelDisable',
  'VmbChannelEnable',
  'VmbChannelGetInterfaceInstance',
  'VmbChannelGetMmioSpace',
  'VmbChannelGetPointer',
  'VmbChannelInitSetClientContextSize',
  'VmbChannelInitSetFlags',
  'VmbChannelInitSetFriendlyName',
  'VmbChannelInitSetMaximumExternalData',
  'VmbChannelInitSetMaximumPacketSize',
  'VmbChannelInitSetProcessPacketCallbacks',
  'VmbChannelInitSetStateChangeCallbacks',
  'VmbChannelPacketComplete',
  'VmbChannelPacketDeferToPassive',
  'VmbChannelPacketFail',
  'VmbChannelPacketGetExternalData',
  'VmbChannelPause',
  'VmbChannelSendSynchronousRequest',
  'VmbChannelSetIncomingProcessingAtPassive',
  'VmbChannelSetInterruptLatency',
  'VmbChannelSetPointer',
  'VmbChannelSetTransactionQuota',
  'VmbChannelSizeofPacket',
  'VmbChannelStart',
  'VmbClientChannelInitSetRingBufferPageCount',
  'VmbClientChannelInitSetTargetPnp',
  'VmbPacketAllocate',
  'VmbPacketFree',
  'VmbPacketGetChannel',
  'VmbPacketGetPointer',
  'VmbPacketInitialize',
  'VmbPacketSend',
  'VmbPacketSendWithExternalMdl',
  'VmbPacketSendWithExternalPfns',
  'VmbPacketSetCompletionRoutine',
  'VmbPacketSetPointer',
];

/** KMCL_SERVER_ONLY_METHODS in the documented order (spec 4.1, rows 42-55). */
const SERVER_ONLY = [
  'VmbChannelMapGpadl',
  'VmbChannelRestoreFromBuffer',
  'VmbChannelSaveBegin',
  'VmbChannelSaveContinue',
  'VmbChannelSaveEnd',
  'VmbChannelUnmapGpadl',
  'VmbConvertVmbusHandleToKernelHandle',
  'VmbPacketRestore',
  'VmbServerChannelInitSetFlags',
  'VmbServerChannelInitSetMmioMegabytes',
  'VmbServerChannelInitSetSaveRestorePacketCallbacks',
  'VmbServerChannelInitSetTargetInterfaceId',
  'VmbServerChannelInitSetTargetVtl',
  'VmbServerChannelInitSetVmbusHandle',
];

/** Every protocol version an OpenVMM server accepts (spec/vmbus-wire.md 3.5), oldest first. */
const VERSIONS: [string, number, string][] = [
  ['VERSION_WS2008', 0x0000000d, '0.13'],
  ['VERSION_WIN7', 0x00010001, '1.1'],
  ['VERSION_WIN8', 0x00020004, '2.4'],
  ['VERSION_WIN8_1', 0x00030000, '3.0'],
  ['VERSION_WIN10', 0x00040000, '4.0'],
  ['VERSION_WIN10_V4_1', 0x00040001, '4.1'],
  ['VERSION_WIN10_V5', 0x00050000, '5.0'],
  ['VERSION_WIN10_V5_1', 0x00050001, '5.1'],
  ['VERSION_WIN10_V5_2', 0x00050002, '5.2'],
  ['VERSION_WIN10_V5_3', 0x00050003, '5.3'],
  ['VERSION_WIN10_V6_0', 0x00060000, '6.0'],
];

async function info(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await runInfo(args, {
    stdout: (t) => {
      stdout += t;
    },
    stderr: (t) => {
      stderr += t;
    },
    readStdin: async () => '',
  });
  return { code, stdout, stderr };
}

describe('vmbus info', () => {
  test('text: every version, then all 41 + 14 member names numbered in table order', async () => {
    const r = await info([]);
    assert.equal(r.code, 0);
    assert.equal(r.stderr, '');
    const lines = r.stdout.split('\n');
    // Versions, oldest first, each with its major.minor, hex value and name.
    let at = 0;
    for (const [name, value, display] of VERSIONS) {
      const hex = `0x${value.toString(16).padStart(8, '0')}`;
      const i = lines.findIndex(
        (l, k) => k >= at && l.includes(display) && l.includes(hex) && l.includes(name),
      );
      assert.ok(i >= 0, `version line for ${name} after line ${at}`);
      at = i + 1;
    }
    // Member lines "  N  Name", numbered 1..55 in order.
    const members = lines
      .map((l) => /^\s+(\d+)\s{2}(Vmb\w+)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null);
    assert.deepEqual(
      members.map((m) => m[2]),
      [...CLIENT, ...SERVER_ONLY],
    );
    assert.deepEqual(
      members.map((m) => Number(m[1])),
      Array.from({ length: 55 }, (_, i) => i + 1),
    );
    assert.match(r.stdout, /KMCL_CLIENT_INTERFACE_V1: .*41 functions/);
    assert.match(
      r.stdout,
      /KMCL_SERVER_INTERFACE_V1: .*55 functions: the 41 above, then KMCL_SERVER_ONLY_METHODS \(14\)/,
    );
  });

  test('--json: the versions list is complete and both tables list their members in order', async () => {
    const r = await info(['--json']);
    assert.equal(r.code, 0);
    const report = JSON.parse(r.stdout) as InfoReport;
    assert.deepEqual(
      report.versions,
      VERSIONS.map(([name, value, display]) => ({ name, value, display })),
    );
    assert.deepEqual(report.kmcl.client.members, CLIENT);
    assert.deepEqual(report.kmcl.server.members, [...CLIENT, ...SERVER_ONLY]);
    assert.equal(report.kmcl.client.interfaceType, KMCL_CLIENT_INTERFACE_TYPE.toString());
    assert.equal(report.kmcl.server.interfaceType, KMCL_SERVER_INTERFACE_TYPE.toString());
    assert.equal(report.kmcl.client.version, 1);
    assert.equal(report.kmcl.server.version, 1);
    // The header's Size: a 32-byte WDM INTERFACE header and one 8-byte pointer per function.
    assert.equal(report.kmcl.client.size, 32 + 41 * 8);
    assert.equal(report.kmcl.server.size, 32 + 55 * 8);
  });

  test('bad usage is a CliError', async () => {
    await assert.rejects(
      info(['tables']),
      (e: unknown) => e instanceof CliError && /unexpected argument/.test(e.message),
    );
    await assert.rejects(info(['--verbose']), CliError);
  });
});
