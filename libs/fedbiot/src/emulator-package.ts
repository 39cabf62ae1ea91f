/**
 * The emulator package: what a data owner receives instead of the full model. The model owner builds it from the
 * full checkpoint and the job's split; it is an ordinary Hugging Face checkpoint folder holding only what a client
 * runs (embeddings, the emulator's kept layers and the adapter layers renumbered 0..k-1, the final norm, the LM head
 * unless tied, config.json with k layers, tokenizer and generation files) plus `emulator_manifest.json`: the job,
 * the split, which source layer each folder layer is, which layers were dropped, the source model's sha256, and
 * the size and sha256 of every other file in the folder.
 *
 * The dropped layers are never read into the package. Clients load it with loadEmulatorPackage, which numbers the
 * layers as the source model does (libs/model layer-ids.ts), so a LoRA trained on the package is a LoRA of the
 * full model and, stored in float32, every number a client computes equals what the full model's emulator variant
 * computes.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { copyFile, readdir, readFile, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { z } from 'zod';
import { float32ArrayTo, writeSafetensors, type SafetensorsWriteTensor } from '../../engine/src/index.js';
import {
  CausalLM,
  configToJson,
  expectedTensorShapes,
  generationConfigFor,
  openCheckpoint,
  parseLayerName,
  type Checkpoint,
  type LoadOptions,
  type ModelConfig,
  writeDirAtomic,
  writeJsonAtomic,
} from '../../model/src/index.js';
import type { ModelSplit } from './split.js';

export const MANIFEST_FILE = 'emulator_manifest.json';
export const PACKAGE_FORMAT = 'fedbiot-emulator-package';

/** Storage dtype of the package's weights: float32 is exact; bfloat16 / float16 halve the bytes. */
export const PACKAGE_DTYPES = ['float32', 'bfloat16', 'float16'] as const;
export type PackageDtype = (typeof PACKAGE_DTYPES)[number];
const SAFETENSORS_DTYPE: Record<PackageDtype, 'F32' | 'BF16' | 'F16'> = {
  float32: 'F32',
  bfloat16: 'BF16',
  float16: 'F16',
};

/** Tokenizer and generation files copied from the source folder when present (transformers' file names). */
const COPIED_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'chat_template.jinja',
  'generation_config.json',
  'tokenizer.model',
  'vocab.json',
  'merges.txt',
  'added_tokens.json',
] as const;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a sha256 in hex');
const fileEntry = z.strictObject({ path: z.string().min(1), bytes: z.int().nonnegative(), sha256: sha256Hex });
export const PackageManifestSchema = z.strictObject({
  format: z.literal(PACKAGE_FORMAT),
  version: z.literal(1),
  jobId: z.string(),
  dtype: z.enum(PACKAGE_DTYPES),
  source: z.strictObject({
    /** sha256 over the source checkpoint's config and weight files (sourceDigest). */
    sha256: sha256Hex,
    numLayers: z.int().positive(),
    modelType: z.string(),
    files: z.array(fileEntry),
  }),
  split: z.strictObject({
    adapterBottom: z.int().nonnegative(),
    adapterTop: z.int().nonnegative(),
    dropRate: z.number().min(0).lt(1),
    teacher: z.strictObject({ start: z.int().nonnegative(), end: z.int().nonnegative() }),
  }),
  /** Folder layer i is source layer layers[i].source. */
  layers: z.array(z.strictObject({ source: z.int().nonnegative(), role: z.enum(['adapter', 'emulator']) })),
  /** Source layers the package does not hold. */
  droppedLayers: z.array(z.int().nonnegative()),
  /** Every file of the folder but the manifest. */
  files: z.array(fileEntry),
});
export type PackageManifest = z.infer<typeof PackageManifestSchema>;

export interface BuildPackageOptions {
  /** The full model's Hugging Face folder (single or sharded safetensors, any float dtype). */
  readonly source: string;
  readonly split: ModelSplit;
  readonly jobId: string;
  /** Folder to write (replaced atomically). */
  readonly out: string;
  /** Default float32. */
  readonly dtype?: PackageDtype;
  /** Largest weight file before the package is sharded (HF index + model-0000i-of-0000n files). Default 4 GiB. */
  readonly maxShardBytes?: number;
  /** fp32 conversions of non-fp32 sources (openCheckpoint's cacheDir). */
  readonly fp32CacheDir?: string;
}

/** sha256 of a file, streamed. */
export async function sha256OfFile(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 22 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function describeFile(dir: string, path: string): Promise<z.infer<typeof fileEntry>> {
  const full = join(dir, path);
  return { path, bytes: (await stat(full)).size, sha256: await sha256OfFile(full) };
}

/** The files that define a checkpoint's weights: config.json, model.safetensors or the index and its shards. */
async function sourceFiles(dir: string): Promise<string[]> {
  const files = ['config.json'];
  if (existsSync(join(dir, 'model.safetensors'))) return [...files, 'model.safetensors'];
  const index = 'model.safetensors.index.json';
  const parsed = JSON.parse(await readFile(join(dir, index), 'utf8')) as { weight_map: Record<string, string> };
  return [...files, index, ...new Set(Object.values(parsed.weight_map))].toSorted();
}

/**
 * The identity of a checkpoint: sha256 over `<file>\t<sha256>\n` of its config and weight files in name order.
 * Tokenizer files are not part of it (they do not change a weight).
 */
export async function sourceDigest(dir: string): Promise<{ sha256: string; files: z.infer<typeof fileEntry>[] }> {
  const files = [];
  for (const f of await sourceFiles(dir)) files.push(await describeFile(dir, f));
  const h = createHash('sha256');
  for (const f of files) h.update(`${f.path}\t${f.sha256}\n`);
  return { sha256: h.digest('hex'), files };
}

/** Source tensor name -> package tensor name, for the tensors a client needs (the others are never read). */
export function packageTensorNames(config: ModelConfig, split: ModelSplit): Map<string, string> {
  const out = new Map<string, string>();
  const position = new Map(split.clientLayers.map((l, i) => [l, i]));
  for (const name of expectedTensorShapes(config).keys()) {
    const parsed = parseLayerName(name);
    if (parsed === null) {
      out.set(name, name);
      continue;
    }
    const i = position.get(parsed.layer);
    if (i !== undefined) out.set(name, `model.layers.${i}.${parsed.rest}`);
  }
  return out;
}

/**
 * Builds the emulator package of `opts.split` from `opts.source` into `opts.out`. Reads one tensor at a time, so
 * memory stays at the largest tensor whatever the model size. Deterministic: the same source, split and dtype give
 * byte-identical files (and so the same sha256s, which lets clients keep their cached copy across jobs).
 */
export async function buildEmulatorPackage(opts: BuildPackageOptions): Promise<PackageManifest> {
  const dtype = opts.dtype ?? 'float32';
  const source = resolve(opts.source);
  const ckpt = await openCheckpoint(source, opts.fp32CacheDir ? { cacheDir: opts.fp32CacheDir } : {});
  const { split } = opts;
  if (split.numLayers !== ckpt.config.numLayers)
    throw new Error(
      `emulator package: the split is for ${split.numLayers} layers, ${source}/config.json has ${ckpt.config.numLayers}`,
    );
  const digest = await sourceDigest(source);
  const config: ModelConfig = { ...ckpt.config, numLayers: split.clientLayers.length, torchDtype: dtype };
  const names = packageTensorNames(ckpt.config, split);
  const shapes = expectedTensorShapes(config);
  const adapterSet = new Set(split.adapterLayers);
  const manifestBase = {
    format: PACKAGE_FORMAT,
    version: 1 as const,
    jobId: opts.jobId,
    dtype,
    source: {
      sha256: digest.sha256,
      numLayers: ckpt.config.numLayers,
      modelType: ckpt.config.modelType,
      files: digest.files,
    },
    split: {
      adapterBottom: split.adapterBottomLayers.length,
      adapterTop: split.adapterTopLayers.length,
      dropRate: split.dropRate,
      teacher: { ...split.teacher },
    },
    layers: split.clientLayers.map((l) => ({
      source: l,
      role: adapterSet.has(l) ? ('adapter' as const) : ('emulator' as const),
    })),
    droppedLayers: Array.from({ length: split.numLayers }, (_, i) => i).filter((l) => !split.clientLayers.includes(l)),
  };
  let manifest: PackageManifest | undefined;
  await writeDirAtomic(opts.out, async (tmp) => {
    await writeWeights(tmp, ckpt, names, shapes, dtype, opts.maxShardBytes ?? 4 * 2 ** 30);
    await writeJsonAtomic(join(tmp, 'config.json'), configToJson(config));
    for (const f of COPIED_FILES) if (existsSync(join(source, f))) await copyFile(join(source, f), join(tmp, f));
    if (!existsSync(join(tmp, 'generation_config.json')))
      await writeJsonAtomic(join(tmp, 'generation_config.json'), generationConfigFor(config));
    const files = [];
    for (const f of (await readdir(tmp)).toSorted()) files.push(await describeFile(tmp, f));
    manifest = PackageManifestSchema.parse({ ...manifestBase, files });
    await writeJsonAtomic(join(tmp, MANIFEST_FILE), manifest);
  });
  return manifest!;
}

/** Writes the package tensors as model.safetensors, or as HF shards plus index when they exceed `maxShardBytes`. */
async function writeWeights(
  dir: string,
  ckpt: Checkpoint,
  names: ReadonlyMap<string, string>,
  shapes: ReadonlyMap<string, readonly number[]>,
  dtype: PackageDtype,
  maxShardBytes: number,
): Promise<void> {
  const st = SAFETENSORS_DTYPE[dtype];
  const elementBytes = dtype === 'float32' ? 4 : 2;
  const shards: Map<string, SafetensorsWriteTensor>[] = [new Map()];
  let shardBytes = 0;
  for (const [src, dst] of names) {
    const shape = shapes.get(dst);
    if (shape === undefined)
      throw new Error(`emulator package: ${dst} (from ${src}) is not a tensor of the package config`);
    const bytes = shape.reduce((a, b) => a * b, 1) * elementBytes;
    if (shardBytes > 0 && shardBytes + bytes > maxShardBytes) {
      shards.push(new Map());
      shardBytes = 0;
    }
    shardBytes += bytes;
    shards.at(-1)!.set(dst, {
      dtype: st,
      shape,
      // Read when written: one tensor in memory at a time.
      data: () => {
        const v = ckpt.readFloat32(src);
        return dtype === 'float32' ? v : float32ArrayTo(st as 'BF16' | 'F16', v);
      },
    });
  }
  if (shards.length === 1) {
    await writeSafetensors(join(dir, 'model.safetensors'), shards[0]!, { format: 'pt' });
    return;
  }
  const n = shards.length;
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const [i, shard] of shards.entries()) {
    const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
    await writeSafetensors(join(dir, file), shard, { format: 'pt' });
    for (const [name, t] of shard) {
      weightMap[name] = file;
      total += t.shape.reduce((a, b) => a * b, 1) * elementBytes;
    }
  }
  await writeJsonAtomic(join(dir, 'model.safetensors.index.json'), {
    metadata: { total_size: total },
    weight_map: Object.fromEntries(Object.entries(weightMap).toSorted(([a], [b]) => (a < b ? -1 : 1))),
  });
}

/** Reads and validates a package's manifest; errors name the file and field. */
export async function readPackageManifest(
  dir: string,
  file: string = join(resolve(dir), MANIFEST_FILE),
): Promise<PackageManifest> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: cannot read the emulator package manifest (${(e as Error).message})`, { cause: e });
  }
  const r = PackageManifestSchema.safeParse(raw);
  if (!r.success)
    throw new Error(
      `${file}: not an emulator package manifest: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
    );
  return r.data;
}

/** True when `dir` holds an emulator package (a manifest file). */
export function isEmulatorPackage(dir: string): boolean {
  return existsSync(join(resolve(dir), MANIFEST_FILE));
}

/** Checks every file the manifest lists (size, then sha256, streamed); throws naming the first that differs. */
export async function verifyPackage(dir: string, manifest?: PackageManifest): Promise<PackageManifest> {
  const m = manifest ?? (await readPackageManifest(dir));
  for (const f of m.files) {
    const path = join(resolve(dir), f.path);
    if (basename(f.path) !== f.path) throw new Error(`${MANIFEST_FILE}: file ${f.path} is not a plain file name`);
    const size = await stat(path).then(
      (s) => s.size,
      () => -1,
    );
    if (size < 0) throw new Error(`${path}: missing from the emulator package`);
    if (size !== f.bytes) throw new Error(`${path}: ${size} bytes, the package manifest says ${f.bytes}`);
    const sha = await sha256OfFile(path);
    if (sha !== f.sha256) throw new Error(`${path}: sha256 ${sha}, the package manifest says ${f.sha256}`);
  }
  return m;
}

/** The source layer number of each layer in the package folder. */
export function packageLayerIds(m: PackageManifest): number[] {
  return m.layers.map((l) => l.source);
}

/**
 * Opens an emulator package as a CausalLM numbered like the source model (`allLayers` = the client layers).
 * `verify` (default true) checks every file's sha256 first.
 */
export async function loadEmulatorPackage(
  dir: string,
  opts: LoadOptions & { readonly verify?: boolean } = {},
): Promise<{ lm: CausalLM; manifest: PackageManifest }> {
  const manifest = opts.verify === false ? await readPackageManifest(dir) : await verifyPackage(dir);
  const { verify: _verify, ...load } = opts;
  const lm = await CausalLM.load(dir, { ...load, layerIds: packageLayerIds(manifest) });
  return { lm, manifest };
}

/** Checks that a package was built for `split` (the client's job spec): same layers, same roles. */
export function checkPackageSplit(m: PackageManifest, split: ModelSplit, source: string): void {
  const want = split.clientLayers.join(',');
  const got = packageLayerIds(m).join(',');
  if (m.source.numLayers !== split.numLayers || want !== got)
    throw new Error(
      `${source}: the emulator package holds source layers [${got}] of ${m.source.numLayers}, the job's split needs [${want}] of ${split.numLayers}`,
    );
}
