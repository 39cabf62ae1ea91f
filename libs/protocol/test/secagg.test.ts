/**
 * Secure aggregation through the protocol against a private nats-server with per-identity permissions
 * (FEDBIOT_TEST_NATS=process runs it as a child process): n clients, each connected as its own identity, and the
 * aggregator run the four steps (secagg-flow.ts); one client dies after sending its masked input and is recovered
 * by Shamir shares. The aggregator learns the weighted sum only (a single masked input decodes to noise), and the
 * server denies a client every other client's secagg subject; a message on its own subject claiming another sender
 * is rejected at the boundary.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import {
  SecAggClient,
  decodeSum,
  makeEncoding,
  seededBytes,
  secAggErrorBound,
  SecAggError,
} from '../../privacy/src/index.js';
import { generateJobAuth, type NatsIdentity } from '../src/auth.js';
import { BlobStore } from '../src/blob-store.js';
import { publishMessage } from '../src/publish.js';
import {
  PROTOCOL_VERSION,
  SecAggAdvertiseSchema,
  SecAggKeysSchema,
  SecAggMaskedSchema,
  decodeMessage,
  encodeMessage,
  type SecAggPlan,
} from '../src/messages.js';
import {
  runSecAggAggregator,
  runSecAggClient,
  secAggConfigOf,
  type SecAggAggregatorOptions,
  type SecAggAggregatorResult,
} from '../src/secagg-flow.js';
import {
  blobBucketName,
  updateBucketName,
  parseSecAggClientSubject,
  secAggClientSubject,
  secAggKeysSubject,
  secAggSharesSubject,
  secAggStepPattern,
} from '../src/subjects.js';
import { waitFor } from './support/nats.js';
import { connectAs, type Denial } from './support/identity.js';
import { hasNatsServer, startPrivateNats, NATS_SERVER_BIN, type PrivateNats } from './support/nats-server.js';

const skip = !hasNatsServer && `${NATS_SERVER_BIN} not installed`;
const JOB = 'sajob';
const CLIENTS = ['c0', 'c1', 'c2', 'c3', 'c4'];
const L = 96;

function plan(round: number, threshold: number, vectorLength = L): SecAggPlan {
  return {
    protocolVersion: PROTOCOL_VERSION,
    jobId: JOB,
    round,
    roundId: `${JOB}/${round}/test`,
    clients: CLIENTS,
    threshold,
    vectorLength,
    clipRange: 1,
    maxWeight: 1000,
    graph: { kind: 'complete' },
  };
}

/** Client i's input of n values in [-1, 1), weight 100 + 50 i. */
function input(i: number, n = L): { values: Float32Array; weight: number } {
  const b = seededBytes(`input/${i}`)(4 * n);
  return {
    values: Float32Array.from({ length: n }, (_, k) => b.readUInt32LE(4 * k) / 2 ** 31 - 1),
    weight: 100 + 50 * i,
  };
}

describe('secure aggregation over NATS with per-client identities', { skip }, () => {
  const auth = generateJobAuth({ jobId: JOB, clients: CLIENTS, services: ['aggregator'] });
  const who = (name: string): NatsIdentity => auth.identities.find((i) => i.name === name)!;
  let server: PrivateNats;
  let agg: { nc: NatsConnection; denials: Denial[] };
  const clients = new Map<string, { nc: NatsConnection; denials: Denial[] }>();

  before(async () => {
    server = await startPrivateNats(() => auth.config);
    agg = await connectAs(server, who('service-aggregator'));
    for (const c of CLIENTS) clients.set(c, await connectAs(server, who(`client-${c}`)));
  });
  after(async () => {
    for (const c of clients.values()) await c.nc.close();
    await agg?.nc.close();
    await server?.stop();
  });

  /**
   * The aggregator's side of the exchange `p` (more options in `more`), every rejection it reports in `rejected`;
   * returns once it has had time to subscribe (it flushes before collecting), before any client sends.
   */
  async function startAggregation(
    p: SecAggPlan,
    stepTimeoutMs: number,
    more: Partial<SecAggAggregatorOptions> = {},
  ): Promise<{ aggregation: Promise<SecAggAggregatorResult>; rejected: string[] }> {
    const rejected: string[] = [];
    const aggregation = runSecAggAggregator({
      nc: agg.nc,
      plan: p,
      stepTimeoutMs,
      onRejected: (s, r) => rejected.push(`${s}: ${r}`),
      ...more,
    });
    aggregation.catch(() => {}); // awaited by the test; a failure before then is not an unhandled rejection
    await new Promise((r) => setTimeout(r, 100));
    return { aggregation, rejected };
  }

  /**
   * Every client's side of the exchange `p` (client i sends input(i), or `inputs[i]`; `more(c)` adds options), the
   * clients in `dieAfterMasking` stopping once they sent their masked input. Resolves with each client's outcome.
   */
  const runClients = (
    p: SecAggPlan,
    o: {
      dieAfterMasking: readonly string[];
      stepTimeoutMs?: number;
      inputs?: readonly { values: Float32Array; weight: number }[];
      more?: (c: string) => Partial<Parameters<typeof runSecAggClient>[0]>;
    },
  ): Promise<Awaited<ReturnType<typeof runSecAggClient>>[]> =>
    Promise.all(
      CLIENTS.map((c, i) =>
        runSecAggClient({
          nc: clients.get(c)!.nc,
          plan: p,
          clientId: c,
          input: o.inputs?.[i] ?? input(i),
          stepTimeoutMs: o.stepTimeoutMs ?? 10_000,
          ...o.more?.(c),
          ...(o.dieAfterMasking.includes(c) ? { stopAfter: 'masked' as const } : {}),
        }),
      ),
    );

  test('n clients run the four steps; one dies after masking and is recovered; the aggregator learns only the sum', async () => {
    const p = plan(1, 3);
    // What the aggregator's identity receives on the masked subjects, raw (the spy is the aggregator itself).
    const masked: Msg[] = [];
    agg.nc.subscribe(secAggStepPattern(JOB, 1, 'masked'), {
      callback: (_e, m) => {
        masked.push(m);
      },
    });
    await agg.nc.flush();
    const { aggregation, rejected } = await startAggregation(p, 3000);
    // c0 forges a masked input of c1's on its own subject: NATS lets it through, the envelope check rejects it.
    const c0 = clients.get('c0')!;
    const forged = encodeMessage(
      SecAggMaskedSchema,
      {
        protocolVersion: PROTOCOL_VERSION,
        jobId: JOB,
        round: 1,
        clientId: 'c0',
        body: { type: 'secagg.masked', roundId: p.roundId, sender: 'c0', masked: 'AAAA' },
      },
      'test',
    );
    const asC1 = JSON.parse(new TextDecoder().decode(forged)) as { body: { sender: string } };
    asC1.body.sender = 'c1';
    c0.nc.publish(secAggClientSubject(JOB, 1, 'masked', 'c0'), JSON.stringify(asC1));
    // ... and on c1's subject: the server denies the publish.
    c0.nc.publish(secAggClientSubject(JOB, 1, 'masked', 'c1'), JSON.stringify(asC1));
    const done = await runClients(p, { dieAfterMasking: ['c3'] });
    assert.deepEqual(
      done.map((d) => d.completed),
      ['unmask', 'unmask', 'unmask', 'masked', 'unmask'],
    );
    const r = await aggregation;
    assert.deepEqual([...r.survivors].toSorted(), CLIENTS, 'c3 dropped after masking and is still in the sum');
    assert.deepEqual(r.dropped, []);
    // The sum equals the plaintext weighted sum within the stated quantisation bound.
    const bound = secAggErrorBound(secAggConfigOf(p));
    assert.ok(bound < 1e-9);
    let weightSum = 0;
    const want = new Float64Array(L);
    CLIENTS.forEach((_, i) => {
      const x = input(i);
      weightSum += x.weight;
      x.values.forEach((v, k) => (want[k]! += x.weight * v));
    });
    assert.equal(r.weightSum, weightSum);
    for (let k = 0; k < L; k++) {
      // float32 result: add its rounding to the quantisation bound.
      assert.ok(Math.abs(r.sum[k]! - want[k]!) <= bound + Math.abs(want[k]!) * 2 ** -23, `element ${k}`);
    }
    // The forgery on c0's own subject was rejected at the boundary, naming the field.
    assert.ok(
      rejected.some((x) => /secagg\.masked\.c0: .*body\.sender.*not the client of the message/.test(x)),
      rejected.join('\n'),
    );
    // The publish on c1's subject was denied by the server and never reached the aggregator.
    await waitFor('the publish denial', () => c0.denials.some((d) => d.operation === 'publish'));
    assert.deepEqual(c0.denials, [{ operation: 'publish', subject: `fl.${JOB}.round.1.secagg.masked.c1` }]);
    const fromSubject = masked.map((m) => parseSecAggClientSubject(m.subject)!.clientId);
    assert.equal(fromSubject.filter((c) => c === 'c1').length, 1, 'only c1 itself published on its subject');
    // A single masked input the aggregator saw decodes to noise, not to that client's weighted input.
    const enc = makeEncoding({ clipRange: 1, maxClients: CLIENTS.length, maxWeight: 1000 });
    for (const m of masked) {
      const d = decodeMessage(SecAggMaskedSchema, m.data, m.subject);
      if (!d.ok || d.value.body.sender !== d.value.clientId || !('masked' in d.value.body)) continue;
      const bytes = Buffer.from(d.value.body.masked, 'base64');
      if (bytes.length !== 8 * (L + 1)) continue;
      const words = new Uint32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
      const single = decodeSum(enc, words);
      const i = CLIENTS.indexOf(d.value.clientId);
      const x = input(i);
      assert.notEqual(single.weightSum, x.weight, `the weight of ${d.value.clientId} is masked`);
      const close = x.values.filter((v, k) => Math.abs(single.sum[k]! - x.weight * v) < 1).length;
      assert.ok(close < 3, `masked input of ${d.value.clientId} resembles its input (${close} elements)`);
    }
  });

  test("a client identity cannot read another client's shares or any client's secagg uploads", async () => {
    const c0 = clients.get('c0')!;
    for (const subject of [
      secAggSharesSubject(JOB, 2, 'c1'),
      `fl.${JOB}.round.*.secagg.shares.*`,
      secAggStepPattern(JOB, 2, 'masked'),
      secAggClientSubject(JOB, 2, 'share-keys', 'c2'),
      secAggClientSubject(JOB, 2, 'unmask', 'c0'),
    ]) {
      const err = await new Promise<Error>((resolve) => {
        c0.nc.subscribe(subject, {
          callback: (e) => {
            if (e) resolve(e);
          },
        });
      });
      assert.equal(err.name, 'PermissionViolationError', subject);
      assert.equal((err as Error & { operation: string }).operation, 'subscription', subject);
    }
    for (const step of ['advertise', 'share-keys', 'unmask'] as const) {
      c0.nc.publish(secAggClientSubject(JOB, 2, step, 'c4'), '{}');
      await waitFor(`the ${step} denial`, () =>
        c0.denials.some((d) => d.subject === `fl.${JOB}.round.2.secagg.${step}.c4`),
      );
    }
  });

  test("a masked input over max_payload (2 MiB, two 7B layers of r 8 q/v LoRA) travels as a blob in the sender's bucket", async () => {
    const n = 2 * 4 * 4096 * 8; // per layer: q and v, A (8 x 4096) and B (4096 x 8)
    const p = plan(4, 3, n);
    const bytes = 8 * (n + 1);
    assert.ok(bytes > agg.nc.info!.max_payload, `${bytes} bytes exceed max_payload ${agg.nc.info!.max_payload}`);
    const aggBlobs = await BlobStore.open(agg.nc, { bucket: blobBucketName(JOB), storage: 'memory' });
    for (const c of CLIENTS) await aggBlobs.ensureBucket(updateBucketName(JOB, c));
    const stores = new Map<string, BlobStore>();
    for (const c of CLIENTS)
      stores.set(c, await BlobStore.open(clients.get(c)!.nc, { bucket: updateBucketName(JOB, c) }));
    const masked: Msg[] = [];
    agg.nc.subscribe(secAggStepPattern(JOB, 4, 'masked'), { callback: (_e, m) => void masked.push(m) });
    await agg.nc.flush();
    const { aggregation, rejected } = await startAggregation(p, 30_000, {
      blobs: { store: aggBlobs, bucketOf: (c) => updateBucketName(JOB, c) },
    });
    // c0 points its masked ref at c1's bucket (c1's blob could be passed off as c0's): refused, never downloaded.
    const c0 = clients.get('c0')!;
    const foreign = await aggBlobs.put(new Uint8Array(bytes), { bucket: updateBucketName(JOB, 'c1') });
    c0.nc.publish(
      secAggClientSubject(JOB, 4, 'masked', 'c0'),
      encodeMessage(
        SecAggMaskedSchema,
        {
          protocolVersion: PROTOCOL_VERSION,
          jobId: JOB,
          round: 4,
          clientId: 'c0',
          body: { type: 'secagg.masked-ref', roundId: p.roundId, sender: 'c0', maskedRef: foreign },
        },
        'test',
      ),
    );
    const inputs = CLIENTS.map((_, i) => input(i, n));
    const done = await runClients(p, {
      dieAfterMasking: ['c2'],
      stepTimeoutMs: 30_000,
      inputs,
      more: (c) => ({ blobs: { store: stores.get(c)!, bucket: updateBucketName(JOB, c) } }),
    });
    assert.deepEqual(
      done.map((d) => d.completed),
      ['unmask', 'unmask', 'masked', 'unmask', 'unmask'],
    );
    const r = await aggregation;
    assert.deepEqual([...r.survivors].toSorted(), CLIENTS);
    assert.ok(
      rejected.some((x) => /secagg\.masked\.c0: masked input blob in bucket .*c1.*, not the sender's/.test(x)),
      rejected.join('\n'),
    );
    const bound = secAggErrorBound(secAggConfigOf(p));
    let weightSum = 0;
    let worst = 0;
    for (let k = 0; k < n; k++) {
      let want = 0;
      for (const x of inputs) want += x.weight * x.values[k]!;
      worst = Math.max(worst, Math.abs(r.sum[k]! - want) - Math.abs(want) * 2 ** -23);
    }
    for (const x of inputs) weightSum += x.weight;
    assert.equal(r.weightSum, weightSum);
    assert.ok(worst <= bound, `worst error ${worst} > bound ${bound}`);
    // On NATS only refs: every masked message is small.
    assert.equal(masked.length, CLIENTS.length + 1);
    for (const m of masked) assert.ok(m.data.length < 1024, `masked message of ${m.data.length} bytes`);
    console.log(
      `masked input ${bytes} bytes per client via the object store; largest masked message ${Math.max(...masked.map((m) => m.data.length))} bytes`,
    );
  });

  test("another attempt's message (same subjects, other round id) neither answers for its client nor voids its message; an abort stops the aggregator", async () => {
    const p = plan(5, 3);
    const ac = new AbortController();
    const { aggregation, rejected } = await startAggregation(p, 20_000, { signal: ac.signal });
    const c0 = clients.get('c0')!.nc;
    const keys = new Promise<string[]>((resolve) =>
      c0.subscribe(secAggKeysSubject(JOB, 5), {
        max: 1,
        callback: (_e, m) => {
          const d = decodeMessage(SecAggKeysSchema, m.data, m.subject);
          resolve(d.ok ? d.value.body.keys.map((k) => k.id) : []);
        },
      }),
    );
    await c0.flush();
    const advertise = (c: string, roundId: string): void =>
      publishMessage(clients.get(c)!.nc, secAggClientSubject(JOB, 5, 'advertise', c), SecAggAdvertiseSchema, {
        protocolVersion: PROTOCOL_VERSION,
        jobId: JOB,
        round: 5,
        clientId: c,
        body: new SecAggClient(c, { ...secAggConfigOf(p), roundId }).advertise(),
      });
    // c4's valid keys, then a message of an earlier attempt of this round, before anyone else's keys.
    advertise('c4', p.roundId);
    advertise('c4', `${JOB}/5/earlier-attempt`);
    await clients.get('c4')!.nc.flush();
    for (const c of ['c0', 'c1', 'c2', 'c3']) advertise(c, p.roundId);
    assert.deepEqual((await keys).toSorted(), CLIENTS, 'every client, c4 too, is in the keys broadcast');
    assert.ok(
      rejected.some((x) => /advertise\.c4: round id .*earlier-attempt is not this exchange's/.test(x)),
      rejected.join('\n'),
    );
    // Nobody shares keys; an abort ends the wait for them at once instead of after the 20 s step timeout.
    const t0 = Date.now();
    ac.abort(new Error('aggregator stopped'));
    await assert.rejects(aggregation, /aggregator stopped/);
    assert.ok(Date.now() - t0 < 2000, `stopped after ${Date.now() - t0} ms`);
  });

  test('more than n - t clients dying after masking fails the round with a clear error', async () => {
    const p = plan(3, 4); // n = 5, t = 4: one may drop; two die
    const { aggregation } = await startAggregation(p, 1500);
    await runClients(p, { dieAfterMasking: ['c1', 'c2'] });
    await assert.rejects(
      aggregation,
      (e: unknown) =>
        e instanceof SecAggError &&
        /cannot unmask the sum \(3 of 5 survivors answered/.test(e.message) &&
        /self-mask seed of c1: 3 shares available .* 4 needed/.test(e.message),
    );
  });
});
