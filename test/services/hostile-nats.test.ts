/**
 * issue 17's hostile clients on the distributed path: the real aggregator code (runRounds over natsRoundPorts, with
 * the job's aggregation settings and update-bucket limits) on a private nats-server, against simulated trainers
 * (bench/soak-clients.ts) of which three attack: weights x1e4, tokens 2^53-1, and an update ref to a 1 GiB object.
 * Every attack is rejected in every round with the client and the reason, the 1 GiB object is never downloaded,
 * and the job ends with exactly (bit for bit) the adapter FedAvg of the honest clients gives.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { FAKE_COUNTS, fakeLocal, startFakeTrainer, type Behaviour } from '../../bench/soak-clients.js';
import { fakeJob, fakeRoundSettings, openFakeAggregatorStores } from '../../bench/fake-federation.js';
import { fedAvg, runRounds, resolveJobSpec, sampleClients } from '../../libs/fedbiot/src/index.js';
import { encodeLora } from '../../services/common/lora-blobs.js';
import { natsRoundPorts } from '../../services/common/ports-nats.js';
import { readModelConfig } from '../../libs/model/src/index.js';
import { connectTransport, type Consumption } from '../../libs/protocol/src/index.js';
import { startPrivateNats, type PrivateNats } from '../../libs/protocol/test/support/nats-server.js';
import { repoRoot } from '../support/paths.js';

let server: PrivateNats;
const conns: NatsConnection[] = [];
const connect = async (): Promise<NatsConnection> => {
  const nc = await connectTransport(server.url, { timeoutMs: 5000 });
  conns.push(nc);
  return nc;
};

before(async () => {
  server = await startPrivateNats(() => '');
});
after(async () => {
  for (const c of conns) await c.close().catch(() => {});
  await server?.stop();
});

test('x1e4 weights, tokens 2^53-1 and a 1 GiB update ref are rejected; the job ends with the honest FedAvg', async () => {
  const jobId = 'hostile';
  const rounds = 2;
  const spec = resolveJobSpec(
    { job: { id: jobId, seed: 4, rounds }, aggregation: { deadlineMs: 60_000 } },
    'hostile nats test',
  );
  const cfg = await readModelConfig(join(repoRoot, 'models', 'demo-llama', 'config.json'));
  const { ctx, adapter0, emulator0 } = fakeJob(jobId, spec, cfg);
  const attackers: Record<string, Behaviour> = { c1: 'scaled', c3: 'tokens', c4: 'huge-ref' };
  const clientIds = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5'];

  const nc = await connect();
  const stores = await openFakeAggregatorStores(nc, ctx, clientIds, encodeLora(adapter0).length);
  const { blobs } = stores;
  const trainers: Consumption[] = [];
  for (let i = 0; i < 2; i++)
    trainers.push(await startFakeTrainer(ctx, await connect(), { behaviour: (c) => attackers[c] ?? 'honest' }));
  const blobRejections: { client: string; reason: string }[] = [];
  const checkRejections: { round: number; client: string; check: unknown; reason: unknown }[] = [];
  try {
    const ports = natsRoundPorts(ctx, {
      nc,
      ...stores,
      nextAlignCall: 0,
      onRejected: (client, reason) => blobRejections.push({ client, reason }),
    });
    const final = await runRounds(
      { ...ports, evaluate: async () => [] },
      fakeRoundSettings(ctx, rounds, clientIds),
      { round: 0, adapter: adapter0, emulator: emulator0, preAligned: true },
      {
        onEvent: (e) => {
          if (e.kind === 'rejected')
            checkRejections.push({
              round: e.round,
              client: String(e['client']),
              check: e['check'],
              reason: e['reason'],
            });
        },
        onCheckpoint: async () => {},
      },
    );

    // What the honest clients alone give, round by round, in the planned order (the aggregator's summation order).
    let expected = adapter0;
    for (let r = 0; r < rounds; r++) {
      const honest = sampleClients(clientIds, { count: clientIds.length }, spec.job.seed, r).filter(
        (c) => attackers[c] === undefined,
      );
      expected = {
        spec: expected.spec,
        tensors: fedAvg(
          honest.map((c) => ({ clientId: c, tensors: fakeLocal(expected, r, c).tensors, ...FAKE_COUNTS })),
          { weighting: 'tokens' },
        ),
      };
    }
    for (const [k, v] of expected.tensors)
      assert.deepEqual(Buffer.from(final.adapter.tensors.get(k)!.buffer), Buffer.from(v.buffer), k);

    assert.deepEqual(checkRejections.map((r) => [r.round, r.client, r.check]).toSorted(), [
      [0, 'c1', 'norm'],
      [0, 'c3', 'weight'],
      [1, 'c1', 'norm'],
      [1, 'c3', 'weight'],
    ]);
    assert.deepEqual(
      blobRejections.map((r) => r.client),
      ['c4', 'c4'],
    );
    assert.match(
      blobRejections[0]!.reason,
      /1073741824 bytes, more than the \d+ bytes allowed for this bucket; not downloaded/,
    );
    assert.equal(blobs.stats.refusedTooLarge, 2);
    // Downloads: at most one adapter LoRA per client and round (broadcasts are the aggregator's own puts), nothing
    // of the 1 GiB object.
    assert.ok(blobs.stats.bytesDown <= rounds * clientIds.length * encodeLora(adapter0).length);
  } finally {
    for (const t of trainers) await t.stop();
  }
});
