import type { LoraWeights } from '../../libs/model/src/light.js';
import { seededBytes } from '../../libs/privacy/src/index.js';

/** `n` deterministic values in [-scale, scale], drawn from `seed`. */
export function seededValues(seed: string, n: number, scale: number): Float32Array {
  const b = seededBytes(seed)(4 * n);
  return Float32Array.from({ length: n }, (_, i) => (b.readUInt32LE(4 * i) / 2 ** 32 - 0.5) * 2 * scale);
}

const SYNTHETIC_SPEC = { name: 'adapter', r: 2, alpha: 4, targets: ['q_proj'], layers: [6], dropout: 0 } as const;

/**
 * The aggregation tests' global adapter: two LoRA tensors of layer 6 (q_proj lora_A, 96 values; v_proj lora_B, 64),
 * seeded values in [-0.1, 0.1]. The same numbers on every call.
 */
export function syntheticAdapter(): LoraWeights {
  return {
    spec: SYNTHETIC_SPEC as unknown as LoraWeights['spec'],
    tensors: new Map([
      ['base_model.model.model.layers.6.self_attn.q_proj.lora_A.weight', seededValues('gA', 96, 0.1)],
      ['base_model.model.model.layers.6.self_attn.v_proj.lora_B.weight', seededValues('gB', 64, 0.1)],
    ]),
  };
}

/**
 * A synthetic client's local training: each tensor of `tensors` plus a delta of element size `scale` seeded by
 * `<tensor name>/<seed>`.
 */
export function plusSeededDelta(
  tensors: ReadonlyMap<string, Float32Array>,
  seed: string,
  scale: number,
): Map<string, Float32Array> {
  return new Map(
    [...tensors].map(([k, g]) => [k, g.map((v, j) => v + seededValues(`${k}/${seed}`, g.length, scale)[j]!)]),
  );
}
