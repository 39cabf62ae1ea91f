/**
 * libs/model, light entry: model configs, errors, linear-layer names and shapes, LoRA naming/shapes/init/attachment
 * and layer ids, without loading onnxruntime-node (it builds on libs/engine's light entry). Job-spec validation
 * imports this, so `--help`, the services launcher and spec checks start without the native binding. Everything
 * here is also exported by index.ts.
 */
export * from './config.js';
export * from './errors.js';
export * from './linears.js';
export * from './lora.js';
export { checkLayerIds, parseLayerName, renumberedWeights } from './layer-ids.js';
