import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mulberry32 } from '../src/random.js';

test('mulberry32: same seed, same stream; known first values', () => {
  const a = mulberry32(42);
  const b = mulberry32(42);
  const xs = Array.from({ length: 5 }, () => a());
  assert.deepEqual(
    xs,
    Array.from({ length: 5 }, () => b()),
  );
  for (const x of xs) assert.ok(x >= 0 && x < 1);
  assert.notDeepEqual(xs, Array.from({ length: 5 }, mulberry32(43)));
});

test('fillMask draws exactly what n calls draw, and leaves the stream where n calls would', () => {
  const p = 0.3;
  const keep = 1 / (1 - p);
  const scalar = mulberry32(7);
  const filled = mulberry32(7);
  for (const n of [1, 1000, 65_537]) {
    const want = Float32Array.from({ length: n }, () => (scalar() < p ? 0 : keep));
    const got = new Float32Array(n);
    filled.fillMask(got, p, keep);
    assert.deepEqual(got, want, `mask of ${n}`);
  }
  assert.equal(filled(), scalar(), 'the streams continue in step');
  // About a fraction p dropped.
  const big = new Float32Array(100_000);
  mulberry32(1).fillMask(big, p, keep);
  const dropped = big.reduce((c, v) => c + (v === 0 ? 1 : 0), 0) / big.length;
  assert.ok(Math.abs(dropped - p) < 0.01, `dropped ${dropped}`);
});
