/**
 * Moving LoRA adapters between our runtime form (PEFT state-dict names with an adapter name) and the files users
 * exchange: PEFT adapter folders, and merged checkpoints with the LoRA folded into the base weights.
 */
import { cp } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { ModelConfig } from './config.js';
import { writeCheckpoint, writeDirAtomic } from './checkpoint.js';
import {
  LORA_TARGETS,
  loraModules,
  loraParamNames,
  parseLoraModule,
  type LoraSpec,
  type LoraTarget,
  type LoraWeights,
} from './lora.js';
import { linearFeatures } from './linears.js';
import { validateAdapterFor, writePeftAdapter, type LoraAdapter, type LoraPair } from './peft.js';

/** Our adapter as a PEFT adapter (module -> A/B). `baseModel` goes into adapter_config.json. */
export function toPeftAdapter(lora: LoraWeights, cfg: ModelConfig, baseModel?: string): LoraAdapter {
  const { spec } = lora;
  const tensors = new Map<string, LoraPair>();
  for (const { target, module, a, b } of loraModules(spec)) {
    const A = lora.tensors.get(a);
    const B = lora.tensors.get(b);
    if (!A || !B) throw new Error(`toPeftAdapter: adapter ${spec.name} has no values for ${module}`);
    const [inFeatures, outFeatures] = linearFeatures(cfg, target);
    tensors.set(module, { A, B, r: spec.r, inFeatures, outFeatures });
  }
  return {
    config: {
      r: spec.r,
      loraAlpha: spec.alpha,
      loraDropout: spec.dropout,
      targetModules: [...spec.targets],
      layersToTransform: [...spec.layers],
      ...(baseModel ? { baseModelNameOrPath: baseModel } : {}),
    },
    tensors,
  };
}

/** A PEFT adapter (as read by readPeftAdapter) as our runtime form under adapter name `name`. */
export function fromPeftAdapter(
  adapter: LoraAdapter,
  cfg: ModelConfig,
  name = 'default',
  file = 'adapter_model.safetensors',
  /** The layers the model holds (CausalLM.allLayers), for a checkpoint with a subset of a model's layers. */
  layerIds?: readonly number[],
): LoraWeights {
  validateAdapterFor(cfg, adapter, file, layerIds);
  if (adapter.config.useRslora) throw new Error(`${file}: rsLoRA adapters are not supported`);
  const targets = new Set<LoraTarget>();
  const layers = new Set<number>();
  const tensors = new Map<string, Float32Array>();
  for (const [module, pair] of adapter.tensors) {
    const m = parseLoraModule(module);
    if (!m) throw new Error(`${file}: unsupported LoRA module ${module}`);
    layers.add(m.layer);
    targets.add(m.target);
    const names = loraParamNames(module, name);
    tensors.set(names.a, pair.A);
    tensors.set(names.b, pair.B);
  }
  const spec: LoraSpec = {
    name,
    r: adapter.config.r,
    alpha: adapter.config.loraAlpha,
    targets: LORA_TARGETS.filter((t) => targets.has(t)),
    layers: [...layers].sort((a, b) => a - b),
    dropout: adapter.config.loraDropout,
  };
  // Every (layer, target) pair must be present: the graph attaches the adapter to all of them.
  for (const m of loraModules(spec))
    if (!tensors.has(m.a)) {
      throw new Error(
        `${file}: adapter covers ${m.target} in some layers but not in layer ${m.layer}; such sparse adapters are not supported`,
      );
    }
  return { spec, tensors };
}

export async function savePeftAdapter(
  dir: string,
  lora: LoraWeights,
  cfg: ModelConfig,
  baseModel?: string,
): Promise<void> {
  await writePeftAdapter(dir, toPeftAdapter(lora, cfg, baseModel));
}

/** W + (alpha/r) B A for every adapted linear: the base weights with the adapters folded in (new arrays). */
export function mergeLora(
  base: (name: string) => Float32Array,
  cfg: ModelConfig,
  loras: readonly LoraWeights[],
): Map<string, Float32Array> {
  const merged = new Map<string, Float32Array>();
  for (const { spec, tensors } of loras) {
    const scale = spec.alpha / spec.r;
    for (const { target, module, a, b } of loraModules(spec)) {
      const A = tensors.get(a)!;
      const B = tensors.get(b)!;
      const [fin, fout] = linearFeatures(cfg, target);
      const key = `${module}.weight`;
      const W = merged.get(key) ?? Float32Array.from(base(key));
      for (let o = 0; o < fout; o++) {
        for (let i = 0; i < fin; i++) {
          let s = 0;
          for (let k = 0; k < spec.r; k++) s += B[o * spec.r + k]! * A[k * fin + i]!;
          W[o * fin + i]! += scale * s;
        }
      }
      merged.set(key, W);
    }
  }
  return merged;
}

/**
 * Writes a normal Hugging Face checkpoint folder with the adapters folded in; tokenizer files of `sourceDir`
 * are copied along so the folder is usable on its own. Atomic: the folder appears complete or not at all.
 */
export async function exportMerged(
  dir: string,
  cfg: ModelConfig,
  names: readonly string[],
  base: (name: string) => Float32Array,
  loras: readonly LoraWeights[],
  sourceDir?: string,
): Promise<void> {
  const merged = mergeLora(base, cfg, loras);
  const all = new Map<string, Float32Array>();
  for (const n of names) all.set(n, merged.get(n) ?? base(n));
  await writeDirAtomic(dir, async (tmp) => {
    await writeCheckpoint(tmp, cfg, all);
    if (sourceDir) {
      for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) {
        if (existsSync(join(sourceDir, f))) await cp(join(sourceDir, f), join(tmp, f));
      }
    }
  });
}
