/**
 * A client's side of DP-FedAvg before secure aggregation, in one place for the standalone job and the services:
 * the update delta (local - global LoRA), its L2 clip to C, the weight capped at W (DP-FedAvg's w = min(n / W, 1)
 * in integer form), and this client's share of the Gaussian noise, as a SecAggInput over the sorted-name layout.
 * The input also carries CLIENT_STATS_LENGTH stats for secure aggregation (clientStats): whether this client was
 * clipped and its pre-clip norm, so that the server learns the count of clipped clients and the sum of norms only.
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

/** Stats per client in a secure sum (SecAggConfig.statsLength): [clipped (0 or 1), pre-clip norm * 2^NORM_BITS]. */
export const CLIENT_STATS_LENGTH = 2;
const NORM_BITS = 24;
/**
 * Pre-clip norms above this are sent as this (a client's encoded norm stays below 2^40, so the sum of up to 4096
 * clients cannot reach 2^52); adapter-update norms are far below it.
 */
export const STATS_NORM_CAP = 2 ** 16;

/** A client's stats: the clipped flag and its norm in fixed point (2^-24, exact in the sum). */
export function clientStats(clipped: boolean, norm: number): number[] {
  return [clipped ? 1 : 0, Math.round(Math.min(norm, STATS_NORM_CAP) * 2 ** NORM_BITS)];
}

/**
 * The privacy event's fields from the survivors' summed stats (SecAggResult.stats): clipped_clients and
 * mean_update_norm over the `survivors` clients in the sum (error at most 2^-25 per client in the norm).
 */
export function clientStatsFields(
  stats: readonly number[],
  survivors: number,
): { clipped_clients: number; mean_update_norm: number } {
  if (stats.length !== CLIENT_STATS_LENGTH)
    throw new RangeError(`secure sum carries ${stats.length} stats, expected ${CLIENT_STATS_LENGTH}`);
  return {
    clipped_clients: stats[0]!,
    mean_update_norm: survivors > 0 ? stats[1]! / 2 ** NORM_BITS / survivors : 0,
  };
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
      stats: clientStats(clipped, norm),
    },
    layout,
    norm,
    clipped,
    capped: o.weight > o.maxWeight,
  };
}
