/**
 * Our object-store writer and reader against @nats-io/obj's (the layout the nats CLI also uses): each reads what
 * the other wrote, multi-chunk objects come back intact, and missing or corrupted chunks fail with a named error
 * instead of hanging or returning wrong bytes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Objm, StorageType, type ObjectStore } from '@nats-io/obj';
import {
  MAX_CHUNK_BYTES,
  getObject,
  objectDigest,
  objectStreamName,
  putObject,
  readObjectMeta,
} from '../src/object-store.js';
import { connectOrFail, uniqueJobId } from './support/nats.js';

let nc: NatsConnection;
let js: JetStreamClient;
let jsm: JetStreamManager;
let os: ObjectStore;
const bucket = `os-${uniqueJobId('objstore')}`;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

before(async () => {
  nc = await connectOrFail();
  js = jetstream(nc);
  jsm = await jetstreamManager(nc);
  os = await new Objm(nc).create(bucket, { storage: StorageType.Memory });
});
after(async () => {
  await os?.destroy().catch(() => {});
  await nc?.close();
});

test('an object written here is read by @nats-io/obj (3 chunks of up to 1 MiB), and the other way round', async () => {
  const chunk = Math.min(MAX_CHUNK_BYTES, nc.info!.max_payload);
  const bytes = new Uint8Array(randomBytes(2 * chunk + 12_345));
  const meta = await putObject(nc, js, jsm, bucket, 'ours', bytes, sha(bytes), null);
  assert.equal(meta.chunks, 3);
  assert.equal(meta.size, bytes.length);
  assert.equal(meta.digest, objectDigest(sha(bytes)));
  const info = await os.info('ours');
  assert.equal(info?.digest, meta.digest, '@nats-io/obj sees our digest');
  assert.deepEqual(
    new Uint8Array((await os.getBlob('ours'))!),
    bytes,
    '@nats-io/obj reads our object (and checks its digest)',
  );

  const theirs = new Uint8Array(randomBytes(300_000));
  await os.putBlob({ name: 'theirs' }, theirs);
  const theirMeta = await readObjectMeta(jsm, bucket, 'theirs');
  assert.ok(theirMeta);
  assert.equal(theirMeta.chunks, 3, "@nats-io/obj's 128 KiB chunks");
  assert.deepEqual(await getObject(js, jsm, theirMeta), theirs);
  assert.equal(await readObjectMeta(jsm, bucket, 'never-written'), null);
});

test('overwriting a name keeps only the new chunks; an empty object round-trips', async () => {
  const first = new Uint8Array(randomBytes(200_000));
  const m1 = await putObject(nc, js, jsm, bucket, 'rewritten', first, sha(first), null);
  const second = new Uint8Array(randomBytes(50_000));
  const m2 = await putObject(nc, js, jsm, bucket, 'rewritten', second, sha(second), m1);
  assert.deepEqual(await readObjectMeta(jsm, bucket, 'rewritten'), m2);
  assert.deepEqual(await getObject(js, jsm, m2), second);
  const stream = await jsm.streams.info(objectStreamName(bucket), { subjects_filter: `$O.${bucket}.C.${m1.nuid}` });
  assert.equal(stream.state.subjects?.[`$O.${bucket}.C.${m1.nuid}`] ?? 0, 0, 'the old chunks were purged');
  // (a Buffer when it is one chunk: compare as plain bytes)
  assert.deepEqual(new Uint8Array((await os.getBlob('rewritten'))!), second);

  const empty = new Uint8Array(0);
  const m0 = await putObject(nc, js, jsm, bucket, 'empty', empty, sha(empty), null);
  assert.equal(m0.chunks, 0);
  assert.deepEqual(await getObject(js, jsm, m0), empty);
});

test('purged chunks fail (at once for one chunk, within the chunk timeout for several); chunks that do not match the digest are refused', async () => {
  const chunk = Math.min(MAX_CHUNK_BYTES, nc.info!.max_payload);
  for (const [name, size, error] of [
    ['lost', 100_000, /object lost: chunk 1 of 1 is missing/],
    ['lost-big', 2 * chunk + 1, /object lost-big: chunk 1 of 3 did not arrive within 1500 ms/],
  ] as const) {
    const bytes = new Uint8Array(randomBytes(size));
    const meta = await putObject(nc, js, jsm, bucket, name, bytes, sha(bytes), null);
    await jsm.streams.purge(objectStreamName(bucket), { filter: `$O.${bucket}.C.${meta.nuid}` });
    const t0 = performance.now();
    await assert.rejects(getObject(js, jsm, meta, 1500), error);
    assert.ok(performance.now() - t0 < 5000);
  }

  for (const [name, size] of [
    ['forged', 100_000],
    ['forged-big', chunk + 1],
  ] as const) {
    const bytes = new Uint8Array(randomBytes(size));
    // A meta entry whose digest belongs to other bytes: what a corrupted or forged entry looks like.
    const forged = await putObject(nc, js, jsm, bucket, name, bytes, sha(bytes.subarray(1)), null);
    await assert.rejects(getObject(js, jsm, forged), new RegExp(`object ${name}: received a corrupt object`));
    await assert.rejects(os.getBlob(name), /digests do not match/, '@nats-io/obj refuses it too');
  }
});
