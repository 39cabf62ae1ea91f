import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SGD, type SGDOptions } from '../src/optim/index.js';
import { rng } from '../../../test/support/rng.js';

/** Values with |x| in [0.5, 2] and random sign, so relative error is meaningful for every element. */
function awayFromZero(n: number, r: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * (0.5 + 1.5 * r()));
}

/**
 * SGD in float64 from the torch.optim.SGD docs: g <- g + wd p; b_1 = g, b_t = mu b_{t-1} + (1 - tau) g;
 * g <- nesterov ? g + mu b_t : b_t (when mu != 0); p <- p - lr g.
 */
function referenceSGD(p0: Float32Array, grads: Float32Array[], o: Required<Omit<SGDOptions, 'schedule'>>): number[] {
  const p = Array.from(p0);
  const b = p.map(() => 0);
  grads.forEach((gt, k) => {
    for (let i = 0; i < p.length; i++) {
      let g = gt[i]! + o.weightDecay * p[i]!;
      if (o.momentum !== 0) {
        b[i] = k === 0 ? g : o.momentum * b[i]! + (1 - o.dampening) * g;
        g = o.nesterov ? g + o.momentum * b[i]! : b[i]!;
      }
      p[i] = p[i]! - o.lr * g;
    }
  });
  return p;
}

test('SGD matches a float64 reference over 20 steps: plain, momentum+dampening, nesterov; weight decay on', () => {
  const r = rng(5);
  const variants: Required<Omit<SGDOptions, 'schedule'>>[] = [
    { lr: 0.05, momentum: 0, dampening: 0, weightDecay: 0.01, nesterov: false },
    { lr: 0.02, momentum: 0.9, dampening: 0.1, weightDecay: 0.01, nesterov: false },
    { lr: 0.02, momentum: 0.9, dampening: 0, weightDecay: 0.05, nesterov: true },
  ];
  for (const o of variants) {
    const initA = awayFromZero(40, r);
    const initB = awayFromZero(3, r);
    const params = new Map([
      ['a', initA.slice()],
      ['b', initB.slice()],
    ]);
    const ga = Array.from({ length: 20 }, () => awayFromZero(40, r));
    const gb = Array.from({ length: 20 }, () => awayFromZero(3, r));
    const opt = new SGD(params, o);
    for (let s = 0; s < 20; s++) {
      opt.step(
        params,
        new Map([
          ['a', ga[s]!],
          ['b', gb[s]!],
        ]),
      );
    }
    for (const [name, init, gs] of [
      ['a', initA, ga],
      ['b', initB, gb],
    ] as const) {
      const want = referenceSGD(init, gs, o);
      const got = params.get(name)!;
      // Relative to the parameter's scale: momentum can carry a value near zero, where its own magnitude says
      // nothing about the fp32 rounding accumulated on the way.
      for (let i = 0; i < want.length; i++) {
        assert.ok(
          Math.abs(got[i]! - want[i]!) <= 1e-6 * Math.max(Math.abs(want[i]!), Math.abs(init[i]!)),
          `${JSON.stringify(o)} ${name}[${i}]: got ${got[i]}, expected ${want[i]}`,
        );
      }
    }
  }
});

test('SGD known values by hand', () => {
  // Plain with weight decay: g' = 0.5 + 0.1 * 1 = 0.6, p = 1 - 0.1 * 0.6 = 0.94.
  const p = new Float32Array([1]);
  const params = new Map([['p', p]]);
  new SGD(params, { lr: 0.1, weightDecay: 0.1 }).step(params, new Map([['p', new Float32Array([0.5])]]));
  assert.ok(Math.abs(p[0]! - 0.94) < 1e-7, `plain ${p[0]}`);

  // Momentum 0.9, dampening 0.5: the first buffer is the raw gradient (no dampening), then b = 0.9 b + 0.5 g.
  const q = new Float32Array([0]);
  const qp = new Map([['q', q]]);
  const m = new SGD(qp, { lr: 1, momentum: 0.9, dampening: 0.5 });
  m.step(qp, new Map([['q', new Float32Array([1])]])); // b = 1, q = -1
  assert.equal(q[0], -1);
  m.step(qp, new Map([['q', new Float32Array([2])]])); // b = 0.9 + 1 = 1.9, q = -2.9
  assert.ok(Math.abs(q[0]! - -2.9) < 1e-6, `momentum ${q[0]}`);

  // Nesterov: step 1 b = g = 1, update g + 0.9 b = 1.9; step 2 b = 0.9 + 1 = 1.9, update 1 + 1.71 = 2.71.
  const n = new Float32Array([0]);
  const np = new Map([['n', n]]);
  const nest = new SGD(np, { lr: 1, momentum: 0.9, nesterov: true });
  nest.step(np, new Map([['n', new Float32Array([1])]]));
  assert.ok(Math.abs(n[0]! - -1.9) < 1e-6, `nesterov 1 ${n[0]}`);
  nest.step(np, new Map([['n', new Float32Array([1])]]));
  assert.ok(Math.abs(n[0]! - -4.61) < 1e-6, `nesterov 2 ${n[0]}`);
});

test('SGD with momentum minimises an ill-conditioned quadratic', () => {
  const r = rng(9);
  const n = 50;
  const a = Float64Array.from({ length: n }, () => 0.5 + 4.5 * r());
  const target = Float64Array.from({ length: n }, () => 4 * r() - 2);
  const p = new Float32Array(n);
  const grad = new Float32Array(n);
  const params = new Map([['x', p]]);
  const grads = new Map([['x', grad]]);
  const opt = new SGD(params, { lr: 0.1, momentum: 0.9 });
  for (let s = 0; s < 300; s++) {
    for (let i = 0; i < n; i++) grad[i] = a[i]! * (p[i]! - target[i]!);
    opt.step(params, grads);
  }
  for (let i = 0; i < n; i++) assert.ok(Math.abs(p[i]! - target[i]!) < 1e-5, `x[${i}] = ${p[i]}, target ${target[i]}`);
});

test('SGD rejects invalid hyper-parameters like torch', () => {
  const params = new Map([['w', new Float32Array(2)]]);
  assert.throws(() => new SGD(params, { nesterov: true }), /nesterov/);
  assert.throws(() => new SGD(params, { nesterov: true, momentum: 0.9, dampening: 0.1 }), /nesterov/);
  assert.throws(() => new SGD(params, { momentum: -0.1 }), /momentum/);
  assert.throws(() => new SGD(params, { lr: Number.POSITIVE_INFINITY }), /lr/);
  assert.throws(() => new SGD(params, { weightDecay: -1 }), /weightDecay/);
  const opt = new SGD(params);
  assert.throws(() => opt.step(params, new Map([['w', new Float32Array(1)]])), /gradient "w" has 1 values, expected 2/);
});
