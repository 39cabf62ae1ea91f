import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DatasetError, PartitionError } from '../src/errors.js';
import {
  labelsOf,
  largestRemainder,
  partitionByField,
  partitionDirichlet,
  partitionIid,
  selectShards,
  trainTestSplit,
} from '../src/partition.js';
import { createRng, sampleDirichlet } from '../src/rng.js';
import type { Example, Partition } from '../src/types.js';

function assertCovers(p: Partition, n: number): void {
  const all = p.flatMap((s) => s.indices);
  assert.equal(all.length, n, 'every example in exactly one shard');
  assert.deepEqual(
    [...new Set(all)].toSorted((a, b) => a - b),
    Array.from({ length: n }, (_, i) => i),
  );
  for (const s of p)
    assert.deepEqual(
      [...s.indices],
      [...s.indices].toSorted((a, b) => a - b),
      `${s.id} ascending`,
    );
}

/** Mean over clients of the total-variation distance between the client's label distribution and the global one. */
function meanLabelTv(p: Partition, labels: readonly string[]): number {
  const classes = [...new Set(labels)];
  const global = classes.map((c) => labels.filter((l) => l === c).length / labels.length);
  const tvs = p.map((s) => {
    const local = classes.map((c) => s.indices.filter((i) => labels[i] === c).length / s.indices.length);
    return 0.5 * local.reduce((acc, x, k) => acc + Math.abs(x - global[k]!), 0);
  });
  return tvs.reduce((a, b) => a + b, 0) / tvs.length;
}

test('rng: Gamma samples (Marsaglia-Tsang) have mean k and variance k; uniform ints are unbiased', () => {
  for (const k of [0.3, 1, 2.5, 9]) {
    const rng = createRng(11);
    const n = 40_000;
    const xs = Array.from({ length: n }, () => Math.exp(rng.logGamma(k)));
    const mean = xs.reduce((a, b) => a + b, 0) / n;
    const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1);
    // Standard error of the mean is sqrt(k/n); 5 sigma keeps this deterministic test far from flaky.
    assert.ok(Math.abs(mean - k) < 5 * Math.sqrt(k / n), `Gamma(${k}) mean ${mean}`);
    assert.ok(Math.abs(variance - k) / k < 0.08, `Gamma(${k}) variance ${variance}`);
  }
  const rng = createRng(3);
  const counts = Array.from({ length: 7 }, () => 0);
  for (let i = 0; i < 70_000; i++) counts[rng.int(7)]!++;
  const chi2 = counts.reduce((a, c) => a + (c - 10_000) ** 2 / 10_000, 0);
  assert.ok(chi2 < 22.5, `chi-square ${chi2} (6 dof, p=0.001 critical value 22.46)`);
  const d = sampleDirichlet([0.001, 0.001, 0.001], createRng(5));
  assert.ok(
    Math.abs(d.reduce((a, b) => a + b, 0) - 1) < 1e-12 && d.every((x) => Number.isFinite(x)),
    'tiny alpha stays finite',
  );
  assert.deepEqual(
    Array.from({ length: 5 }, () => 0).map(
      (
        (r) => () =>
          r.nextUint32()
      )(createRng(42)),
    ),
    Array.from({ length: 5 }, () => 0).map(
      (
        (r) => () =>
          r.nextUint32()
      )(createRng(42)),
    ),
  );
});

test('largestRemainder: exact totals, larger remainders first', () => {
  assert.deepEqual(largestRemainder([0.5, 0.3, 0.2], 7), [4, 2, 1]); // 3.5, 2.1, 1.4 -> 3,2,1 + 1 to the .5
  assert.deepEqual(largestRemainder([1 / 3, 1 / 3, 1 / 3], 10), [4, 3, 3]);
});

test('iid: near-equal shares, full cover, reproducible with a seed, different with another', () => {
  const p = partitionIid(10, 3, 1);
  assert.deepEqual(
    p.map((s) => s.indices.length),
    [4, 3, 3],
  );
  assert.deepEqual(
    p.map((s) => s.id),
    ['client-0', 'client-1', 'client-2'],
  );
  assertCovers(p, 10);
  assert.deepEqual(partitionIid(10, 3, 1), p);
  assert.notDeepEqual(partitionIid(10, 3, 2), p);
  assert.throws(() => partitionIid(2, 3, 0), PartitionError);
});

test('dirichlet: tiny alpha is skewed, large alpha near-uniform (mean label TV distance), full cover', () => {
  const labels = Array.from({ length: 1000 }, (_, i) => 'abcd'.charAt(i % 4));
  for (const seed of [1, 2, 3]) {
    const skewed = partitionDirichlet(labels, 4, 0.05, seed);
    const uniform = partitionDirichlet(labels, 4, 1000, seed);
    assertCovers(skewed, 1000);
    assertCovers(uniform, 1000);
    const tvSkewed = meanLabelTv(skewed, labels);
    const tvUniform = meanLabelTv(uniform, labels);
    // alpha=0.05: each label goes almost entirely to one client, so a client's distribution is far from
    // uniform (TV 0.75 for a single-label client). alpha=1000: shares are 0.25 +- 0.008 per label.
    assert.ok(tvSkewed > 0.4, `alpha 0.05 seed ${seed}: TV ${tvSkewed}`);
    assert.ok(tvUniform < 0.05, `alpha 1000 seed ${seed}: TV ${tvUniform}`);
    const sizes = uniform.map((s) => s.indices.length);
    assert.ok(Math.max(...sizes) - Math.min(...sizes) < 60, `near-equal sizes at large alpha: ${sizes}`);
  }
  assert.deepEqual(partitionDirichlet(labels, 4, 0.5, 9), partitionDirichlet(labels, 4, 0.5, 9));
  assert.notDeepEqual(partitionDirichlet(labels, 4, 0.5, 9), partitionDirichlet(labels, 4, 0.5, 10));
});

test('dirichlet: a partition that cannot give every client data is reported, not returned', () => {
  const labels = Array.from({ length: 40 }, (_, i) => (i % 2 ? 'x' : 'y'));
  assert.throws(
    () => partitionDirichlet(labels, 10, 0.001, 1, { maxAttempts: 20 }),
    (e: unknown) =>
      e instanceof PartitionError && /after 20 draws .* fewer than 1 examples \(last draw sizes: /.test(e.message),
  );
  const p = partitionDirichlet(labels, 3, 0.3, 4, { minPerClient: 5 });
  assert.ok(p.every((s) => s.indices.length >= 5));
});

test('by-field: one client per value, or values merged greedily into N clients', () => {
  const labels = ['b', 'a', 'b', 'c', 'a', 'a'];
  assert.deepEqual(partitionByField(labels), [
    { id: 'a', indices: [1, 4, 5] },
    { id: 'b', indices: [0, 2] },
    { id: 'c', indices: [3] },
  ]);
  const sized = [
    ...Array.from({ length: 50 }, () => 'a'),
    ...Array.from({ length: 40 }, () => 'b'),
    ...Array.from({ length: 30 }, () => 'c'),
    ...Array.from({ length: 20 }, () => 'd'),
    ...Array.from({ length: 10 }, () => 'e'),
  ];
  // Greedy: a(50)->0, b(40)->1, c(30)->1 (40<50), d(20)->0 (50<70), e(10)->0 (70=70, tie to the lower client).
  const merged = partitionByField(sized, { numClients: 2 });
  assert.deepEqual(
    merged.map((s) => [s.id, s.indices.length]),
    [
      ['a+d+e', 80],
      ['b+c', 70],
    ],
  );
  assertCovers(merged, sized.length);
  assert.throws(() => partitionByField(labels, { numClients: 4 }), /4 clients but only 3 distinct values/);
});

test('trainTestSplit: exact sizes, disjoint, stratified keeps label shares, reproducible', () => {
  const items = Array.from({ length: 100 }, (_, i) => `ex${i}`);
  const s = trainTestSplit(items, 0.2, 1);
  assert.equal(s.test.length, 20);
  assert.equal(s.train.length, 80);
  assert.equal(new Set([...s.trainIndices, ...s.testIndices]).size, 100);
  assert.deepEqual(
    s.test,
    s.testIndices.map((i) => items[i]),
  );
  assert.deepEqual(trainTestSplit(items, 0.2, 1), s);
  assert.notDeepEqual(trainTestSplit(items, 0.2, 2).testIndices, s.testIndices);
  const labels = items.map((_, i) => (i < 70 ? 'A' : 'B'));
  const st = trainTestSplit(items, 0.2, 3, { stratify: labels });
  assert.equal(st.testIndices.filter((i) => labels[i] === 'A').length, 14);
  assert.equal(st.testIndices.filter((i) => labels[i] === 'B').length, 6);
  assert.throws(() => trainTestSplit(items, 1, 0), RangeError);
  assert.throws(() => trainTestSplit(['x'], 0.3, 0), PartitionError);
});

const textAt = (line: number, extra: Example['extra']): Example => ({
  format: 'text',
  text: 't',
  extra,
  source: { file: 'd.jsonl', line },
});

test('labelsOf reads an extra field and reports every example without it; selectShards maps indices', () => {
  const examples = [
    textAt(1, { category: 'qa' }),
    textAt(2, { category: 3 }),
    textAt(3, {}),
    textAt(4, { category: { x: 1 } }),
  ];
  assert.throws(
    () => labelsOf(examples, 'category'),
    (e: unknown) =>
      e instanceof DatasetError &&
      e.issues.map((i) => i.line).join() === '3,4' &&
      e.message.includes('d.jsonl:3: missing label field "category"'),
  );
  assert.deepEqual(labelsOf(examples.slice(0, 2), 'category'), ['qa', '3']);
  assert.deepEqual(selectShards(['x', 'y', 'z'], [{ id: 'c', indices: [2, 0] }]), [{ id: 'c', items: ['z', 'x'] }]);
});
