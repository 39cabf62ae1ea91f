/** SGD on Float32Arrays, the same update as torch.optim.SGD (maximize=False). */
import { checkState, hyperNumber, rejectUnknownHyper } from './checks.js';
import { validateSchedule, type ScheduleSpec } from './schedule.js';
import { ScheduledOptimizer, type TensorUpdate } from './scheduled.js';
import type { Optimizer, OptimizerState, ParamMap } from './types.js';

/** SGD hyper-parameters; defaults are torch 2.x's. */
export interface SGDOptions {
  /** Base learning rate; default 1e-3. */
  readonly lr?: number;
  /** Momentum factor; default 0 (plain SGD, no buffers). */
  readonly momentum?: number;
  /** Dampening of the gradient's share in the momentum buffer; default 0. */
  readonly dampening?: number;
  /** L2 penalty added to the gradient (`g + wd * p`), coupled, unlike AdamW's; default 0. */
  readonly weightDecay?: number;
  /** Nesterov momentum; needs momentum > 0 and dampening 0; default false. */
  readonly nesterov?: boolean;
  /** Learning-rate schedule; default constant. */
  readonly schedule?: ScheduleSpec;
}

interface SGDHyper {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
}

const OWNER = 'SGD';

/** Same checks as torch.optim.SGD's constructor. */
function checkHyper(h: SGDHyper, where: string): SGDHyper {
  const bad = (field: string, rule: string, v: number) => new Error(`${where}: ${field} must be ${rule}, got ${v}`);
  if (!(Number.isFinite(h.lr) && h.lr >= 0)) throw bad('lr', 'a finite number >= 0', h.lr);
  if (!(Number.isFinite(h.momentum) && h.momentum >= 0)) throw bad('momentum', 'a finite number >= 0', h.momentum);
  if (!Number.isFinite(h.dampening)) throw bad('dampening', 'a finite number', h.dampening);
  if (!(Number.isFinite(h.weightDecay) && h.weightDecay >= 0))
    throw bad('weightDecay', 'a finite number >= 0', h.weightDecay);
  if (h.nesterov && (h.momentum <= 0 || h.dampening !== 0)) {
    throw new Error(`${where}: nesterov momentum requires momentum > 0 and dampening 0`);
  }
  return h;
}

/**
 * One SGD update of one tensor. `first` marks the step that seeds the momentum buffer with the gradient itself,
 * as torch does when the buffer is still None (so dampening does not apply then).
 */
function sgdKernel(
  p: Float32Array,
  g: Float32Array,
  buf: Float32Array | undefined,
  h: SGDHyper,
  lr: number,
  first: boolean,
): void {
  const { momentum, weightDecay, nesterov } = h;
  const keep = 1 - h.dampening;
  const n = p.length;
  // checkStepInputs made g and buf as long as p, so every index below n is in range.
  for (let i = 0; i < n; i++) {
    const pi = p[i]!;
    let d = g[i]! + weightDecay * pi;
    if (buf !== undefined) {
      const b = first ? d : momentum * buf[i]! + keep * d;
      buf[i] = b;
      d = nesterov ? d + momentum * b : b;
    }
    p[i] = pi - lr * d;
  }
}

/**
 * torch.optim.SGD over a fixed set of named fp32 tensors. Per step, with lr from the schedule:
 * ```
 * g = g + wd * p
 * if momentum != 0:  buf = (first step) ? g : momentum * buf + (1 - dampening) * g
 *                    g   = nesterov ? g + momentum * buf : buf
 * p = p - lr * g
 * ```
 * With momentum 0 there are no slots; otherwise one `momentum_buffer` per parameter.
 */
export class SGD extends ScheduledOptimizer<SGDHyper> implements Optimizer {
  readonly kind = 'sgd' as const;
  private buffers: Float32Array[] | undefined;

  /**
   * @param params the trainable tensors; only their names and lengths are recorded (values are read in `step`).
   * @param options hyper-parameters, see {@link SGDOptions}.
   */
  constructor(params: ParamMap, options: SGDOptions = {}) {
    const hyper = checkHyper(
      {
        lr: options.lr ?? 1e-3,
        momentum: options.momentum ?? 0,
        dampening: options.dampening ?? 0,
        weightDecay: options.weightDecay ?? 0,
        nesterov: options.nesterov ?? false,
      },
      OWNER,
    );
    super(params, hyper, options.schedule, OWNER);
    this.buffers = this.allocBuffers(this.hyper.momentum);
  }

  private allocBuffers(momentum: number): Float32Array[] | undefined {
    return momentum === 0 ? undefined : this.names.map((n) => new Float32Array(this.sizes.get(n)!));
  }

  protected tensorUpdate(lr: number, done: number): TensorUpdate {
    const first = done === 0;
    return (k, p, g) => sgdKernel(p, g, this.buffers?.[k], this.hyper, lr, first);
  }

  exportState(): OptimizerState {
    const slots: Record<string, Record<string, Float32Array>> = {};
    this.names.forEach((name, k) => {
      slots[name] = this.buffers === undefined ? {} : { momentum_buffer: this.buffers[k]!.slice() };
    });
    const h = this.hyper;
    // nesterov as 0/1: the state's hyper values are numbers, arrays or strings only.
    return this.stateWith(
      {
        lr: h.lr,
        momentum: h.momentum,
        dampening: h.dampening,
        weightDecay: h.weightDecay,
        nesterov: h.nesterov ? 1 : 0,
      },
      slots,
    );
  }

  importState(state: OptimizerState): void {
    if (typeof state !== 'object' || state === null) throw new Error(`${OWNER}.importState: state is not an object`);
    const raw = state.hyper as Record<string, unknown>;
    rejectUnknownHyper(raw, ['lr', 'momentum', 'dampening', 'weightDecay', 'nesterov'], OWNER);
    const nesterov = hyperNumber(raw, 'nesterov', OWNER);
    if (nesterov !== 0 && nesterov !== 1)
      throw new Error(`${OWNER}.importState: hyper.nesterov must be 0 or 1, got ${nesterov}`);
    const hyper = checkHyper(
      {
        lr: hyperNumber(raw, 'lr', OWNER),
        momentum: hyperNumber(raw, 'momentum', OWNER),
        dampening: hyperNumber(raw, 'dampening', OWNER),
        weightDecay: hyperNumber(raw, 'weightDecay', OWNER),
        nesterov: nesterov === 1,
      },
      `${OWNER}.importState: hyper`,
    );
    // The saved momentum decides which slots must be present, as the hyper-parameters come from the state.
    checkState(state, this.kind, this.sizes, hyper.momentum === 0 ? [] : ['momentum_buffer'], OWNER);
    const schedule = validateSchedule(state.schedule, `${OWNER}.importState: schedule`);
    const buffers =
      this.buffers !== undefined && hyper.momentum !== 0 ? this.buffers : this.allocBuffers(hyper.momentum);
    buffers?.forEach((b, k) => b.set(state.slots[this.names[k]!]!.momentum_buffer!));
    this.buffers = buffers;
    this.restore(hyper, schedule, state.step);
  }
}
