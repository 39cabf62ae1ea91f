/**
 * Fixed shape buckets. Every graph the engine emits has static shapes and onnxruntime-node ignores
 * freeDimensionOverrides (docs/engine-notes.md §3, §7.4), so variable-length batches are padded up to one of a few
 * fixed sizes, with one session per size.
 */

/**
 * The smallest bucket that holds `length`.
 * @param buckets candidate sizes, any order, positive integers
 * @throws RangeError naming the length and the largest bucket when none is large enough; for an empty bucket list,
 *   a negative or fractional length, or a bad bucket size
 */
export function pickBucket(length: number, buckets: readonly number[]): number {
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`pickBucket: length must be a non-negative integer, got ${length}`);
  }
  if (buckets.length === 0) throw new RangeError('pickBucket: no buckets given');
  let best = Infinity;
  let largest = 0;
  for (const b of buckets) {
    if (!Number.isSafeInteger(b) || b < 1)
      throw new RangeError(`pickBucket: bucket sizes must be positive integers, got ${b}`);
    if (b >= length && b < best) best = b;
    if (b > largest) largest = b;
  }
  if (best === Infinity) {
    throw new RangeError(`pickBucket: length ${length} exceeds the largest bucket (${largest})`);
  }
  return best;
}

/** Options of {@link BucketCache}. */
export interface BucketCacheOptions<K, V> {
  /** Builds the value for a bucket the first time it is asked for. */
  readonly build: (key: K) => Promise<V>;
  /** Frees a value on {@link BucketCache.releaseAll}, e.g. `(runner) => runner.release()`. */
  readonly release?: (value: V, key: K) => Promise<void> | void;
  /** Map key of a bucket key; keys with the same id share a value. Default `JSON.stringify` (fits [B, T] tuples). */
  readonly keyId?: (key: K) => string;
}

/**
 * Lazily builds and caches one value per bucket key, e.g. one ModelRunner per [batch, length] bucket. Concurrent
 * `get`s of a key share one build; a failed build is not cached, so the next `get` retries.
 */
export class BucketCache<K, V> {
  readonly #entries = new Map<string, { key: K; value: Promise<V> }>();
  readonly #build: (key: K) => Promise<V>;
  readonly #release: ((value: V, key: K) => Promise<void> | void) | undefined;
  readonly #keyId: (key: K) => string;

  constructor(opts: BucketCacheOptions<K, V>) {
    this.#build = opts.build;
    this.#release = opts.release;
    this.#keyId = opts.keyId ?? ((k) => JSON.stringify(k));
  }

  /** Number of keys built or being built. */
  get size(): number {
    return this.#entries.size;
  }

  has(key: K): boolean {
    return this.#entries.has(this.#keyId(key));
  }

  /** The value for `key`, building it on first use. */
  get(key: K): Promise<V> {
    const id = this.#keyId(key);
    const hit = this.#entries.get(id);
    if (hit !== undefined) return hit.value;
    const value = this.#build(key);
    this.#entries.set(id, { key, value });
    value.catch(() => {
      if (this.#entries.get(id)?.value === value) this.#entries.delete(id);
    });
    return value;
  }

  /**
   * Empties the cache and releases every value that was built (waiting for builds in progress). All values are
   * released even if some releases fail; the first failure is then rethrown.
   */
  async releaseAll(): Promise<void> {
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    const results = await Promise.allSettled(
      entries.map(async ({ key, value }) => {
        let v: V;
        try {
          v = await value;
        } catch {
          return; // never built: nothing to release
        }
        await this.#release?.(v, key);
      }),
    );
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
  }
}
