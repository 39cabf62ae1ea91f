/**
 * LoRA, in one place: which linears an adapter targets, how its tensors are named (as PEFT names them in its state
 * dict: `model.layers.2.self_attn.q_proj.lora_A.<adapter>.weight`), their shapes (A [r, in], B [out, r]), PEFT's
 * initialisation, and how an adapter attaches to a graph (W x + b + (alpha / r) B A x). LoRA factors are graph
 * inputs, so trainable or not is only a question of which inputs `gradients()` is asked about.
 */
// The engine's light entry for values: job specs import LORA_TARGETS (via libs/model's light entry) without loading
// onnxruntime; the index import is type-only and erased.
import type { DType, Graph, HostTensor, Tensor } from '../../engine/src/index.js';
import { dropCapacity, dropoutMask, linear, ops as O, mulberry32, type Mulberry32 } from '../../engine/src/light.js';
import type { ModelConfig } from './config.js';
import { LINEAR_NAMES, linearFeatures, moduleName, parseModuleName, type LinearName } from './linears.js';

/** Every linear of a decoder layer can carry a LoRA. */
export const LORA_TARGETS = LINEAR_NAMES;
export type LoraTarget = LinearName;

/** One LoRA adapter: rank, alpha, which linears of which (original) layers. Scaling is alpha / r (PEFT). */
export interface LoraSpec {
  readonly name: string;
  readonly r: number;
  readonly alpha: number;
  readonly targets: readonly LoraTarget[];
  readonly layers: readonly number[];
  /** Dropout on the LoRA input during training (PEFT lora_dropout); masks are fed as inputs. */
  readonly dropout: number;
}

/** A LoRA adapter's spec and current values (by PEFT state-dict name: `<module>.lora_A.<name>.weight`). */
export interface LoraWeights {
  readonly spec: LoraSpec;
  readonly tensors: ReadonlyMap<string, Float32Array>;
}

// ---- naming -------------------------------------------------------------------------------------------------

/** PEFT state-dict names of a module's LoRA factors for adapter `adapter`. */
export function loraParamNames(module: string, adapter: string): { a: string; b: string } {
  return { a: `${module}.lora_A.${adapter}.weight`, b: `${module}.lora_B.${adapter}.weight` };
}

/**
 * The graph input holding the dropped positions of a module's LoRA dropout mask [B, T, in] (training graphs with
 * dropout > 0): int32 [dropCapacity(B·T·in, p)], drawn by drawDropPositions; the graph builds the mask (dropoutMask).
 */
export function loraDropoutName(module: string, adapter: string): string {
  return `${module}.lora_dropped.${adapter}`;
}

/** One adapted linear of an adapter: where it sits and the names of its factors. */
export interface LoraModule {
  readonly layer: number;
  readonly target: LoraTarget;
  /** e.g. 'model.layers.2.self_attn.q_proj' */
  readonly module: string;
  /** PEFT state-dict names of A and B. */
  readonly a: string;
  readonly b: string;
}

/** The modules an adapter adapts, layer by layer and in the spec's target order within a layer. */
export function loraModules(spec: LoraSpec): LoraModule[] {
  const out: LoraModule[] = [];
  for (const layer of spec.layers) {
    for (const target of spec.targets) {
      const module = moduleName(layer, target);
      out.push({ layer, target, module, ...loraParamNames(module, spec.name) });
    }
  }
  return out;
}

/** The layer and target of an adaptable module name, or undefined for anything else. */
export function parseLoraModule(module: string): { layer: number; target: LoraTarget } | undefined {
  const m = parseModuleName(module);
  return m && { layer: m.layer, target: m.name };
}

/** Graph cache-key part naming a list of adapters (spec only: values are fed, not baked in). */
export function loraKey(loras: readonly LoraWeights[] | readonly LoraSpec[] = []): string {
  return loras
    .map((l) => ('spec' in l ? l.spec : l))
    .map((s) => `${s.name}.r${s.r}.a${s.alpha}.${s.targets.join('+')}.L${s.layers.join('_')}`)
    .join(',');
}

// ---- shapes -------------------------------------------------------------------------------------------------

/** A [r, in] and B [out, r] of an adapter's factors on one target linear. */
export function loraFactorShapes(
  cfg: ModelConfig,
  r: number,
  target: LoraTarget,
): { a: [number, number]; b: [number, number] } {
  const [fin, fout] = linearFeatures(cfg, target);
  return { a: [r, fin], b: [fout, r] };
}

/** The graph-declared shape of a LoRA factor: A is [r, in], B is [out, r]. */
export function shapeOfLora(name: string, t: Float32Array, spec: LoraSpec): readonly number[] {
  return name.includes('.lora_A.') ? [spec.r, t.length / spec.r] : [t.length / spec.r, spec.r];
}

/** Feeds for LoRA factors: every tensor of every adapter, with the shapes the graph declared. */
export function loraFeeds(
  graphInputs: ReadonlyMap<string, readonly number[]>,
  loras: readonly LoraWeights[],
): Record<string, HostTensor> {
  const feeds: Record<string, HostTensor> = {};
  for (const l of loras) {
    for (const [name, data] of l.tensors) {
      const shape = graphInputs.get(name);
      if (shape) feeds[name] = { dtype: 'float32', shape, data };
    }
  }
  return feeds;
}

/** A dropout input of a training graph: its name, the mask's element count and drop probability, its capacity. */
export interface LoraDropoutInput {
  readonly name: string;
  /** Elements of the mask (B·T·in). */
  readonly elements: number;
  readonly p: number;
  /** The input's shape: [dropCapacity(elements, p)]. */
  readonly shape: readonly number[];
}

/** The dropout inputs among a graph's inputs, for adapters `specs` (each input takes its adapter's dropout). */
export function loraDropoutInputs(
  cfg: ModelConfig,
  specs: readonly LoraSpec[],
  inputNames: readonly string[],
  batch: number,
  seq: number,
): LoraDropoutInput[] {
  const out: LoraDropoutInput[] = [];
  for (const name of inputNames) {
    const at = name.indexOf('.lora_dropped.');
    if (at < 0) continue;
    const m = parseLoraModule(name.slice(0, at));
    if (!m) throw new Error(`LoRA dropout input ${name} names no adaptable linear`);
    const adapter = name.slice(at + '.lora_dropped.'.length);
    const spec = specs.find((s) => s.name === adapter);
    if (!spec || !(spec.dropout > 0))
      throw new Error(`LoRA dropout input ${name}: no adapter '${adapter}' with dropout`);
    const elements = batch * seq * linearFeatures(cfg, m.target)[0];
    out.push({ name, elements, p: spec.dropout, shape: [dropCapacity(elements, spec.dropout)] });
  }
  return out;
}

// ---- initialisation -----------------------------------------------------------------------------------------

/** The dropout/initialisation stream of a trainer seed (offset so it differs from other streams of the same seed). */
export function loraStream(seed: number): Mulberry32 {
  return mulberry32((seed ^ 0x9e3779b9) >>> 0);
}

/** PEFT's LoRA initialisation: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0. */
export function initLora(spec: LoraSpec, cfg: ModelConfig, seed: number): Map<string, Float32Array> {
  const uniform = loraStream(seed);
  const out = new Map<string, Float32Array>();
  for (const { target, a, b } of loraModules(spec)) {
    const [fin, fout] = linearFeatures(cfg, target);
    const bound = 1 / Math.sqrt(fin);
    out.set(
      a,
      Float32Array.from({ length: spec.r * fin }, () => (2 * uniform() - 1) * bound),
    );
    out.set(b, new Float32Array(fout * spec.r));
  }
  return out;
}

// ---- in a graph ---------------------------------------------------------------------------------------------

/** One adapter on one linear of a graph: its factor inputs and, when training with dropout, its mask input. */
interface Attached {
  readonly scale: number;
  readonly a: Tensor;
  readonly b: Tensor;
  readonly drop?: Tensor;
}

/** The LoRA factors of a graph: inputs by PEFT name, and the adapters on each module. */
export class GraphLoras {
  private constructor(
    /** LoRA factor inputs by PEFT state-dict name. */
    readonly params: ReadonlyMap<string, Tensor>,
    private readonly byModule: ReadonlyMap<string, readonly Attached[]>,
  ) {}

  /**
   * Declares the factor inputs (A [r, in], B [out, r]) of every adapter on every linear of `layers` it covers, and
   * with `dropout` a dropped-positions input per linear of each adapter whose dropout is > 0, from which the graph
   * builds the [B, T, in] mask (dropoutMask).
   */
  static attach(
    g: Graph,
    cfg: ModelConfig,
    specs: readonly LoraSpec[],
    opts: {
      readonly layers: readonly number[];
      readonly dtype: DType;
      readonly dropout: boolean;
      readonly batch: number;
      readonly seq: number;
    },
  ): GraphLoras {
    const params = new Map<string, Tensor>();
    const byModule = new Map<string, Attached[]>();
    for (const spec of specs) {
      for (const m of loraModules(spec)) {
        if (!opts.layers.includes(m.layer)) continue;
        const shapes = loraFactorShapes(cfg, spec.r, m.target);
        const a = g.input(m.a, opts.dtype, shapes.a);
        const b = g.input(m.b, opts.dtype, shapes.b);
        params.set(m.a, a);
        params.set(m.b, b);
        const maskShape = [opts.batch, opts.seq, shapes.a[1]];
        const drop =
          opts.dropout && spec.dropout > 0
            ? dropoutMask(
                g.input(loraDropoutName(m.module, spec.name), 'int32', [
                  dropCapacity(
                    maskShape.reduce((x, y) => x * y, 1),
                    spec.dropout,
                  ),
                ]),
                maskShape,
                spec.dropout,
                opts.dtype,
              )
            : undefined;
        const list = byModule.get(m.module) ?? [];
        const scale = spec.alpha / spec.r;
        list.push(drop ? { scale, a, b, drop } : { scale, a, b });
        byModule.set(m.module, list);
      }
    }
    return new GraphLoras(params, byModule);
  }

  /**
   * `y` (the linear's output for input `x`) plus every adapter on `module`: y + (alpha / r) B A (x * mask). The branch
   * runs in the factors' dtype: a float16 `x` (float16 activations) is cast up and the product cast back, as PEFT
   * casts the input to lora_A's dtype.
   */
  apply(module: string, x: Tensor, y: Tensor): Tensor {
    let out = y;
    for (const { scale, a, b, drop } of this.byModule.get(module) ?? []) {
      const xa = O.cast(x, a.dtype); // no node when x already has the factors' dtype
      const xin = drop ? O.mul(xa, drop) : xa;
      out = O.add(out, O.cast(O.mul(linear(linear(xin, a), b), scale), y.dtype));
    }
    return out;
  }
}
