/**
 * Exact resume from a stop at any point of any phase (issue 17 item 4): an uninterrupted job with every phase
 * (FedBiOT, the offsite-tuning, local-only and FedAvg-LoRA baselines) records the points it passes (every log line
 * and every checkpoint, in order); then, for points spread over all phases, the same job is stopped there (an
 * exception thrown from the log or checkpoint hook, which unwinds like a crash: nothing after it runs) and resumed.
 * results.json must equal the uninterrupted run's exactly, and metrics.jsonl must hold the same events in the same
 * order (timestamps aside): nothing lost, nothing duplicated.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  resolveJobSpec,
  type JobSpec,
  runJob,
  createRunDir,
  listCheckpoints,
  loadLatestCheckpoint,
  saveCheckpoint,
} from '../../libs/fedbiot/src/index.js';
import { readSafetensorsHeader, readTensor, toFloat32 } from '../../libs/engine/src/index.js';
import { demoJobRawSpec, tmpWithDemoFederation } from '../support/federation.js';

let tmp = '';

const spec = (id: string): JobSpec =>
  resolveJobSpec(
    demoJobRawSpec(tmp, id, {
      job: { seed: 11 },
      data: { maxLength: 48 },
      clients: { localSteps: 2, batchSize: 2 },
      alignment: { stepsPerRound: 1, batchSize: 2 },
      eval: { maxNewTokens: 2 },
      baselines: { offsiteTuning: true, localOnly: true, fedavgLora: true, oneShotAlignSteps: 1 },
    }),
    'resume points test',
  );

before(async () => {
  tmp = await tmpWithDemoFederation('fedbiot-resume-', {
    seed: 2,
    trainPerClient: 8,
    testPerClient: 2,
    globalTestPerTask: 1,
    corpusBytes: 3_000,
  });
});
after(() => rmSync(tmp, { recursive: true, force: true }));

class Stop extends Error {}

/** Runs the job; when `stopAt` is given, throws at the stopAt-th point (0-based). Returns the points passed. */
async function run(id: string, opts: { stopAt?: number; resume?: boolean } = {}): Promise<string[]> {
  const points: string[] = [];
  const pass = (p: string): void => {
    if (opts.stopAt === points.length) throw new Stop(`stopped at ${p}`);
    points.push(p);
  };
  await runJob(spec(id), {
    resume: opts.resume === true,
    log: (line) => pass(`log ${line.trim().split(/\s+/).slice(0, 3).join(' ')}`),
    afterCheckpoint: (phase, round) => pass(`checkpoint ${phase} ${round}`),
  });
  return points;
}

const metrics = (id: string): unknown[] =>
  readFileSync(join(tmp, 'runs', id, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => {
      const { ts: _ts, ...rest } = JSON.parse(l) as Record<string, unknown>;
      return rest;
    });
const results = (id: string): unknown => JSON.parse(readFileSync(join(tmp, 'runs', id, 'results.json'), 'utf8'));

test("a finished run's checkpoints are its method's final state; each baseline keeps its own apart", async () => {
  const runDir = join(tmp, 'runs', 'layout');
  await run('layout');
  const rounds = async (under?: string): Promise<number[]> =>
    (await listCheckpoints(runDir, under)).map((c) => c.round);
  assert.deepEqual(await rounds(), [1, 2], 'checkpoints/: FedBiOT, the last two rounds');
  assert.deepEqual(await rounds('offsite-tuning'), [1, 2]);
  assert.deepEqual(await rounds('fedavg-lora'), [1, 2]);
  assert.deepEqual(await rounds('local-only'), [], 'local-only never checkpoints');
  // The newest checkpoint holds the adapter the run exported as its result (PEFT names: adapter -> default).
  const last = (await loadLatestCheckpoint(runDir))!;
  const peft = join(runDir, 'adapter', 'adapter_model.safetensors');
  const header = await readSafetensorsHeader(peft);
  const names = [...last.tensors.keys()].filter((k) => k.startsWith('adapter/'));
  assert.equal(names.length, header.tensors.size);
  for (const k of names) {
    const name = `base_model.model.${k.slice('adapter/'.length).replace('.adapter.', '.')}`;
    const t = await readTensor(peft, name, header);
    assert.deepEqual(toFloat32(t.dtype, t.data), last.tensors.get(k), name);
  }
});

test('a run folder of the earlier checkpoint layout (one round counter for all methods) is refused on resume', async () => {
  const s = spec('legacy');
  const run = await createRunDir(s.job.outDir, s.job.id, s);
  await saveCheckpoint(run.dir, {
    round: 200_004,
    json: { phase: 'offsite-tuning', round: 4, metricsBytes: 0 },
    tensors: new Map(),
  });
  await assert.rejects(
    runJob(s, { resume: true, log: () => {} }),
    /round-200004: a checkpoint of an earlier run-folder layout .*--overwrite starts the run again/,
  );
});

test('a job stopped at points of every phase resumes to the same results and the same metrics events', async () => {
  const points = await run('reference');
  const reference = { metrics: metrics('reference'), results: results('reference') };
  // Points of interest, found by what they say: after a checkpoint and between a round's evaluation and its
  // checkpoint, in each federated phase; at the start and the end of local-only.
  const find = (re: RegExp, nth = 0): number => {
    const hits = points.flatMap((p, i) => (re.test(p) ? [i] : []));
    assert.ok(hits.length > nth, `no point ${re} (#${nth}) in ${points.join(' | ')}`);
    return hits[nth]!;
  };
  const chosen = [
    find(/^checkpoint main 0$/), // after pre-alignment
    find(/^log round 2:/), // main round 1 evaluated, its checkpoint not written
    find(/^checkpoint offsite-tuning 1$/),
    find(/^log baseline local-only/), // local-only starts after a resume past the main phase
    find(/^log local-only:/), // local-only's events written, fedavg-lora not begun
    find(/^checkpoint fedavg-lora 1$/),
    find(/^log round 2:/, 2), // fedavg-lora's last round evaluated, not checkpointed
  ];
  for (const at of chosen) {
    const id = `stop-${at}`;
    await assert.rejects(run(id, { stopAt: at }), Stop);
    await run(id, { resume: true });
    assert.deepEqual(results(id), reference.results, `results after a stop at ${points[at]}`);
    assert.deepEqual(metrics(id), reference.metrics, `metrics.jsonl after a stop at ${points[at]}`);
  }
});
