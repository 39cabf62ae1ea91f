/**
 * The whole engine loop: build a model graph, differentiate it, serialize it, run it in a worker thread on
 * onnxruntime, and update parameters with AdamW. A two-layer MLP learns a 4-class problem.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Graph,
  GraphTrainer,
  gradients,
  linear,
  maskedMeanCrossEntropy,
  openRunner,
  writeModel,
  ops as O,
} from '../src/index.js';
import { rng } from '../../../test/support/rng.js';

test('a small training loop drives the loss down (MLP, AdamW, worker-thread session)', async () => {
  const N = 64;
  const D = 8;
  const H = 16;
  const C = 4;
  const next = rng(42);
  // Class = quadrant of the first two features; the other features are noise.
  const x = Float32Array.from({ length: N * D }, () => next() * 2 - 1);
  const y = BigInt64Array.from({ length: N }, (_, i) => BigInt((x[i * D]! > 0 ? 1 : 0) + (x[i * D + 1]! > 0 ? 2 : 0)));

  const g = new Graph('mlp');
  const xin = g.input('x', 'float32', [N, D]);
  const labels = g.input('y', 'int64', [N]);
  const mask = g.constant(
    Array.from({ length: N }, () => 1),
    'float32',
    [N],
  );
  const w1 = g.input('w1', 'float32', [H, D]);
  const b1 = g.input('b1', 'float32', [H]);
  const w2 = g.input('w2', 'float32', [C, H]);
  const h = O.tanh(linear(xin, w1, b1));
  const loss = maskedMeanCrossEntropy(linear(h, w2), labels, mask);
  const params = [w1, b1, w2];
  const grads = gradients(loss, params);
  g.output(loss, 'loss');
  grads.forEach((gr, i) => g.output(gr!, `grad.${params[i]!.name}`));

  const dir = mkdtempSync(join(tmpdir(), 'train-loop-'));
  const runner = await openRunner(
    { path: writeModel(g.toIr(), join(dir, 'mlp.onnx')).onnxPath },
    { thread: 'worker', intraOpNumThreads: 1 },
  );
  try {
    const values = new Map<string, Float32Array>([
      ['w1', Float32Array.from({ length: H * D }, () => (next() * 2 - 1) * 0.5)],
      ['b1', new Float32Array(H)],
      ['w2', Float32Array.from({ length: C * H }, () => (next() * 2 - 1) * 0.5)],
    ]);
    const shapes = new Map(params.map((p) => [p.name, p.shape]));
    const trainer = new GraphTrainer(runner, values, shapes, { kind: 'adamw', lr: 0.05, weightDecay: 0 });
    const feeds = {
      x: { dtype: 'float32' as const, shape: [N, D], data: x },
      y: { dtype: 'int64' as const, shape: [N], data: y },
    };
    const losses: number[] = [];
    for (let step = 0; step < 150; step++) losses.push((await trainer.step([feeds])).loss);
    assert.ok(Math.abs(losses[0]! - Math.log(C)) < 0.5, `initial loss ${losses[0]} near ln(4)`);
    assert.ok(losses.at(-1)! < 0.25 * losses[0]!, `loss ${losses[0]!.toFixed(3)} -> ${losses.at(-1)!.toFixed(3)}`);
  } finally {
    await runner.release();
    rmSync(dir, { recursive: true, force: true });
  }
});
