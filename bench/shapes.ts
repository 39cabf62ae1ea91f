/**
 * The model shapes users compare with PyTorch (SmolLM-135M at T=256, TinyLlama-1.1B at T=512) and the common setup of
 * the perf and profile benches: the run options from the command line, a random checkpoint of a shape loaded as a
 * CausalLM, and the FedBiOT split and LoRA specs of the step (top-2 adapter layers, LoRA r=8 on q,v, dropout 0.05 unless `--lora-dropout`).
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ExecutionProvider, HalfCompute, WebGpuOptions } from '../libs/engine/src/index.js';
import {
  CausalLM,
  expectedTensorShapes,
  writeCheckpoint,
  type LoadOptions,
  parseModelConfig,
  type ModelConfig,
  normalSampler,
  writeRandomCheckpoint,
  type LoraSpec,
} from '../libs/model/src/index.js';
import { loraSpecs, splitModel, type ModelSplit } from '../libs/fedbiot/src/index.js';
import { SMOLLM_135M } from './model.js';
import { argOf } from './common.js';

const TINYLLAMA_11B = {
  model_type: 'llama',
  vocab_size: 32000,
  hidden_size: 2048,
  intermediate_size: 5632,
  num_hidden_layers: 22,
  num_attention_heads: 32,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 2048,
  rope_theta: 10000,
};

/** LLaMA-2-7B's shape (random weights: the FedBiOT emulator of a 7B model on one GPU). */
const LLAMA2_7B = {
  model_type: 'llama',
  vocab_size: 32000,
  hidden_size: 4096,
  intermediate_size: 11008,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 4096,
  rope_theta: 10000,
};

export const SHAPES: Record<string, { config: Record<string, unknown>; seq: number; name: string }> = {
  smollm: { config: SMOLLM_135M, seq: 256, name: 'smollm135m' },
  tinyllama: { config: TINYLLAMA_11B, seq: 512, name: 'tinyllama1.1b' },
  llama7b: { config: LLAMA2_7B, seq: 512, name: 'llama2-7b' },
};

/**
 * `--provider`, `--threads`, `--steps`, `--models`, `--webgpu '{"validationMode":"disabled"}'`, and the frozen
 * weights' storage `--weights-dtype float32|float16|bfloat16` with their matmuls' `--compute float32|float16`
 * (default: float32 on the CPU provider, float16 on GPU providers; LoadOptions), and `--activations float16`.
 */
export interface BenchRunOptions {
  readonly provider: ExecutionProvider;
  readonly threads: number | undefined;
  readonly steps: number;
  readonly models: readonly string[];
  readonly webgpu: WebGpuOptions | undefined;
  readonly weightsDtype: NonNullable<LoadOptions['weightsDtype']>;
  readonly compute: HalfCompute | undefined;
  /** `--activations float16`: float16 activations too (LoadOptions.activations; needs half weights). */
  readonly activations: NonNullable<LoadOptions['activations']>;
  /** LoRA dropout of the step (`--lora-dropout`, default 0.05 as the PyTorch peer); 0 builds graphs without masks. */
  readonly loraDropout: number;
}

export function benchRunOptions(args: readonly string[]): BenchRunOptions {
  const webgpu = argOf(args, 'webgpu');
  const computeArg = argOf(args, 'compute');
  return {
    provider: (argOf(args, 'provider') ?? 'cpu') as ExecutionProvider,
    threads: argOf(args, 'threads') ? Number(argOf(args, 'threads')) : undefined,
    steps: Number(argOf(args, 'steps') ?? 3),
    models: (argOf(args, 'models') ?? 'smollm').split(','),
    webgpu: webgpu ? (JSON.parse(webgpu) as WebGpuOptions) : undefined,
    weightsDtype: oneOf<BenchRunOptions['weightsDtype']>('weights-dtype', argOf(args, 'weights-dtype') ?? 'float32', [
      'float32',
      'float16',
      'bfloat16',
    ]),
    compute: computeArg === undefined ? undefined : oneOf<HalfCompute>('compute', computeArg, ['float32', 'float16']),
    activations: oneOf<BenchRunOptions['activations']>('activations', argOf(args, 'activations') ?? 'float32', [
      'float32',
      'float16',
    ]),
    loraDropout: loraDropoutOf(argOf(args, 'lora-dropout')),
  };
}

function loraDropoutOf(arg: string | undefined): number {
  const p = Number(arg ?? 0.05);
  if (!(p >= 0 && p < 1)) throw new Error(`--lora-dropout ${arg}: expected a number in [0, 1)`);
  return p;
}

function oneOf<T extends string>(flag: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value))
    throw new Error(`--${flag} ${value}: expected one of ${allowed.join(', ')}`);
  return value as T;
}

/** Weights above this many values are tiled from one random block (see writeBenchCheckpoint). */
const TILE_ABOVE = 2e9;

/**
 * A random checkpoint of `cfg` for timing: writeRandomCheckpoint's (normal, std 0.02, seed 1), except that models
 * above 2G parameters repeat one block of 16M such values (drawing 6.7G normals in JS takes minutes; the values do
 * not change a step's time, only its numbers).
 */
async function writeBenchCheckpoint(dir: string, cfg: ModelConfig): Promise<void> {
  const shapes = [...expectedTensorShapes(cfg)];
  const total = shapes.reduce((a, [, sh]) => a + sh.reduce((x, y) => x * y, 1), 0);
  if (total <= TILE_ABOVE) return writeRandomCheckpoint(dir, cfg, 1);
  const normal = normalSampler(1);
  const block = Float32Array.from({ length: 1 << 24 }, () => normal() * 0.02);
  const weights = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const data = new Float32Array(shape.reduce((x, y) => x * y, 1));
    // As initWeights: norms 1, biases 0, every other weight random.
    if (name.endsWith('norm.weight')) data.fill(1);
    else if (!name.endsWith('.bias'))
      for (let at = 0; at < data.length; at += block.length) data.set(block.subarray(0, data.length - at), at);
    weights.set(name, data);
  }
  await writeCheckpoint(dir, cfg, weights);
}

/**
 * Bytes of the frozen weights the graphs map: the half-precision file in the graph folder, or the fp32 checkpoint
 * files. In MiB.
 */
export function frozenWeightsMib(lm: CausalLM): number {
  let bytes = 0;
  if (lm.halfWeights) {
    const prefix = lm.halfWeights.dtype === 'float16' ? 'f16-' : 'bf16-';
    for (const f of readdirSync(lm.graphs.store.dir))
      if (f.startsWith(prefix) && f.endsWith('.safetensors')) bytes += statSync(join(lm.graphs.store.dir, f)).size;
  } else {
    const files = new Set(lm.checkpoint!.tensorNames.map((n) => lm.checkpoint!.weightRef(n).file));
    for (const f of files) bytes += statSync(f).size;
  }
  return +(bytes / 2 ** 20).toFixed(1);
}

export interface BenchModel {
  readonly name: string;
  readonly seq: number;
  readonly cfg: ModelConfig;
  readonly lm: CausalLM;
  readonly split: ModelSplit;
  readonly specs: { adapter: LoraSpec; emulator: LoraSpec };
}

/** Writes a random checkpoint of shape `key` under `tmp` and loads it with the run's options plus `extra`. */
export async function loadBenchModel(
  key: string,
  tmp: string,
  run: BenchRunOptions,
  extra: Partial<LoadOptions> = {},
): Promise<BenchModel> {
  const shape = SHAPES[key];
  if (!shape) throw new Error(`--models: unknown shape ${key} (${Object.keys(SHAPES).join(', ')})`);
  const cfg = parseModelConfig(shape.config, `${shape.name}.json`);
  console.log(`${shape.name}: writing random checkpoint ...`);
  await writeBenchCheckpoint(join(tmp, key), cfg);
  const lm = await CausalLM.load(join(tmp, key), {
    provider: run.provider,
    cacheRoot: join(tmp, 'cache'),
    ...(run.webgpu ? { webgpu: run.webgpu } : {}),
    ...(run.threads ? { threads: run.threads } : {}),
    weightsDtype: run.weightsDtype,
    ...(run.compute ? { compute: run.compute } : {}),
    ...(run.activations === 'float16' ? { activations: run.activations } : {}),
    ...extra,
  });
  const split = splitModel({ numLayers: cfg.numLayers, adapterBottom: 0, adapterTop: 2, dropRate: 0.2 });
  const specs = loraSpecs(split, { r: 8, alpha: 16, dropout: run.loraDropout, targets: ['q_proj', 'v_proj'] });
  return { name: shape.name, seq: shape.seq, cfg, lm, split, specs };
}
