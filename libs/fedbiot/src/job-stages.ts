/**
 * The stages of a standalone job (job.ts runs them in order): the base model's evaluation, a federated method through
 * the round coordinator with in-process ports, and the local-only baseline. What a stage does comes from its plan
 * (plan.ts Stage, from METHOD_TABLE); every event goes to metrics.jsonl with the stage's label as `phase`.
 */
import { statSync } from 'node:fs';
import { stateFromTensors, stateToTensors } from '../../engine/src/index.js';
import type { CausalLM, LoraWeights } from '../../model/src/index.js';
import type { TokenizedExample } from '../../data/src/index.js';
import { ExampleStream, chunks, toTokenBatch } from './batches.js';
import {
  runRounds,
  type ClientRoundResult,
  type CoordinatorEvents,
  type CoordinatorState,
  type RoundPorts,
} from './coordinator.js';
import type { ClientData, FederationData } from './federation.js';
import { RunDirError } from './errors.js';
import { BASE_ROW } from './methods.js';
import {
  clientSeed,
  coordinatorSettings,
  initialLoras,
  pooledScores,
  streamSeed,
  type JobPlan,
  type Stage,
} from './plan.js';
import { privacyFor } from './privacy-aggregation.js';
import type { JobEta } from './eta.js';
import { progress, progressNote, roundsEta } from './progress.js';
import {
  AlignmentServer,
  copyLora,
  evalBatches,
  evalVariant,
  evaluateVariant,
  initialLora,
  trainLocally,
  type EvalScores,
} from './roles.js';
import { saveCheckpoint, type LoadedCheckpoint, type MetricsLog } from './run-dir.js';

/** What the stages of one run share. */
export interface JobCtx {
  readonly plan: JobPlan;
  readonly lm: CausalLM;
  readonly data: FederationData;
  readonly runDir: string;
  readonly metrics: MetricsLog;
  readonly log: (line: string) => void;
  readonly afterCheckpoint?: (stage: string, round: number) => void;
  /** The whole job's progress (stage, round, time left), one line on stderr per finished round. */
  readonly overall?: JobEta;
}

/** The overall line after step `step` of `stage` ended, when its start was seen in this process. */
function noteOverall(ctx: JobCtx, stage: Stage, step: number): void {
  const line = ctx.overall?.done(ctx.plan.stages.indexOf(stage), step);
  if (line !== undefined) progressNote(line);
}

/** Size of metrics.jsonl once everything logged so far is on disk: a checkpoint covers exactly these bytes. */
export function metricsBytes(metrics: MetricsLog): number {
  metrics.sync();
  return statSync(metrics.path).size;
}

/** A LoRA like `like` with the tensors `<prefix>/<name>` of a checkpoint (copied). */
export function restoreLora(like: LoraWeights, from: LoadedCheckpoint, prefix: string): LoraWeights {
  const tensors = new Map<string, Float32Array>();
  for (const k of like.tensors.keys()) {
    const t = from.tensors.get(`${prefix}/${k}`);
    if (!t) throw new RunDirError(`${from.dir}: the checkpoint has no tensor ${prefix}/${k}`);
    tensors.set(k, Float32Array.from(t));
  }
  return { spec: like.spec, tensors };
}

// ---- evaluation ------------------------------------------------------------------------------------------------

/** Scores plus the response loss without the end-of-sequence token (see withoutEos). */
type Scored = { method: string; client: string; scores: EvalScores & { lossNoEos?: number; tokensNoEos?: number } };

/**
 * The test examples with the end-of-sequence target taken out of the loss: a model never trained on the question
 * format (the base model) puts little mass on ending after a one-word answer, and that one token can dominate its
 * response loss; the loss without it shows how well the answer itself is predicted.
 */
function withoutEos(examples: readonly TokenizedExample[], eos: number | undefined): TokenizedExample[] {
  return examples.map((ex) => {
    const at = ex.inputIds.lastIndexOf(eos ?? -1);
    if (at < 0 || !ex.lossMask[at]) return ex;
    const lossMask = ex.lossMask.slice();
    lossMask[at] = 0;
    return { ...ex, lossMask };
  });
}

/** Result row `method` of `variant` on each client's test set, then the pooled 'all' row. */
async function evaluateOn(
  ctx: JobCtx,
  method: string,
  variant: { layers?: readonly number[]; loras?: readonly LoraWeights[] },
  clients: readonly ClientData[] = ctx.data.clients,
): Promise<Scored[]> {
  const { spec } = ctx.plan;
  const out: Scored[] = [];
  const B = spec.clients.batchSize;
  const seq = spec.data.maxLength;
  const total = clients.reduce((n, c) => n + evalBatches(c.test, c.testItems, B), 0);
  const bar = total > 0 ? progress(`${method} evaluation`, total) : undefined;
  const t0 = performance.now();
  for (const c of clients) {
    const scores = await evaluateVariant(ctx.lm, variant, c.test, c.testItems, {
      batch: B,
      seq,
      maxNewTokens: spec.eval.maxNewTokens,
      onBatch: () => bar?.tick(1, c.id),
    });
    let nll = 0;
    let tokens = 0;
    for (const group of chunks(withoutEos(c.test, ctx.lm.tokenizer?.eosTokenId), B)) {
      const r = await ctx.lm.lossSum(toTokenBatch(group, B, seq, 0), variant);
      nll += r.nllSum;
      tokens += r.tokens;
    }
    out.push({
      method,
      client: c.id,
      scores: { ...scores, lossNoEos: nll / Math.max(tokens, 1), tokensNoEos: tokens },
    });
  }
  bar?.done();
  ctx.overall?.measure('eval', total * (variant.layers?.length ?? ctx.plan.numLayers), performance.now() - t0);
  const tNo = out.reduce((a, o) => a + (o.scores.tokensNoEos ?? 0), 0);
  out.push({
    method,
    client: 'all',
    scores: {
      ...pooledScores(out.map((o) => o.scores)),
      lossNoEos:
        out.reduce((a, o) => a + (o.scores.lossNoEos ?? 0) * (o.scores.tokensNoEos ?? 0), 0) / Math.max(tNo, 1),
      tokensNoEos: tNo,
    },
  });
  return out;
}

function logEval(ctx: JobCtx, phase: string, round: number, rows: Scored[]): void {
  for (const r of rows)
    ctx.metrics.log({
      round,
      phase,
      kind: 'eval',
      method: r.method,
      client: r.client,
      test_loss: r.scores.testLoss,
      accuracy: r.scores.accuracy,
      items: r.scores.items,
      ...(r.scores.lossNoEos === undefined ? {} : { test_loss_no_eos: r.scores.lossNoEos }),
    });
}

/** The untouched full model on every client's test set; then the run's first checkpoint (its method not begun). */
export async function evaluateBase(ctx: JobCtx): Promise<void> {
  ctx.log('evaluating the base model ...');
  logEval(ctx, 'base', 0, await evaluateOn(ctx, BASE_ROW, { layers: ctx.lm.allLayers, loras: [] }));
  await saveCheckpoint(ctx.runDir, {
    round: 0,
    json: { round: 0, fresh: true, metricsBytes: metricsBytes(ctx.metrics) },
    tensors: new Map(),
  });
}

// ---- federated stages ------------------------------------------------------------------------------------------

/**
 * One federated stage through the round coordinator with in-process ports, from its start or from checkpoint `from`
 * (one of this stage's); returns the final state. Each checkpoint goes to the stage's folder (Stage.checkpoints).
 */
export async function runFederated(ctx: JobCtx, stage: Stage, from?: LoadedCheckpoint): Promise<CoordinatorState> {
  const { plan, lm, data } = ctx;
  const saved = (from?.json ?? {}) as Record<string, unknown>;
  const init = initialLoras(plan, lm);
  const adapter = from ? restoreLora(init.adapter, from, 'adapter') : init.adapter;
  const emulator = from ? restoreLora(init.emulator, from, 'emulator') : init.emulator;
  const streamStates = (saved['streams'] as Record<string, { epoch: number; pos: number }> | undefined) ?? {};
  const streams = new Map(
    data.clients.map((c) => [
      c.id,
      new ExampleStream<TokenizedExample>(c.train, streamSeed(plan.spec, c), streamStates[c.id]),
    ]),
  );
  const server =
    stage.preAlignSteps > 0 || stage.alignStepsPerRound > 0
      ? new AlignmentServer(
          lm,
          plan.split,
          plan.specs,
          plan.alignment,
          data.publicWindows,
          emulator,
          saved['serverStream'] as { epoch: number; pos: number } | undefined,
        )
      : undefined;
  if (server && from && saved['optimizerMeta']) {
    const optTensors = new Map([...from.tensors].filter(([k]) => k.startsWith('optim.')));
    await server.importOptimizerState(stateFromTensors(saved['optimizerMeta'] as string, optTensors));
  }
  const privacy = privacyFor(plan.spec, stage.label, data.clients.length, saved['privacy'], ctx.log);
  const evalExtras = new Map<string, Record<string, number>>();
  const start: CoordinatorState = { round: from ? from.round : 0, adapter, emulator, preAligned: from !== undefined };
  const clientIds = data.clients.map((c) => c.id);
  return runRounds(
    localPorts(ctx, stage, streams, server, evalExtras),
    coordinatorSettings(plan, stage, clientIds, privacy?.aggregate),
    start,
    stageEvents(ctx, stage, evalExtras, () => {
      const json: Record<string, unknown> = {
        streams: Object.fromEntries([...streams].map(([id, s]) => [id, s.state])),
      };
      const tensors = new Map<string, Float32Array>();
      if (privacy) json['privacy'] = privacy.state();
      const opt = server?.exportOptimizerState();
      if (server && opt) {
        const t = stateToTensors(opt, 'optim.');
        for (const [k, v] of t.tensors) tensors.set(k, v);
        json['optimizerMeta'] = t.meta;
        json['serverStream'] = server.streamState;
      }
      return { json, tensors };
    }),
  );
}

/**
 * The coordinator's events of a stage: metrics.jsonl events labelled with the stage, and checkpoints into the stage's
 * folder holding the coordinator state plus `extra()` (the stage's streams, alignment server and privacy state).
 */
function stageEvents(
  ctx: JobCtx,
  stage: Stage,
  evalExtras: ReadonlyMap<string, Record<string, number>>,
  extra: () => { json: Record<string, unknown>; tensors: Map<string, Float32Array> },
): CoordinatorEvents {
  return {
    onEvent: (e) => {
      // Training events carry the method so the report draws one training-loss line per method and client.
      if (e.kind === 'comm' && stage.role === 'baseline')
        ctx.metrics.log({ ...e, phase: stage.label, kind: 'comm-baseline' });
      else
        ctx.metrics.log({
          ...e,
          phase: stage.label,
          ...(e.kind === 'train' ? { method: stage.method } : {}),
          // The coordinator's phase of an alignment (pre-alignment or a round's) survives as its stage.
          ...(e.kind === 'align' ? { stage: e['phase'], method: stage.method } : {}),
          ...(e.kind === 'eval' ? evalExtras.get(`${String(e['method'])}\u0000${String(e['client'])}`) : {}),
        });
    },
    onRejected: (client, reason) => ctx.log(`  rejected update from ${client}: ${reason}`),
    onCheckpoint: async (state) => {
      const tensors = new Map<string, Float32Array>();
      for (const [k, v] of state.adapter.tensors) tensors.set(`adapter/${k}`, v);
      for (const [k, v] of state.emulator.tensors) tensors.set(`emulator/${k}`, v);
      const { json, tensors: more } = extra();
      for (const [k, v] of more) tensors.set(k, v);
      await saveCheckpoint(
        ctx.runDir,
        { round: state.round, json: { round: state.round, metricsBytes: metricsBytes(ctx.metrics), ...json }, tensors },
        { under: stage.checkpoints },
      );
      if (state.round > 0) noteOverall(ctx, stage, state.round - 1);
      ctx.afterCheckpoint?.(stage.label, state.round);
    },
  };
}

/**
 * The coordinator's ports in one process: clients train one after another on their streams, the alignment server
 * (if the stage aligns) aligns the emulator, evaluation scores the stage's rows. `evalExtras` collects per-row fields
 * the coordinator's eval events do not carry (items, loss without EOS), keyed by method and client.
 */
function localPorts(
  ctx: JobCtx,
  stage: Stage,
  streams: ReadonlyMap<string, ExampleStream<TokenizedExample>>,
  server: AlignmentServer | undefined,
  evalExtras: Map<string, Record<string, number>>,
): RoundPorts {
  const { plan, lm } = ctx;
  const rounds = plan.spec.job.rounds;
  const eta = roundsEta(rounds);
  return {
    trainClients: async (round, clients, adapterNow, emulatorNow) => {
      eta.begin(round);
      ctx.overall?.start(plan.stages.indexOf(stage), round);
      const out: ClientRoundResult[] = [];
      const steps = plan.clientSettings.localSteps;
      const bar = progress(`${stage.label} round ${round + 1}/${rounds} local training`, clients.length * steps);
      const t0 = performance.now();
      for (const id of clients) {
        const r = await trainLocally(
          lm,
          stage.clientLayers,
          copyLora(adapterNow),
          stage.withEmulator ? [emulatorNow] : [],
          streams.get(id)!,
          plan.clientSettings,
          clientSeed(plan.spec, round, id),
          (loss) => bar.tick(1, `${id} loss ${loss.toFixed(3)}`),
        );
        out.push({ clientId: id, adapter: r.adapter, tokens: r.tokens, examples: r.examples, meanLoss: r.meanLoss });
      }
      bar.done();
      ctx.overall?.measure('train', clients.length * steps * stage.clientLayers.length, performance.now() - t0);
      return out;
    },
    align: async (adapterNow, steps) => {
      if (!server || steps === 0) return null;
      const bar = progress(`${stage.label} alignment`, steps);
      const stats = await server.align(adapterNow, steps, (s) =>
        bar.tick(1, `L2 ${s.l2.toFixed(4)} KL ${s.kl.toFixed(4)}`),
      );
      bar.done(`L2 ${stats.l2.toFixed(4)} KL ${stats.kl.toFixed(4)}`);
      return { emulator: server.emulator, stats };
    },
    evaluate: async (round, adapterNow, emulatorNow) => {
      const rows: Scored[] = [];
      for (const m of stage.rows)
        rows.push(
          ...(await evaluateOn(ctx, m.row, evalVariant(m.on, plan.split, plan.numLayers, adapterNow, emulatorNow))),
        );
      const all = rows
        .filter((r) => r.client === 'all')
        .map((r) => `${r.method} loss ${r.scores.testLoss.toFixed(3)} acc ${(100 * r.scores.accuracy).toFixed(1)}%`);
      ctx.log(`  round ${round}: ${all.join(' | ')}${eta.after(round)}`);
      // The coordinator logs the standard fields; the extras join its event in onEvent.
      for (const r of rows)
        evalExtras.set(`${r.method}\u0000${r.client}`, {
          items: r.scores.items,
          ...(r.scores.lossNoEos === undefined ? {} : { test_loss_no_eos: r.scores.lossNoEos }),
        });
      return rows;
    },
  };
}

// ---- local-only ------------------------------------------------------------------------------------------------

/** Local-only: every client trains its own adapter on `emulator` for the job's rounds, never aggregated. */
export async function runLocalOnly(ctx: JobCtx, stage: Stage, emulator: LoraWeights): Promise<void> {
  const { plan, lm, data } = ctx;
  const { spec } = plan;
  const [row] = stage.rows;
  if (!row) throw new Error(`${stage.method} reports no result row`);
  const scores: Scored[] = [];
  for (const [i, c] of data.clients.entries()) {
    ctx.overall?.start(plan.stages.indexOf(stage), i);
    let adapter = initialLora(plan.specs.adapter, lm, plan.seeds.adapter);
    const stream = new ExampleStream<TokenizedExample>(c.train, streamSeed(spec, c));
    const bar = progress(`${stage.method} ${c.id}`, spec.job.rounds * plan.clientSettings.localSteps);
    const t0 = performance.now();
    for (let round = 0; round < spec.job.rounds; round++) {
      const r = await trainLocally(
        lm,
        stage.clientLayers,
        adapter,
        [emulator],
        stream,
        plan.clientSettings,
        clientSeed(spec, round, c.id),
        (loss) => bar.tick(1, `loss ${loss.toFixed(3)}`),
      );
      adapter = r.adapter;
      ctx.metrics.log({
        round,
        phase: stage.label,
        kind: 'train',
        method: stage.method,
        client: c.id,
        loss: r.meanLoss,
      });
    }
    bar.done();
    const work = spec.job.rounds * plan.clientSettings.localSteps * stage.clientLayers.length;
    ctx.overall?.measure('train', work, performance.now() - t0);
    const variant = evalVariant(row.on, plan.split, plan.numLayers, adapter, emulator);
    const [scored] = await evaluateOn(ctx, row.row, variant, [c]);
    scores.push(scored!);
    noteOverall(ctx, stage, i);
  }
  const all = { method: row.row, client: 'all', scores: pooledScores(scores.map((s) => s.scores)) };
  logEval(ctx, stage.label, spec.job.rounds, [...scores, all]);
  ctx.log(`  ${row.row}: loss ${all.scores.testLoss.toFixed(3)} acc ${(100 * all.scores.accuracy).toFixed(1)}%`);
}
