/**
 * A failed prune (the broker could not answer: a clustered node catching up, a leader election) loses nothing: the
 * next checkpoint prunes up to a later mark, which covers what the failed one missed. That is why the aggregator
 * only logs a failed prune and goes on (the node-loss test once failed a whole job on a prune that timed out while a
 * restarted node caught up). Private nats-server; the failure is injected by making the store's prune throw once,
 * as a timed-out JetStream request does.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { BlobStore, RoundBlobPruner } from '../src/blob-store.js';
import { connectTransport } from '../src/connection.js';
import { BlobNotFoundError } from '../src/errors.js';
import { blobBucketName } from '../src/subjects.js';
import { startPrivateNats, type PrivateNats } from './support/nats-server.js';

let server: PrivateNats;
let nc: NatsConnection;
before(async () => {
  server = await startPrivateNats(() => '');
  nc = await connectTransport(server.url, { timeoutMs: 5000 });
});
after(async () => {
  await nc?.close();
  await server?.stop();
});

test('a prune that times out is retried at the next checkpoint; nothing is left behind', async () => {
  const bucket = blobBucketName('pruner-retry');
  const store = await BlobStore.open(nc, { bucket, storage: 'memory' });
  const pruner = new RoundBlobPruner(store, [bucket], 1);
  const live = (r: Awaited<ReturnType<BlobStore['put']>>): Promise<boolean> =>
    store.get(r).then(
      () => true,
      (e: unknown) => (e instanceof BlobNotFoundError ? false : Promise.reject(e)),
    );
  const b0 = await store.put(randomBytes(1000));
  await pruner.checkpoint(new Set());
  const b1 = await store.put(randomBytes(1000));
  // The second checkpoint would delete b0; its prune fails like a JetStream request during a leader election.
  const realPrune = store.prune.bind(store);
  store.prune = () => Promise.reject(Object.assign(new Error('TIMEOUT'), { code: 'TIMEOUT' }));
  await assert.rejects(pruner.checkpoint(new Set()), /TIMEOUT/);
  store.prune = realPrune;
  assert.equal(await live(b0), true, 'b0 survived the failed prune');
  const b2 = await store.put(randomBytes(1000));
  // The next checkpoint prunes what the failed one should have and what is due now (b1, written before the second
  // checkpoint's mark), exactly as without the failure; b2, written after it, stays until its turn.
  const r = await pruner.checkpoint(new Set());
  assert.equal(r.deleted, 2);
  assert.deepEqual(await Promise.all([b0, b1, b2].map(live)), [false, false, true]);
});
