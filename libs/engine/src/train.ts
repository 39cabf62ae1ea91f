/**
 * Training on compiled graphs: a graph computes `loss` and `grad.<param>` for its trainable inputs; the trainer
 * feeds parameters, accumulates gradients over micro-batches, adds the proximal term, clips, and steps the
 * optimizer (in TypeScript, on Float32Arrays: cheaper than an optimizer graph, docs/engine-notes.md §2.5).
 */
import { AdamW, SGD, clipGradNorm, type Optimizer, type ScheduleSpec } from './optim/index.js';
import type { HostTensor, ModelRunner } from './runtime/index.js';

export interface OptimizerConfig {
  readonly kind: 'adamw' | 'sgd';
  readonly lr: number;
  readonly betas?: readonly [number, number];
  readonly weightDecay?: number;
  readonly eps?: number;
  readonly momentum?: number;
  readonly schedule?: ScheduleSpec;
}

export function makeOptimizer(params: ReadonlyMap<string, Float32Array>, cfg: OptimizerConfig): Optimizer {
  const schedule = cfg.schedule ? { schedule: cfg.schedule } : {};
  if (cfg.kind === 'sgd') {
    return new SGD(params, { lr: cfg.lr, momentum: cfg.momentum ?? 0, weightDecay: cfg.weightDecay ?? 0, ...schedule });
  }
  return new AdamW(params, {
    lr: cfg.lr,
    betas: [...(cfg.betas ?? [0.9, 0.999])] as [number, number],
    weightDecay: cfg.weightDecay ?? 0.01,
    ...(cfg.eps !== undefined ? { eps: cfg.eps } : {}),
    ...schedule,
  });
}

/**
 * Dynamic loss scaling for graphs whose backward pass runs partly in float16 (half-precision matmuls on GPU
 * providers): gradients of a token-mean loss are small (about 1e-3 / tokens per logit), below float16's smallest
 * normal (6.1e-5) and often below its smallest subnormal (6e-8), so they would flush to zero. The loss is multiplied by
 * `scale` in the graph's inputs and the gradients divided by it in float32 afterwards. PyTorch GradScaler's rule: a
 * step whose gradients overflow (Inf/NaN) is skipped and the scale halved; after `growthInterval` finite steps in a
 * row the scale doubles.
 */
export class LossScaler {
  scale: number;
  private finiteSteps = 0;
  readonly growthInterval: number;
  readonly minScale: number;

  constructor(opts: { readonly init?: number; readonly growthInterval?: number; readonly minScale?: number } = {}) {
    this.scale = opts.init ?? 2 ** 16;
    this.growthInterval = opts.growthInterval ?? 2000;
    this.minScale = opts.minScale ?? 1;
    if (!(this.scale > 0) || !Number.isFinite(this.scale)) throw new RangeError(`LossScaler: bad scale ${this.scale}`);
  }

  /** Records a step's outcome; false (overflow) halves the scale. @throws when the scale would drop below minScale */
  update(finite: boolean): void {
    if (finite) {
      if (++this.finiteSteps >= this.growthInterval) {
        this.scale *= 2;
        this.finiteSteps = 0;
      }
      return;
    }
    this.finiteSteps = 0;
    if (this.scale / 2 < this.minScale)
      throw new Error(`LossScaler: gradients overflow even at loss scale ${this.scale}; parameters left unchanged`);
    this.scale /= 2;
  }
}

export interface StepResult {
  /** Training loss of the step (the graph's loss summed over micro-batches, plus the proximal term). */
  readonly loss: number;
  /** Global gradient norm before clipping. */
  readonly gradNorm: number;
  /** Scalar outputs asked for with `extraOutputs`, summed over micro-batches (e.g. the terms of a loss). */
  readonly extras: Readonly<Record<string, number>>;
  /** With a loss scaler: the gradients overflowed, the step was skipped (parameters unchanged), the scale halved. */
  readonly skipped?: boolean;
}

/**
 * Steps a graph whose outputs are `loss` and `grad.<name>` for each trainable parameter input `<name>`.
 * Micro-batch losses must already be normalised so that their sum is the step's loss (e.g. token weights
 * mask / tokens-in-step), so summing gradients is gradient accumulation.
 */
export class GraphTrainer {
  readonly optimizer: Optimizer;
  private anchor: Map<string, Float32Array> | undefined;

  constructor(
    readonly runner: ModelRunner,
    readonly params: Map<string, Float32Array>,
    readonly shapes: ReadonlyMap<string, readonly number[]>,
    optimizer: OptimizerConfig | Optimizer,
    readonly options: {
      readonly maxGradNorm?: number;
      readonly proxEps?: number;
      /**
       * Loss scaling (see LossScaler): each micro-batch's float32 feed `feed` (the loss weights) is multiplied by
       * the current scale; loss, extras and gradients are divided by it.
       */
      readonly lossScale?: { readonly scaler: LossScaler; readonly feed: string };
    } = {},
  ) {
    this.optimizer = 'step' in optimizer ? optimizer : makeOptimizer(params, optimizer);
  }

  /** Fixes θ_t for the proximal term eps * ||θ - θ_t||² (FedBiOT clients: the broadcast adapter). */
  setAnchor(values: ReadonlyMap<string, Float32Array> = this.params): void {
    this.anchor = new Map([...values].map(([k, v]) => [k, Float32Array.from(v)]));
  }

  paramFeeds(): Record<string, HostTensor> {
    const feeds: Record<string, HostTensor> = {};
    for (const [name, data] of this.params) feeds[name] = { dtype: 'float32', shape: this.shapes.get(name)!, data };
    return feeds;
  }

  /**
   * @param whileRunning called once the first micro-batch's run has been started and before it is awaited: host work
   *   for later steps can overlap the run there (it runs in a worker thread or on a GPU)
   */
  async step(
    microBatches: readonly Record<string, HostTensor>[],
    extraOutputs: readonly string[] = [],
    whileRunning?: () => void,
  ): Promise<StepResult> {
    if (microBatches.length === 0) throw new Error('GraphTrainer.step: no micro-batches');
    const grads = new Map<string, Float32Array>();
    let loss = 0;
    const fetches = ['loss', ...extraOutputs, ...[...this.params.keys()].map((n) => `grad.${n}`)];
    const extras: Record<string, number> = Object.fromEntries(extraOutputs.map((n) => [n, 0]));
    const ls = this.options.lossScale;
    const scale = ls ? ls.scaler.scale : 1;
    for (const [i, feeds] of microBatches.entries()) {
      let run = feeds;
      if (ls) {
        const f = feeds[ls.feed];
        if (!f || f.dtype !== 'float32')
          throw new Error(`GraphTrainer: loss scaling needs a float32 feed '${ls.feed}'`);
        run = { ...feeds, [ls.feed]: { ...f, data: Float32Array.from(f.data as Float32Array, (v) => v * scale) } };
      }
      const pending = this.runner.run({ ...run, ...this.paramFeeds() }, fetches);
      if (i === 0) whileRunning?.();
      const out = await pending;
      loss += (out['loss']!.data as Float32Array)[0]! / scale;
      for (const n of extraOutputs) extras[n]! += (out[n]!.data as Float32Array)[0]! / scale;
      for (const name of this.params.keys()) {
        const g = out[`grad.${name}`]!.data as Float32Array;
        const acc = grads.get(name);
        if (acc) for (let i = 0; i < g.length; i++) acc[i]! += g[i]!;
        else grads.set(name, g);
      }
    }
    if (ls) {
      let finite = true;
      for (const g of grads.values()) {
        for (let i = 0; i < g.length; i++) {
          const v = g[i]! / scale;
          if (!Number.isFinite(v)) finite = false;
          g[i] = v;
        }
      }
      ls.scaler.update(finite);
      if (!finite && Number.isFinite(loss)) return { loss, gradNorm: Infinity, extras, skipped: true };
    }
    const eps = this.options.proxEps ?? 0;
    if (eps > 0 && this.anchor) {
      // eps * ||θ - θ_t||² is a real term of the objective: its gradient 2 eps (θ - θ_t) joins the LoRA
      // gradients (the reference implementation computed it on detached tensors, which made it a no-op).
      for (const [name, theta] of this.params) {
        const a = this.anchor.get(name)!;
        const g = grads.get(name)!;
        for (let i = 0; i < theta.length; i++) {
          const d = theta[i]! - a[i]!;
          loss += eps * d * d;
          g[i]! += 2 * eps * d;
        }
      }
    }
    const gradNorm = this.options.maxGradNorm ? clipGradNorm(grads, this.options.maxGradNorm) : norm(grads);
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      throw new Error(
        `training step produced a non-finite ${Number.isFinite(loss) ? 'gradient' : 'loss'} (loss ${loss}); parameters left unchanged`,
      );
    }
    this.optimizer.step(this.params, grads);
    return { loss, gradNorm, extras };
  }
}

function norm(grads: ReadonlyMap<string, Float32Array>): number {
  let s = 0;
  for (const g of grads.values()) for (const v of g) s += v * v;
  return Math.sqrt(s);
}
