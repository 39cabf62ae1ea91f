/**
 * A short FedBiOT job end to end in one process, on the committed demo model and a small generated federation:
 * FedBiOT must lower the clients' test loss below the base model's, write every promised output, and a job
 * stopped after a round must resume to exactly the numbers of an uninterrupted run.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeKnowledgeFederation } from '../../libs/data/src/index.js';
import { resolveJobSpec, type JobSpec, runJob } from '../../libs/fedbiot/src/index.js';
import { repoRoot } from '../support/paths.js';
import { demoJobRawSpec, tmpWithDemoFederation } from '../support/federation.js';

let tmp = '';
const quiet = (): void => {};

const spec = (id: string): JobSpec => resolveJobSpec(demoJobRawSpec(tmp, id), 'e2e job');

interface Row {
  method: string;
  client: string;
  test_loss: number;
  accuracy: number;
}

const results = (runDir: string): { rows: Row[]; bytes_per_round: { down: number; up: number } } =>
  JSON.parse(readFileSync(join(runDir, 'results.json'), 'utf8'));

before(async () => {
  tmp = await tmpWithDemoFederation('fedbiot-e2e-');
});
after(() => rmSync(tmp, { recursive: true, force: true }));

let reference: ReturnType<typeof results> | undefined;

test("FedBiOT lowers the clients' test loss below the base model and writes every output", async () => {
  const { runDir } = await runJob(spec('full'), { log: quiet });
  const r = results(runDir);
  reference = r;
  const get = (method: string, client: string): Row => {
    const row = r.rows.find((x) => x.method === method && x.client === client);
    assert.ok(row, `row ${method}/${client} in results.json`);
    return row;
  };
  for (const client of ['add', 'sub', 'mul', 'all']) {
    assert.ok(
      get('fedbiot-adapfu', client).test_loss < get('base', client).test_loss,
      `AdapFu beats base on ${client}`,
    );
    get('fedbiot-adapemu', client);
  }
  assert.ok(
    r.bytes_per_round.up > 0 && r.bytes_per_round.down > r.bytes_per_round.up,
    'broadcast carries adapter + emulator LoRA',
  );
  for (const f of [
    'config.resolved.json',
    'metrics.jsonl',
    'report.html',
    'results.json',
    'adapter/adapter_config.json',
    'adapter/adapter_model.safetensors',
    'merged-model/config.json',
    'merged-model/model.safetensors',
  ]) {
    assert.ok(existsSync(join(runDir, f)), `${f} written`);
  }
  assert.match(readFileSync(join(runDir, 'report.html'), 'utf8'), /<svg/);
});

test('a job stopped after round 1 resumes with the same round counter, optimizer and alignment state', async () => {
  assert.ok(reference, 'needs the uninterrupted run');
  const s = spec('resumed');
  await assert.rejects(
    runJob(s, {
      log: quiet,
      afterCheckpoint: (phase, round) => {
        if (phase === 'main' && round === 1) throw new Error('simulated crash after round 1');
      },
    }),
    /simulated crash/,
  );
  const { runDir } = await runJob(s, { log: quiet, resume: true });
  const r = results(runDir);
  assert.equal(r.rows.length, reference.rows.length);
  for (const row of reference.rows) {
    const other = r.rows.find((x) => x.method === row.method && x.client === row.client)!;
    assert.ok(
      Math.abs(other.test_loss - row.test_loss) < 1e-5,
      `${row.method}/${row.client}: ${other.test_loss} vs ${row.test_loss}`,
    );
    assert.equal(other.accuracy, row.accuracy);
  }
  const rounds = readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
    .filter((e) => e.kind === 'comm')
    .map((e) => e.round);
  assert.deepEqual(rounds, [0, 1], 'each round logged once');
});

test('the FedAvg-LoRA baseline (clients hold the full model) trains the same adapter layers and beats the base model', async () => {
  const s = spec('fedavg');
  const { runDir } = await runJob(
    {
      ...s,
      job: { ...s.job, method: 'fedavg-lora', rounds: 1 },
      eval: { ...s.eval, methods: ['base', 'fedavg-lora'] },
    },
    { log: quiet },
  );
  const r = results(runDir);
  const loss = (method: string): number => r.rows.find((x) => x.method === method && x.client === 'all')!.test_loss;
  assert.ok(loss('fedavg-lora') < loss('base'), `fedavg-lora ${loss('fedavg-lora')} vs base ${loss('base')}`);
  assert.equal(r.rows.filter((x) => x.method.startsWith('fedbiot')).length, 0);
  // no emulator in this method: the broadcast is the adapter only, the same size as an update
  assert.equal(r.bytes_per_round.down, r.bytes_per_round.up);
});

test('npm run experiment: a tiny grid runs in parallel, summarises with t-intervals and a verdict, and resumes', async () => {
  const fed = join(tmp, 'knowledge');
  await writeKnowledgeFederation(fed, { seed: 1, trainPeople: 6, phrasingsPerPerson: 2, testPerClient: 6 });
  const specFile = join(tmp, 'grid.json');
  writeFileSync(
    specFile,
    JSON.stringify({
      set: [
        `model.checkpoint=${join(repoRoot, 'models', 'demo-llama')}`,
        `data.federation=${fed}`,
        'data.maxLength=64',
        'job.rounds=1',
        'clients.localSteps=1',
        'clients.batchSize=4',
        'alignment.preRounds=1',
        'alignment.stepsPerRound=1',
        'alignment.batchSize=4',
        'eval.maxNewTokens=3',
        'baselines.offsiteTuning=false',
        'baselines.localOnly=false',
      ],
      methods: {
        fedbiot: ['job.method=fedbiot'],
        'offsite-same': ['job.method=offsite-tuning', 'split.adapterBottom=0'],
      },
      grid: { 'split.dropRate': [0.5] },
      seeds: [0, 1],
      compare: [{ treatment: 'fedbiot/fedbiot-adapfu', baseline: 'offsite-same/offsite-tuning' }],
    }),
  );
  const out = join(tmp, 'exp');
  const cli = join(repoRoot, 'dist', 'bin', 'experiment.js');
  const run = (): string =>
    execFileSync(process.execPath, [cli, '--spec', specFile, '--parallel', '2', '--out', out], {
      encoding: 'utf8',
      env: { ...process.env, CI: '1' },
    });
  const first = run();
  assert.match(first, /4 cells \(0 already done\), 2 in parallel/);
  const md = readFileSync(join(out, 'summary.md'), 'utf8');
  assert.match(md, /Cells finished: 4 of 4/);
  assert.match(md, /\| fedbiot\/fedbiot-adapfu \| 2 \| \d+\.\d ± \d+\.\d \|/);
  assert.match(md, /\| offsite-same\/offsite-tuning \| 2 \|/);
  assert.match(md, /\*\*Verdict\.\*\* .*t-interval over 2 paired seeds/);
  for (const f of ['summary.json', 'report.html', 'timings.jsonl', 'spec.json']) assert.ok(existsSync(join(out, f)), f);
  assert.match(readFileSync(join(out, 'report.html'), 'utf8'), /<svg/);
  // Every cell is done: a second invocation runs nothing and writes the same tables.
  const second = run();
  assert.match(second, /4 cells \(4 already done\)/);
  assert.equal(readFileSync(join(out, 'summary.md'), 'utf8'), md);
});
