// Synthetic storage: the vstor packet codec, disk backends, the SCSI target, and the pure host
// (VSP) and guest (VSC) protocol machines modelled on Hyper-V's synthetic SCSI.

export * from './constants.js';
export * from './disk.js';
export * from './scsi.js';
export * from './vsc.js';
export * from './vsp.js';
export * from './vstor.js';
