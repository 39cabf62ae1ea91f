/**
 * The whole job's time left, for the standalone job's overall progress line (`npm start`): the job runs its plan's
 * stages one after another (the method's rounds, each baseline's rounds, local-only), and after every round the user
 * reads where the job is and about how long it still takes.
 *
 * The estimate: a stage that has run rounds costs its own mean round time per round left. A stage not started yet
 * costs its work per round at the measured rates: training in client steps x the layers a client runs through (a
 * full-model baseline's round is dearer than an emulator round), evaluation in test batches x the layers of the
 * evaluated model, each rate measured on what ran so far in this process (the base evaluation gives the evaluation
 * rate before the first round). Until both rates are known, the first measured stage's round time scaled by the
 * total work stands in.
 */
import type { JobPlan } from './plan.js';
import { formatDuration } from './progress.js';

export interface EtaStage {
  /** Shown in the line (the stage's method). */
  readonly label: string;
  /** Steps of the stage's own progress: its rounds (local-only: its clients, each trained alone for every round). */
  readonly rounds: number;
  /** What one step is called in the line: 'round' or 'client'. */
  readonly unit: 'round' | 'client';
  /** Training work of one step: client steps x client layers. */
  readonly trainWork: number;
  /** Evaluation work of one step: test batches x layers of the evaluated model, summed over the rows scored. */
  readonly evalWork: number;
}

/** Measured milliseconds per unit of training and of evaluation work (absent: not measured yet). */
export interface EtaRates {
  readonly train?: number;
  readonly eval?: number;
}

/** Where the job is: stage index `stage` has completed `done` of its steps. */
export interface EtaPosition {
  readonly stage: number;
  readonly done: number;
}

/**
 * Milliseconds left of the job's stages after `at`, from `measured[i]` (durations in ms of the steps of stage i
 * that ran in this process; absent or empty: none) and the work rates. Undefined while no step has been measured.
 */
export function remainingMs(
  stages: readonly EtaStage[],
  at: EtaPosition,
  measured: readonly (readonly number[] | undefined)[],
  rates: EtaRates = {},
): number | undefined {
  const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
  const ref = measured.findIndex((m) => m !== undefined && m.length > 0);
  if (ref < 0) return undefined;
  const refStage = stages[ref];
  const refMs = mean(measured[ref]!);
  const work = (s: EtaStage): number => s.trainWork + s.evalWork;
  const msPerStep = (i: number): number => {
    const own = measured[i];
    if (own && own.length > 0) return mean(own);
    const s = stages[i]!;
    if ((rates.train !== undefined || s.trainWork === 0) && (rates.eval !== undefined || s.evalWork === 0))
      return s.trainWork * (rates.train ?? 0) + s.evalWork * (rates.eval ?? 0);
    return refStage && work(refStage) > 0 ? (refMs * work(s)) / work(refStage) : refMs;
  };
  let left = 0;
  for (let i = at.stage; i < stages.length; i++) {
    const s = stages[i]!;
    const steps = i === at.stage ? Math.max(0, s.rounds - at.done) : s.rounds;
    left += steps * msPerStep(i);
  }
  return left;
}

/** `overall: stage 2/3 offsite-tuning, round 3/5; ~2m10s left of the job` (no estimate yet: no time part). */
export function overallLine(stages: readonly EtaStage[], at: EtaPosition, leftMs: number | undefined): string {
  const s = stages[at.stage];
  if (!s) throw new RangeError(`overallLine: no stage ${at.stage} of ${stages.length}`);
  const where = `overall: stage ${at.stage + 1}/${stages.length} ${s.label}, ${s.unit} ${at.done}/${s.rounds}`;
  if (leftMs === undefined) return where;
  return leftMs <= 0 ? `${where}; job done` : `${where}; ~${formatDuration(leftMs)} left of the job`;
}

/** The measurements of one process's run: call `start` as a step begins, `done` as it ends; `done` returns the line. */
export class JobEta {
  private readonly measured: number[][];
  private readonly began = new Map<number, number>();
  private readonly spent = { train: { ms: 0, work: 0 }, eval: { ms: 0, work: 0 } };

  constructor(
    readonly stages: readonly EtaStage[],
    private readonly now: () => number = Date.now,
  ) {
    this.measured = stages.map(() => []);
  }

  /** `ms` spent on `work` units of training or evaluation (feeds the rates for stages not started yet). */
  measure(kind: 'train' | 'eval', work: number, ms: number): void {
    if (!(work > 0) || !(ms >= 0)) return;
    this.spent[kind].ms += ms;
    this.spent[kind].work += work;
  }

  /** The rates measured so far. */
  rates(): EtaRates {
    const rate = (k: 'train' | 'eval'): number | undefined =>
      this.spent[k].work > 0 ? this.spent[k].ms / this.spent[k].work : undefined;
    const train = rate('train');
    const evalRate = rate('eval');
    return { ...(train === undefined ? {} : { train }), ...(evalRate === undefined ? {} : { eval: evalRate }) };
  }

  /** Step `step` (0-based) of stage `stage` begins (a second call for the same step keeps the first time). */
  start(stage: number, step: number): void {
    const key = stage * 1_000_000 + step;
    if (!this.began.has(key)) this.began.set(key, this.now());
  }

  /**
   * Step `step` of stage `stage` ended: its time is measured and the overall line returned; undefined when its
   * start was not seen (a checkpoint of a resumed stage's first, already finished, round).
   */
  done(stage: number, step: number): string | undefined {
    const key = stage * 1_000_000 + step;
    const t0 = this.began.get(key);
    if (t0 === undefined) return undefined;
    this.measured[stage]?.push(this.now() - t0);
    this.began.delete(key);
    const at = { stage, done: step + 1 };
    return overallLine(this.stages, at, remainingMs(this.stages, at, this.measured, this.rates()));
  }
}

/**
 * The stages of a job's plan for the estimate: a federated stage steps by rounds (every client's local steps, its
 * rows scored every `eval.every` rounds), local-only by client (training alone for all the job's rounds, then its
 * row scored on that client's test set). `evalBatches`: test batches of all clients together.
 */
export function etaStages(plan: JobPlan, clients: number, evalBatches: number): EtaStage[] {
  const { rounds } = plan.spec.job;
  const steps = plan.clientSettings.localSteps;
  const every = Math.max(1, plan.spec.eval.every);
  return plan.stages.map((s) => {
    const evalLayers = s.rows.reduce(
      (n, r) => n + (r.on === 'full' ? plan.numLayers : plan.split.clientLayers.length),
      0,
    );
    return s.federated
      ? {
          label: s.method,
          rounds,
          unit: 'round',
          trainWork: clients * steps * s.clientLayers.length,
          evalWork: (evalBatches * evalLayers) / every,
        }
      : {
          label: s.method,
          rounds: clients,
          unit: 'client',
          trainWork: rounds * steps * s.clientLayers.length,
          evalWork: (evalBatches / Math.max(1, clients)) * evalLayers,
        };
  });
}
