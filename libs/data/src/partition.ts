import { DatasetError, PartitionError, type DatasetIssue } from './errors.js';
import { createRng, sampleDirichlet, shuffled } from './rng.js';
import type { ClientShard, Example, Partition } from './types.js';

/**
 * Partitioners: pure functions from (sizes or labels, seed) to client -> example indices. Label-based ones take a
 * label per example (see labelsOf) so they work for any record type. Shard indices are ascending; shards are
 * disjoint and cover every example.
 */

/** IID: a seeded shuffle cut into near-equal shares (sizes differ by at most one; the first shards get the extra). */
export function partitionIid(numExamples: number, numClients: number, seed: number): Partition {
  checkCount(numExamples, 'numExamples');
  checkCount(numClients, 'numClients');
  if (numClients > numExamples) {
    throw new PartitionError(`iid: ${numClients} clients but only ${numExamples} examples; a client would be empty`);
  }
  const order = shuffled(range(numExamples), createRng(seed));
  const base = Math.floor(numExamples / numClients);
  const extra = numExamples % numClients;
  const shards: ClientShard[] = [];
  let start = 0;
  for (let c = 0; c < numClients; c++) {
    const size = base + (c < extra ? 1 : 0);
    shards.push({ id: `client-${c}`, indices: sortAsc(order.slice(start, start + size)) });
    start += size;
  }
  return shards;
}

export interface DirichletOptions {
  /** Smallest acceptable client size; draws are repeated until every client has it. Default 1. */
  readonly minPerClient?: number;
  /** Draws before giving up with a PartitionError. Default 100. */
  readonly maxAttempts?: number;
}

/**
 * Label skew by Dirichlet (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"): for each
 * label, proportions over clients p ~ Dir(alpha * 1), and that label's (shuffled) examples are cut by p, rounded
 * by largest remainder so counts are exact. Small alpha: each label lands on few clients; large alpha: near-iid.
 * If a client ends with fewer than `minPerClient` examples the whole draw is repeated (continuing the same seeded
 * stream); after `maxAttempts` the error reports the sizes of the last draw.
 */
export function partitionDirichlet(
  labels: readonly string[],
  numClients: number,
  alpha: number,
  seed: number,
  opts: DirichletOptions = {},
): Partition {
  checkCount(numClients, 'numClients');
  if (!(alpha > 0) || !Number.isFinite(alpha)) throw new RangeError(`dirichlet: alpha must be > 0, got ${alpha}`);
  const minPerClient = opts.minPerClient ?? 1;
  const maxAttempts = opts.maxAttempts ?? 100;
  const byLabel = groupByLabel(labels);
  const rng = createRng(seed);
  let sizes: number[] = [];
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    const shards: number[][] = Array.from({ length: numClients }, () => []);
    for (const [, indices] of byLabel) {
      const order = shuffled(indices, rng);
      const p = sampleDirichlet(
        Array.from({ length: numClients }, () => alpha),
        rng,
      );
      const counts = largestRemainder(p, order.length);
      let start = 0;
      shards.forEach((shard, c) => {
        // counts has one entry per client and sums to order.length, so every index is in range.
        const n = counts[c]!;
        for (let i = start; i < start + n; i++) shard.push(order[i]!);
        start += n;
      });
    }
    sizes = shards.map((s) => s.length);
    if (sizes.every((n) => n >= minPerClient)) {
      return shards.map((s, c) => ({ id: `client-${c}`, indices: sortAsc(s) }));
    }
  }
  throw new PartitionError(
    `dirichlet(alpha=${alpha}): after ${maxAttempts} draws some of ${numClients} clients still had fewer than ` +
      `${minPerClient} examples (last draw sizes: ${sizes.join(', ')}); use a larger alpha, fewer clients or more data`,
  );
}

export interface ByFieldOptions {
  /**
   * Merge the distinct values into this many clients (greedy: largest value group first, onto the currently
   * smallest client, ties to the lower client). Default: one client per distinct value.
   */
  readonly numClients?: number;
}

/**
 * One client per distinct label value (id = the value), or values merged into `numClients` clients
 * (id = the values joined by "+"). Deterministic, no seed: value order is by code unit, not locale.
 * Unlike FS-LLM's MetaSplitter, values are never dropped and a client count above the number of values is an error.
 */
export function partitionByField(labels: readonly string[], opts: ByFieldOptions = {}): Partition {
  const groups = [...groupByLabel(labels)];
  if (opts.numClients === undefined || opts.numClients === groups.length) {
    return groups.map(([value, indices]) => ({ id: value, indices }));
  }
  const n = opts.numClients;
  checkCount(n, 'numClients');
  if (n > groups.length) {
    throw new PartitionError(
      `by-field: ${n} clients but only ${groups.length} distinct values; a client would be empty`,
    );
  }
  const bySize = groups.slice().toSorted((a, b) => b[1].length - a[1].length || cmp(a[0], b[0]));
  const bins = Array.from({ length: n }, () => ({ values: [] as string[], indices: [] as number[] }));
  for (const [value, indices] of bySize) {
    let target = bins[0]!; // n >= 1 (checkCount)
    for (const bin of bins) if (bin.indices.length < target.indices.length) target = bin;
    target.values.push(value);
    target.indices.push(...indices);
  }
  return bins.map((b) => ({ id: b.values.toSorted(cmp).join('+'), indices: sortAsc(b.indices) }));
}

export interface SplitResult<T> {
  readonly train: T[];
  readonly test: T[];
  readonly trainIndices: number[];
  readonly testIndices: number[];
}

export interface SplitOptions {
  /** A label per example: each label keeps its share in both parts (largest-remainder rounding). */
  readonly stratify?: readonly string[];
}

/**
 * Seeded train/test split; round(n * testFraction) examples go to test. Both parts must end non-empty.
 * Order inside each part follows the original order.
 */
export function trainTestSplit<T>(
  examples: readonly T[],
  testFraction: number,
  seed: number,
  opts: SplitOptions = {},
): SplitResult<T> {
  if (!(testFraction > 0 && testFraction < 1)) {
    throw new RangeError(`trainTestSplit: testFraction must be in (0, 1), got ${testFraction}`);
  }
  const n = examples.length;
  const total = Math.round(n * testFraction);
  if (total === 0 || total === n) {
    throw new PartitionError(`trainTestSplit: ${n} examples at testFraction ${testFraction} leave an empty part`);
  }
  const rng = createRng(seed);
  const test: number[] = [];
  if (opts.stratify === undefined) {
    test.push(...shuffled(range(n), rng).slice(0, total));
  } else {
    if (opts.stratify.length !== n) {
      throw new RangeError(`trainTestSplit: ${opts.stratify.length} stratify labels for ${n} examples`);
    }
    const groups = [...groupByLabel(opts.stratify)];
    const quotas = largestRemainder(
      groups.map(([, idx]) => idx.length / n),
      total,
    );
    // largestRemainder returns one quota per group.
    groups.forEach(([, idx], g) => test.push(...shuffled(idx, rng).slice(0, Math.min(quotas[g]!, idx.length))));
  }
  const inTest = new Set(test);
  const testIndices = sortAsc(test);
  const trainIndices = range(n).filter((i) => !inTest.has(i));
  return {
    // Both index lists are drawn from range(n), n = examples.length.
    train: trainIndices.map((i) => examples[i]!),
    test: testIndices.map((i) => examples[i]!),
    trainIndices,
    testIndices,
  };
}

/**
 * The label of each example from an extra field (`category`, `label`, ...). Strings are used as-is, numbers and
 * booleans as their string form. Every example lacking a usable value is reported in one DatasetError.
 */
export function labelsOf(examples: readonly Example[], field: string): string[] {
  const issues: DatasetIssue[] = [];
  const labels = examples.map((ex) => {
    const v = ex.extra[field];
    if (typeof v === 'string' && v !== '') return v;
    if (typeof v === 'number' || typeof v === 'boolean') return String(v);
    issues.push({
      file: ex.source.file,
      line: ex.source.line,
      reason:
        v === undefined
          ? `missing label field "${field}"`
          : `label field "${field}" must be a non-empty string or number`,
    });
    return '';
  });
  if (issues.length > 0)
    throw new DatasetError(`${issues.length} example(s) without a usable "${field}" label`, issues);
  return labels;
}

/** The items of each shard. */
export function selectShards<T>(items: readonly T[], partition: Partition): { id: string; items: T[] }[] {
  return partition.map((s) => ({
    id: s.id,
    items: s.indices.map((i) => {
      const item = items[i];
      if (item === undefined) {
        throw new RangeError(`selectShards: shard "${s.id}" names example ${i}, but there are ${items.length} items`);
      }
      return item;
    }),
  }));
}

/** Integer counts summing to `total`, proportional to `weights` (which sum to 1), by largest remainder. */
export function largestRemainder(weights: readonly number[], total: number): number[] {
  const exact = weights.map((w) => w * total);
  const counts = exact.map((x) => Math.floor(x));
  let left = total - counts.reduce((a, b) => a + b, 0);
  const order = exact.map((x, i) => ({ r: x - Math.floor(x), i })).toSorted((a, b) => b.r - a.r || a.i - b.i);
  // order holds one entry per weight, and each entry's i indexes counts.
  for (let k = 0; left > 0; k = (k + 1) % order.length, left--) counts[order[k]!.i]!++;
  return counts;
}

/** Label -> ascending indices, labels in code-unit order (deterministic across locales). */
function groupByLabel(labels: readonly string[]): Map<string, number[]> {
  const groups = new Map<string, number[]>();
  labels.forEach((l, i) => {
    const g = groups.get(l);
    if (g) g.push(i);
    else groups.set(l, [i]);
  });
  return new Map([...groups].toSorted((a, b) => cmp(a[0], b[0])));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

function sortAsc(xs: number[]): number[] {
  return xs.toSorted((a, b) => a - b);
}

function checkCount(n: number, name: string): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${name} must be a positive integer, got ${n}`);
}
