/**
 * Secure aggregation in the distributed job (issue 14): the four services on a private NATS
 * (FEDBIOT_TEST_NATS=process), in one process. Each trainer masks its update (runSecAggClient) and publishes its
 * counts only; the aggregator runs runSecAggAggregator per round and the coordinator's secure path turns the sum into
 * the round's adapter.
 * - the distributed job equals the standalone secure-aggregation job: the fixed-point sum is exact (mask
 *   cancellation in Z_2^64), so the adapter and merged model are byte for byte the standalone's (difference 0);
 *   no update blob is uploaded to any client bucket and no ClientUpdate carries an adapter;
 * - a trainer killed after sending its masked input (round 1, 2 of 3 survive, threshold 2) is recovered from the
 *   others' Shamir shares (the aggregator reports it under secagg_recovered_after_masking): the final adapter is
 *   still the standalone's.
 * That a client identity can publish only its own secagg messages is tested in libs/protocol/test/secagg.test.ts.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { JobSpec } from '../../libs/fedbiot/src/index.js';
import { updateBucketName } from '../../libs/protocol/src/index.js';
import { startAggregator } from '../../services/aggregator/aggregator.module.js';
import { tmpWithDemoFederation } from '../support/federation.js';
import {
  aggregatorFinishes,
  assertResumedAt,
  metricsOf,
  openServicesJob,
  runDistributed,
  servicesSpec,
  sha256Of,
  standaloneOnce,
  startWorkers,
  stopServicesJob,
} from '../support/services-job.js';
import { startPrivateNats, type PrivateNats } from '../../libs/protocol/test/support/nats-server.js';

let nats: PrivateNats | undefined;
let NATS_URL = '';
let tmp = '';

/** test/services/privacy-services.test.ts's job (3 clients, 2 rounds) with secure aggregation and no DP. */
const spec = (id: string, dp?: Record<string, unknown>): JobSpec =>
  servicesSpec(tmp, id, 'secagg services test job', {
    privacy: { secureAggregation: { graph: 'complete' }, ...(dp ? { dp } : {}) },
  });

before(async () => {
  nats = await startPrivateNats(() => '');
  NATS_URL = nats.url;
  console.log(`secagg services tests: NATS ${nats.via} at ${NATS_URL}`);
  tmp = await tmpWithDemoFederation('fedbiot-secagg-services-');
});
after(async () => {
  await nats?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

type Event = Record<string, unknown>;
const FILES = ['adapter/adapter_model.safetensors', 'merged-model/model.safetensors'];

/** The standalone secure-aggregation job (run once). */
const standalone = standaloneOnce(() => spec(`standalone-secagg-${process.pid}`));
const DP = { clip: 0.05, noiseMultiplier: 0.8, delta: 1e-5 };
const standaloneDp = standaloneOnce(() => spec(`standalone-secagg-dp-${process.pid}`, DP));

/**
 * Each trainer draws its own noise share (node:crypto): a DP job's adapter cannot equal the standalone one, its
 * accounting can (q, the effective multiplier of the survivors' shares, epsilon after each round).
 */
const dpAccounting = (es: readonly Event[]): unknown[][] =>
  es
    .filter((e) => e['kind'] === 'privacy')
    .map((e) => [
      e['round'],
      e['secagg_survivors'],
      e['effective_noise_multiplier'],
      e['sample_rate'],
      e['epsilon'],
      e['dp_rounds'],
    ]);

/** Asserts the run folder `dir`'s adapter and merged model are the standalone run's (in `refDir`), byte for byte. */
function assertSameFiles(dir: string, refDir: string): void {
  for (const f of FILES)
    assert.equal(sha256Of(join(dir, f)), sha256Of(join(refDir, f)), `${f} equals the standalone secure job's`);
}

/** The clients of the standalone run's train events, sorted. */
const clientsOf = (events: readonly Event[]): string[] =>
  [...new Set(events.filter((e) => e['kind'] === 'train').map((e) => String(e['client'])))].toSorted();

test('privacy.secureAggregation: the distributed job equals the standalone secure job (adapter byte for byte), no update in the clear', async () => {
  const jobId = `svc-secagg-${process.pid}-${Date.now().toString(36)}`;
  const s = spec(jobId);
  const ref = await standalone();
  const { logs, sink, nc, services } = await openServicesJob(NATS_URL);
  // Every ClientUpdate of the job, as any subscriber sees it: counts only.
  const updates: Event[] = [];
  const sub = nc.subscribe(`fl.${jobId}.round.*.update.*`, {
    callback: (_e, m) => void updates.push(JSON.parse(new TextDecoder().decode(m.data)) as Event),
  });
  // The masked inputs: each a blob in its sender's update bucket, its ref on NATS (the vector scales with the model).
  const masked: { bytes: number; body: Event }[] = [];
  const maskedSub = nc.subscribe(`fl.${jobId}.round.*.secagg.masked.*`, {
    callback: (_e, m) =>
      void masked.push({
        bytes: m.data.length,
        body: (JSON.parse(new TextDecoder().decode(m.data)) as { body: Event }).body,
      }),
  });
  let passed = false;
  try {
    const run = await runDistributed({ natsUrl: NATS_URL, spec: s, sink, services, tmp, deadlineMs: 120_000 });
    const dir = run.runDir;
    assertSameFiles(dir, ref.runDir);
    assert.equal(updates.length, 6, '3 clients x 2 rounds');
    assert.ok(
      updates.every((u) => !('adapterLora' in u)),
      'no ClientUpdate names an update blob',
    );
    assert.equal(masked.length, 6);
    for (const m of masked) {
      assert.equal(m.body['type'], 'secagg.masked-ref');
      const blob = m.body['maskedRef'] as { bucket: string };
      assert.equal(blob.bucket, updateBucketName(jobId, String(m.body['sender'])));
      assert.ok(m.bytes < 1024, `masked message of ${m.bytes} bytes`);
    }
    const pick = (es: readonly Event[]) =>
      es
        .filter((e) => e['kind'] === 'privacy')
        .map((e) => [e['round'], e['clients'], e['secagg_survivors'], e['weight_fill']]);
    assert.deepEqual(pick(metricsOf(dir)), pick(ref.events), 'survivors and weight fill per round');
    const train = (es: readonly Event[]) =>
      es
        .filter((e) => e['kind'] === 'train')
        .map((e) => `${String(e['round'])}/${String(e['client'])}/${String(e['tokens'])}/${String(e['loss'])}`)
        .toSorted();
    assert.deepEqual(train(metricsOf(dir)), train(ref.events), 'train events (counts and losses)');
    passed = true;
    console.log('secagg: distributed == standalone (adapter and merged model sha256 equal, difference 0)');
  } finally {
    sub.unsubscribe();
    maskedSub.unsubscribe();
    await stopServicesJob({ passed, logs, services, nc, jobId });
  }
});

/**
 * Kills the first trainer whose client sends its masked input of round 1: the others are still training, so the
 * unmasking request (sent once every masked input is in) finds it gone and Shamir recovers its mask. Returns the run
 * folder and the victim after checking the round's survivors.
 */
async function killAfterMasking(
  jobId: string,
  s: JobSpec,
  clients: readonly string[],
): Promise<{ dir: string; victim: string }> {
  const { logs, sink, nc, services } = await openServicesJob(NATS_URL);
  let passed = false;
  try {
    const [alignment, evaluator, ...trainers] = await startWorkers({
      natsUrl: NATS_URL,
      spec: s,
      logSink: sink,
      cacheIn: tmp,
      perClient: clients,
    });
    services.push(alignment, evaluator, ...trainers);
    let killed: Promise<void> | undefined;
    let victim = '';
    const sub = nc.subscribe(`fl.${jobId}.round.1.secagg.masked.*`, {
      max: 1,
      callback: (_e, m) => {
        victim = m.subject.split('.').at(-1)!;
        const t = trainers[clients.indexOf(victim)]!;
        services.splice(services.indexOf(t), 1);
        killed = t.close();
      },
    });
    const runsDir = join(tmp, `${jobId}-owner-runs`);
    await aggregatorFinishes({ natsUrl: NATS_URL, spec: s, logSink: sink, deadlineMs: 120_000, runsDir }, services);
    sub.unsubscribe();
    assert.ok(killed, `the ${victim} replica was killed after masking`);
    await killed;
    const dir = join(runsDir, jobId);
    const priv = metricsOf(dir).filter((e) => e['kind'] === 'privacy');
    assert.deepEqual(
      priv.map((e) => [e['round'], e['secagg_survivors'], e['secagg_excluded'], e['secagg_recovered_after_masking']]),
      [
        [0, 3, [], []],
        [1, 3, [], [victim]],
      ],
      'the killed client masked before dying: it is in the sum, recovered by Shamir',
    );
    passed = true;
    return { dir, victim };
  } finally {
    await stopServicesJob({ passed, logs, services, nc, jobId });
  }
}

test('privacy.secureAggregation: a trainer killed after masking is recovered (2 of 3 survive, t = 2): the final adapter is the standalone one', async () => {
  const jobId = `svc-secagg-kill-${process.pid}-${Date.now().toString(36)}`;
  const ref = await standalone();
  const clients = clientsOf(ref.events);
  assert.equal(clients.length, 3);
  const { dir, victim } = await killAfterMasking(jobId, spec(jobId), clients);
  assertSameFiles(dir, ref.runDir);
  console.log(`secagg: ${victim} killed after masking in round 1, recovered; final adapter == standalone`);
});

test('privacy.secureAggregation + privacy.dp: a trainer killed after masking is recovered and the accountant still equals the standalone job', async () => {
  const jobId = `svc-secagg-dp-kill-${process.pid}-${Date.now().toString(36)}`;
  const { events: ref } = await standaloneDp();
  const { dir, victim } = await killAfterMasking(jobId, spec(jobId, DP), clientsOf(ref));
  // The victim's masked input carried its noise share, so the sum's noise, and the accounting, are the standalone's.
  const got = dpAccounting(metricsOf(dir));
  assert.deepEqual(got, dpAccounting(ref), 'privacy accounting per round equals the standalone DP + secagg job');
  assert.ok(got.every((r) => Number.isFinite(r[4]) && (r[4] as number) > 0));
  console.log(
    `secagg + dp: ${victim} killed after masking in round 1, recovered; epsilon ${JSON.stringify(got.map((r) => r[4]))}`,
  );
});

test('privacy.secureAggregation + privacy.dp: trainers clip and noise before masking; the accountant equals the standalone job', async () => {
  const jobId = `svc-secagg-dp-${process.pid}-${Date.now().toString(36)}`;
  const s = spec(jobId, DP);
  const { events: ref } = await standaloneDp();
  const { logs, sink, nc, services } = await openServicesJob(NATS_URL);
  let passed = false;
  try {
    const run = await runDistributed({ natsUrl: NATS_URL, spec: s, sink, services, tmp, deadlineMs: 120_000 });
    const dir = run.runDir;
    const events = metricsOf(dir);
    const got = dpAccounting(events);
    assert.deepEqual(got, dpAccounting(ref), 'privacy accounting per round equals the standalone DP + secagg job');
    // The clipped count and mean pre-clip norm come from the clients' stats in the masked sum. Round 0 starts from
    // the same adapter as the standalone job, so its clients' updates, and these sums, are the standalone's.
    const stats = (es: readonly Event[]) =>
      es.filter((e) => e['kind'] === 'privacy').map((e) => [e['clipped_clients'], e['mean_update_norm']]);
    const st = stats(events);
    assert.equal(st.length, 2);
    for (const [clipped, norm] of st) {
      assert.ok(Number.isInteger(clipped) && (clipped as number) >= 0 && (clipped as number) <= 3, String(clipped));
      assert.ok(typeof norm === 'number' && norm > 0, String(norm));
    }
    assert.deepEqual(st[0], stats(ref)[0], 'round 0: clipped_clients and mean_update_norm equal the standalone');
    assert.match(readFileSync(join(dir, 'report.html'), 'utf8'), /<td>\d \/ 3<\/td><td>\d\.\d{4}<\/td>/);
    assert.ok(got.every((r) => Number.isFinite(r[4]) && (r[4] as number) > 0));
    assert.match(readFileSync(join(dir, 'results.txt'), 'utf8'), /privacy main: client-level \(epsilon /);
    const metrics = await (await fetch(`${run.aggregator.url}/metrics`)).text();
    assert.equal(Number(/fl_dp_epsilon\{service="aggregator"\} (\S+)/.exec(metrics)?.[1]), got[1]![4]);
    passed = true;
    console.log(
      `secagg + dp: epsilon per round ${JSON.stringify(got.map((r) => r[4]))} == standalone; [clipped, mean norm] ${JSON.stringify(st)}`,
    );
  } finally {
    await stopServicesJob({ passed, logs, services, nc, jobId });
  }
});

test('privacy.secureAggregation: an aggregator stopped after the clients masked round 1 is replaced; the round is re-run with fresh keys and the job ends at the standalone adapter', async () => {
  const jobId = `svc-secagg-restart-${process.pid}-${Date.now().toString(36)}`;
  const s = spec(jobId);
  const ref = await standalone();
  const clients = clientsOf(ref.events);
  const { logs, sink, nc, services } = await openServicesJob(NATS_URL);
  // Every advertised key pair of round 1 (one per client and attempt): a re-run must use new keys and a new round id.
  const advertised: { client: string; roundId: string; cPk: string; sPk: string }[] = [];
  const adv = nc.subscribe(`fl.${jobId}.round.1.secagg.advertise.*`, {
    callback: (_e, m) => {
      const b = (JSON.parse(new TextDecoder().decode(m.data)) as { body: Record<string, string> }).body;
      advertised.push({ client: b['sender']!, roundId: b['roundId']!, cPk: b['cPk']!, sPk: b['sPk']! });
    },
  });
  let passed = false;
  try {
    services.push(...(await startWorkers({ natsUrl: NATS_URL, spec: s, logSink: sink, cacheIn: tmp })));
    const runsDir = join(tmp, `${jobId}-owner-runs`);
    // The first aggregator stops once all three clients have sent their masked input of round 1 (before it could
    // download them and ask for the unmasking shares).
    let first: Awaited<ReturnType<typeof startAggregator>> | undefined;
    let stopped: Promise<void> | undefined;
    let masked = 0;
    let stopAt = 0;
    const sub = nc.subscribe(`fl.${jobId}.round.1.secagg.masked.*`, {
      callback: () => {
        if (++masked !== 3) return;
        stopAt = Date.now();
        stopped ??= first!.close();
      },
    });
    first = await startAggregator(
      {
        natsUrl: NATS_URL,
        spec: s,
        logSink: (r) => sink({ ...r, service: 'aggregator-1' }),
        deadlineMs: 120_000,
        runsDir,
      },
      0,
    );
    await assert.rejects(first.role.done, 'the first aggregator does not finish the job');
    await stopped;
    sub.unsubscribe();
    // A stopping aggregator leaves the exchange at once (it does not wait out the round's deadline), so the
    // replacement below re-plans round 1 within the work queue's duplicate window: its tasks must still go out.
    const stopMs = Date.now() - stopAt;
    assert.ok(stopMs < 15_000, `the first aggregator took ${stopMs} ms to stop`);
    const firstAttempt = new Set(advertised.map((a) => a.roundId));
    assert.equal(firstAttempt.size, 1);
    const t0 = Date.now();
    await aggregatorFinishes({ natsUrl: NATS_URL, spec: s, logSink: sink, deadlineMs: 60_000, runsDir }, services);
    assertResumedAt(logs, 1);
    // Two attempts of round 1, each client advertising in both, with keys never seen before.
    const attempts = [...new Set(advertised.map((a) => a.roundId))];
    assert.equal(attempts.length, 2, `round ids of round 1: ${attempts.join(', ')}`);
    for (const id of attempts)
      assert.deepEqual(
        advertised
          .filter((a) => a.roundId === id)
          .map((a) => a.client)
          .toSorted(),
        clients,
      );
    const keys = advertised.flatMap((a) => [a.cPk, a.sPk]);
    assert.equal(new Set(keys).size, keys.length, 'no key is used in two attempts');
    const dir = join(runsDir, jobId);
    assertSameFiles(dir, ref.runDir);
    const priv = metricsOf(dir).filter((e) => e['kind'] === 'privacy');
    assert.deepEqual(
      priv.map((e) => [e['round'], e['secagg_survivors']]),
      [
        [0, 3],
        [1, 3],
      ],
    );
    passed = true;
    console.log(
      `secagg restart: first aggregator stopped in ${stopMs} ms; round 1 re-run (round ids ${attempts.join(', ')}); replacement finished in ${Date.now() - t0} ms; final adapter == standalone`,
    );
  } finally {
    adv.unsubscribe();
    await stopServicesJob({ passed, logs, services, nc, jobId });
  }
});
