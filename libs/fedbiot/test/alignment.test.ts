/**
 * The alignment objective against a hand-computed example, the AdapEmu/AdapFu model choice, and alignment on the
 * demo model actually pulling the emulator towards the full model.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ort, Graph, encodeModel } from '../../engine/src/index.js';
import {
  alignmentLoss,
  evalVariant,
  AlignmentServer,
  loraSpecs,
  initialLora,
  type AlignmentStats,
} from '../src/roles.js';
import { splitModel } from '../src/split.js';
import { CausalLM } from '../../model/src/index.js';
import { chunkCorpus, createRng, generatePublicCorpus } from '../../data/src/index.js';
import { join } from 'node:path';
import { repoRoot } from '../../../test/support/paths.js';

test('alignment loss equals the hand-computed normalised L2 + lambda * masked KL', async () => {
  // B=1, T=3, d=2, V=3; the third position is padding and must not count.
  const T = [1, 2, 0.5, -1, 9, 9];
  const S = [0.5, 2, 1.5, -1, -9, 4];
  const mask = [1, 1, 0];
  const tLogits = [1, 0, -1, 0.2, 0.3, 0.1, 5, 5, 5];
  const sLogits = [0.5, 0.5, 0, 0, 1, 0, -5, 2, 2];
  const logSoftmax = (row: number[]): number[] => {
    const m = Math.max(...row);
    const z = Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0)) + m;
    return row.map((v) => v - z);
  };
  // by hand: L2 over the two real positions only
  const num = (1 - 0.5) ** 2 + 0 + (0.5 - 1.5) ** 2 + 0; // = 1.25
  const den = 1 + 4 + 0.25 + 1; // = 6.25
  let klSum = 0;
  for (let t = 0; t < 2; t++) {
    const lt = logSoftmax(tLogits.slice(t * 3, t * 3 + 3));
    const ls = logSoftmax(sLogits.slice(t * 3, t * 3 + 3));
    klSum += lt.reduce((a, v, i) => a + Math.exp(v) * (v - ls[i]!), 0);
  }
  const lambda = 0.7;
  const expected = { l2: num / den, kl: klSum / 2 };

  const g = new Graph('align');
  const th = g.input('th', 'float64', [1, 3, 2]);
  const sh = g.input('sh', 'float64', [1, 3, 2]);
  const m = g.input('m', 'float64', [1, 3]);
  const tl = g.input('tl', 'float64', [1, 3, 3]);
  const sl = g.input('sl', 'float64', [1, 3, 3]);
  const { ops: O } = await import('../../engine/src/index.js');
  const r = alignmentLoss({
    teacherHidden: th,
    studentHidden: sh,
    mask: m,
    lambda,
    teacherLogprobs: O.logSoftmax(tl, -1),
    studentLogits: sl,
  });
  g.output(r.loss, 'loss');
  g.output(r.l2, 'l2');
  g.output(r.kl, 'kl');
  const session = await ort.InferenceSession.create(encodeModel(g.toIr()), { graphOptimizationLevel: 'basic' });
  const f = (name: string, data: number[], dims: number[]) =>
    [name, new ort.Tensor('float64', Float64Array.from(data), dims)] as const;
  const out = await session.run(
    Object.fromEntries([
      f('th', T, [1, 3, 2]),
      f('sh', S, [1, 3, 2]),
      f('m', mask, [1, 3]),
      f('tl', tLogits, [1, 3, 3]),
      f('sl', sLogits, [1, 3, 3]),
    ]),
  );
  const v = (k: string): number => (out[k]!.data as Float64Array)[0]!;
  assert.ok(Math.abs(v('l2') - expected.l2) < 1e-12, `l2 ${v('l2')} vs ${expected.l2}`);
  assert.ok(Math.abs(v('kl') - expected.kl) < 1e-12, `kl ${v('kl')} vs ${expected.kl}`);
  assert.ok(Math.abs(v('loss') - (expected.l2 + lambda * expected.kl)) < 1e-12);
  await session.release();
});

test('AdapFu is the full model with only the adapter LoRA; AdapEmu is the client model with both LoRAs', () => {
  const split = splitModel({ numLayers: 8, adapterBottom: 0, adapterTop: 2, dropRate: 0.2 });
  const lora = (name: string) => ({
    spec: { name, r: 2, alpha: 4, dropout: 0, targets: ['q_proj' as const], layers: [] },
    tensors: new Map(),
  });
  const adapter = lora('adapter');
  const emulator = lora('emulator');
  const fu = evalVariant('full', split, 8, adapter, emulator);
  assert.deepEqual(fu.layers, [0, 1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(fu.loras, [adapter]);
  const emu = evalVariant('emu', split, 8, adapter, emulator);
  assert.deepEqual(emu.layers, [...split.clientLayers]);
  assert.ok(emu.layers.length < 8, 'the emulator drops layers');
  assert.deepEqual(emu.loras, [emulator, adapter]);
});

/**
 * One alignment step, `steps` more, one more, on the demo model (adapter layers 0-1, drop rate 0.5) with KL weight
 * `lambda`; returns the first and last step's measurements. Four windows and batch 4: every step sees the same
 * batch, so first and last measurements are comparable.
 */
async function alignmentGap(
  lm: CausalLM,
  lambda: number,
  steps: number,
): Promise<{ first: AlignmentStats; last: AlignmentStats }> {
  const split = splitModel({ numLayers: lm.config.numLayers, adapterBottom: 0, adapterTop: 2, dropRate: 0.5 });
  const specs = loraSpecs(split, { r: 8, alpha: 16, dropout: 0, targets: ['q_proj', 'v_proj'] });
  const windows = chunkCorpus(generatePublicCorpus(createRng(3), { targetBytes: 4_000 }), lm.tokenizer!, {
    seq: 32,
  }).slice(0, 4);
  const server = new AlignmentServer(
    lm,
    split,
    specs,
    { lambda, mu: 0, lr: 5e-3, batchSize: 4, seq: 32, seed: 1 },
    windows,
    initialLora(specs.emulator, lm, 2),
  );
  const adapter = initialLora(specs.adapter, lm, 1);
  const first = await server.align(adapter, 1);
  await server.align(adapter, steps);
  const last = await server.align(adapter, 1);
  return { first, last };
}

test('alignment steps lower the L2 gap between the emulator and the full model (demo model)', async () => {
  const lm = await CausalLM.load(join(repoRoot, 'models', 'demo-llama'), { thread: 'main', threads: 1 });
  try {
    const { first, last } = await alignmentGap(lm, 1, 24);
    assert.ok(first.l2 > 0 && first.kl > 0);
    const msg = `L2 ${first.l2.toFixed(4)} -> ${last.l2.toFixed(4)}, KL ${first.kl.toFixed(4)} -> ${last.kl.toFixed(4)}`;
    console.log(msg);
    assert.ok(last.loss < 0.7 * first.loss, msg);
    assert.ok(last.l2 < first.l2 && last.kl < first.kl, msg);
  } finally {
    await lm.release();
  }
});

test('alignment with lambda 0 (L2 only, no KL term) runs and lowers the L2 gap', async () => {
  // The teacher graph then has no LM head, so the adapter LoRA (above the teacher's hidden output) is not one of
  // its inputs: feeding it anyway failed with "feed ... is not an input of the model" (found by experiments'
  // fedbiot-kl0 method).
  const lm = await CausalLM.load(join(repoRoot, 'models', 'demo-llama'), { thread: 'main', threads: 1 });
  try {
    const { first, last } = await alignmentGap(lm, 0, 12);
    const msg = `L2 ${first.l2.toFixed(4)} -> ${last.l2.toFixed(4)}, loss ${first.loss} -> ${last.loss}`;
    assert.ok(first.l2 > 0 && last.l2 < first.l2, msg);
    assert.ok(Math.abs(last.loss - last.l2) < 1e-6, `with lambda 0 the loss is the L2 term: ${msg}`);
  } finally {
    await lm.release();
  }
});
