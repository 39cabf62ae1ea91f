/**
 * Compiled graphs of one model, built on first use and kept: every graph has static shapes, so each
 * (kind, batch, length, LoRA layout) bucket is its own ONNX session, created once (10-100 ms) and reused.
 */
import { createHash } from 'node:crypto';
import { Graph, openRunner, type ModelRunner, type OpenRunnerOptions } from '../../engine/src/index.js';
import type { GraphStore } from './graph-store.js';

export class CompiledGraphs {
  private readonly runners = new Map<string, Promise<ModelRunner>>();

  /**
   * `tag` goes into every file name, so graphs of the same keys built differently (half-precision weights) never
   * overwrite each other's files in the shared graph folder; '' (float32 weights) keeps the names as they were.
   */
  constructor(
    readonly store: GraphStore,
    readonly runnerOptions: OpenRunnerOptions = {},
    readonly tag = '',
  ) {}

  /**
   * The runner for `key`, building the graph with `build` the first time. The key must capture everything that
   * changes the graph (shapes, layers, LoRA targets); it also names the file, hashed when long.
   */
  get(key: string, build: (g: Graph) => void, options: Partial<OpenRunnerOptions> = {}): Promise<ModelRunner> {
    let r = this.runners.get(key);
    if (!r) {
      r = (async () => {
        const target = (options.provider ?? this.runnerOptions.provider ?? 'cpu') === 'cpu' ? 'cpu' : 'gpu';
        const g = new Graph(key.slice(0, 64), { target });
        build(g);
        const name = `${target}-${this.tag}${key}`;
        const file =
          name.length <= 80 && /^[\w.-]+$/.test(name)
            ? name
            : `g-${createHash('sha256').update(name).digest('hex').slice(0, 24)}`;
        const path = this.store.write(g, file);
        return openRunner({ path }, { ...this.runnerOptions, ...options, label: key });
      })();
      // a failed build must not poison the cache
      r.catch(() => this.runners.delete(key));
      this.runners.set(key, r);
    }
    return r;
  }

  async releaseAll(): Promise<void> {
    const all = [...this.runners.values()];
    this.runners.clear();
    await Promise.allSettled(all.map(async (p) => (await p).release()));
  }
}
