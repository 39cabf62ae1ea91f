/**
 * Composite ops with fused VJPs. Their forward pass is ordinary primitive nodes; autodiff sees each as one
 * tape entry whose gradient is written by hand, shorter than the chain rule through the parts. Each fused
 * rule is gradient-checked in libs/engine/test/vjp.test.ts.
 */
import type { Tensor } from './graph.js';
import { ShapeError } from './errors.js';
import * as O from './ops.js';

/**
 * RMSNorm over the last axis, as LLaMA's: y = w * x / sqrt(mean(x^2) + eps).
 * Fused VJP with r = 1/sqrt(mean(x^2)+eps), n = x*r, n̄ = ȳ*w: x̄ = r*(n̄ - n*mean(n̄*n)), w̄ = sum(ȳ*n).
 * It reuses r and n from the forward pass instead of differentiating Sqrt/Reciprocal/ReduceMean one by one.
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  if (weight.rank !== 1 || weight.shape[0] !== x.shape[x.rank - 1]) {
    throw new ShapeError(`RMSNorm: weight ${weight} does not match the last axis of ${x}`);
  }
  let r: Tensor | undefined;
  let n: Tensor | undefined;
  const [y] = x.graph.composite(
    'RMSNorm',
    [x, weight],
    () => {
      r = O.reciprocal(O.sqrt(O.add(O.reduceMean(O.mul(x, x), [-1], true), eps)));
      n = O.mul(x, r);
      return [O.mul(n, weight)];
    },
    (ctx) => {
      const gy = ctx.gradOutputs[0]!;
      let gx: Tensor | null = null;
      if (ctx.needs[0]) {
        const nb = O.mul(gy, weight);
        gx = O.mul(r!, O.sub(nb, O.mul(n!, O.reduceMean(O.mul(nb, n!), [-1], true))));
      }
      return [gx, ctx.needs[1] ? O.mul(gy, n!) : null];
    },
  );
  return y!;
}

/**
 * Weighted softmax cross-entropy: loss = -sum(weights * log softmax(logits)[label]) over all positions.
 * `logits` [..., V], `labels` int64 [...], `weights` [...] in the logits' dtype. Every label must be a valid
 * class id, masked positions included (give them weight 0). Fused VJP:
 * logits̄ = (softmax(logits) - onehot(label)) * weights * ḡ, computed from the forward log-softmax.
 */
export function crossEntropy(logits: Tensor, labels: Tensor, weights: Tensor): Tensor {
  const lead = logits.shape.slice(0, -1);
  const same = (t: Tensor): boolean => t.rank === lead.length && t.shape.every((d, i) => d === lead[i]);
  if (labels.dtype !== 'int64' || !same(labels))
    throw new ShapeError(`CrossEntropy: labels ${labels} must be int64 with shape of ${logits} minus the last axis`);
  if (weights.dtype !== logits.dtype || !same(weights))
    throw new ShapeError(`CrossEntropy: weights ${weights} must match ${logits} minus the last axis`);
  let lsm: Tensor | undefined;
  let picked: Tensor | undefined;
  const [loss] = logits.graph.composite(
    'CrossEntropy',
    [logits, labels, weights],
    () => {
      lsm = O.logSoftmax(logits, -1);
      picked = O.squeeze(O.gatherElements(lsm, O.unsqueeze(labels, [-1]), -1), [-1]);
      return [O.neg(O.sumAll(O.mul(picked, weights)))];
    },
    (ctx) => {
      const gl = ctx.gradOutputs[0]!;
      let glogits: Tensor | null = null;
      if (ctx.needs[0]) {
        const scale = O.mul(O.unsqueeze(weights, [-1]), gl); // (..., 1)
        // softmax * scale, then -scale added at each label: three passes over [tokens, vocab] (Exp, Mul and the
        // scatter's copy) instead of a one-hot built with Equal + Cast and subtracted (five, measured 17% of the
        // SmolLM client step's kernel time on 2 threads), and no int64 Equal, which the WebGPU provider lacks.
        glogits = O.scatterElementsAdd(O.mul(O.exp(lsm!), scale), O.unsqueeze(labels, [-1]), O.neg(scale), -1);
      }
      return [glogits, null, ctx.needs[2] ? O.mul(O.neg(picked!), gl) : null];
    },
  );
  return loss!;
}

/** Mean cross-entropy over positions where mask = 1 (mask in the logits' dtype); 0 when the mask is empty. */
export function maskedMeanCrossEntropy(logits: Tensor, labels: Tensor, mask: Tensor): Tensor {
  const count = O.max(O.sumAll(mask), 1);
  return crossEntropy(logits, labels, O.div(mask, count));
}
