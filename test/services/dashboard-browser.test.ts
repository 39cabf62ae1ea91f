/**
 * The evaluator's live dashboard in headless Chromium (/usr/bin/chromium, Debian's `chromium`; CHROMIUM_BIN to
 * override), fed with real data over the real NATS (NATS_URL, default nats://127.0.0.1:4222): the test publishes
 * the clients' ClientUpdates and sends EvalRequests that the real Evaluator answers by evaluating the demo model.
 * One page stays open: after round 1 it must show the round progress and one SVG polyline per series with one
 * point each; when round 2's results arrive, its own polling must redraw the curves with two points, without a
 * reload. The base model's rows (a round-0 evaluation) are dashed reference lines, not curves; accuracy is drawn on
 * 0-100 % even when every value is 0. Once KV holds the aggregator's finished-run record, the page says the job
 * finished and lists the run folder's paths instead of the training line. DASHBOARD_SCREENSHOT_DIR keeps the three
 * screenshots.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { resolveJobSpec } from '../../libs/fedbiot/src/index.js';
import { EvalReplySchema } from '../../services/common/evaluation-wire.js';
import { initialLoras, openJobContext, type JobContext } from '../../services/common/job-context.js';
import { putLora } from '../../services/common/lora-blobs.js';
import { RUN_RECORD_KEY, RunRecordSchema, runRecord } from '../../services/common/run-record.js';
import type { LoraWeights } from '../../libs/model/src/index.js';
import {
  BlobStore,
  ClientUpdateSchema,
  EvalRequestSchema,
  JOB_STATE_KEY,
  JobStateSchema,
  PROTOCOL_VERSION,
  StateStore,
  blobBucketName,
  stateBucketName,
  connectTransport,
  deleteJobResources,
  evaluateSubject,
  publishMessage,
  updateSubject,
} from '../../libs/protocol/src/index.js';
import { startEvaluator } from '../../services/evaluator/evaluator.module.js';
import { ClientNats } from '@nestjs/microservices';
import { natsTransportOptions, sendWithRetry } from '../../services/common/nats-transport.js';
import type { LogRecord } from '../../services/common/logger.js';
import { HeadlessChromium } from '../support/chromium.js';
import { SMALL_DEMO_FEDERATION, demoJobRawSpec, tmpWithDemoFederation } from '../support/federation.js';
import { rng } from '../support/rng.js';

const NATS_URL = process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';
let tmp = '';

before(async () => {
  tmp = await tmpWithDemoFederation('fedbiot-dashboard-', {
    ...SMALL_DEMO_FEDERATION,
    trainPerClient: 16,
    testPerClient: 4,
    corpusBytes: 20_000,
  });
});
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A copy of `l` with every tensor moved by uniform noise of amplitude `amp` (so round 2 scores differ). */
function perturbed(l: LoraWeights, seed: number, amp: number): LoraWeights {
  const next = rng(seed);
  const tensors = new Map<string, Float32Array>();
  for (const [name, t] of l.tensors)
    tensors.set(
      name,
      t.map((v) => v + amp * (2 * next() - 1)),
    );
  return { spec: l.spec, tensors };
}

/** What the page shows, read from its DOM. */
interface Shown {
  progress: string;
  bar: { value: number; max: number };
  training: string;
  /** chart id -> series name -> number of points of its polyline */
  charts: Record<string, Record<string, number>>;
  /** chart id -> names of its dashed reference lines */
  refs: Record<string, string[]>;
  /** chart id -> its y-axis tick labels, bottom to top */
  yTicks: Record<string, string[]>;
  /** The finished box: shown, and its file paths by kind. */
  finished: { shown: boolean; files: Record<string, string> };
  updated: string | undefined;
}
const READ_PAGE = `(() => {
  const charts = {}, refs = {}, yTicks = {};
  for (const s of document.querySelectorAll('section.chart')) {
    charts[s.id] = {};
    for (const p of s.querySelectorAll('svg polyline.series'))
      charts[s.id][p.dataset.series] = p.getAttribute('points').trim().split(/\\s+/).filter(Boolean).length;
    refs[s.id] = [...s.querySelectorAll('svg line.ref')].map((l) => l.dataset.ref).sort();
    yTicks[s.id] = [...s.querySelectorAll('svg text.ytick')].map((t) => t.textContent);
  }
  const bar = document.getElementById('round-bar');
  const files = Object.fromEntries([...document.querySelectorAll('#files code.path')].map((c) => [c.dataset.file, c.textContent]));
  return { progress: document.getElementById('progress').textContent, bar: { value: bar.value, max: bar.max },
    training: document.getElementById('training').textContent, charts, refs, yTicks,
    finished: { shown: !document.getElementById('finished').hidden, files }, updated: document.body.dataset.updated };
})()`;

test('the dashboard in headless Chromium shows round progress and per-client curves that grow as rounds finish', async () => {
  const jobId = `dash-${process.pid}-${Date.now().toString(36)}`;
  const spec = resolveJobSpec(
    demoJobRawSpec(tmp, jobId, {
      clients: { localSteps: 1 },
      alignment: { stepsPerRound: 1 },
      eval: { mode: 'simulation' },
    }),
    'dashboard test job',
  );
  const logs: LogRecord[] = [];
  const nc = await connectTransport(NATS_URL);
  const client = new ClientNats(natsTransportOptions(NATS_URL, {}));
  let ctx: JobContext | undefined;
  let browser: HeadlessChromium | undefined;
  const evaluator = await startEvaluator({ natsUrl: NATS_URL, spec, logSink: (r) => void logs.push(r) }, 0, {
    dashboard: true,
  });
  let passed = false;
  try {
    ctx = await openJobContext(spec);
    const clients = ctx.data.clients.map((c) => c.id);
    assert.deepEqual(clients.toSorted(), ['add', 'mul', 'sub'], 'the demo federation clients');
    const blobs = await BlobStore.open(nc, { bucket: blobBucketName(jobId) });
    const init = initialLoras(ctx);
    const adapterRef = await putLora(blobs, init.adapter);

    /** Evaluation of `round` rounds completed in `modes`, asked as the aggregator asks. */
    const evaluate = async (round: number, adapter: LoraWeights, modes: string[]): Promise<void> => {
      const subject = evaluateSubject(jobId, round);
      // As the aggregator asks: Nest's NATS transport to the evaluator's @MessagePattern.
      const req = EvalRequestSchema.parse({
        protocolVersion: PROTOCOL_VERSION,
        jobId,
        round,
        adapterLora: await putLora(blobs, adapter),
        emulatorLora: await putLora(blobs, init.emulator),
        modes,
      });
      const reply = EvalReplySchema.safeParse(await sendWithRetry(client, subject, req, 120_000));
      assert.ok(reply.success && !('error' in reply.data), `evaluation of round ${round}: ${JSON.stringify(reply)}`);
    };
    /** Round r (0-based) as the rest of the job would make it: the clients' updates, then its evaluation. */
    const finishRound = async (r: number, adapter: LoraWeights): Promise<void> => {
      clients.forEach((clientId, i) =>
        publishMessage(nc, updateSubject(jobId, r, clientId), ClientUpdateSchema, {
          protocolVersion: PROTOCOL_VERSION,
          jobId,
          round: r,
          clientId,
          adapterLora: adapterRef,
          examples: 4,
          tokens: 100 + i,
          meanLoss: 2.5 - 0.4 * r - 0.1 * i,
          steps: 1,
          durationMs: 10,
        }),
      );
      await evaluate(r + 1, adapter, ['adapEmu', 'adapFu']);
    };

    // The base model, scored before training (round 0): a reference line in the test-loss and accuracy charts.
    await evaluate(0, init.adapter, ['base']);
    await finishRound(0, init.adapter);
    browser = await HeadlessChromium.launch();
    const page = await browser.open(`${evaluator.url}/dashboard`);
    const first = await page.waitFor<Shown>(
      `(() => { const s = ${READ_PAGE}; return Object.keys(s.charts['chart-test-loss'] ?? {}).length ? s : null; })()`,
      'the first poll to draw the charts',
    );
    assert.equal(first.progress, 'rounds evaluated: 1 / 2');
    assert.deepEqual(first.bar, { value: 1, max: 2 });
    assert.equal(first.training, 'training: round 1 / 2, 3 client update(s) seen');
    const trainSeries = clients.toSorted();
    const evalSeries = ['fedbiot-adapemu', 'fedbiot-adapfu'].flatMap((m) =>
      [...clients, 'all'].map((c) => `${m} / ${c}`),
    );
    // One polyline per client series, one point per round so far.
    assert.deepEqual(first.charts['chart-train-loss'], Object.fromEntries(trainSeries.map((s) => [s, 1])));
    assert.deepEqual(first.charts['chart-test-loss'], Object.fromEntries(evalSeries.toSorted().map((s) => [s, 1])));
    assert.deepEqual(first.charts['chart-accuracy'], Object.fromEntries(evalSeries.toSorted().map((s) => [s, 1])));
    const baseRefs = [...clients, 'all'].map((c) => `base / ${c}`).toSorted();
    assert.deepEqual(first.refs['chart-test-loss'], baseRefs, 'the base model: dashed reference lines');
    assert.deepEqual(first.refs['chart-accuracy'], baseRefs);
    assert.deepEqual(first.refs['chart-train-loss'], []);
    // Accuracy on 0-100 % whatever the values (the untrained demo model scores 0 everywhere: the axis was -1..1).
    assert.equal(first.yTicks['chart-accuracy']![0], '0');
    assert.equal(first.yTicks['chart-accuracy']!.at(-1), '100');
    for (const id of ['chart-train-loss', 'chart-test-loss'])
      assert.ok(!first.yTicks[id]!.some((t) => t.startsWith('-')), `${id}: no negative loss on the axis`);
    assert.equal(first.finished.shown, false);
    const shotDir = process.env['DASHBOARD_SCREENSHOT_DIR'];
    if (shotDir) mkdirSync(shotDir, { recursive: true });
    if (shotDir) writeFileSync(join(shotDir, 'dashboard-round1.png'), await page.screenshot());
    // A marker on the live document: if the page were reloaded instead of redrawn by its polling, it would vanish.
    await page.evaluate('window.__sameDocument = true');

    await finishRound(1, perturbed(init.adapter, 11, 0.05));
    const second = await page.waitFor<Shown>(
      `(() => { const s = ${READ_PAGE}; return s.progress === 'rounds evaluated: 2 / 2' && Object.keys(s.charts['chart-train-loss']).every((k) => s.charts['chart-train-loss'][k] === 2) ? s : null; })()`,
      'the page to poll round 2',
    );
    assert.equal(await page.evaluate<boolean>('window.__sameDocument === true'), true, 'redrawn by polling');
    assert.deepEqual(second.bar, { value: 2, max: 2 });
    assert.equal(second.training, 'training: round 2 / 2, 3 client update(s) seen');
    for (const id of ['chart-train-loss', 'chart-test-loss', 'chart-accuracy'])
      for (const [name, n] of Object.entries(second.charts[id]!)) assert.equal(n, 2, `${id} ${name} has 2 points`);
    assert.equal(Object.keys(second.charts['chart-test-loss']!).length, evalSeries.length);
    // The training-loss polylines descend (published losses fall by 0.4 per round): y grows downwards in SVG.
    const ys = await page.evaluate<number[][]>(
      `[...document.querySelectorAll('#chart-train-loss polyline.series')].map((p) => p.getAttribute('points').trim().split(/\\s+/).map((xy) => Number(xy.split(',')[1])))`,
    );
    for (const [y1, y2] of ys) assert.ok(y2! > y1!, `training loss curve goes down: ${y1} -> ${y2}`);
    assert.equal(second.finished.shown, false, 'not finished before the run folder is written');
    if (shotDir) writeFileSync(join(shotDir, 'dashboard-round2.png'), await page.screenshot());

    // The aggregator's last writes: KV `job` completed, then (run folder written) KV `run`.
    const kv = await StateStore.open(nc, { bucket: stateBucketName(jobId) });
    await kv.put(JOB_STATE_KEY, JobStateSchema, {
      protocolVersion: PROTOCOL_VERSION,
      jobId,
      status: 'completed',
      totalRounds: 2,
      lastCompletedRound: 1,
      model: null,
      adapterLora: null,
      emulatorLora: null,
      message: null,
      updatedAt: Date.now(),
    });
    const writing = await page.waitFor<Shown>(
      `(() => { const s = ${READ_PAGE}; return s.training.startsWith('all rounds done') ? s : null; })()`,
      'the page to see the job completed',
    );
    assert.equal(writing.finished.shown, false);
    const runDir = join(tmp, 'runs', jobId);
    await kv.put(RUN_RECORD_KEY, RunRecordSchema, runRecord(jobId, runDir, 2));
    const done = await page.waitFor<Shown>(
      `(() => { const s = ${READ_PAGE}; return s.finished.shown ? s : null; })()`,
      'the page to show the finished job',
    );
    assert.equal(done.training, 'finished: 2 / 2 rounds');
    assert.deepEqual(done.finished.files, {
      results: join(runDir, 'results.json'),
      report: join(runDir, 'report.html'),
      adapter: join(runDir, 'adapter'),
      'merged model': join(runDir, 'merged-model'),
    });
    if (shotDir) writeFileSync(join(shotDir, 'dashboard-finished.png'), await page.screenshot());
    passed = true;
  } finally {
    if (!passed) for (const r of logs) if (r.level !== 'debug') console.log(JSON.stringify(r));
    await browser?.close();
    await evaluator.close().catch(() => {});
    await ctx?.lm.release();
    await deleteJobResources(nc, jobId).catch(() => {});
    await client.close();
    await nc.close();
  }
});
