/** The whole job's time left (eta.ts): measured stages at their own pace, unstarted ones scaled by their work. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JobEta, etaStages, overallLine, remainingMs, type EtaStage } from '../src/eta.js';
import { resolveJobSpec } from '../src/job-spec.js';
import { planJob } from '../src/plan.js';

const stages: EtaStage[] = [
  { label: 'fedbiot', rounds: 5, unit: 'round', trainWork: 60, evalWork: 40 },
  { label: 'offsite-tuning', rounds: 5, unit: 'round', trainWork: 60, evalWork: 40 },
  { label: 'fedavg-lora', rounds: 5, unit: 'round', trainWork: 320, evalWork: 80 },
  { label: 'local-only', rounds: 3, unit: 'client', trainWork: 480, evalWork: 20 },
];

test('remainingMs: nothing measured -> unknown; without rates, later stages scale the first round by total work', () => {
  assert.equal(remainingMs(stages, { stage: 0, done: 0 }, []), undefined);
  // 2 rounds of 10 s and 14 s: 12 s a round of 100 work units -> 0.12 s a unit (fedavg 400, local-only 500).
  const measured = [[10_000, 14_000]];
  const left = remainingMs(stages, { stage: 0, done: 2 }, measured);
  assert.equal(left, 3 * 12_000 + 5 * 12_000 + 5 * 48_000 + 3 * 60_000);
});

test('remainingMs: with both rates, a stage not started costs its training and evaluation work at them', () => {
  // 10 ms a training unit, 100 ms an evaluation unit: fedavg-lora 3.2 s + 8 s, local-only 4.8 s + 2 s a client.
  const rates = { train: 10, eval: 100 };
  assert.equal(
    remainingMs(stages, { stage: 0, done: 5 }, [[12_000]], rates),
    5 * (600 + 4_000) + 5 * (3_200 + 8_000) + 3 * (4_800 + 2_000),
  );
  // One rate missing while a stage has that kind of work: the total-work scaling stands in.
  assert.equal(remainingMs(stages, { stage: 2, done: 5 }, [[12_000]], { train: 10 }), 3 * 60_000);
});

test('remainingMs: a stage that has run rounds uses its own pace; earlier stages cost nothing', () => {
  const measured = [[12_000], [20_000, 30_000]];
  // In offsite-tuning after 2 of 5 rounds: 3 x its own 25 s, then fedavg-lora and local-only from fedbiot's rate.
  assert.equal(remainingMs(stages, { stage: 1, done: 2 }, measured), 3 * 25_000 + 5 * 48_000 + 3 * 60_000);
  // A resumed run that measured only the second stage: the later ones scale from it.
  assert.equal(remainingMs(stages, { stage: 1, done: 1 }, [undefined, [10_000]]), 4 * 10_000 + 5 * 40_000 + 3 * 50_000);
  // The last step of the last stage: nothing left.
  assert.equal(remainingMs(stages, { stage: 3, done: 3 }, [[1], [1], [1], [1]]), 0);
});

test('overallLine: where the job is, then the time left', () => {
  assert.equal(
    overallLine(stages, { stage: 1, done: 3 }, 130_000),
    'overall: stage 2/4 offsite-tuning, round 3/5; ~2m10s left of the job',
  );
  assert.equal(overallLine(stages, { stage: 3, done: 1 }, undefined), 'overall: stage 4/4 local-only, client 1/3');
  assert.equal(overallLine(stages, { stage: 3, done: 3 }, 0), 'overall: stage 4/4 local-only, client 3/3; job done');
  assert.throws(() => overallLine(stages, { stage: 4, done: 0 }, 0), /no stage 4 of 4/);
});

test('JobEta: rates from measured work; the base evaluation alone gives the evaluation rate', () => {
  const eta = new JobEta(stages);
  assert.deepEqual(eta.rates(), {});
  eta.measure('eval', 200, 2_000);
  eta.measure('train', 0, 5); // no work: ignored
  assert.deepEqual(eta.rates(), { eval: 10 });
  eta.measure('train', 60, 600);
  eta.measure('train', 60, 1_200);
  eta.measure('eval', 200, 4_000);
  assert.deepEqual(eta.rates(), { train: 15, eval: 15 });
});

test('JobEta measures each step from its start; a step whose start it did not see gives no line', () => {
  let clock = 0;
  const eta = new JobEta(stages.slice(0, 2), () => clock);
  assert.equal(eta.done(0, 0), undefined, 'a resumed round that ended before this process began');
  eta.start(0, 0);
  clock = 6_000;
  assert.equal(eta.done(0, 0), 'overall: stage 1/2 fedbiot, round 1/5; ~54s left of the job');
  eta.start(0, 1);
  eta.start(0, 1); // the same round again (a retried port call) keeps its first start
  clock = 16_000;
  // 6 s and 10 s: 8 s a round, 3 + 5 rounds left.
  assert.equal(eta.done(0, 1), 'overall: stage 1/2 fedbiot, round 2/5; ~1m04s left of the job');
});

test('etaStages: rounds for federated stages, clients for local-only; training and evaluation work', () => {
  const plan = planJob(
    resolveJobSpec(
      {
        job: { seed: 7, rounds: 3 },
        split: { adapterLayers: 2, dropRate: 0.5 },
        clients: { localSteps: 10 },
        baselines: { offsiteTuning: true, localOnly: true, fedavgLora: true },
      },
      'eta test',
    ),
    8,
  );
  const emu = plan.split.clientLayers.length;
  // 12 test batches over all clients; FedBiOT scores AdapEmu (emulator layers) and AdapFu (all 8 layers).
  assert.deepEqual(etaStages(plan, 3, 12), [
    { label: 'fedbiot', rounds: 3, unit: 'round', trainWork: 3 * 10 * emu, evalWork: 12 * (emu + 8) },
    { label: 'offsite-tuning', rounds: 3, unit: 'round', trainWork: 3 * 10 * emu, evalWork: 12 * 8 },
    { label: 'local-only', rounds: 3, unit: 'client', trainWork: 3 * 10 * emu, evalWork: 4 * 8 },
    { label: 'fedavg-lora', rounds: 3, unit: 'round', trainWork: 3 * 10 * 8, evalWork: 12 * 8 },
  ]);
});
