/**
 * Privacy in the distributed job (issue 14): the four services on a private NATS (FEDBIOT_TEST_NATS=process: a
 * nats-server child process), in one process.
 * - privacy.dp: the aggregator clips, weights, sums and noises the round's updates exactly as the standalone job
 *   (libs/fedbiot/src/privacy-aggregation.ts); with the same (test-only) noise seed on both sides, the distributed
 *   adapter and merged model equal the standalone job's byte for byte, and epsilon per round is in metrics.jsonl,
 *   results.txt, report.html and the aggregator's fl_dp_epsilon gauge;
 * - an aggregator replaced mid-job continues the RDP accounting from KV (the final epsilon is the standalone's);
 * - privacy.secureAggregation.simulateDropouts (a standalone-only setting) is refused at startup by the aggregator and
 *   the trainer: in the services clients drop for real.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { INSECURE_DP_NOISE_SEED_ENV, type JobSpec } from '../../libs/fedbiot/src/index.js';
import { connectTransport, deleteJobResources } from '../../libs/protocol/src/index.js';
import { startAggregator } from '../../services/aggregator/aggregator.module.js';
import { startTrainer } from '../../services/client-trainer/trainer.module.js';
import { tmpWithDemoFederation } from '../support/federation.js';
import {
  aggregatorFinishes,
  aggregatorStoppedInRound1,
  assertResumedAt,
  fedbiotResultRows,
  metricsOf,
  servicesSpec,
  sha256Of,
  startWorkers,
  standaloneOnce,
  stopServicesJob,
  openServicesJob,
  runDistributed,
} from '../support/services-job.js';
import { startPrivateNats, type PrivateNats } from '../../libs/protocol/test/support/nats-server.js';

let nats: PrivateNats | undefined;
let NATS_URL = '';
let tmp = '';
const savedSeed = process.env[INSECURE_DP_NOISE_SEED_ENV];

// C small enough that some updates are clipped; sigma > 0 so noise reaches the sum and epsilon is finite.
const DP = { dp: { clip: 0.05, noiseMultiplier: 0.8, delta: 1e-5 } };
/** test/services/distributed-job.test.ts's job (3 clients, 2 rounds) with client-level DP. */
const spec = (id: string, privacy: Record<string, unknown> = DP): JobSpec =>
  servicesSpec(tmp, id, 'privacy services test job', { privacy });

before(async () => {
  // Seeded DP noise on both sides (standalone and aggregator, this process): the runs can be compared exactly.
  process.env[INSECURE_DP_NOISE_SEED_ENV] = 'privacy-services-test';
  nats = await startPrivateNats(() => '');
  NATS_URL = nats.url;
  console.log(`privacy services tests: NATS ${nats.via} at ${NATS_URL}`);
  tmp = await tmpWithDemoFederation('fedbiot-privacy-services-');
});
after(async () => {
  if (savedSeed === undefined) delete process.env[INSECURE_DP_NOISE_SEED_ENV];
  else process.env[INSECURE_DP_NOISE_SEED_ENV] = savedSeed;
  await nats?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

type Event = Record<string, unknown>;
/** The privacy events' numbers (what the accountant and the hook report), without timestamps. */
const privacyRows = (events: readonly Event[]): Event[] =>
  events
    .filter((e) => e['kind'] === 'privacy')
    .map((e) => {
      const { ts: _ts, ...rest } = e;
      return rest;
    });

/** The standalone DP job (run once). */
const standalone = standaloneOnce(() => spec(`standalone-dp-${process.pid}`));

test('privacy.dp: the distributed job equals the standalone DP job (adapter byte for byte) and reports epsilon per round', async () => {
  const jobId = `svc-dp-${process.pid}-${Date.now().toString(36)}`;
  const s = spec(jobId);
  const ref = await standalone();
  const refPrivacy = privacyRows(ref.events);
  assert.equal(refPrivacy.length, 2, 'the standalone job reports privacy after each of its 2 rounds');
  const { logs, sink, nc, services } = await openServicesJob(NATS_URL);
  let passed = false;
  try {
    const run = await runDistributed({ natsUrl: NATS_URL, spec: s, sink, services, tmp, deadlineMs: 60_000 });
    const dir = run.runDir;

    // The same clipped, weighted, noised average in every round: the released adapter and merged model are the
    // standalone job's, byte for byte (difference 0).
    for (const f of ['adapter/adapter_model.safetensors', 'merged-model/model.safetensors'])
      assert.equal(sha256Of(join(dir, f)), sha256Of(join(ref.runDir, f)), `${f} equals the standalone DP job's`);
    const events = metricsOf(dir);
    const got = privacyRows(events);
    // Every number of the hook: clients, clipped clients, mean update norm, weight fill, sigma, q, epsilon, delta.
    assert.deepEqual(got, refPrivacy, 'privacy events equal the standalone ones');
    const eps = got.map((e) => e['epsilon'] as number);
    assert.ok(
      eps.every((e) => Number.isFinite(e) && e > 0),
      `epsilon finite: ${JSON.stringify(eps)}`,
    );
    assert.ok(eps[1]! > eps[0]!, 'epsilon grows with the rounds');
    assert.deepEqual(
      got.map((e) => [e['round'], e['delta'], e['dp_rounds'], e['sample_rate']]),
      [
        [0, 1e-5, 1, 1],
        [1, 1e-5, 2, 1],
      ],
    );
    assert.ok(
      got.some((e) => (e['clipped_clients'] as number) > 0),
      `C = 0.05 clips some update: ${JSON.stringify(got.map((e) => e['clipped_clients']))}`,
    );
    // The evaluations of the noised adapters too.
    assert.deepEqual(fedbiotResultRows(dir), fedbiotResultRows(ref.runDir), 'results.json FedBiOT rows');

    // Where epsilon is published: results.txt, report.html, the aggregator's metrics.
    const last = eps[1]!.toFixed(3);
    assert.match(
      readFileSync(join(dir, 'results.txt'), 'utf8'),
      new RegExp(`privacy main: client-level \\(epsilon ${last}, delta 0.00001\\) after 2 rounds`),
    );
    const html = readFileSync(join(dir, 'report.html'), 'utf8');
    assert.match(html, /Client-level differential privacy/);
    for (const e of eps)
      assert.ok(html.includes(`<td>${e.toFixed(3)}</td>`), `report.html shows epsilon ${e.toFixed(3)}`);
    const metrics = await (await fetch(`${run.aggregator.url}/metrics`)).text();
    const gauge = Number(/fl_dp_epsilon\{service="aggregator"\} (\S+)/.exec(metrics)?.[1]);
    assert.equal(gauge, eps[1], 'fl_dp_epsilon is the last round\u2019s epsilon');
    assert.match(metrics, /fl_dp_delta\{service="aggregator"\} 0.00001/);
    passed = true;
    console.log(
      `dp: distributed == standalone (adapter sha256 equal, difference 0); epsilon per round ${JSON.stringify(eps)}; clipped ${JSON.stringify(got.map((e) => e['clipped_clients']))}`,
    );
  } finally {
    await stopServicesJob({ passed, logs, services, nc, jobId });
  }
});

test('privacy.dp: an aggregator replaced while collecting round 1 continues the accountant from KV', async () => {
  const jobId = `svc-dp-restart-${process.pid}-${Date.now().toString(36)}`;
  const s = spec(jobId);
  const refPrivacy = privacyRows((await standalone()).events);
  const { logs, sink, nc, services } = await openServicesJob(NATS_URL);
  let passed = false;
  try {
    services.push(...(await startWorkers({ natsUrl: NATS_URL, spec: s, logSink: sink, cacheIn: tmp })));
    const runsDir = join(tmp, `${jobId}-owner-runs`);
    await aggregatorStoppedInRound1({ natsUrl: NATS_URL, spec: s, logs, runsDir });
    let earlyEps = NaN;
    const second = await aggregatorFinishes(
      { natsUrl: NATS_URL, spec: s, logSink: sink, deadlineMs: 60_000, runsDir },
      services,
      async (a) => {
        // Restored from KV before the resumed round reports (unless round 1 already completed): never 0 / unset.
        const early = await (await fetch(`${a.url}/metrics`)).text();
        earlyEps = Number(/fl_dp_epsilon\{service="aggregator"\} (\S+)/.exec(early)?.[1]);
      },
    );
    assert.ok(
      earlyEps === refPrivacy[0]!['epsilon'] || earlyEps === refPrivacy[1]!['epsilon'],
      `fl_dp_epsilon right after the restart: ${earlyEps}`,
    );
    assertResumedAt(logs, 1);
    const got = privacyRows(metricsOf(join(runsDir, jobId)));
    // The seeded noise stream restarts with the new aggregator, so the adapter after the restart is not the
    // standalone one; the accounting is: one privacy event per round, round 1's epsilon after 2 rounds.
    const pick = (e: Event) => [e['round'], e['epsilon'], e['dp_rounds'], e['effective_noise_multiplier']];
    assert.deepEqual(got.map(pick), refPrivacy.map(pick));
    const metrics = await (await fetch(`${second.url}/metrics`)).text();
    assert.equal(Number(/fl_dp_epsilon\{service="aggregator"\} (\S+)/.exec(metrics)?.[1]), refPrivacy[1]!['epsilon']);
    passed = true;
    console.log(`dp restart: epsilon per round ${JSON.stringify(got.map((e) => e['epsilon']))}`);
  } finally {
    await stopServicesJob({ passed, logs, services, nc, jobId });
  }
});

test('privacy.secureAggregation.simulateDropouts: the aggregator and the trainer refuse the job at startup', async () => {
  const jobId = `svc-secagg-${process.pid}-${Date.now().toString(36)}`;
  const s = spec(jobId, {
    ...DP,
    secureAggregation: { graph: 'complete', simulateDropouts: { beforeMasking: 0, afterMasking: 1 } },
  });
  const refusal = /simulateDropouts is for the standalone job/;
  const runsDir = join(tmp, `${jobId}-owner-runs`);
  const nc = await connectTransport(NATS_URL);
  try {
    await assert.rejects(startAggregator({ natsUrl: NATS_URL, spec: s, runsDir, logSink: () => {} }, 0), refusal);
    await assert.rejects(
      startTrainer({ natsUrl: NATS_URL, spec: s, replica: 'trainer-a', logSink: () => {} }, 0),
      refusal,
    );
    assert.ok(!existsSync(join(runsDir, jobId)), 'no run folder was started');
  } finally {
    await deleteJobResources(nc, jobId).catch(() => {});
    await nc.close();
  }
});
