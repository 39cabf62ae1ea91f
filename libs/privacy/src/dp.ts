/**
 * Client-level differential privacy for FedAvg of LoRA updates (DP-FedAvg, McMahan et al. 2018):
 *  - each client's update delta (local LoRA minus global LoRA, all adapter tensors together) is clipped to L2 norm C;
 *  - Gaussian noise N(0, sigma^2 C^2) is added to the sum of the clipped (weighted) updates, either by the server
 *    (plain FedAvg) or split across clients under secure aggregation: each adds N(0, sigma^2 C^2 / nExpected).
 *    If only m < nExpected clients survive, the sum carries variance sigma^2 C^2 m / nExpected: the effective noise
 *    multiplier is sigma * sqrt(m / nExpected). Account with that value (accountant.step), or let the server top up
 *    the missing variance (topUpStd), which trusts the server for that part.
 *  - weights: DP-FedAvg bounds each client's weight w_k / maxWeight <= 1 so the sensitivity of
 *    sum_k (w_k / maxWeight) delta_k is C. The weight sum is not noised here; for a strict guarantee divide by the
 *    expected weight sum (fixed-denominator estimator of McMahan et al.), see fixedDenominatorMean.
 */
import { gaussianSource, type Rng } from './rng.js';

export type Tensors = ReadonlyMap<string, Float32Array>;

/** L2 norm over all tensors together (float64 accumulation). */
export function globalNorm(tensors: Tensors): number {
  let s = 0;
  for (const t of tensors.values()) for (let i = 0; i < t.length; i++) s += t[i]! * t[i]!;
  return Math.sqrt(s);
}

/** local - global per tensor (same names and lengths required). */
export function updateDelta(local: Tensors, global: Tensors): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [name, g] of global) {
    const l = local.get(name);
    if (l === undefined || l.length !== g.length) throw new RangeError(`tensor ${name} missing or of another length`);
    const d = new Float32Array(g.length);
    for (let i = 0; i < g.length; i++) d[i] = l[i]! - g[i]!;
    out.set(name, d);
  }
  if (local.size !== global.size) throw new RangeError('local update has tensors the global adapter lacks');
  return out;
}

/**
 * Scales the whole update by min(1, C / norm) so its global L2 norm is at most C. The factor is shrunk by the
 * float32 rounding margin so the clipped float32 tensors' norm (recomputed in float64) never exceeds C.
 */
export function clipUpdate(
  tensors: Tensors,
  clipNorm: number,
): { clipped: Map<string, Float32Array>; norm: number; factor: number } {
  if (!(clipNorm > 0)) throw new RangeError(`clip norm must be > 0, got ${clipNorm}`);
  const norm = globalNorm(tensors);
  let factor = norm > clipNorm ? clipNorm / norm : 1;
  const clipped = new Map<string, Float32Array>();
  for (;;) {
    for (const [name, t] of tensors)
      clipped.set(
        name,
        t.map((v) => v * factor),
      );
    if (factor === 1 || globalNorm(clipped) <= clipNorm) break;
    factor *= 1 - 2 ** -22; // float32 rounding pushed the norm over C: shrink by a few ulps and redo
  }
  return { clipped, norm, factor };
}

/** Standard deviation each party adds: 'server' adds sigma * C; each of nExpected clients adds sigma * C / sqrt(nExpected). */
export function noiseStd(opts: {
  clipNorm: number;
  noiseMultiplier: number;
  mode: 'server' | 'distributed';
  nExpected?: number;
}): number {
  const full = opts.noiseMultiplier * opts.clipNorm;
  if (opts.mode === 'server') return full;
  const n = opts.nExpected ?? 0;
  if (!(n >= 1)) throw new RangeError('distributed noise needs nExpected >= 1');
  return full / Math.sqrt(n);
}

/** Std the server adds so that m surviving clients' distributed noise plus its own has variance sigma^2 C^2. */
export function topUpStd(opts: {
  clipNorm: number;
  noiseMultiplier: number;
  nExpected: number;
  survivors: number;
}): number {
  const frac = Math.max(0, 1 - opts.survivors / opts.nExpected);
  return opts.noiseMultiplier * opts.clipNorm * Math.sqrt(frac);
}

/** The noise multiplier actually achieved when m of nExpected clients' distributed noise made it into the sum. */
export function effectiveNoiseMultiplier(noiseMultiplier: number, survivors: number, nExpected: number): number {
  return noiseMultiplier * Math.sqrt(Math.min(1, survivors / nExpected));
}

/** A vector of i.i.d. N(0, std^2) samples (float64). */
export function gaussianNoise(length: number, std: number, rng: Rng): Float64Array {
  const g = gaussianSource(rng);
  const out = new Float64Array(length);
  for (let i = 0; i < length; i++) out[i] = g() * std;
  return out;
}

/** Adds N(0, std^2) to every element in place (float64 or float32 arrays). */
export function addGaussianNoise(values: Float32Array | Float64Array, std: number, rng: Rng): void {
  const g = gaussianSource(rng);
  for (let i = 0; i < values.length; i++) values[i] = values[i]! + g() * std;
}

/** DP-FedAvg's fixed-denominator estimator: noisy sum / (q * total weight of all clients), not / the noisy weight sum. */
export function fixedDenominatorMean(sum: ArrayLike<number>, expectedWeightSum: number): Float32Array {
  if (!(expectedWeightSum > 0)) throw new RangeError('expected weight sum must be > 0');
  return Float32Array.from(sum, (v) => v / expectedWeightSum);
}
