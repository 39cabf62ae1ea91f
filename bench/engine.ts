/**
 * Engine benchmark: one LLaMA decoder block (B=4, T=128, d=256, 4 heads, FFN 688, LoRA r=8 on q,v), forward-only
 * vs forward+backward (LoRA gradients), through the production path (external fp32 weights, worker-thread session).
 * `--large` adds a TinyLlama-sized block (d=2048, 32/4 heads, FFN 5632, T=512).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { outputLossAndGradients, ops as O, type ExecutionProvider, type HostTensor } from '../libs/engine/src/index.js';
import { CausalLM, parseModelConfig, writeRandomCheckpoint, initLora, type LoraSpec } from '../libs/model/src/index.js';
import { argOf, machine, peakRssMib, printTable, time, writeResults } from './common.js';

interface BlockCase {
  readonly name: string;
  readonly B: number;
  readonly T: number;
  readonly d: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly ffn: number;
  readonly r: number;
  readonly runs: number;
}

export async function benchBlock(
  c: BlockCase,
  provider: ExecutionProvider,
  threads: number | undefined,
  tmp: string,
): Promise<Record<string, unknown>> {
  const cfg = parseModelConfig(
    {
      model_type: 'llama',
      vocab_size: 256,
      hidden_size: c.d,
      intermediate_size: c.ffn,
      num_hidden_layers: 1,
      num_attention_heads: c.heads,
      num_key_value_heads: c.kvHeads,
      rms_norm_eps: 1e-5,
      max_position_embeddings: 4096,
    },
    `${c.name}.json`,
  );
  const dir = join(tmp, c.name);
  await writeRandomCheckpoint(dir, cfg, 1);
  const lm = await CausalLM.load(dir, { provider, cacheRoot: join(tmp, 'cache'), ...(threads ? { threads } : {}) });
  try {
    const spec: LoraSpec = {
      name: 'default',
      r: c.r,
      alpha: 2 * c.r,
      targets: ['q_proj', 'v_proj'],
      layers: [0],
      dropout: 0,
    };
    const lora = initLora(spec, cfg, 2);
    for (const [k, v] of lora) if (k.includes('lora_B')) v.fill(0.01); // non-zero B: every gradient path does work
    const base = { batch: c.B, seq: c.T, layers: [0], start: 'hidden' as const, head: false, loras: [spec] };
    const fwd = await lm.graphs.get(`bench-fwd-${c.name}`, (g) => {
      const m = lm.build(g, base);
      g.output(m.lastHidden, 'hidden_out');
    });
    const train = await lm.graphs.get(`bench-train-${c.name}`, (g) => {
      const m = lm.build(g, base);
      // A dummy scalar loss sum(h * R) so the backward pass has the block's real shape of work.
      const r = g.input('R', 'float32', m.lastHidden.shape);
      const loss = O.sumAll(O.mul(m.lastHidden, r));
      outputLossAndGradients(loss, [...m.loraParams]);
    });
    const n = c.B * c.T * c.d;
    const hidden: HostTensor = {
      dtype: 'float32',
      shape: [c.B, c.T, c.d],
      data: Float32Array.from({ length: n }, (_, i) => Math.sin(i)),
    };
    const feeds: Record<string, HostTensor> = { hidden_in: hidden };
    for (const [k, v] of lora)
      feeds[k] = {
        dtype: 'float32',
        shape: k.includes('lora_A') ? [c.r, v.length / c.r] : [v.length / c.r, c.r],
        data: v,
      };
    const rIn: HostTensor = {
      dtype: 'float32',
      shape: [c.B, c.T, c.d],
      data: Float32Array.from({ length: n }, (_, i) => Math.cos(i)),
    };
    const tf = await time(() => fwd.run(feeds), c.runs);
    const tt = await time(() => train.run({ ...feeds, R: rIn }), c.runs);
    return {
      case: c.name,
      provider: fwd.provider,
      batch: c.B,
      seq: c.T,
      ms_forward: +tf.median.toFixed(2),
      ms_train: +tt.median.toFixed(2),
      ratio: +(tt.median / tf.median).toFixed(2),
      ms_forward_min: +tf.min.toFixed(2),
      ms_train_min: +tt.min.toFixed(2),
      peak_rss_mib: peakRssMib(),
      threads: threads ?? 'cores',
      machine: machine(),
      date: new Date().toISOString(),
    };
  } finally {
    await lm.release();
  }
}

export async function main(args: string[]): Promise<void> {
  const provider = (argOf(args, 'provider') ?? 'cpu') as ExecutionProvider;
  const threads = argOf(args, 'threads') ? Number(argOf(args, 'threads')) : undefined;
  const cases: BlockCase[] = [
    { name: 'block-d256-T128', B: 4, T: 128, d: 256, heads: 4, kvHeads: 4, ffn: 688, r: 8, runs: 30 },
  ];
  if (args.includes('--large'))
    cases.push({ name: 'block-d2048-T512', B: 4, T: 512, d: 2048, heads: 32, kvHeads: 4, ffn: 5632, r: 8, runs: 5 });
  const tmp = mkdtempSync(join(tmpdir(), 'bench-engine-'));
  const rows: Record<string, unknown>[] = [];
  try {
    for (const c of cases) {
      console.log(`running ${c.name} on ${provider} ...`);
      rows.push(await benchBlock(c, provider, threads, tmp));
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`\nengine benchmark (${machine()}), medians of timed runs:`);
  printTable(rows, ['case', 'provider', 'batch', 'seq', 'ms_forward', 'ms_train', 'ratio', 'peak_rss_mib']);
  console.log(`\nwrote ${writeResults('engine', rows, argOf(args, 'out'))}`);
}
