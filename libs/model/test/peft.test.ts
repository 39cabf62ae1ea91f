import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fixturesDir } from '../../../test/support/paths.js';
import { readSafetensorsHeader, readTensor, writeSafetensors } from '../../engine/src/index.js';
import { readModelConfig } from '../src/config.js';
import { PeftAdapterError } from '../src/errors.js';
import { loraScaling, readPeftAdapter, validateAdapterFor, writePeftAdapter, type LoraAdapter } from '../src/peft.js';
import { withTmp as withTmpIn } from '../../../test/support/tmp.js';

const FIXTURES = ['llama-tiny-a', 'qwen2-tiny', 'mistral-tiny'] as const;

const withTmp = (fn: (dir: string) => Promise<void>): Promise<void> => withTmpIn('h5-peft-', fn);

for (const name of FIXTURES) {
  test(`${name}: adapter reads, fits the model, and equals reference.safetensors lora.param.* exactly`, async () => {
    const ref = JSON.parse(await readFile(join(fixturesDir, name, 'reference.json'), 'utf8')) as {
      lora: { r: number; alpha: number; layers: number[]; targets: string[] };
    };
    const adapter = await readPeftAdapter(join(fixturesDir, name, 'adapter'));
    assert.equal(adapter.config.r, ref.lora.r);
    assert.equal(adapter.config.loraAlpha, ref.lora.alpha);
    assert.equal(loraScaling(adapter.config), ref.lora.alpha / ref.lora.r);
    assert.deepEqual([...adapter.config.layersToTransform!].toSorted(), ref.lora.layers);
    assert.deepEqual([...adapter.config.targetModules].toSorted(), [...ref.lora.targets].toSorted());
    assert.equal(adapter.tensors.size, ref.lora.layers.length * ref.lora.targets.length);

    const cfg = await readModelConfig(join(fixturesDir, name, 'model', 'config.json'));
    validateAdapterFor(cfg, adapter);

    const refFile = join(fixturesDir, name, 'reference.safetensors');
    const refHeader = await readSafetensorsHeader(refFile);
    let compared = 0;
    for (const [module, pair] of adapter.tensors) {
      for (const half of ['A', 'B'] as const) {
        const t = await readTensor(refFile, `lora.param.${module}.lora_${half}.default.weight`, refHeader);
        assert.deepEqual(pair[half], t.data, `${module} ${half}`);
        assert.deepEqual(half === 'A' ? [pair.r, pair.inFeatures] : [pair.outFeatures, pair.r], t.shape);
        compared++;
      }
      // The fixture's adapters are not at identity: B is non-zero.
      assert.ok(pair.B.some((x) => x !== 0));
    }
    assert.equal(compared, [...refHeader.tensors.keys()].filter((k) => k.startsWith('lora.param.')).length);
  });
}

test('write -> read round trip: identical tensors, PEFT names and adapter_config fields, no temp files', async () => {
  await withTmp(async (dir) => {
    const adapter = await readPeftAdapter(join(fixturesDir, 'mistral-tiny', 'adapter'));
    const out = join(dir, 'out');
    await writePeftAdapter(out, { ...adapter, config: { ...adapter.config, baseModelNameOrPath: 'tiny/mistral' } });
    assert.deepEqual((await readdir(dir)).toSorted(), ['out']);
    assert.deepEqual((await readdir(out)).toSorted(), ['adapter_config.json', 'adapter_model.safetensors']);
    const back = await readPeftAdapter(out);
    assert.deepEqual(back.config, { ...adapter.config, baseModelNameOrPath: 'tiny/mistral' });
    assert.deepEqual([...back.tensors.keys()].toSorted(), [...adapter.tensors.keys()].toSorted());
    for (const [m, p] of adapter.tensors) assert.deepEqual(back.tensors.get(m), p, m);

    const names = [...(await readSafetensorsHeader(join(out, 'adapter_model.safetensors'))).tensors.keys()].toSorted();
    const fixtureNames = [
      ...(
        await readSafetensorsHeader(join(fixturesDir, 'mistral-tiny', 'adapter', 'adapter_model.safetensors'))
      ).tensors.keys(),
    ].toSorted();
    assert.deepEqual(names, fixtureNames);
    const cfg = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(cfg['peft_type'], 'LORA');
    assert.equal(cfg['task_type'], 'CAUSAL_LM');
    assert.equal(cfg['bias'], 'none');
    assert.equal(cfg['fan_in_fan_out'], false);
    assert.equal(cfg['inference_mode'], true);
    assert.equal(cfg['base_model_name_or_path'], 'tiny/mistral');
    const fixtureCfg = JSON.parse(
      await readFile(join(fixturesDir, 'mistral-tiny', 'adapter', 'adapter_config.json'), 'utf8'),
    ) as Record<string, unknown>;
    assert.equal(cfg['peft_version'], fixtureCfg['peft_version'], 'the peft release of the fixtures');
    assert.deepEqual(cfg['layers_to_transform'], [1, 3]);

    // Overwriting an existing adapter folder replaces both files.
    const scaled: LoraAdapter = {
      config: adapter.config,
      tensors: new Map([...adapter.tensors].map(([m, p]) => [m, { ...p, B: p.B.map((x) => 2 * x) }])),
    };
    await writePeftAdapter(out, scaled);
    const again = await readPeftAdapter(out);
    const first = [...adapter.tensors.keys()][0]!;
    assert.deepEqual(
      again.tensors.get(first)!.B,
      adapter.tensors.get(first)!.B.map((x) => 2 * x),
    );
    assert.deepEqual((await readdir(dir)).toSorted(), ['out']);
  });
});

test('validateAdapterFor: wrong model, layer out of range -> error naming adapter file and PEFT tensor', async () => {
  const llamaAdapter = await readPeftAdapter(join(fixturesDir, 'llama-tiny-a', 'adapter'));
  const mistral = await readModelConfig(join(fixturesDir, 'mistral-tiny', 'model', 'config.json'));
  // llama's q_proj is 64 -> 64, mistral's is 64 -> 96.
  assert.throws(
    () => validateAdapterFor(mistral, llamaAdapter, '/a/adapter_model.safetensors'),
    (e: unknown) =>
      e instanceof PeftAdapterError &&
      e.file === '/a/adapter_model.safetensors' &&
      /^base_model\.model\.model\.layers\.\d\.self_attn\.(q|v)_proj\.lora_B\.weight$/.test(e.subject!) &&
      /needs \[(96|48), 4\]/.test(e.message),
  );
  const llama = await readModelConfig(join(fixturesDir, 'llama-tiny-a', 'model', 'config.json'));
  assert.throws(
    () => validateAdapterFor({ ...llama, numLayers: 3 }, llamaAdapter),
    (e: unknown) =>
      e instanceof PeftAdapterError &&
      e.subject === 'base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight' &&
      /does not exist/.test(e.message),
  );
});

test('bad adapters: unpaired tensor, wrong rank, unsupported settings name the file and field/tensor', async () => {
  await withTmp(async (dir) => {
    const src = join(fixturesDir, 'llama-tiny-a', 'adapter');
    const cfgText = await readFile(join(src, 'adapter_config.json'), 'utf8');
    const cfg = JSON.parse(cfgText) as Record<string, unknown>;
    const adapter = await readPeftAdapter(src);
    const bad = join(dir, 'bad');
    await mkdir(bad);
    const weights = join(bad, 'adapter_model.safetensors');
    const cfgFile = join(bad, 'adapter_config.json');

    await writeFile(cfgFile, JSON.stringify({ ...cfg, use_dora: true }));
    await copyFile(join(src, 'adapter_model.safetensors'), weights);
    await assert.rejects(
      readPeftAdapter(bad),
      (e: unknown) => e instanceof PeftAdapterError && e.file === cfgFile && e.subject === 'use_dora',
    );
    await writeFile(cfgFile, JSON.stringify({ ...cfg, r: 8 }));
    await assert.rejects(
      readPeftAdapter(bad),
      (e: unknown) =>
        e instanceof PeftAdapterError &&
        e.file === weights &&
        e.subject!.endsWith('.lora_A.weight') &&
        /r=8/.test(e.message),
    );
    await writeFile(cfgFile, JSON.stringify({ ...cfg, target_modules: ['q_proj'] }));
    await assert.rejects(
      readPeftAdapter(bad),
      (e: unknown) =>
        e instanceof PeftAdapterError &&
        /v_proj\.lora_[AB]\.weight$/.test(e.subject!) &&
        /target_modules/.test(e.message),
    );

    await writeFile(cfgFile, cfgText);
    const p = adapter.tensors.get('model.layers.2.self_attn.q_proj')!;
    await writeSafetensors(
      weights,
      new Map([
        [
          'base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight',
          { dtype: 'F32', shape: [p.r, p.inFeatures], data: p.A },
        ],
      ]),
    );
    await assert.rejects(
      readPeftAdapter(bad),
      (e: unknown) =>
        e instanceof PeftAdapterError &&
        e.subject === 'base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight' &&
        /lora_B/.test(e.message),
    );
  });
});
