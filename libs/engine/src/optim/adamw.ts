/**
 * AdamW on Float32Arrays, the same update as torch.optim.AdamW (amsgrad=False, maximize=False). Kept in TS rather
 * than an ONNX graph because ORT copies every output, which made the graph version slower (docs/engine-notes.md §2.5).
 */
import { checkState, hyperNumber, rejectUnknownHyper } from './checks.js';
import { validateSchedule, type ScheduleSpec } from './schedule.js';
import { ScheduledOptimizer, type TensorUpdate } from './scheduled.js';
import type { Optimizer, OptimizerState, ParamMap } from './types.js';

/** AdamW hyper-parameters; defaults are torch's except lr (FedBiOT's 1e-4; torch uses 1e-3). */
export interface AdamWOptions {
  /** Base learning rate; default 1e-4. */
  readonly lr?: number;
  /** Decay rates of the first and second moment; default [0.9, 0.999] (FedBiOT uses [0.9, 0.95]). */
  readonly betas?: readonly [number, number];
  /** Added to the bias-corrected sqrt of the second moment (outside the sqrt); default 1e-8. */
  readonly eps?: number;
  /** Decoupled weight decay, applied as `p *= 1 - lr * weightDecay` before the Adam update; default 0.01. */
  readonly weightDecay?: number;
  /** Learning-rate schedule; default constant. */
  readonly schedule?: ScheduleSpec;
}

interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

const OWNER = 'AdamW';
const SLOTS = ['exp_avg', 'exp_avg_sq'] as const;

/** Same range checks as torch.optim.AdamW's constructor. */
function checkHyper(h: AdamWHyper, where: string): AdamWHyper {
  const bad = (field: string, rule: string, v: number) => new Error(`${where}: ${field} must be ${rule}, got ${v}`);
  if (!(Number.isFinite(h.lr) && h.lr >= 0)) throw bad('lr', 'a finite number >= 0', h.lr);
  if (!(h.beta1 >= 0 && h.beta1 < 1)) throw bad('betas[0]', 'in [0, 1)', h.beta1);
  if (!(h.beta2 >= 0 && h.beta2 < 1)) throw bad('betas[1]', 'in [0, 1)', h.beta2);
  if (!(Number.isFinite(h.eps) && h.eps >= 0)) throw bad('eps', 'a finite number >= 0', h.eps);
  if (!(Number.isFinite(h.weightDecay) && h.weightDecay >= 0))
    throw bad('weightDecay', 'a finite number >= 0', h.weightDecay);
  return h;
}

/**
 * One AdamW update of one tensor, in a single pass. Arithmetic is float64 and each stored value is rounded to fp32
 * once; torch rounds after every sub-operation, so results agree to fp32 rounding, not bit-for-bit.
 * `bc2Sqrt` divides rather than multiplies, as torch does, so eps is added at the same scale.
 */
function adamwKernel(
  p: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  decay: number,
  beta1: number,
  beta2: number,
  stepSize: number,
  bc2Sqrt: number,
  eps: number,
): void {
  const c1 = 1 - beta1;
  const c2 = 1 - beta2;
  const n = p.length;
  // checkStepInputs made g, m and v as long as p, so every index below n is in range.
  for (let i = 0; i < n; i++) {
    const gi = g[i]!;
    const mi = beta1 * m[i]! + c1 * gi;
    const vi = beta2 * v[i]! + c2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i]! * decay - (stepSize * mi) / (Math.sqrt(vi) / bc2Sqrt + eps);
  }
}

/**
 * torch.optim.AdamW over a fixed set of named fp32 tensors. Per step t (1-based), with lr from the schedule:
 * ```
 * p  = p * (1 - lr * wd)
 * m  = b1 * m + (1 - b1) * g
 * v  = b2 * v + (1 - b2) * g^2
 * p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * ```
 * Moment buffers are allocated once here (2 floats per parameter value); `step` allocates nothing per element.
 */
export class AdamW extends ScheduledOptimizer<AdamWHyper> implements Optimizer {
  readonly kind = 'adamw' as const;
  private readonly expAvg: Float32Array[];
  private readonly expAvgSq: Float32Array[];

  /**
   * @param params the trainable tensors; only their names and lengths are recorded (values are read in `step`).
   * @param options hyper-parameters, see {@link AdamWOptions}.
   */
  constructor(params: ParamMap, options: AdamWOptions = {}) {
    const betas = options.betas ?? [0.9, 0.999];
    if (!Array.isArray(betas) || betas.length !== 2) throw new Error(`${OWNER}: betas must be [beta1, beta2]`);
    const hyper = checkHyper(
      {
        lr: options.lr ?? 1e-4,
        beta1: betas[0],
        beta2: betas[1],
        eps: options.eps ?? 1e-8,
        weightDecay: options.weightDecay ?? 0.01,
      },
      OWNER,
    );
    super(params, hyper, options.schedule, OWNER);
    this.expAvg = this.names.map((n) => new Float32Array(this.sizes.get(n)!));
    this.expAvgSq = this.names.map((n) => new Float32Array(this.sizes.get(n)!));
  }

  protected tensorUpdate(lr: number, done: number): TensorUpdate {
    const { beta1, beta2, eps, weightDecay } = this.hyper;
    const t = done + 1;
    const stepSize = lr / (1 - beta1 ** t);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** t);
    const decay = 1 - lr * weightDecay;
    return (k, p, g) =>
      adamwKernel(p, g, this.expAvg[k]!, this.expAvgSq[k]!, decay, beta1, beta2, stepSize, bc2Sqrt, eps);
  }

  exportState(): OptimizerState {
    const slots: Record<string, Record<string, Float32Array>> = {};
    this.names.forEach((name, k) => {
      slots[name] = { exp_avg: this.expAvg[k]!.slice(), exp_avg_sq: this.expAvgSq[k]!.slice() };
    });
    const h = this.hyper;
    return this.stateWith({ lr: h.lr, betas: [h.beta1, h.beta2], eps: h.eps, weightDecay: h.weightDecay }, slots);
  }

  importState(state: OptimizerState): void {
    checkState(state, this.kind, this.sizes, SLOTS, OWNER);
    const raw = state.hyper as Record<string, unknown>;
    rejectUnknownHyper(raw, ['lr', 'betas', 'eps', 'weightDecay'], OWNER);
    const betas = raw.betas;
    if (!Array.isArray(betas) || betas.length !== 2 || !betas.every((b) => typeof b === 'number')) {
      throw new Error(`${OWNER}.importState: hyper.betas must be [beta1, beta2], got ${JSON.stringify(betas)}`);
    }
    const hyper = checkHyper(
      {
        lr: hyperNumber(raw, 'lr', OWNER),
        beta1: betas[0] as number,
        beta2: betas[1] as number,
        eps: hyperNumber(raw, 'eps', OWNER),
        weightDecay: hyperNumber(raw, 'weightDecay', OWNER),
      },
      `${OWNER}.importState: hyper`,
    );
    const schedule = validateSchedule(state.schedule, `${OWNER}.importState: schedule`);
    this.names.forEach((name, k) => {
      this.expAvg[k]!.set(state.slots[name]!.exp_avg!);
      this.expAvgSq[k]!.set(state.slots[name]!.exp_avg_sq!);
    });
    this.restore(hyper, schedule, state.step);
  }
}
