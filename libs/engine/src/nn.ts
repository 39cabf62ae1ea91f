/** Layer helpers built from primitive ops. */
import type { Tensor } from './graph.js';
import type { DType } from './ir.js';
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

/** Element type the matmuls against half-precision frozen weights run in. */
export type HalfCompute = 'float32' | 'float16';

/**
 * `linear` against a frozen weight stored in float16 or bfloat16 (half the bytes of float32), for a float32 `x`
 * (and float32 `bias`); the result is float32.
 *
 * - compute 'float32' (the CPU provider, which has no half-precision Gemm: onnxruntime inserts casts to float32
 *   around a float16 Gemm anyway): the weight is cast to float32 just before its Gemm (orderedAfter, so one
 *   weight's float32 copy is alive at a time) and the maths is `linear`'s, on the rounded weight. A composite with
 *   its own VJP, so that the backward Gemm (x̄ = ȳ W) casts the weight again, after ȳ exists, instead of keeping the
 *   forward's float32 copy alive from the forward to the backward pass. Activations and gradients stay float32:
 *   no loss scaling is needed.
 * - compute 'float16' (GPU providers, whose half Gemms run on tensor cores): x is cast to float16, the Gemm runs in
 *   float16 (a bfloat16 weight is cast to float16 first), the product is cast back to float32 and the bias added
 *   in float32. The backward Gemm then also runs in float16 on the cast ȳ, whose small values underflow float16
 *   unless the loss is scaled (GraphTrainer's lossScale).
 */
export function halfLinear(x: Tensor, weight: Tensor, compute: HalfCompute, bias?: Tensor): Tensor {
  if (weight.dtype !== 'float16' && weight.dtype !== 'bfloat16')
    throw new ShapeError(`halfLinear: weight ${weight} must be float16 or bfloat16`);
  if (x.dtype !== 'float32') throw new ShapeError(`halfLinear: input ${x} must be float32`);
  const inFeatures = x.shape[x.rank - 1]!;
  if (weight.rank !== 2 || weight.shape[1] !== inFeatures) {
    throw new ShapeError(`halfLinear: weight ${weight} does not take inputs of ${inFeatures} features (x is ${x})`);
  }
  if (compute === 'float16') {
    const w16 = O.cast(weight, 'float16');
    const y = O.cast(linear(O.cast(x, 'float16'), w16), 'float32');
    return bias ? O.add(y, bias) : y;
  }
  const g = x.graph;
  const out = weight.shape[0]!;
  const [y] = g.composite(
    'HalfLinear',
    bias ? [x, weight, bias] : [x, weight],
    () => [linear(x, O.cast(O.orderedAfter(weight, x), 'float32'), bias)],
    (ctx) => {
      if (ctx.needs[1]) throw new ShapeError(`halfLinear: weight ${weight} is frozen; it has no gradient`);
      const gy = ctx.gradOutputs[0]!;
      let gx: Tensor | null = null;
      if (ctx.needs[0]) {
        const w32 = O.cast(O.orderedAfter(weight, gy), 'float32');
        gx = O.reshape(O.gemm(O.reshape(gy, [-1, out]), w32), x.shape); // ȳ W: (N, out) x (out, in)
      }
      // The bias gradient in ȳ's shape; the autodiff driver sums it over the broadcast axes.
      return bias ? [gx, null, ctx.needs[2] ? gy : null] : [gx, null];
    },
  );
  return y!;
}

/**
 * An inverted-dropout mask of `shape` (values 0 where dropped, 1 / (1 - p) elsewhere, as torch.nn.Dropout) built in
 * the graph from the dropped positions (int32 [capacity], increasing, padded with the element count; see
 * drawDropPositions): the keep value everywhere, then -keep added at each dropped position (keep - keep is exactly 0;
 * the padding lands in one extra slot that is sliced away). The host sends 4 bytes per drop instead of a dense mask
 * of 4 bytes per element, and the mask is made where the graph runs (on a GPU: no mask crosses the bus).
 */
export function dropoutMask(positions: Tensor, shape: readonly number[], p: number, dtype: DType): Tensor {
  if (positions.dtype !== 'int32' || positions.rank !== 1)
    throw new ShapeError(`dropoutMask: positions must be int32 [capacity], got ${positions}`);
  const g = positions.graph;
  const n = shape.reduce((a, b) => a * b, 1);
  const keep = 1 / (1 - p);
  const full = O.expand(g.constant(keep, dtype), [n + 1]);
  const holes = O.expand(g.constant(-keep, dtype), positions.shape);
  const masked = O.scatterElementsAdd(full, positions, holes, 0);
  return O.reshape(O.slice(masked, [0], [n], [0]), shape);
}
