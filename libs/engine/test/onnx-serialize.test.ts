import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as Ort from 'onnxruntime-node';
import { ort } from '../src/runtime/ort.js';
import { attr, type IrInitializer, type IrModel, type IrNode } from '../src/ir.js';
import { ModelProto } from '../src/onnx/onnx-schema.js';
import {
  EXTERNAL_DATA_ALIGNMENT,
  ORT_MAX_MODEL_BYTES,
  PRODUCER_NAME,
  decodeModel,
  encodeModel,
  writeModel,
} from '../src/onnx/serialize.js';

const tmp = mkdtempSync(join(tmpdir(), 'onnx-serialize-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const SESSION: Ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1 };

const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const f32 = (name: string, shape: number[], values: number[]): IrInitializer => ({
  name,
  dtype: 'float32',
  shape,
  raw: bytesOf(new Float32Array(values)),
});
const node = (opType: string, inputs: string[], outputs: string[], attributes: IrNode['attributes'] = {}): IrNode => ({
  opType,
  domain: '',
  name: `${opType}_${outputs[0]}`,
  inputs,
  outputs,
  attributes,
});

/** Deterministic pseudo-random values (LCG) in [-1, 1), so failures are reproducible. */
function randoms(n: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

/** Row-major float64 reference of Gemm(X[m,k], W[n,k], transB=1) * alpha. */
function gemmTransB(x: ArrayLike<number>, w: ArrayLike<number>, m: number, k: number, n: number, alpha = 1): number[] {
  const y = Array.from({ length: m * n }, () => 0);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let p = 0; p < k; p++) acc += x[i * k + p]! * w[j * k + p]!;
      y[i * n + j] = alpha * acc;
    }
  return y;
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i]! - expected[i]!);
    assert.ok(err <= tol * Math.max(1, Math.abs(expected[i]!)), `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

test('encode -> decode round trip keeps every attribute kind, dtype and external reference', () => {
  const model: IrModel = {
    name: 'roundtrip',
    opset: 17,
    extraOpsets: { 'com.microsoft': 1 },
    inputs: [{ name: 'x', dtype: 'float32', shape: [2, 3] }],
    outputs: [{ name: 'y', dtype: 'float16', shape: [] }],
    initializers: [
      f32('w32', [3, 2], [1, -2, 3.5, 0.25, -0, 1e-30]),
      { name: 'w16', dtype: 'float16', shape: [2], raw: bytesOf(new Uint16Array([0x3c00, 0xc000])) },
      { name: 'w64', dtype: 'float64', shape: [2, 1], raw: bytesOf(new Float64Array([Math.PI, -1e300])) },
      { name: 'shape', dtype: 'int64', shape: [3], raw: bytesOf(new BigInt64Array([-1n, 2n ** 40n, 0n])) },
      { name: 'mask', dtype: 'bool', shape: [2, 2], raw: new Uint8Array([1, 0, 0, 1]) },
      { name: 'scalar', dtype: 'float32', shape: [], raw: bytesOf(new Float32Array([7])) },
      { name: 'empty', dtype: 'int64', shape: [0], raw: new Uint8Array(0) },
      {
        name: 'ext',
        dtype: 'float32',
        shape: [4, 5],
        external: { location: '../w/model.safetensors', offset: 77, length: 80 },
      },
    ],
    nodes: [
      {
        opType: 'Custom',
        domain: 'com.microsoft',
        name: 'all_kinds',
        inputs: ['x', '', 'w32'],
        outputs: ['a', 'b'],
        attributes: {
          i: attr.int(-3),
          big: attr.int(2 ** 40),
          f: attr.float(-2.25),
          s: attr.string('héllo ✓'),
          is: attr.ints([-1, 0, 3, 2 ** 35]),
          fs: attr.floats([1.5, -0.125, 0]),
          t: attr.tensor({ name: '', dtype: 'int64', shape: [2], raw: bytesOf(new BigInt64Array([4n, -5n])) }),
          text: attr.tensor({
            name: 'big',
            dtype: 'float32',
            shape: [1],
            external: { location: 'c.bin', offset: 0, length: 4 },
          }),
        },
      },
      node('Cast', ['a'], ['y'], { to: attr.int(10) }),
    ],
    valueInfo: [
      { name: 'a', dtype: 'float32', shape: [2, 1] },
      { name: 'b', dtype: 'bool', shape: [1, 1, 1] },
    ],
  };
  const bytes = encodeModel(model);
  assert.deepStrictEqual(decodeModel(bytes), model);

  const proto = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number }) as {
    ir_version: number;
    producer_name: string;
    opset_import: { domain: string; version: number }[];
  };
  assert.equal(proto.ir_version, 8, 'opset 17 came with IR version 8 (ONNX 1.12)');
  assert.equal(proto.producer_name, PRODUCER_NAME);
  assert.deepStrictEqual(proto.opset_import, [
    { domain: '', version: 17 },
    { domain: 'com.microsoft', version: 1 },
  ]);
});

test('float attributes are float32 in ONNX: decode returns the float32-rounded value', () => {
  const model: IrModel = {
    name: 'f',
    opset: 18,
    inputs: [],
    outputs: [],
    initializers: [],
    nodes: [node('LeakyRelu', ['x'], ['y'], { alpha: attr.float(0.1) })],
  };
  const back = decodeModel(encodeModel(model)).nodes[0]!.attributes['alpha'];
  assert.deepStrictEqual(back, { kind: 'float', value: Math.fround(0.1) });
});

/** Y = Gemm(X, W, transB=1, alpha) + b; Z = Reshape(Y * c, shape) where c comes from a Constant node. */
function gemmModel(opset: number, w: IrInitializer, alpha: number): IrModel {
  return {
    name: 'gemm',
    opset,
    inputs: [{ name: 'X', dtype: 'float32', shape: [2, 3] }],
    outputs: [
      { name: 'Y', dtype: 'float32', shape: [2, 4] },
      { name: 'Z', dtype: 'float32', shape: [4, 2] },
    ],
    initializers: [
      w,
      f32('b', [4], [0.5, -1, 2, 0.125]),
      { name: 'shape', dtype: 'int64', shape: [2], raw: bytesOf(new BigInt64Array([4n, -1n])) },
    ],
    nodes: [
      node('Gemm', ['X', 'W'], ['XW'], { transB: attr.int(1), alpha: attr.float(alpha) }),
      node('Add', ['XW', 'b'], ['Y']),
      node('Constant', [], ['c'], { value: attr.tensor(f32('', [], [-3])) }),
      node('Mul', ['Y', 'c'], ['Yc']),
      node('Reshape', ['Yc', 'shape'], ['Z']),
    ],
    valueInfo: [{ name: 'XW', dtype: 'float32', shape: [2, 4] }],
  };
}

const X = randoms(6, 1);
const W = randoms(12, 2);
/** JS reference of gemmModel: Y and Z = reshape(-3 * Y) (reshape of row-major data keeps the order). */
function gemmReference(alpha: number): { y: number[]; z: number[] } {
  const b = [0.5, -1, 2, 0.125];
  // ORT sees float32-rounded inputs; the reference then accumulates in float64.
  const y = gemmTransB(Float32Array.from(X), Float32Array.from(W), 2, 3, 4, alpha).map((v, i) => v + b[i % 4]!);
  return { y, z: y.map((v) => -3 * v) };
}

async function runGemm(session: Ort.InferenceSession, alpha: number, what: string): Promise<void> {
  const out = await session.run({ X: new ort.Tensor('float32', Float32Array.from(X), [2, 3]) });
  const ref = gemmReference(alpha);
  assert.deepStrictEqual(out['Z']!.dims, [4, 2]);
  assertClose(out['Y']!.data as Float32Array, ref.y, 1e-6, `${what} Y`);
  assertClose(out['Z']!.data as Float32Array, ref.z, 1e-6, `${what} Z`);
}

test('onnxruntime runs an encoded Gemm + Reshape + Constant model (opsets 17, 18, 21, 23)', async () => {
  for (const opset of [17, 18, 21, 23]) {
    const session = await ort.InferenceSession.create(encodeModel(gemmModel(opset, f32('W', [4, 3], W), 0.5)), SESSION);
    await runGemm(session, 0.5, `opset ${opset}`);
    await session.release();
  }
});

/** Writes a real safetensors file (u64 LE header length, JSON header, data) and returns its absolute data offsets. */
function writeSafetensors(
  path: string,
  tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[],
): Map<string, number> {
  const header: Record<string, unknown> = {};
  let pos = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + t.data.byteLength] };
    pos += t.data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.byteLength));
  writeFileSync(path, Buffer.concat([len, json, ...tensors.map((t) => t.data)]));
  const offsets = new Map<string, number>();
  let at = 8 + json.byteLength;
  for (const t of tensors) {
    offsets.set(t.name, at);
    at += t.data.byteLength;
  }
  return offsets;
}

test('initializer pointing into a .safetensors file at a misaligned offset loads and runs', async () => {
  const dir = join(tmp, 'safetensors');
  mkdirSync(join(dir, 'sub'), { recursive: true });
  const wBytes = bytesOf(new Float32Array(W));
  const st = join(dir, 'weights.safetensors');
  // A 3-byte tensor in front of W pushes W off 4-byte alignment, which ORT must still read correctly.
  const offsets = writeSafetensors(st, [
    { name: 'pad', dtype: 'U8', shape: [3], data: new Uint8Array([9, 9, 9]) },
    { name: 'W', dtype: 'F32', shape: [4, 3], data: wBytes },
  ]);
  const offset = offsets.get('W')!;
  assert.notEqual(offset % 4, 0, 'test setup: W must start at a non-4-byte-aligned offset');
  assert.deepStrictEqual(readFileSync(st).subarray(offset, offset + 48), Buffer.from(wBytes));

  const w: IrInitializer = {
    name: 'W',
    dtype: 'float32',
    shape: [4, 3],
    external: { location: 'weights.safetensors', offset, length: 48 },
  };
  const path = join(dir, 'model.onnx');
  const written = writeModel(gemmModel(17, w, 1), path);
  assert.equal(written.externalDataPath, undefined, 'nothing to externalize, so no data file');
  assert.equal(written.bytes, statSync(path).size);
  assert.deepStrictEqual(decodeModel(readFileSync(path)).initializers[0], w, 'the reference is kept as given');
  for (const extra of [undefined, { session: { disable_prepacking: '1' } }]) {
    const session = await ort.InferenceSession.create(path, { ...SESSION, ...(extra ? { extra } : {}) });
    await runGemm(session, 1, `prepacking ${extra ? 'off' : 'on'}`);
    await session.release();
  }

  // '../' references: onnxruntime-node 1.30 refuses them when loading from a path, so writeModel does too unless
  // told otherwise; from bytes with `externalData` they load.
  const up: IrInitializer = { ...w, external: { ...w.external!, location: '../weights.safetensors' } };
  const subPath = join(dir, 'sub', 'model.onnx');
  assert.throws(
    () => writeModel(gemmModel(17, up, 1), subPath),
    /initializer 'W': external data '..\/weights.safetensors' resolves to .* outside the model directory/,
  );
  assert.equal(existsSync(subPath), false);
  writeModel(gemmModel(17, up, 1), subPath, { allowExternalOutsideModelDir: true });
  await assert.rejects(ort.InferenceSession.create(subPath, SESSION), /escapes model directory/);
  const fromBytes = await ort.InferenceSession.create(readFileSync(subPath), {
    ...SESSION,
    externalData: [{ path: '../weights.safetensors', data: readFileSync(st) }],
  });
  await runGemm(fromBytes, 1, 'from bytes with externalData');
  await fromBytes.release();

  const pastEnd: IrInitializer = { ...w, external: { ...w.external!, offset: offset + 4 } };
  assert.throws(
    () => writeModel(gemmModel(17, pastEnd, 1), path),
    /bytes \d+\.\.\d+ are past the end of .*weights\.safetensors/,
  );
});

/** Integers in {-2..2}: every product and partial sum below stays exact in float32, so ORT must match exactly. */
const smallInts = (n: number, seed: number): Float32Array =>
  Float32Array.from(randoms(n, seed), (v) => Math.round(2 * v));

/** X[2,1025] -> Gemm(W1[257,1025]) -> Gemm(W2[1100,257]); both weights are just over 1 MiB. */
function bigModel(): { model: IrModel; x: Float32Array; w1: Float32Array; w2: Float32Array } {
  const x = smallInts(2 * 1025, 3);
  const w1 = smallInts(257 * 1025, 4);
  const w2 = smallInts(1100 * 257, 5);
  const model: IrModel = {
    name: 'big',
    opset: 18,
    inputs: [{ name: 'X', dtype: 'float32', shape: [2, 1025] }],
    outputs: [{ name: 'Y', dtype: 'float32', shape: [2, 1100] }],
    initializers: [
      { name: 'W1', dtype: 'float32', shape: [257, 1025], raw: bytesOf(w1) },
      f32('small', [1], [1]),
      { name: 'W2', dtype: 'float32', shape: [1100, 257], raw: bytesOf(w2) },
    ],
    nodes: [
      node('Gemm', ['X', 'W1'], ['H'], { transB: attr.int(1) }),
      node('Mul', ['H', 'small'], ['H1']),
      node('Gemm', ['H1', 'W2'], ['Y'], { transB: attr.int(1) }),
    ],
  };
  return { model, x, w1, w2 };
}

test('writeModel moves initializers above the threshold into an aligned external data file', async () => {
  const dir = join(tmp, 'externalize');
  mkdirSync(dir);
  const { model, x, w1, w2 } = bigModel();
  const path = join(dir, 'net.onnx');
  writeFileSync(path, 'stale model that must be replaced atomically');
  const written = writeModel(model, path);
  assert.equal(written.externalDataPath, join(dir, 'net.data'));
  assert.deepStrictEqual(readdirSync(dir).toSorted(), ['net.data', 'net.onnx'], 'no temp files left behind');
  assert.ok(written.bytes < 4096, `model file holds only the graph (${written.bytes} bytes)`);

  const decoded = decodeModel(readFileSync(path));
  const [e1, small, e2] = decoded.initializers;
  assert.deepStrictEqual(small, model.initializers[1], 'initializers under the threshold stay inline');
  assert.deepStrictEqual(e1!.external, { location: 'net.data', offset: 0, length: w1.byteLength });
  const off2 = Math.ceil(w1.byteLength / EXTERNAL_DATA_ALIGNMENT) * EXTERNAL_DATA_ALIGNMENT;
  assert.deepStrictEqual(e2!.external, { location: 'net.data', offset: off2, length: w2.byteLength });
  const data = readFileSync(written.externalDataPath!);
  assert.equal(data.byteLength, off2 + w2.byteLength);
  assert.equal(written.externalDataBytes, data.byteLength);
  assert.ok(Buffer.from(bytesOf(w1)).equals(data.subarray(0, w1.byteLength)));
  assert.ok(Buffer.from(bytesOf(w2)).equals(data.subarray(off2)));

  const h = gemmTransB(x, w1, 2, 1025, 257);
  const y = gemmTransB(h, w2, 2, 257, 1100);
  const session = await ort.InferenceSession.create(path, SESSION);
  const out = await session.run({ X: new ort.Tensor('float32', x, [2, 1025]) });
  assert.deepStrictEqual(Array.from(out['Y']!.data as Float32Array), y);
  await session.release();

  // Rewriting a model whose initializers already point into the data file it would replace must be refused.
  assert.throws(
    () =>
      writeModel(
        {
          ...decoded,
          initializers: [
            ...decoded.initializers,
            f32(
              'W3',
              [300000],
              Array.from({ length: 300000 }, () => 1),
            ),
          ],
        },
        path,
      ),
    /initializer 'W1' already points into .*net\.data/,
  );
});

test('models above the 2 GB protobuf limit are refused with a hint to externalize', async () => {
  // 33 initializers viewing one 64 MiB buffer: 2.06 GiB of inline data while allocating only 64 MiB.
  const chunk = new Uint8Array(64 << 20);
  const huge: IrModel = {
    name: 'huge',
    opset: 17,
    inputs: [],
    outputs: [],
    nodes: [],
    initializers: Array.from({ length: 33 }, (_, i) => ({
      name: `w${i}`,
      dtype: 'uint8' as const,
      shape: [chunk.byteLength],
      raw: chunk,
    })),
  };
  assert.ok(33 * chunk.byteLength > ORT_MAX_MODEL_BYTES);
  assert.throws(() => encodeModel(huge), /model 'huge': inline tensor data is 2214592512 bytes.*external data/);
  const path = join(tmp, 'huge.onnx');
  assert.throws(() => writeModel(huge, path, { externalizeAbove: Infinity }), /external data/);
  assert.equal(existsSync(path), false, 'a refused model leaves no file');

  // The same rule with a small limit: inline fails, externalized passes and still runs.
  const model: IrModel = {
    name: 'limited',
    opset: 17,
    inputs: [{ name: 'X', dtype: 'float32', shape: [2048] }],
    outputs: [{ name: 'Y', dtype: 'float32', shape: [2048] }],
    initializers: [f32('B', [2048], randoms(2048, 7))],
    nodes: [node('Add', ['X', 'B'], ['Y'])],
  };
  assert.throws(() => encodeModel(model, { maxModelBytes: 4096 }), /8192 bytes, over the 4096-byte limit/);
  const small = join(tmp, 'limited.onnx');
  const written = writeModel(model, small, {
    externalizeAbove: 1024,
    maxModelBytes: 4096,
    externalDataFile: 'limited.weights',
  });
  assert.equal(written.externalDataPath, join(tmp, 'limited.weights'));
  const session = await ort.InferenceSession.create(small, SESSION);
  const x = Float32Array.from(randoms(2048, 8));
  const out = await session.run({ X: new ort.Tensor('float32', x, [2048]) });
  const b = new Float32Array(model.initializers[0]!.raw!.buffer);
  assertClose(
    out['Y']!.data as Float32Array,
    Array.from(x, (v, i) => Math.fround(v + b[i]!)),
    0,
    'X + B',
  );
  await session.release();
});

test('decodeModel rejects corrupt bytes with a clear error', () => {
  const good = encodeModel(gemmModel(17, f32('W', [4, 3], W), 1));
  assert.throws(
    () => decodeModel(good.subarray(0, good.byteLength - 20)),
    /^Error: decodeModel: \d+ bytes are not a valid ONNX ModelProto/,
  );
  assert.throws(() => decodeModel(new TextEncoder().encode('{"not": "onnx"}')), /^Error: decodeModel: /);
  assert.throws(() => decodeModel(new Uint8Array(0)), /decodeModel: ModelProto has no graph/);
  // Valid protobuf, wrong content: a raw_data length that disagrees with the declared shape.
  const bad = ModelProto.toObject(ModelProto.decode(good)) as { graph: { initializer: { raw_data: Uint8Array }[] } };
  bad.graph.initializer[0]!.raw_data = bad.graph.initializer[0]!.raw_data.subarray(4);
  assert.throws(
    () => decodeModel(ModelProto.encode(bad).finish()),
    /decodeModel: initializer 'W': data is 44 bytes, float32\[4,3\] needs 48/,
  );
});

test('decodeModel converts tensors stored in typed *_data fields (as other exporters write them) to raw bytes', () => {
  const tensors = [
    { name: 'f', dims: [2], data_type: 1, float_data: [1.5, -2] },
    { name: 'd', dims: [1], data_type: 11, double_data: [Math.E] },
    { name: 'l', dims: [2], data_type: 7, int64_data: [-7, 2 ** 40] },
    { name: 'h', dims: [2], data_type: 10, int32_data: [0x3c00, 0xc000] },
    { name: 'b', dims: [3], data_type: 9, int32_data: [1, 0, 1] },
  ];
  const bytes = ModelProto.encode({
    ir_version: 8,
    opset_import: [{ version: 17 }],
    graph: { initializer: tensors },
  }).finish();
  const raws = decodeModel(bytes).initializers.map((t) => t.raw);
  assert.deepStrictEqual(raws, [
    bytesOf(new Float32Array([1.5, -2])),
    bytesOf(new Float64Array([Math.E])),
    bytesOf(new BigInt64Array([-7n, 2n ** 40n])),
    bytesOf(new Uint16Array([0x3c00, 0xc000])),
    new Uint8Array([1, 0, 1]),
  ]);
});

test('encodeModel names the tensor or node that is malformed', () => {
  const base = gemmModel(17, f32('W', [4, 3], W), 1);
  assert.throws(
    () => encodeModel({ ...base, initializers: [f32('W', [4, 4], W)] }),
    /initializer 'W': raw data is 48 bytes, float32\[4,4\] needs 64/,
  );
  const fractional = { ...base, nodes: [node('Gemm', ['X', 'W'], ['Y'], { transB: attr.int(0.5) })] };
  assert.throws(
    () => encodeModel(fractional),
    /node 0 'Gemm_Y' \(Gemm\): attribute 'transB' has non-integer value 0.5/,
  );
  assert.throws(() => encodeModel({ ...base, opset: 12 }), /opset 12 is not supported/);
});
