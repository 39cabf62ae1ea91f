/** Public API of the ORT runtime layer: tensors in JS memory, provider choice, session options, runners, buckets. */
export {
  assertHostTensor,
  cloneHostTensor,
  fromOrtTensor,
  hostTensor,
  toOrtTensor,
  type HostData,
  type HostTensor,
} from './host-tensor.js';
export {
  EXECUTION_PROVIDERS,
  ProviderUnavailableError,
  providerProblem,
  resolveProvider,
  type ExecutionProvider,
  type ResolveProviderOptions,
} from './providers.js';
export {
  buildSessionOptions,
  graphComputesInFloat64,
  physicalCoreCount,
  type SessionConfig,
  type WebGpuOptions,
} from './session-options.js';
export { openRunner, RunnerError, type ModelRunner, type ModelSource, type OpenRunnerOptions } from './session.js';
export { resolveFetches, validateFeeds, type TensorSignature } from './signature.js';
export {
  CUDA_INSTALL_HINT,
  CUDA_PROVIDER_FILES,
  CUDA_PROVIDER_MARKER,
  diagnoseCuda,
  elfNeeded,
  libraryLoadProblem,
  ortBinaryDir,
  ortVersion,
  type CudaDiagnosis,
} from './cuda-libs.js';
export {
  CUDA_BINDING_HOME,
  cudaBindingPackageDir,
  ort,
  ORT_BINDING_ENV,
  ortPackageDir,
  resolveBindingDir,
  type Ort,
} from './ort.js';
export { BucketCache, pickBucket, type BucketCacheOptions } from './buckets.js';
