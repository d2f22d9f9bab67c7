// Errors and I/O plumbing shared by the `vmbus` commands: the error a command raises for bad usage
// or bad input it finds itself (CliError), the one-line text every failure is reported as (never a
// stack trace), and the I/O interface commands write through, so tests can run them in-process.

import { type ParseArgsConfig, parseArgs } from 'node:util';
import { MemoryAccessError } from '../memory/guest-memory.js';
import { RingError } from '../ring/errors.js';
import { WireError } from '../wire/errors.js';
import { ScriptError } from './packet-script.js';

/** Bad usage or bad input found by the command line itself; the message is shown as is. */
export class CliError extends Error {
  override readonly name = 'CliError';
}

/** Where a command reads and writes. */
export interface CliIo {
  /** Writes text to standard output (callers add the newlines). */
  stdout(text: string): void;
  /** Writes text to standard error. */
  stderr(text: string): void;
  /** All of standard input, as UTF-8 text. */
  readStdin(): Promise<string>;
}

/** Node's system errors (fs) carry a string `code` such as ENOENT. */
function isSystemError(e: unknown): e is NodeJS.ErrnoException & { code: string } {
  return e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string';
}

const SYSTEM_REASONS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EISDIR: 'is a directory',
  ENOTDIR: 'a path component is not a directory',
  ENOSPC: 'no space left on device',
  EROFS: 'read-only file system',
};

/** A CliError `PATH: reason` for a failed file operation (fs errors get a short reason). */
export function fileError(path: string, e: unknown): CliError {
  if (isSystemError(e)) {
    return new CliError(`${path}: ${SYSTEM_REASONS[e.code] ?? e.code.toLowerCase()}`);
  }
  return new CliError(`${path}: ${e instanceof Error ? e.message : String(e)}`);
}

/**
 * The single line (`vmbus: ...`, no newline) that reports `e`: the message of the project's typed
 * errors, of CliError and of fs errors; `internal error: ...` for anything else. Never a stack.
 */
export function errorLine(e: unknown): string {
  let text: string;
  if (
    e instanceof CliError ||
    e instanceof WireError ||
    e instanceof RingError ||
    e instanceof MemoryAccessError ||
    e instanceof ScriptError
  ) {
    text = e.message;
  } else if (isSystemError(e)) {
    text = `${e.code}: ${e.message}`;
  } else if (e instanceof Error) {
    text = `internal error: ${e.name}: ${e.message}`;
  } else {
    text = `internal error: ${String(e)}`;
  }
  return `vmbus: ${text.replace(/\s*[\r\n]+\s*/g, ' ').trim()}`;
}

/** node:util parseArgs (strict, positionals allowed) with its errors turned into CliError. */
export function parseCommandArgs(args: string[], options: NonNullable<ParseArgsConfig['options']>) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new CliError((e as Error).message);
  }
}
