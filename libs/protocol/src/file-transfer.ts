/**
 * Files to and from the JetStream Object Store without holding a file in memory (the model owner's emulator
 * package: a Hugging Face checkpoint folder of hundreds of MB to tens of GB). Memory use is bounded by the
 * publish window on the way up (8 chunks of at most 1 MiB) and by two fetch batches on the way down (16 chunks each:
 * one being written while the next arrives).
 *
 * Layout: the object store's own (object-store.ts): chunks on `$O.<bucket>.C.<nuid>`, the JSON meta entry written
 * last on `$O.<bucket>.M.<base64url name>`, its `digest` the whole file's sha256, so @nats-io/obj and the nats CLI
 * read a putFile object like any other.
 *
 * Chunk hashes, so a reader can name the chunk that is wrong and can trust the bytes of an interrupted download
 * without a whole-file digest: putFile publishes the 32-byte sha256 of every chunk, concatenated in chunk order,
 * on one more chunk subject of the object, `$O.<bucket>.C.<nuid>-sha256` (as many messages as max_payload needs;
 * 32 KiB per GiB of file at 1 MiB chunks), and records the sha256 of that list in the meta entry's `metadata`
 * under `fedbiot-chunk-sha256`. Why there and not in the meta entry itself: the list of a 20 GiB file (640 KiB
 * binary, 1.3 MB as hex JSON) would push the meta message past max_payload. Why not a companion object
 * `<name>.chunks`: it would show up in listings, could be overwritten or deleted on its own, and its name could
 * collide with a real object. The list subject is a single token like a nuid, so the per-client permissions of
 * auth.ts (`$O.<bucket>.C.*`) cover it. NATS 2.9 does not interpret meta entries (they are opaque stream messages),
 * so `metadata` is kept by the server; @nats-io/obj (which has the field) keeps it too. What it does not do is
 * purge the list when it deletes or overwrites the object: BlobStore.delete and putObject/putFile do; a list left
 * behind by another tool costs 32 bytes per chunk and is never read (it is found through the nuid of a live meta).
 * Objects written without a list (putObject, @nats-io/obj) are still read by getFile, checked only against the
 * whole digest and downloaded from the start every time.
 *
 * Resume: getFile writes `<dest>.partial` and, after each chunk, `<dest>.partial.json` (the object's nuid and
 * digest, chunks done, the stream sequence after the last chunk written). A later getFile of the same object
 * re-hashes the chunks already on disk against the list (streaming) and continues with an ordered consumer that
 * starts at that sequence; a sidecar for another object version, a partial shorter than it claims, or a chunk on
 * disk that does not match restarts from zero. The data is written before the sidecar, so a killed process never
 * leaves a sidecar that claims more than the file holds. dest appears only by rename after the whole sha256 matched;
 * a dest that already holds the object's bytes (same size, hashed) is kept without a download.
 *
 * Cache (`cacheDir`): `<cacheDir>/<sha256>` (the layout BlobStore's byte cache uses), hard-linked (copied across
 * file systems) to and from dest. A cache file is trusted without re-hashing only when `<sha256>.verified`, written
 * after a full verification (a download that matched, or a hash of the file), still matches its size, mtime and
 * inode: re-hashing tens of GB at every start would cost more than the check is worth, and rewriting the file (or
 * dest, which shares its inode) changes the mtime. `cacheTrust: 'hash'` re-hashes every time instead.
 */
import { createHash, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, link, mkdir, open, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import {
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  type Consumer,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { BlobNotFoundError, IntegrityError } from './errors.js';
import {
  CHUNK_HASHES_KEY,
  MAX_CHUNK_BYTES,
  PublishWindow,
  chunkHashesToken,
  chunkSubject,
  digestSha256Hex,
  extraChunkTokens,
  objectDigest,
  objectStreamName,
  purgeObjectChunks,
  readObjectMeta,
  writeObjectMeta,
  type ObjectMeta,
} from './object-store.js';

/** The three handles every transfer needs (BlobStore holds them; `transferClient` makes them). */
export interface TransferClient {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
}

export async function transferClient(nc: NatsConnection): Promise<TransferClient> {
  return { nc, js: jetstream(nc), jsm: await jetstreamManager(nc) };
}

/** Called after every chunk (and once at the start of a resumed download) with bytes done and the file's size. */
export type TransferProgress = (bytesDone: number, bytesTotal: number) => void;

export interface PutFileOptions {
  readonly signal?: AbortSignal;
  readonly onProgress?: TransferProgress;
  /** Chunk size; capped by the server's max_payload and 1 MiB, which is also the default. */
  readonly chunkSize?: number;
  /** Chunk publishes awaiting their acks at once (default 8). */
  readonly window?: number;
  /** The file's sha256 when the caller has just computed it: saves the skip check its own hashing pass. */
  readonly sha256?: string;
}

export interface PutFileResult {
  readonly meta: ObjectMeta;
  readonly sha256: string;
  readonly size: number;
  /** True when the bucket already held this name with the same size, digest and a chunk-hash list. */
  readonly skipped: boolean;
}

export interface GetFileOptions {
  readonly signal?: AbortSignal;
  readonly onProgress?: TransferProgress;
  /** What the object must be (a BlobRef's sha256 and size): checked against its meta entry before any download. */
  readonly expect?: { readonly sha256: string; readonly bytes: number };
  /** sha256-keyed file cache (see the module comment). */
  readonly cacheDir?: string;
  /** 'marker' (default): trust a cache file whose verified marker still matches; 'hash': re-hash it every time. */
  readonly cacheTrust?: 'marker' | 'hash';
  /** Chunks asked for per pull request, the bound on chunks buffered in memory (default 16). */
  readonly batch?: number;
  /** A chunk that does not arrive within this is reported missing (default 10 s, at least 1 s: nats.js's minimum). */
  readonly chunkTimeoutMs?: number;
}

export interface GetFileResult {
  /** dest, now holding the verified file. */
  readonly path: string;
  readonly sha256: string;
  readonly size: number;
  /** Where the bytes came from: the cache, dest itself (it already held them), or the object store. */
  readonly source: 'cache' | 'dest' | 'download';
  readonly chunks: number;
  /** Chunks received from the server by this call. */
  readonly chunksFetched: number;
  readonly bytesFetched: number;
  /** Chunks taken (after re-verification) from an interrupted earlier download. */
  readonly chunksResumed: number;
}

export type TransferFailure = 'corrupt' | 'missing' | 'chunk-list' | 'digest' | 'size';

/** An object whose chunks, chunk-hash list or digest are wrong or absent; names the object and the chunk (1-based). */
export class TransferError extends Error {
  override readonly name = 'TransferError';
  constructor(
    readonly bucket: string,
    readonly object: string,
    readonly failure: TransferFailure,
    message: string,
    readonly chunk?: number,
    readonly chunks?: number,
  ) {
    super(`object ${bucket}/${object}: ${message}`);
  }
}

const SHA256_BYTES = 32;
const DEFAULT_BATCH = 16;
const DEFAULT_CHUNK_TIMEOUT_MS = 10_000;
const SIDECAR_VERSION = 1;

const timeoutOf = (opts: GetFileOptions): number => Math.max(1000, opts.chunkTimeoutMs ?? DEFAULT_CHUNK_TIMEOUT_MS);
const sha256Of = (bytes: Uint8Array): Buffer => createHash('sha256').update(bytes).digest();

function chunkSizeFor(nc: NatsConnection, wanted: number | undefined): number {
  const cap = Math.min(MAX_CHUNK_BYTES, nc.info?.max_payload ?? MAX_CHUNK_BYTES);
  return Math.max(1, Math.min(cap, wanted ?? cap));
}

/** Reads until `buf` is full or the file ends; returns the bytes read. */
async function readFull(fh: FileHandle, buf: Buffer, position: number): Promise<number> {
  let n = 0;
  while (n < buf.length) {
    const { bytesRead } = await fh.read(buf, n, buf.length - n, position + n);
    if (bytesRead === 0) break;
    n += bytesRead;
  }
  return n;
}

async function writeAll(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let n = 0;
  while (n < bytes.length) n += (await fh.write(bytes, n, bytes.length - n, position + n)).bytesWritten;
}

/** sha256 (hex) of a file, read 1 MiB at a time into one reused buffer. */
export async function hashFile(path: string, signal?: AbortSignal): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(MAX_CHUNK_BYTES);
    for (let pos = 0; ;) {
      signal?.throwIfAborted();
      const n = await readFull(fh, buf, pos);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      pos += n;
    }
    return hash.digest('hex');
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// putFile

/**
 * Uploads the file at `path` as object `name` of `bucket` (which must exist), chunk by chunk, with its chunk-hash
 * list; the meta entry goes last and the replaced object's chunks are purged after it. Nothing is uploaded when
 * the bucket already holds `name` with the same size and sha256 (the file is hashed first in that case only).
 */
export async function putFile(
  c: TransferClient,
  bucket: string,
  name: string,
  path: string,
  opts: PutFileOptions = {},
): Promise<PutFileResult> {
  const existing = await readObjectMeta(c.jsm, bucket, name);
  const { size } = await stat(path);
  if (
    existing !== null &&
    !existing.deleted &&
    existing.size === size &&
    CHUNK_HASHES_KEY in (existing.metadata ?? {})
  ) {
    const sha256 = opts.sha256 ?? (await hashFile(path, opts.signal));
    if (existing.digest === objectDigest(sha256)) {
      opts.onProgress?.(size, size);
      return { meta: existing, sha256, size, skipped: true };
    }
  }
  const { meta, sha256 } = await uploadFile(c, bucket, name, path, size, opts);
  if (existing !== null && !existing.deleted && existing.nuid !== meta.nuid)
    await purgeObjectChunks(c.jsm, bucket, existing.nuid, extraChunkTokens(existing));
  return { meta, sha256, size: meta.size, skipped: false };
}

/** Publishes the chunks, then the chunk-hash list, then the meta entry; purges what it wrote if any step fails. */
async function uploadFile(
  c: TransferClient,
  bucket: string,
  name: string,
  path: string,
  statSize: number,
  opts: PutFileOptions,
): Promise<{ meta: ObjectMeta; sha256: string }> {
  const chunkSize = chunkSizeFor(c.nc, opts.chunkSize);
  const id = nuid.next();
  const subject = chunkSubject(bucket, id);
  const whole = createHash('sha256');
  const chunkHashes: Buffer[] = [];
  const fh = await open(path, 'r');
  try {
    const window = new PublishWindow(c.js, opts.window);
    let size = 0;
    for (;;) {
      opts.signal?.throwIfAborted();
      // A fresh buffer per chunk: nats.js holds on to the payload until its publish is flushed.
      const buf = Buffer.allocUnsafe(chunkSize);
      const n = await readFull(fh, buf, size);
      if (n === 0) break;
      const chunk = buf.subarray(0, n);
      whole.update(chunk);
      chunkHashes.push(sha256Of(chunk));
      await window.publish(subject, chunk);
      size += n;
      opts.onProgress?.(size, Math.max(size, statSize));
      if (n < chunkSize) break; // end of file
    }
    await window.drain();
    const list = Buffer.concat(chunkHashes);
    await publishChunkHashes(c, bucket, id, list);
    const sha256 = whole.digest('hex');
    const meta: ObjectMeta = {
      name,
      bucket,
      nuid: id,
      size,
      chunks: chunkHashes.length,
      digest: objectDigest(sha256),
      mtime: new Date().toISOString(),
      deleted: false,
      options: { max_chunk_size: chunkSize },
      metadata: { [CHUNK_HASHES_KEY]: sha256Of(list).toString('hex') },
    };
    await writeObjectMeta(c.js, meta);
    return { meta, sha256 };
  } catch (e) {
    await purgeObjectChunks(c.jsm, bucket, id, [chunkHashesToken(id)]);
    throw e;
  } finally {
    await fh.close();
  }
}

/** The chunk-hash list, in messages of whole hashes no larger than max_payload. */
async function publishChunkHashes(c: TransferClient, bucket: string, id: string, list: Buffer): Promise<void> {
  const perMessage = SHA256_BYTES * Math.floor((c.nc.info?.max_payload ?? MAX_CHUNK_BYTES) / SHA256_BYTES);
  const subject = chunkSubject(bucket, chunkHashesToken(id));
  const window = new PublishWindow(c.js);
  for (let off = 0; off < list.length; off += perMessage)
    await window.publish(subject, list.subarray(off, off + perMessage));
  await window.drain();
}

// ---------------------------------------------------------------------------------------------------------------
// getFile

/**
 * Downloads object `name` of `bucket` into `dest` (see the module comment for verification, resume and cache).
 * Throws BlobNotFoundError when there is no such object, IntegrityError when it is not what `opts.expect` says,
 * TransferError naming the chunk when a chunk is corrupt or missing, and the signal's reason when aborted; in every
 * case dest is untouched and `<dest>.partial` keeps what was verified, for the next call to resume from.
 */
export async function getFile(
  c: TransferClient,
  bucket: string,
  name: string,
  dest: string,
  opts: GetFileOptions = {},
): Promise<GetFileResult> {
  // A ref's sha256 is enough to serve from the cache or dest: no request at all, the object may even be gone.
  if (opts.expect !== undefined) {
    const local = await fromLocal(opts.expect.sha256, opts.expect.bytes, dest, opts);
    if (local !== null) return local;
  }
  const meta = await readObjectMeta(c.jsm, bucket, name);
  if (meta === null || meta.deleted) throw new BlobNotFoundError(bucket, name);
  const sha256 = digestSha256Hex(meta.digest);
  if (sha256 === null) throw new TransferError(bucket, name, 'digest', `unsupported digest ${meta.digest}`);
  checkExpected(meta, sha256, opts.expect);
  if (opts.expect === undefined) {
    const local = await fromLocal(sha256, meta.size, dest, opts);
    if (local !== null) return local;
  }
  const result = await download(c, meta, sha256, dest, opts);
  if (opts.cacheDir !== undefined) await addToCache(opts.cacheDir, sha256, dest);
  return result;
}

/**
 * The file without a download: from the cache, or dest itself when it already holds these bytes (hashed, so a
 * getFile repeated after a crash of its caller costs a read, not a download). Null when neither has it.
 */
async function fromLocal(
  sha256: string,
  size: number,
  dest: string,
  opts: GetFileOptions,
): Promise<GetFileResult | null> {
  if (opts.cacheDir !== undefined) {
    const hit = await fromCache(opts.cacheDir, sha256, size, dest, opts);
    if (hit !== null) return hit;
  }
  const st = await stat(dest).catch(() => null);
  if (st === null || !st.isFile() || st.size !== size || (await hashFile(dest, opts.signal)) !== sha256) return null;
  if (opts.cacheDir !== undefined) await addToCache(opts.cacheDir, sha256, dest);
  opts.onProgress?.(size, size);
  return { path: dest, sha256, size, source: 'dest', chunks: 0, chunksFetched: 0, bytesFetched: 0, chunksResumed: 0 };
}

function checkExpected(meta: ObjectMeta, sha256: string, expect: GetFileOptions['expect']): void {
  if (expect === undefined) return;
  if (meta.size !== expect.bytes)
    throw new IntegrityError(meta.bucket, meta.name, `size is ${meta.size} bytes, the ref says ${expect.bytes}`);
  if (sha256 !== expect.sha256)
    throw new IntegrityError(meta.bucket, meta.name, `sha256 is ${sha256}, the ref says ${expect.sha256}`);
}

/** Where an interrupted download stands, as the sidecar records it. */
interface Sidecar {
  readonly v: number;
  readonly bucket: string;
  readonly name: string;
  readonly nuid: string;
  readonly digest: string;
  readonly size: number;
  readonly chunkSize: number;
  readonly chunksDone: number;
  /** Stream sequence after the last chunk written: where the next ordered consumer starts. */
  readonly nextSeq: number;
}

/** A download in progress: the open partial file and how far it got. */
interface Progress {
  chunksDone: number;
  bytesDone: number;
  nextSeq: number;
  readonly whole: Hash;
  readonly chunksResumed: number;
}

async function download(
  c: TransferClient,
  meta: ObjectMeta,
  sha256: string,
  dest: string,
  opts: GetFileOptions,
): Promise<GetFileResult> {
  const partial = `${dest}.partial`;
  const sidecar = `${partial}.json`;
  await mkdir(dirname(dest), { recursive: true });
  const hashes = await loadChunkHashes(c, meta, timeoutOf(opts));
  const chunkSize = meta.options?.max_chunk_size ?? 0;
  const resumed = hashes === null ? null : await resumePoint(meta, partial, sidecar, hashes, chunkSize, opts.signal);
  if (resumed === null) await rm(sidecar, { force: true });
  const p: Progress = resumed ?? {
    chunksDone: 0,
    bytesDone: 0,
    nextSeq: 0,
    whole: createHash('sha256'),
    chunksResumed: 0,
  };
  const fh = await open(partial, resumed === null ? 'w' : 'r+');
  const resumedBytes = p.bytesDone;
  let fetched = 0;
  try {
    await fh.truncate(p.bytesDone); // bytes past the last recorded chunk are unverified leftovers
    if (p.chunksDone > 0) opts.onProgress?.(p.bytesDone, meta.size);
    fetched = await receiveChunks(c, meta, hashes, chunkSize, fh, p, sidecar, opts);
    await fh.sync(); // the rename below must not expose a file whose data is still only in the page cache
  } finally {
    await fh.close();
  }
  await finish(meta, sha256, p, partial, sidecar, dest);
  return {
    path: dest,
    sha256,
    size: meta.size,
    source: 'download',
    chunks: meta.chunks,
    chunksFetched: fetched,
    bytesFetched: p.bytesDone - resumedBytes,
    chunksResumed: p.chunksResumed,
  };
}

/** Checks the whole file and moves it into place; a digest mismatch also discards the partial (no resuming it). */
async function finish(
  meta: ObjectMeta,
  sha256: string,
  p: Progress,
  partial: string,
  sidecar: string,
  dest: string,
): Promise<void> {
  const actual = p.whole.digest('hex');
  if (p.bytesDone !== meta.size || actual !== sha256) {
    await rm(partial, { force: true });
    await rm(sidecar, { force: true });
    throw p.bytesDone !== meta.size
      ? new TransferError(
          meta.bucket,
          meta.name,
          'size',
          `got ${p.bytesDone} bytes, its meta entry declares ${meta.size}`,
        )
      : new TransferError(meta.bucket, meta.name, 'digest', `sha256 is ${actual}, its meta entry says ${sha256}`);
  }
  await rename(partial, dest);
  await rm(sidecar, { force: true });
}

/**
 * The object's chunk-hash list (32 bytes per chunk), checked against the sha256 its meta entry records; null for
 * objects written without one.
 */
async function loadChunkHashes(c: TransferClient, meta: ObjectMeta, timeoutMs: number): Promise<Buffer | null> {
  const want = meta.metadata?.[CHUNK_HASHES_KEY];
  if (want === undefined) return null;
  const expected = meta.chunks * SHA256_BYTES;
  if (expected === 0) return Buffer.alloc(0);
  const fail = (why: string): TransferError =>
    new TransferError(meta.bucket, meta.name, 'chunk-list', `its chunk-hash list ${why}`, undefined, meta.chunks);
  const consumer = await c.js.consumers.get(objectStreamName(meta.bucket), {
    // A plain string: an array is the 2.10 filter_subjects form (our image runs 2.9).
    filter_subjects: chunkSubject(meta.bucket, chunkHashesToken(meta.nuid)),
    deliver_policy: DeliverPolicy.All,
  });
  const parts: Uint8Array[] = [];
  let bytes = 0;
  // The list's message count is not recorded: the last one is the one with nothing pending behind it.
  for (let last = false; !last && bytes < expected;) {
    const msgs = await consumer.fetch({ max_messages: 16, expires: timeoutMs });
    let got = 0;
    for await (const m of msgs) {
      parts.push(m.data);
      bytes += m.data.length;
      got++;
      last = m.info.pending === 0;
      if (last) break;
    }
    if (got === 0) throw fail(`is missing (nothing arrived within ${timeoutMs} ms)`);
  }
  const list = Buffer.concat(parts);
  if (list.length !== expected) throw fail(`is ${list.length} bytes, ${meta.chunks} chunks need ${expected}`);
  if (sha256Of(list).toString('hex') !== want) throw fail(`is corrupt (its sha256 is not the one in the meta entry)`);
  return list;
}

async function readSidecar(path: string): Promise<Sidecar | null> {
  try {
    const s = JSON.parse(await readFile(path, 'utf8')) as Sidecar;
    return s.v === SIDECAR_VERSION ? s : null;
  } catch {
    return null; // none, or torn by a kill mid-write: start over
  }
}

/**
 * Where to continue an interrupted download of this very object version, after re-hashing the chunks on disk
 * against the list; null (start over) when there is nothing usable.
 */
async function resumePoint(
  meta: ObjectMeta,
  partial: string,
  sidecarPath: string,
  hashes: Buffer,
  chunkSize: number,
  signal: AbortSignal | undefined,
): Promise<Progress | null> {
  const s = await readSidecar(sidecarPath);
  if (
    s === null ||
    s.bucket !== meta.bucket ||
    s.name !== meta.name ||
    s.nuid !== meta.nuid ||
    s.digest !== meta.digest ||
    s.size !== meta.size ||
    s.chunkSize !== chunkSize ||
    !(s.chunksDone > 0 && s.chunksDone <= meta.chunks)
  )
    return null;
  const bytesDone = Math.min(meta.size, s.chunksDone * chunkSize);
  const onDisk = await stat(partial).catch(() => null);
  if (onDisk === null || onDisk.size < bytesDone) return null;
  const whole = createHash('sha256');
  const fh = await open(partial, 'r');
  try {
    const buf = Buffer.allocUnsafe(chunkSize);
    for (let i = 0; i < s.chunksDone; i++) {
      signal?.throwIfAborted();
      const n = await readFull(fh, buf.subarray(0, Math.min(chunkSize, meta.size - i * chunkSize)), i * chunkSize);
      const chunk = buf.subarray(0, n);
      if (!sha256Of(chunk).equals(hashes.subarray(i * SHA256_BYTES, (i + 1) * SHA256_BYTES))) return null;
      whole.update(chunk);
    }
  } finally {
    await fh.close();
  }
  return { chunksDone: s.chunksDone, bytesDone, nextSeq: s.nextSeq, whole, chunksResumed: s.chunksDone };
}

/**
 * The sidecar, kept open and rewritten in place as one fixed-size record per chunk (a write of a few hundred bytes
 * instead of an open, write and close): trailing spaces pad it, which JSON.parse ignores.
 */
class SidecarWriter {
  static readonly RECORD_BYTES = 1024;
  private constructor(private readonly fh: FileHandle) {}

  static async open(path: string): Promise<SidecarWriter> {
    return new SidecarWriter(await open(path, 'w'));
  }

  async write(record: Sidecar): Promise<void> {
    const text = Buffer.from(JSON.stringify(record).padEnd(SidecarWriter.RECORD_BYTES));
    await writeAll(this.fh, text, 0);
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/**
 * Pulls the chunks not yet on disk and verifies and writes each, in order; returns how many it fetched. Pull
 * requests and disk writes overlap: the next batch is requested while the writer still works through at most one
 * batch, so at most two batches of chunks are in memory.
 */
async function receiveChunks(
  c: TransferClient,
  meta: ObjectMeta,
  hashes: Buffer | null,
  chunkSize: number,
  fh: FileHandle,
  p: Progress,
  sidecarPath: string,
  opts: GetFileOptions,
): Promise<number> {
  if (p.chunksDone >= meta.chunks) return 0;
  const timeoutMs = timeoutOf(opts);
  const batch = Math.max(1, opts.batch ?? DEFAULT_BATCH);
  const consumer = await c.js.consumers.get(objectStreamName(meta.bucket), {
    filter_subjects: chunkSubject(meta.bucket, meta.nuid),
    ...(p.nextSeq > 0
      ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: p.nextSeq }
      : { deliver_policy: DeliverPolicy.All }),
  });
  const check = new ChunkCheck(meta, hashes, chunkSize);
  const sidecar = await SidecarWriter.open(sidecarPath);
  const fixed = { v: SIDECAR_VERSION, bucket: meta.bucket, name: meta.name, nuid: meta.nuid, digest: meta.digest };
  let fetched = 0;
  const writeChunk = async (data: Uint8Array, seq: number, pending: number): Promise<void> => {
    opts.signal?.throwIfAborted();
    check.verify(p.chunksDone, data);
    await writeAll(fh, data, p.bytesDone);
    p.whole.update(data);
    p.chunksDone++;
    p.bytesDone += data.length;
    p.nextSeq = seq + 1;
    fetched++;
    // After the data: a sidecar never claims bytes the file does not hold.
    await sidecar.write({ ...fixed, size: meta.size, chunkSize, chunksDone: p.chunksDone, nextSeq: p.nextSeq });
    opts.onProgress?.(p.bytesDone, meta.size);
    // Chunks are all published before the meta entry, so nothing pending behind this one means the rest is gone.
    if (pending === 0 && p.chunksDone < meta.chunks) throw check.missing(p.chunksDone, 'the stream holds no more');
  };
  const writer = new SerialWriter(writeChunk);
  try {
    for (let requested = p.chunksDone; requested < meta.chunks;) {
      await writer.backlogAtMost(batch); // the memory bound
      if (writer.failed) break;
      const count = Math.min(batch, meta.chunks - requested);
      const got = await receiveBatch(consumer, count, timeoutMs, opts.signal, writer);
      opts.signal?.throwIfAborted();
      if (got === 0 || writer.failed) break;
      requested += got;
    }
    await writer.drain(); // rethrows the first write error
    if (p.chunksDone < meta.chunks) throw check.missing(p.chunksDone, `none arrived within ${timeoutMs} ms`);
  } finally {
    await writer.settled();
    await sidecar.close();
  }
  return fetched;
}

/** Runs `write` for each chunk handed to it, one at a time in arrival order; stops at the first failure. */
class SerialWriter {
  #tail: Promise<void> = Promise.resolve();
  #queued = 0;
  #wake: (() => void)[] = [];
  failed = false;
  /** Called once when a write fails (receiveBatch stops waiting for the server then). */
  onFail: (() => void) | undefined;
  constructor(private readonly write: (data: Uint8Array, seq: number, pending: number) => Promise<void>) {}

  push(data: Uint8Array, seq: number, pending: number): void {
    this.#queued++;
    this.#tail = this.#tail.then(() => this.write(data, seq, pending));
    this.#tail.then(
      () => this.#settle(),
      () => {
        if (!this.failed) this.onFail?.();
        this.failed = true;
        this.#settle();
      },
    );
  }

  #settle(): void {
    this.#queued--;
    for (const wake of this.#wake.splice(0)) wake();
  }

  /** Resolves once at most `n` pushed chunks are still waiting to be written, or one failed. */
  async backlogAtMost(n: number): Promise<void> {
    while (this.#queued > n && !this.failed) await new Promise<void>((r) => this.#wake.push(r));
  }

  /** Resolves when every pushed chunk is written; rejects with the first write error. */
  drain(): Promise<void> {
    return this.#tail;
  }

  /** Waits for the writes in flight without throwing (before the file they write to is closed). */
  async settled(): Promise<void> {
    await this.#tail.catch(() => {});
  }
}

/** One pull request for up to `count` messages, each handed to `writer` in order; returns how many arrived. */
async function receiveBatch(
  consumer: Consumer,
  count: number,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  writer: SerialWriter,
): Promise<number> {
  const msgs = await consumer.fetch({ max_messages: count, expires: timeoutMs });
  // An abort or a failed write ends the wait for the server at once instead of after the timeout.
  const stop = (): void => void msgs.close();
  signal?.addEventListener('abort', stop, { once: true });
  writer.onFail = stop;
  let got = 0;
  try {
    for await (const m of msgs) {
      writer.push(m.data, m.seq, m.info.pending);
      got++;
      if (m.info.pending === 0 || writer.failed) break; // nothing more will come for this request
    }
  } finally {
    writer.onFail = undefined;
    signal?.removeEventListener('abort', stop);
  }
  return got;
}

/** Checks chunk `index` (0-based) against its hash, or its expected length when there is no list. */
class ChunkCheck {
  #byHash: Map<string, number> | undefined;
  constructor(
    private readonly meta: ObjectMeta,
    private readonly hashes: Buffer | null,
    private readonly chunkSize: number,
  ) {}

  verify(index: number, data: Uint8Array): void {
    const { meta, hashes } = this;
    if (hashes === null) {
      const want = Math.min(this.chunkSize, meta.size - index * this.chunkSize);
      if (this.chunkSize > 0 && data.length !== want)
        throw this.#error('corrupt', index, `is corrupt (${data.length} bytes, expected ${want})`);
      return;
    }
    const got = sha256Of(data);
    const want = hashes.subarray(index * SHA256_BYTES, (index + 1) * SHA256_BYTES);
    if (got.equals(want)) return;
    // A later chunk arriving in this one's place means the ones in between were removed from the stream.
    const later = this.#indexOf(got.toString('hex'));
    if (later !== undefined && later > index)
      throw this.missing(
        index,
        later - index === 1
          ? `chunk ${later + 1} came in its place`
          : `and ${later - index - 1} more: chunk ${later + 1} came next`,
      );
    throw this.#error('corrupt', index, `is corrupt (sha256 ${got.toString('hex')}, expected ${want.toString('hex')})`);
  }

  missing(index: number, why: string): TransferError {
    return this.#error('missing', index, `is missing (${why})`);
  }

  #error(failure: TransferFailure, index: number, what: string): TransferError {
    const { meta } = this;
    return new TransferError(
      meta.bucket,
      meta.name,
      failure,
      `chunk ${index + 1} of ${meta.chunks} ${what}`,
      index + 1,
      meta.chunks,
    );
  }

  #indexOf(hex: string): number | undefined {
    if (this.#byHash === undefined) {
      this.#byHash = new Map();
      const hashes = this.hashes!;
      for (let i = hashes.length / SHA256_BYTES - 1; i >= 0; i--)
        this.#byHash.set(hashes.subarray(i * SHA256_BYTES, (i + 1) * SHA256_BYTES).toString('hex'), i);
    }
    return this.#byHash.get(hex);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// cache

interface VerifiedMarker {
  readonly sha256: string;
  readonly size: number;
  readonly mtimeMs: number;
  readonly ino: number;
}

const markerPath = (file: string): string => `${file}.verified`;

/** Serves dest from `<cacheDir>/<sha256>` when that file is verified (see the module comment); null on a miss. */
async function fromCache(
  cacheDir: string,
  sha256: string,
  size: number,
  dest: string,
  opts: GetFileOptions,
): Promise<GetFileResult | null> {
  const file = join(cacheDir, sha256);
  const st = await stat(file).catch(() => null);
  if (st === null) return null;
  if (st.size !== size || !(await cacheFileVerified(file, sha256, opts))) {
    // A torn, rewritten or bit-rotted cache file is dropped and downloaded again rather than trusted.
    await rm(file, { force: true });
    await rm(markerPath(file), { force: true });
    return null;
  }
  await placeFile(file, dest);
  opts.onProgress?.(size, size);
  return { path: dest, sha256, size, source: 'cache', chunks: 0, chunksFetched: 0, bytesFetched: 0, chunksResumed: 0 };
}

async function cacheFileVerified(file: string, sha256: string, opts: GetFileOptions): Promise<boolean> {
  if ((opts.cacheTrust ?? 'marker') === 'marker') {
    const st = await stat(file);
    const m = await readFile(markerPath(file), 'utf8')
      .then((t) => JSON.parse(t) as VerifiedMarker)
      .catch(() => null);
    if (m !== null && m.sha256 === sha256 && m.size === st.size && m.mtimeMs === st.mtimeMs && m.ino === st.ino)
      return true;
  }
  if ((await hashFile(file, opts.signal)) !== sha256) return false;
  await writeMarker(file, sha256);
  return true;
}

/** Records that `file` was verified as it is now; called only after a full hash or a verified download. */
async function writeMarker(file: string, sha256: string): Promise<void> {
  const st = await stat(file);
  const marker: VerifiedMarker = { sha256, size: st.size, mtimeMs: st.mtimeMs, ino: st.ino };
  await writeFile(markerPath(file), JSON.stringify(marker));
}

async function addToCache(cacheDir: string, sha256: string, verified: string): Promise<void> {
  await mkdir(cacheDir, { recursive: true });
  const file = join(cacheDir, sha256);
  await placeFile(verified, file);
  await writeMarker(file, sha256);
}

/**
 * Makes `to` hold `from`'s bytes: a hard link (no copy of tens of GB), or a copy (a clone where the file system
 * can) across file systems; through a temp name and a rename, so `to` is never half there.
 */
async function placeFile(from: string, to: string): Promise<void> {
  if (resolve(from) === resolve(to)) return;
  await mkdir(dirname(to), { recursive: true });
  const tmp = `${to}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    await link(from, tmp);
  } catch {
    await copyFile(from, tmp, constants.COPYFILE_FICLONE);
  }
  await rename(tmp, to).catch(async (e: unknown) => {
    await rm(tmp, { force: true });
    throw e;
  });
}
