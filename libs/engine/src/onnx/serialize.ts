import {
  closeSync,
  existsSync,
  fsyncSync,
  openSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, extname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import {
  DTYPE_BYTES,
  ONNX_DTYPE,
  sizeOf,
  type IrAttribute,
  type IrExternalData,
  type IrInitializer,
  type IrModel,
  type IrNode,
  type IrValueInfo,
} from '../ir.js';
import { AttributeType, DataLocation, ModelProto } from './onnx-schema.js';

// Decoding lives in its own module; re-exported so the whole ONNX I/O API is importable from here.
export { decodeModel } from './decode.js';

/** Written into ModelProto.producer_name. */
export const PRODUCER_NAME = 'fedbiot-ts';

/**
 * Largest ModelProto onnxruntime will parse: protobuf's 2 GiB message limit (INT_MAX bytes). ORT refuses bigger
 * buffers with "Model data size exceeds maximum supported size (2GB)"; weights beyond that go to external data.
 */
export const ORT_MAX_MODEL_BYTES = 2 ** 31 - 1;

/** Default threshold above which writeModel moves a raw initializer into the external data file (1 MiB). */
export const DEFAULT_EXTERNALIZE_ABOVE = 1 << 20;

/**
 * Offsets of tensors that writeModel puts into an external data file are multiples of this (bytes). ORT reads any
 * offset, but ONNX recommends page-aligned offsets so the data can be memory-mapped tensor by tensor; the padding
 * costs at most 4 KiB per tensor, and only tensors above the (1 MiB default) threshold are externalized.
 */
export const EXTERNAL_DATA_ALIGNMENT = 4096;

/**
 * ir_version of the ONNX release that introduced each default-domain opset (onnx/helper.py VERSION_TABLE). Stamping
 * the minimum IR version an opset needs keeps files loadable by every runtime that knows the opset. Measured with
 * onnxruntime-node 1.30: it loads ir_version 7..13 with any opset up to 26 and refuses ir_version 14 and opset 27,
 * so every entry here is accepted (opsets 24..26 are left out until their IR versions are confirmed).
 */
const IR_VERSION_FOR_OPSET: Readonly<Record<number, number>> = {
  13: 7,
  14: 7,
  15: 8,
  16: 8,
  17: 8,
  18: 8,
  19: 9,
  20: 9,
  21: 10,
  22: 10,
  23: 11,
};

/** ir_version written for a model whose default-domain opset is `opset`; throws for opsets outside 13..23. */
export function irVersionForOpset(opset: number): number {
  const ir = IR_VERSION_FOR_OPSET[opset];
  if (ir === undefined) {
    throw new Error(`ONNX opset ${opset} is not supported by the serializer (supported: 13..23)`);
  }
  return ir;
}

/** Options of encodeModel. */
export interface EncodeOptions {
  /** Refuse models whose inline tensor data or encoded size exceeds this many bytes. Default ORT_MAX_MODEL_BYTES. */
  readonly maxModelBytes?: number;
}

const utf8 = new TextEncoder();

// ---------------------------------------------------------------- encode

/** Byte size a tensor of this dtype and shape must have. */
function expectedBytes(t: IrValueInfo): number {
  return sizeOf(t.shape) * DTYPE_BYTES[t.dtype];
}

function checkShape(what: string, shape: readonly number[]): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new Error(`${what}: invalid dimension ${d} in shape [${shape}]`);
  }
}

function encodeTensor(t: IrInitializer, what: string): object {
  checkShape(what, t.shape);
  const dataType = ONNX_DTYPE[t.dtype];
  if (dataType === undefined) throw new Error(`${what}: unknown dtype '${String(t.dtype)}'`);
  const base = { name: t.name, dims: t.shape, data_type: dataType };
  const want = expectedBytes(t);
  if ((t.raw === undefined) === (t.external === undefined)) {
    throw new Error(`${what}: exactly one of 'raw' and 'external' must be set`);
  }
  if (t.raw !== undefined) {
    if (t.raw.byteLength !== want) {
      throw new Error(`${what}: raw data is ${t.raw.byteLength} bytes, ${t.dtype}[${t.shape}] needs ${want}`);
    }
    return { ...base, raw_data: t.raw };
  }
  const ext = t.external!;
  if (ext.location === '' || isAbsolute(ext.location)) {
    throw new Error(`${what}: external location '${ext.location}' must be a path relative to the model's directory`);
  }
  if (!Number.isSafeInteger(ext.offset) || ext.offset < 0)
    throw new Error(`${what}: invalid external offset ${ext.offset}`);
  if (ext.length !== want) {
    throw new Error(`${what}: external length is ${ext.length} bytes, ${t.dtype}[${t.shape}] needs ${want}`);
  }
  return {
    ...base,
    data_location: DataLocation.EXTERNAL,
    external_data: [
      { key: 'location', value: ext.location },
      { key: 'offset', value: String(ext.offset) },
      { key: 'length', value: String(ext.length) },
    ],
  };
}

function encodeAttribute(name: string, a: IrAttribute, what: string): object {
  const checkInt = (v: number): number => {
    if (!Number.isSafeInteger(v)) throw new Error(`${what}: attribute '${name}' has non-integer value ${v}`);
    return v;
  };
  switch (a.kind) {
    case 'int':
      return { name, type: AttributeType.INT, i: checkInt(a.value) };
    case 'float':
      return { name, type: AttributeType.FLOAT, f: a.value };
    case 'string':
      return { name, type: AttributeType.STRING, s: utf8.encode(a.value) };
    case 'ints':
      return { name, type: AttributeType.INTS, ints: a.value.map(checkInt) };
    case 'floats':
      return { name, type: AttributeType.FLOATS, floats: a.value };
    case 'tensor':
      return { name, type: AttributeType.TENSOR, t: encodeTensor(a.value, `${what}: attribute '${name}'`) };
    default:
      throw new Error(`${what}: attribute '${name}' has unknown kind '${(a as { kind: string }).kind}'`);
  }
}

function encodeNode(n: IrNode, index: number): object {
  const what = `node ${index} '${n.name}' (${n.opType})`;
  return {
    input: n.inputs,
    output: n.outputs,
    name: n.name,
    op_type: n.opType,
    domain: n.domain,
    attribute: Object.entries(n.attributes).map(([k, a]) => encodeAttribute(k, a, what)),
  };
}

function encodeValueInfo(v: IrValueInfo, kind: string): object {
  const what = `${kind} '${v.name}'`;
  checkShape(what, v.shape);
  const elemType = ONNX_DTYPE[v.dtype];
  if (elemType === undefined) throw new Error(`${what}: unknown dtype '${String(v.dtype)}'`);
  return {
    name: v.name,
    type: { tensor_type: { elem_type: elemType, shape: { dim: v.shape.map((d) => ({ dim_value: d })) } } },
  };
}

/** Bytes of tensor data the model would carry inside the protobuf (raw initializers and tensor attributes). */
export function inlineTensorBytes(model: IrModel): number {
  let total = 0;
  for (const t of model.initializers) total += t.raw?.byteLength ?? 0;
  for (const n of model.nodes) {
    for (const a of Object.values(n.attributes)) if (a.kind === 'tensor') total += a.value.raw?.byteLength ?? 0;
  }
  return total;
}

function tooBig(model: IrModel, bytes: number, limit: number, what: string): Error {
  return new Error(
    `model '${model.name}': ${what} is ${bytes} bytes, over the ${limit}-byte limit of an ONNX protobuf ` +
      `(onnxruntime refuses models above 2 GB); move large initializers to external data ` +
      `(writeModel with a lower externalizeAbove, or initializers with 'external')`,
  );
}

/**
 * Serializes an IrModel to ONNX ModelProto bytes. Raw initializers go into `raw_data`; initializers with `external`
 * get data_location=EXTERNAL and location/offset/length entries (resolved by ORT relative to the model's directory).
 * ir_version is the minimum the opset needs (see irVersionForOpset).
 * @throws if the model is malformed (names the node/tensor) or its inline data exceeds `opts.maxModelBytes`.
 */
export function encodeModel(model: IrModel, opts: EncodeOptions = {}): Uint8Array {
  const limit = opts.maxModelBytes ?? ORT_MAX_MODEL_BYTES;
  // Checked before encoding so an oversized model fails fast instead of first allocating gigabytes.
  const inline = inlineTensorBytes(model);
  if (inline > limit) throw tooBig(model, inline, limit, 'inline tensor data');
  const opsetImport = [{ domain: '', version: model.opset }];
  for (const [domain, version] of Object.entries(model.extraOpsets ?? {})) opsetImport.push({ domain, version });
  const proto = {
    ir_version: irVersionForOpset(model.opset),
    opset_import: opsetImport,
    producer_name: PRODUCER_NAME,
    graph: {
      name: model.name,
      node: model.nodes.map(encodeNode),
      initializer: model.initializers.map((t) => encodeTensor(t, `initializer '${t.name}'`)),
      input: model.inputs.map((v) => encodeValueInfo(v, 'input')),
      output: model.outputs.map((v) => encodeValueInfo(v, 'output')),
      value_info: (model.valueInfo ?? []).map((v) => encodeValueInfo(v, 'value_info')),
    },
  };
  const bytes = ModelProto.encode(proto).finish();
  if (bytes.byteLength > limit) throw tooBig(model, bytes.byteLength, limit, 'the encoded model');
  return bytes;
}

// ---------------------------------------------------------------- write to disk

/** Options of writeModel. */
export interface WriteModelOptions {
  /** Raw initializers larger than this many bytes go to the external data file. Default 1 MiB. */
  readonly externalizeAbove?: number;
  /** External data file name, relative to the model's directory. Default `<model basename>.data`. */
  readonly externalDataFile?: string;
  /** Passed to encodeModel (testing hook). Default ORT_MAX_MODEL_BYTES. */
  readonly maxModelBytes?: number;
  /**
   * Accept existing external references that resolve outside the model's directory (e.g. '../x.safetensors').
   * Default false, because onnxruntime-node 1.30 refuses them when loading the model from a path ("External data
   * path escapes model directory", symlinks resolved); such a model only loads from bytes with `externalData`.
   */
  readonly allowExternalOutsideModelDir?: boolean;
}

/** What writeModel wrote. */
export interface WrittenModel {
  readonly onnxPath: string;
  /** Absent when no initializer was large enough to externalize (no data file is written then). */
  readonly externalDataPath?: string;
  /** Size of the .onnx file in bytes. */
  readonly bytes: number;
  /** Size of the external data file in bytes (0 when none was written). */
  readonly externalDataBytes: number;
}

function isInside(dir: string, path: string): boolean {
  const rel = relative(dir, path);
  return rel !== '' && rel !== '..' && !rel.startsWith('..' + sep) && !isAbsolute(rel);
}

/** Refuses external references ORT would reject at load time: outside the model directory, or past the file's end. */
function checkExternalReference(t: IrInitializer, ext: IrExternalData, modelDir: string, allowOutside: boolean): void {
  const path = resolve(modelDir, ext.location);
  const exists = existsSync(path);
  if (!allowOutside) {
    // ORT compares canonical paths, so a symlink inside the directory that points out of it is refused too.
    const real = exists ? realpathSync(path) : path;
    const realDir = existsSync(modelDir) ? realpathSync(modelDir) : modelDir;
    if (!isInside(realDir, real)) {
      throw new Error(
        `writeModel: initializer '${t.name}': external data '${ext.location}' resolves to ${real}, outside the model ` +
          `directory ${realDir}; onnxruntime refuses such models when loading from a path (write the model next to ` +
          `the data, or pass allowExternalOutsideModelDir and load from bytes with the externalData session option)`,
      );
    }
  }
  if (exists && ext.offset + ext.length > statSync(path).size) {
    throw new Error(
      `writeModel: initializer '${t.name}': bytes ${ext.offset}..${ext.offset + ext.length} are past the end of ` +
        `${path} (${statSync(path).size} bytes)`,
    );
  }
}

function tempPathFor(path: string): string {
  return `${path}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Writes chunks at their offsets into a fresh temp file and fsyncs it; returns the temp path. */
function writeTemp(path: string, chunks: readonly { offset: number; data: Uint8Array }[]): string {
  const tmp = tempPathFor(path);
  const fd = openSync(tmp, 'wx');
  try {
    for (const { offset, data } of chunks) {
      let done = 0;
      while (done < data.byteLength) done += writeSync(fd, data, done, data.byteLength - done, offset + done);
    }
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  return tmp;
}

/**
 * Writes `model` to `onnxPath`. Raw initializers above `externalizeAbove` bytes are moved into one external data
 * file next to the model (offsets aligned to EXTERNAL_DATA_ALIGNMENT); initializers that already have `external` are
 * referenced unchanged (e.g. into a .safetensors file) after checking they lie inside the model's directory (see
 * allowExternalOutsideModelDir) and, when the file exists, that the byte range fits in it. Both files are written
 * to temp names, fsynced and renamed into place, data file first and model last, so a crash never leaves a partial
 * model file (a crash between the two renames can pair an older .onnx with the new data file).
 * @throws if the model's inline part would exceed ORT's 2 GB limit, if an existing external reference escapes the
 *   model's directory or its file, or if the data file to be written is also the target of an existing reference.
 */
export function writeModel(model: IrModel, onnxPath: string, opts: WriteModelOptions = {}): WrittenModel {
  const threshold = opts.externalizeAbove ?? DEFAULT_EXTERNALIZE_ABOVE;
  const modelDir = dirname(resolve(onnxPath));
  const dataFile = opts.externalDataFile ?? `${basename(onnxPath, extname(onnxPath))}.data`;
  if (dataFile === '' || isAbsolute(dataFile)) {
    throw new Error(`writeModel: externalDataFile '${dataFile}' must be a path relative to the model's directory`);
  }
  const dataPath = join(modelDir, dataFile);
  if (!isInside(modelDir, dataPath)) {
    throw new Error(`writeModel: externalDataFile '${dataFile}' must stay inside the model's directory ${modelDir}`);
  }
  const chunks: { offset: number; data: Uint8Array }[] = [];
  let end = 0;
  const initializers = model.initializers.map((t): IrInitializer => {
    if (t.raw === undefined || t.raw.byteLength <= threshold) return t;
    const offset = Math.ceil(end / EXTERNAL_DATA_ALIGNMENT) * EXTERNAL_DATA_ALIGNMENT;
    chunks.push({ offset, data: t.raw });
    end = offset + t.raw.byteLength;
    return {
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      external: { location: dataFile, offset, length: t.raw.byteLength },
    };
  });
  for (const t of model.initializers) {
    if (t.external) checkExternalReference(t, t.external, modelDir, opts.allowExternalOutsideModelDir ?? false);
  }
  if (chunks.length > 0) {
    const clash = model.initializers.find((t) => t.external && resolve(modelDir, t.external.location) === dataPath);
    if (clash) {
      throw new Error(
        `writeModel: initializer '${clash.name}' already points into ${dataPath}, which this write would replace`,
      );
    }
  }
  const bytes = encodeModel({ ...model, initializers }, { maxModelBytes: opts.maxModelBytes });
  const finalPath = resolve(onnxPath);
  let dataTmp: string | undefined;
  let modelTmp: string | undefined;
  try {
    if (chunks.length > 0) dataTmp = writeTemp(dataPath, chunks);
    modelTmp = writeTemp(finalPath, [{ offset: 0, data: bytes }]);
    if (dataTmp !== undefined) renameSync(dataTmp, dataPath);
    dataTmp = undefined;
    renameSync(modelTmp, finalPath);
    modelTmp = undefined;
  } finally {
    if (dataTmp !== undefined) rmSync(dataTmp, { force: true });
    if (modelTmp !== undefined) rmSync(modelTmp, { force: true });
  }
  return {
    onnxPath: finalPath,
    ...(chunks.length > 0 ? { externalDataPath: dataPath } : {}),
    bytes: bytes.byteLength,
    externalDataBytes: end,
  };
}
