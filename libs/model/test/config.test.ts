import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fixturesDir } from '../../../test/support/paths.js';
import { configToJson, parseModelConfig, readModelConfig, type ModelConfig } from '../src/config.js';
import { ModelConfigError } from '../src/errors.js';

const cfgPath = (name: string): string => join(fixturesDir, name, 'model', 'config.json');

test('llama-tiny-a: transformers-5 config with rope_parameters, untied, explicit head_dim', async () => {
  const c = await readModelConfig(cfgPath('llama-tiny-a'));
  assert.deepEqual(c, {
    modelType: 'llama',
    vocabSize: 320,
    hiddenSize: 64,
    intermediateSize: 176,
    numLayers: 4,
    numHeads: 4,
    numKvHeads: 4,
    headDim: 16,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    rope: { type: 'default' },
    maxPositionEmbeddings: 128,
    tieWordEmbeddings: false,
    attentionBias: false,
    attentionOutBias: false,
    mlpBias: false,
    slidingWindow: null,
    bosTokenId: 1,
    eosTokenId: 2,
    torchDtype: 'float32',
  } satisfies ModelConfig);
});

test('qwen2-tiny: q/k/v bias (not o), tied embeddings, GQA 4/2, rope_theta 1e6, eps 1e-6', async () => {
  const c = await readModelConfig(cfgPath('qwen2-tiny'));
  assert.equal(c.modelType, 'qwen2');
  assert.equal(c.attentionBias, true);
  assert.equal(c.attentionOutBias, false);
  assert.equal(c.tieWordEmbeddings, true);
  assert.equal(c.numKvHeads, 2);
  assert.equal(c.headDim, 16); // no head_dim key: 64 / 4
  assert.equal(c.ropeTheta, 1e6);
  assert.equal(c.rmsNormEps, 1e-6);
  assert.equal(c.slidingWindow, null); // use_sliding_window false
  assert.equal(c.padTokenId, undefined);
});

test('mistral-tiny: head_dim 24 differs from hidden/heads = 16, no bias', async () => {
  const c = await readModelConfig(cfgPath('mistral-tiny'));
  assert.equal(c.modelType, 'mistral');
  assert.equal(c.headDim, 24);
  assert.equal(c.numHeads * c.headDim, 96);
  assert.equal(c.numKvHeads, 2);
  assert.equal(c.attentionBias, false);
  assert.equal(c.maxPositionEmbeddings, 256);
});

const base = {
  model_type: 'llama',
  vocab_size: 100,
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
};

test('transformers-4 spellings: top-level rope_theta, rope_scaling with "type", torch_dtype, eos list', () => {
  const c = parseModelConfig(
    {
      ...base,
      rope_theta: 500000,
      rope_scaling: { type: 'linear', factor: 4 },
      torch_dtype: 'bfloat16',
      eos_token_id: [2, 7],
    },
    'cfg.json',
  );
  assert.equal(c.ropeTheta, 500000);
  assert.deepEqual(c.rope, { type: 'linear', factor: 4 });
  assert.equal(c.torchDtype, 'bfloat16');
  assert.deepEqual(c.eosTokenId, [2, 7]);
  assert.equal(c.numKvHeads, 4); // llama default: as many KV heads as heads
  assert.equal(c.headDim, 8);
  assert.equal(c.rmsNormEps, 1e-6); // LlamaConfig default
});

test('rope_theta omitted entirely defaults to 10000; llama3 scaling read from rope_type', () => {
  assert.equal(parseModelConfig(base, 'cfg.json').ropeTheta, 10000);
  const c = parseModelConfig(
    {
      ...base,
      rope_parameters: {
        rope_theta: 500000,
        rope_type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    },
    'cfg.json',
  );
  assert.equal(c.ropeTheta, 500000);
  assert.deepEqual(c.rope, {
    type: 'llama3',
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  });
});

test('llama attention_bias covers o_proj too; mistral sliding_window is recorded', () => {
  const l = parseModelConfig({ ...base, attention_bias: true, mlp_bias: true }, 'c.json');
  assert.equal(l.attentionBias, true);
  assert.equal(l.attentionOutBias, true);
  assert.equal(l.mlpBias, true);
  const m = parseModelConfig(
    { ...base, model_type: 'mistral', sliding_window: 4096, num_key_value_heads: 2 },
    'c.json',
  );
  assert.equal(m.slidingWindow, 4096);
});

function expectConfigError(json: unknown, field: string, pattern: RegExp): void {
  assert.throws(
    () => parseModelConfig(json, '/models/x/config.json'),
    (e: unknown) => {
      assert.ok(e instanceof ModelConfigError);
      assert.equal(e.file, '/models/x/config.json');
      assert.equal(e.field, field);
      assert.match(e.message, pattern);
      assert.ok(e.message.includes('/models/x/config.json') && e.message.includes(field));
      return true;
    },
  );
}

test('bad configs name the file and the field', () => {
  expectConfigError({ ...base, model_type: 'gpt2' }, 'model_type', /unsupported model type "gpt2"/);
  expectConfigError(
    { ...base, rope_scaling: { rope_type: 'yarn', factor: 4 } },
    'rope_scaling.rope_type',
    /unsupported RoPE type "yarn"/,
  );
  expectConfigError(
    { ...base, rope_parameters: { rope_type: 'dynamic', rope_theta: 1e4 } },
    'rope_parameters.rope_type',
    /dynamic/,
  );
  expectConfigError({ ...base, rope_scaling: { type: 'linear' } }, 'rope_scaling.factor', /missing/);
  const { hidden_size: _drop, ...noHidden } = base;
  expectConfigError(noHidden, 'hidden_size', /required field is missing/);
  expectConfigError({ ...base, num_key_value_heads: 3 }, 'num_key_value_heads', /does not divide/);
  expectConfigError({ ...base, hidden_act: 'gelu' }, 'hidden_act', /silu/);
  expectConfigError({ ...base, vocab_size: 'many' }, 'vocab_size', /positive integer/);
});

test('readModelConfig names the file when it is missing or not JSON', async () => {
  await assert.rejects(
    readModelConfig('/nonexistent/config.json'),
    (e: unknown) => e instanceof ModelConfigError && e.file === '/nonexistent/config.json',
  );
});

test('configToJson round-trips every fixture config and a llama3-scaled one', async () => {
  const configs: ModelConfig[] = [];
  for (const name of ['llama-tiny-a', 'qwen2-tiny', 'mistral-tiny']) configs.push(await readModelConfig(cfgPath(name)));
  configs.push(
    parseModelConfig(
      {
        ...base,
        rope_scaling: {
          rope_type: 'llama3',
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 8192,
        },
        eos_token_id: [1, 2],
        pad_token_id: 0,
      },
      'c.json',
    ),
  );
  for (const c of configs) {
    const json = configToJson(c);
    assert.deepEqual(parseModelConfig(JSON.parse(JSON.stringify(json)), 'roundtrip.json'), c);
  }
  // transformers-4 spelling that both generations load.
  const raw = JSON.parse(await readFile(cfgPath('qwen2-tiny'), 'utf8')) as Record<string, unknown>;
  const out = configToJson(configs[1]!);
  assert.equal(out['rope_theta'], (raw['rope_parameters'] as { rope_theta: number }).rope_theta);
  assert.deepEqual(out['architectures'], raw['architectures']);
});
