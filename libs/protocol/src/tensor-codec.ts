/**
 * In-memory safetensors encode/decode for named float32 tensors (layout: docs/engine-notes.md §5).
 * Protocol may not import libs/engine, hence this small copy restricted to F32, the dtype LoRA updates travel in.
 *
 * Encoding is deterministic (tensors sorted by name, compact JSON, header space-padded to 8 bytes, as the
 * Hugging Face writer does), so equal tensors give equal bytes and therefore the same content address.
 */
import { TensorCodecError } from './errors.js';

/** A dense row-major float32 tensor. */
export interface Tensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface DecodedTensors {
  readonly tensors: Map<string, Tensor>;
  /** The optional `__metadata__` string map ({} when absent). */
  readonly metadata: Record<string, string>;
}

/** The reference implementation refuses headers above 100 MB; so do we, before allocating. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const METADATA_KEY = '__metadata__';
const littleEndianHost = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function elementCount(shape: readonly number[], source: string, name: string): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new TensorCodecError(
        source,
        `shape ${JSON.stringify(shape)} has a non-integer or negative dimension`,
        name,
      );
    }
    n *= d;
  }
  return n;
}

/**
 * Packs `tensors` into one safetensors blob. Throws TensorCodecError naming the tensor whose shape does not
 * match its data length.
 */
export function encodeTensors(
  tensors: ReadonlyMap<string, Tensor>,
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  const source = 'encodeTensors';
  const names = [...tensors.keys()].toSorted();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header[METADATA_KEY] = { ...metadata };
  let offset = 0;
  for (const name of names) {
    if (name === '' || name === METADATA_KEY) throw new TensorCodecError(source, 'reserved or empty tensor name', name);
    const t = tensors.get(name)!;
    const n = elementCount(t.shape, source, name);
    if (n !== t.data.length) {
      throw new TensorCodecError(
        source,
        `shape ${JSON.stringify(t.shape)} needs ${n} values, data has ${t.data.length}`,
        name,
      );
    }
    header[name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [offset, offset + 4 * n] };
    offset += 4 * n;
  }
  let json = JSON.stringify(header);
  const jsonBytes = new TextEncoder().encode(json);
  const padded = Math.ceil((8 + jsonBytes.length) / 8) * 8 - 8;
  json += ' '.repeat(padded - jsonBytes.length);
  const out = new Uint8Array(8 + padded + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(padded), true);
  out.set(new TextEncoder().encode(json), 8);
  let at = 8 + padded;
  for (const name of names) {
    const data = tensors.get(name)!.data;
    if (littleEndianHost) out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    else data.forEach((v, i) => view.setFloat32(at + 4 * i, v, true));
    at += data.byteLength;
  }
  return out;
}

interface Entry {
  name: string;
  shape: number[];
  begin: number;
  end: number;
}

function parseEntry(name: string, raw: unknown, source: string): Entry {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new TensorCodecError(source, 'header entry is not an object', name);
  }
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (dtype !== 'F32') {
    throw new TensorCodecError(
      source,
      `dtype ${JSON.stringify(dtype)} is not supported (this codec carries F32 only)`,
      name,
    );
  }
  if (!Array.isArray(shape)) throw new TensorCodecError(source, 'shape is not an array', name);
  const n = elementCount(shape as number[], source, name);
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && (o as number) >= 0) ||
    (offsets[0] as number) > (offsets[1] as number)
  ) {
    throw new TensorCodecError(
      source,
      `data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`,
      name,
    );
  }
  const [begin, end] = offsets as [number, number];
  if (end - begin !== 4 * n) {
    throw new TensorCodecError(
      source,
      `data_offsets span ${end - begin} bytes but shape ${JSON.stringify(shape)} needs ${4 * n}`,
      name,
    );
  }
  return { name, shape: shape as number[], begin, end };
}

/**
 * Unpacks a safetensors blob of F32 tensors, validating the layout: header length within the blob, JSON
 * object header, F32 dtypes, offsets matching shapes, and a data buffer exactly covered by the tensors (no
 * overlap, no holes, no trailing bytes). Throws TensorCodecError naming `source` and the tensor at fault.
 * Returned tensors own their memory (they do not alias `bytes`).
 */
export function decodeTensors(bytes: Uint8Array, source = 'tensor blob'): DecodedTensors {
  if (bytes.length < 8)
    throw new TensorCodecError(source, `truncated: ${bytes.length} bytes, the header length alone takes 8`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = view.getBigUint64(0, true);
  if (headerLen > BigInt(Math.min(MAX_HEADER_BYTES, bytes.length - 8))) {
    throw new TensorCodecError(
      source,
      `header length ${headerLen} exceeds the ${bytes.length - 8} bytes after it (or the 100 MB cap)`,
    );
  }
  const n = Number(headerLen);
  let header: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + n));
    if (!text.startsWith('{')) throw new Error('header does not start with "{"');
    header = JSON.parse(text);
  } catch (e) {
    throw new TensorCodecError(source, `header is not a UTF-8 JSON object (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new TensorCodecError(source, 'header is not a JSON object');
  }
  const metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      if (typeof raw !== 'object' || raw === null || !Object.values(raw).every((v) => typeof v === 'string')) {
        throw new TensorCodecError(source, '__metadata__ must map strings to strings');
      }
      Object.assign(metadata, raw);
    } else {
      entries.push(parseEntry(name, raw, source));
    }
  }
  const dataStart = 8 + n;
  const dataLen = bytes.length - dataStart;
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (const e of entries) {
    if (e.begin !== expected) {
      const what = e.begin < expected ? 'overlaps the previous tensor' : `leaves a hole of ${e.begin - expected} bytes`;
      throw new TensorCodecError(source, `data_offsets [${e.begin}, ${e.end}] ${what}`, e.name);
    }
    if (e.end > dataLen) {
      throw new TensorCodecError(
        source,
        `truncated: data ends at byte ${e.end} but the data buffer has ${dataLen}`,
        e.name,
      );
    }
    expected = e.end;
  }
  if (expected !== dataLen)
    throw new TensorCodecError(source, `${dataLen - expected} trailing bytes after the last tensor`);
  const tensors = new Map<string, Tensor>();
  for (const e of entries) {
    const count = (e.end - e.begin) / 4;
    const at = bytes.byteOffset + dataStart + e.begin;
    let data: Float32Array;
    if (littleEndianHost) {
      data = new Float32Array(bytes.buffer.slice(at, at + 4 * count));
    } else {
      data = new Float32Array(count);
      for (let i = 0; i < count; i++) data[i] = view.getFloat32(dataStart + e.begin + 4 * i, true);
    }
    tensors.set(e.name, { shape: e.shape, data });
  }
  return { tensors, metadata };
}
