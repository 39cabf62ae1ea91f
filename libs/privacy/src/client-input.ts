/**
 * A client's side of DP-FedAvg before secure aggregation, in one place for the standalone job and the services:
 * the update delta (local - global LoRA), its L2 clip to C, the weight capped at W (DP-FedAvg's w = min(n / W, 1)
 * in integer form), and this client's share of the Gaussian noise, as a SecAggInput over the sorted-name layout.
 */
import { clipUpdate, gaussianNoise, globalNorm, updateDelta, type Tensors } from './dp.js';
import type { Rng } from './rng.js';
import type { SecAggInput } from './secagg.js';
import { flatten, tensorLayout, type TensorLayout } from './vector.js';

export interface ClientInputOptions {
  readonly local: Tensors;
  readonly global: Tensors;
  /** Integer >= 0 (tokens, examples, or 1); capped at maxWeight. */
  readonly weight: number;
  readonly maxWeight: number;
  /** Clip the delta to L2 norm `clip`; add N(0, noiseStd^2) per element on the (w / W) scale (needs rng when > 0). */
  readonly dp?: { readonly clip: number; readonly noiseStd: number };
  readonly rng?: Rng;
}

export interface ClientInput {
  readonly input: SecAggInput;
  readonly layout: TensorLayout;
  /** L2 norm of the delta before clipping. */
  readonly norm: number;
  readonly clipped: boolean;
  readonly capped: boolean;
}

export function prepareClientInput(o: ClientInputOptions): ClientInput {
  if (!Number.isInteger(o.weight) || o.weight < 0) throw new RangeError(`weight ${o.weight} is not an integer >= 0`);
  const delta = updateDelta(o.local, o.global);
  const layout = tensorLayout(new Map([...o.global].map(([k, v]) => [k, v.length])));
  let tensors: Tensors = delta;
  let norm: number;
  let clipped = false;
  if (o.dp) {
    const c = clipUpdate(delta, o.dp.clip);
    tensors = c.clipped;
    norm = c.norm;
    clipped = c.factor < 1;
  } else norm = globalNorm(delta);
  const noiseStd = o.dp?.noiseStd ?? 0;
  if (noiseStd > 0 && o.rng === undefined) throw new RangeError('noise needs a random source (rng)');
  return {
    input: {
      values: flatten(layout, tensors),
      weight: Math.min(o.weight, o.maxWeight),
      ...(noiseStd > 0 ? { noise: gaussianNoise(layout.total, noiseStd, o.rng!) } : {}),
    },
    layout,
    norm,
    clipped,
    capped: o.weight > o.maxWeight,
  };
}
