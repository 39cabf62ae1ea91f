/**
 * libs/fedbiot: the FedBiOT algorithm, its baselines, the round coordinator and the standalone job. Importing this
 * entry loads onnxruntime-node; light.ts is the part that does not.
 */
export * from './light.js';
export * from './split.js';
export * from './aggregate.js';
export * from './sampling.js';
export * from './plan.js';
export * from './roles.js';
export * from './coordinator.js';
export { runJob, type JobOptions, type JobResult } from './job.js';
export { pretrainDemoModel, pretrainDeepDemoModel, demoModelConfig, cleanWorkDir, DEMO_JOB } from './demo-model.js';
export { chunks, toTokenBatch, ExampleStream } from './batches.js';
export * from './emulator-package.js';
export {
  INSECURE_DP_NOISE_SEED_ENV,
  defaultDegree,
  maxWeightFor,
  privacyFor,
  privacySummary,
  type PrivacyAggregation,
} from './privacy-aggregation.js';
