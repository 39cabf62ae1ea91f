/**
 * Content-addressed blobs in the JetStream Object Store. Weights travel here (chunked, so NATS's 1 MB message
 * cap does not apply); messages carry only a BlobRef. Every read is checked against the ref's sha256 and
 * size, and an optional on-disk cache keyed by sha256 means a replica downloads e.g. the base weights once.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Objm, StorageType, type ObjectStore } from '@nats-io/obj';
import { streamExists } from './connection.js';
import {
  extraChunkTokens,
  getObject,
  objectDigest,
  objectStreamName,
  type ObjectMeta,
  purgeObjectChunks,
  putObject,
  readObjectMeta,
} from './object-store.js';
import {
  getFile,
  hashFile,
  putFile,
  type GetFileOptions,
  type GetFileResult,
  type PutFileOptions,
  type TransferClient,
} from './file-transfer.js';
import { BlobNotFoundError, BlobTooLargeError, IntegrityError } from './errors.js';
import type { BlobRef, Dtype } from './messages.js';
import { jetStreamReplicas } from './replicas.js';

export interface BlobStoreOptions {
  /** Object-store bucket that `put` writes to (created if missing). See `blobBucketName(jobId)`. */
  readonly bucket: string;
  /** Directory for the local sha256-keyed cache; no caching when absent. */
  readonly cacheDir?: string;
  /** Server storage of a bucket created here. Default 'file'. */
  readonly storage?: 'file' | 'memory';
  /** JetStream replicas of a bucket this call creates. Default FEDBIOT_JS_REPLICAS, else 1 (replicas.ts). */
  readonly replicas?: number;
}

export interface PutOptions {
  /** Object name; default the sha256 hex, which makes the store content-addressed. */
  readonly name?: string;
  /** Recorded in the ref for single-tensor blobs. */
  readonly dtype?: Dtype;
  readonly shape?: readonly number[];
  /**
   * Bucket to write to instead of the store's own (e.g. a client's `updateBucketName`); opened on first use,
   * not created: with per-identity permissions only a service may create buckets (`ensureBucket`), since
   * creating a stream would let a client choose which subjects it captures.
   */
  readonly bucket?: string;
}

/** `putFile` options: where the object goes (as for `put`) and how the upload runs (see file-transfer.ts). */
export type PutFileBlobOptions = PutOptions & Omit<PutFileOptions, 'sha256'>;

/** `getFile` options; the cache defaults to the store's `cacheDir`, and the ref's sha256 and size are enforced. */
export type GetFileBlobOptions = Omit<GetFileOptions, 'expect'>;

/** Transfer counters since the store was opened (bytes are payload bytes, not NATS framing). */
export interface BlobStats {
  readonly bytesUp: number;
  readonly bytesDown: number;
  readonly puts: number;
  /** `put`s skipped because the store already held the same content under that name. */
  readonly putsSkipped: number;
  readonly cacheHits: number;
  readonly cacheMisses: number;
  /** `get`/`getFile` calls refused by a size limit before any chunk was downloaded. */
  readonly refusedTooLarge: number;
}

/**
 * Limits of one bucket. `maxBytes` is the JetStream stream's max_bytes (the server refuses writes beyond it: the
 * object store discards new messages), which bounds what a client can park in its own update bucket.
 * `maxObjectBytes` is enforced by this store's reads: a ref or meta entry above it is refused before any chunk
 * is fetched, so one client can cost the reader at most that much memory per update.
 */
export interface BucketLimits {
  readonly maxBytes?: number;
  readonly maxObjectBytes?: number;
}

/** What `prune` removed. */
export interface PruneResult {
  readonly deleted: number;
  /** Payload bytes of the deleted objects (their meta entries' sizes). */
  readonly bytes: number;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export class BlobStore {
  readonly #nc: NatsConnection;
  readonly #objm: Objm;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #buckets = new Map<string, Promise<ObjectStore>>();
  readonly #cacheDir: string | undefined;
  readonly #storage: StorageType;
  readonly #replicas: number;
  readonly #client: TransferClient;
  readonly #maxObjectBytes = new Map<string, number>();
  #stats = { bytesUp: 0, bytesDown: 0, puts: 0, putsSkipped: 0, cacheHits: 0, cacheMisses: 0, refusedTooLarge: 0 };

  private constructor(
    nc: NatsConnection,
    objm: Objm,
    jsm: JetStreamManager,
    readonly bucket: string,
    cacheDir: string | undefined,
    storage: StorageType,
    replicas: number,
  ) {
    this.#nc = nc;
    this.#objm = objm;
    this.#js = jetstream(nc);
    this.#jsm = jsm;
    this.#cacheDir = cacheDir;
    this.#storage = storage;
    this.#replicas = replicas;
    this.#client = { nc, js: this.#js, jsm };
  }

  /** Opens (creating if needed) the write bucket; other buckets named in refs are opened on first `get`. */
  static async open(nc: NatsConnection, opts: BlobStoreOptions): Promise<BlobStore> {
    const objm = new Objm(nc);
    const storage = opts.storage === 'memory' ? StorageType.Memory : StorageType.File;
    const store = new BlobStore(
      nc,
      objm,
      await jetstreamManager(nc),
      opts.bucket,
      opts.cacheDir,
      storage,
      jetStreamReplicas(opts.replicas),
    );
    await store.ensureBucket(opts.bucket);
    if (opts.cacheDir !== undefined) await mkdir(opts.cacheDir, { recursive: true });
    return store;
  }

  /**
   * Opens `bucket`, creating it (with the storage given to `open`) when missing. The aggregator calls it for
   * every client's update bucket before tasks go out, so that trainers only ever open theirs.
   */
  async ensureBucket(bucket: string, limits: BucketLimits = {}): Promise<void> {
    if (limits.maxObjectBytes !== undefined) this.limitReads(bucket, limits.maxObjectBytes);
    let os = this.#buckets.get(bucket);
    if (os === undefined) {
      const maxBytes = limits.maxBytes;
      // Open an existing bucket as it is: `create` with other options would fail on a config mismatch.
      os = streamExists(this.#nc, `OBJ_${bucket}`).then((exists) =>
        exists
          ? this.#objm.open(bucket)
          : this.#objm.create(bucket, {
              storage: this.#storage,
              replicas: this.#replicas,
              ...(maxBytes !== undefined ? { max_bytes: maxBytes } : {}),
            }),
      );
      os.catch(() => this.#buckets.delete(bucket));
      this.#buckets.set(bucket, os);
    }
    await os;
    if (limits.maxBytes !== undefined) {
      // A bucket made before the limit existed (or by an older aggregator) gets it now.
      const name = objectStreamName(bucket);
      const info = await this.#jsm.streams.info(name);
      if (info.config.max_bytes !== limits.maxBytes)
        await this.#jsm.streams.update(name, { ...info.config, max_bytes: limits.maxBytes });
    }
  }

  /** Reads (`get`, `getFile`) from `bucket` refuse objects above `maxObjectBytes`, before downloading anything. */
  limitReads(bucket: string, maxObjectBytes: number): void {
    if (!(Number.isSafeInteger(maxObjectBytes) && maxObjectBytes >= 0))
      throw new RangeError(`limitReads ${bucket}: maxObjectBytes ${maxObjectBytes} must be an integer >= 0`);
    this.#maxObjectBytes.set(bucket, maxObjectBytes);
  }

  /** Throws BlobTooLargeError when `bytes` is above the read limit of `bucket` (the smaller of the two given). */
  #checkSize(bucket: string, name: string, bytes: number, source: 'ref' | 'object', maxBytes?: number): void {
    const limits = [this.#maxObjectBytes.get(bucket), maxBytes].filter((x): x is number => x !== undefined);
    if (limits.length === 0) return;
    const limit = Math.min(...limits);
    if (bytes > limit) {
      this.#stats.refusedTooLarge++;
      throw new BlobTooLargeError(bucket, name, bytes, limit, source);
    }
  }

  get stats(): BlobStats {
    return { ...this.#stats };
  }

  #bucketHandle(bucket: string): Promise<ObjectStore> {
    let os = this.#buckets.get(bucket);
    if (os === undefined) {
      os = this.#objm.open(bucket);
      // A failed open must not poison later attempts (the bucket may be created meanwhile).
      os.catch(() => this.#buckets.delete(bucket));
      this.#buckets.set(bucket, os);
    }
    return os;
  }

  /**
   * Uploads `bytes` and returns its ref. When the bucket already holds an object of that name with the
   * same sha256 and size, nothing is uploaded (a re-`put` of known content costs one info request).
   */
  async put(bytes: Uint8Array, opts: PutOptions = {}): Promise<BlobRef> {
    const sha256 = sha256Hex(bytes);
    const name = opts.name ?? sha256;
    const bucket = opts.bucket ?? this.bucket;
    await this.#bucketHandle(bucket);
    const existing = await readObjectMeta(this.#jsm, bucket, name);
    if (
      existing !== null &&
      !existing.deleted &&
      existing.size === bytes.length &&
      existing.digest === objectDigest(sha256)
    ) {
      this.#stats.putsSkipped++;
    } else {
      await putObject(this.#nc, this.#js, this.#jsm, bucket, name, bytes, sha256, existing);
      this.#stats.bytesUp += bytes.length;
      this.#stats.puts++;
    }
    await this.#cacheWrite(sha256, bytes);
    return {
      bucket,
      name,
      sha256,
      bytes: bytes.length,
      ...(opts.dtype === undefined ? {} : { dtype: opts.dtype }),
      ...(opts.shape === undefined ? {} : { shape: [...opts.shape] }),
    };
  }

  /**
   * Returns the blob's bytes, from the cache when it holds a copy with the right sha256, else from the
   * object store. Throws IntegrityError when the downloaded bytes do not match `ref.sha256`/`ref.bytes`
   * (overwritten or corrupted object), BlobNotFoundError when there is no such object.
   */
  async get(ref: Readonly<BlobRef>, opts: { readonly maxBytes?: number } = {}): Promise<Uint8Array> {
    // The ref's own claim first: a ref above the limit is refused without a request or a cache read.
    this.#checkSize(ref.bucket, ref.name, ref.bytes, 'ref', opts.maxBytes);
    const cached = await this.#cacheRead(ref);
    if (cached !== null) {
      this.#stats.cacheHits++;
      return cached;
    }
    this.#stats.cacheMisses++;
    await this.#bucketHandle(ref.bucket);
    const meta = await readObjectMeta(this.#jsm, ref.bucket, ref.name);
    if (meta === null || meta.deleted) throw new BlobNotFoundError(ref.bucket, ref.name);
    // The object's meta entry says how big it really is: refuse before the first chunk (a ref can lie about it).
    this.#checkSize(ref.bucket, ref.name, meta.size, 'object', opts.maxBytes);
    if (meta.size !== ref.bytes)
      throw new IntegrityError(
        ref.bucket,
        ref.name,
        `size is ${meta.size} bytes, the ref says ${ref.bytes}; not downloaded`,
      );
    let bytes: Uint8Array;
    try {
      bytes = await getObject(this.#js, this.#jsm, meta);
    } catch (e) {
      // The chunks are checked against the object's own digest as they arrive; a mismatch there is corruption too.
      throw new IntegrityError(ref.bucket, ref.name, `download failed: ${(e as Error).message}`, { cause: e });
    }
    this.#stats.bytesDown += bytes.length;
    if (bytes.length !== ref.bytes) {
      throw new IntegrityError(ref.bucket, ref.name, `size is ${bytes.length} bytes, the ref says ${ref.bytes}`);
    }
    const actual = sha256Hex(bytes);
    if (actual !== ref.sha256) {
      throw new IntegrityError(ref.bucket, ref.name, `sha256 is ${actual}, the ref says ${ref.sha256}`);
    }
    await this.#cacheWrite(ref.sha256, bytes);
    return bytes;
  }

  /**
   * Uploads the file at `path` without reading it into memory (file-transfer.ts: chunk by chunk, with per-chunk
   * sha256s) and returns its ref. The default name is the file's sha256, which takes a hashing pass before the
   * upload; as with `put`, nothing is uploaded when the bucket already holds that name with the same content.
   * The file is not copied into the cache (it may be tens of GB; `getFile` caches what it downloads).
   */
  async putFile(path: string, opts: PutFileBlobOptions = {}): Promise<BlobRef> {
    const bucket = opts.bucket ?? this.bucket;
    await this.#bucketHandle(bucket);
    const hashed = opts.name === undefined ? await hashFile(path, opts.signal) : undefined;
    const name = opts.name ?? hashed!;
    const r = await putFile(this.#client, bucket, name, path, {
      ...opts,
      ...(hashed === undefined ? {} : { sha256: hashed }),
    });
    if (hashed !== undefined && r.sha256 !== hashed)
      throw new IntegrityError(bucket, name, `${path} changed while it was uploaded (sha256 now ${r.sha256})`);
    if (r.skipped) this.#stats.putsSkipped++;
    else {
      this.#stats.bytesUp += r.size;
      this.#stats.puts++;
    }
    return {
      bucket,
      name,
      sha256: r.sha256,
      bytes: r.size,
      ...(opts.dtype === undefined ? {} : { dtype: opts.dtype }),
      ...(opts.shape === undefined ? {} : { shape: [...opts.shape] }),
    };
  }

  /**
   * Downloads the blob into `destPath`, streaming to disk, resumable, each chunk and the whole checked (see
   * file-transfer.ts), or links it from the store's cache (`opts.cacheDir` overrides it) without a request.
   * Throws BlobNotFoundError, IntegrityError when the object is not what `ref` says, TransferError naming a
   * corrupt or missing chunk.
   */
  async getFile(ref: Readonly<BlobRef>, destPath: string, opts: GetFileBlobOptions = {}): Promise<GetFileResult> {
    this.#checkSize(ref.bucket, ref.name, ref.bytes, 'ref');
    const cacheDir = opts.cacheDir ?? this.#cacheDir;
    const r = await getFile(this.#client, ref.bucket, ref.name, destPath, {
      ...opts,
      ...(cacheDir === undefined ? {} : { cacheDir }),
      expect: { sha256: ref.sha256, bytes: ref.bytes },
    });
    if (cacheDir !== undefined) {
      if (r.source === 'cache') this.#stats.cacheHits++;
      else this.#stats.cacheMisses++;
    }
    this.#stats.bytesDown += r.bytesFetched;
    return r;
  }

  /** Deletes the object named by `ref` from its bucket (the local cache keeps its copy). */
  async delete(ref: Readonly<BlobRef>): Promise<void> {
    const os = await this.#bucketHandle(ref.bucket);
    const meta = await readObjectMeta(this.#jsm, ref.bucket, ref.name);
    await os.delete(ref.name);
    // @nats-io/obj purges the object's chunks only, not the chunk-hash list putFile adds.
    if (meta !== null && !meta.deleted && extraChunkTokens(meta).length > 0)
      await purgeObjectChunks(this.#jsm, ref.bucket, meta.nuid, extraChunkTokens(meta));
  }

  /** The bucket's stream sequence now: objects written later have meta entries above it (see `prune`). */
  async mark(bucket: string): Promise<number> {
    await this.#bucketHandle(bucket);
    return (await this.#jsm.streams.info(objectStreamName(bucket))).state.last_seq;
  }

  /**
   * Deletes every object of `bucket` whose meta entry was written at or before stream sequence `upTo` (a `mark`),
   * except those named in `keep`: chunks, chunk-hash lists and the meta entry itself are purged, so nothing of it
   * stays on the server's disk. Sequences are the server's, so a writer cannot date its objects to escape it.
   */
  async prune(bucket: string, upTo: number, keep: ReadonlySet<string> = new Set()): Promise<PruneResult> {
    await this.#bucketHandle(bucket);
    const stream = objectStreamName(bucket);
    const info = await this.#jsm.streams.info(stream, { subjects_filter: `$O.${bucket}.M.>` });
    let deleted = 0;
    let bytes = 0;
    for (const subject of Object.keys(info.state.subjects ?? {})) {
      const m = await this.#jsm.streams.getMessage(stream, { last_by_subj: subject });
      if (m === null || m.seq > upTo) continue;
      const meta = m.json<ObjectMeta>();
      if (keep.has(meta.name)) continue;
      if (!meta.deleted) {
        await purgeObjectChunks(this.#jsm, bucket, meta.nuid, extraChunkTokens(meta));
        deleted++;
        bytes += meta.size;
      }
      await this.#jsm.streams.purge(stream, { filter: subject });
    }
    return { deleted, bytes };
  }

  async #cacheRead(ref: Readonly<BlobRef>): Promise<Uint8Array | null> {
    if (this.#cacheDir === undefined) return null;
    const path = join(this.#cacheDir, ref.sha256);
    let bytes: Uint8Array;
    try {
      const buf = await readFile(path);
      // A plain Uint8Array, like the network path returns (Buffer's equality and slice semantics differ).
      bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch {
      return null;
    }
    // A torn or bit-rotted cache file is dropped and re-downloaded rather than trusted.
    if (bytes.length === ref.bytes && sha256Hex(bytes) === ref.sha256) return bytes;
    await rm(path, { force: true });
    return null;
  }

  async #cacheWrite(sha256: string, bytes: Uint8Array): Promise<void> {
    if (this.#cacheDir === undefined) return;
    const path = join(this.#cacheDir, sha256);
    // Write-then-rename: concurrent readers (other replicas sharing the dir) never see a partial file.
    const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    try {
      await writeFile(tmp, bytes);
      await rename(tmp, path);
    } catch (e) {
      await rm(tmp, { force: true });
      const code = (e as NodeJS.ErrnoException).code;
      // Node's ENOSPC from a write names no file; say which cache and which setting chose it.
      if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EACCES' || code === 'EPERM' || code === 'EROFS')
        throw new Error(
          `blob cache ${path}: ${code} (${(e as Error).message}); the folder is this BlobStore's cacheDir ` +
            `${this.#cacheDir}: free space there or give the store a writable cacheDir`,
          { cause: e },
        );
      throw e;
    }
  }
}

/**
 * Deletes a job's per-round blobs once no resume can need them: call `checkpoint` right after a round's state is
 * durable. It takes a mark of every bucket and prunes each up to its mark from `keepRounds` checkpoints earlier,
 * keeping the objects named in `keep` (the blobs the stored state refers to: a re-`put` of known content does not
 * rewrite it, so the current checkpoint's LoRA may be an old object). keepRounds >= 1 keeps what the round after
 * a checkpoint reads (its broadcast, a stored alignment answer) until the next checkpoint. A restarted aggregator
 * starts with no marks and catches up `keepRounds` checkpoints later: the marks it takes then cover everything
 * written before the restart.
 */
export class RoundBlobPruner {
  readonly #marks: Map<string, number>[] = [];

  constructor(
    private readonly store: BlobStore,
    private readonly buckets: readonly string[],
    readonly keepRounds: number,
  ) {
    if (!(Number.isInteger(keepRounds) && keepRounds >= 0))
      throw new RangeError(`RoundBlobPruner: keepRounds ${keepRounds} must be an integer >= 0`);
  }

  async checkpoint(keep: ReadonlySet<string>): Promise<PruneResult> {
    const marks = new Map<string, number>();
    for (const b of this.buckets) marks.set(b, await this.store.mark(b));
    this.#marks.push(marks);
    let deleted = 0;
    let bytes = 0;
    if (this.#marks.length > this.keepRounds) {
      const old = this.#marks.splice(0, this.#marks.length - this.keepRounds).at(-1)!;
      for (const [bucket, upTo] of old) {
        const r = await this.store.prune(bucket, upTo, keep);
        deleted += r.deleted;
        bytes += r.bytes;
      }
    }
    return { deleted, bytes };
  }
}
