/** The dashboard's charts without a browser: curves for the job's rows, reference lines for the rest, sane axes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dashboardCharts, dashboardData, lossRange } from '../../services/evaluator/dashboard.js';
import type { Progress } from '../../services/evaluator/evaluator.js';

const row = (method: string, client: string, testLoss: number, accuracy: number) => ({
  method,
  client,
  testLoss,
  accuracy,
  tokens: 10,
  items: 4,
});

const progress: Progress = {
  jobId: 'j',
  method: 'fedbiot',
  totalRounds: 2,
  evals: [
    { round: 0, rows: [row('base', 'all', 9.5, 0)] },
    { round: 1, rows: [row('fedbiot-adapfu', 'all', 3, 0), row('offsite-tuning', 'all', 4, 0.25)] },
    { round: 2, rows: [row('fedbiot-adapfu', 'all', 3, 0), row('offsite-tuning', 'all', 3.5, 0.5)] },
  ],
  train: [{ round: 0, client: 'add', loss: 0, tokens: 10 }],
};

const polylines = (svg: string): string[] => [...svg.matchAll(/data-series="([^"]+)"/g)].map((m) => m[1]!);
const refs = (svg: string): string[] => [...svg.matchAll(/class="ref" data-ref="([^"]+)"/g)].map((m) => m[1]!);
const yTicks = (svg: string): string[] => [...svg.matchAll(/class="ytick"[^>]*>([^<]*)</g)].map((m) => m[1]!);

test("the job's rows are curves; base and baselines are dashed reference lines at their latest value", () => {
  const [train, loss, acc] = dashboardCharts(progress);
  assert.deepEqual(polylines(loss!.svg), ['fedbiot-adapfu / all']);
  assert.deepEqual(refs(loss!.svg), ['base / all', 'offsite-tuning / all']);
  assert.match(acc!.svg, /offsite-tuning \/ all 50/, 'the latest value (round 2) labels the reference');
  assert.deepEqual(refs(train!.svg), []);
});

test('axes: accuracy always 0-100 %; a loss whose values are all equal keeps a range >= 0', () => {
  const [train, loss, acc] = dashboardCharts(progress);
  const a = yTicks(acc!.svg);
  assert.deepEqual([a[0], a.at(-1)], ['0', '100'], 'all accuracies 0: still 0..100, not -1..1');
  assert.ok(!yTicks(train!.svg).some((t) => t.startsWith('-')), `train loss all 0: ${yTicks(train!.svg).join(' ')}`);
  assert.ok(!yTicks(loss!.svg).some((t) => t.startsWith('-')));
  assert.deepEqual(lossRange([0, 0]), [0, 1]);
  assert.deepEqual(lossRange([3, 3]), [2.7, 3.3]);
  assert.equal(lossRange([2, 3]), undefined, 'different values: the chart picks its own range');
  assert.equal(lossRange([]), undefined);
});

test('dashboardData carries the job status (unknown until KV answers)', () => {
  assert.deepEqual(dashboardData(progress).job, { status: null, run: null });
  assert.equal(dashboardData(progress).progress.evaluated, 2);
});
