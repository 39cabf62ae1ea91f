/**
 * Learning-rate schedules as plain data (so they persist inside an optimizer state) plus one pure function that
 * evaluates them. A schedule yields a multiplier of the base learning rate, like torch's `LambdaLR`.
 *
 * Step convention (the one torch + transformers use): the optimizer step with 0-based index `step` (i.e. after
 * `step` completed steps) runs with `baseLr * factor(step)`. With warm-up, step 0 therefore runs at lr 0.
 */

/** Optional linear warm-up from 0: `factor(step) = step / max(1, warmupSteps)` while `step < warmupSteps`. */
interface WarmupPart {
  /** Steps of linear warm-up from 0 to the base learning rate; default 0 (none). Integer, <= totalSteps. */
  readonly warmupSteps?: number;
}

/** Base learning rate throughout (after warm-up); transformers' get_constant_schedule(_with_warmup). */
export interface ConstantSchedule extends WarmupPart {
  readonly kind: 'constant';
}

/** Half-cosine decay to `minLrRatio * baseLr` at `totalSteps`; transformers' get_cosine_schedule_with_warmup. */
export interface CosineSchedule extends WarmupPart {
  readonly kind: 'cosine';
  /** Step at which the decay reaches its floor (transformers' num_training_steps). Positive integer. */
  readonly totalSteps: number;
  /** Floor as a fraction of the base lr, in [0, 1]; 0 reproduces transformers exactly. */
  readonly minLrRatio: number;
}

/** Linear decay to `minLrRatio * baseLr` at `totalSteps`; transformers' get_linear_schedule_with_warmup. */
export interface LinearSchedule extends WarmupPart {
  readonly kind: 'linear';
  /** Step at which the decay reaches its floor (transformers' num_training_steps). Positive integer. */
  readonly totalSteps: number;
  /** Floor as a fraction of the base lr, in [0, 1]; 0 reproduces transformers exactly. */
  readonly minLrRatio: number;
}

export type ScheduleSpec = ConstantSchedule | CosineSchedule | LinearSchedule;

/** The schedule every optimizer uses unless told otherwise. */
export const CONSTANT_SCHEDULE: ScheduleSpec = Object.freeze({ kind: 'constant' });

function isNonNegInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0;
}

/**
 * Checks a schedule that may come from a file or a message and returns it typed. Errors name `where` and the field.
 * @param where prefix for error messages, e.g. "AdamW state: schedule".
 */
export function validateSchedule(spec: unknown, where = 'schedule'): ScheduleSpec {
  if (typeof spec !== 'object' || spec === null) throw new Error(`${where}: expected an object, got ${String(spec)}`);
  const s = spec as Record<string, unknown>;
  const known = new Set(['kind', 'warmupSteps', 'totalSteps', 'minLrRatio']);
  for (const key of Object.keys(s)) {
    if (!known.has(key)) throw new Error(`${where}: unknown field "${key}"`);
  }
  if (s.warmupSteps !== undefined && !isNonNegInt(s.warmupSteps)) {
    throw new Error(`${where}.warmupSteps: expected a non-negative integer, got ${String(s.warmupSteps)}`);
  }
  const warmupSteps = (s.warmupSteps as number | undefined) ?? 0;
  switch (s.kind) {
    case 'constant':
      if (s.totalSteps !== undefined || s.minLrRatio !== undefined) {
        throw new Error(`${where}: a 'constant' schedule takes no totalSteps / minLrRatio`);
      }
      return spec as ConstantSchedule;
    case 'cosine':
    case 'linear': {
      if (!isNonNegInt(s.totalSteps) || s.totalSteps === 0) {
        throw new Error(`${where}.totalSteps: expected a positive integer, got ${String(s.totalSteps)}`);
      }
      if (typeof s.minLrRatio !== 'number' || !(s.minLrRatio >= 0 && s.minLrRatio <= 1)) {
        throw new Error(`${where}.minLrRatio: expected a number in [0, 1], got ${String(s.minLrRatio)}`);
      }
      if (warmupSteps > s.totalSteps) {
        throw new Error(`${where}.warmupSteps (${warmupSteps}) exceeds totalSteps (${s.totalSteps})`);
      }
      return spec as CosineSchedule | LinearSchedule;
    }
    default:
      throw new Error(`${where}.kind: expected 'constant' | 'cosine' | 'linear', got ${String(s.kind)}`);
  }
}

/**
 * Learning rate for the optimizer step with 0-based index `step`: `baseLr * factor(step)`.
 * Omit `baseLr` to get the bare multiplier.
 *
 * Formulas (transformers/optimization.py; w = warmupSteps, T = totalSteps, r = minLrRatio, s = step):
 * - warm-up, every kind, s < w:  factor = s / max(1, w)
 * - constant:                    factor = 1
 * - cosine:  progress = (s - w) / max(1, T - w);  c = 0.5 * (1 + cos(pi * progress));  factor = r + (1 - r) * c
 *   (transformers' num_cycles = 0.5; with r > 0 this is get_cosine_with_min_lr_schedule_with_warmup's min_lr_rate)
 * - linear:  l = max(0, (T - s) / max(1, T - w));  factor = r + (1 - r) * l
 *   (transformers has no floor for linear; r = 0 gives its formula)
 *
 * One deliberate difference: past `totalSteps` the cosine is held at its floor, whereas transformers' formula
 * climbs back up (cos beyond pi), which is never what a run that overshoots by a step wants.
 *
 * @param step non-negative integer, the number of optimizer steps already taken.
 * @param baseLr the optimizer's base learning rate; default 1.
 */
export function lrAt(spec: ScheduleSpec, step: number, baseLr = 1): number {
  if (!isNonNegInt(step)) throw new Error(`lrAt: step must be a non-negative integer, got ${step}`);
  const w = spec.warmupSteps ?? 0;
  if (step < w) return (baseLr * step) / Math.max(1, w);
  switch (spec.kind) {
    case 'constant':
      return baseLr;
    case 'cosine': {
      const progress = Math.min(1, (step - w) / Math.max(1, spec.totalSteps - w));
      const c = 0.5 * (1 + Math.cos(Math.PI * progress));
      return baseLr * (spec.minLrRatio + (1 - spec.minLrRatio) * c);
    }
    case 'linear': {
      const l = Math.max(0, (spec.totalSteps - step) / Math.max(1, spec.totalSteps - w));
      return baseLr * (spec.minLrRatio + (1 - spec.minLrRatio) * l);
    }
  }
}
