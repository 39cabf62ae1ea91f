/**
 * libs/engine, light entry: the part of the engine that loads no onnxruntime-node (graph building, autodiff, ONNX
 * serialization, optimizers, safetensors, seeded random). Modules that must load without the native binding import
 * this entry: job-spec validation (libs/model's LoRA names, libs/fedbiot's light entry), run folders and reports, the
 * experiment harness and the services launcher. Everything here is also exported by index.ts.
 */
export * from './ir.js';
export { GraphError, ShapeError, fmtShape } from './errors.js';
export { Graph, Tensor, type TapeEntry, type VjpContext, type VjpFn, type WeightSource } from './graph.js';
export * as ops from './ops.js';
export type { OpName } from './op-names.js';
export { gradients, outputLossAndGradients, unbroadcast, type GradientOptions } from './autodiff.js';
export { crossEntropy, maskedMeanCrossEntropy, rmsNorm } from './composite.js';
export { dropoutMask, halfLinear, linear, type HalfCompute } from './nn.js';
export * from './onnx/serialize.js';
export * from './optim/index.js';
export * from './safetensors.js';
export { dropCapacity, drawDropPositions, mulberry32, type Mulberry32 } from './random.js';
export { GraphTrainer, LossScaler, makeOptimizer, type OptimizerConfig, type StepResult } from './train.js';
