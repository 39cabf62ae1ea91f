/**
 * The built-in demo base models, small LLaMA-architecture models pretrained from scratch by this project's engine
 * (full-parameter training); `npm run pretrain` reproduces them:
 * - models/demo-deep (the default job's): 12 layers, pretrained on general text plus the facts of the knowledge
 *   demo's fictional world (libs/data/src/demo/knowledge.ts), so dropout 0.5 leaves a 5-layer emulator that has
 *   lost facts the full model holds;
 * - models/demo-llama (tests, benches, services): 8 layers, the arithmetic demo's public corpus.
 */
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import {
  buildKnowledgeTokenizer,
  chunkCorpus,
  knowledgePretrainingTexts,
  PRETRAINING_MIX_SEED,
  writeDemoFederation,
  writeKnowledgeFederation,
  type DemoTokenizerFiles,
  type KnowledgeClientSplit,
  type KnowledgePublicCorpus,
  type TokenizedExample,
} from '../../data/src/index.js';
import {
  CausalLM,
  parseModelConfig,
  type ModelConfig,
  initWeights,
  writeRandomCheckpoint,
  writeCheckpoint,
  writeDirAtomic,
  loadTokenizer,
  FullTrainer,
} from '../../model/src/index.js';
import type { ExecutionProvider } from '../../engine/src/index.js';
import { ExampleStream, chunks, toTokenBatch } from './batches.js';
import { KNOWLEDGE_FEDERATION } from './job-spec.js';
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

/** The width and depth in which the demo models differ (config.json's names). */
interface DemoModelShape {
  readonly hidden_size: number;
  readonly intermediate_size: number;
  readonly num_hidden_layers: number;
  readonly num_attention_heads: number;
}

/** A demo LLaMA config of this shape: 2 key-value heads, tied embeddings, the demo tokenizer's special ids, fp32. */
function demoLlamaConfig(vocabSize: number, shape: DemoModelShape, what: string): ModelConfig {
  return parseModelConfig(
    {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      vocab_size: vocabSize,
      hidden_size: shape.hidden_size,
      intermediate_size: shape.intermediate_size,
      num_hidden_layers: shape.num_hidden_layers,
      num_attention_heads: shape.num_attention_heads,
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
    what,
  );
}

/** Architecture of the demo model: 8 layers so a 2-layer adapter and a 6-layer emulator block remain. */
export function demoModelConfig(vocabSize: number): ModelConfig {
  return demoLlamaConfig(
    vocabSize,
    { hidden_size: 192, intermediate_size: 512, num_hidden_layers: 8, num_attention_heads: 6 },
    'demo-llama/config.json',
  );
}

/**
 * Architecture of the deep demo model: 12 narrow layers. With the default 2-layer adapter the emulator block is
 * layers 0-9; dropout 0.5 keeps 5 of them (0,2,4,6,9), a real compression with knowledge to lose.
 */
export function deepDemoModelConfig(vocabSize: number): ModelConfig {
  return demoLlamaConfig(
    vocabSize,
    { hidden_size: 128, intermediate_size: 384, num_hidden_layers: 12, num_attention_heads: 4 },
    'demo-deep/config.json',
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

/** The arithmetic demo model (models/demo-llama): 8 layers on the arithmetic demo's public corpus. */
export async function pretrainDemoModel(opts: PretrainOptions): Promise<PretrainResult> {
  const seed = opts.seed ?? 0;
  const T = opts.seq ?? 128;
  const fedDir = join(opts.workDir, 'federation');
  const manifest = await writeDemoFederation(fedDir, { seed });
  const tokDir = join(fedDir, manifest.tokenizer.dir);
  const tokenizer = await loadTokenizer(tokDir);
  const corpus = (await readFile(join(fedDir, manifest.publicCorpus.path), 'utf8'))
    .split('\n\n')
    .filter((p) => p.trim().length > 0);
  const windows = chunkCorpus(corpus, tokenizer, { seq: T });
  return pretrainOn(opts, demoModelConfig(tokenizer.vocabSize), windows, tokDir, tokenizer.padTokenId ?? 0, 2000);
}

/**
 * The deep knowledge demo model (models/demo-deep): 12 layers on the general public corpus plus the fictional
 * world's facts, paragraphs interleaved (a fixed shuffle) so every batch mixes both.
 */
export async function pretrainDeepDemoModel(opts: PretrainOptions): Promise<PretrainResult> {
  const T = opts.seq ?? 128;
  const tokDir = join(opts.workDir, 'tokenizer');
  await writeTokenizerFiles(tokDir, buildKnowledgeTokenizer());
  const tokenizer = await loadTokenizer(tokDir);
  const texts = knowledgePretrainingTexts(opts.seed ?? PRETRAINING_MIX_SEED);
  const windows = chunkCorpus(texts, tokenizer, { seq: T });
  return pretrainOn(opts, deepDemoModelConfig(tokenizer.vocabSize), windows, tokDir, tokenizer.padTokenId ?? 0, 1100);
}

const pretty = (v: unknown): string => JSON.stringify(v, null, 2) + '\n';

async function writeTokenizerFiles(dir: string, tk: DemoTokenizerFiles): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'tokenizer.json'), pretty(tk.tokenizerJson));
  await writeFile(join(dir, 'tokenizer_config.json'), pretty(tk.tokenizerConfig));
  await writeFile(join(dir, 'special_tokens_map.json'), pretty(tk.specialTokensMap));
}

async function pretrainOn(
  opts: PretrainOptions,
  cfg: ModelConfig,
  windows: readonly TokenizedExample[],
  tokDir: string,
  pad: number,
  defaultSteps: number,
): Promise<PretrainResult> {
  const seed = opts.seed ?? 0;
  const steps = opts.steps ?? defaultSteps;
  const B = opts.batch ?? 16;
  const T = opts.seq ?? 128;
  const t0 = performance.now();
  // Every 50th window is held out to measure perplexity.
  const heldOut = windows.filter((_, i) => i % 50 === 0);
  const train = windows.filter((_, i) => i % 50 !== 0);
  const initDir = join(opts.workDir, 'init');
  await writeRandomCheckpoint(initDir, cfg, seed);
  const lm = await CausalLM.load(initDir, {
    cacheRoot: join(opts.workDir, 'cache'),
    provider: opts.provider ?? 'cpu',
    ...(opts.threads ? { threads: opts.threads } : {}),
  });
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

/**
 * The knowledge demo federation for a job seed, generated once into the cache (written to a temporary folder and
 * renamed, so parallel experiment workers never read a half-written one). Returns its folder for data.federation.
 * `publicCorpus` (job spec data.publicCorpus) picks the public corpus the server aligns on; the default 'general'
 * keeps the folder (and bytes) of runs made before the option existed. `clients` (job spec data.knowledgeClients)
 * deals the records by relation (the default, folder and bytes as before) or iid (folder suffix `-clients-iid`).
 */
export async function knowledgeFederationDir(
  cacheRoot: string,
  seed: number,
  publicCorpus: KnowledgePublicCorpus = 'general',
  clients: KnowledgeClientSplit = 'by-relation',
): Promise<string> {
  // v2: answers carry a leading space (knowledge.ts answerOf); a new folder, so no stale cache is reused.
  const name =
    `seed-${seed}` +
    (publicCorpus === 'general' ? '' : `-public-${publicCorpus}`) +
    (clients === 'by-relation' ? '' : `-clients-${clients}`);
  const dir = join(cacheRoot, 'knowledge-federation-v2', name);
  if (existsSync(join(dir, 'manifest.json'))) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await writeKnowledgeFederation(tmp, {
    seed,
    ...(publicCorpus === 'general' ? {} : { publicCorpus }),
    ...(clients === 'by-relation' ? {} : { clients }),
  });
  try {
    await rename(tmp, dir);
  } catch (e) {
    // Another process won the race: its folder has the same bytes.
    await rm(tmp, { recursive: true, force: true });
    if (!existsSync(join(dir, 'manifest.json'))) throw e;
  }
  return dir;
}

/** data.federation value that names the knowledge demo's federation (resolved per job seed by the job). */
export { KNOWLEDGE_FEDERATION };

/**
 * The default job (`npm start` without --config): FedBiOT on the deep demo model and the knowledge federation,
 * dropout 0.5 so the emulator (5 of the 10 lower layers) has really lost something, against offsite-tuning with the
 * same adapter layers and local-only. `--set` overrides apply on top. Sizes keep it under 10 minutes on 2 idle cores.
 */
export const DEMO_JOB: Readonly<Record<string, Readonly<Record<string, unknown>>>> = {
  model: { checkpoint: 'models/demo-deep' },
  data: { federation: KNOWLEDGE_FEDERATION, maxLength: 48 },
  split: { adapterLayers: 2, dropRate: 0.5 },
  clients: { localSteps: 40, batchSize: 8, lr: 5e-3 },
  alignment: { preRounds: 10, stepsPerRound: 5, lr: 1e-3, batchSize: 8 },
  job: { rounds: 5 },
  eval: { every: 1, maxNewTokens: 4 },
};
