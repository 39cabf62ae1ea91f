/**
 * The whole job's time left, for the standalone job's overall progress line (`npm start`): the job runs its plan's
 * stages one after another (the method's rounds, each baseline's rounds, local-only), and after every round the user
 * reads where the job is and about how long it still takes.
 *
 * The estimate: a stage that has run rounds costs its own mean round time per round left; a stage not started yet
 * costs the per-round time of the first stage that has measured rounds, scaled by its work per round (client steps
 * weighted by the layers a client runs through: a full-model baseline's round is dearer than an emulator round).
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
  /** Relative work of one step (client steps x layers), to scale a measured rate to a stage not started yet. */
  readonly workPerRound: number;
}

/** Where the job is: stage index `stage` has completed `done` of its steps. */
export interface EtaPosition {
  readonly stage: number;
  readonly done: number;
}

/**
 * Milliseconds left of the job's stages after `at`, from `measured[i]` (durations in ms of the steps of stage i
 * that ran in this process; absent or empty: none). Undefined while no step has been measured anywhere.
 */
export function remainingMs(
  stages: readonly EtaStage[],
  at: EtaPosition,
  measured: readonly (readonly number[] | undefined)[],
): number | undefined {
  const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
  const ref = measured.findIndex((m) => m !== undefined && m.length > 0);
  if (ref < 0) return undefined;
  const refStage = stages[ref];
  const refMs = mean(measured[ref]!);
  const msPerStep = (i: number): number => {
    const own = measured[i];
    if (own && own.length > 0) return mean(own);
    const s = stages[i]!;
    return refStage && refStage.workPerRound > 0 ? (refMs * s.workPerRound) / refStage.workPerRound : refMs;
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

  constructor(
    readonly stages: readonly EtaStage[],
    private readonly now: () => number = Date.now,
  ) {
    this.measured = stages.map(() => []);
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
    return overallLine(this.stages, at, remainingMs(this.stages, at, this.measured));
  }
}

/**
 * The stages of a job's plan for the estimate: a federated stage steps by rounds, each costing every client's local
 * steps on the stage's client layers; local-only steps by client, each training alone for all the job's rounds.
 */
export function etaStages(plan: JobPlan, clients: number): EtaStage[] {
  const { rounds } = plan.spec.job;
  const steps = plan.clientSettings.localSteps;
  return plan.stages.map((s) =>
    s.federated
      ? { label: s.method, rounds, unit: 'round', workPerRound: clients * steps * s.clientLayers.length }
      : { label: s.method, rounds: clients, unit: 'client', workPerRound: rounds * steps * s.clientLayers.length },
  );
}
