/**
 * Fresh weights for a config (pretraining from scratch, benchmarks, tests) and a WeightStore over weights held
 * in memory. Initialisation follows transformers' LlamaPreTrainedModel: normal(0, initializer_range) for linears
 * and embeddings, ones for RMSNorm weights, zeros for biases.
 */
import { mulberry32 } from '../../engine/src/light.js';
import { expectedTensorShapes } from './checkpoint.js';
import type { ModelConfig } from './config.js';
import type { WeightStore } from './llama.js';

/** Seeded normal(0, 1) sampler (mulberry32 + Box-Muller): same seed, same weights on every machine. */
export function normalSampler(seed: number): () => number {
  const next = mulberry32(seed);
  // shifted by half a step so the uniform is never 0 (log(0) in Box-Muller)
  const uniform = (): number => next() + 0.5 / 4294967296;
  return () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

export function initWeights(cfg: ModelConfig, seed: number, std = 0.02): Map<string, Float32Array> {
  const normal = normalSampler(seed);
  const out = new Map<string, Float32Array>();
  for (const [name, shape] of expectedTensorShapes(cfg)) {
    const n = shape.reduce((p, d) => p * d, 1);
    const data = new Float32Array(n);
    if (name.endsWith('norm.weight')) data.fill(1);
    else if (!name.endsWith('.bias')) for (let i = 0; i < n; i++) data[i] = normal() * std;
    out.set(name, data);
  }
  return out;
}

/** Weights held in memory, given to graphs inline (fine for small models; large ones go through a checkpoint). */
export function memoryWeights(
  cfg: ModelConfig,
  weights: ReadonlyMap<string, Float32Array | Float64Array>,
): WeightStore {
  const shapes = expectedTensorShapes(cfg);
  const resolve = (name: string): string =>
    name === 'lm_head.weight' && cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : name;
  return {
    shape: (name) => {
      const s = shapes.get(resolve(name));
      if (!s || !weights.has(resolve(name))) throw new Error(`memoryWeights: no weight ${name}`);
      return s;
    },
    source: (name, dtype) => {
      const v = weights.get(resolve(name));
      if (!v) throw new Error(`memoryWeights: no weight ${name}`);
      if (dtype === 'float32') return { data: v instanceof Float32Array ? v : Float32Array.from(v) };
      if (dtype === 'float64') return { data: v instanceof Float64Array ? v : Float64Array.from(v) };
      throw new Error(`memoryWeights: dtype ${dtype} not supported`);
    },
  };
}

/** Writes a checkpoint folder with freshly initialised weights (benchmarks, pretraining from scratch). */
export async function writeRandomCheckpoint(dir: string, cfg: ModelConfig, seed: number, std = 0.02): Promise<void> {
  const { writeCheckpoint } = await import('./checkpoint.js');
  await writeCheckpoint(dir, cfg, initWeights(cfg, seed, std));
}
