import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type * as ort from 'onnxruntime-node';
import type { DType, IrModel } from '../ir.js';
import type { ExecutionProvider } from './providers.js';

type OptimizationLevel = NonNullable<ort.InferenceSession.SessionOptions['graphOptimizationLevel']>;

/** Typed configuration of one ORT session; {@link buildSessionOptions} turns it into ORT's options object. */
/** The WebGPU provider's options that matter for speed (see onnxruntime-common's WebGpuExecutionProviderOption). */
export interface WebGpuOptions {
  readonly validationMode?: 'disabled' | 'wgpuOnly' | 'basic' | 'full';
  readonly storageBufferCacheMode?: 'disabled' | 'lazyRelease' | 'simple' | 'bucket';
}

export interface SessionConfig {
  /**
   * Provider the session runs on, already resolved (see resolveProvider). For a GPU provider, 'cpu' is listed after
   * it so that nodes the GPU provider has no kernel for still run (ORT then warns that some nodes were not assigned
   * to the preferred provider). Default 'cpu'.
   */
  readonly provider?: ExecutionProvider;
  /**
   * Options of the WebGPU provider (onnxruntime-node's WebGpuExecutionProviderOption: validationMode,
   * storageBufferCacheMode, ...), passed through when the provider is 'webgpu'. Default: onnxruntime's.
   */
  readonly webgpu?: WebGpuOptions;
  /** Threads inside one operator. Default: physical cores available to this process (at least 1). */
  readonly intraOpNumThreads?: number;
  /**
   * Element type the graph computes in. 'float64' lowers the default optimization level to 'basic': at 'extended'
   * and above ORT fuses x*sigmoid(x) into com.microsoft.QuickGelu, which has only a float32 kernel, and session
   * creation fails (docs/engine-notes.md §2.3). Default 'float32'. See {@link graphComputesInFloat64}.
   */
  readonly computeDtype?: DType;
  /** Overrides the level chosen from computeDtype ('all' for float32/float16, 'basic' for float64). */
  readonly graphOptimizationLevel?: OptimizationLevel;
  /**
   * The frozen weights are external data in a file ORT memory-maps. Disables prepacking, which would copy every
   * weight into packed buffers (about 2x the weights' size in a training graph, where each weight feeds a forward
   * and a backward Gemm) and drop the file mapping; step time is the same within noise (docs/engine-notes.md §3).
   * Default true.
   */
  readonly memoryMappedWeights?: boolean;
  /**
   * The graph casts half-precision frozen weights to float32 at their matmuls (engine halfLinear, compute
   * 'float32'). Turns off onnxruntime's ConstantFolding, which would otherwise replace each such Cast by a float32
   * copy of the weight made at session creation (measured on the CPU provider: the half weights plus their float32
   * copies, 1.5x the float32 model instead of 0.5x). Nothing else is lost: the model's graphs have no other
   * constant subgraphs (a LoRA training graph of the tiny LLaMA: 0 of 507 nodes foldable). Default false: every other
   * graph is optimized as before.
   */
  readonly keepHalfWeights?: boolean;
  /**
   * Enables ORT's profiler; the JSON trace is written to `<prefix>_<timestamp>.json` when the session ends profiling
   * (the runners do that on release). Default: off.
   */
  readonly profileFilePrefix?: string;
  /**
   * Where outputs are left. 'gpu-buffer' (WebGPU only) keeps them on the GPU, where they can be fed to another
   * WebGPU session of the same thread without a round trip (checked on the H200 machine). Their contents cannot be
   * read from node: `Tensor.getData()` on such an output aborts the process (std::terminate in onnxruntime-node 1.30,
   * measured on the H200 machine), which is why ModelRunner, whose outputs are HostTensors, does not offer it.
   * Default 'cpu'.
   */
  readonly preferredOutputLocation?: 'cpu' | 'gpu-buffer';
  /** ORT log severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal. Default: ORT's (2). */
  readonly logSeverityLevel?: 0 | 1 | 2 | 3 | 4;
  /** Tag in ORT's log lines. */
  readonly logId?: string;
  /**
   * Contents of external data files for a model loaded from bytes, keyed by the `location` written in the model
   * (ORT copies them). Not needed for a model loaded from a path.
   */
  readonly externalData?: readonly { readonly path: string; readonly data: Uint8Array }[];
}

/**
 * Physical cores usable by this process: distinct (socket, core) pairs in /proc/cpuinfo, capped by the CPUs in the
 * affinity mask (`os.availableParallelism()`); elsewhere the latter alone. At least 1. Hyperthread siblings are not
 * counted because MLAS kernels saturate a core's vector units; two threads on one core only contend.
 */
export function physicalCoreCount(): number {
  const logical = Math.max(1, availableParallelism());
  try {
    const cores = new Set<string>();
    let socket = '0';
    for (const line of readFileSync('/proc/cpuinfo', 'utf8').split('\n')) {
      const [key, value] = line.split(':').map((s) => s.trim());
      if (key === 'physical id') socket = value ?? '0';
      else if (key === 'core id') cores.add(`${socket}:${value ?? ''}`);
    }
    if (cores.size > 0) return Math.max(1, Math.min(cores.size, logical));
  } catch {
    // No /proc (macOS, Windows): logical CPUs are the best estimate available.
  }
  return logical;
}

/**
 * Whether any graph value, weight or Cast target of `model` is float64, i.e. whether it needs
 * `computeDtype: 'float64'` (see {@link SessionConfig.computeDtype}).
 */
export function graphComputesInFloat64(model: IrModel): boolean {
  const values = [...model.inputs, ...model.outputs, ...model.initializers, ...(model.valueInfo ?? [])];
  if (values.some((v) => v.dtype === 'float64')) return true;
  const FLOAT64 = 11; // TensorProto.DOUBLE
  return model.nodes.some((n) => {
    const to = n.attributes['to'];
    return n.opType === 'Cast' && to?.kind === 'int' && to.value === FLOAT64;
  });
}

/**
 * Builds ORT session options from `config`: the provider list, `intraOpNumThreads` (default physical cores),
 * one inter-op thread with sequential execution (the graphs are chains; parallel mode only adds thread contention),
 * intra-op spinning off (spinning threads steal cores from other sessions and the event loop on a busy machine;
 * docs/engine-notes.md §3), prepacking off for memory-mapped weights, the optimization level, profiling and output
 * location.
 * @throws RangeError for a non-positive or fractional thread count, Error for 'gpu-buffer' outputs on a CPU-only session
 */
export function buildSessionOptions(config: SessionConfig = {}): ort.InferenceSession.SessionOptions {
  const provider = config.provider ?? 'cpu';
  const threads = config.intraOpNumThreads ?? physicalCoreCount();
  if (!Number.isInteger(threads) || threads < 1) {
    throw new RangeError(`session config: intraOpNumThreads must be a positive integer, got ${threads}`);
  }
  if (config.preferredOutputLocation === 'gpu-buffer' && provider !== 'webgpu') {
    throw new Error(
      `session config: preferredOutputLocation 'gpu-buffer' needs the webgpu provider, not '${provider}'`,
    );
  }
  const session: Record<string, string> = { 'intra_op.allow_spinning': '0' };
  if (config.memoryMappedWeights ?? true) session['disable_prepacking'] = '1';
  const options: ort.InferenceSession.SessionOptions = {
    executionProviders:
      provider === 'cpu'
        ? ['cpu']
        : [provider === 'webgpu' && config.webgpu ? { name: 'webgpu', ...config.webgpu } : provider, 'cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: config.graphOptimizationLevel ?? (config.computeDtype === 'float64' ? 'basic' : 'all'),
    extra: config.keepHalfWeights
      ? { session, optimization: { disable_specified_optimizers: 'ConstantFolding' } }
      : { session },
  };
  if (config.profileFilePrefix !== undefined) {
    options.enableProfiling = true;
    options.profileFilePrefix = config.profileFilePrefix;
  }
  if (config.preferredOutputLocation !== undefined) options.preferredOutputLocation = config.preferredOutputLocation;
  if (config.logSeverityLevel !== undefined) options.logSeverityLevel = config.logSeverityLevel;
  if (config.logId !== undefined) options.logId = config.logId;
  if (config.externalData !== undefined) {
    options.externalData = config.externalData.map((d) => ({ path: d.path, data: d.data }));
  }
  return options;
}
