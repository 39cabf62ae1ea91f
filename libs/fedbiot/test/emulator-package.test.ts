/**
 * The emulator package against the full model it was cut from: only the client layers inside, renumbered, with
 * nothing of a dropped layer; in float32 every loss and generated token equals the full model's emulator variant;
 * bf16 halves the weights at a bounded loss change; sharded sources and sharded packages work; damage is named.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, rm, writeFile, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  readSafetensorsHeader,
  readTensorBytesSync,
  writeSafetensors,
  float32ArrayTo,
  type SafetensorsWriteTensor,
} from '../../engine/src/index.js';
import {
  CausalLM,
  initWeights,
  parseModelConfig,
  writeCheckpoint,
  expectedTensorShapes,
  type LoraWeights,
  type TokenBatch,
} from '../../model/src/index.js';
import {
  buildEmulatorPackage,
  checkPackageSplit,
  loadEmulatorPackage,
  readPackageManifest,
  verifyPackage,
  MANIFEST_FILE,
} from '../src/emulator-package.js';
import { splitModel } from '../src/split.js';
import { initialLora, loraSpecs } from '../src/roles.js';
import { repoRoot } from '../../../test/support/paths.js';
import { rng } from '../../../test/support/rng.js';
import { withTmp as withTmpIn } from '../../../test/support/tmp.js';

const DEMO = join(repoRoot, 'models', 'demo-llama');

const withTmp = (fn: (dir: string) => Promise<void>): Promise<void> => withTmpIn('emu-pkg-', fn);

function batchOf(vocab: number, B: number, T: number, seed: number): TokenBatch {
  const next = rng(seed);
  const ids = Array.from({ length: B * T }, () => Math.floor(next() * vocab));
  return {
    batch: B,
    seq: T,
    inputIds: ids,
    labels: ids.map((_, i) => ids[(i + 1) % ids.length]!),
    lossMask: ids.map(() => 1),
  };
}

/** sha256 of every tensor's bytes in the safetensors files of `dir` (`files`). */
async function tensorHashes(dir: string, files: readonly string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const f of files) {
    const h = await readSafetensorsHeader(join(dir, f));
    for (const name of h.tensors.keys())
      out.set(
        `${f}:${name}`,
        createHash('sha256')
          .update(readTensorBytesSync(join(dir, f), name, h))
          .digest('hex'),
      );
  }
  return out;
}

/** A LoRA with non-zero B too, so the adapter changes the outputs. */
function randomLora(lm: CausalLM, spec: ReturnType<typeof loraSpecs>['adapter'], seed: number): LoraWeights {
  const l = initialLora(spec, lm, seed);
  const next = rng(seed + 7);
  return { spec, tensors: new Map([...l.tensors].map(([k, v]) => [k, v.map(() => (next() - 0.5) * 0.1)])) };
}

test('float32 package of the demo model: client layers only, renumbered, outputs identical to the full model', async () => {
  await withTmp(async (tmp) => {
    const full = await CausalLM.load(DEMO, { cacheRoot: join(tmp, 'cache'), thread: 'main' });
    const split = splitModel({ numLayers: 8, adapterBottom: 0, adapterTop: 2, dropRate: 0.5 });
    assert.deepEqual(split.clientLayers, [0, 2, 5, 6, 7]);
    const out = join(tmp, 'pkg');
    const manifest = await buildEmulatorPackage({ source: DEMO, split, jobId: 'job-a', out });
    assert.deepEqual(manifest.droppedLayers, [1, 3, 4]);
    assert.deepEqual(
      manifest.layers.map((l) => `${l.source}:${l.role}`),
      ['0:emulator', '2:emulator', '5:emulator', '6:adapter', '7:adapter'],
    );
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(cfg['num_hidden_layers'], 5);
    assert.equal(cfg['tie_word_embeddings'], true);
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json'])
      assert.ok(
        manifest.files.some((e) => e.path === f),
        `${f} is in the package`,
      );
    // Tensor names are the HF ones for a 6-layer model (tied head stays tied: no lm_head.weight).
    const header = await readSafetensorsHeader(join(out, 'model.safetensors'));
    const want = [...expectedTensorShapes({ ...full.config, numLayers: 5 }).keys()].toSorted();
    assert.deepEqual([...header.tensors.keys()].toSorted(), want);
    // Folder layer 2 is source layer 5, byte for byte.
    const src = await readSafetensorsHeader(join(DEMO, 'model.safetensors'));
    const bytes = (dir: string, h: typeof src, n: string): string =>
      createHash('sha256')
        .update(readTensorBytesSync(join(dir, 'model.safetensors'), n, h))
        .digest('hex');
    assert.equal(
      bytes(out, header, 'model.layers.2.mlp.down_proj.weight'),
      bytes(DEMO, src, 'model.layers.5.mlp.down_proj.weight'),
    );
    // No tensor of the package equals a tensor of a dropped layer.
    const dropped = new Set(
      [...src.tensors.keys()].filter((n) => /^model\.layers\.(1|3|4)\./.test(n)).map((n) => bytes(DEMO, src, n)),
    );
    for (const [name, h] of await tensorHashes(out, ['model.safetensors']))
      assert.ok(!dropped.has(h), `${name} equals a dropped layer's tensor`);

    const { lm } = await loadEmulatorPackage(out, { cacheRoot: join(tmp, 'cache'), thread: 'main' });
    try {
      assert.deepEqual(lm.allLayers, split.clientLayers);
      const specs = loraSpecs(split, { r: 4, alpha: 8, dropout: 0, targets: ['q_proj', 'v_proj'] });
      const adapter = randomLora(full, specs.adapter, 3);
      const emulator = randomLora(full, specs.emulator, 4);
      const batch = batchOf(full.config.vocabSize, 2, 16, 11);
      const variant = { layers: split.clientLayers, loras: [adapter, emulator] };
      const a = await full.lossSum(batch, variant);
      const b = await lm.lossSum(batch, variant);
      assert.equal(b.nllSum, a.nllSum, 'package loss equals the full model emulator variant, exactly');
      const prompts = [
        [5, 9, 17, 4],
        [8, 8, 2],
      ];
      assert.deepEqual(
        await lm.generate(prompts, { maxNewTokens: 6, eosTokenId: null }),
        await full.generate(prompts, { maxNewTokens: 6, eosTokenId: null }, { layers: split.clientLayers }),
      );
      // A dropped layer is not there to run.
      await assert.rejects(lm.lossSum(batch, { layers: [0, 1, 2] }), /layer 1 is not in this checkpoint/);
    } finally {
      await lm.release();
      await full.release();
    }
  });
});

test('bfloat16 package: half the weight bytes, loss within 1% of float32; float16 too', async () => {
  await withTmp(async (tmp) => {
    const split = splitModel({ numLayers: 8, adapterBottom: 0, adapterTop: 2, dropRate: 0.5 });
    const f32 = await buildEmulatorPackage({ source: DEMO, split, jobId: 'j', out: join(tmp, 'f32') });
    const losses: Record<string, number> = {};
    const weightBytes = (m: typeof f32): number => m.files.find((f) => f.path === 'model.safetensors')!.bytes;
    for (const dtype of ['bfloat16', 'float16'] as const) {
      const m = await buildEmulatorPackage({ source: DEMO, split, jobId: 'j', out: join(tmp, dtype), dtype });
      assert.ok(weightBytes(m) < weightBytes(f32) * 0.51, `${dtype} weights ${weightBytes(m)} vs ${weightBytes(f32)}`);
      const h = await readSafetensorsHeader(join(tmp, dtype, 'model.safetensors'));
      assert.equal(h.tensors.get('model.norm.weight')!.dtype, dtype === 'bfloat16' ? 'BF16' : 'F16');
    }
    for (const d of ['f32', 'bfloat16', 'float16']) {
      const { lm } = await loadEmulatorPackage(join(tmp, d), { cacheRoot: join(tmp, 'cache'), thread: 'main' });
      const r = await lm.lossSum(batchOf(768, 2, 32, 5));
      losses[d] = r.nllSum / r.tokens;
      await lm.release();
    }
    for (const d of ['bfloat16', 'float16'])
      assert.ok(Math.abs(losses[d]! - losses['f32']!) / losses['f32']! < 0.01, JSON.stringify(losses));
  });
});

test('sharded bf16 source, sharded package, corrupted and mismatched packages', async () => {
  await withTmp(async (tmp) => {
    const cfg = parseModelConfig(
      {
        model_type: 'qwen2',
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 6,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-6,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
      },
      'qwen2.json',
    );
    // Reference: a float32 checkpoint; source: the same weights as bf16 in two shards with an index.
    const weights = initWeights(cfg, 9, 0.1);
    const ref = join(tmp, 'ref');
    await writeCheckpoint(ref, cfg, weights);
    const sharded = join(tmp, 'sharded');
    await writeCheckpoint(sharded, cfg, weights); // config + generation files
    await rm(join(sharded, 'model.safetensors'));
    const shards: Map<string, SafetensorsWriteTensor>[] = [new Map(), new Map()];
    const weightMap: Record<string, string> = {};
    [...expectedTensorShapes(cfg)].forEach(([name, shape], i) => {
      shards[i % 2]!.set(name, { dtype: 'BF16', shape, data: float32ArrayTo('BF16', weights.get(name)!) });
      weightMap[name] = `model-0000${(i % 2) + 1}-of-00002.safetensors`;
    });
    for (const [i, s] of shards.entries())
      await writeSafetensors(join(sharded, `model-0000${i + 1}-of-00002.safetensors`), s, { format: 'pt' });
    await writeFile(
      join(sharded, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );

    const split = splitModel({ numLayers: 6, adapterBottom: 0, adapterTop: 2, dropRate: 0.5 });
    const out = join(tmp, 'pkg');
    const m = await buildEmulatorPackage({
      source: sharded,
      split,
      jobId: 'q',
      out,
      maxShardBytes: 20_000,
      fp32CacheDir: join(tmp, 'fp32'),
    });
    const shardFiles = m.files.map((f) => f.path).filter((p) => p.endsWith('.safetensors'));
    assert.ok(shardFiles.length > 1, `package sharded: ${shardFiles.join(', ')}`);
    assert.ok(m.files.some((f) => f.path === 'model.safetensors.index.json'));
    assert.equal(m.source.files.length, 4, 'config, index and two shards make the source digest');
    // Untied head is carried.
    const all = await tensorHashes(out, shardFiles);
    assert.ok([...all.keys()].some((k) => k.endsWith(':lm_head.weight')));

    const { lm } = await loadEmulatorPackage(out, { cacheRoot: join(tmp, 'cache'), thread: 'main' });
    const bf16Ref = await CausalLM.load(sharded, { cacheRoot: join(tmp, 'cache'), thread: 'main' });
    try {
      const batch = batchOf(64, 2, 8, 3);
      const a = await bf16Ref.lossSum(batch, { layers: split.clientLayers });
      const b = await lm.lossSum(batch);
      assert.equal(b.nllSum, a.nllSum, 'a float32 package of a bf16 source equals the source exactly');
    } finally {
      await lm.release();
      await bf16Ref.release();
    }

    // Same inputs, same bytes: the package is deterministic (clients keep their cached copy).
    const again = await buildEmulatorPackage({
      source: sharded,
      split,
      jobId: 'q',
      out: join(tmp, 'pkg2'),
      maxShardBytes: 20_000,
    });
    assert.deepEqual(again.files, m.files);

    checkPackageSplit(m, split, out);
    const other = splitModel({ numLayers: 6, adapterBottom: 0, adapterTop: 2, dropRate: 0.2 });
    assert.throws(
      () => checkPackageSplit(m, other, out),
      /holds source layers \[0,3,4,5\] of 6, the job.s split needs \[0,1,3,4,5\]/,
    );

    // One flipped byte in a shard is named by verifyPackage; so is a missing file; so is a broken manifest.
    const victim = join(out, shardFiles[1]!);
    const buf = await readFile(victim);
    buf[buf.length - 3]! ^= 0xff;
    await writeFile(victim, buf);
    await assert.rejects(
      verifyPackage(out),
      new RegExp(`${shardFiles[1]!.replaceAll('.', '\\.')}: sha256 [0-9a-f]{64}, the package manifest says`),
    );
    await rm(victim);
    await assert.rejects(verifyPackage(out), /missing from the emulator package/);
    await appendFile(join(out, MANIFEST_FILE), '{');
    await assert.rejects(
      readPackageManifest(out),
      /emulator_manifest\.json: cannot read the emulator package manifest/,
    );
  });
});
