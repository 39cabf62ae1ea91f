/**
 * Where a checkpoint's compiled graphs live. onnxruntime-node 1.30 loads external data only from inside the model
 * file's directory (it refuses '../' and resolves symlinks), so each checkpoint gets a graph folder holding hard
 * links to its fp32 safetensors files (a copy where linking is impossible); every graph's frozen weights point into
 * those files, which ORT memory-maps, so the weights are held once however many graphs use them.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, linkSync, mkdirSync, renameSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, join } from 'node:path';
import { writeModel, type DType, type Graph, type WeightSource } from '../../engine/src/index.js';
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

export class GraphStore {
  readonly dir: string;
  private readonly linked = new Map<string, string>();

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

  /** Frozen weights of the checkpoint: fp32 graphs reference the linked files; float64 graphs get values inline. */
  weights(): WeightStore {
    return {
      shape: (name) => this.checkpoint.weightRef(name).shape,
      source: (name, dtype: DType): WeightSource => {
        const ref = this.checkpoint.weightRef(name);
        if (dtype === 'float32')
          return { external: { location: this.link(ref.file), offset: ref.offset, length: ref.length } };
        if (dtype === 'float64') return { data: Float64Array.from(this.checkpoint.readFloat32(name)) };
        throw new Error(`GraphStore: weights in ${dtype} are not supported (float32 or float64)`);
      },
    };
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
