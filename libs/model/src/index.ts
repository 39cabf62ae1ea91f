/**
 * libs/model: LLaMA-family models from Hugging Face checkpoints on the engine. Importing this entry loads
 * onnxruntime-node; light.ts is the part that does not.
 */
export * from './light.js';
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
export { GraphStore, defaultCacheRoot } from './graph-store.js';
export { CompiledGraphs } from './compiled.js';
export * from './causal-lm.js';
export * from './trainer.js';
export * from './adapters.js';
export { initWeights, memoryWeights, normalSampler, writeRandomCheckpoint } from './init.js';
export { pruneModelCache } from './cache-prune.js';
