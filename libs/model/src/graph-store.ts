/**
 * Where a checkpoint's compiled graphs live. onnxruntime-node 1.30 loads external data only from inside the model
 * file's directory (it refuses '../' and resolves symlinks), so each checkpoint gets a graph folder holding hard
 * links to its fp32 safetensors files (a copy where linking is impossible); every graph's frozen weights point into
 * those files, which ORT memory-maps, so the weights are held once however many graphs use them.
 * With half-precision weights (prepareHalf), the folder also holds one float16 or bfloat16 safetensors file of the
 * checkpoint's matrices, which the graphs reference instead: half the bytes to map.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, linkSync, mkdirSync, renameSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, join } from 'node:path';
import {
  float32ArrayTo,
  readSafetensorsHeader,
  writeModel,
  writeSafetensors,
  type DType,
  type Graph,
  type SafetensorsHeader,
  type SafetensorsWriteTensor,
  type WeightSource,
} from '../../engine/src/index.js';
import { onCacheDisk } from './cache-errors.js';
import { pruneWeightVersions } from './cache-prune.js';
import type { Checkpoint } from './checkpoint.js';
import type { WeightStore } from './llama.js';

export interface GraphStoreOptions {
  /** Root folder for graph caches. Default `~/.cache/fedbiot/graphs` (or $FEDBIOT_CACHE/graphs). */
  readonly cacheRoot?: string;
}

export function defaultCacheRoot(): string {
  return process.env['FEDBIOT_CACHE'] ?? join(homedir(), '.cache', 'fedbiot');
}

/** Storage types for frozen weights in half precision. */
export type HalfDType = 'float16' | 'bfloat16';

/** Which weights are stored in half precision: the matrices (linears, embedding, head); norms and biases are tiny. */
export function isHalfCandidate(shape: readonly number[]): boolean {
  return shape.length === 2;
}

export class GraphStore {
  readonly dir: string;
  private readonly linked = new Map<string, string>();
  private readonly half = new Map<HalfDType, { file: string; header: SafetensorsHeader }>();

  constructor(
    readonly checkpoint: Checkpoint,
    options: GraphStoreOptions = {},
  ) {
    const root = options.cacheRoot ?? join(defaultCacheRoot(), 'graphs');
    // One folder per checkpoint location and file identity, so an edited checkpoint gets fresh links.
    const id = createHash('sha256').update(checkpoint.dir).digest('hex').slice(0, 16);
    this.dir = join(root, id);
    onCacheDisk(this.dir, () => mkdirSync(this.dir, { recursive: true }));
  }

  /**
   * Frozen weights of the checkpoint: fp32 graphs reference the linked files; float64 graphs get values inline;
   * float16/bfloat16 (matrices only) reference the half file written by prepareHalf.
   */
  weights(): WeightStore {
    return {
      shape: (name) => this.checkpoint.weightRef(name).shape,
      source: (name, dtype: DType): WeightSource => {
        const ref = this.checkpoint.weightRef(name);
        if (dtype === 'float32')
          return { external: { location: this.link(ref.file), offset: ref.offset, length: ref.length } };
        if (dtype === 'float64') return { data: Float64Array.from(this.checkpoint.readFloat32(name)) };
        if (dtype === 'float16' || dtype === 'bfloat16') {
          const half = this.half.get(dtype);
          if (!half) throw new Error(`GraphStore: no ${dtype} weights; call prepareHalf('${dtype}') first`);
          const key =
            name === 'lm_head.weight' && this.checkpoint.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : name;
          const e = half.header.tensors.get(key);
          if (!e) throw new Error(`GraphStore: ${name} is not stored in ${dtype} (only matrices are)`);
          return {
            external: {
              location: basename(half.file),
              offset: half.header.dataStart + e.begin,
              length: e.end - e.begin,
            },
          };
        }
        throw new Error(`GraphStore: weights in ${dtype} are not supported (float32, float64, float16, bfloat16)`);
      },
    };
  }

  /**
   * Writes (once) the checkpoint's matrices in `dtype` into this folder, rounded to nearest even from the fp32
   * weights (exact for a bf16 checkpoint's bf16 cache; float16 overflows to +-Inf above 65504, which no LLaMA-family
   * weight reaches). The file name hashes the fp32 files' identity, so an edited checkpoint gets a fresh file.
   * @returns the file's size in bytes
   */
  async prepareHalf(dtype: HalfDType): Promise<number> {
    const names = this.checkpoint.tensorNames.filter((n) => isHalfCandidate(this.checkpoint.weightRef(n).shape));
    const ids = new Set<string>();
    for (const n of names) {
      const file = this.checkpoint.weightRef(n).file;
      const st = statSync(file);
      ids.add(`${file}:${st.size}:${st.mtimeMs}`);
    }
    const id = createHash('sha256')
      .update([...ids].toSorted().join('\n'))
      .digest('hex')
      .slice(0, 12);
    const file = join(this.dir, `${dtype === 'float16' ? 'f16' : 'bf16'}-${id}.safetensors`);
    const st = dtype === 'float16' ? 'F16' : 'BF16';
    let header: SafetensorsHeader | undefined;
    if (existsSync(file)) {
      try {
        const h = await readSafetensorsHeader(file);
        if (names.every((n) => h.tensors.get(n)?.dtype === st)) header = h;
      } catch {
        header = undefined; // a damaged file is rewritten, never trusted
      }
    }
    if (!header) {
      const tensors = new Map<string, SafetensorsWriteTensor>();
      for (const n of names) {
        tensors.set(n, {
          dtype: st,
          shape: this.checkpoint.weightRef(n).shape,
          data: () => float32ArrayTo(st, this.checkpoint.readFloat32(n)),
        });
      }
      await writeSafetensors(file, tensors, { format: 'pt', source: this.checkpoint.dir });
      header = await readSafetensorsHeader(file);
    }
    this.half.set(dtype, { file, header });
    return header.fileSize;
  }

  /** Writes `graph` as `<dir>/<name>.onnx` (small constants inline, large ones in `<name>.data`); returns the path. */
  write(graph: Graph, name: string): string {
    const path = join(this.dir, `${name}.onnx`);
    onCacheDisk(path, () => writeModel(graph.toIr(), path));
    return path;
  }

  /** The file name (inside `dir`) under which `file` is reachable, linking it on first use. */
  private link(file: string): string {
    const known = this.linked.get(file);
    if (known) return known;
    const st = statSync(file);
    const name = `w-${createHash('sha256').update(`${file}:${st.size}:${st.mtimeMs}`).digest('hex').slice(0, 12)}-${basename(file)}`;
    const target = join(this.dir, name);
    if (!existsSync(target)) onCacheDisk(target, () => this.#linkNew(file, target));
    this.linked.set(file, name);
    return name;
  }

  #linkNew(file: string, target: string): void {
    const tmp = `${target}.tmp-${process.pid}`;
    try {
      linkSync(file, tmp);
    } catch {
      copyFileSync(file, tmp); // other filesystem, or hard links to others' files not permitted
    }
    renameSync(tmp, target);
    // A new version of this file: older ones beyond the newest two would otherwise stay forever (a hard link
    // keeps a replaced checkpoint's bytes alive).
    pruneWeightVersions(this.dir, basename(file));
  }
}
