/**
 * Shipping the emulator package over NATS. The model owner's aggregator builds it from the full checkpoint (once
 * per source, split and dtype; kept in the owner's cache), streams each file into the job's package bucket
 * (chunked, per-chunk sha256s, content-addressed names) and records a PackageRef under the KV key `package`.
 * A trainer reads that key, streams each file to disk into its cache (`<cache>/packages/<manifest sha256>/`,
 * resumable after an interruption), checks every file against the manifest, and loads the folder. The full
 * checkpoint never enters NATS; the package holds no dropped layer.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import {
  PACKAGE_KEY,
  PROTOCOL_VERSION,
  PackageRefSchema,
  packageBucketName,
  type BlobRef,
  type BlobStore,
  type PackageRef,
  type StateStore,
} from '../../libs/protocol/src/index.js';
import {
  MANIFEST_FILE,
  buildEmulatorPackage,
  readPackageManifest,
  verifyPackage,
  type PackageDtype,
  type PackageManifest,
  type ModelSplit,
} from '../../libs/fedbiot/src/index.js';

export interface OwnerPackage {
  readonly dir: string;
  readonly manifest: PackageManifest;
  /** The manifest file's blob (the package's identity in tasks and job state). */
  readonly ref: BlobRef;
}

/**
 * Where the owner keeps the package of (job, source, split, dtype): the key hashes the job id (the manifest names
 * it, so two jobs never share a folder: one job rebuilding it while another uploads from it lost files in a test
 * running two jobs at once), the source folder, its weight files' sizes and mtimes, the client layers and the dtype,
 * so an edited checkpoint or another split builds afresh; a restarted aggregator of the same job reuses it.
 */
async function ownerPackageDir(
  cacheRoot: string,
  jobId: string,
  source: string,
  split: ModelSplit,
  dtype: PackageDtype,
): Promise<string> {
  const h = createHash('sha256').update(
    `${jobId}\n${resolve(source)}\n${split.numLayers}:${split.clientLayers.join(',')}:${dtype}\n`,
  );
  for (const f of ['config.json', 'model.safetensors', 'model.safetensors.index.json']) {
    const s = await stat(join(source, f)).catch(() => null);
    if (s) h.update(`${f}:${s.size}:${s.mtimeMs}\n`);
  }
  return join(cacheRoot, 'owner-packages', h.digest('hex').slice(0, 24));
}

/**
 * The model owner's side: builds (or reuses) the emulator package and publishes it; idempotent, so a restarted
 * aggregator re-publishes nothing (same names, same content).
 */
export async function publishEmulatorPackage(
  blobs: BlobStore,
  state: StateStore,
  o: {
    readonly jobId: string;
    readonly source: string;
    readonly split: ModelSplit;
    readonly dtype: PackageDtype;
    readonly cacheRoot: string;
    readonly log?: (msg: string, fields?: Record<string, unknown>) => void;
  },
): Promise<OwnerPackage> {
  const dir = await ownerPackageDir(o.cacheRoot, o.jobId, o.source, o.split, o.dtype);
  let manifest: PackageManifest | null = null;
  if (existsSync(join(dir, MANIFEST_FILE))) {
    manifest = await verifyPackage(dir).catch(() => null); // a damaged cache entry is rebuilt, never shipped
    if (manifest && manifest.jobId !== o.jobId) manifest = null;
  }
  if (manifest === null) {
    o.log?.('building the emulator package', { source: o.source, layers: o.split.clientLayers, dtype: o.dtype });
    await rm(dir, { recursive: true, force: true });
    manifest = await buildEmulatorPackage({
      source: o.source,
      split: o.split,
      jobId: o.jobId,
      out: dir,
      dtype: o.dtype,
    });
  }
  const bucket = packageBucketName(o.jobId);
  await blobs.ensureBucket(bucket);
  const files: PackageRef['files'] = [];
  for (const f of manifest.files) {
    // Named by the sha256 the manifest holds (just verified), which spares putFile a hashing pass of its own; the
    // upload hashes what it sends, and that is compared below.
    const ref = await blobs.putFile(join(dir, f.path), { bucket, name: f.sha256 });
    if (ref.sha256 !== f.sha256)
      throw new Error(`${join(dir, f.path)}: sha256 ${ref.sha256} differs from the package manifest's ${f.sha256}`);
    files.push({ path: f.path, ref });
  }
  const ref = await blobs.putFile(join(dir, MANIFEST_FILE), { bucket });
  await state.put(PACKAGE_KEY, PackageRefSchema, {
    protocolVersion: PROTOCOL_VERSION,
    jobId: o.jobId,
    manifest: ref,
    files,
  });
  const bytes = manifest.files.reduce((s, f) => s + f.bytes, 0);
  o.log?.('emulator package published', {
    bytes,
    files: files.length,
    sha256: ref.sha256,
    dropped: manifest.droppedLayers,
  });
  return { dir, manifest, ref };
}

export interface FetchedPackage {
  readonly dir: string;
  readonly manifest: PackageManifest;
  readonly ref: BlobRef;
  /** Bytes downloaded by this call (0: the cached copy was complete). */
  readonly bytesFetched: number;
}

/**
 * A client's side: waits for the job's PackageRef (polling every `pollMs` until `signal` aborts), then fetches the
 * package into `<cacheRoot>/packages/<manifest sha256>/`, file by file, each streamed to disk and verified, through a
 * per-replica staging folder (files already there and intact are kept: an interrupted fetch resumes). Every file is
 * checked against the manifest before the folder is renamed into place.
 */
export async function fetchEmulatorPackage(
  blobs: BlobStore,
  state: StateStore,
  o: {
    readonly cacheRoot: string;
    readonly signal?: AbortSignal;
    readonly pollMs?: number;
    readonly onProgress?: (done: number, total: number) => void;
    readonly log?: (msg: string, fields?: Record<string, unknown>) => void;
    /** Names this replica's staging folder (stable across its restarts); default host and pid. */
    readonly stagingId?: string;
  },
): Promise<FetchedPackage> {
  let pkg: PackageRef | null = null;
  for (let logged = false; pkg === null;) {
    o.signal?.throwIfAborted();
    try {
      pkg = (await state.get(PACKAGE_KEY, PackageRefSchema))?.value ?? null;
    } catch (e) {
      // A timeout while the broker restarts or the bucket is being created: ask again. A malformed PackageRef
      // is not transient.
      if (!/timeout|no responders|not found/i.test(String((e as Error).message))) throw e;
    }
    if (pkg !== null) break;
    if (!logged) o.log?.('waiting for the model owner to publish the emulator package');
    logged = true;
    await new Promise((r) => setTimeout(r, o.pollMs ?? 1000));
  }
  const dir = join(o.cacheRoot, 'packages', pkg.manifest.sha256);
  if (existsSync(join(dir, MANIFEST_FILE))) {
    const m = await verifyPackage(dir).catch(() => null);
    if (m !== null) return { dir, manifest: m, ref: pkg.manifest, bytesFetched: 0 };
    // Damaged: moved aside (not deleted under a replica that may have it loaded) and fetched again.
    await rename(dir, `${dir}.damaged-${process.pid}-${Date.now()}`).catch(() => {});
  }
  // Replicas sharing a cache (a volume, or several trainers in one process) each download into their own staging
  // folder, stable across restarts of the same replica so that an interrupted fetch resumes; the first complete,
  // verified folder is renamed into place and the others discard theirs.
  const staging = `${dir}.partial-${(o.stagingId ?? `${hostname()}-${process.pid}`).replace(/[^\w.-]/g, '_')}`;
  await mkdir(staging, { recursive: true });
  const total = pkg.files.reduce((s, f) => s + f.ref.bytes, 0);
  let before = 0;
  let fetched = 0;
  for (const f of pkg.files) {
    const r = await blobs.getFile(f.ref, join(staging, f.path), {
      ...(o.signal ? { signal: o.signal } : {}),
      onProgress: (done) => o.onProgress?.(before + done, total),
    });
    fetched += r.bytesFetched;
    before += f.ref.bytes;
  }
  await blobs.getFile(pkg.manifest, join(staging, MANIFEST_FILE));
  // getFile checked every file against its ref's sha256 and size; what is left is that the refs are the files the
  // manifest lists (not hashing a package of many GB a second time).
  const manifest = await readPackageManifest(staging);
  const listed = new Map(pkg.files.map((f) => [f.path, `${f.ref.sha256}:${f.ref.bytes}`]));
  for (const f of manifest.files)
    if (listed.get(f.path) !== `${f.sha256}:${f.bytes}`)
      throw new Error(
        `emulator package ${pkg.manifest.sha256}: ${f.path} in the manifest is not the file the job published`,
      );
  try {
    await rename(staging, dir);
  } catch (e) {
    // Another replica put its verified copy in place first: use that one.
    if (!existsSync(join(dir, MANIFEST_FILE))) throw e;
    await rm(staging, { recursive: true, force: true });
  }
  return { dir, manifest, ref: pkg.manifest, bytesFetched: fetched };
}
