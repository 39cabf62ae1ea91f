import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fixturesDir } from '../../../test/support/paths.js';
import {
  bf16BitsToFloat32,
  externalRef,
  f16BitsToFloat32,
  float32ToBf16,
  float32ToF16,
  readSafetensorsHeader,
  readTensor,
  SafetensorsError,
  toFloat32,
  writeSafetensors,
} from '../src/safetensors.js';
import { withTmp as withTmpIn } from '../../../test/support/tmp.js';

const llamaModel = join(fixturesDir, 'llama-tiny-a', 'model', 'model.safetensors');

const withTmp = (fn: (dir: string) => Promise<void>): Promise<void> => withTmpIn('h5-st-', fn);

/** Builds a safetensors file by hand (independently of writeSafetensors) from a header object and data bytes. */
function handMade(header: unknown, data: Uint8Array, pad = 0): Buffer {
  const json = Buffer.concat([Buffer.from(JSON.stringify(header)), Buffer.alloc(pad, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([prefix, json, data]);
}

test('header of the llama fixture: offsets tile the data buffer, F32 weights, bytes read match a manual parse', async () => {
  const h = await readSafetensorsHeader(llamaModel);
  const raw = await readFile(llamaModel);
  const n = Number(raw.readBigUInt64LE(0));
  assert.equal(h.headerLength, n);
  assert.equal(h.dataStart, 8 + n);
  assert.equal(h.tensors.size, 1 + 4 * 9 + 2); // embed, 9 per layer, norm, lm_head
  const e = h.tensors.get('model.layers.0.self_attn.q_proj.weight')!;
  assert.deepEqual(e.shape, [64, 64]);
  assert.equal(e.dtype, 'F32');
  const t = await readTensor(llamaModel, 'model.layers.0.self_attn.q_proj.weight', h);
  assert.ok(t.data instanceof Float32Array);
  const start = h.dataStart + e.begin;
  const manual = new Float32Array(raw.buffer.slice(raw.byteOffset + start, raw.byteOffset + start + 64 * 64 * 4));
  assert.deepEqual(t.data, manual);
});

test('externalRef points at the tensor bytes: offset = 8 + N + begin', async () => {
  const h = await readSafetensorsHeader(llamaModel);
  const ref = await externalRef(llamaModel, 'model.norm.weight', join(fixturesDir, 'llama-tiny-a'));
  assert.equal(ref.location, join('model', 'model.safetensors'));
  const e = h.tensors.get('model.norm.weight')!;
  assert.equal(ref.offset, 8 + h.headerLength + e.begin);
  assert.equal(ref.length, 64 * 4);
  const raw = await readFile(llamaModel);
  const viaRef = new Float32Array(
    raw.buffer.slice(raw.byteOffset + ref.offset, raw.byteOffset + ref.offset + ref.length),
  );
  assert.deepEqual(viaRef, (await readTensor(llamaModel, 'model.norm.weight')).data);
});

test('write -> read round trip for every readable dtype, 8-byte aligned data, metadata kept, no temp files left', async () => {
  await withTmp(async (dir) => {
    const path = join(dir, 'x.safetensors');
    const f32 = Float32Array.from([1.5, -2, 3.25, 0, 7, 8]);
    const tensors = new Map([
      ['b.f32', { dtype: 'F32', shape: [2, 3], data: f32 }],
      ['a.i64', { dtype: 'I64', shape: [3], data: BigInt64Array.from([1n, -2n, 2n ** 40n]) }],
      ['c.u8', { dtype: 'U8', shape: [3], data: Uint8Array.from([1, 2, 255]) }],
      ['d.bool', { dtype: 'BOOL', shape: [1], data: Uint8Array.from([1]) }],
      ['e.f16', { dtype: 'F16', shape: [2], data: Uint16Array.from([0x3c00, 0xc000]) }],
      ['f.bf16', { dtype: 'BF16', shape: [1], data: Uint16Array.from([0x3f80]) }],
      ['g.f64', { dtype: 'F64', shape: [1], data: Float64Array.from([Math.PI]) }],
      ['h.i32', { dtype: 'I32', shape: [2], data: Int32Array.from([-5, 6]) }],
      ['i.empty', { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) }],
    ]);
    await writeSafetensors(path, tensors, { format: 'pt' });
    assert.deepEqual(await readdir(dir), ['x.safetensors']);
    const h = await readSafetensorsHeader(path);
    assert.equal(h.dataStart % 8, 0);
    assert.deepEqual(h.metadata, { format: 'pt' });
    for (const [name, t] of tensors) {
      const e = h.tensors.get(name)!;
      // Largest element size first, so every tensor is aligned to its element size.
      assert.equal((h.dataStart + e.begin) % (t.data.BYTES_PER_ELEMENT ?? 1), 0, name);
      const back = await readTensor(path, name);
      assert.equal(back.dtype, t.dtype);
      assert.deepEqual(back.shape, t.shape);
      assert.deepEqual(back.data, t.data, name);
    }
  });
});

test('writeSafetensors rejects data of the wrong size and leaves nothing behind', async () => {
  await withTmp(async (dir) => {
    const path = join(dir, 'bad.safetensors');
    await assert.rejects(
      writeSafetensors(path, new Map([['w', { dtype: 'F32', shape: [3], data: new Float32Array(2) }]])),
      (e: unknown) => e instanceof SafetensorsError && e.tensor === 'w' && /needs 12/.test(e.message),
    );
    assert.deepEqual(await readdir(dir), []);
  });
});

test('validation: every error names the file and, where one is at fault, the tensor', async () => {
  await withTmp(async (dir) => {
    // tensor: the name the error must carry; true = some tensor name; undefined = none (a file-level problem).
    const cases: [string, Buffer, RegExp, string | true | undefined][] = [
      ['truncated', (await readFile(llamaModel)).subarray(0, 500_000), /past the end of the data buffer/, true],
      ['hole', handMade({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8)), /hole/, 'a'],
      [
        'overlap',
        handMade(
          {
            a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
            b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] },
          },
          new Uint8Array(8),
        ),
        /overlap/,
        'b',
      ],
      [
        'size',
        handMade({ a: { dtype: 'F16', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
        /needs 6 bytes/,
        'a',
      ],
      [
        'dtype',
        handMade({ a: { dtype: 'F17', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)),
        /unknown dtype/,
        'a',
      ],
      [
        'trailing',
        handMade({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(8)),
        /trailing/,
        undefined,
      ],
      [
        'notjson',
        Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('[1] ')]),
        /start with '\{'/,
        undefined,
      ],
      ['hugeheader', Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0]), /100 MB/, undefined],
    ];
    for (const [label, bytes, pattern, tensor] of cases) {
      const path = join(dir, `${label}.safetensors`);
      await writeFile(path, bytes);
      await assert.rejects(readSafetensorsHeader(path), (e: unknown) => {
        assert.ok(e instanceof SafetensorsError, label);
        assert.equal(e.file, path, label);
        if (tensor === true) assert.ok(e.tensor !== undefined && e.message.includes(e.tensor), label);
        else assert.equal(e.tensor, tensor, label);
        assert.match(e.message, pattern, label);
        assert.ok(e.message.startsWith(path), label);
        return true;
      });
    }
  });
});

test('header padded with spaces is accepted (as HF writes it)', async () => {
  await withTmp(async (dir) => {
    const path = join(dir, 'p.safetensors');
    const data = new Uint8Array(Float32Array.from([2.5]).buffer);
    await writeFile(path, handMade({ x: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, data, 5));
    assert.deepEqual((await readTensor(path, 'x')).data, Float32Array.from([2.5]));
  });
});

test('f16 -> f32 is exact on known bit patterns, including subnormals, infinities and NaN', () => {
  const known: [number, number][] = [
    [0x0000, 0],
    [0x3c00, 1],
    [0xc000, -2],
    [0x3555, 0.333251953125],
    [0x7bff, 65504],
    [0x0400, 2 ** -14],
    [0x0001, 2 ** -24],
    [0x03ff, 1023 * 2 ** -24],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
  ];
  for (const [bits, value] of known) assert.equal(f16BitsToFloat32(bits), value, bits.toString(16));
  assert.ok(Object.is(f16BitsToFloat32(0x8000), -0));
  assert.ok(Number.isNaN(f16BitsToFloat32(0x7e00)));
  const bulk = toFloat32('F16', new Uint8Array(Uint16Array.from(known.map(([b]) => b)).buffer));
  assert.deepEqual(
    [...bulk],
    known.map(([, v]) => v),
  );
});

test('bf16 -> f32 exact on known patterns', () => {
  assert.equal(bf16BitsToFloat32(0x3f80), 1);
  assert.equal(bf16BitsToFloat32(0xc049), -3.140625);
  assert.equal(bf16BitsToFloat32(0x0001), 2 ** -133);
  assert.equal(bf16BitsToFloat32(0x7f80), Infinity);
  const bulk = toFloat32('BF16', Uint16Array.from([0x3f80, 0x4000, 0xbf00]));
  assert.deepEqual([...bulk], [1, 2, -0.5]);
});

/** Oracle: nearest representable value by exhaustive search over the sorted finite values, ties to even bits. */
function nearestBits(value: number, sortedValues: Float64Array, bitsOf: Uint16Array): number {
  let lo = 0;
  let hi = sortedValues.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (sortedValues[mid]! <= value) lo = mid;
    else hi = mid;
  }
  const dl = Math.abs(value - sortedValues[lo]!);
  const dh = Math.abs(sortedValues[hi]! - value);
  if (dl < dh) return bitsOf[lo]!;
  if (dh < dl) return bitsOf[hi]!;
  return (bitsOf[lo]! & 1) === 0 ? bitsOf[lo]! : bitsOf[hi]!;
}

function positiveFiniteTable(
  decode: (b: number) => number,
  maxBits: number,
): { values: Float64Array; bits: Uint16Array } {
  const pairs: [number, number][] = [];
  for (let b = 0; b <= maxBits; b++) pairs.push([decode(b), b]);
  pairs.sort((a, b) => a[0] - b[0]);
  return { values: Float64Array.from(pairs.map((p) => p[0])), bits: Uint16Array.from(pairs.map((p) => p[1])) };
}

test('f32 -> f16 and f32 -> bf16 round to nearest even (checked against an exhaustive-search oracle)', () => {
  // Every finite f16 survives a round trip through f32.
  for (let h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) === 0x7c00) continue;
    assert.equal(float32ToF16(f16BitsToFloat32(h)), h);
  }
  // Hand-picked ties: 1 + 2^-11 sits halfway between 1 and 1 + 2^-10 -> even (1); 1 + 3*2^-11 -> 1 + 2^-9.
  assert.equal(float32ToF16(1 + 2 ** -11), 0x3c00);
  assert.equal(float32ToF16(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(float32ToF16(65520), 0x7c00); // halfway between 65504 and 2^16: rounds to even = Inf
  assert.equal(float32ToF16(65519), 0x7bff);
  assert.equal(float32ToF16(2 ** -25), 0x0000); // tie between 0 and the smallest subnormal
  assert.equal(float32ToF16(3 * 2 ** -25), 0x0002);
  assert.equal(float32ToBf16(1 + 2 ** -8), 0x3f80);
  assert.equal(float32ToBf16(1 + 3 * 2 ** -8), 0x3f82);
  assert.equal(float32ToBf16(Math.fround(1 + 2 ** -8 + 2 ** -20)), 0x3f81);
  assert.ok(Number.isNaN(f16BitsToFloat32(float32ToF16(NaN))));
  assert.ok(Number.isNaN(bf16BitsToFloat32(float32ToBf16(NaN))));

  const f16 = positiveFiniteTable(f16BitsToFloat32, 0x7bff);
  const bf16 = positiveFiniteTable(bf16BitsToFloat32, 0x7f7f);
  let seed = 12345;
  const rand = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let i = 0; i < 20000; i++) {
    // Random float32 bit patterns in the ranges where each format is finite.
    const scratch = new Float32Array(1);
    const u = new Uint32Array(scratch.buffer);
    u[0] = Math.floor(rand() * 0x477fe000); // up to 65504
    const x = scratch[0]!;
    assert.equal(float32ToF16(x), nearestBits(x, f16.values, f16.bits), `f16 of ${x}`);
    assert.equal(float32ToF16(-x), nearestBits(x, f16.values, f16.bits) | 0x8000, `f16 of ${-x}`);
    u[0] = Math.floor(rand() * 0x7f7f0000);
    const y = scratch[0]!;
    assert.equal(float32ToBf16(y), nearestBits(y, bf16.values, bf16.bits), `bf16 of ${y}`);
  }
});
