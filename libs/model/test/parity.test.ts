/**
 * Parity with Hugging Face transformers + peft on the shared fixtures (float32). Tolerances from the fixtures'
 * README: logits and hidden states within 1e-4 absolute and whole-tensor relative error under 1e-5, loss within
 * 1e-5, LoRA gradients within 1e-4 relative to the tensor norm.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Graph,
  outputLossAndGradients,
  openRunner,
  readTensor,
  type HostTensor,
  type Tensor,
} from '../../engine/src/index.js';
import { openCheckpoint } from '../src/checkpoint.js';
import { GraphStore } from '../src/graph-store.js';
import { buildLlama, causalLmLoss, type LlamaGraph, type LlamaGraphOptions } from '../src/llama.js';
import { loraParamNames, type LoraSpec, type LoraTarget } from '../src/lora.js';
import { readPeftAdapter } from '../src/peft.js';
import { fixturesDir } from '../../../test/support/paths.js';

const FIXTURES = ['llama-tiny-a', 'qwen2-tiny', 'mistral-tiny'];

async function ref(
  fixture: string,
  name: string,
): Promise<{ shape: readonly number[]; data: Float32Array | BigInt64Array }> {
  const t = await readTensor(join(fixturesDir, fixture, 'reference.safetensors'), name);
  return { shape: t.shape, data: t.data as Float32Array | BigInt64Array };
}

function compare(label: string, got: Float32Array, want: Float32Array, absTol: number, relTol: number): void {
  assert.equal(got.length, want.length, `${label}: length ${got.length} vs ${want.length}`);
  let maxAbs = 0;
  let diff2 = 0;
  let norm2 = 0;
  for (let i = 0; i < got.length; i++) {
    const d = got[i]! - want[i]!;
    maxAbs = Math.max(maxAbs, Math.abs(d));
    diff2 += d * d;
    norm2 += want[i]! * want[i]!;
  }
  const rel = Math.sqrt(diff2 / Math.max(norm2, 1e-30));
  assert.ok(maxAbs <= absTol, `${label}: max abs error ${maxAbs.toExponential(2)} > ${absTol}`);
  assert.ok(rel <= relTol, `${label}: relative error ${rel.toExponential(2)} > ${relTol}`);
}

/** HF labels = input_ids shifted by one: position t predicts token t+1; the last position has no label. */
function shiftedLabels(ids: BigInt64Array, B: number, T: number): { labels: HostTensor; mask: HostTensor } {
  const labels = new BigInt64Array(B * T);
  const mask = new Float32Array(B * T);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T - 1; t++) {
      labels[b * T + t] = ids[b * T + t + 1]!;
      mask[b * T + t] = 1;
    }
  }
  return {
    labels: { dtype: 'int64', shape: [B, T], data: labels },
    mask: { dtype: 'float32', shape: [B, T], data: mask },
  };
}

/** Graph `name`: every layer of the checkpoint from token ids to the LM head, and the causal-LM loss of its logits. */
function wholeModel(
  name: string,
  store: GraphStore,
  [batch, seq]: [number, number],
  opts: Pick<LlamaGraphOptions, 'keepHidden' | 'loras'>,
): { g: Graph; m: LlamaGraph; loss: Tensor } {
  const cfg = store.checkpoint.config;
  const g = new Graph(name);
  const layers = Array.from({ length: cfg.numLayers }, (_, i) => i);
  const m = buildLlama(g, cfg, store.weights(), { batch, seq, layers, start: 'ids', head: true, ...opts });
  return { g, m, loss: causalLmLoss(m.logits!).loss };
}

/**
 * Builds graph `name` on the fixture's checkpoint (wholeModel with `opts`; `outputs` declares what it outputs), runs
 * it once on the fixture's input ids, their shifted labels and `feeds`, and returns what it output. The graph is
 * written to a temporary cache, removed after.
 */
async function runOnFixture(
  fixture: string,
  name: string,
  opts: Pick<LlamaGraphOptions, 'keepHidden' | 'loras'>,
  outputs: (built: { g: Graph; m: LlamaGraph; loss: Tensor }) => void,
  feeds: Record<string, HostTensor> = {},
): Promise<Record<string, HostTensor>> {
  const ckpt = await openCheckpoint(join(fixturesDir, fixture, 'model'));
  const cacheRoot = mkdtempSync(join(tmpdir(), 'parity-'));
  try {
    const store = new GraphStore(ckpt, { cacheRoot });
    const ids = await ref(fixture, 'input_ids');
    const [B, T] = ids.shape as [number, number];
    const built = wholeModel(name, store, [B, T], opts);
    outputs(built);
    const runner = await openRunner(
      { path: store.write(built.g, `parity-${name}`) },
      { thread: 'main', intraOpNumThreads: 1 },
    );
    try {
      const { labels, mask } = shiftedLabels(ids.data as BigInt64Array, B, T);
      return await runner.run({
        input_ids: { dtype: 'int64', shape: [B, T], data: ids.data as BigInt64Array },
        labels,
        loss_mask: mask,
        ...feeds,
      });
    } finally {
      await runner.release();
    }
  } finally {
    rmSync(cacheRoot, { recursive: true, force: true });
  }
}

for (const fixture of FIXTURES) {
  test(`${fixture}: logits, every hidden state and the loss match transformers`, async () => {
    const cfg = (await openCheckpoint(join(fixturesDir, fixture, 'model'))).config;
    const out = await runOnFixture(fixture, 'forward', { keepHidden: true }, ({ g, m, loss }) => {
      g.output(m.logits!, 'logits');
      g.output(loss, 'loss');
      g.output(m.embeddings!, 'hidden_states.0');
      m.hiddenStates.forEach((h, i) => g.output(h, `hidden.${i + 1}`));
    });
    /** The graph's output `output` against transformers' `name`. */
    const matches = async (name: string, output = name): Promise<void> =>
      compare(name, out[output]!.data as Float32Array, (await ref(fixture, name)).data as Float32Array, 1e-4, 1e-5);
    await matches('logits');
    await matches('hidden_states.0');
    // hidden.L is the output after the final norm, as HF's last hidden state.
    for (let i = 1; i <= cfg.numLayers; i++)
      await matches(`hidden_states.${i}`, `hidden.${i === cfg.numLayers ? i + 1 : i}`);
    const wantLoss = ((await ref(fixture, 'loss')).data as Float32Array)[0]!;
    const gotLoss = (out['loss']!.data as Float32Array)[0]!;
    assert.ok(Math.abs(gotLoss - wantLoss) <= 1e-5, `loss ${gotLoss} vs ${wantLoss}`);
  });

  test(`${fixture}: the PEFT adapter's loss and every LoRA gradient match peft`, async () => {
    const adapter = await readPeftAdapter(join(fixturesDir, fixture, 'adapter'));
    const spec: LoraSpec = {
      name: 'default',
      r: adapter.config.r,
      alpha: adapter.config.loraAlpha,
      targets: adapter.config.targetModules as LoraTarget[],
      layers: [...new Set([...adapter.tensors.keys()].map((k) => Number(/layers\.(\d+)\./.exec(k)![1])))].sort(),
      dropout: 0,
    };
    const feeds: Record<string, HostTensor> = {};
    for (const [module, pair] of adapter.tensors) {
      const n = loraParamNames(module, 'default');
      feeds[n.a] = { dtype: 'float32', shape: [pair.r, pair.inFeatures], data: pair.A };
      feeds[n.b] = { dtype: 'float32', shape: [pair.outFeatures, pair.r], data: pair.B };
    }
    let names: string[] = [];
    const out = await runOnFixture(
      fixture,
      'lora-train',
      { loras: [spec] },
      ({ m, loss }) => {
        names = [...m.loraParams.keys()];
        outputLossAndGradients(loss, [...m.loraParams]);
      },
      feeds,
    );
    const wantLoss = ((await ref(fixture, 'lora.loss')).data as Float32Array)[0]!;
    assert.ok(
      Math.abs((out['loss']!.data as Float32Array)[0]! - wantLoss) <= 1e-5,
      `lora loss ${(out['loss']!.data as Float32Array)[0]} vs ${wantLoss}`,
    );
    assert.ok(names.length > 0 && names.length === adapter.tensors.size * 2);
    for (const name of names) {
      const want = (await ref(fixture, `lora.grad.${name}`)).data as Float32Array;
      const got = out[`grad.${name}`]!.data as Float32Array;
      let diff2 = 0;
      let norm2 = 0;
      for (let i = 0; i < want.length; i++) {
        diff2 += (got[i]! - want[i]!) ** 2;
        norm2 += want[i]! ** 2;
      }
      const rel = Math.sqrt(diff2 / norm2);
      assert.ok(rel <= 1e-4, `${name}: gradient relative error ${rel.toExponential(2)} > 1e-4`);
    }
  });
}
