/**
 * LoRA training end to end on a real checkpoint: the loss goes down, the adapter round-trips through PEFT files
 * with identical tensors, and the merged checkpoint computes what base + adapter computes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CausalLM, type TokenBatch } from '../src/causal-lm.js';
import { FullTrainer, LoraTrainer } from '../src/trainer.js';
import { initLora, type LoraSpec } from '../src/lora.js';
import { exportMerged, fromPeftAdapter, savePeftAdapter } from '../src/adapters.js';
import { readPeftAdapter } from '../src/peft.js';
import { fixturesDir } from '../../../test/support/paths.js';

function batchOf(rows: number[][], T: number): TokenBatch {
  const B = rows.length;
  const inputIds = new Int32Array(B * T);
  const labels = new Int32Array(B * T);
  const lossMask = new Float32Array(B * T);
  rows.forEach((r, b) => {
    for (let t = 0; t < T; t++) {
      inputIds[b * T + t] = r[t]!;
      if (t < T - 1) {
        labels[b * T + t] = r[t + 1]!;
        lossMask[b * T + t] = 1;
      }
    }
  });
  return { batch: B, seq: T, inputIds, labels, lossMask };
}

/** The tiny LLaMA fixture loaded in a temporary cache, released and removed after `fn`. */
async function withTinyLlama(
  thread: 'main' | 'worker',
  fn: (lm: CausalLM, tmp: string) => Promise<void>,
): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'lora-'));
  const lm = await CausalLM.load(join(fixturesDir, 'llama-tiny-a', 'model'), {
    thread,
    threads: 1,
    cacheRoot: join(tmp, 'cache'),
  });
  try {
    await fn(lm, tmp);
  } finally {
    await lm.release();
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** LoRA r=4 on q, v of the fixture's top two layers. */
function qvOnTopLayers(dropout: number): LoraSpec {
  return { name: 'default', r: 4, alpha: 8, targets: ['q_proj', 'v_proj'], layers: [2, 3], dropout };
}

/** A LoRA trainer for B=2, T=16 batches with AdamW (lr 1e-2, no weight decay). */
function trainerOf(lm: CausalLM, spec: LoraSpec, extra: { seed?: number; prefetchDropout?: boolean } = {}) {
  return LoraTrainer.create(lm, {
    batch: 2,
    seq: 16,
    trainable: { spec, tensors: initLora(spec, lm.config, 1) },
    optimizer: { kind: 'adamw', lr: 1e-2, betas: [0.9, 0.95], weightDecay: 0 },
    ...extra,
  });
}

test('LoRA training lowers the loss; the adapter round-trips through PEFT files; merged export matches', () =>
  withTinyLlama('main', async (lm, tmp) => {
    // Two fixed sequences with a pattern the base model does not know.
    const rows = [
      Array.from({ length: 16 }, (_, i) => 10 + (i % 5)),
      Array.from({ length: 16 }, (_, i) => 40 + (i % 3)),
    ];
    const batch = batchOf(rows, 16);
    const spec = qvOnTopLayers(0.05);
    const trainer = await trainerOf(lm, spec, { seed: 3 });
    const before = await lm.lossSum(batch, { loras: [{ spec, tensors: trainer.params }] });
    const losses: number[] = [];
    for (let i = 0; i < 40; i++) losses.push((await trainer.step([batch])).loss);
    const lora = { spec, tensors: new Map([...trainer.params].map(([k, v]) => [k, Float32Array.from(v)])) };
    const after = await lm.lossSum(batch, { loras: [lora] });
    const meanBefore = before.nllSum / before.tokens;
    const meanAfter = after.nllSum / after.tokens;
    assert.ok(
      meanAfter < 0.6 * meanBefore,
      `loss ${meanBefore.toFixed(3)} -> ${meanAfter.toFixed(3)} (training losses ${losses[0]!.toFixed(3)} .. ${losses.at(-1)!.toFixed(3)})`,
    );

    // PEFT round trip: identical tensors under PEFT names.
    const adapterDir = join(tmp, 'adapter');
    await savePeftAdapter(adapterDir, lora, lm.config, 'llama-tiny-a');
    const read = await readPeftAdapter(adapterDir);
    const back = fromPeftAdapter(read, lm.config);
    assert.deepEqual(back.spec.layers, [2, 3]);
    assert.deepEqual([...back.spec.targets], ['q_proj', 'v_proj']);
    for (const [name, values] of lora.tensors) assert.deepEqual(back.tensors.get(name), values, name);

    // Merged checkpoint: base + adapter folded equals base with the adapter attached.
    const mergedDir = join(tmp, 'merged');
    await exportMerged(mergedDir, lm.config, lm.checkpoint!.tensorNames, (n) => lm.checkpoint!.readFloat32(n), [lora]);
    const merged = await CausalLM.load(mergedDir, { thread: 'main', threads: 1, cacheRoot: join(tmp, 'cache') });
    try {
      const m = await merged.lossSum(batch);
      assert.ok(
        Math.abs(m.nllSum - after.nllSum) / after.nllSum < 1e-5,
        `merged ${m.nllSum} vs adapter ${after.nllSum}`,
      );
    } finally {
      await merged.release();
    }
  }));

test('dropout positions drawn ahead (prefetchDropout) give the same steps as drawn in place', () =>
  withTinyLlama('worker', async (lm) => {
    const spec = qvOnTopLayers(0.3);
    const mbs = [0, 1].map((k) =>
      batchOf(
        [0, 1].map((b) => Array.from({ length: 16 }, (_, i) => 7 + ((i * (k + 2) + b) % 11))),
        16,
      ),
    );
    const run = async (prefetchDropout: boolean): Promise<{ losses: number[]; params: Map<string, Float32Array> }> => {
      const trainer = await trainerOf(lm, spec, { seed: 5, prefetchDropout });
      const losses: number[] = [];
      // Two micro-batches per step, then one: the positions drawn ahead must land where the in-place draws would.
      for (const step of [mbs, mbs, [mbs[0]!], mbs]) losses.push((await trainer.step(step)).loss);
      return { losses, params: trainer.params };
    };
    const inPlace = await run(false);
    const ahead = await run(true);
    assert.deepEqual(ahead.losses, inPlace.losses);
    for (const [name, v] of inPlace.params) assert.deepEqual(ahead.params.get(name), v, name);
    const noDropout = await (async () => {
      const trainer = await trainerOf(lm, { ...spec, dropout: 0 });
      await trainer.step(mbs);
      return (await trainer.step(mbs)).loss;
    })();
    // Step 1 (B = 0 at step 0, so the LoRA branch and its mask do not matter there yet).
    assert.notEqual(inPlace.losses[1], noDropout, 'dropout 0.3 changes the second step (the masks are applied)');
  }));

test('FullTrainer (every weight trained, as the demo pretraining) lowers the loss on a fixed batch', () =>
  withTinyLlama('main', async (lm) => {
    const weights = new Map(lm.checkpoint!.tensorNames.map((n) => [n, lm.checkpoint!.readFloat32(n)]));
    const trainer = await FullTrainer.create(lm, {
      batch: 2,
      seq: 16,
      weights,
      optimizer: { kind: 'adamw', lr: 3e-3, betas: [0.9, 0.95], weightDecay: 0 },
      maxGradNorm: 1,
    });
    const batch = batchOf(
      [0, 1].map((b) => Array.from({ length: 16 }, (_, i) => 20 + ((i * 3 + b) % 7))),
      16,
    );
    const losses: number[] = [];
    for (let i = 0; i < 15; i++) losses.push((await trainer.step([batch])).loss);
    assert.ok(losses.every(Number.isFinite));
    assert.ok(losses.at(-1)! < 0.5 * losses[0]!, `loss ${losses[0]!.toFixed(3)} -> ${losses.at(-1)!.toFixed(3)}`);
    assert.equal(trainer.params.size, weights.size, 'every checkpoint tensor is a trained parameter');
  }));
