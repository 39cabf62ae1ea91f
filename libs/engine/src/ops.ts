/**
 * Primitive ops: each validates its inputs, infers the static output shape, and emits one standard ONNX node
 * (default domain, opset >= 18). The node goes on the tape marked 'rule': autodiff differentiates it with the
 * rule vjp.ts keeps under the same op name (an OpName, so every op has a row there or fails to compile). This
 * module does not import vjp.ts: the rules are built from these ops, and autodiff brings the two together.
 */
import { ShapeError, fmtShape } from './errors.js';
import { Tensor, type Graph } from './graph.js';
import { attr, sizeOf, type DType, type IrAttribute } from './ir.js';
import type { OpName } from './op-names.js';

export type { OpName } from './op-names.js';

export type Operand = Tensor | number;

const FLOATS: ReadonlySet<DType> = new Set(['float32', 'float64', 'float16', 'bfloat16']);

export function isFloat(dtype: DType): boolean {
  return FLOATS.has(dtype);
}

function graphOf(op: string, ...xs: Operand[]): Graph {
  const t = xs.find((x): x is Tensor => x instanceof Tensor);
  if (!t) throw new ShapeError(`${op}: at least one operand must be a Tensor`);
  return t.graph;
}

/** Numbers become constants of the other operand's dtype, so `mul(x, 0.5)` works for any float dtype. */
function lift(g: Graph, x: Operand, like: DType): Tensor {
  return typeof x === 'number' ? g.constant(x, like) : x;
}

function emit1(
  g: Graph,
  op: OpName,
  inputs: readonly Tensor[],
  dtype: DType,
  shape: readonly number[],
  attrs: Record<string, IrAttribute> = {},
  meta: Record<string, unknown> = {},
): Tensor {
  return g.emit(op, inputs, attrs, [{ dtype, shape }], 'rule', meta)[0]!;
}

/** Normalizes a possibly negative axis against `rank`, naming the op on error. */
export function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank)
    throw new ShapeError(`${op}: axis ${axis} is out of range for rank ${rank}`);
  return a;
}

/** Numpy broadcasting of two shapes; the error names the op and both shapes. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = Array.from({ length: n }, () => 0);
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeError(
        `${op}: shapes ${fmtShape(a)} and ${fmtShape(b)} do not broadcast (axis ${i}: ${da} vs ${db})`,
      );
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

function sameDtype(op: string, a: Tensor, b: Tensor): void {
  if (a.dtype !== b.dtype) throw new ShapeError(`${op}: dtypes differ: ${a} vs ${b}`);
}

function binary(op: OpName, a: Operand, b: Operand): Tensor {
  const g = graphOf(op, a, b);
  const ta = lift(g, a, (b instanceof Tensor ? b : (a as Tensor)).dtype);
  const tb = lift(g, b, ta.dtype);
  sameDtype(op, ta, tb);
  return emit1(g, op, [ta, tb], ta.dtype, broadcastShapes(op, ta.shape, tb.shape));
}

function compare(op: OpName, a: Operand, b: Operand): Tensor {
  const g = graphOf(op, a, b);
  const ta = lift(g, a, (b instanceof Tensor ? b : (a as Tensor)).dtype);
  const tb = lift(g, b, ta.dtype);
  sameDtype(op, ta, tb);
  return emit1(g, op, [ta, tb], 'bool', broadcastShapes(op, ta.shape, tb.shape));
}

function unary(op: OpName, x: Tensor, needsFloat = true): Tensor {
  if (needsFloat && !isFloat(x.dtype)) throw new ShapeError(`${op}: needs a floating-point tensor, got ${x}`);
  return emit1(x.graph, op, [x], x.dtype, x.shape);
}

// ---- elementwise ------------------------------------------------------------------------------------------

export const add = (a: Operand, b: Operand): Tensor => binary('Add', a, b);
export const sub = (a: Operand, b: Operand): Tensor => binary('Sub', a, b);
export const mul = (a: Operand, b: Operand): Tensor => binary('Mul', a, b);
export const div = (a: Operand, b: Operand): Tensor => binary('Div', a, b);
/** Elementwise maximum of two tensors (ties send the gradient to the first operand). */
export const max = (a: Operand, b: Operand): Tensor => binary('Max', a, b);
export const neg = (x: Tensor): Tensor => unary('Neg', x, false);
export const sqrt = (x: Tensor): Tensor => unary('Sqrt', x);
export const reciprocal = (x: Tensor): Tensor => unary('Reciprocal', x);
export const exp = (x: Tensor): Tensor => unary('Exp', x);
export const log = (x: Tensor): Tensor => unary('Log', x);
export const sigmoid = (x: Tensor): Tensor => unary('Sigmoid', x);
export const tanh = (x: Tensor): Tensor => unary('Tanh', x);
export const identity = (x: Tensor): Tensor => unary('Identity', x, false);

/** x ** c for a constant exponent c. */
export function pow(x: Tensor, c: number): Tensor {
  if (!isFloat(x.dtype)) throw new ShapeError(`Pow: needs a floating-point tensor, got ${x}`);
  return emit1(x.graph, 'Pow', [x, x.graph.constant(c, x.dtype)], x.dtype, x.shape, {}, { exponent: c });
}

export function cast(x: Tensor, to: DType): Tensor {
  if (x.dtype === to) return x;
  const code = { float32: 1, uint8: 2, int32: 6, int64: 7, bool: 9, float16: 10, float64: 11, bfloat16: 16 }[to];
  return emit1(x.graph, 'Cast', [x], to, x.shape, { to: attr.int(code) });
}

export const equal = (a: Operand, b: Operand): Tensor => compare('Equal', a, b);
export const less = (a: Operand, b: Operand): Tensor => compare('Less', a, b);
export const greaterOrEqual = (a: Operand, b: Operand): Tensor => compare('GreaterOrEqual', a, b);

/** Elementwise select: cond ? a : b (cond is bool; a and b broadcast against it). */
export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  if (cond.dtype !== 'bool') throw new ShapeError(`Where: condition must be bool, got ${cond}`);
  const g = cond.graph;
  const ta = lift(g, a, (b instanceof Tensor ? b : (a as Tensor)).dtype);
  const tb = lift(g, b, ta.dtype);
  sameDtype('Where', ta, tb);
  const shape = broadcastShapes('Where', broadcastShapes('Where', cond.shape, ta.shape), tb.shape);
  return emit1(g, 'Where', [cond, ta, tb], ta.dtype, shape);
}

/** Variadic elementwise sum (used by autodiff to combine gradient contributions). */
export function sum(xs: readonly Tensor[]): Tensor {
  if (xs.length === 0) throw new ShapeError('Sum: needs at least one tensor');
  if (xs.length === 1) return xs[0]!;
  let shape = xs[0]!.shape as number[];
  for (const x of xs.slice(1)) {
    sameDtype('Sum', xs[0]!, x);
    shape = broadcastShapes('Sum', shape, x.shape);
  }
  return emit1(xs[0]!.graph, 'Sum', xs, xs[0]!.dtype, shape);
}

// ---- linear algebra ---------------------------------------------------------------------------------------

/** Numpy-style batched matrix product of rank >= 2 tensors (batch axes broadcast). */
export function matmul(a: Tensor, b: Tensor): Tensor {
  sameDtype('MatMul', a, b);
  if (a.rank < 2 || b.rank < 2) throw new ShapeError(`MatMul: operands must have rank >= 2, got ${a} and ${b}`);
  const [m, k] = a.shape.slice(-2) as [number, number];
  const [k2, n] = b.shape.slice(-2) as [number, number];
  if (k !== k2) throw new ShapeError(`MatMul: inner dimensions differ: ${fmtShape(a.shape)} x ${fmtShape(b.shape)}`);
  const batch = broadcastShapes('MatMul', a.shape.slice(0, -2), b.shape.slice(0, -2));
  return emit1(a.graph, 'MatMul', [a, b], a.dtype, [...batch, m, n]);
}

export interface GemmOptions {
  readonly transA?: boolean;
  readonly transB?: boolean;
  readonly alpha?: number;
  readonly beta?: number;
}

/** Y = alpha * op(A) op(B) + beta * C for 2-D A, B; C (optional) broadcasts to [M, N]. */
export function gemm(a: Tensor, b: Tensor, opts: GemmOptions = {}, c?: Tensor): Tensor {
  sameDtype('Gemm', a, b);
  if (a.rank !== 2 || b.rank !== 2) throw new ShapeError(`Gemm: operands must be 2-D, got ${a} and ${b}`);
  const [m, ka] = opts.transA ? [a.shape[1]!, a.shape[0]!] : [a.shape[0]!, a.shape[1]!];
  const [kb, n] = opts.transB ? [b.shape[1]!, b.shape[0]!] : [b.shape[0]!, b.shape[1]!];
  if (ka !== kb) {
    throw new ShapeError(
      `Gemm: inner dimensions differ: A${fmtShape(a.shape)}${opts.transA ? 'ᵀ' : ''} x B${fmtShape(b.shape)}${opts.transB ? 'ᵀ' : ''}`,
    );
  }
  const attrs: Record<string, IrAttribute> = {};
  if (opts.transA) attrs['transA'] = attr.int(1);
  if (opts.transB) attrs['transB'] = attr.int(1);
  if (opts.alpha !== undefined && opts.alpha !== 1) attrs['alpha'] = attr.float(opts.alpha);
  if (opts.beta !== undefined && opts.beta !== 1) attrs['beta'] = attr.float(opts.beta);
  const inputs = [a, b];
  if (c) {
    sameDtype('Gemm', a, c);
    broadcastShapes('Gemm (bias)', [m, n], c.shape);
    if (c.rank > 2) throw new ShapeError(`Gemm: bias must have rank <= 2, got ${c}`);
    inputs.push(c);
  }
  return emit1(a.graph, 'Gemm', inputs, a.dtype, [m, n], attrs);
}

// ---- layout -----------------------------------------------------------------------------------------------

export function transpose(x: Tensor, perm: readonly number[]): Tensor {
  if (perm.length !== x.rank || [...perm].sort((p, q) => p - q).some((p, i) => p !== i)) {
    throw new ShapeError(`Transpose: perm ${fmtShape(perm)} is not a permutation of the axes of ${x}`);
  }
  return emit1(
    x.graph,
    'Transpose',
    [x],
    x.dtype,
    perm.map((p) => x.shape[p]!),
    { perm: attr.ints(perm) },
  );
}

/** Reshape to a static shape; one -1 is inferred. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const out = [...shape];
  const unknown = out.indexOf(-1);
  if (unknown >= 0) {
    const known = sizeOf(out.filter((_, i) => i !== unknown));
    if (known === 0 || x.size % known !== 0) throw new ShapeError(`Reshape: cannot reshape ${x} to ${fmtShape(shape)}`);
    out[unknown] = x.size / known;
  }
  if (sizeOf(out) !== x.size)
    throw new ShapeError(`Reshape: cannot reshape ${x} (${x.size} elements) to ${fmtShape(shape)}`);
  if (out.every((d, i) => d === x.shape[i]) && out.length === x.rank) return x;
  return emit1(x.graph, 'Reshape', [x, x.graph.constant(out, 'int64')], x.dtype, out);
}

export function unsqueeze(x: Tensor, axes: readonly number[]): Tensor {
  const rank = x.rank + axes.length;
  const norm = axes.map((a) => normAxis('Unsqueeze', a, rank)).sort((p, q) => p - q);
  const out: number[] = [];
  let j = 0;
  for (let i = 0; i < rank; i++) out.push(norm.includes(i) ? 1 : x.shape[j++]!);
  return emit1(x.graph, 'Unsqueeze', [x, x.graph.constant(norm, 'int64')], x.dtype, out);
}

export function squeeze(x: Tensor, axes: readonly number[]): Tensor {
  const norm = axes.map((a) => normAxis('Squeeze', a, x.rank));
  for (const a of norm) if (x.shape[a] !== 1) throw new ShapeError(`Squeeze: axis ${a} of ${x} is not 1`);
  const out = x.shape.filter((_, i) => !norm.includes(i));
  return emit1(x.graph, 'Squeeze', [x, x.graph.constant(norm, 'int64')], x.dtype, out);
}

/**
 * `x` unchanged, but only once `after` has been computed: Reshape(x, [static shape] + 0 * Shape(after)[-1:]). Used to
 * cast a half-precision frozen weight to float32 right before its matmul: a Cast of an initializer depends on
 * nothing, and onnxruntime's CPU provider schedules all such nodes at the start of the run (measured: every fp32 copy
 * alive at once, 1.5x the fp32 weights' memory instead of half). The data dependency on `after` places each Cast
 * next to its consumer. Needs onnxruntime's ConstantFolding off (SessionConfig.keepHalfWeights), which would fold
 * Shape of a static shape and then the Cast. Not differentiable: meant for frozen weights.
 */
export function orderedAfter(x: Tensor, after: Tensor): Tensor {
  const g = x.graph;
  g.own(after, 'orderedAfter');
  const last = g.emit('Shape', [after], { start: attr.int(-1) }, [{ dtype: 'int64', shape: [1] }], null)[0]!;
  const shape = add(mul(last, g.constant(0, 'int64')), g.constant([...x.shape], 'int64'));
  return g.emit('Reshape', [x, shape], {}, [{ dtype: x.dtype, shape: x.shape }], null)[0]!;
}

/** Broadcast x to `shape` (numpy rules). */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const out = broadcastShapes('Expand', x.shape, shape);
  if (out.length === x.rank && out.every((d, i) => d === x.shape[i])) return x;
  return emit1(x.graph, 'Expand', [x, x.graph.constant(shape, 'int64')], x.dtype, out);
}

export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new ShapeError('Concat: needs at least one tensor');
  const first = xs[0]!;
  const a = normAxis('Concat', axis, first.rank);
  let total = 0;
  for (const x of xs) {
    sameDtype('Concat', first, x);
    if (x.rank !== first.rank || x.shape.some((d, i) => i !== a && d !== first.shape[i])) {
      throw new ShapeError(`Concat: ${x} does not match ${first} outside axis ${a}`);
    }
    total += x.shape[a]!;
  }
  if (xs.length === 1) return first;
  const out = [...first.shape];
  out[a] = total;
  return emit1(first.graph, 'Concat', xs, first.dtype, out, { axis: attr.int(a) });
}

export function split(x: Tensor, sizes: readonly number[], axis: number): Tensor[] {
  const a = normAxis('Split', axis, x.rank);
  if (sizes.reduce((s, v) => s + v, 0) !== x.shape[a]) {
    throw new ShapeError(`Split: sizes ${fmtShape(sizes)} do not add up to axis ${a} of ${x}`);
  }
  const outs = sizes.map((s) => {
    const shape = [...x.shape];
    shape[a] = s;
    return { dtype: x.dtype, shape };
  });
  return x.graph.emit('Split', [x, x.graph.constant(sizes, 'int64')], { axis: attr.int(a) }, outs, 'rule');
}

/** Static slice with step 1 along `axes`; negative starts/ends count from the end. */
export function slice(x: Tensor, starts: readonly number[], ends: readonly number[], axes: readonly number[]): Tensor {
  if (starts.length !== axes.length || ends.length !== axes.length) {
    throw new ShapeError(`Slice: starts, ends and axes must have equal lengths`);
  }
  const out = [...x.shape];
  const normAxes: number[] = [];
  const s0: number[] = [];
  const e0: number[] = [];
  axes.forEach((ax, i) => {
    const a = normAxis('Slice', ax, x.rank);
    const dim = x.shape[a]!;
    const clamp = (v: number): number => Math.min(Math.max(v < 0 ? v + dim : v, 0), dim);
    const s = clamp(starts[i]!);
    const e = clamp(ends[i]!);
    if (e < s) throw new ShapeError(`Slice: empty range [${starts[i]}, ${ends[i]}) on axis ${a} of ${x}`);
    out[a] = e - s;
    normAxes.push(a);
    s0.push(s);
    e0.push(e);
  });
  const g = x.graph;
  const inputs = [x, g.constant(s0, 'int64'), g.constant(e0, 'int64'), g.constant(normAxes, 'int64')];
  return emit1(g, 'Slice', inputs, x.dtype, out, {}, { starts: s0, ends: e0, axes: normAxes });
}

/** Zero padding: pads = [begin_0..begin_{r-1}, end_0..end_{r-1}] (the ONNX layout). */
export function pad(x: Tensor, pads: readonly number[]): Tensor {
  if (pads.length !== 2 * x.rank || pads.some((p) => p < 0))
    throw new ShapeError(`Pad: pads ${fmtShape(pads)} invalid for ${x}`);
  const out = x.shape.map((d, i) => d + pads[i]! + pads[i + x.rank]!);
  return emit1(x.graph, 'Pad', [x, x.graph.constant(pads, 'int64')], x.dtype, out, {}, { pads: [...pads] });
}

// ---- reductions and normalisations -------------------------------------------------------------------------

function reduce(
  op: 'ReduceSum' | 'ReduceMean' | 'ReduceMax',
  x: Tensor,
  axes: readonly number[],
  keepdims: boolean,
): Tensor {
  const norm = [...new Set(axes.map((a) => normAxis(op, a, x.rank)))].sort((p, q) => p - q);
  const out = keepdims
    ? x.shape.map((d, i) => (norm.includes(i) ? 1 : d))
    : x.shape.filter((_, i) => !norm.includes(i));
  return emit1(
    x.graph,
    op,
    [x, x.graph.constant(norm, 'int64')],
    x.dtype,
    out,
    { keepdims: attr.int(keepdims ? 1 : 0) },
    { axes: norm },
  );
}

export const reduceSum = (x: Tensor, axes: readonly number[], keepdims = false): Tensor =>
  reduce('ReduceSum', x, axes, keepdims);
export const reduceMean = (x: Tensor, axes: readonly number[], keepdims = false): Tensor =>
  reduce('ReduceMean', x, axes, keepdims);
/** Not differentiable (used for numerics only, e.g. stabilising a softmax computed by hand). */
export const reduceMax = (x: Tensor, axes: readonly number[], keepdims = false): Tensor =>
  reduce('ReduceMax', x, axes, keepdims);

/** Sum of all elements, as a scalar (shape []). */
export function sumAll(x: Tensor): Tensor {
  return reduceSum(
    x,
    x.shape.map((_, i) => i),
    false,
  );
}

export function softmax(x: Tensor, axis = -1): Tensor {
  if (!isFloat(x.dtype)) throw new ShapeError(`Softmax: needs a floating-point tensor, got ${x}`);
  return emit1(x.graph, 'Softmax', [x], x.dtype, x.shape, { axis: attr.int(normAxis('Softmax', axis, x.rank)) });
}

/**
 * log(softmax(x)) along `axis`. On 'cpu' graphs the LogSoftmax op; on 'gpu' graphs x - max - log(sum(exp(x - max)))
 * as a composite with the same fused VJP (ȳ - exp(y) * sum(ȳ)), since onnxruntime's WebGPU provider has no
 * LogSoftmax kernel and would run it on the CPU over the whole [tokens, vocab] logits. On the CPU provider the
 * fused op is faster (the composite cost 15% of a SmolLM-shaped LoRA step on 2 cores).
 */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  if (!isFloat(x.dtype)) throw new ShapeError(`LogSoftmax: needs a floating-point tensor, got ${x}`);
  const a = normAxis('LogSoftmax', axis, x.rank);
  if (x.graph.target === 'cpu') return emit1(x.graph, 'LogSoftmax', [x], x.dtype, x.shape, { axis: attr.int(a) });
  const [y] = x.graph.composite(
    'LogSoftmax',
    [x],
    () => {
      const shifted = sub(x, reduceMax(x, [a], true));
      return [sub(shifted, log(reduceSum(exp(shifted), [a], true)))];
    },
    (ctx) => [logSoftmaxVjp(ctx.gradOutputs[0]!, ctx.outputs[0]!, a)],
  );
  return y!;
}

/** ȳ - exp(y) * sum(ȳ) along `axis`: the gradient of y = logSoftmax(x). */
export function logSoftmaxVjp(g: Tensor, y: Tensor, axis: number): Tensor {
  return sub(g, mul(exp(y), reduceSum(g, [axis], true)));
}

// ---- indexing ---------------------------------------------------------------------------------------------

/** data[indices] along `axis` (ONNX Gather): output shape = data[:axis] + indices + data[axis+1:]. */
export function gather(data: Tensor, indices: Tensor, axis = 0): Tensor {
  if (indices.dtype !== 'int64' && indices.dtype !== 'int32')
    throw new ShapeError(`Gather: indices must be int64/int32, got ${indices}`);
  const a = normAxis('Gather', axis, data.rank);
  const out = [...data.shape.slice(0, a), ...indices.shape, ...data.shape.slice(a + 1)];
  return emit1(data.graph, 'Gather', [data, indices], data.dtype, out, { axis: attr.int(a) });
}

/** ONNX GatherElements: out[i][j] = data[index[i][j]][j] for axis 0, etc. Output has the indices' shape. */
export function gatherElements(data: Tensor, indices: Tensor, axis: number): Tensor {
  const a = normAxis('GatherElements', axis, data.rank);
  if (indices.rank !== data.rank)
    throw new ShapeError(`GatherElements: ${indices} and ${data} must have the same rank`);
  return emit1(data.graph, 'GatherElements', [data, indices], data.dtype, indices.shape, { axis: attr.int(a) });
}

/** Zeros of a static shape, as ConstantOfShape (no large initializer in the file). */
export function zeros(g: Graph, shape: readonly number[], dtype: DType): Tensor {
  const value = { name: 'value', dtype, shape: [1], raw: zeroBytes(dtype) };
  return emit1(g, 'ConstantOfShape', [g.constant(shape, 'int64')], dtype, shape, { value: attr.tensor(value) });
}

function zeroBytes(dtype: DType): Uint8Array {
  const n = { float32: 4, float64: 8, float16: 2, bfloat16: 2, int64: 8, int32: 4, bool: 1, uint8: 1 }[dtype];
  return new Uint8Array(n);
}

/** ScatterND with reduction 'add' into `data` (the gradient of Gather). */
export function scatterNDAdd(data: Tensor, indices: Tensor, updates: Tensor): Tensor {
  return emit1(data.graph, 'ScatterND', [data, indices, updates], data.dtype, data.shape, {
    reduction: attr.string('add'),
  });
}

/** ScatterElements with reduction 'add' (the gradient of GatherElements). */
export function scatterElementsAdd(data: Tensor, indices: Tensor, updates: Tensor, axis: number): Tensor {
  const a = normAxis('ScatterElements', axis, data.rank);
  return emit1(data.graph, 'ScatterElements', [data, indices, updates], data.dtype, data.shape, {
    axis: attr.int(a),
    reduction: attr.string('add'),
  });
}
