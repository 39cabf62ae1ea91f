/**
 * The linears' table (linears.ts) and LoRA naming and shapes (lora.ts) against the PEFT fixtures: module names parse
 * back, factor shapes match the adapters peft wrote, and the names a graph declares are the ones its tools read.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fixturesDir } from '../../../test/support/paths.js';
import { Graph } from '../../engine/src/index.js';
import { readModelConfig } from '../src/config.js';
import { expectedTensorShapes } from '../src/checkpoint.js';
import { LINEAR_NAMES, linearFeatures, moduleName, parseModuleName } from '../src/linears.js';
import {
  GraphLoras,
  LORA_TARGETS,
  initLora,
  loraDropoutInputs,
  loraFactorShapes,
  loraModules,
  parseLoraModule,
  type LoraSpec,
} from '../src/lora.js';
import { readPeftAdapter } from '../src/peft.js';

const FIXTURES = ['llama-tiny-a', 'qwen2-tiny', 'mistral-tiny'] as const;

test('module names parse back to their layer and linear; other names (or a linear in the wrong block) do not', () => {
  for (const name of LINEAR_NAMES) {
    assert.deepEqual(parseModuleName(moduleName(7, name)), { layer: 7, name });
    assert.deepEqual(parseLoraModule(moduleName(7, name)), { layer: 7, target: name });
  }
  assert.equal(moduleName(3, 'q_proj'), 'model.layers.3.self_attn.q_proj');
  assert.equal(moduleName(3, 'down_proj'), 'model.layers.3.mlp.down_proj');
  for (const bad of [
    'model.layers.3.mlp.q_proj',
    'model.layers.3.self_attn.up_proj',
    'model.layers.x.self_attn.q_proj',
    'model.layers.3.self_attn.rotary_emb',
    'layers.3.self_attn.q_proj',
  ])
    assert.equal(parseModuleName(bad), undefined, bad);
  assert.deepEqual([...LORA_TARGETS], [...LINEAR_NAMES]);
});

for (const fixture of FIXTURES) {
  test(`${fixture}: linear features match the checkpoint's weights and the PEFT adapter's factor shapes`, async () => {
    const cfg = await readModelConfig(join(fixturesDir, fixture, 'model', 'config.json'));
    const shapes = expectedTensorShapes(cfg);
    for (const name of LINEAR_NAMES) {
      const [fin, fout] = linearFeatures(cfg, name);
      assert.deepEqual(shapes.get(`${moduleName(0, name)}.weight`), [fout, fin], name);
    }
    const adapter = await readPeftAdapter(join(fixturesDir, fixture, 'adapter'));
    assert.ok(adapter.tensors.size > 0);
    for (const [module, pair] of adapter.tensors) {
      const m = parseLoraModule(module)!;
      const want = loraFactorShapes(cfg, adapter.config.r, m.target);
      assert.deepEqual([pair.r, pair.inFeatures], want.a, module);
      assert.deepEqual([pair.outFeatures, pair.r], want.b, module);
    }
  });
}

test('initLora, a graph and the dropout-input shapes agree on names and shapes; B starts at zero', async () => {
  const cfg = await readModelConfig(join(fixturesDir, 'qwen2-tiny', 'model', 'config.json'));
  const spec: LoraSpec = { name: 'ad', r: 3, alpha: 6, targets: ['v_proj', 'down_proj'], layers: [1, 0], dropout: 0.1 };
  const modules = loraModules(spec);
  assert.deepEqual(
    modules.map((m) => m.module),
    [
      'model.layers.1.self_attn.v_proj',
      'model.layers.1.mlp.down_proj',
      'model.layers.0.self_attn.v_proj',
      'model.layers.0.mlp.down_proj',
    ],
  );
  assert.equal(modules[0]!.a, 'model.layers.1.self_attn.v_proj.lora_A.ad.weight');
  assert.equal(modules[0]!.b, 'model.layers.1.self_attn.v_proj.lora_B.ad.weight');

  const init = initLora(spec, cfg, 4);
  assert.deepEqual(init, initLora(spec, cfg, 4), 'same seed, same values');
  const g = new Graph('lora');
  const attached = GraphLoras.attach(g, cfg, [spec], {
    layers: [1],
    dtype: 'float32',
    dropout: true,
    batch: 2,
    seq: 5,
  });
  assert.deepEqual(
    [...attached.params.keys()],
    modules.filter((m) => m.layer === 1).flatMap((m) => [m.a, m.b]),
  );
  for (const [name, t] of attached.params) {
    assert.equal(init.get(name)!.length, t.size, name);
    if (name.includes('.lora_B.'))
      assert.ok(
        init.get(name)!.every((v) => v === 0),
        name,
      );
  }
  const drops = loraDropoutInputs(
    cfg,
    [spec],
    g.inputs.map((t) => t.name),
    2,
    5,
  );
  assert.deepEqual(
    drops.map((d) => ({ name: d.name, shape: d.shape })),
    g.inputs.filter((t) => t.name.includes('.lora_dropped.')).map((t) => ({ name: t.name, shape: t.shape })),
  );
  assert.equal(drops.length, 2);
  for (const d of drops) {
    assert.equal(d.p, 0.1);
    assert.equal(d.elements, 2 * 5 * (d.name.includes('down_proj') ? cfg.intermediateSize : cfg.hiddenSize));
  }
});
