/**
 * The coordinator's privacy hook (privacy-aggregation.ts) on synthetic LoRA updates: secure aggregation gives
 * plain FedAvg within the stated quantisation bound (also with dropouts up to m - t), more dropouts fail with a
 * clear error, DP clipping bounds each client's contribution, the noise has the stated std in both modes, the
 * accountant steps once per round with q = m / N, and the spec section reports bad fields by name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RdpAccountant, SecAggError, seededBytes, seededRng } from '../../privacy/src/index.js';
import { fedAvg, type ClientUpdate } from '../src/aggregate.js';
import { applyOverrides, resolveJobSpec } from '../src/job-spec.js';
import { JobSpecError } from '../src/errors.js';
import {
  PrivacyAggregation,
  defaultDegree,
  maxWeightFor,
  privacySummary,
  type PrivacyAggregationOptions,
} from '../src/privacy-aggregation.js';
import { plusSeededDelta, syntheticAdapter } from '../../../test/support/lora.js';

const global = syntheticAdapter();

/** m clients: local = global + a delta of element size `scale`, tokens 100..(100 + 37 m). */
function updates(m: number, scale: number, tokens = (i: number) => 100 + 37 * i): ClientUpdate[] {
  return Array.from({ length: m }, (_, i) => ({
    clientId: `c${i}`,
    tensors: plusSeededDelta(global.tensors, String(i), scale),
    tokens: tokens(i),
    examples: 4,
  }));
}

function hook(privacy: PrivacyAggregationOptions['privacy'], extra: Partial<PrivacyAggregationOptions> = {}) {
  return new PrivacyAggregation({
    privacy,
    clientCount: 10,
    weighting: 'tokens',
    maxWeight: 2000,
    seed: 1,
    label: 'test',
    rng: seededRng('noise'),
    secAggRandom: (id) => seededBytes(`keys/${id}`),
    ...extra,
  });
}

const secagg = (s: Record<string, unknown> = {}) =>
  ({ graph: 'complete', simulateDropouts: { beforeMasking: 0, afterMasking: 0 }, ...s }) as NonNullable<
    PrivacyAggregationOptions['privacy']['secureAggregation']
  >;

function maxDiff(a: ReadonlyMap<string, Float32Array>, b: ReadonlyMap<string, Float32Array>): number {
  let d = 0;
  for (const [k, v] of a) v.forEach((x, i) => (d = Math.max(d, Math.abs(x - b.get(k)![i]!))));
  return d;
}

test('secure aggregation gives plain token-weighted FedAvg within the stated quantisation bound', () => {
  for (const graph of ['complete', 'secagg+'] as const) {
    const ups = updates(7, 0.02);
    const r = hook({ secureAggregation: secagg({ graph }) }).aggregate(0, global, ups);
    const plain = fedAvg(ups, { weighting: 'tokens' });
    const e = r.events[0]!;
    const weightSum = ups.reduce((s, u) => s + u.tokens, 0);
    // Quantisation: bound per element of sum (w/W) x, divided by sum w / W; plus float32 rounding of both results.
    const bound = ((e['secagg_error_bound'] as number) * 2000) / weightSum + 2 * 2 ** -24 * 0.2;
    const d = maxDiff(r.adapter.tensors, plain);
    assert.ok(d <= bound, `${graph}: max |secure - FedAvg| ${d} > ${bound}`);
    assert.ok((e['secagg_error_bound'] as number) < 1e-12, 'the ring leaves at least 40 fraction bits here');
    assert.equal(e['secagg_survivors'], 7);
    assert.equal(e['secagg_clamped'], 0);
    assert.equal(e['secagg_graph'], graph === 'complete' ? 'complete' : `secagg+ k=${defaultDegree(7)}`);
    assert.ok(!('epsilon' in e), 'no DP: no epsilon');
  }
});

test('dropouts up to m - t: after masking the client stays in the sum, before masking it is left out', () => {
  // m = 7, t = 4 (default floor(7/2) + 1): 3 may drop.
  const ups = updates(7, 0.02);
  const after = hook({ secureAggregation: secagg({ simulateDropouts: { beforeMasking: 0, afterMasking: 3 } }) });
  const ra = after.aggregate(0, global, ups);
  assert.equal(ra.events[0]!['secagg_survivors'], 7);
  assert.ok(maxDiff(ra.adapter.tensors, fedAvg(ups, { weighting: 'tokens' })) < 1e-7);
  const before = hook({ secureAggregation: secagg({ simulateDropouts: { beforeMasking: 2, afterMasking: 1 } }) });
  const rb = before.aggregate(0, global, ups);
  const excluded = rb.events[0]!['secagg_excluded'] as string[];
  assert.equal(excluded.length, 2);
  const kept = ups.filter((u) => !excluded.includes(u.clientId));
  assert.ok(maxDiff(rb.adapter.tensors, fedAvg(kept, { weighting: 'tokens' })) < 1e-7);
});

test('more than m - t dropouts fail with a clear error naming the round, threshold and missing shares', () => {
  const ups = updates(5, 0.02); // t = 3: at most 2 may drop
  const h = hook({ secureAggregation: secagg({ simulateDropouts: { beforeMasking: 1, afterMasking: 2 } }) });
  assert.throws(
    () => h.aggregate(4, global, ups),
    (e: unknown) =>
      e instanceof SecAggError &&
      /round 4: secure aggregation failed \(5 clients, threshold 3/.test(e.message) &&
      /2 valid messages, threshold 3 needed|share.* available .* 3 needed/.test(e.message),
  );
  const t5 = hook({ secureAggregation: secagg({ threshold: 6 }) });
  assert.throws(
    () => t5.aggregate(0, global, ups),
    /privacy\.secureAggregation\.threshold: 6 exceeds the 5 share holders/,
  );
});

test('secure aggregation never releases a single client: a round with one update keeps the adapter', () => {
  const h = hook({ dp: { clip: 0.05, noiseMultiplier: 1, delta: 1e-5 }, secureAggregation: secagg() });
  const r = h.aggregate(0, global, updates(1, 0.02));
  assert.equal(r.adapter, global);
  assert.match(String(r.events[0]!['skipped']), /at least 2 clients/);
  assert.equal(h.accountant.steps, 0, 'nothing released, nothing spent');
});

test('DP clipping: each client contributes at most C in L2 norm; clipped clients are counted', () => {
  const C = 0.05;
  for (const sa of [undefined, secagg()]) {
    // One client, uniform weights (W = 1), no noise: the adapter moves by exactly the clipped delta.
    const ups = updates(1, 0.02);
    const h = hook(
      { dp: { clip: C, noiseMultiplier: 0, delta: 1e-5 }, ...(sa ? { secureAggregation: sa } : {}) },
      { weighting: 'uniform', maxWeight: 1 },
    );
    if (sa) {
      // Secure aggregation needs >= 2 clients: add one whose update is the global adapter itself.
      ups.push({ clientId: 'zero', tensors: global.tensors, tokens: 1, examples: 1 });
    }
    const r = h.aggregate(0, global, ups);
    let sq = 0;
    for (const [k, v] of r.adapter.tensors) v.forEach((x, i) => (sq += (x - global.tensors.get(k)![i]!) ** 2));
    const moved = Math.sqrt(sq) * ups.length; // mean over m clients, one of which moved
    assert.ok(moved <= C * (1 + 1e-5), `moved ${moved} > C`);
    assert.ok(moved > C * 0.999, 'the update was far above C, so it is clipped to C, not below');
    assert.equal(r.events[0]!['clipped_clients'], 1);
    assert.equal(r.events[0]!['epsilon'], null, 'sigma 0: epsilon unbounded (null in JSON)');
  }
});

test('DP noise has std sigma C on the sum: server-side, and split over the clients under secure aggregation', () => {
  const C = 0.5;
  const sigma = 1.5;
  const L = 160;
  for (const sa of [undefined, secagg()]) {
    const m = 4;
    // Clients whose update is zero, uniform weights: the adapter moves by (noise on the sum) / m.
    const zero = Array.from({ length: m }, (_, i) => ({
      clientId: `z${i}`,
      tensors: global.tensors,
      tokens: 1,
      examples: 1,
    }));
    const h = hook(
      { dp: { clip: C, noiseMultiplier: sigma, delta: 1e-5 }, ...(sa ? { secureAggregation: sa } : {}) },
      { weighting: 'uniform', maxWeight: 1 },
    );
    const samples: number[] = [];
    for (let r = 0; r < 60; r++) {
      const out = h.aggregate(r, global, zero);
      for (const [k, v] of out.adapter.tensors) v.forEach((x, i) => samples.push((x - global.tensors.get(k)![i]!) * m));
    }
    assert.equal(samples.length, 60 * L);
    const mean = samples.reduce((s, x) => s + x, 0) / samples.length;
    const std = Math.sqrt(samples.reduce((s, x) => s + (x - mean) ** 2, 0) / (samples.length - 1));
    // Relative standard error of a sample std: 1 / sqrt(2 (n - 1)) ~ 0.72% for n = 9600; allow 4.5 of them.
    const se = 1 / Math.sqrt(2 * (samples.length - 1));
    assert.ok(
      Math.abs(std / (sigma * C) - 1) < 4.5 * se,
      `${sa ? 'distributed' : 'server'}: std ${std} vs ${sigma * C}`,
    );
    assert.ok(Math.abs(mean) < (4.5 * sigma * C) / Math.sqrt(samples.length), `mean ${mean}`);
    // 60 rounds at q = 4 / 10, sigma 1.5: the accountant's epsilon.
    const acc = new RdpAccountant();
    acc.step(0.4, sigma, 60);
    assert.ok(Math.abs(h.accountant.getEpsilon(1e-5) - acc.getEpsilon(1e-5)) < 1e-9);
  }
});

test('distributed noise after a dropout before masking: the accountant uses the lower effective sigma', () => {
  const h = hook(
    {
      dp: { clip: 0.05, noiseMultiplier: 2, delta: 1e-5 },
      secureAggregation: secagg({ simulateDropouts: { beforeMasking: 1, afterMasking: 0 } }),
    },
    { weighting: 'uniform', maxWeight: 1 },
  );
  const e = h.aggregate(0, global, updates(4, 0.02)).events[0]!;
  assert.equal(e['effective_noise_multiplier'], 2 * Math.sqrt(3 / 4));
  const acc = new RdpAccountant();
  acc.step(0.4, 2 * Math.sqrt(3 / 4));
  assert.equal(e['epsilon'], acc.getEpsilon(1e-5));
  // Resume: the state carries the accountant on.
  const again = hook(
    { dp: { clip: 0.05, noiseMultiplier: 2, delta: 1e-5 } },
    { resume: JSON.parse(JSON.stringify(h.state())) },
  );
  assert.equal(again.accountant.steps, 1);
  assert.match(
    privacySummary([{ ...e, phase: 'main' }]),
    /privacy main: client-level \(epsilon \d+\.\d{3}, delta 0\.00001\) after 1 rounds/,
  );
});

test('the sampling rate counts every sampled client, also one whose update was rejected', () => {
  const h = hook({ dp: { clip: 0.05, noiseMultiplier: 1, delta: 1e-5 } }, { sampledPerRound: 5 });
  const e = h.aggregate(0, global, updates(4, 0.02)).events[0]!;
  assert.equal(e['sample_rate'], 0.5);
  assert.equal(
    hook({ dp: { clip: 0.05, noiseMultiplier: 1, delta: 1e-5 } }).aggregate(0, global, updates(4, 0.02)).events[0]![
      'sample_rate'
    ],
    0.4,
  );
});

test('token weights above W are capped (DP-FedAvg w = min(n / W, 1)); W from the job settings', () => {
  assert.equal(maxWeightFor('tokens', { localSteps: 12, gradAccum: 1, batchSize: 8 }, 96), 9216);
  assert.equal(maxWeightFor('examples', { localSteps: 12, gradAccum: 2, batchSize: 8 }, 96), 192);
  assert.equal(maxWeightFor('uniform', { localSteps: 12, gradAccum: 2, batchSize: 8 }, 96), 1);
  const ups = updates(3, 0.02, (i) => (i === 0 ? 5000 : 1000));
  const r = hook({ secureAggregation: secagg() }).aggregate(0, global, ups);
  assert.equal(r.events[0]!['capped_weights'], 1);
  const capped = ups.map((u) => ({ ...u, tokens: Math.min(u.tokens, 2000) }));
  assert.ok(maxDiff(r.adapter.tensors, fedAvg(capped, { weighting: 'tokens' })) < 1e-7);
});

function bad(raw: unknown, re: RegExp): void {
  assert.throws(
    () => resolveJobSpec(raw, 'spec.yaml'),
    (e: unknown) => e instanceof JobSpecError && re.test(e.message),
  );
}

test('the privacy section of the job spec: defaults, and errors naming the field', () => {
  const s = resolveJobSpec({ privacy: { dp: { clip: 0.1, noiseMultiplier: 1 }, secureAggregation: {} } }, 'spec.yaml');
  assert.deepEqual(s.privacy?.dp, { clip: 0.1, noiseMultiplier: 1, delta: 1e-5 });
  assert.deepEqual(s.privacy?.secureAggregation, {
    graph: 'complete',
    simulateDropouts: { beforeMasking: 0, afterMasking: 0 },
  });
  assert.equal(
    resolveJobSpec({}, 'spec.yaml').privacy,
    undefined,
    'absent: not in the resolved spec (old runs resume)',
  );
  assert.equal(resolveJobSpec({ privacy: { maxWeight: 100 } }, 'spec.yaml').privacy?.maxWeight, 100);
  bad({ privacy: { maxWeight: 0.5 } }, /privacy\.maxWeight: /);
  bad({ privacy: { dp: { noiseMultiplier: 1 } } }, /spec\.yaml: privacy\.dp\.clip: /);
  bad({ privacy: { dp: { clip: -1, noiseMultiplier: 1 } } }, /privacy\.dp\.clip: .*0/);
  bad({ privacy: { dp: { clip: 1, noiseMultiplier: 1, delta: 2 } } }, /privacy\.dp\.delta: /);
  bad({ privacy: { dp: { clip: 1, noiseMultiplier: 1, epsilon: 2 } } }, /privacy\.dp\.epsilon: unknown key/);
  bad({ privacy: { secureAggregation: { graph: 'ring' } } }, /privacy\.secureAggregation\.graph: /);
  bad(
    { privacy: { secureAggregation: { degree: 4 } } },
    /privacy\.secureAggregation\.degree: only applies to graph secagg\+/,
  );
  bad({ privacy: { secureAggregation: { graph: 'secagg+', degree: 3 } } }, /degree: must be even/);
  bad({ privacy: { secureAggregation: { threshold: 1 } } }, /privacy\.secureAggregation\.threshold: /);
  bad({ privacy: { secureAggregation: { simulateDropouts: { later: 1 } } } }, /simulateDropouts\.later: unknown key/);
  // --set overrides reach every privacy field, and a typo names the allowed keys.
  const o = applyOverrides({}, [
    'privacy.dp.clip=0.1',
    'privacy.dp.noiseMultiplier=1',
    'privacy.secureAggregation.graph=secagg+',
    'privacy.secureAggregation.simulateDropouts.afterMasking=1',
  ]);
  const r = resolveJobSpec(o, 'overrides').privacy;
  assert.ok(r);
  assert.equal(r.dp?.clip, 0.1);
  assert.equal(r.secureAggregation?.graph, 'secagg+');
  assert.equal(r.secureAggregation?.simulateDropouts.afterMasking, 1);
  assert.throws(() => applyOverrides({}, ['privacy.dp.clipp=1']), /expected one of: clip, noiseMultiplier, delta/);
});
