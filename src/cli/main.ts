#!/usr/bin/env node
// The `vmbus` command: dispatches `ring`, `msg`, `demo` and `help` to their modules. Every failure is
// reported as one `vmbus: ...` line on standard error with exit status 1, never a stack trace (set
// VMBUS_DEBUG=1 to also get the stack of an internal error). `main` takes its I/O as a parameter so
// tests can run commands in-process; run as a program, it uses the process's streams.

import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CliError, type CliIo, errorLine } from './errors.js';
import { INFO_USAGE } from './info.js';
import { MSG_USAGE, runMsg } from './msg-commands.js';
import { RING_USAGE, runRing } from './ring-commands.js';

export const USAGE = [
  'usage: vmbus COMMAND [ARGS]',
  '',
  'commands:',
  ...RING_USAGE.map((l) => `  ${l}`),
  ...MSG_USAGE.map((l) => `  ${l}`),
  ...INFO_USAGE.map((l) => `  ${l}`),
  '  vmbus demo [ARGS]       host and guest on two worker threads talking over VMBus (--help)',
  '  vmbus help              this text (also --help, -h)',
  '',
  'Packet scripts (ring encode) have one packet a line, numbers decimal or 0x-hex, # comments:',
  '  send TYPE FLAGS XACTID [HEX]              e.g. send 6 1 0x1000 68656c6c6f',
  '  sglist XACTID LEN:OFS:PFN[,...] [HEX]     e.g. sglist 0x42 4096:0:0x1234,100:8:0x99 deadbeef',
].join('\n');

const COMMANDS = 'ring, msg, info, demo, help';

/** The demo is loaded lazily: it pulls in every layer and starts workers; the codecs need none of it. */
async function runDemoCommand(args: string[]): Promise<number> {
  const { runDemo } = await import('./demo.js');
  return runDemo(args);
}

async function dispatch(argv: string[], io: CliIo): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'ring':
      return runRing(rest, io);
    case 'msg':
      return runMsg(rest, io);
    case 'info':
      return (await import('./info.js')).runInfo(rest, io);
    case 'demo':
      return runDemoCommand(rest);
    case 'help':
    case '--help':
    case '-h':
      io.stdout(`${USAGE}\n`);
      return 0;
    case undefined:
      throw new CliError(`no command given (commands: ${COMMANDS}; see vmbus help)`);
    default:
      throw new CliError(
        `unknown command ${JSON.stringify(command)} (commands: ${COMMANDS}; see vmbus help)`,
      );
  }
}

/** Runs the command line `argv` (without node and script) and returns the exit status. */
export async function main(argv: readonly string[], io: CliIo): Promise<number> {
  try {
    return await dispatch([...argv], io);
  } catch (e) {
    io.stderr(`${errorLine(e)}\n`);
    if (process.env.VMBUS_DEBUG && e instanceof Error && e.stack) io.stderr(`${e.stack}\n`);
    return 1;
  }
}

/** The process's own streams. */
export function processIo(): CliIo {
  return {
    stdout: (text) => {
      process.stdout.write(text);
    },
    stderr: (text) => {
      process.stderr.write(text);
    },
    readStdin: async () => {
      const chunks: Buffer[] = [];
      for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    },
  };
}

function isEntryPoint(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    // realpath: an npm bin is a symlink to dist/cli/main.js.
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  // A closed pipe (`vmbus ring decode F | head`) ends the output quietly.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
  main(process.argv.slice(2), processIo()).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`${errorLine(e)}\n`);
      process.exitCode = 1;
    },
  );
}
