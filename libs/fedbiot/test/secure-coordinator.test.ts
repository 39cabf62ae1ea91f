/**
 * The coordinator's secure-aggregation path (issue 14): a port that returns only the clients' counts and the
 * survivors' secure sum (the real libs/privacy protocol, run in-process) gives the standalone hook's adapter bit for
 * bit; clients dropped after masking stay in the sum; the aggregate's screening refuses a sum that breaks the
 * absolute norm bound; a sum of the wrong length fails.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LoraWeights } from '../../model/src/index.js';
import {
  CLIENT_STATS_LENGTH,
  globalNorm,
  prepareClientInput,
  updateDelta,
  secureAggregateInProcess,
  type SecAggInput,
} from '../../privacy/src/index.js';
import type { ClientUpdate } from '../src/aggregate.js';
import {
  runRounds,
  secureRoundAdapter,
  secureRoundResult,
  type CoordinatorSettings,
  type RoundPorts,
} from '../src/coordinator.js';
import { PrivacyAggregation } from '../src/privacy-aggregation.js';
import { plusSeededDelta, syntheticAdapter } from '../../../test/support/lora.js';

const W = 2000;
const start = syntheticAdapter();

/** A client's local training: the broadcast plus a delta that depends on client and round. */
function train(clientId: string, round: number, adapter: LoraWeights, scale = 0.01): ClientUpdate {
  return {
    clientId,
    tensors: plusSeededDelta(adapter.tensors, `${clientId}/${round}`, scale),
    tokens: 100 + 37 * Number(clientId.slice(1)),
    examples: 4,
  };
}

const CLIENTS = ['c0', 'c1', 'c2', 'c3', 'c4'];

function settings(extra: Partial<CoordinatorSettings> = {}): CoordinatorSettings {
  return {
    rounds: 2,
    clientIds: CLIENTS,
    perRound: { fraction: 1 },
    seed: 1,
    preAlignSteps: 0,
    alignStepsPerRound: 0,
    weighting: 'tokens',
    evalEvery: 100,
    broadcastEmulator: false,
    ...extra,
  } as CoordinatorSettings;
}

const noAlignEval = { align: async () => null, evaluate: async () => [] };

/** The secure port: each client prepares its input as a client-trainer does; the server sees the sum only. */
function securePort(
  dropAfterMasking: (round: number) => string[] = () => [],
  scale = 0.01,
  clip?: number,
  onUpdates?: (round: number, ups: readonly ClientUpdate[], adapter: LoraWeights) => void,
): RoundPorts {
  return {
    trainClients: () => Promise.reject(new Error('trainClients must not be called under secure aggregation')),
    trainClientsSecure: async (round, clients, adapter) => {
      // Scales grow with the client: with a clip, some clients are clipped and some are not.
      const ups = clients.map((c, i) => train(c, round, adapter, clip === undefined ? scale : scale * (i + 1)));
      onUpdates?.(round, ups, adapter);
      const inputs = new Map<string, SecAggInput>(
        ups.map((u) => [
          u.clientId,
          prepareClientInput({
            local: u.tensors,
            global: adapter.tensors,
            weight: u.tokens,
            maxWeight: W,
            ...(clip === undefined ? {} : { dp: { clip, noiseStd: 0 } }),
          }).input,
        ]),
      );
      let total = 0;
      for (const v of adapter.tensors.values()) total += v.length;
      const r = secureAggregateInProcess(
        {
          roundId: `test/${round}`,
          clients: [...clients],
          threshold: Math.floor(clients.length / 2) + 1,
          vectorLength: total,
          clipRange: 1,
          maxWeight: W,
          graph: { kind: 'complete' },
          statsLength: CLIENT_STATS_LENGTH,
        },
        inputs,
        { dropAfterMasking: dropAfterMasking(round) },
      );
      return secureRoundResult(
        ups.map((u) => ({ ...u, meanLoss: 1 })),
        r,
      );
    },
    ...noAlignEval,
  };
}

async function run(ports: RoundPorts, s: CoordinatorSettings) {
  const events: { round: number; kind: string; [k: string]: unknown }[] = [];
  const end = await runRounds(
    ports,
    s,
    { round: 0, adapter: start, emulator: start, preAligned: true },
    { onEvent: (e) => events.push(e), onCheckpoint: async () => {} },
  );
  return { end, events };
}

function sameBits(a: ReadonlyMap<string, Float32Array>, b: ReadonlyMap<string, Float32Array>): boolean {
  for (const [k, v] of a)
    if (!Buffer.from(v.buffer, v.byteOffset, v.byteLength).equals(Buffer.from(b.get(k)!.buffer))) return false;
  return a.size === b.size;
}

test('the secure port path gives the standalone secure-aggregation hook adapter bit for bit', async () => {
  const secure = await run(securePort(), settings({ secureAggregation: { maxWeight: W } }));
  const hook = new PrivacyAggregation({
    privacy: { secureAggregation: { graph: 'complete', simulateDropouts: { beforeMasking: 0, afterMasking: 0 } } },
    clientCount: CLIENTS.length,
    weighting: 'tokens',
    maxWeight: W,
    seed: 1,
    label: 'test',
  } as ConstructorParameters<typeof PrivacyAggregation>[0]);
  const clear: RoundPorts = {
    trainClients: async (round, clients, adapter) =>
      clients.map((c) => {
        const u = train(c, round, adapter);
        return {
          clientId: c,
          adapter: { spec: adapter.spec, tensors: u.tensors },
          tokens: u.tokens,
          examples: u.examples,
          meanLoss: 1,
        };
      }),
    ...noAlignEval,
  };
  const standalone = await run(clear, settings({ aggregate: hook.aggregate }));
  assert.ok(sameBits(secure.end.adapter.tensors, standalone.end.adapter.tensors));
  assert.ok(!sameBits(secure.end.adapter.tensors, start.tensors), 'the adapter moved');
  const priv = secure.events.filter((e) => e.kind === 'privacy');
  assert.equal(priv.length, 2);
  assert.equal(priv[0]!['secagg_survivors'], 5);
  assert.equal(secure.events.filter((e) => e.kind === 'train').length, 10);
});

test('clients dropped after masking stay in the sum: the same adapter as without dropouts', async () => {
  const full = await run(securePort(), settings({ secureAggregation: { maxWeight: W } }));
  const dropped = await run(
    securePort((r) => (r === 0 ? ['c1', 'c3'] : ['c4'])),
    settings({ secureAggregation: { maxWeight: W } }),
  );
  assert.ok(sameBits(full.end.adapter.tensors, dropped.end.adapter.tensors));
});

test('DP under secure aggregation: clipped_clients and mean_update_norm come from the masked sum (survivors only)', async () => {
  const C = 0.1;
  const norms = new Map<number, number[]>();
  const r = await run(
    securePort(
      (round) => (round === 1 ? ['c2'] : []),
      0.004,
      C,
      (round, ups, adapter) =>
        norms.set(
          round,
          ups.map((u) => globalNorm(updateDelta(u.tensors, adapter.tensors))),
        ),
    ),
    settings({ secureAggregation: { maxWeight: W, account: () => ({ clip: C }) } }),
  );
  const priv = r.events.filter((e) => e.kind === 'privacy');
  assert.equal(priv.length, 2);
  for (const [round, ns] of norms) {
    const e = priv[round]!;
    // Dropped after masking stays in the sum: all 5 clients' stats are in both rounds.
    assert.equal(e['secagg_survivors'], 5);
    const clipped = ns.filter((n) => n > C).length;
    assert.ok(clipped > 0 && clipped < ns.length, `some clients clipped, some not: norms ${ns.join(', ')}`);
    assert.equal(e['clipped_clients'], clipped, `round ${round}`);
    const mean = ns.reduce((a, b) => a + b, 0) / ns.length;
    // Fixed point 2^-24 per client norm: error at most 2^-25 per client.
    assert.ok(
      Math.abs((e['mean_update_norm'] as number) - mean) <= 2 ** -25,
      `${String(e['mean_update_norm'])} vs ${mean}`,
    );
  }
});

test('the aggregate is screened: a mean that breaks maxUpdateNorm is refused and the adapter kept', async () => {
  const r = await run(
    securePort(() => [], 0.5),
    settings({ rounds: 1, secureAggregation: { maxWeight: W }, maxUpdateNorm: 1 }),
  );
  assert.ok(sameBits(r.end.adapter.tensors, start.tensors));
  const rej = r.events.find((e) => e.kind === 'rejected');
  assert.equal(rej?.['client'], 'aggregate');
  assert.match(String(r.events.find((e) => e.kind === 'privacy')?.['skipped']), /failed screening/);
});

test('secureRoundAdapter refuses a sum of the wrong length and keeps the adapter at weight sum 0', () => {
  assert.throws(
    () => secureRoundAdapter(start, { sum: new Float32Array(3), weightSum: 1 }, W),
    /3 elements, the adapter 160/,
  );
  assert.equal(secureRoundAdapter(start, { sum: new Float32Array(160), weightSum: 0 }, W), start);
});
