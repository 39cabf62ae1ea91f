import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, readdir, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fixturesDir } from '../../../test/support/paths.js';
import {
  bf16BitsToFloat32,
  f16BitsToFloat32,
  float32ArrayTo,
  readSafetensorsHeader,
  writeSafetensors,
} from '../../engine/src/index.js';
import { expectedTensorShapes, openCheckpoint, writeCheckpoint } from '../src/checkpoint.js';
import { readModelConfig } from '../src/config.js';
import { CheckpointError } from '../src/errors.js';
import { withTmp as withTmpIn } from '../../../test/support/tmp.js';

const modelDir = (name: string): string => join(fixturesDir, name, 'model');

const withTmp = (fn: (dir: string) => Promise<void>): Promise<void> => withTmpIn('h5-ckpt-', fn);

async function allTensors(dir: string): Promise<Map<string, Float32Array>> {
  const ck = await openCheckpoint(dir);
  return new Map(ck.tensorNames.map((n) => [n, ck.readFloat32(n)]));
}

test('llama-tiny-a opens: 39 weights, hand-counted parameters, weightRef bytes = readFloat32', async () => {
  const ck = await openCheckpoint(modelDir('llama-tiny-a'));
  assert.equal(ck.tensorNames.length, 2 + 4 * 9 + 1);
  // embed + lm_head 320*64 each; per layer 2 norms (64), q,k,v,o 64*64, gate/up/down 176*64; final norm 64.
  assert.equal(ck.parameterCount(), 2 * 320 * 64 + 4 * (2 * 64 + 4 * 64 * 64 + 3 * 176 * 64) + 64);
  const ref = ck.weightRef('model.layers.3.mlp.down_proj.weight');
  assert.deepEqual(ref.shape, [64, 176]);
  assert.equal(ref.length, 64 * 176 * 4);
  assert.equal(ref.file, join(modelDir('llama-tiny-a'), 'model.safetensors'));
  const raw = await readFile(ref.file);
  const viaRef = new Float32Array(
    raw.buffer.slice(raw.byteOffset + ref.offset, raw.byteOffset + ref.offset + ref.length),
  );
  assert.deepEqual(viaRef, ck.readFloat32('model.layers.3.mlp.down_proj.weight'));
  assert.throws(() => ck.weightRef('model.layers.4.mlp.down_proj.weight'), CheckpointError);
});

test('qwen2-tiny: q/k/v biases, tied lm_head resolves to the embedding', async () => {
  const ck = await openCheckpoint(modelDir('qwen2-tiny'));
  assert.ok(!ck.tensorNames.includes('lm_head.weight'));
  assert.deepEqual(ck.weightRef('model.layers.0.self_attn.q_proj.bias').shape, [64]);
  assert.deepEqual(ck.weightRef('model.layers.0.self_attn.k_proj.bias').shape, [32]); // 2 KV heads * 16
  assert.ok(!ck.tensorNames.includes('model.layers.0.self_attn.o_proj.bias'));
  assert.deepEqual(ck.weightRef('lm_head.weight'), ck.weightRef('model.embed_tokens.weight'));
});

test('mistral-tiny: q_proj is [96, 64] and o_proj [64, 96] because head_dim is 24', async () => {
  const ck = await openCheckpoint(modelDir('mistral-tiny'));
  assert.deepEqual(ck.weightRef('model.layers.0.self_attn.q_proj.weight').shape, [96, 64]);
  assert.deepEqual(ck.weightRef('model.layers.0.self_attn.k_proj.weight').shape, [48, 64]);
  assert.deepEqual(ck.weightRef('model.layers.0.self_attn.o_proj.weight').shape, [64, 96]);
});

test('a config.json that disagrees with a tensor shape: the error names the tensor and both shapes', async () => {
  await withTmp(async (dir) => {
    await copyFile(join(modelDir('llama-tiny-a'), 'model.safetensors'), join(dir, 'model.safetensors'));
    const cfg = JSON.parse(await readFile(join(modelDir('llama-tiny-a'), 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 180 }));
    await assert.rejects(openCheckpoint(dir), (e: unknown) => {
      assert.ok(e instanceof CheckpointError);
      assert.equal(e.tensor, 'model.layers.0.mlp.gate_proj.weight');
      assert.equal(e.file, join(dir, 'model.safetensors'));
      assert.match(
        e.message,
        /tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[176, 64\] but config\.json implies \[180, 64\]/,
      );
      assert.ok(e.message.startsWith(join(dir, 'model.safetensors')));
      return true;
    });
  });
});

test('truncated, missing-tensor, extra-tensor and absent weight files are detected', async () => {
  await withTmp(async (dir) => {
    const src = modelDir('llama-tiny-a');
    await copyFile(join(src, 'config.json'), join(dir, 'config.json'));
    await assert.rejects(openCheckpoint(dir), /neither model\.safetensors nor model\.safetensors\.index\.json/);

    await copyFile(join(src, 'model.safetensors'), join(dir, 'model.safetensors'));
    await truncate(join(dir, 'model.safetensors'), 900_000);
    await assert.rejects(
      openCheckpoint(dir),
      (e: unknown) =>
        e instanceof CheckpointError && e.file === join(dir, 'model.safetensors') && /truncated/.test(e.message),
    );

    const tensors = await allTensors(src);
    const ck = await openCheckpoint(src);
    const without = new Map(
      [...tensors]
        .filter(([n]) => n !== 'model.norm.weight')
        .map(([n, d]) => [n, { dtype: 'F32', shape: ck.weightRef(n).shape, data: d }]),
    );
    await writeSafetensors(join(dir, 'model.safetensors'), without);
    await assert.rejects(
      openCheckpoint(dir),
      (e: unknown) => e instanceof CheckpointError && e.tensor === 'model.norm.weight' && /is missing/.test(e.message),
    );

    const extra = new Map(
      ck.tensorNames.map((n) => [n, { dtype: 'F32', shape: ck.weightRef(n).shape, data: tensors.get(n)! }]),
    );
    extra.set('model.layers.0.mlp.extra.weight', { dtype: 'F32', shape: [2], data: new Float32Array(2) });
    await writeSafetensors(join(dir, 'model.safetensors'), extra);
    await assert.rejects(
      openCheckpoint(dir),
      (e: unknown) => e instanceof CheckpointError && e.tensor === 'model.layers.0.mlp.extra.weight',
    );
  });
});

test('sharded checkpoint (index.json + 2 shards) reads the same tensors; a bad index is reported', async () => {
  await withTmp(async (dir) => {
    const src = modelDir('mistral-tiny');
    const ck = await openCheckpoint(src);
    await copyFile(join(src, 'config.json'), join(dir, 'config.json'));
    const weightMap: Record<string, string> = {};
    const shards = [new Map(), new Map()];
    ck.tensorNames.forEach((n, i) => {
      const shard = i < 20 ? 0 : 1;
      weightMap[n] = `model-0000${shard + 1}-of-00002.safetensors`;
      shards[shard]!.set(n, { dtype: 'F32', shape: ck.weightRef(n).shape, data: ck.readFloat32(n) });
    });
    await writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), shards[0]!);
    await writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), shards[1]!);
    await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const sharded = await openCheckpoint(dir);
    assert.equal(sharded.parameterCount(), ck.parameterCount());
    for (const n of ck.tensorNames) assert.deepEqual(sharded.readFloat32(n), ck.readFloat32(n), n);
    assert.equal(sharded.weightRef(ck.tensorNames[25]!).file, join(dir, 'model-00002-of-00002.safetensors'));

    const moved = { ...weightMap, 'model.norm.weight': 'model-00003-of-00002.safetensors' };
    await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: moved }));
    await assert.rejects(
      openCheckpoint(dir),
      (e: unknown) =>
        e instanceof CheckpointError && e.tensor === 'model.norm.weight' && /does not exist/.test(e.message),
    );
  });
});

for (const dtype of ['BF16', 'F16'] as const) {
  test(`${dtype} checkpoint converts once into an fp32 cache file that is reused`, async () => {
    await withTmp(async (dir) => {
      const src = modelDir('qwen2-tiny');
      const ckDir = join(dir, 'ckpt');
      const cacheDir = join(dir, 'cache');
      const original = await allTensors(src);
      const ck32 = await openCheckpoint(src);
      await mkdir(ckDir);
      await copyFile(join(src, 'config.json'), join(ckDir, 'config.json'));
      const half = new Map(
        [...original].map(([n, d]) => [n, { dtype, shape: ck32.weightRef(n).shape, data: float32ArrayTo(dtype, d) }]),
      );
      await writeSafetensors(join(ckDir, 'model.safetensors'), half, { format: 'pt' });

      const ck = await openCheckpoint(ckDir, { cacheDir });
      const ref = ck.weightRef('model.layers.1.mlp.up_proj.weight');
      const [key] = await readdir(cacheDir);
      assert.match(key!, /^[0-9a-f]{64}$/);
      assert.equal(ref.file, join(cacheDir, key!, 'model.safetensors'));
      const h = await readSafetensorsHeader(ref.file);
      assert.ok([...h.tensors.values()].every((e) => e.dtype === 'F32'));
      const decode = dtype === 'BF16' ? bf16BitsToFloat32 : f16BitsToFloat32;
      for (const n of ck.tensorNames) {
        const got = ck.readFloat32(n);
        const bits = half.get(n)!.data;
        for (let i = 0; i < got.length; i++) assert.equal(got[i], decode(bits[i]!)); // exact widening
        const orig = original.get(n)!;
        // Rounding error of the half-precision copy: at most half an ulp, 2^-8 (bf16) or 2^-11 (f16) relative.
        const rel = dtype === 'BF16' ? 2 ** -8 : 2 ** -11;
        for (let i = 0; i < got.length; i++)
          assert.ok(Math.abs(got[i]! - orig[i]!) <= rel * Math.abs(orig[i]!) + 1e-7, n);
      }
      const before = await stat(ref.file);
      const again = await openCheckpoint(ckDir, { cacheDir });
      const after = await stat(again.weightRef('model.norm.weight').file);
      assert.equal(after.ino, before.ino);
      assert.equal(after.mtimeMs, before.mtimeMs);
      assert.deepEqual(await readdir(join(cacheDir, key!)), ['model.safetensors']); // no temp files left
    });
  });
}

test('writeCheckpoint -> openCheckpoint reproduces config and every tensor; wrong sizes are rejected', async () => {
  await withTmp(async (dir) => {
    const src = modelDir('qwen2-tiny');
    const config = await readModelConfig(join(src, 'config.json'));
    const tensors = await allTensors(src);
    const out = join(dir, 'merged');
    await writeCheckpoint(out, config, tensors);
    assert.deepEqual((await readdir(out)).toSorted(), ['config.json', 'generation_config.json', 'model.safetensors']);
    const back = await openCheckpoint(out);
    assert.deepEqual(back.config, config);
    for (const [n, d] of tensors) assert.deepEqual(back.readFloat32(n), d, n);
    const gen = JSON.parse(await readFile(join(out, 'generation_config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(gen['bos_token_id'], 1);
    assert.equal(gen['eos_token_id'], 2);
    assert.deepEqual((await readSafetensorsHeader(join(out, 'model.safetensors'))).metadata, { format: 'pt' });

    const bad = new Map(tensors);
    bad.set('model.norm.weight', new Float32Array(3));
    await assert.rejects(
      writeCheckpoint(join(dir, 'bad'), config, bad),
      (e: unknown) => e instanceof CheckpointError && e.tensor === 'model.norm.weight',
    );
    assert.deepEqual(await readdir(dir), ['merged']); // nothing half-written
    assert.equal(expectedTensorShapes(config).size, tensors.size);
  });
});
