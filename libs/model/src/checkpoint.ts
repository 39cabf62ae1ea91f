/**
 * Hugging Face checkpoint folders: config.json + model.safetensors (or a sharded model.safetensors.index.json).
 * Opening checks every tensor the config implies, and gives each weight as a byte range of an fp32 safetensors
 * file, which ONNX Runtime memory-maps as external data. F16/BF16 checkpoints are converted once into an fp32
 * cache file, because ORT would otherwise materialize an fp32 copy per session (docs/engine-notes.md §3).
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { onCacheDiskAsync } from './cache-errors.js';
import {
  readSafetensorsHeader,
  readTensorBytesSync,
  SafetensorsError,
  toFloat32,
  writeFileAtomic,
  writeSafetensors,
  type SafetensorsHeader,
  type SafetensorsWriteTensor,
} from '../../engine/src/light.js';
import { configToJson, readModelConfig, type ModelConfig } from './config.js';
import { CheckpointError } from './errors.js';
import {
  ATTENTION_LINEARS,
  MLP_LINEARS,
  linearFeatures,
  linearHasBias,
  moduleName,
  type LinearName,
} from './linears.js';

/** Shape of every tensor a model with this config must have, by HF name, in a stable order. */
export function expectedTensorShapes(cfg: ModelConfig): Map<string, readonly number[]> {
  const d = cfg.hiddenSize;
  const m = new Map<string, readonly number[]>();
  // A block's weights [out, in], then the biases it has [out] (the order checkpoints and initWeights rely on).
  const linears = (layer: number, names: readonly LinearName[]): void => {
    for (const n of names) {
      const [fin, fout] = linearFeatures(cfg, n);
      m.set(`${moduleName(layer, n)}.weight`, [fout, fin]);
    }
    for (const n of names)
      if (linearHasBias(cfg, n)) m.set(`${moduleName(layer, n)}.bias`, [linearFeatures(cfg, n)[1]]);
  };
  m.set('model.embed_tokens.weight', [cfg.vocabSize, d]);
  for (let i = 0; i < cfg.numLayers; i++) {
    m.set(`model.layers.${i}.input_layernorm.weight`, [d]);
    linears(i, ATTENTION_LINEARS);
    m.set(`model.layers.${i}.post_attention_layernorm.weight`, [d]);
    linears(i, MLP_LINEARS);
  }
  m.set('model.norm.weight', [d]);
  if (!cfg.tieWordEmbeddings) m.set('lm_head.weight', [cfg.vocabSize, d]);
  return m;
}

/** Tensors some writers add that carry no information for us (old LLaMA checkpoints saved RoPE buffers). */
function isIgnorable(name: string, cfg: ModelConfig): boolean {
  return (
    /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/.test(name) ||
    (cfg.tieWordEmbeddings && name === 'lm_head.weight')
  );
}

/** A weight's bytes inside an fp32 safetensors file, ready to be an ONNX external-data reference. */
export interface WeightRef {
  /** Absolute path of the .safetensors file. */
  readonly file: string;
  /** Byte offset from the start of the file (8 + N + begin). */
  readonly offset: number;
  /** Byte length (4 * numel). */
  readonly length: number;
  readonly shape: readonly number[];
  readonly dtype: 'float32';
}

export interface Checkpoint {
  /** Absolute path of the checkpoint folder. */
  readonly dir: string;
  readonly config: ModelConfig;
  /** Names of the model's weights (expectedTensorShapes order); excludes lm_head.weight when tied. */
  readonly tensorNames: readonly string[];
  /** Where an fp32 copy of `name` lives (the cache file for F16/BF16 sources). With tied embeddings
   * 'lm_head.weight' resolves to 'model.embed_tokens.weight'. */
  weightRef(name: string): WeightRef;
  /** Reads one weight as float32 (synchronous file read of its byte range). */
  readFloat32(name: string): Float32Array;
  /** Total number of weights (tied embeddings counted once). */
  parameterCount(): number;
}

export interface OpenCheckpointOptions {
  /** Folder for fp32 conversions of F16/BF16 checkpoints. Default `~/.cache/fedbiot/fp32`. */
  readonly cacheDir?: string;
}

interface Located {
  readonly file: string;
  readonly header: SafetensorsHeader;
}

/**
 * Opens a checkpoint folder: reads config.json, finds model.safetensors or model.safetensors.index.json, checks
 * that every expected tensor exists with the shape the config implies (and no unknown tensor is present), and
 * converts F16/BF16 weights once into `<cacheDir>/<sha256 of the source headers>/model.safetensors`.
 * @throws ModelConfigError for config.json problems, CheckpointError naming the file and tensor otherwise.
 */
export async function openCheckpoint(dir: string, options: OpenCheckpointOptions = {}): Promise<Checkpoint> {
  const root = resolve(dir);
  const config = await readModelConfig(join(root, 'config.json'));
  const sources = await locateTensors(root);
  const expected = expectedTensorShapes(config);

  for (const [name, shape] of expected) {
    const loc = sources.get(name);
    if (loc === undefined)
      throw new CheckpointError(root, name, `is missing (config.json implies shape [${shape.join(', ')}])`);
    const e = loc.header.tensors.get(name)!;
    if (!sameShape(e.shape, shape)) {
      throw new CheckpointError(
        loc.file,
        name,
        `has shape [${e.shape.join(', ')}] but config.json implies [${shape.join(', ')}]`,
      );
    }
    if (e.dtype !== 'F32' && e.dtype !== 'F16' && e.dtype !== 'BF16' && e.dtype !== 'F64') {
      throw new CheckpointError(loc.file, name, `has dtype ${e.dtype}, not a float type (F32, F16, BF16, F64)`);
    }
  }
  for (const [name, loc] of sources) {
    if (!expected.has(name) && !isIgnorable(name, config)) {
      throw new CheckpointError(
        loc.file,
        name,
        `is unexpected: not part of a ${config.modelType} model with this config.json`,
      );
    }
  }

  const allF32 = [...expected.keys()].every((n) => sources.get(n)!.header.tensors.get(n)!.dtype === 'F32');
  const weights = allF32
    ? sources
    : await fp32Cache(
        root,
        sources,
        expected,
        options.cacheDir ?? join(process.env['FEDBIOT_CACHE'] ?? join(homedir(), '.cache', 'fedbiot'), 'fp32'),
      );
  return makeCheckpoint(root, config, expected, weights);
}

function makeCheckpoint(
  dir: string,
  config: ModelConfig,
  expected: Map<string, readonly number[]>,
  weights: Map<string, Located>,
): Checkpoint {
  const resolveName = (name: string): string => {
    const n = name === 'lm_head.weight' && config.tieWordEmbeddings ? 'model.embed_tokens.weight' : name;
    if (!expected.has(n)) throw new CheckpointError(dir, name, 'is not a weight of this model');
    return n;
  };
  const weightRef = (name: string): WeightRef => {
    const n = resolveName(name);
    const loc = weights.get(n)!;
    const e = loc.header.tensors.get(n)!;
    return {
      file: loc.file,
      offset: loc.header.dataStart + e.begin,
      length: e.end - e.begin,
      shape: e.shape,
      dtype: 'float32',
    };
  };
  return {
    dir,
    config,
    tensorNames: [...expected.keys()],
    weightRef,
    readFloat32(name: string): Float32Array {
      const n = resolveName(name);
      const loc = weights.get(n)!;
      const bytes = readTensorBytesSync(loc.file, n, loc.header);
      return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    },
    parameterCount(): number {
      let total = 0;
      for (const shape of expected.values()) total += shape.reduce((a, b) => a * b, 1);
      return total;
    },
  };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Maps every tensor name to the shard file holding it, validating each shard's header. */
async function locateTensors(dir: string): Promise<Map<string, Located>> {
  const single = join(dir, 'model.safetensors');
  const index = join(dir, 'model.safetensors.index.json');
  const out = new Map<string, Located>();
  if (existsSync(single)) {
    const header = await readHeader(single);
    for (const name of header.tensors.keys()) out.set(name, { file: single, header });
    return out;
  }
  if (!existsSync(index))
    throw new CheckpointError(dir, undefined, 'neither model.safetensors nor model.safetensors.index.json exists');
  let weightMap: Record<string, unknown>;
  try {
    const parsed = JSON.parse(await readFile(index, 'utf8')) as { weight_map?: unknown };
    if (parsed.weight_map === null || typeof parsed.weight_map !== 'object') throw new Error('no weight_map object');
    weightMap = parsed.weight_map as Record<string, unknown>;
  } catch (e) {
    throw new CheckpointError(index, undefined, `cannot read the shard index (${(e as Error).message})`, { cause: e });
  }
  const headers = new Map<string, SafetensorsHeader>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\')) {
      throw new CheckpointError(
        index,
        name,
        `is mapped to ${JSON.stringify(shard)}, which is not a file name in this folder`,
      );
    }
    const file = join(dir, shard);
    let header = headers.get(file);
    if (header === undefined) {
      if (!existsSync(file))
        throw new CheckpointError(index, name, `is mapped to shard ${shard}, which does not exist`);
      header = await readHeader(file);
      headers.set(file, header);
    }
    if (!header.tensors.has(name))
      throw new CheckpointError(file, name, `is listed in ${basename(index)} but not in the shard`);
    out.set(name, { file, header });
  }
  for (const [file, header] of headers) {
    for (const name of header.tensors.keys()) {
      const loc = out.get(name);
      if (loc === undefined)
        throw new CheckpointError(file, name, `is present in the shard but missing from ${basename(index)}`);
      if (loc.file !== file)
        throw new CheckpointError(
          file,
          name,
          `is also present in ${loc.file}; ${basename(index)} names the other shard`,
        );
    }
  }
  return out;
}

async function readHeader(file: string): Promise<SafetensorsHeader> {
  try {
    return await readSafetensorsHeader(file);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new CheckpointError(file, e.tensor, e.detail, { cause: e });
    throw e;
  }
}

/**
 * Returns the fp32 cache for a non-fp32 checkpoint, writing it first if absent or unusable. The key hashes every
 * source shard's name, size and header bytes, so an edited checkpoint gets a fresh cache entry.
 */
async function fp32Cache(
  dir: string,
  sources: Map<string, Located>,
  expected: Map<string, readonly number[]>,
  cacheDir: string,
): Promise<Map<string, Located>> {
  const hash = createHash('sha256');
  const shards = new Map<string, SafetensorsHeader>();
  for (const loc of sources.values()) shards.set(loc.file, loc.header);
  for (const file of [...shards.keys()].toSorted()) {
    const h = shards.get(file)!;
    hash.update(`${basename(file)}\0${h.fileSize}\0`).update(h.rawHeader);
  }
  const cacheFile = join(cacheDir, hash.digest('hex'), 'model.safetensors');
  const usable = async (): Promise<SafetensorsHeader | undefined> => {
    if (!existsSync(cacheFile)) return undefined;
    try {
      const h = await readSafetensorsHeader(cacheFile);
      const ok = [...expected].every(([n, s]) => {
        const e = h.tensors.get(n);
        return e !== undefined && e.dtype === 'F32' && sameShape(e.shape, s);
      });
      return ok ? h : undefined;
    } catch {
      return undefined; // A damaged cache file is rebuilt, never trusted.
    }
  };
  let header = await usable();
  if (header === undefined) {
    await onCacheDiskAsync(dirname(cacheFile), () => mkdir(dirname(cacheFile), { recursive: true }));
    const tensors = new Map<string, SafetensorsWriteTensor>();
    for (const [name, shape] of expected) {
      const loc = sources.get(name)!;
      const dtype = loc.header.tensors.get(name)!.dtype;
      tensors.set(name, {
        dtype: 'F32',
        shape,
        data: () => toFloat32(dtype, readTensorBytesSync(loc.file, name, loc.header)),
      });
    }
    await onCacheDiskAsync(cacheFile, () => writeSafetensors(cacheFile, tensors, { format: 'pt', source: dir }));
    header = await readSafetensorsHeader(cacheFile);
  }
  const out = new Map<string, Located>();
  for (const name of expected.keys()) out.set(name, { file: cacheFile, header });
  return out;
}

/**
 * Fills a fresh temporary folder next to `dir` via `fill`, then moves its files into `dir` (created if needed),
 * each by rename. A failure leaves `dir` as it was and removes the temporary folder; there are never partial files.
 */
export async function writeDirAtomic(dir: string, fill: (tmpDir: string) => Promise<void>): Promise<void> {
  const target = resolve(dir);
  await mkdir(dirname(target), { recursive: true });
  const tmp = `${target}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await mkdir(tmp);
  try {
    await fill(tmp);
    const targetExists = await stat(target).then(
      (s) => s.isDirectory(),
      () => false,
    );
    if (!targetExists) {
      await rename(tmp, target);
      return;
    }
    for (const f of await readdir(tmp)) await rename(join(tmp, f), join(target, f));
    await rm(tmp, { recursive: true, force: true });
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Writes `value` as indented JSON through writeFileAtomic. */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, async (fh) => {
    await fh.writeFile(JSON.stringify(value, null, 2) + '\n', 'utf8');
  });
}

/** The generation_config.json transformers derives from a model config (special token ids only). */
export function generationConfigFor(config: ModelConfig): Record<string, unknown> {
  const generation: Record<string, unknown> = { _from_model_config: true };
  if (config.bosTokenId !== undefined) generation['bos_token_id'] = config.bosTokenId;
  if (config.eosTokenId !== undefined) generation['eos_token_id'] = config.eosTokenId;
  if (config.padTokenId !== undefined) generation['pad_token_id'] = config.padTokenId;
  return generation;
}

/**
 * Writes a float32 checkpoint that transformers' `from_pretrained` loads: config.json, generation_config.json and
 * model.safetensors (metadata format=pt). `tensors` must be exactly the config's expected tensors (tied lm_head
 * omitted), each a Float32Array of the implied shape.
 * @throws CheckpointError naming the tensor if one is missing, extra or of the wrong size.
 */
export async function writeCheckpoint(
  dir: string,
  config: ModelConfig,
  tensors: ReadonlyMap<string, Float32Array>,
): Promise<void> {
  const expected = expectedTensorShapes(config);
  const file = join(resolve(dir), 'model.safetensors');
  const out = new Map<string, SafetensorsWriteTensor>();
  for (const [name, shape] of expected) {
    const data = tensors.get(name);
    const n = shape.reduce((a, b) => a * b, 1);
    if (data === undefined)
      throw new CheckpointError(
        file,
        name,
        `is missing from the tensors to write (config implies [${shape.join(', ')}])`,
      );
    if (data.length !== n)
      throw new CheckpointError(
        file,
        name,
        `has ${data.length} values but config.json implies [${shape.join(', ')}] = ${n}`,
      );
    out.set(name, { dtype: 'F32', shape, data });
  }
  for (const name of tensors.keys()) {
    if (!expected.has(name)) throw new CheckpointError(file, name, 'is not a weight of this model config');
  }
  const generation = generationConfigFor(config);
  await writeDirAtomic(dir, async (tmp) => {
    await writeJsonAtomic(join(tmp, 'config.json'), configToJson({ ...config, torchDtype: 'float32' }));
    await writeJsonAtomic(join(tmp, 'generation_config.json'), generation);
    await writeSafetensors(join(tmp, 'model.safetensors'), out, { format: 'pt' });
  });
}
