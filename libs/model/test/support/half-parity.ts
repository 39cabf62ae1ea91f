/**
 * Helpers of the half-precision weight parity tests (half-weights.test.ts on the CPU provider, and
 * half-weights-providers.test.ts on GPU providers): a tiny LLaMA's loss and LoRA gradients under several weight
 * storage / compute settings, and the distances between them.
 */
import { join } from 'node:path';
import { crossEntropy, float32ArrayTo, gradients, toFloat32, type HalfCompute } from '../../../engine/src/index.js';
import { CausalLM, type LoadOptions, type TokenBatch } from '../../src/causal-lm.js';
import { writeCheckpoint } from '../../src/checkpoint.js';
import { initLora, loraFeeds, type LoraSpec } from '../../src/lora.js';
import { fixturesDir } from '../../../../test/support/paths.js';

export const MODEL = join(fixturesDir, 'llama-tiny-a', 'model');
export const SPEC: LoraSpec = {
  name: 'default',
  r: 4,
  alpha: 8,
  targets: ['q_proj', 'v_proj', 'down_proj'],
  layers: [2, 3],
  dropout: 0,
};
export const B = 2;
export const T = 16;

export function batch(): TokenBatch {
  const inputIds = new Int32Array(B * T);
  const labels = new Int32Array(B * T);
  const lossMask = new Float32Array(B * T);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++) {
      inputIds[b * T + t] = (7 + 13 * b + 29 * t) % 320;
      labels[b * T + t] = (7 + 13 * b + 29 * (t + 1)) % 320;
      lossMask[b * T + t] = t < T - 1 ? 1 : 0;
    }
  return { batch: B, seq: T, inputIds, labels, lossMask };
}

/** A LoRA with B != 0 (PEFT's B = 0 would make A's gradient zero and hide errors in it). */
export function lora(lm: CausalLM): Map<string, Float32Array> {
  const t = initLora(SPEC, lm.config, 5);
  let k = 0;
  for (const [n, v] of t) if (n.includes('.lora_B.')) for (let i = 0; i < v.length; i++) v[i] = 0.05 * Math.sin(++k);
  return t;
}

/** Mean token loss and the gradient of every LoRA tensor (in `lora` order), `scale` multiplying the loss weights. */
export async function lossAndGrads(
  lm: CausalLM,
  tensors: Map<string, Float32Array>,
  scale = 1,
): Promise<{ loss: number; grads: Float32Array[] }> {
  const names = [...tensors.keys()];
  const runner = await lm.graphs.get(`halftest-B${B}-T${T}`, (g) => {
    const m = lm.build(g, { batch: B, seq: T, layers: lm.allLayers, start: 'ids', head: true, loras: [SPEC] });
    const labels = g.input('labels', 'int64', [B, T]);
    const w = g.input('loss_weights', 'float32', [B, T]);
    const loss = crossEntropy(m.logits!, labels, w);
    g.output(loss, 'loss');
    gradients(
      loss,
      names.map((n) => m.loraParams.get(n)!),
    ).forEach((gr, i) => g.output(gr!, `grad.${names[i]}`));
  });
  const b = batch();
  const f = lm.tokenFeeds(b);
  let tokens = 0;
  for (const v of b.lossMask) tokens += v;
  const shapes = new Map(
    names.map(
      (n) =>
        [
          n,
          n.includes('.lora_A.')
            ? [SPEC.r, tensors.get(n)!.length / SPEC.r]
            : [tensors.get(n)!.length / SPEC.r, SPEC.r],
        ] as const,
    ),
  );
  const out = await runner.run({
    input_ids: f['input_ids']!,
    labels: f['labels']!,
    loss_weights: { dtype: 'float32', shape: [B, T], data: Float32Array.from(b.lossMask, (v) => (v * scale) / tokens) },
    ...loraFeeds(shapes, [{ spec: SPEC, tensors }]),
  });
  return {
    loss: (out['loss']!.data as Float32Array)[0]! / scale,
    grads: names.map((n) => Float32Array.from(out[`grad.${n}`]!.data as Float32Array, (v) => v / scale)),
  };
}

/** ||a - b|| / ||b|| over all tensors together. */
export function relL2(a: readonly Float32Array[], b: readonly Float32Array[]): number {
  let num = 0;
  let den = 0;
  a.forEach((x, k) => {
    const y = b[k]!;
    for (let i = 0; i < x.length; i++) {
      num += (x[i]! - y[i]!) ** 2;
      den += y[i]! ** 2;
    }
  });
  return Math.sqrt(num / den);
}

export const opts = (tmp: string, extra: LoadOptions = {}): LoadOptions => ({
  thread: 'main',
  threads: 1,
  cacheRoot: join(tmp, 'cache'),
  ...extra,
});

/** The fixture with every matrix rounded to `dtype` and stored back as fp32 (norm weights untouched, as in the store). */
export async function roundedCopy(tmp: string, dtype: 'F16' | 'BF16'): Promise<string> {
  const src = await CausalLM.load(MODEL, opts(tmp));
  const dir = join(tmp, `rounded-${dtype}`);
  try {
    const ck = src.checkpoint!;
    const tensors = new Map<string, Float32Array>();
    for (const n of ck.tensorNames) {
      const v = ck.readFloat32(n);
      tensors.set(n, ck.weightRef(n).shape.length === 2 ? toFloat32(dtype, float32ArrayTo(dtype, v)) : v);
    }
    await writeCheckpoint(dir, src.config, tensors);
  } finally {
    await src.release();
  }
  return dir;
}

export async function measure(dir: string, o: LoadOptions, tensors?: Map<string, Float32Array>, scale = 1) {
  const lm = await CausalLM.load(dir, o);
  try {
    return await lossAndGrads(lm, tensors ?? lora(lm), scale);
  } finally {
    await lm.release();
  }
}

/**
 * The GPU providers' graph (matmuls in float16) run on the CPU provider, which inserts casts around the float16
 * Gemms: the activations and the backward's ȳ are still rounded to float16 at each matmul, as on a GPU.
 */
export async function float16ComputeParity(
  tmp: string,
  provider: LoadOptions['provider'] = 'cpu',
): Promise<{ vsRounded: number; vsFp32: number; lossVsFp32: number; unscaled: number }> {
  const base = await CausalLM.load(MODEL, opts(tmp));
  const tensors = lora(base);
  await base.release();
  const ref = await measure(MODEL, opts(tmp), tensors);
  const rounded = await measure(await roundedCopy(tmp, 'F16'), opts(tmp), tensors);
  const c16 = { weightsDtype: 'float16', compute: 'float16' as HalfCompute, provider } as const;
  const scaled = await measure(MODEL, opts(tmp, c16), tensors, 2 ** 16);
  const unscaled = await measure(MODEL, opts(tmp, c16), tensors, 1);
  return {
    vsRounded: relL2(scaled.grads, rounded.grads),
    vsFp32: relL2(scaled.grads, ref.grads),
    lossVsFp32: Math.abs(scaled.loss - ref.loss) / ref.loss,
    unscaled: relL2(unscaled.grads, ref.grads),
  };
}

/**
 * The fast GPU graph (float16 weights, matmuls and activations; norms, softmax, LoRA and logits in float32) against
 * the fp32 model: loss-scaled LoRA gradients and the loss. On the CPU provider onnxruntime runs each float16 node
 * through inserted float32 casts, so every activation is still rounded to float16 where the GPU rounds it.
 */
export async function float16ActivationsParity(
  tmp: string,
  provider: LoadOptions['provider'] = 'cpu',
): Promise<{ vsFp32: number; lossVsFp32: number; vsMatmulOnly: number }> {
  const base = await CausalLM.load(MODEL, opts(tmp));
  const tensors = lora(base);
  await base.release();
  const ref = await measure(MODEL, opts(tmp), tensors);
  const matmulOnly = await measure(
    MODEL,
    opts(tmp, { weightsDtype: 'float16', compute: 'float16', provider }),
    tensors,
    2 ** 16,
  );
  const act16 = { weightsDtype: 'float16', activations: 'float16', provider } as const;
  const scaled = await measure(MODEL, opts(tmp, act16), tensors, 2 ** 16);
  return {
    vsFp32: relL2(scaled.grads, ref.grads),
    lossVsFp32: Math.abs(scaled.loss - ref.loss) / ref.loss,
    vsMatmulOnly: relL2(scaled.grads, matmulOnly.grads),
  };
}
