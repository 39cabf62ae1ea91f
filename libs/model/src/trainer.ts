/** LoRA training of causal LMs on the engine's GraphTrainer. */
import {
  GraphTrainer,
  LossScaler,
  drawDropPositions,
  crossEntropy,
  gradients,
  type Mulberry32,
  type HostTensor,
  type OptimizerConfig,
  type StepResult,
} from '../../engine/src/index.js';
import type { CausalLM, TokenBatch } from './causal-lm.js';
import { layersKey } from './causal-lm.js';
import {
  loraDropoutInputs,
  loraFeeds,
  loraKey,
  loraStream,
  shapeOfLora,
  type LoraDropoutInput,
  type LoraWeights,
} from './lora.js';

export interface LoraTrainerOptions {
  readonly batch: number;
  readonly seq: number;
  /** Layers to run (default all); LoRA layers outside it are ignored. */
  readonly layers?: readonly number[];
  readonly trainable: LoraWeights;
  /** Other adapters attached to the model but not trained. */
  readonly frozen?: readonly LoraWeights[];
  readonly optimizer: OptimizerConfig;
  readonly maxGradNorm?: number;
  readonly proxEps?: number;
  /** Seed for LoRA dropout masks (when the trainable spec has dropout > 0). */
  readonly seed?: number;
  /**
   * Draw the next micro-batch's LoRA dropout positions while the current run is in flight (GraphTrainer.step's
   * whileRunning). The draws keep their order in the stream, so the masks, and the results, are the same either way.
   * Default: on when the graph runs on a GPU provider (the host thread is idle then), off on the CPU provider, whose
   * threads the drawing would compete with.
   */
  readonly prefetchDropout?: boolean;
  /**
   * Loss scaling. Default: a dynamic LossScaler when the model's matmuls run in float16 (LoadOptions.compute), whose
   * backward Gemms see the cast gradients; none otherwise (float32 activations and gradients need none).
   */
  readonly lossScaler?: LossScaler;
}

/**
 * Next-token cross-entropy training of one LoRA adapter (the FedBiOT client step, and LoRA fine-tuning in
 * general). Everything below the lowest trainable layer is forward-only: autodiff never reaches it.
 */
export class LoraTrainer {
  private constructor(
    readonly lm: CausalLM,
    readonly trainer: GraphTrainer,
    readonly opts: LoraTrainerOptions,
    private readonly frozenFeeds: Record<string, HostTensor>,
    private readonly dropoutInputs: readonly LoraDropoutInput[],
    private readonly rand: Mulberry32,
    private readonly prefetch: boolean,
  ) {}

  /** Dropout positions drawn ahead (one micro-batch's, in dropoutInputs order), or none. */
  private drawnAhead: Int32Array[] | undefined;

  static async create(lm: CausalLM, opts: LoraTrainerOptions): Promise<LoraTrainer> {
    const layers = opts.layers ?? lm.allLayers;
    const { batch: B, seq: T } = opts;
    const spec = opts.trainable.spec;
    const frozen = opts.frozen ?? [];
    const dropout = spec.dropout > 0;
    const key = `train-B${B}-T${T}-L${layersKey(layers)}-${loraKey([opts.trainable])}-F${loraKey(frozen)}-d${dropout ? 1 : 0}`;
    const runner = await lm.graphs.get(key, (g) => {
      const m = lm.build(g, {
        batch: B,
        seq: T,
        layers,
        start: 'ids',
        head: true,
        loras: [spec, ...frozen.map((f) => f.spec)],
        loraDropout: dropout,
      });
      const labels = g.input('labels', 'int64', [B, T]);
      const weights = g.input('loss_weights', 'float32', [B, T]);
      const loss = crossEntropy(m.logits!, labels, weights);
      const trainable = [...m.loraParams].filter(([n]) => opts.trainable.tensors.has(n));
      const grads = gradients(
        loss,
        trainable.map(([, t]) => t),
      );
      g.output(loss, 'loss');
      grads.forEach((gr, i) => g.output(gr!, `grad.${trainable[i]![0]}`));
    });
    const dropoutInputs = loraDropoutInputs(lm.config, [spec, ...frozen.map((f) => f.spec)], runner.inputNames, B, T);
    const params = new Map([...opts.trainable.tensors].map(([k, v]) => [k, Float32Array.from(v)]));
    const shapes = new Map([...params].map(([n, t]) => [n, shapeOfLora(n, t, spec)]));
    const missing = [...params.keys()].filter((n) => !runner.outputNames.includes(`grad.${n}`));
    if (missing.length)
      throw new Error(`LoraTrainer: adapter tensors not in the trained layers: ${missing.join(', ')}`);
    const frozenShapes = new Map<string, readonly number[]>();
    for (const f of frozen)
      for (const [n, t] of f.tensors) if (runner.inputNames.includes(n)) frozenShapes.set(n, shapeOfLora(n, t, f.spec));
    const scaler = opts.lossScaler ?? (lm.halfWeights?.compute === 'float16' ? new LossScaler() : undefined);
    const trainer = new GraphTrainer(runner, params, shapes, opts.optimizer, {
      ...(opts.maxGradNorm ? { maxGradNorm: opts.maxGradNorm } : {}),
      ...(opts.proxEps ? { proxEps: opts.proxEps } : {}),
      ...(scaler ? { lossScale: { scaler, feed: 'loss_weights' } } : {}),
    });
    trainer.setAnchor();
    return new LoraTrainer(
      lm,
      trainer,
      opts,
      loraFeeds(frozenShapes, frozen),
      dropoutInputs,
      loraStream(opts.seed ?? 0),
      dropoutInputs.length > 0 && (opts.prefetchDropout ?? runner.provider !== 'cpu'),
    );
  }

  /**
   * One micro-batch's dropout positions: those drawn ahead if any, else fresh from the stream. Only the dropped
   * positions cross to the graph, which builds the inverted-dropout masks (as torch: kept values scaled by 1/(1-p)).
   * Dense [B, T, in] masks drawn and fed from here (17M values per TinyLlama step) took 160-240 of a 280 ms CUDA step
   * on the H100 machine (bench perf --lora-dropout 0 vs 0.05); drawing the positions still takes about 24 ms there.
   */
  private dropPositions(): Int32Array[] {
    const ahead = this.drawnAhead;
    this.drawnAhead = undefined;
    return (
      ahead ??
      this.dropoutInputs.map((d) => {
        const data = new Int32Array(d.shape[0]!);
        drawDropPositions(this.rand, d.elements, d.p, data);
        return data;
      })
    );
  }

  /** Current adapter values (live arrays; copy before keeping). */
  get params(): Map<string, Float32Array> {
    return this.trainer.params;
  }

  /** One optimizer step over micro-batches, each [batch, seq]; the loss is the token mean over all of them. */
  async step(microBatches: readonly TokenBatch[]): Promise<StepResult & { tokens: number }> {
    const { tokens, feeds } = lossFeeds(this.lm, microBatches, (out) => {
      Object.assign(out, this.frozenFeeds);
      const positions = this.dropPositions();
      this.dropoutInputs.forEach((d, i) => (out[d.name] = { dtype: 'int32', shape: d.shape, data: positions[i]! }));
    });
    const ahead = this.prefetch ? () => void (this.drawnAhead = this.dropPositions()) : undefined;
    const r = await this.trainer.step(feeds, [], ahead);
    return { ...r, tokens };
  }
}

export interface FullTrainerOptions {
  readonly batch: number;
  readonly seq: number;
  /** Initial values of every weight (checkpoint keys). */
  readonly weights: ReadonlyMap<string, Float32Array>;
  readonly optimizer: OptimizerConfig;
  readonly maxGradNorm?: number;
}

/**
 * Full-parameter next-token training (pretraining the demo model): every weight is a graph input and gets a
 * gradient. Same loss and micro-batch convention as LoraTrainer.
 */
export class FullTrainer {
  private constructor(
    readonly lm: CausalLM,
    readonly trainer: GraphTrainer,
  ) {}

  static async create(lm: CausalLM, opts: FullTrainerOptions): Promise<FullTrainer> {
    const { batch: B, seq: T } = opts;
    const names: string[] = [];
    const runner = await lm.graphs.get(`pretrain-B${B}-T${T}`, (g) => {
      const m = lm.build(g, {
        batch: B,
        seq: T,
        layers: lm.allLayers,
        start: 'ids',
        head: true,
        weightsAsInputs: true,
      });
      const labels = g.input('labels', 'int64', [B, T]);
      const weights = g.input('loss_weights', 'float32', [B, T]);
      const loss = crossEntropy(m.logits!, labels, weights);
      names.push(...m.weightInputs.keys());
      const grads = gradients(
        loss,
        names.map((n) => m.weightInputs.get(n)!),
      );
      g.output(loss, 'loss');
      grads.forEach((gr, i) => g.output(gr!, `grad.${names[i]}`));
    });
    const params = new Map<string, Float32Array>();
    const shapes = new Map<string, readonly number[]>();
    for (const name of runner.inputNames) {
      if (name === 'input_ids' || name === 'labels' || name === 'loss_weights') continue;
      const v = opts.weights.get(name);
      if (!v) throw new Error(`FullTrainer: no initial value for weight ${name}`);
      params.set(name, Float32Array.from(v));
      shapes.set(name, lm.weights.shape(name));
    }
    const trainer = new GraphTrainer(
      runner,
      params,
      shapes,
      opts.optimizer,
      opts.maxGradNorm ? { maxGradNorm: opts.maxGradNorm } : {},
    );
    return new FullTrainer(lm, trainer);
  }

  get params(): Map<string, Float32Array> {
    return this.trainer.params;
  }

  async step(microBatches: readonly TokenBatch[]): Promise<StepResult & { tokens: number }> {
    const { tokens, feeds } = lossFeeds(this.lm, microBatches);
    return { ...(await this.trainer.step(feeds)), tokens };
  }
}

/**
 * The loss graphs' feeds of each micro-batch: token ids, labels and loss weights mask / tokens-in-step (so the
 * micro-batch losses sum to the step's token mean), plus what `extra` adds to each.
 */
function lossFeeds(
  lm: CausalLM,
  microBatches: readonly TokenBatch[],
  extra?: (feeds: Record<string, HostTensor>) => void,
): { tokens: number; feeds: Record<string, HostTensor>[] } {
  let tokens = 0;
  for (const mb of microBatches) for (const v of mb.lossMask) tokens += v;
  const scale = 1 / Math.max(tokens, 1);
  const feeds = microBatches.map((mb) => {
    const f = lm.tokenFeeds(mb);
    const out: Record<string, HostTensor> = {
      input_ids: f['input_ids']!,
      labels: f['labels']!,
      loss_weights: {
        dtype: 'float32',
        shape: [mb.batch, mb.seq],
        data: Float32Array.from(mb.lossMask, (v) => v * scale),
      },
    };
    extra?.(out);
    return out;
  });
  return { tokens, feeds };
}
