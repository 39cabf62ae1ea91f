/**
 * halfLinear (frozen float16/bfloat16 weights) against linear on the same weights widened to float32, and the
 * LossScaler's rule.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Graph,
  LossScaler,
  encodeModel,
  float32ArrayTo,
  gradients,
  halfLinear,
  linear,
  openRunner,
  toFloat32,
  ops as O,
  type HalfCompute,
  type HostTensor,
} from '../src/index.js';
import { rng } from '../../../test/support/rng.js';

const [B, T, IN, OUT] = [2, 3, 8, 5];
const next = rng(7);
const wf32 = Float32Array.from({ length: OUT * IN }, () => next() - 0.5);
const xv = Float32Array.from({ length: B * T * IN }, () => next() * 2 - 1);
const rv = Float32Array.from({ length: B * T * OUT }, () => next() * 2 - 1);
const bv = Float32Array.from({ length: OUT }, () => next() - 0.5);

/**
 * loss = sum(R * (x Wᵀ + b)) and its gradients for x and b. W is rounded to `st`, then given in that half dtype
 * (`half`) or widened back to float32 (not `half`).
 */
async function run(st: 'F16' | 'BF16', half: boolean, compute: HalfCompute): Promise<Float32Array[]> {
  const dtype = st === 'F16' ? 'float16' : 'bfloat16';
  const g = new Graph('half-linear');
  const x = g.input('x', 'float32', [B, T, IN]);
  const r = g.input('r', 'float32', [B, T, OUT]);
  const b = g.input('b', 'float32', [OUT]);
  const halfBits = float32ArrayTo(st, wf32);
  const y = !half
    ? linear(x, g.weight('w', 'float32', [OUT, IN], { data: toFloat32(st, halfBits) }), b)
    : halfLinear(x, g.weight('w', dtype, [OUT, IN], { data: halfBits }), compute, b);
  const loss = O.sumAll(O.mul(y, r));
  const [gx, gb] = gradients(loss, [x, b]);
  g.output(loss, 'loss');
  g.output(gx!, 'gx');
  g.output(gb!, 'gb');
  const runner = await openRunner(
    { bytes: encodeModel(g.toIr()) },
    { thread: 'main', intraOpNumThreads: 1, keepHalfWeights: half && compute === 'float32' },
  );
  try {
    const feeds: Record<string, HostTensor> = {
      x: { dtype: 'float32', shape: [B, T, IN], data: xv },
      r: { dtype: 'float32', shape: [B, T, OUT], data: rv },
      b: { dtype: 'float32', shape: [OUT], data: bv },
    };
    const out = await runner.run(feeds);
    return ['loss', 'gx', 'gb'].map((n) => out[n]!.data as Float32Array);
  } finally {
    await runner.release();
  }
}

for (const st of ['F16', 'BF16'] as const) {
  test(`halfLinear (${st}, float32 compute): loss and gradients equal linear on the widened weight`, async () => {
    const ref = await run(st, false, 'float32');
    const half = await run(st, true, 'float32');
    // The same float32 Gemms on the same values: identical.
    half.forEach((v, i) => assert.deepEqual(v, ref[i]));
  });
}

test('halfLinear (float16 compute): x rounded to float16 at the matmul; within float16 precision of float32', async () => {
  const ref = await run('F16', false, 'float32');
  const half = await run('F16', true, 'float16');
  for (let k = 1; k < 3; k++) {
    let num = 0;
    let den = 0;
    for (let i = 0; i < ref[k]!.length; i++) {
      num += (half[k]![i]! - ref[k]![i]!) ** 2;
      den += ref[k]![i]! ** 2;
    }
    // x̄ and b̄ (the scalar loss cancels too much for a relative check): x̄ = R W in float16 has R rounded to
    // float16 (2^-11 = 4.9e-4 relative); b̄ = sum(R) stays float32. Bound 2e-3; a bug would be O(1).
    assert.ok(Math.sqrt(num / den) < 2e-3, `output ${k}: ${Math.sqrt(num / den)}`);
  }
});

test('each float32 copy of a half weight is made right before its Gemm, not all at the start (forward and backward)', async () => {
  // The memory claim of halfLinear: onnxruntime's CPU provider runs nodes that depend only on initializers first, so
  // without orderedAfter every weight's float32 copy would be alive at once. Checked in the profiler's node order.
  const L = 4;
  const g = new Graph('half-order');
  const x0 = g.input('x', 'float32', [B, T, IN]);
  let x = x0;
  for (let l = 0; l < L; l++) {
    const w = g.weight(`w${l}`, 'float16', [IN, IN], {
      data: float32ArrayTo(
        'F16',
        Float32Array.from({ length: IN * IN }, () => next() - 0.5),
      ),
    });
    x = O.tanh(halfLinear(x, w, 'float32'));
  }
  const loss = O.sumAll(x);
  g.output(loss, 'loss');
  g.output(gradients(loss, [x0])[0]!, 'gx');
  const dir = mkdtempSync(join(tmpdir(), 'half-order-'));
  try {
    const runner = await openRunner(
      { bytes: encodeModel(g.toIr()) },
      { thread: 'main', intraOpNumThreads: 1, keepHalfWeights: true, profileFilePrefix: join(dir, 'p') },
    );
    await runner.run({ x: { dtype: 'float32', shape: [B, T, IN], data: xv } });
    await runner.release();
    const trace = readdirSync(dir).find((f) => f.endsWith('.json'))!;
    const ops = (
      JSON.parse(readFileSync(join(dir, trace), 'utf8')) as { cat: string; name: string; args: { op_name?: string } }[]
    )
      .filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'))
      .map((e) => e.args.op_name!);
    const casts = ops.map((op, i) => (op === 'Cast' ? i : -1)).filter((i) => i >= 0);
    assert.equal(casts.length, 2 * L, `one cast per forward and per backward Gemm: ${ops.join(' ')}`);
    // Between two casts there is always a Gemm (the first cast's consumer): never two float32 copies pending.
    for (let k = 1; k < casts.length; k++)
      assert.ok(ops.slice(casts[k - 1]!, casts[k]!).includes('Gemm'), `casts back to back: ${ops.join(' ')}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('LossScaler: overflow halves the scale, growthInterval finite steps double it, below minScale throws', () => {
  const s = new LossScaler({ init: 8, growthInterval: 2, minScale: 2 });
  s.update(true);
  assert.equal(s.scale, 8);
  s.update(true);
  assert.equal(s.scale, 16);
  s.update(false);
  assert.equal(s.scale, 8);
  s.update(true);
  s.update(false); // an overflow resets the run of finite steps
  s.update(true);
  assert.equal(s.scale, 4);
  s.update(false);
  assert.equal(s.scale, 2);
  assert.throws(() => s.update(false), /overflow even at loss scale 2/);
});
