/**
 * A whole federated job in one process (the embedded default of the main job): base evaluation, the job's method
 * (FedBiOT by default) through the round coordinator, the enabled baselines, then results.json, report.html, the
 * final adapter in PEFT format and a merged model. Resumable from the last completed round.
 */
import { join, resolve } from 'node:path';
import { truncate, writeFile } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import { stateFromTensors, stateToTensors } from '../../engine/src/index.js';
import { CausalLM, type LoraWeights } from '../../model/src/causal-lm.js';
import { defaultCacheRoot } from '../../model/src/graph-store.js';
import { loadTokenizer } from '../../model/src/tokenizer.js';
import { exportMerged, savePeftAdapter } from '../../model/src/adapters.js';
import type { TokenizedExample } from '../../data/src/index.js';
import { ExampleStream, chunks, toTokenBatch } from './batches.js';
import {
  aggregationSettingsFor,
  runRounds,
  type ClientRoundResult,
  type CoordinatorState,
  type RoundPorts,
} from './coordinator.js';
import { clientStreamSeed, loadFederation, type ClientData, type FederationData } from './federation.js';
import { checkModelPath, type JobSpec } from './job-spec.js';
import { progress, roundsEta } from './progress.js';
import {
  AlignmentServer,
  clientSettingsFor,
  copyLora,
  evalBatches,
  evalVariant,
  evaluateVariant,
  initialLora,
  loraSpecs,
  trainLocally,
  type EvalScores,
} from './roles.js';
import {
  createRunDir,
  discardUnstartedRun,
  loadLatestCheckpoint,
  readMetrics,
  saveCheckpoint,
  MetricsLog,
  METRICS_FILE,
  type MetricsEvent,
} from './run-dir.js';
import { splitModel, type ModelSplit } from './split.js';
import { privacyFor, privacySummary } from './privacy-aggregation.js';
import { clientTrainingSeed } from './seeds.js';
import { KNOWLEDGE_FEDERATION, knowledgeFederationDir } from './demo-model.js';
import { singleRunVerdict } from './report/verdict.js';
import { resultsFromEvents, writeResultsJson, type ResultMethod } from './report/results-json.js';
import { formatResultsTable } from './report/results-table.js';
import { writeReportHtml } from './report/report-html.js';
import { writeFileAtomic } from '../../engine/src/safetensors.js';

export interface JobOptions {
  /** Reopen runs/<job.id> and continue from its last completed round. */
  readonly resume?: boolean;
  /** Delete an earlier run folder of job.id and start afresh (createRunDir). */
  readonly overwrite?: boolean;
  /** Lines for the user (progress goes to stderr through progress()). */
  readonly log?: (line: string) => void;
  /** Called after each checkpoint is on disk (tests use it to stop a job at a given point). */
  readonly afterCheckpoint?: (phase: string, round: number) => void;
}

export interface JobResult {
  readonly runDir: string;
  readonly table: string;
}

const PHASES = ['base', 'main', 'offsite-tuning', 'local-only', 'fedavg-lora'] as const;
type Phase = (typeof PHASES)[number];
/** Checkpoint "rounds" are global: phase index * PHASE_STRIDE + round, so one ordered list serves all phases. */
const PHASE_STRIDE = 100_000;
/** Run-dir folder holding the main phase's final emulator LoRA (a checkpoint of its own, see runJob). */
const MAIN_EMULATOR_DIR = 'main-emulator';

/** Size of metrics.jsonl once everything logged so far is on disk: a checkpoint covers exactly these bytes. */
function metricsBytes(metrics: MetricsLog): number {
  metrics.sync();
  return statSync(metrics.path).size;
}

interface Ctx {
  readonly spec: JobSpec;
  readonly lm: CausalLM;
  readonly data: FederationData;
  readonly runDir: string;
  readonly metrics: MetricsLog;
  readonly log: (line: string) => void;
  readonly seq: number;
  readonly afterCheckpoint?: (phase: string, round: number) => void;
}

/** Mean of per-client scores weighted by their tokens (loss) and items (accuracy): the 'all' row. */
function pooled(scores: readonly EvalScores[]): EvalScores {
  const tokens = scores.reduce((s, x) => s + x.tokens, 0);
  const items = scores.reduce((s, x) => s + x.items, 0);
  return {
    testLoss: scores.reduce((s, x) => s + x.testLoss * x.tokens, 0) / Math.max(tokens, 1),
    accuracy: scores.reduce((s, x) => s + x.accuracy * x.items, 0) / Math.max(items, 1),
    tokens,
    items,
  };
}

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

async function evaluateOn(
  ctx: Ctx,
  method: string,
  variantFor: (client: ClientData) => { layers?: readonly number[]; loras?: readonly LoraWeights[] },
  clients: readonly ClientData[] = ctx.data.clients,
): Promise<Scored[]> {
  const out: Scored[] = [];
  const B = ctx.spec.clients.batchSize;
  const total = clients.reduce((n, c) => n + evalBatches(c.test, c.testItems, B), 0);
  const bar = total > 0 ? progress(`${method} evaluation`, total) : undefined;
  for (const c of clients) {
    const variant = variantFor(c);
    const scores = await evaluateVariant(ctx.lm, variant, c.test, c.testItems, {
      batch: B,
      seq: ctx.seq,
      maxNewTokens: ctx.spec.eval.maxNewTokens,
      onBatch: () => bar?.tick(1, c.id),
    });
    let nll = 0;
    let tokens = 0;
    for (const group of chunks(withoutEos(c.test, ctx.lm.tokenizer?.eosTokenId), B)) {
      const r = await ctx.lm.lossSum(toTokenBatch(group, B, ctx.seq, 0), variant);
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
  const tNo = out.reduce((a, o) => a + (o.scores.tokensNoEos ?? 0), 0);
  out.push({
    method,
    client: 'all',
    scores: {
      ...pooled(out.map((o) => o.scores)),
      lossNoEos:
        out.reduce((a, o) => a + (o.scores.lossNoEos ?? 0) * (o.scores.tokensNoEos ?? 0), 0) / Math.max(tNo, 1),
      tokensNoEos: tNo,
    },
  });
  return out;
}

function logEval(ctx: Ctx, phase: Phase, round: number, rows: Scored[]): void {
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

interface FederatedPhaseConfig {
  readonly phase: Phase;
  readonly split: ModelSplit;
  /** 'fedbiot': per-round alignment + AdapEmu/AdapFu; 'offsite-tuning': no per-round alignment; 'fedavg-lora': full model. */
  readonly kind: 'fedbiot' | 'offsite-tuning' | 'fedavg-lora';
  readonly preAlignSteps: number;
  readonly alignStepsPerRound: number;
  readonly evalMethods: readonly { method: ResultMethod; on: 'emu' | 'full' }[];
}

/** One federated method run through the coordinator with in-process ports; returns the final state. */
async function runFederated(
  ctx: Ctx,
  cfg: FederatedPhaseConfig,
  resumeFrom?: { round: number; json: Record<string, unknown>; tensors: ReadonlyMap<string, Float32Array> },
): Promise<CoordinatorState> {
  const { spec, lm, data } = ctx;
  const specs = loraSpecs(cfg.split, spec.lora);
  const clientLayers = cfg.kind === 'fedavg-lora' ? lm.allLayers : cfg.split.clientLayers;
  const pick = (prefix: string, l: LoraWeights): LoraWeights =>
    resumeFrom
      ? {
          spec: l.spec,
          tensors: new Map(
            [...l.tensors.keys()].map((k) => [k, Float32Array.from(resumeFrom.tensors.get(`${prefix}/${k}`)!)]),
          ),
        }
      : l;
  let adapter = pick('adapter', initialLora(specs.adapter, lm, spec.job.seed + 1));
  const emulator = pick('emulator', initialLora(specs.emulator, lm, spec.job.seed + 2));
  const streamStates =
    (resumeFrom?.json['streams'] as Record<string, { epoch: number; pos: number }> | undefined) ?? {};
  const streams = new Map(
    data.clients.map((c) => [
      c.id,
      new ExampleStream<TokenizedExample>(c.train, clientStreamSeed(spec.job.seed, c), streamStates[c.id]),
    ]),
  );
  const server =
    cfg.kind === 'fedavg-lora' || (cfg.preAlignSteps === 0 && cfg.alignStepsPerRound === 0)
      ? undefined
      : new AlignmentServer(
          lm,
          cfg.split,
          specs,
          {
            lambda: spec.alignment.lambda,
            mu: spec.alignment.mu,
            lr: spec.alignment.lr,
            batchSize: spec.alignment.batchSize,
            seq: ctx.seq,
            seed: spec.job.seed,
          },
          data.publicWindows,
          emulator,
          resumeFrom?.json['serverStream'] as { epoch: number; pos: number } | undefined,
        );
  if (server && resumeFrom?.json['optimizerMeta']) {
    const optTensors = new Map([...resumeFrom.tensors].filter(([k]) => k.startsWith('optim.')));
    await server.importOptimizerState(stateFromTensors(resumeFrom.json['optimizerMeta'] as string, optTensors));
  }
  const settings = clientSettingsFor(spec);
  const eta = roundsEta(spec.job.rounds);
  const privacy = privacyFor(spec, cfg.phase, data.clients.length, resumeFrom?.json['privacy'], ctx.log);
  const evalExtras = new Map<string, Record<string, number>>();
  const ports: RoundPorts = {
    trainClients: async (round, clients, adapterNow, emulatorNow) => {
      eta.begin(round);
      const out: ClientRoundResult[] = [];
      const bar = progress(
        `${cfg.phase} round ${round + 1}/${spec.job.rounds} local training`,
        clients.length * settings.localSteps,
      );
      for (const id of clients) {
        const frozen = cfg.kind === 'fedavg-lora' ? [] : [emulatorNow];
        const r = await trainLocally(
          lm,
          clientLayers,
          copyLora(adapterNow),
          frozen,
          streams.get(id)!,
          settings,
          clientTrainingSeed(spec.job.seed, round, id),
          (loss) => bar.tick(1, `${id} loss ${loss.toFixed(3)}`),
        );
        out.push({ clientId: id, adapter: r.adapter, tokens: r.tokens, examples: r.examples, meanLoss: r.meanLoss });
      }
      bar.done();
      return out;
    },
    align: async (adapterNow, steps) => {
      if (!server || steps === 0) return null;
      const bar = progress(`${cfg.phase} alignment`, steps);
      const stats = await server.align(adapterNow, steps, (s) =>
        bar.tick(1, `L2 ${s.l2.toFixed(4)} KL ${s.kl.toFixed(4)}`),
      );
      bar.done(`L2 ${stats.l2.toFixed(4)} KL ${stats.kl.toFixed(4)}`);
      return { emulator: server.emulator, stats };
    },
    evaluate: async (round, adapterNow, emulatorNow) => {
      const rows: Scored[] = [];
      for (const m of cfg.evalMethods) {
        const variant = evalVariant(m.on, cfg.split, lm.config.numLayers, adapterNow, emulatorNow);
        rows.push(...(await evaluateOn(ctx, m.method, () => variant)));
      }
      const all = rows
        .filter((r) => r.client === 'all')
        .map((r) => `${r.method} loss ${r.scores.testLoss.toFixed(3)} acc ${(100 * r.scores.accuracy).toFixed(1)}%`);
      ctx.log(`  round ${round}: ${all.join(' | ')}${eta.after(round)}`);
      // The coordinator logs the standard fields; the extras join its event in onEvent below.
      for (const r of rows)
        evalExtras.set(`${r.method}\u0000${r.client}`, {
          items: r.scores.items,
          ...(r.scores.lossNoEos === undefined ? {} : { test_loss_no_eos: r.scores.lossNoEos }),
        });
      return rows;
    },
  };
  const start: CoordinatorState = resumeFrom
    ? { round: resumeFrom.round, adapter, emulator, preAligned: true }
    : { round: 0, adapter, emulator, preAligned: false };
  const phaseIndex = PHASES.indexOf(cfg.phase);
  const final = await runRounds(
    ports,
    {
      rounds: spec.job.rounds,
      clientIds: data.clients.map((c) => c.id),
      perRound: spec.clients.perRound,
      seed: spec.job.seed,
      preAlignSteps: cfg.preAlignSteps,
      alignStepsPerRound: cfg.alignStepsPerRound,
      ...aggregationSettingsFor(spec, settings),
      evalEvery: spec.eval.every,
      broadcastEmulator: cfg.kind === 'fedbiot',
      ...(privacy ? { aggregate: privacy.aggregate } : {}),
    },
    start,
    {
      onEvent: (e) => {
        // Training events carry the method so the report draws one training-loss line per method and client.
        const method = cfg.phase === 'main' ? spec.job.method : cfg.phase;
        if (e.kind === 'comm' && cfg.phase !== 'main')
          ctx.metrics.log({ ...e, phase: cfg.phase, kind: 'comm-baseline' });
        else
          ctx.metrics.log({
            ...e,
            phase: cfg.phase,
            ...(e.kind === 'train' ? { method } : {}),
            // The coordinator's phase of an alignment (pre-alignment or a round's) survives as its stage.
            ...(e.kind === 'align' ? { stage: e['phase'], method } : {}),
            ...(e.kind === 'eval' ? evalExtras.get(`${String(e['method'])}\u0000${String(e['client'])}`) : {}),
          });
      },
      onRejected: (client, reason) => ctx.log(`  rejected update from ${client}: ${reason}`),
      onCheckpoint: async (state) => {
        ctx.metrics.sync();
        const tensors = new Map<string, Float32Array>();
        for (const [k, v] of state.adapter.tensors) tensors.set(`adapter/${k}`, v);
        for (const [k, v] of state.emulator.tensors) tensors.set(`emulator/${k}`, v);
        const json: Record<string, unknown> = {
          phase: cfg.phase,
          round: state.round,
          metricsBytes: metricsBytes(ctx.metrics),
          streams: Object.fromEntries([...streams].map(([id, s]) => [id, s.state])),
        };
        if (privacy) json['privacy'] = privacy.state();
        const opt = server?.exportOptimizerState();
        if (server && opt) {
          const t = stateToTensors(opt, 'optim.');
          for (const [k, v] of t.tensors) tensors.set(k, v);
          json['optimizerMeta'] = t.meta;
          json['serverStream'] = server.streamState;
        }
        await saveCheckpoint(ctx.runDir, { round: phaseIndex * PHASE_STRIDE + state.round, json, tensors });
        ctx.afterCheckpoint?.(cfg.phase, state.round);
      },
    },
  );
  adapter = final.adapter;
  return final;
}

/** Local-only baseline: every client trains its own adapter on the emulator, never aggregated. */
async function runLocalOnly(ctx: Ctx, split: ModelSplit, emulator: LoraWeights): Promise<void> {
  const { spec, lm, data } = ctx;
  const specs = loraSpecs(split, spec.lora);
  const settings = clientSettingsFor(spec);
  const scores = [];
  for (const c of data.clients) {
    let adapter = initialLora(specs.adapter, lm, spec.job.seed + 1);
    const stream = new ExampleStream<TokenizedExample>(c.train, clientStreamSeed(spec.job.seed, c));
    const bar = progress(`local-only ${c.id}`, spec.job.rounds * settings.localSteps);
    for (let round = 0; round < spec.job.rounds; round++) {
      const r = await trainLocally(
        lm,
        split.clientLayers,
        adapter,
        [emulator],
        stream,
        settings,
        clientTrainingSeed(spec.job.seed, round, c.id),
        (loss) => bar.tick(1, `loss ${loss.toFixed(3)}`),
      );
      adapter = r.adapter;
      ctx.metrics.log({
        round,
        phase: 'local-only',
        kind: 'train',
        method: 'local-only',
        client: c.id,
        loss: r.meanLoss,
      });
    }
    bar.done();
    const [row] = await evaluateOn(ctx, 'local-only', () => ({ layers: lm.allLayers, loras: [adapter] }), [c]);
    scores.push(row!);
  }
  const all = { method: 'local-only', client: 'all', scores: pooled(scores.map((s) => s.scores)) };
  logEval(ctx, 'local-only', spec.job.rounds, [...scores, all]);
  ctx.log(`  local-only: loss ${all.scores.testLoss.toFixed(3)} acc ${(100 * all.scores.accuracy).toFixed(1)}%`);
}

/** Runs (or resumes) the job described by `spec`. The run folder's path is in the result. */
export async function runJob(specIn: JobSpec, opts: JobOptions = {}): Promise<JobResult> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const t0 = performance.now();
  // 'demo-knowledge' names the knowledge demo's federation for this seed (generated once into the cache); the
  // resolved config records the folder it became.
  const spec: JobSpec =
    specIn.data.federation === KNOWLEDGE_FEDERATION
      ? {
          ...specIn,
          data: { ...specIn.data, federation: await knowledgeFederationDir(defaultCacheRoot(), specIn.job.seed) },
        }
      : specIn;
  // Every input check (model folder, federation files and records, partition, public data, templates and
  // tokenization) before a run folder exists or a model loads: a mistake in the inputs costs seconds, leaves nothing.
  checkModelPath(spec);
  const cacheRoot = defaultCacheRoot();
  const data = await loadFederation(spec, await loadTokenizer(spec.model.checkpoint), cacheRoot);
  const run = await createRunDir(spec.job.outDir, spec.job.id, spec, {
    resume: opts.resume === true,
    overwrite: opts.overwrite === true,
  });
  const runDir = resolve(run.dir);
  const checkpoint = run.resumed ? await loadLatestCheckpoint(runDir) : undefined;
  const resumePhase = checkpoint ? ((checkpoint.json as { phase: Phase }).phase ?? 'base') : undefined;
  const resumeIndex = resumePhase ? PHASES.indexOf(resumePhase) : -1;
  if (run.resumed) {
    // Keep only metrics the checkpoint covers: earlier phases, and rounds of its phase it completed.
    const metricsPath = join(runDir, METRICS_FILE);
    const events: MetricsEvent[] = existsSync(metricsPath) ? await readMetrics(metricsPath) : [];
    const localRound = checkpoint ? checkpoint.round % PHASE_STRIDE : -1;
    const bytes = (checkpoint?.json as { metricsBytes?: unknown } | undefined)?.metricsBytes;
    if (typeof bytes === 'number' || !checkpoint) {
      // Exactly what was logged when the checkpoint was written: events of a round that did not complete (train,
      // comm, align, rejected... of round r carry r, like the completed round r's eval) cannot be told apart by
      // their round number, so the round filter below kept them and the re-run logged them twice.
      if (existsSync(metricsPath)) await truncate(metricsPath, typeof bytes === 'number' ? bytes : 0);
    } else {
      // Run folders from before checkpoints recorded the metrics size.
      const kept = events.filter((e) => {
        const p = PHASES.indexOf((e['phase'] as Phase) ?? 'base');
        return p < resumeIndex || (p === resumeIndex && e.round <= localRound);
      });
      await writeFileAtomic(metricsPath, async (fh) =>
        fh.writeFile(kept.map((e) => JSON.stringify(e) + '\n').join(''), 'utf8'),
      );
    }
    log(
      checkpoint
        ? `resuming ${runDir} at phase ${resumePhase}, round ${localRound}`
        : `resuming ${runDir} from the start (no checkpoint yet)`,
    );
  }
  const metrics = await MetricsLog.open(runDir);
  const lm = await CausalLM.load(spec.model.checkpoint, {
    provider: spec.model.provider,
    ...(spec.model.threads ? { threads: spec.model.threads } : {}),
    ...(spec.model.weightsDtype ? { weightsDtype: spec.model.weightsDtype } : {}),
  });
  try {
    log(
      `model ${spec.model.checkpoint}: ${lm.config.numLayers} layers, d=${lm.config.hiddenSize}, ${lm.checkpoint?.parameterCount()} parameters`,
    );
    log(
      `data ${data.source}: ${data.clients.map((c) => `${c.id} ${c.train.length}/${c.test.length}`).join(', ')} (train/test); public windows ${data.publicWindows.length}`,
    );
    const ctx: Ctx = {
      spec,
      lm,
      data,
      runDir,
      metrics,
      log,
      seq: spec.data.maxLength,
      ...(opts.afterCheckpoint ? { afterCheckpoint: opts.afterCheckpoint } : {}),
    };
    const L = lm.config.numLayers;
    const main = spec.job.method;
    const fedbiotSplit = splitModel({
      numLayers: L,
      adapterBottom: main === 'offsite-tuning' ? spec.split.adapterBottom : 0,
      adapterTop: spec.split.adapterLayers,
      dropRate: spec.split.dropRate,
    });
    log(
      `split: adapter layers ${fedbiotSplit.adapterLayers.join(',')}; emulator keeps ${fedbiotSplit.emulatorLayers.join(',')} of block [${fedbiotSplit.teacher.start}, ${fedbiotSplit.teacher.end})`,
    );
    const resumeFor = (phase: Phase) =>
      checkpoint && resumePhase === phase
        ? {
            round: checkpoint.round % PHASE_STRIDE,
            json: checkpoint.json as Record<string, unknown>,
            tensors: checkpoint.tensors,
          }
        : undefined;
    const done = (phase: Phase): boolean => resumeIndex > PHASES.indexOf(phase);

    if (!done('base') && resumePhase !== 'base') {
      log('evaluating the base model ...');
      const rows = await evaluateOn(ctx, 'base', () => ({ layers: lm.allLayers, loras: [] }));
      logEval(ctx, 'base', 0, rows);
      await saveCheckpoint(runDir, {
        round: 0,
        json: { phase: 'main', round: 0, fresh: true, metricsBytes: metricsBytes(metrics) },
        tensors: new Map(),
      });
    }
    let mainState: CoordinatorState | undefined;
    // job.method local-only has no federated phase: the local-only phase below is the method.
    if (!done('main') && main !== 'local-only') {
      log(`running ${main} for ${spec.job.rounds} rounds ...`);
      const r = resumeFor('main');
      mainState = await runFederated(
        ctx,
        {
          phase: 'main',
          split: fedbiotSplit,
          kind: main === 'offsite-tuning' ? 'offsite-tuning' : main === 'fedavg-lora' ? 'fedavg-lora' : 'fedbiot',
          preAlignSteps:
            main === 'fedbiot'
              ? spec.alignment.preRounds * spec.alignment.stepsPerRound
              : (spec.baselines.oneShotAlignSteps ?? 0),
          alignStepsPerRound: main === 'fedbiot' ? spec.alignment.stepsPerRound : 0,
          evalMethods:
            main === 'fedbiot'
              ? [
                  { method: 'fedbiot-adapemu', on: 'emu' },
                  { method: 'fedbiot-adapfu', on: 'full' },
                ]
              : [{ method: main as ResultMethod, on: 'full' }],
        },
        r && !(r.json['fresh'] === true) ? r : undefined,
      );
      const adapterDir = join(runDir, 'adapter');
      // An absolute base path: peft resolves a relative one against the loading process's folder.
      await savePeftAdapter(
        adapterDir,
        renamed(mainState.adapter, 'default'),
        lm.config,
        resolve(spec.model.checkpoint),
      );
      await exportMerged(
        join(runDir, 'merged-model'),
        lm.config,
        lm.checkpoint!.tensorNames,
        (n) => lm.checkpoint!.readFloat32(n),
        [mainState.adapter],
        spec.model.checkpoint,
      );
      // The local-only baseline trains on this emulator; a resume past the main phase reads it back from here.
      await saveCheckpoint(
        join(runDir, MAIN_EMULATOR_DIR),
        {
          round: 0,
          json: { phase: 'main', final: true },
          tensors: new Map(mainState.emulator.tensors),
        },
        { keep: 1 },
      );
      await saveCheckpoint(runDir, {
        round: PHASES.indexOf('offsite-tuning') * PHASE_STRIDE,
        json: { phase: 'offsite-tuning', round: 0, fresh: true, metricsBytes: metricsBytes(metrics) },
        tensors: new Map(),
      });
    }
    if (main === 'fedbiot' && spec.baselines.offsiteTuning && !done('offsite-tuning')) {
      // The same adapter layers as FedBiOT (equal trainable parameters, equal client compute): the comparison then
      // isolates FedBiOT's per-round alignment. The published FedOT adapter (first 2 + last 2 layers, twice the
      // trainable layers) is an experiment method: job.method=offsite-tuning, split.adapterBottom=2.
      log(
        `baseline offsite-tuning (the same adapter layers ${fedbiotSplit.adapterLayers.join(',')} as FedBiOT, no per-round alignment${spec.baselines.oneShotAlignSteps ? `, ${spec.baselines.oneShotAlignSteps} one-shot alignment steps` : ''}) ...`,
      );
      const r = resumeFor('offsite-tuning');
      await runFederated(
        ctx,
        {
          phase: 'offsite-tuning',
          split: fedbiotSplit,
          kind: 'offsite-tuning',
          preAlignSteps: spec.baselines.oneShotAlignSteps ?? 0,
          alignStepsPerRound: 0,
          evalMethods: [{ method: 'offsite-tuning', on: 'full' }],
        },
        r && !(r.json['fresh'] === true) ? r : undefined,
      );
    }
    if ((spec.baselines.localOnly || main === 'local-only') && !done('local-only')) {
      log('baseline local-only (each client alone, on the pre-aligned emulator) ...');
      const init = initialLora(loraSpecs(fedbiotSplit, spec.lora).emulator, lm, spec.job.seed + 2);
      const stored = mainState ? undefined : await loadLatestCheckpoint(join(runDir, MAIN_EMULATOR_DIR));
      const emulator = mainState?.emulator ?? (stored ? { spec: init.spec, tensors: stored.tensors } : init);
      await runLocalOnly(ctx, fedbiotSplit, emulator);
    }
    if (main === 'fedbiot' && spec.baselines.fedavgLora) {
      log('baseline fedavg-lora (clients hold the full model) ...');
      const r = resumeFor('fedavg-lora');
      await runFederated(
        ctx,
        {
          phase: 'fedavg-lora',
          split: fedbiotSplit,
          kind: 'fedavg-lora',
          preAlignSteps: 0,
          alignStepsPerRound: 0,
          evalMethods: [{ method: 'fedavg-lora', on: 'full' }],
        },
        r && !(r.json['fresh'] === true) ? r : undefined,
      );
    }
    metrics.sync();
    const events = await readMetrics(join(runDir, METRICS_FILE));
    const results = resultsFromEvents(events);
    await writeResultsJson(runDir, results);
    const baseNoEos = events.find(
      (e) => e.kind === 'eval' && e['method'] === 'base' && e['client'] === 'all' && 'test_loss_no_eos' in e,
    )?.['test_loss_no_eos'];
    const verdict = singleRunVerdict(
      results.rows,
      data.clients.reduce((s, c) => s + c.testItems.length, 0),
      {
        ...(typeof baseNoEos === 'number' ? { lossNoEos: baseNoEos } : {}),
        vocabSize: lm.config.vocabSize,
      },
    );
    await writeReportHtml(runDir, { title: `FedBiOT job ${run.id}`, verdict });
    const table =
      formatResultsTable(results.rows, results.bytes_per_round) +
      privacySummary(events) +
      '\n' +
      verdict.join('\n') +
      '\n';
    await writeFile(join(runDir, 'results.txt'), table + '\n');
    log(`\n${table}`);
    log(`finished in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    return { runDir, table };
  } catch (e) {
    metrics.close();
    if (await discardUnstartedRun(run)) log(`removed ${runDir}: the run failed before its first checkpoint`);
    throw e;
  } finally {
    metrics.close();
    await lm.release();
  }
}

function renamed(l: LoraWeights, name: string): LoraWeights {
  const from = `.${l.spec.name}.`;
  return {
    spec: { ...l.spec, name },
    tensors: new Map([...l.tensors].map(([k, v]) => [k.replace(from, `.${name}.`), v])),
  };
}
