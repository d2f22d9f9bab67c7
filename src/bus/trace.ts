// Message traces of the control plane: every message a server or client sends or accepts for
// processing can be reported to a tracer, and `traceLine` turns a message into one canonical,
// compact line (large PFN lists and range data are summarised by count and hash), so runs of the
// same scenario over different transports can be compared line by line.

import { messageToJson } from '../wire/message-json.js';
import type { ChannelMessage } from '../wire/messages.js';

/** `in`: received from the other partition. `out`: posted to it. */
export type TraceDirection = 'in' | 'out';

/** Receives each message a server or client posts (`out`) or receives (`in`), decoded. */
export type BusTracer = (direction: TraceDirection, message: ChannelMessage) => void;

/** FNV-1a over a string, as 8 hex digits. */
function hash(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, '0');
}

const LONG = 64;

/**
 * One line describing a message: its name and every field (`key=value`, in wire order), GUIDs as
 * text, u64 values and PFNs in hex; PFN lists and byte areas longer than 64 hex digits become
 * `<count>#<hash>`. The same message always gives the same line.
 */
export function traceLine(message: ChannelMessage): string {
  const json = messageToJson(message);
  const parts: string[] = [String(json.name).replace(/^CHANNELMSG_/, '')];
  for (const [key, value] of Object.entries(json)) {
    if (key === 'name' || key === 'type') continue;
    if (Array.isArray(value)) {
      parts.push(`${key}=${value.length}#${hash(value.join(','))}`);
    } else if (typeof value === 'string' && value.length > LONG) {
      parts.push(`${key}=${value.length / 2}B#${hash(value)}`);
    } else {
      parts.push(`${key}=${value}`);
    }
  }
  return parts.join(' ');
}

/** A trace of one side: the lines it received and the lines it sent, each in order. */
export interface BusTrace {
  readonly in: string[];
  readonly out: string[];
}

/** A tracer that records `traceLine`s into a fresh BusTrace. */
export function recordTrace(): { trace: BusTrace; tracer: BusTracer } {
  const trace: BusTrace = { in: [], out: [] };
  return {
    trace,
    tracer: (direction, message) => {
      trace[direction].push(traceLine(message));
    },
  };
}
