/**
 * ONNX ModelProto bytes -> IrModel, the inverse of encodeModel (serialize.ts re-exports it). Used to inspect written
 * models in tests and tools; it accepts what other exporters write too, as long as the IR can represent it.
 */
import {
  DTYPE_BYTES,
  ONNX_DTYPE,
  sizeOf,
  type DType,
  type IrAttribute,
  type IrExternalData,
  type IrInitializer,
  type IrModel,
  type IrValueInfo,
} from '../ir.js';
import { AttributeType, DataLocation, ModelProto } from './onnx-schema.js';

const DTYPE_OF_ONNX = new Map<number, DType>(Object.entries(ONNX_DTYPE).map(([k, v]) => [v, k as DType]));
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** Shape of ModelProto.toObject output with `longs: String` (int64 fields arrive as decimal strings). */
interface PbEntry {
  key?: string;
  value?: string;
}
interface PbTensor {
  name?: string;
  dims: string[];
  data_type?: number;
  raw_data?: Uint8Array;
  data_location?: number;
  external_data: PbEntry[];
  float_data: number[];
  int32_data: number[];
  int64_data: string[];
  double_data: number[];
}
interface PbAttribute {
  name?: string;
  type?: number;
  f?: number;
  i?: string;
  s?: Uint8Array;
  t?: PbTensor;
  floats: number[];
  ints: string[];
}
interface PbNode {
  input: string[];
  output: string[];
  name?: string;
  op_type?: string;
  domain?: string;
  attribute: PbAttribute[];
}
interface PbDim {
  dim_value?: string;
  dim_param?: string;
}
interface PbValueInfo {
  name?: string;
  type?: { tensor_type?: { elem_type?: number; shape?: { dim: PbDim[] } } };
}
interface PbGraph {
  name?: string;
  node: PbNode[];
  initializer: PbTensor[];
  input: PbValueInfo[];
  output: PbValueInfo[];
  value_info: PbValueInfo[];
}
interface PbModel {
  ir_version?: string;
  opset_import: { domain?: string; version?: string }[];
  graph?: PbGraph;
}

function safeInt(s: string | undefined, what: string): number {
  const v = Number(s ?? '0');
  if (!Number.isSafeInteger(v)) throw new Error(`${what}: integer ${s} is outside JavaScript's safe range`);
  return v;
}

function dtypeOf(code: number | undefined, what: string): DType {
  const dtype = code === undefined ? undefined : DTYPE_OF_ONNX.get(code);
  if (dtype === undefined) throw new Error(`${what}: unsupported ONNX data type ${code}`);
  return dtype;
}

/** Converts the typed *_data fields older exporters use into the little-endian raw bytes the IR keeps. */
function typedFieldsToRaw(t: PbTensor, dtype: DType, n: number): Uint8Array | undefined {
  const out = new Uint8Array(n * DTYPE_BYTES[dtype]);
  const view = new DataView(out.buffer);
  const fill = <T>(src: T[], put: (i: number, v: T) => void): Uint8Array | undefined => {
    if (src.length !== n) return undefined;
    src.forEach((v, i) => put(i, v));
    return out;
  };
  switch (dtype) {
    case 'float32':
      return fill(t.float_data, (i, v) => view.setFloat32(4 * i, v, true));
    case 'float64':
      return fill(t.double_data, (i, v) => view.setFloat64(8 * i, v, true));
    case 'int64':
      return fill(t.int64_data, (i, v) => view.setBigInt64(8 * i, BigInt(v), true));
    case 'int32':
      return fill(t.int32_data, (i, v) => view.setInt32(4 * i, v, true));
    // ONNX stores 16-bit floats as their bit patterns and 8-bit types as values, one per int32_data entry.
    case 'float16':
    case 'bfloat16':
      return fill(t.int32_data, (i, v) => view.setUint16(2 * i, v, true));
    case 'uint8':
    case 'bool':
      return fill(t.int32_data, (i, v) => view.setUint8(i, v));
  }
}

function decodeTensor(t: PbTensor, what: string): IrInitializer {
  const name = t.name ?? '';
  const dtype = dtypeOf(t.data_type, what);
  const shape = t.dims.map((d) => safeInt(d, what));
  const want = sizeOf(shape) * DTYPE_BYTES[dtype];
  if (t.data_location === DataLocation.EXTERNAL) {
    const entries = new Map(t.external_data.map((e) => [e.key ?? '', e.value ?? '']));
    const location = entries.get('location');
    if (!location) throw new Error(`${what}: external data without a 'location' entry`);
    const external: IrExternalData = {
      location,
      offset: safeInt(entries.get('offset') ?? '0', `${what}: external offset`),
      length: safeInt(entries.get('length') ?? String(want), `${what}: external length`),
    };
    if (external.length !== want)
      throw new Error(`${what}: external length ${external.length}, ${dtype}[${shape}] needs ${want}`);
    return { name, dtype, shape, external };
  }
  let raw = t.raw_data !== undefined ? new Uint8Array(t.raw_data) : typedFieldsToRaw(t, dtype, sizeOf(shape));
  if (raw === undefined && want === 0) raw = new Uint8Array(0);
  if (raw === undefined) throw new Error(`${what}: no data for ${dtype}[${shape}]`);
  if (raw.byteLength !== want)
    throw new Error(`${what}: data is ${raw.byteLength} bytes, ${dtype}[${shape}] needs ${want}`);
  return { name, dtype, shape, raw };
}

function decodeAttribute(a: PbAttribute, what: string): IrAttribute {
  const where = `${what}: attribute '${a.name ?? ''}'`;
  switch (a.type) {
    case AttributeType.INT:
      return { kind: 'int', value: safeInt(a.i, where) };
    case AttributeType.FLOAT:
      return { kind: 'float', value: a.f ?? 0 };
    case AttributeType.STRING:
      return { kind: 'string', value: utf8Decoder.decode(a.s ?? new Uint8Array(0)) };
    case AttributeType.INTS:
      return { kind: 'ints', value: a.ints.map((v) => safeInt(v, where)) };
    case AttributeType.FLOATS:
      return { kind: 'floats', value: a.floats };
    case AttributeType.TENSOR:
      if (a.t === undefined) throw new Error(`${where}: TENSOR attribute without a tensor`);
      return { kind: 'tensor', value: decodeTensor(a.t, where) };
    default:
      throw new Error(`${where}: attribute type ${a.type} is not supported by the engine IR`);
  }
}

function decodeValueInfo(v: PbValueInfo, kind: string): IrValueInfo {
  const what = `${kind} '${v.name ?? ''}'`;
  const tt = v.type?.tensor_type;
  if (tt === undefined) throw new Error(`${what}: not a tensor type`);
  if (tt.shape === undefined) throw new Error(`${what}: no shape (the engine IR needs static shapes)`);
  const shape = tt.shape.dim.map((d, i) => {
    if (d.dim_value === undefined)
      throw new Error(`${what}: dimension ${i} is symbolic ('${d.dim_param ?? ''}'), not static`);
    return safeInt(d.dim_value, what);
  });
  return { name: v.name ?? '', dtype: dtypeOf(tt.elem_type, what), shape };
}

/**
 * Parses ONNX ModelProto bytes back into an IrModel (for inspection in tests and tools). Tensors stored in the typed
 * *_data fields are converted to raw bytes; float attributes come back as float32 values (ONNX stores them so).
 * `valueInfo` and `extraOpsets` are set only when non-empty.
 * @throws an Error starting with "decodeModel:" when the bytes are not a ModelProto the engine IR can represent.
 */
export function decodeModel(bytes: Uint8Array): IrModel {
  try {
    return decodeModelUnchecked(bytes);
  } catch (e) {
    throw new Error(`decodeModel: ${(e as Error).message}`, { cause: e });
  }
}

function decodeModelUnchecked(bytes: Uint8Array): IrModel {
  let pb: PbModel;
  try {
    pb = ModelProto.toObject(ModelProto.decode(bytes), { longs: String, arrays: true }) as PbModel;
  } catch (e) {
    throw new Error(`${bytes.byteLength} bytes are not a valid ONNX ModelProto (${(e as Error).message})`, {
      cause: e,
    });
  }
  const g = pb.graph;
  if (g === undefined) throw new Error('ModelProto has no graph');
  let opset: number | undefined;
  const extraOpsets: Record<string, number> = {};
  for (const o of pb.opset_import) {
    const version = safeInt(o.version, `opset_import '${o.domain ?? ''}'`);
    if (o.domain === undefined || o.domain === '' || o.domain === 'ai.onnx') opset = version;
    else extraOpsets[o.domain] = version;
  }
  if (opset === undefined) throw new Error('ModelProto has no opset_import for the default ONNX domain');
  const model: IrModel = {
    name: g.name ?? '',
    opset,
    ...(Object.keys(extraOpsets).length > 0 ? { extraOpsets } : {}),
    inputs: g.input.map((v) => decodeValueInfo(v, 'input')),
    outputs: g.output.map((v) => decodeValueInfo(v, 'output')),
    initializers: g.initializer.map((t) => decodeTensor(t, `initializer '${t.name ?? ''}'`)),
    nodes: g.node.map((n, i) => {
      const what = `node ${i} '${n.name ?? ''}' (${n.op_type ?? '?'})`;
      if (!n.op_type) throw new Error(`node ${i} '${n.name ?? ''}' has no op_type`);
      return {
        opType: n.op_type,
        domain: n.domain ?? '',
        name: n.name ?? '',
        inputs: n.input,
        outputs: n.output,
        attributes: Object.fromEntries(n.attribute.map((a) => [a.name ?? '', decodeAttribute(a, what)])),
      };
    }),
    ...(g.value_info.length > 0 ? { valueInfo: g.value_info.map((v) => decodeValueInfo(v, 'value_info')) } : {}),
  };
  return model;
}
