/**
 * mulberry32: a tiny seeded PRNG (32-bit state) used wherever the project draws random numbers (weight and LoRA
 * initialisation, dropout masks, sampling, data order): same seed, same numbers on every machine, and a resumed
 * job can re-create a stream from its seed. Returns uniform values in [0, 1) (multiples of 2^-32).
 */
export type Mulberry32 = () => number;

export function mulberry32(seed: number): Mulberry32 {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Room for the dropped positions of an `n`-element dropout mask with drop probability `p`: the mean n·p plus 8
 * standard deviations (and a little slack), at most n. A Binomial(n, p) count exceeds it with probability below
 * 1e-14, so {@link drawDropPositions} never meets a full buffer in practice.
 */
export function dropCapacity(n: number, p: number): number {
  if (!(p > 0 && p < 1)) throw new RangeError(`dropCapacity: drop probability ${p} is not in (0, 1)`);
  return Math.min(n, Math.ceil(n * p + 8 * Math.sqrt(n * p * (1 - p))) + 16);
}

/**
 * The dropped positions of an `n`-element dropout mask (each element dropped independently with probability `p`),
 * in increasing order, into `out` (sized by {@link dropCapacity}); the unused tail holds `n`, a slot past the mask
 * that the graph discards. The gaps between drops are geometric and drawn by inversion, one draw per drop: about
 * n·p draws instead of the n of a dense mask (a TinyLlama client step's LoRA masks hold 17M elements, 0.8M drops at
 * p = 0.05), and the graph receives 4 bytes per drop instead of 4 per element.
 * @returns the number of drops
 * @throws RangeError when the drops do not fit `out` (see dropCapacity: practically never)
 */
export function drawDropPositions(rand: () => number, n: number, p: number, out: Int32Array): number {
  if (!(p > 0 && p < 1)) throw new RangeError(`drawDropPositions: drop probability ${p} is not in (0, 1)`);
  if (n >= 2 ** 31) throw new RangeError(`drawDropPositions: ${n} elements do not fit int32 positions`);
  const logKeep = Math.log1p(-p);
  // Elements kept before the next drop: geometric, by inversion (1 - rand() is in (0, 1], so the log is finite).
  const gap = (): number => Math.floor(Math.log(1 - rand()) / logKeep);
  let count = 0;
  for (let pos = gap(); pos < n; pos += gap() + 1) {
    if (count === out.length)
      throw new RangeError(`drawDropPositions: more than ${out.length} drops among ${n} elements at p = ${p}`);
    out[count++] = pos;
  }
  out.fill(n, count);
  return count;
}
