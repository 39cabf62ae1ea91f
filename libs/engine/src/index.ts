/**
 * libs/engine: build ONNX graphs in TypeScript, differentiate them, serialize them, run them on onnxruntime-node,
 * and update parameters. Nothing here knows about language models. Importing this entry loads onnxruntime-node;
 * light.ts is the part that does not.
 */
export * from './light.js';
export {
  gradCheck,
  type FeedValue,
  type GradCheckOptions,
  type GradCheckReport,
  type GradCheckSetup,
  type TensorGradReport,
} from './gradcheck.js';
export * from './runtime/index.js';
