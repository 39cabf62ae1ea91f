import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FedAvgAccumulator,
  aggregationWeights,
  assertUpdates,
  checkUpdate,
  fedAvg,
  type ClientUpdate,
} from '../src/aggregate.js';
import { AggregationError, UpdateRejectedError } from '../src/errors.js';

const A = 'base_model.model.model.layers.6.self_attn.q_proj.lora_A.weight';
const B = 'base_model.model.model.layers.6.self_attn.q_proj.lora_B.weight';

function upd(clientId: string, a: number[], b: number[], tokens: number, examples: number): ClientUpdate {
  return {
    clientId,
    tensors: new Map([
      [A, Float32Array.from(a)],
      [B, Float32Array.from(b)],
    ]),
    tokens,
    examples,
  };
}

// Hand-worked: client x (weight 1) and y (weight 2) -> (1*x + 2*y) / 3 for every element, A and B separately.
const x = upd('x', [3, 0, -3], [1, 2], 100, 2);
const y = upd('y', [0, 3, 6], [4, 5], 200, 6);

test('fedAvg by tokens: weights 1 and 2 -> /3, tensor by tensor', () => {
  const out = fedAvg([x, y], { weighting: 'tokens' });
  assert.deepEqual([...out.get(A)!], [1, 2, 3]); // (3+0)/3, (0+6)/3, (-3+12)/3
  assert.deepEqual([...out.get(B)!], [3, 4]); // (1+8)/3, (2+10)/3
  assert.deepEqual([...out.keys()].toSorted(), [A, B]);
});

test('fedAvg by examples (2 and 6 -> 1/4, 3/4) and uniform (1/2, 1/2)', () => {
  const ex = fedAvg([x, y], { weighting: 'examples' });
  assert.deepEqual([...ex.get(A)!], [0.75, 2.25, 3.75]);
  assert.deepEqual([...ex.get(B)!], [3.25, 4.25]);
  const un = fedAvg([x, y], { weighting: 'uniform' });
  assert.deepEqual([...un.get(A)!], [1.5, 1.5, 1.5]);
  assert.deepEqual([...un.get(B)!], [2.5, 3.5]);
  assert.deepEqual(aggregationWeights([x, y], 'tokens'), [1 / 3, 2 / 3]);
});

test('fedAvg never mutates its inputs and returns fresh arrays', () => {
  const before = [x, y].map((u) => [...u.tensors].map(([k, v]) => [k, [...v]]));
  const out = fedAvg([x, y], { weighting: 'tokens' });
  assert.deepEqual(
    [x, y].map((u) => [...u.tensors].map(([k, v]) => [k, [...v]])),
    before,
  );
  for (const u of [x, y]) for (const [k, v] of u.tensors) assert.notEqual(out.get(k)!.buffer, v.buffer);
  const single = fedAvg([x], { weighting: 'uniform' });
  assert.notEqual(single.get(A), x.tensors.get(A));
  assert.deepEqual([...single.get(A)!], [3, 0, -3]);
});

test('fedAvg accumulates in float64: small terms after a large one are not lost as in a float32 sum', () => {
  // One client at 2^24, then 1000 clients at 1. In a float32 running sum 2^24 + 1 rounds back to 2^24 every time,
  // giving 2^24 / 1001 = 16760.445; the float64 sum keeps them: (2^24 + 1000) / 1001 = 16761.444.
  const ups: ClientUpdate[] = [
    { clientId: 'big', tensors: new Map([[A, Float32Array.of(2 ** 24)]]), tokens: 1, examples: 1 },
  ];
  for (let i = 0; i < 1000; i++)
    ups.push({ clientId: `c${i}`, tensors: new Map([[A, Float32Array.of(1)]]), tokens: 1, examples: 1 });
  const got = fedAvg(ups, { weighting: 'uniform' }).get(A)![0];
  assert.equal(got, Math.fround((2 ** 24 + 1000) / 1001));
  assert.ok(Math.abs(got - 2 ** 24 / 1001) > 0.9);
});

test('FedAvgAccumulator gives the same result in streaming order and rejects duplicates and mismatches', () => {
  const acc = new FedAvgAccumulator('tokens');
  acc.add(y);
  acc.add(x);
  assert.deepEqual([...acc.result().get(A)!], [1, 2, 3]);
  assert.deepEqual(acc.clientIds, ['y', 'x']);
  assert.throws(() => acc.add(x), /client x: .*second update/);
  const missing: ClientUpdate = {
    clientId: 'z',
    tensors: new Map([[A, Float32Array.of(1, 2, 3)]]),
    tokens: 1,
    examples: 1,
  };
  assert.throws(
    () => acc.add(missing),
    (e: unknown) => e instanceof UpdateRejectedError && e.problems[0]?.tensor === B && e.problems[0].kind === 'missing',
  );
  const wrongLen = upd('w', [1, 2], [1, 2], 1, 1);
  assert.throws(
    () => fedAvg([x, wrongLen], { weighting: 'uniform' }),
    new RegExp(`client w: tensor ${A.replace(/\./g, '\\.')}: has 2 elements`),
  );
});

test('fedAvg errors: empty input, zero total weight, negative or NaN counts', () => {
  assert.throws(() => fedAvg([], { weighting: 'tokens' }), AggregationError);
  assert.throws(
    () => fedAvg([upd('a', [1, 1, 1], [1, 1], 0, 3), upd('b', [1, 1, 1], [1, 1], 0, 3)], { weighting: 'tokens' }),
    /total tokens weight is 0 over clients a, b/,
  );
  assert.throws(
    () => fedAvg([upd('a', [1, 1, 1], [1, 1], -5, 3)], { weighting: 'tokens' }),
    /client a: tokens must be a finite number >= 0, got -5/,
  );
  assert.throws(
    () => fedAvg([upd('a', [1, 1, 1], [1, 1], 1, Number.NaN)], { weighting: 'examples' }),
    UpdateRejectedError,
  );
  // A zero-weight client is fine when others carry weight: it simply does not count.
  const out = fedAvg([x, upd('idle', [99, 99, 99], [99, 99], 0, 0)], { weighting: 'tokens' });
  assert.deepEqual([...out.get(A)!], [3, 0, -3]);
});

const reference = new Map([
  [A, { shape: [1, 3] }],
  [B, { shape: [2, 1] }],
]);

test('checkUpdate accepts a good update and reports NaN with its index and the tensor name', () => {
  assert.deepEqual(checkUpdate(x, reference, { maxNorm: 10 }), []);
  const nan = upd('c7', [0, Number.NaN, Number.POSITIVE_INFINITY], [1, 2], 1, 1);
  const p = checkUpdate(nan, reference, { maxNorm: 10 });
  assert.equal(p.length, 1);
  const [q] = p;
  assert.ok(q);
  assert.deepEqual({ c: q.clientId, t: q.tensor, k: q.kind }, { c: 'c7', t: A, k: 'non-finite' });
  assert.match(q.message, /2 non-finite values, first at index 1 \(NaN\)/);
});

test('checkUpdate reports shape, missing and extra tensors together', () => {
  const bad: ClientUpdate = {
    clientId: 'c2',
    tensors: new Map([
      [A, Float32Array.of(1, 2)],
      ['model.layers.0.mlp.up_proj.lora_A.weight', Float32Array.of(1)],
    ]),
    tokens: 1,
    examples: 1,
  };
  const p = checkUpdate(bad, reference);
  assert.deepEqual(
    p.map((q) => [q.kind, q.tensor]),
    [
      ['missing', B],
      ['extra', 'model.layers.0.mlp.up_proj.lora_A.weight'],
      ['shape', A],
    ],
  );
  assert.match(p[2]!.message, /has 2 elements, expected shape \[1, 3\] \(3 elements\)/);
});

test('checkUpdate bounds the global L2 norm over all tensors', () => {
  // x: A = [3, 0, -3], B = [1, 2] -> norm sqrt(9 + 9 + 1 + 4) = sqrt(23) = 4.7958
  assert.deepEqual(checkUpdate(x, reference, { maxNorm: 4.8 }), []);
  const p = checkUpdate(x, reference, { maxNorm: 4.79 });
  assert.equal(p.length, 1);
  const [q] = p;
  assert.ok(q);
  assert.equal(q.kind, 'norm');
  assert.equal(q.tensor, undefined);
  assert.match(q.message, /L2 norm 4\.79583 exceeds the bound 4\.79/);
  assert.throws(
    () => assertUpdates([x, y], reference, { maxNorm: 4.79 }),
    (e: unknown) =>
      e instanceof UpdateRejectedError &&
      e.problems.length === 2 &&
      /client x: update L2 norm/.test(e.message) &&
      /client y:/.test(e.message),
  );
});
