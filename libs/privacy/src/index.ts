/** libs/privacy: secure aggregation and client-level differential privacy for adapter LoRA updates. */
export * from './errors.js';
export * from './fixed-point.js';
export * from './shamir.js';
export * from './graph.js';
export * from './messages.js';
export * from './secagg.js';
export * from './in-process.js';
export * from './client-input.js';
export * from './rng.js';
export * from './dp.js';
export * from './rdp.js';
export * from './vector.js';
export { expandMask } from './kx.js';
export * from './rng-bytes.js';
