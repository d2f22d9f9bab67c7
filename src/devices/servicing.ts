// Servicing helpers the host VSP drivers share: saving one server channel through the KMCL
// (VmbChannelPause, VmbChannelSaveBegin / SaveContinue / SaveEnd, VmbChannelDisable,
// VmbChannelCleanup) together with the driver's own device state, and restoring a freshly
// configured channel from the saved chunks (VmbChannelRestoreFromBuffer). Each driver keeps its
// device state as plain data (numbers, strings, arrays, Uint8Arrays), so a saved driver can be
// posted to another thread and restored there by a new host instance. See docs/servicing.md.

import {
  type KMCL_SERVER_INTERFACE_V1,
  NT_SUCCESS,
  ntStatusName,
  STATUS_BUFFER_OVERFLOW,
  STATUS_MORE_PROCESSING_REQUIRED,
  STATUS_SUCCESS,
  type VMBCHANNEL,
} from '../kmcl/index.js';
import { DeviceDriverError } from './driver-common.js';

/** Default size of one saved-state chunk (the channel's state is usually far smaller). */
export const DEFAULT_SAVE_CHUNK_BYTES = 64 * 1024;

/** Smallest chunk size the drivers accept (a chunk header is 32 bytes). */
export const MIN_SAVE_CHUNK_BYTES = 64;

export interface VspSaveOptions {
  /** Bytes per saved-state chunk (default DEFAULT_SAVE_CHUNK_BYTES, at least MIN_SAVE_CHUNK_BYTES). */
  chunkSize?: number;
}

/**
 * Saves a started server channel and hands it off: pauses it (waiting until every delivered
 * packet is completed), calls `capture` for the driver's device state (the channel is quiet
 * then), takes the KMCL saved state in chunks, ends the save (the offer stays in the bus, the
 * guest sees nothing) and frees the channel. If the KMCL refuses the save, the channel is taken
 * back and started again, and a DeviceDriverError('save-failed') is thrown: the driver carries on.
 */
export async function saveServerChannel<T>(
  S: KMCL_SERVER_INTERFACE_V1,
  channel: VMBCHANNEL,
  name: string,
  capture: () => T,
  options: VspSaveOptions = {},
): Promise<{ chunks: Uint8Array[]; state: T }> {
  const chunkSize = options.chunkSize ?? DEFAULT_SAVE_CHUNK_BYTES;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < MIN_SAVE_CHUNK_BYTES) {
    throw new RangeError(`chunkSize must be an integer of at least ${MIN_SAVE_CHUNK_BYTES}`);
  }
  await S.VmbChannelPause(channel);
  const begin = S.VmbChannelSaveBegin(channel);
  if (!NT_SUCCESS(begin)) {
    S.VmbChannelStart(channel);
    throw new DeviceDriverError('save-failed', `${name}: VmbChannelSaveBegin: ${ntStatusName(begin)}`, begin);
  }
  let state: T;
  const chunks: Uint8Array[] = [];
  try {
    state = capture();
    for (;;) {
      const buf = new Uint8Array(chunkSize);
      const r = S.VmbChannelSaveContinue(channel, buf, buf.length);
      if (r.status !== STATUS_SUCCESS && r.status !== STATUS_BUFFER_OVERFLOW) {
        throw new DeviceDriverError(
          'save-failed',
          `${name}: VmbChannelSaveContinue: ${ntStatusName(r.status)}`,
          r.status,
        );
      }
      chunks.push(buf.slice(0, r.BytesFilled));
      if (r.status === STATUS_SUCCESS) break;
    }
  } catch (e) {
    // An unfinished save: SaveEnd takes the offer back and the channel carries on.
    S.VmbChannelSaveEnd(channel);
    S.VmbChannelStart(channel);
    throw e;
  }
  S.VmbChannelSaveEnd(channel);
  await S.VmbChannelDisable(channel);
  S.VmbChannelCleanup(channel);
  return { chunks, state };
}

/**
 * Restores a configured server channel (Init setters done, not yet enabled) from the chunks
 * saveServerChannel returned: STATUS_MORE_PROCESSING_REQUIRED for every chunk but the last,
 * STATUS_SUCCESS for the last. Anything else cleans the channel up (VmbChannelCleanup) and
 * throws DeviceDriverError('restore-failed').
 */
export function restoreServerChannel(
  S: KMCL_SERVER_INTERFACE_V1,
  channel: VMBCHANNEL,
  name: string,
  chunks: readonly Uint8Array[],
): void {
  const fail = (text: string, status: number | null): never => {
    S.VmbChannelCleanup(channel);
    throw new DeviceDriverError('restore-failed', `${name}: ${text}`, status);
  };
  if (chunks.length === 0) fail('the saved channel has no chunks', null);
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i]!;
    const st = S.VmbChannelRestoreFromBuffer(channel, c, c.length);
    const want = i === chunks.length - 1 ? STATUS_SUCCESS : STATUS_MORE_PROCESSING_REQUIRED;
    if (st !== want) {
      fail(`VmbChannelRestoreFromBuffer (chunk ${i + 1} of ${chunks.length}): ${ntStatusName(st)}`, st);
    }
  }
}

/** True when every one of `keys` of `record` is a non-negative safe integer (saved counters). */
export function savedCounts(record: unknown, keys: readonly string[]): boolean {
  if (record === null || typeof record !== 'object') return false;
  const r = record as Record<string, unknown>;
  return keys.every((k) => typeof r[k] === 'number' && Number.isSafeInteger(r[k]) && (r[k] as number) >= 0);
}

/** The fields of ChannelCountersSnapshot that savedCounts checks. */
export const CHANNEL_COUNTER_KEYS = ['packetsIn', 'bytesIn', 'packetsOut', 'bytesOut', 'errors'] as const;

/** True when `a` and `b` are the same GUID text (any case); false for anything not a string. */
export function sameInstance(a: unknown, b: string): boolean {
  return typeof a === 'string' && a.toLowerCase() === b.toLowerCase();
}

/** Throws DeviceDriverError('restore-failed') unless `ok`. */
export function checkSaved(ok: boolean, name: string, what: string): void {
  if (!ok) throw new DeviceDriverError('restore-failed', `${name}: the saved state ${what}`);
}
