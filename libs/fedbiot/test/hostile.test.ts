/**
 * A hostile client (a data owner with valid credentials) against the round coordinator: an update scaled x1e4, a
 * token count of 2^53-1, impossible example counts. Each is rejected with the client and the reason, reported
 * through onRejected (what the services count in fl_rejected_updates_total), and the round ends with exactly the
 * honest clients' FedAvg. The AdamW reach bound is checked against real local training on the demo model: it must
 * never reject an honest update, which is what keeps honest runs bit-identical.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { TokenizedExample } from '../../data/src/index.js';
import { CausalLM, type LoraWeights } from '../../model/src/index.js';
import {
  adamwDeltaBound,
  aggregate,
  deltaNorm,
  fedAvg,
  l2Norm,
  maxCounts,
  type ClientUpdate,
} from '../src/aggregate.js';
import { ExampleStream } from '../src/batches.js';
import {
  aggregationSettingsFor,
  runRounds,
  type ClientRoundResult,
  type CoordinatorSettings,
} from '../src/coordinator.js';
import { clientStreamSeed, loadFederation, type FederationData } from '../src/federation.js';
import { resolveJobSpec, type JobSpec } from '../src/job-spec.js';
import { clientSettingsFor, initialLora, loraSpecs, trainLocally } from '../src/roles.js';
import { splitModel } from '../src/split.js';
import { oneRoundOf } from '../../../test/support/rounds.js';
import { SMALL_DEMO_FEDERATION, demoJobRawSpec, tmpWithDemoFederation } from '../../../test/support/federation.js';

let tmp = '';
let lm: CausalLM;
let spec: JobSpec;
let data: FederationData;

before(async () => {
  tmp = await tmpWithDemoFederation('fedbiot-hostile-', {
    ...SMALL_DEMO_FEDERATION,
    trainPerClient: 24,
    testPerClient: 2,
    globalTestPerTask: 1,
    corpusBytes: 4_000,
  });
  const raw = demoJobRawSpec(tmp, 'hostile', { job: { rounds: 1 }, data: { maxLength: 64 } });
  spec = resolveJobSpec({ job: raw.job, model: raw.model, data: raw.data, clients: raw.clients }, 'hostile test');
  lm = await CausalLM.load(spec.model.checkpoint, { thread: 'main', threads: 1 });
  data = await loadFederation(spec, lm.tokenizer!, join(tmp, 'cache'));
});
after(async () => {
  await lm?.release();
  rmSync(tmp, { recursive: true, force: true });
});

/** One round of real local training for every client of the demo federation, from `adapter`. */
async function honestRound(adapter: LoraWeights, round: number): Promise<ClientRoundResult[]> {
  const split = splitModel({
    numLayers: lm.config.numLayers,
    adapterBottom: 0,
    adapterTop: spec.split.adapterLayers,
    dropRate: spec.split.dropRate,
  });
  const specs = loraSpecs(split, spec.lora);
  const emulator = initialLora(specs.emulator, lm, spec.job.seed + 2);
  const settings = clientSettingsFor(spec);
  const out: ClientRoundResult[] = [];
  for (const c of data.clients) {
    const stream = new ExampleStream<TokenizedExample>(c.train, clientStreamSeed(spec.job.seed, c));
    const copy = { spec: adapter.spec, tensors: new Map([...adapter.tensors].map(([k, v]) => [k, v.slice()])) };
    const r = await trainLocally(lm, split.clientLayers, copy, [emulator], stream, settings, 7 + round + c.index);
    out.push({ clientId: c.id, adapter: r.adapter, tokens: r.tokens, examples: r.examples, meanLoss: r.meanLoss });
  }
  return out;
}

function initialAdapter(): LoraWeights {
  const split = splitModel({
    numLayers: lm.config.numLayers,
    adapterBottom: 0,
    adapterTop: spec.split.adapterLayers,
    dropRate: spec.split.dropRate,
  });
  return initialLora(loraSpecs(split, spec.lora).adapter, lm, spec.job.seed + 1);
}

const scaled = (l: LoraWeights, k: number): LoraWeights => ({
  spec: l.spec,
  tensors: new Map([...l.tensors].map(([n, v]) => [n, v.map((x) => x * k)])),
});

/** runRounds over one round whose trainClients answers `results`; returns the new adapter and what was rejected. */
async function oneRound(
  start: LoraWeights,
  results: ClientRoundResult[],
  extra: Partial<CoordinatorSettings> = {},
): Promise<{ adapter: LoraWeights; rejected: { client: string; reason: string; kind: string }[]; events: string[] }> {
  const rejected: { client: string; reason: string; kind: string }[] = [];
  const events: string[] = [];
  const final = await runRounds(
    {
      trainClients: async () => results,
      align: async () => null,
      evaluate: async () => [],
    },
    {
      ...oneRoundOf(results.map((r) => r.clientId)),
      broadcastEmulator: true,
      ...aggregationSettingsFor(spec, clientSettingsFor(spec)),
      ...extra,
    },
    { round: 0, adapter: start, emulator: start, preAligned: true },
    {
      onEvent: (e) => events.push(e.kind),
      onCheckpoint: async () => {},
      onRejected: (client, reason, kind) => rejected.push({ client, reason, kind }),
    },
  );
  return { adapter: final.adapter, rejected, events };
}

const asUpdates = (rs: readonly ClientRoundResult[]): ClientUpdate[] =>
  rs.map((r) => ({ clientId: r.clientId, tensors: r.adapter.tensors, tokens: r.tokens, examples: r.examples }));

function assertSameBits(a: ReadonlyMap<string, Float32Array>, b: ReadonlyMap<string, Float32Array>): void {
  assert.deepEqual([...a.keys()].toSorted(), [...b.keys()].toSorted());
  for (const [k, v] of a) assert.deepEqual(Buffer.from(v.buffer), Buffer.from(b.get(k)!.buffer), k);
}

test('honest AdamW clients stay inside the reach bound over two rounds; a x10 or x1e4 update does not', async () => {
  const settings = clientSettingsFor(spec);
  let adapter = initialAdapter();
  for (let round = 0; round < 2; round++) {
    const honest = await honestRound(adapter, round);
    const numel = [...adapter.tensors.values()].reduce((s, v) => s + v.length, 0);
    const bound = adamwDeltaBound(settings, numel, l2Norm(adapter.tensors));
    for (const r of honest) {
      const d = deltaNorm(r.adapter.tensors, adapter.tensors);
      console.log(`round ${round} ${r.clientId}: moved ${d.toPrecision(4)}, bound ${bound.toPrecision(4)}`);
      assert.ok(d > 0 && d <= bound, `${r.clientId} moved ${d}, bound ${bound}`);
      const max = maxCounts(settings);
      assert.ok(r.tokens <= max.tokens && r.examples <= max.examples);
      // The attack: the client's update scaled (its weights, as issue 17 probed) by 10 and by 1e4.
      for (const k of [10, 1e4]) assert.ok(deltaNorm(scaled(r.adapter, k).tensors, adapter.tensors) > bound);
    }
    // Defaults screen nothing out of an honest round: the result is exactly today's FedAvg.
    const { adapter: next, rejected } = await oneRound(adapter, honest);
    assert.deepEqual(rejected, []);
    assertSameBits(next.tensors, fedAvg(asUpdates(honest), { weighting: 'tokens' }));
    adapter = next;
  }
});

test('an update scaled x1e4 is rejected (norm, logged with the client) and the round is the honest FedAvg', async () => {
  const start = initialAdapter();
  const honest = await honestRound(start, 0);
  const [evil, ...good] = honest;
  const attacked = [{ ...evil!, adapter: scaled(evil!.adapter, 1e4) }, ...good];
  const { adapter, rejected, events } = await oneRound(start, attacked);
  assert.equal(rejected.length, 1);
  assert.equal(rejected[0]!.client, evil!.clientId);
  assert.equal(rejected[0]!.kind, 'norm');
  assert.match(rejected[0]!.reason, /moved .* from the broadcast, more than 3 AdamW steps/);
  assert.ok(events.includes('rejected'));
  assertSameBits(adapter.tensors, fedAvg(asUpdates(good), { weighting: 'tokens' }));
  // Without the bound (normBound 'off', today's default before issue 17) the attacker owns the average.
  const open = await oneRound(start, attacked, { normBound: 'off' });
  assert.deepEqual(open.rejected, []);
  assert.ok(deltaNorm(open.adapter.tensors, start.tensors) > 100 * deltaNorm(adapter.tensors, start.tensors));
});

test('tokens 2^53-1 and more examples than the task holds are rejected as impossible counts', async () => {
  const start = initialAdapter();
  const honest = await honestRound(start, 0);
  const [evil, other, ...good] = honest;
  const attacked = [
    { ...evil!, tokens: Number.MAX_SAFE_INTEGER },
    { ...other!, examples: maxCounts(clientSettingsFor(spec)).examples + 1 },
    ...good,
  ];
  const { adapter, rejected } = await oneRound(start, attacked);
  assert.deepEqual(
    rejected.map((r) => [r.client, r.kind]),
    [
      [evil!.clientId, 'weight'],
      [other!.clientId, 'weight'],
    ],
  );
  assert.match(rejected[0]!.reason, /tokens 9007199254740991 exceeds the task's \d+ \(12 examples x maxLength 64\)/);
  assertSameBits(adapter.tensors, fedAvg(asUpdates(good), { weighting: 'tokens' }));
});

const mk = (id: string, v: number[]): ClientUpdate => ({
  clientId: id,
  tensors: new Map([['t', Float32Array.from(v)]]),
  tokens: 10,
  examples: 1,
});

test('robust rules: trimmed mean and coordinate-wise median drop a scaled update the norm bound lets through', () => {
  const ups = [mk('a', [1, -2]), mk('b', [2, 0]), mk('c', [3, 2]), mk('d', [4, 4]), mk('evil', [1000, -1000])];
  // Median of each coordinate: [3, 0]. Trimmed mean with 0.2 of 5 -> cut 1 at each end: mean of the middle three.
  assert.deepEqual([...aggregate(ups, { rule: 'median', weighting: 'tokens' }).get('t')!], [3, 0]);
  assert.deepEqual(
    [...aggregate(ups, { rule: 'trimmed-mean', weighting: 'tokens', trimFraction: 0.2 }).get('t')!],
    [3, 0],
  );
  assert.deepEqual([...aggregate(ups.slice(0, 4), { rule: 'median', weighting: 'tokens' }).get('t')!], [2.5, 1]);
  const mean = aggregate(ups, { rule: 'fedavg', weighting: 'tokens' }).get('t')!;
  assert.ok(Math.abs(mean[0]! - 202) < 1e-4, 'plain FedAvg follows the outlier');
});

test('relativeNormBound rejects an update far beyond the round median distance', async () => {
  const start = initialAdapter();
  const honest = await honestRound(start, 0);
  const [evil, ...good] = honest;
  // 1.5 times as far as it went: still inside the AdamW reach bound, but more than 1.2 x the median distance.
  const push = new Map(
    [...evil!.adapter.tensors].map(([k, v]) => [
      k,
      v.map((x, i) => start.tensors.get(k)![i]! + 1.5 * (x - start.tensors.get(k)![i]!)),
    ]),
  );
  const attacked = [{ ...evil!, adapter: { spec: evil!.adapter.spec, tensors: push } }, ...good];
  const loose = await oneRound(start, attacked);
  assert.deepEqual(loose.rejected, [], 'within the AdamW reach bound');
  const tight = await oneRound(start, attacked, { relativeNormBound: 1.2 });
  assert.deepEqual(
    tight.rejected.map((r) => r.client),
    [evil!.clientId],
  );
  assert.match(tight.rejected[0]!.reason, /more than 1.2 x the round's median/);
});
