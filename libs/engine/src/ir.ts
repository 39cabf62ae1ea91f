/**
 * The engine's plain-data model of an ONNX graph. The builder (graph.ts) produces it, the serializer
 * (onnx/serialize.ts) turns it into ModelProto bytes, and nothing else needs to know protobuf.
 */

/** Element types the engine emits. Names follow onnxruntime-node's `Tensor.type` strings. */
export type DType = 'float32' | 'float16' | 'float64' | 'int64' | 'int32' | 'bool' | 'bfloat16' | 'uint8';

/** ONNX TensorProto.DataType numbers for each DType. */
export const ONNX_DTYPE: Readonly<Record<DType, number>> = {
  float32: 1,
  uint8: 2,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
  float64: 11,
  bfloat16: 16,
};

/** Bytes per element. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  float32: 4,
  uint8: 1,
  int32: 4,
  int64: 8,
  bool: 1,
  float16: 2,
  float64: 8,
  bfloat16: 2,
};

/** Name, element type and static shape of a graph value (all shapes are static in this engine). */
export interface IrValueInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
}

/**
 * Where an initializer's bytes live when they are not inside the model file: `location` is a path relative to
 * the directory of the .onnx file (it may point into an existing .safetensors file), `offset`/`length` in bytes.
 */
export interface IrExternalData {
  readonly location: string;
  readonly offset: number;
  readonly length: number;
}

/** A constant tensor stored in the graph: either raw little-endian bytes or a reference to external data. */
export interface IrInitializer extends IrValueInfo {
  readonly raw?: Uint8Array;
  readonly external?: IrExternalData;
}

/** Tagged attribute values (ONNX distinguishes int from float, which JS numbers cannot). */
export type IrAttribute =
  | { readonly kind: 'int'; readonly value: number }
  | { readonly kind: 'float'; readonly value: number }
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'ints'; readonly value: readonly number[] }
  | { readonly kind: 'floats'; readonly value: readonly number[] }
  | { readonly kind: 'tensor'; readonly value: IrInitializer };

export interface IrNode {
  readonly opType: string;
  /** '' (the default ONNX domain) unless an op from another domain, e.g. 'com.microsoft'. */
  readonly domain: string;
  readonly name: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attributes: Readonly<Record<string, IrAttribute>>;
}

export interface IrModel {
  readonly name: string;
  /** Opset of the default domain (17..21 are tested). */
  readonly opset: number;
  /** Extra opset imports, e.g. { 'com.microsoft': 1 }. */
  readonly extraOpsets?: Readonly<Record<string, number>>;
  readonly inputs: readonly IrValueInfo[];
  readonly outputs: readonly IrValueInfo[];
  readonly initializers: readonly IrInitializer[];
  readonly nodes: readonly IrNode[];
  /** Shapes of intermediate values, for readability of the file and for ORT's planner. Optional. */
  readonly valueInfo?: readonly IrValueInfo[];
}

export const attr = {
  int: (value: number): IrAttribute => ({ kind: 'int', value }),
  float: (value: number): IrAttribute => ({ kind: 'float', value }),
  string: (value: string): IrAttribute => ({ kind: 'string', value }),
  ints: (value: readonly number[]): IrAttribute => ({ kind: 'ints', value }),
  floats: (value: readonly number[]): IrAttribute => ({ kind: 'floats', value }),
  tensor: (value: IrInitializer): IrAttribute => ({ kind: 'tensor', value }),
};

/** Number of elements of a static shape. */
export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
