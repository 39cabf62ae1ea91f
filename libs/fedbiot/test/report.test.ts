import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import type { MetricsEvent } from '../src/run-dir.js';
import { MetricsLog, createRunDir } from '../src/run-dir.js';
import { resultsFromEvents, validateResults, writeResultsJson, type ResultRow } from '../src/report/results-json.js';
import { formatBytes, formatResultsTable } from '../src/report/results-table.js';
import {
  evalSeries,
  niceTicks,
  privacyHtml,
  renderLineChart,
  renderReportHtml,
  writeReportHtml,
} from '../src/report/report-html.js';
import { progress } from '../src/progress.js';
import { withTmp } from '../../../test/support/tmp.js';

// Two rounds of a FedBiOT demo run: 2 clients + the global set, three methods, plus comm and train events.
function demoEvents(): MetricsEvent[] {
  const ev: MetricsEvent[] = [];
  let ts = 0;
  for (const round of [0, 1, 2]) {
    for (const client of ['add', 'sub'])
      ev.push({
        ts: ts++,
        round,
        kind: 'train',
        method: 'fedbiot',
        client,
        loss: 3 - round * 0.5 - (client === 'sub' ? 0.1 : 0),
      });
    ev.push({ ts: ts++, round, kind: 'comm', down: 1000 + round * 10, up: 500 });
    for (const method of ['base', 'fedbiot-adapemu', 'fedbiot-adapfu'] as const) {
      for (const client of ['add', 'sub', 'all']) {
        const gain = method === 'base' ? 0 : round * 0.2;
        ev.push({
          ts: ts++,
          round,
          kind: 'eval',
          method,
          client,
          test_loss: 2.5 - gain,
          accuracy: method === 'base' ? 0.1 : 0.1 + round * 0.15,
        });
      }
    }
  }
  return ev;
}

test('resultsFromEvents takes each (method, client) from its latest round and averages bytes per round', () => {
  const r = resultsFromEvents(demoEvents());
  assert.equal(r.rows.length, 9);
  assert.deepEqual(
    r.rows.slice(0, 3).map((x) => [x.method, x.client]),
    [
      ['base', 'add'],
      ['base', 'sub'],
      ['base', 'all'],
    ],
  );
  const emu = r.rows.find((x) => x.method === 'fedbiot-adapemu' && x.client === 'all')!;
  assert.ok(Math.abs(emu.test_loss! - 2.1) < 1e-12);
  assert.ok(Math.abs(emu.accuracy! - 0.4) < 1e-12);
  assert.deepEqual(r.bytes_per_round, { down: 1010, up: 500 });
  assert.deepEqual(validateResults(r), []);
});

test('results.json has the documented shape and rejects bad rows', async () => {
  await withTmp('fedbiot-report-', async (dir) => {
    const rows: ResultRow[] = [
      { method: 'fedbiot-adapfu', client: 'all', test_loss: 1.25, accuracy: 0.5 },
      { method: 'base', client: 'c1', test_loss: 2, accuracy: null },
    ];
    const path = await writeResultsJson(dir, { rows, bytes_per_round: { down: 4096, up: 2048 } });
    const doc = JSON.parse(await readFile(path, 'utf8'));
    assert.deepEqual(Object.keys(doc), ['rows', 'bytes_per_round']);
    assert.deepEqual(doc.rows, [
      { method: 'base', client: 'c1', test_loss: 2, accuracy: null },
      { method: 'fedbiot-adapfu', client: 'all', test_loss: 1.25, accuracy: 0.5 },
    ]);
    assert.deepEqual(doc.bytes_per_round, { down: 4096, up: 2048 });
    await assert.rejects(
      writeResultsJson(dir, {
        rows: [
          { method: 'fedprox' as never, client: 'c1', test_loss: Number.NaN, accuracy: 1.5 },
          { method: 'base', client: 'c1', test_loss: 1, accuracy: 0 },
          { method: 'base', client: 'c1', test_loss: 1, accuracy: 0 },
        ],
        bytes_per_round: { down: -1, up: 0 },
      }),
      (e: unknown) =>
        e instanceof Error &&
        /rows\[0\]\.method: unknown method "fedprox"/.test(e.message) &&
        /rows\[0\]\.test_loss/.test(e.message) &&
        /rows\[0\]\.accuracy: must be in \[0, 1\]/.test(e.message) &&
        /rows\[2\]: duplicate row for method base, client c1/.test(e.message) &&
        /bytes_per_round\.down/.test(e.message),
    );
  });
});

test('the results table is fixed-width, methods as rows, clients as columns with all last', () => {
  const text = formatResultsTable(resultsFromEvents(demoEvents()).rows, { down: 1536, up: 500 });
  const lines = text.split('\n');
  assert.equal(lines[0], 'Test loss (nats/token, lower is better)');
  assert.match(lines[1] ?? '', /^method\s+\|\s+add \|\s+sub \|\s+all$/);
  assert.equal(lines[3], 'base            | 2.5000 | 2.5000 | 2.5000');
  assert.equal(lines[4], 'fedbiot-adapemu | 2.1000 | 2.1000 | 2.1000');
  // Every row of a table has the same width.
  const table1 = lines.slice(1, 6);
  assert.equal(new Set(table1.map((l) => l.length)).size, 1);
  assert.ok(text.includes('Exact-match accuracy (%)'));
  assert.ok(text.includes('fedbiot-adapfu  | 40.0 | 40.0 | 40.0'));
  assert.ok(text.includes('Bytes per round (all selected clients together): down 1.50 KiB (1536 B), up 500 B'));
  const missing = formatResultsTable([
    { method: 'base', client: 'a', test_loss: 1, accuracy: null },
    { method: 'local-only', client: 'b', test_loss: 2, accuracy: 0.5 },
  ]);
  assert.ok(missing.includes('base       | 1.0000 |      -'));
  assert.equal(formatBytes(3 * 1024 * 1024), '3.00 MiB (3145728 B)');
});

const colour = (chart: string, name: string): string =>
  new RegExp(`data-series="${name}"[^>]*stroke="([^"]+)"`).exec(chart)?.[1] ?? assert.fail(`no series ${name}`);

test('report.html: a panel per client, a colour per method, base as a reference line, the tables and the config', () => {
  const events = demoEvents();
  const html = renderReportHtml({
    title: 'demo <run>',
    events,
    config: { job: { rounds: 3, id: 'a&b' } },
    verdict: ['Verdict: x < y'],
  });
  const svgs = html.match(/<svg[\s>]/g) ?? [];
  assert.equal(svgs.length, 3 + 3 + 2, 'accuracy and test loss for add, sub, all; training loss for add, sub');
  const charts = html
    .split('<svg')
    .slice(1)
    .map((c) => c.slice(0, c.indexOf('</svg>')));
  const chartAt = (i: number): string => charts[i] ?? assert.fail(`no chart ${i}`);
  for (const [i, chart] of charts.entries()) {
    const isEval = i < 6;
    // Tuned methods are curves; the base model (measured once per round here, zero-shot) is a dashed reference.
    assert.equal((chart.match(/<polyline /g) ?? []).length, isEval ? 2 : 1, `chart ${i}`);
    assert.equal((chart.match(/class="ref"/g) ?? []).length, isEval ? 1 : 0, `chart ${i}`);
    assert.equal((chart.match(/class="legend-item"/g) ?? []).length, isEval ? 3 : 1);
    assert.ok((chart.match(/class="xtick"/g) ?? []).length >= 2);
    assert.ok((chart.match(/class="ytick"/g) ?? []).length >= 2);
  }
  // One colour per method in every panel.
  assert.equal(colour(chartAt(0), 'fedbiot-adapfu'), colour(chartAt(2), 'fedbiot-adapfu'));
  assert.notEqual(colour(chartAt(0), 'fedbiot-adapfu'), colour(chartAt(0), 'fedbiot-adapemu'));
  // Accuracy on a fixed 0-100 axis.
  assert.ok(chartAt(0).includes('>100</text>') && chartAt(0).includes('>0</text>'));
  // Loss: the axis spans the tuned curves; a base model far above them sits on the edge, marked off scale.
  assert.match(chartAt(3), /base 2\.50<\/text>/);
  const far = renderReportHtml({
    events: events.map((e) => (e.kind === 'eval' && e['method'] === 'base' ? { ...e, test_loss: 13 } : e)),
  });
  assert.match(far, /base 13\.0 \(off scale, above\)/);
  // Training loss of round r is plotted at r + 1, like the evaluation after it.
  const train = (/data-series="fedbiot"[^>]*points="([^"]+)"/.exec(chartAt(6))?.[1] ?? '').split(' ');
  assert.equal(train.length, 3);
  assert.ok(html.includes('<p class="verdict">Verdict: x &lt; y</p>'));
  assert.ok(html.includes('<table class="results-table">'));
  assert.ok(html.includes('<td>fedbiot-adapfu</td>'));
  assert.ok(html.includes('&quot;a&amp;b&quot;'), 'config is escaped');
  assert.ok(html.includes('<title>demo &lt;run&gt;</title>'));
  assert.ok(!/(src|href)=["']https?:/.test(html), 'no external assets');
  assert.ok(!html.includes('<script'));
});

test('report.html DP table: clipped of the clients in the sum and the mean update norm, secure or not', () => {
  const dp = { kind: 'privacy', noise_multiplier: 1, effective_noise_multiplier: 0.9, delta: 1e-5, clip: 0.05 };
  const html = privacyHtml([
    { ts: 0, round: 0, ...dp, epsilon: 3.25, clients: 3, clipped_clients: 2, mean_update_norm: 0.0712 },
    // Secure aggregation: one of 3 sampled clients dropped before masking; the stats are the survivors'.
    {
      ts: 1,
      round: 1,
      ...dp,
      epsilon: null,
      clients: 3,
      secagg_survivors: 2,
      clipped_clients: 1,
      mean_update_norm: 0.04,
    },
  ]);
  const rows = [...html.matchAll(/<tr><td>main<\/td>(.*?)<\/tr>/g)].map((m) => m[1]);
  assert.equal(rows.length, 2);
  assert.match(rows[0]!, /<td>2 \/ 3<\/td><td>0\.0712<\/td>$/);
  assert.match(rows[1]!, /<td>&infin;<\/td>.*<td>1 \/ 2<\/td><td>0\.0400<\/td>$/);
  assert.ok(html.includes('<th>mean norm</th>'));
  assert.match(rows[0]!, /<td>1e-5<\/td>/, 'delta in exponent form, not 0.00001');
  // No undefined cells when a field is missing (a round skipped before clipping).
  assert.doesNotMatch(privacyHtml([{ ts: 0, round: 0, ...dp, epsilon: 1, clients: 1 }]), /undefined/);
});

test('chart legend: each series with its last value, so coinciding curves (all methods at 0) stay readable', () => {
  const svg = renderLineChart({
    title: 'accuracy',
    xLabel: 'round',
    yLabel: '%',
    series: [
      {
        name: 'fedbiot-adapfu',
        points: [
          [1, 0],
          [2, 0],
        ],
      },
      {
        name: 'offsite-tuning',
        points: [
          [1, 0],
          [2, 0],
        ],
      },
      {
        name: 'fedbiot-adapemu',
        points: [
          [1, 0],
          [2, 12.5],
        ],
      },
    ],
  });
  const labels = [...svg.matchAll(/class="legend-item">.*?<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
  assert.deepEqual(labels, ['fedbiot-adapfu 0.00', 'offsite-tuning 0.00', 'fedbiot-adapemu 12.5']);
});

test('chart geometry: points map linearly onto the axes built from nice ticks', () => {
  assert.deepEqual(niceTicks(0, 10, 6), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(niceTicks(0.13, 0.87, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(1, 1, 5, true), [0, 1, 2]);
  assert.deepEqual(niceTicks(0, 3, 8, true), [0, 1, 2, 3]);
  const svg = renderLineChart(
    {
      title: 't',
      xLabel: 'round',
      yLabel: 'v',
      series: [
        {
          name: 's',
          points: [
            [0, 0],
            [10, 10],
            [5, 2.5],
          ],
        },
      ],
    },
    860,
    320,
  );
  // Plot box: left 64, width 860 - 64 - 216 = 580; top 12, height 320 - 12 - 44 = 264; axes 0..10 both ways.
  const pts = /points="([^"]+)"/.exec(svg)![1];
  assert.equal(pts, '64.0,276.0 644.0,12.0 354.0,210.0');
  // A long legend label widens the legend, and then the picture, instead of being clipped (experiment reports name
  // series '<method>/<row>'): the label's text must start and end inside the SVG.
  const long = 'fedbiot-favour-with-a-long-name/fedbiot-adapemu';
  const wide = renderLineChart({
    title: 't',
    xLabel: 'x',
    yLabel: 'y',
    series: [{ name: long, points: [[1, 31.25]] }],
  });
  const svgWidth = Number(/<svg [^>]*width="(\d+)"/.exec(wide)![1]);
  const labelX = Number(new RegExp(`<text x="([\\d.]+)"[^>]*>${long} 31\\.3<`).exec(wide)![1]);
  assert.ok(labelX + 6.5 * `${long} 31.3`.length <= svgWidth, `label at ${labelX} in an SVG ${svgWidth} wide`);
  const plotWidth = Number(/<rect x="64" y="12" width="([\d.]+)"/.exec(wide)![1]);
  assert.ok(plotWidth >= 480, `plot ${plotWidth} px wide`);
  // A single-round series still gets a marker.
  const one = renderLineChart({ title: 't', xLabel: 'x', yLabel: 'y', series: [{ name: 'a', points: [[3, 1]] }] });
  assert.equal((one.match(/<circle /g) ?? []).length, 1);
  assert.deepEqual(
    evalSeries([{ ts: 0, round: 0, kind: 'eval', method: 'base', client: 'x', accuracy: Number.NaN }], 'accuracy'),
    [],
  );
});

test('writeReportHtml builds the page from a run folder', async () => {
  await withTmp('fedbiot-report-', async (out) => {
    const run = await createRunDir(out, 'r1', { job: { rounds: 3 } });
    const log = await MetricsLog.open(run.dir);
    for (const e of demoEvents()) log.log(e);
    log.close();
    const path = await writeReportHtml(run.dir);
    const html = await readFile(path, 'utf8');
    assert.equal((html.match(/<svg[\s>]/g) ?? []).length, 8);
    assert.ok(html.includes('Resolved configuration'));
  });
});

test('progress in plain mode prints a line per 10% and a final line; ticks past total are clamped', () => {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (b: Buffer) => (text += b.toString()));
  let clock = 0;
  const p = progress('align', 20, { stream, tty: false, now: () => clock });
  for (let i = 0; i < 25; i++) p.tick(1, { loss: 1.23456 });
  clock = 2500;
  p.done({ loss: 0.5 });
  p.done();
  const lines = text.trimEnd().split('\n');
  assert.equal(lines.length, 10);
  assert.equal(lines[0], 'align: 2/20 (10%) loss=1.235');
  assert.equal(lines[8], 'align: 18/20 (90%) loss=1.235');
  assert.equal(lines[9], 'align: done 20/20 in 2.5s loss=0.5');
  assert.throws(() => progress('x', 0), /total must be an integer >= 1/);
});

test('the single-run verdict says whether plugging the adapter into the full model helped, by the sign it prints', async () => {
  const { singleRunVerdict } = await import('../src/report/verdict.js');
  const rows = (fu: number, emu: number): ResultRow[] => [
    { method: 'fedbiot-adapfu', client: 'all', test_loss: 1, accuracy: fu },
    { method: 'fedbiot-adapemu', client: 'all', test_loss: 1, accuracy: emu },
    { method: 'offsite-tuning', client: 'all', test_loss: 1, accuracy: 0.15 },
  ];
  const line = (fu: number, emu: number): string =>
    singleRunVerdict(rows(fu, emu), 540).find((l) => l.startsWith('AdapFu - AdapEmu')) ?? '';
  assert.match(line(0.133, 0.185), /^AdapFu - AdapEmu: -5\.2 points \(plugging .* did not help here\)/);
  assert.match(line(0.3, 0.2), /^AdapFu - AdapEmu: 10\.0 points \(plugging .* helped\)/);
});
