/**
 * `npm run bench -- profile [--models smollm,tinyllama] [--provider cpu|webgpu] [--threads N] [--steps 3]`:
 * where the FedBiOT client step's time goes, from onnxruntime's own profiler. The step of bench/perf.ts (emulator +
 * top-2 adapter layers, LoRA r=8 on q,v, B=4) runs with profiling on every session; the traces are summed per op
 * type and per op class (matmul, attention softmax, normalization, elementwise, reductions, data movement, host-device
 * copies), with the execution provider each node ran on, so CPU-placed nodes in a GPU session show as their own rows.
 * The first run of each session (initialisation) is left out. Kernel times are what ORT records per node: on the CPU
 * provider the kernel's run time; on WebGPU the provider's per-node time (dispatch, plus GPU time where the build
 * records GPU timestamps); the table also gives the wall time per step, so the difference shows the overhead outside
 * the nodes. Events a provider adds to the trace itself (other categories) are listed as 'provider-event' rows,
 * averaged over all runs. Writes bench/results/profile.json.
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LoraTrainer, initLora } from '../libs/model/src/index.js';
import { randomBatch } from './model.js';
import { benchRunOptions, loadBenchModel } from './shapes.js';
import { argOf, machine, printTable, time, writeResults } from './common.js';

/** One Chrome-trace event as onnxruntime's profiler writes it. */
interface TraceEvent {
  readonly cat?: string;
  readonly name?: string;
  readonly ts?: number;
  readonly dur?: number;
  readonly args?: { readonly op_name?: string; readonly provider?: string };
}

const CLASSES: [string, RegExp][] = [
  ['matmul', /^(MatMul|Gemm|FusedMatMul|MatMulNBits|DynamicQuantizeMatMul|MatMulInteger)/],
  ['host-device copy', /^Memcpy/],
  ['softmax', /Softmax$/],
  ['normalization', /(LayerNormalization|RMSNorm)/],
  ['reduction', /^Reduce/],
  [
    'data movement',
    /^(Transpose|Reshape|Concat|Slice|Gather|GatherElements|Expand|Split|Squeeze|Unsqueeze|Tile|Pad|ScatterElements|Identity)$/,
  ],
];
const classOf = (op: string): string => CLASSES.find(([, re]) => re.test(op))?.[0] ?? 'elementwise/other';

/**
 * Events of categories other than ORT's own 'Node' and 'Session' (where a provider adds its own, e.g. GPU kernel
 * timestamps), grouped by category and name with the operator prefix kept; all runs, warm-up included.
 */
export function providerEvents(dir: string): { key: string; us: number; count: number }[] {
  const m = new Map<string, { us: number; count: number }>();
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.json')))
    for (const e of JSON.parse(readFileSync(join(dir, file), 'utf8')) as TraceEvent[]) {
      if (e.cat === 'Node' || e.cat === 'Session') continue;
      // Node names are `<scope>/<OpType>_<id>` (engine Graph.emit); keep the op type, and the kernel's own name
      // where the event carries one.
      const name = e.args?.op_name ?? e.name ?? '?';
      const op = /([A-Za-z]+)_\d+[^/]*$/.exec(name)?.[1] ?? name.slice(0, 40);
      const key = `${e.cat ?? '?'}: ${op}`;
      const g = m.get(key) ?? { us: 0, count: 0 };
      g.us += e.dur ?? 0;
      g.count++;
      m.set(key, g);
    }
  return [...m].map(([key, g]) => ({ key, ...g })).toSorted((a, b) => b.us - a.us);
}

/** Per session trace: the summed duration of its `model_run` events (ORT's whole run call), first run left out. */
export function runTimes(dir: string): { us: number; runs: number } {
  let us = 0;
  let runs = 0;
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.json'))) {
    const events = JSON.parse(readFileSync(join(dir, file), 'utf8')) as TraceEvent[];
    const r = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').toSorted((a, b) => a.ts! - b.ts!);
    for (const e of r.slice(1)) us += e.dur ?? 0;
    runs += Math.max(0, r.length - 1);
  }
  return { us, runs };
}

/** Node kernel times of all traces in `dir`, without each session's first run. */
export function nodeTimes(dir: string): { op: string; ep: string; us: number }[] {
  const out: { op: string; ep: string; us: number }[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.json'))) {
    const events = JSON.parse(readFileSync(join(dir, file), 'utf8')) as TraceEvent[];
    const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').toSorted((a, b) => a.ts! - b.ts!);
    const firstEnd = runs.length > 0 ? runs[0]!.ts! + runs[0]!.dur! : -Infinity;
    for (const e of events) {
      if (e.cat !== 'Node' || !e.name?.endsWith('_kernel_time') || (e.ts ?? 0) <= firstEnd) continue;
      out.push({
        op: e.args?.op_name ?? '?',
        ep: (e.args?.provider ?? '?').replace('ExecutionProvider', ''),
        us: e.dur ?? 0,
      });
    }
  }
  return out;
}

export async function main(args: string[]): Promise<void> {
  const opts = benchRunOptions(args);
  const { threads, steps } = opts;
  const B = 4;
  const rows: Record<string, unknown>[] = [];
  const tmp = mkdtempSync(join(tmpdir(), 'bench-profile-'));
  try {
    for (const key of opts.models) {
      const traces = join(tmp, `${key}-traces`);
      mkdirSync(traces);
      const {
        name,
        seq: T,
        cfg,
        lm,
        split,
        specs,
      } = await loadBenchModel(key, tmp, opts, {
        profileFilePrefix: join(traces, 'session'),
      });
      let wallMs: number;
      try {
        const trainer = await LoraTrainer.create(lm, {
          batch: B,
          seq: T,
          layers: split.clientLayers,
          trainable: { spec: specs.adapter, tensors: initLora(specs.adapter, cfg, 1) },
          optimizer: { kind: 'adamw', lr: 1e-4, betas: [0.9, 0.95] },
        });
        const batch = randomBatch(B, T, cfg.vocabSize);
        console.log(`${name} client step (${split.clientLayers.length} layers), profiled ...`);
        wallMs = (await time(() => trainer.step([batch]), steps, 1)).median;
      } finally {
        await lm.release(); // writes the traces
      }
      const nodes = nodeTimes(traces);
      const totalUs = nodes.reduce((a, n) => a + n.us, 0);
      const perStep = (us: number): number => +(us / 1000 / steps).toFixed(2);
      const group = (keyOf: (n: { op: string; ep: string }) => string) => {
        const m = new Map<string, { us: number; count: number }>();
        for (const n of nodes) {
          const k = keyOf(n);
          const g = m.get(k) ?? { us: 0, count: 0 };
          g.us += n.us;
          g.count++;
          m.set(k, g);
        }
        return [...m].toSorted((a, b) => b[1].us - a[1].us);
      };
      const common = { model: name, provider: lm.graphs.runnerOptions.provider ?? 'cpu', batch: B, seq: T };
      rows.push({
        ...common,
        kind: 'total',
        name: 'wall time per step',
        ms_per_step: +wallMs.toFixed(1),
        share_pct: null,
        nodes_per_step: null,
      });
      // ORT's run calls (all sessions of the step): what the step spends inside onnxruntime, nodes or not.
      const run = runTimes(traces);
      rows.push({
        ...common,
        kind: 'total',
        name: 'inside session.run per step',
        ms_per_step: perStep(run.us),
        share_pct: +((100 * run.us) / 1000 / steps / wallMs).toFixed(1),
        nodes_per_step: Math.round(run.runs / steps),
      });
      rows.push({
        ...common,
        kind: 'total',
        name: 'node kernel time per step',
        ms_per_step: perStep(totalUs),
        share_pct: +((100 * totalUs) / 1000 / steps / wallMs).toFixed(1),
        nodes_per_step: Math.round(nodes.length / steps),
      });
      for (const [name, g] of group((n) => `${classOf(n.op)} @${n.ep}`))
        rows.push({
          ...common,
          kind: 'class',
          name,
          ms_per_step: perStep(g.us),
          share_pct: +((100 * g.us) / totalUs).toFixed(1),
          nodes_per_step: Math.round(g.count / steps),
        });
      for (const [name, g] of group((n) => `${n.op} @${n.ep}`).slice(0, 12))
        rows.push({
          ...common,
          kind: 'op',
          name,
          ms_per_step: perStep(g.us),
          share_pct: +((100 * g.us) / totalUs).toFixed(1),
          nodes_per_step: Math.round(g.count / steps),
        });
      // What the provider's events look like (their names and fields differ between builds).
      const sample = readdirSync(traces)
        .flatMap((f) => JSON.parse(readFileSync(join(traces, f), 'utf8')) as TraceEvent[])
        .filter((e) => e.cat !== 'Node' && e.cat !== 'Session')
        .slice(0, 3);
      if (sample.length > 0) console.log(`provider events, e.g.: ${JSON.stringify(sample)}`);
      // Provider-recorded events (GPU timestamps where the build has them), per step over all runs.
      const extra = providerEvents(traces);
      const extraUs = extra.reduce((a, e) => a + e.us, 0);
      if (extra.length > 0)
        rows.push({
          ...common,
          kind: 'total',
          name: 'provider events per step',
          ms_per_step: +(extraUs / 1000 / (steps + 1)).toFixed(1),
          share_pct: +((100 * extraUs) / 1000 / (steps + 1) / wallMs).toFixed(1),
          nodes_per_step: Math.round(extra.reduce((a, e) => a + e.count, 0) / (steps + 1)),
        });
      for (const e of extra.slice(0, 20))
        rows.push({
          ...common,
          kind: 'provider-event',
          name: e.key,
          ms_per_step: +(e.us / 1000 / (steps + 1)).toFixed(2),
          share_pct: +((100 * e.us) / Math.max(extraUs, 1)).toFixed(1),
          nodes_per_step: Math.round(e.count / (steps + 1)),
        });
      rmSync(join(tmp, key), { recursive: true, force: true });
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const stamped = rows.map((r) => ({
    ...r,
    threads: threads ?? 'cores',
    machine: machine(),
    date: new Date().toISOString(),
  }));
  console.log(`\nclient step profile (${machine()}):`);
  printTable(stamped, ['model', 'provider', 'kind', 'name', 'ms_per_step', 'share_pct', 'nodes_per_step']);
  console.log(`\nwrote ${writeResults('profile', stamped, argOf(args, 'out'))}`);
}
