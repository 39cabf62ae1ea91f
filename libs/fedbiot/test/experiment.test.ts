import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expandGrid, experimentSpecSchema, loadExperimentSpec, type Cell } from '../src/experiment/grid.js';
import { summarize, summaryMarkdown, type CellResult } from '../src/experiment/summary.js';
import { formatCi, meanCi, t975 } from '../src/report/stats.js';
import { singleRunVerdict } from '../src/report/verdict.js';
import { repoRoot } from '../../../test/support/paths.js';
import { withTmp } from '../../../test/support/tmp.js';

test('t-intervals: quantiles and a hand-computed interval', () => {
  assert.equal(t975(2), 4.303);
  assert.equal(t975(4), 2.776);
  assert.equal(t975(1000), 1.96);
  // 1, 2, 3: mean 2, sd 1, half = 4.303 / sqrt(3).
  const c = meanCi([1, 2, 3]);
  assert.equal(c.mean, 2);
  assert.equal(c.sd, 1);
  assert.ok(Math.abs(c.half - 4.303 / Math.sqrt(3)) < 1e-12);
  assert.equal(formatCi(c, 2), '2.00 ± 2.48');
  assert.ok(Number.isNaN(meanCi([5]).half), 'no interval from one value');
  assert.equal(formatCi(meanCi([0.5]), 1, 100), '50.0');
});

const spec = experimentSpecSchema.parse({
  set: ['job.rounds=2'],
  methods: { a: ['job.method=fedbiot'], b: ['job.method=offsite-tuning', 'split.adapterBottom=0'] },
  grid: { 'split.dropRate': [0.2, 0.5] },
  seeds: [0, 1, 2],
  compare: [{ treatment: 'a/fedbiot-adapfu', baseline: 'b/offsite-tuning' }],
});

test('a grid expands to methods x points x seeds, with later overrides winning', () => {
  const cells = expandGrid(spec);
  assert.equal(cells.length, 2 * 2 * 3);
  assert.equal(new Set(cells.map((c) => c.id)).size, cells.length);
  const c = cells.find((x) => x.method === 'b' && x.seed === 2 && x.point['split.dropRate'] === 0.5)!;
  assert.equal(c.id, 'b__dropRate-0.5__s2');
  assert.deepEqual(c.overrides, [
    'job.rounds=2',
    'split.dropRate=0.5',
    'job.method=offsite-tuning',
    'split.adapterBottom=0',
    'job.seed=2',
  ]);
});

function fake(cell: Cell, rows: Record<string, number>): CellResult {
  const final = new Map(
    Object.entries(rows).map(([m, acc]) => [
      m === 'base' ? 'base' : `${cell.method}/${m}`,
      new Map([['all', { accuracy: acc, loss: 1 }]]),
    ]),
  );
  return { cell, final, curves: new Map() };
}

test('the summary pairs seeds, gives mean ± t-interval and a verdict that follows the interval', () => {
  const cells = expandGrid(spec).filter((c) => c.point['split.dropRate'] === 0.5);
  const done = cells.map((c) =>
    c.method === 'a'
      ? fake(c, { base: 0.1, 'fedbiot-adapfu': 0.5 + 0.01 * c.seed })
      : fake(c, { base: 0.1, 'offsite-tuning': 0.4 + 0.02 * c.seed }),
  );
  const s = summarize(spec, expandGrid(spec), done);
  const cmp = s.comparisons.find((x) => x.point === 'dropRate=0.5')!;
  // Differences 0.10, 0.09, 0.08: mean 0.09, sd 0.01.
  assert.ok(Math.abs(cmp.diff.mean - 0.09) < 1e-12);
  assert.ok(Math.abs(cmp.diff.half - (4.303 * 0.01) / Math.sqrt(3)) < 1e-12);
  assert.match(cmp.verdict, /^a\/fedbiot-adapfu beats b\/offsite-tuning: 9\.0 accuracy points .*CI excludes 0/);
  const none = s.comparisons.find((x) => x.point === 'dropRate=0.2')!;
  assert.match(none.verdict, /no paired seeds/);
  const md = summaryMarkdown(spec, s);
  assert.ok(md.includes('| base | 3 | 10.0 ± 0.0 |'), md);
  assert.ok(md.includes('Cells finished: 6 of 12'));
  // A noisy difference whose interval spans 0 is "no significant difference".
  const noisy = cells.map((c) =>
    c.method === 'a'
      ? fake(c, { 'fedbiot-adapfu': [0.5, 0.3, 0.6][c.seed]! })
      : fake(c, { 'offsite-tuning': [0.4, 0.5, 0.45][c.seed]! }),
  );
  assert.match(summarize(spec, cells, noisy).comparisons[0]!.verdict, /no significant difference.*includes 0/);
});

test('experiment specs are validated with the field named; the shipped demo grid parses with >= 3 seeds', async () => {
  await withTmp('exp-spec-', async (dir) => {
    const bad = join(dir, 'bad.json');
    await writeFile(bad, JSON.stringify({ methods: { 'a b': [] }, seeds: [], extra: 1 }));
    await assert.rejects(loadExperimentSpec(bad), (e: Error) => /methods/.test(e.message) && /seeds/.test(e.message));
    const demo = await loadExperimentSpec(join(repoRoot, 'experiments', 'demo-grid.json'));
    assert.ok(demo.seeds.length >= 3);
    assert.ok(expandGrid(demo).length >= 3 * Object.keys(demo.methods).length);
  });
});

const verdictRows = (fu: number, ot: number) => [
  { method: 'base' as const, client: 'all', test_loss: 5, accuracy: 0.05 },
  { method: 'fedbiot-adapfu' as const, client: 'all', test_loss: 1, accuracy: fu },
  { method: 'fedbiot-adapemu' as const, client: 'all', test_loss: 1, accuracy: fu - 0.1 },
  { method: 'offsite-tuning' as const, client: 'all', test_loss: 1, accuracy: ot },
];

test('the single-run verdict states the sample size and only claims what the test-set noise allows', () => {
  const big = singleRunVerdict(verdictRows(0.6, 0.4), 540);
  assert.match(big[0]!, /540 test questions.*2\.2 points/);
  assert.match(big[1]!, /FedBiOT AdapFu beats offsite-tuning/);
  assert.match(singleRunVerdict(verdictRows(0.5, 0.48), 540)[1]!, /no difference beyond/);
  assert.match(singleRunVerdict(verdictRows(0.3, 0.5), 540)[1]!, /offsite-tuning beats FedBiOT AdapFu/);
});
