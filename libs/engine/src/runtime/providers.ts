import type * as Ort from 'onnxruntime-node';
import { ort } from './ort.js';
import type { IrModel } from '../ir.js';
import { encodeModel } from '../onnx/serialize.js';
import { CUDA_INSTALL_HINT, diagnoseCuda } from './cuda-libs.js';

/**
 * Execution providers the engine can ask onnxruntime-node for. `cpu` is always there; `webgpu` is bundled but needs
 * a Vulkan driver and adapter; `cuda` needs two provider libraries in onnxruntime-node's folder (`npm run
 * setup:cuda`, or onnxruntime-node's own NuGet download) and the CUDA libraries they link against (cuda-libs.ts).
 */
export type ExecutionProvider = 'cpu' | 'webgpu' | 'cuda';

export const EXECUTION_PROVIDERS: readonly ExecutionProvider[] = ['cpu', 'webgpu', 'cuda'];

/** What usually fixes each provider's failure; appended to ORT's terse reason. */
const HINTS: Readonly<Record<ExecutionProvider, string>> = {
  cpu: '',
  cuda: CUDA_INSTALL_HINT,
  webgpu: 'the WebGPU provider (Dawn) needs a Vulkan loader (libvulkan.so.1) and a GPU driver that offers an adapter',
};

let cudaHint: string | undefined;

/**
 * The hint for a failed provider. For CUDA, ORT says only "Failed to load shared library", so this names the file:
 * a provider library missing from onnxruntime-node's folder, or a CUDA library the loader cannot find (cuda-libs.ts).
 */
function hintFor(provider: ExecutionProvider): string {
  if (provider !== 'cuda') return HINTS[provider];
  if (cudaHint === undefined) {
    let found: string | undefined;
    try {
      found = diagnoseCuda().summary;
    } catch (e) {
      found = `could not inspect the CUDA provider libraries: ${e instanceof Error ? e.message : String(e)}`;
    }
    cudaHint =
      (found ?? 'the provider and CUDA libraries all load, so the GPU or its driver failed (check nvidia-smi)') +
      `; ${HINTS.cuda}`;
  }
  return cudaHint;
}

/** Thrown by {@link resolveProvider} when a provider cannot create a session and fallback is off. */
export class ProviderUnavailableError extends Error {
  override readonly name = 'ProviderUnavailableError';
  readonly provider: ExecutionProvider;
  /** ORT's error from the probe session. */
  override readonly cause: Error;

  constructor(provider: ExecutionProvider, cause: Error) {
    super(`execution provider '${provider}' is unavailable: ${cause.message.trim()} (${hintFor(provider)})`);
    this.provider = provider;
    this.cause = cause;
  }
}

/** Options of {@link resolveProvider}. */
export interface ResolveProviderOptions {
  /** When the provider is unavailable: true returns 'cpu' after one warning, false throws. */
  readonly fallback: boolean;
  /** Where the fallback warning goes. Default `console.warn`. */
  readonly warn?: (message: string) => void;
}

/** y = a + b on float32[1]: the smallest graph every provider implements, so a failure is about the provider. */
const PROBE_MODEL: IrModel = {
  name: 'provider-probe',
  opset: 17,
  inputs: [
    { name: 'a', dtype: 'float32', shape: [1] },
    { name: 'b', dtype: 'float32', shape: [1] },
  ],
  outputs: [{ name: 'y', dtype: 'float32', shape: [1] }],
  initializers: [],
  nodes: [{ opType: 'Add', domain: '', name: 'add', inputs: ['a', 'b'], outputs: ['y'], attributes: {} }],
};

// Per process (each worker thread has its own copy, but workers receive an already resolved provider).
const probes = new Map<ExecutionProvider, Promise<Error | undefined>>();
const warned = new Set<ExecutionProvider>();

function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

/**
 * Creates a session for the probe model with `provider` alone (no CPU fallback inside ORT) and runs it once: some
 * providers load their library lazily and only fail when a kernel is first dispatched.
 */
async function probe(provider: ExecutionProvider): Promise<Error | undefined> {
  let session: Ort.InferenceSession | undefined;
  try {
    session = await ort.InferenceSession.create(encodeModel(PROBE_MODEL), {
      executionProviders: [provider],
      intraOpNumThreads: 1,
      // ORT logs the same failure at error level before throwing it; the caller reports it once, clearly.
      logSeverityLevel: 4,
    });
    const one = new ort.Tensor('float32', Float32Array.of(1), [1]);
    const out = await session.run({ a: one, b: one });
    const y = out['y']?.data as Float32Array | undefined;
    if (y?.[0] !== 2) throw new Error(`probe Add returned ${String(y?.[0])} instead of 2`);
    return undefined;
  } catch (e) {
    return asError(e);
  } finally {
    await session?.release();
  }
}

function assertKnownProvider(provider: string): asserts provider is ExecutionProvider {
  if (!(EXECUTION_PROVIDERS as readonly string[]).includes(provider)) {
    throw new TypeError(`unknown execution provider '${provider}' (known: ${EXECUTION_PROVIDERS.join(', ')})`);
  }
}

/**
 * Whether `provider` can create and run a session here, probed once per process (concurrent callers share the
 * probe).
 * @throws TypeError for a name outside {@link EXECUTION_PROVIDERS}
 * @returns undefined when it works, otherwise ORT's error
 */
export function providerProblem(provider: ExecutionProvider): Promise<Error | undefined> {
  assertKnownProvider(provider);
  if (provider === 'cpu') return Promise.resolve(undefined);
  let p = probes.get(provider);
  if (p === undefined) {
    p = probe(provider);
    probes.set(provider, p);
  }
  return p;
}

/**
 * Picks the provider a session will actually use. `requested` is returned when a probe session on it works;
 * otherwise, with `fallback`, 'cpu' is returned and one warning per provider and process says why; without
 * `fallback`, a {@link ProviderUnavailableError} is thrown.
 */
export async function resolveProvider(
  requested: ExecutionProvider,
  opts: ResolveProviderOptions,
): Promise<ExecutionProvider> {
  const problem = await providerProblem(requested);
  if (problem === undefined) return requested;
  if (!opts.fallback) throw new ProviderUnavailableError(requested, problem);
  if (!warned.has(requested)) {
    warned.add(requested);
    (opts.warn ?? console.warn)(
      `onnxruntime execution provider '${requested}' is unavailable, falling back to cpu. ORT said: ` +
        `${problem.message.trim()} (${hintFor(requested)})`,
    );
  }
  return 'cpu';
}
