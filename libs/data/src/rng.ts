/**
 * Seeded pseudo-random numbers: xoshiro128** (Blackman & Vigna, 2018) seeded through splitmix32, so every
 * partition, shuffle and demo dataset is a pure function of an explicit seed. Never Math.random.
 */
export interface Rng {
  /** Uniform 32-bit unsigned integer. */
  nextUint32(): number;
  /** Uniform float in [0, 1), 32 bits of resolution. */
  next(): number;
  /** Uniform integer in [0, n), unbiased (rejection sampling). */
  int(n: number): number;
  /** Standard normal sample (Box–Muller). */
  normal(): number;
  /** Natural log of a Gamma(shape, 1) sample; logs keep tiny shapes (alpha ~ 1e-3) from underflowing to 0. */
  logGamma(shape: number): number;
}

function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** Creates a generator from a safe integer seed (negative and > 2^32 seeds are fine; both halves are mixed in). */
export function createRng(seed: number): Rng {
  if (!Number.isSafeInteger(seed)) throw new RangeError(`rng: seed must be a safe integer, got ${seed}`);
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 0x100000000) >>> 0;
  const mix = splitmix32(lo ^ Math.imul(hi, 0x27d4eb2f));
  // The 128-bit state as four 32-bit words (held as int32 between steps: every use below reads them as 32 bits).
  let s0 = mix();
  let s1 = mix();
  let s2 = mix();
  let s3 = mix();
  // xoshiro must not start from the all-zero state; splitmix32 makes that practically impossible, but be sure.
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1;

  const nextUint32 = (): number => {
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
    return result;
  };
  const next = (): number => nextUint32() / 0x100000000;
  const int = (n: number): number => {
    if (!Number.isInteger(n) || n <= 0 || n > 0x100000000) throw new RangeError(`rng.int: bad bound ${n}`);
    // Reject the top sliver of the 2^32 range that would bias small values.
    const limit = 0x100000000 - (0x100000000 % n);
    let x = nextUint32();
    while (x >= limit) x = nextUint32();
    return x % n;
  };
  const normal = (): number => {
    const u1 = 1 - next(); // (0, 1]: log stays finite
    const u2 = next();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  };
  const logGamma = (shape: number): number => {
    if (!(shape > 0) || !Number.isFinite(shape)) throw new RangeError(`rng.logGamma: shape must be > 0, got ${shape}`);
    if (shape < 1) {
      // Gamma(a) = Gamma(a + 1) * U^(1/a) (Marsaglia & Tsang 2000, section 6); in logs so U^(1/a) cannot underflow.
      return logGamma(shape + 1) + Math.log(1 - next()) / shape;
    }
    // Marsaglia & Tsang (2000), "A simple method for generating gamma variables", for shape >= 1.
    const d = shape - 1 / 3;
    const c = 1 / Math.sqrt(9 * d);
    for (;;) {
      let x: number;
      let v: number;
      do {
        x = normal();
        v = 1 + c * x;
      } while (v <= 0);
      v = v * v * v;
      const u = 1 - next();
      if (u < 1 - 0.0331 * x * x * x * x) return Math.log(d * v);
      if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return Math.log(d * v);
    }
  };
  return { nextUint32, next, int, normal, logGamma };
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** A shuffled copy (Fisher–Yates); the input is not touched. */
export function shuffled<T>(items: readonly T[], rng: Rng): T[] {
  const out = items.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    // i < out.length and j <= i: both in range.
    const tmp = out[i]!;
    out[i] = out[j]!;
    out[j] = tmp;
  }
  return out;
}

/** One draw from Dirichlet(alpha): normalised Gamma(alpha_i) samples, computed from logs (softmax) for tiny alphas. */
export function sampleDirichlet(alpha: readonly number[], rng: Rng): number[] {
  const logs = alpha.map((a) => rng.logGamma(a));
  const max = Math.max(...logs);
  const w = logs.map((l) => Math.exp(l - max));
  const sum = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / sum);
}

/** Picks one element uniformly. */
export function pick<T>(items: readonly T[], rng: Rng): T {
  if (items.length === 0) throw new RangeError('rng.pick: empty list');
  return items[rng.int(items.length)]!; // int(n) is in [0, n)
}
