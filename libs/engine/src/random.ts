/**
 * mulberry32: a tiny seeded PRNG (32-bit state) used wherever the project draws random numbers (weight and LoRA
 * initialisation, dropout masks, sampling, data order): same seed, same numbers on every machine, and a resumed
 * job can re-create a stream from its seed. Returns uniform values in [0, 1) (multiples of 2^-32).
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
