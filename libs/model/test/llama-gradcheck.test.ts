/**
 * End-to-end gradient check of a 2-layer LLaMA-style stack in float64: RMSNorm, RoPE, grouped-query attention
 * with a causal mask, SwiGLU, LoRA on all seven linears of both layers, and a masked next-token loss. Every
 * LoRA gradient must match central finite differences to a relative error under 1e-5.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gradCheck, type FeedValue } from '../../engine/src/index.js';
import { parseModelConfig } from '../src/config.js';
import { initWeights, memoryWeights } from '../src/init.js';
import { buildLlama, causalLmLoss } from '../src/llama.js';
import { LORA_TARGETS, type LoraSpec } from '../src/lora.js';
import { rng, uniform } from '../../../test/support/rng.js';

const config = (extra: Record<string, unknown> = {}, file = 'gradcheck-config.json') =>
  parseModelConfig(
    {
      model_type: 'llama',
      vocab_size: 11,
      hidden_size: 16,
      intermediate_size: 24,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-6,
      max_position_embeddings: 64,
      rope_theta: 10000,
      ...extra,
    },
    file,
  );

async function checkStack(cfg: ReturnType<typeof config>): Promise<void> {
  const B = 2;
  const T = 5;
  const weights = new Map([...initWeights(cfg, 3, 0.3)].map(([k, v]) => [k, Float64Array.from(v)]));
  // RMSNorm weights away from 1 and non-zero biases so their paths are exercised too.
  const next = rng(11);
  for (const [k, v] of weights)
    if (k.endsWith('norm.weight') || k.endsWith('.bias')) v.set(uniform(next, v.length, 0.5, 1.5));
  const spec: LoraSpec = { name: 'default', r: 2, alpha: 4, targets: LORA_TARGETS, layers: [0, 1], dropout: 0 };
  const report = await gradCheck((g) => {
    const m = buildLlama(g, cfg, memoryWeights(cfg, weights), {
      batch: B,
      seq: T,
      layers: [0, 1],
      start: 'ids',
      head: true,
      loras: [spec],
      dtype: 'float64',
    });
    const { loss } = causalLmLoss(m.logits!, 'float64');
    const feeds: Record<string, FeedValue> = {
      input_ids: BigInt64Array.from([1, 4, 7, 2, 9, 3, 3, 10, 0, 5].map(BigInt)),
      labels: BigInt64Array.from([4, 7, 2, 9, 0, 3, 10, 0, 5, 0].map(BigInt)),
      // the last token of each row has no next token: masked out of the loss
      loss_mask: Float64Array.from([1, 1, 1, 1, 0, 1, 1, 1, 1, 0]),
    };
    // LoRA B is non-zero (PEFT initialises it to zero, which would hide half of the gradient paths).
    for (const [name, t] of m.loraParams) feeds[name] = uniform(next, t.size, -0.5, 0.5);
    return { loss, wrt: [...m.loraParams.values()], feeds };
  });
  assert.equal(report.tensors.length, 2 * 7 * 2, 'A and B of 7 linears in 2 layers');
  for (const t of report.tensors)
    assert.ok(t.relError < 1e-5, `${t.name}: relative error ${t.relError.toExponential(2)}`);
  assert.ok(report.loss > 0 && Number.isFinite(report.loss));
}

test('2-layer LLaMA stack (GQA 4/2, LoRA on all 7 linears, masked loss): gradients match finite differences', async () => {
  await checkStack(config());
});

test('2-layer Qwen2-style stack (q/k/v biases, tied embeddings): gradients match finite differences', async () => {
  await checkStack(
    config({ model_type: 'qwen2', rope_theta: 1000000, tie_word_embeddings: true }, 'gradcheck-qwen2.json'),
  );
});
