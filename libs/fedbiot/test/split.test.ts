import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FEDBIOT_ADAPTER, OFFSITE_TUNING_ADAPTER, keptLayerIndices, roundHalfEven, splitModel } from '../src/split.js';
import { SplitConfigError } from '../src/errors.js';

// Independent oracle: Python's round() is round-half-even on the exact double; here via the decimal expansion of the
// double (toFixed(20) is exact enough to see whether the fraction is below, at or above one half for these sizes).
function pyRound(x: number): number {
  const [intPart, fracPart = ''] = x.toFixed(20).split('.');
  const i = Number(intPart);
  const half = '5'.padEnd(20, '0');
  if (fracPart > half) return i + 1;
  if (fracPart < half) return i;
  return i % 2 === 0 ? i : i + 1;
}
function oracle(n: number, beta: number): number[] {
  const m = Math.max(1, pyRound(n * (1 - beta)));
  if (m === 1) return [0];
  const out: number[] = [];
  // Exact rational floor with BigInt, independent of the implementation's Number arithmetic.
  for (let i = 0; i < m; i++) out.push(Number((BigInt(i) * BigInt(n - 1)) / BigInt(m - 1)));
  return out;
}
const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);

test('roundHalfEven matches Python round() on ties and near-ties', () => {
  assert.equal(roundHalfEven(2.5), 2);
  assert.equal(roundHalfEven(3.5), 4);
  assert.equal(roundHalfEven(7.5), 8);
  assert.equal(roundHalfEven(4.5), 4);
  assert.equal(roundHalfEven(0.5), 0);
  assert.equal(roundHalfEven(2.4999999999999996), 2);
  assert.equal(roundHalfEven(10 * (1 - 0.15)), 8); // 8.499999999999998 in IEEE doubles, as in Python
  assert.equal(roundHalfEven(24.000000000000004), 24);
});

// docs/fedbiot-algorithm.md §1.2, LLaMA-2-7B (32 layers), all six rows.
const TABLE: {
  name: string;
  bottom: number;
  top: number;
  beta: number;
  kept: number[];
  adapter: number[];
  total: number;
}[] = [
  {
    name: 'FedBiOT adpt2 b=0.2',
    bottom: 0,
    top: 2,
    beta: 0.2,
    kept: [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18, 20, 21, 22, 23, 25, 26, 27, 29],
    adapter: [30, 31],
    total: 26,
  },
  {
    name: 'FedBiOT adpt2 b=0.5',
    bottom: 0,
    top: 2,
    beta: 0.5,
    kept: [...range(0, 14).map((i) => 2 * i), 29],
    adapter: [30, 31],
    total: 17,
  },
  {
    name: 'FedBiOT adpt4 b=0.2',
    bottom: 0,
    top: 4,
    beta: 0.2,
    kept: [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 18, 19, 20, 21, 23, 24, 25, 27],
    adapter: [28, 29, 30, 31],
    total: 26,
  },
  {
    name: 'FedBiOT adpt4 b=0.5',
    bottom: 0,
    top: 4,
    beta: 0.5,
    kept: [...range(0, 13).map((i) => 2 * i), 27],
    adapter: [28, 29, 30, 31],
    total: 18,
  },
  {
    name: 'OT/FedOT b=0.2',
    bottom: 2,
    top: 2,
    beta: 0.2,
    kept: [2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 20, 21, 22, 23, 25, 26, 27, 29],
    adapter: [0, 1, 30, 31],
    total: 26,
  },
  {
    name: 'OT/FedOT b=0.5',
    bottom: 2,
    top: 2,
    beta: 0.5,
    kept: [...range(1, 14).map((i) => 2 * i), 29],
    adapter: [0, 1, 30, 31],
    total: 18,
  },
];

for (const row of TABLE) {
  test(`splitModel reproduces the reference table: ${row.name}`, () => {
    const s = splitModel({ numLayers: 32, adapterBottom: row.bottom, adapterTop: row.top, dropRate: row.beta });
    assert.deepEqual(s.emulatorLayers, row.kept);
    assert.deepEqual(s.adapterLayers, row.adapter);
    assert.equal(s.clientLayers.length, row.total);
    assert.deepEqual(s.teacher, { start: row.bottom, end: 32 - row.top });
    assert.deepEqual(s.clientLayers, [...range(0, row.bottom), ...row.kept, ...range(32 - row.top, 32)]);
    assert.deepEqual(
      s.emulatorToTeacher,
      row.kept.map((k) => k - row.bottom),
    );
  });
}

test('keptLayerIndices matches the exact formula on other sizes (incl. half-even ties)', () => {
  const cases: [number, number, number[]][] = [
    [5, 0.5, [0, 4]], // 2.5 -> 2 (half-up would keep 3)
    [9, 0.5, [0, 2, 5, 8]], // 4.5 -> 4
    [10, 0.25, [0, 1, 2, 3, 5, 6, 7, 9]], // 7.5 -> 8
    [3, 0.5, [0, 2]], // 1.5 -> 2
    [7, 0.5, [0, 2, 4, 6]],
    [22, 0.3, [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21]],
  ];
  for (const [n, beta, want] of cases) {
    assert.deepEqual(keptLayerIndices(n, beta), want, `n=${n} beta=${beta}`);
    assert.deepEqual(oracle(n, beta), want, `oracle n=${n} beta=${beta}`);
  }
  for (let n = 1; n <= 64; n++) {
    for (const beta of [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 1 / 3, 0.37, 0.5, 0.6, 0.75, 0.9, 0.99]) {
      const got = keptLayerIndices(n, beta);
      assert.deepEqual(got, oracle(n, beta), `n=${n} beta=${beta}`);
      assert.equal(got[0], 0);
      if (got.length > 1) assert.equal(got[got.length - 1], n - 1, `last layer kept n=${n} beta=${beta}`);
      assert.ok(
        got.every((v, i) => i === 0 || v > got[i - 1]!),
        'strictly ascending, no duplicates',
      );
    }
  }
});

test('keptLayerIndices keeps the block last layer where the reference float stride would lose it', () => {
  // Reference: int(13 * (15/13)) = int(14.999999999999998) = 14, so layer 15 is dropped there.
  assert.equal(Math.trunc(13 * (15 / 13)), 14);
  const got = keptLayerIndices(16, 0.1);
  assert.equal(got.length, 14);
  assert.equal(got[13], 15);
});

test('keptLayerIndices edge cases: beta=0 keeps all, m<=1 keeps the first layer, bad values name the field', () => {
  assert.deepEqual(keptLayerIndices(6, 0), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(keptLayerIndices(1, 0.2), [0]);
  assert.deepEqual(keptLayerIndices(2, 0.5), [0]); // m = round(1.0) = 1: the reference divides by zero
  assert.deepEqual(keptLayerIndices(4, 0.9), [0]); // m = round(0.4) = 0, clamped to one layer
  assert.throws(
    () => keptLayerIndices(4, 1),
    (e: unknown) => e instanceof SplitConfigError && e.field === 'dropRate',
  );
  assert.throws(() => keptLayerIndices(4, -0.1), /dropRate/);
  assert.throws(() => keptLayerIndices(4, Number.NaN), /dropRate/);
  assert.throws(
    () => keptLayerIndices(0, 0.2),
    (e: unknown) => e instanceof SplitConfigError && e.field === 'n',
  );
  assert.throws(() => keptLayerIndices(2.5, 0.2), /split: n:/);
});

test('FedBiOT and FedOT are two configurations of one split function on a small model', () => {
  const fb = splitModel({ numLayers: 8, ...FEDBIOT_ADAPTER, dropRate: 0.2 });
  // Teacher 0..5 (6 layers), m = round(4.8) = 5, floor(i * 5/4) = 0,1,2,3,5.
  assert.deepEqual(fb.emulatorLayers, [0, 1, 2, 3, 5]);
  assert.deepEqual(fb.adapterBottomLayers, []);
  assert.deepEqual(fb.adapterTopLayers, [6, 7]);
  assert.deepEqual(fb.clientLayers, [0, 1, 2, 3, 5, 6, 7]);

  const ot = splitModel({ numLayers: 8, ...OFFSITE_TUNING_ADAPTER, dropRate: 0.5 });
  // Teacher 2..5 (4 layers), m = 2, keep 0 and 3 of the block.
  assert.deepEqual(ot.teacher, { start: 2, end: 6 });
  assert.deepEqual(ot.emulatorToTeacher, [0, 3]);
  assert.deepEqual(ot.emulatorLayers, [2, 5]);
  assert.deepEqual(ot.adapterLayers, [0, 1, 6, 7]);
  assert.deepEqual(ot.clientLayers, [0, 1, 2, 5, 6, 7]);
});

test('splitModel rejects impossible configurations, naming the field', () => {
  const field = (f: string) => (e: unknown) => e instanceof SplitConfigError && e.field === f;
  assert.throws(
    () => splitModel({ numLayers: 4, adapterBottom: 2, adapterTop: 2, dropRate: 0.2 }),
    field('adapterTop'),
  );
  assert.throws(() => splitModel({ numLayers: 4, adapterBottom: 0, adapterTop: 0, dropRate: 0.2 }), /adapter is empty/);
  assert.throws(
    () => splitModel({ numLayers: 4, adapterBottom: -1, adapterTop: 2, dropRate: 0.2 }),
    field('adapterBottom'),
  );
  assert.throws(
    () => splitModel({ numLayers: 4, adapterBottom: 0, adapterTop: 1.5, dropRate: 0.2 }),
    field('adapterTop'),
  );
  assert.throws(() => splitModel({ numLayers: 1, adapterBottom: 0, adapterTop: 1, dropRate: 0.2 }), field('numLayers'));
  assert.throws(() => splitModel({ numLayers: 8, adapterBottom: 0, adapterTop: 2, dropRate: 1.2 }), field('dropRate'));
});
