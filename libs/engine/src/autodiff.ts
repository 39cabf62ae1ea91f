/**
 * Reverse-mode automatic differentiation over a graph's tape. Appends gradient nodes to the same graph, so
 * one ONNX model computes the forward pass and the gradients.
 */
import { GraphError, fmtShape } from './errors.js';
import type { Tensor, TapeEntry } from './graph.js';
import * as O from './ops.js';
import { VJP } from './vjp.js';

export interface GradientOptions {
  /** dL/dL, for loss scaling; defaults to ones. */
  readonly seed?: Tensor;
  /** Return null instead of throwing for a `wrt` tensor that does not influence the loss. */
  readonly allowUnused?: boolean;
}

/**
 * Sums a gradient computed in a broadcast shape back to the shape of the input it belongs to
 * ("unbroadcast"): reduce leading extra axes and axes where the input had size 1.
 */
export function unbroadcast(grad: Tensor, shape: readonly number[]): Tensor {
  if (grad.rank === shape.length && grad.shape.every((d, i) => d === shape[i])) return grad;
  const lead = grad.rank - shape.length;
  if (lead < 0) throw new GraphError(`unbroadcast: gradient ${grad} has lower rank than ${fmtShape(shape)}`);
  const axes: number[] = [];
  for (let i = 0; i < grad.rank; i++) {
    if (i < lead) axes.push(i);
    else if (shape[i - lead] === 1 && grad.shape[i] !== 1) axes.push(i);
    else if (shape[i - lead] !== grad.shape[i]) {
      throw new GraphError(`unbroadcast: gradient ${grad} does not broadcast to ${fmtShape(shape)}`);
    }
  }
  const reduced = axes.length > 0 ? O.reduceSum(grad, axes, true) : grad;
  return O.reshape(reduced, shape);
}

/**
 * Gradients of the scalar `loss` with respect to each tensor of `wrt`. Only tape entries on a path from a
 * `wrt` tensor to the loss get gradient nodes; frozen weights and data receive none (why a LoRA step costs
 * about 2x a forward pass instead of 3x). Contributions to one value are combined with one Sum node.
 */
export function gradients(loss: Tensor, wrt: readonly Tensor[], opts: GradientOptions = {}): (Tensor | null)[] {
  const g = loss.graph;
  g.own(loss, 'gradients');
  wrt.forEach((w) => g.own(w, 'gradients (wrt)'));
  if (loss.size !== 1) {
    throw new GraphError(`gradients: the loss must be a scalar, got ${loss} (take a sum or mean first)`);
  }
  if (!O.isFloat(loss.dtype)) throw new GraphError(`gradients: the loss must be floating point, got ${loss}`);

  const tape = g.tape;
  // Forward sweep: which tensors depend on any wrt tensor.
  const depends = new Set<number>(wrt.map((w) => w.id));
  for (const e of tape) {
    if (e.inputs.some((t) => depends.has(t.id))) for (const o of e.outputs) depends.add(o.id);
  }
  if (!depends.has(loss.id) && !opts.allowUnused) {
    throw new GraphError(
      `gradients: the loss ${loss.name} does not depend on any of ${wrt.map((w) => w.name).join(', ')}`,
    );
  }

  const pending = new Map<number, Tensor[]>();
  const push = (t: Tensor, grad: Tensor): void => {
    const list = pending.get(t.id);
    if (list) list.push(grad);
    else pending.set(t.id, [grad]);
  };
  // Collapses the contributions to one tensor into one gradient (and caches it).
  const total = (t: Tensor): Tensor | null => {
    const list = pending.get(t.id);
    if (!list || list.length === 0) return null;
    if (list.length > 1) {
      // On 'gpu' graphs a chain of Adds rather than one variadic Sum: onnxruntime's WebGPU provider has no Sum
      // kernel and would run it on the CPU, copying every accumulated gradient across (measured on the H200).
      const s = g.target === 'gpu' ? list.slice(1).reduce((acc, x) => O.add(acc, x), list[0]!) : O.sum(list);
      pending.set(t.id, [s]);
      return s;
    }
    return list[0]!;
  };

  const seed =
    opts.seed ??
    g.constant(
      Array.from({ length: loss.size }, () => 1),
      loss.dtype,
      loss.shape,
    );
  if (seed.dtype !== loss.dtype || seed.size !== 1)
    throw new GraphError(`gradients: seed ${seed} must match the loss ${loss}`);
  push(loss, O.reshape(seed, loss.shape));

  // The tape grows while we append gradient nodes: walk only the entries that existed before.
  const forward: readonly TapeEntry[] = tape.slice();
  for (let i = forward.length - 1; i >= 0; i--) {
    const e = forward[i]!;
    if (!e.outputs.some((o) => depends.has(o.id))) continue;
    const gradOutputs = e.outputs.map((o) => total(o));
    if (gradOutputs.every((x) => x === null)) continue;
    const needs = e.inputs.map((t) => depends.has(t.id));
    if (!needs.some(Boolean)) continue;
    // A primitive op's rule by its name (vjp.ts), a composite's fused VJP, or null: not differentiable.
    const vjp = e.vjp === 'rule' ? VJP[e.op] : e.vjp;
    if (!vjp) {
      throw new GraphError(
        `gradients: op ${e.op} (output ${e.outputs[0]?.name}) is not differentiable, but the loss depends on ` +
          `${e.inputs
            .filter((_, k) => needs[k])
            .map((t) => t.name)
            .join(', ')} through it`,
      );
    }
    const grads = g.scope(`grad`, () =>
      vjp({ inputs: e.inputs, outputs: e.outputs, attrs: e.attrs, meta: e.meta, gradOutputs, needs }),
    );
    if (grads.length !== e.inputs.length) {
      throw new GraphError(`internal: VJP of ${e.op} returned ${grads.length} gradients for ${e.inputs.length} inputs`);
    }
    e.inputs.forEach((x, k) => {
      const gk = grads[k];
      if (!needs[k] || !gk) return;
      if (gk.dtype !== x.dtype) throw new GraphError(`internal: VJP of ${e.op} gave ${gk} for input ${x}`);
      push(
        x,
        g.scope('grad', () => unbroadcast(gk, x.shape)),
      );
    });
  }

  return wrt.map((w) => {
    const grad = total(w);
    if (!grad && !opts.allowUnused) {
      throw new GraphError(`gradients: the loss ${loss.name} does not depend on ${w.name}`);
    }
    return grad;
  });
}

/**
 * Outputs the scalar `loss` as `loss` and its gradient with respect to each named tensor as `grad.<name>`, the
 * names a training step fetches; throws if one of them does not influence the loss.
 */
export function outputLossAndGradients(loss: Tensor, wrt: readonly (readonly [string, Tensor])[]): void {
  const g = loss.graph;
  const grads = gradients(
    loss,
    wrt.map(([, t]) => t),
  );
  g.output(loss, 'loss');
  grads.forEach((gr, i) => g.output(gr!, `grad.${wrt[i]![0]}`));
}
