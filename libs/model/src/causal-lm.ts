/**
 * A causal language model ready to run: checkpoint + tokenizer + compiled graphs. Forward passes over any layer
 * list (the FedBiOT emulator is a list of kept layers), token losses, and generation with a KV cache.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  crossEntropy,
  mulberry32,
  resolveProvider,
  type ExecutionProvider,
  type Graph,
  type HalfCompute,
  type HostTensor,
  type ModelRunner,
  type WebGpuOptions,
} from '../../engine/src/index.js';
import { openCheckpoint, type Checkpoint } from './checkpoint.js';
import { CompiledGraphs } from './compiled.js';
import type { ModelConfig } from './config.js';
import { GraphStore } from './graph-store.js';
import { buildLlama, ropeTablesFor, type HalfWeights, type LlamaGraphOptions, type WeightStore } from './llama.js';
import { checkLayerIds, renumberedWeights } from './layer-ids.js';
import { loraFeeds, loraKey, shapeOfLora, type LoraWeights } from './lora.js';
import { loadTokenizer, type TextTokenizer } from './tokenizer.js';

/** Which layers run and which LoRA adapters are attached (the full model with no adapter by default). */
export interface Variant {
  readonly layers?: readonly number[];
  readonly loras?: readonly LoraWeights[];
}

export interface LoadOptions {
  readonly provider?: ExecutionProvider;
  /** Threads per session. Default: physical cores. */
  readonly threads?: number;
  /** 'worker' keeps the event loop free during steps (default on CPU); 'main' saves the message hop (default on WebGPU). */
  readonly thread?: 'worker' | 'main';
  readonly cacheRoot?: string;
  /**
   * ORT's profiler on every session of this model: each writes `<prefix>_<timestamp>.json` (Chrome trace events:
   * one per node run, with its op and provider) when the model is released. For benchmarks (`bench profile`).
   */
  readonly profileFilePrefix?: string;
  /** WebGPU provider options (validation, buffer cache) for every session; see the engine's WebGpuOptions. */
  readonly webgpu?: WebGpuOptions;
  /**
   * The source model's number of each layer in the folder, for a checkpoint holding a subset of a model's layers
   * (an emulator package; layer-ids.ts). Every layer list, LoRA and adapter then uses the source numbering.
   */
  readonly layerIds?: readonly number[];
  /**
   * Storage type of the frozen matrices: 'float16'/'bfloat16' keep them in a half-precision file (half the bytes of
   * float32) that every graph maps; LoRA factors, activations, gradients and optimizer state stay float32. Default
   * 'float32' (graphs unchanged). See LlamaGraphOptions.halfWeights.
   */
  readonly weightsDtype?: 'float32' | 'float16' | 'bfloat16';
  /**
   * What the matmuls against half weights compute in. Default: 'float32' on the CPU provider (it lacks half Gemm
   * kernels; each weight is cast at its matmul), 'float16' on GPU providers (tensor cores; LoraTrainer then scales
   * the loss).
   */
  readonly compute?: HalfCompute;
  /**
   * 'float16' keeps the activations in float16 between the matmuls too (LlamaGraphOptions.halfWeights): the fast
   * path on GPU providers. Needs half weights and float16 compute (the default compute then); default 'float32'.
   * The CPU provider runs it through the float32 casts onnxruntime inserts around each float16 node (for tests).
   */
  readonly activations?: 'float32' | 'float16';
}

/** Token batch in row-major [B, T] layout. */
export interface TokenBatch {
  readonly batch: number;
  readonly seq: number;
  readonly inputIds: readonly number[] | Int32Array;
  /** Next-token ids per position (any valid id where the loss weight is 0). */
  readonly labels: readonly number[] | Int32Array;
  /** 1 where the position counts in the loss. */
  readonly lossMask: readonly number[] | Float32Array;
}

export interface GenerateOptions {
  readonly maxNewTokens: number;
  /** 0 (default) = greedy. */
  readonly temperature?: number;
  /** Nucleus sampling mass (default 1 = off). */
  readonly topP?: number;
  /** Stop a row at this token (default: the tokenizer's / config's EOS); null never stops early. */
  readonly eosTokenId?: number | null;
  readonly seed?: number;
}

export function layersKey(layers: readonly number[]): string {
  return layers.join('_');
}

const roundUp = (n: number, m: number): number => Math.ceil(n / m) * m;

export class CausalLM {
  private constructor(
    readonly config: ModelConfig,
    readonly weights: WeightStore,
    readonly graphs: CompiledGraphs,
    readonly checkpoint: Checkpoint | undefined,
    readonly tokenizer: TextTokenizer | undefined,
    /** Half-precision frozen weights of every graph this model builds (LoadOptions.weightsDtype); absent: float32. */
    readonly halfWeights?: LlamaGraphOptions['halfWeights'],
  ) {}

  /** Opens a Hugging Face checkpoint folder (config.json, safetensors, optional tokenizer files). */
  static async load(dir: string, opts: LoadOptions = {}): Promise<CausalLM> {
    const ckpt = await openCheckpoint(dir, opts.cacheRoot ? { cacheDir: join(opts.cacheRoot, 'fp32') } : {});
    const store = new GraphStore(ckpt, opts.cacheRoot ? { cacheRoot: join(opts.cacheRoot, 'graphs') } : {});
    const tokenizer = existsSync(join(resolve(dir), 'tokenizer.json')) ? await loadTokenizer(dir) : undefined;
    const wd = opts.weightsDtype ?? 'float32';
    if (opts.activations === 'float16' && (wd === 'float32' || opts.compute === 'float32'))
      throw new Error(
        `CausalLM.load(${dir}): activations 'float16' need weightsDtype 'float16' or 'bfloat16' and compute 'float16' ` +
          `(got weightsDtype '${wd}', compute '${opts.compute ?? 'default'}')`,
      );
    const act16 = opts.activations === 'float16';
    // The default compute follows the provider sessions will really use: a GPU provider that falls back to the CPU
    // gets the CPU's float32 casts (float16 graphs there would make float32 copies of every weight at load).
    const runsOn =
      wd === 'float32' || opts.compute || act16
        ? 'cpu'
        : await resolveProvider(opts.provider ?? 'cpu', { fallback: true });
    const half: HalfWeights | undefined =
      wd === 'float32'
        ? undefined
        : act16
          ? { dtype: wd, compute: 'float16', activations: 'float16' }
          : { dtype: wd, compute: opts.compute ?? (runsOn === 'cpu' ? 'float32' : 'float16') };
    if (half) await store.prepareHalf(half.dtype);
    const graphs = new CompiledGraphs(
      store,
      {
        provider: opts.provider ?? 'cpu',
        // WebGPU sessions stay on the calling thread: with several WebGPU sessions in worker threads onnxruntime-node
        // 1.30 aborted ("double free or corruption") on the H200 machine; one thread per Dawn device is stable.
        thread: opts.thread ?? ((opts.provider ?? 'cpu') === 'webgpu' ? 'main' : 'worker'),
        ...(opts.threads ? { intraOpNumThreads: opts.threads } : {}),
        ...(opts.profileFilePrefix ? { profileFilePrefix: opts.profileFilePrefix } : {}),
        ...(opts.webgpu ? { webgpu: opts.webgpu } : {}),
        ...(half?.compute === 'float32' ? { keepHalfWeights: true } : {}),
      },
      half
        ? `${half.dtype === 'float16' ? 'f16' : 'bf16'}${half.compute === 'float16' ? 'c16' : ''}${act16 ? 'a16' : ''}-`
        : '',
    );
    let weights = store.weights();
    if (opts.layerIds !== undefined) {
      checkLayerIds(opts.layerIds, ckpt.config.numLayers, join(ckpt.dir, 'config.json'));
      weights = renumberedWeights(weights, [...opts.layerIds]);
    }
    return new CausalLM(ckpt.config, weights, graphs, ckpt, tokenizer, half);
  }

  /** The layers this model runs by default: all of them, under the source numbering for a layer subset. */
  get allLayers(): number[] {
    return this.weights.layerIds !== undefined
      ? [...this.weights.layerIds]
      : Array.from({ length: this.config.numLayers }, (_, i) => i);
  }

  get eosTokenId(): number | undefined {
    const e = this.config.eosTokenId;
    return this.tokenizer?.eosTokenId ?? (Array.isArray(e) ? e[0] : (e as number | undefined));
  }

  /** Builds the graph for `opts` into `g` against this model's weights. */
  build(g: Graph, opts: LlamaGraphOptions): ReturnType<typeof buildLlama> {
    // Half weights apply to the float32 graphs of frozen weights (not to float64 checks or full-parameter training).
    const half =
      this.halfWeights && !opts.weightsAsInputs && (opts.dtype ?? 'float32') === 'float32'
        ? this.halfWeights
        : undefined;
    return buildLlama(g, this.config, this.weights, half ? { halfWeights: half, ...opts } : opts);
  }

  /**
   * Summed token cross-entropy and the number of counted tokens of one batch, for a model variant.
   * Summing (not averaging) lets callers average exactly over a whole dataset.
   */
  async lossSum(batch: TokenBatch, variant: Variant = {}): Promise<{ nllSum: number; tokens: number }> {
    const layers = variant.layers ?? this.allLayers;
    const loras = variant.loras ?? [];
    const { batch: B, seq: T } = batch;
    const shapes = new Map<string, readonly number[]>();
    const runner = await this.graphs.get(`eval-B${B}-T${T}-L${layersKey(layers)}-${loraKey(loras)}`, (g) => {
      const m = this.build(g, { batch: B, seq: T, layers, start: 'ids', head: true, loras: loras.map((l) => l.spec) });
      const labels = g.input('labels', 'int64', [B, T]);
      const mask = g.input('loss_mask', 'float32', [B, T]);
      g.output(crossEntropy(m.logits!, labels, mask), 'nll_sum');
    });
    for (const l of loras) for (const [n, t] of l.tensors) shapes.set(n, shapeOfLora(n, t, l.spec));
    const out = await runner.run({ ...this.tokenFeeds(batch), ...loraFeeds(filterInputs(runner, shapes), loras) }, [
      'nll_sum',
    ]);
    let tokens = 0;
    for (const v of batch.lossMask) tokens += v;
    return { nllSum: (out['nll_sum']!.data as Float32Array)[0]!, tokens };
  }

  tokenFeeds(batch: TokenBatch): Record<string, HostTensor> {
    const { batch: B, seq: T } = batch;
    return {
      input_ids: { dtype: 'int64', shape: [B, T], data: BigInt64Array.from(batch.inputIds, (v) => BigInt(v)) },
      labels: { dtype: 'int64', shape: [B, T], data: BigInt64Array.from(batch.labels, (v) => BigInt(v)) },
      loss_mask: { dtype: 'float32', shape: [B, T], data: Float32Array.from(batch.lossMask) },
    };
  }

  /**
   * Generates continuations of token-id prompts (a batch, left-padded internally). A KV cache keeps the prefix:
   * one prefill pass over the prompts, then one single-token pass per new token.
   */
  async generate(
    prompts: readonly (readonly number[])[],
    opts: GenerateOptions,
    variant: Variant = {},
  ): Promise<number[][]> {
    const layers = variant.layers ?? this.allLayers;
    const loras = variant.loras ?? [];
    const cfg = this.config;
    const B = prompts.length;
    if (B === 0) return [];
    if (prompts.some((p) => p.length === 0)) throw new Error('generate: every prompt needs at least one token');
    const lengths = prompts.map((p) => p.length);
    const Tp = roundUp(Math.max(...lengths), 8);
    const S = roundUp(Tp + opts.maxNewTokens, 32); // cache capacity: one decode session serves every step
    const hd = cfg.headDim;
    const Hkv = cfg.numKvHeads;
    const eos = opts.eosTokenId === null ? undefined : (opts.eosTokenId ?? this.eosTokenId);
    const lk = `${layersKey(layers)}-${loraKey(loras)}`;
    const common = {
      layers,
      start: 'ids' as const,
      head: true,
      positions: 'input' as const,
      keyMask: true,
      loras: loras.map((l) => l.spec),
    };
    const prefill = await this.graphs.get(`prefill-B${B}-T${Tp}-${lk}`, (g) => {
      const m = this.build(g, { ...common, batch: B, seq: Tp, logitsFor: 'last', kvCache: { pastLength: 0 } });
      g.output(m.logits!, 'logits');
      m.presents.forEach((p, i) => {
        g.output(p.key, `present.${i}.key`);
        g.output(p.value, `present.${i}.value`);
      });
    });
    const decode = await this.graphs.get(`decode-B${B}-S${S}-${lk}`, (g) => {
      const m = this.build(g, { ...common, batch: B, seq: 1, kvCache: { pastLength: S } });
      g.output(m.logits!, 'logits');
      m.presents.forEach((p, i) => {
        g.output(p.key, `present.${i}.key`);
        g.output(p.value, `present.${i}.value`);
      });
    });
    const loraInputs = new Map<string, readonly number[]>();
    for (const l of loras) for (const [n, t] of l.tensors) loraInputs.set(n, shapeOfLora(n, t, l.spec));
    const loraIn = loraFeeds(loraInputs, loras);

    // Rotary tables for every position a row can reach.
    const table = ropeTablesFor(cfg, Tp + opts.maxNewTokens, 0, 'float32');
    const ropeFor = (positions: number[], T: number): { cos: Float32Array; sin: Float32Array } => {
      const cos = new Float32Array(B * T * hd);
      const sin = new Float32Array(B * T * hd);
      positions.forEach((p, i) => {
        cos.set(table.cos.subarray(p * hd, (p + 1) * hd), i * hd);
        sin.set(table.sin.subarray(p * hd, (p + 1) * hd), i * hd);
      });
      return { cos, sin };
    };

    // Prefill over left-padded prompts.
    const ids = new BigInt64Array(B * Tp);
    const mask = new Float32Array(B * Tp);
    const positions: number[] = [];
    for (let b = 0; b < B; b++) {
      const pad = Tp - lengths[b]!;
      for (let t = 0; t < Tp; t++) {
        const real = t >= pad;
        ids[b * Tp + t] = BigInt(real ? prompts[b]![t - pad]! : 0);
        mask[b * Tp + t] = real ? 1 : 0;
        positions.push(real ? t - pad : 0);
      }
    }
    const r0 = ropeFor(positions, Tp);
    const first = await prefill.run({
      input_ids: { dtype: 'int64', shape: [B, Tp], data: ids },
      attention_mask: { dtype: 'float32', shape: [B, Tp], data: mask },
      rope_cos: { dtype: 'float32', shape: [B, 1, Tp, hd], data: r0.cos },
      rope_sin: { dtype: 'float32', shape: [B, 1, Tp, hd], data: r0.sin },
      ...loraIn,
    });
    const cacheK = layers.map(() => new Float32Array(B * Hkv * S * hd));
    const cacheV = layers.map(() => new Float32Array(B * Hkv * S * hd));
    const valid = new Float32Array(B * (S + 1));
    const writeSlots = (out: Record<string, HostTensor>, T: number, slot0: number): void => {
      layers.forEach((_, i) => {
        const k = out[`present.${i}.key`]!.data as Float32Array;
        const v = out[`present.${i}.value`]!.data as Float32Array;
        for (let bh = 0; bh < B * Hkv; bh++) {
          for (let t = 0; t < T; t++) {
            const src = (bh * T + t) * hd;
            const dst = (bh * S + slot0 + t) * hd;
            cacheK[i]!.set(k.subarray(src, src + hd), dst);
            cacheV[i]!.set(v.subarray(src, src + hd), dst);
          }
        }
      });
    };
    writeSlots(first, Tp, 0);
    for (let b = 0; b < B; b++) for (let t = 0; t < Tp; t++) valid[b * (S + 1) + t] = mask[b * Tp + t]!;

    const rand = mulberry32(opts.seed ?? 0);
    const outTokens: number[][] = prompts.map(() => []);
    const done = Array.from({ length: B }, () => false);
    let logits = first['logits']!.data as Float32Array;
    for (let step = 0; step < opts.maxNewTokens; step++) {
      const next: number[] = [];
      for (let b = 0; b < B; b++) {
        const row = logits.subarray(b * cfg.vocabSize, (b + 1) * cfg.vocabSize);
        const tok = pickToken(row, opts.temperature ?? 0, opts.topP ?? 1, rand);
        next.push(tok);
        if (!done[b]) {
          outTokens[b]!.push(tok);
          if (eos !== undefined && tok === eos) done[b] = true;
        }
      }
      if (done.every(Boolean) || step === opts.maxNewTokens - 1) break;
      // Decode one token per row; the cache slot for this step is Tp + step.
      const stepMask = Float32Array.from(valid);
      for (let b = 0; b < B; b++) stepMask[b * (S + 1) + S] = 1; // the new token attends to itself
      const r = ropeFor(
        next.map((_, b) => lengths[b]! + step),
        1,
      );
      const feeds: Record<string, HostTensor> = {
        input_ids: { dtype: 'int64', shape: [B, 1], data: BigInt64Array.from(next, (v) => BigInt(v)) },
        attention_mask: { dtype: 'float32', shape: [B, S + 1], data: stepMask },
        rope_cos: { dtype: 'float32', shape: [B, 1, 1, hd], data: r.cos },
        rope_sin: { dtype: 'float32', shape: [B, 1, 1, hd], data: r.sin },
        ...loraIn,
      };
      layers.forEach((l, i) => {
        feeds[`past.${l}.key`] = { dtype: 'float32', shape: [B, Hkv, S, hd], data: cacheK[i]! };
        feeds[`past.${l}.value`] = { dtype: 'float32', shape: [B, Hkv, S, hd], data: cacheV[i]! };
      });
      const out = await decode.run(feeds);
      writeSlots(out, 1, Tp + step);
      for (let b = 0; b < B; b++) valid[b * (S + 1) + Tp + step] = 1;
      logits = out['logits']!.data as Float32Array;
    }
    return outTokens;
  }

  async release(): Promise<void> {
    await this.graphs.releaseAll();
  }
}

function filterInputs(runner: ModelRunner, shapes: Map<string, readonly number[]>): Map<string, readonly number[]> {
  const names = new Set(runner.inputNames);
  return new Map([...shapes].filter(([n]) => names.has(n)));
}

/** Greedy argmax at temperature 0; otherwise softmax(logits / temperature) restricted to the top-p mass. */
export function pickToken(logits: Float32Array, temperature: number, topP: number, rand: () => number): number {
  if (temperature <= 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const probs = Array.from(logits, (v, i) => ({ i, p: Math.exp((v - max) / temperature) }));
  const total = probs.reduce((s, x) => s + x.p, 0);
  probs.sort((a, b) => b.p - a.p);
  let kept = 0;
  let mass = 0;
  while (kept < probs.length && (kept === 0 || mass / total < topP)) mass += probs[kept++]!.p;
  let u = rand() * mass;
  for (let k = 0; k < kept; k++) {
    u -= probs[k]!.p;
    if (u <= 0) return probs[k]!.i;
  }
  return probs[kept - 1]!.i;
}
