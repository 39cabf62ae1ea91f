import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clipGradNorm } from '../src/optim/index.js';

test('clipGradNorm returns the global L2 norm and scales by maxNorm / (norm + 1e-6)', () => {
  // ||(3, 4, 0, 12)|| = 13 across two tensors.
  const a = new Float32Array([3, 4]);
  const b = new Float32Array([0, 12]);
  const grads = new Map([
    ['a', a],
    ['b', b],
  ]);
  assert.equal(clipGradNorm(grads, 1), 13);
  const coef = 1 / (13 + 1e-6);
  assert.deepEqual(Array.from(a), [Math.fround(3 * coef), Math.fround(4 * coef)]);
  assert.deepEqual(Array.from(b), [0, Math.fround(12 * coef)]);
  // The clipped global norm is maxNorm (to the 1e-6 offset and fp32 rounding).
  assert.ok(Math.abs(Math.hypot(...a, ...b) - 1) < 1e-6);
});

test('clipGradNorm leaves gradients alone under the threshold', () => {
  const a = new Float32Array([0.3, -0.4]);
  const before = a.slice();
  assert.ok(Math.abs(clipGradNorm(new Map([['a', a]]), 1) - 0.5) < 1e-7);
  assert.deepEqual(a, before);
  // torch's condition is coef < 1, i.e. norm + 1e-6 > maxNorm: at norm == maxNorm it still scales (by 1/(1+1e-6)).
  const c = new Float32Array([3, 4]);
  clipGradNorm(new Map([['c', c]]), 5);
  assert.equal(c[1], Math.fround(4 * (5 / (5 + 1e-6))));
});

test('clipGradNorm accumulates in float64: a million equal values give the exact norm', () => {
  const g = new Float32Array(1_000_000).fill(0.1);
  const norm = clipGradNorm(new Map([['g', g]]), 1e9);
  // sqrt(1e6 * fround(0.1)^2) = 1000 * fround(0.1); an fp32 running sum would drift by ~1e-4 relative.
  assert.ok(Math.abs(norm - 1000 * Math.fround(0.1)) < 1e-6, `norm ${norm}`);
});

test('clipGradNorm: empty map is norm 0; non-finite values throw naming the tensor and index, untouched', () => {
  assert.equal(clipGradNorm(new Map(), 1), 0);
  const ok = new Float32Array([100, 100]);
  const bad = new Float32Array([1, 2, Number.NaN, Number.POSITIVE_INFINITY]);
  const grads = new Map([
    ['layers.0.ok', ok],
    ['layers.1.bad', bad],
  ]);
  assert.throws(() => clipGradNorm(grads, 1), /gradient "layers\.1\.bad" holds a non-finite value \(NaN\) at index 2/);
  assert.deepEqual(Array.from(ok), [100, 100]);
  assert.throws(
    () => clipGradNorm(new Map([['inf', new Float32Array([0, Number.NEGATIVE_INFINITY])]]), 1),
    /"inf" holds a non-finite value \(-Infinity\) at index 1/,
  );
  assert.throws(() => clipGradNorm(new Map([['a', ok]]), 0), /maxNorm/);
  assert.throws(() => clipGradNorm(new Map([['a', ok]]), Number.NaN), /maxNorm/);
});
