import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dropCapacity, drawDropPositions, mulberry32 } from '../src/random.js';

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

test('drawDropPositions: increasing positions, padded with n; about n·p drops; gaps geometric; deterministic', () => {
  const n = 200_000;
  for (const p of [0.05, 0.3]) {
    const out = new Int32Array(dropCapacity(n, p));
    const count = drawDropPositions(mulberry32(3), n, p, out);
    const again = new Int32Array(out.length);
    assert.equal(drawDropPositions(mulberry32(3), n, p, again), count);
    assert.deepEqual(again, out, 'same stream, same positions');
    for (let i = 1; i < count; i++) assert.ok(out[i]! > out[i - 1]!, `increasing at ${i}`);
    assert.ok(out[0]! >= 0 && out[count - 1]! < n);
    for (let i = count; i < out.length; i++) assert.equal(out[i], n, 'padding');
    // Binomial(n, p): within 5 standard deviations of n·p.
    const sd = Math.sqrt(n * p * (1 - p));
    assert.ok(Math.abs(count - n * p) < 5 * sd, `p ${p}: ${count} drops, expected ${n * p} ± ${sd.toFixed(0)}`);
    // Independence: a drop is followed by a drop (gap 0) with probability p, by a gap of >= 10 with (1-p)^10.
    let next = 0;
    let long = 0;
    for (let i = 1; i < count; i++) {
      const gap = out[i]! - out[i - 1]! - 1;
      if (gap === 0) next++;
      if (gap >= 10) long++;
    }
    const pairs = count - 1;
    const within = (got: number, q: number, what: string): void =>
      assert.ok(Math.abs(got - pairs * q) < 5 * Math.sqrt(pairs * q * (1 - q)), `p ${p}: ${what} ${got} of ${pairs}`);
    within(next, p, 'adjacent drops');
    within(long, (1 - p) ** 10, 'gaps >= 10');
  }
});

test('drawDropPositions: capacity covers 8 standard deviations; a full buffer is an error, not a silent cut', () => {
  assert.equal(dropCapacity(10, 0.5), 10, 'never more than n');
  assert.ok(dropCapacity(1e6, 0.05) >= 1e6 * 0.05 + 8 * Math.sqrt(1e6 * 0.05 * 0.95));
  assert.throws(() => drawDropPositions(mulberry32(1), 1000, 0.5, new Int32Array(10)), /more than 10 drops among 1000/);
  assert.throws(() => dropCapacity(10, 0), /not in \(0, 1\)/);
});
