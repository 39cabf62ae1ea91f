/**
 * `npm run bench -- perf`: the FedBiOT steps at the shapes users compare with PyTorch. Per model shape
 * (SmolLM-135M at T=256, TinyLlama-1.1B and LLaMA-2-7B at T=512; random weights, B=4):
 *   client step    = the FedBiOT client step: emulator (dropped lower layers) + top-2 adapter layers with LoRA
 *                    r=8 on q,v, backward through the adapter, AdamW (LoraTrainer on the client layers)
 *   full-prefix    = the same with every original layer (the step PyTorch's peer script times)
 *   align step     = the server's alignment step: teacher forward (full model + adapter) and the emulator-LoRA
 *                    update on hidden-state L2 + KL (AlignmentServer)
 * `--models smollm,tinyllama,llama7b` picks shapes (default smollm); `--weights-dtype float16|bfloat16` (and
 * `--compute`) runs them with half-precision frozen weights; `--skip-align` leaves the alignment step out (its teacher
 * forward dominates the memory on CPU), `--client-only` the full-prefix step; `--lora-dropout P` (default 0.05). Rows go to bench/results/perf-ours.json;
 * scripts/device/perf.sh joins them with the PyTorch peer into bench/results/perf.json.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LoraTrainer, initLora } from '../libs/model/src/index.js';
import type { TokenizedExample } from '../libs/data/src/index.js';
import { AlignmentServer, initialLora } from '../libs/fedbiot/src/index.js';
import { randomBatch } from './model.js';
import { benchRunOptions, frozenWeightsMib, loadBenchModel } from './shapes.js';
import { argOf, machine, peakRssMib, printTable, time, withPeakRss, writeResults } from './common.js';

export async function main(args: string[]): Promise<void> {
  const run = benchRunOptions(args);
  const { threads, steps } = run;
  const B = 4;
  const rows: Record<string, unknown>[] = [];
  const tmp = mkdtempSync(join(tmpdir(), 'bench-perf-'));
  try {
    for (const key of run.models) {
      const thread = (argOf(args, 'thread') ?? 'worker') as 'worker' | 'main';
      const { name, seq: T, cfg, lm, split, specs } = await loadBenchModel(key, tmp, run, { thread });
      try {
        const batch = randomBatch(B, T, cfg.vocabSize);
        const common = {
          provider: lm.graphs.runnerOptions.provider ?? 'cpu',
          threads: threads ?? 'cores',
          batch: B,
          seq: T,
          weights_dtype: run.weightsDtype,
          compute: lm.halfWeights?.compute ?? 'float32',
          activations: lm.halfWeights?.activations ?? 'float32',
          lora_dropout: run.loraDropout,
          frozen_weights_mib: frozenWeightsMib(lm),
          machine: machine(),
          date: new Date().toISOString(),
        };
        const variants = [
          ['client-step', split.clientLayers],
          ['full-prefix-step', lm.allLayers],
        ] as const;
        for (const [variant, layers] of variants.filter(
          ([v]) => v === 'client-step' || !args.includes('--client-only'),
        )) {
          const trainer = await LoraTrainer.create(lm, {
            batch: B,
            seq: T,
            layers,
            trainable: { spec: specs.adapter, tensors: initLora(specs.adapter, cfg, 1) },
            optimizer: { kind: 'adamw', lr: 1e-4, betas: [0.9, 0.95] },
          });
          console.log(`${name} ${variant} (${layers.length} layers) ...`);
          // The process's peak RSS includes writing the random checkpoint; step_rss_mib is the peak while stepping.
          const { value: t, peakRss } = await withPeakRss(() => time(() => trainer.step([batch]), steps, 1));
          rows.push({
            case: `${name}-${variant}`,
            task: 'train',
            ms_per_step: +t.median.toFixed(1),
            tokens_per_s: +((B * T) / (t.median / 1000)).toFixed(1),
            peak_rss_mib: peakRssMib(),
            step_rss_mib: Math.round(peakRss / 2 ** 20),
            layers: layers.length,
            ...common,
          });
        }
        const alignStep = async (): Promise<void> => {
          const windows: TokenizedExample[] = Array.from({ length: B }, (_, b) => {
            const ids = Array.from(batch.inputIds.slice(b * T, (b + 1) * T));
            return {
              inputIds: ids,
              lossMask: ids.map((_, i) => (i === 0 ? 0 : 1)),
              promptLength: 0,
              truncatedPromptTokens: 0,
              truncatedResponseTokens: 0,
            };
          });
          const server = new AlignmentServer(
            lm,
            split,
            specs,
            { lambda: 1, mu: 0, lr: 1e-4, batchSize: B, seq: T, seed: 1 },
            windows,
            initialLora(specs.emulator, lm, 2),
          );
          const adapter = initialLora(specs.adapter, lm, 1);
          console.log(`${name} alignment step ...`);
          const ta = await time(() => server.align(adapter, 1), steps, 1);
          rows.push({
            case: `${name}-align-step`,
            task: 'align',
            ms_per_step: +ta.median.toFixed(1),
            tokens_per_s: +((B * T) / (ta.median / 1000)).toFixed(1),
            peak_rss_mib: peakRssMib(),
            layers: split.clientLayers.length,
            ...common,
          });
        };
        if (!args.includes('--skip-align')) await alignStep();
      } finally {
        await lm.release();
      }
      rmSync(join(tmp, key), { recursive: true, force: true });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`\nperf benchmark, ours (${machine()}):`);
  printTable(rows, [
    'case',
    'provider',
    'weights_dtype',
    'compute',
    'activations',
    'lora_dropout',
    'batch',
    'seq',
    'ms_per_step',
    'tokens_per_s',
    'frozen_weights_mib',
    'step_rss_mib',
    'peak_rss_mib',
  ]);
  console.log(`\nwrote ${writeResults('perf-ours', rows, argOf(args, 'out'))}`);
}
