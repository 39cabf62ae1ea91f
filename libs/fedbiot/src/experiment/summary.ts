/**
 * The summary of an experiment grid: per (grid point, row label) the mean and 95 % t interval over seeds of the
 * pooled accuracy and test loss, per-client accuracy, the paired differences the spec compares (with a verdict),
 * per-round mean curves; written as summary.md, summary.json and report.html in the experiment folder.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readMetrics } from '../run-dir.js';
import { ALL_CLIENTS, compareClients, isEvalEvent, type Results } from '../report/results-json.js';
import { METHOD_COLORS, renderLineChart, type Series } from '../report/report-html.js';
import { formatCi, meanCi, type MeanCi } from '../report/stats.js';
import { pointLabel, type Cell, type ExperimentSpec } from './grid.js';

/** One finished cell's numbers. */
export interface CellResult {
  readonly cell: Cell;
  /** label -> client -> {accuracy, test_loss} at the last evaluated round. */
  readonly final: ReadonlyMap<string, ReadonlyMap<string, { accuracy: number | null; loss: number | null }>>;
  /** label -> round -> pooled accuracy. */
  readonly curves: ReadonlyMap<string, ReadonlyMap<number, number>>;
}

/** Row label of a result row of a cell: 'base' alone (the same model for every method), else method/row. */
export function rowLabel(cellMethod: string, rowMethod: string): string {
  return rowMethod === 'base' ? 'base' : `${cellMethod}/${rowMethod}`;
}

export async function readCellResult(runDir: string, cell: Cell): Promise<CellResult | undefined> {
  const resultsPath = join(runDir, 'results.json');
  if (!existsSync(resultsPath)) return undefined;
  const results = JSON.parse(await readFile(resultsPath, 'utf8')) as Results;
  const final = new Map<string, Map<string, { accuracy: number | null; loss: number | null }>>();
  for (const r of results.rows) {
    const label = rowLabel(cell.method, r.method);
    if (!final.has(label)) final.set(label, new Map());
    final.get(label)!.set(r.client, { accuracy: r.accuracy, loss: r.test_loss });
  }
  const curves = new Map<string, Map<number, number>>();
  const metricsPath = join(runDir, 'metrics.jsonl');
  if (existsSync(metricsPath))
    for (const e of await readMetrics(metricsPath)) {
      if (!isEvalEvent(e) || e.client !== ALL_CLIENTS || typeof e.accuracy !== 'number') continue;
      const label = rowLabel(cell.method, e.method);
      if (!curves.has(label)) curves.set(label, new Map());
      curves.get(label)!.set(e.round, e.accuracy);
    }
  return { cell, final, curves };
}

export interface SummaryRow {
  readonly point: string;
  readonly label: string;
  readonly accuracy: MeanCi;
  readonly loss: MeanCi;
  readonly perClient: Readonly<Record<string, MeanCi>>;
}

export interface Comparison {
  readonly point: string;
  readonly treatment: string;
  readonly baseline: string;
  /** Paired differences treatment - baseline of pooled accuracy (fractions), one per seed. */
  readonly diff: MeanCi;
  /** Paired differences of pooled test loss (nats/token; negative: the treatment predicts the answers better). */
  readonly lossDiff: MeanCi;
  readonly verdict: string;
}

export interface Summary {
  readonly rows: readonly SummaryRow[];
  readonly comparisons: readonly Comparison[];
  readonly cellsDone: number;
  readonly cellsTotal: number;
  readonly testItems?: number;
}

export function summarize(spec: ExperimentSpec, cells: readonly Cell[], done: readonly CellResult[]): Summary {
  const points = [...new Set(cells.map((c) => pointLabel(c.point)))];
  const rows: SummaryRow[] = [];
  const comparisons: Comparison[] = [];
  for (const point of points) {
    const here = done.filter((d) => pointLabel(d.cell.point) === point);
    // label -> seed -> client -> value; 'base' comes from every cell of a seed and is the same model: first wins.
    const acc = new Map<string, Map<number, Map<string, number>>>();
    const loss = new Map<string, Map<number, number>>();
    for (const d of here)
      for (const [label, byClient] of d.final) {
        if (!acc.has(label)) acc.set(label, new Map());
        if (!loss.has(label)) loss.set(label, new Map());
        const seeds = acc.get(label)!;
        if (seeds.has(d.cell.seed)) continue;
        const m = new Map<string, number>();
        for (const [client, v] of byClient) if (v.accuracy !== null) m.set(client, v.accuracy);
        seeds.set(d.cell.seed, m);
        const l = byClient.get(ALL_CLIENTS)?.loss;
        if (typeof l === 'number') loss.get(label)!.set(d.cell.seed, l);
      }
    for (const label of [...acc.keys()].toSorted((a, b) => labelOrder(a) - labelOrder(b) || (a < b ? -1 : 1))) {
      const seeds = acc.get(label)!;
      const clients = [...new Set([...seeds.values()].flatMap((m) => [...m.keys()]))].toSorted(compareClients);
      const perClient: Record<string, MeanCi> = {};
      for (const c of clients)
        perClient[c] = meanCi([...seeds.values()].map((m) => m.get(c)).filter((v): v is number => v !== undefined));
      rows.push({
        point,
        label,
        accuracy: perClient[ALL_CLIENTS] ?? meanCi([]),
        loss: meanCi([...loss.get(label)!.values()]),
        perClient,
      });
    }
    for (const { treatment, baseline } of spec.compare) {
      const t = acc.get(treatment);
      const b = acc.get(baseline);
      const diffs: number[] = [];
      if (t && b)
        for (const [seed, m] of t) {
          const x = m.get(ALL_CLIENTS);
          const y = b.get(seed)?.get(ALL_CLIENTS);
          if (x !== undefined && y !== undefined) diffs.push(x - y);
        }
      const diff = meanCi(diffs);
      const lossDiffs: number[] = [];
      const tl = loss.get(treatment);
      const bl = loss.get(baseline);
      if (tl && bl)
        for (const [seed, x] of tl) {
          const y = bl.get(seed);
          if (y !== undefined) lossDiffs.push(x - y);
        }
      const lossDiff = meanCi(lossDiffs);
      comparisons.push({
        point,
        treatment,
        baseline,
        diff,
        lossDiff,
        verdict: `${verdictOf(treatment, baseline, diff)} ${lossVerdict(lossDiff)}`,
      });
    }
  }
  return { rows, comparisons, cellsDone: done.length, cellsTotal: cells.length };
}

function lossVerdict(d: MeanCi): string {
  if (d.n < 2) return '';
  const lo = d.mean - d.half;
  const hi = d.mean + d.half;
  const what = hi < 0 ? 'lower (better)' : lo > 0 ? 'higher (worse)' : 'not significantly different';
  return `Test loss: ${what}, ${d.mean >= 0 ? '+' : ''}${d.mean.toFixed(3)} nats/token (95 % CI ${lo.toFixed(3)} to ${hi.toFixed(3)}).`;
}

function verdictOf(treatment: string, baseline: string, d: MeanCi): string {
  if (d.n === 0) return `${treatment} vs ${baseline}: no paired seeds finished yet.`;
  if (d.n < 2)
    return `${treatment} - ${baseline}: ${pts(d.mean)} points from 1 seed; no interval (needs >= 2 seeds, 3+ to mean much).`;
  const lo = d.mean - d.half;
  const hi = d.mean + d.half;
  const what =
    lo > 0
      ? `${treatment} beats ${baseline}`
      : hi < 0
        ? `${baseline} beats ${treatment}`
        : `no significant difference between ${treatment} and ${baseline}`;
  return `${what}: ${pts(d.mean)} accuracy points (95 % CI ${pts(lo)} to ${pts(hi)}, t-interval over ${d.n} paired seeds)${lo > 0 || hi < 0 ? '; the CI excludes 0' : '; the CI includes 0'}.`;
}

/** Markdown tables + verdicts. */
export function summaryMarkdown(spec: ExperimentSpec, s: Summary): string {
  const out: string[] = [];
  if (spec.description) out.push(spec.description, '');
  out.push(
    `Cells finished: ${s.cellsDone} of ${s.cellsTotal}. Values: mean ± half-width of the 95 % t-interval over seeds (n = seeds); accuracy in %, exact match on the pooled test set ('all') and per client; loss in nats/token on the pooled test set.`,
    '',
  );
  for (const point of new Set(s.rows.map((r) => r.point))) {
    const rows = s.rows.filter((r) => r.point === point);
    const clients = [...new Set(rows.flatMap((r) => Object.keys(r.perClient)))]
      .filter((c) => c !== ALL_CLIENTS)
      .toSorted(compareClients);
    out.push(`### ${point}`, '');
    out.push(`| method / row | n | accuracy (all) | ${clients.join(' | ')} | test loss |`);
    out.push(`|---|---|---|${clients.map(() => '---|').join('')}---|`);
    for (const r of rows)
      out.push(
        `| ${r.label} | ${r.accuracy.n} | ${formatCi(r.accuracy, 1, 100)} | ${clients.map((c) => (r.perClient[c] ? formatCi(r.perClient[c], 1, 100) : '-')).join(' | ')} | ${formatCi(r.loss, 3)} |`,
      );
    out.push('');
    for (const cmp of s.comparisons.filter((x) => x.point === point)) out.push(`**Verdict.** ${cmp.verdict}`, '');
  }
  return out.join('\n');
}

const esc = (t: string): string =>
  t.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const pts = (x: number): string => (100 * x).toFixed(1);
const labelOrder = (l: string): number => (l === 'base' ? 0 : 1);

/** The experiment's report.html: mean accuracy curves per row label and grid point, then the tables. */
export function summaryHtml(spec: ExperimentSpec, s: Summary, done: readonly CellResult[]): string {
  const charts: string[] = [];
  for (const point of new Set(s.rows.map((r) => r.point))) {
    const byLabel = new Map<string, Map<number, number[]>>();
    for (const d of done.filter((x) => pointLabel(x.cell.point) === point))
      for (const [label, rounds] of d.curves) {
        if (label === 'base' && byLabel.has('base') && d.cell.method !== Object.keys(spec.methods)[0]) continue;
        if (!byLabel.has(label)) byLabel.set(label, new Map());
        for (const [r, v] of rounds) {
          const m = byLabel.get(label)!;
          if (!m.has(r)) m.set(r, []);
          m.get(r)!.push(100 * v);
        }
      }
    // The row's model variant picks its colour (as in a run's report) the first time it appears; a second method
    // with the same variant (an ablation) takes the next free palette colour. The base model is a reference line.
    const used = new Set<string>();
    const palette = ['#8c564b', '#e377c2', '#bcbd22', '#17becf', '#7f7f7f', '#9467bd', '#2ca02c', '#1f77b4'];
    const series: Series[] = [...byLabel]
      .filter(([name]) => name !== 'base')
      .toSorted((a, b) => (a[0] < b[0] ? -1 : 1))
      .map(([name, rounds]) => {
        let color = METHOD_COLORS[name.split('/').at(-1)!];
        if (!color || used.has(color)) color = palette.find((c) => !used.has(c)) ?? '#7f7f7f';
        used.add(color);
        return {
          name,
          color,
          points: [...rounds]
            .toSorted((p, q) => p[0] - q[0])
            .map(([r, vs]) => [r, vs.reduce((a, b) => a + b, 0) / vs.length] as const),
        };
      });
    const baseRounds = byLabel.get('base');
    const refs = baseRounds
      ? [{ name: 'base', value: [...baseRounds.values()].flat().reduce((a, b, _i, all) => a + b / all.length, 0) }]
      : [];
    // 0 to a little above the best value (in steps of 5 points, at most 100): on a 0-100 axis rows that differ by
    // a few points, the comparison the experiment exists for, would sit in one band at the bottom.
    const highest = Math.max(0, ...series.flatMap((x) => x.points.map((q) => q[1])), ...refs.map((r) => r.value));
    const top = Math.min(100, Math.max(10, Math.ceil((highest * 1.2) / 5) * 5));
    charts.push(
      `<section><h2>${esc(point)}: pooled accuracy per round (mean over seeds)</h2>${renderLineChart({ title: point, xLabel: 'round (after aggregation r)', yLabel: 'accuracy (%)', series, refs, yRange: [0, top] })}</section>`,
    );
  }
  const md = summaryMarkdown(spec, s);
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Experiment summary</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#1b1f24}table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #d0d7de;padding:4px 8px;font-size:13px;text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}p{font-size:14px;line-height:1.45}svg text{font-size:11px}</style></head>
<body><h1>Experiment summary</h1>${charts.join('\n')}<h2>Tables and verdict</h2>${markdownToHtml(md)}</body></html>
`;
}

export async function writeSummary(
  outDir: string,
  spec: ExperimentSpec,
  cells: readonly Cell[],
  done: readonly CellResult[],
): Promise<Summary> {
  const s = summarize(spec, cells, done);
  await writeFile(join(outDir, 'summary.md'), summaryMarkdown(spec, s) + '\n');
  await writeFile(join(outDir, 'summary.json'), JSON.stringify(s, null, 1) + '\n');
  await writeFile(join(outDir, 'report.html'), summaryHtml(spec, s, done));
  return s;
}

/**
 * The summary's markdown as HTML: headings, pipe tables and paragraphs with **bold**, which is all summaryMarkdown
 * writes (a markdown library for three constructs would be a dependency for nothing).
 */
function markdownToHtml(md: string): string {
  const inline = (t: string): string => esc(t).replace(/\*\*(.+?)\*\*/g, '<strong>$1</strong>');
  const cells = (line: string): string[] =>
    line
      .trim()
      .replace(/^\||\|$/g, '')
      .split('|')
      .map((c) => c.trim());
  const out: string[] = [];
  const blocks = md.split(/\n\s*\n/);
  for (const block of blocks) {
    const lines = block.split('\n').filter((l) => l.trim() !== '');
    if (lines.length === 0) continue;
    if (lines[0]!.startsWith('#')) {
      const level = Math.min(6, (/^#+/.exec(lines[0]!)?.[0].length ?? 3) + 0);
      out.push(`<h${level}>${inline(lines[0]!.replace(/^#+\s*/, ''))}</h${level}>`);
      lines.shift();
      if (lines.length === 0) continue;
    }
    if (lines.every((l) => l.trim().startsWith('|'))) {
      const [head, , ...body] = lines;
      out.push(
        `<table><thead><tr>${cells(head!)
          .map((c) => `<th>${inline(c)}</th>`)
          .join('')}</tr></thead><tbody>${body
          .map(
            (r) =>
              `<tr>${cells(r)
                .map((c) => `<td>${inline(c)}</td>`)
                .join('')}</tr>`,
          )
          .join('')}</tbody></table>`,
      );
    } else out.push(`<p>${inline(lines.join(' '))}</p>`);
  }
  return out.join('\n');
}
