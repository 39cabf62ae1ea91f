import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { Objm } from '@nats-io/obj';
import { BlobStore } from '../src/blob-store.js';
import { BlobNotFoundError, IntegrityError } from '../src/errors.js';
import { BlobRefSchema } from '../src/messages.js';
import { blobBucketName } from '../src/subjects.js';
import { deleteJobResources } from '../src/connection.js';
import { connectOrFail, uniqueJobId } from './support/nats.js';

let nc: NatsConnection;
let cacheRoot: string;
const jobId = uniqueJobId('blob');
const bucket = blobBucketName(jobId);

before(async () => {
  nc = await connectOrFail();
  cacheRoot = await mkdtemp(join(tmpdir(), 'h6-blobcache-'));
});
after(async () => {
  if (nc !== undefined) {
    await deleteJobResources(nc, jobId);
    await nc.close();
  }
  if (cacheRoot !== undefined) await rm(cacheRoot, { recursive: true, force: true });
});

test('put returns a content-addressed ref; get returns the same bytes; re-put is a no-op', async () => {
  const store = await BlobStore.open(nc, { bucket, storage: 'memory' });
  // 300 kB spans three 128 KiB object-store chunks.
  const bytes = new Uint8Array(randomBytes(300_000));
  const sha = createHash('sha256').update(bytes).digest('hex');
  const ref = await store.put(bytes, { dtype: 'F32', shape: [75_000] });
  assert.deepEqual(ref, { bucket, name: sha, sha256: sha, bytes: 300_000, dtype: 'F32', shape: [75_000] });
  assert.ok(BlobRefSchema.safeParse(ref).success);
  assert.deepEqual(await store.get(ref), bytes);
  assert.equal(store.stats.bytesUp, 300_000);
  assert.equal(store.stats.bytesDown, 300_000);

  const again = await store.put(bytes.slice());
  assert.equal(again.name, sha);
  assert.equal(store.stats.bytesUp, 300_000, 'second put of the same content uploads nothing');
  assert.equal(store.stats.putsSkipped, 1);
});

test('an object overwritten under the same name fails the sha256 check, naming the blob', async () => {
  const store = await BlobStore.open(nc, { bucket, storage: 'memory' });
  const ref = await store.put(new TextEncoder().encode('adapter lora round 1'));
  const os = await new Objm(nc).open(bucket);
  await os.putBlob({ name: ref.name }, new TextEncoder().encode('adapter lora round X')); // same size, other bytes
  await assert.rejects(store.get(ref), (e: unknown) => {
    assert.ok(e instanceof IntegrityError);
    assert.equal(e.blob, ref.name);
    assert.equal(e.bucket, bucket);
    assert.match(
      e.message,
      new RegExp(`blob ${bucket}/${ref.name}: sha256 is [0-9a-f]{64}, the ref says ${ref.sha256}`),
    );
    return true;
  });
  await os.putBlob({ name: ref.name }, new TextEncoder().encode('short'));
  await assert.rejects(store.get(ref), /size is 5 bytes, the ref says 20/);
  // A re-put heals the object, because the stored digest no longer matches the content.
  await store.put(new TextEncoder().encode('adapter lora round 1'));
  assert.equal(new TextDecoder().decode(await store.get(ref)), 'adapter lora round 1');
});

test('a missing blob is a BlobNotFoundError', async () => {
  const store = await BlobStore.open(nc, { bucket, storage: 'memory' });
  const ref = { bucket, name: 'f'.repeat(64), sha256: 'f'.repeat(64), bytes: 3 };
  await assert.rejects(store.get(ref), (e: unknown) => e instanceof BlobNotFoundError && e.blob === ref.name);
});

test('the sha256 cache serves a second replica without downloading, and drops a corrupt cache file', async () => {
  const cacheDir = join(cacheRoot, 'shared');
  const uploader = await BlobStore.open(nc, { bucket, storage: 'memory' });
  const bytes = new Uint8Array(randomBytes(200_000));
  const ref = await uploader.put(bytes);

  const first = await BlobStore.open(nc, { bucket, cacheDir });
  assert.deepEqual(await first.get(ref), bytes);
  assert.deepEqual(first.stats, {
    bytesUp: 0,
    bytesDown: 200_000,
    puts: 0,
    putsSkipped: 0,
    cacheHits: 0,
    cacheMisses: 1,
    refusedTooLarge: 0,
  });

  const second = await BlobStore.open(nc, { bucket, cacheDir });
  assert.deepEqual(await second.get(ref), bytes);
  assert.equal(second.stats.bytesDown, 0, 'served from cache');
  assert.equal(second.stats.cacheHits, 1);

  await writeFile(join(cacheDir, ref.sha256), new Uint8Array(200_000)); // bit-rot in the cache
  const third = await BlobStore.open(nc, { bucket, cacheDir });
  assert.deepEqual(await third.get(ref), bytes);
  assert.equal(third.stats.bytesDown, 200_000, 'corrupt cache entry re-downloaded');
  assert.equal(third.stats.cacheMisses, 1);
});
