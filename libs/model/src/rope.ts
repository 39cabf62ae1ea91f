/**
 * Rotary position embedding tables, as transformers' ROPE_INIT_FUNCTIONS + LlamaRotaryEmbedding build them.
 *
 * Numerics: we compute inverse frequencies, angles and cos/sin in float64 and round once to float32. transformers
 * computes inv_freq and the angles (position * inv_freq) in float32, so its tables carry an extra angle error of
 * of about position * 2^-24 rad. Against an emulation of that float32 path the tables differ by at most 1e-6 for the
 * fixtures' positions (< 24), 2e-5 up to position 256 and 1.4e-4 at position 2048 with head_dim 128 (measured;
 * test/rope.test.ts asserts the first two), i.e. HF's own rounding error, well inside the 1e-4 hidden-state tolerance.
 */
import type { ModelConfig } from './config.js';

/** The parts of ModelConfig RoPE depends on. */
export type RopeConfig = Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'rope'>;

/**
 * Inverse frequencies inv_freq[j], j < headDim/2, in radians per position (float64).
 * - default: 1 / theta^(2j / headDim)
 * - linear: default / factor
 * - llama3: wavelengths 2*pi/inv_freq above original_max/low_freq_factor are divided by factor, those below
 *   original_max/high_freq_factor kept, and the band between interpolated smoothly (Meta's `apply_scaling`).
 */
export function ropeInvFreq(cfg: RopeConfig): Float64Array {
  const dim = cfg.headDim;
  const half = dim / 2;
  const inv = new Float64Array(half);
  for (let j = 0; j < half; j++) inv[j] = 1 / cfg.ropeTheta ** ((2 * j) / dim);
  const r = cfg.rope;
  switch (r.type) {
    case 'default':
      return inv;
    case 'linear':
      for (let j = 0; j < half; j++) inv[j] = inv[j]! / r.factor!;
      return inv;
    case 'llama3': {
      const factor = r.factor!;
      const low = r.lowFreqFactor!;
      const high = r.highFreqFactor!;
      const oldContext = r.originalMaxPositionEmbeddings!;
      const lowFreqWavelen = oldContext / low;
      const highFreqWavelen = oldContext / high;
      for (let j = 0; j < half; j++) {
        const f = inv[j]!;
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < highFreqWavelen) continue;
        if (wavelen > lowFreqWavelen) inv[j] = f / factor;
        else {
          const smooth = (oldContext / wavelen - low) / (high - low);
          inv[j] = ((1 - smooth) * f) / factor + smooth * f;
        }
      }
      return inv;
    }
  }
}

/**
 * Scale applied to cos and sin (transformers' `attention_scaling`). 1.0 for default, linear and llama3; only
 * yarn/longrope (unsupported) change it.
 */
export function ropeAttentionScaling(_cfg: RopeConfig): number {
  return 1.0;
}

export interface RopeTables {
  /** [T, headDim] row-major; row t is position offset + t. Columns j and j + headDim/2 share a frequency. */
  readonly cos: Float32Array;
  readonly sin: Float32Array;
  readonly attentionScaling: number;
}

/**
 * cos/sin tables for positions offset .. offset + positions - 1, laid out like HF's emb = cat(freqs, freqs)
 * (the rotate_half convention), multiplied by attention_scaling.
 * @param positions T, the number of rows.
 * @param offset first position (e.g. the KV-cache length during generation). Default 0.
 */
export function ropeTables(cfg: RopeConfig, positions: number, offset = 0): RopeTables {
  if (!Number.isSafeInteger(positions) || positions < 0)
    throw new RangeError(`ropeTables: positions must be a non-negative integer, got ${positions}`);
  if (!Number.isSafeInteger(offset) || offset < 0)
    throw new RangeError(`ropeTables: offset must be a non-negative integer, got ${offset}`);
  const inv = ropeInvFreq(cfg);
  const dim = cfg.headDim;
  const half = dim / 2;
  const scale = ropeAttentionScaling(cfg);
  const cos = new Float32Array(positions * dim);
  const sin = new Float32Array(positions * dim);
  for (let t = 0; t < positions; t++) {
    const p = offset + t;
    const row = t * dim;
    for (let j = 0; j < half; j++) {
      const angle = p * inv[j]!;
      const c = Math.cos(angle) * scale;
      const s = Math.sin(angle) * scale;
      cos[row + j] = c;
      cos[row + half + j] = c;
      sin[row + j] = s;
      sin[row + half + j] = s;
    }
  }
  return { cos, sin, attentionScaling: scale };
}
