/**
 * The run folder of a distributed job, on the model owner's side: the same files the standalone job writes
 * (config.resolved.json, metrics.jsonl, results.json, results.txt, report.html, the PEFT adapter, the merged model),
 * through the same writers (libs/fedbiot run-dir.ts and report/, libs/model adapters.ts). The aggregator opens it
 * when it starts, appends the coordinator's events as they happen, and finishes it when the job completed.
 *
 * Restart: a resumed aggregator reopens the folder (same config, or an error naming the first differing field) and
 * drops the events of the round it is about to re-run, so metrics.jsonl holds each completed round once.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { writeFileAtomic } from '../../libs/engine/src/index.js';
import { type CausalLM, type LoraWeights, exportMerged, savePeftAdapter } from '../../libs/model/src/index.js';
import {
  type JobSpec,
  createRunDir,
  readMetrics,
  MetricsLog,
  METRICS_FILE,
  resultsFromEvents,
  writeResultsJson,
  formatResultsTable,
  writeReportHtml,
  privacySummary,
} from '../../libs/fedbiot/src/index.js';

/** Where run folders go: FEDBIOT_RUNS_DIR, else the spec's job.outDir. */
export function runsDirFrom(env: NodeJS.ProcessEnv, spec: JobSpec): string {
  return env['FEDBIOT_RUNS_DIR'] || spec.job.outDir;
}

/**
 * Whether event `e` belongs to work a run starting at `from` does not redo: the pre-alignment once `preAligned`,
 * train/comm/align/rejected of rounds before `round`, eval of rounds up to `round` (an eval event's round counts
 * completed rounds). `stage` is where a run-folder event keeps the coordinator's alignment phase (pre / round).
 */
export function checkpointed(
  e: { readonly round: number; readonly kind: string; readonly [k: string]: unknown },
  from: { readonly round: number; readonly preAligned: boolean },
): boolean {
  if (e.kind === 'align' && (e['stage'] ?? e['phase']) === 'pre') return from.preAligned;
  return e.kind === 'eval' ? e.round <= from.round : e.round < from.round;
}

export class RunFolder {
  private constructor(
    /** Absolute path of `<runsDir>/<job.id>`. */
    readonly dir: string,
    private readonly spec: JobSpec,
    private readonly metrics: MetricsLog,
  ) {}

  /**
   * Creates (or reopens) `<runsDir>/<job.id>` for a job that continues at `from` (the coordinator's start state).
   * Events of work not checkpointed are dropped: the pre-alignment unless `preAligned`; train/comm/align/rejected
   * of rounds >= `round`; eval of rounds > `round` (an eval event's round counts completed rounds).
   */
  static async open(
    runsDir: string,
    spec: JobSpec,
    from: { readonly round: number; readonly preAligned: boolean },
  ): Promise<RunFolder> {
    const run = await createRunDir(runsDir, spec.job.id!, spec, { resume: true });
    const dir = resolve(run.dir);
    const path = join(dir, METRICS_FILE);
    if (existsSync(path)) {
      const events = await readMetrics(path);
      const kept = events.filter((e) => checkpointed(e, from));
      if (kept.length !== events.length)
        await writeFileAtomic(path, async (fh) =>
          fh.writeFile(kept.map((e) => JSON.stringify(e) + '\n').join(''), 'utf8'),
        );
    }
    return new RunFolder(dir, spec, await MetricsLog.open(dir));
  }

  /**
   * One coordinator event, as the standalone job logs it (phase main; training events carry the method). The
   * coordinator's own `phase` of an alignment (pre / round) is kept as `stage`: `phase` names the job phase here,
   * and a resume must tell the pre-alignment from round 0's alignment.
   */
  log(e: { round: number; kind: string; [k: string]: unknown }): void {
    this.metrics.log({
      ...e,
      ...(e.kind === 'align' ? { stage: e['phase'] } : {}),
      phase: 'main',
      ...(e.kind === 'train' ? { method: this.spec.job.method } : {}),
    });
  }

  /** After a checkpoint: the round's events are on disk. */
  sync(): void {
    this.metrics.sync();
  }

  /**
   * The job completed with `adapter`: results.json, results.txt, report.html, the PEFT adapter and the merged model
   * of the full model `lm` (the owner's). Returns the results table.
   */
  async finish(lm: CausalLM, adapter: LoraWeights): Promise<string> {
    this.metrics.sync();
    const events = await readMetrics(join(this.dir, METRICS_FILE));
    const results = resultsFromEvents(events);
    await writeResultsJson(this.dir, results);
    await writeReportHtml(this.dir, { title: `FedBiOT job ${this.spec.job.id} (distributed)` });
    // With privacy.dp: the final (epsilon, delta) under the table, as the standalone job writes it.
    const table = formatResultsTable(results.rows, results.bytes_per_round) + privacySummary(events);
    await writeFile(join(this.dir, 'results.txt'), table + '\n');
    const checkpoint = lm.checkpoint;
    if (!checkpoint) throw new Error(`model.checkpoint: ${this.spec.model.checkpoint} is not loaded from a folder`);
    await savePeftAdapter(
      join(this.dir, 'adapter'),
      renamed(adapter, 'default'),
      lm.config,
      this.spec.model.checkpoint,
    );
    await exportMerged(
      join(this.dir, 'merged-model'),
      lm.config,
      checkpoint.tensorNames,
      (n) => checkpoint.readFloat32(n),
      [adapter],
      this.spec.model.checkpoint,
    );
    return table;
  }

  close(): void {
    this.metrics.close();
  }
}

/**
 * The aggregator's run folder writer (a provider of AggregatorModule): `<runsDir>/<job.id>`, opened again by every
 * (re)start of the round loop at the state it continues from, the previous one closed first.
 */
export class RunFolderWriter {
  #folder: RunFolder | undefined;

  constructor(
    /** Where run folders go (runsDirFrom when the options name none). */
    readonly runsDir: string,
    private readonly spec: JobSpec,
  ) {}

  /** Closes the open folder (if any) and opens it for a run continuing at `from` (RunFolder.open). */
  async open(from: { readonly round: number; readonly preAligned: boolean }): Promise<RunFolder> {
    this.close();
    return (this.#folder = await RunFolder.open(this.runsDir, this.spec, from));
  }

  /** The folder opened last; throws before the first open. */
  get current(): RunFolder {
    if (!this.#folder) throw new Error('run folder: not opened yet');
    return this.#folder;
  }

  close(): void {
    this.#folder?.close();
    this.#folder = undefined;
  }
}

/**
 * The LoRA under PEFT adapter name `name` (tensor keys carry it), as the standalone job exports it (job.ts keeps
 * the same few lines private).
 */
function renamed(l: LoraWeights, name: string): LoraWeights {
  const from = `.${l.spec.name}.`;
  return {
    spec: { ...l.spec, name },
    tensors: new Map([...l.tensors].map(([k, v]) => [k.replace(from, `.${name}.`), v])),
  };
}
