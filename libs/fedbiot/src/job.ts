/**
 * A whole federated job in one process (the embedded default of the main job): base evaluation, then the stages of
 * the job's plan (plan.ts: the job's method, FedBiOT by default, then its enabled baselines), then results.json,
 * report.html, the final adapter in PEFT format and a merged model. Resumable from the last checkpoint.
 */
import { join, resolve } from 'node:path';
import { truncate, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import {
  CausalLM,
  type LoraWeights,
  defaultCacheRoot,
  loadTokenizer,
  exportMerged,
  savePeftAdapter,
} from '../../model/src/index.js';
import { loadFederation } from './federation.js';
import { checkModelPath, type JobSpec } from './job-spec.js';
import { JobEta, etaStages } from './eta.js';
import { evalBatches } from './roles.js';
import { evaluateBase, restoreLora, runFederated, runLocalOnly, type JobCtx } from './job-stages.js';
import { RunDirError } from './errors.js';
import { BASE_ROW } from './methods.js';
import { initialLoras, modelLoadOptions, planJob, type JobPlan, type Stage } from './plan.js';
import {
  createRunDir,
  discardUnstartedRun,
  listCheckpoints,
  loadCheckpoint,
  loadLatestCheckpoint,
  readMetrics,
  MetricsLog,
  METRICS_FILE,
  type LoadedCheckpoint,
  type RunDir,
} from './run-dir.js';
import { privacySummary } from './privacy-aggregation.js';
import { KNOWLEDGE_FEDERATION, knowledgeFederationDir } from './demo-model.js';
import { singleRunVerdict } from './report/verdict.js';
import { resultsFromEvents, writeResultsJson } from './report/results-json.js';
import { formatResultsTable } from './report/results-table.js';
import { writeReportHtml } from './report/report-html.js';

export interface JobOptions {
  /** Reopen runs/<job.id> and continue from its last completed round. */
  readonly resume?: boolean;
  /** Delete an earlier run folder of job.id and start afresh (createRunDir). */
  readonly overwrite?: boolean;
  /** Lines for the user (progress goes to stderr through progress()). */
  readonly log?: (line: string) => void;
  /** Called after each checkpoint is on disk with the stage's label ('main' or a baseline) and its round (tests stop a job there). */
  readonly afterCheckpoint?: (stage: string, round: number) => void;
}

export interface JobResult {
  readonly runDir: string;
  readonly table: string;
}

/** Runs (or resumes) the job described by `spec`. The run folder's path is in the result. */
export async function runJob(specIn: JobSpec, opts: JobOptions = {}): Promise<JobResult> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const t0 = performance.now();
  const spec = await withDemoFederation(specIn);
  // Every input check (model folder, federation files and records, partition, public data, templates and
  // tokenization) before a run folder exists or a model loads: a mistake in the inputs costs seconds, leaves nothing.
  checkModelPath(spec);
  const data = await loadFederation(spec, await loadTokenizer(spec.model.checkpoint), defaultCacheRoot());
  const run = await createRunDir(spec.job.outDir, spec.job.id, spec, {
    resume: opts.resume === true,
    overwrite: opts.overwrite === true,
  });
  const runDir = resolve(run.dir);
  const lm = await CausalLM.load(spec.model.checkpoint, modelLoadOptions(spec));
  let metrics: MetricsLog | undefined;
  try {
    const plan = planJob(spec, lm.config.numLayers);
    const resume = run.resumed ? await resumePoint(runDir, plan, log) : undefined;
    metrics = await MetricsLog.open(runDir);
    const ctx: JobCtx = {
      plan,
      lm,
      data,
      runDir,
      metrics,
      log,
      ...(opts.afterCheckpoint ? { afterCheckpoint: opts.afterCheckpoint } : {}),
      overall: new JobEta(
        etaStages(
          plan,
          data.clients.length,
          data.clients.reduce((n, c) => n + evalBatches(c.test, c.testItems, spec.clients.batchSize), 0),
        ),
      ),
    };
    describeRun(ctx);
    if (!resume) await evaluateBase(ctx);
    await runStages(ctx, resume);
    return await finish(ctx, run, t0);
  } catch (e) {
    metrics?.close();
    if (await discardUnstartedRun(run)) log(`removed ${runDir}: the run failed before its first checkpoint`);
    throw e;
  } finally {
    metrics?.close();
    await lm.release();
  }
}

/**
 * The plan's stages in order, from the resume point on: the job's method (its final adapter exported), then its
 * baselines; local-only trains on the method's final emulator.
 */
async function runStages(ctx: JobCtx, resume: ResumePoint | undefined): Promise<void> {
  let mainEmulator: LoraWeights | undefined;
  for (const [i, stage] of ctx.plan.stages.entries()) {
    if (resume && i < resume.stage) continue;
    ctx.log(stageIntro(ctx.plan, stage));
    if (!stage.federated) {
      await runLocalOnly(ctx, stage, mainEmulator ?? (await storedMainEmulator(ctx)));
      continue;
    }
    const final = await runFederated(ctx, stage, resume?.stage === i ? resume.from : undefined);
    if (stage.role === 'main') {
      await exportAdapter(ctx, final.adapter);
      mainEmulator = final.emulator;
    }
  }
}

/** 'demo-knowledge' names the knowledge demo's federation for the job's seed (generated once into the cache). */
async function withDemoFederation(spec: JobSpec): Promise<JobSpec> {
  if (spec.data.federation !== KNOWLEDGE_FEDERATION) return spec;
  // The resolved config records the folder it became.
  const federation = await knowledgeFederationDir(
    defaultCacheRoot(),
    spec.job.seed,
    spec.data.publicCorpus,
    spec.data.knowledgeClients,
  );
  return { ...spec, data: { ...spec.data, federation } };
}

/** Where a resumed run continues: stages[stage], from checkpoint `from` (absent: from the stage's start). */
interface ResumePoint {
  readonly stage: number;
  readonly from?: LoadedCheckpoint;
}

/**
 * The resume point of a run folder: the last stage (in plan order) that holds a checkpoint, at its newest one;
 * earlier stages are complete, base evaluation too. metrics.jsonl is cut back to exactly the bytes that checkpoint
 * covers: events of a round that did not complete (train, comm, align, rejected... of round r) carry the same round
 * number as the completed round r's eval, so only the recorded size tells them apart. Undefined: no checkpoint yet,
 * the run starts over.
 */
async function resumePoint(
  runDir: string,
  plan: JobPlan,
  log: (line: string) => void,
): Promise<ResumePoint | undefined> {
  let at: { stage: number; dir: string } | undefined;
  for (const [i, s] of plan.stages.entries()) {
    const newest = (await listCheckpoints(runDir, s.checkpoints)).at(-1);
    if (newest) at = { stage: i, dir: newest.dir };
  }
  const metricsPath = join(runDir, METRICS_FILE);
  if (!at) {
    if (existsSync(metricsPath)) await truncate(metricsPath, 0);
    log(`resuming ${runDir} from the start (no checkpoint yet)`);
    return undefined;
  }
  const checkpoint = await loadCheckpoint(at.dir);
  const json = checkpoint.json as { metricsBytes?: unknown; fresh?: unknown };
  if (typeof json.metricsBytes !== 'number' || checkpoint.round > plan.spec.job.rounds)
    throw new RunDirError(
      `${checkpoint.dir}: a checkpoint of an earlier run-folder layout (one round counter for all methods); ` +
        `--overwrite starts the run again`,
    );
  if (existsSync(metricsPath)) await truncate(metricsPath, json.metricsBytes);
  const stage = plan.stages[at.stage]!;
  if (json.fresh === true) {
    log(`resuming ${runDir} at the start of ${stage.label} (${stage.method})`);
    return { stage: at.stage };
  }
  log(`resuming ${runDir} at ${stage.label} (${stage.method}), round ${checkpoint.round}`);
  return { stage: at.stage, from: checkpoint };
}

/**
 * The job method's final emulator LoRA, which the local-only baseline trains on, when the method ran in an earlier
 * process: from the method's last checkpoint, or the initial emulator when it has none (method local-only).
 */
async function storedMainEmulator(ctx: JobCtx): Promise<LoraWeights> {
  const init = initialLoras(ctx.plan, ctx.lm).emulator;
  const last = await loadLatestCheckpoint(ctx.runDir);
  return last && (last.json as { fresh?: unknown }).fresh !== true ? restoreLora(init, last, 'emulator') : init;
}

function describeRun({ plan, lm, data, log }: JobCtx): void {
  const { split } = plan;
  log(
    `model ${plan.spec.model.checkpoint}: ${lm.config.numLayers} layers, d=${lm.config.hiddenSize}, ${lm.checkpoint?.parameterCount()} parameters`,
  );
  log(
    `data ${data.source}: ${data.clients.map((c) => `${c.id} ${c.train.length}/${c.test.length}`).join(', ')} (train/test); public windows ${data.publicWindows.length}`,
  );
  log(
    `split: adapter layers ${split.adapterLayers.join(',')}; emulator keeps ${split.emulatorLayers.join(',')} of block [${split.teacher.start}, ${split.teacher.end})`,
  );
}

/** What a stage is about to do, for the user. */
function stageIntro(plan: JobPlan, stage: Stage): string {
  const { spec, split, numLayers } = plan;
  if (stage.role === 'main') return `running ${stage.method} for ${spec.job.rounds} rounds ...`;
  // A baseline trains the job method's adapter layers (equal trainable parameters, equal client compute), so the
  // comparison isolates the method. The published FedOT adapter (first 2 + last 2 layers, twice the trainable
  // layers) is an experiment method: job.method=offsite-tuning, split.adapterBottom=2.
  const how = [
    `the same adapter layers ${split.adapterLayers.join(',')} as ${spec.job.method}`,
    stage.federated ? undefined : 'each client alone, on the pre-aligned emulator',
    stage.clientLayers.length === numLayers ? 'clients hold the full model' : undefined,
    stage.alignStepsPerRound > 0 ? 'per-round alignment' : stage.federated ? 'no per-round alignment' : undefined,
    stage.preAlignSteps > 0 && stage.alignStepsPerRound === 0
      ? `${stage.preAlignSteps} one-shot alignment steps`
      : undefined,
  ].filter((x) => x !== undefined);
  return `baseline ${stage.method} (${how.join(', ')}) ...`;
}

/** The job method's adapter in PEFT format (adapter/) and folded into the full model (merged-model/). */
async function exportAdapter({ plan, lm, runDir }: JobCtx, adapter: LoraWeights): Promise<void> {
  const base = plan.spec.model.checkpoint;
  // An absolute base path: peft resolves a relative one against the loading process's folder.
  await savePeftAdapter(join(runDir, 'adapter'), renamed(adapter, 'default'), lm.config, resolve(base));
  await exportMerged(
    join(runDir, 'merged-model'),
    lm.config,
    lm.checkpoint!.tensorNames,
    (n) => lm.checkpoint!.readFloat32(n),
    [adapter],
    base,
  );
}

/** results.json, report.html and results.txt from metrics.jsonl; the results table and verdict for the user. */
async function finish({ lm, data, runDir, metrics, log }: JobCtx, run: RunDir, t0: number): Promise<JobResult> {
  metrics.sync();
  const events = await readMetrics(join(runDir, METRICS_FILE));
  const results = resultsFromEvents(events);
  await writeResultsJson(runDir, results);
  const baseNoEos = events.find(
    (e) => e.kind === 'eval' && e['method'] === BASE_ROW && e['client'] === 'all' && 'test_loss_no_eos' in e,
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
}

function renamed(l: LoraWeights, name: string): LoraWeights {
  const from = `.${l.spec.name}.`;
  return {
    spec: { ...l.spec, name },
    tensors: new Map([...l.tensors].map(([k, v]) => [k.replace(from, `.${name}.`), v])),
  };
}
