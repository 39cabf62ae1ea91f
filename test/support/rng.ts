import { mulberry32 } from '../../libs/engine/src/index.js';

/**
 * A small seeded PRNG for test data: the project's own mulberry32 (libs/engine), so same seed, same numbers, on
 * every machine. Uniform values in [0, 1).
 */
export function rng(seed: number): () => number {
  return mulberry32(seed);
}

/** `n` uniform values in [lo, hi). */
export function uniform(next: () => number, n: number, lo = -1, hi = 1): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * next();
  return out;
}
