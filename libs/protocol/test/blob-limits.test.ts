/**
 * What one client can cost the aggregator through its update bucket: a ref (or an object meta entry) announcing
 * 1 GiB is refused before any chunk is downloaded, a real object above the per-object limit likewise, and the
 * bucket's JetStream max_bytes stops a client from parking more than its budget. Also: pruning objects written
 * before a mark. Runs on a private nats-server (FEDBIOT_TEST_NATS=process or a container) so that its store can
 * be measured.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import { BlobStore, RoundBlobPruner } from '../src/blob-store.js';
import { BlobNotFoundError, BlobTooLargeError } from '../src/errors.js';
import { objectDigest, objectStreamName, writeObjectMeta } from '../src/object-store.js';
import { blobBucketName, updateBucketName } from '../src/subjects.js';
import { usePrivateNats } from './support/nats.js';

let nc: NatsConnection;
const jobId = 'limits';
const GiB = 2 ** 30;

usePrivateNats((c) => (nc = c));

test('a ref or meta entry announcing 1 GiB is refused before any byte is downloaded', async () => {
  const store = await BlobStore.open(nc, { bucket: blobBucketName(jobId), storage: 'memory' });
  const bucket = updateBucketName(jobId, 'mallory');
  await store.ensureBucket(bucket, { maxBytes: 4 << 20, maxObjectBytes: 1 << 20 });
  // The attack of issue 17 without storing 1 GiB: a meta entry that says the object has 1 GiB in 1024 chunks.
  // The bucket's max_bytes does not stop it (the entry itself is small); only the reader's check does.
  const sha = 'ab'.repeat(32);
  const name = 'huge';
  await writeObjectMeta(jetstream(nc), {
    name,
    bucket,
    nuid: nuid.next(),
    size: GiB,
    chunks: 1024,
    digest: objectDigest(sha),
    mtime: new Date().toISOString(),
    deleted: false,
    options: { max_chunk_size: 1 << 20 },
  });
  const rssBefore = process.memoryUsage().rss;
  const honestRef = { bucket, name, sha256: sha, bytes: GiB };
  await assert.rejects(
    store.get(honestRef),
    (e: unknown) =>
      e instanceof BlobTooLargeError &&
      e.source === 'ref' &&
      e.bytes === GiB &&
      /mallory\/huge: its ref declares 1073741824 bytes, more than the 1048576 bytes allowed/.test(e.message),
  );
  // A ref that lies about the size is caught by the meta entry, still before the first chunk.
  await assert.rejects(
    store.get({ ...honestRef, bytes: 1000 }),
    (e: unknown) => e instanceof BlobTooLargeError && e.source === 'object' && e.bytes === GiB,
  );
  assert.equal(store.stats.bytesDown, 0);
  assert.equal(store.stats.refusedTooLarge, 2);
  const grew = (process.memoryUsage().rss - rssBefore) / 2 ** 20;
  console.log(`RSS change over both refusals: ${grew.toFixed(1)} MiB`);
  assert.ok(grew < 64, `RSS grew ${grew} MiB`);
});

test('a real object above the per-object limit is refused; one below it is read', async () => {
  const store = await BlobStore.open(nc, { bucket: blobBucketName(jobId), storage: 'memory' });
  const bucket = updateBucketName(jobId, 'big');
  await store.ensureBucket(bucket);
  const big = await store.put(new Uint8Array(randomBytes(3 << 20)), { bucket });
  const small = await store.put(new Uint8Array(randomBytes(1000)), { bucket });
  const reader = await BlobStore.open(nc, { bucket: blobBucketName(jobId), storage: 'memory' });
  await reader.ensureBucket(bucket, { maxObjectBytes: 1 << 20 });
  await assert.rejects(reader.get(big), BlobTooLargeError);
  // The per-call limit is the smaller of the two.
  await assert.rejects(reader.get(small, { maxBytes: 999 }), BlobTooLargeError);
  assert.equal((await reader.get(small)).length, 1000);
  assert.equal(reader.stats.bytesDown, 1000);
});

test("the client bucket's max_bytes refuses writes beyond the budget, also on a bucket made before the limit", async () => {
  const store = await BlobStore.open(nc, { bucket: blobBucketName(jobId), storage: 'memory' });
  const bucket = updateBucketName(jobId, 'hoarder');
  await store.ensureBucket(bucket);
  const jsm = await jetstreamManager(nc);
  assert.equal((await jsm.streams.info(objectStreamName(bucket))).config.max_bytes, -1);
  // A restarted aggregator with limits applies them to the existing bucket.
  const again = await BlobStore.open(nc, { bucket: blobBucketName(jobId), storage: 'memory' });
  await again.ensureBucket(bucket, { maxBytes: 1 << 20 });
  assert.equal((await jsm.streams.info(objectStreamName(bucket))).config.max_bytes, 1 << 20);
  await store.put(new Uint8Array(randomBytes(600_000)), { bucket });
  await assert.rejects(store.put(new Uint8Array(randomBytes(600_000)), { bucket }), /maximum bytes exceeded/i);
  const state = (await jsm.streams.info(objectStreamName(bucket))).state;
  assert.ok(state.bytes <= 1 << 20, `stream holds ${state.bytes} bytes`);
});

test('prune deletes objects written up to a mark, keeps named ones and later ones, frees the stream', async () => {
  const bucket = blobBucketName('prune');
  const store = await BlobStore.open(nc, { bucket, storage: 'file' });
  const a = await store.put(new Uint8Array(randomBytes(200_000)));
  const b = await store.put(new Uint8Array(randomBytes(200_000)));
  const mark = await store.mark(bucket);
  const c = await store.put(new Uint8Array(randomBytes(200_000)));
  const jsm = await jetstreamManager(nc);
  const bytesBefore = (await jsm.streams.info(objectStreamName(bucket))).state.bytes;
  const r = await store.prune(bucket, mark, new Set([a.name]));
  assert.deepEqual(r, { deleted: 1, bytes: 200_000 });
  await assert.rejects(store.get(b), BlobNotFoundError);
  assert.equal((await store.get(a)).length, 200_000);
  assert.equal((await store.get(c)).length, 200_000);
  const bytesAfter = (await jsm.streams.info(objectStreamName(bucket))).state.bytes;
  assert.ok(bytesBefore - bytesAfter >= 200_000, `stream ${bytesBefore} -> ${bytesAfter} bytes`);
  // Nothing older than the mark is left but the kept one: a second prune is a no-op.
  assert.deepEqual(await store.prune(bucket, mark, new Set([a.name])), { deleted: 0, bytes: 0 });
});

const blob = (): Uint8Array => new Uint8Array(randomBytes(50_000));

test('RoundBlobPruner keeps one round of blobs behind the last checkpoint and the checkpoint refs', async () => {
  const shared = blobBucketName('rounds');
  const client = updateBucketName('rounds', 'c1');
  const store = await BlobStore.open(nc, { bucket: shared, storage: 'memory' });
  await store.ensureBucket(client);
  const pruner = new RoundBlobPruner(store, [shared, client], 1);
  const live = async (r: { bucket: string; name: string; sha256: string; bytes: number }): Promise<boolean> =>
    store.get(r).then(
      () => true,
      (e: unknown) => (e instanceof BlobNotFoundError ? false : Promise.reject(e)),
    );
  // round 0: broadcast, client update, checkpoint LoRA (kept by name ever after)
  const b0 = await store.put(blob());
  const u0 = await store.put(blob(), { bucket: client });
  const ckpt = await store.put(blob());
  assert.deepEqual(await pruner.checkpoint(new Set([ckpt.name])), { deleted: 0, bytes: 0 });
  // round 1
  const b1 = await store.put(blob());
  const u1 = await store.put(blob(), { bucket: client });
  assert.deepEqual(await pruner.checkpoint(new Set([ckpt.name])), { deleted: 2, bytes: 100_000 });
  assert.deepEqual(await Promise.all([b0, u0, ckpt, b1, u1].map(live)), [false, false, true, true, true]);
  // round 2: round 1's blobs go, the checkpoint stays.
  await store.put(blob(), { bucket: client });
  assert.deepEqual(await pruner.checkpoint(new Set([ckpt.name])), { deleted: 2, bytes: 100_000 });
  assert.deepEqual(await Promise.all([ckpt, b1, u1].map(live)), [true, false, false]);
});
