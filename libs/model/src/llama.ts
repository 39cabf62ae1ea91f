/**
 * The LLaMA-family decoder (llama, mistral, qwen2) as engine graphs, built as transformers' modeling_llama.py builds
 * its modules: LlamaRotaryEmbedding (rotaryEmbedding) and the attention mask, then per layer LlamaDecoderLayer
 * (decoderLayer) = RMSNorm -> LlamaAttention (llamaAttention: GQA, RoPE, optional KV cache) -> residual -> RMSNorm ->
 * LlamaMLP (llamaMlp: SwiGLU) -> residual; LlamaModel (buildLlama) runs the embedding and the layers, and
 * LlamaForCausalLM's final norm and LM head (lmHead) give the logits. Weight names are the checkpoint's keys; LoRA
 * factors are graph inputs (lora.ts), attached to the linears they adapt.
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
  ops as O,
} from '../../engine/src/index.js';
import type { ModelConfig } from './config.js';
import { linearHasBias, moduleName, type LinearName } from './linears.js';
import { GraphLoras, type LoraSpec } from './lora.js';
import { ropeInvFreq } from './rope.js';

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
   *
   * `activations: 'float16'` (with compute 'float16') also keeps the activations in float16 between the matmuls, as a
   * torch model in half precision does: the embedding, the residual stream, q/k/v, RoPE, the attention's matmuls and
   * the MLP run in float16 (no casts around each matmul, half the bytes of every saved activation), while the RMSNorms,
   * the softmax (with its mask), the LoRA branches and the logits stay float32 (torch's LlamaRMSNorm, eager softmax
   * and PEFT do the same). Graph inputs and outputs (hidden states, KV cache, logits) stay float32.
   */
  readonly halfWeights?: HalfWeights;
}

/** Half-precision frozen weights: storage dtype, matmul dtype and (optionally) float16 activations. */
export interface HalfWeights {
  readonly dtype: 'float16' | 'bfloat16';
  readonly compute: HalfCompute;
  readonly activations?: 'float32' | 'float16';
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

/** LlamaGraphOptions' optional flags, resolved to their defaults and grouped by the module they steer. */
interface LlamaSettings {
  readonly batch: number;
  readonly seq: number;
  readonly dtype: 'float32' | 'float64';
  /** Element type of the activations between matmuls: `dtype`, or float16 (HalfWeights.activations). */
  readonly act: 'float32' | 'float64' | 'float16';
  /** How frozen weights enter the graph. */
  readonly weights: {
    readonly asInputs: boolean;
    readonly half?: HalfWeights;
  };
  /** What the attention of every layer sees: rotary tables, the key padding mask, the KV cache (pastLength > 0). */
  readonly attention: {
    readonly positions: 'static' | 'input';
    readonly keyMask: boolean;
    readonly kvCache: boolean;
    readonly pastLength: number;
  };
  readonly lora: { readonly specs: readonly LoraSpec[]; readonly dropout: boolean };
  readonly outputs: { readonly keepHidden: boolean; readonly logitsFor: 'all' | 'last' };
}

/** Checks `opts` against the config and the store, and groups its flags (LlamaSettings). */
function settingsOf(cfg: ModelConfig, store: WeightStore, opts: LlamaGraphOptions): LlamaSettings {
  const dtype = opts.dtype ?? 'float32';
  const half = opts.halfWeights;
  if (half && (dtype !== 'float32' || opts.weightsAsInputs))
    throw new GraphError('buildLlama: halfWeights needs dtype float32 and frozen weights (no weightsAsInputs)');
  if (half?.activations === 'float16' && half.compute !== 'float16')
    throw new GraphError("buildLlama: float16 activations need halfWeights.compute 'float16'");
  const held = store.layerIds;
  for (const l of opts.layers) {
    if (held !== undefined) {
      if (!held.includes(l))
        throw new GraphError(`buildLlama: layer ${l} is not in this checkpoint (it holds layers ${held.join(', ')})`);
    } else if (!Number.isInteger(l) || l < 0 || l >= cfg.numLayers)
      throw new GraphError(`buildLlama: layer ${l} out of range 0..${cfg.numLayers - 1}`);
  }
  const positions = opts.positions ?? 'static';
  const pastLength = opts.kvCache?.pastLength ?? 0;
  if (positions === 'static' && pastLength !== 0)
    throw new GraphError('buildLlama: a KV cache needs positions: "input"');
  return {
    batch: opts.batch,
    seq: opts.seq,
    dtype,
    act: half?.activations === 'float16' ? 'float16' : dtype,
    weights: { asInputs: opts.weightsAsInputs ?? false, ...(half ? { half } : {}) },
    attention: { positions, keyMask: opts.keyMask ?? false, kvCache: opts.kvCache !== undefined, pastLength },
    lora: { specs: opts.loras ?? [], dropout: opts.loraDropout ?? false },
    outputs: { keepHidden: opts.keepHidden ?? false, logitsFor: opts.logitsFor ?? 'all' },
  };
}

/**
 * The checkpoint's weights as graph tensors, bound on first use (frozen initializers, half-precision ones with
 * halfWeights, or graph inputs with weightsAsInputs), and the linear layers that read them.
 */
class LlamaWeights {
  private readonly bound = new Map<string, Tensor>();

  constructor(
    private readonly g: Graph,
    private readonly cfg: ModelConfig,
    private readonly store: WeightStore,
    private readonly dtype: 'float32' | 'float64',
    private readonly act: LlamaSettings['act'],
    private readonly s: LlamaSettings['weights'],
    private readonly loras: GraphLoras,
  ) {}

  get(name: string): Tensor {
    let t = this.bound.get(name);
    if (!t) {
      // Tied heads read the embedding matrix: one tensor, so a trainable embedding gets both gradients.
      const key = name === 'lm_head.weight' && this.cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : name;
      t = this.bound.get(key);
      if (!t) {
        const shape = this.store.shape(key);
        const wdtype = this.s.half && shape.length === 2 ? this.s.half.dtype : this.dtype; // matrices only
        t = this.s.asInputs
          ? this.g.input(key, this.dtype, shape)
          : this.g.weight(key, wdtype, shape, this.store.source(key, wdtype));
        this.bound.set(key, t);
      }
      this.bound.set(name, t);
    }
    return t;
  }

  has(name: string): boolean {
    try {
      this.store.shape(name);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * x Wᵀ + b against a checkpoint weight, float32 or half (halfWeights). With float16 activations x is float16 and
   * the Gemm reads the weight (a bfloat16 one through a Cast that onnxruntime folds) and the bias in float16.
   */
  frozenLinear(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
    if (this.act === 'float16') {
      return linear(x, O.cast(weight, 'float16'), bias && O.cast(bias, 'float16'));
    }
    return weight.dtype === this.dtype ? linear(x, weight, bias) : halfLinear(x, weight, this.s.half!.compute, bias);
  }

  /** nn.Linear `name` of layer `layer` (its checkpoint weight, and bias where the config has one) plus its LoRAs. */
  proj(x: Tensor, layer: number, name: LinearName): Tensor {
    const module = moduleName(layer, name);
    const weight = this.get(`${module}.weight`);
    const bias = linearHasBias(this.cfg, name) ? this.get(`${module}.bias`) : undefined;
    return this.loras.apply(module, x, this.frozenLinear(x, weight, bias));
  }

  /** Weight inputs by checkpoint key (weightsAsInputs), a tied head counted once as the embedding. */
  inputs(): Map<string, Tensor> {
    if (!this.s.asInputs) return new Map();
    return new Map([...this.bound].filter(([k]) => k !== 'lm_head.weight' || !this.cfg.tieWordEmbeddings));
  }
}

/** What the module builders share: the graph, the config, the weights (with their LoRAs) and the settings. */
interface LlamaContext {
  readonly g: Graph;
  readonly cfg: ModelConfig;
  readonly w: LlamaWeights;
  readonly s: LlamaSettings;
}

/** What every layer's attention reads: the rotary tables and the additive mask (causal and/or key padding). */
interface AttentionInputs {
  readonly cos: Tensor;
  readonly sin: Tensor;
  readonly bias: Tensor | undefined;
}

/**
 * LlamaRotaryEmbedding's cos/sin: 'static' bakes positions 0..T-1 into constants [T, hd] (broadcasting over
 * (B, H, T, hd)); 'input' takes `rope_cos`/`rope_sin` [B, 1, T, hd] (per-row positions, KV-cache offsets).
 */
function rotaryEmbedding({ g, cfg, s }: LlamaContext): { cos: Tensor; sin: Tensor } {
  const { batch: B, seq: T, dtype } = s;
  const hd = cfg.headDim;
  if (s.attention.positions === 'static') {
    const tables = ropeTablesFor(cfg, T, 0, dtype);
    return {
      cos: g.constant(Array.from(tables.cos), dtype, [T, hd]),
      sin: g.constant(Array.from(tables.sin), dtype, [T, hd]),
    };
  }
  return { cos: g.input('rope_cos', dtype, [B, 1, T, hd]), sin: g.input('rope_sin', dtype, [B, 1, T, hd]) };
}

/**
 * The additive attention mask over S = P + T keys: causal (query t, at absolute position P + t, sees keys
 * 0..P+t; none for T = 1) plus, with keyMask, -1e9 where the `attention_mask` input [B, S] is 0.
 */
function attentionMask({ g, s }: LlamaContext): Tensor | undefined {
  const { batch: B, seq: T, dtype } = s;
  const P = s.attention.pastLength;
  const S = P + T;
  let bias: Tensor | undefined;
  if (T > 1) {
    const causal: number[] = [];
    for (let t = 0; t < T; t++) for (let k = 0; k < S; k++) causal.push(k <= P + t ? 0 : NEG_INF);
    bias = g.constant(causal, dtype, [T, S]);
  }
  if (s.attention.keyMask) {
    const m = g.input('attention_mask', dtype, [B, S]);
    const keyBias = O.reshape(O.mul(O.sub(1, m), NEG_INF), [B, 1, 1, S]); // (B, 1, 1, S): 0 or -1e9
    bias = bias ? O.add(keyBias, bias) : keyBias;
  }
  return bias;
}

/**
 * model.embed_tokens on `input_ids` [B, T]. A half embedding is gathered in half, then only the B*T rows read are
 * cast. With float16 compute a bfloat16 table is read through the same Cast to float16 as a tied head's
 * (onnxruntime folds it into one float16 initializer), as WebGPU has no bfloat16 kernels.
 */
function embedTokens({ g, w, s }: LlamaContext): Tensor {
  const ids = g.input('input_ids', 'int64', [s.batch, s.seq]);
  const table = w.get('model.embed_tokens.weight');
  const rows = s.weights.half?.compute === 'float16' && table.dtype === 'bfloat16' ? O.cast(table, 'float16') : table;
  return O.cast(O.gather(rows, ids, 0), s.act); // (B, T, d)
}

/**
 * LlamaAttention of layer `layer` on the normed hidden state `h` (B, T, d): q/k/v projections, RoPE on q and k,
 * the past keys/values of a KV cache (`past.<layer>.key/value` inputs), grouped-query attention, o_proj.
 * `present`: this graph's new keys and values (with a KV cache).
 */
function llamaAttention(
  { g, cfg, w, s }: LlamaContext,
  layer: number,
  h: Tensor,
  at: AttentionInputs,
): { out: Tensor; present?: { key: Tensor; value: Tensor } } {
  const { batch: B, seq: T, dtype } = s;
  const hd = cfg.headDim;
  const P = s.attention.pastLength;
  const q = heads(w.proj(h, layer, 'q_proj'), B, T, cfg.numHeads, hd); // (B, H, T, hd)
  let k = heads(w.proj(h, layer, 'k_proj'), B, T, cfg.numKvHeads, hd); // (B, Hkv, T, hd)
  let v = heads(w.proj(h, layer, 'v_proj'), B, T, cfg.numKvHeads, hd);
  const qr = rope(q, at.cos, at.sin);
  k = rope(k, at.cos, at.sin);
  let present: { key: Tensor; value: Tensor } | undefined;
  if (s.attention.kvCache) {
    present = { key: O.cast(k, dtype), value: O.cast(v, dtype) };
    if (P > 0) {
      const pk = O.cast(g.input(`past.${layer}.key`, dtype, [B, cfg.numKvHeads, P, hd]), s.act);
      const pv = O.cast(g.input(`past.${layer}.value`, dtype, [B, cfg.numKvHeads, P, hd]), s.act);
      k = O.concat([pk, k], 2); // (B, Hkv, S, hd)
      v = O.concat([pv, v], 2);
    }
  }
  const attn = attention(qr, repeatKv(k, cfg), repeatKv(v, cfg), at.bias, dtype); // (B, H, T, hd)
  const merged = O.reshape(O.transpose(attn, [0, 2, 1, 3]), [B, T, cfg.numHeads * hd]); // (B, T, H*hd)
  const out = w.proj(merged, layer, 'o_proj');
  return present ? { out, present } : { out };
}

/** LlamaMLP (SwiGLU): down(silu(gate(x)) * up(x)). */
function llamaMlp(w: LlamaWeights, layer: number, x: Tensor): Tensor {
  const gate = w.proj(x, layer, 'gate_proj');
  const up = w.proj(x, layer, 'up_proj');
  const act = O.mul(O.mul(gate, O.sigmoid(gate)), up); // silu(g) * u
  return w.proj(act, layer, 'down_proj');
}

/** LlamaDecoderLayer: x + attention(input_layernorm(x)), then + mlp(post_attention_layernorm(.)). */
function decoderLayer(
  m: LlamaContext,
  layer: number,
  x: Tensor,
  at: AttentionInputs,
): { hidden: Tensor; present?: { key: Tensor; value: Tensor } } {
  const { cfg, w, s } = m;
  // With float16 activations the norms run in float32 (torch's LlamaRMSNorm upcasts too) and hand float16 on.
  const norm = (t: Tensor, name: string): Tensor =>
    O.cast(rmsNorm(O.cast(t, s.dtype), w.get(name), cfg.rmsNormEps), s.act);
  return m.g.scope(`layers.${layer}`, () => {
    const pre = `model.layers.${layer}`;
    const h = norm(x, `${pre}.input_layernorm.weight`);
    const attn = llamaAttention(m, layer, h, at);
    const afterAttn = O.add(x, attn.out);
    const h2 = norm(afterAttn, `${pre}.post_attention_layernorm.weight`);
    const hidden = O.add(afterAttn, llamaMlp(w, layer, h2));
    return attn.present ? { hidden, present: attn.present } : { hidden };
  });
}

/**
 * LlamaForCausalLM's head: the final RMSNorm (model.norm) and lm_head (the embedding matrix when tied or absent),
 * on every position or, for generation, the last one (logits [B, 1, V]).
 */
function lmHead({ cfg, w, s }: LlamaContext, x: Tensor): { normed: Tensor; logits: Tensor } {
  const T = s.seq;
  const last = s.outputs.logitsFor === 'last' ? O.slice(x, [T - 1], [T], [1]) : x; // (B, 1, d) for generation
  const normed = rmsNorm(O.cast(last, s.dtype), w.get('model.norm.weight'), cfg.rmsNormEps);
  const headName = cfg.tieWordEmbeddings || !w.has('lm_head.weight') ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const logits = O.cast(w.frozenLinear(O.cast(normed, s.act), w.get(headName)), s.dtype); // (B, T, V)
  return { normed, logits };
}

/**
 * Builds the forward pass into `g` (LlamaModel, and the head with `head`). Inputs created (as needed):
 * input_ids | hidden_in, attention_mask, rope_cos/rope_sin, past.<i>.key/value, LoRA factors and their dropout masks.
 */
export function buildLlama(g: Graph, cfg: ModelConfig, weights: WeightStore, opts: LlamaGraphOptions): LlamaGraph {
  const s = settingsOf(cfg, weights, opts);
  const loras = GraphLoras.attach(g, cfg, s.lora.specs, {
    layers: opts.layers,
    dtype: s.dtype,
    dropout: s.lora.dropout,
    batch: s.batch,
    seq: s.seq,
  });
  const w = new LlamaWeights(g, cfg, weights, s.dtype, s.act, s.weights, loras);
  const m: LlamaContext = { g, cfg, w, s };
  const { cos, sin } = rotaryEmbedding(m);
  const at: AttentionInputs = { cos: O.cast(cos, s.act), sin: O.cast(sin, s.act), bias: attentionMask(m) };

  const embedded = opts.start === 'ids' ? embedTokens(m) : undefined;
  const embeddings = embedded && O.cast(embedded, s.dtype);
  let x = embedded ?? O.cast(g.input('hidden_in', s.dtype, [s.batch, s.seq, cfg.hiddenSize]), s.act);
  const hiddenStates: Tensor[] = [];
  const presents: { key: Tensor; value: Tensor }[] = [];
  for (const layer of opts.layers) {
    const out = decoderLayer(m, layer, x, at);
    x = out.hidden;
    if (out.present) presents.push(out.present);
    if (s.outputs.keepHidden) hiddenStates.push(O.cast(x, s.dtype));
  }

  let logits: Tensor | undefined;
  if (opts.head) {
    const head = lmHead(m, x);
    logits = head.logits;
    if (s.outputs.keepHidden) hiddenStates.push(head.normed);
  }
  return {
    graph: g,
    ...(logits ? { logits } : {}),
    ...(embeddings ? { embeddings } : {}),
    lastHidden: O.cast(x, s.dtype),
    hiddenStates,
    loraParams: loras.params,
    presents,
    weightInputs: w.inputs(),
  };
}

/** (B, T, n*hd) -> (B, n, T, hd) */
function heads(x: Tensor, B: number, T: number, n: number, hd: number): Tensor {
  return O.transpose(O.reshape(x, [B, T, n, hd]), [0, 2, 1, 3]);
}

/** apply_rotary_pos_emb, HF's rotate_half convention: x*cos + cat(-x2, x1)*sin, with x = cat(x1, x2). */
function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const half = x.shape[x.rank - 1]! / 2;
  const [x1, x2] = O.split(x, [half, half], -1);
  const rotated = O.concat([O.neg(x2!), x1!], -1);
  return O.add(O.mul(x, cos), O.mul(rotated, sin));
}

/** repeat_kv: each KV head serves numHeads/numKvHeads query heads. (B, Hkv, S, hd) -> (B, H, S, hd) */
function repeatKv(x: Tensor, cfg: ModelConfig): Tensor {
  const groups = cfg.numHeads / cfg.numKvHeads;
  if (groups === 1) return x;
  const [B, Hkv, S, hd] = x.shape as [number, number, number, number];
  const expanded = O.expand(O.unsqueeze(x, [2]), [B, Hkv, groups, S, hd]); // (B, Hkv, G, S, hd)
  return O.reshape(expanded, [B, Hkv * groups, S, hd]);
}

/**
 * eager_attention_forward: softmax(q kᵀ / sqrt(hd) + bias) v. The mask and the softmax run in `softmaxDtype` (float32
 * for float16 activations, as torch's eager attention upcasts: -1e9 does not fit float16).
 */
function attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | undefined, softmaxDtype: DType): Tensor {
  const hd = q.shape[q.rank - 1]!;
  let scores = O.cast(O.mul(O.matmul(q, O.transpose(k, [0, 1, 3, 2])), 1 / Math.sqrt(hd)), softmaxDtype); // (B,H,T,S)
  if (bias) scores = O.add(scores, bias);
  return O.matmul(O.cast(O.softmax(scores, -1), v.dtype), v); // (B, H, T, hd)
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
