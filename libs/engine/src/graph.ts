import { GraphError, fmtShape } from './errors.js';
import {
  DTYPE_BYTES,
  sizeOf,
  type DType,
  type IrAttribute,
  type IrExternalData,
  type IrInitializer,
  type IrModel,
  type IrNode,
  type IrValueInfo,
} from './ir.js';
import type { OpName } from './op-names.js';

/**
 * A symbolic tensor: a value of one graph with a static dtype and shape. Tensors are immutable handles;
 * ops (ops.ts) take tensors and return new ones, recording ONNX nodes in the tensors' graph.
 */
export class Tensor {
  /** @internal use Graph methods or ops to create tensors */
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly name: string,
    readonly dtype: DType,
    readonly shape: readonly number[],
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  /** Number of elements. */
  get size(): number {
    return sizeOf(this.shape);
  }

  toString(): string {
    return `${this.name}:${this.dtype}${fmtShape(this.shape)}`;
  }
}

/** What a VJP rule receives: the op's inputs, outputs and attributes, the output gradients and which inputs need one. */
export interface VjpContext {
  readonly inputs: readonly Tensor[];
  readonly outputs: readonly Tensor[];
  readonly attrs: Readonly<Record<string, IrAttribute>>;
  /** Static facts the rule needs that ONNX passes as constant inputs (axes, sizes, exponents). */
  readonly meta: Readonly<Record<string, unknown>>;
  /** dL/d(output i), or null when no gradient reaches that output. */
  readonly gradOutputs: readonly (Tensor | null)[];
  /** needs[i]: whether input i depends on a tensor we differentiate with respect to (skip the others' work). */
  readonly needs: readonly boolean[];
}

/**
 * Returns one entry per input: its gradient (in the input's shape, or in a shape that broadcasts to it: the
 * driver sums it back, "unbroadcast"), or null where the input needs none or has none (indices, shapes).
 */
export type VjpFn = (ctx: VjpContext) => (Tensor | null)[];

/**
 * One differentiable step as autodiff sees it: a primitive ONNX node, or a composite op with a fused VJP. `vjp`:
 * 'rule' for a primitive op (ops.ts) differentiated by the rule vjp.ts keeps under its op name; a function for a
 * composite's fused VJP; null where the step is not differentiable (asking for a gradient through it is an error).
 */
export type TapeEntry = {
  readonly inputs: readonly Tensor[];
  readonly outputs: readonly Tensor[];
  readonly attrs: Readonly<Record<string, IrAttribute>>;
  readonly meta: Readonly<Record<string, unknown>>;
} & ({ readonly op: OpName; readonly vjp: 'rule' } | { readonly op: string; readonly vjp: VjpFn | null });

/** Where a frozen weight's bytes come from: in memory, or a byte range of a file (e.g. inside a .safetensors). */
export type WeightSource = { readonly data: ArrayBufferView } | { readonly external: IrExternalData };

type Kind = 'input' | 'initializer' | 'node';

/**
 * A graph under construction. It records ONNX nodes in emission order (what gets serialized) and, separately,
 * the tape that reverse-mode autodiff walks: composite ops appear on the tape as one entry with a fused VJP
 * while their primitive nodes are still emitted for the forward pass.
 */
export class Graph {
  readonly opset: number;
  private readonly tensors: Tensor[] = [];
  private readonly kinds = new Map<number, Kind>();
  private readonly producers = new Map<number, TapeEntry>();
  private readonly nodes: { node: IrNode; outputs: readonly Tensor[]; inputs: readonly Tensor[] }[] = [];
  private readonly tapeEntries: TapeEntry[] = [];
  private readonly inits = new Map<number, IrInitializer>();
  private readonly graphInputs: Tensor[] = [];
  private readonly graphOutputs: Tensor[] = [];
  private readonly constantCache = new Map<string, Tensor>();
  private readonly usedNames = new Set<string>();
  private scopePrefix = '';
  private tapeSuspended = 0;

  /**
   * Which kernels the graph is built for. 'cpu' uses ONNX's fused ops (LogSoftmax, variadic Sum, an Equal one-hot);
   * 'gpu' replaces the ones onnxruntime's WebGPU provider lacks with equivalent compositions, which would otherwise
   * run on the CPU with host-device copies of [tokens, vocab] tensors (measured on the H200). Same maths either way.
   */
  readonly target: 'cpu' | 'gpu';

  constructor(
    readonly name = 'graph',
    options: { opset?: number; target?: 'cpu' | 'gpu' } = {},
  ) {
    this.opset = options.opset ?? 18;
    this.target = options.target ?? 'cpu';
    if (this.opset < 18)
      throw new GraphError(`opset ${this.opset} unsupported: the builder needs >= 18 (axes as inputs)`);
  }

  /** The autodiff tape in creation order (a topological order). */
  get tape(): readonly TapeEntry[] {
    return this.tapeEntries;
  }

  /** Runs `fn` with tensor names prefixed by `scope/`, e.g. 'layers.3/attn'; purely for readable graphs. */
  scope<T>(scope: string, fn: () => T): T {
    const saved = this.scopePrefix;
    this.scopePrefix = `${saved}${scope}/`;
    try {
      return fn();
    } finally {
      this.scopePrefix = saved;
    }
  }

  /** A value fed at run time (data, or trainable parameters such as LoRA weights). */
  input(name: string, dtype: DType, shape: readonly number[]): Tensor {
    const t = this.newTensor(dtype, shape, name, true);
    this.kinds.set(t.id, 'input');
    this.graphInputs.push(t);
    return t;
  }

  /**
   * A frozen constant stored in the model (in memory or as external data). Frozen weights never get gradient
   * nodes: autodiff only follows paths from the tensors it is asked to differentiate.
   */
  weight(name: string, dtype: DType, shape: readonly number[], source: WeightSource): Tensor {
    const t = this.newTensor(dtype, shape, name, true);
    const bytes = sizeOf(shape) * DTYPE_BYTES[dtype];
    let init: IrInitializer;
    if ('data' in source) {
      const view = source.data;
      if (view.byteLength !== bytes) {
        throw new GraphError(
          `weight ${name}: ${view.byteLength} bytes given, ${dtype}${fmtShape(shape)} needs ${bytes}`,
        );
      }
      init = { name: t.name, dtype, shape, raw: new Uint8Array(view.buffer, view.byteOffset, view.byteLength) };
    } else {
      if (source.external.length !== bytes) {
        throw new GraphError(
          `weight ${name}: external data ${source.external.location}@${source.external.offset} holds ` +
            `${source.external.length} bytes, ${dtype}${fmtShape(shape)} needs ${bytes}`,
        );
      }
      init = { name: t.name, dtype, shape, external: source.external };
    }
    this.kinds.set(t.id, 'initializer');
    this.inits.set(t.id, init);
    return t;
  }

  /** A small constant (deduplicated): scalars, shapes, axes. `shape` defaults to [] for one value, [n] otherwise. */
  constant(values: number | readonly number[], dtype: DType, shape?: readonly number[]): Tensor {
    const list = typeof values === 'number' ? [values] : values;
    const dims = shape ?? (typeof values === 'number' ? [] : [list.length]);
    if (sizeOf(dims) !== list.length) {
      throw new GraphError(`constant: ${list.length} values do not fill shape ${fmtShape(dims)}`);
    }
    const key = `${dtype}|${dims.join(',')}|${list.join(',')}`;
    const cached = this.constantCache.get(key);
    if (cached) return cached;
    const raw = encodeValues(list, dtype);
    const t = this.newTensor(dtype, dims, 'const', false);
    this.kinds.set(t.id, 'initializer');
    this.inits.set(t.id, { name: t.name, dtype, shape: dims, raw });
    this.constantCache.set(key, t);
    return t;
  }

  /** Marks a tensor as a graph output, optionally under a given name (adds an Identity when renaming). */
  output(t: Tensor, name?: string): Tensor {
    this.own(t, 'output');
    let out = t;
    if (name !== undefined && name !== t.name) {
      if (this.usedNames.has(name)) throw new GraphError(`output name ${name} is already used in graph ${this.name}`);
      out = this.newTensor(t.dtype, t.shape, name, true);
      this.kinds.set(out.id, 'node');
      this.nodes.push({
        node: {
          opType: 'Identity',
          domain: '',
          name: `${name}_identity`,
          inputs: [t.name],
          outputs: [out.name],
          attributes: {},
        },
        inputs: [t],
        outputs: [out],
      });
    }
    this.graphOutputs.push(out);
    return out;
  }

  get outputs(): readonly Tensor[] {
    return this.graphOutputs;
  }

  get inputs(): readonly Tensor[] {
    return this.graphInputs;
  }

  /** The tape entry that produced `t`, if it was produced by an op (not an input or initializer). */
  producerOf(t: Tensor): TapeEntry | undefined {
    return this.producers.get(t.id);
  }

  isInitializer(t: Tensor): boolean {
    return this.kinds.get(t.id) === 'initializer';
  }

  /** Throws unless `t` belongs to this graph; `where` names the op for the message. */
  own(t: Tensor, where: string): void {
    if (!(t instanceof Tensor)) throw new GraphError(`${where}: expected a Tensor, got ${String(t)}`);
    if (t.graph !== this) {
      throw new GraphError(`${where}: tensor ${t.name} belongs to graph ${t.graph.name}, not ${this.name}`);
    }
    if (this.tensors[t.id] !== t) throw new GraphError(`${where}: unknown tensor ${t.name} in graph ${this.name}`);
  }

  /**
   * Emits one ONNX node. Used by ops.ts: callers have already inferred the output dtypes and shapes.
   * The node also goes on the tape (see TapeEntry for `vjp`) unless a composite op is being recorded.
   */
  emit(
    op: OpName,
    inputs: readonly Tensor[],
    attrs: Readonly<Record<string, IrAttribute>>,
    outputs: readonly { dtype: DType; shape: readonly number[] }[],
    vjp: 'rule',
    meta?: Readonly<Record<string, unknown>>,
  ): Tensor[];
  emit(
    op: string,
    inputs: readonly Tensor[],
    attrs: Readonly<Record<string, IrAttribute>>,
    outputs: readonly { dtype: DType; shape: readonly number[] }[],
    vjp: VjpFn | null,
    meta?: Readonly<Record<string, unknown>>,
    domain?: string,
  ): Tensor[];
  emit(
    op: string,
    inputs: readonly Tensor[],
    attrs: Readonly<Record<string, IrAttribute>>,
    outputs: readonly { dtype: DType; shape: readonly number[] }[],
    vjp: VjpFn | null | 'rule',
    meta: Readonly<Record<string, unknown>> = {},
    domain = '',
  ): Tensor[] {
    for (const t of inputs) this.own(t, op);
    const outs = outputs.map((o) => this.newTensor(o.dtype, o.shape, op, false));
    for (const o of outs) this.kinds.set(o.id, 'node');
    const nodeName = `${this.scopePrefix}${op}_${outs[0]?.id ?? this.tensors.length}`;
    this.nodes.push({
      node: {
        opType: op,
        domain,
        name: nodeName,
        inputs: inputs.map((t) => t.name),
        outputs: outs.map((t) => t.name),
        attributes: attrs,
      },
      inputs,
      outputs: outs,
    });
    if (this.tapeSuspended === 0) {
      const step = { inputs, outputs: outs, attrs, meta };
      // 'rule' comes only with an OpName (the first overload).
      this.record(vjp === 'rule' ? { ...step, op: op as OpName, vjp } : { ...step, op, vjp });
    }
    return outs;
  }

  /**
   * Records a composite op: `forward` emits primitive nodes (not put on the tape); the composite is put on the
   * tape as one entry whose VJP is `vjp`. Used for ops whose fused gradient is cheaper than the chain rule through
   * their parts (RMSNorm, softmax cross-entropy).
   */
  composite(op: string, inputs: readonly Tensor[], forward: () => Tensor[], vjp: VjpFn): Tensor[] {
    for (const t of inputs) this.own(t, op);
    this.tapeSuspended++;
    let outs: Tensor[];
    try {
      outs = forward();
    } finally {
      this.tapeSuspended--;
    }
    if (this.tapeSuspended === 0) this.record({ op, inputs, outputs: outs, attrs: {}, meta: {}, vjp });
    return outs;
  }

  /**
   * The graph as plain data, keeping only nodes and initializers that the outputs need (ORT warns about unused
   * initializers, and dead forward nodes would cost time).
   */
  toIr(): IrModel {
    if (this.graphOutputs.length === 0) throw new GraphError(`graph ${this.name} has no outputs`);
    const needed = new Set<number>(this.graphOutputs.map((t) => t.id));
    const keptNodes: IrNode[] = [];
    for (let i = this.nodes.length - 1; i >= 0; i--) {
      const n = this.nodes[i]!;
      if (!n.outputs.some((o) => needed.has(o.id))) continue;
      keptNodes.push(n.node);
      for (const t of n.inputs) needed.add(t.id);
    }
    keptNodes.reverse();
    const info = (t: Tensor): IrValueInfo => ({ name: t.name, dtype: t.dtype, shape: t.shape });
    const initializers: IrInitializer[] = [];
    for (const [id, init] of this.inits) if (needed.has(id)) initializers.push(init);
    const inputs = this.graphInputs.filter((t) => needed.has(t.id)).map(info);
    const valueInfo: IrValueInfo[] = [];
    const outNames = new Set(this.graphOutputs.map((t) => t.name));
    for (const n of this.nodes)
      for (const o of n.outputs) if (needed.has(o.id) && !outNames.has(o.name)) valueInfo.push(info(o));
    return {
      name: this.name,
      opset: this.opset,
      inputs,
      outputs: this.graphOutputs.map(info),
      initializers,
      nodes: keptNodes,
      valueInfo,
    };
  }

  /** Graph inputs that the outputs do not depend on (they would be dropped by toIr; callers may want to know). */
  unusedInputs(): Tensor[] {
    const ir = this.toIr();
    const used = new Set(ir.inputs.map((i) => i.name));
    return this.graphInputs.filter((t) => !used.has(t.name));
  }

  private record(entry: TapeEntry): void {
    this.tapeEntries.push(entry);
    for (const o of entry.outputs) this.producers.set(o.id, entry);
  }

  private newTensor(dtype: DType, shape: readonly number[], base: string, exact: boolean): Tensor {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0)
        throw new GraphError(`${base}: invalid dimension ${d} in shape ${fmtShape(shape)}`);
    }
    const id = this.tensors.length;
    let name: string;
    if (exact) {
      if (this.usedNames.has(base)) throw new GraphError(`name ${base} is already used in graph ${this.name}`);
      name = base;
    } else {
      name = `${this.scopePrefix}${base}_${id}`;
      while (this.usedNames.has(name)) name += '_';
    }
    this.usedNames.add(name);
    const t = new Tensor(this, id, name, dtype, Object.freeze([...shape]));
    this.tensors.push(t);
    return t;
  }
}

/** Little-endian bytes of `values` in `dtype` (used for constants). */
export function encodeValues(values: readonly number[], dtype: DType): Uint8Array {
  switch (dtype) {
    case 'float32':
      return bytesOf(Float32Array.from(values));
    case 'float64':
      return bytesOf(Float64Array.from(values));
    case 'int64':
      return bytesOf(BigInt64Array.from(values.map((v) => BigInt(Math.trunc(v)))));
    case 'int32':
      return bytesOf(Int32Array.from(values));
    case 'bool':
    case 'uint8':
      return Uint8Array.from(values.map((v) => (dtype === 'bool' ? (v ? 1 : 0) : v)));
    case 'float16':
      return bytesOf(Uint16Array.from(values.map(f32ToF16Bits)));
    case 'bfloat16':
      throw new GraphError('constants of dtype bfloat16 are not supported; build them in float32 and Cast');
  }
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** float32 -> IEEE half bits, round to nearest even (for small float16 constants). */
export function f32ToF16Bits(value: number): number {
  const f = new Float32Array([value]);
  const x = new Uint32Array(f.buffer)[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}
