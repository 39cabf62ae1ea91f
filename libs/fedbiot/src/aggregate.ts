import { AggregationError, UpdateRejectedError, type UpdateProblem } from './errors.js';

/**
 * Server-side aggregation of client adapter-LoRA updates: validation first (checkUpdate), then a pure weighted
 * average (fedAvg). LoRA A and B are separate named tensors and are averaged separately, as FedBiOT does; the
 * average of products B·A is not the product of averages, and that is the reference behaviour.
 */

/** One client's contribution to a round. */
export interface ClientUpdate {
  readonly clientId: string;
  /** Tensor name (PEFT naming) -> flat float32 values. */
  readonly tensors: ReadonlyMap<string, Float32Array>;
  /** Training tokens (loss-bearing) this client processed in the round. */
  readonly tokens: number;
  /** Training examples this client processed in the round. */
  readonly examples: number;
}

/** What an update must look like: tensor name -> shape (row-major; the flat length is the product). */
export type UpdateReference = ReadonlyMap<string, { readonly shape: readonly number[] }>;

export interface CheckOptions {
  /** Upper bound on the L2 norm of the whole update (all tensors together). Absent: no bound. */
  readonly maxNorm?: number;
}

/**
 * Every problem with one update against the expected tensors: missing and extra tensors, element counts that do
 * not match the shape, non-finite values (first index and count per tensor), and the global L2 norm above
 * `maxNorm`. An empty list means the update can be aggregated. Never throws on bad tensors; see assertUpdates.
 */
export function checkUpdate(
  update: Pick<ClientUpdate, 'clientId' | 'tensors'>,
  reference: UpdateReference,
  opts: CheckOptions = {},
): UpdateProblem[] {
  const clientId = update.clientId;
  const problems: UpdateProblem[] = [];
  for (const name of reference.keys()) {
    if (!update.tensors.has(name))
      problems.push({ clientId, tensor: name, kind: 'missing', message: 'missing from the update' });
  }
  for (const name of update.tensors.keys()) {
    if (!reference.has(name))
      problems.push({ clientId, tensor: name, kind: 'extra', message: 'not an expected tensor' });
  }
  let sumSq = 0;
  let finite = true;
  for (const [name, ref] of reference) {
    const values = update.tensors.get(name);
    if (values === undefined) continue;
    const want = ref.shape.reduce((a, b) => a * b, 1);
    if (values.length !== want) {
      problems.push({
        clientId,
        tensor: name,
        kind: 'shape',
        message: `has ${values.length} elements, expected shape [${ref.shape.join(', ')}] (${want} elements)`,
      });
      continue;
    }
    let bad = 0;
    let first = -1;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (Number.isFinite(v)) sumSq += v * v;
      else if (bad++ === 0) first = i;
    }
    if (bad > 0) {
      finite = false;
      problems.push({
        clientId,
        tensor: name,
        kind: 'non-finite',
        message: `${bad} non-finite value${bad === 1 ? '' : 's'}, first at index ${first} (${values[first]})`,
      });
    }
  }
  if (opts.maxNorm !== undefined && finite) {
    const norm = Math.sqrt(sumSq);
    if (norm > opts.maxNorm) {
      problems.push({
        clientId,
        kind: 'norm',
        message: `update L2 norm ${norm.toPrecision(6)} exceeds the bound ${opts.maxNorm}`,
      });
    }
  }
  return problems;
}

/**
 * Checks every update and throws one UpdateRejectedError listing all problems of all clients, or returns.
 * Use it where a bad update must stop aggregation; use checkUpdate to drop bad clients and continue.
 */
export function assertUpdates(
  updates: readonly ClientUpdate[],
  reference: UpdateReference,
  opts: CheckOptions = {},
): void {
  const problems = updates.flatMap((u) => checkUpdate(u, reference, opts));
  if (problems.length > 0) throw new UpdateRejectedError(problems);
}

/** How client updates are weighted: by training tokens (our default), examples, or equally (the reference in effect). */
export type Weighting = 'tokens' | 'examples' | 'uniform';

export interface FedAvgOptions {
  readonly weighting: Weighting;
}

/** Normalised aggregation weights (sum 1), in the order of `updates`. Throws on bad counts or a zero total. */
export function aggregationWeights(
  updates: readonly Pick<ClientUpdate, 'clientId' | 'tokens' | 'examples'>[],
  weighting: Weighting,
): number[] {
  if (updates.length === 0) throw new AggregationError('fedAvg: no updates to aggregate');
  const raw = updates.map((u) => rawWeight(u, weighting));
  const total = raw.reduce((a, b) => a + b, 0);
  if (!(total > 0)) {
    throw new AggregationError(
      `fedAvg: total ${weighting} weight is 0 over clients ${updates.map((u) => u.clientId).join(', ')}`,
    );
  }
  return raw.map((w) => w / total);
}

function rawWeight(u: Pick<ClientUpdate, 'clientId' | 'tokens' | 'examples'>, weighting: Weighting): number {
  if (weighting === 'uniform') return 1;
  const w = weighting === 'tokens' ? u.tokens : u.examples;
  if (!Number.isFinite(w) || w < 0) {
    throw new UpdateRejectedError([
      { clientId: u.clientId, kind: 'weight', message: `${weighting} must be a finite number >= 0, got ${w}` },
    ]);
  }
  return w;
}

/**
 * Weighted average of each tensor across updates: out[t] = sum_i w_i x_i[t] / sum_i w_i, accumulated in float64 and
 * rounded to float32 once. Returns a new Map with new arrays; the inputs are never written.
 *
 * Every update must carry the same tensor names with the same lengths (validate with checkUpdate first); a mismatch
 * throws UpdateRejectedError naming the client and tensor rather than silently skipping it.
 * @throws AggregationError on no updates or a zero total weight (e.g. every client reported 0 tokens).
 */
export function fedAvg(updates: readonly ClientUpdate[], opts: FedAvgOptions): Map<string, Float32Array> {
  // Weights first, so a bad count or a zero total fails before any tensor work.
  aggregationWeights(updates, opts.weighting);
  const acc = new FedAvgAccumulator(opts.weighting);
  for (const u of updates) acc.add(u);
  return acc.result();
}

/**
 * Streaming FedAvg: fold each update in as it arrives and drop it (NVFlare's in-time aggregation), so the server
 * holds one float64 sum per tensor instead of N client copies. Same result as fedAvg on the same updates.
 */
export class FedAvgAccumulator {
  private readonly sums = new Map<string, Float64Array>();
  private total = 0;
  private readonly clients: string[] = [];

  constructor(readonly weighting: Weighting) {}

  /** Clients folded in so far, in arrival order. */
  get clientIds(): readonly string[] {
    return this.clients;
  }

  /** Adds one update. The first update fixes the tensor names and lengths every later one must match. */
  add(update: ClientUpdate): void {
    const w = rawWeight(update, this.weighting);
    if (this.clients.includes(update.clientId)) {
      throw new UpdateRejectedError([
        { clientId: update.clientId, kind: 'extra', message: 'a second update from this client in the same round' },
      ]);
    }
    if (this.clients.length > 0) this.checkConsistent(update);
    for (const [name, values] of update.tensors) {
      let sum = this.sums.get(name);
      if (sum === undefined) {
        sum = new Float64Array(values.length);
        this.sums.set(name, sum);
      }
      for (let i = 0; i < values.length; i++) sum[i] += w * values[i];
    }
    this.total += w;
    this.clients.push(update.clientId);
  }

  /** The weighted average so far, as new float32 arrays. */
  result(): Map<string, Float32Array> {
    if (this.clients.length === 0) throw new AggregationError('fedAvg: no updates to aggregate');
    if (!(this.total > 0)) {
      throw new AggregationError(`fedAvg: total ${this.weighting} weight is 0 over clients ${this.clients.join(', ')}`);
    }
    const out = new Map<string, Float32Array>();
    for (const [name, sum] of this.sums) {
      const avg = new Float32Array(sum.length);
      for (let i = 0; i < sum.length; i++) avg[i] = sum[i] / this.total;
      out.set(name, avg);
    }
    return out;
  }

  private checkConsistent(update: ClientUpdate): void {
    const problems: UpdateProblem[] = [];
    const clientId = update.clientId;
    for (const [name, sum] of this.sums) {
      const v = update.tensors.get(name);
      if (v === undefined)
        problems.push({
          clientId,
          tensor: name,
          kind: 'missing',
          message: `missing; client ${this.clients[0]} sent it`,
        });
      else if (v.length !== sum.length) {
        problems.push({
          clientId,
          tensor: name,
          kind: 'shape',
          message: `has ${v.length} elements; client ${this.clients[0]} sent ${sum.length}`,
        });
      }
    }
    for (const name of update.tensors.keys()) {
      if (!this.sums.has(name))
        problems.push({ clientId, tensor: name, kind: 'extra', message: `not sent by client ${this.clients[0]}` });
    }
    if (problems.length > 0) throw new UpdateRejectedError(problems);
  }
}
