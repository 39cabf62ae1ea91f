/**
 * GET /dashboard (a page that polls) and GET /dashboard/data (the evaluator's progress as JSON, plus the charts
 * already drawn as inline SVG). The SVG is rendered here with the run report's renderLineChart, so the page and
 * report.html draw the same pictures and the page needs no chart library, only innerHTML. The job's method's rows
 * are curves; the base model's and the baselines' rows are dashed reference lines (their latest value). Once the
 * aggregator has written the run folder (KV `run`, services/common/run-record.ts) the page says the job finished and
 * lists the paths of results.json, report.html, the adapter and the merged model.
 */
import { Controller, Get, Header, Inject } from '@nestjs/common';
import { JOB_STATE_KEY, JobStateSchema, type JobState } from '../../libs/protocol/src/index.js';
import {
  renderLineChart,
  METHOD_TABLE,
  type ChartSpec,
  type Method,
  type Series,
} from '../../libs/fedbiot/src/index.js';
import { ROLE } from '../common/http.js';
import { JOB_STORES, type JobStores } from '../common/providers.js';
import { RUN_RECORD_KEY, RunRecordSchema, type RunRecord } from '../common/run-record.js';
import type { Evaluator, Progress } from './evaluator.js';

/** One drawn chart of the dashboard. */
export interface DashboardChart {
  /** Stable element id (`chart-train-loss`, `chart-test-loss`, `chart-accuracy`). */
  readonly id: string;
  readonly title: string;
  /** A complete `<svg>` element: one `polyline.series` per series. */
  readonly svg: string;
}

/** Round counters shown as the job's progress. */
export interface RoundProgress {
  readonly totalRounds: number;
  /** Rounds whose evaluation arrived (rounds completed, as far as the evaluator knows). */
  readonly evaluated: number;
  /** The latest round (1-based) any client update was seen for; 0 before the first. */
  readonly training: number;
  /** Client updates seen for that round. */
  readonly updatesInRound: number;
}

/** Where the job stands as the aggregator records it in KV. */
export interface JobStatus {
  /** KV `job` status (`running`, `completed`, ...); null before the aggregator wrote it or when KV is unreachable. */
  readonly status: JobState['status'] | null;
  /** The finished run folder (KV `run`), once written: the job is finished. */
  readonly run: RunRecord | null;
}

export interface DashboardData extends Progress {
  readonly progress: RoundProgress;
  readonly charts: DashboardChart[];
  readonly job: JobStatus;
}

/** Round counters from the evaluator's history. Training rounds are 0-based on the wire, shown 1-based. */
export function roundProgress(p: Progress): RoundProgress {
  const evaluated = p.evals.reduce((m, e) => Math.max(m, e.round), 0);
  const latest = p.train.reduce((m, t) => Math.max(m, t.round), -1);
  return {
    totalRounds: p.totalRounds,
    evaluated,
    training: latest + 1,
    updatesInRound: new Set(p.train.filter((t) => t.round === latest).map((t) => t.client)).size,
  };
}

/** Sorted (x, y) pairs, the latest value per x winning (a re-evaluated round replaces its points). */
function toSeries(name: string, points: Map<number, number>): Series {
  return { name, points: [...points].toSorted((a, b) => a[0] - b[0]) };
}

const chart = (id: string, spec: ChartSpec): DashboardChart => ({
  id,
  title: spec.title,
  svg: renderLineChart(spec, 860, 300),
});
const byName = <T>(m: Map<string, T>): [string, T][] => [...m].toSorted(([a], [b]) => a.localeCompare(b));
const seriesOf = (m: Map<string, Map<number, number>>): Series[] => byName(m).map(([name, pts]) => toSeries(name, pts));

/** Reference lines: the latest value of each series (the round it was measured last). */
const refsOf = (m: Map<string, Map<number, number>>): { name: string; value: number }[] =>
  byName(m).map(([name, pts]) => ({ name, value: [...pts].toSorted((a, b) => a[0] - b[0]).at(-1)![1] }));

/** The result rows of the job's method (curves); undefined for a method this build does not know. */
function methodRows(method: string): ReadonlySet<string> | undefined {
  const entry = (METHOD_TABLE as Partial<Record<string, (typeof METHOD_TABLE)[Method]>>)[method];
  return entry ? new Set(entry.rows.map((r) => r.row)) : undefined;
}

/**
 * A y range for a metric that cannot be negative (a loss): the data's own range, except when every value is the
 * same, where the chart's padding would reach below 0 (all 0 -> -1..1): then `value +- 10 %` (0 -> 0..1), floored at 0.
 */
export function lossRange(values: readonly number[]): readonly [number, number] | undefined {
  const ys = values.filter(Number.isFinite);
  if (ys.length === 0) return undefined;
  const lo = Math.min(...ys);
  const hi = Math.max(...ys);
  if (lo !== hi) return undefined;
  const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
  return [Math.max(0, lo - pad), hi + pad];
}

/**
 * The dashboard's charts: training loss per client (x = round, 1-based, so it lines up with evaluations after that
 * round), and test loss and exact-match accuracy (%, always on 0-100) per (method, client), pooled clients as client
 * `all`; rows of other methods than the job's (base, baselines) as dashed reference lines.
 */
export function dashboardCharts(p: Progress): DashboardChart[] {
  const train = new Map<string, Map<number, number>>();
  for (const t of p.train) {
    if (!Number.isFinite(t.loss)) continue;
    const s = train.get(t.client) ?? new Map<number, number>();
    train.set(t.client, s.set(t.round + 1, t.loss));
  }
  const own = methodRows(p.method);
  const curves = { loss: new Map<string, Map<number, number>>(), acc: new Map<string, Map<number, number>>() };
  const refs = { loss: new Map<string, Map<number, number>>(), acc: new Map<string, Map<number, number>>() };
  for (const e of p.evals)
    for (const r of e.rows) {
      const key = `${r.method} / ${r.client}`;
      const to = own === undefined || own.has(r.method) ? curves : refs;
      to.loss.set(key, (to.loss.get(key) ?? new Map<number, number>()).set(e.round, r.testLoss));
      to.acc.set(key, (to.acc.get(key) ?? new Map<number, number>()).set(e.round, 100 * r.accuracy));
    }
  const trainSeries = seriesOf(train);
  const lossSeries = seriesOf(curves.loss);
  const trainRange = lossRange(trainSeries.flatMap((x) => x.points.map((q) => q[1])));
  const testRange = lossRange(lossSeries.flatMap((x) => x.points.map((q) => q[1])));
  return [
    chart('chart-train-loss', {
      title: 'Training loss per client (mean over local steps)',
      xLabel: 'round',
      yLabel: 'loss (nats/token)',
      series: trainSeries,
      ...(trainRange ? { yRange: trainRange } : {}),
    }),
    chart('chart-test-loss', {
      title: 'Test loss',
      xLabel: 'rounds completed',
      yLabel: 'test loss (nats/token)',
      series: lossSeries,
      refs: refsOf(refs.loss),
      ...(testRange ? { yRange: testRange } : {}),
    }),
    chart('chart-accuracy', {
      title: 'Exact-match accuracy',
      xLabel: 'rounds completed',
      yLabel: 'accuracy (%)',
      series: seriesOf(curves.acc),
      refs: refsOf(refs.acc),
      yRange: [0, 100],
    }),
  ];
}

/** The dashboard's JSON: the raw history, the round counters, the drawn charts and the job's status. */
export function dashboardData(p: Progress, job: JobStatus = { status: null, run: null }): DashboardData {
  return { ...p, progress: roundProgress(p), charts: dashboardCharts(p), job };
}

const PAGE = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>FedBiOT job</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1100px}h1{font-size:22px}h2{font-size:17px;margin:20px 0 8px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}td,th{border:1px solid #d0d7de;padding:2px 8px;text-align:right}th{background:#f6f8fa}
progress{width:320px;height:14px;vertical-align:middle;margin-right:8px}svg text{font-size:11px;fill:#1b1f24}
details{margin-top:16px}#finished{background:#dafbe1;border:1px solid #4ac26b;border-radius:6px;padding:4px 12px}
</style></head>
<body><h1 id="title">FedBiOT job</h1>
<p><progress id="round-bar" max="1" value="0"></progress><span id="progress">waiting for data...</span></p>
<p id="training"></p>
<div id="finished" hidden><p><strong>finished</strong>: the run folder is written.</p><ul id="files"></ul></div>
<div id="charts"></div>
<details><summary>Tables</summary><h2>Evaluation</h2><table id="evals"></table><h2>Training loss</h2><table id="train"></table></details>
<script>
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'})[c]);
async function tick(){
  const p = await (await fetch('dashboard/data')).json();
  const g = p.progress;
  document.getElementById('title').textContent = 'FedBiOT job ' + p.jobId;
  const bar = document.getElementById('round-bar');
  bar.max = g.totalRounds; bar.value = g.evaluated;
  document.getElementById('progress').textContent = 'rounds evaluated: ' + g.evaluated + ' / ' + g.totalRounds;
  const run = p.job.run;
  document.getElementById('training').textContent = run ? 'finished: ' + run.rounds + ' / ' + run.rounds + ' rounds'
    : p.job.status === 'completed' ? 'all rounds done: writing the run folder'
    : g.training === 0 ? 'no client updates yet'
    : 'training: round ' + g.training + ' / ' + g.totalRounds + ', ' + g.updatesInRound + ' client update(s) seen';
  document.getElementById('finished').hidden = !run;
  document.getElementById('files').innerHTML = run ? [['results', run.results], ['report', run.report], ['adapter', run.adapter], ['merged model', run.mergedModel]]
    .map(([k, v]) => '<li>' + esc(k) + ': <code class="path" data-file="' + esc(k) + '">' + esc(v) + '</code></li>').join('') : '';
  document.getElementById('charts').innerHTML = p.charts.map(c => '<section class="chart" id="' + esc(c.id) + '"><h2>' + esc(c.title) + '</h2>' + c.svg + '</section>').join('');
  document.getElementById('evals').innerHTML = '<tr><th>round</th><th>method</th><th>client</th><th>test loss</th><th>accuracy</th></tr>' +
    p.evals.flatMap(e => e.rows.map(r => '<tr><td>' + e.round + '</td><td>' + esc(r.method) + '</td><td>' + esc(r.client) + '</td><td>' + r.testLoss.toFixed(4) + '</td><td>' + (100 * r.accuracy).toFixed(1) + '%</td></tr>')).join('');
  document.getElementById('train').innerHTML = '<tr><th>round</th><th>client</th><th>loss</th><th>tokens</th></tr>' +
    p.train.map(t => '<tr><td>' + (t.round + 1) + '</td><td>' + esc(t.client) + '</td><td>' + t.loss.toFixed(4) + '</td><td>' + t.tokens + '</td></tr>').join('');
  document.body.dataset.updated = String(Date.now());
}
// A failed poll (evaluator restarting) is retried by the next tick rather than stopping the page.
const loop = () => tick().catch(() => {}).finally(() => setTimeout(loop, 2000));
loop();
</script></body></html>`;

@Controller('dashboard')
export class DashboardController {
  constructor(
    @Inject(ROLE) private readonly role: Evaluator,
    @Inject(JOB_STORES) private readonly stores: JobStores,
  ) {}

  @Get()
  @Header('Content-Type', 'text/html; charset=utf-8')
  page(): string {
    return PAGE;
  }

  @Get('data')
  async data(): Promise<DashboardData> {
    return dashboardData(this.role.progress(), await this.jobStatus());
  }

  /** KV `job` and `run`; the page keeps drawing (status unknown) while KV is unreachable or not created yet. */
  private async jobStatus(): Promise<JobStatus> {
    try {
      const kv = await this.stores.state();
      const [job, run] = await Promise.all([
        kv.get(JOB_STATE_KEY, JobStateSchema),
        kv.get(RUN_RECORD_KEY, RunRecordSchema),
      ]);
      return { status: job?.value.status ?? null, run: run?.value ?? null };
    } catch {
      return { status: null, run: null };
    }
  }
}
