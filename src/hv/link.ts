// Making partition links: the same-thread transport (both ends in this thread, woken through a
// deterministic scheduler) and the cross-thread one (each side attaches from the descriptor's
// SharedArrayBuffers in its own thread and is woken with Atomics.waitAsync / Atomics.notify).

import { type HvEndOptions, HvGuestEnd, HvHostEnd, type HvHostEndOptions } from './end.js';
import { createHvLinkDescriptor, type HvLinkDescriptor, type HvLinkOptions } from './layout.js';
import { HvScheduler } from './scheduler.js';

/** Both ends of a link living in one thread. */
export interface HvPartitionLink {
  readonly descriptor: HvLinkDescriptor;
  readonly host: HvHostEnd;
  readonly guest: HvGuestEnd;
  readonly scheduler: HvScheduler;
  /** Resolves when the whole same-thread system (every link on this scheduler) is quiet. */
  idle(): Promise<void>;
  /** Runs queued deliveries now, synchronously; returns how many ran. */
  runUntilIdle(): number;
  /** Closes the link (both ends). */
  close(): void;
}

export interface SameThreadLinkOptions extends HvLinkOptions {
  /** Share one scheduler between links to get one deterministic order for all of them. */
  readonly scheduler?: HvScheduler;
}

/** Creates a link whose host and guest ends both live in this thread (deterministic delivery). */
export function createSameThreadLink(options: SameThreadLinkOptions = {}): HvPartitionLink {
  const descriptor = createHvLinkDescriptor(options);
  return pairSameThread(descriptor, options.scheduler ?? new HvScheduler());
}

/** Attaches both ends of an existing descriptor in this thread, on `scheduler`. */
export function pairSameThread(descriptor: HvLinkDescriptor, scheduler: HvScheduler): HvPartitionLink {
  const host = new HvHostEnd(descriptor, {}, 'none');
  const guest = new HvGuestEnd(descriptor, {}, 'none');
  HvHostEnd.pairSameThread(host, guest, scheduler);
  return {
    descriptor,
    host,
    guest,
    scheduler,
    idle: () => scheduler.idle(),
    runUntilIdle: () => scheduler.runUntilIdle(),
    close: () => host.close(),
  };
}

/** Attaches the host end of a cross-thread link (woken by Atomics.waitAsync; keeps the thread alive until closed or unref'd). */
export function attachHvHost(descriptor: HvLinkDescriptor, options: HvHostEndOptions = {}): HvHostEnd {
  return new HvHostEnd(descriptor, options, 'atomics');
}

/** Attaches the guest end of a cross-thread link, typically in the guest's worker thread. */
export function attachHvGuest(descriptor: HvLinkDescriptor, options: HvEndOptions = {}): HvGuestEnd {
  return new HvGuestEnd(descriptor, options, 'atomics');
}
