/**
 * mulberry32: a tiny seeded PRNG (32-bit state) used wherever the project draws random numbers (weight and LoRA
 * initialisation, dropout masks, sampling, data order): same seed, same numbers on every machine, and a resumed
 * job can re-create a stream from its seed. Returns uniform values in [0, 1) (multiples of 2^-32).
 */
export interface Mulberry32 {
  (): number;
  /**
   * Inverted-dropout mask: `out[i]` = 0 where the i-th draw of this stream is < `p`, else `keep`; exactly the draws
   * (and the stream position afterwards) of calling the generator `out.length` times. The loop runs on the state
   * directly, about twice as fast as a call per element (LoRA dropout masks hold millions of values per step).
   */
  fillMask(out: Float32Array, p: number, keep: number): void;
}

export function mulberry32(seed: number): Mulberry32 {
  let a = seed >>> 0;
  const next = (() => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }) as Mulberry32;
  next.fillMask = (out, p, keep) => {
    let s = a;
    for (let i = 0; i < out.length; i++) {
      // The body of `next`, inlined (keep the two identical: a test compares them draw by draw).
      s = (s + 0x6d2b79f5) >>> 0;
      let t = s;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      out[i] = ((t ^ (t >>> 14)) >>> 0) / 4294967296 < p ? 0 : keep;
    }
    a = s;
  };
  return next;
}
