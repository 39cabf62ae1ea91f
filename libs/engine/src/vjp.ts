/**
 * Vector-Jacobian products, one row per primitive op (docs/engine-notes.md §2.2). A rule returns one entry per input:
 * the gradient, possibly in the broadcast (output) shape — autodiff.ts sums it back to the input's shape — or
 * null for inputs that need no gradient (ctx.needs[i] false) or have none (indices, shapes, axes).
 * The table is keyed by OpName, so every primitive op has a row: a rule, or null for ops that are not
 * differentiable (comparisons, ReduceMax, ConstantOfShape, Scatter*), where asking for a gradient through one is
 * an error raised by the driver. autodiff.ts looks rules up here by op name; ops.ts does not import this module.
 */
import { GraphError } from './errors.js';
import type { Tensor, VjpContext, VjpFn } from './graph.js';
import type { OpName } from './op-names.js';
import * as O from './ops.js';

/** Swaps the last two axes (for batched MatMul gradients). */
function mT(x: Tensor): Tensor {
  const perm = x.shape.map((_, i) => i);
  perm[x.rank - 2] = x.rank - 1;
  perm[x.rank - 1] = x.rank - 2;
  return O.transpose(x, perm);
}

/** Reshapes a reduced gradient back to keepdims form and broadcasts it over the reduced axes. */
function unreduce(g: Tensor, x: Tensor, axes: readonly number[]): Tensor {
  const keep = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  return O.expand(O.reshape(g, keep), x.shape);
}

const when = (need: boolean | undefined, f: () => Tensor): Tensor | null => (need ? f() : null);

/** The gradient of output 0; rules are only called when it exists for single-output ops. */
function g0(ctx: VjpContext): Tensor {
  const g = ctx.gradOutputs[0];
  if (!g) throw new GraphError('internal: rule called without an output gradient');
  return g;
}

function gemmVjp(ctx: VjpContext): (Tensor | null)[] {
  const [a, b, c] = ctx.inputs as [Tensor, Tensor, Tensor | undefined];
  const g = g0(ctx);
  const tA = ctx.attrs['transA']?.value === 1;
  const tB = ctx.attrs['transB']?.value === 1;
  const alphaAttr = ctx.attrs['alpha'];
  const betaAttr = ctx.attrs['beta'];
  const alpha = alphaAttr?.kind === 'float' ? alphaAttr.value : 1;
  const beta = betaAttr?.kind === 'float' ? betaAttr.value : 1;
  // The four transpose cases of docs/engine-notes.md §2.2: no weight is ever transposed, Gemm flags do it.
  let ga: Tensor | null = null;
  let gb: Tensor | null = null;
  if (!tA && !tB) {
    ga = when(ctx.needs[0], () => O.gemm(g, b, { transB: true, alpha }));
    gb = when(ctx.needs[1], () => O.gemm(a, g, { transA: true, alpha }));
  } else if (!tA && tB) {
    ga = when(ctx.needs[0], () => O.gemm(g, b, { alpha }));
    gb = when(ctx.needs[1], () => O.gemm(g, a, { transA: true, alpha }));
  } else if (tA && !tB) {
    ga = when(ctx.needs[0], () => O.gemm(b, g, { transB: true, alpha }));
    gb = when(ctx.needs[1], () => O.gemm(a, g, { alpha }));
  } else {
    ga = when(ctx.needs[0], () => O.gemm(b, g, { transA: true, transB: true, alpha }));
    gb = when(ctx.needs[1], () => O.gemm(g, a, { transA: true, transB: true, alpha }));
  }
  const gc = c ? when(ctx.needs[2], () => (beta === 1 ? g : O.mul(g, beta))) : null;
  return c ? [ga, gb, gc] : [ga, gb];
}

export const VJP: Readonly<Record<OpName, VjpFn | null>> = {
  Add: (ctx) => [g0(ctx), g0(ctx)],
  Sub: (ctx) => [g0(ctx), when(ctx.needs[1], () => O.neg(g0(ctx)))],
  Mul: (ctx) => {
    const [a, b] = ctx.inputs as [Tensor, Tensor];
    return [when(ctx.needs[0], () => O.mul(g0(ctx), b)), when(ctx.needs[1], () => O.mul(g0(ctx), a))];
  },
  Div: (ctx) => {
    const [, b] = ctx.inputs as [Tensor, Tensor];
    const y = ctx.outputs[0]!;
    return [when(ctx.needs[0], () => O.div(g0(ctx), b)), when(ctx.needs[1], () => O.neg(O.mul(g0(ctx), O.div(y, b))))];
  },
  Max: (ctx) => {
    const [a, b] = ctx.inputs as [Tensor, Tensor];
    const firstWins = O.greaterOrEqual(a, b);
    return [
      when(ctx.needs[0], () => O.where(firstWins, g0(ctx), 0)),
      when(ctx.needs[1], () => O.where(firstWins, 0, g0(ctx))),
    ];
  },
  Neg: (ctx) => [O.neg(g0(ctx))],
  Identity: (ctx) => [g0(ctx)],
  Cast: (ctx) => {
    const x = ctx.inputs[0]!;
    if (!O.isFloat(x.dtype)) return [null];
    return [O.cast(g0(ctx), x.dtype)];
  },
  Sqrt: (ctx) => [O.div(O.mul(g0(ctx), 0.5), ctx.outputs[0]!)],
  Reciprocal: (ctx) => {
    const y = ctx.outputs[0]!;
    return [O.neg(O.mul(g0(ctx), O.mul(y, y)))];
  },
  Exp: (ctx) => [O.mul(g0(ctx), ctx.outputs[0]!)],
  Log: (ctx) => [O.div(g0(ctx), ctx.inputs[0]!)],
  Sigmoid: (ctx) => {
    const y = ctx.outputs[0]!;
    return [O.mul(g0(ctx), O.mul(y, O.sub(1, y)))];
  },
  Tanh: (ctx) => {
    const y = ctx.outputs[0]!;
    return [O.mul(g0(ctx), O.sub(1, O.mul(y, y)))];
  },
  Pow: (ctx) => {
    const c = ctx.meta['exponent'] as number;
    const x = ctx.inputs[0]!;
    const dydx = c === 2 ? O.mul(x, 2) : O.mul(O.pow(x, c - 1), c);
    return [O.mul(g0(ctx), dydx), null];
  },
  MatMul: (ctx) => {
    const [a, b] = ctx.inputs as [Tensor, Tensor];
    return [when(ctx.needs[0], () => O.matmul(g0(ctx), mT(b))), when(ctx.needs[1], () => O.matmul(mT(a), g0(ctx)))];
  },
  Gemm: gemmVjp,
  Transpose: (ctx) => {
    const permAttr = ctx.attrs['perm'];
    const perm = permAttr?.kind === 'ints' ? permAttr.value : [];
    const inv: number[] = Array.from({ length: perm.length }, () => 0);
    perm.forEach((p, i) => (inv[p] = i));
    return [O.transpose(g0(ctx), inv)];
  },
  Reshape: (ctx) => [O.reshape(g0(ctx), ctx.inputs[0]!.shape), null],
  Unsqueeze: (ctx) => [O.reshape(g0(ctx), ctx.inputs[0]!.shape), null],
  Squeeze: (ctx) => [O.reshape(g0(ctx), ctx.inputs[0]!.shape), null],
  // Expand's gradient is the sum over the broadcast axes, which the driver's unbroadcast performs
  // (this is the grouped-query-attention rule: K/V gradients are summed over the group axis).
  Expand: (ctx) => [g0(ctx), null],
  ReduceSum: (ctx) => [unreduce(g0(ctx), ctx.inputs[0]!, ctx.meta['axes'] as number[]), null],
  ReduceMean: (ctx) => {
    const x = ctx.inputs[0]!;
    const n = x.size / ctx.outputs[0]!.size;
    return [unreduce(O.mul(g0(ctx), 1 / n), x, ctx.meta['axes'] as number[]), null];
  },
  Softmax: (ctx) => {
    const y = ctx.outputs[0]!;
    const axis = ctx.attrs['axis']!.value as number;
    const g = g0(ctx);
    return [O.mul(y, O.sub(g, O.reduceSum(O.mul(g, y), [axis], true)))];
  },
  LogSoftmax: (ctx) => [O.logSoftmaxVjp(g0(ctx), ctx.outputs[0]!, ctx.attrs['axis']!.value as number)],
  Concat: (ctx) => {
    const axis = ctx.attrs['axis']!.value as number;
    const parts = O.split(
      g0(ctx),
      ctx.inputs.map((x) => x.shape[axis]!),
      axis,
    );
    return parts.map((p, i) => (ctx.needs[i] ? p : null));
  },
  Split: (ctx) => {
    const x = ctx.inputs[0]!;
    const axis = ctx.attrs['axis']!.value as number;
    const parts = ctx.outputs.map((o, i) => ctx.gradOutputs[i] ?? O.zeros(x.graph, o.shape, o.dtype));
    return [O.concat(parts, axis), null];
  },
  Slice: (ctx) => {
    const x = ctx.inputs[0]!;
    const starts = ctx.meta['starts'] as number[];
    const ends = ctx.meta['ends'] as number[];
    const axes = ctx.meta['axes'] as number[];
    const pads = Array.from({ length: 2 * x.rank }, () => 0);
    axes.forEach((a, i) => {
      pads[a] = starts[i]!;
      pads[a + x.rank] = x.shape[a]! - ends[i]!;
    });
    return [O.pad(g0(ctx), pads), null, null, null];
  },
  Pad: (ctx) => {
    const x = ctx.inputs[0]!;
    const pads = ctx.meta['pads'] as number[];
    const axes = x.shape.map((_, i) => i);
    return [
      O.slice(
        g0(ctx),
        axes.map((a) => pads[a]!),
        axes.map((a) => pads[a]! + x.shape[a]!),
        axes,
      ),
      null,
    ];
  },
  Gather: (ctx) => {
    const [data, idx] = ctx.inputs as [Tensor, Tensor];
    const axis = ctx.attrs['axis']!.value as number;
    if (axis !== 0)
      throw new GraphError(`Gather: gradient is implemented for axis 0 only (got axis ${axis} on ${data})`);
    // Embedding gradient: rows scattered back with 'add' so repeated token ids accumulate.
    const rows = O.scatterNDAdd(O.zeros(data.graph, data.shape, data.dtype), O.unsqueeze(idx, [-1]), g0(ctx));
    return [rows, null];
  },
  GatherElements: (ctx) => {
    const [data, idx] = ctx.inputs as [Tensor, Tensor];
    const axis = ctx.attrs['axis']!.value as number;
    return [O.scatterElementsAdd(O.zeros(data.graph, data.shape, data.dtype), idx, g0(ctx), axis), null];
  },
  Where: (ctx) => {
    const c = ctx.inputs[0]!;
    return [null, when(ctx.needs[1], () => O.where(c, g0(ctx), 0)), when(ctx.needs[2], () => O.where(c, 0, g0(ctx)))];
  },
  Sum: (ctx) => ctx.inputs.map(() => g0(ctx)),
  // Not differentiable: boolean outputs, a numerics-only max, constants and the scatters that build gradients.
  Equal: null,
  Less: null,
  GreaterOrEqual: null,
  ReduceMax: null,
  ConstantOfShape: null,
  ScatterND: null,
  ScatterElements: null,
};
