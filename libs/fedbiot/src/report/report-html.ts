import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../../engine/src/light.js';
import { CONFIG_FILE, METRICS_FILE, readMetrics, type MetricsEvent } from '../run-dir.js';
import { RESULT_METHODS } from '../methods.js';
import { ALL_CLIENTS, compareClients, isEvalEvent, resultsFromEvents, type Results } from './results-json.js';
import { formatBytes } from './results-table.js';

/**
 * report.html: one self-contained page per run (no scripts, fonts or images from elsewhere, so it opens offline
 * and can be mailed): line charts drawn as inline SVG from metrics.jsonl, the results tables and the resolved
 * configuration.
 */

export interface ReportInput {
  readonly title?: string;
  readonly events: readonly MetricsEvent[];
  /** Final results; default: resultsFromEvents(events). */
  readonly results?: Results;
  /** The resolved job spec, shown verbatim. */
  readonly config?: unknown;
  /** Verdict and sample-size lines, shown under the results tables (report/verdict.ts). */
  readonly verdict?: readonly string[];
}

/** One line of a chart. */
export interface Series {
  readonly name: string;
  /** Line colour; default: the palette by position. */
  readonly color?: string;
  /** (round, value) pairs; non-finite values are skipped. */
  readonly points: readonly (readonly [number, number])[];
}

export interface ChartSpec {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly Series[];
  /** Fixed y range (e.g. [0, 100] for accuracy in %), so charts compare at a glance; default: the data's. */
  readonly yRange?: readonly [number, number];
  /**
   * Reference values drawn as dashed horizontal lines across the chart (the base model, a baseline measured once).
   * They never widen the y range: one outside it sits on the edge, marked "off scale" with its value.
   */
  readonly refs?: readonly { readonly name: string; readonly value: number; readonly color?: string }[];
}

/** Series of one eval metric, one per (method, client), points ordered by round (latest event per round wins). */
export function evalSeries(events: readonly MetricsEvent[], metric: 'test_loss' | 'accuracy', scale = 1): Series[] {
  const byKey = new Map<string, { method: string; client: string; points: Map<number, number> }>();
  for (const e of events) {
    if (!isEvalEvent(e)) continue;
    const v = e[metric];
    if (typeof v !== 'number' || !Number.isFinite(v)) continue;
    const key = `${e.method}\u0000${e.client}`;
    let s = byKey.get(key);
    if (s === undefined) byKey.set(key, (s = { method: e.method, client: e.client, points: new Map() }));
    s.points.set(e.round, v * scale);
  }
  return [...byKey.values()]
    .toSorted((a, b) => methodOrder(a.method) - methodOrder(b.method) || compareClients(a.client, b.client))
    .map((s) => ({ name: `${s.method} / ${s.client}`, points: [...s.points].toSorted((p, q) => p[0] - q[0]) }));
}

/** Training-loss series from 'train' events with a numeric `loss`, one per (method, client), mean per round. */
export function trainSeries(events: readonly MetricsEvent[]): Series[] {
  const byKey = new Map<string, Map<number, { sum: number; n: number }>>();
  for (const e of events) {
    if (e.kind !== 'train' || typeof e['loss'] !== 'number' || !Number.isFinite(e['loss'])) continue;
    const key = `${e.method ?? 'train'} / ${e.client ?? 'all'}`;
    let rounds = byKey.get(key);
    if (rounds === undefined) byKey.set(key, (rounds = new Map()));
    const acc = rounds.get(e.round) ?? { sum: 0, n: 0 };
    acc.sum += e['loss'];
    acc.n++;
    rounds.set(e.round, acc);
  }
  return [...byKey]
    .toSorted((a, b) => (a[0] < b[0] ? -1 : 1))
    .map(([name, rounds]) => ({
      name,
      points: [...rounds].toSorted((p, q) => p[0] - q[0]).map(([r, a]) => [r, a.sum / a.n] as const),
    }));
}

const methodOrder = (m: string): number => {
  const i = (RESULT_METHODS as readonly string[]).indexOf(m);
  return i < 0 ? RESULT_METHODS.length : i;
};

/** One colour per method, the same in every panel and report. */
export const METHOD_COLORS: Readonly<Record<string, string>> = {
  base: '#6e7781',
  'fedbiot-adapfu': '#d62728',
  'fedbiot-adapemu': '#ff7f0e',
  'offsite-tuning': '#1f77b4',
  'local-only': '#9467bd',
  'fedavg-lora': '#2ca02c',
  fedbiot: '#d62728',
};

/** Methods measured once (before training, or only at the end): reference lines rather than curves. */
const REFERENCE_METHODS = new Set(['base', 'local-only']);

/**
 * One chart per client ('all' last) of an eval metric: a curve per tuned method, the base model and local-only as
 * reference lines. Accuracy uses a fixed 0-100 axis; loss uses the tuned methods' range, so a base model far above
 * them is an off-scale reference line instead of squashing every curve into one band.
 */
export function clientPanels(
  events: readonly MetricsEvent[],
  metric: 'test_loss' | 'accuracy',
  yLabel: string,
): ChartSpec[] {
  const scale = metric === 'accuracy' ? 100 : 1;
  const byClient = new Map<string, Map<string, Map<number, number>>>();
  for (const e of events) {
    if (!isEvalEvent(e)) continue;
    const v = e[metric];
    if (typeof v !== 'number' || !Number.isFinite(v)) continue;
    if (!byClient.has(e.client)) byClient.set(e.client, new Map());
    const methods = byClient.get(e.client)!;
    if (!methods.has(e.method)) methods.set(e.method, new Map());
    methods.get(e.method)!.set(e.round, v * scale);
  }
  return [...byClient.keys()].toSorted(compareClients).map((client) => {
    const methods = [...byClient.get(client)!].toSorted((a, b) => methodOrder(a[0]) - methodOrder(b[0]));
    const series: Series[] = methods
      .filter(([m]) => !REFERENCE_METHODS.has(m))
      .map(([m, pts]) => ({
        name: m,
        color: METHOD_COLORS[m] ?? '#17becf',
        points: [...pts].toSorted((p, q) => p[0] - q[0]),
      }));
    const refs = methods
      .filter(([m]) => REFERENCE_METHODS.has(m))
      .map(([m, pts]) => ({
        name: m,
        value: [...pts].toSorted((p, q) => p[0] - q[0]).at(-1)![1],
        color: METHOD_COLORS[m] ?? '#6e7781',
      }));
    let yRange: readonly [number, number] | undefined = metric === 'accuracy' ? [0, 100] : undefined;
    if (metric === 'test_loss') {
      const ys = series.flatMap((x) => x.points.map((p) => p[1]));
      if (ys.length === 0) {
        const rs = refs.map((r) => r.value);
        if (rs.length) yRange = [Math.min(...rs), Math.max(...rs)];
      } else {
        const lo = Math.min(...ys);
        const hi = Math.max(...ys);
        const pad = Math.max((hi - lo) * 0.15, 0.02);
        yRange = [Math.max(0, lo - pad), hi + pad];
      }
    }
    return {
      title: client === ALL_CLIENTS ? 'all clients (pooled)' : `client ${client}`,
      xLabel: 'round (0 = before training)',
      yLabel,
      series,
      refs,
      ...(yRange ? { yRange } : {}),
    };
  });
}

/** Training loss per client: a curve per method, plotted at the round it produces (round r's training -> r + 1). */
export function trainPanels(events: readonly MetricsEvent[]): ChartSpec[] {
  const byClient = new Map<string, Map<string, Map<number, { sum: number; n: number }>>>();
  for (const e of events) {
    if (e.kind !== 'train' || typeof e['loss'] !== 'number' || !Number.isFinite(e['loss'])) continue;
    const client = String(e.client ?? 'all');
    const method = String(e.method ?? 'train');
    if (!byClient.has(client)) byClient.set(client, new Map());
    const methods = byClient.get(client)!;
    if (!methods.has(method)) methods.set(method, new Map());
    const rounds = methods.get(method)!;
    const acc = rounds.get(e.round + 1) ?? { sum: 0, n: 0 };
    acc.sum += e['loss'];
    acc.n++;
    rounds.set(e.round + 1, acc);
  }
  return [...byClient.keys()].toSorted(compareClients).map((client) => ({
    title: `client ${client}`,
    xLabel: 'round',
    yLabel: 'training loss (nats/token)',
    series: [...byClient.get(client)!]
      .toSorted((a, b) => methodOrder(a[0]) - methodOrder(b[0]))
      .map(([m, rounds]) => ({
        name: m,
        color: METHOD_COLORS[m] ?? '#17becf',
        points: [...rounds].toSorted((p, q) => p[0] - q[0]).map(([r, a]) => [r, a.sum / a.n] as const),
      })),
  }));
}

/**
 * The emulator-to-full-model gap on public data, from 'align' events: normalised hidden-state L2 and KL, each
 * before a round's alignment (with the round's new adapter) and after it; pre-alignment at round 0.
 */
export function alignmentPanels(events: readonly MetricsEvent[]): ChartSpec[] {
  const pts = {
    l2_before: new Map<number, number>(),
    l2_after: new Map<number, number>(),
    kl_before: new Map<number, number>(),
    kl_after: new Map<number, number>(),
  };
  for (const e of events) {
    if (e.kind !== 'align' || typeof e['l2_before'] !== 'number') continue;
    const x = e['stage'] === 'pre' ? 0 : e.round + 1;
    for (const k of Object.keys(pts) as (keyof typeof pts)[])
      if (typeof e[k] === 'number' && Number.isFinite(e[k])) pts[k].set(x, e[k]);
  }
  const series = (k: keyof typeof pts, name: string, color: string): Series => ({
    name,
    color,
    points: [...pts[k]].toSorted((a, b) => a[0] - b[0]),
  });
  if (pts.l2_before.size === 0) return [];
  return [
    {
      title: 'hidden-state L2 (normalised)',
      xLabel: 'round (0 = pre-alignment)',
      yLabel: 'mean (T-S)^2 / mean T^2',
      series: [series('l2_before', 'before alignment', '#ff7f0e'), series('l2_after', 'after alignment', '#2ca02c')],
    },
    {
      title: 'KL(full || emulator), nats/token',
      xLabel: 'round (0 = pre-alignment)',
      yLabel: 'KL (nats/token)',
      series: [series('kl_before', 'before alignment', '#ff7f0e'), series('kl_after', 'after alignment', '#2ca02c')],
    },
  ];
}

const num = (v: unknown, digits: number): string => (typeof v === 'number' ? v.toFixed(digits) : '-');
const count = (v: unknown): string => (typeof v === 'number' ? String(v) : '-');

/**
 * Client-level DP (privacy.dp): the (epsilon, delta) the RDP accountant reports after each round, per phase, from
 * the metrics' `privacy` events ('' when the run has no DP). epsilon null in the events means unbounded (sigma 0).
 * Under secure aggregation the clipped count and the mean pre-clip norm are over the clients in the sum (their
 * stats travel masked with the update), so `clipped` reads "of the survivors".
 */
export function privacyHtml(events: readonly MetricsEvent[]): string {
  const rows = events.filter((e) => e.kind === 'privacy' && 'noise_multiplier' in e) as readonly (MetricsEvent &
    Record<string, unknown>)[];
  if (rows.length === 0) return '';
  const body = rows
    .map((e) => {
      const eps = e['epsilon'];
      const inSum = e['secagg_survivors'] ?? e['clients'];
      return `<tr><td>${esc(String(e['phase'] ?? 'main'))}</td><td>${e.round + 1}</td><td>${eps === null ? '&infin;' : num(eps, 3)}</td><td>${typeof e['delta'] === 'number' ? e['delta'].toExponential() : '-'}</td><td>${num(e['effective_noise_multiplier'], 3)}</td><td>${num(e['clip'], 4)}</td><td>${count(e['clipped_clients'])} / ${count(inSum)}</td><td>${num(e['mean_update_norm'], 4)}</td></tr>`;
    })
    .join('\n');
  return `<section class="privacy"><h2>Client-level differential privacy</h2>
<p class="note">DP-FedAvg: each client's update clipped to L2 norm C, Gaussian noise of std sigma C on the sum; (epsilon, delta) spent after each round (RDP accountant, all rounds of the phase so far). clipped: clients whose update norm exceeded C, of the clients in the sum; mean norm: their mean update norm before clipping (under secure aggregation both come from the masked sum, never from one client).</p>
<table class="privacy-table"><thead><tr><th>phase</th><th>round</th><th>epsilon</th><th>delta</th><th>sigma</th><th>C</th><th>clipped</th><th>mean norm</th></tr></thead><tbody>
${body}
</tbody></table></section>`;
}

/** The full HTML page. */
export function renderReportHtml(input: ReportInput): string {
  const title = input.title ?? 'FedBiOT run report';
  const results = input.results ?? resultsFromEvents(input.events);
  const groups: { title: string; note: string; charts: ChartSpec[] }[] = [
    {
      title: 'Exact-match accuracy per round',
      note: 'One panel per client; one colour per method; dashed: the base model and local-only, measured once.',
      charts: clientPanels(input.events, 'accuracy', 'accuracy (%)'),
    },
    {
      title: 'Test loss per round',
      note: 'The axis spans the tuned methods; a reference far outside it sits on the edge, marked off scale.',
      charts: clientPanels(input.events, 'test_loss', 'loss (nats/token)'),
    },
    { title: 'Training loss per round', note: '', charts: trainPanels(input.events) },
    {
      title: 'Emulator-to-full-model gap on public data (FedBiOT alignment)',
      note: 'Before: the gap the round\u2019s new adapter meets; after: at the round\u2019s last alignment step.',
      charts: alignmentPanels(input.events),
    },
  ];
  const dp = privacyHtml(input.events);
  const chartHtml = groups
    .filter((g) => g.charts.some((c) => c.series.length > 0 || (c.refs ?? []).length > 0))
    .map(
      (g) =>
        `<section class="chart"><h2>${esc(g.title)}</h2>${g.note ? `<p class="note">${esc(g.note)}</p>` : ''}\n<div class="panels">${g.charts
          .map((c) => `<figure><figcaption>${esc(c.title)}</figcaption>${renderLineChart(c, 540, 250)}</figure>`)
          .join('\n')}</div></section>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1b1f24;max-width:1160px}
h1{font-size:22px}h2{font-size:17px;margin:20px 0 8px}
.panels{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}figcaption{font-size:13px;font-weight:600;margin:4px 0}
.note,.verdict{font-size:13px;color:#424a53}.verdict{font-size:14px;color:#1b1f24}
table{border-collapse:collapse;margin:8px 0 16px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:right}th:first-child,td:first-child{text-align:left}
th{background:#f6f8fa}pre{background:#f6f8fa;padding:12px;overflow:auto;font-size:12px}
svg text{font-family:inherit;font-size:11px;fill:#1b1f24}
</style>
</head>
<body>
<h1>${esc(title)}</h1>
${chartHtml || '<p>No per-round evaluation events yet.</p>'}${dp === '' ? '' : `\n${dp}`}
<section class="results"><h2>Results</h2>
${renderResultsHtml(results)}
${(input.verdict ?? []).map((l) => `<p class="verdict">${esc(l)}</p>`).join('\n')}
</section>
${input.config === undefined ? '' : `<section class="config"><h2>Resolved configuration</h2>\n<pre>${esc(JSON.stringify(input.config, null, 2))}</pre></section>`}
</body>
</html>
`;
}

function renderResultsHtml(results: Results): string {
  const methods = RESULT_METHODS.filter((m) => results.rows.some((r) => r.method === m));
  const clients = [...new Set(results.rows.map((r) => r.client))].toSorted(compareClients);
  const get = (m: string, c: string) => results.rows.find((r) => r.method === m && r.client === c);
  const table = (caption: string, fmt: (m: string, c: string) => string): string =>
    `<table class="results-table"><caption>${esc(caption)}</caption><thead><tr><th>method</th>${clients.map((c) => `<th>${esc(c)}</th>`).join('')}</tr></thead><tbody>\n` +
    methods
      .map((m) => `<tr><td>${esc(m)}</td>${clients.map((c) => `<td>${fmt(m, c)}</td>`).join('')}</tr>`)
      .join('\n') +
    '\n</tbody></table>';
  if (results.rows.length === 0) return '<p>No evaluation results.</p>';
  return [
    table('Test loss (nats/token)', (m, c) => {
      const v = get(m, c)?.test_loss;
      return v === undefined || v === null ? '-' : v.toFixed(4);
    }),
    table('Exact-match accuracy (%)', (m, c) => {
      const v = get(m, c)?.accuracy;
      return v === undefined || v === null ? '-' : (100 * v).toFixed(1);
    }),
    `<p>Bytes per round (all selected clients together): down ${esc(formatBytes(results.bytes_per_round.down))}, up ${esc(formatBytes(results.bytes_per_round.up))}</p>`,
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// SVG line chart

const PALETTE = [
  '#1f77b4',
  '#d62728',
  '#2ca02c',
  '#ff7f0e',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#7f7f7f',
  '#bcbd22',
  '#17becf',
];
const DASHES = ['', '6 3', '2 3', '8 3 2 3'];

/**
 * An SVG line chart: axes with "nice" ticks (1, 2, 5 x 10^k), one polyline per series (markers at each point, so a
 * single-round series still shows) and a legend on the right. Colours cycle through 10, then dash patterns vary.
 */
export function renderLineChart(chart: ChartSpec, baseWidth = 860, height = 320): string {
  const all = chart.series.flatMap((s) => s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
  const refs = (chart.refs ?? []).filter((r) => Number.isFinite(r.value));
  // The legend is as wide as its longest label (11 px text, about 6.5 px per character, after a 28 px line sample);
  // a wide legend widens the picture instead of squeezing the plot below 480 px or clipping the labels.
  const longest = Math.max(
    0,
    ...chart.series.map((s) => seriesLabel(s).length),
    ...refs.map((r) => refLabel(r).length),
  );
  const legendW = Math.max(200, 28 + Math.ceil(6.5 * longest) + 8);
  const m = { left: 64, right: 16 + legendW, top: 12, bottom: 44 };
  const width = Math.max(baseWidth, m.left + 480 + m.right);
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const xTicks = niceTicks(xs.length ? Math.min(...xs) : 0, xs.length ? Math.max(...xs) : 1, 8, true);
  const yTicks = chart.yRange
    ? niceTicks(chart.yRange[0], chart.yRange[1], 6, false)
    : niceTicks(ys.length ? Math.min(...ys) : 0, ys.length ? Math.max(...ys) : 1, 6, false);
  // niceTicks gives at least one tick (its first is <= its last bound).
  const [x0, x1] = [xTicks[0]!, xTicks[xTicks.length - 1]!];
  const [y0, y1] = [yTicks[0]!, yTicks[yTicks.length - 1]!];
  const sx = (x: number): number => m.left + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number): number => m.top + ph - ((y - y0) / (y1 - y0)) * ph;
  const parts: string[] = [];
  // A long legend extends the picture downwards rather than running off it.
  const svgH = Math.max(height, m.top + 16 * (chart.series.length + refs.length) + 8);
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${svgH}" viewBox="0 0 ${width} ${svgH}" role="img" aria-label="${esc(chart.title)}">`,
  );
  parts.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="#fff" stroke="#d0d7de"/>`);
  for (const t of yTicks) {
    const y = f(sy(t));
    parts.push(`<line class="grid" x1="${m.left}" x2="${m.left + pw}" y1="${y}" y2="${y}" stroke="#eaeef2"/>`);
    parts.push(`<line class="tick" x1="${m.left - 4}" x2="${m.left}" y1="${y}" y2="${y}" stroke="#57606a"/>`);
    parts.push(
      `<text class="ytick" x="${m.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${esc(tickLabel(t, yTicks))}</text>`,
    );
  }
  for (const t of xTicks) {
    const x = f(sx(t));
    parts.push(`<line class="tick" x1="${x}" x2="${x}" y1="${m.top + ph}" y2="${m.top + ph + 4}" stroke="#57606a"/>`);
    parts.push(
      `<text class="xtick" x="${x}" y="${m.top + ph + 16}" text-anchor="middle">${esc(tickLabel(t, xTicks))}</text>`,
    );
  }
  parts.push(
    `<line class="axis" x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="#57606a"/>`,
  );
  parts.push(`<line class="axis" x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="#57606a"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="${height - 6}" text-anchor="middle">${esc(chart.xLabel)}</text>`);
  parts.push(
    `<text x="14" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 ${m.top + ph / 2})">${esc(chart.yLabel)}</text>`,
  );
  refs.forEach((r, j) => {
    const color = r.color ?? '#6e7781';
    const off = r.value > y1 ? 'above' : r.value < y0 ? 'below' : '';
    const y = f(sy(Math.min(y1, Math.max(y0, r.value))));
    parts.push(
      `<line class="ref" data-ref="${esc(r.name)}" x1="${m.left}" x2="${m.left + pw}" y1="${y}" y2="${y}" stroke="${color}" stroke-width="1.5" stroke-dasharray="5 4"/>`,
    );
    const label = refLabel(r, off);
    const ly = m.top + 8 + (chart.series.length + j) * 16;
    const lx = m.left + pw + 14;
    parts.push(
      `<g class="legend-item"><line x1="${lx}" x2="${lx + 22}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="1.5" stroke-dasharray="5 4"/><text x="${lx + 28}" y="${ly}" dominant-baseline="middle">${esc(label)}</text></g>`,
    );
  });
  chart.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const dash = DASHES[Math.floor(i / PALETTE.length) % DASHES.length];
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    const dashAttr = dash === '' ? '' : ` stroke-dasharray="${dash}"`;
    parts.push(
      `<polyline class="series" data-series="${esc(s.name)}" fill="none" stroke="${color}" stroke-width="2"${dashAttr} points="${pts.map(([x, y]) => `${f(sx(x))},${f(sy(y))}`).join(' ')}"/>`,
    );
    for (const [x, y] of pts)
      parts.push(
        `<circle cx="${f(sx(x))}" cy="${f(sy(y))}" r="2.5" fill="${color}"><title>${esc(`${s.name}: round ${x}, ${y}`)}</title></circle>`,
      );
    const ly = m.top + 8 + i * 16;
    const lx = m.left + pw + 14;
    const label = seriesLabel(s);
    parts.push(
      `<g class="legend-item"><line x1="${lx}" x2="${lx + 22}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${dashAttr}/><text x="${lx + 28}" y="${ly}" dominant-baseline="middle">${esc(label)}</text></g>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/**
 * A series' legend label: its name and last value. Curves that coincide (e.g. every method at accuracy 0 under strong
 * DP) hide each other; the legend still tells each one's value.
 */
function seriesLabel(s: ChartSpec['series'][number]): string {
  const last = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)).at(-1);
  return last === undefined ? s.name : `${s.name} ${fmtValue(last[1])}`;
}

/** A reference line's legend label; `off` says on which side of the y range it lies when it lies outside. */
function refLabel(r: NonNullable<ChartSpec['refs']>[number], off = 'above'): string {
  return off ? `${r.name} ${fmtValue(r.value)} (off scale, ${off})` : `${r.name} ${fmtValue(r.value)}`;
}

function fmtValue(v: number): string {
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** SVG coordinates with one decimal: enough for screen pixels, short files. */
function f(v: number): string {
  return v.toFixed(1);
}

/**
 * Evenly spaced round tick values covering [min, max], about `target` of them, with a step of 1, 2 or 5 x 10^k
 * (Heckbert, "Nice numbers for graph labels", Graphics Gems 1990). `integer` forces steps >= 1 (round numbers).
 */
export function niceTicks(min: number, max: number, target = 6, integer = false): number[] {
  let lo = min;
  let hi = max;
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= integer ? 1 : pad;
    hi += integer ? 1 : pad;
  }
  const range = niceNum(hi - lo, false);
  let step = niceNum(range / Math.max(1, target - 1), true);
  if (integer) step = Math.max(1, Math.round(step));
  const start = Math.floor(lo / step) * step;
  const end = Math.ceil(hi / step) * step;
  const out: number[] = [];
  // Rebuilding each tick from its index (not by repeated addition) keeps 0.1 + 0.2-style drift out of labels.
  for (let i = 0; start + i * step <= end + step * 1e-9; i++) out.push(Number((start + i * step).toPrecision(12)));
  return out;
}

function niceNum(x: number, round: boolean): number {
  const exp = Math.floor(Math.log10(x));
  const frac = x / 10 ** exp;
  let nf: number;
  if (round) nf = frac < 1.5 ? 1 : frac < 3 ? 2 : frac < 7 ? 5 : 10;
  else nf = frac <= 1 ? 1 : frac <= 2 ? 2 : frac <= 5 ? 5 : 10;
  return nf * 10 ** exp;
}

function tickLabel(v: number, ticks: readonly number[]): string {
  const [a, b] = ticks;
  const step = a !== undefined && b !== undefined ? Math.abs(b - a) : 1;
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(decimals);
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/**
 * Builds `<runDir>/report.html` from the run's metrics.jsonl and config.resolved.json (each optional) and returns
 * its path. `results` defaults to resultsFromEvents.
 */
export async function writeReportHtml(
  runDir: string,
  opts: { title?: string; results?: Results; verdict?: readonly string[] } = {},
): Promise<string> {
  const events = await readMetrics(join(runDir, METRICS_FILE)).catch((e: unknown) => {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  });
  let config: unknown;
  try {
    config = JSON.parse(await readFile(join(runDir, CONFIG_FILE), 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
      throw new Error(`${join(runDir, CONFIG_FILE)}: ${(e as Error).message}`, { cause: e });
  }
  const html = renderReportHtml({
    events,
    ...(opts.title === undefined ? {} : { title: opts.title }),
    ...(opts.results === undefined ? {} : { results: opts.results }),
    ...(opts.verdict === undefined ? {} : { verdict: opts.verdict }),
    config,
  });
  const path = join(runDir, 'report.html');
  await writeFileAtomic(path, async (fh) => {
    await fh.writeFile(html, 'utf8');
  });
  return path;
}
