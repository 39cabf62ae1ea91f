/**
 * PEFT LoRA adapters on disk (`adapter_config.json` + `adapter_model.safetensors`), as peft's `save_pretrained`
 * writes and `PeftModel.from_pretrained` loads them. Tensor names on disk are
 * `base_model.model.<module>.lora_A.weight` ([r, in]) and `.lora_B.weight` ([out, r]); in memory we key by
 * `<module>`, e.g. `model.layers.2.self_attn.q_proj`. The LoRA delta is x A^T B^T * scaling with
 * scaling = alpha / r (alpha / sqrt(r) with rsLoRA).
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  readSafetensorsHeader,
  readTensorBytesSync,
  SafetensorsError,
  toFloat32,
  writeSafetensors,
  type SafetensorsWriteTensor,
} from '../../engine/src/light.js';
import { writeDirAtomic, writeJsonAtomic } from './checkpoint.js';
import type { ModelConfig } from './config.js';
import { PeftAdapterError } from './errors.js';
import { linearBlock, linearFeatures, parseModuleName } from './linears.js';

export const ADAPTER_CONFIG = 'adapter_config.json';
export const ADAPTER_WEIGHTS = 'adapter_model.safetensors';
const PREFIX = 'base_model.model.';

/** The LoRA settings we read and write (the rest of adapter_config.json is peft bookkeeping). */
export interface LoraAdapterConfig {
  readonly r: number;
  readonly loraAlpha: number;
  readonly loraDropout: number;
  /** Module name suffixes, e.g. ['q_proj', 'v_proj']. */
  readonly targetModules: readonly string[];
  /** Layer indices the adapter covers; absent = all layers. */
  readonly layersToTransform?: readonly number[];
  readonly baseModelNameOrPath?: string;
  /** rsLoRA: scaling alpha / sqrt(r) instead of alpha / r. Default false. */
  readonly useRslora?: boolean;
}

/** One adapted linear: A [r, in] and B [out, r], row-major float32. */
export interface LoraPair {
  readonly A: Float32Array;
  readonly B: Float32Array;
  readonly r: number;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

export interface LoraAdapter {
  readonly config: LoraAdapterConfig;
  /** Keyed by module path, e.g. 'model.layers.2.self_attn.q_proj'. */
  readonly tensors: ReadonlyMap<string, LoraPair>;
}

/** LoRA scaling factor applied to x A^T B^T. */
export function loraScaling(config: LoraAdapterConfig): number {
  return config.useRslora === true ? config.loraAlpha / Math.sqrt(config.r) : config.loraAlpha / config.r;
}

function parseAdapterConfig(json: unknown, file: string): LoraAdapterConfig {
  const fail = (field: string, msg: string): never => {
    throw new PeftAdapterError(file, field, msg);
  };
  if (json === null || typeof json !== 'object' || Array.isArray(json)) return fail('(root)', 'not a JSON object');
  const o = json as Record<string, unknown>;
  if (o['peft_type'] !== 'LORA')
    fail('peft_type', `only LORA adapters are supported, got ${JSON.stringify(o['peft_type'])}`);
  const r = o['r'];
  if (typeof r !== 'number' || !Number.isSafeInteger(r) || r <= 0)
    fail('r', `expected a positive integer, got ${JSON.stringify(r)}`);
  const alpha = o['lora_alpha'];
  if (typeof alpha !== 'number' || !Number.isFinite(alpha))
    fail('lora_alpha', `expected a number, got ${JSON.stringify(alpha)}`);
  const dropout = o['lora_dropout'] ?? 0;
  if (typeof dropout !== 'number' || dropout < 0 || dropout >= 1)
    fail('lora_dropout', `expected a number in [0, 1), got ${JSON.stringify(dropout)}`);
  const targets = o['target_modules'];
  if (!Array.isArray(targets) || !targets.every((t) => typeof t === 'string')) {
    fail(
      'target_modules',
      `expected a list of module names (regex strings are not supported), got ${JSON.stringify(targets)}`,
    );
  }
  // Features that change what the tensors mean; refusing them beats silently computing something else.
  if (o['use_dora'] === true) fail('use_dora', 'DoRA adapters are not supported');
  if (o['fan_in_fan_out'] === true) fail('fan_in_fan_out', 'transposed (Conv1D) LoRA weights are not supported');
  if ((o['bias'] ?? 'none') !== 'none') fail('bias', `only "none" is supported, got ${JSON.stringify(o['bias'])}`);
  if (o['lora_bias'] === true) fail('lora_bias', 'LoRA bias terms are not supported');
  for (const key of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = o[key];
    if (v !== undefined && v !== null && (typeof v !== 'object' || Object.keys(v).length > 0))
      fail(key, 'per-module ranks/alphas are not supported');
  }
  if (o['modules_to_save'] !== undefined && o['modules_to_save'] !== null)
    fail('modules_to_save', 'fully trained extra modules are not supported');
  let layers: number[] | undefined;
  const ltt = o['layers_to_transform'];
  if (typeof ltt === 'number') layers = [ltt];
  else if (Array.isArray(ltt)) {
    if (!ltt.every((x) => Number.isSafeInteger(x) && x >= 0))
      fail('layers_to_transform', `expected layer indices, got ${JSON.stringify(ltt)}`);
    layers = ltt as number[];
  } else if (ltt !== undefined && ltt !== null)
    fail('layers_to_transform', `expected a list of layer indices, got ${JSON.stringify(ltt)}`);
  const base = o['base_model_name_or_path'];
  const cfg: LoraAdapterConfig = {
    r: r as number,
    loraAlpha: alpha as number,
    loraDropout: dropout as number,
    targetModules: targets as string[],
    useRslora: o['use_rslora'] === true,
  };
  return {
    ...cfg,
    ...(layers === undefined ? {} : { layersToTransform: layers }),
    ...(typeof base === 'string' ? { baseModelNameOrPath: base } : {}),
  };
}

/**
 * Reads a PEFT LoRA adapter folder. Checks that every tensor is a lora_A/lora_B weight of a LLaMA linear, that A
 * and B come in pairs with rank r, and that each module is in target_modules and layers_to_transform.
 * @throws PeftAdapterError naming the file and the field or tensor at fault.
 */
export async function readPeftAdapter(dir: string): Promise<LoraAdapter> {
  const root = resolve(dir);
  const cfgFile = join(root, ADAPTER_CONFIG);
  const wFile = join(root, ADAPTER_WEIGHTS);
  let json: unknown;
  try {
    json = JSON.parse(await readFile(cfgFile, 'utf8'));
  } catch (e) {
    throw new PeftAdapterError(cfgFile, undefined, `cannot read (${(e as Error).message})`, { cause: e });
  }
  const config = parseAdapterConfig(json, cfgFile);
  let header;
  try {
    header = await readSafetensorsHeader(wFile);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new PeftAdapterError(wFile, e.tensor, e.detail, { cause: e });
    throw e;
  }
  const halves = new Map<string, { A?: string; B?: string }>();
  for (const name of header.tensors.keys()) {
    const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(name);
    if (m === null)
      throw new PeftAdapterError(wFile, name, 'not a LoRA lora_A/lora_B weight (other PEFT tensors are not supported)');
    const module = m[1]!;
    const mm = parseModuleName(module);
    if (mm === undefined)
      throw new PeftAdapterError(wFile, name, `${module} is not an adaptable linear of a LLaMA-family layer`);
    if (!config.targetModules.includes(mm.name))
      throw new PeftAdapterError(
        wFile,
        name,
        `${mm.name} is not in target_modules ${JSON.stringify(config.targetModules)}`,
      );
    const layer = mm.layer;
    if (config.layersToTransform !== undefined && !config.layersToTransform.includes(layer)) {
      throw new PeftAdapterError(
        wFile,
        name,
        `layer ${layer} is not in layers_to_transform ${JSON.stringify(config.layersToTransform)}`,
      );
    }
    const h = halves.get(module) ?? {};
    h[m[2] as 'A' | 'B'] = name;
    halves.set(module, h);
  }
  const tensors = new Map<string, LoraPair>();
  for (const [module, h] of halves) {
    if (h.A === undefined || h.B === undefined) {
      throw new PeftAdapterError(wFile, h.A ?? h.B, `has no matching lora_${h.A === undefined ? 'A' : 'B'}.weight`);
    }
    const a = header.tensors.get(h.A)!;
    const b = header.tensors.get(h.B)!;
    if (a.shape.length !== 2 || a.shape[0] !== config.r)
      throw new PeftAdapterError(wFile, h.A, `shape [${a.shape.join(', ')}] is not [r=${config.r}, in]`);
    if (b.shape.length !== 2 || b.shape[1] !== config.r)
      throw new PeftAdapterError(wFile, h.B, `shape [${b.shape.join(', ')}] is not [out, r=${config.r}]`);
    const read = (name: string, dtype: string): Float32Array => {
      try {
        return toFloat32(dtype, readTensorBytesSync(wFile, name, header));
      } catch (e) {
        throw new PeftAdapterError(wFile, name, (e as Error).message, { cause: e });
      }
    };
    tensors.set(module, {
      A: read(h.A, a.dtype),
      B: read(h.B, b.dtype),
      r: config.r,
      inFeatures: a.shape[1]!,
      outFeatures: b.shape[0]!,
    });
  }
  return { config, tensors };
}

/**
 * Checks that an adapter fits a model: every module exists (layer index in range), and A/B have the in/out
 * features the config implies.
 * @param file the adapter file named in errors (default 'adapter_model.safetensors').
 * @throws PeftAdapterError naming the file and the PEFT tensor name at fault.
 */
export function validateAdapterFor(
  cfg: ModelConfig,
  adapter: LoraAdapter,
  file: string = ADAPTER_WEIGHTS,
  layerIds?: readonly number[],
): void {
  for (const [module, p] of adapter.tensors) {
    const tA = `${PREFIX}${module}.lora_A.weight`;
    const tB = `${PREFIX}${module}.lora_B.weight`;
    const m = parseModuleName(module);
    if (m === undefined)
      throw new PeftAdapterError(file, tA, `${module} is not an adaptable linear of a ${cfg.modelType} layer`);
    const { layer } = m;
    const kind = `${linearBlock(m.name)}.${m.name}`; // e.g. self_attn.q_proj, as errors name it
    if (layerIds !== undefined ? !layerIds.includes(layer) : layer >= cfg.numLayers)
      throw new PeftAdapterError(
        file,
        tA,
        layerIds !== undefined
          ? `layer ${layer} is not in this checkpoint (it holds layers ${layerIds.join(', ')})`
          : `layer ${layer} does not exist (the model has ${cfg.numLayers} layers)`,
      );
    const [inFeatures, outFeatures] = linearFeatures(cfg, m.name);
    if (p.inFeatures !== inFeatures || p.A.length !== p.r * p.inFeatures) {
      throw new PeftAdapterError(
        file,
        tA,
        `shape [${p.r}, ${p.inFeatures}] but the model's ${kind} needs [${p.r}, ${inFeatures}]`,
      );
    }
    if (p.outFeatures !== outFeatures || p.B.length !== p.outFeatures * p.r) {
      throw new PeftAdapterError(
        file,
        tB,
        `shape [${p.outFeatures}, ${p.r}] but the model's ${kind} needs [${outFeatures}, ${p.r}]`,
      );
    }
  }
}

/**
 * The peft release whose adapter files this writer matches (test/fixtures/hf holds its output; peft.test checks
 * the round trip), recorded as `peft_version` the way peft itself records the version that saved an adapter.
 */
export const PEFT_FORMAT_VERSION = '0.21.0';

/**
 * Writes `adapter_config.json` + `adapter_model.safetensors` (float32, metadata format=pt) in the layout peft
 * loads. Files are built in a temporary folder and moved into `dir` by rename, so no half-written adapter remains.
 */
export async function writePeftAdapter(dir: string, adapter: LoraAdapter): Promise<void> {
  const c = adapter.config;
  const wFile = join(resolve(dir), ADAPTER_WEIGHTS);
  const tensors = new Map<string, SafetensorsWriteTensor>();
  for (const [module, p] of adapter.tensors) {
    if (parseModuleName(module) === undefined)
      throw new PeftAdapterError(wFile, `${PREFIX}${module}.lora_A.weight`, `${module} is not an adaptable linear`);
    if (p.r !== c.r)
      throw new PeftAdapterError(wFile, `${PREFIX}${module}.lora_A.weight`, `rank ${p.r} differs from config r=${c.r}`);
    tensors.set(`${PREFIX}${module}.lora_A.weight`, { dtype: 'F32', shape: [p.r, p.inFeatures], data: p.A });
    tensors.set(`${PREFIX}${module}.lora_B.weight`, { dtype: 'F32', shape: [p.outFeatures, p.r], data: p.B });
  }
  const config = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: c.baseModelNameOrPath ?? null,
    r: c.r,
    lora_alpha: c.loraAlpha,
    lora_dropout: c.loraDropout,
    target_modules: [...c.targetModules],
    layers_to_transform: c.layersToTransform === undefined ? null : [...c.layersToTransform],
    layers_pattern: null,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    use_rslora: c.useRslora === true,
    use_dora: false,
    lora_bias: false,
    modules_to_save: null,
    rank_pattern: {},
    alpha_pattern: {},
    revision: null,
    peft_version: PEFT_FORMAT_VERSION,
  };
  await writeDirAtomic(dir, async (tmp) => {
    await writeJsonAtomic(join(tmp, ADAPTER_CONFIG), config);
    await writeSafetensors(join(tmp, ADAPTER_WEIGHTS), tensors, { format: 'pt' });
  });
}
