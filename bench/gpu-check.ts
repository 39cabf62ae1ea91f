/**
 * Training graphs on a GPU provider against the CPU provider: a 2-layer LLaMA block stack (GQA, LoRA on all seven
 * linears, masked next-token loss) and the FedBiOT client step shape (top-2 LoRA q,v), float32. Prints each LoRA
 * gradient's relative L2 difference and writes bench/results/gpu-check.json. Run with ORT verbose logging
 * (`--verbose`) to list nodes placed on the CPU provider.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  crossEntropy,
  outputLossAndGradients,
  type ExecutionProvider,
  type HostTensor,
} from '../libs/engine/src/index.js';
import {
  CausalLM,
  parseModelConfig,
  writeRandomCheckpoint,
  LORA_TARGETS,
  type LoraSpec,
  initLora,
} from '../libs/model/src/index.js';
import { randomBatch } from './model.js';
import { argOf, machine, printTable, writeResults } from './common.js';

export async function main(args: string[]): Promise<void> {
  const provider = (argOf(args, 'provider') ?? 'webgpu') as ExecutionProvider;
  const verbose = args.includes('--verbose');
  const tmp = mkdtempSync(join(tmpdir(), 'gpu-check-'));
  const rows: Record<string, unknown>[] = [];
  try {
    const cases: {
      name: string;
      cfg: Record<string, unknown>;
      targets: LoraSpec['targets'];
      top: number;
      B: number;
      T: number;
    }[] = [
      {
        name: 'llama-2layer-gqa-lora7',
        cfg: {
          vocab_size: 512,
          hidden_size: 128,
          intermediate_size: 344,
          num_hidden_layers: 2,
          num_attention_heads: 4,
          num_key_value_heads: 2,
        },
        targets: LORA_TARGETS,
        top: 2,
        B: 2,
        T: 32,
      },
      {
        name: 'client-step-top2-qv',
        cfg: {
          vocab_size: 2048,
          hidden_size: 256,
          intermediate_size: 688,
          num_hidden_layers: 6,
          num_attention_heads: 4,
          num_key_value_heads: 4,
        },
        targets: ['q_proj', 'v_proj'],
        top: 2,
        B: 4,
        T: 128,
      },
    ];
    for (const c of cases) {
      const cfg = parseModelConfig(
        { model_type: 'llama', rms_norm_eps: 1e-5, max_position_embeddings: 1024, ...c.cfg },
        `${c.name}.json`,
      );
      await writeRandomCheckpoint(join(tmp, c.name), cfg, 3, 0.05);
      const layers = Array.from({ length: cfg.numLayers }, (_, i) => i).slice(-c.top);
      const spec: LoraSpec = { name: 'default', r: 8, alpha: 16, targets: c.targets, layers, dropout: 0 };
      const lora = initLora(spec, cfg, 5);
      for (const [k, v] of lora) if (k.includes('lora_B')) for (let i = 0; i < v.length; i++) v[i] = Math.sin(i) * 0.02;
      const batch = randomBatch(c.B, c.T, cfg.vocabSize, 9);
      const results: Record<string, Record<string, HostTensor>> = {};
      for (const p of ['cpu', provider] as ExecutionProvider[]) {
        const lm = await CausalLM.load(join(tmp, c.name), {
          thread: 'main',
          cacheRoot: join(tmp, 'cache'),
          provider: p,
        });
        try {
          const names: string[] = [];
          const runner = await lm.graphs.get(
            `check-${c.name}`,
            (g) => {
              const m = lm.build(g, {
                batch: c.B,
                seq: c.T,
                layers: lm.allLayers,
                start: 'ids',
                head: true,
                loras: [spec],
              });
              const labels = g.input('labels', 'int64', [c.B, c.T]);
              const w = g.input('loss_mask', 'float32', [c.B, c.T]);
              const loss = crossEntropy(m.logits!, labels, w);
              names.push(...m.loraParams.keys());
              outputLossAndGradients(loss, [...m.loraParams]);
            },
            { fallbackToCpu: false, ...(verbose && p !== 'cpu' ? { logSeverityLevel: 0 } : {}) },
          );
          const feeds = lm.tokenFeeds(batch);
          for (const [k, v] of lora)
            feeds[k] = {
              dtype: 'float32',
              shape: k.includes('lora_A') ? [8, v.length / 8] : [v.length / 8, 8],
              data: v,
            };
          results[p] = await runner.run(feeds);
          const t0 = performance.now();
          for (let i = 0; i < 5; i++) await runner.run(feeds);
          rows.push({ case: c.name, provider: p, ms_step: +((performance.now() - t0) / 5).toFixed(2) });
        } finally {
          await lm.release();
        }
      }
      let worst = 0;
      for (const [name, t] of Object.entries(results['cpu']!)) {
        const a = t.data as Float32Array;
        const b = results[provider]![name]!.data as Float32Array;
        let d2 = 0;
        let n2 = 0;
        for (let i = 0; i < a.length; i++) {
          d2 += (a[i]! - b[i]!) ** 2;
          n2 += a[i]! ** 2;
        }
        worst = Math.max(worst, Math.sqrt(d2 / Math.max(n2, 1e-30)));
      }
      rows.push({ case: c.name, provider: `${provider} vs cpu`, worst_rel_l2: worst.toExponential(2) });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`\nGPU check (${machine()}):`);
  printTable(rows, ['case', 'provider', 'ms_step', 'worst_rel_l2']);
  console.log(
    `wrote ${writeResults(
      'gpu-check',
      rows.map((r) => ({ ...r, task: r['worst_rel_l2'] ? 'grad-diff' : 'time' })),
      argOf(args, 'out'),
    )}`,
  );
}
