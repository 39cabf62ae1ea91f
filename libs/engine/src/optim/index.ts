/** Optimizers, learning-rate schedules and gradient clipping on named Float32Arrays. */
import { AdamW } from './adamw.js';
import { SGD } from './sgd.js';
import type { Optimizer, OptimizerState, ParamMap } from './types.js';

export type { Optimizer, OptimizerKind, OptimizerState, ParamMap } from './types.js';
export { AdamW, type AdamWOptions } from './adamw.js';
export { SGD, type SGDOptions } from './sgd.js';
export {
  CONSTANT_SCHEDULE,
  lrAt,
  validateSchedule,
  type ConstantSchedule,
  type CosineSchedule,
  type LinearSchedule,
  type ScheduleSpec,
} from './schedule.js';
export { clipGradNorm } from './clip.js';
export { OPTIMIZER_STATE_FORMAT, stateFromTensors, stateToTensors } from './state.js';

/**
 * Builds the optimizer a saved state belongs to and loads the state into it, so resuming needs no configuration
 * beyond the state itself (its hyper-parameters and schedule are restored with it).
 */
export function restoreOptimizer(params: ParamMap, state: OptimizerState): Optimizer {
  const opt: Optimizer =
    state.kind === 'adamw' ? new AdamW(params) : state.kind === 'sgd' ? new SGD(params) : unknownKind(state);
  opt.importState(state);
  return opt;
}

function unknownKind(state: OptimizerState): never {
  throw new Error(`restoreOptimizer: unknown optimizer kind ${JSON.stringify((state as { kind?: unknown }).kind)}`);
}
