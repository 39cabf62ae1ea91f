import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AdamW } from '../src/optim/index.js';
import { rng } from '../../../test/support/rng.js';

/** Values with |x| in [0.5, 2] and random sign, so relative error is meaningful for every element. */
function awayFromZero(n: number, r: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * (0.5 + 1.5 * r()));
}

interface Hyper {
  lr: number;
  b1: number;
  b2: number;
  eps: number;
  wd: number;
}

/**
 * AdamW in float64 straight from Loshchilov & Hutter / the torch.optim.AdamW docs:
 * p <- p - lr*wd*p; m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2; m^ = m/(1-b1^t); v^ = v/(1-b2^t);
 * p <- p - lr * m^ / (sqrt(v^) + eps).
 */
function referenceAdamW(p0: Float32Array, grads: Float32Array[], h: Hyper, lrs: number[]): number[] {
  const p = Array.from(p0);
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  grads.forEach((g, k) => {
    const t = k + 1;
    const lr = lrs[k]!;
    for (let i = 0; i < p.length; i++) {
      p[i] = p[i]! - lr * h.wd * p[i]!;
      m[i] = h.b1 * m[i]! + (1 - h.b1) * g[i]!;
      v[i] = h.b2 * v[i]! + (1 - h.b2) * g[i]! * g[i]!;
      const mHat = m[i]! / (1 - h.b1 ** t);
      const vHat = v[i]! / (1 - h.b2 ** t);
      p[i] = p[i]! - (lr * mHat) / (Math.sqrt(vHat) + h.eps);
    }
  });
  return p;
}

function assertRelClose(actual: Float32Array, expected: number[], rel: number, what: string): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i]! - expected[i]!);
    assert.ok(err <= rel * Math.abs(expected[i]!), `${what}[${i}]: got ${actual[i]}, expected ${expected[i]}`);
  }
}

test('AdamW matches a float64 reference over 25 steps on 3 tensors, weight decay on', () => {
  const r = rng(7);
  const sizes = { a: 64, b: 17, c: 1 };
  for (const h of [
    { lr: 1e-2, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.01 },
    { lr: 3e-2, b1: 0.9, b2: 0.95, eps: 1e-6, wd: 0.1 }, // FedBiOT's betas, stronger decay
  ]) {
    const init = Object.fromEntries(Object.entries(sizes).map(([k, n]) => [k, awayFromZero(n, r)]));
    const params = new Map(Object.entries(init).map(([k, v]) => [k, v.slice()]));
    const steps = 25;
    const gradSeq = Object.fromEntries(
      Object.entries(sizes).map(([k, n]) => [
        k,
        Array.from({ length: steps }, () => awayFromZero(n, r).map((x) => x * 0.3)),
      ]),
    );
    const opt = new AdamW(params, { lr: h.lr, betas: [h.b1, h.b2], eps: h.eps, weightDecay: h.wd });
    for (let s = 0; s < steps; s++) {
      opt.step(params, new Map(Object.keys(sizes).map((k) => [k, gradSeq[k]![s]!])));
    }
    assert.equal(opt.stepCount, steps);
    const lrs = Array<number>(steps).fill(h.lr);
    for (const k of Object.keys(sizes)) {
      assertRelClose(params.get(k)!, referenceAdamW(init[k]!, gradSeq[k]!, h, lrs), 1e-6, `betas ${h.b2} ${k}`);
    }
  }
});

test('AdamW follows its schedule: matches the reference fed the hand-computed cosine lrs', () => {
  const r = rng(11);
  const init = awayFromZero(32, r);
  const params = new Map([['w', init.slice()]]);
  const steps = 12;
  const grads = Array.from({ length: steps }, () => awayFromZero(32, r));
  const h = { lr: 0.05, b1: 0.9, b2: 0.95, eps: 1e-8, wd: 0.01 };
  const opt = new AdamW(params, {
    lr: h.lr,
    betas: [h.b1, h.b2],
    weightDecay: h.wd,
    schedule: { kind: 'cosine', warmupSteps: 4, totalSteps: 12, minLrRatio: 0 },
  });
  for (const g of grads) opt.step(params, new Map([['w', g]]));
  // k < 4: k/4; else 0.5 * (1 + cos(pi * (k - 4) / 8)).
  const lrs = Array.from(
    { length: steps },
    (_, k) => h.lr * (k < 4 ? k / 4 : 0.5 * (1 + Math.cos((Math.PI * (k - 4)) / 8))),
  );
  assertRelClose(params.get('w')!, referenceAdamW(init, grads, h, lrs), 1e-6, 'scheduled');
});

test('AdamW known values: first step, decay before update, eps outside the sqrt, constant gradient', () => {
  // Step 1: m^ = g and v^ = g^2, so p <- p(1 - lr wd) - lr g / (|g| + eps) ~ p(1 - lr wd) - lr sign(g).
  const p = new Float32Array([1, 2, -3]);
  const params = new Map([['w', p]]);
  new AdamW(params, { lr: 0.1, weightDecay: 0.01 }).step(params, new Map([['w', new Float32Array([0.5, 0, -1e-3])]]));
  assert.ok(Math.abs(p[0]! - 0.899) < 1e-6, `p0 ${p[0]}`); // 0.999 - 0.1
  assert.ok(Math.abs(p[1]! - 1.998) < 1e-6, `p1 ${p[1]}`); // zero gradient: only the decay
  assert.ok(Math.abs(p[2]! - -2.897001) < 1e-6, `p2 ${p[2]}`); // -2.997 + 0.1 * 1e-3 / (1e-3 + 1e-8)

  // Decoupled decay happens before the Adam step: 1*(1 - 0.1*1) - 0.1 = 0.8, whereas decaying after gives 0.81.
  const q = new Float32Array([1]);
  const qp = new Map([['q', q]]);
  new AdamW(qp, { lr: 0.1, weightDecay: 1 }).step(qp, new Map([['q', new Float32Array([1])]]));
  assert.ok(Math.abs(q[0]! - 0.8) < 1e-7, `decay order ${q[0]}`);

  // eps outside the sqrt: g = eps gives a step of lr * g / (g + eps) = lr / 2; inside it would be ~lr * 1e-4.
  const e = new Float32Array([0]);
  const ep = new Map([['e', e]]);
  const g = Math.fround(1e-8);
  new AdamW(ep, { lr: 0.1, weightDecay: 0, eps: 1e-8 }).step(ep, new Map([['e', new Float32Array([g])]]));
  assert.ok(Math.abs(e[0]! - (-0.1 * g) / (g + 1e-8)) < 1e-9, `eps ${e[0]}`);

  // A constant gradient keeps m^ = g and v^ = g^2 at every step thanks to bias correction: 10 steps of ~lr each.
  const c = new Float32Array([5, -5]);
  const cp = new Map([['c', c]]);
  const opt = new AdamW(cp, { lr: 0.01, weightDecay: 0 });
  for (let s = 0; s < 10; s++) opt.step(cp, new Map([['c', new Float32Array([2, -0.25])]]));
  assert.ok(Math.abs(c[0]! - 4.9) < 1e-5 && Math.abs(c[1]! - -4.9) < 1e-5, `constant gradient ${c[0]}, ${c[1]}`);
});

test('AdamW minimises an ill-conditioned quadratic', () => {
  const r = rng(3);
  const n = 50;
  const a = Float64Array.from({ length: n }, () => 0.1 + 10 * r()); // curvatures spanning 100x
  const target = Float64Array.from({ length: n }, () => 4 * r() - 2);
  const p = new Float32Array(n);
  const params = new Map([['x', p]]);
  const grad = new Float32Array(n);
  const grads = new Map([['x', grad]]);
  const loss = () => p.reduce((s, x, i) => s + 0.5 * a[i]! * (x - target[i]!) ** 2, 0);
  const start = loss();
  const opt = new AdamW(params, {
    lr: 0.1,
    betas: [0.9, 0.95],
    weightDecay: 0,
    schedule: { kind: 'cosine', warmupSteps: 10, totalSteps: 400, minLrRatio: 0 },
  });
  for (let s = 0; s < 400; s++) {
    for (let i = 0; i < n; i++) grad[i] = a[i]! * (p[i]! - target[i]!);
    opt.step(params, grads);
  }
  for (let i = 0; i < n; i++) assert.ok(Math.abs(p[i]! - target[i]!) < 1e-3, `x[${i}] = ${p[i]}, target ${target[i]}`);
  assert.ok(loss() < start * 1e-6, `loss ${start} -> ${loss()}`);
});

test('AdamW rejects bad hyper-parameters and mismatched tensors, naming them, without updating anything', () => {
  const w = new Float32Array([1, 2]);
  const params = new Map([
    ['w', w],
    ['frozen', new Float32Array(3)],
  ]);
  assert.throws(() => new AdamW(params, { lr: -1 }), /lr/);
  assert.throws(() => new AdamW(params, { betas: [0.9, 1] }), /betas\[1\]/);
  assert.throws(() => new AdamW(params, { eps: -1 }), /eps/);
  assert.throws(() => new AdamW(params, { weightDecay: Number.NaN }), /weightDecay/);
  const opt = new AdamW(new Map([['w', w]]));
  // Extra params (frozen weights) are fine; extra or missing or mis-sized gradients are not.
  opt.step(params, new Map([['w', new Float32Array([1, 1])]]));
  const after = w.slice();
  assert.throws(() => opt.step(params, new Map()), /gradient for parameter "w" is missing/);
  assert.throws(() => opt.step(params, new Map([['w', new Float32Array(3)]])), /gradient "w" has 3 values, expected 2/);
  assert.throws(
    () =>
      opt.step(
        params,
        new Map([
          ['w', new Float32Array(2)],
          ['frozen', new Float32Array(3)],
        ]),
      ),
    /gradient "frozen" is not one of this optimizer's parameters/,
  );
  assert.throws(() => opt.step(new Map(), new Map([['w', new Float32Array(2)]])), /parameter "w" is missing/);
  assert.deepEqual(w, after);
  assert.equal(opt.stepCount, 1);
});
