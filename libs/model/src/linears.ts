/**
 * The seven linear layers of a LLaMA-family decoder layer, as transformers' modeling_llama names them: four in
 * LlamaAttention (`self_attn`), three in LlamaMLP (`mlp`). The one table of their module names, [in, out] features
 * and biases: checkpoint shapes (checkpoint.ts), the graph (llama.ts), LoRA factor shapes (lora.ts) and PEFT
 * adapter checks (peft.ts) all read it.
 */
import type { ModelConfig } from './config.js';

/** The linears in checkpoint order: attention q, k, v, o, then the MLP's gate, up, down. */
export const LINEAR_NAMES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LinearName = (typeof LINEAR_NAMES)[number];

export const ATTENTION_LINEARS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const satisfies readonly LinearName[];
export const MLP_LINEARS = ['gate_proj', 'up_proj', 'down_proj'] as const satisfies readonly LinearName[];

/** The submodule of a decoder layer that holds a linear. */
export function linearBlock(name: LinearName): 'self_attn' | 'mlp' {
  return (MLP_LINEARS as readonly LinearName[]).includes(name) ? 'mlp' : 'self_attn';
}

/** [in, out] features of a linear, from the config (its weight is [out, in]). */
export function linearFeatures(cfg: ModelConfig, name: LinearName): [number, number] {
  const d = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  const ff = cfg.intermediateSize;
  switch (name) {
    case 'q_proj':
      return [d, q];
    case 'k_proj':
    case 'v_proj':
      return [d, kv];
    case 'o_proj':
      return [q, d];
    case 'gate_proj':
    case 'up_proj':
      return [d, ff];
    case 'down_proj':
      return [ff, d];
  }
}

/** Whether the checkpoint has a bias for this linear (qwen2: q/k/v; attention_bias / mlp_bias configs). */
export function linearHasBias(cfg: ModelConfig, name: LinearName): boolean {
  if (linearBlock(name) === 'mlp') return cfg.mlpBias;
  return name === 'o_proj' ? cfg.attentionOutBias : cfg.attentionBias;
}

/** "model.layers.3.self_attn.q_proj" for q/k/v/o, "model.layers.3.mlp.gate_proj" for the MLP linears. */
export function moduleName(layer: number, name: LinearName): string {
  return `model.layers.${layer}.${linearBlock(name)}.${name}`;
}

const MODULE_RE = /^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$/;

/**
 * The layer and linear of a module name (the inverse of moduleName), or undefined when it names no linear of a
 * decoder layer (or puts one in the wrong block, e.g. `mlp.q_proj`).
 */
export function parseModuleName(module: string): { layer: number; name: LinearName } | undefined {
  const m = MODULE_RE.exec(module);
  if (m === null) return undefined;
  const name = m[3] as LinearName;
  if (!(LINEAR_NAMES as readonly string[]).includes(name) || linearBlock(name) !== m[2]) return undefined;
  return { layer: Number(m[1]), name };
}
