// Public API of the bus layer: the VMBus control plane. `VmbusServer` is the host's side (one
// per guest partition, on the host end of the partition's hv link); `VmbusClient` is the guest's
// side (on the guest end). They speak the channel-management protocol of spec/vmbus-wire.md
// section 3 over either hv transport and leave the data path (rings) to the KMCL layer above.
//
// ## Host: VmbusServer (server.ts)
//
//   const server = new VmbusServer(partition.host, partition.memory, {
//     versions?, featureFlags?, gpadlLimits?, vpCount?, maxChannels?, hostView?, tracer?,
//     onTlConnectRequest?: (req) => boolean | Promise<boolean>,    // true: you offered its channel
//   });
//   server.onProtocolError((e: BusProtocolError) => log(e));       // every refused guest message
//   server.onConnect(({ version, featureFlags, msgConnId }) => ...); server.onDisconnect(reason => ...)
//
//   const handle = server.offerChannel(
//     { interfaceType, interfaceInstance, flags?, mmioMegabytes?, mmioMegabytesOptional?,
//       userDefined?, pipeMode?: 'byte' | 'message', subChannelIndex? },
//     {
//       onOpen(req: ServerOpenRequest): number | Promise<number>,   // 0 accepts; else the failure status sent
//       onClose(reason): void | Promise<void>,                      // awaited before the channel counts closed
//       onGuestSignal?(): void,                                     // guest's HvSignalEvent for the channel
//       onGpadlCreated?(gpadl: ServerGpadlInfo): void,
//       onGpadlTeardown?(gpadl, 'teardown' | 'release'): void | Promise<void>,  // GPADL_TORNDOWN waits
//       onModify?(targetVp): number | Promise<number>,
//       onReleased?(): void,                                        // revoked relid freed
//     });
//   // handle = { offerId, relid, connectionId }: plain data; connectionId = 0x2000 + relid
//   server.signalGuest(handle): boolean          // sets the open channel's event flag; no allocation
//   server.getGpadl(handle, id) / server.gpadls(handle): ServerGpadlInfo { gpadlId, relid, ranges, pfnCount, byteCount }
//   server.mapGpadl(handle, id, { readOnly? }): GrantedMdl   // checked grant over the GPADL's bytes
//   server.unmapGpadl(handle, id, mdl)                       // a guest teardown waits for every unmap
//   server.rings(handle): ChannelRings | null; server.openRequest(handle); server.channelPhase(handle)
//   await server.revokeOffer(handle)             // RESCIND; resolves on RELID_RELEASED (or unload)
//   server.state                                 // ServerState: plain data (save/restore later)
//
// ServerOpenRequest carries the validated ring: `ringPfns`, `downstreamPageOffset`, `rings`
// (ChannelRings over guest memory) and `ringGrant` (the host's writable grant on the ring pages,
// revoked when the channel closes), plus openId, targetVp (0xFFFFFFFF = interrupts disabled),
// userData (120 bytes), and the signalling pair (connectionId the guest signals, eventFlag the
// host sets). After revokeOffer, only onReleased is called for that channel.
//
// Ordering: the server handles the guest's messages one at a time, in arrival order; a message
// whose handling waits for a hook (onOpen, onClose, onModify, the unload/reconnect reset,
// onTlConnectRequest) holds the later ones until the hook settles, so replies follow the guest's
// order whatever the transport's batching. Hooks must therefore not wait for later guest control
// messages (e.g. onOpen must not await revokeOffer). A teardown that waits for onGpadlTeardown or
// for unmapGpadl does not hold the queue: GPADL_TORNDOWN goes out when they are done.
//
// ## Guest: VmbusClient (client.ts)
//
//   const client = new VmbusClient(partition.link, partition.memory, { tracer?, autoRelease? });
//   await client.connect({ versions?, featureFlags?, targetVcpu?, monitorPages?, clientId? });
//   const offers = await client.requestOffers();   // ClientOffer[] (validated), then ALLOFFERS_DELIVERED
//   client.onOffer(o => ...); client.onRescind(o => ... /* may return a promise */); client.onProtocolError(e => ...)
//   client.waitForOffer(o => o.interfaceType.equals(t)); client.offers(); client.offer(relid)
//   const { gpadlId, status } = await client.createGpadl(relid, pfns | ranges);  // throws (sync) > 8190 pages
//   await client.teardownGpadl(relid, gpadlId);
//   const status = await client.openChannel(relid, { ringGpadlId, downstreamPageOffset, targetVp?, userData?,
//                                                    openId?, connectionId?, eventFlag?, flags? });
//   client.onHostSignal(relid, handler | null); client.signalHost(relid): boolean   // no allocation
//   await client.closeChannel(relid); await client.modifyChannel(relid, vp); await client.releaseChannel(relid)
//   await client.tlConnect(endpointId, serviceId, siloId?); await client.pause(); await client.resume()
//   await client.unload();
//
// Promises of the client reject with BusError ('rescinded', 'disconnected', 'no-version',
// 'connection-failed', 'send-failed', 'link-closed', 'disposed'); calls that break the API's
// contract (unknown relid, channel not open, a GPADL the wire cannot describe) throw at once.
// Messages from the other side that are refused become BusProtocolError events (with a `code`),
// never exceptions out of the hv message handler.
//
// ## Traces
//
// Both take a `tracer(direction, message)`; `recordTrace()` / `traceLine()` (trace.ts) turn the
// decoded messages into canonical lines, used to check that both hv transports behave the same.

export {
  CLIENT_SUPPORTED_FEATURE_FLAGS,
  type ClientChannelPhase,
  type ClientConnectionInfo,
  type ClientConnectOptions,
  type ClientOffer,
  type ClientOpenParams,
  type ClientTlConnectResult,
  DEFAULT_CLIENT_VERSIONS,
  VmbusClient,
  type VmbusClientOptions,
} from './client.js';
export { BusError, type BusErrorCode, BusProtocolError, type BusProtocolErrorCode } from './errors.js';
export { Listeners, type Unsubscribe } from './events.js';
export {
  DEFAULT_SERVER_GPADL_LIMITS,
  MAX_RELID,
  SERVER_CONNECTION_ID_BASE,
  SERVER_SUPPORTED_FEATURE_FLAGS,
  type ServerChannelHandle,
  type ServerChannelHandler,
  type ServerCloseReason,
  type ServerConnectInfo,
  type ServerDisconnectReason,
  type ServerGpadlInfo,
  type ServerGpadlLimits,
  type ServerOfferParams,
  type ServerOpenRequest,
  type TlConnectRequest,
  VmbusServer,
  type VmbusServerOptions,
} from './server.js';
export {
  assertPlainData,
  initialServerState,
  SERVER_STATE_VERSION,
  type ServerChannelPhase,
  type ServerChannelState,
  type ServerConnectionState,
  type ServerContactRequest,
  type ServerGpadlState,
  type ServerIncompleteGpadlState,
  type ServerOfferState,
  type ServerOpenState,
  type ServerState,
} from './server-state.js';
export { type BusTrace, type BusTracer, recordTrace, type TraceDirection, traceLine } from './trace.js';
