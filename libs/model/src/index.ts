/** libs/model: LLaMA-family models from Hugging Face checkpoints on the engine. */
export * from './config.js';
export * from './errors.js';
export {
  expectedTensorShapes,
  openCheckpoint,
  writeCheckpoint,
  generationConfigFor,
  writeDirAtomic,
  writeJsonAtomic,
  type Checkpoint,
  type WeightRef,
} from './checkpoint.js';
export * from './rope.js';
export * from './tokenizer.js';
export * from './peft.js';
export * from './llama.js';
export * from './linears.js';
export * from './lora.js';
export { GraphStore, defaultCacheRoot } from './graph-store.js';
export { CompiledGraphs } from './compiled.js';
export * from './causal-lm.js';
export * from './trainer.js';
export * from './adapters.js';
export { checkLayerIds, parseLayerName, renumberedWeights } from './layer-ids.js';
export { initWeights, memoryWeights, writeRandomCheckpoint } from './init.js';
