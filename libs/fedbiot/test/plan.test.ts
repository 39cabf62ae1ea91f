/** The job plan (plan.ts) and the method table (methods.ts): what a run derives from its job spec. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveJobSpec } from '../src/job-spec.js';
import { publicDataSteps } from '../src/federation.js';
import { METHODS, METHOD_TABLE, RESULT_METHODS, resultRow } from '../src/methods.js';
import { coordinatorSettings, planJob, pooledScores } from '../src/plan.js';

const spec = (over: Record<string, unknown> = {}) =>
  resolveJobSpec(
    {
      job: { seed: 7, rounds: 3 },
      split: { adapterLayers: 2, dropRate: 0.5 },
      alignment: { preRounds: 2, stepsPerRound: 3 },
      baselines: { offsiteTuning: true, localOnly: true, fedavgLora: true, oneShotAlignSteps: 4 },
      ...over,
    },
    'plan test',
  );

test('a FedBiOT job: its method, then offsite-tuning, local-only and FedAvg-LoRA on the same adapter layers', () => {
  const plan = planJob(spec(), 8);
  assert.deepEqual(plan.split.adapterLayers, [6, 7]);
  assert.deepEqual(
    plan.stages.map((s) => [s.method, s.role, s.label, s.checkpoints]),
    [
      ['fedbiot', 'main', 'main', ''],
      ['offsite-tuning', 'baseline', 'offsite-tuning', 'offsite-tuning'],
      ['local-only', 'baseline', 'local-only', 'local-only'],
      ['fedavg-lora', 'baseline', 'fedavg-lora', 'fedavg-lora'],
    ],
  );
  const [fedbiot, offsite, local, fedavg] = plan.stages;
  // FedBiOT: 2 x 3 pre-alignment steps, 3 after each round, the emulator LoRA broadcast; offsite: one-shot only.
  assert.deepEqual([fedbiot!.preAlignSteps, fedbiot!.alignStepsPerRound, fedbiot!.broadcastEmulator], [6, 3, true]);
  assert.deepEqual([offsite!.preAlignSteps, offsite!.alignStepsPerRound, offsite!.broadcastEmulator], [4, 0, false]);
  assert.deepEqual([fedavg!.preAlignSteps, fedavg!.alignStepsPerRound], [0, 0]);
  assert.deepEqual(offsite!.clientLayers, plan.split.clientLayers);
  assert.ok(offsite!.withEmulator && local!.withEmulator && !local!.federated);
  assert.deepEqual(fedavg!.clientLayers, [0, 1, 2, 3, 4, 5, 6, 7], 'FedAvg-LoRA clients hold the full model');
  assert.equal(fedavg!.withEmulator, false);
  assert.deepEqual(
    fedbiot!.rows.map((r) => [r.row, r.on]),
    [
      ['fedbiot-adapemu', 'emu'],
      ['fedbiot-adapfu', 'full'],
    ],
  );
  assert.deepEqual(plan.seeds, { adapter: 8, emulator: 9 });
  assert.deepEqual(plan.specs.adapter.layers, [6, 7]);
  assert.equal(plan.alignment.seq, plan.spec.data.maxLength);
  assert.equal(publicDataSteps(plan.spec), 6 + 3 + 4);
});

test('the published FedOT split belongs to method offsite-tuning only; a job without baselines has one stage', () => {
  const offsite = planJob(
    spec({ job: { method: 'offsite-tuning' }, split: { adapterLayers: 2, adapterBottom: 2 } }),
    8,
  );
  assert.deepEqual(offsite.split.adapterLayers, [0, 1, 6, 7]);
  assert.deepEqual(
    offsite.stages.map((s) => [s.method, s.label, s.checkpoints]),
    [
      ['offsite-tuning', 'main', ''],
      ['local-only', 'local-only', 'local-only'],
    ],
  );
  // A FedBiOT job ignores split.adapterBottom: its baselines train FedBiOT's adapter layers.
  const fedbiot = planJob(spec({ split: { adapterLayers: 2, adapterBottom: 2 } }), 8);
  assert.deepEqual(fedbiot.split.adapterLayers, [6, 7]);
  const alone = planJob(
    spec({ job: { method: 'local-only' }, baselines: { offsiteTuning: false, localOnly: false, fedavgLora: false } }),
    8,
  );
  assert.deepEqual(
    alone.stages.map((s) => [s.method, s.role, s.federated]),
    [['local-only', 'main', false]],
  );
  assert.equal(publicDataSteps(alone.spec), 0);
});

test('coordinator settings come from the stage; every method row is a result row; scores pool by tokens and items', () => {
  const plan = planJob(spec(), 8);
  const s = coordinatorSettings(plan, plan.stages[1]!, ['a', 'b']);
  assert.deepEqual(
    [s.rounds, s.seed, s.preAlignSteps, s.alignStepsPerRound, s.broadcastEmulator, s.clientIds],
    [3, 7, 4, 0, false, ['a', 'b']],
  );
  assert.equal(s.evalEvery, plan.spec.eval.every);
  assert.equal(s.aggregate, undefined);
  for (const m of METHODS)
    for (const r of METHOD_TABLE[m].rows) {
      assert.ok((RESULT_METHODS as readonly string[]).includes(r.row), r.row);
      assert.equal(resultRow(m, r.on), r.row);
    }
  assert.throws(() => resultRow('offsite-tuning', 'emu'), /reports no row evaluated on the emulator/);
  const p = pooledScores([
    { testLoss: 1, accuracy: 1, tokens: 10, items: 1 },
    { testLoss: 4, accuracy: 0, tokens: 30, items: 3 },
  ]);
  assert.deepEqual(p, { testLoss: 3.25, accuracy: 0.25, tokens: 40, items: 4 });
});

test('alignment.emulatorLora: the emulator LoRA takes its rank, alpha and targets; the adapter keeps lora; errors name the field', () => {
  const plain = planJob(spec(), 8);
  assert.deepEqual(plain.specs.emulator.targets, plain.specs.adapter.targets);
  assert.equal(plain.specs.emulator.r, plain.specs.adapter.r);
  const all = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
  const wide = planJob(
    spec({ alignment: { preRounds: 2, stepsPerRound: 3, emulatorLora: { r: 32, targets: all } } }),
    8,
  );
  assert.deepEqual(
    [wide.specs.emulator.r, wide.specs.emulator.alpha, wide.specs.emulator.targets, wide.specs.emulator.dropout],
    [32, plain.specs.adapter.alpha, all, plain.specs.adapter.dropout],
  );
  assert.deepEqual(wide.specs.adapter, plain.specs.adapter, 'what clients train does not change');
  assert.deepEqual(wide.specs.emulator.layers, plain.specs.emulator.layers);
  assert.throws(
    () => spec({ alignment: { emulatorLora: { r: 0, targets: ['q_proj', 'q_proj'], rank: 4 } } }),
    (e: Error) =>
      /alignment\.emulatorLora\.r/.test(e.message) &&
      /alignment\.emulatorLora\.targets/.test(e.message) &&
      /alignment\.emulatorLora.*rank/.test(e.message),
  );
});
