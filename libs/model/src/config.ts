/**
 * Hugging Face `config.json` for the LLaMA family (model_type llama, mistral, qwen2), normalized to one shape.
 * Both config generations are read: transformers >= 5 writes `rope_parameters` (with `rope_theta` inside) and
 * `dtype`; older versions write top-level `rope_theta`, `rope_scaling` (key `type` or `rope_type`) and `torch_dtype`.
 * Optional fields take the defaults of the transformers config class of that model_type.
 */
import { readFile } from 'node:fs/promises';
import { ModelConfigError } from './errors.js';

export type ModelType = 'llama' | 'mistral' | 'qwen2';
export type RopeType = 'default' | 'linear' | 'llama3';

/** RoPE frequency scheme (transformers' ROPE_INIT_FUNCTIONS key and its parameters). */
export interface RopeScaling {
  readonly type: RopeType;
  /** linear, llama3: positions are stretched by this factor. */
  readonly factor?: number;
  /** llama3 only. */
  readonly lowFreqFactor?: number;
  /** llama3 only. */
  readonly highFreqFactor?: number;
  /** llama3 only: context length of the unscaled model, in tokens. */
  readonly originalMaxPositionEmbeddings?: number;
}

export interface ModelConfig {
  readonly modelType: ModelType;
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  /** Key/value heads (GQA); equals numHeads for plain multi-head attention. */
  readonly numKvHeads: number;
  /** Per-head width: explicit `head_dim`, else hiddenSize / numHeads. */
  readonly headDim: number;
  readonly rmsNormEps: number;
  /** RoPE base. Default 10000. */
  readonly ropeTheta: number;
  readonly rope: RopeScaling;
  readonly maxPositionEmbeddings: number;
  readonly tieWordEmbeddings: boolean;
  /** Bias on q/k/v projections (qwen2: always; llama: `attention_bias`; mistral: never). */
  readonly attentionBias: boolean;
  /** Bias on o_proj (llama `attention_bias` covers o_proj too; qwen2's o_proj has none). */
  readonly attentionOutBias: boolean;
  /** Bias on gate/up/down (llama `mlp_bias`). */
  readonly mlpBias: boolean;
  readonly bosTokenId?: number;
  readonly eosTokenId?: number | readonly number[];
  readonly padTokenId?: number;
  /** Storage dtype named by the config ('float32', 'bfloat16', ...), if any. Informational. */
  readonly torchDtype?: string;
  /**
   * Sliding-window attention width in tokens, or null for full attention (qwen2: only when use_sliding_window).
   * Recorded only: the engine uses full causal attention, which is identical for sequences no longer than the window.
   */
  readonly slidingWindow: number | null;
}

const ARCHITECTURES: Readonly<Record<ModelType, string>> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};

type Json = Record<string, unknown>;

class Fields {
  constructor(
    readonly file: string,
    readonly obj: Json,
    readonly prefix = '',
  ) {}

  fail(field: string, message: string): never {
    throw new ModelConfigError(this.file, this.prefix + field, message);
  }

  has(key: string): boolean {
    return this.obj[key] !== undefined && this.obj[key] !== null;
  }

  int(key: string, dflt?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (dflt === undefined) this.fail(key, 'required field is missing');
      return dflt;
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0)
      this.fail(key, `expected a positive integer, got ${JSON.stringify(v)}`);
    return v;
  }

  num(key: string, dflt?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (dflt === undefined) this.fail(key, 'required field is missing');
      return dflt;
    }
    if (typeof v !== 'number' || !Number.isFinite(v))
      this.fail(key, `expected a finite number, got ${JSON.stringify(v)}`);
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.obj[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'boolean') this.fail(key, `expected true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  tokenId(key: string): number | undefined {
    const v = this.obj[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      this.fail(key, `expected a token id, got ${JSON.stringify(v)}`);
    return v;
  }
}

/**
 * Normalizes a parsed config.json. `file` is used in error messages only.
 * @throws ModelConfigError naming the file and field for unknown model_type / rope type / hidden_act, a missing
 *   required size, or inconsistent sizes.
 */
export function parseModelConfig(json: unknown, file: string): ModelConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    throw new ModelConfigError(file, '(root)', 'config is not a JSON object');
  const f: Fields = new Fields(file, json as Json);
  const rawType = (json as Json)['model_type'];
  if (rawType !== 'llama' && rawType !== 'mistral' && rawType !== 'qwen2') {
    f.fail('model_type', `unsupported model type ${JSON.stringify(rawType)} (supported: llama, mistral, qwen2)`);
  }
  const modelType: ModelType = rawType;
  const act = (json as Json)['hidden_act'] ?? 'silu';
  if (act !== 'silu') f.fail('hidden_act', `only silu (SwiGLU) is supported, got ${JSON.stringify(act)}`);

  const hiddenSize = f.int('hidden_size');
  const numHeads = f.int('num_attention_heads');
  // transformers: an explicit null means "same as num_attention_heads"; an absent key takes the class default.
  const kvDefault = modelType === 'mistral' ? 8 : modelType === 'qwen2' ? 32 : numHeads;
  const numKvHeads =
    (json as Json)['num_key_value_heads'] === null ? numHeads : f.int('num_key_value_heads', kvDefault);
  if (numHeads % numKvHeads !== 0)
    f.fail('num_key_value_heads', `${numKvHeads} does not divide num_attention_heads ${numHeads}`);
  let headDim: number;
  if (f.has('head_dim')) headDim = f.int('head_dim');
  else {
    if (hiddenSize % numHeads !== 0)
      f.fail('head_dim', `missing, and hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`);
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) f.fail('head_dim', `RoPE needs an even head_dim, got ${headDim}`);

  const { ropeTheta, rope } = parseRope(f);
  const eos = parseEos(f);
  const bias = f.bool('attention_bias', false);
  const dtype = (json as Json)['dtype'] ?? (json as Json)['torch_dtype'];
  let slidingWindow: number | null = null;
  if (modelType === 'mistral')
    slidingWindow = (json as Json)['sliding_window'] === null ? null : f.int('sliding_window', 4096);
  if (modelType === 'qwen2' && f.bool('use_sliding_window', false)) slidingWindow = f.int('sliding_window', 4096);

  const cfg: ModelConfig = {
    modelType,
    vocabSize: f.int('vocab_size'),
    hiddenSize,
    intermediateSize: f.int('intermediate_size'),
    numLayers: f.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: f.num('rms_norm_eps', 1e-6),
    ropeTheta,
    rope,
    maxPositionEmbeddings: f.int(
      'max_position_embeddings',
      modelType === 'llama' ? 2048 : modelType === 'mistral' ? 131072 : 32768,
    ),
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias: modelType === 'qwen2' ? true : modelType === 'llama' ? bias : false,
    attentionOutBias: modelType === 'llama' ? bias : false,
    mlpBias: modelType === 'llama' ? f.bool('mlp_bias', false) : false,
    slidingWindow,
  };
  if (modelType === 'mistral' && bias) f.fail('attention_bias', 'MistralForCausalLM has no attention bias');
  const bos = f.tokenId('bos_token_id');
  const pad = f.tokenId('pad_token_id');
  return {
    ...cfg,
    ...(bos === undefined ? {} : { bosTokenId: bos }),
    ...(eos === undefined ? {} : { eosTokenId: eos }),
    ...(pad === undefined ? {} : { padTokenId: pad }),
    ...(typeof dtype === 'string' ? { torchDtype: dtype } : {}),
  };
}

function parseEos(f: Fields): number | readonly number[] | undefined {
  const v = f.obj['eos_token_id'];
  if (Array.isArray(v)) {
    if (!v.every((x) => Number.isSafeInteger(x) && x >= 0))
      f.fail('eos_token_id', `expected token ids, got ${JSON.stringify(v)}`);
    return v as number[];
  }
  return f.tokenId('eos_token_id');
}

/** rope_parameters (transformers 5) takes precedence over rope_scaling (transformers 4); theta from either. */
function parseRope(f: Fields): { ropeTheta: number; rope: RopeScaling } {
  const key = f.has('rope_parameters') ? 'rope_parameters' : 'rope_scaling';
  const raw = f.obj[key];
  const params: Json = raw === undefined || raw === null ? {} : (raw as Json);
  if (typeof params !== 'object' || Array.isArray(params)) f.fail(key, 'expected an object');
  const p: Fields = new Fields(f.file, params, `${key}.`);
  const ropeTheta = f.has('rope_theta') ? f.num('rope_theta') : p.num('rope_theta', 10000);
  if (ropeTheta <= 0) f.fail('rope_theta', `must be positive, got ${ropeTheta}`);
  if (f.has('partial_rotary_factor') && f.num('partial_rotary_factor') !== 1)
    f.fail('partial_rotary_factor', 'only 1.0 (full rotary) is supported');
  const typeKey = params['rope_type'] !== undefined ? 'rope_type' : 'type';
  const type = params[typeKey] ?? 'default';
  switch (type) {
    case 'default':
      return { ropeTheta, rope: { type: 'default' } };
    case 'linear':
      return { ropeTheta, rope: { type: 'linear', factor: positive(p, 'factor') } };
    case 'llama3': {
      const rope: RopeScaling = {
        type: 'llama3',
        factor: positive(p, 'factor'),
        lowFreqFactor: positive(p, 'low_freq_factor'),
        highFreqFactor: positive(p, 'high_freq_factor'),
        originalMaxPositionEmbeddings: p.int('original_max_position_embeddings'),
      };
      if (rope.highFreqFactor! <= rope.lowFreqFactor!)
        p.fail('high_freq_factor', `must exceed low_freq_factor (${rope.lowFreqFactor})`);
      return { ropeTheta, rope };
    }
    default:
      return p.fail(typeKey, `unsupported RoPE type ${JSON.stringify(type)} (supported: default, linear, llama3)`);
  }
}

function positive(p: Fields, key: string): number {
  const v = p.num(key);
  if (v <= 0) p.fail(key, `must be positive, got ${v}`);
  return v;
}

/** Reads and normalizes `path` (a config.json). */
export async function readModelConfig(path: string): Promise<ModelConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ModelConfigError(path, '(file)', `cannot read (${(e as Error).message})`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ModelConfigError(path, '(file)', `not valid JSON (${(e as Error).message})`, { cause: e });
  }
  return parseModelConfig(json, path);
}

/**
 * config.json content for a checkpoint we write. Uses the transformers-4 spelling (top-level `rope_theta`,
 * `rope_scaling`, `torch_dtype`), which transformers 4 and 5 both load; parseModelConfig(configToJson(c)) equals c.
 */
export function configToJson(cfg: ModelConfig): Record<string, unknown> {
  const r = cfg.rope;
  const ropeScaling =
    r.type === 'default'
      ? null
      : r.type === 'linear'
        ? { rope_type: 'linear', factor: r.factor }
        : {
            rope_type: 'llama3',
            factor: r.factor,
            low_freq_factor: r.lowFreqFactor,
            high_freq_factor: r.highFreqFactor,
            original_max_position_embeddings: r.originalMaxPositionEmbeddings,
          };
  const out: Record<string, unknown> = {
    architectures: [ARCHITECTURES[cfg.modelType]],
    model_type: cfg.modelType,
    vocab_size: cfg.vocabSize,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    hidden_act: 'silu',
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.ropeTheta,
    rope_scaling: ropeScaling,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    bos_token_id: cfg.bosTokenId ?? null,
    eos_token_id: cfg.eosTokenId ?? null,
    pad_token_id: cfg.padTokenId ?? null,
  };
  if (cfg.torchDtype !== undefined) out['torch_dtype'] = cfg.torchDtype;
  if (cfg.modelType === 'llama') {
    out['attention_bias'] = cfg.attentionBias;
    out['mlp_bias'] = cfg.mlpBias;
  }
  if (cfg.modelType === 'mistral') out['sliding_window'] = cfg.slidingWindow;
  if (cfg.modelType === 'qwen2') {
    out['use_sliding_window'] = cfg.slidingWindow !== null;
    out['sliding_window'] = cfg.slidingWindow;
  }
  return out;
}
