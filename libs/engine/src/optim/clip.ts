/** Gradient clipping by global L2 norm, as torch.nn.utils.clip_grad_norm_ (norm_type 2). */

/** Index of the first NaN or ±Infinity in `a`, or -1. */
function firstNonFinite(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

/**
 * Computes the L2 norm over all gradients together and, when it is too large, scales every gradient in place by
 * `maxNorm / (norm + 1e-6)`. The condition is torch's: it scales whenever that coefficient is below 1, i.e. when
 * `norm + 1e-6 > maxNorm`, which includes norms a hair under `maxNorm`.
 *
 * Squares are summed in float64: a sum over millions of fp32 values loses digits in fp32, and fp32 squares
 * cannot overflow a float64, so a non-finite sum always means a non-finite gradient value.
 * Unlike torch's default (error_if_nonfinite=False, which scales everything by NaN), a non-finite norm throws,
 * naming the tensor and index of the first bad value, and leaves every gradient untouched.
 *
 * @param grads gradient name -> flat values; modified in place.
 * @param maxNorm largest allowed global norm, > 0.
 * @returns the global norm before clipping.
 */
export function clipGradNorm(grads: Map<string, Float32Array>, maxNorm: number): number {
  if (!(Number.isFinite(maxNorm) && maxNorm > 0)) {
    throw new Error(`clipGradNorm: maxNorm must be a finite number > 0, got ${maxNorm}`);
  }
  let sumSq = 0;
  for (const [name, g] of grads) {
    let s = 0;
    for (let i = 0; i < g.length; i++) {
      const x = g[i]!;
      s += x * x;
    }
    if (!Number.isFinite(s)) {
      const i = firstNonFinite(g);
      throw new Error(`clipGradNorm: gradient "${name}" holds a non-finite value (${g[i]}) at index ${i}`);
    }
    sumSq += s;
  }
  const norm = Math.sqrt(sumSq);
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) {
    for (const g of grads.values()) {
      for (let i = 0; i < g.length; i++) g[i]! *= coef;
    }
  }
  return norm;
}
