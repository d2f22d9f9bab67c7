// `vmbus msg decode` and `vmbus msg encode`: one VMBus channel-management message (the SynIC payload,
// 8-byte header included) between its hex bytes and its description or JSON form, entirely through
// the wire layer's codec (decodeMessage / describeMessage / messageToJson / messageFromJson /
// encodeMessage), so decode -> encode gives back exactly the input bytes.

import { WireError } from '../wire/errors.js';
import { fromHex, toHex } from '../wire/index.js';
import { describeMessage, messageFromJson, messageToJson } from '../wire/message-json.js';
import { decodeMessage, encodeMessage } from '../wire/messages.js';
import { CliError, type CliIo, parseCommandArgs } from './errors.js';

export const MSG_USAGE = [
  'vmbus msg decode [HEX] [--json]   (HEX may contain spaces; read from standard input if absent)',
  'vmbus msg encode [JSON]           (JSON as `msg decode --json` prints it; standard input if absent)',
];

/** The message bytes of a hex text (whitespace allowed anywhere, an optional 0x prefix). */
export function messageBytesFromHex(text: string): Uint8Array {
  const compact = text.replace(/\s+/g, '').replace(/^0[xX]/, '');
  if (compact === '') throw new CliError('msg decode: no hex bytes given');
  const bytes = fromHex(compact);
  if (bytes === undefined) {
    throw new CliError(
      /^[0-9a-fA-F]*$/.test(compact)
        ? `msg decode: odd number of hex digits (${compact.length})`
        : 'msg decode: the message is not hex (expected digits 0-9 and a-f)',
    );
  }
  return bytes;
}

/** Runs `f`, prefixing the message of a WireError it throws with `what`. */
function withContext<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof WireError) throw new CliError(`${what}: ${e.message}`);
    throw e;
  }
}

async function decodeCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(args, { json: { type: 'boolean' } });
  const text = positionals.length > 0 ? positionals.join(' ') : await io.readStdin();
  const msg = withContext('msg decode', () => decodeMessage(messageBytesFromHex(text)));
  if (values.json) io.stdout(`${JSON.stringify(messageToJson(msg), null, 2)}\n`);
  else io.stdout(`${describeMessage(msg).join('\n')}\n`);
  return 0;
}

async function encodeCommand(args: string[], io: CliIo): Promise<number> {
  const { positionals } = parseCommandArgs(args, {});
  if (positionals.length > 1) throw new CliError('msg encode: expected at most one JSON argument');
  const text = positionals.length === 1 ? positionals[0]! : await io.readStdin();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    const where = positionals.length === 1 ? 'the argument' : 'standard input';
    throw new CliError(`msg encode: ${where} is not JSON (${(e as Error).message})`);
  }
  const bytes = withContext('msg encode', () => encodeMessage(messageFromJson(json)));
  io.stdout(`${toHex(bytes)}\n`);
  return 0;
}

/** `vmbus msg ...`: returns the exit status; bad input is thrown (main reports it). */
export async function runMsg(args: string[], io: CliIo): Promise<number> {
  const sub = args[0];
  if (sub === 'decode') return decodeCommand(args.slice(1), io);
  if (sub === 'encode') return encodeCommand(args.slice(1), io);
  throw new CliError(
    sub === undefined
      ? 'msg: expected decode or encode'
      : `msg: unknown subcommand ${JSON.stringify(sub)} (expected decode or encode)`,
  );
}
