/**
 * The built-in demo base model: a small LLaMA-architecture model pretrained from scratch by this project's engine
 * on the demo federation's public corpus (full-parameter training). `npm run pretrain` reproduces it.
 */
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkCorpus, writeDemoFederation, type TokenizedExample } from '../../data/src/index.js';
import { CausalLM } from '../../model/src/causal-lm.js';
import type { ExecutionProvider } from '../../engine/src/index.js';
import { parseModelConfig, type ModelConfig } from '../../model/src/config.js';
import { initWeights, writeRandomCheckpoint } from '../../model/src/init.js';
import { writeCheckpoint, writeDirAtomic } from '../../model/src/checkpoint.js';
import { loadTokenizer } from '../../model/src/tokenizer.js';
import { FullTrainer } from '../../model/src/trainer.js';
import { ExampleStream, chunks, toTokenBatch } from './batches.js';
import { progress } from './progress.js';

export interface PretrainOptions {
  readonly outDir: string;
  readonly workDir: string;
  readonly seed?: number;
  readonly steps?: number;
  readonly batch?: number;
  readonly seq?: number;
  readonly lr?: number;
  readonly threads?: number;
  readonly provider?: ExecutionProvider;
  /** Called every step with (step, smoothed loss), e.g. to stop on a time budget. */
  readonly onStep?: (step: number, loss: number) => void;
}

/** Architecture of the demo model: 8 layers so a 2-layer adapter and a 6-layer emulator block remain. */
export function demoModelConfig(vocabSize: number): ModelConfig {
  return parseModelConfig(
    {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      vocab_size: vocabSize,
      hidden_size: 192,
      intermediate_size: 512,
      num_hidden_layers: 8,
      num_attention_heads: 6,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-5,
      max_position_embeddings: 256,
      rope_theta: 10000,
      tie_word_embeddings: true,
      bos_token_id: 1,
      eos_token_id: 2,
      pad_token_id: 3,
      torch_dtype: 'float32',
    },
    'demo-llama/config.json',
  );
}

export interface PretrainResult {
  readonly steps: number;
  readonly tokens: number;
  readonly trainLoss: number;
  readonly heldOutPerplexity: number;
  readonly parameters: number;
  readonly seconds: number;
}

export async function pretrainDemoModel(opts: PretrainOptions): Promise<PretrainResult> {
  const seed = opts.seed ?? 0;
  const steps = opts.steps ?? 2000;
  const B = opts.batch ?? 16;
  const T = opts.seq ?? 128;
  const t0 = performance.now();
  const fedDir = join(opts.workDir, 'federation');
  const manifest = await writeDemoFederation(fedDir, { seed });
  const tokDir = join(fedDir, manifest.tokenizer.dir);
  const tokenizer = await loadTokenizer(tokDir);
  const corpus = (await readFile(join(fedDir, manifest.publicCorpus.path), 'utf8'))
    .split('\n\n')
    .filter((p) => p.trim().length > 0);
  const windows = chunkCorpus(corpus, tokenizer, { seq: T });
  // Every 50th window is held out to measure perplexity.
  const heldOut = windows.filter((_, i) => i % 50 === 0);
  const train = windows.filter((_, i) => i % 50 !== 0);
  const cfg = demoModelConfig(tokenizer.vocabSize);
  const initDir = join(opts.workDir, 'init');
  await writeRandomCheckpoint(initDir, cfg, seed);
  const lm = await CausalLM.load(initDir, {
    cacheRoot: join(opts.workDir, 'cache'),
    provider: opts.provider ?? 'cpu',
    ...(opts.threads ? { threads: opts.threads } : {}),
  });
  const pad = tokenizer.padTokenId ?? 0;
  try {
    const trainer = await FullTrainer.create(lm, {
      batch: B,
      seq: T,
      weights: initWeights(cfg, seed),
      optimizer: {
        kind: 'adamw',
        lr: opts.lr ?? 3e-3,
        betas: [0.9, 0.95],
        weightDecay: 0.1,
        schedule: { kind: 'cosine', totalSteps: steps, warmupSteps: Math.min(100, steps / 10), minLrRatio: 0.1 },
      },
      maxGradNorm: 1,
    });
    const stream = new ExampleStream<TokenizedExample>(train, seed);
    const bar = progress('pretrain', steps);
    let tokens = 0;
    let recent = 0;
    for (let s = 0; s < steps; s++) {
      const r = await trainer.step([toTokenBatch(stream.next(B), B, T, pad)]);
      tokens += r.tokens;
      recent = s === 0 ? r.loss : 0.98 * recent + 0.02 * r.loss;
      bar.tick(1, `loss ${recent.toFixed(3)}`);
      opts.onStep?.(s, recent);
    }
    bar.done();
    // Held-out perplexity with the trained weights, through the same graphs a user runs.
    await writeCheckpoint(join(opts.workDir, 'trained'), cfg, trainer.params);
    const trained = await CausalLM.load(join(opts.workDir, 'trained'), { cacheRoot: join(opts.workDir, 'cache') });
    let nll = 0;
    let count = 0;
    try {
      for (const group of chunks(heldOut, B)) {
        const r = await trained.lossSum(toTokenBatch(group, B, T, pad));
        nll += r.nllSum;
        count += r.tokens;
      }
    } finally {
      await trained.release();
    }
    const result: PretrainResult = {
      steps,
      tokens,
      trainLoss: recent,
      heldOutPerplexity: Math.exp(nll / count),
      parameters: [...trainer.params.values()].reduce((s, v) => s + v.length, 0),
      seconds: (performance.now() - t0) / 1000,
    };
    await writeDirAtomic(opts.outDir, async (tmp) => {
      await writeCheckpoint(tmp, cfg, trainer.params);
      for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'])
        await cp(join(tokDir, f), join(tmp, f));
      await writeFile(
        join(tmp, 'pretrain.json'),
        JSON.stringify(
          { seed, batch: B, seq: T, lr: opts.lr ?? 3e-3, provider: trainer.trainer.runner.provider, ...result },
          null,
          1,
        ) + '\n',
      );
    });
    return result;
  } finally {
    await lm.release();
  }
}

export async function cleanWorkDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
}
