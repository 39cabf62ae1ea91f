/**
 * Every VJP rule against float64 central finite differences (relative error under 1e-5). Each case feeds random
 * inputs through one op and takes loss = sum(op(...) * R) with a random R, so every output element weighs in.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, type Tensor } from '../src/graph.js';
import * as O from '../src/ops.js';
import { crossEntropy, maskedMeanCrossEntropy, rmsNorm } from '../src/composite.js';
import { linear } from '../src/nn.js';
import { gradCheck, type FeedValue } from '../src/gradcheck.js';
import { rng, uniform } from '../../../test/support/rng.js';

const TOL = 1e-5;

interface Arg {
  readonly shape: readonly number[];
  readonly lo?: number;
  readonly hi?: number;
  /** not differentiated (data, indices) */
  readonly frozen?: boolean;
  readonly int?: { readonly max: number };
}

async function checkOp(
  name: string,
  args: readonly Arg[],
  f: (...xs: Tensor[]) => Tensor,
  seed = 1,
  target: 'cpu' | 'gpu' = 'cpu',
): Promise<void> {
  const next = rng(seed);
  const report = await gradCheck(
    (g: Graph) => {
      const feeds: Record<string, FeedValue> = {};
      const wrt: Tensor[] = [];
      const xs = args.map((a, i) => {
        const n = a.shape.reduce((p, d) => p * d, 1);
        if (a.int) {
          const t = g.input(`i${i}`, 'int64', a.shape);
          feeds[t.name] = BigInt64Array.from({ length: n }, () => BigInt(Math.floor(next() * a.int!.max)));
          return t;
        }
        const t = g.input(`x${i}`, 'float64', a.shape);
        feeds[t.name] = uniform(next, n, a.lo ?? -1, a.hi ?? 1);
        if (!a.frozen) wrt.push(t);
        return t;
      });
      const y = f(...xs);
      const r = g.input('R', 'float64', y.shape);
      feeds['R'] = uniform(next, y.size, 0.5, 1.5);
      return { loss: O.sumAll(O.mul(y, r)), wrt, feeds };
    },
    { target },
  );
  for (const t of report.tensors) {
    assert.ok(
      t.relError < TOL,
      `${name}: gradient of ${t.name} has relative error ${t.relError.toExponential(2)} >= ${TOL}`,
    );
  }
}

const cases: [string, Arg[], (...xs: Tensor[]) => Tensor][] = [
  ['Add (broadcast)', [{ shape: [2, 3, 4] }, { shape: [3, 1] }], (a, b) => O.add(a!, b!)],
  ['Sub (broadcast)', [{ shape: [4] }, { shape: [2, 3, 4] }], (a, b) => O.sub(a!, b!)],
  ['Mul (broadcast)', [{ shape: [2, 1, 4] }, { shape: [3, 1] }], (a, b) => O.mul(a!, b!)],
  ['Div', [{ shape: [2, 3] }, { shape: [2, 3], lo: 0.5, hi: 2 }], (a, b) => O.div(a!, b!)],
  ['Div by scalar tensor', [{ shape: [2, 3] }, { shape: [], lo: 0.5, hi: 2 }], (a, b) => O.div(a!, b!)],
  ['Max', [{ shape: [3, 4] }, { shape: [3, 4] }], (a, b) => O.max(a!, b!)],
  ['Neg', [{ shape: [5] }], (a) => O.neg(a!)],
  ['Identity', [{ shape: [5] }], (a) => O.identity(a!)],
  ['Sqrt', [{ shape: [6], lo: 0.3, hi: 2 }], (a) => O.sqrt(a!)],
  ['Reciprocal', [{ shape: [6], lo: 0.5, hi: 2 }], (a) => O.reciprocal(a!)],
  ['Exp', [{ shape: [6] }], (a) => O.exp(a!)],
  ['Log', [{ shape: [6], lo: 0.3, hi: 2 }], (a) => O.log(a!)],
  ['Sigmoid', [{ shape: [6], lo: -3, hi: 3 }], (a) => O.sigmoid(a!)],
  ['Tanh', [{ shape: [6], lo: -2, hi: 2 }], (a) => O.tanh(a!)],
  ['Pow 3', [{ shape: [6], lo: 0.3, hi: 2 }], (a) => O.pow(a!, 3)],
  ['Pow -0.5', [{ shape: [6], lo: 0.3, hi: 2 }], (a) => O.pow(a!, -0.5)],
  ['MatMul 2-D', [{ shape: [3, 4] }, { shape: [4, 5] }], (a, b) => O.matmul(a!, b!)],
  ['MatMul batched, broadcast batch', [{ shape: [2, 3, 3, 4] }, { shape: [3, 4, 2] }], (a, b) => O.matmul(a!, b!)],
  ['Gemm', [{ shape: [3, 4] }, { shape: [4, 5] }], (a, b) => O.gemm(a!, b!)],
  ['Gemm transA', [{ shape: [4, 3] }, { shape: [4, 5] }], (a, b) => O.gemm(a!, b!, { transA: true })],
  [
    'Gemm transB + bias',
    [{ shape: [3, 4] }, { shape: [5, 4] }, { shape: [5] }],
    (a, b, c) => O.gemm(a!, b!, { transB: true }, c),
  ],
  [
    'Gemm transA transB alpha beta',
    [{ shape: [4, 3] }, { shape: [5, 4] }, { shape: [3, 5] }],
    (a, b, c) => O.gemm(a!, b!, { transA: true, transB: true, alpha: 0.7, beta: 1.3 }, c),
  ],
  [
    'linear (3-D input, bias)',
    [{ shape: [2, 3, 4] }, { shape: [5, 4] }, { shape: [5] }],
    (x, w, b) => linear(x!, w!, b),
  ],
  ['Transpose', [{ shape: [2, 3, 4] }], (a) => O.transpose(a!, [2, 0, 1])],
  ['Reshape', [{ shape: [2, 6] }], (a) => O.reshape(a!, [3, -1])],
  ['Unsqueeze', [{ shape: [2, 3] }], (a) => O.unsqueeze(a!, [0, -1])],
  ['Squeeze', [{ shape: [2, 1, 3] }], (a) => O.squeeze(a!, [1])],
  ['Expand (GQA-style repeat)', [{ shape: [2, 1, 3] }], (a) => O.expand(a!, [2, 4, 3])],
  ['ReduceSum keepdims', [{ shape: [2, 3, 4] }], (a) => O.reduceSum(a!, [1], true)],
  ['ReduceSum', [{ shape: [2, 3, 4] }], (a) => O.reduceSum(a!, [0, 2])],
  ['ReduceMean', [{ shape: [2, 3, 4] }], (a) => O.reduceMean(a!, [-1])],
  ['Softmax', [{ shape: [2, 5], lo: -2, hi: 2 }], (a) => O.softmax(a!, -1)],
  ['Softmax axis 0', [{ shape: [3, 4], lo: -2, hi: 2 }], (a) => O.softmax(a!, 0)],
  ['LogSoftmax', [{ shape: [2, 5], lo: -2, hi: 2 }], (a) => O.logSoftmax(a!, -1)],
  ['Concat', [{ shape: [2, 3] }, { shape: [2, 2] }], (a, b) => O.concat([a!, b!], 1)],
  ['Split (one part unused)', [{ shape: [2, 5] }], (a) => O.split(a!, [2, 3], 1)[1]!],
  [
    'Split (both parts)',
    [{ shape: [4, 3] }],
    (a) => {
      const [p, q] = O.split(a!, [1, 3], 0);
      return O.add(O.mul(p!, 2), q!);
    },
  ],
  ['Slice', [{ shape: [3, 5] }], (a) => O.slice(a!, [1, 0], [3, -1], [0, 1])],
  ['Pad', [{ shape: [2, 3] }], (a) => O.pad(a!, [1, 0, 0, 2])],
  [
    'Gather (embedding, repeated ids)',
    [{ shape: [5, 3] }, { shape: [2, 4], int: { max: 5 } }],
    (e, i) => O.gather(e!, i!, 0),
  ],
  ['GatherElements', [{ shape: [3, 5] }, { shape: [3, 2], int: { max: 5 } }], (d, i) => O.gatherElements(d!, i!, 1)],
  [
    'Where',
    [{ shape: [2, 3], frozen: true }, { shape: [2, 3] }, { shape: [3] }],
    (c, a, b) => O.where(O.less(c!, 0), a!, b!),
  ],
  ['Sum', [{ shape: [2, 3] }, { shape: [3] }, { shape: [2, 3] }], (a, b, c) => O.sum([a!, b!, c!])],
  ['Cast through float64 -> float64 (identity)', [{ shape: [3] }], (a) => O.cast(a!, 'float64')],
  ['RMSNorm (fused)', [{ shape: [2, 3, 8] }, { shape: [8], lo: 0.5, hi: 1.5 }], (x, w) => rmsNorm(x!, w!, 1e-6)],
];

for (const [name, args, f] of cases) {
  test(`VJP ${name}`, async () => checkOp(name, args, f));
}

// Graphs built for GPU kernels swap LogSoftmax, variadic Sum and the Equal one-hot for compositions (Graph.target):
// the same gradients must come out.
test('VJP LogSoftmax, gpu target (max-shift composite)', async () =>
  checkOp('LogSoftmax gpu', [{ shape: [2, 5], lo: -2, hi: 2 }], (a) => O.logSoftmax(a!, -1), 1, 'gpu'));
test('gradient accumulation, gpu target (Add chain instead of Sum)', async () =>
  checkOp('fan-out gpu', [{ shape: [3, 4] }], (a) => O.add(O.mul(O.exp(a!), a!), O.sigmoid(a!)), 1, 'gpu'));
test('VJP CrossEntropy, gpu target (label term by ScatterElements)', async () => {
  const next = rng(8);
  const report = await gradCheck(
    (g) => {
      const logits = g.input('logits', 'float64', [2, 3, 6]);
      const labels = g.input('labels', 'int64', [2, 3]);
      const w = g.input('w', 'float64', [2, 3]);
      return {
        loss: crossEntropy(logits, labels, w),
        wrt: [logits, w],
        feeds: {
          logits: uniform(next, 36, -2, 2),
          labels: BigInt64Array.from([0, 5, 2, 3, 3, 1].map(BigInt)),
          w: uniform(next, 6, 0, 1),
        },
      };
    },
    { target: 'gpu' },
  );
  assert.ok(report.worst < TOL, JSON.stringify(report.tensors));
});

test('VJP CrossEntropy (fused), weights and logits', async () => {
  const next = rng(7);
  const report = await gradCheck((g) => {
    const logits = g.input('logits', 'float64', [2, 3, 6]);
    const labels = g.input('labels', 'int64', [2, 3]);
    const w = g.input('w', 'float64', [2, 3]);
    const loss = crossEntropy(logits, labels, w);
    return {
      loss,
      wrt: [logits, w],
      feeds: {
        logits: uniform(next, 36, -2, 2),
        labels: BigInt64Array.from([0, 5, 2, 3, 3, 1].map(BigInt)),
        w: uniform(next, 6, 0, 1),
      },
    };
  });
  assert.ok(report.worst < TOL, JSON.stringify(report.tensors));
});

test('masked mean cross-entropy equals the hand-computed mean NLL and its gradient checks', async () => {
  // Two rows of logits over 3 classes; the second position is masked out.
  const logits = [1, 2, 3, 0.5, -1, 2, 0, 0, 0];
  const labels = [2, 0, 1];
  const mask = [1, 0, 1];
  const nll = (row: number[], y: number): number => Math.log(row.reduce((s, v) => s + Math.exp(v), 0)) - row[y]!;
  const expected = (nll(logits.slice(0, 3), 2) + nll(logits.slice(6, 9), 1)) / 2;
  const report = await gradCheck((g) => {
    const l = g.input('logits', 'float64', [3, 3]);
    const y = g.input('labels', 'int64', [3]);
    const m = g.input('mask', 'float64', [3]);
    return {
      loss: maskedMeanCrossEntropy(l, y, m),
      wrt: [l],
      feeds: {
        logits: Float64Array.from(logits),
        labels: BigInt64Array.from(labels.map(BigInt)),
        mask: Float64Array.from(mask),
      },
    };
  });
  assert.ok(Math.abs(report.loss - expected) < 1e-12, `loss ${report.loss} vs ${expected}`);
  assert.ok(report.worst < TOL);
});

test('Cast float64 -> float32 -> float64 passes the gradient through', async () => {
  // f(x) = sum(cast(cast(x, f32), f64) * 0.5): the gradient is 0.5 everywhere (exact in float32).
  const g = new Graph('cast');
  const x = g.input('x', 'float64', [4]);
  const { gradients } = await import('../src/autodiff.js');
  const y = O.sumAll(O.mul(O.cast(O.cast(x, 'float32'), 'float64'), 0.5));
  const [gx] = gradients(y, [x]);
  assert.equal(gx!.dtype, 'float64');
  assert.deepEqual(gx!.shape, [4]);
  g.output(gx!, 'gx');
  const ops = g.toIr().nodes.map((n) => n.opType);
  assert.equal(ops.filter((o) => o === 'Cast').length, 2);
});
