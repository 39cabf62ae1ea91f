/**
 * Model benchmark: a SmolLM-135M-shaped LLaMA (30 layers, d=576, 9/3 heads, FFN 1536, vocab 49152, tied head) with
 * random weights written by the benchmark. LoRA training step (r=8 on q,v of the top 2 layers, B=4, T=256, AdamW;
 * the 28 lower layers are a forward-only prefix) and KV-cache generation. `--weights-dtype float16|bfloat16` and
 * `--compute float32|float16` run it with half-precision frozen weights (LoadOptions).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionProvider, HalfCompute } from '../libs/engine/src/index.js';
import {
  CausalLM,
  type LoadOptions,
  type TokenBatch,
  parseModelConfig,
  writeRandomCheckpoint,
  LoraTrainer,
  initLora,
  type LoraSpec,
} from '../libs/model/src/index.js';
import { argOf, machine, peakRssMib, printTable, time, writeResults } from './common.js';

export const SMOLLM_135M = {
  model_type: 'llama',
  vocab_size: 49152,
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 2048,
  rope_theta: 10000,
  tie_word_embeddings: true,
};

export function randomBatch(B: number, T: number, vocab: number, seed = 1): TokenBatch {
  let s = seed;
  const next = (): number => (s = (s * 1103515245 + 12345) % 2 ** 31) % vocab;
  const ids = Int32Array.from({ length: B * T }, next);
  const labels = Int32Array.from({ length: B * T }, (_, i) => ((i + 1) % T === 0 ? 0 : ids[i + 1]!));
  const lossMask = Float32Array.from({ length: B * T }, (_, i) => ((i + 1) % T === 0 ? 0 : 1));
  return { batch: B, seq: T, inputIds: ids, labels, lossMask };
}

export async function main(args: string[]): Promise<void> {
  const provider = (argOf(args, 'provider') ?? 'cpu') as ExecutionProvider;
  const threads = argOf(args, 'threads') ? Number(argOf(args, 'threads')) : undefined;
  const steps = Number(argOf(args, 'steps') ?? 3);
  const weightsDtype = (argOf(args, 'weights-dtype') ?? 'float32') as NonNullable<LoadOptions['weightsDtype']>;
  if (!['float32', 'float16', 'bfloat16'].includes(weightsDtype))
    throw new Error(`--weights-dtype ${weightsDtype}: expected float32, float16 or bfloat16`);
  const compute = argOf(args, 'compute') as HalfCompute | undefined;
  if (compute !== undefined && compute !== 'float32' && compute !== 'float16')
    throw new Error(`--compute ${compute}: expected float32 or float16`);
  const B = 4;
  const T = 256;
  const cfg = parseModelConfig(SMOLLM_135M, 'smollm-135m-shape.json');
  const tmp = mkdtempSync(join(tmpdir(), 'bench-model-'));
  const rows: Record<string, unknown>[] = [];
  try {
    console.log('writing random SmolLM-135M-shaped checkpoint ...');
    await writeRandomCheckpoint(join(tmp, 'smollm'), cfg, 1);
    const lm = await CausalLM.load(join(tmp, 'smollm'), {
      provider,
      cacheRoot: join(tmp, 'cache'),
      ...(threads ? { threads } : {}),
      weightsDtype,
      ...(compute ? { compute } : {}),
    });
    try {
      const top2 = [cfg.numLayers - 2, cfg.numLayers - 1];
      const spec: LoraSpec = {
        name: 'default',
        r: 8,
        alpha: 16,
        targets: ['q_proj', 'v_proj'],
        layers: top2,
        dropout: 0.05,
      };
      const trainer = await LoraTrainer.create(lm, {
        batch: B,
        seq: T,
        trainable: { spec, tensors: initLora(spec, cfg, 1) },
        optimizer: { kind: 'adamw', lr: 1e-4, betas: [0.9, 0.95] },
      });
      const batch = randomBatch(B, T, cfg.vocabSize);
      console.log(`training steps (B=${B}, T=${T}) ...`);
      const tt = await time(() => trainer.step([batch]), steps, 1);
      const common = {
        provider: trainer.trainer.runner.provider,
        threads: threads ?? 'cores',
        weights_dtype: weightsDtype,
        compute: lm.halfWeights?.compute ?? 'float32',
        machine: machine(),
        date: new Date().toISOString(),
      };
      rows.push({
        case: 'smollm135m-client-top2',
        task: 'train',
        batch: B,
        seq: T,
        tokens_per_s: +((B * T) / (tt.median / 1000)).toFixed(1),
        ms_per_step: +tt.median.toFixed(1),
        peak_rss_mib: peakRssMib(),
        ...common,
      });
      for (const gb of args.includes('--no-generate') ? [] : args.includes('--generate-b1') ? [1] : [1, 4]) {
        const prompts = Array.from({ length: gb }, (_, b) =>
          Array.from(randomBatch(1, 32, cfg.vocabSize, 7 + b).inputIds),
        );
        const newTokens = 32;
        console.log(`generation, batch ${gb} ...`);
        const tg = await time(() => lm.generate(prompts, { maxNewTokens: newTokens, eosTokenId: null }), 2, 1);
        rows.push({
          case: `smollm135m-generate-b${gb}`,
          task: 'generate',
          batch: gb,
          seq: 32 + newTokens,
          tokens_per_s: +((gb * newTokens) / (tg.median / 1000)).toFixed(1),
          ms_per_step: +(tg.median / newTokens).toFixed(2),
          peak_rss_mib: peakRssMib(),
          ...common,
        });
      }
    } finally {
      await lm.release();
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`\nmodel benchmark (${machine()}):`);
  printTable(rows, [
    'case',
    'provider',
    'weights_dtype',
    'compute',
    'task',
    'tokens_per_s',
    'ms_per_step',
    'peak_rss_mib',
  ]);
  console.log(`\nwrote ${writeResults('model', rows, argOf(args, 'out'))}`);
}
