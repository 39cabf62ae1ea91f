/**
 * The three FedBiOT roles on a model, independent of transport: the server's emulator alignment (lower level),
 * a client's local adapter training (upper level), and evaluation of base / AdapEmu / AdapFu.
 */
import {
  GraphTrainer,
  crossEntropy,
  gradients,
  ops as O,
  type HostTensor,
  type OptimizerState,
  type Tensor,
} from '../../engine/src/index.js';
import {
  type CausalLM,
  type LoraWeights,
  type TokenBatch,
  layersKey,
  loraFeeds,
  loraKey,
  shapeOfLora,
  type LoraSpec,
  type LoraTarget,
  LoraTrainer,
  initLora,
} from '../../model/src/index.js';
import { exactMatch, type TokenizedExample } from '../../data/src/index.js';
import { ExampleStream, chunks, toTokenBatch } from './batches.js';
import type { EvalItem } from './federation.js';
import type { ModelSplit } from './split.js';
import type { JobSpec } from './job-spec.js';

export interface LoraSettings {
  readonly r: number;
  readonly alpha: number;
  readonly dropout: number;
  readonly targets: readonly LoraTarget[];
}

export const ADAPTER = 'adapter';
export const EMULATOR = 'emulator';

/**
 * The adapter LoRA (clients train it) and the emulator LoRA (the server aligns it) of a split. `emulator` overrides
 * the emulator LoRA's rank, alpha or targets (alignment.emulatorLora: more alignment capacity than the clients'
 * adapter); absent fields take `lora`'s.
 */
export function loraSpecs(
  split: ModelSplit,
  lora: LoraSettings,
  emulator: Partial<Omit<LoraSettings, 'dropout'>> = {},
): { adapter: LoraSpec; emulator: LoraSpec } {
  return {
    adapter: {
      name: ADAPTER,
      r: lora.r,
      alpha: lora.alpha,
      dropout: lora.dropout,
      targets: lora.targets,
      layers: split.adapterLayers,
    },
    emulator: {
      name: EMULATOR,
      r: emulator.r ?? lora.r,
      alpha: emulator.alpha ?? lora.alpha,
      dropout: lora.dropout,
      targets: emulator.targets ?? lora.targets,
      layers: split.emulatorLayers,
    },
  };
}

export function initialLora(spec: LoraSpec, lm: CausalLM, seed: number): LoraWeights {
  return { spec, tensors: initLora(spec, lm.config, seed) };
}

export function copyLora(l: LoraWeights): LoraWeights {
  return { spec: l.spec, tensors: new Map([...l.tensors].map(([k, v]) => [k, Float32Array.from(v)])) };
}

function loraShapes(loras: readonly LoraWeights[]): Map<string, readonly number[]> {
  const m = new Map<string, readonly number[]>();
  for (const l of loras) for (const [n, t] of l.tensors) m.set(n, shapeOfLora(n, t, l.spec));
  return m;
}

/** 1 for real tokens of each row (the padding after them is 0): masks padding out of both alignment terms. */
function tokenMask(examples: readonly TokenizedExample[], B: number, T: number): Float32Array {
  const m = new Float32Array(B * T);
  examples.forEach((ex, b) => m.fill(1, b * T, b * T + Math.min(ex.inputIds.length, T)));
  return m;
}

export interface AlignmentSettings {
  readonly lambda: number;
  readonly mu: number;
  readonly lr: number;
  readonly batchSize: number;
  readonly seq: number;
  readonly seed: number;
}

export interface AlignmentStats {
  readonly loss: number;
  readonly l2: number;
  readonly kl: number;
  readonly steps: number;
  /**
   * The emulator-to-full gap before this call's first update (measured with the new adapter, on that step's public
   * batch) and at its last step: what the alignment closed. Absent when steps = 0.
   */
  readonly l2_before?: number;
  readonly kl_before?: number;
  readonly l2_after?: number;
  readonly kl_after?: number;
}

/**
 * Server-side emulator alignment (FedBiOT's lower level). Per step, on a public batch: the full model with the
 * current adapter gives the teacher's hidden state at the end of the replaced block and its next-token
 * distribution; the client model (emulator + the same adapter) is trained, on the emulator LoRA only, to match:
 *   loss = sum_m (T - S)^2 / sum_m T^2  +  lambda * mean_m KL(p_full || p_emu)  [+ mu * CE on the public text]
 * where sums and means run over real tokens only (the reference included padding).
 */
export class AlignmentServer {
  private trainer: GraphTrainer | undefined;
  private readonly stream: ExampleStream<TokenizedExample>;
  private readonly studentHidden: number;

  constructor(
    readonly lm: CausalLM,
    readonly split: ModelSplit,
    readonly specs: { adapter: LoraSpec; emulator: LoraSpec },
    readonly settings: AlignmentSettings,
    publicWindows: readonly TokenizedExample[],
    public emulator: LoraWeights,
    streamState?: { epoch: number; pos: number },
  ) {
    if (publicWindows.length === 0)
      throw new Error(
        'alignment: the public dataset is empty (set alignment.publicData or use a federation with a public corpus)',
      );
    this.stream = new ExampleStream(publicWindows, settings.seed + 7, streamState);
    // index, in client-layer run order, of the emulator's last layer: its output is compared with the teacher's
    this.studentHidden = split.clientLayers.indexOf(split.emulatorLayers.at(-1)!);
  }

  get streamState(): { epoch: number; pos: number } {
    return this.stream.state;
  }

  /**
   * Runs `steps` alignment steps against `adapter`; updates and returns the emulator LoRA. `onStep` hears each
   * step's losses (progress).
   */
  async align(
    adapter: LoraWeights,
    steps: number,
    onStep?: (s: { loss: number; l2: number; kl: number }) => void,
  ): Promise<AlignmentStats> {
    let sum = { loss: 0, l2: 0, kl: 0 };
    if (steps === 0) return { ...sum, steps: 0 };
    const trainer = await this.ensureTrainer();
    const { batchSize: B, seq: T } = this.settings;
    const teacher = await this.teacherRunner();
    // The adapter sits above the teacher's hidden output, so it reaches the teacher only through the head (KL term).
    const adapterFeeds = this.settings.lambda > 0 ? loraFeeds(loraShapes([adapter]), [adapter]) : {};
    let first = { l2: 0, kl: 0 };
    let last = { l2: 0, kl: 0 };
    for (let s = 0; s < steps; s++) {
      const examples = this.stream.next(B);
      const batch = toTokenBatch(examples, B, T, 0);
      const tokens = this.lm.tokenFeeds(batch);
      const t = await teacher.run({ input_ids: tokens['input_ids']!, ...adapterFeeds });
      const feeds: Record<string, HostTensor> = {
        input_ids: tokens['input_ids']!,
        token_mask: { dtype: 'float32', shape: [B, T], data: tokenMask(examples, B, T) },
        teacher_hidden: t['teacher_hidden']!,
        ...adapterFeeds,
      };
      if (this.settings.lambda > 0) feeds['teacher_logprobs'] = t['teacher_logprobs']!;
      if (this.settings.mu > 0) {
        let n = 0;
        for (const v of batch.lossMask) n += v;
        feeds['labels'] = tokens['labels']!;
        feeds['loss_weights'] = {
          dtype: 'float32',
          shape: [B, T],
          data: Float32Array.from(batch.lossMask, (v) => v / Math.max(n, 1)),
        };
      }
      const r = await trainer.step([feeds], ['l2', 'kl']);
      sum = { loss: sum.loss + r.loss, l2: sum.l2 + r.extras['l2']!, kl: sum.kl + r.extras['kl']! };
      onStep?.({ loss: r.loss, l2: r.extras['l2']!, kl: r.extras['kl']! });
      // A step's l2/kl are computed before its update: step 0's are the gap the round's new adapter meets.
      last = { l2: r.extras['l2']!, kl: r.extras['kl']! };
      if (s === 0) first = last;
    }
    this.emulator = { spec: this.emulator.spec, tensors: trainer.params };
    return {
      loss: sum.loss / steps,
      l2: sum.l2 / steps,
      kl: sum.kl / steps,
      steps,
      l2_before: first.l2,
      kl_before: first.kl,
      l2_after: last.l2,
      kl_after: last.kl,
    };
  }

  exportOptimizerState(): OptimizerState | undefined {
    return this.trainer?.optimizer.exportState();
  }

  /** Restores the AdamW state of the emulator LoRA (resume). */
  async importOptimizerState(state: OptimizerState): Promise<void> {
    (await this.ensureTrainer()).optimizer.importState(state);
  }

  private teacherRunner() {
    const { batchSize: B, seq: T } = this.settings;
    const lm = this.lm;
    const teacherEnd = this.split.teacher.end - 1;
    return lm.graphs.get(
      `align-teacher-B${B}-T${T}-${loraKey([this.specs.adapter])}-e${teacherEnd}-k${this.settings.lambda > 0 ? 1 : 0}`,
      (g) => {
        const m = lm.build(g, {
          batch: B,
          seq: T,
          layers: lm.allLayers,
          start: 'ids',
          head: this.settings.lambda > 0,
          keepHidden: true,
          loras: this.settings.lambda > 0 ? [this.specs.adapter] : [],
        });
        g.output(m.hiddenStates[teacherEnd]!, 'teacher_hidden');
        if (this.settings.lambda > 0) g.output(O.logSoftmax(m.logits!, -1), 'teacher_logprobs');
      },
    );
  }

  private async ensureTrainer(): Promise<GraphTrainer> {
    if (this.trainer) return this.trainer;
    const { batchSize: B, seq: T, lambda, mu } = this.settings;
    const lm = this.lm;
    const cfg = lm.config;
    const layers = this.split.clientLayers;
    const names: string[] = [];
    const runner = await lm.graphs.get(
      `align-student-B${B}-T${T}-L${layersKey(layers)}-${loraKey([this.specs.emulator, this.specs.adapter])}-l${lambda}-m${mu}`,
      (g) => {
        const head = lambda > 0 || mu > 0;
        const m = lm.build(g, {
          batch: B,
          seq: T,
          layers,
          start: 'ids',
          head,
          keepHidden: true,
          loras: [this.specs.emulator, this.specs.adapter],
        });
        const mask = g.input('token_mask', 'float32', [B, T]);
        const teacherHidden = g.input('teacher_hidden', 'float32', [B, T, cfg.hiddenSize]);
        const terms = alignmentLoss({
          teacherHidden,
          studentHidden: m.hiddenStates[this.studentHidden]!,
          mask,
          lambda,
          ...(lambda > 0
            ? {
                teacherLogprobs: g.input('teacher_logprobs', 'float32', [B, T, cfg.vocabSize]),
                studentLogits: m.logits!,
              }
            : {}),
        });
        let loss = terms.loss;
        if (mu > 0) {
          const labels = g.input('labels', 'int64', [B, T]);
          const w = g.input('loss_weights', 'float32', [B, T]);
          loss = O.add(loss, O.mul(crossEntropy(m.logits!, labels, w), mu));
        }
        const { l2, kl } = terms;
        const trainable = [...m.loraParams].filter(([n]) => n.includes(`.${EMULATOR}.`));
        names.push(...trainable.map(([n]) => n));
        const grads = gradients(
          loss,
          trainable.map(([, t]) => t),
        );
        g.output(loss, 'loss');
        g.output(l2, 'l2');
        g.output(O.identity(kl), 'kl');
        grads.forEach((gr, i) => g.output(gr!, `grad.${names[i]}`));
      },
    );
    const params = new Map([...this.emulator.tensors].map(([k, v]) => [k, Float32Array.from(v)]));
    this.trainer = new GraphTrainer(runner, params, loraShapes([this.emulator]), {
      kind: 'adamw',
      lr: this.settings.lr,
      betas: [0.9, 0.95],
      weightDecay: 0,
    });
    return this.trainer;
  }
}

/**
 * The alignment objective on graph tensors: normalised L2 between the teacher's and the emulator's hidden states
 * plus lambda times the token-averaged KL(teacher || student) of the next-token distributions, both over the
 * positions where `mask` is 1. `teacherLogprobs` are log-probabilities; `studentLogits` raw logits.
 *   l2 = sum_m (T - S)^2 / sum_m T^2          (= mean((T-S)^2)/mean(T^2) over real tokens)
 *   kl = sum_m sum_v p_T (log p_T - log p_S) / sum_m 1
 */
export function alignmentLoss(t: {
  teacherHidden: Tensor;
  studentHidden: Tensor;
  mask: Tensor;
  lambda: number;
  teacherLogprobs?: Tensor;
  studentLogits?: Tensor;
}): { loss: Tensor; l2: Tensor; kl: Tensor } {
  const g = t.mask.graph;
  const m3 = O.unsqueeze(t.mask, [-1]); // (B, T, 1)
  const diff = O.sub(t.teacherHidden, t.studentHidden);
  const l2 = O.div(
    O.sumAll(O.mul(O.mul(diff, diff), m3)),
    O.max(O.sumAll(O.mul(O.mul(t.teacherHidden, t.teacherHidden), m3)), 1e-12),
  );
  let kl = g.constant(0, t.mask.dtype);
  let loss = l2;
  if (t.lambda > 0) {
    if (!t.teacherLogprobs || !t.studentLogits)
      throw new Error('alignmentLoss: lambda > 0 needs teacher log-probabilities and student logits');
    const tlp = t.teacherLogprobs;
    const perToken = O.reduceSum(O.mul(O.exp(tlp), O.sub(tlp, O.logSoftmax(t.studentLogits, -1))), [-1]); // (B, T)
    kl = O.div(O.sumAll(O.mul(perToken, t.mask)), O.max(O.sumAll(t.mask), 1));
    loss = O.add(loss, O.mul(kl, t.lambda));
  }
  return { loss, l2, kl };
}

export interface ClientSettings {
  readonly localSteps: number;
  readonly batchSize: number;
  readonly gradAccum: number;
  readonly seq: number;
  readonly lr: number;
  readonly betas: readonly [number, number];
  readonly weightDecay: number;
  readonly proxEps: number;
  readonly maxGradNorm?: number;
}

/** A job's client settings (the sequence bucket is the spec's maxLength). One definition for every runner. */
export function clientSettingsFor(spec: JobSpec): ClientSettings {
  const c = spec.clients;
  return {
    localSteps: c.localSteps,
    batchSize: c.batchSize,
    gradAccum: c.gradAccum,
    seq: spec.data.maxLength,
    lr: c.lr,
    betas: c.betas,
    weightDecay: c.weightDecay,
    proxEps: c.proxEps,
    ...(c.maxGradNorm !== undefined ? { maxGradNorm: c.maxGradNorm } : {}),
  };
}

export interface LocalResult {
  readonly adapter: LoraWeights;
  readonly tokens: number;
  readonly examples: number;
  readonly meanLoss: number;
}

/**
 * A client's round (FedBiOT's upper level): K AdamW steps of response-token cross-entropy on the client model
 * (emulator + adapter) starting from the broadcast adapter, training the adapter LoRA only, with the proximal
 * term eps*||θ - θ_t||² as a real gradient. The optimizer is fresh each round, as in the reference.
 */
export async function trainLocally(
  lm: CausalLM,
  layers: readonly number[],
  adapter: LoraWeights,
  frozen: readonly LoraWeights[],
  data: ExampleStream<TokenizedExample>,
  s: ClientSettings,
  seed: number,
  onStep?: (loss: number) => void,
): Promise<LocalResult> {
  const trainer = await LoraTrainer.create(lm, {
    batch: s.batchSize,
    seq: s.seq,
    layers,
    trainable: adapter,
    frozen,
    optimizer: { kind: 'adamw', lr: s.lr, betas: [s.betas[0], s.betas[1]], weightDecay: s.weightDecay },
    ...(s.maxGradNorm ? { maxGradNorm: s.maxGradNorm } : {}),
    proxEps: s.proxEps,
    seed,
  });
  let tokens = 0;
  let examples = 0;
  let lossSum = 0;
  for (let k = 0; k < s.localSteps; k++) {
    const micro: TokenBatch[] = [];
    for (let a = 0; a < s.gradAccum; a++) {
      const ex = data.next(s.batchSize);
      examples += ex.length;
      micro.push(toTokenBatch(ex, s.batchSize, s.seq, 0));
    }
    const r = await trainer.step(micro);
    tokens += r.tokens;
    lossSum += r.loss;
    onStep?.(r.loss);
  }
  return {
    adapter: { spec: adapter.spec, tensors: new Map([...trainer.params].map(([k, v]) => [k, Float32Array.from(v)])) },
    tokens,
    examples,
    meanLoss: lossSum / s.localSteps,
  };
}

/**
 * The model a method is evaluated as. AdapEmu: the client model (emulator layers + adapter layers) with both
 * LoRAs, what clients run. AdapFu: the adapter's LoRA plugged into the original full model (every layer, original
 * weights, no emulator LoRA), what the model owner ships.
 */
export function evalVariant(
  on: 'emu' | 'full',
  split: ModelSplit,
  numLayers: number,
  adapter: LoraWeights,
  emulator: LoraWeights,
): { layers: number[]; loras: LoraWeights[] } {
  if (on === 'emu') return { layers: [...split.clientLayers], loras: [emulator, adapter] };
  return { layers: Array.from({ length: numLayers }, (_, i) => i), loras: [adapter] };
}

export interface EvalScores {
  /** Mean response-token cross-entropy. */
  readonly testLoss: number;
  /** Exact-match accuracy of greedy answers (first number vs the reference). */
  readonly accuracy: number;
  readonly tokens: number;
  readonly items: number;
}

/** Forward passes evaluateVariant makes for a test set: its loss batches, then its generation batches. */
export function evalBatches(test: readonly unknown[], items: readonly unknown[], batch: number): number {
  return Math.ceil(test.length / batch) + Math.ceil(items.length / batch);
}

/**
 * Test loss and exact-match accuracy of one model variant on one test set. `onBatch` is called after each of the
 * evalBatches(...) batches (progress).
 */
export async function evaluateVariant(
  lm: CausalLM,
  variant: { layers?: readonly number[]; loras?: readonly LoraWeights[] },
  test: readonly TokenizedExample[],
  items: readonly EvalItem[],
  opts: { batch: number; seq: number; maxNewTokens: number; onBatch?: () => void },
): Promise<EvalScores> {
  let nll = 0;
  let tokens = 0;
  for (const group of chunks(test, opts.batch)) {
    const r = await lm.lossSum(toTokenBatch(group, opts.batch, opts.seq, 0), variant);
    nll += r.nllSum;
    tokens += r.tokens;
    opts.onBatch?.();
  }
  let correct = 0;
  for (const group of chunks(items, opts.batch)) {
    // A full batch keeps one compiled generation graph per variant; padding rows repeat the last prompt.
    const prompts = group.map((i) => i.prompt);
    while (prompts.length < opts.batch) prompts.push(group.at(-1)!.prompt);
    const outs = await lm.generate(prompts, { maxNewTokens: opts.maxNewTokens }, variant);
    group.forEach((item, i) => {
      const text = lm.tokenizer ? lm.tokenizer.decode(outs[i]!, { skipSpecialTokens: true }) : '';
      if (exactMatch(text, item.answer)) correct++;
    });
    opts.onBatch?.();
  }
  return {
    testLoss: nll / Math.max(tokens, 1),
    accuracy: items.length ? correct / items.length : 0,
    tokens,
    items: items.length,
  };
}
