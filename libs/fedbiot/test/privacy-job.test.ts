/**
 * A short standalone job with client-level DP and secure aggregation both on, on the committed demo model: every
 * round goes through the privacy hook (real X25519, masks and, for the client that drops after masking, Shamir
 * recovery), metrics.jsonl carries (epsilon, delta) per round and results.txt the final one. The same epsilon is
 * recomputed here from the accountant, so a wrong q, sigma or round count fails.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { resolveJobSpec } from '../src/job-spec.js';
import { runJob } from '../src/job.js';
import { RdpAccountant } from '../../privacy/src/index.js';
import { demoJobRawSpec, tmpWithDemoFederation } from '../../../test/support/federation.js';
import { metricsOf } from '../../../test/support/json-lines.js';

let tmp = '';

before(async () => {
  tmp = await tmpWithDemoFederation('fedbiot-privacy-');
});
after(() => rmSync(tmp, { recursive: true, force: true }));

test('a FedBiOT job (and its offsite-tuning baseline) with DP and secure aggregation, one client dropping after masking, finishes and reports epsilon', async () => {
  const spec = resolveJobSpec(
    demoJobRawSpec(tmp, 'private', {
      clients: { localSteps: 2 },
      alignment: { stepsPerRound: 1 },
      eval: { maxNewTokens: 2 },
      baselines: { offsiteTuning: true },
      privacy: {
        dp: { clip: 0.05, noiseMultiplier: 1.1, delta: 1e-5 },
        secureAggregation: { simulateDropouts: { afterMasking: 1 } },
      },
    }),
    'privacy e2e',
  );
  const lines: string[] = [];
  const { runDir, table } = await runJob(spec, { log: (l) => lines.push(l) });
  const events = metricsOf(runDir).filter((e) => e['kind'] === 'privacy');
  assert.deepEqual(
    events.map((e) => `${String(e['phase'])}/${String(e['round'])}`),
    ['main/0', 'main/1', 'offsite-tuning/0', 'offsite-tuning/1'],
    'one privacy event per round of each federated phase',
  );
  const acc = new RdpAccountant();
  events.slice(0, 2).forEach((e, r) => {
    assert.equal(e['round'], r);
    assert.equal(e['phase'], 'main');
    const m = e['clients'] as number;
    // The client that dropped after masking is still in the sum: every client's noise share made it in.
    assert.equal(e['secagg_survivors'], m);
    assert.equal(e['secagg_dropped_after_masking'], 1);
    assert.equal(e['effective_noise_multiplier'], 1.1);
    assert.equal(e['secagg_clamped'], 0);
    acc.step(e['sample_rate'] as number, 1.1);
    const eps = e['epsilon'] as number;
    assert.ok(Math.abs(eps - acc.getEpsilon(1e-5)) < 1e-9, `round ${r}: epsilon ${eps}`);
    assert.ok(eps > 0 && Number.isFinite(eps));
  });
  assert.match(table, /privacy main: client-level \(epsilon \d+\.\d{3}, delta 0\.00001\) after 2 rounds/);
  // The baseline has its own accountant: the same settings spend the same epsilon.
  assert.equal(events[3]!['epsilon'], events[1]!['epsilon']);
  assert.match(table, /privacy offsite-tuning: client-level \(epsilon/);
  assert.ok(lines.some((l) => /round 2 privacy: \(epsilon/.test(l)));
  const results = JSON.parse(readFileSync(join(runDir, 'results.json'), 'utf8')) as { rows: { method: string }[] };
  assert.ok(results.rows.some((r) => r.method === 'fedbiot-adapfu'));
  assert.ok(results.rows.some((r) => r.method === 'offsite-tuning'));
});

test('a private job stopped after round 1 resumes with its accountant: epsilon composes over both rounds', async () => {
  const spec = resolveJobSpec(
    demoJobRawSpec(tmp, 'private-resume', {
      clients: { localSteps: 1 },
      alignment: { stepsPerRound: 1 },
      eval: { every: 2, maxNewTokens: 1 },
      privacy: { dp: { clip: 0.05, noiseMultiplier: 2, delta: 1e-6 }, secureAggregation: {} },
    }),
    'privacy resume',
  );
  await assert.rejects(
    runJob(spec, {
      log: () => {},
      afterCheckpoint: (phase, round) => {
        if (phase === 'main' && round === 1) throw new Error('simulated crash after round 1');
      },
    }),
    /simulated crash/,
  );
  const { runDir } = await runJob(spec, { log: () => {}, resume: true });
  const events = metricsOf(runDir).filter((e) => e['kind'] === 'privacy');
  assert.deepEqual(
    events.map((e) => [e['round'], e['dp_rounds']]),
    [
      [0, 1],
      [1, 2],
    ],
  );
  const acc = new RdpAccountant();
  acc.step(1, 2, 2);
  assert.ok(Math.abs((events[1]!['epsilon'] as number) - acc.getEpsilon(1e-6)) < 1e-9);
});
