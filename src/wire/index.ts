// Public API of the wire layer: stateless encoders and decoders for everything VMBus puts on the
// wire (constants, GUIDs, channel-management messages, GPADL messages, ring packets).

export * from './constants.js';
export * from './errors.js';
export * from './gpadl.js';
export * from './guid.js';
export * from './message-json.js';
export { fromHex, toHex } from './messages/bytes.js';
export * from './messages.js';
export * from './packets.js';
