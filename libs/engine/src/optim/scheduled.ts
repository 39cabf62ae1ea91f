/**
 * What AdamW and SGD share: the named tensors they were built for, the step count, the base lr and its schedule,
 * the checked step over every tensor, and the plain-data state around their own hyper-parameters and slots.
 */
import { checkStepInputs, paramSizes } from './checks.js';
import { CONSTANT_SCHEDULE, lrAt, validateSchedule, type ScheduleSpec } from './schedule.js';
import type { OptimizerKind, OptimizerState, ParamMap } from './types.js';

/** Updates tensor number `k` (in the optimizer's name order): `p` in place from its gradient `g`. */
export type TensorUpdate = (k: number, p: Float32Array, g: Float32Array) => void;

export abstract class ScheduledOptimizer<Hyper extends { lr: number }> {
  abstract readonly kind: OptimizerKind;
  protected readonly sizes: Map<string, number>;
  protected readonly names: string[];
  protected hyper: Hyper;
  protected schedule: ScheduleSpec;
  protected steps = 0;

  /** `hyper` is already checked; `owner` (AdamW, SGD) names the optimizer in errors. */
  protected constructor(
    params: ParamMap,
    hyper: Hyper,
    schedule: ScheduleSpec | undefined,
    protected readonly owner: string,
  ) {
    this.hyper = hyper;
    this.schedule = validateSchedule(schedule ?? CONSTANT_SCHEDULE, `${owner}: schedule`);
    this.sizes = paramSizes(params, owner);
    this.names = [...this.sizes.keys()];
  }

  /** The update of every tensor at this step: `lr` from the schedule, `done` the steps completed before it. */
  protected abstract tensorUpdate(lr: number, done: number): TensorUpdate;

  get stepCount(): number {
    return this.steps;
  }

  currentLr(): number {
    return lrAt(this.schedule, this.steps, this.hyper.lr);
  }

  step(params: Map<string, Float32Array>, grads: ReadonlyMap<string, Float32Array>): void {
    // Check every tensor before touching any, so a bad call leaves parameters and optimizer state unchanged.
    checkStepInputs(params, grads, this.sizes, this.owner);
    const update = this.tensorUpdate(this.currentLr(), this.steps);
    for (let k = 0; k < this.names.length; k++) {
      const name = this.names[k]!;
      update(k, params.get(name)!, grads.get(name)!);
    }
    this.steps++;
  }

  /** The exported state: these hyper-parameters and slots, with the kind, the step count and a copy of the schedule. */
  protected stateWith(
    hyper: OptimizerState['hyper'],
    slots: Record<string, Record<string, Float32Array>>,
  ): OptimizerState {
    return { kind: this.kind, step: this.steps, hyper, schedule: structuredClone(this.schedule), slots };
  }

  /** The end of importState, once everything is checked and the slots are copied in. */
  protected restore(hyper: Hyper, schedule: ScheduleSpec, step: number): void {
    this.hyper = hyper;
    this.schedule = structuredClone(schedule);
    this.steps = step;
  }
}
