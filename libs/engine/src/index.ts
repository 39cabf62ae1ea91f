/**
 * libs/engine: build ONNX graphs in TypeScript, differentiate them, serialize them, run them on onnxruntime-node,
 * and update parameters. Nothing here knows about language models.
 */
export * from './ir.js';
export { GraphError, ShapeError, fmtShape } from './errors.js';
export { Graph, Tensor, type TapeEntry, type VjpContext, type VjpFn, type WeightSource } from './graph.js';
export * as ops from './ops.js';
export type { OpName } from './op-names.js';
export { gradients, unbroadcast, type GradientOptions } from './autodiff.js';
export { crossEntropy, maskedMeanCrossEntropy, rmsNorm } from './composite.js';
export { halfLinear, linear, type HalfCompute } from './nn.js';
export {
  gradCheck,
  type FeedValue,
  type GradCheckOptions,
  type GradCheckReport,
  type GradCheckSetup,
  type TensorGradReport,
} from './gradcheck.js';
export * from './onnx/serialize.js';
export * from './runtime/index.js';
export * from './optim/index.js';
export * from './safetensors.js';
export { mulberry32, type Mulberry32 } from './random.js';
export { GraphTrainer, LossScaler, makeOptimizer, type OptimizerConfig, type StepResult } from './train.js';
