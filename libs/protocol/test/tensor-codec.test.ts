import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeTensors, encodeTensors, type Tensor } from '../src/tensor-codec.js';
import { TensorCodecError } from '../src/errors.js';
import { fixturesDir } from '../../../test/support/paths.js';

const f32 = (...v: number[]) => new Float32Array(v);

/** A hand-built blob: header JSON, space padding to 8, then the little-endian data. */
function handBuilt(header: object, data: Uint8Array): Uint8Array {
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += ' ';
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(new TextEncoder().encode(json), 8);
  out.set(data, 8 + json.length);
  return out;
}

function expectCodecError(fn: () => unknown, tensor: string | undefined, message: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof TensorCodecError, String(e));
    assert.equal(e.tensor, tensor);
    assert.match(e.message, message);
    return true;
  });
}

test('round trip keeps names, shapes and exact float32 values (incl. -0, subnormals, inf)', () => {
  const tensors = new Map<string, Tensor>([
    ['layers.3.lora_B.weight', { shape: [2, 3], data: f32(1, -2.5, 3.25, -0, 1e-40, Infinity) }],
    ['layers.3.lora_A.weight', { shape: [3, 1], data: f32(0.1, 0.2, 0.3) }],
    ['scalar', { shape: [], data: f32(42) }],
    ['empty', { shape: [0, 4], data: f32() }],
  ]);
  const bytes = encodeTensors(tensors, { round: '3' });
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal((8 + headerLen) % 8, 0, 'data must start 8-byte aligned');
  assert.equal(bytes.length, 8 + headerLen + 4 * (6 + 3 + 1));
  const { tensors: back, metadata } = decodeTensors(bytes, 'roundtrip');
  assert.deepEqual(metadata, { round: '3' });
  assert.deepEqual([...back.keys()].toSorted(), [...tensors.keys()].toSorted());
  for (const [name, t] of tensors) {
    assert.deepEqual(back.get(name)!.shape, t.shape, name);
    assert.deepEqual([...back.get(name)!.data], [...t.data], name);
  }
  assert.ok(Object.is(back.get('layers.3.lora_B.weight')!.data[3], -0));
  // Deterministic: insertion order does not change the bytes (so the content address is stable).
  const reversed = new Map([...tensors].toReversed());
  assert.deepEqual(encodeTensors(reversed, { round: '3' }), bytes);
});

test('decodes a PEFT adapter written by Hugging Face safetensors and re-encodes it byte for byte', () => {
  const file = join(fixturesDir, 'llama-tiny-a', 'adapter', 'adapter_model.safetensors');
  const hf = new Uint8Array(readFileSync(file));
  const { tensors, metadata } = decodeTensors(hf, file);
  assert.deepEqual(metadata, { format: 'pt' });
  assert.equal(tensors.size, 8);
  const a = tensors.get('base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight')!;
  assert.deepEqual(a.shape, [4, 64]);
  // First values read independently with Python struct.unpack('<4f') on the same file.
  assert.deepEqual(
    Array.from(a.data.subarray(0, 4)),
    [0.03045530617237091, -0.06960533559322357, -0.09616468846797943, -0.015124022960662842],
  );
  assert.deepEqual(tensors.get('base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight')!.shape, [64, 4]);
  assert.deepEqual(encodeTensors(tensors, metadata), hf);
});

const entry = (begin: number, end: number, shape = [2]) => ({ dtype: 'F32', shape, data_offsets: [begin, end] });

test('corrupt blobs are rejected with the tensor and the reason', () => {
  const four = new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer);
  const good = encodeTensors(new Map([['w', { shape: [2, 2], data: f32(1, 2, 3, 4) }]]));

  expectCodecError(() => decodeTensors(good.subarray(0, 5), 'b'), undefined, /^b: truncated: 5 bytes/);
  expectCodecError(
    () => decodeTensors(good.subarray(0, good.length - 1), 'b'),
    'w',
    /truncated: data ends at byte 16 but the data buffer has 15/,
  );
  const hugeLen = good.slice();
  new DataView(hugeLen.buffer).setBigUint64(0, 1n << 40n, true);
  expectCodecError(() => decodeTensors(hugeLen, 'b'), undefined, /header length 1099511627776 exceeds/);
  const garbled = good.slice();
  garbled[8] = 0x5b; // '[': not an object
  expectCodecError(() => decodeTensors(garbled, 'b'), undefined, /header is not a UTF-8 JSON object/);
  expectCodecError(
    () => decodeTensors(handBuilt({ a: entry(0, 8), b: entry(4, 12) }, four), 'b'),
    'b',
    /\[4, 12\] overlaps the previous tensor/,
  );
  expectCodecError(
    () => decodeTensors(handBuilt({ a: entry(0, 8), b: entry(12, 20) }, new Uint8Array(20)), 'b'),
    'b',
    /leaves a hole of 4 bytes/,
  );
  expectCodecError(
    () => decodeTensors(handBuilt({ a: entry(0, 8) }, four), 'b'),
    undefined,
    /8 trailing bytes after the last tensor/,
  );
  expectCodecError(
    () => decodeTensors(handBuilt({ a: entry(0, 12) }, four), 'b'),
    'a',
    /span 12 bytes but shape \[2\] needs 8/,
  );
  expectCodecError(
    () => decodeTensors(handBuilt({ h: { dtype: 'F16', shape: [2], data_offsets: [0, 4] } }, new Uint8Array(4)), 'b'),
    'h',
    /dtype "F16" is not supported/,
  );
  expectCodecError(
    () => decodeTensors(handBuilt({ a: entry(0, 8, [-2]) }, four.subarray(0, 8)), 'b'),
    'a',
    /negative dimension/,
  );
});

test('encode refuses a shape that does not match the data, naming the tensor', () => {
  expectCodecError(
    () => encodeTensors(new Map([['w', { shape: [2, 2], data: f32(1, 2, 3) }]])),
    'w',
    /shape \[2,2\] needs 4 values, data has 3/,
  );
});
