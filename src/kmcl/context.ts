// Execution contexts (spec/kmcl-api.md 1.5, 9.2): the library tracks whether the code running now
// is in a 'blocking' context (PASSIVE_LEVEL: may wait) or a 'nonblocking' one (DISPATCH_LEVEL: must
// not). Code outside any KMCL callback counts as blocking (a driver's own thread). KMCL switches the
// context around each callback it invokes; blocking APIs call `requireBlocking` first and throw a
// KmclContractViolation when invoked from non-blocking code. JavaScript runs one stack at a time, so
// one module variable is enough: a callback's synchronous part sees its context, and continuations
// after an `await` run later from an empty stack, i.e. in blocking context (like a work item).

import { KmclContractViolation } from './errors.js';

export type ExecutionContext = 'blocking' | 'nonblocking';

let current: ExecutionContext = 'blocking';

/** The context of the code running now. */
export function currentExecutionContext(): ExecutionContext {
  return current;
}

/** Runs `fn` in context `ctx`, restoring the previous context afterwards (also when it throws). */
export function runInContext<R>(ctx: ExecutionContext, fn: () => R): R {
  const prev = current;
  current = ctx;
  try {
    return fn();
  } finally {
    current = prev;
  }
}

/**
 * Switches to `ctx` and returns the previous context, for hot paths that cannot afford a closure:
 * `const prev = enterContext('nonblocking'); try { ... } finally { leaveContext(prev); }`.
 */
export function enterContext(ctx: ExecutionContext): ExecutionContext {
  const prev = current;
  current = ctx;
  return prev;
}

/** Restores the context `enterContext` returned. */
export function leaveContext(prev: ExecutionContext): void {
  current = prev;
}

/** Throws unless the current context may block; `api` names the caller in the error. */
export function requireBlocking(api: string): void {
  if (current !== 'blocking') {
    throw new KmclContractViolation(
      'blocking-call-in-nonblocking-context',
      api,
      'may block, but was called from a non-blocking context (for example EvtVmbChannelProcessPacket)',
    );
  }
}
