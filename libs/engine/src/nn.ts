/** Layer helpers built from primitive ops. */
import type { Tensor } from './graph.js';
import { ShapeError } from './errors.js';
import * as O from './ops.js';

/**
 * y = x Wᵀ + b with W in Hugging Face's [out, in] layout, used as stored: Gemm(transB=1) on a 2-D view of x.
 * Its gradients use Gemm's transpose flags too, so no weight is ever transposed or copied (docs/engine-notes.md §7.5).
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  const inFeatures = x.shape[x.rank - 1]!;
  if (weight.rank !== 2 || weight.shape[1] !== inFeatures) {
    throw new ShapeError(`linear: weight ${weight} does not take inputs of ${inFeatures} features (x is ${x})`);
  }
  const out = weight.shape[0]!;
  const x2 = O.reshape(x, [-1, inFeatures]); // (N, in)
  const y2 = O.gemm(x2, weight, { transB: true }, bias); // (N, out)
  return O.reshape(y2, [...x.shape.slice(0, -1), out]);
}
