/**
 * The round coordinator: the bi-level schedule of FedBiOT (and of the methods that are configurations of it),
 * reaching clients, the alignment server and the evaluator only through `RoundPorts`. The standalone runner binds
 * the ports in-process (job-stages.ts, localPorts); the distributed services bind them to NATS (ports-nats.ts).
 *
 *   pre-align R0 x E steps
 *   for each round t:  sample clients -> broadcast adapter + emulator LoRA -> K local steps per client ->
 *                      check updates -> FedAvg (token-weighted) -> E alignment steps -> evaluate -> checkpoint
 */
import type { LoraWeights } from '../../model/src/light.js';
import { clientStatsFields, tensorLayout, unflatten, type SecAggResult } from '../../privacy/src/index.js';
import {
  adamwDeltaBound,
  aggregate,
  checkCounts,
  checkUpdate,
  deltaNorm,
  l2Norm,
  median,
  StreamingFedAvg,
  type AdamWTask,
  type AggregationRule,
  type ClientUpdate,
  type TaskBounds,
  type Weighting,
} from './aggregate.js';
import { UpdateRejectedError, type UpdateProblem } from './errors.js';
import type { JobSpec } from './job-spec.js';
import type { AlignmentStats, ClientSettings, EvalScores } from './roles.js';
import { sampleClients, type PerRound } from './sampling.js';

export interface ClientRoundResult {
  readonly clientId: string;
  readonly adapter: LoraWeights;
  readonly tokens: number;
  readonly examples: number;
  readonly meanLoss: number;
}

/** A client's round result whose adapter went to the UpdateSink (and was not kept): its counts and update size. */
export interface ClientRoundReceipt {
  readonly clientId: string;
  readonly tokens: number;
  readonly examples: number;
  readonly meanLoss: number;
  /** Bytes of the update's float32 tensors (loraBytes of the adapter it carried). */
  readonly bytes: number;
}

/**
 * Where a port may hand each client's result as soon as it holds it (aggregation as updates arrive): the coordinator
 * screens it and folds it into the round's running FedAvg, and the port need not keep the adapter. Never throws.
 */
export type UpdateSink = (result: ClientRoundResult) => void;

/**
 * What a port returns for a round run under secure aggregation (privacy.secureAggregation): the clients' counts and
 * the survivors' sum, never a client's adapter. The sum and the rest are SecAggResult's (libs/privacy): sum_u w_u x_u
 * over the survivors, where x_u = the client's local adapter minus the round's broadcast, flattened in tensorLayout
 * (sorted-name) order and clamped to the clip range, and w_u its weight capped at the public bound W
 * (prepareClientInput); its stats are the survivors' summed client stats (clientStats: clipped count, fixed-point
 * norm sum), masked with the update, from which the privacy event's clipped_clients and mean_update_norm come.
 */
export interface SecureRoundResult extends SecAggResult {
  /** Counts of the clients that reported finishing local training (their messages carry no adapter). */
  readonly receipts: readonly ClientRoundReceipt[];
  /** More fields for the round's `privacy` event (bytes, threshold, rejected messages, ...). */
  readonly detail?: Readonly<Record<string, unknown>>;
}

/**
 * A secure round's result: the receipts of the clients that finished training (`clients`' counts; bytes 0, since no
 * adapter travels) and the SecAgg server's result `r` (only SecAggResult's fields of it), with `detail` if given.
 */
export function secureRoundResult(
  clients: readonly Omit<ClientRoundReceipt, 'bytes'>[],
  r: SecAggResult,
  detail?: Readonly<Record<string, unknown>>,
): SecureRoundResult {
  const { sum, weightSum, stats, survivors, dropped, errorBound } = r;
  return {
    receipts: clients.map(({ clientId, tokens, examples, meanLoss }) => ({
      clientId,
      tokens,
      examples,
      meanLoss,
      bytes: 0,
    })),
    sum,
    weightSum,
    stats,
    survivors,
    dropped,
    errorBound,
    ...(detail ? { detail } : {}),
  };
}

export interface RoundPorts {
  /**
   * Runs local training for `clients` from the broadcast; resolves with the updates that arrived, in planned order.
   * With `sink` (the coordinator passes one when the round's aggregation can stream: FedAvg, no relative norm bound,
   * no aggregate hook), a port may hand each result to it as it arrives and return a ClientRoundReceipt in its place;
   * results returned whole are sunk by the coordinator. Without `sink`, every result must be whole.
   */
  trainClients(
    round: number,
    clients: readonly string[],
    adapter: LoraWeights,
    emulator: LoraWeights,
    sink?: UpdateSink,
  ): Promise<readonly (ClientRoundResult | ClientRoundReceipt)[]>;
  /**
   * Secure aggregation (used instead of trainClients when CoordinatorSettings.secureAggregation is set): runs local
   * training for `clients` and the SecAgg exchange among them; resolves with their counts and the survivors' sum.
   */
  trainClientsSecure?(
    round: number,
    clients: readonly string[],
    adapter: LoraWeights,
    emulator: LoraWeights,
  ): Promise<SecureRoundResult>;
  /** E alignment steps of the emulator against the (new) adapter; null when this method does not align. */
  align(adapter: LoraWeights, steps: number): Promise<{ emulator: LoraWeights; stats: AlignmentStats } | null>;
  /** Scores per (method, client) for the current adapter and emulator. */
  evaluate(
    round: number,
    adapter: LoraWeights,
    emulator: LoraWeights,
  ): Promise<{ method: string; client: string; scores: EvalScores }[]>;
}

export interface CoordinatorSettings {
  readonly rounds: number;
  readonly clientIds: readonly string[];
  readonly perRound: PerRound;
  readonly seed: number;
  readonly preAlignSteps: number;
  readonly alignStepsPerRound: number;
  readonly weighting: Weighting;
  /** Absolute bound on the L2 norm of an update's weights (the job spec's aggregation.maxUpdateNorm). */
  readonly maxUpdateNorm?: number;
  /**
   * The clients' task (local steps, batches, maxLength, AdamW settings). Present: counts above what the task
   * allows are rejected and, unless `normBound` is 'off', so is an update that moved farther from the broadcast
   * than `task.localSteps` AdamW steps can (adamwDeltaBound). aggregationSettingsFor(spec) fills it.
   */
  readonly task?: TaskBounds & AdamWTask;
  /** 'adamw' (default when `task` is given): the AdamW reach bound above; 'off': none. */
  readonly normBound?: 'adamw' | 'off';
  /** Also reject an update whose distance from the broadcast exceeds this many times the round's median. */
  readonly relativeNormBound?: number;
  /** How accepted updates are combined; default 'fedavg'. */
  readonly rule?: AggregationRule;
  readonly trimFraction?: number;
  readonly evalEvery: number;
  /** Whether the broadcast carries the emulator LoRA (FedBiOT: yes, it changes every round). */
  readonly broadcastEmulator: boolean;
  /** Replaces FedAvg of the accepted updates: DP clipping and noise, secure aggregation (privacy-aggregation.ts). */
  readonly aggregate?: (
    round: number,
    global: LoraWeights,
    accepted: readonly ClientUpdate[],
  ) => { adapter: LoraWeights; events: readonly { kind: string; [k: string]: unknown }[] };
  /**
   * Secure aggregation (privacy.secureAggregation, with or without privacy.dp): the round goes through
   * ports.trainClientsSecure and its sum becomes the new adapter (secureRoundAdapter, the standalone hook's server
   * half). `maxWeight` is the public weight bound W the clients capped their weights at.
   */
  readonly secureAggregation?: {
    readonly maxWeight: number;
    /**
     * DP under secure aggregation (the clients clipped and noised before masking): called once per securely
     * aggregated round with the round's sampled and surviving client counts; steps the accountant and returns the
     * `privacy` event's DP fields.
     */
    readonly account?: (round: number, sampled: number, survivors: number) => Record<string, unknown>;
  };
}

export interface CoordinatorState {
  /** Rounds completed so far (the next round to run). */
  readonly round: number;
  readonly adapter: LoraWeights;
  readonly emulator: LoraWeights;
  readonly preAligned: boolean;
}

/** What the coordinator reports as it goes (metrics, checkpoints, progress). */
export interface CoordinatorEvents {
  onEvent(event: { round: number; kind: string; [k: string]: unknown }): void;
  /** Called after every completed round (and after pre-alignment) with the state to persist for resume. */
  onCheckpoint(state: CoordinatorState): Promise<void>;
  /** `kind`: which check failed ('weight' for impossible counts, 'norm', 'non-finite', 'shape', ...). */
  onRejected?(clientId: string, reason: string, kind: string): void;
}

/** The coordinator's aggregation and defence settings of a job (one definition for the standalone and NATS runs). */
export function aggregationSettingsFor(
  spec: JobSpec,
  client: ClientSettings,
): Pick<
  CoordinatorSettings,
  'weighting' | 'maxUpdateNorm' | 'task' | 'normBound' | 'relativeNormBound' | 'rule' | 'trimFraction'
> {
  const a = spec.aggregation;
  return {
    weighting: a.weighting,
    ...(a.maxUpdateNorm !== undefined ? { maxUpdateNorm: a.maxUpdateNorm } : {}),
    task: {
      localSteps: client.localSteps,
      batchSize: client.batchSize,
      gradAccum: client.gradAccum,
      seq: client.seq,
      lr: client.lr,
      betas: client.betas,
      weightDecay: client.weightDecay,
    },
    normBound: a.normBound,
    ...(a.relativeNormBound !== undefined ? { relativeNormBound: a.relativeNormBound } : {}),
    rule: a.rule,
    trimFraction: a.trimFraction,
  };
}

/**
 * Limits of each client's update bucket (BlobStore.ensureBucket): the largest update blob the aggregator will
 * download, from the spec or twice the size an honest update has (`honestUpdateBytes`: the encoded adapter LoRA,
 * whose size depends on the LoRA spec only) plus 1 MiB; and the bucket's JetStream max_bytes, from the spec or
 * max(4, 2 x (keepBlobRounds + 1)) such updates (the rounds of an honest client's updates kept stay well inside it).
 */
export function updateByteLimits(
  spec: JobSpec,
  honestUpdateBytes: number,
): { readonly maxObjectBytes: number; readonly maxBytes: number } {
  const maxObjectBytes = spec.aggregation.maxUpdateBytes ?? 2 * honestUpdateBytes + (1 << 20);
  return {
    maxObjectBytes,
    maxBytes:
      spec.aggregation.clientBucketBytes ?? Math.max(4, 2 * (spec.aggregation.keepBlobRounds + 1)) * maxObjectBytes,
  };
}

/**
 * Every update of a round checked against the broadcast `base`: shapes, finite values, the absolute norm bound,
 * counts the task allows, the AdamW reach bound and (optionally) the distance relative to the round's median.
 * Returns the accepted updates in input order and the rejected ones with their problems.
 */
export function screenUpdates(
  updates: readonly ClientUpdate[],
  base: ReadonlyMap<string, Float32Array>,
  settings: Pick<CoordinatorSettings, 'maxUpdateNorm' | 'task' | 'normBound' | 'relativeNormBound'>,
): { accepted: ClientUpdate[]; rejected: { clientId: string; problems: UpdateProblem[] }[] } {
  const screen = updateScreen(base, settings);
  const passed: { u: ClientUpdate; dist: number }[] = [];
  const rejected: { clientId: string; problems: UpdateProblem[] }[] = [];
  for (const u of updates) {
    const { problems, dist } = screen(u);
    if (problems.length > 0) rejected.push({ clientId: u.clientId, problems });
    else passed.push({ u, dist });
  }
  const k = settings.relativeNormBound;
  if (k === undefined) return { accepted: passed.map((p) => p.u), rejected };
  const med = median(passed.map((p) => p.dist));
  const accepted: ClientUpdate[] = [];
  for (const p of passed) {
    if (p.dist > k * med) {
      rejected.push({
        clientId: p.u.clientId,
        problems: [
          {
            clientId: p.u.clientId,
            kind: 'norm',
            message: `moved ${p.dist.toPrecision(6)} from the broadcast, more than ${k} x the round's median ${med.toPrecision(6)}`,
          },
        ],
      });
    } else accepted.push(p.u);
  }
  return { accepted, rejected };
}

/**
 * The per-update part of screenUpdates (everything but the relative bound, which needs the round's median): one
 * update's problems against the broadcast `base`, and its distance from it (NaN when it has problems).
 */
export function updateScreen(
  base: ReadonlyMap<string, Float32Array>,
  settings: Pick<CoordinatorSettings, 'maxUpdateNorm' | 'task' | 'normBound'>,
): (u: ClientUpdate) => { problems: UpdateProblem[]; dist: number } {
  const reference = new Map([...base].map(([k, v]) => [k, { shape: [v.length] }]));
  const opts = settings.maxUpdateNorm !== undefined ? { maxNorm: settings.maxUpdateNorm } : {};
  const task = settings.task;
  let reach = Infinity;
  if (task && settings.normBound !== 'off') {
    let numel = 0;
    for (const v of base.values()) numel += v.length;
    reach = adamwDeltaBound(task, numel, l2Norm(base));
  }
  return (u) => {
    const problems = [...checkUpdate(u, reference, opts), ...(task ? checkCounts(u, task) : [])];
    const dist = problems.length === 0 ? deltaNorm(u.tensors, base) : NaN;
    if (problems.length === 0 && dist > reach) {
      problems.push({
        clientId: u.clientId,
        kind: 'norm',
        message: `moved ${dist.toPrecision(6)} from the broadcast, more than ${task!.localSteps} AdamW steps of lr ${task!.lr} can (${reach.toPrecision(6)})`,
      });
    }
    return { problems, dist };
  };
}

/**
 * Whether a round's aggregation can fold updates in as they arrive: FedAvg with per-update checks only. Trimmed
 * mean and median need every value of a coordinate at once, the relative norm bound needs the round's median
 * distance, and the privacy hook (clipping, noise, secure aggregation) takes the accepted updates together; those
 * keep the collect-all path.
 */
export function canStream(settings: Pick<CoordinatorSettings, 'rule' | 'relativeNormBound' | 'aggregate'>): boolean {
  return (settings.rule ?? 'fedavg') === 'fedavg' && settings.relativeNormBound === undefined && !settings.aggregate;
}

/** Updates a StreamingFedAvg holds at most while waiting for an earlier planned client (the rest stream in arrival order). */
export const STREAM_MAX_HELD = 8;

export function loraBytes(l: LoraWeights): number {
  let n = 0;
  for (const t of l.tensors.values()) n += t.byteLength;
  return n;
}

/**
 * The server half of secure aggregation (no DP), the same arithmetic as the standalone hook (privacy-aggregation.ts
 * PrivacyAggregation.aggregate): new adapter = global + (sum / W) / (weightSum / W); the global adapter is kept when
 * weightSum is 0. Throws when the sum does not have the adapter's element count.
 */
export function secureRoundAdapter(
  global: LoraWeights,
  r: Pick<SecureRoundResult, 'sum' | 'weightSum'>,
  maxWeight: number,
): LoraWeights {
  const layout = tensorLayout(new Map([...global.tensors].map(([k, v]) => [k, v.length])));
  if (r.sum.length !== layout.total)
    throw new RangeError(`secure sum has ${r.sum.length} elements, the adapter ${layout.total}`);
  if (r.weightSum <= 0) return global;
  const W = maxWeight;
  const sum = Float64Array.from(r.sum, (v) => v / W);
  const denom = r.weightSum / W;
  const mean = unflatten(
    layout,
    Float64Array.from(sum, (v) => v / denom),
  );
  return {
    spec: global.spec,
    tensors: new Map([...global.tensors].map(([k, g]) => [k, g.map((v, i) => v + mean.get(k)![i]!)])),
  };
}

/**
 * The screening that still applies to a securely aggregated round. Per client, nothing that looks at the update:
 * shapes, non-finite values, the absolute norm bound, the AdamW reach bound and the relative bound all need the
 * client's adapter, which is masked (what bounds a client's contribution is the clamp of each element to the clip
 * range R and its weight's cap at W, both applied before masking). A client's published counts are only reported:
 * its weight inside the sum is whatever it masked, so they cannot be removed from it. On the aggregate: the new
 * adapter is a weighted mean of the survivors' adapters, so its norm and its distance from the broadcast are at most
 * the largest of theirs; when it breaks the absolute norm bound or the AdamW reach bound, some client did, and the
 * round's aggregate is refused (adapter kept). Returns the problems of the aggregate (empty: accept).
 */
export function screenSecureAggregate(
  candidate: LoraWeights,
  base: ReadonlyMap<string, Float32Array>,
  settings: Pick<CoordinatorSettings, 'maxUpdateNorm' | 'task' | 'normBound'>,
): UpdateProblem[] {
  const { task: _, ...withoutCounts } = settings;
  const screen = updateScreen(base, withoutCounts);
  const { problems } = screen({ clientId: 'aggregate', tensors: candidate.tensors, tokens: 0, examples: 0 });
  if (problems.length > 0 || !settings.task || settings.normBound === 'off') return problems;
  let numel = 0;
  for (const v of base.values()) numel += v.length;
  const reach = adamwDeltaBound(settings.task, numel, l2Norm(base));
  const dist = deltaNorm(candidate.tensors, base);
  return dist > reach
    ? [
        {
          clientId: 'aggregate',
          kind: 'norm',
          message: `the securely aggregated mean moved ${dist.toPrecision(6)} from the broadcast, more than ${settings.task.localSteps} AdamW steps of lr ${settings.task.lr} can (${reach.toPrecision(6)}): some client's update did`,
        },
      ]
    : [];
}

/** One securely aggregated round: train events, the aggregate, its screening and the privacy event; the new adapter. */
async function secureRound(
  ports: RoundPorts,
  settings: CoordinatorSettings,
  maxWeight: number,
  round: number,
  clients: readonly string[],
  state: CoordinatorState,
  events: CoordinatorEvents,
): Promise<{ adapter: LoraWeights; up: number }> {
  if (clients.length < 2) {
    // A "sum" of one client is that client's update: release nothing (the standalone hook keeps the adapter too).
    events.onEvent({
      round,
      kind: 'privacy',
      clients: clients.length,
      skipped: 'secure aggregation needs at least 2 clients; adapter kept',
    });
    return { adapter: state.adapter, up: 0 };
  }
  if (!ports.trainClientsSecure) throw new Error('secure aggregation is set but the ports have no trainClientsSecure');
  const r = await ports.trainClientsSecure(round, clients, state.adapter, state.emulator);
  for (const c of r.receipts) {
    events.onEvent({
      round,
      kind: 'train',
      client: c.clientId,
      loss: c.meanLoss,
      tokens: c.tokens,
      examples: c.examples,
    });
    if (settings.task)
      for (const p of checkCounts(c, settings.task))
        events.onEvent({
          round,
          kind: 'notice',
          client: c.clientId,
          check: p.kind,
          reason: `${p.message} (reported only: its masked weight is in the sum)`,
        });
  }
  const W = maxWeight;
  const event: { round: number; kind: string; [k: string]: unknown } = {
    round,
    kind: 'privacy',
    clients: clients.length,
    secagg_survivors: r.survivors.length,
    secagg_excluded: r.dropped,
    secagg_error_bound: r.errorBound / W,
    ...r.detail,
  };
  let adapter = state.adapter;
  if (r.weightSum > 0) {
    const candidate = secureRoundAdapter(state.adapter, r, W);
    const problems = screenSecureAggregate(candidate, state.adapter.tensors, settings);
    if (problems.length === 0) adapter = candidate;
    else {
      const reason = problems.map((p) => (p.tensor === undefined ? '' : `tensor ${p.tensor}: `) + p.message).join('; ');
      events.onRejected?.('aggregate', reason, problems[0]!.kind);
      events.onEvent({ round, kind: 'rejected', client: 'aggregate', check: problems[0]!.kind, reason });
      event['skipped'] = 'aggregate failed screening: adapter kept';
    }
  } else event['skipped'] = 'weight sum 0: adapter kept';
  event['weight_fill'] = r.survivors.length > 0 ? r.weightSum / (r.survivors.length * W) : 0;
  // Sums over the survivors only (no client's norm is seen); clipping is a DP step, so its count comes with DP.
  const { clipped_clients, mean_update_norm } = clientStatsFields(r.stats, r.survivors.length);
  event['mean_update_norm'] = mean_update_norm;
  const account = settings.secureAggregation?.account;
  if (account) Object.assign(event, account(round, clients.length, r.survivors.length), { clipped_clients });
  events.onEvent(event);
  // Upload: each client's masked input is 8 (L + 1) bytes before encoding; the port's detail has the exact bytes.
  return { adapter, up: r.survivors.length * 8 * (r.sum.length + 1) };
}

export async function runRounds(
  ports: RoundPorts,
  settings: CoordinatorSettings,
  start: CoordinatorState,
  events: CoordinatorEvents,
): Promise<CoordinatorState> {
  let state = start;
  if (!state.preAligned) {
    const aligned = await ports.align(state.adapter, settings.preAlignSteps);
    if (aligned) {
      state = { ...state, emulator: aligned.emulator };
      events.onEvent({ round: 0, kind: 'align', phase: 'pre', ...aligned.stats });
    }
    state = { ...state, preAligned: true };
    await events.onCheckpoint(state);
  }
  for (let round = state.round; round < settings.rounds; round++) {
    const clients = sampleClients(settings.clientIds, settings.perRound, settings.seed, round);
    if (settings.secureAggregation) {
      const { adapter, up } = await secureRound(
        ports,
        settings,
        settings.secureAggregation.maxWeight,
        round,
        clients,
        state,
        events,
      );
      const down =
        clients.length * (loraBytes(state.adapter) + (settings.broadcastEmulator ? loraBytes(state.emulator) : 0));
      events.onEvent({ round, kind: 'comm', down, up, clients: clients.length });
      state = await finishRound(ports, settings, events, round, adapter, state.emulator);
      continue;
    }
    // Aggregation as updates arrive where the settings allow it: each update is screened and folded into the
    // running FedAvg as the port hands it over, and dropped; the others are screened and aggregated together below.
    const stream = canStream(settings)
      ? {
          fedAvg: new StreamingFedAvg(settings.weighting, clients, STREAM_MAX_HELD),
          screen: updateScreen(state.adapter.tensors, settings),
          seen: new Set<string>(),
          rejected: new Map<string, UpdateProblem[]>(),
        }
      : null;
    const sink: UpdateSink | undefined = stream
      ? (r) => {
          if (stream.seen.has(r.clientId)) return;
          stream.seen.add(r.clientId);
          const u = { clientId: r.clientId, tensors: r.adapter.tensors, tokens: r.tokens, examples: r.examples };
          let { problems } = stream.screen(u);
          if (problems.length === 0) {
            try {
              stream.fedAvg.add(u);
            } catch (e) {
              problems =
                e instanceof UpdateRejectedError
                  ? [...e.problems]
                  : [{ clientId: r.clientId, kind: 'shape', message: (e as Error).message }];
            }
          }
          if (problems.length > 0) {
            stream.rejected.set(r.clientId, problems);
            stream.fedAvg.skip(r.clientId);
          }
        }
      : undefined;
    const results = await ports.trainClients(round, clients, state.adapter, state.emulator, sink);
    if (sink) for (const r of results) if ('adapter' in r) sink(r);
    for (const r of results) {
      events.onEvent({
        round,
        kind: 'train',
        client: r.clientId,
        loss: r.meanLoss,
        tokens: r.tokens,
        examples: r.examples,
      });
    }
    // Validate every update before averaging: one bad client (NaN, wrong shapes, impossible counts, moved too far)
    // is rejected and logged, the others are still averaged.
    const screened = stream
      ? {
          accepted: [],
          rejected: results.flatMap((r) => {
            const problems = stream.rejected.get(r.clientId);
            return problems ? [{ clientId: r.clientId, problems }] : [];
          }),
        }
      : screenUpdates(
          results.map((r) => {
            if (!('adapter' in r))
              throw new Error(`trainClients: ${r.clientId}'s result has no adapter and no sink was given`);
            return { clientId: r.clientId, tensors: r.adapter.tensors, tokens: r.tokens, examples: r.examples };
          }),
          state.adapter.tensors,
          settings,
        );
    for (const { clientId, problems } of screened.rejected) {
      const reason = problems.map((p) => (p.tensor === undefined ? '' : `tensor ${p.tensor}: `) + p.message).join('; ');
      const kind = problems[0]!.kind;
      events.onRejected?.(clientId, reason, kind);
      events.onEvent({ round, kind: 'rejected', client: clientId, check: kind, reason });
    }
    const accepted = screened.accepted;
    let adapter = state.adapter;
    if (stream) {
      if (stream.fedAvg.count > 0) adapter = { spec: state.adapter.spec, tensors: stream.fedAvg.result() };
      else events.onEvent({ round, kind: 'skipped', reason: 'no acceptable update this round; adapter kept' });
    } else if (accepted.length > 0 && settings.aggregate) {
      const r = settings.aggregate(round, state.adapter, accepted);
      adapter = r.adapter;
      for (const e of r.events) events.onEvent({ ...e, round });
    } else if (accepted.length > 0)
      adapter = {
        spec: state.adapter.spec,
        tensors: aggregate(accepted, {
          rule: settings.rule ?? 'fedavg',
          weighting: settings.weighting,
          ...(settings.trimFraction !== undefined ? { trimFraction: settings.trimFraction } : {}),
        }),
      };
    else events.onEvent({ round, kind: 'skipped', reason: 'no acceptable update this round; adapter kept' });
    // Bytes on the wire this round: the broadcast (adapter, and the emulator LoRA when it changes) to each
    // selected client, and one adapter update back from each.
    const down =
      clients.length * (loraBytes(state.adapter) + (settings.broadcastEmulator ? loraBytes(state.emulator) : 0));
    const up = results.reduce((s, r) => s + ('adapter' in r ? loraBytes(r.adapter) : r.bytes), 0);
    events.onEvent({ round, kind: 'comm', down, up, clients: clients.length });
    state = await finishRound(ports, settings, events, round, adapter, state.emulator);
  }
  return state;
}

/** A round's end: E alignment steps, evaluation when due, checkpoint. */
async function finishRound(
  ports: RoundPorts,
  settings: CoordinatorSettings,
  events: CoordinatorEvents,
  round: number,
  adapter: LoraWeights,
  previousEmulator: LoraWeights,
): Promise<CoordinatorState> {
  let emulator = previousEmulator;
  const aligned = await ports.align(adapter, settings.alignStepsPerRound);
  if (aligned) {
    emulator = aligned.emulator;
    events.onEvent({ round, kind: 'align', phase: 'round', ...aligned.stats });
  }
  const state: CoordinatorState = { round: round + 1, adapter, emulator, preAligned: true };
  if ((round + 1) % settings.evalEvery === 0 || round + 1 === settings.rounds) {
    for (const e of await ports.evaluate(round + 1, adapter, emulator)) {
      events.onEvent({
        round: round + 1,
        kind: 'eval',
        method: e.method,
        client: e.client,
        test_loss: e.scores.testLoss,
        accuracy: e.scores.accuracy,
      });
    }
  }
  await events.onCheckpoint(state);
  return state;
}
