import type * as Ort from 'onnxruntime-node';
import { ort } from './ort.js';
import { sizeOf, type DType } from '../ir.js';

/** Typed arrays a HostTensor may hold; which one is fixed by its dtype (see {@link hostTensor}). */
export type HostData = Float32Array | Float64Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array;

/**
 * A tensor in JS memory, as fed to and returned from a {@link ModelRunner}. Plain data (no class), so it crosses
 * `postMessage` to a worker unchanged. Element layout is row-major; float16/bfloat16 hold raw IEEE/bf16 bit patterns
 * in a Uint16Array, int64 holds BigInt64Array, bool holds one byte (0/1) per element.
 */
export interface HostTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: HostData;
}

type HostDataCtor =
  | Float32ArrayConstructor
  | Float64ArrayConstructor
  | Uint16ArrayConstructor
  | BigInt64ArrayConstructor
  | Int32ArrayConstructor
  | Uint8ArrayConstructor;

/** The typed array class each dtype is stored in (the same mapping onnxruntime-node uses). */
const DATA_CTOR: Readonly<Record<DType, HostDataCtor>> = {
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  int64: BigInt64Array,
  int32: Int32Array,
  bool: Uint8Array,
  uint8: Uint8Array,
};

function isDType(x: string): x is DType {
  return Object.prototype.hasOwnProperty.call(DATA_CTOR, x);
}

function assertShape(shape: readonly number[], name: string, kind = 'tensor'): void {
  if (!Array.isArray(shape)) throw new TypeError(`${kind} '${name}': shape must be an array of sizes`);
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new RangeError(`${kind} '${name}': shape [${shape.join(', ')}] has an invalid dimension ${String(d)}`);
    }
  }
}

/**
 * Checks that `t` is a well-formed HostTensor: known dtype, non-negative integer dims, a data array of the class the
 * dtype requires and exactly `prod(shape)` elements.
 * @param name used in error messages (usually the graph input or output name)
 * @param kind what the tensor is, for messages: `<kind> '<name>': <problem>`. Default 'tensor'.
 * @throws TypeError / RangeError naming the tensor
 */
export function assertHostTensor(t: HostTensor, name: string, kind = 'tensor'): void {
  if (t === null || typeof t !== 'object')
    throw new TypeError(`${kind} '${name}': expected a HostTensor, got ${String(t)}`);
  if (typeof t.dtype !== 'string' || !isDType(t.dtype)) {
    throw new TypeError(`${kind} '${name}': unknown dtype '${String(t.dtype)}'`);
  }
  assertShape(t.shape, name, kind);
  const ctor = DATA_CTOR[t.dtype];
  if (!(t.data instanceof ctor)) {
    const got = (t.data as object | undefined)?.constructor?.name ?? String(t.data);
    throw new TypeError(`${kind} '${name}': dtype ${t.dtype} needs a ${ctor.name}, got ${got}`);
  }
  const n = sizeOf(t.shape);
  if (t.data.length !== n) {
    throw new RangeError(
      `${kind} '${name}': shape [${t.shape.join(', ')}] has ${n} elements but data has ${t.data.length}`,
    );
  }
}

/**
 * Makes a validated HostTensor. Without `data`, allocates a zero-filled array of the right class.
 * @param name used in error messages; default 'tensor'
 */
export function hostTensor(dtype: DType, shape: readonly number[], data?: HostData, name = 'tensor'): HostTensor {
  if (!isDType(dtype)) throw new TypeError(`tensor '${name}': unknown dtype '${String(dtype)}'`);
  assertShape(shape, name);
  const t: HostTensor = { dtype, shape: [...shape], data: data ?? new DATA_CTOR[dtype](sizeOf(shape)) };
  assertHostTensor(t, name);
  return t;
}

/**
 * Wraps a HostTensor as an `ort.Tensor` without copying: onnxruntime-node reads the typed array's memory in place
 * (docs/engine-notes.md §3), so the caller must not mutate `t.data` until the run that uses it has resolved.
 * @throws for bfloat16, which onnxruntime-node cannot pass as a graph input or output (docs/engine-notes.md §3;
 *   cast inside the graph instead), and for malformed tensors, naming `name`.
 */
export function toOrtTensor(t: HostTensor, name: string): Ort.Tensor {
  assertHostTensor(t, name);
  if (t.dtype === 'bfloat16') {
    throw new TypeError(
      `tensor '${name}': bfloat16 cannot be a graph input or output in onnxruntime-node; feed float32 and Cast in the graph`,
    );
  }
  // The ort.Tensor overloads are keyed by literal type names; the DATA_CTOR table already guarantees the pairing.
  return new ort.Tensor(t.dtype as 'float32', t.data as Float32Array, t.shape);
}

/**
 * Converts an `ort.Tensor` held in CPU memory into a HostTensor that shares its data array (outputs of a run are
 * already a fresh copy, docs/engine-notes.md §3, so sharing is safe).
 * @throws for element types outside DType (e.g. int8, string) and for tensors on a GPU location, naming `name`.
 */
export function fromOrtTensor(t: Ort.Tensor, name: string): HostTensor {
  if (t.location !== 'cpu' && t.location !== 'cpu-pinned') {
    throw new TypeError(`tensor '${name}': data lives on '${t.location}', not in CPU memory`);
  }
  if (!isDType(t.type))
    throw new TypeError(`tensor '${name}': element type '${t.type}' is not supported by HostTensor`);
  const host: HostTensor = { dtype: t.type, shape: [...t.dims], data: t.data as HostData };
  assertHostTensor(host, name);
  return host;
}

/**
 * A copy of `t` whose data is a fresh, exactly sized array. Used before transferring a tensor to a worker: the
 * caller keeps its own array, and a view into a larger buffer (e.g. a Buffer pool slice) does not drag the whole
 * buffer along.
 */
export function cloneHostTensor(t: HostTensor): HostTensor {
  return { dtype: t.dtype, shape: [...t.shape], data: t.data.slice() };
}
