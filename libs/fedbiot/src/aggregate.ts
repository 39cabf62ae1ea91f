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
      const v = values[i]!;
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
      // checkConsistent: every update's tensor has the length of the first, which sized `sum`.
      for (let i = 0; i < values.length; i++) sum[i]! += w * values[i]!;
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
      for (let i = 0; i < sum.length; i++) avg[i] = sum[i]! / this.total;
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

/**
 * FedAvg as updates arrive, in a planned order: each update is folded into the float64 sums (FedAvgAccumulator) as
 * soon as every client planned before it has been folded or `skip`ped, so the summation order, and with it every
 * bit of the result, is the one fedAvg gives on the accepted updates in planned order (what the collect-all path
 * computed). An update that arrives ahead of its turn is held until its turn; when more than `maxHeld` are held
 * (a slow early client among many fast ones), the held ones are folded in planned order and every later update in
 * arrival order: memory stays bounded by `maxHeld` updates plus the sums, and the result then differs from the
 * planned-order one only by float64 summation-order rounding (the sums are float64, rounded to float32 once).
 */
export class StreamingFedAvg {
  private readonly acc: FedAvgAccumulator;
  private readonly held = new Map<string, ClientUpdate>();
  private readonly skipped = new Set<string>();
  private next = 0;
  private ordered = true;
  private peak = 0;

  constructor(
    weighting: Weighting,
    private readonly planned: readonly string[],
    private readonly maxHeld = 8,
  ) {
    this.acc = new FedAvgAccumulator(weighting);
  }

  /** Updates folded in so far. */
  get count(): number {
    return this.acc.clientIds.length;
  }

  /** Most updates held at once (waiting for their turn). */
  get peakHeld(): number {
    return this.peak;
  }

  /** Whether every update so far was folded in planned order (the result equals fedAvg's in planned order). */
  get inPlannedOrder(): boolean {
    return this.ordered;
  }

  /** Folds `update` in (now or when its turn comes). Throws like FedAvgAccumulator.add on a bad weight or shape. */
  add(update: ClientUpdate): void {
    if (!this.ordered) return this.acc.add(update);
    if (this.held.has(update.clientId) || this.acc.clientIds.includes(update.clientId)) {
      throw new UpdateRejectedError([
        { clientId: update.clientId, kind: 'extra', message: 'a second update from this client in the same round' },
      ]);
    }
    // Counts are checked now, not when the update's turn comes.
    rawWeight(update, this.acc.weighting);
    this.held.set(update.clientId, update);
    this.drain();
    this.peak = Math.max(this.peak, this.held.size);
    if (this.held.size > this.maxHeld) {
      this.flush();
      this.ordered = false;
    }
  }

  /** A planned client whose update will not come (rejected, failed download): later clients need not wait for it. */
  skip(clientId: string): void {
    this.skipped.add(clientId);
    if (this.ordered) this.drain();
  }

  /** The weighted average (held updates folded first, in planned order). */
  result(): Map<string, Float32Array> {
    this.flush();
    return this.acc.result();
  }

  private drain(): void {
    for (; this.next < this.planned.length; this.next++) {
      const id = this.planned[this.next]!;
      const u = this.held.get(id);
      if (u !== undefined) {
        this.held.delete(id);
        this.acc.add(u);
      } else if (!this.skipped.has(id)) break;
    }
  }

  /** Folds every held update: planned ones in planned order, then any unplanned in arrival order. */
  private flush(): void {
    for (const id of this.planned) {
      const u = this.held.get(id);
      if (u === undefined) continue;
      this.held.delete(id);
      this.acc.add(u);
    }
    for (const u of this.held.values()) this.acc.add(u);
    this.held.clear();
    this.next = this.planned.length;
  }
}

// ---- defences against a hostile client (a data owner with valid credentials) ------------------------------------

/** What one client's local training can produce at most: the task the server handed out. */
export interface TaskBounds {
  /** Optimizer steps per round (K). */
  readonly localSteps: number;
  /** Examples per micro-batch. */
  readonly batchSize: number;
  /** Micro-batches per step. */
  readonly gradAccum: number;
  /** Tokens per example (the job's maxLength: longer examples are cut to it). */
  readonly seq: number;
}

/**
 * Largest honest counts: every step reads gradAccum * batchSize examples (the example stream cycles, so never
 * fewer for a non-empty client, never more), each with at most `seq` loss-bearing tokens.
 */
export function maxCounts(t: TaskBounds): { examples: number; tokens: number } {
  const examples = t.localSteps * t.gradAccum * t.batchSize;
  return { examples, tokens: examples * t.seq };
}

/**
 * Problems with a client's reported counts against the task: more examples or tokens than K local steps of its
 * batches can hold, or more tokens than its examples can hold. Such a claim is impossible for an honest trainer,
 * so the whole update is rejected (clamping would still give a lying client the largest weight of the round).
 */
export function checkCounts(u: Pick<ClientUpdate, 'clientId' | 'tokens' | 'examples'>, t: TaskBounds): UpdateProblem[] {
  const max = maxCounts(t);
  const problems: UpdateProblem[] = [];
  const bad = (message: string): number =>
    problems.push({ clientId: u.clientId, kind: 'weight', message: `${message}; count claim rejected` });
  if (!Number.isSafeInteger(u.examples) || u.examples < 0) bad(`examples ${u.examples} is not a count`);
  else if (u.examples > max.examples)
    bad(
      `examples ${u.examples} exceeds the task's ${max.examples} (${t.localSteps} steps x ${t.gradAccum} x ${t.batchSize})`,
    );
  if (!Number.isSafeInteger(u.tokens) || u.tokens < 0) bad(`tokens ${u.tokens} is not a count`);
  else if (u.tokens > max.tokens)
    bad(`tokens ${u.tokens} exceeds the task's ${max.tokens} (${max.examples} examples x maxLength ${t.seq})`);
  else if (Number.isSafeInteger(u.examples) && u.tokens > u.examples * t.seq)
    bad(`tokens ${u.tokens} exceeds its ${u.examples} examples x maxLength ${t.seq}`);
  return problems;
}

/** AdamW as the clients run it (roles.ts trainLocally: constant lr, fresh optimizer state every round). */
export interface AdamWTask {
  readonly localSteps: number;
  readonly lr: number;
  readonly betas: readonly [number, number];
  readonly weightDecay: number;
}

/**
 * An upper bound on ||θ_K - θ_0||₂ that K steps of AdamW (decoupled decay, bias-corrected, any eps >= 0, any
 * gradients) cannot exceed, for `numel` parameters starting at ||θ_0|| = `startNorm`.
 *
 * Per coordinate, Cauchy-Schwarz on m_t = (1-b1) Σ b1^(t-i) g_i against v_t = (1-b2) Σ b2^(t-i) g_i² gives
 * |m̂_t| / sqrt(v̂_t) <= r_t = (1-b1)/(1-b1^t) * sqrt((1-b2^t)/(1-b2)) * sqrt(Σ_{i<t} (b1²/b2)^i), whatever the
 * gradients are (r_1 = 1: the first step is lr * sign). So one step moves θ by at most lr * (r_t sqrt(numel) +
 * wd ||θ_{t-1}||) in L2, and ||θ_t|| grows by at most that. Summed over K steps this is a theorem about honest
 * clients, not a statistic: it can never reject one (honest runs stay bit-identical), yet an update scaled by 10
 * already exceeds it on typical LoRA sizes, since real Adam steps are far from all coordinates at r_t at once.
 * A slack of 1e-6 x K x the final norm bound covers float32 rounding of the trainer's arithmetic.
 */
export function adamwDeltaBound(task: AdamWTask, numel: number, startNorm: number): number {
  const [b1, b2] = task.betas;
  const q = b2 > 0 ? (b1 * b1) / b2 : b1 > 0 ? Infinity : 0;
  const sqrtN = Math.sqrt(numel);
  let geo = 0; // Σ_{i<t} q^i
  let norm = startNorm;
  let bound = 0;
  for (let t = 1; t <= task.localSteps; t++) {
    geo += q ** (t - 1);
    const r =
      b2 > 0 ? ((1 - b1) / (1 - b1 ** t)) * Math.sqrt((1 - b2 ** t) / (1 - b2)) * Math.sqrt(geo) : 1 / (1 - b1 ** t);
    const step = task.lr * (r * sqrtN + task.weightDecay * norm);
    bound += step;
    norm += step;
  }
  // float32 storage rounds every coordinate by at most 2^-24 relative per step: K steps of that, with margin.
  return bound * (1 + 1e-6) + 1e-6 * task.localSteps * (norm + 1);
}

/** ||update - base||₂ over all tensors (float64), or NaN when a tensor is missing or of another length. */
export function deltaNorm(update: ReadonlyMap<string, Float32Array>, base: ReadonlyMap<string, Float32Array>): number {
  let s = 0;
  for (const [name, b] of base) {
    const u = update.get(name);
    if (u === undefined || u.length !== b.length) return NaN;
    for (let i = 0; i < b.length; i++) {
      const d = u[i]! - b[i]!; // same length (checked above)
      s += d * d;
    }
  }
  return Math.sqrt(s);
}

/** ||x||₂ over all tensors (float64). */
export function l2Norm(tensors: ReadonlyMap<string, Float32Array>): number {
  let s = 0;
  for (const v of tensors.values()) {
    for (let i = 0; i < v.length; i++) {
      const x = v[i]!;
      s += x * x;
    }
  }
  return Math.sqrt(s);
}

/** The median of `xs` (mean of the middle two for an even count); NaN for none. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = xs.toSorted((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * How accepted updates are combined: FedAvg (weighted, the default and the reference), or a Byzantine-robust
 * coordinate-wise rule that ignores the weights, as Flower's FedTrimmedAvg (trim `trimFraction` of the values at
 * each end of every coordinate, average the rest) and FedMedian do.
 */
export type AggregationRule = 'fedavg' | 'trimmed-mean' | 'median';

export interface AggregateOptions {
  readonly rule: AggregationRule;
  readonly weighting: Weighting;
  /** trimmed-mean: fraction cut at each end, in [0, 0.5); Flower's default 0.2. */
  readonly trimFraction?: number;
}

/** Combines `updates` by `opts.rule` (see AggregationRule). Same tensor names and lengths required (checkUpdate). */
export function aggregate(updates: readonly ClientUpdate[], opts: AggregateOptions): Map<string, Float32Array> {
  if (opts.rule === 'fedavg') return fedAvg(updates, { weighting: opts.weighting });
  if (updates.length === 0) throw new AggregationError(`${opts.rule}: no updates to aggregate`);
  const beta = opts.trimFraction ?? 0.2;
  if (!(beta >= 0 && beta < 0.5)) throw new AggregationError(`trimmed-mean: trimFraction ${beta} must be in [0, 0.5)`);
  const n = updates.length;
  // Cut the same count at both ends, as Flower's trim_mean (scipy) does: floor(beta * n).
  const cut = opts.rule === 'trimmed-mean' ? Math.floor(beta * n) : 0;
  const first = updates[0]!;
  const out = new Map<string, Float32Array>();
  const col = new Float64Array(n);
  for (const [name, v0] of first.tensors) {
    const columns = updates.map((u) => {
      const v = u.tensors.get(name);
      if (v === undefined || v.length !== v0.length) {
        throw new UpdateRejectedError([
          { clientId: u.clientId, tensor: name, kind: 'shape', message: `does not match client ${first.clientId}` },
        ]);
      }
      return v;
    });
    const res = new Float32Array(v0.length);
    for (let i = 0; i < v0.length; i++) {
      for (let k = 0; k < n; k++) col[k] = columns[k]![i]!;
      col.sort();
      if (opts.rule === 'median') res[i] = n % 2 === 1 ? col[n >> 1]! : (col[(n >> 1) - 1]! + col[n >> 1]!) / 2;
      else {
        let s = 0;
        for (let k = cut; k < n - cut; k++) s += col[k]!;
        res[i] = s / (n - 2 * cut);
      }
    }
    out.set(name, res);
  }
  return out;
}
