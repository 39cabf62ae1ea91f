/**
 * Reader and writer for the safetensors format (Hugging Face checkpoints and PEFT adapters).
 *
 * Layout: 8-byte little-endian u64 header length N, then N bytes of UTF-8 JSON
 * (`name -> {dtype, shape, data_offsets: [begin, end]}` plus an optional string map `__metadata__`), then the
 * data buffer; offsets are relative to its start (byte 8 + N). Tensors are row-major little-endian and tile the
 * buffer exactly: no overlaps, no holes, nothing after the last tensor (the reference implementation's rules).
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { endianness } from 'node:os';
import type { IrExternalData } from './ir.js';

// Typed-array views below reinterpret file bytes in host order; the format is little-endian.
if (endianness() !== 'LE') throw new Error('safetensors: big-endian hosts are not supported');

/** Bytes per element of every dtype the header may name. */
export const SAFETENSORS_DTYPE_BYTES: Readonly<Record<string, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

/** The reference implementation refuses headers above 100 MB; so do we (also guards against garbage lengths). */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry in the header. `begin`/`end` are byte offsets relative to the data buffer. */
export interface SafetensorsEntry {
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  /** N, the JSON header length in bytes (padding included). */
  readonly headerLength: number;
  /** Absolute file offset of the data buffer: 8 + N. */
  readonly dataStart: number;
  /** Tensors in header order. */
  readonly tensors: ReadonlyMap<string, SafetensorsEntry>;
  readonly metadata?: Readonly<Record<string, string>>;
  /** Size of the file the header was read from, in bytes. */
  readonly fileSize: number;
  /** The raw header bytes (for content hashing, e.g. cache keys). */
  readonly rawHeader: Uint8Array;
}

/** A malformed or unreadable safetensors file; `file` and (where one is at fault) `tensor` name the culprit. */
export class SafetensorsError extends Error {
  override readonly name = 'SafetensorsError';
  constructor(
    readonly file: string,
    readonly tensor: string | undefined,
    /** The problem, without the file and tensor prefix. */
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}${tensor === undefined ? '' : `: tensor ${tensor}`}: ${detail}`, options);
  }
}

/** Typed-array element types returned by readTensor, per dtype. F16 and BF16 come back as raw Uint16Array bits. */
export type SafetensorsArray =
  Float32Array | Float64Array | Uint16Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array;

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Parses and validates header bytes. `fileSize` is the total file size; the tensors must tile
 * [0, fileSize - 8 - N) exactly, so a truncated or padded-at-the-end file is rejected here.
 */
export function parseSafetensorsHeader(
  file: string,
  prefix: Uint8Array,
  headerBytes: Uint8Array,
  fileSize: number,
): SafetensorsHeader {
  const n = Number(new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true));
  const headerLength = n;
  const dataStart = 8 + n;
  if (headerBytes[0] !== 0x7b) throw new SafetensorsError(file, undefined, "header JSON does not start with '{'");
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new SafetensorsError(file, undefined, `header is not valid UTF-8 JSON (${(e as Error).message})`, {
      cause: e,
    });
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    throw new SafetensorsError(file, undefined, 'header is not a JSON object');
  const tensors = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> | undefined;
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
        throw new SafetensorsError(file, undefined, '__metadata__ is not an object');
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') throw new SafetensorsError(file, undefined, `__metadata__.${k} is not a string`);
      }
      metadata = raw as Record<string, string>;
      continue;
    }
    tensors.set(name, parseEntry(file, name, raw));
  }
  const dataSize = fileSize - dataStart;
  if (dataSize < 0)
    throw new SafetensorsError(
      file,
      undefined,
      `header length ${n} runs past the end of the ${fileSize}-byte file (truncated?)`,
    );
  const sorted = [...tensors.entries()].toSorted((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let cursor = 0;
  for (const [name, e] of sorted) {
    if (e.begin < cursor)
      throw new SafetensorsError(
        file,
        name,
        `data_offsets [${e.begin}, ${e.end}] overlap the previous tensor (ends at ${cursor})`,
      );
    if (e.begin > cursor)
      throw new SafetensorsError(
        file,
        name,
        `data_offsets [${e.begin}, ${e.end}] leave a hole after byte ${cursor} of the data buffer`,
      );
    if (e.end > dataSize) {
      throw new SafetensorsError(
        file,
        name,
        `data_offsets [${e.begin}, ${e.end}] run past the end of the data buffer (${dataSize} bytes; file truncated?)`,
      );
    }
    cursor = e.end;
  }
  if (cursor !== dataSize) {
    throw new SafetensorsError(
      file,
      undefined,
      `data buffer is ${dataSize} bytes but the tensors cover ${cursor} (trailing bytes or missing tensors)`,
    );
  }
  const out: SafetensorsHeader = { headerLength, dataStart, tensors, fileSize, rawHeader: headerBytes };
  return metadata === undefined ? out : { ...out, metadata };
}

function parseEntry(file: string, name: string, raw: unknown): SafetensorsEntry {
  if (raw === null || typeof raw !== 'object') throw new SafetensorsError(file, name, 'entry is not an object');
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (typeof dtype !== 'string' || SAFETENSORS_DTYPE_BYTES[dtype] === undefined) {
    throw new SafetensorsError(file, name, `unknown dtype ${JSON.stringify(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new SafetensorsError(file, name, `shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[1] < offsets[0]
  ) {
    throw new SafetensorsError(
      file,
      name,
      `data_offsets ${JSON.stringify(offsets)} are not [begin, end] with 0 <= begin <= end`,
    );
  }
  const [begin, end] = offsets as [number, number];
  const expected = SAFETENSORS_DTYPE_BYTES[dtype]! * numel(shape as number[]);
  if (end - begin !== expected) {
    throw new SafetensorsError(
      file,
      name,
      `${dtype} ${JSON.stringify(shape)} needs ${expected} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
    );
  }
  return { dtype, shape: shape as number[], begin, end };
}

/** Reads and validates only the header of a safetensors file (8 + N bytes are read, never the data). */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new SafetensorsError(path, undefined, `cannot open (${(e as Error).message})`, { cause: e });
  }
  try {
    const fileSize = (await fh.stat()).size;
    if (fileSize < 8)
      throw new SafetensorsError(path, undefined, `file is ${fileSize} bytes, shorter than the 8-byte length prefix`);
    const prefix = new Uint8Array(8);
    await fh.read(prefix, 0, 8, 0);
    const n = checkHeaderLength(path, prefix, fileSize);
    const headerBytes = new Uint8Array(n);
    const { bytesRead } = await fh.read(headerBytes, 0, n, 8);
    if (bytesRead !== n)
      throw new SafetensorsError(path, undefined, `short read of the header (${bytesRead} of ${n} bytes)`);
    return parseSafetensorsHeader(path, prefix, headerBytes, fileSize);
  } finally {
    await fh.close();
  }
}

/** Synchronous twin of readSafetensorsHeader. */
export function readSafetensorsHeaderSync(path: string): SafetensorsHeader {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new SafetensorsError(path, undefined, `cannot open (${(e as Error).message})`, { cause: e });
  }
  try {
    const fileSize = fstatSync(fd).size;
    if (fileSize < 8)
      throw new SafetensorsError(path, undefined, `file is ${fileSize} bytes, shorter than the 8-byte length prefix`);
    const prefix = new Uint8Array(8);
    readSync(fd, prefix, 0, 8, 0);
    const n = checkHeaderLength(path, prefix, fileSize);
    const headerBytes = new Uint8Array(n);
    readFully(fd, headerBytes, 8, path);
    return parseSafetensorsHeader(path, prefix, headerBytes, fileSize);
  } finally {
    closeSync(fd);
  }
}

function checkHeaderLength(path: string, prefix: Uint8Array, fileSize: number): number {
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES))
    throw new SafetensorsError(
      path,
      undefined,
      `header length ${n} exceeds the 100 MB limit (not a safetensors file?)`,
    );
  if (8n + n > BigInt(fileSize))
    throw new SafetensorsError(
      path,
      undefined,
      `header length ${n} runs past the end of the ${fileSize}-byte file (truncated?)`,
    );
  if (n < 2n) throw new SafetensorsError(path, undefined, `header length ${n} is too short for a JSON object`);
  return Number(n);
}

function readFully(fd: number, into: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < into.length) {
    const got = readSync(fd, into, done, into.length - done, position + done);
    if (got === 0) throw new SafetensorsError(path, undefined, `unexpected end of file at byte ${position + done}`);
    done += got;
  }
}

function entryOf(path: string, header: SafetensorsHeader, name: string): SafetensorsEntry {
  const e = header.tensors.get(name);
  if (e === undefined) throw new SafetensorsError(path, name, 'no such tensor in the file');
  return e;
}

/** Raw bytes of one tensor, in a fresh 8-byte-aligned buffer (so any typed-array view fits). */
export function readTensorBytesSync(
  path: string,
  name: string,
  header: SafetensorsHeader = readSafetensorsHeaderSync(path),
): Uint8Array {
  const e = entryOf(path, header, name);
  const bytes = new Uint8Array(new ArrayBuffer(e.end - e.begin));
  const fd = openSync(path, 'r');
  try {
    readFully(fd, bytes, header.dataStart + e.begin, path);
  } finally {
    closeSync(fd);
  }
  return bytes;
}

/** Views raw little-endian bytes as the typed array for `dtype` (F16/BF16: Uint16Array of bit patterns). */
export function viewAs(dtype: string, bytes: Uint8Array): SafetensorsArray {
  const { byteOffset, byteLength } = bytes;
  const size = SAFETENSORS_DTYPE_BYTES[dtype];
  if (size === undefined) throw new Error(`safetensors: unknown dtype ${dtype}`);
  if (byteLength % size !== 0)
    throw new Error(`safetensors: ${byteLength} bytes is not a whole number of ${dtype} elements`);
  // Typed arrays need aligned offsets; copy only when the caller's view is misaligned.
  const aligned = byteOffset % size === 0 ? bytes : bytes.slice();
  const [b, o, len] = [aligned.buffer, aligned.byteOffset, byteLength / size];
  switch (dtype) {
    case 'F32':
      return new Float32Array(b, o, len);
    case 'F64':
      return new Float64Array(b, o, len);
    case 'F16':
    case 'BF16':
      return new Uint16Array(b, o, len);
    case 'I64':
      return new BigInt64Array(b, o, len);
    case 'I32':
      return new Int32Array(b, o, len);
    case 'I16':
      return new Int16Array(b, o, len);
    case 'I8':
      return new Int8Array(b, o, len);
    case 'U8':
    case 'BOOL':
      return new Uint8Array(b, o, len);
    default:
      throw new Error(`safetensors: reading dtype ${dtype} is not supported`);
  }
}

/**
 * Reads one tensor as a typed array: F32 Float32Array, F64 Float64Array, F16/BF16 Uint16Array (raw bits; see
 * toFloat32), I64 BigInt64Array, I32 Int32Array, I16 Int16Array, I8 Int8Array, U8/BOOL Uint8Array.
 */
export async function readTensor(
  path: string,
  name: string,
  header?: SafetensorsHeader,
): Promise<{ dtype: string; shape: readonly number[]; data: SafetensorsArray }> {
  const h = header ?? (await readSafetensorsHeader(path));
  const e = entryOf(path, h, name);
  const bytes = new Uint8Array(new ArrayBuffer(e.end - e.begin));
  const fh = await open(path, 'r');
  try {
    let done = 0;
    while (done < bytes.length) {
      const { bytesRead } = await fh.read(bytes, done, bytes.length - done, h.dataStart + e.begin + done);
      if (bytesRead === 0) throw new SafetensorsError(path, name, 'unexpected end of file while reading tensor data');
      done += bytesRead;
    }
  } finally {
    await fh.close();
  }
  try {
    return { dtype: e.dtype, shape: e.shape, data: viewAs(e.dtype, bytes) };
  } catch (err) {
    throw new SafetensorsError(path, name, (err as Error).message, { cause: err });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Float conversions. f16 -> f32 and bf16 -> f32 are exact (every f16/bf16 value is a float32); the reverse
// directions round to nearest, ties to even, as torch's `.to(torch.float16 / torch.bfloat16)` does.

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Exact value of one IEEE binary16 bit pattern. NaN payloads are preserved in the float32 bits. */
export function f16BitsToFloat32(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float32.
    const v = mant * 2 ** -24;
    return sign ? -v : v;
  }
  if (exp === 0x1f) u32Scratch[0] = (sign | 0x7f800000 | (mant << 13)) >>> 0;
  else u32Scratch[0] = (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  return f32Scratch[0]!;
}

let f16Table: Float32Array | undefined;
/** All 65536 f16 values as float32, built once (256 KB) so bulk conversion is a table lookup. */
function f16ToF32Table(): Float32Array {
  if (f16Table === undefined) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToFloat32(h);
  }
  return f16Table;
}

/** float32 -> binary16 bits, round to nearest even; overflow gives +-Inf, NaN stays a (quiet) NaN. */
export function float32ToF16(value: number): number {
  f32Scratch[0] = value;
  const f = u32Scratch[0]!;
  const sign = (f >>> 16) & 0x8000;
  const fExp = f & 0x7f800000;
  if (fExp >= 0x47800000) {
    // |x| >= 2^16 (always overflows after rounding) or Inf/NaN.
    if (fExp === 0x7f800000 && (f & 0x7fffff) !== 0) return sign | 0x7e00 | ((f & 0x7fffff) >>> 13);
    return sign | 0x7c00;
  }
  if (fExp <= 0x38000000) {
    // Result is subnormal or zero. Below 2^-25 everything rounds to zero.
    if (fExp < 0x33000000) return sign;
    const e = fExp >>> 23;
    let sig = (0x00800000 + (f & 0x7fffff)) >>> (113 - e);
    // Add half an ulp unless this is an exact tie with an even result (bits shifted out above count too).
    if ((sig & 0x3fff) !== 0x1000 || (f & 0x7ff) !== 0) sig += 0x1000;
    return sign | (sig >>> 13);
  }
  const hExp = (fExp - 0x38000000) >>> 13;
  let sig = f & 0x7fffff;
  if ((sig & 0x3fff) !== 0x1000) sig += 0x1000;
  // A carry out of the mantissa bumps the exponent, possibly to Inf: both correct.
  return sign | ((hExp + (sig >>> 13)) & 0x7fff);
}

/** Exact value of one bfloat16 bit pattern. */
export function bf16BitsToFloat32(b: number): number {
  u32Scratch[0] = (b << 16) >>> 0;
  return f32Scratch[0]!;
}

/** float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN. */
export function float32ToBf16(value: number): number {
  f32Scratch[0] = value;
  const f = u32Scratch[0]!;
  if ((f & 0x7f800000) === 0x7f800000 && (f & 0x7fffff) !== 0) return ((f >>> 16) | 0x40) & 0xffff;
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Converts a Float32Array to bf16 or f16 bits, elementwise (see float32ToBf16 / float32ToF16). */
export function float32ArrayTo(dtype: 'BF16' | 'F16', values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const fn = dtype === 'BF16' ? float32ToBf16 : float32ToF16;
  for (let i = 0; i < values.length; i++) out[i] = fn(values[i]!);
  return out;
}

/**
 * Converts the raw little-endian bytes (or typed array) of a float tensor to float32: F32 copied, F16/BF16 exact,
 * F64 rounded to nearest. Integer dtypes are rejected: they are not weights.
 */
export function toFloat32(dtype: string, bytes: Uint8Array | SafetensorsArray): Float32Array {
  const view = viewAs(dtype, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  switch (dtype) {
    case 'F32':
      return Float32Array.from(view as Float32Array);
    case 'F64':
      return Float32Array.from(view as Float64Array);
    case 'F16': {
      const table = f16ToF32Table();
      const src = view as Uint16Array;
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]!]!;
      return out;
    }
    case 'BF16': {
      const src = view as Uint16Array;
      const out = new Float32Array(src.length);
      const outBits = new Uint32Array(out.buffer);
      for (let i = 0; i < src.length; i++) outBits[i] = src[i]! << 16;
      return out;
    }
    default:
      throw new Error(`safetensors: cannot convert dtype ${dtype} to float32`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Writing.

/** A tensor to write. `data` holds exactly numel * size(dtype) bytes; a function is called once, when its turn
 * comes, so a converter can stream tensors to disk without holding them all in memory. */
export interface SafetensorsWriteTensor {
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly data: ArrayBufferView | (() => ArrayBufferView | Promise<ArrayBufferView>);
}

/**
 * Writes a safetensors file atomically (temp file in the same directory, fsync, rename). Tensors are laid out by
 * element size, largest first, then by name (as the reference writer does), so with the header padded with spaces
 * to a multiple of 8 bytes every tensor starts at an offset aligned to its element size.
 */
export async function writeSafetensors(
  path: string,
  tensors: ReadonlyMap<string, SafetensorsWriteTensor>,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  const order = [...tensors.keys()].toSorted((a, b) => {
    const sa = bytesOf(path, a, tensors.get(a)!.dtype);
    const sb = bytesOf(path, b, tensors.get(b)!.dtype);
    return sb - sa || (a < b ? -1 : a > b ? 1 : 0);
  });
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header['__metadata__'] = metadata;
  let offset = 0;
  for (const name of order) {
    if (name === '__metadata__') throw new SafetensorsError(path, name, 'reserved tensor name');
    const t = tensors.get(name)!;
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw new SafetensorsError(path, name, `bad shape ${JSON.stringify(t.shape)}`);
    const size = bytesOf(path, name, t.dtype) * numel(t.shape);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - ((8 + json.length) % 8)) % 8;
  if (pad > 0) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));

  await writeFileAtomic(path, async (fh) => {
    let pos = 0;
    const put = async (buf: Uint8Array): Promise<void> => {
      let done = 0;
      while (done < buf.length) {
        const { bytesWritten } = await fh.write(buf, done, buf.length - done, pos + done);
        done += bytesWritten;
      }
      pos += buf.length;
    };
    await put(prefix);
    await put(json);
    for (const name of order) {
      const t = tensors.get(name)!;
      const view = typeof t.data === 'function' ? await t.data() : t.data;
      const want = bytesOf(path, name, t.dtype) * numel(t.shape);
      if (view.byteLength !== want) {
        throw new SafetensorsError(
          path,
          name,
          `data has ${view.byteLength} bytes but ${t.dtype} ${JSON.stringify(t.shape)} needs ${want}`,
        );
      }
      await put(new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
    }
  });
}

function bytesOf(path: string, name: string, dtype: string): number {
  const s = SAFETENSORS_DTYPE_BYTES[dtype];
  if (s === undefined) throw new SafetensorsError(path, name, `unknown dtype ${dtype}`);
  return s;
}

type FileHandle = Awaited<ReturnType<typeof open>>;

/**
 * Writes `path` through a temporary sibling file that is fsynced and renamed over it, so readers see either the
 * old file or the complete new one, never a partial write. The temp file is removed on failure.
 */
export async function writeFileAtomic(path: string, fill: (fh: FileHandle) => Promise<void>): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx');
  try {
    await fill(fh);
    await fh.sync();
    await fh.close();
    await rename(tmp, path);
  } catch (e) {
    await fh.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * Where tensor `name`'s bytes sit in the file, as ONNX external data: offset = 8 + N + begin, length = end - begin.
 * `location` is relative to `relativeTo` (the directory of the .onnx file) when given, else the absolute path.
 */
export async function externalRef(path: string, name: string, relativeTo?: string): Promise<IrExternalData> {
  const header = await readSafetensorsHeader(path);
  const e = entryOf(path, header, name);
  const abs = resolve(path);
  return {
    location: relativeTo === undefined ? abs : relative(resolve(relativeTo), abs),
    offset: header.dataStart + e.begin,
    length: e.end - e.begin,
  };
}
