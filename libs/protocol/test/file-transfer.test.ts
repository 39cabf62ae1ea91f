/**
 * Files through the object store without holding them in memory (src/file-transfer.ts), against the real NATS:
 * round trips with exact sha256 (and @nats-io/obj reading what putFile wrote), an interrupted download resuming
 * with only the remaining chunks, corrupt and missing chunks named, the cache answering without a request, and a
 * server with a tiny max_payload (chunk-hash list over several messages).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { DeliverPolicy } from '@nats-io/jetstream';
import { Objm, StorageType, type ObjectStore } from '@nats-io/obj';
import { connectTransport } from '../src/connection.js';
import { BlobStore } from '../src/blob-store.js';
import { BlobNotFoundError, IntegrityError } from '../src/errors.js';
import {
  getFile,
  hashFile,
  putFile,
  transferClient,
  TransferError,
  type TransferClient,
} from '../src/file-transfer.js';
import {
  CHUNK_HASHES_KEY,
  chunkHashesToken,
  chunkSubject,
  objectDigest,
  objectStreamName,
  readObjectMeta,
} from '../src/object-store.js';
import { connectOrFail, NATS_URL, uniqueJobId } from './support/nats.js';
import { hasNatsServer, startPrivateNats } from './support/nats-server.js';

const MiB = 1 << 20;
let nc: NatsConnection;
let c: TransferClient;
let os: ObjectStore;
let dir: string;
const bucket = `ft-${uniqueJobId('files')}`;

before(async () => {
  nc = await connectOrFail();
  c = await transferClient(nc);
  os = await new Objm(nc).create(bucket, { storage: StorageType.Memory });
  dir = await mkdtemp(join(tmpdir(), 'fl-files-'));
});
after(async () => {
  await os?.destroy().catch(() => {});
  await nc?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** A file of `size` random bytes, written 1 MiB at a time; returns its path and sha256. */
async function randomFile(name: string, size: number): Promise<{ path: string; sha256: string }> {
  const path = join(dir, name);
  const fh = await open(path, 'w');
  const hash = createHash('sha256');
  try {
    for (let off = 0; off < size; off += MiB) {
      const part = randomBytes(Math.min(MiB, size - off));
      hash.update(part);
      await fh.write(part);
    }
  } finally {
    await fh.close();
  }
  return { path, sha256: hash.digest('hex') };
}

/** The stream sequences of an object's chunk messages, in order. */
async function chunkSeqs(bucketName: string, id: string): Promise<number[]> {
  const consumer = await c.js.consumers.get(objectStreamName(bucketName), {
    filter_subjects: chunkSubject(bucketName, id),
    deliver_policy: DeliverPolicy.All,
  });
  const seqs: number[] = [];
  for (let last = false; !last;) {
    const msgs = await consumer.fetch({ max_messages: 64, expires: 2000 });
    for await (const m of msgs) {
      seqs.push(m.seq);
      last = m.info.pending === 0;
      if (last) break;
    }
  }
  return seqs;
}

test('a 12 MiB file (13 chunks) round-trips with its exact sha256; @nats-io/obj reads it; a re-put uploads nothing', async () => {
  const src = await randomFile('model.bin', 12 * MiB + 12_345);
  const put = await putFile(c, bucket, 'model.bin', src.path);
  assert.equal(put.skipped, false);
  assert.equal(put.sha256, src.sha256);
  assert.equal(put.meta.chunks, 13);
  assert.equal(put.meta.digest, objectDigest(src.sha256), 'the meta digest is the whole file sha256');
  assert.match(put.meta.metadata?.[CHUNK_HASHES_KEY] ?? '', /^[0-9a-f]{64}$/);

  const dest = join(dir, 'out', 'model.bin');
  const seen: number[] = [];
  const got = await getFile(c, bucket, 'model.bin', dest, { onProgress: (done, total) => seen.push(done, total) });
  assert.equal(got.sha256, src.sha256);
  assert.equal(await hashFile(dest), src.sha256, 'the bytes on disk hash to the source sha256');
  assert.equal((await stat(dest)).size, 12 * MiB + 12_345);
  assert.deepEqual([got.source, got.chunks, got.chunksFetched, got.chunksResumed], ['download', 13, 13, 0]);
  assert.equal(seen.at(-2), 12 * MiB + 12_345, 'progress ends at the full size');
  assert.ok(
    seen.every((v, i) => i % 2 === 1 || i < 2 || v > seen[i - 2]!),
    'progress only grows',
  );
  assert.ok(!existsSync(`${dest}.partial`) && !existsSync(`${dest}.partial.json`), 'no partial or sidecar left');

  const theirs = await os.get('model.bin');
  assert.ok(theirs);
  const hash = createHash('sha256');
  for await (const part of theirs.data) hash.update(part);
  assert.equal(hash.digest('hex'), src.sha256, '@nats-io/obj reads the object and accepts its digest');
  await theirs.error;

  const kept = await getFile(c, bucket, 'model.bin', dest);
  assert.deepEqual([kept.source, kept.chunksFetched], ['dest', 0], 'a dest that already holds the file is kept');

  const again = await putFile(c, bucket, 'model.bin', src.path);
  assert.equal(again.skipped, true);
  assert.deepEqual(again.meta, put.meta, 'the object was left as it was');

  // An object written by @nats-io/obj (no chunk-hash list) is still read, checked against its digest.
  const small = new Uint8Array(randomBytes(300_000));
  await os.putBlob({ name: 'theirs' }, small);
  const theirsDest = join(dir, 'theirs.bin');
  await getFile(c, bucket, 'theirs', theirsDest);
  assert.deepEqual(new Uint8Array(await readFile(theirsDest)), small);

  // The empty file.
  const empty = await randomFile('empty.bin', 0);
  assert.equal((await putFile(c, bucket, 'empty.bin', empty.path)).meta.chunks, 0);
  await getFile(c, bucket, 'empty.bin', join(dir, 'empty.out'));
  assert.equal((await stat(join(dir, 'empty.out'))).size, 0);
  await assert.rejects(getFile(c, bucket, 'never-written', join(dir, 'x')), BlobNotFoundError);
});

test('an interrupted download (abort, then a closed connection) resumes: only the remaining chunks are fetched', async () => {
  const src = await randomFile('resume.bin', 12 * MiB + 7);
  await putFile(c, bucket, 'resume.bin', src.path);
  const dest = join(dir, 'resume.out');

  // 1. Aborted after 5 chunks: dest absent, the partial and its sidecar hold 5 verified chunks.
  const ac = new AbortController();
  let n = 0;
  await assert.rejects(
    getFile(c, bucket, 'resume.bin', dest, { signal: ac.signal, onProgress: () => ++n === 5 && ac.abort() }),
    { name: 'AbortError' },
  );
  assert.ok(!existsSync(dest), 'no half-written dest');
  assert.equal(JSON.parse(await readFile(`${dest}.partial.json`, 'utf8')).chunksDone, 5);

  // 2. A fresh connection, closed after 3 more chunks: the download fails, the partial keeps what arrived.
  const nc2 = await connectTransport(NATS_URL, { timeoutMs: 2000 });
  let m = 0;
  await assert.rejects(
    getFile(await transferClient(nc2), bucket, 'resume.bin', dest, {
      batch: 2, // the next pull request then goes to the closed connection (a batch in hand would still be written)
      onProgress: (done) => done > 5 * MiB && ++m === 3 && void nc2.close(),
    }),
  );
  await nc2.close();
  assert.ok(!existsSync(dest));
  const done = JSON.parse(await readFile(`${dest}.partial.json`, 'utf8')).chunksDone as number;
  assert.ok(done >= 8 && done < 13, `chunks done after the second try: ${done}`);

  // 3. Completes, fetching only the 13 - done missing chunks (and receiving no more bytes than those).
  const nc3 = await connectTransport(NATS_URL, { timeoutMs: 2000 });
  try {
    const got = await getFile(await transferClient(nc3), bucket, 'resume.bin', dest);
    assert.equal(got.chunksResumed, done);
    assert.equal(got.chunksFetched, 13 - done);
    assert.equal(got.bytesFetched, 12 * MiB + 7 - done * MiB);
    const inBytes = nc3.stats().inBytes;
    assert.ok(inBytes < got.bytesFetched + 64 * 1024, `received ${inBytes} bytes for ${got.bytesFetched}`);
  } finally {
    await nc3.close();
  }
  assert.equal(await hashFile(dest), src.sha256);
  assert.ok(!existsSync(`${dest}.partial`) && !existsSync(`${dest}.partial.json`));
});

test('a partial whose bytes do not match its chunk hashes restarts from zero', async () => {
  const src = await randomFile('restart.bin', 6 * MiB);
  await putFile(c, bucket, 'restart.bin', src.path);
  const dest = join(dir, 'restart.out');
  const ac = new AbortController();
  let n = 0;
  await assert.rejects(
    getFile(c, bucket, 'restart.bin', dest, { signal: ac.signal, onProgress: () => ++n === 4 && ac.abort() }),
  );
  const fh = await open(`${dest}.partial`, 'r+');
  await fh.write(Buffer.from([0xff, 0x00, 0xff]), 0, 3, MiB + 100); // flip bytes of chunk 2
  await fh.close();
  const got = await getFile(c, bucket, 'restart.bin', dest);
  assert.deepEqual([got.chunksResumed, got.chunksFetched], [0, 6]);
  assert.equal(await hashFile(dest), src.sha256);
});

test('a chunk republished with other bytes is named as corrupt; no dest is written', async () => {
  const src = await randomFile('corrupt.bin', 6 * MiB);
  const { meta } = await putFile(c, bucket, 'corrupt.bin', src.path);
  // Rewrite chunks 4..6 in their order, chunk 4 with one byte changed: what bit rot or tampering looks like.
  const seqs = await chunkSeqs(bucket, meta.nuid);
  assert.equal(seqs.length, 6);
  const stream = objectStreamName(bucket);
  const originals = await Promise.all(seqs.slice(3).map((seq) => c.jsm.streams.getMessage(stream, { seq })));
  for (const seq of seqs.slice(3)) await c.jsm.streams.deleteMessage(stream, seq);
  for (const [i, m] of originals.entries()) {
    const data = new Uint8Array(m!.data);
    if (i === 0) data[1234] = data[1234]! ^ 1;
    await c.js.publish(chunkSubject(bucket, meta.nuid), data);
  }
  const dest = join(dir, 'corrupt.out');
  await assert.rejects(getFile(c, bucket, 'corrupt.bin', dest), (e: unknown) => {
    assert.ok(e instanceof TransferError);
    assert.equal(e.failure, 'corrupt');
    assert.deepEqual([e.chunk, e.chunks], [4, 6]);
    assert.match(
      e.message,
      new RegExp(
        `^object ${bucket}/corrupt.bin: chunk 4 of 6 is corrupt \\(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\\)$`,
      ),
    );
    return true;
  });
  assert.ok(!existsSync(dest), 'no dest');
  assert.equal(JSON.parse(await readFile(`${dest}.partial.json`, 'utf8')).chunksDone, 3, 'the good prefix is kept');
});

test('a chunk deleted from the stream is named as missing (in the middle at once, at the end at once)', async () => {
  const src = await randomFile('missing.bin', 6 * MiB);
  for (const [name, lost, error] of [
    ['missing-mid', 2, /^object .+\/missing-mid: chunk 3 of 6 is missing \(chunk 4 came in its place\)$/],
    ['missing-end', 5, /^object .+\/missing-end: chunk 6 of 6 is missing \(the stream holds no more\)$/],
  ] as const) {
    const { meta } = await putFile(c, bucket, name, src.path);
    const seqs = await chunkSeqs(bucket, meta.nuid);
    await c.jsm.streams.deleteMessage(objectStreamName(bucket), seqs[lost]!);
    const t0 = performance.now();
    await assert.rejects(getFile(c, bucket, name, join(dir, `${name}.out`)), (e: unknown) => {
      assert.ok(e instanceof TransferError);
      assert.equal(e.failure, 'missing');
      assert.deepEqual([e.chunk, e.chunks], [lost + 1, 6]);
      assert.match(e.message, error);
      return true;
    });
    assert.ok(performance.now() - t0 < 5000, 'named without waiting for the chunk timeout');
    assert.ok(!existsSync(join(dir, `${name}.out`)));
  }
  // A lost chunk-hash list is named too.
  const { meta } = await putFile(c, bucket, 'no-list', src.path);
  await c.jsm.streams.purge(objectStreamName(bucket), { filter: chunkSubject(bucket, chunkHashesToken(meta.nuid)) });
  await assert.rejects(
    getFile(c, bucket, 'no-list', join(dir, 'no-list.out'), { chunkTimeoutMs: 1000 }),
    /object .+\/no-list: its chunk-hash list is missing/,
  );
});

test('BlobStore.putFile/getFile: content-addressed ref; the cache answers without any request; a tampered cache file is downloaded again', async () => {
  const cacheDir = join(dir, 'cache');
  const store = await BlobStore.open(nc, { bucket, cacheDir });
  const src = await randomFile('blob.bin', 3 * MiB + 1);
  const ref = await store.putFile(src.path);
  assert.deepEqual(ref, { bucket, name: src.sha256, sha256: src.sha256, bytes: 3 * MiB + 1 });
  assert.deepEqual((await store.putFile(src.path)).name, src.sha256);
  assert.equal(store.stats.putsSkipped, 1, 'the second putFile uploaded nothing');

  const first = await store.getFile(ref, join(dir, 'blob-1.out'));
  assert.equal(first.source, 'download');
  assert.ok(existsSync(join(cacheDir, `${src.sha256}.verified`)), 'a verified marker after the download');

  // Served from the cache through a connection that then sends and receives nothing at all.
  const nc2 = await connectTransport(NATS_URL, { timeoutMs: 2000 });
  try {
    const store2 = await BlobStore.open(nc2, { bucket, cacheDir });
    const statsBefore = nc2.stats();
    const hit = await store2.getFile(ref, join(dir, 'blob-2.out'));
    const afterStats = nc2.stats();
    assert.deepEqual([hit.source, hit.chunksFetched, hit.bytesFetched], ['cache', 0, 0]);
    assert.deepEqual(
      [afterStats.outMsgs, afterStats.inMsgs],
      [statsBefore.outMsgs, statsBefore.inMsgs],
      'no request was made',
    );
    assert.deepEqual([store2.stats.cacheHits, store2.stats.bytesDown], [1, 0]);
  } finally {
    await nc2.close();
  }
  assert.equal(await hashFile(join(dir, 'blob-2.out')), src.sha256);

  // Same size, one byte changed (and a new mtime): the marker no longer matches, the re-hash fails, it is fetched.
  const cached = join(cacheDir, src.sha256);
  await rm(join(dir, 'blob-1.out')); // hard-linked to the cache file; make the cache file the only copy
  await rm(join(dir, 'blob-2.out'));
  const bytes = await readFile(cached);
  bytes[0] = bytes[0]! ^ 0xff;
  await writeFile(cached, bytes);
  const refetched = await store.getFile(ref, join(dir, 'blob-3.out'));
  assert.equal(refetched.source, 'download');
  assert.equal(await hashFile(join(dir, 'blob-3.out')), src.sha256);
  assert.equal(await hashFile(cached), src.sha256, 'the cache holds the right bytes again');

  // A ref whose sha256 the object does not have is refused before anything is downloaded.
  await assert.rejects(
    store.getFile({ ...ref, sha256: '0'.repeat(64) }, join(dir, 'blob-4.out'), { cacheDir: join(dir, 'other-cache') }),
    (e: unknown) => e instanceof IntegrityError && /sha256 is [0-9a-f]{64}, the ref says 0{64}/.test(e.message),
  );
  assert.ok(!existsSync(join(dir, 'blob-4.out.partial')));

  // delete also purges the chunk-hash list, which @nats-io/obj's delete does not know about.
  const meta = await readObjectMeta(c.jsm, bucket, ref.name);
  await store.delete(ref);
  const info = await c.jsm.streams.info(objectStreamName(bucket), { subjects_filter: `$O.${bucket}.C.>` });
  const left = Object.keys(info.state.subjects ?? {});
  assert.ok(!left.includes(chunkSubject(bucket, meta!.nuid)), 'chunks purged');
  assert.ok(!left.includes(chunkSubject(bucket, chunkHashesToken(meta!.nuid))), 'chunk-hash list purged');
});

test(
  'a server with a 4 KiB max_payload: 4 KiB chunks and a chunk-hash list spread over several messages',
  { skip: !hasNatsServer },
  async () => {
    const server = await startPrivateNats(() => 'max_payload: 4096\n');
    const nc2 = await connectTransport(server.url, { timeoutMs: 5000 });
    try {
      const c2 = await transferClient(nc2);
      const os2 = await new Objm(nc2).create('tiny', { storage: StorageType.File });
      const src = await randomFile('tiny.bin', 1 * MiB + 3);
      const { meta } = await putFile(c2, 'tiny', 'tiny.bin', src.path);
      assert.deepEqual([meta.chunks, meta.options?.max_chunk_size], [257, 4096]);
      const lists = await c2.jsm.streams.info(objectStreamName('tiny'), {
        subjects_filter: chunkSubject('tiny', chunkHashesToken(meta.nuid)),
      });
      assert.equal(Object.values(lists.state.subjects ?? {})[0], 3, '257 hashes of 32 bytes in 4096-byte messages');
      const dest = join(dir, 'tiny.out');
      const got = await getFile(c2, 'tiny', 'tiny.bin', dest, { batch: 64 });
      assert.equal(got.chunksFetched, 257);
      assert.equal(await hashFile(dest), src.sha256);
      await os2.destroy();
    } finally {
      await nc2.close();
      await server.stop();
    }
  },
);
