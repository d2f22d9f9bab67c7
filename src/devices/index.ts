// Public API of the devices layer: device protocols (integration components, synthetic storage)
// and, built on the KMCL tables only, their host VSPs and guest VSCs.

export * from './ic/index.js';
export * from './storage/index.js';
