// Public API of the devices layer: device protocols (integration components, synthetic storage)
// and, built on the KMCL tables only, their host VSPs and guest VSCs, with the VSPs' servicing
// (save and restore into a new host instance).

export * from './driver-common.js';
export * from './drivers.js';
export * from './ic/index.js';
export * from './ic/vsc.js';
export * from './ic/vsp.js';
export * from './servicing.js';
export * from './storage/index.js';
export * from './storage/vsc-driver.js';
export * from './storage/vsp-driver.js';
