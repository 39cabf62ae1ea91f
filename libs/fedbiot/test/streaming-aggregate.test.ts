/**
 * Aggregation as updates arrive (issue 17/18): StreamingFedAvg folds updates in planned order while they arrive in
 * any order, and runRounds with a port that streams into its sink gives the collect-all path's adapter bit for bit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LoraWeights } from '../../model/src/index.js';
import { StreamingFedAvg, aggregate, fedAvg, type ClientUpdate } from '../src/aggregate.js';
import {
  runRounds,
  type ClientRoundReceipt,
  type ClientRoundResult,
  type CoordinatorSettings,
  type RoundPorts,
} from '../src/coordinator.js';
import { oneRoundOf } from '../../../test/support/rounds.js';

/** xorshift32 in [-1, 1). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 31 - 1;
  };
}

const NAMES = ['layers.6.q_proj.lora_A', 'layers.6.q_proj.lora_B', 'layers.7.v_proj.lora_A'];
const SIZES = [4096, 4096, 1000];

function makeUpdates(n: number, seed: number): ClientUpdate[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => ({
    clientId: `c${String(i).padStart(3, '0')}`,
    tensors: new Map(NAMES.map((name, k) => [name, Float32Array.from({ length: SIZES[k]! }, () => 0.05 * r())])),
    // Varied integer weights, as token counts are.
    tokens: 100 + Math.floor(400 * (r() + 1)),
    examples: 1 + Math.floor(8 * (r() + 1)),
  }));
}

function shuffled<T>(xs: readonly T[], seed: number): T[] {
  const r = rng(seed);
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(((r() + 1) / 2) * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function maxAbsDiff(a: ReadonlyMap<string, Float32Array>, b: ReadonlyMap<string, Float32Array>): number {
  let m = 0;
  for (const [k, v] of a) {
    const w = b.get(k)!;
    assert.equal(v.length, w.length, k);
    for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i]! - w[i]!));
  }
  return m;
}

function sameBits(a: ReadonlyMap<string, Float32Array>, b: ReadonlyMap<string, Float32Array>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (
      !w ||
      !Buffer.from(v.buffer, v.byteOffset, v.byteLength).equals(Buffer.from(w.buffer, w.byteOffset, w.byteLength))
    )
      return false;
  }
  return true;
}

test('StreamingFedAvg: any arrival order within the window gives fedAvg in planned order bit for bit', () => {
  const planned = makeUpdates(40, 7);
  const ids = planned.map((u) => u.clientId);
  const ref = fedAvg(planned, { weighting: 'tokens' });
  for (const seed of [1, 2, 3]) {
    const s = new StreamingFedAvg('tokens', ids, planned.length);
    for (const u of shuffled(planned, seed)) s.add(u);
    assert.ok(s.inPlannedOrder);
    assert.ok(sameBits(s.result(), ref), `arrival order ${seed}`);
  }
});

test('StreamingFedAvg: past the window it streams in arrival order; float64 sums keep it within float32 rounding of the old path', (t) => {
  const planned = makeUpdates(200, 11);
  const ids = planned.map((u) => u.clientId);
  const ref = fedAvg(planned, { weighting: 'tokens' });
  let worst = 0;
  let identical = 0;
  for (const seed of [4, 5, 6]) {
    const s = new StreamingFedAvg('tokens', ids, 4);
    for (const u of shuffled(planned, seed)) s.add(u);
    assert.equal(s.inPlannedOrder, false, 'a random order of 200 overflows a window of 4');
    assert.ok(s.peakHeld <= 5);
    const out = s.result();
    const d = maxAbsDiff(out, ref);
    if (d === 0) identical++;
    worst = Math.max(worst, d);
    // At most one float32 ulp of values below 0.05 (2^-28 ~ 3.7e-9) per element: only the final rounding can differ.
    assert.ok(d <= 2 ** -28, `max abs difference ${d}`);
  }
  t.diagnostic(
    `arrival-order streaming vs collect-all fedAvg: max abs difference ${worst.toExponential(2)} over 3 orders (${identical} bit-identical)`,
  );
  console.log(
    `streaming (arrival order, 200 clients) vs old path: max abs diff ${worst.toExponential(2)}; ${identical}/3 orders bit-identical`,
  );
});

test('StreamingFedAvg: a skipped (rejected) client does not hold later ones back; a missing one is waited for until result()', () => {
  const planned = makeUpdates(5, 3);
  const ids = planned.map((u) => u.clientId);
  const s = new StreamingFedAvg('examples', ids, 8);
  s.add(planned[2]!);
  s.add(planned[1]!);
  s.skip(ids[0]!);
  assert.equal(s.count, 2, 'c001, c002 folded once c000 was skipped');
  s.add(planned[4]!); // c003 never arrives
  assert.equal(s.count, 2);
  const kept = [planned[1]!, planned[2]!, planned[4]!];
  assert.ok(sameBits(s.result(), fedAvg(kept, { weighting: 'examples' })));
  assert.throws(() => new StreamingFedAvg('tokens', ids).add({ ...planned[0]!, tokens: -1 }), /tokens must be/);
});

// ---- runRounds through the sink --------------------------------------------------------------------------------

const SPEC = { name: 'test' } as unknown as LoraWeights['spec'];
const lora = (tensors: Map<string, Float32Array>): LoraWeights => ({ spec: SPEC, tensors });

function results(n: number, seed: number): ClientRoundResult[] {
  return makeUpdates(n, seed).map((u) => ({
    clientId: u.clientId,
    adapter: lora(new Map(u.tensors)),
    tokens: u.tokens,
    examples: u.examples,
    meanLoss: 1,
  }));
}

/** One round; the port either returns whole results or streams them into the sink in `order` and returns receipts. */
async function oneRound(
  rs: readonly ClientRoundResult[],
  streamOrder: readonly ClientRoundResult[] | null,
  extra: Partial<CoordinatorSettings> = {},
): Promise<{ adapter: LoraWeights; events: Record<string, unknown>[]; sinkGiven: boolean }> {
  const start = lora(new Map(NAMES.map((n, k) => [n, new Float32Array(SIZES[k]!)])));
  let sinkGiven = false;
  const ports: RoundPorts = {
    trainClients: async (_round, _clients, _a, _e, sink) => {
      sinkGiven = sink !== undefined;
      if (!sink || !streamOrder) return rs;
      for (const r of streamOrder) sink(r);
      return rs.map((r): ClientRoundReceipt => ({
        clientId: r.clientId,
        tokens: r.tokens,
        examples: r.examples,
        meanLoss: r.meanLoss,
        bytes: [...r.adapter.tensors.values()].reduce((s, v) => s + v.byteLength, 0),
      }));
    },
    align: async () => null,
    evaluate: async () => [],
  };
  const events: Record<string, unknown>[] = [];
  const final = await runRounds(
    ports,
    {
      ...oneRoundOf(rs.map((r) => r.clientId)),
      broadcastEmulator: false,
      weighting: 'tokens',
      ...extra,
    },
    { round: 0, adapter: start, emulator: start, preAligned: true },
    { onEvent: (e) => events.push(e), onCheckpoint: async () => {} },
  );
  return { adapter: final.adapter, events, sinkGiven };
}

test('runRounds: a port streaming into the sink in arrival order gives the collect-all adapter and events exactly', async () => {
  const rs = results(12, 21);
  // A hostile client among them: its update is 1e4 times too large for the absolute norm bound.
  const bad = rs[5]!;
  const hostile: ClientRoundResult = {
    ...bad,
    adapter: lora(new Map([...bad.adapter.tensors].map(([k, v]) => [k, v.map((x) => x * 1e4)]))),
  };
  const all = rs.map((r) => (r === bad ? hostile : r));
  const extra = { maxUpdateNorm: 10 };
  const whole = await oneRound(all, null, extra);
  const streamed = await oneRound(all, shuffled(all, 9), extra);
  assert.ok(whole.sinkGiven && streamed.sinkGiven);
  assert.ok(sameBits(streamed.adapter.tensors, whole.adapter.tensors));
  assert.deepEqual(streamed.events, whole.events);
  assert.deepEqual(
    whole.events.filter((e) => e['kind'] === 'rejected').map((e) => e['client']),
    [bad.clientId],
  );
  // And both equal today's fedAvg of the honest ones in planned order.
  const honest = all.filter((r) => r !== hostile);
  const ref = fedAvg(
    honest.map((r) => ({ clientId: r.clientId, tensors: r.adapter.tensors, tokens: r.tokens, examples: r.examples })),
    { weighting: 'tokens' },
  );
  assert.ok(sameBits(streamed.adapter.tensors, ref));
});

test('runRounds: trimmed mean and the relative norm bound keep the collect-all path (no sink)', async () => {
  const rs = results(6, 5);
  const trimmed = await oneRound(rs, rs, { rule: 'trimmed-mean', trimFraction: 0.2 });
  assert.equal(trimmed.sinkGiven, false);
  const ref = aggregate(
    rs.map((r) => ({ clientId: r.clientId, tensors: r.adapter.tensors, tokens: r.tokens, examples: r.examples })),
    { rule: 'trimmed-mean', weighting: 'tokens', trimFraction: 0.2 },
  );
  assert.ok(sameBits(trimmed.adapter.tensors, ref));
  assert.equal((await oneRound(rs, rs, { relativeNormBound: 3 })).sinkGiven, false);
});
