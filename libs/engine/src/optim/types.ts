/**
 * Shared vocabulary of the TS optimizers. Parameters and gradients are flat Float32Arrays keyed by name; the
 * optimizer keeps one set of per-parameter buffers ("slots") and can hand them out as plain data for checkpoints.
 */
import type { ScheduleSpec } from './schedule.js';

/** Parameter name -> flat fp32 values (any shape, row-major; the optimizer only sees lengths). */
export type ParamMap = ReadonlyMap<string, Float32Array>;

/** Which update rule a state belongs to. */
export type OptimizerKind = 'adamw' | 'sgd';

/**
 * Everything needed to continue a run bit-for-bit: plain data, safe to JSON-encode apart from the slot arrays
 * (see `stateToTensors`). Hyper-parameters travel with the state, so a restored optimizer uses the saved ones,
 * as torch's `load_state_dict` does.
 */
export interface OptimizerState {
  readonly kind: OptimizerKind;
  /** Completed optimizer steps. */
  readonly step: number;
  /** Rule-specific hyper-parameters, e.g. AdamW `{ lr, betas: [b1, b2], eps, weightDecay }`. */
  readonly hyper: Record<string, number | number[] | string>;
  readonly schedule: ScheduleSpec;
  /** Parameter name -> slot name -> buffer of the parameter's length (e.g. AdamW `exp_avg`, `exp_avg_sq`). */
  readonly slots: Record<string, Record<string, Float32Array>>;
}

/**
 * A first-order optimizer over named fp32 tensors.
 *
 * `step` updates `params` IN PLACE: the Float32Arrays in the map are overwritten, never replaced, so zero-copy
 * views handed to onnxruntime (`new ort.Tensor('float32', arr, dims)`) see the new values without re-wrapping.
 */
export interface Optimizer {
  readonly kind: OptimizerKind;
  /** Completed steps; the next `step()` call has 0-based index `stepCount`. */
  readonly stepCount: number;
  /**
   * Applies one update. Every parameter the optimizer was built for must be in `params` and `grads` with its
   * original length (extra entries in `params` are ignored; an unknown gradient name is an error, since it means
   * the caller's trainable set and the optimizer's disagree). Gradients are only read.
   */
  step(params: Map<string, Float32Array>, grads: ReadonlyMap<string, Float32Array>): void;
  /** Learning rate the next `step()` will use: base lr times the schedule's factor at `stepCount`. */
  currentLr(): number;
  /** A deep copy of the state: later steps do not change the returned buffers. */
  exportState(): OptimizerState;
  /**
   * Replaces step count, hyper-parameters, schedule and slot buffers (copied in). Validates everything before
   * changing anything; errors name the parameter or field at fault.
   */
  importState(state: OptimizerState): void;
}
