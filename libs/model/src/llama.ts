/**
 * The LLaMA-family decoder (llama, mistral, qwen2) as engine graphs. Reads top to bottom like transformers'
 * modeling_llama.py: weights -> RMSNorm -> RoPE -> attention (GQA) -> SwiGLU MLP -> decoder layer -> model -> head.
 * Weight names are the checkpoint's keys; LoRA tensors are graph inputs named as PEFT names them in its state dict
 * (`model.layers.2.self_attn.q_proj.lora_A.<adapter>.weight`), so trainable or not is only a question of which
 * inputs `gradients()` is asked about.
 */
import {
  GraphError,
  crossEntropy,
  halfLinear,
  linear,
  rmsNorm,
  type DType,
  type Graph,
  type HalfCompute,
  type Tensor,
  type WeightSource,
} from '../../engine/src/index.js';
import * as O from '../../engine/src/ops.js';
import type { ModelConfig } from './config.js';
import { ropeInvFreq } from './rope.js';

export const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

/** One LoRA adapter: rank, alpha, which linears of which (original) layers. Scaling is alpha / r (PEFT). */
export interface LoraSpec {
  readonly name: string;
  readonly r: number;
  readonly alpha: number;
  readonly targets: readonly LoraTarget[];
  readonly layers: readonly number[];
  /** Dropout on the LoRA input during training (PEFT lora_dropout); masks are fed as inputs. */
  readonly dropout: number;
}

/** Where frozen weights come from: shapes and bytes by checkpoint key. */
export interface WeightStore {
  /**
   * The layer numbers this store holds, when it holds a subset of a larger model's layers under that model's
   * numbering (an emulator package: its folder layer i is layer layerIds[i] of the source model). Absent: layers
   * 0..numLayers-1 of the config.
   */
  readonly layerIds?: readonly number[];
  shape(name: string): readonly number[];
  /** The weight in `dtype`: external data (fp32 checkpoints) or in-memory values. */
  source(name: string, dtype: DType): WeightSource;
}

/** "model.layers.3.self_attn.q_proj" for q/k/v/o, "model.layers.3.mlp.gate_proj" for the MLP linears. */
export function moduleName(layer: number, target: LoraTarget): string {
  const block =
    target.endsWith('_proj') && ['gate_proj', 'up_proj', 'down_proj'].includes(target) ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${block}.${target}`;
}

/** PEFT state-dict names of a module's LoRA factors for adapter `adapter`. */
export function loraParamNames(module: string, adapter: string): { a: string; b: string } {
  return { a: `${module}.lora_A.${adapter}.weight`, b: `${module}.lora_B.${adapter}.weight` };
}

/** [in, out] features of a target linear, from the config. */
export function linearFeatures(cfg: ModelConfig, target: LoraTarget): [number, number] {
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  switch (target) {
    case 'q_proj':
      return [cfg.hiddenSize, q];
    case 'k_proj':
    case 'v_proj':
      return [cfg.hiddenSize, kv];
    case 'o_proj':
      return [q, cfg.hiddenSize];
    case 'gate_proj':
    case 'up_proj':
      return [cfg.hiddenSize, cfg.intermediateSize];
    case 'down_proj':
      return [cfg.intermediateSize, cfg.hiddenSize];
  }
}

/** What a graph should compute. */
export interface LlamaGraphOptions {
  readonly batch: number;
  /** Tokens per row processed by this graph (T). */
  readonly seq: number;
  /** Original layer indices to run, in order (a contiguous range, or the kept layers of an emulator). */
  readonly layers: readonly number[];
  /** 'ids': start from `input_ids` [B,T] int64 through the embedding; 'hidden': from `hidden_in` [B,T,d]. */
  readonly start: 'ids' | 'hidden';
  /** Final RMSNorm + LM head, giving `logits`. */
  readonly head: boolean;
  /** Also return the hidden state after each layer (the output of layer i in `hiddenStates[i]`). */
  readonly keepHidden?: boolean;
  readonly loras?: readonly LoraSpec[];
  /** Feed LoRA dropout masks as inputs (training graphs with dropout > 0). */
  readonly loraDropout?: boolean;
  /**
   * Rotary tables: 'static' bakes positions 0..T-1 into constants (training, right padding); 'input' takes
   * `rope_cos`/`rope_sin` [B,1,T,hd] inputs (generation: per-row positions, KV-cache offsets).
   */
  readonly positions?: 'static' | 'input';
  /** Key padding mask input `attention_mask` [B, S] (1 = attend); needed for left padding and the KV cache. */
  readonly keyMask?: boolean;
  /**
   * KV cache: past keys/values of `pastLength` positions per layer come in as `past.<i>.key/value` [B,Hkv,P,hd],
   * and `present.<i>.key/value` [B,Hkv,T,hd] (this graph's new positions only) come out. With a cache the
   * causal constant is dropped for T = 1 (the key mask says which past slots are valid).
   */
  readonly kvCache?: { readonly pastLength: number };
  readonly dtype?: 'float32' | 'float64';
  /** Frozen weights become graph inputs named by their checkpoint keys (full-parameter training, pretraining). */
  readonly weightsAsInputs?: boolean;
  /** 'last': the head runs on the last position only, giving logits [B,1,V] (generation). Default 'all'. */
  readonly logitsFor?: 'all' | 'last';
  /**
   * Frozen matrices (linears, embedding, head) stored in float16 or bfloat16 (the store must provide that dtype),
   * their matmuls in `compute` (engine halfLinear: 'float32' casts each weight at its matmul, for the CPU provider;
   * 'float16' runs the matmul in float16, for GPU providers). Norm weights, biases, LoRA factors, activations and
   * gradients stay float32. Absent: float32 weights, the graph unchanged. Needs dtype 'float32', no weightsAsInputs.
   */
  readonly halfWeights?: { readonly dtype: 'float16' | 'bfloat16'; readonly compute: HalfCompute };
}

export interface LlamaGraph {
  readonly graph: Graph;
  readonly logits?: Tensor;
  /** Output of the last layer run (before the final norm). */
  readonly lastHidden: Tensor;
  /** Output of each layer in `layers` order (when keepHidden). */
  readonly hiddenStates: readonly Tensor[];
  /** The embedding output (start 'ids' only). */
  readonly embeddings?: Tensor;
  /** LoRA factor inputs by PEFT state-dict name. */
  readonly loraParams: ReadonlyMap<string, Tensor>;
  readonly presents: readonly { key: Tensor; value: Tensor }[];
  /** Weight inputs by checkpoint key (weightsAsInputs only). */
  readonly weightInputs: ReadonlyMap<string, Tensor>;
}

const NEG_INF = -1e9; // additive mask value: exp() of it underflows to exactly 0 in float32 and float64

/**
 * Builds the forward pass into `g`. Inputs created (as needed): input_ids | hidden_in, attention_mask,
 * rope_cos/rope_sin, past.<i>.key/value, LoRA factors and their dropout masks.
 */
export function buildLlama(g: Graph, cfg: ModelConfig, weights: WeightStore, opts: LlamaGraphOptions): LlamaGraph {
  const dtype = opts.dtype ?? 'float32';
  const { batch: B, seq: T } = opts;
  const hd = cfg.headDim;
  const P = opts.kvCache?.pastLength ?? 0;
  const S = P + T;
  const half = opts.halfWeights;
  if (half && (dtype !== 'float32' || opts.weightsAsInputs))
    throw new GraphError('buildLlama: halfWeights needs dtype float32 and frozen weights (no weightsAsInputs)');
  const held = weights.layerIds;
  for (const l of opts.layers) {
    if (held !== undefined) {
      if (!held.includes(l))
        throw new GraphError(`buildLlama: layer ${l} is not in this checkpoint (it holds layers ${held.join(', ')})`);
    } else if (!Number.isInteger(l) || l < 0 || l >= cfg.numLayers)
      throw new GraphError(`buildLlama: layer ${l} out of range 0..${cfg.numLayers - 1}`);
  }

  const bound = new Map<string, Tensor>();
  const w = (name: string): Tensor => {
    let t = bound.get(name);
    if (!t) {
      // Tied heads read the embedding matrix: one tensor, so a trainable embedding gets both gradients.
      const key = name === 'lm_head.weight' && cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : name;
      t = bound.get(key);
      if (!t) {
        const shape = weights.shape(key);
        const wdtype = half && shape.length === 2 ? half.dtype : dtype; // matrices only: see halfWeights
        t = opts.weightsAsInputs
          ? g.input(key, dtype, shape)
          : g.weight(key, wdtype, shape, weights.source(key, wdtype));
        bound.set(key, t);
      }
      bound.set(name, t);
    }
    return t;
  };
  const has = (name: string): boolean => {
    try {
      weights.shape(name);
      return true;
    } catch {
      return false;
    }
  };

  // ---- LoRA inputs -------------------------------------------------------------------------------------
  const loraParams = new Map<string, Tensor>();
  const loraFor = new Map<string, { spec: LoraSpec; a: Tensor; b: Tensor; drop?: Tensor }[]>();
  for (const spec of opts.loras ?? []) {
    for (const layer of spec.layers) {
      if (!opts.layers.includes(layer)) continue;
      for (const target of spec.targets) {
        const module = moduleName(layer, target);
        const [fin, fout] = linearFeatures(cfg, target);
        const names = loraParamNames(module, spec.name);
        const a = g.input(names.a, dtype, [spec.r, fin]);
        const b = g.input(names.b, dtype, [fout, spec.r]);
        loraParams.set(names.a, a);
        loraParams.set(names.b, b);
        const drop =
          opts.loraDropout && spec.dropout > 0
            ? g.input(`${module}.lora_dropout.${spec.name}`, dtype, [B, T, fin])
            : undefined;
        const list = loraFor.get(module) ?? [];
        list.push(drop ? { spec, a, b, drop } : { spec, a, b });
        loraFor.set(module, list);
      }
    }
  }

  /** x Wᵀ + b against a checkpoint weight, float32 or half (halfWeights). */
  const frozenLinear = (x: Tensor, weight: Tensor, b?: Tensor): Tensor =>
    weight.dtype === dtype ? linear(x, weight, b) : halfLinear(x, weight, half!.compute, b);

  /** A linear layer with its checkpoint weight (and bias), plus every LoRA attached to it: W x + b + s B A x. */
  const proj = (x: Tensor, layer: number, target: LoraTarget, bias: boolean): Tensor => {
    const module = moduleName(layer, target);
    let y = frozenLinear(x, w(`${module}.weight`), bias ? w(`${module}.bias`) : undefined);
    for (const { spec, a, b, drop } of loraFor.get(module) ?? []) {
      const xin = drop ? O.mul(x, drop) : x;
      y = O.add(y, O.mul(linear(linear(xin, a), b), spec.alpha / spec.r));
    }
    return y;
  };

  // ---- positions and masks ----------------------------------------------------------------------------------
  let cos: Tensor;
  let sin: Tensor;
  if ((opts.positions ?? 'static') === 'static') {
    if (P !== 0) throw new GraphError('buildLlama: a KV cache needs positions: "input"');
    const tables = ropeTablesFor(cfg, T, 0, dtype);
    cos = g.constant(Array.from(tables.cos), dtype, [T, hd]); // (T, hd) broadcasts over (B, H, T, hd)
    sin = g.constant(Array.from(tables.sin), dtype, [T, hd]);
  } else {
    cos = g.input('rope_cos', dtype, [B, 1, T, hd]);
    sin = g.input('rope_sin', dtype, [B, 1, T, hd]);
  }
  let bias: Tensor | undefined;
  if (T > 1) {
    // Causal: query t (absolute position P + t) sees keys 0..P+t.
    const causal: number[] = [];
    for (let t = 0; t < T; t++) for (let s = 0; s < S; s++) causal.push(s <= P + t ? 0 : NEG_INF);
    bias = g.constant(causal, dtype, [T, S]);
  }
  if (opts.keyMask) {
    const m = g.input('attention_mask', dtype, [B, S]);
    const keyBias = O.reshape(O.mul(O.sub(1, m), NEG_INF), [B, 1, 1, S]); // (B, 1, 1, S): 0 or -1e9
    bias = bias ? O.add(keyBias, bias) : keyBias;
  }

  // ---- embeddings ---------------------------------------------------------------------------------------------
  let x: Tensor;
  let embeddings: Tensor | undefined;
  if (opts.start === 'ids') {
    const ids = g.input('input_ids', 'int64', [B, T]);
    // A half embedding is gathered in half, then only the B*T rows read are cast. With float16 compute a bfloat16
    // table is read through the same Cast to float16 as a tied head's (onnxruntime folds it into one float16
    // initializer), as WebGPU has no bfloat16 kernels.
    const table = w('model.embed_tokens.weight');
    const rows = half?.compute === 'float16' && table.dtype === 'bfloat16' ? O.cast(table, 'float16') : table;
    x = embeddings = O.cast(O.gather(rows, ids, 0), dtype); // (B, T, d)
  } else {
    x = g.input('hidden_in', dtype, [B, T, cfg.hiddenSize]);
  }

  const hiddenStates: Tensor[] = [];
  const presents: { key: Tensor; value: Tensor }[] = [];
  for (const layer of opts.layers) {
    x = g.scope(`layers.${layer}`, () => {
      const pre = `model.layers.${layer}`;
      // Self-attention block
      const h = rmsNorm(x, w(`${pre}.input_layernorm.weight`), cfg.rmsNormEps);
      const q = heads(proj(h, layer, 'q_proj', cfg.attentionBias), B, T, cfg.numHeads, hd); // (B, H, T, hd)
      let k = heads(proj(h, layer, 'k_proj', cfg.attentionBias), B, T, cfg.numKvHeads, hd); // (B, Hkv, T, hd)
      let v = heads(proj(h, layer, 'v_proj', cfg.attentionBias), B, T, cfg.numKvHeads, hd);
      const qr = rope(q, cos, sin);
      k = rope(k, cos, sin);
      if (opts.kvCache) {
        presents.push({ key: k, value: v });
        if (P > 0) {
          const pk = g.input(`past.${layer}.key`, dtype, [B, cfg.numKvHeads, P, hd]);
          const pv = g.input(`past.${layer}.value`, dtype, [B, cfg.numKvHeads, P, hd]);
          k = O.concat([pk, k], 2); // (B, Hkv, S, hd)
          v = O.concat([pv, v], 2);
        }
      }
      const attn = attention(qr, repeatKv(k, cfg), repeatKv(v, cfg), bias); // (B, H, T, hd)
      const merged = O.reshape(O.transpose(attn, [0, 2, 1, 3]), [B, T, cfg.numHeads * hd]); // (B, T, H*hd)
      const afterAttn = O.add(x, proj(merged, layer, 'o_proj', cfg.attentionOutBias));
      // MLP block (SwiGLU): down(silu(gate(h)) * up(h))
      const h2 = rmsNorm(afterAttn, w(`${pre}.post_attention_layernorm.weight`), cfg.rmsNormEps);
      const gate = proj(h2, layer, 'gate_proj', cfg.mlpBias);
      const up = proj(h2, layer, 'up_proj', cfg.mlpBias);
      const act = O.mul(O.mul(gate, O.sigmoid(gate)), up); // silu(g) * u
      return O.add(afterAttn, proj(act, layer, 'down_proj', cfg.mlpBias));
    });
    if (opts.keepHidden) hiddenStates.push(x);
  }

  let logits: Tensor | undefined;
  if (opts.head) {
    const last = opts.logitsFor === 'last' ? O.slice(x, [T - 1], [T], [1]) : x; // (B, 1, d) for generation
    const normed = rmsNorm(last, w('model.norm.weight'), cfg.rmsNormEps);
    const headName = cfg.tieWordEmbeddings || !has('lm_head.weight') ? 'model.embed_tokens.weight' : 'lm_head.weight';
    logits = frozenLinear(normed, w(headName)); // (B, T, V)
    if (opts.keepHidden) hiddenStates.push(normed);
  }
  return {
    graph: g,
    ...(logits ? { logits } : {}),
    ...(embeddings ? { embeddings } : {}),
    lastHidden: x,
    hiddenStates,
    loraParams,
    presents,
    weightInputs: opts.weightsAsInputs
      ? new Map([...bound].filter(([k]) => k !== 'lm_head.weight' || !cfg.tieWordEmbeddings))
      : new Map(),
  };
}

/** (B, T, n*hd) -> (B, n, T, hd) */
function heads(x: Tensor, B: number, T: number, n: number, hd: number): Tensor {
  return O.transpose(O.reshape(x, [B, T, n, hd]), [0, 2, 1, 3]);
}

/** HF rotate_half convention: x*cos + cat(-x2, x1)*sin, with x = cat(x1, x2) along the head axis. */
function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const half = x.shape[x.rank - 1]! / 2;
  const [x1, x2] = O.split(x, [half, half], -1);
  const rotated = O.concat([O.neg(x2!), x1!], -1);
  return O.add(O.mul(x, cos), O.mul(rotated, sin));
}

/** Grouped-query attention: each KV head serves numHeads/numKvHeads query heads. (B, Hkv, S, hd) -> (B, H, S, hd) */
function repeatKv(x: Tensor, cfg: ModelConfig): Tensor {
  const groups = cfg.numHeads / cfg.numKvHeads;
  if (groups === 1) return x;
  const [B, Hkv, S, hd] = x.shape as [number, number, number, number];
  const expanded = O.expand(O.unsqueeze(x, [2]), [B, Hkv, groups, S, hd]); // (B, Hkv, G, S, hd)
  return O.reshape(expanded, [B, Hkv * groups, S, hd]);
}

/** softmax(q kᵀ / sqrt(hd) + bias) v, as HF's eager attention. */
function attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | undefined): Tensor {
  const hd = q.shape[q.rank - 1]!;
  let scores = O.mul(O.matmul(q, O.transpose(k, [0, 1, 3, 2])), 1 / Math.sqrt(hd)); // (B, H, T, S)
  if (bias) scores = O.add(scores, bias);
  return O.matmul(O.softmax(scores, -1), v); // (B, H, T, hd)
}

/**
 * cos/sin [T, hd] for positions offset..offset+T-1. HF computes inv_freq in float32 and the angles as a float32
 * product, so float32 graphs round the same way; float64 graphs (gradient checks) keep full precision.
 */
export function ropeTablesFor(
  cfg: ModelConfig,
  T: number,
  offset: number,
  dtype: DType,
): { cos: Float64Array; sin: Float64Array } {
  const inv = ropeInvFreq(cfg);
  const hd = cfg.headDim;
  const half = hd / 2;
  const f32 = dtype === 'float32';
  const cos = new Float64Array(T * hd);
  const sin = new Float64Array(T * hd);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < half; j++) {
      const angle = f32 ? Math.fround(Math.fround(offset + t) * Math.fround(inv[j]!)) : (offset + t) * inv[j]!;
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      cos[t * hd + j] = cos[t * hd + half + j] = c;
      sin[t * hd + j] = sin[t * hd + half + j] = s;
    }
  }
  return { cos, sin };
}

/** Token-level loss inputs: `labels` [B,T] int64 (next tokens) and `loss_mask` [B,T]; the masked mean CE. */
export function causalLmLoss(logits: Tensor, dtype: DType = 'float32'): { loss: Tensor; labels: Tensor; mask: Tensor } {
  const g = logits.graph;
  const [B, T] = logits.shape as [number, number, number];
  const labels = g.input('labels', 'int64', [B, T]);
  const mask = g.input('loss_mask', dtype, [B, T]);
  const count = O.max(O.sumAll(mask), 1);
  const loss = crossEntropy(logits, labels, O.div(mask, count));
  return { loss, labels, mask };
}
