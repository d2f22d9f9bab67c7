// Integration components (heartbeat, shutdown, time sync, KVP): the IC framing and negotiation,
// the message codecs, and the pure host (VSP) and guest (VSC) state machines of each service.

export * from './constants.js';
export * from './framing.js';
export * from './heartbeat.js';
export * from './kvp.js';
export * from './service.js';
export * from './shutdown.js';
export * from './timesync.js';
