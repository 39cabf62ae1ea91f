/**
 * What client-level DP costs on the demo: short standalone FedBiOT jobs on the built-in demo federation and the
 * committed demo model, without privacy, with secure aggregation only, and with DP-FedAvg (clip C, noise
 * multipliers sigma) under secure aggregation, `reps` repetitions each (different job seeds: other data order,
 * other dropout draws; the DP noise itself is node:crypto randomness). Reports the pooled AdapFu/AdapEmu test loss
 * and accuracy of the last round with a t-interval over the repetitions, and the (epsilon, delta) each run spent.
 * `npm run bench -- privacy --utility [--sigmas 0.3,1] [--clip 0.05] [--reps 2] [--rounds 3] [--dp-only] [--max-weight W]`
 * writes bench/results/privacy-utility.json. Small on purpose (2 shared CPU cores): see the settings below.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveJobSpec, runJob } from '../libs/fedbiot/src/index.js';
import { argOf, machine, printTable, writeResults } from './common.js';

/** Two-sided 95% t quantiles for n - 1 = 1..9 degrees of freedom. */
const T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262];

function meanCi(xs: readonly number[]): { mean: number; ci: number } {
  const n = xs.length;
  const mean = xs.reduce((s, x) => s + x, 0) / n;
  if (n < 2) return { mean, ci: NaN };
  const sd = Math.sqrt(xs.reduce((s, x) => s + (x - mean) ** 2, 0) / (n - 1));
  return { mean, ci: (T95[Math.min(n - 2, T95.length - 1)]! * sd) / Math.sqrt(n) };
}

interface Setting {
  readonly name: string;
  readonly privacy: Record<string, unknown>;
}

export async function utility(args: string[]): Promise<void> {
  const sigmas = (argOf(args, 'sigmas') ?? '0.3,1').split(',').map(Number);
  const clip = Number(argOf(args, 'clip') ?? 0.05);
  const reps = Number(argOf(args, 'reps') ?? 2);
  const rounds = Number(argOf(args, 'rounds') ?? 3);
  // privacy.maxWeight (W); absent: the job's default bound.
  const maxWeight = argOf(args, 'max-weight');
  const settings: Setting[] = [
    // --dp-only: just the DP settings (e.g. to add a clip norm to earlier runs).
    ...(args.includes('--dp-only')
      ? []
      : [
          { name: 'no privacy', privacy: {} },
          { name: 'secagg only', privacy: { secureAggregation: {} } },
        ]),
    ...sigmas.map((s) => ({
      name: `dp C ${clip} sigma ${s} + secagg${maxWeight ? ` W ${maxWeight}` : ''}`,
      privacy: {
        dp: { clip, noiseMultiplier: s, delta: 1e-5 },
        secureAggregation: {},
        ...(maxWeight ? { maxWeight: Number(maxWeight) } : {}),
      },
    })),
  ];
  const tmp = mkdtempSync(join(tmpdir(), 'privacy-utility-'));
  const runs: Record<string, unknown>[] = [];
  try {
    for (const st of settings) {
      for (let rep = 0; rep < reps; rep++) {
        const spec = resolveJobSpec(
          {
            job: { id: `u-${runs.length}`, seed: 100 + rep, rounds, outDir: tmp },
            model: { threads: 1 },
            clients: { localSteps: 6, batchSize: 4 },
            alignment: { preRounds: 1, stepsPerRound: 2, batchSize: 4 },
            eval: { every: rounds, maxNewTokens: 4 },
            baselines: { offsiteTuning: false, localOnly: false },
            privacy: st.privacy,
          },
          'privacy utility bench',
        );
        const t0 = performance.now();
        const { runDir } = await runJob(spec, { log: () => {} });
        const rows = (
          JSON.parse(readFileSync(join(runDir, 'results.json'), 'utf8')) as {
            rows: { method: string; client: string; test_loss: number; accuracy: number }[];
          }
        ).rows.filter((r) => r.client === 'all');
        const events = readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as Record<string, unknown>);
        const priv = events.filter((e) => e['kind'] === 'privacy');
        const last = priv.at(-1);
        const row = (m: string) => rows.find((r) => r.method === m);
        runs.push({
          case: `utility/${st.name}/rep${rep}`,
          setting: st.name,
          rep,
          seed: 100 + rep,
          base_loss: row('base')?.test_loss,
          adapfu_loss: row('fedbiot-adapfu')?.test_loss,
          adapfu_acc: row('fedbiot-adapfu')?.accuracy,
          adapemu_loss: row('fedbiot-adapemu')?.test_loss,
          adapemu_acc: row('fedbiot-adapemu')?.accuracy,
          epsilon: last?.['epsilon'] ?? null,
          mean_update_norm: priv.length
            ? priv.reduce((s, e) => s + (e['mean_update_norm'] as number), 0) / priv.length
            : null,
          clipped_clients: priv.reduce((s, e) => s + ((e['clipped_clients'] as number | undefined) ?? 0), 0),
          seconds: Math.round((performance.now() - t0) / 1000),
        });
        console.error(`done ${st.name} rep ${rep}: ${JSON.stringify(runs.at(-1))}`);
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const summary = settings.map((st) => {
    const mine = runs.filter((r) => r['setting'] === st.name);
    const f = (k: string) => meanCi(mine.map((r) => r[k] as number));
    const fmt = (k: string, d: number) => {
      const { mean, ci } = f(k);
      return `${mean.toFixed(d)}${Number.isNaN(ci) ? '' : ` ± ${ci.toFixed(d)}`}`;
    };
    const eps = mine[0]?.['epsilon'];
    return {
      case: `utility/${st.name}`,
      setting: st.name,
      runs: mine.length,
      epsilon: typeof eps === 'number' ? eps.toFixed(2) : st.privacy['dp'] ? 'inf' : '-',
      adapfu_loss: fmt('adapfu_loss', 3),
      adapfu_acc: fmt('adapfu_acc', 3),
      adapemu_loss: fmt('adapemu_loss', 3),
      base_loss: fmt('base_loss', 3),
      mean_update_norm: mine[0]?.['mean_update_norm'] == null ? '-' : fmt('mean_update_norm', 4),
    };
  });
  printTable(summary, [
    'setting',
    'runs',
    'epsilon',
    'adapfu_loss',
    'adapfu_acc',
    'adapemu_loss',
    'base_loss',
    'mean_update_norm',
  ]);
  console.log(`(mean ± 95% t-interval over ${reps} seeds; delta 1e-5, clip ${clip}, ${rounds} rounds)`);
  console.log(
    `results: ${writeResults('privacy-utility', [...summary.map((s) => ({ ...s, machine: machine() })), ...runs])}`,
  );
}
