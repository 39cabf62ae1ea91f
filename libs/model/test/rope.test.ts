import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ropeInvFreq, ropeTables, type RopeConfig } from '../src/rope.js';

/** Relative closeness for float64 values computed along different but equivalent formula orderings. */
function assertClose(actual: number, expected: number, rel: number, label: string): void {
  assert.ok(Math.abs(actual - expected) <= rel * Math.abs(expected), `${label}: ${actual} vs ${expected}`);
}

test('default inv_freq: hand-computed values for head_dim 16, theta 1e4 (llama-tiny-a)', () => {
  const inv = ropeInvFreq({ headDim: 16, ropeTheta: 10000, rope: { type: 'default' } });
  assert.equal(inv.length, 8);
  assert.equal(inv[0], 1);
  assertClose(inv[1]!, 10 ** -0.5, 1e-15, 'j=1'); // 10000^(-2/16)
  assertClose(inv[4]!, 0.01, 1e-15, 'j=4'); // 10000^(-8/16)
  assertClose(inv[7]!, 10000 ** (-14 / 16), 1e-15, 'j=7');
});

test('linear scaling divides every inverse frequency by the factor', () => {
  const d = ropeInvFreq({ headDim: 24, ropeTheta: 10000, rope: { type: 'default' } });
  const l = ropeInvFreq({ headDim: 24, ropeTheta: 10000, rope: { type: 'linear', factor: 4 } });
  for (let j = 0; j < 12; j++) assert.equal(l[j], d[j]! / 4);
});

test("llama3 scaling matches Meta's published apply_scaling (factor 8, low 1, high 4, original 8192, theta 500000)", () => {
  const cfg: RopeConfig = {
    headDim: 128,
    ropeTheta: 500000,
    rope: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
  };
  const inv = ropeInvFreq(cfg);
  // Meta llama-models `apply_scaling`, transcribed per element.
  const bands = { high: 0, low: 0, mid: 0 };
  for (let j = 0; j < 64; j++) {
    const freq = 1 / 500000 ** ((2 * j) / 128);
    const wavelen = (2 * Math.PI) / freq;
    let want: number;
    if (wavelen < 8192 / 4) {
      want = freq;
      bands.high++;
    } else if (wavelen > 8192 / 1) {
      want = freq / 8;
      bands.low++;
    } else {
      const smooth = (8192 / wavelen - 1) / (4 - 1);
      want = (1 - smooth) * (freq / 8) + smooth * freq;
      bands.mid++;
    }
    assertClose(inv[j]!, want, 1e-14, `j=${j}`);
  }
  // All three branches were exercised.
  assert.ok(bands.high > 0 && bands.low > 0 && bands.mid > 0, JSON.stringify(bands));
  assert.equal(inv[0], 1);
  assertClose(inv[63]!, 1 / 500000 ** (126 / 128) / 8, 1e-15, 'lowest frequency divided by 8');
});

test('ropeTables: cat(freqs, freqs) layout, float32 cos/sin of position * inv_freq, offset continues positions', () => {
  const cfg: RopeConfig = { headDim: 24, ropeTheta: 10000, rope: { type: 'default' } };
  const inv = ropeInvFreq(cfg);
  const { cos, sin, attentionScaling } = ropeTables(cfg, 8);
  assert.equal(attentionScaling, 1);
  assert.equal(cos.length, 8 * 24);
  for (let t = 0; t < 8; t++) {
    for (let j = 0; j < 12; j++) {
      assert.equal(cos[t * 24 + j], Math.fround(Math.cos(t * inv[j]!)));
      assert.equal(sin[t * 24 + j], Math.fround(Math.sin(t * inv[j]!)));
      assert.equal(cos[t * 24 + 12 + j], cos[t * 24 + j]);
      assert.equal(sin[t * 24 + 12 + j], sin[t * 24 + j]);
    }
  }
  assert.equal(cos[0], 1);
  assert.equal(sin[0], 0);
  assert.equal(cos[24], Math.fround(Math.cos(1))); // position 1, j = 0: inv_freq 1
  const shifted = ropeTables(cfg, 5, 3);
  assert.deepEqual(shifted.cos, cos.subarray(3 * 24, 8 * 24));
  assert.deepEqual(shifted.sin, sin.subarray(3 * 24, 8 * 24));
});

/** transformers' float32 path: inv_freq, angle and cos/sin each rounded to float32. */
function hfFloat32Max(cfg: RopeConfig, T: number): number {
  const f = Math.fround;
  const { cos, sin } = ropeTables(cfg, T);
  const dim = cfg.headDim;
  let worst = 0;
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < dim / 2; j++) {
      const inv = f(1 / f(cfg.ropeTheta ** f((2 * j) / dim)));
      const a = f(t * inv);
      worst = Math.max(
        worst,
        Math.abs(f(Math.cos(a)) - cos[t * dim + j]!),
        Math.abs(f(Math.sin(a)) - sin[t * dim + j]!),
      );
    }
  }
  return worst;
}

test("float64 tables stay within HF's float32 rounding: 1e-6 at the fixtures' 24 positions, 2e-5 up to 256", () => {
  for (const [theta, dim] of [
    [1e4, 16],
    [1e6, 16],
    [1e4, 24],
  ] as const) {
    const cfg: RopeConfig = { headDim: dim, ropeTheta: theta, rope: { type: 'default' } };
    const at24 = hfFloat32Max(cfg, 24);
    const at256 = hfFloat32Max(cfg, 256);
    assert.ok(at24 < 1e-6, `theta ${theta} dim ${dim}: ${at24}`);
    assert.ok(at256 < 2e-5, `theta ${theta} dim ${dim}: ${at256}`);
    assert.ok(at24 > 0); // the paths do differ: the comparison is not vacuous
  }
});
