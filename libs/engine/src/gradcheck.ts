/**
 * Gradient checking: the analytic gradients of a graph (autodiff, run by onnxruntime) against central finite
 * differences of the same graph's loss, in float64 (float32 finite differences are noise-limited:
 * docs/engine-notes.md §1).
 */
import type * as Ort from 'onnxruntime-node';
import { ort } from './runtime/ort.js';
import { gradients } from './autodiff.js';
import { GraphError } from './errors.js';
import { Graph, type Tensor } from './graph.js';
import { encodeModel } from './onnx/serialize.js';

export type FeedValue = Float64Array | Float32Array | BigInt64Array | Uint8Array;

export interface GradCheckSetup {
  readonly loss: Tensor;
  /** Graph inputs to differentiate with respect to (float64). */
  readonly wrt: readonly Tensor[];
  /** Values for every graph input, by input name. */
  readonly feeds: Readonly<Record<string, FeedValue>>;
}

export interface GradCheckOptions {
  /** Central-difference step (default 1e-6). */
  readonly eps?: number;
  /** Check at most this many elements per tensor, spread evenly (default: all). */
  readonly maxElements?: number;
  /** Build the graph for 'cpu' (default) or 'gpu' kernels (see Graph.target). */
  readonly target?: 'cpu' | 'gpu';
}

export interface TensorGradReport {
  readonly name: string;
  readonly checked: number;
  /** max |analytic - numeric| */
  readonly maxAbsError: number;
  /** max |analytic - numeric| / max |numeric| over the checked elements: the error relative to the tensor's scale. */
  readonly relError: number;
}

export interface GradCheckReport {
  readonly loss: number;
  readonly tensors: readonly TensorGradReport[];
  /** Largest relError over all tensors. */
  readonly worst: number;
  readonly nodes: number;
}

function ortTensor(t: Tensor, data: FeedValue): Ort.Tensor {
  const type = t.dtype === 'bool' ? 'bool' : t.dtype;
  return new ort.Tensor(type as 'float64', data as Float64Array, [...t.shape]);
}

/**
 * Builds the graph with `build`, appends gradient nodes for `wrt`, and compares them with central differences
 * of the loss. Session optimisation is 'basic': at higher levels ORT fuses x*sigmoid(x) into QuickGelu, which has
 * no float64 kernel (docs/engine-notes.md §2.3).
 */
export async function gradCheck(
  build: (g: Graph) => GradCheckSetup,
  opts: GradCheckOptions = {},
): Promise<GradCheckReport> {
  const eps = opts.eps ?? 1e-6;
  const g = new Graph('gradcheck', { target: opts.target ?? 'cpu' });
  const { loss, wrt, feeds } = build(g);
  for (const w of wrt) {
    if (w.dtype !== 'float64') throw new GraphError(`gradCheck: ${w} must be float64`);
    if (!(feeds[w.name] instanceof Float64Array)) throw new GraphError(`gradCheck: no float64 feed for ${w.name}`);
  }
  const grads = gradients(loss, wrt);
  g.output(loss, 'loss');
  grads.forEach((gr, i) => g.output(gr!, `grad.${wrt[i]!.name}`));
  const ir = g.toIr();
  const session = await ort.InferenceSession.create(encodeModel(ir), {
    graphOptimizationLevel: 'basic',
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
  });
  try {
    const byName = new Map(g.inputs.map((t) => [t.name, t]));
    const live: Record<string, FeedValue> = {};
    for (const inp of ir.inputs) {
      const v = feeds[inp.name];
      if (!v) throw new GraphError(`gradCheck: no feed for graph input ${inp.name}`);
      live[inp.name] = v instanceof Float64Array ? Float64Array.from(v) : v;
    }
    const run = async (fetch: string[]): Promise<Ort.InferenceSession.OnnxValueMapType> => {
      const f: Record<string, Ort.Tensor> = {};
      for (const [name, v] of Object.entries(live)) f[name] = ortTensor(byName.get(name)!, v);
      return session.run(f, fetch);
    };
    const base = await run(['loss', ...wrt.map((w) => `grad.${w.name}`)]);
    const lossValue = (base['loss']!.data as Float64Array)[0]!;
    const reports: TensorGradReport[] = [];
    for (const w of wrt) {
      const analytic = base[`grad.${w.name}`]!.data as Float64Array;
      const values = live[w.name] as Float64Array;
      const n = values.length;
      const count = Math.min(n, opts.maxElements ?? n);
      let maxAbs = 0;
      let maxNumeric = 0;
      for (let k = 0; k < count; k++) {
        const i = count === n ? k : Math.floor((k * n) / count);
        const saved = values[i]!;
        values[i] = saved + eps;
        const plus = ((await run(['loss']))['loss']!.data as Float64Array)[0]!;
        values[i] = saved - eps;
        const minus = ((await run(['loss']))['loss']!.data as Float64Array)[0]!;
        values[i] = saved;
        const numeric = (plus - minus) / (2 * eps);
        maxAbs = Math.max(maxAbs, Math.abs(numeric - analytic[i]!));
        maxNumeric = Math.max(maxNumeric, Math.abs(numeric));
      }
      reports.push({
        name: w.name,
        checked: count,
        maxAbsError: maxAbs,
        relError: maxAbs / Math.max(maxNumeric, 1e-30),
      });
    }
    return {
      loss: lossValue,
      tensors: reports,
      worst: Math.max(0, ...reports.map((r) => r.relError)),
      nodes: ir.nodes.length,
    };
  } finally {
    await session.release();
  }
}
