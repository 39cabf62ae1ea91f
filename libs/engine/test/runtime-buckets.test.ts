import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ort } from '../src/runtime/ort.js';
import type { IrModel } from '../src/ir.js';
import { encodeModel } from '../src/onnx/serialize.js';
import {
  assertHostTensor,
  BucketCache,
  fromOrtTensor,
  hostTensor,
  openRunner,
  pickBucket,
  toOrtTensor,
  type ModelRunner,
} from '../src/runtime/index.js';

test('pickBucket picks the smallest bucket that fits, in any order', () => {
  const buckets = [512, 128, 256];
  assert.equal(pickBucket(0, buckets), 128);
  assert.equal(pickBucket(1, buckets), 128);
  assert.equal(pickBucket(128, buckets), 128);
  assert.equal(pickBucket(129, buckets), 256);
  assert.equal(pickBucket(256, buckets), 256);
  assert.equal(pickBucket(512, buckets), 512);
  assert.equal(pickBucket(7, [7]), 7);
  assert.equal(pickBucket(3, [8, 8, 4]), 4);
});

test('pickBucket errors name the length and the largest bucket', () => {
  assert.throws(() => pickBucket(513, [128, 512, 256]), /length 513 exceeds the largest bucket \(512\)/);
  assert.throws(() => pickBucket(1, []), /no buckets/);
  assert.throws(() => pickBucket(-1, [8]), /non-negative integer, got -1/);
  assert.throws(() => pickBucket(2.5, [8]), /non-negative integer, got 2.5/);
  assert.throws(() => pickBucket(1, [8, 0]), /positive integers, got 0/);
});

test('BucketCache builds once per key, shares concurrent builds, retries failures, releases all once', async () => {
  const built: string[] = [];
  const released: string[] = [];
  let failNext = true;
  const cache = new BucketCache<readonly [number, number], { id: string }>({
    build: async ([b, t]) => {
      await new Promise((r) => setTimeout(r, 5));
      if (b === 9 && failNext) {
        failNext = false;
        throw new Error('transient');
      }
      built.push(`${b}x${t}`);
      return { id: `${b}x${t}` };
    },
    release: (v) => void released.push(v.id),
  });
  const [a, b, c] = await Promise.all([cache.get([1, 128]), cache.get([1, 128]), cache.get([2, 128])]);
  assert.equal(a, b, 'concurrent gets of one key share one value');
  assert.notEqual(a, c);
  assert.equal(await cache.get([1, 128]), a);
  assert.deepEqual(built, ['1x128', '2x128']);
  await assert.rejects(cache.get([9, 1]), /transient/);
  assert.equal(cache.has([9, 1]), false, 'a failed build is not cached');
  assert.equal((await cache.get([9, 1])).id, '9x1');
  assert.equal(cache.size, 3);
  await cache.releaseAll();
  assert.deepEqual(released.toSorted(), ['1x128', '2x128', '9x1']);
  assert.equal(cache.size, 0);
  await cache.get([1, 128]);
  assert.deepEqual(built, ['1x128', '2x128', '9x1', '1x128'], 'rebuilt after releaseAll');
});

test('BucketCache releaseAll releases every value even when one release fails', async () => {
  const released: number[] = [];
  const cache = new BucketCache<number, number>({
    build: async (k) => k,
    release: (v) => {
      released.push(v);
      if (v === 1) throw new Error('release 1 failed');
    },
  });
  await Promise.all([cache.get(1), cache.get(2), cache.get(3)]);
  await assert.rejects(cache.releaseAll(), /release 1 failed/);
  assert.deepEqual(released.toSorted(), [1, 2, 3]);
});

/** y = ReduceSum(x [1, T]) over the last axis: one static-shape graph per bucket length T. */
function sumModel(t: number): IrModel {
  return {
    name: `sum${t}`,
    opset: 18,
    inputs: [{ name: 'x', dtype: 'float32', shape: [1, t] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [1] }],
    initializers: [{ name: 'axes', dtype: 'int64', shape: [1], raw: new Uint8Array(BigInt64Array.of(1n).buffer) }],
    nodes: [
      {
        opType: 'ReduceSum',
        domain: '',
        name: 'y',
        inputs: ['x', 'axes'],
        outputs: ['y'],
        attributes: { keepdims: { kind: 'int', value: 0 } },
      },
    ],
  };
}

test('one runner per length bucket: padded sequences of different lengths run on their bucket', async () => {
  const buckets = [4, 8];
  const cache = new BucketCache<number, ModelRunner>({
    build: (t) => openRunner({ bytes: encodeModel(sumModel(t)) }, { thread: 'main', intraOpNumThreads: 1 }),
    release: (r) => r.release(),
  });
  try {
    for (const seq of [[1, 2, 3], [1, 2, 3, 4, 5, 6], [10]]) {
      const t = pickBucket(seq.length, buckets);
      const x = new Float32Array(t); // zero padding leaves the sum unchanged
      x.set(seq);
      const runner = await cache.get(t);
      const y = (await runner.run({ x: hostTensor('float32', [1, t], x) }))['y']!.data as Float32Array;
      assert.equal(
        y[0],
        seq.reduce((a, b) => a + b, 0),
      );
    }
    assert.equal(cache.size, 2);
  } finally {
    await cache.releaseAll();
  }
});

test('HostTensor <-> ort.Tensor keeps dtype, shape and data for every I/O dtype', () => {
  const cases = [
    hostTensor('float32', [2], Float32Array.of(1.5, -2)),
    hostTensor('float64', [1, 2], Float64Array.of(Math.PI, -0)),
    hostTensor('float16', [2], Uint16Array.of(0x3c00, 0xc000)),
    hostTensor('int64', [2], BigInt64Array.of(-(2n ** 62n), 7n)),
    hostTensor('int32', [3], Int32Array.of(1, -2, 3)),
    hostTensor('bool', [2, 1], Uint8Array.of(1, 0)),
    hostTensor('uint8', [0], new Uint8Array(0)),
  ];
  for (const h of cases) {
    const o = toOrtTensor(h, h.dtype);
    assert.equal(o.type, h.dtype);
    assert.deepEqual(o.dims, h.shape);
    assert.equal(o.data, h.data, `${h.dtype}: wrapped without a copy`);
    assert.deepEqual(fromOrtTensor(o, h.dtype), h);
  }
  assert.deepEqual(hostTensor('int64', [2, 2]).data, new BigInt64Array(4));
});

test('HostTensor validation names the tensor', () => {
  assert.throws(
    () => hostTensor('float32', [2, 3], new Float32Array(5), 'w'),
    /tensor 'w': shape \[2, 3\] has 6 elements but data has 5/,
  );
  assert.throws(
    () => hostTensor('int64', [2], new Float64Array(2) as never, 'ids'),
    /tensor 'ids': dtype int64 needs a BigInt64Array, got Float64Array/,
  );
  assert.throws(
    () => hostTensor('float32', [2, -1], undefined, 'h'),
    /tensor 'h': shape \[2, -1\] has an invalid dimension -1/,
  );
  assert.throws(() => hostTensor('float8' as never, [1], undefined, 'q'), /tensor 'q': unknown dtype 'float8'/);
  assert.throws(
    () => toOrtTensor(hostTensor('bfloat16', [1]), 'lm_head.weight'),
    /tensor 'lm_head.weight': bfloat16 cannot be a graph input or output/,
  );
  assert.throws(
    () => fromOrtTensor(new ort.Tensor('int8', Int8Array.of(1), [1]), 'q'),
    /tensor 'q': element type 'int8'/,
  );
  assert.doesNotThrow(() => assertHostTensor({ dtype: 'bool', shape: [], data: Uint8Array.of(1) }, 'scalar'));
});
